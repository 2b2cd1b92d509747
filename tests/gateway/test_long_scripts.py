"""Long scripts: split to fit Dia's window, and generated in chunks end to end (tiny random Dia)."""

from __future__ import annotations

import asyncio
import collections
import datetime
import io
import types
import uuid
import wave

import grpc
import numpy as np
import pytest

from runtime.server import channel_options

from services.gateway.generation import long_scripts
from services.gateway.generation.pipeline import Admitted, Pipeline, _Prepared, tail_prompt
from services.gateway.generation.routing import Candidate, ModelLimits
from services.gateway.generation.script import parse_script
from tests.gateway.conftest import FOX, HELLO, Account, assert_error, created, make_key, upload_form, wait_for_models
from voice.gateway.v1 import generations_pb2
from voice.synth.v1 import synth_pb2, synth_pb2_grpc

GENERATIONS = "/v1/voice/generations"


def dialogue(chars: int) -> str:
    """A two-speaker script of about `chars` characters, turns of a few sentences."""
    turns, n = [], 0
    while sum(map(len, turns)) < chars:
        speaker = "S1" if n % 2 == 0 else "S2"
        turns.append(f"[{speaker}] Line {n} is here. It says a little more, and then it ends. Right? ")
        n += 1
    return "".join(turns)[:chars].rsplit(" ", 1)[0] + "."


def test_chunks_fit_the_budget_and_keep_every_word_in_order_with_its_speaker():
    script = parse_script(dialogue(5000), 10_000).text
    chunks = long_scripts.split(script, 700)
    assert len(chunks) > 6
    assert all(long_scripts.size(chunk.text) <= 700 for chunk in chunks)
    assert all(chunk.text.startswith(("[S1] ", "[S2] ")) for chunk in chunks)
    rejoined = [piece for chunk in chunks for piece in chunk.pieces]
    assert " ".join(p.text for p in rejoined).split() == " ".join(t.text for t in long_scripts.turns(script)).split()


def test_a_turn_longer_than_a_chunk_is_cut_at_sentence_ends():
    long_turn = "[S1] " + " ".join(f"Sentence number {n} ends here." for n in range(60))
    chunks = long_scripts.split(long_turn, 300)
    assert len(chunks) > 1
    for chunk in chunks:
        assert chunk.text.startswith("[S1] ") and chunk.text.endswith("ends here.")


def test_a_sentence_without_ends_is_cut_at_spaces_and_a_word_without_spaces_anywhere():
    chunks = long_scripts.split("[S2] " + "word " * 200 + "x" * 500, 128)
    assert all(long_scripts.size(chunk.text) <= 128 for chunk in chunks)
    assert "".join(p.text for c in chunks for p in c.pieces).replace(" ", "") == ("word" * 200 + "x" * 500)


def test_the_tail_prompt_is_the_end_of_the_chunk_and_its_share_of_the_audio():
    chunk = long_scripts.split("[S1] One two. [S2] Three four five six.", 1000)[0]
    text, share = long_scripts.tail(chunk, max_bytes=30)
    assert text == "[S2] Three four five six."
    assert share == pytest.approx(len("Three four five six.") / (len("One two.") + len("Three four five six.")))


def test_crossfade_joins_with_a_short_overlap():
    a, b = np.full(1000, 1000, dtype=np.int16), np.full(1000, -1000, dtype=np.int16)
    joined = long_scripts.crossfaded([a, b], 1000, seconds=0.1)
    assert joined.size == 1900
    assert joined[899] == 1000 and joined[1000] == -1000 and -1000 < joined[950] < 1000


def test_an_uncloned_chunk_is_prompted_with_the_end_of_the_one_before():
    chunk = long_scripts.split("[S1] One two three four. [S2] Five six seven eight.", 1000)[0]
    codes = np.arange(500 * 9, dtype="<i2").reshape(500, 9)  # 500 frames (5.8 s) of 9 codebooks
    last = synth_pb2.StreamSynthesizeResponse(codes=codes.tobytes(), codebooks=9, last=True)
    tail = tail_prompt(chunk, last, 10, ModelLimits())
    assert tail.transcript == "[S1] One two three four. [S2] Five six seven eight."  # all of it fits 256 bytes
    assert (tail.codes, tail.codebooks) == (codes.tobytes(), 9)
    shorter = tail_prompt(chunk, last, 2, ModelLimits())  # 2 s: the last 172 frames of 512 samples at 44.1 kHz
    assert shorter.codes == codes[-172:].tobytes()


class RecordingProviders:
    """The pipeline's router for one real provider (the mesh's synth), keeping what each chunk was sent."""

    def __init__(self, synth) -> None:
        self.synth = synth
        self.sent: list[synth_pb2.SynthesisSpec] = []
        self.last: list[synth_pb2.StreamSynthesizeResponse] = []

    async def stream_synthesize(self, synthesis, found, timeout, on_attempt, voices=""):
        sent = synth_pb2.SynthesisSpec()
        sent.CopyFrom(synthesis)
        self.sent.append(sent)
        await on_attempt(found[0])
        async for message in self.synth.StreamSynthesize(synth_pb2.StreamSynthesizeRequest(synthesis=sent), timeout=timeout):
            if message.last:
                self.last.append(message)
            yield found[0], message


class Running:
    async def mark_running(self, *args) -> None:
        pass


@pytest.fixture
async def synth(mesh):
    async with grpc.aio.insecure_channel(mesh.address("synth"), options=channel_options()) as channel:
        yield synth_pb2_grpc.SynthServiceStub(channel)


@pytest.mark.parametrize("speed_factor", [0.5, 1.5])
async def test_a_chunk_continues_from_the_codes_of_the_one_before_never_its_stretched_audio(synth, speed_factor):
    providers = RecordingProviders(synth)
    pipeline = Pipeline(
        generations=Running(), library=None, prompt_gap_seconds=0.3, router=providers, settings=None, urls=None,
        storage=None,
    )  # fmt: skip
    script = parse_script(dialogue(1500), 5000).text
    admitted = Admitted("gen_test", 1, types.SimpleNamespace(script=types.SimpleNamespace(text=script)), [])
    parameters = generations_pb2.GenerationParameters(
        max_new_tokens=200, speed_factor=speed_factor, max_audio_prompt_seconds=10, seed=3, cfg_scale=3.0,
        temperature=1.0, top_p=0.95, cfg_filter_top_k=45,
    )  # fmt: skip
    candidate = Candidate("synth", "", "", 1, 0, datetime.datetime.now(datetime.timezone.utc))
    prepared = _Prepared(None, "", [candidate], ModelLimits(), parameters)
    audio = collections.Counter()  # samples of each chunk's audio the caller got
    messages = []
    async for _, number, message in pipeline._chunked(admitted, prepared, 120, []):
        audio[number] += len(message.pcm) // 2
        messages.append(message)
    assert len(providers.sent) >= 2
    for number, (previous, sent) in enumerate(zip(providers.last, providers.sent[1:])):
        prompt = sent.codes_prompt
        assert not sent.HasField("audio_prompt")  # no audio to encode again
        frames = len(previous.codes) // (2 * previous.codebooks)
        # The end of the codes the provider generated, not of the audio the caller got: at any
        # speed_factor that audio is stretched, the codes are not (the frames Dia made).
        assert frames == previous.generated_frames - 16
        assert prompt.codebooks == previous.codebooks and 0 < len(prompt.codes) < len(previous.codes)
        assert previous.codes.endswith(prompt.codes)
        # ... while the audio of that chunk was stretched by speed_factor.
        assert audio[number] == pytest.approx(frames * 512 / speed_factor, rel=0.05)
    # What the caller gets carries no codes: they are the provider's, for the next chunk.
    assert not messages[-1].codes


# --- end to end ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def hal(key_env, http) -> Account:
    name = f"hal-{uuid.uuid4().hex[:8]}"
    account = Account(name, make_key(name, key_env))
    await wait_for_models(http, account)
    return account


async def test_a_5000_character_dialogue_is_one_wav_and_one_record_of_its_chunks(http, hal):
    script = dialogue(5000)
    assert len(script) > 4990 and "[S2]" in script
    response = await http.post(GENERATIONS, json={"input": script, "max_new_tokens": 256}, headers=hal.headers)
    assert response.status == 200, await response.text()
    data = await response.read()
    with wave.open(io.BytesIO(data)) as reader:
        frames = reader.getnframes()
    row = await (await http.get(f"{GENERATIONS}/{response.headers['X-Generation-Id']}", headers=hal.headers)).json()
    assert row["status"] == "succeeded" and row["chunks"] >= 4
    crossfade = int(long_scripts.CROSSFADE_SECONDS * 44100)
    assert frames == row["chunks"] * (256 - 16) * 512 - (row["chunks"] - 1) * crossfade
    assert row["audio_duration_seconds"] == pytest.approx(frames / 44100)


async def test_a_long_script_streams_chunk_after_chunk(http, hal):
    script = dialogue(2500)
    body = {"input": script, "max_new_tokens": 256, "stream": True}
    async with http.post(GENERATIONS, json=body, headers=hal.headers) as response:
        assert response.status == 200, await response.text()
        data = await response.read()
    row = await (await http.get(f"{GENERATIONS}/{response.headers['X-Generation-Id']}", headers=hal.headers)).json()
    assert row["chunks"] >= 3
    assert (len(data) - 44) // 2 == row["chunks"] * (256 - 16) * 512  # streamed as made: no crossfade


async def test_a_long_prediction_is_generated_in_chunks_too(http, hal):
    """Predictions run the same pipeline (admit, then run in the background)."""
    body = {"input": {"text": dialogue(2500), "max_new_tokens": 500}}
    response = await http.post("/v1/models/nari-labs/dia/predictions", json=body, headers=hal.headers)
    assert response.status in (200, 201), await response.text()
    generation_id = (await response.json())["id"]
    deadline = asyncio.get_running_loop().time() + 120
    while (row := await (await http.get(f"{GENERATIONS}/{generation_id}", headers=hal.headers)).json())["status"] in (
        "queued",
        "running",
    ):
        assert asyncio.get_running_loop().time() < deadline, "the prediction never ended"
        await asyncio.sleep(0.2)
    assert row["status"] == "succeeded", row
    assert row["chunks"] >= 3


async def test_over_the_input_limit_is_still_413(http, hal):
    response = await http.post(GENERATIONS, json={"input": "a" * 8193}, headers=hal.headers)
    await assert_error(response, 413, "request_too_large", "input")


async def test_cloned_voices_whose_transcripts_overflow_the_window_get_their_samples_in_every_chunk(http, hal):
    transcript = "Hello world, this is a voice sample for testing. " * 4  # ~200 bytes each
    s1 = await created(await upload_form(http, hal, HELLO, "Host", transcript=transcript))
    s2 = await created(await upload_form(http, hal, FOX, "Guest", transcript=transcript))
    script = dialogue(800)  # fits alone; not with the two transcripts before it
    body = {"input": script, "max_new_tokens": 256, "speakers": {"S1": s1["id"], "S2": s2["id"]}}
    response = await http.post(GENERATIONS, json=body, headers=hal.headers)
    assert response.status == 200, await response.text()
    row = await (await http.get(f"{GENERATIONS}/{response.headers['X-Generation-Id']}", headers=hal.headers)).json()
    assert row["status"] == "succeeded" and row["chunks"] == 2
