"""Downloads: stored audio sent from the object store as it is read, a byte range of it when asked.

A route whose rule names a ``download_method`` (voice.api.v1.MethodRules,
annotations.proto) is answered by that server-streaming method: the edge
passes the request's ``Range`` header on as ``range`` metadata, and the method
(in the library or in the gateway itself) answers with :func:`send`:

* initial metadata first: ``x-content-length`` (the bytes it will send) and,
  for one satisfiable range, ``x-content-range`` (``bytes first-last/size``);
  the edge answers 206 with that Content-Range, else 200, with that
  Content-Length either way (never chunked), and ``Accept-Ranges: bytes``;
* then the bytes, one google.api.HttpBody at a time, each a window of at most
  WINDOW_BYTES read from the store by a ranged GET of its own, so that a
  download holds one window in memory and one store connection only while
  that window is read, however slowly its client takes it;
* a range that starts at or past the end is RANGE_NOT_SATISFIABLE (HTTP 416)
  with ``x-content-range: bytes */size`` in the trailing metadata;
* or, instead of the bytes, ``x-location`` (a presigned URL of the store): the
  edge answers 307 to it, so that the store (or a CDN before it) sends them.

Ranges follow RFC 9110 §14 as the edge applied them before (one range of
``bytes=first-last``, ``bytes=first-`` or ``bytes=-suffix``; several ranges, a
malformed header, another unit are answered whole, as the RFC allows).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from google.api import httpbody_pb2

from runtime.errors import ApiError
from runtime.objects import ObjectStore

RANGE_METADATA = "range"
CONTENT_LENGTH_METADATA = "x-content-length"
CONTENT_RANGE_METADATA = "x-content-range"
LOCATION_METADATA = "x-location"
# Bytes read from the store at once (one ranged GET each) and sent as one message.
WINDOW_BYTES = 512 * 1024

# One range; the unit is case-insensitive. Over 18 digits is no size this API answers with: ignored.
_ONE_RANGE = re.compile(r"\s*bytes\s*=\s*([0-9]{0,18})\s*-\s*([0-9]{0,18})\s*", re.IGNORECASE)


class Unsatisfiable(Exception):
    pass


def byte_range(header: str, size: int) -> tuple[int, int] | None:
    """The first and last byte that `header` (a Range header's value) asks of `size` bytes; None to
    answer whole; Unsatisfiable for a range that holds none of them."""
    match = _ONE_RANGE.fullmatch(header)
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.groups()
    if not first:  # the last `last` bytes
        if int(last) == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - int(last)), size - 1
    if last and int(last) < int(first):
        return None  # not a valid range: ignored
    if int(first) >= size:
        raise Unsatisfiable
    return int(first), min(int(last), size - 1) if last else size - 1


def range_not_satisfiable(size: int) -> ApiError:
    return ApiError(
        grpc.StatusCode.OUT_OF_RANGE,
        "RANGE_NOT_SATISFIABLE",
        f"the Range header asks for bytes this answer does not have: it has {size}",
    )


@dataclass(frozen=True)
class Stored:
    """Where a download's bytes are: an object of the store (`key`), or, for a row written before
    the audio moved to the store (tools/move_audio.py has not run yet), the bytes themselves."""

    key: str | None
    size: int
    content_type: str
    legacy: bytes | None = None


def asked_range(context) -> str:
    """The Range header the edge passed on ("" for none)."""
    for key, value in context.invocation_metadata() or ():
        if key == RANGE_METADATA and isinstance(value, str):
            return value
    return ""


async def send(
    stored: Stored, store: ObjectStore, context, window_bytes: int = WINDOW_BYTES
) -> AsyncIterator[httpbody_pb2.HttpBody]:
    """The download of `stored` as its method answers it (see the module's doc)."""
    wanted = asked_range(context)
    try:
        chosen = byte_range(wanted, stored.size) if wanted else None
    except Unsatisfiable:
        context.set_trailing_metadata(((CONTENT_RANGE_METADATA, f"bytes */{stored.size}"),))
        raise range_not_satisfiable(stored.size) from None
    first, last = chosen if chosen is not None else (0, stored.size - 1)
    metadata = [(CONTENT_LENGTH_METADATA, str(last - first + 1))]
    if chosen is not None:
        metadata.append((CONTENT_RANGE_METADATA, f"bytes {first}-{last}/{stored.size}"))
    if stored.key is not None:
        # Read before anything is said: a store that is down is an ordinary 503, not a cut-off answer.
        head = await store.get_range(stored.key, first, min(window_bytes, last - first + 1)) if last >= first else b""
    else:
        head = (stored.legacy or b"")[first : first + window_bytes]
    await context.send_initial_metadata(metadata)
    position = first
    piece = head
    while True:
        if piece:
            yield httpbody_pb2.HttpBody(content_type=stored.content_type, data=piece)
        position += len(piece)
        if position > last or not piece:
            return
        length = min(window_bytes, last - position + 1)
        if stored.key is not None:
            piece = await store.get_range(stored.key, position, length)
        else:
            piece = (stored.legacy or b"")[position : position + length]


async def redirect(url: str, context) -> AsyncIterator[httpbody_pb2.HttpBody]:
    """A download answered by the store itself: the edge sends its client to `url` (307)."""
    await context.send_initial_metadata(((LOCATION_METADATA, url),))
    return
    yield  # an async generator that yields nothing
