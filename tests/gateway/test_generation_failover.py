"""Routing across real synth providers that die: a mesh of this module's own
(a gateway and two synth processes with the tiny model, on a database of its
own so that no other provider is registered) whose providers are killed with
SIGKILL, as a crashed machine would be, before their heartbeats expire."""

from __future__ import annotations

import asyncio
import io
import signal
import uuid
import wave

import aiohttp
import pytest

from services.gateway import accounts as gateway_accounts
from services.gateway.store import Store
from tests.conftest import Database, RunningMesh, free_port, mesh_ports_env
from tests.gateway.conftest import Account, wait_for_models
from tools import mesh as mesh_tools

# Short enough that the test sees providers go offline quickly; heartbeats come ten times as often.
PROVIDER_TIMEOUT_SECONDS = 4
# Every request must end within this, whatever is killed under it: no request hangs.
REQUEST_BOUND_SECONDS = 120
REQUESTS = 8


class SmallMesh:
    def __init__(self, gateway: RunningMesh, synths: list[RunningMesh], account: Account) -> None:
        self.gateway = gateway
        self.synths = synths
        self.account = account


async def start_synth(env: dict[str, str], provider_id: str) -> RunningMesh:
    own = dict(env, SYNTH_PROVIDER_ID=provider_id, SYNTH_GRPC_PORT=str(free_port()), SYNTH_METRICS_PORT=str(free_port()))
    own["SYNTH_ADDR"] = f"127.0.0.1:{own['SYNTH_GRPC_PORT']}"
    synth = RunningMesh(["synth"], own)
    await synth.start(timeout=180)
    return synth


@pytest.fixture(scope="module")
async def small_mesh(database, object_server):
    own_database = Database()
    own_database.admin_url = database.admin_url  # a new database on the session's server
    await own_database.create()
    env = mesh_tools.mesh_environment(own_database.url, object_store=object_server.settings.environment())
    env.update(mesh_ports_env())
    env.update(
        DIA_MODEL="tiny-random",
        LOG_FORMAT="json",
        GATEWAY_UPSTREAMS="gateway",  # generations need neither the library nor transcode without speakers
        GATEWAY_PROVIDER_TIMEOUT_SECONDS=str(PROVIDER_TIMEOUT_SECONDS),
        GATEWAY_HEARTBEAT_INTERVAL_SECONDS=str(PROVIDER_TIMEOUT_SECONDS / 10),
        SYNTH_HEARTBEAT_SECONDS=str(PROVIDER_TIMEOUT_SECONDS / 10),
        # One account sends the whole stream: its limits must not refuse any of it.
        GATEWAY_ACCOUNT_CONCURRENT_GENERATIONS=str(REQUESTS),
    )
    gateway = RunningMesh(["gateway"], env)
    synths: list[RunningMesh] = []
    try:
        await gateway.start(timeout=120)
        synths = list(await asyncio.gather(start_synth(env, "provider-a"), start_synth(env, "provider-b")))
        store = await Store.open(own_database.url)
        try:
            name = f"erin-{uuid.uuid4().hex[:8]}"
            account = Account(name, (await gateway_accounts.create_key(store.accounts, name)).key)
        finally:
            await store.close()
        yield SmallMesh(gateway, synths, account)
    finally:
        for process in [*synths, gateway]:
            await process.stop()
        await own_database.drop()


async def generate(http, account: Account, text: str) -> tuple[int, dict | bytes, str]:
    response = await http.post(
        "/v1/voice/generations", json={"input": text, "max_new_tokens": 256}, headers=account.headers
    )
    body = await response.read() if response.status == 200 else await response.json()
    return response.status, body, response.headers.get("X-Generation-Id", "")


async def tiny_model_providers(http, account: Account) -> int:
    models = await wait_for_models(http, account, present=True)
    return models["tiny-random"]["providers"]


async def test_killing_providers_fails_requests_cleanly_then_takes_them_offline(small_mesh):
    account = small_mesh.account
    first, second = small_mesh.synths
    async with aiohttp.ClientSession(base_url=small_mesh.gateway.http_url) as http:
        deadline = asyncio.get_running_loop().time() + 60
        while await tiny_model_providers(http, account) < 2:
            assert asyncio.get_running_loop().time() < deadline, "both providers never registered"
            await asyncio.sleep(0.2)

        # A stream of requests, with one provider killed while they are under way.
        async def one(index: int):
            await asyncio.sleep(0.2 * index)
            return await asyncio.wait_for(generate(http, account, f"[S1] Request {index}."), REQUEST_BOUND_SECONDS)

        stream = [asyncio.create_task(one(index)) for index in range(REQUESTS)]
        await asyncio.sleep(0.5)
        await first.stop_service("synth", signal.SIGKILL)
        outcomes = await asyncio.gather(*stream)

        succeeded = 0
        for status, body, generation_id in outcomes:
            assert generation_id
            if status == 200:
                with wave.open(io.BytesIO(body)) as reader:
                    assert reader.getnframes() > 0
                succeeded += 1
            else:
                assert (status, body["error"]["type"]) == (502, "upstream_error"), body
        assert succeeded >= 1, outcomes  # the surviving provider served (at least) the later ones

        # The history says the same: each one finished, none left queued or running.
        listing = await (await http.get("/v1/voice/generations", params={"page_size": "100"}, headers=account.headers)).json()
        ended = {g["id"]: (g["status"], g["error_type"]) for g in listing["generations"]}
        for status, _, generation_id in outcomes:
            assert ended[generation_id] == (("succeeded", "") if status == 200 else ("failed", "upstream_error"))
        assert not any("127.0.0.1" in g["error_message"] for g in listing["generations"]), listing

        # Its heartbeats stopped: after GATEWAY_PROVIDER_TIMEOUT_SECONDS it is offline.
        deadline = asyncio.get_running_loop().time() + 10 * PROVIDER_TIMEOUT_SECONDS
        while await tiny_model_providers(http, account) != 1:
            assert asyncio.get_running_loop().time() < deadline, "the killed provider stayed online"
            await asyncio.sleep(0.2)

        # The last one dies too; still registered, it is tried and found gone.
        await second.stop_service("synth", signal.SIGKILL)
        status, body, generation_id = await generate(http, account, "[S1] Anyone there?")
        assert (status, body["error"]["type"]) == (502, "upstream_error"), body
        # It says which provider failed, not where it lives (gRPC's own text names its address).
        stored = await (await http.get(f"/v1/voice/generations/{generation_id}", headers=account.headers)).json()
        for message in (body["error"]["message"], stored["error_message"]):
            assert "provider-b" in message and "127.0.0.1" not in message and "ipv4" not in message, message

        # Once it is offline as well, there is no provider at all.
        await wait_for_models(http, account, present=False, timeout=10 * PROVIDER_TIMEOUT_SECONDS)
        status, body, _ = await generate(http, account, "[S1] Anyone now?")
        assert (status, body["error"]["type"]) == (404, "no_provider"), body
