"""End to end: the STT service's AnalyzeSpeech and CheckSample, with the real transcode service, over gRPC."""

from __future__ import annotations

import grpc
import pytest

from runtime.errors import ApiError
from tests.conftest import ROOT
from voice.stt.v1 import stt_pb2, stt_pb2_grpc

FIXTURES = ROOT / "tests" / "fixtures"
SCRIPT = (
    "[S1] Good morning, how are you today? [S2] (laughs) I am fine, thank you for asking. "
    "[S1] The weather is lovely this morning."
)


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


async def call(address: str, method: str, message):
    async with grpc.aio.insecure_channel(address) as channel:
        return await getattr(stt_pb2_grpc.SttServiceStub(channel), method)(message, timeout=120)


async def refused(address: str, method: str, message) -> ApiError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(address, method, message)
    return ApiError.from_rpc_error(caught.value)


async def test_a_dialogue_is_timed_scored_and_its_voices_compared(mesh):
    reply = await call(
        mesh.address("stt"),
        "AnalyzeSpeech",
        stt_pb2.AnalyzeSpeechRequest(
            audio=fixture("dialogue_two_voices.wav"),
            script=SCRIPT,
            speaker_samples=[
                stt_pb2.SpeakerSample(speaker="S1", audio=fixture("sample_voice_one.wav")),
                stt_pb2.SpeakerSample(speaker="S2", audio=fixture("sample_voice_two.wav")),
            ],
        ),
    )
    assert len(reply.words) == 19
    assert [turn.speaker for turn in reply.turns] == ["S1", "S2", "S1"]
    assert all(turn.heard for turn in reply.turns)
    assert 0 < reply.turns[0].end_seconds <= reply.turns[1].start_seconds
    assert reply.turns[2].end_seconds <= reply.duration_seconds
    assert 0 <= reply.word_error_rate < 0.5
    assert {similarity.speaker for similarity in reply.voice_similarities} == {"S1", "S2"}
    assert all(0.7 < similarity.similarity <= 1 for similarity in reply.voice_similarities)
    assert "lovely" in reply.transcript.lower()


@pytest.mark.parametrize(
    "request_fields, reason, param",
    [
        ({"script": "(laughs)"}, "MISSING_SCRIPT", "script"),
        ({"audio": b""}, "MISSING_AUDIO", "audio"),
        ({"speaker_samples": [stt_pb2.SpeakerSample(speaker="S3", audio=b"x")]}, "INVALID_SPEAKER", "speaker_samples"),
        ({"language": "xx"}, "UNSUPPORTED_LANGUAGE", "language"),
    ],
)
async def test_bad_analysis_requests_are_refused_with_their_reason(mesh, request_fields, reason, param):
    fields = {"audio": fixture("speech_fox.wav"), "script": "[S1] The quick brown fox.", **request_fields}
    error = await refused(mesh.address("stt"), "AnalyzeSpeech", stt_pb2.AnalyzeSpeechRequest(**fields))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.reason, error.param) == (reason, param)


async def test_undecodable_audio_is_refused_as_the_transcode_service_says(mesh):
    error = await refused(
        mesh.address("stt"), "AnalyzeSpeech", stt_pb2.AnalyzeSpeechRequest(audio=b"not audio", script="[S1] Hi.")
    )
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "AUDIO_DECODE_FAILED"


async def test_sample_checks_warn_a_two_voice_sample_and_not_a_one_voice_one(mesh):
    one = await call(mesh.address("stt"), "CheckSample", stt_pb2.CheckSampleRequest(audio=fixture("sample_voice_one.wav")))
    two = await call(mesh.address("stt"), "CheckSample", stt_pb2.CheckSampleRequest(audio=fixture("sample_two_voices.wav")))
    assert list(one.warnings) == []
    assert [warning.code for warning in two.warnings] == ["several_speakers"]
    assert two.warnings[0].message
    assert one.duration_seconds == pytest.approx(5.44, abs=0.05)
