"""The mesh over gRPC: a reflection client nobody here wrote (PyPI grpc-requests)
calls every running service, and the gateway's provider registry feeds
GET /v1/models."""

from __future__ import annotations

import asyncio
import base64
import uuid

import asyncpg
import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_requests import AsyncClient

from runtime.errors import ApiError
from services.gateway.config import HEARTBEAT_INTERVAL_SECONDS, PROVIDER_TIMEOUT_SECONDS
from tests.conftest import provider_metadata
from tests.gateway.conftest import FIXTURES

# grpc-requests takes requests as proto JSON, where bytes are base64.
HELLO_WAV = base64.b64encode((FIXTURES / "speech_hello.wav").read_bytes()).decode()


def reflection_client(address: str) -> AsyncClient:
    # A pool of its own: everything it knows comes over reflection, none from our generated code.
    return AsyncClient(address, descriptor_pool=descriptor_pool.DescriptorPool())


async def test_a_reflection_client_lists_and_calls_every_running_service(mesh, accounts, http):
    alice, _ = accounts
    account_id = await account_id_of(mesh, alice)
    calls = {
        "transcode": ("voice.transcode.v1.TranscodeService", "DecodeAudio", {"audio": HELLO_WAV}, ()),
        "stt": ("voice.stt.v1.SttService", "Transcribe", {"audio": HELLO_WAV}, ()),
        "library": ("voice.library.v1.LibraryService", "ListVoiceSamples", {"page_size": 5}, (("x-account-id", str(account_id)),)),
        "gateway": ("voice.gateway.v1.ModelService", "ListModels", {}, (("authorization", f"Bearer {alice.key}"),)),
    }
    assert {"transcode", "library", "gateway"} <= set(mesh.services)
    for name in mesh.services:
        if name not in calls:
            continue
        service, method, request, metadata = calls[name]
        client = reflection_client(mesh.address(name))
        try:
            assert service in await client.service_names()
            reply = await client.request(service, method, request, metadata=metadata, timeout=60)
        finally:
            await client.channel.close()
        assert isinstance(reply, dict), (name, reply)
        if name == "transcode":
            assert reply["info"]["sample_rate"] == 44100
        elif name == "stt":
            assert "hello" in reply["text"].lower()
        elif name == "library":
            assert isinstance(reply.get("voice_samples", []), list)
        elif name == "gateway":
            assert reply["object"] == "list"


async def test_the_library_refuses_a_call_without_an_account(mesh):
    client = reflection_client(mesh.address("library"))
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.request("voice.library.v1.LibraryService", "ListVoiceSamples", {}, timeout=10)
    finally:
        await client.channel.close()
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("method", ["ListModels", "GetModel"])
async def test_the_model_service_takes_a_key_like_every_other_gateway_service(mesh, accounts, method):
    alice, _ = accounts
    request = {"id": "tiny-random"} if method == "GetModel" else {}
    client = reflection_client(mesh.address("gateway"))
    try:
        for metadata in ((), (("authorization", "Bearer vm_not-a-key"),)):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.request("voice.gateway.v1.ModelService", method, request, metadata=metadata, timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        keyed = (("authorization", f"Bearer {alice.key}"),)
        reply = await client.request("voice.gateway.v1.ModelService", method, request, metadata=keyed, timeout=10)
        assert reply
    finally:
        await client.channel.close()


async def account_id_of(mesh, account) -> int:
    connection = await asyncpg.connect(mesh.env["DATABASE_URL"])
    try:
        return await connection.fetchval("SELECT id FROM gateway.accounts WHERE name = $1", account.name)
    finally:
        await connection.close()


# --- provider registry → models ---------------------------------------------------


def provider(provider_id: str, *models: tuple[str, list[str]]) -> dict:
    return {
        "provider": {
            "provider_id": provider_id,
            "address": "127.0.0.1:1",
            "models": [{"id": model_id, "features": features} for model_id, features in models],
            "capacity": 4,
        }
    }


@pytest.fixture
async def registry(mesh):
    client = reflection_client(mesh.address("gateway"))

    async def call(method: str, request: dict) -> dict:
        # Each call with the credential of the provider it names, as a provider sends it.
        provider_id = request.get("provider", {}).get("provider_id") or request.get("provider_id", "")
        return await client.request(
            "voice.gateway.v1.ProviderRegistryService",
            method,
            request,
            metadata=provider_metadata(mesh.env, provider_id),
            timeout=10,
        )

    yield call
    await client.channel.close()


async def models(http, account) -> dict[str, dict]:
    response = await http.get("/v1/models", headers=account.headers)
    body = await response.json()
    assert response.status == 200 and body["object"] == "list", body
    return {card["id"]: card for card in body["data"]}


async def test_heartbeats_put_models_online_and_deregistering_takes_them_off(http, accounts, registry):
    alice, _ = accounts
    # Model ids of this test alone: the mesh's own synth provider registers its model too.
    big, small = f"test-lab/big-{uuid.uuid4().hex[:8]}", f"small-{uuid.uuid4().hex[:8]}"
    reply = await registry("Heartbeat", provider("p-one", (big, ["voice-cloning", "dialogue"])))
    assert reply["heartbeat_interval_seconds"] == HEARTBEAT_INTERVAL_SECONDS.value
    await registry("Heartbeat", provider("p-two", (big, ["dialogue"]), (small, ["dialogue"])))

    listed = await models(http, alice)
    assert listed[big] == {
        "id": big,
        "object": "model",
        "features": ["voice-cloning", "dialogue"],
        "owned_by": "test-lab",
        "providers": 2,
    }
    assert listed[small]["providers"] == 1 and listed[small]["owned_by"] == "voicemesh"

    await registry("DeregisterProvider", {"provider_id": "p-two"})
    await registry("DeregisterProvider", {"provider_id": "p-two"})  # twice is fine
    listed = await models(http, alice)
    assert small not in listed and listed[big]["providers"] == 1
    await registry("DeregisterProvider", {"provider_id": "p-one"})
    assert big not in await models(http, alice)


async def test_a_provider_is_offline_once_its_last_heartbeat_is_older_than_the_timeout(http, accounts, registry, mesh):
    alice, _ = accounts
    await registry("Heartbeat", provider("p-stale", ("stale-model", ["dialogue"])))
    timeout = PROVIDER_TIMEOUT_SECONDS.value

    async def heard_seconds_ago(seconds: float) -> None:
        connection = await asyncpg.connect(mesh.env["DATABASE_URL"])
        try:
            await connection.execute(
                "UPDATE gateway.providers SET last_seen = now() - make_interval(secs => $1) WHERE provider_id = 'p-stale'",
                seconds,
            )
        finally:
            await connection.close()

    try:
        await heard_seconds_ago(timeout - 1)
        assert "stale-model" in await models(http, alice)
        await heard_seconds_ago(timeout + 1)
        assert "stale-model" not in await models(http, alice)
        # Its next heartbeat brings it back.
        await registry("Heartbeat", provider("p-stale", ("stale-model", ["dialogue"])))
        assert "stale-model" in await models(http, alice)
    finally:
        await registry("DeregisterProvider", {"provider_id": "p-stale"})


@pytest.mark.parametrize(
    "request_, param",
    [
        ({"provider": {"address": "h:1"}}, "provider.provider_id"),
        ({"provider": {"provider_id": "p"}}, "provider.address"),
        ({"provider": {"provider_id": "p", "address": "h:1", "load": -1}}, "provider.load"),
        ({"provider": {"provider_id": "p", "address": "h:1", "models": [{"features": ["x"]}]}}, "provider.models"),
    ],
)
async def test_a_heartbeat_without_what_routing_needs_is_refused(registry, request_, param):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await registry("Heartbeat", request_)
    error = ApiError.from_rpc_error(caught.value)
    assert (error.code, error.reason, error.param) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PARAMETER", param)


async def test_the_meshs_own_synth_provider_is_listed(http, accounts, mesh):
    if "synth" not in mesh.services:
        pytest.skip("no synth service in this checkout")
    alice, _ = accounts
    deadline = asyncio.get_running_loop().time() + 60
    while True:  # synth started before the gateway: its heartbeats retry until the registry answers
        cloning = [card for card in (await models(http, alice)).values() if "voice-cloning" in card["features"]]
        if cloning:
            break
        assert asyncio.get_running_loop().time() < deadline, "synth never registered"
        await asyncio.sleep(0.5)
    assert cloning[0]["providers"] >= 1 and cloning[0]["object"] == "model"
