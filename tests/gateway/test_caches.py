"""Two caches, through the running mesh: the gateway's API keys (a revoked key
works for at most GATEWAY_KEY_CACHE_SECONDS) and synth's voice prompts (the
same voices are fetched, cut, joined and encoded once; a changed or deleted
sample is never served from the cache)."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import asyncpg
import pytest

from tests.synth.helpers import metric
from tests.gateway.conftest import FOX, HELLO, Account, assert_error, created, extra_gateway, make_key, upload_form, wait_for_models

GENERATIONS = "/v1/voice/generations"


@pytest.fixture(scope="module")
async def dora(key_env) -> Account:
    name = f"dora-{uuid.uuid4().hex[:8]}"
    return Account(name, make_key(name, key_env))


async def revoke(database_url: str, key_prefix: str) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute("UPDATE gateway.api_keys SET revoked_at = now() WHERE prefix = $1", key_prefix)
    finally:
        await connection.close()


async def test_a_revoked_key_works_until_its_cache_entry_expires_then_never(mesh, key_env):
    name = f"erin-{uuid.uuid4().hex[:8]}"
    erin = Account(name, make_key(name, key_env))
    async with extra_gateway(mesh, GATEWAY_KEY_CACHE_SECONDS="2") as gateway:
        async with aiohttp.ClientSession(base_url=gateway.http_url) as http:
            assert (await http.get("/v1/voice/samples", headers=erin.headers)).status == 200
            await revoke(mesh.env["DATABASE_URL"], erin.key[:11])
            # Within the cache's time the key still works: the database is not asked.
            assert (await http.get("/v1/voice/samples", headers=erin.headers)).status == 200
            await asyncio.sleep(2.2)
            await assert_error(await http.get("/v1/voice/samples", headers=erin.headers), 401, "unauthorized")
            await assert_error(await http.get(GENERATIONS, headers=erin.headers), 401, "unauthorized")


async def test_without_a_cache_a_revoked_key_is_refused_at_once(mesh, key_env):
    name = f"fred-{uuid.uuid4().hex[:8]}"
    fred = Account(name, make_key(name, key_env))
    async with extra_gateway(mesh, GATEWAY_KEY_CACHE_SECONDS="0") as gateway:
        async with aiohttp.ClientSession(base_url=gateway.http_url) as http:
            assert (await http.get("/v1/voice/samples", headers=fred.headers)).status == 200
            await revoke(mesh.env["DATABASE_URL"], fred.key[:11])
            await assert_error(await http.get("/v1/voice/samples", headers=fred.headers), 401, "unauthorized")


def prompt_cache(mesh) -> dict[str, float]:
    """The synth provider's prompt cache and library fetches, and the library's speech-recognition calls
    for prompts (word timings computed for a sample stored without them)."""
    synth, library = mesh.env["SYNTH_METRICS_PORT"], mesh.env["LIBRARY_METRICS_PORT"]
    return {
        "miss": metric(synth, "synth_prompt_cache_misses_total"),
        "hit": metric(synth, "synth_prompt_cache_hits_total"),
        "fetches": metric(synth, "synth_prompt_sample_fetches_total"),
        "stt": metric(library, 'library_prompt_samples_total{word_timings="computed"}'),
    }


async def generate(http, account: Account, speakers: dict[str, int]) -> aiohttp.ClientResponse:
    body = {"input": "[S1] Again. [S2] And again.", "speakers": speakers, "max_new_tokens": 256, "seed": 5}
    return await http.post(GENERATIONS, json=body, headers=account.headers)


async def test_the_same_voices_are_assembled_once_and_a_changed_sample_again(http, dora, mesh):
    await wait_for_models(http, dora)
    hello = await created(await upload_form(http, dora, HELLO, "Host", transcript="Hello world, this is a voice sample."))
    fox = await created(await upload_form(http, dora, FOX, "Guest", transcript="The quick brown fox."))
    speakers = {"S1": hello["id"], "S2": fox["id"]}

    before = prompt_cache(mesh)
    first = await generate(http, dora, speakers)
    assert first.status == 200, await first.text()
    first_audio = await first.read()
    missed = prompt_cache(mesh)
    # The miss: one fetch per sample, and no speech recognition (the words were timed at upload).
    assert (missed["fetches"] - before["fetches"], missed["stt"] - before["stt"]) == (2, 0)
    second = await generate(http, dora, speakers)
    assert second.status == 200
    after = prompt_cache(mesh)
    assert (after["miss"] - before["miss"], after["hit"] - before["hit"]) == (1, 1)
    assert after["fetches"] == missed["fetches"]  # the hit fetches nothing
    # The prompt from the cache is the prompt assembled: same seed, same audio.
    assert await second.read() == first_audio

    # A changed transcript is a new prompt.
    patched = await http.patch(f"/v1/voice/samples/{fox['id']}", json={"transcript": "The quick brown fox jumps."}, headers=dora.headers)
    assert patched.status == 200
    third = await generate(http, dora, speakers)
    assert third.status == 200
    assert prompt_cache(mesh)["miss"] - after["miss"] == 1

    # A deleted sample is not cloned from the cache.
    assert (await http.delete(f"/v1/voice/samples/{fox['id']}", headers=dora.headers)).status == 200
    await assert_error(await generate(http, dora, speakers), 400, "invalid_voice_sample", "speakers.S2")


async def test_another_account_cannot_use_a_cached_prompt(http, dora, accounts):
    await wait_for_models(http, dora)
    hello = await created(await upload_form(http, dora, HELLO, "Host", transcript="Hello world, this is a voice sample."))
    assert (await generate(http, dora, {"S1": hello["id"]})).status == 200
    await assert_error(await generate(http, accounts[1], {"S1": hello["id"]}), 400, "invalid_voice_sample", "speakers.S1")
