"""Configuration from environment variables.

Every setting is declared once with :func:`setting`, next to the code that
uses it, with its default and a one-line description. The declarations form a
registry from which the README's configuration table is generated
(``python -m tools.settings_table``), and a test checks that the two agree.

Settings are read when asked for (``SETTING.value``), not at import, so tests
and the mesh launcher can set the environment of each process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any  # a value, or a callable computing it from other settings
    doc: str
    cast: Callable[[str], Any] = str
    secret: bool = False  # its value is never shown, not even in the error about a bad one

    @property
    def value(self) -> Any:
        return self.value_in(os.environ)

    def value_in(self, environ: Mapping[str, str]) -> Any:
        """The value in another process's environment (the launcher reads its services' this way)."""
        raw = environ.get(self.name)
        if raw is None or raw == "":
            return self.default() if callable(self.default) else self.default
        try:
            return self.cast(raw)
        except ValueError as error:
            shown = "(hidden)" if self.secret else repr(raw)
            raise SystemExit(f"invalid value for {self.name}={shown}: {error}") from None

    def documented_default(self) -> str:
        if callable(self.default):
            return self.default.__doc__ or ""
        return "" if self.default is None else str(self.default)


REGISTRY: dict[str, Setting] = {}


def setting(
    name: str, default: Any, doc: str, cast: Callable[[str], Any] = str, *, secret: bool = False
) -> Setting:
    """Declare a setting read from the environment variable ``name``."""
    if name in REGISTRY:
        raise ValueError(f"setting {name} declared twice")
    declared = Setting(name, default, doc, cast, secret)
    REGISTRY[name] = declared
    return declared


# Casts that refuse a bad value at start-up with a message naming the rule.


def between(low: float, high: float, kind: type = float) -> Callable[[str], Any]:
    def cast(raw: str):
        value = kind(raw)
        if not low <= value <= high:  # also refuses NaN
            raise ValueError(f"must be between {low:g} and {high:g}")
        return value

    return cast


def at_least(minimum: float, kind: type = int) -> Callable[[str], Any]:
    def cast(raw: str):
        value = kind(raw)
        if not value >= minimum:  # also refuses NaN
            raise ValueError(f"must be at least {minimum}")
        return value

    return cast


def positive(kind: type = float) -> Callable[[str], Any]:
    """Refuses zero and below: a limit of 0 would refuse everything."""

    def cast(raw: str):
        value = kind(raw)
        if not value > 0:
            raise ValueError("must be greater than 0")
        return value

    return cast


def one_of(*choices: str) -> Callable[[str], str]:
    def cast(raw: str) -> str:
        if raw not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return raw

    return cast


def boolean(raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


# --- What every service shares -------------------------------------------

# One row per service: its default gRPC port and metrics port. Each service's
# address defaults to 127.0.0.1 and its own port setting, so running a second
# mesh on one machine only needs other ports.
SERVICE_PORTS = {
    "gateway": (50051, 9101),
    "library": (50052, 9102),
    "transcode": (50053, 9103),
    "stt": (50054, 9104),
    "synth": (50055, 9105),
}


@dataclass(frozen=True)
class ServiceSettings:
    grpc_port: Setting
    metrics_port: Setting
    address: Setting


def _service_settings(name: str, grpc_port: int, metrics_port: int) -> ServiceSettings:
    upper = name.upper()
    port = setting(f"{upper}_GRPC_PORT", grpc_port, f"gRPC port of the {name} service", int)

    def address() -> str:
        return f"127.0.0.1:{port.value}"

    address.__doc__ = f"127.0.0.1:${upper}_GRPC_PORT"
    return ServiceSettings(
        grpc_port=port,
        metrics_port=setting(
            f"{upper}_METRICS_PORT", metrics_port, f"Prometheus /metrics port of the {name} service", int
        ),
        address=setting(f"{upper}_ADDR", address, f"host:port where other services reach {name}"),
    )


SERVICES = {name: _service_settings(name, *ports) for name, ports in SERVICE_PORTS.items()}
GATEWAY_HTTP_PORT = setting("GATEWAY_HTTP_PORT", 8080, "public HTTP port of the gateway", int)

BIND_HOST = setting(
    "BIND_HOST", "127.0.0.1", "interface every server listens on (0.0.0.0 in containers)"
)
LOG_LEVEL = setting("LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR")
LOG_FORMAT = setting("LOG_FORMAT", "json", "json (one object a line) or text")
SHUTDOWN_GRACE_SECONDS = setting(
    "SHUTDOWN_GRACE_SECONDS", 10.0, "on SIGTERM/SIGINT, how long in-flight calls may finish", float
)
GRPC_MAX_MESSAGE_BYTES = setting(
    "GRPC_MAX_MESSAGE_BYTES", 64 * 1024 * 1024, "largest gRPC message sent or received", int
)
UPSTREAM_TIMEOUT_SECONDS = setting(
    "UPSTREAM_TIMEOUT_SECONDS", 60.0, "deadline of a call from one service to another", float
)
DATABASE_URL = setting(
    "DATABASE_URL",
    None,
    "PostgreSQL URL of the services that own data; `make run` starts an embedded server when unset",
)
