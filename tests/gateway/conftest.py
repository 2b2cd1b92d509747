"""Fixtures of the gateway tests: routes of a made-up API, API keys, an HTTP client."""

from __future__ import annotations

import asyncio
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

from services.gateway.edge import discovery
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

HELLO = (FIXTURES / "speech_hello.webm").read_bytes()  # "Hello world, this is a voice sample for testing."
FOX = (FIXTURES / "speech_fox.webm").read_bytes()  # "The quick brown fox jumps over the lazy dog."


def words(text: str) -> set[str]:
    return set("".join(c if c.isalnum() else " " for c in text.lower()).split())


async def assert_error(response: aiohttp.ClientResponse, status: int, error_type: str, param=None) -> dict:
    body = await response.json()
    assert response.status == status, body
    assert set(body["error"]) <= {"type", "message", "param"}
    assert body["error"]["type"] == error_type, body
    assert body["error"]["message"]
    assert body["error"].get("param") == param, body
    return body["error"]


async def upload_form(http, account, audio: bytes, speaker: str, **fields) -> aiohttp.ClientResponse:
    """A multipart form as a browser sends one: the recording plus text fields."""
    form = aiohttp.FormData()
    form.add_field("audio", audio, filename="recording.webm", content_type="audio/webm;codecs=opus")
    form.add_field("speaker_name", speaker)
    for name, value in fields.items():
        form.add_field(name, value)
    return await http.post("/v1/voice/samples", data=form, headers=account.headers)


async def created(response: aiohttp.ClientResponse) -> dict:
    body = await response.json()
    assert response.status == 200, body
    return body


def make_key(account: str, env: dict[str, str], scopes: str = "") -> str:
    """`make key ACCOUNT=<account>` (with `SCOPES=<scopes>` when given) as a person runs it; returns the
    last line of its output."""
    result = subprocess.run(
        ["make", "--no-print-directory", "key", f"ACCOUNT={account}", *([f"SCOPES={scopes}"] if scopes else [])],
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


async def wait_for_models(http, account: Account, present: bool = True, timeout: float = 60) -> dict[str, dict]:
    """GET /v1/models until a voice-cloning model is listed (or, with present=False, none is)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        response = await http.get("/v1/models", headers=account.headers)
        body = await response.json()
        assert response.status == 200, body
        cards = {card["id"]: card for card in body["data"] if "voice-cloning" in card["features"]}
        if bool(cards) == present:
            return cards
        assert asyncio.get_running_loop().time() < deadline, f"voice-cloning models still {cards}"
        await asyncio.sleep(0.2)


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
