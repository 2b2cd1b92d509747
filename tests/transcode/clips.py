"""Audio files for the transcode tests, made on the spot with PyAV (no binaries in git).

Analysis helpers read the service's output with the standard library or PyAV
directly, so the tests do not judge the service with its own code.
"""

from __future__ import annotations

import io
import wave
from fractions import Fraction

import av
import numpy as np

from tests.audio import wav_file

# name: (FFmpeg muxer, encoder, sample rate the encoder supports)
FORMATS = {
    "wav": ("wav", "pcm_s16le", 48000),
    "flac": ("flac", "flac", 48000),
    "mp3": ("mp3", "libmp3lame", 44100),
    "ogg": ("ogg", "libopus", 48000),
    "webm": ("webm", "libopus", 48000),
    "m4a": ("ipod", "aac", 44100),
    "adts": ("adts", "aac", 44100),
}


def tone(
    seconds: float, rate: int, channels: int = 1, freq: float = 440.0, amplitude: float = 0.5
) -> np.ndarray:
    """A sine, the same in every channel: float32 of shape (channels, samples)."""
    t = np.arange(int(round(seconds * rate))) / rate
    wave_ = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.tile(wave_, (channels, 1))


class _Unseekable(io.RawIOBase):
    """An output muxers cannot seek back in, as a live recorder's: no duration gets written."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, chunk) -> int:
        self.data += bytes(chunk)
        return len(chunk)


def encode(
    samples: np.ndarray,
    rate: int,
    muxer: str,
    encoder: str,
    *,
    seekable: bool = True,
    frame_samples: int = 4096,
    **options: str,
) -> bytes:
    """Encode (channels, samples) float audio with PyAV (which converts to what the encoder takes)."""
    layout = {1: "mono", 2: "stereo"}[samples.shape[0]]
    out = io.BytesIO() if seekable else _Unseekable()
    with av.open(out, "w", format=muxer) as container:
        stream = container.add_stream(encoder, rate=rate, layout=layout, options=options)
        for start in range(0, samples.shape[1], frame_samples):
            block = np.ascontiguousarray(samples[:, start : start + frame_samples])
            frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=layout)
            frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return out.getvalue() if seekable else bytes(out.data)


def clip(fmt: str, seconds: float = 2.0, channels: int = 2, freq: float = 440.0) -> bytes:
    """A tone in one of FORMATS."""
    muxer, encoder, rate = FORMATS[fmt]
    return encode(tone(seconds, rate, channels, freq), rate, muxer, encoder)


def wav(samples: np.ndarray, rate: int) -> bytes:
    """16-bit WAV of (channels, samples) float audio, with the standard library."""
    interleaved = np.clip(np.rint(samples.T * 32767), -32768, 32767)
    return wav_file(interleaved, rate, channels=samples.shape[0])


def silent_flac(seconds: float, *, seekable: bool = True) -> bytes:
    """Silence as 8 kHz FLAC in 65535-sample blocks: an hour is about 14 KB.

    Unseekable, it goes into Matroska instead (FLAC's own header is always
    rewritten at the end), which then declares no duration at all.
    """
    rate, block = 8000, 65535
    muxer = "flac" if seekable else "matroska"
    out = io.BytesIO() if seekable else _Unseekable()
    with av.open(out, "w", format=muxer) as container:
        stream = container.add_stream("flac", rate=rate, layout="mono", options={"frame_size": str(block)})
        zeros = np.zeros((1, block), dtype=np.int16)
        total = int(seconds * rate)
        for start in range(0, total, block):
            block_zeros = zeros[:, : min(block, total - start)]
            frame = av.AudioFrame.from_ndarray(block_zeros, format="s16", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return out.getvalue() if seekable else bytes(out.data)


# --- Broken inputs ------------------------------------------------------------


def random_bytes(size: int = 4096, seed: int = 7) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def header_only(fmt: str) -> bytes:
    """The file's headers, cut where its first audio would begin."""
    data = clip(fmt)
    if fmt == "wav":
        return data[: data.index(b"data") + 8]
    if fmt == "webm":
        return data[: data.index(bytes.fromhex("1F43B675"))]  # the first Cluster
    if fmt == "ogg":
        return data[: _ogg_page_end(data, _ogg_page_end(data, 0))]  # OpusHead and OpusTags pages
    if fmt == "flac":
        position = 4  # "fLaC", then metadata blocks until the one flagged last
        while True:
            last, size = data[position] & 0x80, int.from_bytes(data[position + 1 : position + 4], "big")
            position += 4 + size
            if last:
                return data[:position]
    raise ValueError(fmt)


def _ogg_page_end(data: bytes, start: int) -> int:
    segments = data[start + 26]
    return start + 27 + segments + sum(data[start + 27 : start + 27 + segments])


# --- Reading output -------------------------------------------------------------


def read_wav(data: bytes) -> tuple:
    """A WAV's parameters and its samples as int16, with the standard library."""
    with wave.open(io.BytesIO(data), "rb") as reader:
        params = reader.getparams()
        frames = reader.readframes(params.nframes)
    return params, np.frombuffer(frames, dtype="<i2")


def wav_seconds(data: bytes) -> float:
    params, _ = read_wav(data)
    return params.nframes / params.framerate


def probe(data: bytes) -> tuple[str, str, int, int, float]:
    """Container, codec, sample rate, channels and decoded seconds, by PyAV directly."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        seconds = sum(frame.samples / frame.sample_rate for frame in container.decode(stream))
        return (
            container.format.name,
            stream.codec_context.codec.canonical_name,
            stream.sample_rate,
            stream.channels,
            seconds,
        )


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(np.argmax(spectrum)) * rate / len(samples)


def peak(samples: np.ndarray) -> float:
    """Peak amplitude of int16 samples as a fraction of full scale, ignoring the edges."""
    middle = samples[len(samples) // 10 : -len(samples) // 10]
    return float(np.abs(middle.astype(np.float64)).max()) / 32768
