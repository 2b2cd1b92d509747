"""Generations that a database outage cuts off end ``failed`` with
``database_unavailable`` as soon as PostgreSQL is back, and stop counting
against their account then, not at the abandoned-generation sweep minutes
later (issue 21): their callers got 503, and "a 503 changed nothing" must
hold for the account's limits too.

The store's part through a TCP relay that the test cuts and restores, as a
network partition would (the session's PostgreSQL keeps running); then end
to end, with a PostgreSQL of the test's own killed (SIGKILL) under four
generations of one account and started again on the same data folder, as
`make run` restarts its embedded one."""

from __future__ import annotations

import asyncio
import datetime
import os
import pathlib
import signal
import tempfile
import uuid

import aiohttp
import pytest
import tenacity

from runtime.errors import ApiError
from services.gateway import accounts
from services.gateway.config import RECORD_RETRY_MAX_SECONDS, RECORD_RETRY_SECONDS
from services.gateway.store import Store
from services.gateway.store import generations as history
from tests.conftest import RunningMesh, free_ports
from tests.gateway.conftest import Account
from tests.gateway.test_generation_database import Relay
from tools import mesh as mesh_tools
from voice.gateway.v1 import generations_pb2

# A guard against hangs only: what is waited for comes within seconds.
BOUND_SECONDS = 60


def request(account_id: int) -> history.NewGeneration:
    return history.NewGeneration(
        account_id, "[S1] Hello.", "", {}, {}, generations_pb2.GenerationParameters(), "private", ""
    )


@pytest.fixture
async def relayed(database):
    """(relay, a store through it as a gateway has, a store straight to the database to look with)."""
    relay = Relay(database.url)
    url = await relay.start()
    store, direct = await Store.open(url), await Store.open(database.url)
    yield relay, store, direct
    for opened in (store, direct):
        await opened.close()
    if relay.server is not None:
        await relay.cut()


async def running_generation(store: Store, direct: Store, limits: history.AccountLimits) -> tuple[int, str]:
    account_id = (await accounts.create_key(direct.accounts, f"outage-{uuid.uuid4().hex[:8]}")).account_id
    generation_id = await store.generations.admit(request(account_id), limits)
    await store.generations.mark_running(generation_id, "synth-1", "tiny-random", generations_pb2.GenerationParameters())
    return account_id, generation_id


async def test_an_end_the_database_missed_is_written_before_the_next_statement(relayed):
    relay, store, direct = relayed
    limits = history.AccountLimits(per_second=0, burst=1, concurrent=1)
    account_id, generation_id = await running_generation(store, direct, limits)

    await relay.cut()
    ended = datetime.datetime.now(datetime.UTC)
    assert await store.generations.end(generation_id, "database_unavailable", "the database went away") is False
    assert store.generations.unrecorded == 1
    # As the database has it, the generation is still under way, and takes the account's one place.
    assert (await direct.generations.get(account_id, generation_id))["status"] == "running"
    with pytest.raises(ApiError) as caught:
        await direct.generations.admit(request(account_id), limits)
    assert caught.value.reason == "RATE_LIMITED"
    with pytest.raises(ApiError) as caught:  # while the database is away, the gateway's statements fail
        await store.generations.admit(request(account_id), limits)
    assert caught.value.reason == "DATABASE_UNAVAILABLE"

    await relay.restore()
    # The account's next admission on that gateway finds its place free: the end was written first.
    await store.generations.admit(request(account_id), limits)
    row = await direct.generations.get(account_id, generation_id)
    assert (row["status"], row["error_type"], row["error_message"]) == (
        "failed", "database_unavailable", "the database went away",
    )  # fmt: skip
    assert abs((row["end_time"] - ended).total_seconds()) < 1  # when it ended, not when it was written
    assert store.generations.unrecorded == 0


async def test_an_end_the_database_missed_is_written_once_it_is_back_with_no_request(relayed):
    relay, store, direct = relayed
    limits = history.AccountLimits(per_second=0, burst=1, concurrent=1)
    account_id, generation_id = await running_generation(store, direct, limits)
    recorder = asyncio.create_task(store.generations.keep_recording(0.05, 0.2))
    try:
        await relay.cut()
        assert await store.generations.end(generation_id, "canceled", "the caller went away", "canceled") is False
        await asyncio.sleep(1)  # several tries meet the cut
        assert (await direct.generations.get(account_id, generation_id))["status"] == "running"
        await relay.restore()
        async with asyncio.timeout(BOUND_SECONDS):
            while (await direct.generations.get(account_id, generation_id))["status"] == "running":
                await asyncio.sleep(0.05)
        row = await direct.generations.get(account_id, generation_id)
        assert (row["status"], row["error_type"]) == ("canceled", "canceled")
        assert store.generations.unrecorded == 0
        assert not recorder.done()  # and it goes on, for the next outage
    finally:
        recorder.cancel()


async def test_an_end_written_at_once_is_not_kept_and_a_generation_that_ended_keeps_its_outcome(relayed):
    relay, store, direct = relayed
    limits = history.AccountLimits(per_second=0, burst=1, concurrent=0)
    account_id, generation_id = await running_generation(store, direct, limits)
    assert await store.generations.end(generation_id, "upstream_error", "the provider failed") is True
    assert store.generations.unrecorded == 0
    # An outcome kept for a generation that has ended meanwhile (elsewhere) changes nothing.
    _, other = await running_generation(store, direct, limits)
    await relay.cut()
    assert await store.generations.end(other, "database_unavailable", "gone") is False
    await relay.restore()
    await direct.generations.mark_failed(other, "interrupted", "swept")
    assert await store.generations.record_unrecorded() == 1
    assert (await direct.generations.get(account_id, generation_id))["error_type"] == "upstream_error"


def retry_pause(first: float, longest: float, attempt: int) -> float:
    state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    return history.retry_pauses(first, longest)(state)


def test_the_pauses_between_tries_double_from_the_first_up_to_the_longest():
    first, longest = RECORD_RETRY_SECONDS.value, RECORD_RETRY_MAX_SECONDS.value
    assert (first, longest) == (0.5, 5.0)  # the documented defaults
    assert [retry_pause(first, longest, n) for n in range(1, 8)] == [0.5, 1, 2, 4, 5, 5, 5]
    assert [retry_pause(0.25, 0.25, n) for n in range(1, 4)] == [0.25, 0.25, 0.25]  # at the edge: never longer


# --- end to end: PostgreSQL killed under an account's four generations ---------------------


async def generate(http, account: Account, max_new_tokens: int) -> tuple[int, dict | None, str]:
    response = await http.post(
        "/v1/voice/generations", json={"input": "[S1] Are you there?", "max_new_tokens": max_new_tokens},
        headers=account.headers,
    )  # fmt: skip
    body = None if response.status == 200 else await response.json()
    await response.read()
    return response.status, body, response.headers.get("X-Generation-Id", "")


async def history_of(http, account: Account) -> dict[str, dict]:
    response = await http.get("/v1/voice/generations", params={"page_size": "100"}, headers=account.headers)
    body = await response.json()
    assert response.status == 200, body
    return {g["id"]: g for g in body["generations"]}


@pytest.fixture
async def own_database_mesh(mesh):
    """A gateway and a synth on a PostgreSQL of the test's own (the mesh's library and the rest beside
    them), with the account limits of `make run` but no rate limit; (mesh, postgres, an account)."""
    # Outside pytest's folders: PostgreSQL runs as a user of its own under root (tests/make_run.py).
    postgres = await asyncio.to_thread(
        mesh_tools.EmbeddedPostgres, pathlib.Path(tempfile.mkdtemp(prefix="voicemesh-outage-")) / "data"
    )
    env = dict(mesh.env, DATABASE_URL=postgres.url)
    for service, (grpc_port, metrics_port) in zip(("gateway", "synth"), [free_ports(2), free_ports(2)]):
        env[f"{service.upper()}_GRPC_PORT"], env[f"{service.upper()}_METRICS_PORT"] = str(grpc_port), str(metrics_port)
        env[f"{service.upper()}_ADDR"] = f"127.0.0.1:{grpc_port}"
    env["GATEWAY_HTTP_PORT"] = str(free_ports(1)[0])
    env.update(
        GATEWAY_ACCOUNT_CONCURRENT_GENERATIONS="4",
        GATEWAY_ACCOUNT_GENERATIONS_PER_SECOND="0",
        # The provider stays registered through the outage, whose heartbeats fail.
        GATEWAY_PROVIDER_TIMEOUT_SECONDS="300",
        DATABASE_TIMEOUT_SECONDS="3",
    )
    store = await Store.open(postgres.url)
    try:
        name = f"outage-{uuid.uuid4().hex[:8]}"
        account = Account(name, (await accounts.create_key(store.accounts, name)).key)
    finally:
        await store.close()
    running = RunningMesh(["gateway", "synth"], env)
    running.echo = mesh.echo
    try:
        await running.start(timeout=180)
        yield running, postgres, account
    finally:
        await running.stop()
        await asyncio.to_thread(postgres.stop)


@pytest.mark.slow
async def test_an_account_whose_generations_a_database_restart_cut_off_is_served_again_at_once(own_database_mesh):
    running, postgres, account = own_database_mesh
    async with aiohttp.ClientSession(base_url=running.http_url) as http:
        # Four generations, the account's most at once; 3072 frames keep the tiny model busy for seconds.
        cut_off = [asyncio.create_task(generate(http, account, 3072)) for _ in range(4)]
        async with asyncio.timeout(BOUND_SECONDS):
            while [g["status"] for g in (await history_of(http, account)).values()] != ["running"] * 4:
                await asyncio.sleep(0.05)

        os.kill(postgres.pid, signal.SIGKILL)
        async with asyncio.timeout(BOUND_SECONDS):
            while await asyncio.to_thread(postgres.is_running):
                await asyncio.sleep(0.05)
        # Each ends, and cannot be stored: 503, "nothing was changed".
        outcomes = await asyncio.wait_for(asyncio.gather(*cut_off), BOUND_SECONDS)
        assert [(status, body["error"]["type"]) for status, body, _ in outcomes] == [(503, "database_unavailable")] * 4, (
            "the kill came too late to cut the generations off" if any(s == 200 for s, _, _ in outcomes) else outcomes
        )
        status, body, _ = await generate(http, account, 256)
        assert (status, body["error"]["type"]) == (503, "database_unavailable")

        await asyncio.to_thread(postgres.restart)  # on the same data folder and socket, as `make run` does
        # The account's next generation is served as soon as the gateway reaches the database again:
        # never 429 for the four that ended in the outage.
        answers = []
        async with asyncio.timeout(BOUND_SECONDS):
            while not answers or answers[-1][0] != 200:
                status, body, _ = await generate(http, account, 256)
                answers.append((status, body["error"]["type"] if body else ""))
                assert status != 429, f"the four cut off still count against the account: {answers}"
                if status != 200:
                    await asyncio.sleep(0.2)
        assert set(answers) <= {(200, ""), (503, "database_unavailable")}, answers

        stored = await history_of(http, account)
        for _, _, generation_id in outcomes:
            assert (stored[generation_id]["status"], stored[generation_id]["error_type"]) == (
                "failed", "database_unavailable",
            ), stored[generation_id]  # fmt: skip
            assert "database" in stored[generation_id]["error_message"]
