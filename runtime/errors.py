"""Errors that cross service boundaries.

Every error a client sees is a ``google.rpc.Status`` carried in the gRPC
trailers (``grpc-status-details-bin``), with one ``google.rpc.ErrorInfo``
whose ``reason`` is the public error type in UPPER_SNAKE_CASE
(``AUDIO_DECODE_FAILED``); the HTTP gateway lowercases it into the
``error.type`` of its JSON body. When one request field is at fault its name
travels in ``ErrorInfo.metadata["param"]``. When trying again later can
succeed (a busy queue, a rate limit, a database that is reconnecting), the
status also carries a ``google.rpc.RetryInfo`` with the delay to wait; the
HTTP edge turns it into a ``Retry-After`` header, and a service that passes an
upstream's error on passes the delay on with it.

Services raise :class:`ApiError`; the server interceptor turns it (and any
unexpected exception, without its traceback) into that status. A status
that gRPC itself made (a dead connection, a deadline) carries no ErrorInfo,
and its text names internal addresses ("ipv4:10.0.3.7:50053: Connection
refused"): :meth:`ApiError.from_rpc_error` logs that text and keeps a plain
one, so it never reaches a client or the history.
"""

from __future__ import annotations

import datetime
import logging

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "voicemesh"

log = logging.getLogger("runtime.errors")


class ApiError(Exception):
    """An error meant for the client: a gRPC code, a public reason and a message."""

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: str,
        message: str,
        *,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.param = param
        # Seconds after which the same request may succeed; None when waiting would not help.
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"ApiError({self.code.name}, {self.reason}, {self.message!r})"

    def to_status(self) -> grpc.Status:
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN)
        if self.param:
            info.metadata["param"] = self.param
        detail = any_pb2.Any()
        detail.Pack(info)
        status = status_pb2.Status(
            code=self.code.value[0], message=self.message, details=[detail]
        )
        if self.retry_after is not None:
            delay = duration_pb2.Duration()
            delay.FromTimedelta(datetime.timedelta(seconds=max(0.0, self.retry_after)))
            status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        return rpc_status.to_status(status)

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> "ApiError":
        """Rebuild the ApiError an upstream service raised, so it can be re-raised as is.

        An upstream error without ErrorInfo (a dead connection, a deadline) gets a
        reason derived from its code, and a message of ours instead of gRPC's (logged).
        """
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        message = error.details() if hasattr(error, "details") else str(error)
        reason, param, retry_after, ours = DEFAULT_REASONS.get(code, "INTERNAL"), None, None, False
        try:
            status = rpc_status.from_call(error)
        except Exception:  # malformed trailers: keep the defaults
            status = None
        if status is not None:
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    reason = info.reason
                    param = info.metadata.get("param") or None
                    ours = True
                elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    retry = error_details_pb2.RetryInfo()
                    detail.Unpack(retry)
                    retry_after = retry.retry_delay.ToTimedelta().total_seconds()
        if not ours:
            log.warning("a call between services failed", extra={"code": code.name, "details": message})
            message = GRPC_STATUS_MESSAGES.get(code, f"an internal call failed ({code.name})")
        return cls(code, reason, message or code.name, param=param, retry_after=retry_after)


# Reasons for statuses that carry no ErrorInfo (raised by gRPC itself).
DEFAULT_REASONS = {
    grpc.StatusCode.INVALID_ARGUMENT: "INVALID_PARAMETER",
    grpc.StatusCode.NOT_FOUND: "NOT_FOUND",
    grpc.StatusCode.UNAUTHENTICATED: "UNAUTHORIZED",
    grpc.StatusCode.PERMISSION_DENIED: "FORBIDDEN",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "RESOURCE_EXHAUSTED",
    grpc.StatusCode.UNAVAILABLE: "UNAVAILABLE",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DEADLINE_EXCEEDED",
    grpc.StatusCode.UNIMPLEMENTED: "NOT_IMPLEMENTED",
    grpc.StatusCode.CANCELLED: "CANCELLED",
}


# What a client reads for a status gRPC made itself.
GRPC_STATUS_MESSAGES = {
    grpc.StatusCode.UNAVAILABLE: "an internal service is unavailable; try again shortly",
    grpc.StatusCode.DEADLINE_EXCEEDED: "an internal service did not answer in time",
    grpc.StatusCode.CANCELLED: "the call was cancelled",
}


def invalid_argument(reason: str, message: str, param: str | None = None) -> ApiError:
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, reason, message, param=param)


def invalid_parameter(param: str, message: str) -> ApiError:
    return invalid_argument("INVALID_PARAMETER", message, param)


def not_found(message: str = "not found") -> ApiError:
    return ApiError(grpc.StatusCode.NOT_FOUND, "NOT_FOUND", message)


def internal_error(message: str = "internal error") -> ApiError:
    return ApiError(grpc.StatusCode.INTERNAL, "INTERNAL", message)


# Keep the code_pb2 import meaningful for readers: gRPC codes and google.rpc.Code agree.
assert grpc.StatusCode.INVALID_ARGUMENT.value[0] == code_pb2.INVALID_ARGUMENT
