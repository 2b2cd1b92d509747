"""What a generation says and who says it: its script's words timed, its word error rate, its voices' likeness.

Given the generated audio's transcript (with word timings) and the script it was made from
(``[S1] Hello. [S2] (laughs) Hi.``), :func:`align` gives every spoken word of the script
(cues in parentheses are not spoken words) the time the recognizer heard it, or marks it not
heard, and times each speaker's turn by its heard words. :func:`word_error_rate` is jiwer's,
of the heard words against the script's. :class:`Voices` holds resemblyzer's pretrained
speaker encoder (its weights ship in its wheel): the similarity of a speaker's turns to their
voice sample, and the checks of an uploaded sample (sample_checks.py).

All of it is blocking work for worker threads.
"""

from __future__ import annotations

import difflib
import re
import warnings
from dataclasses import dataclass

import jiwer
import numpy as np

from services.stt.recognizer import WHISPER_SAMPLE_RATE, Recognizer, Transcript, decoded

# A speaker tag; the gateway sends its normalized script ("[S1] ... [S2] ...").
_TAG = re.compile(r"\[\s*[sS]\s*(\d+)\s*\]")
# A non-verbal cue, "(laughs)": not a spoken word.
_CUE = re.compile(r"\([^)]*\)")
# What is compared of a word: lower case letters, digits and inner apostrophes ("Don't," -> "don't").
_WORD_CHARACTERS = re.compile(r"[^\w']+")
# Two words of a misheard stretch pair up when this alike (difflib's ratio of their letters).
_ALIKE = 0.5


@dataclass
class ScriptWord:
    text: str  # as written in the script, punctuation attached ("morning,")
    speaker: str  # "S1"
    turn: int  # index of its speaker turn in the script
    heard: bool = False
    start_seconds: float = 0.0
    end_seconds: float = 0.0


@dataclass(frozen=True)
class Turn:
    speaker: str
    words: tuple[ScriptWord, ...]

    @property
    def heard(self) -> bool:
        return any(word.heard for word in self.words)

    @property
    def start_seconds(self) -> float:
        return min((word.start_seconds for word in self.words if word.heard), default=0.0)

    @property
    def end_seconds(self) -> float:
        return max((word.end_seconds for word in self.words if word.heard), default=0.0)

    @property
    def text(self) -> str:
        return " ".join(word.text for word in self.words)


def normalized(word: str) -> str:
    return _WORD_CHARACTERS.sub("", word.lower()).strip("'")


def script_turns(script: str) -> list[Turn]:
    """The script's speaker turns and their spoken words (cues dropped); untagged text is S1's."""
    tags = list(_TAG.finditer(script))
    pieces = [("S1", script[: tags[0].start() if tags else len(script)])]
    for index, tag in enumerate(tags):
        end = tags[index + 1].start() if index + 1 < len(tags) else len(script)
        pieces.append((f"S{tag.group(1)}", script[tag.end() : end]))
    turns = []
    for speaker, text in pieces:
        words = [word for word in _CUE.sub(" ", text).split() if normalized(word)]
        if words:
            number = len(turns)
            turns.append(Turn(speaker, tuple(ScriptWord(word, speaker, number) for word in words)))
    return turns


@dataclass(frozen=True)
class HeardWord:
    text: str  # normalized()
    start_seconds: float
    end_seconds: float


def heard_words(transcript: Transcript) -> list[HeardWord]:
    """The recognized words with their times (a word of punctuation alone dropped)."""
    return [
        HeardWord(normalized(word.text), word.start_seconds, word.end_seconds)
        for segment in transcript.segments
        for word in segment.words
        if normalized(word.text)
    ]


def _hear(word: ScriptWord, heard: HeardWord) -> None:
    word.heard, word.start_seconds, word.end_seconds = True, float(heard.start_seconds), float(heard.end_seconds)


def _pair_misheard(script: list[ScriptWord], heard: list[HeardWord]) -> None:
    """A stretch where the recognizer heard other words than the script's: words pair up one to one
    when the counts agree (a word misheard is still a word said there); otherwise each heard word,
    in order, goes to the first alike script word left, and script words with none are not heard."""
    if len(script) == len(heard):
        for word, said in zip(script, heard):
            _hear(word, said)
        return
    position = 0
    for said in heard:
        for index in range(position, len(script)):
            if difflib.SequenceMatcher(None, normalized(script[index].text), said.text).ratio() >= _ALIKE:
                _hear(script[index], said)
                position = index + 1
                break


def align(turns: list[Turn], heard: list[HeardWord]) -> None:
    """Time the script's words (in place) by the recognized words they match, in order (difflib)."""
    script = [word for turn in turns for word in turn.words]
    matcher = difflib.SequenceMatcher(
        None, [normalized(word.text) for word in script], [word.text for word in heard], autojunk=False
    )
    for operation, script_from, script_to, heard_from, heard_to in matcher.get_opcodes():
        if operation == "equal":
            for word, said in zip(script[script_from:script_to], heard[heard_from:heard_to]):
                _hear(word, said)
        elif operation == "replace":
            _pair_misheard(script[script_from:script_to], heard[heard_from:heard_to])
        # "delete": script words nobody heard; "insert": heard words the script lacks.


def word_error_rate(turns: list[Turn], heard: list[HeardWord]) -> float:
    """jiwer's word error rate of the heard words against the script's spoken words (cues excluded)."""
    reference = " ".join(normalized(word.text) for turn in turns for word in turn.words)
    hypothesis = " ".join(word.text for word in heard)
    if not reference:
        return 0.0
    if not hypothesis:  # nothing heard: every word missed
        return 1.0
    return float(jiwer.wer(reference, hypothesis))


def turn_samples(turns: list[Turn], speaker: str, samples: np.ndarray, rate: int = WHISPER_SAMPLE_RATE) -> np.ndarray:
    """The stretches of `samples` in which `speaker`'s heard turns are spoken, joined."""
    pieces = [
        samples[int(turn.start_seconds * rate) : int(turn.end_seconds * rate)]
        for turn in turns
        if turn.speaker == speaker and turn.heard
    ]
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)


class Voices:
    """resemblyzer's pretrained speaker encoder: embeddings of 16 kHz mono float speech."""

    # The least speech (after resemblyzer trims long silences) an embedding is made of: its
    # encoder reads 1.6 s windows.
    MIN_SECONDS = 1.0

    def __init__(self) -> None:
        with warnings.catch_warnings():
            # webrtcvad, which resemblyzer uses to trim silences, imports setuptools' pkg_resources.
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
            # and imports scipy's old ndimage.morphology namespace.
            warnings.filterwarnings("ignore", message=".*scipy.ndimage.morphology", category=DeprecationWarning)
            import resemblyzer

        self._resemblyzer = resemblyzer
        self.encoder = resemblyzer.VoiceEncoder("cpu", verbose=False)

    def speech(self, samples: np.ndarray) -> np.ndarray:
        """Volume-normalized, with long silences trimmed (resemblyzer's preprocessing)."""
        if samples.size < self.MIN_SECONDS * WHISPER_SAMPLE_RATE:
            return np.zeros(0, dtype=np.float32)
        return self._resemblyzer.preprocess_wav(samples.astype(np.float32))

    def embedding(self, samples: np.ndarray) -> np.ndarray | None:
        """The speaker embedding (unit length) of `samples`, or None when there is too little speech."""
        speech = self.speech(samples)
        if speech.size < self.MIN_SECONDS * WHISPER_SAMPLE_RATE:
            return None
        return self.encoder.embed_utterance(speech)

    def window_embeddings(self, samples: np.ndarray) -> np.ndarray:
        """Embeddings of the speech's 1.6 s windows (rows), for telling speakers apart within a clip."""
        speech = self.speech(samples)
        if speech.size < self.MIN_SECONDS * WHISPER_SAMPLE_RATE:
            return np.zeros((0, 256), dtype=np.float32)
        _, partials, _ = self.encoder.embed_utterance(speech, return_partials=True)
        return partials

    def similarity(self, one: np.ndarray, other: np.ndarray) -> float | None:
        """Cosine similarity of two clips' voices (1 the same), None when either is too short."""
        first, second = self.embedding(one), self.embedding(other)
        if first is None or second is None:
            return None
        return float(np.dot(first, second) / (np.linalg.norm(first) * np.linalg.norm(second)))


@dataclass(frozen=True)
class Analysis:
    turns: list[Turn]
    word_error_rate: float
    similarities: dict[str, float]  # speaker: likeness of their turns to their sample
    transcript: Transcript

    @property
    def words(self) -> list[ScriptWord]:
        return [word for turn in self.turns for word in turn.words]


def analyze(
    recognizer: Recognizer,
    voices: Voices,
    wav: bytes,
    script: str,
    language: str | None,
    speaker_samples: dict[str, bytes],
) -> Analysis:
    """Recognize `wav` with word timings, align it to `script`, score it (blocking)."""
    samples = decoded(wav)
    transcript = recognizer.transcribe_samples(samples, language, word_timestamps=True)
    turns = script_turns(script)
    heard = heard_words(transcript)
    align(turns, heard)
    similarities = {}
    for speaker, sample in speaker_samples.items():
        similarity = voices.similarity(turn_samples(turns, speaker, samples), decoded(sample))
        if similarity is not None:
            similarities[speaker] = similarity
    return Analysis(turns, word_error_rate(turns, heard), similarities, transcript)
