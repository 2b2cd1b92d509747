"""Settings of the HTTP edge."""

from __future__ import annotations

from runtime.config import between, boolean, positive, setting

UPSTREAMS = setting(
    "GATEWAY_UPSTREAMS",
    "library,gateway",
    "comma-separated services whose google.api.http routes the HTTP front serves, found by reflection",
)
MAX_BODY_BYTES = setting(
    "GATEWAY_MAX_BODY_BYTES",
    25 * 1024 * 1024,
    "largest HTTP request body; a larger one is refused with 413 request_too_large",
    int,
)
READINESS_CHECK_TIMEOUT_SECONDS = setting(
    "GATEWAY_READINESS_CHECK_TIMEOUT_SECONDS",
    2.0,
    "how long /readyz waits for each upstream's health check before calling it not ready",
    float,
)

MAX_URL_BYTES = setting(
    "GATEWAY_MAX_URL_BYTES",
    8190,
    "longest URL (path and query string) of an HTTP request, in bytes; a longer one is refused with 400 "
    "invalid_request",
    positive(int),
)
MAX_HEADER_BYTES = setting(
    "GATEWAY_MAX_HEADER_BYTES",
    8190,
    "longest value of an HTTP request header, in bytes (its name is held to it too); a longer one is refused "
    "with 400 invalid_request",
    positive(int),
)
MAX_JSON_DEPTH = setting(
    "GATEWAY_MAX_JSON_DEPTH",
    32,
    "deepest nesting of objects and lists in a JSON request body (the API's own bodies need 2); a deeper one is "
    "refused with 400 invalid_json",
    between(1, 200, int),
)
HEADER_TIMEOUT_SECONDS = setting(
    "GATEWAY_HEADER_TIMEOUT_SECONDS",
    10.0,
    "longest an HTTP request's line and headers may take to arrive, from their first byte; a slower client is "
    "answered 408 request_timeout and its connection closed",
    between(0.1, 3600),
)
BODY_TIMEOUT_SECONDS = setting(
    "GATEWAY_BODY_TIMEOUT_SECONDS",
    60.0,
    "longest an HTTP request's body may take to arrive, from the end of its headers (60 s takes "
    "GATEWAY_MAX_BODY_BYTES at 3.5 Mbit/s); a slower client is answered 408 request_timeout and its connection "
    "closed, nothing stored",
    between(0.1, 3600),
)
KEEPALIVE_TIMEOUT_SECONDS = setting(
    "GATEWAY_KEEPALIVE_TIMEOUT_SECONDS",
    75.0,
    "how long an idle HTTP connection (its last answer sent, no byte of a next request yet) is kept open for "
    "another request before it is closed",
    between(0.1, 3600),
)
PUBLIC_METRICS = setting(
    "GATEWAY_PUBLIC_METRICS",
    True,
    "whether the public HTTP port also serves Prometheus /metrics (every service serves them on its metrics "
    "port anyway); false answers 404 there",
    boolean,
)

CORS_ORIGINS = setting(
    "GATEWAY_CORS_ORIGINS",
    "",
    "comma-separated origins (`https://chat.example.com`) whose browser pages may call the API (CORS; "
    "`*` for any); empty: none",
    str,
)


def upstream_names() -> list[str]:
    return [name.strip() for name in UPSTREAMS.value.split(",") if name.strip()]


def cors_origins() -> set[str]:
    return {origin.strip().rstrip("/") for origin in CORS_ORIGINS.value.split(",") if origin.strip()}
