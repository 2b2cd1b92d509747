"""The service's one internal audio representation: 44.1 kHz mono 16-bit PCM.

Every input is decoded to a :class:`Pcm`, every operation works on one, and
every output is made from one, so each conversion happens in exactly one place.
Only an output asked for at another sample rate is a :class:`Pcm` of that
rate, made last by :func:`resampled`.
"""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator

import av
import numpy as np

SAMPLE_RATE = 44100
# Frames handed to FFmpeg encoders and filters: one second each, few enough
# that PyAV's per-frame cost stays negligible.
FRAME_SAMPLES = SAMPLE_RATE


@dataclass(frozen=True)
class Pcm:
    samples: np.ndarray  # int16, one channel
    sample_rate: int = SAMPLE_RATE

    @property
    def duration_seconds(self) -> float:
        return len(self.samples) / self.sample_rate

    def wav(self) -> bytes:
        """A RIFF WAV file of the samples."""
        out = io.BytesIO()
        with wave.open(out, "wb") as writer:
            writer.setnchannels(1)
            writer.setsampwidth(2)
            writer.setframerate(self.sample_rate)
            writer.writeframes(self.raw())
        return out.getvalue()

    def raw(self) -> bytes:
        """Headerless signed 16-bit little-endian samples."""
        return self.samples.astype("<i2", copy=False).tobytes()

    def frames(self) -> Iterator[av.AudioFrame]:
        """The samples as s16 mono PyAV frames with timestamps, for encoders and filters."""
        for start in range(0, len(self.samples), FRAME_SAMPLES):
            block = self.samples[start : start + FRAME_SAMPLES]
            frame = av.AudioFrame.from_ndarray(block[np.newaxis, :], format="s16", layout="mono")
            frame.sample_rate = self.sample_rate
            frame.time_base = Fraction(1, self.sample_rate)
            frame.pts = start
            yield frame

    def trimmed(self, max_seconds: float) -> "Pcm":
        return Pcm(self.samples[: int(round(max_seconds * self.sample_rate))], self.sample_rate)


def resampled(pcm: Pcm, rate: int) -> Pcm:
    """The audio at another sample rate, exactly as long (to the nearest sample)."""
    if rate == pcm.sample_rate:
        return pcm
    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
    out = [frame.to_ndarray()[0] for block in pcm.frames() for frame in resampler.resample(block)]
    out += [frame.to_ndarray()[0] for frame in resampler.resample(None)]  # what the filter still holds
    samples = np.concatenate(out) if out else np.zeros(0, dtype=np.int16)
    # The resampler's delay leaves it a few samples off; callers rely on the length.
    target = round(len(pcm.samples) * rate / pcm.sample_rate)
    return Pcm(np.pad(samples[:target], (0, max(target - len(samples), 0))), rate)


def silence(seconds: float) -> Pcm:
    return Pcm(np.zeros(int(round(seconds * SAMPLE_RATE)), dtype=np.int16))


def join(parts: list[Pcm]) -> Pcm:
    if not parts:
        return Pcm(np.zeros(0, dtype=np.int16))
    return Pcm(np.concatenate([part.samples for part in parts]))


def float_to_int16(samples: np.ndarray) -> np.ndarray:
    """Full scale float (-1..1) to int16, clipping what lies outside."""
    scaled = np.rint(np.asarray(samples, dtype=np.float32) * 32768.0)
    return np.clip(scaled, -32768, 32767).astype(np.int16)


# numpy types of FFmpeg's sample formats; planar ("fltp") and packed ("flt") alike.
SAMPLE_DTYPES = {
    "u8": np.uint8, "s16": np.int16, "s32": np.int32, "s64": np.int64, "flt": np.float32, "dbl": np.float64,
}  # fmt: skip


def frame_to_mono(frame: av.AudioFrame) -> np.ndarray:
    """A decoded frame of any sample format as float32 mono, the AVERAGE of its channels.

    FFmpeg's own downmix (libswresample) weights channels by 0.707 and sums, so a
    stereo clip with the same signal in both channels would come out ~3 dB louder.
    Planes are read directly: this runs for every decoded frame, and
    ``to_ndarray`` costs several times more.
    """
    dtype = SAMPLE_DTYPES[frame.format.name.rstrip("p")]
    channels, samples = frame.layout.nb_channels, frame.samples
    if frame.format.is_planar:
        planes = [np.frombuffer(plane, dtype, samples) for plane in frame.planes[:channels]]
    else:  # one buffer, channels interleaved
        packed = np.frombuffer(frame.planes[0], dtype, samples * channels)
        planes = [packed[channel::channels] for channel in range(channels)]
    mono = planes[0].astype(np.float32)
    for plane in planes[1:]:
        mono += plane
    kind = np.dtype(dtype).kind
    if kind == "u":  # unsigned 8-bit: silence is 128
        mono -= 128.0 * channels
        full_scale = 128.0
    elif kind == "i":
        full_scale = float(np.iinfo(dtype).max) + 1.0
    else:
        full_scale = 1.0
    mono *= 1.0 / (full_scale * channels)
    return mono
