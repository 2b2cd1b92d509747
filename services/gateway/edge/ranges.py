"""Byte ranges (RFC 9110 §14) of the API's binary answers, so that a browser's <audio> can seek
and a download can resume.

A google.api.HttpBody answer to a GET (or to a HEAD, which the route table
matches as a GET and aiohttp answers without a body) says
``Accept-Ranges: bytes`` and honours one range of ``Range: bytes=first-last``,
``bytes=first-`` or ``bytes=-suffix``: 206 Partial Content with just those
bytes and ``Content-Range: bytes first-last/size``. A range that starts at or
past the end (or a suffix of 0) is 416 range_not_satisfiable with
``Content-Range: bytes */size``.

The rest is answered 200 whole, as the RFC lets a server do: several ranges
(a multipart/byteranges body that no audio player asks for), a range with
``If-Range`` (these answers carry no validator it could match), another unit,
or a header that does not parse. Other methods' answers (a POST that generates)
have no ranges: the RFC defines them for GET only. Streamed answers neither:
their size is unknown until they end. A download (a route with a
download_method: stored audio, files) is ranged by the method that sends it,
by the same rules (runtime/downloads.py), so that only the bytes asked for are
read from storage.
"""

from __future__ import annotations

from typing import Callable

from aiohttp import web

from runtime.downloads import Unsatisfiable, byte_range
from runtime.errors import ApiError
from services.gateway.edge import errors
from services.gateway.edge.transcoding import HttpOutput

RANGED_METHODS = ("GET", "HEAD")


def respond(
    request: web.Request,
    output: HttpOutput,
    headers: dict[str, str],
    refuse: Callable[[ApiError, dict[str, str]], web.Response],
) -> web.Response:
    """The answer to `request` of `output` with `headers`, a byte range of it if one is asked for;
    `refuse` makes the error answer of an unsatisfiable one, with the headers given."""
    headers = {"Content-Type": output.content_type, **headers}
    if not output.http_body or request.method not in RANGED_METHODS:
        return web.Response(body=output.body, headers=headers)
    headers["Accept-Ranges"] = "bytes"
    size = len(output.body)
    wanted = request.headers.get("Range", "")
    try:
        chosen = byte_range(wanted, size) if wanted and "If-Range" not in request.headers else None
    except Unsatisfiable:
        headers.pop("Content-Type")  # the error's own
        return refuse(errors.range_not_satisfiable(size), {**headers, "Content-Range": f"bytes */{size}"})
    if chosen is None:
        return web.Response(body=output.body, headers=headers)
    first, last = chosen
    headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    return web.Response(status=206, body=memoryview(output.body)[first : last + 1], headers=headers)
