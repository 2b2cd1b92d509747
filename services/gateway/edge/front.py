"""The public HTTP API: every google.api.http route of the upstreams, plus four
operational endpoints that need no key (/healthz, /readyz, /metrics,
/openapi.json) and the dashboard's static files (`/`, `/dashboard/...`; see dashboard.py).

There is no handler per endpoint: :meth:`HttpFront.api` finds the route,
checks the API key and the scope the route's method needs (this is the one
point that authenticates HTTP requests: 403 insufficient_scope for a key
without it), transcodes the request, calls the upstream with a generic
gRPC call, and transcodes the answer back. What differs between methods is
declared in their protos and read over reflection with the routes (see
discovery.py): whether a key is needed, which deadline applies, which
response metadata become headers, and which server-streaming method answers
instead when the request asks for a stream (its answers sent on chunked, as
they come). The edge knows no method by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import grpc
import prometheus_client
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from runtime import callers, clients, config, downloads, inprocess, logs, tracing
from runtime.callers import Caller
from runtime.errors import DEFAULT_REASONS, ApiError, internal_error, not_found
from services.gateway.edge import cors, errors, openapi, protocol, ranges, transcoding
from services.gateway.edge.config import (
    BODY_TIMEOUT_SECONDS,
    HEADER_TIMEOUT_SECONDS,
    KEEPALIVE_TIMEOUT_SECONDS,
    MAX_HEADER_BYTES,
    MAX_URL_BYTES,
    PUBLIC_METRICS,
)
from services.gateway.edge.dashboard import Dashboard
from services.gateway.edge.discovery import Route, Rpc
from services.gateway.edge.upstreams import RouteTable

log = logging.getLogger("gateway.http")

HTTP_REQUESTS = prometheus_client.Counter(
    "http_requests_total",
    "HTTP requests answered, by route template, method and status.",
    ["route", "method", "status"],
)
HTTP_SECONDS = prometheus_client.Histogram(
    "http_request_duration_seconds",
    "Time to answer an HTTP request, by route template, method and status.",
    ["route", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
HTTP_IN_FLIGHT = prometheus_client.Gauge(
    "http_requests_in_flight", "HTTP requests being handled now (what the gateway's autoscaler can follow)."
)
HTTP_ERRORS = prometheus_client.Counter(
    "http_errors_total",
    "HTTP error responses (4xx, 5xx) by route template, status and error type (README: Errors).",
    ["route", "status", "type"],
)
# The metrics label of requests that matched no route (one label, whatever the path).
UNMATCHED = "unmatched"
# Probed every few seconds: their access log lines are DEBUG, not INFO.
PROBES = {"/healthz", "/readyz", "/metrics"}
REQUEST_ID_RESPONSE_HEADER = "X-Request-Id"
# When a request's body must have arrived (loop time).
BODY_DEADLINE = web.RequestKey("body_deadline", float)
# Where an error response keeps its type for the metrics (aiohttp responses are mappings).
ERROR_TYPE = web.ResponseKey("error_type", str)
# A stream that ended before its first answer has no content type to send.
DEFAULT_STREAM_TYPE = "application/octet-stream"
# Checks an `Authorization` header and returns the caller (account, key, scopes), or raises UNAUTHORIZED
# (ACCOUNT_DISABLED for a key of a disabled account).
Authenticate = Callable[[str], Awaitable[Caller]]


def _end_request_span(span, request: web.Request, status: int, error_type: str) -> None:
    """End the span of an HTTP request, named by its route template (the path may hold ids)."""
    span.update_name(f"{request.method} {request['route']}")
    span.set_attribute("http.route", request["route"])
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        tracing.failed(span, error_type or "internal_error")
    elif status >= 400:
        span.set_attribute("error.type", error_type or str(status))
    span.end()


def error_response(error: ApiError, headers: dict[str, str] | None = None) -> web.Response:
    body = errors.error_body(error)
    response = web.json_response(body, status=errors.http_status(error), headers=headers)
    response[ERROR_TYPE] = body["error"]["type"]  # for the metrics (see _middleware)
    retry_after = errors.retry_after(error)
    if retry_after is not None:
        response.headers["Retry-After"] = retry_after
    if response.status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    if isinstance(error, errors.MethodNotAllowed):
        response.headers["Allow"] = ", ".join(error.allowed)
    return response


class HttpFront:
    def __init__(
        self,
        table: RouteTable,
        authenticate: Authenticate,
        max_body_bytes: int,
        media_origins: tuple[str, ...] = (),
    ) -> None:
        self.table = table
        self.authenticate = authenticate
        self.max_body_bytes = max_body_bytes
        # client_max_size makes aiohttp stop reading (and raise) past the limit,
        # for bodies whose size is not announced up front.
        self.app = web.Application(client_max_size=max_body_bytes, middlewares=[self._middleware, cors.preflight])
        self.app.on_response_prepare.append(self._add_request_id)
        self.app.on_response_prepare.append(self._add_retry_after)
        self.app.on_response_prepare.append(protocol.drop_banner)
        self.app.on_response_prepare.append(cors.add_headers)
        self.app.router.add_get("/healthz", self.healthz)
        self.app.router.add_get("/readyz", self.readyz)
        self.app.router.add_get("/metrics", self.metrics)
        self.app.router.add_get("/openapi.json", self.openapi)
        # The web page at `/`, no key (its API calls send one); its player may play audio from media_origins.
        Dashboard(media_origins=media_origins).add_routes(self.app.router)
        self.api_resource = self.app.router.add_route("*", "/{path:.*}", self.api).resource
        self.runner: web.AppRunner | None = None
        # Requests being handled, so that stopping can wait for them (see stop).
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self, host: str, port: int) -> None:
        self.runner = protocol.Runner(
            self.app,
            access_log=None,
            shutdown_timeout=config.SHUTDOWN_GRACE_SECONDS.value,
            max_url_bytes=MAX_URL_BYTES.value,
            max_header_bytes=MAX_HEADER_BYTES.value,
            header_timeout=HEADER_TIMEOUT_SECONDS.value,
            keepalive_timeout=KEEPALIVE_TIMEOUT_SECONDS.value,
        )
        await self.runner.setup()
        await web.TCPSite(self.runner, host, port).start()
        log.info("HTTP listening", extra={"http": f"{host}:{port}"})

    async def stop(self) -> None:
        """Stop listening, let in-flight requests finish (within the grace period), close."""
        if self.runner is None:
            return
        log.info("stopping HTTP server", extra={"in_flight": self._in_flight})
        for site in list(self.runner.sites):
            await site.stop()  # no new connections
        # aiohttp's own graceful stop ignores the rest of a body still being
        # uploaded, so wait for the requests in flight before handing over to it.
        try:
            await asyncio.wait_for(self._idle.wait(), config.SHUTDOWN_GRACE_SECONDS.value)
        except asyncio.TimeoutError:
            log.warning("requests still in flight after the grace period", extra={"in_flight": self._in_flight})
        await self.runner.cleanup()

    # --- every request ------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler) -> web.StreamResponse:
        # The request id is the trace id: the caller's (a W3C traceparent), or a new one that the
        # request's trace takes (runtime/tracing.py).
        request_id = tracing.request_id_of(request.headers.get(tracing.TRACEPARENT, "")) or uuid.uuid4().hex
        token = logs.REQUEST_ID.set(request_id)
        request["request_id"] = request_id
        # Its headers have just arrived: its body has until then (see _read_body).
        request[BODY_DEADLINE] = asyncio.get_running_loop().time() + BODY_TIMEOUT_SECONDS.value
        resource = request.match_info.route.resource
        # The API's handler names the route template once it has matched one.
        request["route"] = UNMATCHED if resource in (None, self.api_resource) else resource.canonical
        span = span_token = None
        if tracing.ENABLED and request["route"] not in PROBES:
            span = tracing.start(
                request.method,
                {"http.request.method": request.method},
                parent=tracing.context_of(request.headers),
                kind=tracing.trace.SpanKind.SERVER,
            )
            span_token = tracing.attach(span)
        started = time.perf_counter()
        status = 500
        error_type = "internal_error"
        self._in_flight += 1
        HTTP_IN_FLIGHT.inc()
        self._idle.clear()
        try:
            try:
                response = await handler(request)
            except ApiError as error:
                response = error_response(error)
                if response.status == 408 or request.content.exception() is not None:
                    response.force_close()  # the rest of a body too slow, or unreadable, is not read
                elif not await self._discard_body(request):
                    response.force_close()
            except web.HTTPRequestEntityTooLarge:
                response = error_response(errors.request_too_large(self.max_body_bytes))
            except web.HTTPException as error:  # aiohttp's own (a malformed form, ...)
                response = error_response(errors.invalid_request(error.text or error.reason))
                response.set_status(error.status)
            except (asyncio.CancelledError, ConnectionResetError):
                status = 499  # as nginx logs it: the client closed the request
                error_type = "client_closed_request"
                raise  # nobody to answer
            except Exception:  # noqa: BLE001 - logged here, never shown to the client
                log.exception("unhandled error serving %s %s", request.method, request.path)
                response = error_response(internal_error(f"internal error (request id {request_id})"))
            status = response.status
            error_type = response.get(ERROR_TYPE, "")
            return response
        finally:
            self._in_flight -= 1
            HTTP_IN_FLIGHT.dec()
            if not self._in_flight:
                self._idle.set()
            elapsed = time.perf_counter() - started
            labels = (request["route"], request.method, str(status))
            HTTP_REQUESTS.labels(*labels).inc()
            # A traced request's trace id goes with its latency as an exemplar (OpenMetrics): the
            # dashboard's latency panel links to the trace.
            traced = span is not None and span.get_span_context().trace_flags.sampled
            HTTP_SECONDS.labels(*labels).observe(elapsed, exemplar={"trace_id": request_id} if traced else None)
            if status >= 400:
                HTTP_ERRORS.labels(request["route"], str(status), error_type or "unknown").inc()
            log.log(
                logging.DEBUG if request["route"] in PROBES else logging.INFO,
                "http request",
                extra={
                    "method": request.method,
                    "path": request.path,
                    "route": request["route"],
                    "status": status,
                    "ms": round(elapsed * 1000, 1),
                    "account_id": request.get("account_id"),
                },
            )
            if span is not None:
                _end_request_span(span, request, status, error_type)
                tracing.detach(span_token)
            logs.REQUEST_ID.reset(token)

    async def _authenticate(self, authorization: str) -> Caller:
        with tracing.span("gateway.auth"):
            return await self.authenticate(authorization)

    async def _discard_body(self, request: web.Request) -> bool:
        """Read and drop what is left of the body of a request refused before it was read (no key, a
        key without the scope, no such route), within its deadline and the body limit, so that the
        answer goes out on a connection in a clean state; False when that cannot be done (a body
        that is not in its Content-Encoding, too large, too slow): the connection is closed then."""
        if not request.can_read_body:
            return True
        read = 0
        try:
            async with asyncio.timeout_at(request[BODY_DEADLINE]):
                while chunk := await request.content.readany():
                    read += len(chunk)
                    if read > self.max_body_bytes:
                        return False
        except Exception:  # noqa: BLE001 - an unreadable body, a timeout: the connection goes
            return False
        return True

    async def _add_request_id(self, request: web.Request, response: web.StreamResponse) -> None:
        if "request_id" in request:
            response.headers[REQUEST_ID_RESPONSE_HEADER] = request["request_id"]

    async def _add_retry_after(self, request: web.Request, response: web.StreamResponse) -> None:
        # Every 429 and 503 says when to try again, also those not made by error_response (/readyz).
        if response.status in errors.RETRY_STATUSES and "Retry-After" not in response.headers:
            response.headers["Retry-After"] = str(errors.DEFAULT_RETRY_AFTER_SECONDS)

    # --- operational endpoints (no key) --------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        upstreams = list(self.table.upstreams.values())
        serving = await asyncio.gather(*(upstream.is_serving() for upstream in upstreams))
        states = {u.name: "SERVING" if ok else "NOT_SERVING" for u, ok in zip(upstreams, serving)}
        down = [name for name, state in states.items() if state != "SERVING"]
        if not down:
            return web.json_response({"status": "ready", "upstreams": states})
        body = errors.error_body(errors.unavailable(f"not serving: {', '.join(down)}"))
        response = web.json_response({**body, "upstreams": states}, status=503)
        response[ERROR_TYPE] = body["error"]["type"]
        return response

    async def metrics(self, request: web.Request) -> web.Response:
        if not PUBLIC_METRICS.value:
            raise not_found("no endpoint GET /metrics here: this gateway serves its metrics on its metrics port")
        return web.Response(
            body=prometheus_client.generate_latest(),
            headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST},
        )

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi.document(self.table.routes, self.table.comments()))

    # --- the API ----------------------------------------------------------------

    async def api(self, request: web.Request) -> web.Response:
        authorization = request.headers.get("Authorization", "")
        try:
            route, path_params = self._route(request)
        except ApiError:
            await self._authenticate(authorization)  # without a key, 401 comes first, as for every route
            raise
        request["route"] = route.template.text
        caller = None
        if route.rpc.needs_key:
            caller = await self._authenticate(authorization)
            request["account_id"] = caller.account_id
            callers.require(caller, route.rpc.rules.scope)  # 403 insufficient_scope, before the body is taken in
        if route.rpc.server_streaming or route.rpc.client_streaming:
            # HTTP reaches a streaming RPC through a unary route's stream_method (see _stream), not a rule of its own.
            raise ApiError(grpc.StatusCode.UNIMPLEMENTED, "NOT_IMPLEMENTED", f"{route} is not served over HTTP")
        # Serialized at once, the HTTP input let go as it returns: an uploaded file is held twice
        # at most, while it is copied into the payload and while gRPC sends it.
        with tracing.span("gateway.transcode_request"):  # reading the body, JSON or form to the request message
            payload = transcoding.to_grpc_payload(route, await self._http_input(request, route, path_params))
        if route.rpc.download is not None:
            return await self._download(route, payload, request, caller)
        if route.rpc.streams(payload):
            return await self._stream(route, payload, request, caller)
        reply = await self._call(route, payload, request, caller)
        if reply.error is not None:
            return error_response(reply.error, reply.headers)
        if route.rpc.rules.success_status == 204:
            return web.Response(status=204, headers=reply.headers)
        with tracing.span("gateway.transcode_response"):
            output = transcoding.to_http_response(route, reply.response)
        return ranges.respond(request, output, reply.headers, refuse=error_response)  # Range: bytes=... (206)

    def _route(self, request: web.Request) -> tuple[Route, dict[str, str]]:
        route, path_params, allowed = self.table.match(request.method, request.rel_url.raw_path)
        if route is not None:
            return route, path_params
        if allowed:
            raise errors.MethodNotAllowed(request.method, allowed)
        missing = self.table.undiscovered()
        if missing:
            raise errors.unavailable(
                f"cannot route {request.path} while {', '.join(missing)} cannot be reached; try again shortly"
            )
        raise not_found(f"no endpoint {request.method} {request.path}")

    async def _http_input(self, request: web.Request, route: Route, path_params: dict[str, str]) -> transcoding.HttpInput:
        http = transcoding.HttpInput(path_params=path_params, params=list(request.query.items()))
        if not route.body:
            return http  # a body on GET or DELETE means nothing
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            raise errors.request_too_large(self.max_body_bytes)
        _check_content_encoding(request)
        http.content_type = _text(request.headers.get("Content-Type", ""), "the Content-Type header")
        # A JSON route reads its body as it is, to refuse it as a whole if it is not JSON.
        if request.content_type == "multipart/form-data" and not transcoding.takes_json(route):
            http.multipart = True
            for name, value in (await _read_body(request, _form(request))).items():
                name = _text(name, "a part name of the form")
                if isinstance(value, web.FileField):
                    content_type = _text(value.content_type, f"the Content-Type of the form's part {name!r}")
                    http.files.append(transcoding.FilePart(name, value.file.read(), content_type))
                else:
                    http.params.append((name, value))
        else:
            try:
                http.body = await _read_body(request, request.read())
            except web.RequestPayloadError as error:
                raise _unreadable_body(error) from None
        return http

    def _metadata(self, request: web.Request, caller: Caller | None, route: Route) -> tuple:
        """The route's passed-on request headers, then the caller's account when signed in, and the number
        of its key for what the service meters (the key was checked here; another service takes the
        account the mesh sends, never the key)."""
        metadata: tuple = tuple(
            (key, _text(request.headers[header], f"the {header} header"))
            for header, key in route.rpc.passed_on_headers.items()
            if header in request.headers
        )
        if caller is not None:
            metadata += ((clients.ACCOUNT_ID_METADATA, str(caller.account_id)),)
            if caller.key_id:
                metadata += ((callers.KEY_ID_METADATA, str(caller.key_id)),)
        return metadata

    async def _stream(
        self, route: Route, payload: bytes, request: web.Request, caller: Caller | None
    ) -> web.StreamResponse:
        """The route's streaming method: its HttpBody answers sent on as they come, chunked.

        The status waits for the first answer, so that an error before any audio (the
        request's checks, no provider) is an ordinary error answer. An error after it
        cannot change the status: the connection is closed before the final chunk, which
        HTTP clients report as an incomplete body. A client that goes away cancels the call,
        which stops the generation."""
        rpc = route.rpc.stream
        assert rpc is not None
        answers, response_metadata = self._open_stream(rpc, route, payload, request, caller)
        forwarded = rpc.forwarded_headers
        async with contextlib.aclosing(answers):  # closed early, it stops the generation of a client gone
            try:
                first = await anext(answers, None)
            except _Failed as failed:
                return error_response(failed.error, _forwarded(failed.metadata, forwarded))
            headers = _forwarded(await response_metadata(), forwarded)
            body = _http_body(first, route.response_body) if first is not None else None
            response = web.StreamResponse(
                headers={"Content-Type": body.content_type if body else DEFAULT_STREAM_TYPE, **headers}
            )
            response.enable_chunked_encoding()
            await response.prepare(request)
            while body is not None and request.method != "HEAD":  # a HEAD gets the headers, not the stream
                if body.data:
                    await response.write(body.data)  # ConnectionResetError once the client is gone
                try:
                    message = await anext(answers, None)
                except _Failed as failed:
                    log.warning("stream failed after its first chunk", extra={"type": failed.error.reason.lower()})
                    if request.transport is not None:
                        request.transport.close()  # no final chunk: the client sees the body cut short
                    return response
                body = _http_body(message, route.response_body) if message is not None else None
            await response.write_eof()
            return response

    async def _download(
        self, route: Route, payload: bytes, request: web.Request, caller: Caller | None
    ) -> web.StreamResponse:
        """The route's download method: stored bytes sent on as they are read from storage, with the
        Content-Length (and, for a range, the 206 and Content-Range) the method says first, or a 307
        to where the store serves them (runtime/downloads.py). An error before the first bytes is an
        ordinary error answer; one after them cuts the answer short (the connection is closed)."""
        rpc = route.rpc.download
        assert rpc is not None
        wanted = "" if "If-Range" in request.headers else request.headers.get("Range", "")
        extra = ((downloads.RANGE_METADATA, _text(wanted, "the Range header")),) if wanted else ()
        # No deadline: a slow client may take its time; each read from storage has its own (S3_TIMEOUT_SECONDS).
        answers, response_metadata = self._open_stream(rpc, route, payload, request, caller, extra, deadline=False)
        forwarded = rpc.forwarded_headers
        async with contextlib.aclosing(answers):
            try:
                first = await anext(answers, None)
            except _Failed as failed:
                headers = _forwarded(failed.metadata, forwarded)
                said = _said(failed.metadata)
                if failed.error.reason == "RANGE_NOT_SATISFIABLE" and downloads.CONTENT_RANGE_METADATA in said:
                    headers.update({"Accept-Ranges": "bytes", "Content-Range": said[downloads.CONTENT_RANGE_METADATA]})
                return error_response(failed.error, headers)
            metadata = await response_metadata()
            said, headers = _said(metadata), _forwarded(metadata, forwarded)
            if downloads.LOCATION_METADATA in said:  # the store serves it: the client goes there
                headers.update({"Location": said[downloads.LOCATION_METADATA], "Cache-Control": "no-store"})
                return web.Response(status=307, headers=headers)
            body = _http_body(first, route.response_body) if first is not None else None
            media_types = route.rpc.rules.response_media_types
            content_type = (body.content_type if body else "") or (media_types[0] if media_types else DEFAULT_STREAM_TYPE)
            response = web.StreamResponse(
                status=206 if downloads.CONTENT_RANGE_METADATA in said else 200,
                headers={"Content-Type": content_type, "Accept-Ranges": "bytes", **headers},
            )
            if downloads.CONTENT_RANGE_METADATA in said:
                response.headers["Content-Range"] = said[downloads.CONTENT_RANGE_METADATA]
            if downloads.CONTENT_LENGTH_METADATA in said:
                response.content_length = int(said[downloads.CONTENT_LENGTH_METADATA])
            else:
                response.enable_chunked_encoding()
            await response.prepare(request)
            if request.method == "HEAD":  # the headers alone; closing the answers stops the method
                return response
            while body is not None:
                if body.data:
                    await response.write(body.data)  # ConnectionResetError once the client is gone
                try:
                    message = await anext(answers, None)
                except _Failed as failed:
                    log.warning("download failed after its first bytes", extra={"type": failed.error.reason.lower()})
                    if request.transport is not None:
                        request.transport.close()  # the client sees the body cut short of its Content-Length
                    return response
                body = _http_body(message, route.response_body) if message is not None else None
            await response.write_eof()
            return response

    def _open_stream(
        self,
        rpc: Rpc,
        route: Route,
        payload: bytes,
        request: web.Request,
        caller: Caller | None,
        extra: tuple = (),
        deadline: bool = True,
    ):
        """The streaming method's answers (an async iterator raising _Failed) and an async getter of the
        response metadata it sent; this process's own methods are called in process. `extra` is
        metadata the method gets beside the route's passed-on headers; without `deadline` the call
        has none (a download: otherwise the method's own, as for any call)."""
        if rpc.local is not None:
            context = self._in_process_context(rpc, request, caller, route, extra, deadline)
            answers = inprocess.stream(rpc.path, rpc.local, rpc.request_class.FromString(payload), context)

            async def metadata():
                return context.response_metadata()

            return _failing_as(answers, rpc.upstream, route, context.response_metadata), metadata
        upstream = self.table.upstreams[rpc.upstream]
        method = upstream.channel.unary_stream(
            rpc.path, request_serializer=None, response_deserializer=rpc.response_class.FromString
        )
        metadata = self._metadata(request, caller, route) + extra
        call = method(payload, metadata=metadata, timeout=rpc.deadline_seconds() if deadline else None)
        return _read(call, upstream.name, route), call.initial_metadata

    async def _call(self, route: Route, payload: bytes, request: web.Request, caller: Caller | None) -> UpstreamReply:
        rpc = route.rpc
        headers = rpc.forwarded_headers
        if rpc.local is not None:  # this process's own method: in process
            context = self._in_process_context(rpc, request, caller, route)
            try:
                response = await inprocess.call(rpc.path, rpc.local, rpc.request_class.FromString(payload), context)
            except ApiError as error:
                error = _public(error, rpc.upstream, route)
                return UpstreamReply(error=error, headers=_forwarded(context.response_metadata(), headers))
            return UpstreamReply(response=response, headers=_forwarded(context.response_metadata(), headers))
        upstream = self.table.upstreams[rpc.upstream]
        method = upstream.channel.unary_unary(
            rpc.path,
            request_serializer=None,  # the payload is the serialized request message
            response_deserializer=rpc.response_class.FromString,
        )
        call = method(payload, metadata=self._metadata(request, caller, route), timeout=rpc.deadline_seconds())
        try:
            response = await call
        except grpc.aio.AioRpcError as rpc_error:
            error = _public(ApiError.from_rpc_error(rpc_error), upstream.name, route)
            return UpstreamReply(error=error, headers=_forwarded(_all_metadata(rpc_error), headers))
        return UpstreamReply(response=response, headers=_forwarded(await call.initial_metadata(), headers))

    def _in_process_context(
        self,
        rpc: Rpc,
        request: web.Request,
        caller: Caller | None,
        route: Route,
        extra: tuple = (),
        deadline: bool = True,
    ) -> inprocess.InProcessContext:
        """A call of this process's own method: the route's passed-on headers, its deadline (unless
        `deadline` is off), and the account whose key the edge checked (in the context, where no
        metadata could forge it)."""
        timeout = (rpc.deadline_seconds() or config.UPSTREAM_TIMEOUT_SECONDS.value) if deadline else None
        return inprocess.InProcessContext(self._metadata(request, None, route) + extra, timeout, caller=caller)


class _Failed(Exception):
    """A streamed call that failed: the error its caller gets, and the response metadata sent with it."""

    def __init__(self, error: ApiError, metadata) -> None:
        self.error = error
        self.metadata = metadata


async def _read(call, upstream: str, route: Route):
    """A gRPC stream's answers; its failure as _Failed. Closed, it cancels the call."""
    try:
        while (message := await call.read()) is not grpc.aio.EOF:
            yield message
    except grpc.aio.AioRpcError as rpc_error:
        raise _Failed(_public(ApiError.from_rpc_error(rpc_error), upstream, route), _all_metadata(rpc_error)) from None
    finally:
        call.cancel()  # a no-op once the stream has ended; stops the generation of a client gone


async def _failing_as(answers, upstream: str, route: Route, metadata):
    """An in-process stream's answers; its failure as _Failed."""
    async with contextlib.aclosing(answers):
        try:
            async for message in answers:
                yield message
        except ApiError as error:
            raise _Failed(_public(error, upstream, route), metadata()) from None


def _http_body(message, field: str):
    """The google.api.HttpBody of a streamed answer (in the route's response_body field)."""
    return getattr(message, field) if field else message


def _text(value: str, what: str) -> str:
    """A header's text as it is, if it is UTF-8: aiohttp keeps other bytes as surrogates,
    which no protobuf string can hold."""
    try:
        value.encode()
    except UnicodeEncodeError:
        raise errors.invalid_request(f"{what} is not UTF-8 text") from None
    return value


# What aiohttp decodes by itself (one coding): the API reads such a body decompressed, its limits counting
# the decompressed bytes. It refuses br and zstd itself (protocol.py: 415 too) and passes any other coding on
# undecoded, which the edge refuses instead of reading compressed bytes as the body.
CONTENT_ENCODINGS = {"", "identity", "gzip", "deflate"}


def _check_content_encoding(request: web.Request) -> None:
    coding = request.headers.get("Content-Encoding", "").strip().lower()
    if coding not in CONTENT_ENCODINGS:
        raise errors.unsupported_content_encoding(coding)


async def _read_body(request: web.Request, reading: Awaitable):
    """What `reading` (of the request's body) gives, if the body arrives by the request's deadline."""
    try:
        async with asyncio.timeout_at(request[BODY_DEADLINE]):
            return await reading
    except TimeoutError:
        raise errors.request_timeout(
            f"the request's body did not arrive within {BODY_TIMEOUT_SECONDS.value:g} seconds"
        ) from None


def _unreadable_body(error: Exception) -> ApiError:
    """A body aiohttp could not read: one that is not in its Content-Encoding (not gzip), or cut short."""
    return errors.invalid_request(f"the request body cannot be read: {protocol.problem(error.__cause__ or error)}")


async def _form(request: web.Request):
    """The fields of a multipart/form-data body; INVALID_REQUEST for a malformed one."""
    try:
        return await request.post()
    except web.RequestPayloadError as error:
        raise _unreadable_body(error) from None
    except UnicodeDecodeError:
        raise errors.invalid_request(
            "a text field of the form is not UTF-8 text; send binary data as a file part"
        ) from None
    except (ValueError, LookupError, HttpProcessingError) as error:
        # No boundary, none closing the body, a control character in a part's header, an unknown charset...
        raise errors.invalid_request(f"the multipart/form-data body is malformed: {protocol.problem(error)}") from None


@dataclass
class UpstreamReply:
    """An upstream's answer (its response or its error) and the headers it sends the client."""

    response: object = None
    error: ApiError | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _all_metadata(rpc_error: grpc.aio.AioRpcError) -> list:
    """A failed call's response metadata: what was sent before the failure, and with it."""
    return [*(rpc_error.initial_metadata() or ()), *(rpc_error.trailing_metadata() or ())]


def _said(metadata) -> dict[str, str]:
    """A download's own response metadata (runtime/downloads.py), by key."""
    return {key: value for key, value in (metadata or ()) if key.startswith("x-") and isinstance(value, str)}


def _forwarded(metadata, headers: dict[str, str]) -> dict[str, str]:
    """The response metadata the method's proto lets out, as HTTP headers (nothing else leaks out)."""
    return {headers[key]: value for key, value in (metadata or ()) if key in headers and isinstance(value, str)}


def _public(error: ApiError, upstream: str, route: Route) -> ApiError:
    """The upstream's error as the HTTP caller should see it.

    A field of a JSON body field (``body: "generation"``) is named as the body carries
    it ("input", not "generation.input"). gRPC's own texts for a dead or slow upstream
    name addresses; they are said plainly instead."""
    if error.param and route.body not in ("", "*") and error.param.startswith(route.body + "."):
        error.param = error.param[len(route.body) + 1 :]
    if error.reason == DEFAULT_REASONS.get(error.code):
        if error.code == grpc.StatusCode.UNAVAILABLE:
            error.message = f"the {upstream} service is unavailable; try again shortly"
        elif error.code == grpc.StatusCode.DEADLINE_EXCEEDED:
            error.message = f"the {upstream} service did not answer in time"
    return error
