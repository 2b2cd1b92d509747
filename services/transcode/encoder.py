"""Encoding :class:`Pcm` into the response formats, in process with FFmpeg (PyAV)."""

from __future__ import annotations

import enum
import io
from dataclasses import dataclass
from fractions import Fraction

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


class _Sink:
    """A write-only file for a muxer, without seek: what it is given is taken away as it comes.
    (Without seek the muxers write no trailing fix-ups: no length in FLAC's header, no Xing
    frame in MP3; players do without them, as they do for any stream.)"""

    def __init__(self) -> None:
        self._pieces: list[bytes] = []

    def write(self, data) -> int:
        self._pieces.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self._pieces)
        self._pieces.clear()
        return out


def streaming_wav_header(sample_rate: int) -> bytes:
    """A 16-bit mono WAV header of unknown length (its sizes 0xFFFFFFFF), as streams send it."""
    return Pcm(np.zeros(0, dtype=np.int16), sample_rate).wav()[:36] + b"data" + b"\xff\xff\xff\xff"


class StreamingEncoder:
    """Encodes 44.1 kHz 16-bit mono samples given piece by piece: push() and finish() return the
    bytes of ``fmt`` made so far, which joined are one file of that format (WAV with a header of
    unknown length)."""

    def __init__(self, fmt: Format, bit_rate: int = 0, sample_rate: int = SAMPLE_RATE) -> None:
        self.fmt = fmt
        self._pts = 0
        self._resampler = None
        if fmt is not Format.OGG_OPUS and sample_rate != SAMPLE_RATE:
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
        self._head = streaming_wav_header(sample_rate) if fmt is Format.WAV else b""
        self._container = self._stream = None
        codec = CODECS.get(fmt)
        if codec is not None:
            self._sink = _Sink()
            # Ogg would hold a second of audio per page; a page per 100 ms keeps the stream moving.
            options = {"page_duration": "100000"} if fmt is Format.OGG_OPUS else {}
            self._container = av.open(self._sink, "w", format=codec.muxer, options=options)
            self._stream = self._container.add_stream(codec.encoder, rate=codec.sample_rate or sample_rate, layout="mono")
            if codec.bit_rates is not None:
                self._stream.bit_rate = bit_rate or codec.bit_rates[1]

    def push(self, samples: np.ndarray) -> bytes:
        frame = av.AudioFrame.from_ndarray(samples.astype(np.int16)[np.newaxis, :], format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.time_base = Fraction(1, SAMPLE_RATE)
        frame.pts = self._pts
        self._pts += samples.size
        return self._out([frame] if samples.size else [])

    def finish(self) -> bytes:
        return self._out(None)

    def _out(self, frames: list[av.AudioFrame] | None) -> bytes:
        """The bytes of `frames`; None: the end, flushing the resampler and the encoder."""
        final = frames is None
        if self._resampler is not None:
            frames = [out for frame in (frames or [None]) for out in self._resampler.resample(frame)]
        frames = frames or []
        if self._container is None:  # WAV, PCM: the samples as they are
            out, self._head = self._head + b"".join(f.to_ndarray()[0].astype("<i2").tobytes() for f in frames), b""
            return out
        for frame in frames:
            self._container.mux(self._stream.encode(frame))
        if final:
            self._container.mux(self._stream.encode(None))  # drain the encoder
            self._container.close()
        return self._sink.take()
