"""End to end with the mesh's gateway: providers register by heartbeat and leave on shutdown."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid

import asyncpg
import grpc
import pytest

from services.gateway import accounts
from services.gateway.config import PROVIDER_TIMEOUT_SECONDS
from services.gateway.store import Store
from services.gateway.store.providers import ProvidersTable
from tests.conftest import ROOT
from tests.synth.helpers import own_synth
from voice.gateway.v1 import models_pb2, models_pb2_grpc
from voice.synth.v1 import synth_pb2


@pytest.fixture(scope="module")
async def key(database) -> str:
    """An API key of an account of the test's own: the gateway's ModelService wants one."""
    store = await Store.open(database.url)
    try:
        return (await accounts.create_key(store.accounts, f"synth-registration-{uuid.uuid4().hex[:8]}")).key
    finally:
        await store.close()


async def list_models(mesh, key: str) -> models_pb2.ListModelsResponse:
    async with grpc.aio.insecure_channel(mesh.address("gateway")) as channel:
        stub = models_pb2_grpc.ModelServiceStub(channel)
        return await stub.ListModels(models_pb2.ListModelsRequest(), metadata=(("authorization", f"Bearer {key}"),))


async def providers_of(mesh, key: str, model: str) -> int:
    reply = await list_models(mesh, key)
    return next((card.providers for card in reply.data if card.id == model), 0)


async def wait_for_providers(mesh, key: str, model: str, count: int) -> None:
    async with asyncio.timeout(60):  # a guard against hanging; heartbeats come every few seconds
        while await providers_of(mesh, key, model) != count:
            await asyncio.sleep(0.1)


async def test_the_mesh_synth_is_listed_by_the_gateway_with_its_features(mesh, key):
    await wait_for_providers(mesh, key, "tiny-random", 1)
    reply = await list_models(mesh, key)
    (card,) = [card for card in reply.data if card.id == "tiny-random"]
    assert set(card.features) == {"voice-cloning", "dialogue"}


async def test_the_gateway_stores_each_models_limits_with_its_provider(mesh, database, synth):
    provider = (await synth.GetProviderInfo(synth_pb2.GetProviderInfoRequest())).provider
    (model,) = provider.models
    async with asyncpg.create_pool(database.url, min_size=1, max_size=1, server_settings={"search_path": "gateway"}) as pool:
        online = await ProvidersTable(lambda: pool).online(PROVIDER_TIMEOUT_SECONDS.value)
        rows = {row["provider_id"]: row for row in online}
    (stored,) = json.loads(rows[provider.provider_id]["models"])
    assert stored["id"] == "tiny-random"
    assert stored["limits"] == {
        "decoder_positions": model.limits.decoder_positions,
        "text_window_bytes": model.limits.text_window_bytes,
        "sample_rate": model.limits.sample_rate,
        "samples_per_frame": model.limits.samples_per_frame,
    }
    assert stored["limits"]["decoder_positions"] == 3072


async def test_a_provider_leaves_the_registry_as_soon_as_it_shuts_down(mesh, key):
    await wait_for_providers(mesh, key, "tiny-random", 1)
    async with own_synth(mesh, registered=True, SYNTH_PROVIDER_ID="synth-test-second") as process:
        await process.wait_serving("synth", timeout=120)
        await wait_for_providers(mesh, key, "tiny-random", 2)
        await process.stop_service("synth")
        # Gone now, not after the registry's heartbeat timeout.
        assert await providers_of(mesh, key, "tiny-random") == 1


async def wait_for_line(process, text: str) -> None:
    async with asyncio.timeout(120):  # a guard: the model loads, then the first heartbeat goes out
        while not any(text in line for line in process.log_lines["synth"]):
            await asyncio.sleep(0.1)


async def test_a_synth_with_another_secret_is_refused_and_never_listed(mesh, key):
    await wait_for_providers(mesh, key, "tiny-random", 1)
    async with own_synth(
        mesh, registered=True, SYNTH_PROVIDER_ID="synth-test-wrong-secret", PROVIDER_SECRET="not-the-mesh-secret"
    ) as process:
        await wait_for_line(process, "refuses this provider's credential")
        assert await providers_of(mesh, key, "tiny-random") == 1


def provider_token(env: dict[str, str], provider_id: str) -> str:
    """`python -m tools.provider_token <id>` as an operator runs it; the last line of its output."""
    result = subprocess.run(
        [sys.executable, "-m", "tools.provider_token", provider_id],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


async def test_a_provider_given_only_its_own_token_registers_under_that_id(mesh, key):
    await wait_for_providers(mesh, key, "tiny-random", 1)
    token = provider_token(mesh.env, "synth-test-own-token")
    # No PROVIDER_SECRET: the provider knows its own credential and nothing else.
    settings = {"PROVIDER_SECRET": "", "SYNTH_PROVIDER_TOKEN": token}
    async with own_synth(mesh, registered=True, SYNTH_PROVIDER_ID="synth-test-own-token", **settings) as process:
        await process.wait_serving("synth", timeout=120)
        await wait_for_providers(mesh, key, "tiny-random", 2)
        await process.stop_service("synth")
        assert await providers_of(mesh, key, "tiny-random") == 1  # it could deregister itself too
    # The same token does not let it register under another id.
    async with own_synth(mesh, registered=True, SYNTH_PROVIDER_ID="synth-test-other-id", **settings) as process:
        await wait_for_line(process, "refuses this provider's credential")
        assert await providers_of(mesh, key, "tiny-random") == 1
