"""StreamEncodeAudio: pieces of samples in, the bytes of one file of the format out as they are made."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from voice.transcode.v1 import transcode_pb2 as pb

SECONDS = 2
PIECE = 22016  # 43 codec frames: the chunks a streamed generation sends


def tone() -> np.ndarray:
    return (np.sin(2 * np.pi * 220 * np.arange(44100 * SECONDS) / 44100) * 8000).astype("<i2")


def requests(fmt: int, sample_rate: int = 0):
    samples = tone()
    for start in range(0, samples.size, PIECE):
        message = pb.StreamEncodeAudioRequest(pcm=samples[start : start + PIECE].tobytes())
        if start == 0:
            message.format, message.sample_rate = fmt, sample_rate
        yield message


@pytest.mark.parametrize(
    "fmt, content_type",
    [
        (pb.AUDIO_FORMAT_MP3, "audio/mpeg"),
        (pb.AUDIO_FORMAT_OGG_OPUS, "audio/ogg"),
        (pb.AUDIO_FORMAT_AAC, "audio/aac"),
        (pb.AUDIO_FORMAT_FLAC, "audio/flac"),
        (pb.AUDIO_FORMAT_WAV, "audio/wav"),
    ],
)
def test_each_piece_is_answered_with_bytes_that_join_into_a_decodable_file(transcode, fmt, content_type):
    answers = list(transcode.StreamEncodeAudio(requests(fmt)))
    assert {answer.content_type for answer in answers} == {content_type}
    pieces = -(-44100 * SECONDS // PIECE)
    assert len(answers) == pieces + 1  # one per piece, and the encoder's tail
    assert sum(1 for answer in answers[:pieces] if answer.audio) >= pieces - 1  # not all held to the end
    decoded = transcode.DecodeAudio(pb.DecodeAudioRequest(audio=b"".join(a.audio for a in answers)))
    assert decoded.info.duration_seconds == pytest.approx(SECONDS, abs=0.06)


def test_pcm_at_24_khz_is_the_resampled_samples(transcode):
    answers = list(transcode.StreamEncodeAudio(requests(pb.AUDIO_FORMAT_PCM, 24000)))
    data = b"".join(a.audio for a in answers)
    assert len(data) // 2 == pytest.approx(24000 * SECONDS, abs=64)
    assert answers[0].content_type == "audio/pcm"


def test_an_unknown_format_or_rate_is_refused(transcode):
    with pytest.raises(grpc.RpcError) as caught:
        list(transcode.StreamEncodeAudio(requests(pb.AUDIO_FORMAT_MP3, 12345)))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
