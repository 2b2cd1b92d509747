"""Retry-After on the HTTP edge: from the RetryInfo a service sends, or 1 s for any
other 429 or 503, whole seconds and never 0; nothing on answers where waiting does not help."""

from __future__ import annotations

import grpc
import pytest

from runtime.database import unavailable
from runtime.errors import ApiError
from services.gateway.edge import errors
from services.gateway.edge.front import error_response


@pytest.mark.parametrize(("seconds", "header"), [(2.0, "2"), (2.1, "3"), (0.2, "1"), (0.0, "1"), (59.9, "60")])
def test_a_services_estimate_is_rounded_up_to_whole_seconds_and_at_least_one(seconds, header):
    error = ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, "SYNTH_BUSY", "busy", retry_after=seconds)
    assert error_response(error).headers["Retry-After"] == header


@pytest.mark.parametrize(
    "error",
    [
        ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, "STT_BUSY", "busy"),
        ApiError(grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE", "the library service is unavailable"),
        errors.unavailable("cannot route"),
    ],
)
def test_any_other_429_or_503_says_one_second(error):
    response = error_response(error)
    assert response.status in (429, 503)
    assert response.headers["Retry-After"] == str(errors.DEFAULT_RETRY_AFTER_SECONDS)


def test_the_database_down_says_two_seconds():
    response = error_response(unavailable())
    assert (response.status, response.headers["Retry-After"]) == (503, "2")


@pytest.mark.parametrize(
    "error",
    [
        ApiError(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PARAMETER", "no", param="x"),
        errors.request_too_large(10),  # RESOURCE_EXHAUSTED too, but 413: the same request never fits
        ApiError(grpc.StatusCode.UNAVAILABLE, "UPSTREAM_ERROR", "the provider failed"),  # 502
    ],
)
def test_answers_that_waiting_does_not_fix_have_no_retry_after(error):
    assert "Retry-After" not in error_response(error).headers
