"""Text as Dia's byte tokenizer must see it: the one sanitizing rule of the mesh.

Dia's tokenizer is byte-level with three special tokens, ``<pad>``, ``[S1]``
and ``[S2]``, and the control bytes 0-2 stand for their ids. So user text
keeps no control, format, surrogate or private-use character, and no literal
``<pad>``: the only special tokens the model sees are the speaker tags. Every
run of whitespace (newlines and tabs included) becomes one space. The
gateway sanitizes the scripts it validates; synth sanitizes again, as a
second line for any internal caller.
"""

from __future__ import annotations

import re
import unicodedata

_SPACES = re.compile(r"\s+")
_DROPPED = ("Cc", "Cf", "Cs", "Co")


def sanitize(text: str) -> str:
    kept = "".join(
        " " if char.isspace() else char
        for char in text
        if char.isspace() or unicodedata.category(char) not in _DROPPED
    )
    return _SPACES.sub(" ", kept.replace("<pad>", "")).strip()
