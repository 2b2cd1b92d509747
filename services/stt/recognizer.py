"""faster-whisper behind a small, blocking interface (called from worker threads)."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import faster_whisper
import numpy as np

log = logging.getLogger("stt.recognizer")

# faster-whisper works on 16 kHz mono float samples.
WHISPER_SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class Word:
    start_seconds: float
    end_seconds: float
    text: str


@dataclass(frozen=True)
class Segment:
    start_seconds: float
    end_seconds: float
    text: str
    words: tuple[Word, ...] = ()


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str
    language_probability: float
    duration_seconds: float
    segments: list[Segment]


def decoded(wav: bytes) -> np.ndarray:
    """A WAV clip as the 16 kHz mono float samples the recognizer reads."""
    return faster_whisper.decode_audio(io.BytesIO(wav), sampling_rate=WHISPER_SAMPLE_RATE)


class Recognizer:
    def __init__(self, model: str, device: str, compute_type: str, workers: int) -> None:
        """Load the model (blocking: seconds, or minutes when a hub id must be downloaded).

        `workers` lets that many transcribe() calls from different threads run in parallel.
        """
        self.model = faster_whisper.WhisperModel(
            model, device=device, compute_type=compute_type, num_workers=workers
        )
        log.info(
            "model loaded",
            extra={"model": model, "device": device, "compute_type": compute_type,
                   "languages": len(self.languages)},
        )

    @property
    def languages(self) -> list[str]:
        """ISO 639-1 codes the model transcribes (["en"] for an English-only model)."""
        return self.model.supported_languages

    def transcribe(self, wav: bytes, language: str | None, word_timestamps: bool = False) -> Transcript:
        """Transcribe a WAV clip; `language` None detects it; `word_timestamps` times each word."""
        return self.transcribe_samples(decoded(wav), language, word_timestamps)

    def transcribe_samples(self, samples: np.ndarray, language: str | None, word_timestamps: bool = False) -> Transcript:
        """Transcribe 16 kHz mono float samples (decoded())."""
        pieces, info = self.model.transcribe(samples, language=language, word_timestamps=word_timestamps)
        # The segments come from a generator: decoding happens while we iterate.
        segments = [
            Segment(
                piece.start,
                piece.end,
                piece.text.strip(),
                tuple(Word(word.start, word.end, word.word.strip()) for word in piece.words or ()),
            )
            for piece in pieces
        ]
        return Transcript(
            text=" ".join(segment.text for segment in segments if segment.text),
            language=info.language,
            language_probability=info.language_probability,
            duration_seconds=info.duration,
            segments=segments,
        )
