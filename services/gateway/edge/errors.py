"""How errors look over HTTP.

Every error is a :class:`runtime.errors.ApiError` (an upstream's status is
rebuilt into one) and becomes the public body
``{"error": {"type": <reason, lowercase>, "message": ..., "param": ...}}``
with the HTTP status grpc-gateway gives its gRPC code, or the one its reason
overrides that with. A 429 or 503 also says when to try again: the
``Retry-After`` header, in whole seconds, from the ``google.rpc.RetryInfo``
the service sent, or DEFAULT_RETRY_AFTER_SECONDS when it sent none.
"""

from __future__ import annotations

import math

import grpc

from runtime.downloads import range_not_satisfiable  # noqa: F401 - the edge's too (ranges.py)
from runtime.errors import ApiError

# As grpc-gateway maps them (runtime/errors.go HTTPStatusFromCode).
CODE_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}
# Reasons whose HTTP status no gRPC code expresses.
REASON_STATUS = {
    "REQUEST_TOO_LARGE": 413,
    "UPSTREAM_ERROR": 502,
    "UNSUPPORTED_MEDIA_TYPE": 415,
    "METHOD_NOT_ALLOWED": 405,
    "REQUEST_TIMEOUT": 408,
    "RANGE_NOT_SATISFIABLE": 416,
    # Audio deleted under the retention setting: the record is there, its audio gone for good.
    "AUDIO_EXPIRED": 410,
    # Deleting what is still being made: a conflict with the resource's state (AIP-135's 409).
    "GENERATION_UNDER_WAY": 409,
}

# Answers that mean "not now": they always carry Retry-After.
RETRY_STATUSES = {429, 503}
# Retry-After of a 429 or 503 whose service gave no estimate (gRPC's own UNAVAILABLE, say).
DEFAULT_RETRY_AFTER_SECONDS = 1


def http_status(error: ApiError) -> int:
    return REASON_STATUS.get(error.reason) or CODE_STATUS.get(error.code, 500)


def retry_after(error: ApiError) -> str | None:
    """The Retry-After header of an error: whole seconds, at least 1 (0 would invite a retry storm)."""
    if error.retry_after is not None:
        return str(max(1, math.ceil(error.retry_after)))
    if http_status(error) in RETRY_STATUSES:
        return str(DEFAULT_RETRY_AFTER_SECONDS)
    return None


def error_body(error: ApiError) -> dict:
    """The error, with the members of an RFC 9457 problem details object beside it (title,
    detail, status), which the hosted predictor's client (`replicate`) reads."""
    kind = error.reason.lower()
    return {
        "error": {"type": kind, "message": error.message, "param": error.param},
        "title": kind.replace("_", " ").capitalize(),
        "detail": error.message,
        "status": http_status(error),
    }


def request_too_large(limit: int) -> ApiError:
    return ApiError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "REQUEST_TOO_LARGE",
        f"the request body is larger than the limit of {limit} bytes",
    )


def request_timeout(message: str) -> ApiError:
    """A client too slow to send its request (its headers or its body): the connection is closed."""
    return ApiError(grpc.StatusCode.DEADLINE_EXCEEDED, "REQUEST_TIMEOUT", message)


def invalid_request(message: str) -> ApiError:
    """A request that is malformed as a whole (its HTTP, its multipart form), not in one field."""
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", message)


def unsupported_media_type(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, "UNSUPPORTED_MEDIA_TYPE", message)


def unsupported_content_encoding(coding: str) -> ApiError:
    return unsupported_media_type(
        f"the body's Content-Encoding {coding[:50]!r} is not supported: send it as it is, or gzip or deflate"
    )


class MethodNotAllowed(ApiError):
    """The path exists, for other methods (listed in the Allow header)."""

    def __init__(self, method: str, allowed: list[str]) -> None:
        super().__init__(
            grpc.StatusCode.UNIMPLEMENTED,
            "METHOD_NOT_ALLOWED",
            f"{method} is not allowed here; use {', '.join(allowed)}",
        )
        self.allowed = allowed


def unavailable(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE", message)
