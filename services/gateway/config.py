"""Settings of the gateway (the public HTTP port, GATEWAY_HTTP_PORT, is in runtime.config)."""

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
RECONNECT_BACKOFF_SECONDS = setting(
    "GATEWAY_RECONNECT_BACKOFF_SECONDS",
    2.0,
    "longest wait between attempts to reconnect to an upstream that went away (it answers 503 meanwhile)",
    float,
)
READINESS_CHECK_TIMEOUT_SECONDS = setting(
    "GATEWAY_READINESS_CHECK_TIMEOUT_SECONDS",
    2.0,
    "how long /readyz waits for each upstream's health check before calling it not ready",
    float,
)
HEARTBEAT_INTERVAL_SECONDS = setting(
    "GATEWAY_HEARTBEAT_INTERVAL_SECONDS",
    5.0,
    "how often synth providers are told to send a heartbeat",
    float,
)
PROVIDER_TIMEOUT_SECONDS = setting(
    "GATEWAY_PROVIDER_TIMEOUT_SECONDS",
    15.0,
    "a provider without a heartbeat for this long is offline",
    float,
)


def upstream_names() -> list[str]:
    return [name.strip() for name in UPSTREAMS.value.split(",") if name.strip()]
