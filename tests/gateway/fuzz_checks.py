"""The check schemathesis adds to its own when it fuzzes the API (test_fuzz.py
loads this module into `st run` through SCHEMATHESIS_HOOKS), and the hand-made
requests that test_fuzz.py sends beside the fuzzer's, checked the same way.

The fuzzer draws valid JSON and well-formed forms; what broke the API from
outside was hand-made: a lone surrogate escape as a JSON key, NaN, Infinity
and 1e400 in free-form JSON, nesting far past any limit, a form field sent as
a file part, a body whose Content-Encoding it is not in. hand_made() makes
those for every operation of the document that takes a body (JSON or a
multipart form), so a new route is covered as it comes.
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass, field

import schemathesis

# How Python starts a traceback; no generated value is likely to say it (echoed back, it would).
TRACEBACK = b"Traceback (most recent call last)"


@schemathesis.check
def no_traceback(ctx, response, case) -> None:
    """No body, of an error or not, shows the code behind it."""
    if TRACEBACK in (response.content or b""):
        raise AssertionError("the response body shows a Python traceback")


# --- hand-made requests ---------------------------------------------------------------


@dataclass
class HandMade:
    """One request, as bytes, to one operation of the document."""

    label: str
    method: str  # upper case
    path: str  # the document's template
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def url_path(self) -> str:
        return re.sub(r"\{[^}]+\}", "1", self.path)  # an id of the right shape for every path variable


def deep(depth: int, kind: str = "list") -> str:
    opening, closing = ("[", "]") if kind == "list" else ('{"a": ', "}")
    return opening * depth + "1" + closing * depth


# Free-form JSON that Python's parser takes and nothing behind it can hold: as a whole JSON body,
# as the value of each of a body's fields, and as the text of each field of a form (metadata's JSON).
HOSTILE_JSON = {
    "a lone surrogate as a key": '{"\\ud800": 1}',
    "a lone surrogate as a nested key": '{"a": [{"\\udfff": 1}]}',
    "a lone surrogate as a value": '{"a": "\\ud800"}',
    "NaN": '{"a": NaN}',
    "Infinity": '{"a": [Infinity, -Infinity]}',
    "1e400": '{"a": 1e400}',
    "an integer no double holds": '{"a": 1' + "0" * 400 + "}",
    "NUL": '{"a\\u0000": "\\u0000"}',
    "33 levels of objects": deep(33, "object"),
    "150 levels of objects": deep(150, "object"),
    "100,000 levels of lists": deep(100_000),
    "100,000 levels of objects": deep(100_000, "object"),
}
FIELD_VALUES = {
    "NaN": "NaN",
    "Infinity": "-Infinity",
    "1e400": "1e400",
    "a lone surrogate": '"\\ud800"',
    "150 levels of lists": deep(150),
}
BOUNDARY = "hand-made"


def hand_made(document: dict) -> list[HandMade]:
    """The hand-made requests for every operation of `document` that takes a JSON body or a form."""
    cases: list[HandMade] = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                cases += _json_cases(method.upper(), path, _properties(document, content["application/json"]["schema"]))
            if "multipart/form-data" in content:
                cases += _form_cases(method.upper(), path, content["multipart/form-data"]["schema"])
    return cases


def _properties(document: dict, schema: dict) -> dict:
    if "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema.get("properties", {})


def _json_cases(method: str, path: str, properties: dict) -> list[HandMade]:
    json_type = {"Content-Type": "application/json"}
    cases = [HandMade(label, method, path, text.encode(), json_type) for label, text in HOSTILE_JSON.items()]
    for name in properties:
        for label, value in FIELD_VALUES.items():
            cases.append(HandMade(f"{label} as {name}", method, path, f'{{"{name}": {value}}}'.encode(), json_type))
    cases += _encoding_cases(method, path, b'{"a": 1}', json_type)
    return cases


def _form_cases(method: str, path: str, form: dict) -> list[HandMade]:
    form_type = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    files = [name for name, schema in form["properties"].items() if schema.get("format") == "binary"]
    texts = [name for name in form["properties"] if name not in files]
    upload = [_part(name, b"RIFF....WAVE", filename="a.wav") for name in files]
    cases = []
    for name in texts:
        for label, text in HOSTILE_JSON.items():
            body = _form([*upload, _part(name, text.encode())])
            cases.append(HandMade(f"{label} in the form's {name}", method, path, body, form_type))
        body = _form([*upload, _part(name, b"text", filename=f"{name}.txt")])
        cases.append(HandMade(f"{name} sent as a file part", method, path, body, form_type))
    cases += _encoding_cases(method, path, _form(upload), form_type)
    return cases


def _encoding_cases(method: str, path: str, body: bytes, headers: dict[str, str]) -> list[HandMade]:
    """Bodies in another coding than the one their Content-Encoding names, and codings the API lacks."""
    return [
        HandMade(f"Content-Encoding {coding}, body {sent}", method, path, data, {**headers, "Content-Encoding": coding})
        for coding, sent, data in [
            ("gzip", "not gzip", body),
            ("deflate", "not deflate", body),
            ("gzip", "gzip cut short", gzip.compress(body)[:-8]),
            ("br", "not br", body),
            ("x-unknown", "as it is", body),
        ]
    ]


def _part(name: str, data: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    kind = "\r\nContent-Type: application/octet-stream" if filename else ""
    return f"--{BOUNDARY}\r\nContent-Disposition: {disposition}{kind}\r\n\r\n".encode() + data + b"\r\n"


def _form(parts: list[bytes]) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()
