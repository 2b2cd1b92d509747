"""Dialogue scripts: validation, sanitizing, and the prompt transcript for cloning.

The rules are the public spec's (../shared/spec/voice-generations-api.txt,
"Script format"):

* a script with no ``[S*]`` tags is one ``[S1]`` monologue;
* it must open with ``[S1]``;
* ``[S3]`` and above are not supported;
* non-verbal cues in parentheses, ``(laughs)``, are kept as written.

User text is sanitized first (runtime.text: no control characters, no
literal ``<pad>``), so the only special tokens the model sees are the speaker
tags validated here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import grpc

from runtime.errors import ApiError, invalid_argument
from runtime.text import sanitize

# Any bracketed speaker-like tag, so that [S3], [s1] and [S 2] are all seen and judged.
_TAG = re.compile(r"\[\s*[sS]\s*(\d+)\s*\]")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class Script:
    text: str  # normalized: "[S1] Hello. [S2] Hi."
    speakers: frozenset[str]  # tags used: {"S1"} or {"S1", "S2"}


def parse_script(raw: str, max_chars: int) -> Script:
    """Validate and normalize a public `input`; raises ApiError with the spec's types."""
    if raw is None or not raw.strip():
        raise invalid_argument("MISSING_INPUT", "input is required: the dialogue script to speak", "input")
    if len(raw) > max_chars:
        raise ApiError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "REQUEST_TOO_LARGE",
            f"input is {len(raw)} characters; the limit is {max_chars}",
            param="input",
        )
    text = sanitize(raw)
    if not text:
        raise invalid_argument("MISSING_INPUT", "input has no speakable text", "input")

    tags = list(_TAG.finditer(text))
    if not tags:
        return Script(text=f"[S1] {text}", speakers=frozenset({"S1"}))

    for tag in tags:
        number = int(tag.group(1))
        if number not in (1, 2):
            raise invalid_argument(
                "INVALID_SCRIPT",
                f"speaker tag {tag.group(0)} is not supported: use [S1] and [S2]",
                "input",
            )
    if tags[0].start() != 0:
        raise invalid_argument(
            "INVALID_SCRIPT", "the script must start with a speaker tag, [S1]", "input"
        )
    if int(tags[0].group(1)) != 1:
        raise invalid_argument(
            "INVALID_SCRIPT", "the script must start with [S1]; it cannot open with [S2]", "input"
        )

    # Rebuild with canonical tags ("[ s2 ]" → "[S2]") and one space after each.
    parts = []
    for index, tag in enumerate(tags):
        end = tags[index + 1].start() if index + 1 < len(tags) else len(text)
        spoken = text[tag.end() : end].strip()
        parts.append(f"[S{tag.group(1)}] {spoken}".rstrip())
    if not text[tags[-1].end() :].strip():
        raise invalid_argument("INVALID_SCRIPT", "the script ends with a speaker tag and no text", "input")
    speakers = frozenset(f"S{tag.group(1)}" for tag in tags)
    return Script(text=" ".join(parts), speakers=speakers)


def untagged(transcript: str) -> str:
    """A stored transcript's words, sanitized, without speaker tags, single-spaced."""
    return _SPACES.sub(" ", _TAG.sub(" ", sanitize(transcript))).strip()


def prompt_transcript(transcripts: dict[str, str]) -> str:
    """The transcript of the cloning prompt, tagged with its speakers in prompt order.

    `transcripts` maps "S1"/"S2" to the sample transcripts, in the order their
    clips are joined. Tags inside a stored transcript are dropped: the speaker
    is the one the caller assigned.
    """
    return " ".join(f"[{speaker}] {untagged(transcript)}" for speaker, transcript in transcripts.items())
