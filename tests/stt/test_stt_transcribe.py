"""End to end: the STT service, with the real transcode service, over gRPC."""

from __future__ import annotations

import asyncio
import io
import re
import wave

import grpc
import pytest

from runtime.errors import ApiError
from tests.conftest import ROOT, free_port
from tools import mesh as mesh_tools
from voice.stt.v1 import stt_pb2, stt_pb2_grpc

FIXTURES = ROOT / "tests" / "fixtures"
# A few distinctive words of each fixture's sentence (see tests/fixtures/README.md).
HELLO_WORDS = {"hello", "world", "sample", "testing"}
FOX_WORDS = {"quick", "brown", "fox"}

# The dedicated service of the limit tests: one running, one waiting, and a
# duration limit between the fox clip (2.9 s) and the fox clip with a second
# of silence after it (3.9 s).
TIGHT_SETTINGS = {"STT_MAX_CONCURRENCY": "1", "STT_MAX_QUEUE": "1", "STT_MAX_AUDIO_SECONDS": "3.4"}


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9']+", text.lower()))


def with_silence_after(wav: bytes, seconds: float) -> bytes:
    with wave.open(io.BytesIO(wav)) as source:
        params = source.getparams()
        frames = source.readframes(params.nframes)
    silence = b"\0" * (int(params.framerate * seconds) * params.sampwidth * params.nchannels)
    out = io.BytesIO()
    with wave.open(out, "wb") as target:
        target.setparams(params)
        target.writeframes(frames + silence)
    return out.getvalue()


def wav_seconds(wav: bytes) -> float:
    with wave.open(io.BytesIO(wav)) as clip:
        return clip.getnframes() / clip.getframerate()


async def transcribe(address: str, audio: bytes, language: str = "") -> stt_pb2.TranscribeResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        return await stt_pb2_grpc.SttServiceStub(channel).Transcribe(
            stt_pb2.TranscribeRequest(audio=audio, language=language), timeout=60
        )


async def transcribe_error(address: str, audio: bytes, language: str = "") -> ApiError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await transcribe(address, audio, language)
    return ApiError.from_rpc_error(caught.value)


@pytest.fixture(scope="module")
async def tight_stt(mesh):
    """A second STT process with tight limits, using the mesh's transcode service."""
    env = dict(mesh.env, **TIGHT_SETTINGS)
    env.update(STT_GRPC_PORT=str(free_port()), STT_METRICS_PORT=str(free_port()))
    process = mesh_tools.Mesh(["stt"], env)
    process.echo = mesh.echo
    try:
        await process.start(timeout=120)
        yield process.address("stt")
    finally:
        await process.stop()


@pytest.mark.parametrize(
    "name, expected",
    [
        ("speech_hello.webm", HELLO_WORDS),
        ("speech_hello.wav", HELLO_WORDS),
        ("speech_fox.webm", FOX_WORDS),  # stereo
        ("speech_fox.wav", FOX_WORDS),
    ],
)
async def test_transcribes_the_spoken_words(mesh, name, expected):
    reply = await transcribe(mesh.address("stt"), fixture(name))
    assert expected <= words(reply.text), reply.text
    assert reply.language == "en"  # detected: nothing was asked for


async def test_transcript_has_timed_segments_and_the_clip_duration(mesh):
    audio = fixture("speech_fox.wav")
    reply = await transcribe(mesh.address("stt"), audio)
    assert reply.duration_seconds == pytest.approx(wav_seconds(audio), abs=0.1)
    assert 0 < reply.language_probability <= 1
    assert reply.segments
    assert reply.text == " ".join(segment.text for segment in reply.segments)
    previous_end = 0.0
    for segment in reply.segments:
        assert previous_end <= segment.start_seconds < segment.end_seconds
        assert segment.end_seconds <= reply.duration_seconds + 0.5
        previous_end = segment.end_seconds


async def test_words_are_timed_when_asked_for_and_only_then(mesh):
    audio = fixture("speech_fox.wav")
    async with grpc.aio.insecure_channel(mesh.address("stt")) as channel:
        stub = stt_pb2_grpc.SttServiceStub(channel)
        timed = await stub.Transcribe(stt_pb2.TranscribeRequest(audio=audio, word_timestamps=True), timeout=60)
        plain = await stub.Transcribe(stt_pb2.TranscribeRequest(audio=audio), timeout=60)
    assert not any(segment.words for segment in plain.segments)
    timed_words = [word for segment in timed.segments for word in segment.words]
    assert FOX_WORDS <= words(" ".join(word.text for word in timed_words))
    assert " ".join(word.text for word in timed_words) == timed.text
    previous_end = 0.0
    for word in timed_words:
        assert previous_end <= word.start_seconds + 0.01 and word.start_seconds <= word.end_seconds
        previous_end = word.end_seconds
    assert previous_end <= wav_seconds(audio) + 0.1
    # "fox", the fourth of nine words, is said within the first half of the clip.
    fox_ends = next(word.end_seconds for word in timed_words if _plain(word.text) == "fox")
    assert 0.5 < fox_ends < wav_seconds(audio) / 2


def _plain(word: str) -> str:
    return re.sub(r"[^a-z']", "", word.lower())


async def test_a_requested_language_is_used(mesh):
    reply = await transcribe(mesh.address("stt"), fixture("speech_hello.webm"), language="EN")
    assert reply.language == "en"
    assert HELLO_WORDS <= words(reply.text)


async def test_a_language_the_english_model_lacks_is_refused(mesh):
    error = await transcribe_error(mesh.address("stt"), fixture("speech_hello.webm"), language="fr")
    assert (error.code, error.reason, error.param) == (
        grpc.StatusCode.INVALID_ARGUMENT, "UNSUPPORTED_LANGUAGE", "language"
    )


@pytest.mark.parametrize(
    "audio",
    [b"this is not audio at all" * 100, b"", fixture("speech_hello.webm")[:200]],
    ids=["garbage", "empty", "truncated"],
)
async def test_undecodable_audio_gives_the_transcode_error(mesh, audio):
    error = await transcribe_error(mesh.address("stt"), audio)
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "AUDIO_DECODE_FAILED")


async def test_audio_up_to_the_duration_limit_is_transcribed_and_longer_is_refused(tight_stt):
    fox = fixture("speech_fox.wav")
    longer = with_silence_after(fox, 1.0)
    limit = float(TIGHT_SETTINGS["STT_MAX_AUDIO_SECONDS"])
    assert wav_seconds(fox) < limit < wav_seconds(longer)

    assert FOX_WORDS <= words((await transcribe(tight_stt, fox)).text)
    error = await transcribe_error(tight_stt, longer)
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "AUDIO_TOO_LONG")


async def test_requests_past_the_running_and_waiting_bound_are_refused(tight_stt):
    audio = fixture("speech_fox.wav")
    # Six at once against one running and one waiting: the later ones arrive
    # while the first two are still decoding or transcribing.
    results = await asyncio.gather(
        *(transcribe(tight_stt, audio) for _ in range(6)), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    served = [r for r in results if isinstance(r, stt_pb2.TranscribeResponse)]
    assert len(refused) + len(served) == 6, results
    assert refused and served
    for error in map(ApiError.from_rpc_error, refused):
        assert (error.code, error.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "STT_BUSY")
    for reply in served:
        assert FOX_WORDS <= words(reply.text)
    # Refusals hold nothing: once the burst is over the service serves again.
    assert FOX_WORDS <= words((await transcribe(tight_stt, audio)).text)
