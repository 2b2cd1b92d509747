"""Path templates of google.api.http rules (``/v1/voice/samples/{id}``).

The grammar, from google/api/http.proto::

    Template = "/" Segments [ Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;
    FieldPath = IDENT { "." IDENT } ;
    Verb     = ":" LITERAL ;

A template becomes one regular expression over the request's raw (still
percent-encoded) path; each variable is a named group, decoded after the match.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

_FIELD_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
# A literal segment: anything but the template's own syntax.
_LITERAL = re.compile(r"^[^/{}*:=]+$")


class TemplateError(ValueError):
    pass


@dataclass(frozen=True)
class PathTemplate:
    text: str
    regex: re.Pattern
    variables: tuple[str, ...]  # field paths, in order of appearance
    literal_segments: int  # more literal segments = more specific, matched first

    def match(self, raw_path: str) -> dict[str, str] | None:
        """The decoded variable values of a matching path, or None."""
        found = self.regex.match(raw_path)
        if found is None:
            return None
        return {
            field: unquote(found.group(f"v{index}"))
            for index, field in enumerate(self.variables)
        }

    @property
    def openapi_path(self) -> str:
        """The template as OpenAPI writes paths: ``/v1/things/{name}``."""
        return re.sub(r"\{([^}=]+)=[^}]*\}", r"{\1}", self.text)


def parse(text: str) -> PathTemplate:
    if not text.startswith("/"):
        raise TemplateError(f"path template must start with '/': {text!r}")
    body, verb = _split_verb(text[1:])
    variables: list[str] = []
    literal_segments = 0
    parts = []
    for segment in _split_segments(body):
        if segment.startswith("{"):
            if not segment.endswith("}"):
                raise TemplateError(f"unclosed variable in {text!r}")
            field, _, inner = segment[1:-1].partition("=")
            if not _FIELD_PATH.match(field):
                raise TemplateError(f"bad field path {field!r} in {text!r}")
            inner_regex = _segments_regex(inner.split("/") if inner else ["*"], text)
            parts.append(f"(?P<v{len(variables)}>{inner_regex})")
            variables.append(field)
        else:
            parts.append(_segments_regex([segment], text))
            literal_segments += segment not in ("*", "**")
    regex = "^/" + "/".join(parts) + (re.escape(":" + verb) if verb else "") + "$"
    return PathTemplate(text, re.compile(regex), tuple(variables), literal_segments)


def _split_verb(body: str) -> tuple[str, str]:
    """Split off a trailing ``:verb`` (a colon outside any ``{...}``)."""
    depth = 0
    for index in range(len(body) - 1, -1, -1):
        char = body[index]
        if char == "}":
            depth += 1
        elif char == "{":
            depth -= 1
        elif char == "/" and depth == 0:
            break
        elif char == ":" and depth == 0:
            return body[:index], body[index + 1 :]
    return body, ""


def _split_segments(body: str) -> list[str]:
    """Split on '/' outside of variables (whose own segments contain '/')."""
    segments, current, depth = [], "", 0
    for char in body:
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        if char == "/" and depth == 0:
            segments.append(current)
            current = ""
        else:
            current += char
    segments.append(current)
    return segments


def _segments_regex(segments: list[str], text: str) -> str:
    parts = []
    for segment in segments:
        if segment == "*":
            parts.append("[^/]+")
        elif segment == "**":
            parts.append(".+")
        elif _LITERAL.match(segment):
            parts.append(re.escape(segment))
        else:
            raise TemplateError(f"bad segment {segment!r} in {text!r}")
    return "/".join(parts)
