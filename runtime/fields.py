"""The field rules declared in the protos, applied to requests.

A request field may carry ``[(voice.api.v1.field) = {...}]`` (see
protos/voice/api/v1/annotations.proto): required, numeric bounds, a default,
the values a string may take (each string of a list), a longest length
(fixed, or a limit the service publishes: runtime/limits.py), a largest number
that is such a limit, and that a text is a name (no
control, invisible format or line-breaking character: :data:`NOT_IN_NAMES`). A service checks each request with
:func:`check` before anything else, and
reads left-out fields with :func:`value`; the gateway publishes the same
rules in /openapi.json. The rules are said once, in the proto, so the checks,
the errors and the documentation cannot disagree.

Every refusal is INVALID_ARGUMENT naming the field, with reason
INVALID_PARAMETER unless the rule names another (``missing_reason``,
``too_long_reason``).

One rule holds for every string field without being declared:
:func:`refuse_nul`. PostgreSQL's text cannot hold a NUL character, so a
string carrying one could never be stored or looked up; every server refuses
it before its handler runs (runtime/server.py).
"""

from __future__ import annotations

import functools
import json
import math
import unicodedata
from typing import Any, Mapping

from google.protobuf import descriptor, message

from runtime import limits as published_limits
from runtime.errors import invalid_argument, invalid_parameter
from voice.api.v1 import annotations_pb2

FieldRules = annotations_pb2.FieldRules
_NUMBERS = {
    descriptor.FieldDescriptor.CPPTYPE_INT32,
    descriptor.FieldDescriptor.CPPTYPE_INT64,
    descriptor.FieldDescriptor.CPPTYPE_UINT32,
    descriptor.FieldDescriptor.CPPTYPE_UINT64,
    descriptor.FieldDescriptor.CPPTYPE_DOUBLE,
    descriptor.FieldDescriptor.CPPTYPE_FLOAT,
}
_FLOATS = {descriptor.FieldDescriptor.CPPTYPE_DOUBLE, descriptor.FieldDescriptor.CPPTYPE_FLOAT}

# The Unicode categories a name (a field with the `name` rule) may not hold: control characters
# (tabs and newlines included), invisible format characters (zero-width spaces and joiners, the
# word joiner, the byte order mark, bidirectional controls), line and paragraph separators.
NOT_IN_NAMES = {
    "Cc": "a control character",
    "Cf": "an invisible format character",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
}


def rules(field: descriptor.FieldDescriptor) -> FieldRules | None:
    """The field's declared rules, or None."""
    options = field.GetOptions()
    if not options.HasExtension(annotations_pb2.field):
        return None
    return options.Extensions[annotations_pb2.field]


def has_explicit_presence(field: descriptor.FieldDescriptor) -> bool:
    """A proto3 `optional` scalar: left out and sent as zero are told apart."""
    return field.message_type is None and field.has_presence


def is_number(field: descriptor.FieldDescriptor) -> bool:
    return field.cpp_type in _NUMBERS and field.enum_type is None


def default(field: descriptor.FieldDescriptor) -> Any:
    """The declared default of a field, or None."""
    declared = rules(field)
    if declared is None or not declared.default:
        return None
    return json.loads(declared.default)


def max_length(declared: FieldRules, limits: Mapping[str, float] | None = None) -> int | None:
    """The longest text allowed: the fixed number, or the named limit's value, from `limits`
    when it has it (a caller's or a test's own), else this service's published limits."""
    name = declared.max_length_limit
    if name:
        if limits and name in limits:
            return int(limits[name])
        return int(published_limits.value(name))
    return declared.max_length or None


def value(request: message.Message, name: str) -> Any:
    """The field's value, its declared default when it was left out."""
    field = request.DESCRIPTOR.fields_by_name[name]
    left_out = (
        not request.HasField(name) if has_explicit_presence(field) else getattr(request, name) in ("", None)
    )
    fallback = default(field)
    if left_out and fallback is not None:
        return fallback
    return getattr(request, name)


def check(request: message.Message, limits: Mapping[str, float] | None = None) -> None:
    """Raise the error of the first field, in declaration order, that breaks its rules.

    `limits` overrides the values of limits the rules name (a test's), by limit name;
    the others are this service's published limits.
    """
    for field in request.DESCRIPTOR.fields:
        check_field(request, field.name, limits)


def check_field(request: message.Message, name: str, limits: Mapping[str, float] | None = None) -> None:
    """Check one field against its rules (a service that checks some fields before others)."""
    field = request.DESCRIPTOR.fields_by_name[name]
    declared = rules(field)
    if declared is not None:
        _check_field(request, field, declared, limits)


def _check_field(request: message.Message, field, declared: FieldRules, limits) -> None:
    name = field.name
    if has_explicit_presence(field) and not request.HasField(name):
        return  # left out: the default applies
    current = getattr(request, name)
    if field.message_type is not None:  # google.api.HttpBody: its data is what counts
        empty = not getattr(current, "data", b"") if request.HasField(name) else True
    elif isinstance(current, str):
        empty = not current.strip()
    else:
        empty = False
    if declared.required and empty:
        raise invalid_argument(declared.missing_reason or "INVALID_PARAMETER", f"{name} is required", name)
    if field.is_repeated and field.message_type is None:  # each item of a list holds to the rules
        for item in current:
            if isinstance(item, str):
                _check_text(name, item, field, declared, limits, item_of_list=True)
            elif is_number(field):
                _check_number(name, item, declared, limits)
    elif isinstance(current, str):
        _check_text(name, current, field, declared, limits)
    elif is_number(field):
        _check_number(name, current, declared, limits)


def _check_text(name: str, text: str, field, declared: FieldRules, limits, item_of_list: bool = False) -> None:
    limit = max_length(declared, limits)
    length = len(text.strip())
    if limit is not None and length > limit:
        raise invalid_argument(
            declared.too_long_reason or "INVALID_PARAMETER",
            f"{name} is {length} characters; the limit is {limit}",
            name,
        )
    if declared.one_of and text not in declared.one_of:
        if text == "" and not has_explicit_presence(field) and not item_of_list:
            return  # left out: the default applies
        shown = text if len(text) <= 40 else text[:40] + "…"
        raise invalid_parameter(name, f"{name} must be one of {', '.join(declared.one_of)}; got {shown!r}")
    if declared.name:
        _check_name(name, text)


def _check_name(name: str, text: str) -> None:
    for position, character in enumerate(text):
        kind = NOT_IN_NAMES.get(unicodedata.category(character))
        if kind is not None:
            what = unicodedata.name(character, "")
            code = f"U+{ord(character):04X}" + (f" {what}" if what else "")
            raise invalid_parameter(
                name,
                f"{name} holds {kind} ({code}) at position {position + 1}; a name may hold no control, "
                "invisible format or line-breaking character",
            )


@functools.cache
def name_pattern() -> str:
    """A regular expression (ECMA-262, as OpenAPI's `pattern`; Python's re.fullmatch reads it alike) that a name matches:
    none of the characters of the NOT_IN_NAMES categories of the Basic Multilingual Plane. Those beyond it
    (a few format characters: tags, musical and hieroglyph controls) cannot be said in a pattern that both
    dialects read, so the pattern lets them through and the rule's description names them."""
    ranges: list[list[int]] = []
    for code in range(0x10000):
        if 0xD800 <= code <= 0xDFFF or unicodedata.category(chr(code)) not in NOT_IN_NAMES:
            continue
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])
    parts = "".join(
        f"\\u{low:04x}" if low == high else f"\\u{low:04x}-\\u{high:04x}" for low, high in ranges
    )
    return f"^[^{parts}]*$"



def maximum(declared: FieldRules, limits: Mapping[str, float] | None = None) -> float | None:
    """The largest number allowed: the lower of the fixed `maximum` and the named limit's value (from
    `limits` when it has it, else this service's published limits); None for no bound."""
    bounds = [declared.maximum] if declared.HasField("maximum") else []
    name = declared.maximum_limit
    if name:
        bounds.append(float(limits[name]) if limits and name in limits else published_limits.value(name))
    return min(bounds) if bounds else None


def _check_number(name: str, number: float, declared: FieldRules, limits=None) -> None:
    low = declared.minimum if declared.HasField("minimum") else -math.inf
    most = maximum(declared, limits)
    high = math.inf if most is None else most
    if low <= number <= high:  # NaN fails
        return
    if math.isinf(high):
        rule = f"at least {low:g}"
    elif math.isinf(low):
        rule = f"at most {high:g}"
    else:
        rule = f"between {low:g} and {high:g}"
    raise invalid_parameter(name, f"{name} must be {rule}, got {number:g}")


def refuse_nul(request: message.Message, prefix: str = "") -> None:
    """INVALID_PARAMETER naming the first string (in any field, nested messages, lists and map
    keys and values included) that holds a NUL character."""
    for field, current in request.ListFields():
        name = prefix + field.name
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            items = [item for pair in current.items() for item in pair]
        else:
            items = list(current) if field.is_repeated else [current]
        for item in items:
            if isinstance(item, str) and "\x00" in item:
                raise invalid_parameter(name, f"{name} contains a NUL character (\\u0000), which no text can hold")
            if isinstance(item, message.Message):
                refuse_nul(item, name + ".")


@functools.cache
def bounds(message_descriptor: descriptor.Descriptor) -> dict[str, tuple[float, float, Any]]:
    """Each numeric field with declared bounds: (lowest, highest, default), in declaration order."""
    found = {}
    for field in message_descriptor.fields:
        declared = rules(field)
        if declared is not None and is_number(field) and declared.HasField("minimum"):
            kind = float if field.cpp_type in _FLOATS else int
            high = kind(declared.maximum) if declared.HasField("maximum") else math.inf
            found[field.name] = (kind(declared.minimum), high, default(field))
    return found
