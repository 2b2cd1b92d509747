"""Calling a service's own gRPC servicers in its own process, with no network between.

The gateway's HTTP edge serves the gateway's own services as well as other
services' routes: those it calls here, in process, rather than over gRPC to
its own port. A servicer method cannot tell the difference: it gets its
request message and an :class:`InProcessContext`, which answers what a
``grpc.aio.ServicerContext`` answers (the caller's metadata, the time left,
the response metadata it sends). :func:`call` and :func:`stream` apply the
same rules as runtime.server's interceptor does to a call over the network:
a string holding NUL never reaches the handler, the call is counted in the
per-RPC metrics, and whatever the handler raises comes back as the ApiError
its caller would get (an unhandled exception is logged and INTERNAL).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc

from runtime import fields, logs
from runtime.errors import ApiError
from runtime.server import RpcCall

Metadata = tuple[tuple[str, str], ...]


class InProcessContext:
    """The ServicerContext of a call made in process; `caller` is who its caller checked it comes from
    (a runtime.callers.Caller: the account, the key and its scopes)."""

    def __init__(self, metadata: Metadata, timeout: float | None, caller: Any = None) -> None:
        self.caller = caller
        self._metadata = tuple(metadata)
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self.initial_metadata: Metadata = ()
        self._trailing: Metadata = ()

    def invocation_metadata(self) -> Metadata:
        return self._metadata

    async def send_initial_metadata(self, metadata) -> None:
        self.initial_metadata = tuple(metadata)

    def set_trailing_metadata(self, metadata) -> None:
        self._trailing = tuple(metadata)

    def trailing_metadata(self) -> Metadata:
        return self._trailing

    def response_metadata(self) -> Metadata:
        """What the handler sent before its answer and with it, as a client reads both."""
        return (*self.initial_metadata, *self._trailing)

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(self._deadline - time.monotonic(), 0.0)

    def peer(self) -> str:
        return "in-process"


def _rpc(path: str) -> tuple[str, str]:
    """("voice.gateway.v1.GenerationService", "CreateGeneration") of "/voice.gateway.v1.GenerationService/CreateGeneration"."""
    service, _, method = path.lstrip("/").rpartition("/")
    return service, method


async def call(
    path: str, handler: Callable[[Any, InProcessContext], Awaitable[Any]], request, context: InProcessContext
) -> Any:
    """A unary method's answer, within the context's deadline; raises the ApiError its caller gets."""
    with RpcCall(*_rpc(path), logs.REQUEST_ID.get()) as rpc:
        try:
            fields.refuse_nul(request)
            return await _within(context, handler(request, context))
        except asyncio.CancelledError:  # the caller went away
            rpc.code = grpc.StatusCode.CANCELLED
            raise
        except Exception as error:  # noqa: BLE001 - mapped as over the network
            raise rpc.public_error(error) from None


async def stream(
    path: str, handler: Callable[[Any, InProcessContext], AsyncIterator[Any]], request, context: InProcessContext
) -> AsyncIterator[Any]:
    """A server-streaming method's answers as they come; closing this closes the handler's stream."""
    with RpcCall(*_rpc(path), logs.REQUEST_ID.get()) as rpc:
        try:
            fields.refuse_nul(request)
            async with contextlib.aclosing(handler(request, context)) as answers:
                while True:
                    try:
                        answer = await _within(context, anext(answers))
                    except StopAsyncIteration:
                        return
                    yield answer
        except (GeneratorExit, asyncio.CancelledError):  # the caller went away: the handler's stream is closed
            rpc.code = grpc.StatusCode.CANCELLED
            raise
        except Exception as error:  # noqa: BLE001 - mapped as over the network
            raise rpc.public_error(error) from None


async def _within(context: InProcessContext, step: Awaitable[Any]) -> Any:
    remaining = context.time_remaining()
    if remaining is None:
        return await step
    try:
        async with asyncio.timeout(remaining):
            return await step
    except TimeoutError:
        raise ApiError(grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", "the call took too long") from None
