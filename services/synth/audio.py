"""44.1 kHz mono 16-bit WAV in and out (Dia's codec works at 44.1 kHz)."""

from __future__ import annotations

import io
import wave

import numpy as np

from runtime.errors import invalid_argument

SAMPLE_RATE = 44100
# Dia's codec (DAC at 44.1 kHz) turns one frame of codes into this many samples: its hop length.
SAMPLES_PER_FRAME = 512


def read_prompt(data: bytes, max_seconds: float) -> np.ndarray:
    """The samples of a voice-cloning prompt as float32 in [-1, 1].

    The gateway sends prompts already decoded by the transcode service, so
    anything but 44.1 kHz mono 16-bit WAV is a caller's mistake.
    """
    param = "audio_prompt.wav"
    try:
        with wave.open(io.BytesIO(data), "rb") as reader:
            layout = (reader.getframerate(), reader.getnchannels(), reader.getsampwidth())
            frames = reader.readframes(reader.getnframes())
    except (wave.Error, EOFError) as error:
        raise invalid_argument("AUDIO_DECODE_FAILED", f"the audio prompt is not a WAV file: {error}", param) from None
    if layout != (SAMPLE_RATE, 1, 2):
        rate, channels, width = layout
        raise invalid_argument(
            "AUDIO_DECODE_FAILED",
            f"the audio prompt must be {SAMPLE_RATE} Hz mono 16-bit WAV, got {rate} Hz, "
            f"{channels} channel(s), {8 * width}-bit",
            param,
        )
    samples = np.frombuffer(frames[: len(frames) // 2 * 2], dtype="<i2")
    if samples.size == 0:
        raise invalid_argument("AUDIO_DECODE_FAILED", "the audio prompt has no samples", param)
    seconds = samples.size / SAMPLE_RATE
    if seconds > max_seconds:
        raise invalid_argument(
            "AUDIO_TOO_LONG",
            f"the audio prompt is {seconds:.1f} s; the limit is {max_seconds:g} s",
            param,
        )
    return samples.astype(np.float32) / 32768.0


def to_wav(samples: np.ndarray) -> bytes:
    """16-bit WAV of float samples; values beyond [-1, 1] are clipped, not wrapped."""
    return int16_wav((np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2"))


def int16_wav(pcm: np.ndarray) -> bytes:
    """WAV of 16-bit samples."""
    pcm = pcm.astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(SAMPLE_RATE)
        writer.writeframes(pcm.tobytes())
    return buffer.getvalue()


def duration_seconds(samples: np.ndarray) -> float:
    return samples.size / SAMPLE_RATE
