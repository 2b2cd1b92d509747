"""End to end: the transcode service as a process, called over gRPC (see conftest.py)."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.transcode import clips
from voice.transcode.v1 import transcode_pb2 as pb

TIMEOUT = 30


def expect_error(call, request, reason: str, param: str | None = None) -> str:
    """Call, expect INVALID_ARGUMENT with ``reason`` in its ErrorInfo; returns the message."""
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=TIMEOUT)
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    status = rpc_status.from_call(error)
    assert status is not None, "no google.rpc.Status in the trailers"
    infos = []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            infos.append(info)
    assert [info.reason for info in infos] == [reason], error.details()
    if param is not None:
        assert infos[0].metadata["param"] == param
    message = error.details()
    assert message and "Traceback" not in message and 'File "' not in message, message
    return message


def decode_wav(transcode, audio: bytes) -> pb.DecodeAudioResponse:
    return transcode.DecodeAudio(pb.DecodeAudioRequest(audio=audio), timeout=TIMEOUT)


def test_stereo_48k_opus_in_webm_becomes_44k_mono_16_bit_wav_of_the_same_duration(transcode):
    clip = clips.encode(clips.tone(10.0, 48000, channels=2), 48000, "webm", "libopus")
    reply = decode_wav(transcode, clip)
    params, samples = clips.read_wav(reply.wav)
    assert (params.framerate, params.nchannels, params.sampwidth) == (44100, 1, 2)
    assert abs(params.nframes / 44100 - 10.0) <= 0.020
    assert reply.info.duration_seconds == pytest.approx(params.nframes / 44100)
    assert reply.info.sample_rate == 44100
    assert (reply.info.source_format, reply.info.source_codec) == ("matroska,webm", "opus")
    assert (reply.info.source_sample_rate, reply.info.source_channels) == (48000, 2)
    assert clips.dominant_frequency(samples, 44100) == pytest.approx(440, rel=0.01)


def test_mono_downmix_averages_the_channels(transcode):
    same = clips.tone(2.0, 44100, channels=2, amplitude=0.5)
    _, samples = clips.read_wav(decode_wav(transcode, clips.wav(same, 44100)).wav)
    assert clips.peak(samples) == pytest.approx(0.5, rel=0.01)
    left_only = same * np.array([[1.0], [0.0]], dtype=np.float32)
    _, samples = clips.read_wav(decode_wav(transcode, clips.wav(left_only, 44100)).wav)
    assert clips.peak(samples) == pytest.approx(0.25, rel=0.01)


def test_speed_1_25_shortens_by_1_25_at_the_same_pitch(transcode):
    source = clips.wav(clips.tone(4.0, 44100, freq=440.0), 44100)
    reply = transcode.ChangeSpeed(pb.ChangeSpeedRequest(audio=source, speed_factor=1.25), timeout=TIMEOUT)
    params, samples = clips.read_wav(reply.wav)
    assert params.nframes / 44100 == pytest.approx(4.0 / 1.25, rel=0.02)
    assert reply.duration_seconds == pytest.approx(params.nframes / 44100)
    assert clips.dominant_frequency(samples, 44100) == pytest.approx(440.0, rel=0.02)


def test_speed_outside_half_to_double_is_refused(transcode):
    source = clips.wav(clips.tone(1.0, 44100), 44100)
    for factor in (0.0, 0.49, 2.01):
        request = pb.ChangeSpeedRequest(audio=source, speed_factor=factor)
        expect_error(transcode.ChangeSpeed, request, "INVALID_PARAMETER", "speed_factor")


def test_concatenation_is_the_sum_of_the_clips_plus_the_gaps(transcode):
    first = clips.wav(clips.tone(1.0, 44100), 44100)
    second = clips.clip("webm", seconds=2.5)
    reply = transcode.ConcatenateAudio(
        pb.ConcatenateAudioRequest(clips=[first, second, first], gap_seconds=0.5), timeout=TIMEOUT
    )
    assert clips.wav_seconds(reply.wav) == pytest.approx(1.0 + 0.5 + 2.5 + 0.5 + 1.0, abs=0.02)
    assert reply.duration_seconds == pytest.approx(clips.wav_seconds(reply.wav))
    trimmed = transcode.ConcatenateAudio(
        pb.ConcatenateAudioRequest(clips=[first, second], gap_seconds=0.5, max_duration_seconds=2.0),
        timeout=TIMEOUT,
    )
    assert clips.wav_seconds(trimmed.wav) == pytest.approx(2.0, abs=0.001)


def test_concatenation_gap_over_ten_seconds_is_refused(transcode):
    request = pb.ConcatenateAudioRequest(clips=[clips.clip("wav")], gap_seconds=10.5)
    expect_error(transcode.ConcatenateAudio, request, "INVALID_PARAMETER", "gap_seconds")


def test_concatenation_names_the_clip_that_fails(transcode):
    request = pb.ConcatenateAudioRequest(clips=[clips.clip("wav"), b"not audio"])
    message = expect_error(transcode.ConcatenateAudio, request, "AUDIO_DECODE_FAILED", "clips")
    assert message.startswith("clip 2 of 2:")


BROKEN = {
    "empty": lambda: b"",
    "random bytes": lambda: clips.random_bytes(),
    "truncated webm": lambda: (data := clips.clip("webm"))[: len(data) // 2],
    "truncated wav": lambda: (data := clips.clip("wav"))[: len(data) // 2],
    "truncated ogg": lambda: (data := clips.clip("ogg"))[: len(data) // 2],
    "header-only webm": lambda: clips.header_only("webm"),
    "header-only wav": lambda: clips.header_only("wav"),
}


@pytest.mark.parametrize("name", BROKEN)
def test_undecodable_input_is_audio_decode_failed(transcode, name):
    audio = BROKEN[name]()
    expect_error(transcode.DecodeAudio, pb.DecodeAudioRequest(audio=audio), "AUDIO_DECODE_FAILED", "audio")
    request = pb.EncodeAudioRequest(audio=audio, format=pb.AUDIO_FORMAT_MP3)
    expect_error(transcode.EncodeAudio, request, "AUDIO_DECODE_FAILED", "audio")


@pytest.mark.parametrize("declares_duration", [True, False], ids=["flac", "matroska-without-duration"])
def test_a_small_file_of_hours_of_audio_is_refused_quickly(transcode, transcode_process, declares_duration):
    hour = clips.silent_flac(3600, seekable=declares_duration)
    assert len(hour) < 20_000
    # The issue asks for under a second; the best of three keeps a busy machine from failing it.
    times = []
    for _ in range(3):
        started = time.perf_counter()
        message = expect_error(transcode.DecodeAudio, pb.DecodeAudioRequest(audio=hour), "AUDIO_TOO_LONG")
        times.append(time.perf_counter() - started)
        if times[-1] < 1.0:
            break
    assert f"{transcode_process.max_duration_seconds:g} s" in message
    assert min(times) < 1.0, times


def test_request_can_lower_the_duration_limit(transcode):
    audio = clips.clip("flac", seconds=3.0)
    request = pb.DecodeAudioRequest(audio=audio, max_duration_seconds=2.0)
    assert "2 s" in expect_error(transcode.DecodeAudio, request, "AUDIO_TOO_LONG")
    request = pb.DecodeAudioRequest(audio=audio, max_duration_seconds=1e9)  # capped to the service's limit
    assert transcode.DecodeAudio(request, timeout=TIMEOUT).info.duration_seconds == pytest.approx(3.0)


def test_input_of_exactly_the_size_limit_passes_and_one_byte_more_fails(transcode, transcode_process):
    limit = transcode_process.max_input_bytes  # small, set by conftest
    samples = (limit - 44) // 2  # a canonical WAV header is 44 bytes
    at_limit = clips.wav(clips.tone(samples / 44100, 44100), 44100)
    assert len(at_limit) == limit
    assert decode_wav(transcode, at_limit).info.duration_seconds == pytest.approx(samples / 44100)
    over = at_limit + b"\0"
    request = pb.DecodeAudioRequest(audio=over)
    message = expect_error(transcode.DecodeAudio, request, "AUDIO_TOO_LARGE", "audio")
    assert str(limit) in message


ENCODINGS = {
    pb.AUDIO_FORMAT_WAV: ("audio/wav", "wav", "pcm_s16le", 44100, 0.001),
    pb.AUDIO_FORMAT_FLAC: ("audio/flac", "flac", "flac", 44100, 0.001),
    pb.AUDIO_FORMAT_MP3: ("audio/mpeg", "mp3", "mp3", 44100, 0.05),
    pb.AUDIO_FORMAT_OGG_OPUS: ("audio/ogg", "ogg", "opus", 48000, 0.05),
    pb.AUDIO_FORMAT_AAC: ("audio/aac", "aac", "aac", 44100, 0.05),
}


@pytest.mark.parametrize("fmt", ENCODINGS, ids=[pb.AudioFormat.Name(f) for f in ENCODINGS])
def test_each_encoding_decodes_back_to_the_same_duration(transcode, fmt):
    content_type, container, codec, rate, tolerance = ENCODINGS[fmt]
    source = clips.clip("webm", seconds=3.0)
    reply = transcode.EncodeAudio(pb.EncodeAudioRequest(audio=source, format=fmt), timeout=TIMEOUT)
    assert reply.content_type == content_type
    assert reply.duration_seconds == pytest.approx(3.0, abs=0.02)
    found = clips.probe(reply.audio)
    assert found[:4] == (container, codec, rate, 1)
    assert found[4] == pytest.approx(reply.duration_seconds, abs=tolerance)


def test_pcm_encoding_is_the_raw_samples_of_the_wav(transcode):
    source = clips.clip("webm", seconds=1.0)
    wav = decode_wav(transcode, source).wav
    request = pb.EncodeAudioRequest(audio=source, format=pb.AUDIO_FORMAT_PCM)
    reply = transcode.EncodeAudio(request, timeout=TIMEOUT)
    assert reply.content_type == "audio/pcm"
    assert reply.audio == wav[44:]


def test_encoding_needs_a_format_and_a_sane_bit_rate(transcode):
    source = clips.clip("wav", seconds=0.5)
    expect_error(transcode.EncodeAudio, pb.EncodeAudioRequest(audio=source), "INVALID_PARAMETER", "format")
    request = pb.EncodeAudioRequest(audio=source, format=pb.AUDIO_FORMAT_MP3, bit_rate=5_000_000)
    expect_error(transcode.EncodeAudio, request, "INVALID_PARAMETER", "bit_rate")


# --- StreamingDecodeAudio: the input in pieces --------------------------------------


def in_pieces(audio: bytes, sizes: list[int], max_duration_seconds: float = 0.0):
    """Messages of StreamingDecodeAudio: `audio` cut at the given piece sizes (the last piece
    takes the rest), the first message with `max_duration_seconds`."""
    messages, start = [], 0
    for size in sizes:
        messages.append(pb.StreamingDecodeAudioRequest(audio=audio[start : start + size]))
        start += size
    messages.append(pb.StreamingDecodeAudioRequest(audio=audio[start:]))
    messages[0].max_duration_seconds = max_duration_seconds
    return iter(messages)


@pytest.mark.parametrize("fmt", ["webm", "wav", "mp3"])
def test_audio_sent_in_pieces_decodes_exactly_as_sent_whole(transcode, fmt):
    audio = clips.clip(fmt, seconds=2.0)
    whole = decode_wav(transcode, audio)
    # Headers cut byte by byte, an empty piece, pieces of odd sizes, the rest in one.
    cuts = [1] * 40 + [0, 7, 1000, 0, 4093]
    assert sum(cuts) < len(audio)
    reply = transcode.StreamingDecodeAudio(in_pieces(audio, cuts), timeout=TIMEOUT)
    assert (reply.wav, reply.info) == (whole.wav, whole.info)
    one = transcode.StreamingDecodeAudio(in_pieces(audio, []), timeout=TIMEOUT)  # a single message
    assert (one.wav, one.info) == (whole.wav, whole.info)


def test_the_first_message_sets_the_duration_limit_of_a_stream(transcode):
    audio = clips.clip("flac", seconds=3.0)
    message = expect_error(
        transcode.StreamingDecodeAudio, in_pieces(audio, [100, 100], max_duration_seconds=2.0), "AUDIO_TOO_LONG"
    )
    assert "2 s" in message
    # A later message's value is not read.
    later = [
        pb.StreamingDecodeAudioRequest(audio=audio[:100]),
        pb.StreamingDecodeAudioRequest(audio=audio[100:], max_duration_seconds=2.0),
    ]
    reply = transcode.StreamingDecodeAudio(iter(later), timeout=TIMEOUT)
    assert reply.info.duration_seconds == pytest.approx(3.0)


def test_a_stream_of_no_audio_is_audio_decode_failed(transcode):
    no_pieces = [pb.StreamingDecodeAudioRequest(max_duration_seconds=5)]
    empty_pieces = [pb.StreamingDecodeAudioRequest()] * 3
    for messages in ([], no_pieces, empty_pieces):
        message = expect_error(transcode.StreamingDecodeAudio, iter(messages), "AUDIO_DECODE_FAILED", "audio")
        assert "empty" in message


def test_a_streamed_small_file_of_hours_of_audio_is_refused_too(transcode, transcode_process):
    hour = clips.silent_flac(3600)
    message = expect_error(transcode.StreamingDecodeAudio, in_pieces(hour, [1000]), "AUDIO_TOO_LONG")
    assert f"{transcode_process.max_duration_seconds:g} s" in message


def test_a_stream_of_exactly_the_size_limit_passes_and_one_byte_more_fails(transcode, transcode_process):
    limit = transcode_process.max_input_bytes
    samples = (limit - 44) // 2
    at_limit = clips.wav(clips.tone(samples / 44100, 44100), 44100)
    assert len(at_limit) == limit
    cuts = [256 * 1024] * (limit // (256 * 1024))
    reply = transcode.StreamingDecodeAudio(in_pieces(at_limit, cuts), timeout=TIMEOUT)
    assert reply.info.duration_seconds == pytest.approx(samples / 44100)
    message = expect_error(
        transcode.StreamingDecodeAudio, in_pieces(at_limit + b"\0", cuts), "AUDIO_TOO_LARGE", "audio"
    )
    assert str(limit) in message


def test_a_stream_over_the_size_limit_is_refused_without_waiting_for_the_rest(transcode, transcode_process):
    piece = b"\0" * (64 * 1024)
    endless_bytes = 50 * transcode_process.max_input_bytes
    sent = 0

    def endless():
        nonlocal sent
        while sent < endless_bytes:  # a stop, in case the service waited for the end after all
            sent += len(piece)
            yield pb.StreamingDecodeAudioRequest(audio=piece)

    expect_error(transcode.StreamingDecodeAudio, endless(), "AUDIO_TOO_LARGE", "audio")
    # Refused after the limit and what flow control lets through past it, not at the stream's end.
    assert sent < endless_bytes / 2, sent
