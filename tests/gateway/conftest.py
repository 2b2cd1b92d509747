"""Fixtures of the gateway tests: routes of a made-up API, API keys, an HTTP client."""

from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess
import uuid
from dataclasses import dataclass

import aiohttp
import google.api
import grpc_tools
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_tools import protoc

from services.gateway import discovery
from tests.conftest import ROOT, RunningMesh, free_port

HERE = pathlib.Path(__file__).resolve().parent


def compile_protos(folder: pathlib.Path, out: pathlib.Path) -> descriptor_pool.DescriptorPool:
    """Compile .proto files into a fresh pool, the way reflection would hand them over."""
    googleapis = pathlib.Path(google.api.__path__[0]).parent.parent
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    files = sorted(str(path.relative_to(folder)) for path in folder.glob("*.proto"))
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{folder}",
            f"-I{googleapis}",
            f"-I{well_known}",
            "--include_imports",
            f"--descriptor_set_out={out}",
            *files,
        ]
    )
    assert code == 0, "protoc failed"
    pool = descriptor_pool.DescriptorPool()
    for proto in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file:
        pool.Add(proto)  # --include_imports lists imports first
    return pool


@pytest.fixture(scope="session")
def things_routes(tmp_path_factory) -> dict[str, discovery.Route]:
    """The routes of tests/gateway/protos/things.proto, by "METHOD /template"."""
    pool = compile_protos(HERE / "protos", tmp_path_factory.mktemp("things") / "things.pb")
    routes = discovery.routes_of("things", pool, ["test.things.v1.ThingService"])
    return {str(route): route for route in routes}


# --- against the running mesh ------------------------------------------------

FIXTURES = HERE.parent / "fixtures"


def make_key(account: str, env: dict[str, str]) -> str:
    """`make key ACCOUNT=<account>` as a person runs it; returns the last line of its output."""
    result = subprocess.run(
        ["make", "--no-print-directory", "key", f"ACCOUNT={account}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def key_env(database) -> dict[str, str]:
    """The environment for `make key` against the mesh's database."""
    return {**os.environ, "DATABASE_URL": database.url}


@dataclass
class Account:
    name: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture(scope="session")
def accounts(key_env) -> tuple[Account, Account]:
    """Two accounts, each with a key made by `make key`."""
    suffix = uuid.uuid4().hex[:8]
    names = (f"alice-{suffix}", f"bob-{suffix}")
    return tuple(Account(name, make_key(name, key_env)) for name in names)


@pytest.fixture(scope="session")
async def http(mesh):
    async with aiohttp.ClientSession(base_url=mesh.http_url) as session:
        yield session


@contextlib.asynccontextmanager
async def extra_gateway(mesh, **settings: str):
    """A second gateway process beside the mesh's, on ports of its own, with other settings."""
    env = dict(mesh.env)
    for name in ("GATEWAY_GRPC_PORT", "GATEWAY_METRICS_PORT", "GATEWAY_HTTP_PORT"):
        env[name] = str(free_port())
    env["GATEWAY_ADDR"] = f"127.0.0.1:{env['GATEWAY_GRPC_PORT']}"
    env.update(settings)
    gateway = RunningMesh(["gateway"], env)
    gateway.echo = mesh.echo
    try:
        await gateway.start(timeout=60)
        yield gateway
    finally:
        await gateway.stop()
