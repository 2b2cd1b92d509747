"""Refusing work with a Retry-After (runtime.admission), the RetryInfo that carries it
between services (runtime.errors), and payloads serialized without extra copies (runtime.wire)."""

from __future__ import annotations

import grpc
import pytest
from google.api import httpbody_pb2
from google.protobuf.message import DecodeError

from runtime import wire
from runtime.admission import MAX_RETRY_SECONDS, UNKNOWN_RETRY_SECONDS, Gate, Throughput, retry_after
from runtime.errors import ApiError
from voice.library.v1 import library_pb2
from voice.transcode.v1 import transcode_pb2


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_throughput_is_what_finished_within_the_window_over_the_time_since_it_began():
    clock = Clock()
    throughput = Throughput(window_seconds=10, clock=clock)
    assert throughput.per_second() is None  # nothing finished: no rate to go by
    clock.now += 100  # idle for a long time: that is not slowness
    began = clock.now
    clock.now += 2
    throughput.record(4, began)  # a batch of 4 in 2 s
    assert throughput.per_second() == pytest.approx(4 / 2)
    clock.now += 2
    throughput.record(4, began + 2)  # and another
    assert throughput.per_second() == pytest.approx(8 / 4)
    clock.now += 8.5  # the first batch finished longer than the window ago
    assert throughput.per_second() == pytest.approx(4 / 10.5)
    clock.now += 2
    assert throughput.per_second() is None


def test_retry_after_is_the_work_ahead_at_the_recent_rate_between_1_and_60_seconds():
    clock = Clock()
    throughput = Throughput(window_seconds=10, clock=clock)
    assert retry_after(8, throughput) == UNKNOWN_RETRY_SECONDS
    clock.now += 10
    throughput.record(20, clock.now - 10)  # 2 a second
    assert retry_after(10, throughput) == pytest.approx(5)
    assert retry_after(1, throughput) == 1.0  # never less than a second
    assert retry_after(10_000, throughput) == MAX_RETRY_SECONDS


def busy(inside: int, seconds: float) -> ApiError:
    return ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, "BUSY", f"{inside} inside", retry_after=seconds)


def test_a_gate_takes_its_limit_and_refuses_one_more_at_once_until_one_leaves():
    gate = Gate(2, busy)
    with gate.admit(), gate.admit():
        with pytest.raises(ApiError) as caught:
            with gate.admit():
                pass
        assert caught.value.reason == "BUSY" and caught.value.message == "2 inside"
        assert caught.value.retry_after == UNKNOWN_RETRY_SECONDS
    with gate.admit():
        assert gate.inside == 1


def test_a_request_that_fails_inside_the_gate_still_leaves_it():
    gate = Gate(1, busy)
    with pytest.raises(RuntimeError):
        with gate.admit():
            raise RuntimeError("decoding failed")
    with gate.admit():
        pass


def test_retry_info_travels_in_the_status_and_comes_back():
    sent = ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, "SYNTH_BUSY", "busy", retry_after=2.5)

    class Call(grpc.RpcError):  # what a client holds of a failed call: code, details, trailers
        def __init__(self, status: grpc.Status) -> None:
            self.status = status

        def code(self):
            return self.status.code

        def details(self):
            return self.status.details

        def trailing_metadata(self):
            return self.status.trailing_metadata

    received = ApiError.from_rpc_error(Call(sent.to_status()))
    assert (received.reason, received.retry_after) == ("SYNTH_BUSY", 2.5)
    plain = ApiError.from_rpc_error(Call(ApiError(grpc.StatusCode.INVALID_ARGUMENT, "X", "y").to_status()))
    assert plain.retry_after is None


@pytest.mark.parametrize("size", [0, 1, 127, 128, 300, 70_000, 3_000_000])
def test_a_bytes_field_appended_on_the_wire_reads_back_as_if_set(size):
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    request = library_pb2.CreateVoiceSampleRequest(
        speaker_name="Ada", transcript="hello", audio=httpbody_pb2.HttpBody(content_type="audio/wav", data=b"old")
    )
    parsed = library_pb2.CreateVoiceSampleRequest.FromString(wire.with_bytes_field(request, "audio.data", data))
    expected = library_pb2.CreateVoiceSampleRequest()
    expected.CopyFrom(request)
    expected.audio.data = data
    assert parsed == expected

    top = transcode_pb2.DecodeAudioRequest(max_duration_seconds=120)
    assert transcode_pb2.DecodeAudioRequest.FromString(wire.with_bytes_field(top, "audio", data)) == (
        transcode_pb2.DecodeAudioRequest(audio=data, max_duration_seconds=120)
    )


def test_only_a_singular_bytes_field_can_be_appended():
    with pytest.raises(ValueError):
        wire.with_bytes_field(library_pb2.CreateVoiceSampleRequest(), "speaker_name", b"x")


@pytest.mark.parametrize(
    "size, pieces",
    [(0, 1), (1, 1), (999, 1), (1000, 1), (1001, 2), (2000, 2), (2001, 3), (9_999, 10)],
)
def test_a_bytes_field_sent_in_pieces_joins_back_to_the_whole_with_the_other_fields_in_the_first(size, pieces):
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    first = transcode_pb2.StreamingDecodeAudioRequest(max_duration_seconds=120)
    messages = [
        transcode_pb2.StreamingDecodeAudioRequest.FromString(serialized)
        for serialized in wire.in_pieces(first, "audio", memoryview(data), 1000)
    ]
    assert len(messages) == pieces
    assert [len(message.audio) for message in messages[:-1]] == [1000] * (pieces - 1)
    assert b"".join(message.audio for message in messages) == data
    assert [message.max_duration_seconds for message in messages] == [120] + [0] * (pieces - 1)


@pytest.mark.parametrize("size", [0, 1, 200, 70_000])
def test_a_lifted_bytes_field_is_a_view_of_the_wire_and_the_rest_parses_as_usual(size):
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    request = library_pb2.CreateVoiceSampleRequest(
        speaker_name="Ada", is_default=True, audio=httpbody_pb2.HttpBody(content_type="audio/wav", data=data)
    )
    serialized = request.SerializeToString()
    parsed, lifted = wire.lift_bytes_field(serialized, library_pb2.CreateVoiceSampleRequest, "audio.data")
    assert isinstance(lifted, memoryview) and lifted.obj is serialized and bytes(lifted) == data
    request.audio.data = b""
    assert parsed == request

    appended = wire.with_bytes_field(request, "audio.data", data)  # the field after the others
    parsed, lifted = wire.lift_bytes_field(appended, library_pb2.CreateVoiceSampleRequest, "audio.data")
    assert (parsed, bytes(lifted)) == (request, data)


def test_a_malformed_message_is_refused_as_protobuf_refuses_it():
    serialized = library_pb2.CreateVoiceSampleRequest(speaker_name="Ada").SerializeToString()
    with pytest.raises(DecodeError):
        wire.lift_bytes_field(serialized[:-1], library_pb2.CreateVoiceSampleRequest, "audio.data")
    parsed, lifted = wire.lift_bytes_field(b"", library_pb2.CreateVoiceSampleRequest, "audio.data")
    assert parsed == library_pb2.CreateVoiceSampleRequest() and bytes(lifted) == b""
