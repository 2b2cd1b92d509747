"""Dynamic batching: which requests share a generate call, the bounded queue, callers that leave.

The batcher is tested with a stand-in for the engine's generate function
(the model itself is exercised in test_synth_engine.py and end to end).
"""

from __future__ import annotations

import asyncio
import collections
import threading

import grpc
import numpy as np
import pytest

from runtime.errors import ApiError
from services.synth.batching import Batcher, Job, Turns, take_batch
from services.synth.engine import Generated, SynthesisInput
from services.synth.params import GenerationParams

PARAMS = GenerationParams(3.0, 1.8, 0.95, 45, 100, 1.0, None)


def synthesis(seed: int | None = None, prompt: bool = False, **changes) -> SynthesisInput:
    params = GenerationParams(**{**PARAMS.__dict__, "seed": seed, **changes})
    return SynthesisInput(
        text="[S1] hi", prompt=np.zeros(512, np.float32) if prompt else None, params=params, seed=seed or 7
    )


def job(name: str, account: str = "", **kwargs) -> Job:
    made = Job(synthesis(**kwargs), future=None, account=account)  # take_batch never touches the future
    made.name = name
    return made


def names(jobs) -> list[str]:
    return [j.name for j in jobs]


def test_the_oldest_job_leads_and_compatible_later_ones_join_up_to_the_batch_size():
    pending = collections.deque(
        [job("a"), job("b", temperature=0.0), job("c"), job("d"), job("e"), job("f")]
    )
    assert names(take_batch(pending, 3)) == ["a", "c", "d"]
    assert names(pending) == ["b", "e", "f"]  # order kept for the next batches
    assert names(take_batch(pending, 3)) == ["b"]
    assert names(take_batch(pending, 3)) == ["e", "f"]
    assert take_batch(pending, 3) == [] and not pending


def test_a_seeded_job_is_generated_alone_and_never_joins_another():
    pending = collections.deque([job("a", seed=5), job("b"), job("c", seed=6), job("d")])
    assert names(take_batch(pending, 4)) == ["a"]
    assert names(take_batch(pending, 4)) == ["b", "d"]
    assert names(take_batch(pending, 4)) == ["c"]


def test_jobs_with_and_without_a_prompt_are_not_mixed():
    pending = collections.deque([job("a", prompt=True), job("b"), job("c", prompt=True)])
    assert names(take_batch(pending, 4)) == ["a", "c"]
    assert names(take_batch(pending, 4)) == ["b"]


def test_speed_factor_does_not_split_a_batch():
    pending = collections.deque([job("a", speed_factor=0.5), job("b", speed_factor=2.0)])
    assert names(take_batch(pending, 4)) == ["a", "b"]


# --- fair turns between accounts ------------------------------------------------


def test_one_accounts_backlog_does_not_hold_up_anothers_first_request():
    turns = Turns()
    pending = collections.deque(job(f"a{n}", account="a") for n in range(12))
    assert names(take_batch(pending, 4, turns)) == ["a0", "a1", "a2", "a3"]
    pending.append(job("b0", account="b"))  # arrives while a's first batch runs
    # The very next batch: b has not been served yet, so it leads.
    assert names(take_batch(pending, 4, turns)) == ["b0", "a4", "a5", "a6"]
    assert names(take_batch(pending, 4, turns)) == ["a7", "a8", "a9", "a10"]


def test_a_batch_is_filled_one_account_at_a_time():
    turns = Turns()
    pending = collections.deque(
        [job("a0", account="a"), job("a1", account="a"), job("a2", account="a"), job("b0", account="b"),
         job("c0", account="c"), job("b1", account="b")]
    )  # fmt: skip
    assert names(take_batch(pending, 4, turns)) == ["a0", "b0", "c0", "a1"]
    # a and b were both served last time: the one waiting longest leads.
    assert names(take_batch(pending, 4, turns)) == ["a2", "b1"]


def test_a_newcomers_request_with_other_settings_leads_the_next_batch_alone():
    turns = Turns()
    pending = collections.deque(job(f"a{n}", account="a") for n in range(8))
    take_batch(pending, 4, turns)
    pending.append(job("b0", account="b", temperature=0.5))
    assert names(take_batch(pending, 4, turns)) == ["b0"]
    assert names(take_batch(pending, 4, turns)) == ["a4", "a5", "a6", "a7"]


def test_accounts_that_keep_sending_share_the_batches_equally():
    turns = Turns()
    pending = collections.deque()
    taken = collections.Counter()
    for round_ in range(20):
        for account in "abc":  # each always has two waiting, a far more
            while sum(j.account == account for j in pending) < (10 if account == "a" else 2):
                pending.append(job(f"{account}{round_}", account=account))
        taken.update(j.account for j in take_batch(pending, 3, turns))
    assert taken == {"a": 20, "b": 20, "c": 20}


async def test_a_full_queue_says_when_to_try_again_from_how_fast_it_drains(batcher_with):
    generate = FakeGenerate()
    batcher = await batcher_with(generate, max_batch_size=2, window_seconds=0, max_queue=0)
    await asyncio.gather(*(batcher.submit(synthesis()) for _ in range(2)))  # 2 finished: a rate to go by
    generate.gate.clear()
    running = [asyncio.create_task(batcher.submit(synthesis(), account="a")) for _ in range(2)]
    await wait_until(lambda: batcher.load == 2)
    with pytest.raises(ApiError) as caught:
        await batcher.submit(synthesis(), account="b")
    assert caught.value.reason == "SYNTH_BUSY"
    rate = batcher.throughput.per_second()
    assert caught.value.retry_after == pytest.approx(min(max(2 / rate, 1), 60))
    generate.gate.set()
    await asyncio.gather(*running)


async def test_before_anything_finished_a_full_queue_still_says_when_to_try_again(batcher_with):
    generate = FakeGenerate()
    generate.gate.clear()
    batcher = await batcher_with(generate, max_batch_size=1, max_queue=0)
    running = asyncio.create_task(batcher.submit(synthesis()))
    await wait_until(lambda: batcher.load == 1)
    with pytest.raises(ApiError) as caught:
        await batcher.submit(synthesis())
    assert caught.value.retry_after == 1.0
    generate.gate.set()
    await running


class FakeGenerate:
    """Records each call; blocks while `gate` is clear, as a long generation would."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.saw_stop = threading.Event()
        self.error: Exception | None = None

    def __call__(self, batch, should_stop):
        self.calls.append(len(batch))
        self.started.set()
        while not self.gate.wait(0.01):
            if should_stop():
                self.saw_stop.set()
                break
        if self.error is not None:
            raise self.error
        return [Generated(np.zeros(512, np.float32), 17, None) for _ in batch]


@pytest.fixture
async def batcher_with():
    made = []

    async def make(generate, max_batch_size=4, window_seconds=0.05, max_queue=16):
        batcher = Batcher(max_batch_size, window_seconds, max_queue)
        batcher.start(generate)
        made.append(batcher)
        return batcher

    yield make
    for batcher in made:
        await batcher.close()


async def wait_until(condition) -> None:
    while not condition():
        await asyncio.sleep(0.005)


async def test_requests_arriving_together_share_one_generate_call(batcher_with):
    generate = FakeGenerate()
    batcher = await batcher_with(generate)
    results = await asyncio.gather(*(batcher.submit(synthesis()) for _ in range(4)))
    assert generate.calls == [4]
    assert all(result.generated_frames == 17 for result in results)


async def test_requests_arriving_during_a_generation_gather_for_the_next_one(batcher_with):
    generate = FakeGenerate()
    generate.gate.clear()
    batcher = await batcher_with(generate, max_batch_size=2)
    first = asyncio.create_task(batcher.submit(synthesis()))
    await asyncio.to_thread(generate.started.wait)
    rest = [asyncio.create_task(batcher.submit(synthesis())) for _ in range(3)]
    await wait_until(lambda: batcher.load == 4)
    generate.gate.set()
    await asyncio.gather(first, *rest)
    assert generate.calls == [1, 2, 1]


async def test_past_the_queue_limit_requests_are_refused_at_once(batcher_with):
    generate = FakeGenerate()
    generate.gate.clear()
    batcher = await batcher_with(generate, max_batch_size=1, max_queue=1)
    running = asyncio.create_task(batcher.submit(synthesis()))
    await asyncio.to_thread(generate.started.wait)
    waiting = asyncio.create_task(batcher.submit(synthesis()))
    await wait_until(lambda: batcher.load == 2)

    with pytest.raises(ApiError) as caught:
        await batcher.submit(synthesis())
    assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "SYNTH_BUSY")
    assert batcher.load == 2  # the refusal took no place

    generate.gate.set()
    await asyncio.gather(running, waiting)
    assert batcher.load == 0
    await batcher.submit(synthesis())  # room again


async def test_a_caller_that_leaves_the_queue_frees_its_place_at_once(batcher_with):
    generate = FakeGenerate()
    generate.gate.clear()
    batcher = await batcher_with(generate, max_batch_size=1, max_queue=1)
    running = asyncio.create_task(batcher.submit(synthesis()))
    await asyncio.to_thread(generate.started.wait)
    waiting = asyncio.create_task(batcher.submit(synthesis()))
    await wait_until(lambda: batcher.load == 2)
    waiting.cancel()
    await wait_until(lambda: batcher.load == 1)
    replacement = asyncio.create_task(batcher.submit(synthesis()))
    generate.gate.set()
    await asyncio.gather(running, replacement)
    assert generate.calls == [1, 1]  # the cancelled request was never generated


async def test_a_generation_whose_callers_all_left_is_told_to_stop(batcher_with):
    generate = FakeGenerate()
    generate.gate.clear()
    batcher = await batcher_with(generate)
    callers = [asyncio.create_task(batcher.submit(synthesis())) for _ in range(2)]
    await asyncio.to_thread(generate.started.wait)
    callers[0].cancel()
    await asyncio.sleep(0.05)
    assert not generate.saw_stop.is_set()  # one caller is still waiting for it
    callers[1].cancel()
    assert await asyncio.to_thread(generate.saw_stop.wait, 10)
    await wait_until(lambda: batcher.load == 0)


async def test_a_failed_generation_fails_each_of_its_callers_and_the_next_batch_runs(batcher_with):
    generate = FakeGenerate()
    generate.error = RuntimeError("out of memory")
    batcher = await batcher_with(generate)
    results = await asyncio.gather(*(batcher.submit(synthesis()) for _ in range(2)), return_exceptions=True)
    assert [type(r) for r in results] == [RuntimeError, RuntimeError]
    generate.error = None
    assert (await batcher.submit(synthesis())).generated_frames == 17


async def test_requests_gathering_for_a_batch_do_not_use_up_the_queue(batcher_with):
    generate = FakeGenerate()
    batcher = await batcher_with(generate, max_batch_size=2, window_seconds=0.2, max_queue=0)
    results = await asyncio.gather(*(batcher.submit(synthesis()) for _ in range(3)), return_exceptions=True)
    assert [type(r).__name__ for r in results] == ["Generated", "Generated", "ApiError"]
    assert results[2].reason == "SYNTH_BUSY"
    assert generate.calls == [2]


async def test_a_row_the_engine_could_not_generate_fails_alone(batcher_with):
    refused = ApiError(grpc.StatusCode.INTERNAL, "GENERATION_FAILED", "no token left")

    def generate(batch, should_stop):
        return [refused if item.seed == 2 else Generated(np.zeros(512, np.float32), 17, None) for item in batch]

    batcher = await batcher_with(generate)
    results = await asyncio.gather(*(batcher.submit(_unseeded(n)) for n in (1, 2, 3)), return_exceptions=True)
    assert [type(r) for r in results] == [Generated, ApiError, Generated]


async def test_a_batch_that_fails_as_a_whole_is_retried_one_request_at_a_time(batcher_with):
    calls = []

    def generate(batch, should_stop):
        calls.append([item.seed for item in batch])
        if any(item.seed == 2 for item in batch):
            raise RuntimeError("the request with seed 2 breaks any batch it is in")
        return [Generated(np.zeros(512, np.float32), 17, None) for _ in batch]

    batcher = await batcher_with(generate)
    results = await asyncio.gather(*(batcher.submit(_unseeded(n)) for n in (1, 2, 3)), return_exceptions=True)
    assert [type(r) for r in results] == [Generated, RuntimeError, Generated]
    assert calls == [[1, 2, 3], [1], [2], [3]]


def _unseeded(seed: int) -> SynthesisInput:
    """An unseeded request (so it batches) whose sampling seed is `seed`."""
    return SynthesisInput(text="[S1] hi", prompt=None, params=PARAMS, seed=seed)
