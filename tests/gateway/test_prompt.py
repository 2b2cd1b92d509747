"""The voice-cloning prompt: how two clips share its length, and the joined
audio as the real transcode service makes it.

A voice sample's audio is decodable when stored (the library decodes every
upload), so ``audio_decode_failed`` needs audio damaged at rest: here the real
transcode service is handed bytes that are not audio; test_generations.py
damages a stored sample and makes a real request.
"""

from __future__ import annotations

import io
import re
import wave

import grpc
import numpy as np
import pytest

from runtime.errors import ApiError
from runtime.server import channel_options
from services.gateway.generation.prompt import Clip, Word, assemble, cut_between_words, said_before, shares
from tests.audio import wav_file
from tests.conftest import ROOT
from voice.stt.v1 import stt_pb2, stt_pb2_grpc

RATE = 44100
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


def tone(seconds: float, frequency: float) -> bytes:
    t = np.arange(round(seconds * RATE)) / RATE
    return wav_file(np.sin(2 * np.pi * frequency * t) * 8000, RATE)


def samples(data: bytes) -> np.ndarray:
    with wave.open(io.BytesIO(data)) as reader:
        assert (reader.getframerate(), reader.getnchannels(), reader.getsampwidth()) == (RATE, 1, 2)
        return np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2")


@pytest.fixture
async def transcode(mesh):
    async with grpc.aio.insecure_channel(mesh.address("transcode"), options=channel_options()) as channel:
        yield channel


def clip(speaker: str, seconds: float, frequency: float, transcript: str = "words") -> Clip:
    return Clip(speaker, 1, tone(seconds, frequency), transcript, seconds)


async def test_the_joined_prompt_is_s1_then_silence_then_s2(transcode):
    clips = [clip("S1", 3.7, 300, "[S2] Hello there."), clip("S2", 2.0, 500, "Hi.")]
    made = await assemble(transcode, clips, max_seconds=6.0, gap_seconds=0.3)
    prompt = made.prompt
    assert made.exact  # both fit: nothing to cut
    pcm = samples(prompt.wav)
    assert len(pcm) == pytest.approx(6.0 * RATE, abs=2)
    s1, gap, s2 = pcm[: round(3.7 * RATE)], pcm[round(3.7 * RATE) : round(4.0 * RATE)], pcm[round(4.0 * RATE) :]
    assert np.abs(s1[100:-100]).max() > 4000 and np.abs(s2[100:-100]).max() > 4000
    assert np.abs(gap[10:-10]).max() == 0
    # The speaker is the one the caller assigned, whatever tags a stored transcript holds.
    assert prompt.transcript == "[S1] Hello there. [S2] Hi."


async def test_a_sample_that_does_not_decode_is_audio_decode_failed_naming_its_speaker(transcode):
    damaged = Clip("S2", 2, b"RIFF not really a wave file" * 10, "words", 3.0)
    with pytest.raises(ApiError) as caught:
        await assemble(transcode, [clip("S1", 1.0, 300), damaged], max_seconds=10, gap_seconds=0.3)
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


@pytest.fixture
async def stt(mesh):
    async with grpc.aio.insecure_channel(mesh.address("stt"), options=channel_options()) as channel:
        yield channel


def fixture_clip(speaker: str, name: str, transcript: str) -> Clip:
    wav = (FIXTURES / name).read_bytes()
    with wave.open(io.BytesIO(wav)) as reader:
        seconds = reader.getnframes() / reader.getframerate()
    return Clip(speaker, 1, wav, transcript, seconds)


def plain_words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", re.sub(r"\[S\d\]", " ", text).lower())


async def test_the_transcript_sent_with_a_trimmed_prompt_is_what_its_audio_says(transcode, stt):
    fox = fixture_clip("S1", "speech_fox.wav", FOX_TRANSCRIPT)
    made = await assemble(transcode, [fox], max_seconds=1.5, gap_seconds=0.3, stt=stt)
    assert made.exact
    kept_seconds = len(samples(made.prompt.wav)) / RATE
    assert kept_seconds <= 1.5
    sent = plain_words(made.prompt.transcript)
    assert made.prompt.transcript.startswith("[S1] The quick")
    assert sent == plain_words(FOX_TRANSCRIPT)[: len(sent)] and 2 <= len(sent) < 9
    # The recognizer, hearing the prompt's audio alone, hears as many words as are sent (the tiny
    # model mishears some of a cut clip: "The quick round box") and none of the later ones.
    reply = await stt_pb2_grpc.SttServiceStub(stt).Transcribe(
        stt_pb2.TranscribeRequest(audio=made.prompt.wav, language="en"), timeout=60
    )
    heard = plain_words(reply.text)
    assert len(heard) == len(sent) and heard[:2] == sent[:2], (reply.text, made.prompt.transcript)
    assert not {"jumps", "over", "lazy", "dog"} & set(heard)


async def test_both_speakers_are_cut_between_words_with_their_transcripts(transcode, stt):
    hello = fixture_clip("S1", "speech_hello.wav", "[S2] Hello world, this is a voice sample for testing.")
    fox = fixture_clip("S2", "speech_fox.wav", FOX_TRANSCRIPT)
    made = await assemble(transcode, [hello, fox], max_seconds=3.0, gap_seconds=0.3, stt=stt)
    assert made.exact and len(samples(made.prompt.wav)) <= 3.0 * RATE
    s1, s2 = re.fullmatch(r"\[S1\] (.*) \[S2\] (.*)", made.prompt.transcript).groups()
    assert s1.startswith("Hello") and "testing" not in s1
    assert s2.startswith("The quick") and "dog" not in s2


async def test_without_word_timings_a_clip_is_kept_whole_with_its_whole_transcript(transcode):
    # A tone: the recognizer hears no words to cut between (here it is not even asked).
    made = await assemble(transcode, [clip("S1", 3.0, 300, "Hello there.")], max_seconds=1.0, gap_seconds=0.3)
    assert not made.exact
    assert len(samples(made.prompt.wav)) == pytest.approx(3.0 * RATE, abs=2)
    assert made.prompt.transcript == "[S1] Hello there."


async def test_a_share_too_short_for_one_word_is_refused_naming_the_prompt_length(transcode, stt):
    hello = fixture_clip("S1", "speech_hello.wav", "Hello world, this is a voice sample for testing.")
    fox = fixture_clip("S2", "speech_fox.wav", FOX_TRANSCRIPT)
    with pytest.raises(ApiError) as caught:  # 0.1 s each: shorter than any first word
        await assemble(transcode, [hello, fox], max_seconds=0.5, gap_seconds=0.3, stt=stt)
    assert (caught.value.reason, caught.value.param) == ("INVALID_PARAMETER", "max_audio_prompt_seconds")
    assert "speakers.S1" in caught.value.message
