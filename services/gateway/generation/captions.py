"""A generation's captions, WebVTT and SubRip, from its analysis (analysis.py).

A cue is a sentence of a speaker's turn, or CUE_WORDS words of a long one, timed by its
words. Words the recognizer did not hear are timed between the heard words around them, in
proportion to their length, so the captions always carry the whole script; the analysis
itself keeps them marked not heard.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from voice.gateway.v1 import generations_pb2

# The most words a cue holds: about two lines on screen.
CUE_WORDS = 12
# A cue lasts at least this long, so that a word the recognizer timed as a point is readable.
MIN_CUE_SECONDS = 0.2
_SENTENCE_END = re.compile(r"[.!?…][\"')\]]*$")


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    speaker: str
    text: str


def word_times(words: list[generations_pb2.TimedWord], duration: float) -> list[tuple[float, float]]:
    """Every word's (start, end): a heard word's own, the others' shared out between their heard neighbours."""
    times: list[tuple[float, float]] = []
    index = 0
    while index < len(words):
        if words[index].heard:
            times.append((words[index].start_seconds, words[index].end_seconds))
            index += 1
            continue
        run_end = index
        while run_end < len(words) and not words[run_end].heard:
            run_end += 1
        after = times[-1][1] if times else 0.0
        before = words[run_end].start_seconds if run_end < len(words) else max(duration, after)
        lengths = [len(word.text) for word in words[index:run_end]]
        at, span = after, max(before - after, 0.0)
        for length in lengths:
            share = span * length / sum(lengths)
            times.append((at, at + share))
            at += share
        index = run_end
    return times


def cues(analysis: generations_pb2.GenerationAnalysis, duration: float) -> list[Cue]:
    words = list(analysis.words)
    times = word_times(words, duration)
    found: list[Cue] = []
    group: list[int] = []

    def close() -> None:
        if group:
            start, end = times[group[0]][0], times[group[-1]][1]
            start = max(start, found[-1].end if found else 0.0)
            end = max(end, start + MIN_CUE_SECONDS)
            text = " ".join(words[index].text for index in group)
            found.append(Cue(start, end, words[group[0]].speaker, text))
            group.clear()

    for index, word in enumerate(words):
        if group and (word.speaker != words[group[-1]].speaker or len(group) == CUE_WORDS):
            close()
        group.append(index)
        if _SENTENCE_END.search(word.text):
            close()
    close()
    return found


def _clock(seconds: float, separator: str) -> str:
    milliseconds = round(seconds * 1000)
    hours, milliseconds = divmod(milliseconds, 3_600_000)
    minutes, milliseconds = divmod(milliseconds, 60_000)
    whole, milliseconds = divmod(milliseconds, 1000)
    return f"{hours:02d}:{minutes:02d}:{whole:02d}{separator}{milliseconds:03d}"


def _escaped(text: str) -> str:
    """Cue text as WebVTT reads it: its markup characters as entities."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def webvtt(analysis: generations_pb2.GenerationAnalysis, duration: float) -> str:
    blocks = ["WEBVTT"]
    for number, cue in enumerate(cues(analysis, duration), 1):
        blocks.append(
            f"{number}\n{_clock(cue.start, '.')} --> {_clock(cue.end, '.')}\n<v {cue.speaker}>{_escaped(cue.text)}</v>"
        )
    return "\n\n".join(blocks) + "\n"


def srt(analysis: generations_pb2.GenerationAnalysis, duration: float) -> str:
    blocks = [
        f"{number}\n{_clock(cue.start, ',')} --> {_clock(cue.end, ',')}\n[{cue.speaker}] {cue.text}"
        for number, cue in enumerate(cues(analysis, duration), 1)
    ]
    return "\n\n".join(blocks) + "\n"
