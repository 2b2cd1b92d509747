"""The whole mesh with mutual TLS on every internal gRPC connection.

A mesh of this module's own, on a database of its own (its synth must not be
registered with the session mesh's gateway), whose services all present a
certificate of a CA made here: a voice-cloned generation over the public
HTTP API crosses every internal channel (edge to library and to the
gateway's own services, library to transcode and stt, gateway to library,
transcode and synth, synth's heartbeats to the registry). The gRPC ports
then serve only clients with such a certificate.
"""

from __future__ import annotations

import uuid

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runtime import tls
from services.gateway import accounts as gateway_accounts
from services.gateway.store import Store
from tests.conftest import Database, RunningMesh, mesh_ports_env
from tests.gateway.conftest import HELLO, Account, created, upload_form, wait_for_models
from tools import mesh as mesh_tools
from tools import mesh_certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    out = tmp_path_factory.mktemp("mesh-certs")
    # One certificate for every service: the launcher hands all of them one environment.
    mesh_certs.make_certs(out, ["mesh", "client"])
    return out


def tls_settings(folder) -> dict[str, str]:
    return {
        tls.CA_FILE.name: str(folder / "ca.crt"),
        tls.CERT_FILE.name: str(folder / "tls.crt"),
        tls.KEY_FILE.name: str(folder / "tls.key"),
    }


@pytest.fixture(scope="module")
async def tls_mesh(database, object_server, certs):
    own_database = Database()
    own_database.admin_url = database.admin_url  # a new database on the session's server
    await own_database.create()
    env = mesh_tools.mesh_environment(own_database.url, object_store=object_server.settings.environment())
    env.update(mesh_ports_env())
    env.update(DIA_MODEL="tiny-random", LOG_FORMAT="json", **tls_settings(certs / "mesh"))
    running = RunningMesh(mesh_tools.existing_services(), env)
    try:
        await running.start(timeout=180)  # SERVING, as told over mutual TLS
        yield running
    finally:
        await running.stop()
        await own_database.drop()


@pytest.fixture(scope="module")
async def account(tls_mesh) -> Account:
    store = await Store.open(tls_mesh.env["DATABASE_URL"])
    try:
        name = f"tess-{uuid.uuid4().hex[:8]}"
        return Account(name, (await gateway_accounts.create_key(store.accounts, name)).key)
    finally:
        await store.close()


async def test_a_voice_cloned_generation_crosses_every_internal_channel(tls_mesh, account):
    async with aiohttp.ClientSession(base_url=tls_mesh.http_url) as http:
        sample = await created(
            await upload_form(http, account, HELLO, "Ada", transcript="Hello world, this is a voice sample for testing.")
        )
        await wait_for_models(http, account)  # synth registered over mutual TLS, with its credential
        response = await http.post(
            "/v1/voice/generations",
            json={"input": "[S1] Hello over TLS.", "speakers": {"S1": sample["id"]}, "max_new_tokens": 256},
            headers=account.headers,
        )
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"] == "audio/wav"
        assert (await response.read())[:4] == b"RIFF"
        # An upload without transcript goes through speech recognition (library to stt to transcode).
        if "stt" in tls_mesh.services:
            recognized = await created(await upload_form(http, account, HELLO, "Bo"))
            assert "hello" in recognized["transcript"].lower()


async def health(channel: grpc.aio.Channel) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    return reply.status


async def test_every_grpc_port_serves_a_certificate_holder_and_refuses_anyone_else(tls_mesh, certs):
    credentials = tls.load(tls_settings(certs / "client"))
    for name in tls_mesh.services:
        address = tls_mesh.address(name)
        async with tls.open_channel(address, credentials=credentials) as channel:
            assert await health(channel) == health_pb2.HealthCheckResponse.SERVING, name
        async with grpc.aio.insecure_channel(address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await health(channel)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, name
        ca_only = grpc.ssl_channel_credentials(root_certificates=credentials.ca)
        async with grpc.aio.secure_channel(address, ca_only) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await health(channel)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, name
