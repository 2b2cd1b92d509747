"""Every generation explained, end to end on the tiny random-weight Dia: its analysis in the history,
its captions, the metrics, and the switch that turns it off.

The tiny model makes noise, so what is checked here is the structure (every script word there,
timings inside the audio, captions a WebVTT parser reads); tests/stt/test_analysis.py checks
the alignment and scores on real speech.
"""

from __future__ import annotations

import io
import json
import uuid
import wave

import aiohttp
import pytest
import webvtt

from tests.gateway.conftest import HELLO, Account, assert_error, created, extra_gateway, make_key, upload_form, wait_for_models
from tests.synth.helpers import metric

FRAMES = 256
DIALOGUE = "[S1] Hello! Welcome to the show. [S2] (laughs) Thanks for having me."
SCRIPT_WORDS = ["Hello!", "Welcome", "to", "the", "show.", "Thanks", "for", "having", "me."]
GENERATIONS = "/v1/voice/generations"


@pytest.fixture(scope="module")
async def dora(key_env) -> Account:
    name = f"dora-{uuid.uuid4().hex[:8]}"
    return Account(name, make_key(name, key_env))


@pytest.fixture(scope="module", autouse=True)
async def provider(http, dora):
    await wait_for_models(http, dora)


async def generate(http, account: Account, **body):
    body.setdefault("input", DIALOGUE)
    body.setdefault("max_new_tokens", FRAMES)
    response = await http.post(GENERATIONS, json=body, headers=account.headers)
    assert response.status == 200, await response.text()
    return response.headers["X-Generation-Id"], await response.read()


async def history(http, account: Account, generation_id: str) -> dict:
    response = await http.get(f"{GENERATIONS}/{generation_id}", headers=account.headers)
    body = await response.json()
    assert response.status == 200, body
    return body


def seconds_of(wav: bytes) -> float:
    with wave.open(io.BytesIO(wav)) as reader:
        return reader.getnframes() / reader.getframerate()


async def test_a_generation_carries_every_script_word_timed_inside_its_audio(http, dora):
    generation_id, wav = await generate(http, dora)
    analysis = (await history(http, dora, generation_id))["analysis"]
    duration = seconds_of(wav)
    assert [word["text"] for word in analysis["words"]] == SCRIPT_WORDS
    assert [word["speaker"] for word in analysis["words"]] == ["S1"] * 5 + ["S2"] * 4
    assert [(turn["speaker"], turn["text"]) for turn in analysis["turns"]] == [
        ("S1", "Hello! Welcome to the show."),
        ("S2", "Thanks for having me."),
    ]
    for timed in analysis["words"] + analysis["turns"]:
        start, end = timed["start_seconds"], timed["end_seconds"]
        assert 0 <= start <= end <= duration + 0.05
        if not timed["heard"]:
            assert start == end == 0
    assert analysis["word_error_rate"] >= 0
    assert analysis["voice_similarity"] == {}  # nobody cloned


async def test_captions_are_webvtt_and_srt_with_the_speakers_as_voices(http, dora, tmp_path):
    generation_id, wav = await generate(http, dora)
    response = await http.get(f"{GENERATIONS}/{generation_id}/captions.vtt", headers=dora.headers)
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/vtt")
    captions = webvtt.from_buffer(io.StringIO(await response.text()))
    assert [caption.voice for caption in captions] == ["S1", "S1", "S2"]
    assert " ".join(caption.text for caption in captions).split() == SCRIPT_WORDS
    ends = [0] + [caption.end_time.in_milliseconds() for caption in captions]
    for previous_end, caption in zip(ends, captions):
        start, end = caption.start_time.in_milliseconds(), caption.end_time.in_milliseconds()
        assert previous_end <= start < end <= 1000 * seconds_of(wav) + 250

    response = await http.get(f"{GENERATIONS}/{generation_id}/captions.srt", headers=dora.headers)
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("application/x-subrip")
    (tmp_path / "captions.srt").write_text(await response.text())  # webvtt-py reads SubRip from a file
    subtitles = webvtt.from_srt(str(tmp_path / "captions.srt"))
    assert [caption.text.split("] ")[0] for caption in subtitles] == ["[S1", "[S1", "[S2"]
    assert [(caption.start, caption.end) for caption in subtitles] == [(caption.start, caption.end) for caption in captions]


async def test_a_cloned_speaker_gets_a_voice_similarity(http, dora):
    sample = await created(await upload_form(http, dora, HELLO, "Host", transcript="Hello world, this is a voice sample for testing."))
    generation_id, _ = await generate(http, dora, speakers={"S1": sample["id"]})
    analysis = (await history(http, dora, generation_id))["analysis"]
    # Only a speaker whose turns were heard gets one: the tiny model's noise may hold no words.
    heard = any(turn["heard"] for turn in analysis["turns"] if turn["speaker"] == "S1")
    assert set(analysis["voice_similarity"]) == ({"S1"} if heard else set())
    for similarity in analysis["voice_similarity"].values():
        assert -1 <= similarity <= 1


async def test_the_analyses_are_counted_in_the_metrics(http, dora, mesh):
    port = mesh.env["GATEWAY_METRICS_PORT"]
    before = metric(port, "gateway_generation_word_error_rate_count")
    await generate(http, dora)
    assert metric(port, "gateway_generation_word_error_rate_count") == before + 1
    assert metric(port, 'gateway_generation_analyses_total{outcome="analyzed"}') >= 1


async def test_with_analysis_off_a_generation_has_none_and_no_captions(mesh, dora):
    async with extra_gateway(mesh, GATEWAY_ANALYSIS="false") as gateway:
        async with aiohttp.ClientSession(gateway.http_url) as http:
            await wait_for_models(http, dora)
            generation_id, _ = await generate(http, dora)
            assert "analysis" not in await history(http, dora, generation_id)
            response = await http.get(f"{GENERATIONS}/{generation_id}/captions.vtt", headers=dora.headers)
            await assert_error(response, 404, "analysis_not_found")


async def test_captions_of_an_unknown_generation_are_not_found(http, dora):
    response = await http.get(f"{GENERATIONS}/gen_{'x' * 20}/captions.vtt", headers=dora.headers)
    assert response.status == 404


async def test_an_analysis_slower_than_its_timeout_leaves_the_generation_without_one(mesh, dora):
    """Analysis is advice: past GATEWAY_ANALYSIS_TIMEOUT_SECONDS (its least, 0.1 s, is shorter than any
    recognition) the generation succeeds all the same, without it."""
    async with extra_gateway(mesh, GATEWAY_ANALYSIS_TIMEOUT_SECONDS="0.1") as gateway:
        async with aiohttp.ClientSession(gateway.http_url) as http:
            await wait_for_models(http, dora)
            generation_id, wav = await generate(http, dora)
            assert seconds_of(wav) > 0
            generation = await history(http, dora, generation_id)
            assert generation["status"] == "succeeded"
            assert "analysis" not in generation
            failed = metric(gateway.env["GATEWAY_METRICS_PORT"], 'gateway_generation_analyses_total{outcome="failed"}')
            assert failed == 1


async def test_openais_sse_stream_ends_with_the_timings_in_its_done_event(http, dora):
    body = {"model": "tts-1", "input": DIALOGUE, "response_format": "wav", "stream_format": "sse"}
    async with http.post("/v1/audio/speech", json=body, headers=dora.headers) as response:
        assert response.status == 200, await response.text()
        text = (await response.read()).decode()
        generation_id = response.headers["X-Generation-Id"]
    events = [json.loads(block[len("data: ") :]) for block in text.split("\n\n") if block]
    done = events[-1]
    assert done["type"] == "speech.audio.done"
    assert [word["text"] for word in done["analysis"]["words"]] == SCRIPT_WORDS
    assert done["analysis"] == (await history(http, dora, generation_id))["analysis"]
