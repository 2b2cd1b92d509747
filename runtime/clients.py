"""Channels from one service to another.

Every outgoing call carries the current request id (so logs of one request
line up across services) and a deadline (so no request hangs on a stuck
upstream). A channel to a service that went away tries to reconnect within
RECONNECT_BACKOFF_SECONDS (gRPC's own backoff grows to two minutes, during
which calls fail at once: a service back from a restart would stay
"unavailable"). Channels use mutual TLS when the GRPC_TLS_* settings are set
(runtime/tls.py).
"""

from __future__ import annotations

from typing import Any, Sequence

import grpc

from runtime import config, logs, tls
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


def _with_request_id(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    request_id = logs.REQUEST_ID.get()
    if request_id and logs.REQUEST_ID_HEADER not in metadata:
        metadata.add(logs.REQUEST_ID_HEADER, request_id)
    timeout = details.timeout
    if timeout is None:
        timeout = config.UPSTREAM_TIMEOUT_SECONDS.value
    return grpc.aio.ClientCallDetails(
        details.method, timeout, metadata, details.credentials, details.wait_for_ready
    )


class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(_with_request_id(details), request)


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(_with_request_id(details), request)


class _StreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, details, request_iterator):
        return await continuation(_with_request_id(details), request_iterator)


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
