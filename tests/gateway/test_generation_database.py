"""A generation while the gateway's database is down: refused with 503
database_unavailable, and nothing generated (no request reaches a provider
that could not be stored first).

The gateway of this module reaches PostgreSQL through a TCP relay the test
cuts, as a network partition would; the session's PostgreSQL and every other
process keep running."""

from __future__ import annotations

import asyncio
import pathlib
import re
import urllib.request
from urllib.parse import parse_qs, urlsplit, urlunsplit

import aiohttp
import grpc
import pytest

from runtime.errors import ApiError
from runtime.server import channel_options
from tests.gateway.conftest import assert_error, extra_gateway, wait_for_models
from voice.gateway.v1 import generations_pb2, generations_pb2_grpc


class Relay:
    """Forwards TCP connections to PostgreSQL (on TCP or a Unix socket) until cut."""

    def __init__(self, database_url: str) -> None:
        self.url = urlsplit(database_url)
        self.server: asyncio.AbstractServer | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def _open_upstream(self):
        socket_dir = parse_qs(self.url.query).get("host", [""])[0]
        if socket_dir.startswith("/"):
            (path,) = pathlib.Path(socket_dir).glob(".s.PGSQL.*[0-9]")
            return await asyncio.open_unix_connection(str(path))
        return await asyncio.open_connection(self.url.hostname, self.url.port or 5432)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await self._open_upstream()
        self.writers |= {writer, upstream_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    async def start(self, port: int = 0) -> str:
        """Listen (on `port`, else a free one); returns the database URL that goes through the relay."""
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]
        netloc = f"{self.url.username or 'postgres'}@127.0.0.1:{self.port}"
        return urlunsplit((self.url.scheme, netloc, self.url.path, "", ""))

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        self.writers = set()
        await self.server.wait_closed()

    async def restore(self) -> None:
        """Listen again on the same port, after a cut: the same URL reaches the database again."""
        await self.start(self.port)


def synthesize_calls(metrics_port: str) -> float:
    """How many Synthesize calls the mesh's synth has answered, whatever their outcome."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    pattern = r'^grpc_server_handled_total\{[^}]*grpc_method="Synthesize"[^}]*\} (\S+)$'
    return sum(float(value) for value in re.findall(pattern, body, re.MULTILINE))


@pytest.fixture(scope="module")
async def relayed_gateway(mesh):
    relay = Relay(mesh.env["DATABASE_URL"])
    url = await relay.start()
    async with extra_gateway(mesh, DATABASE_URL=url, DATABASE_TIMEOUT_SECONDS="3") as gateway:
        yield gateway, relay


async def test_with_the_database_down_a_generation_is_503_and_nothing_is_generated(relayed_gateway, accounts, mesh):
    gateway, relay = relayed_gateway
    alice, _ = accounts
    body = {"input": "[S1] Store me first.", "max_new_tokens": 256}
    async with aiohttp.ClientSession(base_url=gateway.http_url) as http:
        await wait_for_models(http, alice)
        # Through the relay all is well...
        response = await http.post("/v1/voice/generations", json=body, headers=alice.headers)
        assert response.status == 200, await response.text()

        await relay.cut()
        calls = synthesize_calls(mesh.env["SYNTH_METRICS_PORT"])
        response = await http.post("/v1/voice/generations", json=body, headers=alice.headers)
        await assert_error(response, 503, "database_unavailable")
        assert response.headers["Retry-After"] == "2"  # the pools reconnect on the next request

    # An internal client over gRPC is refused alike.
    async with grpc.aio.insecure_channel(gateway.address("gateway"), options=channel_options()) as channel:
        stub = generations_pb2_grpc.GenerationServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CreateGeneration(
                generations_pb2.CreateGenerationRequest(generation=generations_pb2.GenerationSpec(input=body["input"], max_new_tokens=256)),
                metadata=(("authorization", f"Bearer {alice.key}"),),
                timeout=60,
            )
    assert ApiError.from_rpc_error(caught.value).reason == "DATABASE_UNAVAILABLE"
    assert synthesize_calls(mesh.env["SYNTH_METRICS_PORT"]) == calls
