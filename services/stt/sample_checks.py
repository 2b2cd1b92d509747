"""What may make a voice sample clone poorly: its length, silence, clipping, a second voice.

Blocking work for worker threads. The thresholds are settings (config.py); a sample that
trips one is still stored: the warnings are advice.
"""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass, field

import numpy as np

from services.stt.analysis import Voices
from services.stt.recognizer import WHISPER_SAMPLE_RATE, decoded

# A 30 ms stretch quieter than this (RMS, -40 dBFS) is silence.
SILENCE_LEVEL = 0.01
SILENCE_FRAME_SECONDS = 0.03
# A 16-bit sample this near full scale is taken as clipped.
CLIPPED_LEVEL = 32_700


@dataclass(frozen=True)
class Thresholds:
    min_seconds: float
    max_seconds: float
    max_silence_ratio: float
    max_clipped_ratio: float
    same_speaker_similarity: float


@dataclass
class SampleCheck:
    duration_seconds: float
    silence_ratio: float
    clipped_ratio: float
    least_window_similarity: float
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (code, message)


def pcm16(wav: bytes) -> np.ndarray:
    """The 16-bit samples of a mono WAV (the transcode service's output)."""
    with wave.open(io.BytesIO(wav)) as reader:
        return np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2")


def silence_ratio(samples: np.ndarray, rate: int = WHISPER_SAMPLE_RATE) -> float:
    """Share of the clip's 30 ms frames that are quieter than SILENCE_LEVEL."""
    size = int(rate * SILENCE_FRAME_SECONDS)
    count = samples.size // size
    if count == 0:
        return 1.0
    frames = samples[: count * size].reshape(count, size)
    levels = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
    return float(np.mean(levels < SILENCE_LEVEL))


def least_window_similarity(voices: Voices, samples: np.ndarray) -> float:
    """The least cosine similarity between two windows of the clip's speech (1.0 for too little speech)."""
    windows = voices.window_embeddings(samples)
    if len(windows) < 2:
        return 1.0
    return float(np.min(windows @ windows.T))


def check_sample(voices: Voices, wav: bytes, thresholds: Thresholds) -> SampleCheck:
    """Measure a sample (a 16-bit mono WAV) and say what looks wrong with it."""
    pcm = pcm16(wav)
    samples = decoded(wav)
    check = SampleCheck(
        duration_seconds=samples.size / WHISPER_SAMPLE_RATE,
        silence_ratio=silence_ratio(samples),
        clipped_ratio=float(np.mean(np.abs(pcm.astype(np.int32)) >= CLIPPED_LEVEL)) if pcm.size else 0.0,
        least_window_similarity=least_window_similarity(voices, samples),
    )
    warn = check.warnings.append
    if check.duration_seconds < thresholds.min_seconds:
        warn(("too_short", f"the sample is {check.duration_seconds:.1f} s long; clones need at least "
                           f"{thresholds.min_seconds:g} s of speech to catch the voice"))
    if check.duration_seconds > thresholds.max_seconds:
        warn(("too_long", f"the sample is {check.duration_seconds:.1f} s long; only the first "
                          f"{thresholds.max_seconds:g} s or so fit beside a script in the model's window"))
    if check.silence_ratio > thresholds.max_silence_ratio:
        warn(("mostly_silence", f"{check.silence_ratio:.0%} of the sample is silence; trim it or record closer "
                                "to the microphone"))
    if check.clipped_ratio > thresholds.max_clipped_ratio:
        warn(("clipping", f"{check.clipped_ratio:.2%} of the sample is at full scale (clipped); record at a "
                          "lower level"))
    if check.least_window_similarity < thresholds.same_speaker_similarity:
        warn(("several_speakers", "more than one voice seems to speak in the sample; a clone needs one speaker "
                                  "alone"))
    return check
