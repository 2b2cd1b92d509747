"""Audio files for tests, made with the standard library."""

from __future__ import annotations

import io
import wave

import numpy as np


def wav_file(samples: np.ndarray, rate: int, channels: int = 1) -> bytes:
    """A 16-bit WAV of `samples`: int16 values, interleaved when there are several channels."""
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(np.asarray(samples).astype("<i2").tobytes())
    return out.getvalue()
