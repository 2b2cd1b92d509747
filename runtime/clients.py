"""Channels from one service to another.

Every outgoing call carries the current request id (so logs of one request
line up across services) and a deadline (so no request hangs on a stuck
upstream).
"""

from __future__ import annotations

from typing import Any, Sequence

import grpc

from runtime import config, logs
from runtime.server import channel_options


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


def channel(address: str, extra_options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
    """An insecure channel inside the mesh, with request id and deadline on every call."""
    return grpc.aio.insecure_channel(
        address,
        options=channel_options() + list(extra_options),
        interceptors=[_UnaryUnary(), _UnaryStream()],
    )


def service_channel(name: str) -> grpc.aio.Channel:
    """A channel to one of the mesh's services, by name ("transcode")."""
    return channel(config.SERVICES[name].address.value)
