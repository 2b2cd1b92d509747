"""Voice prompts made by synth of the caller's samples (services/synth/voices.py): how two clips
share the prompt's length, where a clip is cut between words and its transcript with it, and,
through the running library, real speech cut by the word timings the library kept at upload
(one fetch per sample, no speech recognition when the prompt is made)."""

from __future__ import annotations

import re

import asyncpg
import grpc
import numpy as np
import pytest

from runtime.errors import ApiError
from runtime.server import channel_options
from services.synth.audio import SAMPLE_RATE, to_wav
from services.synth.voices import Clip, Library, Word, assemble, cut_between_words, read_wav, said_before, shares
from tests.library.helpers import library_client, new_account, upload
from tests.synth.helpers import metric
from tests.conftest import ROOT
from voice.library.v1 import library_pb2_grpc
from voice.stt.v1 import stt_pb2, stt_pb2_grpc
from voice.synth.v1 import synth_pb2

RATE = SAMPLE_RATE
FIXTURES = ROOT / "tests" / "fixtures"


def test_two_clips_that_fit_are_kept_whole():
    assert shares([3.0, 4.0], max_seconds=10, gap_seconds=0.5) == [3.0, 4.0]


def test_two_long_clips_share_the_prompt_equally_after_the_gap():
    assert shares([30.0, 50.0], max_seconds=10, gap_seconds=0.5) == [4.75, 4.75]


def test_a_short_clip_leaves_its_unused_share_to_the_other():
    assert shares([2.0, 50.0], max_seconds=10, gap_seconds=0.5) == [2.0, 7.5]
    assert shares([50.0, 2.0], max_seconds=10, gap_seconds=0.5) == [7.5, 2.0]


def test_one_clip_may_fill_the_whole_prompt():
    assert shares([30.0], max_seconds=10, gap_seconds=0.5) == [10.0]
    assert shares([3.0], max_seconds=10, gap_seconds=0.5) == [3.0]


def test_even_the_shortest_prompt_keeps_both_voices():
    kept = shares([5.0, 5.0], max_seconds=1, gap_seconds=0.5)  # the lowest limit, the widest gap
    assert kept == [0.25, 0.25]


def tone(seconds: float, frequency: float) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return (np.sin(2 * np.pi * frequency * t) * 8000 / 32768).astype(np.float32)


def clip(speaker: str, seconds: float, frequency: float, transcript: str = "words", words=None) -> Clip:
    return Clip(speaker, 1, 1, tone(seconds, frequency), transcript, words)


def test_the_joined_prompt_is_s1_then_silence_then_s2():
    clips = [clip("S1", 3.7, 300, "[S2] Hello there.", []), clip("S2", 2.0, 500, "Hi.", [])]
    made = assemble(clips, max_seconds=6.0, gap_seconds=0.3)
    assert made.exact  # both fit: nothing to cut
    pcm = made.samples * 32768
    assert len(pcm) == pytest.approx(6.0 * RATE, abs=2)
    s1, gap, s2 = pcm[: round(3.7 * RATE)], pcm[round(3.7 * RATE) : round(4.0 * RATE)], pcm[round(4.0 * RATE) :]
    assert np.abs(s1[100:-100]).max() > 4000 and np.abs(s2[100:-100]).max() > 4000
    assert np.abs(gap[10:-10]).max() == 0
    # The speaker is the one the caller assigned, whatever tags a stored transcript holds.
    assert made.transcript == "[S1] Hello there. [S2] Hi."


def test_a_sample_that_does_not_decode_is_audio_decode_failed_naming_its_speaker():
    with pytest.raises(ApiError) as caught:
        read_wav(b"RIFF not really a wave file" * 10, "speakers.S2", 2)
    assert (caught.value.reason, caught.value.param) == ("AUDIO_DECODE_FAILED", "speakers.S2")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT  # 400 over HTTP


# --- a clip cut to its share is cut between words, its transcript with it ---------------------

FOX_TRANSCRIPT = "The quick brown fox jumps over the lazy dog."


def timed(*spans: tuple[float, float, str]) -> list[Word]:
    return [Word(start, end, text) for start, end, text in spans]


FOX_HEARD = timed(
    (0.0, 0.28, "The"), (0.28, 0.54, "quick"), (0.54, 0.86, "brown"), (0.86, 1.2, "fox"),
    (1.2, 1.52, "dump"), (1.52, 1.84, "over"), (1.84, 2.04, "the"), (2.04, 2.3, "lady"), (2.3, 2.62, "nog."),
)


def test_a_clip_is_cut_after_the_last_word_that_ends_within_its_share():
    cut = cut_between_words(FOX_HEARD, FOX_TRANSCRIPT, 1.5)
    assert (cut.seconds, cut.transcript) == (1.2, "The quick brown fox")
    # Misheard words ("dump" for "jumps") still stand for the written ones.
    assert cut_between_words(FOX_HEARD, FOX_TRANSCRIPT, 2.4).transcript == "The quick brown fox jumps over the lazy"
    assert cut_between_words(FOX_HEARD, FOX_TRANSCRIPT, 0.2) is None  # not even "The"


def test_silence_after_the_last_word_is_kept_up_to_the_share():
    heard = timed((0.0, 0.4, "Hello"), (1.5, 1.9, "world."))
    cut = cut_between_words(heard, "Hello, world.", 1.0)
    assert (cut.seconds, cut.transcript) == (1.0, "Hello,")


def test_written_words_are_shared_out_where_they_differ_from_those_heard():
    heard = ["I", "am", "25", "years", "old"]
    assert said_before(heard, 3, "I am twenty five years old") == "I am twenty five"
    assert said_before(heard, 2, "I am twenty five years old") == "I am"


def test_a_transcript_that_says_something_else_gives_way_to_the_words_heard():
    heard = ["The", "quick", "brown", "fox", "jumps"]
    assert said_before(heard, 2, "Completely unrelated words typed by someone.") == "The quick"


def test_a_clip_cut_by_its_word_timings_keeps_the_words_before_the_cut():
    fox = Clip("S1", 1, 1, tone(2.7, 300), FOX_TRANSCRIPT, FOX_HEARD)
    made = assemble([fox], max_seconds=1.5, gap_seconds=0.3)
    assert made.exact and made.samples.size == round(1.2 * RATE)
    assert made.transcript == "[S1] The quick brown fox"


def test_without_word_timings_a_clip_is_kept_whole_with_its_whole_transcript():
    # Not timed (speech recognition was down when the library needed it): nothing to cut between.
    made = assemble([clip("S1", 3.0, 300, "Hello there.", words=None)], max_seconds=1.0, gap_seconds=0.3)
    assert not made.exact  # so not cached: cut properly once timed
    assert made.samples.size == pytest.approx(3.0 * RATE, abs=2)
    assert made.transcript == "[S1] Hello there."


# --- real speech, through the running library -------------------------------------------------


@pytest.fixture
async def library(mesh):
    async with library_client(mesh.address("library")) as channel:
        yield library_pb2_grpc.LibraryServiceStub(channel)


@pytest.fixture
async def voices(mesh):
    """Synth's library client, on the mesh's library."""
    fetching = Library()
    fetching.channel = grpc.aio.insecure_channel(mesh.address("library"), options=channel_options())
    yield fetching
    await fetching.close()


@pytest.fixture
async def stt(mesh):
    async with grpc.aio.insecure_channel(mesh.address("stt"), options=channel_options()) as channel:
        yield channel


def plain_words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", re.sub(r"\[S\d\]", " ", text).lower())


async def stored(library, account: int, name: str, transcript: str):
    return await upload(library, account, (FIXTURES / name).read_bytes(), transcript=transcript)


def asked(account: int, samples, max_seconds: float, gap_seconds: float = 0.3) -> synth_pb2.VoicePrompt:
    return synth_pb2.VoicePrompt(
        account_id=account,
        samples=[synth_pb2.VoiceSampleRef(speaker=speaker, sample_id=sample.id) for speaker, sample in samples],
        max_seconds=max_seconds,
        gap_seconds=gap_seconds,
    )


def word_timings(port, source: str) -> float:
    return metric(port, f'library_prompt_samples_total{{word_timings="{source}"}}')


async def test_the_transcript_sent_with_a_trimmed_prompt_is_what_its_audio_says(mesh, library, voices, stt):
    account = new_account()
    fox = await stored(library, account, "speech_fox.wav", FOX_TRANSCRIPT)
    port = mesh.env["LIBRARY_METRICS_PORT"]
    computed_before = word_timings(port, "computed")
    made = await voices.made(asked(account, [("S1", fox)], max_seconds=1.5))
    # The words were timed at upload (the transcript was typed, the audio still heard): none now.
    assert word_timings(port, "computed") == computed_before
    assert made.exact
    assert made.samples.size / RATE <= 1.5
    sent = plain_words(made.transcript)
    assert made.transcript.startswith("[S1] The quick")
    assert sent == plain_words(FOX_TRANSCRIPT)[: len(sent)] and 2 <= len(sent) < 9
    # The recognizer, hearing the prompt's audio alone, hears as many words as are sent (the tiny
    # model mishears some of a cut clip: "The quick round box") and none of the later ones.
    reply = await stt_pb2_grpc.SttServiceStub(stt).Transcribe(
        stt_pb2.TranscribeRequest(audio=to_wav(made.samples), language="en"), timeout=60
    )
    heard = plain_words(reply.text)
    assert len(heard) == len(sent) and heard[:2] == sent[:2], (reply.text, made.transcript)
    assert not {"jumps", "over", "lazy", "dog"} & set(heard)


async def test_both_speakers_are_cut_between_words_with_their_transcripts(library, voices):
    account = new_account()
    hello = await stored(library, account, "speech_hello.wav", "[S2] Hello world, this is a voice sample for testing.")
    fox = await stored(library, account, "speech_fox.wav", FOX_TRANSCRIPT)
    made = await voices.made(asked(account, [("S1", hello), ("S2", fox)], max_seconds=3.0))
    assert made.exact and made.samples.size <= 3.0 * RATE
    s1, s2 = re.fullmatch(r"\[S1\] (.*) \[S2\] (.*)", made.transcript).groups()
    assert s1.startswith("Hello") and "testing" not in s1
    assert s2.startswith("The quick") and "dog" not in s2


async def test_a_share_too_short_for_one_word_is_refused_naming_the_prompt_length(library, voices):
    account = new_account()
    hello = await stored(library, account, "speech_hello.wav", "Hello world, this is a voice sample for testing.")
    fox = await stored(library, account, "speech_fox.wav", FOX_TRANSCRIPT)
    with pytest.raises(ApiError) as caught:  # 0.1 s each: shorter than any first word
        await voices.made(asked(account, [("S1", hello), ("S2", fox)], max_seconds=0.5))
    assert (caught.value.reason, caught.value.param) == ("INVALID_PARAMETER", "max_audio_prompt_seconds")
    assert "speakers.S1" in caught.value.message


async def test_another_accounts_sample_is_not_found_for_a_prompt(library, voices):
    owner, other = new_account(), new_account()
    fox = await stored(library, owner, "speech_fox.wav", FOX_TRANSCRIPT)
    with pytest.raises(ApiError) as caught:
        await voices.made(asked(other, [("S2", fox)], max_seconds=2.0))
    assert (caught.value.reason, caught.value.param) == ("INVALID_VOICE_SAMPLE", "speakers.S2")


async def test_of_two_speakers_the_one_whose_sample_is_not_found_is_named(library, voices):
    owner, other = new_account(), new_account()
    hello = await stored(library, owner, "speech_hello.wav", "Hello world, this is a voice sample for testing.")
    fox = await stored(library, other, "speech_fox.wav", FOX_TRANSCRIPT)
    for samples, param in ([("S1", hello), ("S2", fox)], "speakers.S2"), ([("S1", fox), ("S2", hello)], "speakers.S1"):
        with pytest.raises(ApiError) as caught:  # both fetched in one call; the missing one named
            await voices.made(asked(owner, samples, max_seconds=5.0))
        assert (caught.value.reason, caught.value.param) == ("INVALID_VOICE_SAMPLE", param)


class OneAtATime(library_pb2_grpc.PromptSampleServiceServicer):
    """A library from before BatchGetPromptSamples (UNIMPLEMENTED): GetPromptSample alone, passed on."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.library = library_pb2_grpc.PromptSampleServiceStub(channel)

    async def GetPromptSample(self, request, context):
        try:
            return await self.library.GetPromptSample(request)
        except grpc.aio.AioRpcError as error:
            await context.abort(error.code(), error.details())


async def test_a_library_without_batched_fetches_is_asked_one_sample_at_a_time(mesh, library, voices):
    account = new_account()
    hello = await stored(library, account, "speech_hello.wav", "Hello world, this is a voice sample for testing.")
    fox = await stored(library, account, "speech_fox.wav", FOX_TRANSCRIPT)
    server = grpc.aio.server()
    library_pb2_grpc.add_PromptSampleServiceServicer_to_server(OneAtATime(voices.channel), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    older = Library()
    older.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=channel_options())
    try:
        prompt = asked(account, [("S1", hello), ("S2", fox)], max_seconds=3.0)
        made = await older.made(prompt)
        expected = await voices.made(prompt)
        assert (made.transcript, made.key) == (expected.transcript, expected.key)
        assert np.array_equal(made.samples, expected.samples)
        with pytest.raises(ApiError) as caught:
            await older.made(asked(new_account(), [("S1", hello)], max_seconds=3.0))
        assert (caught.value.reason, caught.value.param) == ("INVALID_VOICE_SAMPLE", "speakers.S1")
    finally:
        await older.close()
        await server.stop(None)


async def test_a_sample_stored_without_word_timings_is_timed_once_then_kept(mesh, library, voices):
    account = new_account()
    fox = await stored(library, account, "speech_fox.wav", FOX_TRANSCRIPT)
    connection = await asyncpg.connect(mesh.env["DATABASE_URL"])
    try:  # as a sample stored before the library kept word timings
        await connection.execute("UPDATE library.samples SET word_timings = NULL WHERE id = $1", fox.id)
    finally:
        await connection.close()
    port = mesh.env["LIBRARY_METRICS_PORT"]
    computed_before = word_timings(port, "computed")
    first = await voices.made(asked(account, [("S1", fox)], max_seconds=1.5))
    assert word_timings(port, "computed") - computed_before == 1
    again = await voices.made(asked(account, [("S1", fox)], max_seconds=1.5))
    assert word_timings(port, "computed") - computed_before == 1  # stored: not timed again
    assert first.exact and first.transcript == again.transcript and first.transcript.startswith("[S1] The quick")
    # Keeping the timings is no change of the sample: its version, which prompts are cached by, stays.
    assert first.key == again.key



def test_speaker_tags_of_any_spelling_in_a_stored_transcript_give_way_to_the_callers_speaker():
    made = assemble([clip("S2", 1.0, 300, "[s1] Hello [ S2 ]  there.", [])], max_seconds=5.0, gap_seconds=0.3)
    assert made.transcript == "[S2] Hello there."
