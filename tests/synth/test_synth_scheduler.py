"""The continuous-batching scheduler on the tiny Dia, in process: joining at the next step,
seeds, callers that leave, the frame budget, account turns, the bounded queue, the prompt cache."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from runtime.errors import ApiError
from services.synth import audio
from services.synth.engine import SynthesisInput
from services.synth.params import GenerationParams
from services.synth.prompts import PromptCache
from services.synth.scheduler import Scheduler
from tests.synth.helpers import noise_wav


def synthesis(frames: int = 40, seed: int | None = None, prompt: float | None = None, text="[S1] Hello.", **changes):
    params = GenerationParams(**{**dict(cfg_scale=3.0, temperature=1.8, top_p=0.95, cfg_filter_top_k=45,
                                        max_new_tokens=frames, speed_factor=1.0, seed=seed), **changes})  # fmt: skip
    samples = audio.read_prompt(noise_wav(prompt, seed=3), max_seconds=10) if prompt else None
    return SynthesisInput(text=text, prompt=samples, params=params, seed=seed if seed is not None else 7)


@pytest.fixture
async def scheduler_with(engine):
    made = []

    async def make(max_rows=4, max_queue=8, max_frames=100_000, window_seconds=0.0, cache_bytes=1 << 20):
        scheduler = Scheduler(max_rows, window_seconds, max_queue, max_frames, cache_bytes)
        scheduler.start(engine)
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        await scheduler.close()


async def wait_until(condition, timeout=60) -> None:
    async with asyncio.timeout(timeout):  # a guard against hanging, not a performance bound
        while not condition():
            await asyncio.sleep(0.002)


async def test_a_request_arriving_mid_generation_joins_at_the_next_step_and_leaves_when_done(scheduler_with):
    scheduler = await scheduler_with()
    long = asyncio.create_task(scheduler.submit(synthesis(frames=400)))
    await wait_until(lambda: scheduler.steps >= 20)
    joined_at = scheduler.steps
    short = await scheduler.submit(synthesis(frames=30))
    assert short.generated_frames == 30
    # It ran beside the long one (a static batch would have made it wait for all 400 frames) ...
    assert not long.done()
    assert scheduler.steps - joined_at <= 30 + 2
    assert (await long).generated_frames == 400


async def test_requests_of_any_settings_with_and_without_prompts_share_the_batch(scheduler_with):
    scheduler = await scheduler_with(max_rows=4)
    requests = [
        synthesis(frames=50, temperature=0.0),
        synthesis(frames=60, cfg_scale=1.5, top_p=0.5, cfg_filter_top_k=5),
        synthesis(frames=70, prompt=0.5, text="[S1] Prompt words. [S1] New words."),
        synthesis(frames=40, temperature=0.3, cfg_filter_top_k=1),
    ]
    results = await asyncio.gather(*(scheduler.submit(r) for r in requests))
    assert [r.generated_frames for r in results] == [50, 60, 70, 40]
    assert scheduler.steps <= 70 + 2  # all together: the longest sets the number of steps


async def test_a_seeded_request_is_byte_identical_alone_and_under_concurrent_load(scheduler_with):
    scheduler = await scheduler_with(max_rows=6)
    seeded = synthesis(frames=60, seed=11, temperature=1.0)
    alone = await scheduler.submit(seeded)
    crowd = [synthesis(frames=f, temperature=1.0) for f in (40, 80, 100)]
    together = await asyncio.gather(scheduler.submit(seeded), *(scheduler.submit(r) for r in crowd))
    assert torch.equal(together[0].codes, alone.codes)
    assert np.array_equal(together[0].samples, alone.samples)
    again = await scheduler.submit(seeded)
    assert np.array_equal(again.samples, alone.samples)
    other = await scheduler.submit(synthesis(frames=60, seed=12, temperature=1.0))
    assert not torch.equal(other.codes, alone.codes)


async def test_a_caller_that_goes_away_leaves_within_a_step_and_its_slot_is_reused(scheduler_with):
    scheduler = await scheduler_with(max_rows=2, max_queue=1)
    bystander = asyncio.create_task(scheduler.submit(synthesis(frames=200)))
    leaving = asyncio.create_task(scheduler.submit(synthesis(frames=3000)))
    await wait_until(lambda: scheduler.steps >= 5)
    waiting = asyncio.create_task(scheduler.submit(synthesis(frames=30)))
    await wait_until(lambda: scheduler.load == 3)
    at_cancel = scheduler.steps
    leaving.cancel()
    result = await waiting  # took the freed slot
    assert result.generated_frames == 30
    # The step under way when it left, then the waiting one's 30: the 3000-frame row ran no further.
    assert scheduler.steps - at_cancel <= 1 + 30 + 1
    assert (await bystander).generated_frames == 200  # the row beside it went on
    assert scheduler.load == 0


async def test_past_the_frame_budget_a_request_waits_for_room(scheduler_with):
    # Each request reserves bos + its 100 frames: two fit in 202 frames, not in 201.
    for budget, together in ((202, True), (201, False)):
        scheduler = await scheduler_with(max_rows=4, max_frames=budget)
        first = asyncio.create_task(scheduler.submit(synthesis(frames=100)))
        await wait_until(lambda: scheduler.steps >= 1)
        second = asyncio.create_task(scheduler.submit(synthesis(frames=100)))
        assert (await second).generated_frames == 100
        # Beside the first, it ends about 100 steps in; after it, 200 steps in.
        assert (scheduler.steps < 150) is together, (budget, scheduler.steps)
        assert (await first).generated_frames == 100
    # One request alone always runs, even past the budget.
    assert (await scheduler.submit(synthesis(frames=300))).generated_frames == 300


async def test_another_accounts_request_takes_the_next_free_slot_before_a_backlog(scheduler_with):
    scheduler = await scheduler_with(max_rows=1, max_queue=8)
    order = []

    async def generate(account: str, name: str):
        await scheduler.submit(synthesis(frames=20), account)
        order.append(name)

    backlog = [asyncio.create_task(generate("a", f"a{n}")) for n in range(3)]
    await wait_until(lambda: scheduler.steps >= 1)
    newcomer = asyncio.create_task(generate("b", "b0"))
    await asyncio.gather(*backlog, newcomer)
    assert order == ["a0", "b0", "a1", "a2"]


async def test_a_full_queue_is_refused_as_busy_with_a_retry_estimate(scheduler_with):
    scheduler = await scheduler_with(max_rows=1, max_queue=1)
    running = [asyncio.create_task(scheduler.submit(synthesis(frames=2000))) for _ in range(2)]
    await wait_until(lambda: scheduler.load == 2)
    with pytest.raises(ApiError) as caught:
        await scheduler.submit(synthesis())
    assert caught.value.reason == "SYNTH_BUSY" and caught.value.retry_after >= 1
    for task in running:
        task.cancel()
    await wait_until(lambda: scheduler.load == 0)


async def test_the_same_voice_prompt_is_encoded_once(scheduler_with):
    scheduler = await scheduler_with()
    text = "[S1] Prompt words. [S1] New words."
    first = await scheduler.submit(synthesis(frames=30, prompt=0.5, text=text, temperature=0.0))
    again = await scheduler.submit(synthesis(frames=30, prompt=0.5, text=text, temperature=0.0))
    assert (scheduler.prompt_cache.misses, scheduler.prompt_cache.hits) == (1, 1)
    assert torch.equal(first.codes, again.codes)  # the cached codes are the ones the codec gave


def test_the_prompt_cache_drops_the_least_recently_used_past_its_bytes():
    cache = PromptCache(max_bytes=3 * 100 * 9 * 2)  # three prompts of 100 frames (int16 codes)
    codes = {name: torch.zeros((100, 9), dtype=torch.int16) for name in "abcd"}
    for name in "abc":
        cache.put(name.encode(), codes[name])
    assert cache.get(b"a") is not None  # a is now the most recently used
    cache.put(b"d", codes["d"])
    assert cache.get(b"b") is None and cache.get(b"c") is not None and cache.get(b"a") is not None
    assert cache.bytes == 3 * 100 * 9 * 2
    cache.put(b"huge", torch.zeros((1000, 9), dtype=torch.int16))  # larger than the whole cache: not kept
    assert cache.get(b"huge") is None and cache.bytes == 3 * 100 * 9 * 2
