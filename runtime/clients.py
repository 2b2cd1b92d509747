"""Channels from one service to another.

Every outgoing call carries the current request id (so logs of one request
line up across services), with tracing on a span and the W3C ``traceparent``
that makes the callee's span its child (runtime/tracing.py), and a deadline
(so no request hangs on a stuck upstream). A channel to a service that went away tries to reconnect within
RECONNECT_BACKOFF_SECONDS (gRPC's own backoff grows to two minutes, during
which calls fail at once: a service back from a restart would stay
"unavailable"). Channels use mutual TLS when the GRPC_TLS_* settings are set
(runtime/tls.py).
"""

from __future__ import annotations

import asyncio
from typing import Any, Sequence

import grpc

from runtime import config, logs, tls, tracing
from runtime.server import channel_options

# The metadata by which the gateway tells an internal service whose request it is.
ACCOUNT_ID_METADATA = "x-account-id"
# The first wait before reconnecting; it doubles up to RECONNECT_BACKOFF_SECONDS.
FIRST_RECONNECT_SECONDS = 0.1
RECONNECT_BACKOFF_SECONDS = config.setting(
    "RECONNECT_BACKOFF_SECONDS",
    2.0,
    "longest wait between attempts to reconnect to a service that went away (calls to it fail "
    "with 503 unavailable meanwhile)",
    config.between(FIRST_RECONNECT_SECONDS, 600),
)


def reconnect_options() -> list[tuple[str, Any]]:
    first_ms = int(FIRST_RECONNECT_SECONDS * 1000)
    return [
        ("grpc.initial_reconnect_backoff_ms", first_ms),
        ("grpc.min_reconnect_backoff_ms", first_ms),
        ("grpc.max_reconnect_backoff_ms", int(RECONNECT_BACKOFF_SECONDS.value * 1000)),
    ]


def _with_request_id(details: grpc.aio.ClientCallDetails, traceparent: str = "") -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    request_id = logs.REQUEST_ID.get()
    if request_id and logs.REQUEST_ID_HEADER not in metadata:
        metadata.add(logs.REQUEST_ID_HEADER, request_id)
    if traceparent:
        metadata[tracing.TRACEPARENT] = traceparent
    timeout = details.timeout
    if timeout is None:
        timeout = config.UPSTREAM_TIMEOUT_SECONDS.value
    return grpc.aio.ClientCallDetails(
        details.method, timeout, metadata, details.credentials, details.wait_for_ready
    )


def _client_span(details: grpc.aio.ClientCallDetails):
    """The span of an outgoing call (None when tracing is off), ended as the call ends."""
    if not tracing.ENABLED:
        return None
    method = details.method.decode() if isinstance(details.method, bytes) else details.method
    service, _, name = method.lstrip("/").rpartition("/")
    return tracing.start(
        method.lstrip("/"),
        {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
        kind=tracing.trace.SpanKind.CLIENT,
    )


def _traceparent(span) -> str:
    """The W3C traceparent that makes the callee's span a child of this call's span."""
    if span is None:
        return ""
    carrier: dict[str, str] = {}
    tracing.propagate.inject(carrier, context=tracing.trace.set_span_in_context(span))
    return carrier.get(tracing.TRACEPARENT, "")


def _end_with(span, call) -> None:
    """End the span when the call is over, with its status code (read once it is there)."""

    async def end() -> None:
        try:
            code = await call.code()
        except BaseException:  # noqa: BLE001 - the loop is closing: end it as it is
            code = grpc.StatusCode.CANCELLED
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code is not grpc.StatusCode.OK:
            tracing.failed(span, code.name)
        span.end()

    call.add_done_callback(lambda _: asyncio.ensure_future(end()))


async def _traced(continuation, details, request):
    span = _client_span(details)
    try:
        call = await continuation(_with_request_id(details, _traceparent(span)), request)
    except BaseException as error:
        if span is not None:
            tracing.failed(span, error)
            span.end()
        raise
    if span is not None:
        _end_with(span, call)
    return call


class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):
        return await _traced(continuation, details, request)


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):
        return await _traced(continuation, details, request)


class _StreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, details, request_iterator):
        return await _traced(continuation, details, request_iterator)


def channel(address: str, extra_options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
    """A channel inside the mesh (mutual TLS when configured), with request id and deadline on every call."""
    return tls.open_channel(
        address,
        options=channel_options() + reconnect_options() + list(extra_options),
        interceptors=[_UnaryUnary(), _UnaryStream(), _StreamUnary()],
        credentials=tls.load(),
    )


def control_channel(address: str) -> grpc.aio.Channel:
    """A channel for long-lived calls (health watches, reflection): no deadline of its own."""
    return tls.open_channel(address, options=reconnect_options(), credentials=tls.load())


def service_channel(name: str) -> grpc.aio.Channel:
    """A channel to one of the mesh's services, by name ("transcode")."""
    return channel(config.SERVICES[name].address.value)
