"""A test service on the shared runtime, with RPCs whose behaviour a test controls.

Run as `python tests/runtime/sleepy_service.py`; it takes the ports of the
"transcode" slot from the environment. Messages are raw bytes (no proto), so
the test needs nothing generated.
"""

from __future__ import annotations

import asyncio
import logging
import os

import grpc

from runtime import clients, config, logs
from runtime.errors import invalid_parameter
from runtime.server import Servicer, ServiceSpec, main

log = logging.getLogger("sleepy")
SERVICE = "test.Sleepy"
PICKY = "test.Picky"  # a second service, with a readiness of its own
# A limit it publishes (declared here, in this process alone).
LONGEST_SLEEP = config.setting("SLEEPY_LONGEST_SECONDS", 5.0, "longest sleep asked of test.Sleepy, in seconds", float)


async def sleep(request: bytes, context) -> bytes:
    """Sleeps the seconds given, then answers with the request id it saw."""
    log.info("sleeping")
    await asyncio.sleep(float(request or b"0"))
    return logs.REQUEST_ID.get().encode()


async def fail(request: bytes, context) -> bytes:
    if request == b"api":
        raise invalid_parameter("speed_factor", "speed_factor must be between 0.5 and 2")
    raise RuntimeError("secret internal detail")


async def relay(request: bytes, context) -> bytes:
    """Calls this same server's sleep, so the callee's request id can be compared."""
    async with clients.service_channel("transcode") as channel:
        call = channel.unary_unary(f"/{SERVICE}/Sleep")
        return await call(b"0")


def add_to_server(_implementation, server: grpc.aio.Server) -> None:
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(function)
        for name, function in {"Sleep": sleep, "Fail": fail, "Relay": relay}.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


def add_picky_to_server(_implementation, server: grpc.aio.Server) -> None:
    handlers = {"Sleep": grpc.unary_unary_rpc_method_handler(sleep)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(PICKY, handlers),))


async def slow_start() -> None:
    await asyncio.sleep(float(os.environ.get("SLEEPY_START_SECONDS", "0")))


async def ready() -> bool:
    """Ready while the file SLEEPY_READY_FILE names exists (a stand-in for a database)."""
    flag = os.environ.get("SLEEPY_READY_FILE")
    return flag is None or os.path.exists(flag)


async def picky_ready() -> bool:
    """test.Picky's own readiness: while SLEEPY_PICKY_READY_FILE exists (a stand-in for a provider)."""
    flag = os.environ.get("SLEEPY_PICKY_READY_FILE")
    return flag is None or os.path.exists(flag)


if __name__ == "__main__":
    assert config.SERVICES["transcode"]  # the port slot this test service borrows
    main(
        lambda: ServiceSpec(
            "transcode",
            [Servicer(add_to_server, None, SERVICE), Servicer(add_picky_to_server, None, PICKY, readiness=picky_ready)],
            on_start=slow_start,
            readiness=ready,
            readiness_interval_seconds=0.1,
            limits={"sleep_seconds": LONGEST_SLEEP},
        )
    )
