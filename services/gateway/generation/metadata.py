"""The ``metadata`` of a file uploaded to /v1/files: free-form JSON, checked whole before it is stored.

It is stored as PostgreSQL jsonb and comes back as a ``google.protobuf.Struct``
in every answer that holds the file, its listing included, so what either
cannot hold is refused here, naming ``metadata`` (400 invalid_parameter),
never stored to break every later read: NaN and the infinities (JSON has
none; Python's parser takes them, and ``1e400`` becomes infinity), a number
beyond a double's range (a Struct holds doubles), a lone UTF-16 surrogate
escape (``\\ud800``: no Unicode text) or a NUL (``\\u0000``, which jsonb cannot
store) in a key or a value, and nesting deeper than GATEWAY_MAX_METADATA_DEPTH
(deeper than a Struct can carry back).
"""

from __future__ import annotations

import json
import sys

from runtime.errors import ApiError, invalid_parameter
from services.gateway.config import MAX_METADATA_DEPTH

PARAM = "metadata"
_LARGEST = sys.float_info.max


class _NotANumber(ValueError):
    pass


def parse_metadata(text: str) -> dict:
    """The metadata as a dict ({} when empty); INVALID_PARAMETER naming ``metadata`` for anything else."""
    if not text:
        return {}
    limit = MAX_METADATA_DEPTH.value
    try:
        document = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:  # deeper than the parser itself goes (about a thousand levels)
        raise _too_deep(limit) from None
    except _NotANumber as error:
        raise _refused(str(error)) from None
    except ValueError:
        raise _refused("must be a JSON object (it is not valid JSON)") from None
    if not isinstance(document, dict):
        raise _refused("must be a JSON object")
    _check(document, limit)
    return document


def _refuse_constant(name: str):
    raise _NotANumber(f"holds {name}, which is no JSON number")


def _check(document: dict, limit: int) -> None:
    """Every key and value, walked without recursion (a flat object is depth 1)."""
    stack: list[tuple[object, int]] = [(document, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                raise _too_deep(limit)
            if isinstance(item, dict):
                for key in item:
                    _check_text(key, "a key")
                values = item.values()
            else:
                values = item
            stack.extend((value, depth + 1) for value in values)
        elif isinstance(item, str):
            _check_text(item, "a value")
        elif isinstance(item, float) and not abs(item) <= _LARGEST:  # inf from 1e400 (NaN never gets here)
            raise _refused("holds a number beyond the range of a double (such as 1e400)")
        elif isinstance(item, int) and not isinstance(item, bool) and abs(item) > _LARGEST:
            raise _refused("holds a number beyond the range of a double")


def _check_text(text: str, what: str) -> None:
    if "\x00" in text:
        raise _refused(f"holds a NUL character (\\u0000) in {what}, which cannot be stored")
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise _refused(
                f"holds a lone UTF-16 surrogate escape (\\ud800 to \\udfff) in {what}, which is no Unicode text"
            ) from None


def _too_deep(limit: int) -> ApiError:
    return _refused(f"is nested more than {limit} levels deep (GATEWAY_MAX_METADATA_DEPTH)")


def _refused(why: str) -> ApiError:
    return invalid_parameter(PARAM, f"metadata {why}")
