"""Per-account limits on generations, end to end: two gateway replicas beside the
mesh's, with small limits, share them through PostgreSQL. A request over a limit
is 429 rate_limited with a Retry-After, counted in the gateway's metrics, and not
stored in the history."""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass

import aiohttp
import grpc
import pytest

from runtime.server import channel_options
from tests.gateway.conftest import Account, assert_error, extra_gateway, make_key, wait_for_models
from voice.gateway.v1 import generations_pb2, generations_pb2_grpc

GENERATIONS = "/v1/voice/generations"
PER_SECOND = 0.01  # after the burst, the next generation is allowed 100 s later
BURST = 2


@dataclass
class Replicas:
    one: aiohttp.ClientSession  # HTTP clients of the two
    two: aiohttp.ClientSession
    one_grpc: generations_pb2_grpc.GenerationServiceStub  # the first over gRPC


@pytest.fixture(scope="module")
async def replicas(mesh):
    """Two gateway replicas with the same small limits."""
    limits = dict(
        GATEWAY_ACCOUNT_GENERATIONS_PER_SECOND=str(PER_SECOND),
        GATEWAY_ACCOUNT_GENERATION_BURST=str(BURST),
        GATEWAY_ACCOUNT_CONCURRENT_GENERATIONS="1",
    )
    async with extra_gateway(mesh, **limits) as first, extra_gateway(mesh, **limits) as second:
        async with (
            aiohttp.ClientSession(base_url=first.http_url) as one,
            aiohttp.ClientSession(base_url=second.http_url) as two,
            grpc.aio.insecure_channel(first.address("gateway"), options=channel_options()) as channel,
        ):
            yield Replicas(one, two, generations_pb2_grpc.GenerationServiceStub(channel))


@pytest.fixture
def account(key_env) -> Account:
    name = f"limited-{uuid.uuid4().hex[:8]}"
    return Account(name, make_key(name, key_env))


async def unserved(http, account: Account) -> aiohttp.ClientResponse:
    """A generation that is admitted, then ends at once: no provider serves its model."""
    body = {"input": "[S1] Anyone?", "model": "nobody/serves-this"}
    return await http.post(GENERATIONS, json=body, headers=account.headers)


async def refused_total(http, error_type: str) -> float:
    text = await (await http.get("/metrics")).text()
    found = re.search(rf'^gateway_generations_refused_total\{{type="{error_type}"\}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def history_ids(http, account: Account) -> list[str]:
    listing = await (await http.get(GENERATIONS, params={"page_size": "100"}, headers=account.headers)).json()
    return [g["id"] for g in listing["generations"]]


async def test_past_its_burst_an_account_is_rate_limited_on_every_replica_and_nothing_is_stored(replicas, account):
    one, two = replicas.one, replicas.two
    admitted = [await unserved(one, account), await unserved(two, account)]  # the burst, one on each
    for response in admitted:
        await assert_error(response, 404, "no_provider", "model")
    refused_before = await refused_total(one, "rate_limited")

    over = await unserved(one, account)
    error = await assert_error(over, 429, "rate_limited")
    assert "generations a second" in error["message"]
    assert 1 <= int(over.headers["Retry-After"]) <= 1 / PER_SECOND
    assert "X-Generation-Id" not in over.headers
    # Counted, not stored: the history holds the two admitted requests alone.
    assert await refused_total(one, "rate_limited") == refused_before + 1
    assert await history_ids(two, account) == [r.headers["X-Generation-Id"] for r in reversed(admitted)]


async def test_an_account_with_a_generation_under_way_on_one_replica_waits_on_the_other(replicas, account):
    one, two = replicas.one, replicas.two
    await wait_for_models(one, account)
    # 3072 frames (the most Dia holds) keep the tiny model busy for seconds; its caller (over gRPC) hangs up later.
    long = replicas.one_grpc.CreateGeneration(
        generations_pb2.CreateGenerationRequest(generation=generations_pb2.GenerationSpec(input="[S1] A long one.", max_new_tokens=3072)),
        metadata=(("authorization", f"Bearer {account.key}"),),
    )
    deadline = asyncio.get_running_loop().time() + 60
    while not await history_ids(two, account):
        assert asyncio.get_running_loop().time() < deadline, "the long generation was never admitted"
        await asyncio.sleep(0.05)

    over = await unserved(two, account)
    error = await assert_error(over, 429, "rate_limited")
    assert "generations under way as it may have at once (1)" in error["message"]
    assert int(over.headers["Retry-After"]) >= 1
    assert len(await history_ids(two, account)) == 1

    long.cancel()  # the caller hangs up: the generation ends (canceled) and frees its place
    while (await (await two.get(GENERATIONS, headers=account.headers)).json())["generations"][0]["status"] != "canceled":
        assert asyncio.get_running_loop().time() < deadline, "the abandoned generation never ended"
        await asyncio.sleep(0.05)
    await assert_error(await unserved(two, account), 404, "no_provider", "model")
