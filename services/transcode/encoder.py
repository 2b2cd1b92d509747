"""Encoding :class:`Pcm` into the response formats, in process with FFmpeg (PyAV)."""

from __future__ import annotations

import enum
import io
from dataclasses import dataclass

import av
import numpy as np

from services.transcode.pcm import SAMPLE_RATE, Pcm, resampled


class Format(enum.Enum):
    WAV = "wav"
    FLAC = "flac"
    MP3 = "mp3"
    OGG_OPUS = "ogg_opus"
    AAC = "aac"
    PCM = "pcm"


@dataclass(frozen=True)
class Codec:
    muxer: str  # FFmpeg's container name
    encoder: str
    content_type: str
    # Bit rates of lossy codecs, bits per second: (lowest, default, highest).
    bit_rates: tuple[int, int, int] | None = None
    # The one rate the codec runs at; None: the audio's own.
    sample_rate: int | None = None


CODECS = {
    Format.FLAC: Codec("flac", "flac", "audio/flac"),
    Format.MP3: Codec("mp3", "libmp3lame", "audio/mpeg", (8_000, 128_000, 320_000)),
    # Opus runs at 48 kHz only; PyAV's encoder resamples to it.
    Format.OGG_OPUS: Codec("ogg", "libopus", "audio/ogg", (6_000, 64_000, 510_000), sample_rate=48_000),
    Format.AAC: Codec("adts", "aac", "audio/aac", (16_000, 128_000, 512_000)),
}
# The output rates every format takes (those of MP3, the most limited).
SAMPLE_RATES = (8_000, 11_025, 12_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000)
# The resampler to 48 kHz swallows a clip of a few samples whole and the Ogg
# file would come out empty; such clips are padded with silence to 10 ms.
OPUS_MIN_SAMPLES = SAMPLE_RATE // 100
CONTENT_TYPES = {
    Format.WAV: "audio/wav",
    # audio/L16 would say big-endian (RFC 2586); these samples are little-endian.
    Format.PCM: "audio/pcm",
    **{fmt: codec.content_type for fmt, codec in CODECS.items()},
}


def bit_rate_range(fmt: Format) -> tuple[int, int] | None:
    """The bit rates a lossy format accepts, or None for lossless formats (which ignore it)."""
    codec = CODECS.get(fmt)
    if codec is None or codec.bit_rates is None:
        return None
    return codec.bit_rates[0], codec.bit_rates[2]


def encode(pcm: Pcm, fmt: Format, bit_rate: int = 0, sample_rate: int = SAMPLE_RATE) -> bytes:
    """The audio in ``fmt`` at ``sample_rate`` (one of SAMPLE_RATES); ``bit_rate`` 0 picks the
    format's default. Validate them first."""
    if fmt is not Format.OGG_OPUS:  # Opus runs at 48 kHz whatever is asked
        pcm = resampled(pcm, sample_rate)
    if fmt is Format.WAV:
        return pcm.wav()
    if fmt is Format.PCM:
        return pcm.raw()
    codec = CODECS[fmt]
    if fmt is Format.OGG_OPUS and len(pcm.samples) < OPUS_MIN_SAMPLES:
        pcm = Pcm(np.pad(pcm.samples, (0, OPUS_MIN_SAMPLES - len(pcm.samples))))
    out = io.BytesIO()
    with av.open(out, "w", format=codec.muxer) as container:
        stream = container.add_stream(codec.encoder, rate=codec.sample_rate or pcm.sample_rate, layout="mono")
        if codec.bit_rates is not None:
            stream.bit_rate = bit_rate or codec.bit_rates[1]
        for frame in pcm.frames():
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))  # drain the encoder
    return out.getvalue()
