"""Scripts longer than one generation: split into chunks that fit Dia's window, kept in one voice.

Dia reads at most its text window (1024 bytes for Dia-1.6B, as its providers publish it)
of text per generation, the voice prompt's transcript included. A longer script is generated as a row of chunks:

* it is split at speaker turns, and inside a turn too long for a chunk at sentence ends
  (a sentence too long still at spaces), each piece keeping its speaker's tag; pieces are
  packed in order into chunks that fit the window with their prompt;
* cloned speakers get their samples again as every chunk's prompt (the same prompt as a
  short script's). Without cloning, a chunk's prompt is the end of the chunk before it:
  its last pieces that fit TAIL_TEXT_BYTES, with the matching share of its audio (cut at
  max_audio_prompt_seconds), so that Dia continues in the voices it has just used;
* chunks are generated in order, one after the other; a stream sends each as it comes,
  and the one-shot answer joins them with a CROSSFADE_SECONDS crossfade.

What it costs: one generation per chunk, in sequence, each with its prompt to read first,
so a long script takes about (chunks × one generation) and the uncloned voices can drift
a little at chunk boundaries, where the tail prompt is an estimate of where the words fell.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

# Text kept in a chunk's window for the tail prompt of the chunk before it (uncloned voices).
TAIL_TEXT_BYTES = 256
# Overlap of two chunks' audio in a one-shot answer.
CROSSFADE_SECONDS = 0.05

_TURN = re.compile(r"\[(S[12])\]\s*")
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")


@dataclass(frozen=True)
class Piece:
    speaker: str  # "S1" or "S2"
    text: str


@dataclass(frozen=True)
class Chunk:
    pieces: tuple[Piece, ...]
    whole: str = ""  # a script that needs no splitting, as it is

    @property
    def text(self) -> str:
        return self.whole or render(self.pieces)


def render(pieces) -> str:
    """"[S1] a b [S2] c": consecutive pieces of a speaker under one tag."""
    parts: list[str] = []
    speaker = None
    for piece in pieces:
        if piece.speaker != speaker:
            parts.append(f"[{piece.speaker}]")
            speaker = piece.speaker
        parts.append(piece.text)
    return " ".join(parts)


def size(text: str) -> int:
    return len(text.encode())


def turns(script: str) -> list[Piece]:
    """The turns of a normalized script ("[S1] Hello. [S2] Hi.", as parse_script gives it)."""
    found = list(_TURN.finditer(script))
    return [
        Piece(tag.group(1), script[tag.end() : found[n + 1].start() if n + 1 < len(found) else len(script)].strip())
        for n, tag in enumerate(found)
    ]


def _pieces_of(turn: Piece, budget: int) -> list[Piece]:
    """A turn as pieces that each fit `budget` bytes with their tag: sentences, then words, then bytes."""
    room = budget - size(f"[{turn.speaker}] ")
    if size(turn.text) <= room:
        return [turn]
    pieces: list[str] = []
    for sentence in _SENTENCE_END.split(turn.text):
        words = sentence.split(" ") if size(sentence) > room else [sentence]
        for word in words:
            while size(word) > room:  # no space to cut at: cut the characters
                cut = len(word.encode()[:room].decode(errors="ignore"))
                pieces.append(word[:cut])
                word = word[cut:]
            if pieces and size(pieces[-1] + " " + word) <= room:
                pieces[-1] += " " + word
            elif word:
                pieces.append(word)
    return [Piece(turn.speaker, text) for text in pieces]


def split(script: str, budget: int) -> list[Chunk]:
    """The script's chunks in order, each rendering to at most `budget` bytes."""
    pieces = [piece for turn in turns(script) for piece in _pieces_of(turn, budget)]
    chunks: list[list[Piece]] = []
    for piece in pieces:
        if chunks and size(render([*chunks[-1], piece])) <= budget:
            chunks[-1].append(piece)
        else:
            chunks.append([piece])
    return [Chunk(tuple(chunk)) for chunk in chunks]


def tail(chunk: Chunk, max_bytes: int = TAIL_TEXT_BYTES) -> tuple[str, float]:
    """The end of a chunk to prompt the next one with: its text, and the share of the chunk's
    audio it takes (by bytes of text, an estimate of where the words fell); ("", 0) if none fits."""
    kept: list[Piece] = []
    for piece in reversed(chunk.pieces):
        if size(render([piece, *kept])) > max_bytes:
            break
        kept.insert(0, piece)
    if not kept:
        last = chunk.pieces[-1]
        sentences = _SENTENCE_END.split(last.text)
        text = ""
        for sentence in reversed(sentences):
            if size(render([Piece(last.speaker, f"{sentence} {text}".strip())])) > max_bytes:
                break
            text = f"{sentence} {text}".strip()
        if not text:
            return "", 0.0
        kept = [Piece(last.speaker, text)]
    kept_text = render(kept)
    spoken = sum(size(piece.text) for piece in chunk.pieces)
    return kept_text, sum(size(piece.text) for piece in kept) / spoken if spoken else 0.0


def crossfaded(parts: list[np.ndarray], sample_rate: int, seconds: float = CROSSFADE_SECONDS) -> np.ndarray:
    """16-bit parts joined, each boundary a linear crossfade of `seconds` (shorter parts: less)."""
    if not parts:
        return np.zeros(0, dtype=np.int16)
    joined = parts[0].astype(np.float32)
    for part in parts[1:]:
        part = part.astype(np.float32)
        overlap = min(int(seconds * sample_rate), joined.size, part.size)
        if overlap:
            fade = np.linspace(0.0, 1.0, overlap, endpoint=False, dtype=np.float32)
            joined[-overlap:] = joined[-overlap:] * (1 - fade) + part[:overlap] * fade
        joined = np.concatenate([joined, part[overlap:]])
    return np.clip(np.rint(joined), -32768, 32767).astype(np.int16)
