"""aiohttp's HTTP server, answering in the API's error shape where aiohttp answers by itself.

aiohttp refuses a request its HTTP parser cannot take (a URL or a header
over its limit, a control character in a header, a malformed request line)
before any handler or middleware runs, with a text/plain body; and it names
itself and its Python version in a ``Server`` header on every response.
:class:`Runner` is ``web.AppRunner`` with those refusals as
``{"error": {...}}`` bodies and without the banner; :func:`drop_banner`
takes it off the responses of the application's handlers. Every answer
carries ``X-Content-Type-Options: nosniff``.
"""

from __future__ import annotations

import asyncio
import json
import logging

import grpc
from aiohttp import hdrs, web, web_protocol
from aiohttp.http_exceptions import ContentEncodingError, LineTooLong

from runtime.errors import ApiError, internal_error
from services.gateway.edge import errors

log = logging.getLogger("gateway.http")


async def drop_banner(request: web.Request, response: web.StreamResponse) -> None:
    """An on_response_prepare hook: no Server header (it runs after aiohttp has set one), and
    `X-Content-Type-Options: nosniff`, so that a browser takes every answer (a user's uploaded
    file included) as the type it says, never as HTML it guessed."""
    response.headers.popall(hdrs.SERVER, None)
    response.headers[hdrs.X_CONTENT_TYPE_OPTIONS] = "nosniff"


class _BannerlessResponse(web.Response):
    """A response prepared outside the application, where no on_response_prepare hook runs
    (so the Server header goes after aiohttp's own step that sets it; a test checks it)."""

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        self.headers.popall(hdrs.SERVER, None)
        self.headers[hdrs.X_CONTENT_TYPE_OPTIONS] = "nosniff"


def protocol_error(status: int, exc: BaseException | None, max_url_bytes: int, max_header_bytes: int) -> ApiError:
    """The API's error for a request aiohttp answered before routing it (400), or failed to (500, 504)."""
    if status == 504:
        return ApiError(grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", "the request took too long")
    if status != 400:
        return internal_error("internal error")
    if isinstance(exc, ContentEncodingError):  # br or zstd, which this server does not decode
        coding = next((name for name in ("br", "zstd") if f"({name})" in str(exc)), "br or zstd")
        return errors.unsupported_content_encoding(coding)
    if isinstance(exc, LineTooLong):
        return errors.invalid_request(
            f"the request's URL is longer than {max_url_bytes} bytes or one of its headers longer than "
            f"{max_header_bytes} bytes"
        )
    return errors.invalid_request(f"the request is not valid HTTP: {problem(exc)}")


def problem(error: BaseException | None) -> str:
    """What aiohttp says is wrong, without the offending bytes it quotes on the lines below."""
    text = (getattr(error, "message", "") or str(error or "")).strip()
    return text.splitlines()[0].rstrip(":") if text else type(error).__name__


def _timeout_answer(timeout: float) -> bytes:
    """The raw 408 for a request whose head did not arrive in time (written before any request exists)."""
    error = errors.request_timeout(f"the request's headers did not arrive within {timeout:g} seconds")
    body = json.dumps(errors.error_body(error)).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class _Connection(web_protocol.RequestHandler):
    """One client connection; its own refusals look like the API's.

    It holds slow clients to the header timeout: from the first byte of a request's head, the
    whole head must arrive within it, or the client is answered 408 (when nothing else is being
    answered on the connection) and the connection closed. aiohttp's keep-alive timeout closes a
    connection idle between requests; the body timeout is the request handler's (front.py). A 408
    answer, for a body too slow, also closes the connection at once, not after aiohttp's lingering
    read of the rest of the body.
    """

    def __init__(self, manager: _Server, **kwargs) -> None:
        super().__init__(manager, **kwargs)
        self.limits = manager.limits  # kept: aiohttp lets go of the manager once the client has gone
        self.header_timeout = manager.header_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self._body = None  # the payload of the last request whose head arrived

    def data_received(self, data: bytes) -> None:
        if data and self._head_timer is None and (self._body is None or self._body.is_eof()):
            # The first bytes of a request's head (a body still arriving is not one): the connection is
            # no longer idle, its head has the header timeout (aiohttp re-arms its idle timer after the answer).
            self._head_timer = self._loop.call_later(self.header_timeout, self._head_too_slow)
            if self._keepalive_handle is not None:
                self._keepalive_handle.cancel()
                self._keepalive_handle = None
        requests = self._request_count
        super().data_received(data)
        if self._request_count != requests:  # a head has arrived (or been refused)
            self._body = self._messages[-1][1] if self._messages else None
            self._stop_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.transport is None or self._force_close:
            return
        log.info("closed a connection whose request headers were too slow", extra={"status": 408})
        if not self._request_in_progress and not self._messages:  # nothing else is being answered on it
            self.transport.write(_timeout_answer(self.header_timeout))
        self.force_close()

    async def finish_response(self, request, resp, start_time):
        result = await super().finish_response(request, resp, start_time)
        if resp.status == 408 or request.content.exception() is not None:
            # A body too slow, or one that cannot be read (not in its Content-Encoding): its rest is
            # neither waited for nor read by aiohttp's lingering, which would raise its error again.
            self.force_close()
        return result

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, ConnectionError) or self.transport is None:
            # The client went away (a body cut short, say): nobody to answer, nothing wrong here. The
            # request's line (status 499) is all the log says; aiohttp drops the connection quietly.
            raise ConnectionError("the client has gone")
        if request.writer.output_size > 0:  # as aiohttp's: too late to answer
            raise ConnectionError("the response has been sent already")
        if status < 500:  # the client's doing: one line, no traceback
            log.info("refused a malformed HTTP request", extra={"status": status, "problem": repr(exc)[:200]})
        else:
            log.error("error serving an HTTP request", exc_info=exc)
        error = protocol_error(status, exc, *self.limits)
        response = _BannerlessResponse(
            text=json.dumps(errors.error_body(error)), status=errors.http_status(error), content_type="application/json"
        )
        response.force_close()
        return response


class _Server(web.Server):
    limits: tuple[int, int]
    header_timeout: float

    def __call__(self) -> _Connection:
        return _Connection(self, loop=self._loop, **self._kwargs)


class Runner(web.AppRunner):
    """web.AppRunner whose connections answer malformed requests in the API's error shape.

    `max_url_bytes` and `max_header_bytes` are aiohttp's parser limits
    (``max_line_size``, which its C parser applies to the URL, and ``max_field_size``);
    `header_timeout` is _Connection's, `keepalive_timeout` aiohttp's own (its default is an hour).
    """

    def __init__(
        self,
        app: web.Application,
        *,
        max_url_bytes: int,
        max_header_bytes: int,
        header_timeout: float,
        keepalive_timeout: float,
        **kwargs,
    ) -> None:
        super().__init__(
            app,
            max_line_size=max_url_bytes,
            max_field_size=max_header_bytes,
            keepalive_timeout=keepalive_timeout,
            **kwargs,
        )
        self.limits = (max_url_bytes, max_header_bytes)
        self.header_timeout = header_timeout

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The same server, its connections made by _Connection (aiohttp has no option for it).
        server.__class__ = _Server
        server.limits = self.limits
        server.header_timeout = self.header_timeout
        return server
