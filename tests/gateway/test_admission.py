"""Per-account limits on generations at the database (the store's admit), as two gateway
replicas meet them: each replica here is a store (a pool) of its own on the session's PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from runtime.errors import ApiError
from services.gateway import accounts
from services.gateway.store import Store
from services.gateway.store import generations as history
from voice.gateway.v1 import generations_pb2


@pytest.fixture
async def replicas(database):
    stores = [await Store.open(database.url) for _ in range(2)]
    yield stores
    for store in stores:
        await store.close()


async def new_account(store: Store) -> int:
    return (await accounts.create_key(store.accounts, f"limits-{uuid.uuid4().hex[:8]}")).account_id


def request(account_id: int) -> history.NewGeneration:
    return history.NewGeneration(
        account_id, "[S1] Hello.", "", {}, {}, generations_pb2.GenerationParameters(), "private", ""
    )


async def admit_at_once(pools, account_id: int, limits: history.AccountLimits, count: int) -> tuple[list[str], list[ApiError]]:
    """`count` admissions at the same moment, spread over the replicas: (ids admitted, refusals)."""
    outcomes = await asyncio.gather(
        *(pools[n % len(pools)].generations.admit(request(account_id), limits) for n in range(count)),
        return_exceptions=True,
    )
    refused = [o for o in outcomes if isinstance(o, ApiError)]
    assert len(refused) + sum(isinstance(o, str) for o in outcomes) == count, outcomes
    return [o for o in outcomes if isinstance(o, str)], refused


async def test_no_more_generations_under_way_than_the_limit_whichever_replica_admits_them(replicas):
    account_id = await new_account(replicas[0])
    limits = history.AccountLimits(per_second=0, burst=1, concurrent=3)
    admitted, refused = await admit_at_once(replicas, account_id, limits, 12)
    assert len(admitted) == 3
    assert {(e.reason, e.code.name) for e in refused} == {("RATE_LIMITED", "RESOURCE_EXHAUSTED")}
    assert all(e.retry_after is not None and e.retry_after >= 0 for e in refused)
    assert "under way as it may have at once (3)" in refused[0].message

    # One ends (however it ends): there is room for exactly one more.
    await replicas[1].generations.mark_failed(admitted[0], "upstream_error", "gone")
    again, refused = await admit_at_once(replicas, account_id, limits, 4)
    assert len(again) == 1 and len(refused) == 3


async def test_the_rate_admits_the_burst_at_once_then_the_next_after_its_retry_after(replicas):
    account_id = await new_account(replicas[0])
    limits = history.AccountLimits(per_second=5, burst=2, concurrent=0)
    admitted, refused = await admit_at_once(replicas, account_id, limits, 6)
    assert len(admitted) == 2 and len(refused) == 4
    wait = max(e.retry_after for e in refused)
    assert 0 < wait <= 1 / limits.per_second
    assert "5 generations a second" in refused[0].message
    await asyncio.sleep(wait)  # as a client honouring Retry-After would
    assert len((await admit_at_once(replicas, account_id, limits, 1))[0]) == 1


async def test_one_account_at_its_limits_leaves_another_alone(replicas):
    busy, other = await new_account(replicas[0]), await new_account(replicas[0])
    limits = history.AccountLimits(per_second=1, burst=1, concurrent=1)
    await replicas[0].generations.admit(request(busy), limits)
    with pytest.raises(ApiError):
        await replicas[1].generations.admit(request(busy), limits)
    await replicas[1].generations.admit(request(other), limits)


async def test_limits_of_zero_are_off(replicas):
    account_id = await new_account(replicas[0])
    limits = history.AccountLimits(per_second=0, burst=1, concurrent=0)
    admitted, refused = await admit_at_once(replicas, account_id, limits, 10)
    assert len(admitted) == 10 and not refused


async def test_a_refusal_for_concurrency_says_when_the_oldest_should_end_by_the_accounts_recent_times(replicas):
    account_id = await new_account(replicas[0])
    limits = history.AccountLimits(per_second=0, burst=1, concurrent=1)
    finished = await replicas[0].generations.admit(request(account_id), limits)
    await replicas[0].generations.mark_succeeded(finished, f"generations/test/{finished}.wav", 4, 1.0, "tiny-random", 1)
    async with replicas[0].pool().acquire() as connection:  # it took 30 s
        await connection.execute(
            "UPDATE generations SET create_time = end_time - interval '30 seconds' WHERE id = $1", finished
        )
    await replicas[0].generations.admit(request(account_id), limits)  # under way now
    with pytest.raises(ApiError) as caught:
        await replicas[1].generations.admit(request(account_id), limits)
    assert 25 < caught.value.retry_after <= 30


async def took(store: Store, generation_id: str, seconds: float) -> None:
    """Make a succeeded generation one that took `seconds` from admission to end."""
    async with store.pool().acquire() as connection:
        await connection.execute(
            "UPDATE generations SET create_time = end_time - make_interval(secs => $2) WHERE id = $1", generation_id, seconds
        )


async def admitted_ago(store: Store, generation_id: str, seconds: float) -> None:
    async with store.pool().acquire() as connection:
        await connection.execute(
            "UPDATE generations SET create_time = now() - make_interval(secs => $2) WHERE id = $1", generation_id, seconds
        )


async def succeeded(store: Store, account_id: int, seconds: float) -> None:
    """A generation of the account that succeeded after `seconds`."""
    unlimited = history.AccountLimits(per_second=0, burst=1, concurrent=0)
    finished = await store.generations.admit(request(account_id), unlimited)
    await store.generations.mark_succeeded(finished, f"generations/test/{finished}.wav", 4, 1.0, "tiny-random", 1)
    await took(store, finished, seconds)


async def test_a_refusal_for_concurrency_says_when_the_soonest_not_overdue_should_end(replicas):
    account_id = await new_account(replicas[0])
    await succeeded(replicas[0], account_id, 30)  # the account's generations take 30 s
    limits = history.AccountLimits(per_second=0, burst=1, concurrent=2)
    overdue = await replicas[0].generations.admit(request(account_id), limits)
    await admitted_ago(replicas[0], overdue, 600)  # stuck for 10 minutes: it says nothing of when a place frees up
    recent = await replicas[0].generations.admit(request(account_id), limits)
    await admitted_ago(replicas[0], recent, 10)  # should end in 20 s
    with pytest.raises(ApiError) as caught:
        await replicas[1].generations.admit(request(account_id), limits)
    assert 15 < caught.value.retry_after <= 20


async def test_a_refusal_for_concurrency_with_every_one_overdue_says_a_typical_duration(replicas):
    account_id = await new_account(replicas[0])
    await succeeded(replicas[0], account_id, 30)
    limits = history.AccountLimits(per_second=0, burst=1, concurrent=2)
    for ago in (600, 45):
        await admitted_ago(replicas[0], await replicas[0].generations.admit(request(account_id), limits), ago)
    with pytest.raises(ApiError) as caught:
        await replicas[1].generations.admit(request(account_id), limits)
    assert 29 < caught.value.retry_after <= 30


async def test_a_refusal_for_concurrency_of_an_account_without_history_goes_by_everyones(replicas):
    other = await new_account(replicas[0])
    for _ in range(20):  # anyone's last 20 took 40 s
        await succeeded(replicas[0], other, 40)
    account_id = await new_account(replicas[0])
    limits = history.AccountLimits(per_second=0, burst=1, concurrent=1)
    await replicas[0].generations.admit(request(account_id), limits)
    with pytest.raises(ApiError) as caught:
        await replicas[1].generations.admit(request(account_id), limits)
    assert 35 < caught.value.retry_after <= 40
