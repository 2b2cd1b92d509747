"""The gateway is ready for generations only while a provider can serve one: a
gateway of this module's own, on a database of its own (so that no provider of
the session's mesh is registered), asked over HTTP (/readyz) and gRPC health."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.gateway import accounts as gateway_accounts
from services.gateway.store import Store
from tests.conftest import Database, RunningMesh, mesh_ports_env, provider_metadata
from tests.gateway.conftest import Account, assert_error
from tools import mesh as mesh_tools
from voice.gateway.v1 import providers_pb2, providers_pb2_grpc
from voice.synth.v1 import synth_pb2

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
HELD_BACK = ["voice.gateway.v1.GenerationService", "voice.openai.v1.SpeechService"]
ALWAYS = ["", "voice.gateway.v1.ModelService", "voice.gateway.v1.ProviderRegistryService"]


@pytest.fixture(scope="module")
async def lone_gateway(database, object_server):
    own_database = Database()
    own_database.admin_url = database.admin_url  # a new database on the session's server
    await own_database.create()
    env = mesh_tools.mesh_environment(own_database.url, object_store=object_server.settings.environment())
    env.update(mesh_ports_env())
    env.update(LOG_FORMAT="json", GATEWAY_UPSTREAMS="gateway", GATEWAY_READINESS_INTERVAL_SECONDS="0.2")
    gateway = RunningMesh(["gateway"], env)
    try:
        await gateway.start(timeout=120)
        store = await Store.open(own_database.url)
        try:
            name = f"gina-{uuid.uuid4().hex[:8]}"
            gateway.account = Account(name, (await gateway_accounts.create_key(store.accounts, name)).key)
        finally:
            await store.close()
        yield gateway
    finally:
        await gateway.stop()
        await own_database.drop()


async def health(gateway: RunningMesh, service: str) -> int:
    async with grpc.aio.insecure_channel(gateway.address("gateway")) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return reply.status


async def wait_health(gateway: RunningMesh, service: str, status: int) -> None:
    async with asyncio.timeout(30):  # a guard against hanging; the gateway looks every 0.2 s here
        while await health(gateway, service) != status:
            await asyncio.sleep(0.05)


async def heartbeat(gateway: RunningMesh, provider_id: str, features: list[str]) -> None:
    provider = synth_pb2.ProviderInfo(
        provider_id=provider_id,
        address="127.0.0.1:1",  # never called here
        models=[synth_pb2.Model(id=f"model-of-{provider_id}", features=features)],
        capacity=1,
    )
    async with grpc.aio.insecure_channel(gateway.address("gateway")) as channel:
        await providers_pb2_grpc.ProviderRegistryServiceStub(channel).Heartbeat(
            providers_pb2.HeartbeatRequest(provider=provider),
            metadata=provider_metadata(gateway.env, provider_id),
            timeout=10,
        )


async def deregister(gateway: RunningMesh, provider_id: str) -> None:
    async with grpc.aio.insecure_channel(gateway.address("gateway")) as channel:
        await providers_pb2_grpc.ProviderRegistryServiceStub(channel).DeregisterProvider(
            providers_pb2.DeregisterProviderRequest(provider_id=provider_id),
            metadata=provider_metadata(gateway.env, provider_id),
            timeout=10,
        )


async def test_without_a_provider_the_gateway_is_not_ready_for_generations(lone_gateway):
    gateway = lone_gateway
    async with aiohttp.ClientSession(base_url=gateway.http_url) as http:
        # Just started, no provider: not ready, and a generation would indeed be no_provider.
        for service in HELD_BACK:
            assert await health(gateway, service) == NOT_SERVING
        for service in ALWAYS:  # providers must reach the registry; the pod's probe asks ModelService
            assert await health(gateway, service) == SERVING
        response = await http.get("/readyz")
        body = await response.json()
        assert response.status == 503, body
        assert body["upstreams"] == {"gateway": "NOT_SERVING"}
        assert body["error"]["type"] == "unavailable"
        response = await http.post(
            "/v1/voice/generations", json={"input": "[S1] Hello."}, headers=gateway.account.headers
        )
        await assert_error(response, 404, "no_provider")

        # A provider whose model cannot clone voices does not make it ready.
        await heartbeat(gateway, "speech-only", ["dialogue"])
        await asyncio.sleep(1)  # five rounds of the readiness probe
        assert await health(gateway, HELD_BACK[0]) == NOT_SERVING

        # One that can does; when it leaves, the gateway is not ready again.
        await heartbeat(gateway, "cloner", ["voice-cloning", "dialogue"])
        for service in HELD_BACK:
            await wait_health(gateway, service, SERVING)
        response = await http.get("/readyz")
        assert response.status == 200, await response.text()
        await deregister(gateway, "cloner")
        for service in HELD_BACK:
            await wait_health(gateway, service, NOT_SERVING)
        assert (await http.get("/readyz")).status == 503
