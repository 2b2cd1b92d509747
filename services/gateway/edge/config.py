"""Settings of the HTTP edge."""

from __future__ import annotations

from runtime.config import setting

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


def upstream_names() -> list[str]:
    return [name.strip() for name in UPSTREAMS.value.split(",") if name.strip()]
