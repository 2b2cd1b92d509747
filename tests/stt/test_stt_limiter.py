"""Unit tests of the STT concurrency limiter: how many run, how many wait, who is refused."""

from __future__ import annotations

import asyncio
import threading

import pytest

from services.stt.limiter import ConcurrencyLimiter, LimiterFull


class Gate:
    """A blocking job whose threads wait until the test opens the gate."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.most_running = 0
        self.started = 0

    def job(self, value):
        with self.lock:
            self.started += 1
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        self.opened.wait(timeout=30)
        with self.lock:
            self.running -= 1
        return value


async def until(condition, what: str) -> None:
    """Let the loop and the worker threads progress until `condition()` holds."""
    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"never happened: {what}")


async def admitted_run(limiter: ConcurrencyLimiter, function, *args):
    async with limiter.admit():
        return await limiter.run(function, *args)


async def test_admits_concurrency_plus_queue_and_refuses_the_next_at_once():
    limiter = ConcurrencyLimiter(concurrency=2, queue=3)
    held = [limiter.admit() for _ in range(5)]
    for place in held:
        await place.__aenter__()
    assert limiter.admitted == 5
    with pytest.raises(LimiterFull):
        async with limiter.admit():
            pass
    # A place given back is a place for the next request.
    await held.pop().__aexit__(None, None, None)
    async with limiter.admit():
        assert limiter.admitted == 5
    for place in held:
        await place.__aexit__(None, None, None)
    assert limiter.admitted == 0
    limiter.close()


async def test_queue_zero_admits_only_the_running_ones():
    limiter = ConcurrencyLimiter(concurrency=1, queue=0)
    async with limiter.admit():
        with pytest.raises(LimiterFull):
            async with limiter.admit():
                pass
    limiter.close()


async def test_at_most_concurrency_jobs_run_at_once_and_all_finish():
    limiter = ConcurrencyLimiter(concurrency=2, queue=4)
    gate = Gate()
    tasks = [asyncio.create_task(admitted_run(limiter, gate.job, n)) for n in range(6)]
    await until(lambda: gate.running == 2, "two jobs running")
    assert limiter.running == 2 and gate.started == 2  # the other four wait for a slot
    gate.opened.set()
    assert await asyncio.gather(*tasks) == list(range(6))
    assert gate.most_running == 2
    assert limiter.admitted == 0
    limiter.close()


async def test_a_cancelled_caller_keeps_its_slot_until_its_thread_ends():
    limiter = ConcurrencyLimiter(concurrency=1, queue=1)
    gate = Gate()
    first = asyncio.create_task(admitted_run(limiter, gate.job, "first"))
    await until(lambda: gate.running == 1, "first job running")
    first.cancel()  # the client went away; its thread cannot be stopped
    with pytest.raises(asyncio.CancelledError):
        await first
    assert limiter.admitted == 0
    assert limiter.running == 1
    second = asyncio.create_task(admitted_run(limiter, gate.job, "second"))
    await until(lambda: limiter.admitted == 1, "second admitted")
    for _ in range(20):  # give a wrongly freed slot every chance to be taken
        await asyncio.sleep(0)
    assert limiter.running == 1 and gate.started == 1
    gate.opened.set()
    assert await second == "second"
    await until(lambda: limiter.running == 0, "both slots given back")
    assert gate.most_running == 1
    limiter.close()


async def test_a_failing_job_raises_to_its_caller_and_frees_its_slot():
    limiter = ConcurrencyLimiter(concurrency=1, queue=0)

    def broken():
        raise RuntimeError("model crashed")

    with pytest.raises(RuntimeError, match="model crashed"):
        await admitted_run(limiter, broken)
    assert await admitted_run(limiter, lambda: "next") == "next"
    limiter.close()


@pytest.mark.parametrize("concurrency, queue", [(0, 1), (1, -1)])
def test_refuses_a_bound_that_admits_nothing(concurrency, queue):
    with pytest.raises(ValueError):
        ConcurrencyLimiter(concurrency=concurrency, queue=queue)
