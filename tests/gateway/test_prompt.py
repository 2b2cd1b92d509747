"""The voice-cloning prompt: how two clips share its length, and the joined
audio as the real transcode service makes it.

A voice sample's audio is decodable when stored (the library decodes every
upload), so ``audio_decode_failed`` needs audio damaged at rest: here the real
transcode service is handed bytes that are not audio; test_generations.py
damages a stored sample and makes a real request.
"""

from __future__ import annotations

import io
import wave

import grpc
import numpy as np
import pytest

from runtime.errors import ApiError
from runtime.server import channel_options
from services.gateway.generation.prompt import Clip, assemble, shares
from tests.audio import wav_file

RATE = 44100


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


async def test_the_joined_prompt_is_s1_then_silence_then_s2_cut_to_their_shares(transcode):
    clips = [clip("S1", 8.0, 300, "[S2] Hello there."), clip("S2", 2.0, 500, "Hi.")]
    prompt = await assemble(transcode, clips, max_seconds=6.0, gap_seconds=0.3)
    pcm = samples(prompt.wav)
    # S2's 2 s fit; S1 keeps the rest: 6 - 0.3 - 2 = 3.7 s.
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
