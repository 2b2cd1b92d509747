"""The engine on the tiny Dia, in process: what a request gets back, joining at the next step,
seeds, callers that leave, the frame budget, account turns, the bounded queue, the prompt cache,
steps that fail, rows decoded beside the loop, streamed rows not decoded again."""

from __future__ import annotations

import asyncio
import dataclasses
import threading

import numpy as np
import prometheus_client
import pytest
import torch

from runtime.errors import ApiError
from services.synth import audio
from services.synth.audio import SAMPLES_PER_FRAME
from services.synth.engine.core import SynthEngine
from services.synth.engine.prompts import CachedPrompt, PromptCache
from services.synth.engine.request import SynthesisInput
from services.synth.engine.streaming import STARTED_OVER, FrameFeed
from services.synth.params import GenerationParams
from tests.synth.helpers import fail_decode_steps, noise_wav


def synthesis(frames: int = 40, seed: int | None = None, prompt: float | None = None, text="[S1] Hello.", **changes):
    params = GenerationParams(**{**dict(cfg_scale=3.0, temperature=1.8, top_p=0.95, cfg_filter_top_k=45,
                                        max_new_tokens=frames, speed_factor=1.0, seed=seed), **changes})  # fmt: skip
    samples = audio.read_prompt(noise_wav(prompt, seed=3), max_seconds=10) if prompt else None
    return SynthesisInput(text=text, prompt=samples, params=params, seed=seed if seed is not None else 7)


@pytest.fixture
async def engine_with(dia):
    made = []

    async def make(max_rows=4, max_queue=8, max_frames=100_000, window_seconds=0.0, cache_bytes=1 << 20, retries=1):
        engine = SynthEngine(max_rows, window_seconds, max_queue, max_frames, cache_bytes, retries)
        engine.start(dia)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        await engine.close()


async def wait_until(condition, timeout=60) -> None:
    async with asyncio.timeout(timeout):  # a guard against hanging, not a performance bound
        while not condition():
            await asyncio.sleep(0.002)


AUDIO_FRAMES = 60 - 16
PROMPTED = "[S1] Prompt words. [S1] New words."


async def test_a_generation_has_max_new_tokens_frames_and_512_samples_per_audio_frame(engine_with):
    engine = await engine_with()
    result = await engine.submit(synthesis(frames=60, seed=3))
    assert result.generated_frames == 60
    assert result.codes.shape == (AUDIO_FRAMES, 9)
    assert ((0 <= result.codes) & (result.codes < 1024)).all()  # real codes: no bos/pad/eos left
    assert result.samples.dtype == np.float32 and result.samples.size == AUDIO_FRAMES * SAMPLES_PER_FRAME


async def test_prompts_of_different_lengths_share_the_batch_and_only_new_audio_comes_back(engine_with):
    engine = await engine_with()
    requests = [synthesis(frames=60, prompt=seconds, text=PROMPTED, temperature=0.0) for seconds in (0.4, 1.3)]
    together = await asyncio.gather(*(engine.submit(r) for r in requests))
    for request, result in zip(requests, together):
        assert result.generated_frames == 60
        assert result.samples.size == AUDIO_FRAMES * SAMPLES_PER_FRAME  # the prompt is cut off
        assert torch.equal(result.codes, (await engine.submit(request)).codes)  # as alone


async def test_the_prompt_conditions_the_generation(engine_with):
    engine = await engine_with()
    with_prompt = await engine.submit(synthesis(frames=60, prompt=0.5, text=PROMPTED, temperature=0.0))
    without = await engine.submit(synthesis(frames=60, text=PROMPTED, temperature=0.0))
    assert not torch.equal(with_prompt.codes, without.codes)


async def test_a_request_arriving_mid_generation_joins_at_the_next_step_and_leaves_when_done(engine_with):
    engine = await engine_with()
    long = asyncio.create_task(engine.submit(synthesis(frames=400)))
    await wait_until(lambda: engine.steps >= 20)
    joined_at = engine.steps
    short = asyncio.create_task(engine.submit(synthesis(frames=30)))
    await wait_until(lambda: counted("synth_rows_active") == 2)
    await wait_until(lambda: counted("synth_rows_active") == 1)  # its row left (its audio is decoded beside)
    left_at = engine.steps
    assert (await short).generated_frames == 30
    # It ran beside the long one (a static batch would have made it wait for all 400 frames) ...
    assert not long.done()
    assert left_at - joined_at <= 30 + 3
    assert (await long).generated_frames == 400


async def test_requests_of_any_settings_with_and_without_prompts_share_the_batch(engine_with):
    engine = await engine_with(max_rows=4)
    requests = [
        synthesis(frames=50, temperature=0.0),
        synthesis(frames=60, cfg_scale=1.5, top_p=0.5, cfg_filter_top_k=5),
        synthesis(frames=70, prompt=0.5, text="[S1] Prompt words. [S1] New words."),
        synthesis(frames=40, temperature=0.3, cfg_filter_top_k=1),
    ]
    results = await asyncio.gather(*(engine.submit(r) for r in requests))
    assert [r.generated_frames for r in results] == [50, 60, 70, 40]
    assert engine.steps <= 70 + 2  # all together: the longest sets the number of steps


async def test_a_seeded_request_is_byte_identical_alone_and_under_concurrent_load(engine_with):
    engine = await engine_with(max_rows=6)
    seeded = synthesis(frames=60, seed=11, temperature=1.0)
    alone = await engine.submit(seeded)
    crowd = [synthesis(frames=f, temperature=1.0) for f in (40, 80, 100)]
    together = await asyncio.gather(engine.submit(seeded), *(engine.submit(r) for r in crowd))
    assert torch.equal(together[0].codes, alone.codes)
    assert np.array_equal(together[0].samples, alone.samples)
    again = await engine.submit(seeded)
    assert np.array_equal(again.samples, alone.samples)
    other = await engine.submit(synthesis(frames=60, seed=12, temperature=1.0))
    assert not torch.equal(other.codes, alone.codes)


async def test_a_caller_that_goes_away_leaves_within_a_step_and_its_slot_is_reused(engine_with):
    engine = await engine_with(max_rows=2, max_queue=1)
    bystander = asyncio.create_task(engine.submit(synthesis(frames=200)))
    leaving = asyncio.create_task(engine.submit(synthesis(frames=3000)))
    await wait_until(lambda: engine.steps >= 5)
    waiting = asyncio.create_task(engine.submit(synthesis(frames=30)))
    await wait_until(lambda: engine.load == 3)
    at_cancel = engine.steps
    leaving.cancel()
    await wait_until(lambda: counted("synth_rows_active") == 1)  # the waiting one's row, beside the bystander, left
    left_at = engine.steps
    result = await waiting  # took the freed slot
    assert result.generated_frames == 30
    # The step under way when it left, then the waiting one's 30: the 3000-frame row ran no further.
    assert left_at - at_cancel <= 1 + 30 + 2
    assert (await bystander).generated_frames == 200  # the row beside it went on
    assert engine.load == 0


async def test_past_the_frame_budget_a_request_waits_for_room(engine_with):
    # Each request reserves bos + its 100 frames: two fit in 202 frames, not in 201.
    for budget, together in ((202, True), (201, False)):
        engine = await engine_with(max_rows=4, max_frames=budget)
        first = asyncio.create_task(engine.submit(synthesis(frames=100)))
        await wait_until(lambda: engine.steps >= 1)
        second = asyncio.create_task(engine.submit(synthesis(frames=100)))
        assert (await second).generated_frames == 100
        # Beside the first, it ends about 100 steps in; after it, 200 steps in.
        assert (engine.steps < 150) is together, (budget, engine.steps)
        assert (await first).generated_frames == 100
    # One request alone always runs, even past the budget.
    assert (await engine.submit(synthesis(frames=300))).generated_frames == 300


async def test_another_accounts_request_takes_the_next_free_slot_before_a_backlog(engine_with):
    engine = await engine_with(max_rows=1, max_queue=8)
    order = []

    async def generate(account: str, name: str):
        await engine.submit(synthesis(frames=20), account)
        order.append(name)

    backlog = [asyncio.create_task(generate("a", f"a{n}")) for n in range(3)]
    await wait_until(lambda: engine.steps >= 1)
    newcomer = asyncio.create_task(generate("b", "b0"))
    await asyncio.gather(*backlog, newcomer)
    assert order == ["a0", "b0", "a1", "a2"]


async def test_a_full_queue_is_refused_as_busy_with_a_retry_estimate(engine_with):
    engine = await engine_with(max_rows=1, max_queue=1)
    running = [asyncio.create_task(engine.submit(synthesis(frames=2000))) for _ in range(2)]
    await wait_until(lambda: engine.load == 2)
    with pytest.raises(ApiError) as caught:
        await engine.submit(synthesis())
    assert caught.value.reason == "SYNTH_BUSY" and caught.value.retry_after >= 1
    for task in running:
        task.cancel()
    await wait_until(lambda: engine.load == 0)


async def test_the_same_voice_prompt_is_encoded_once(engine_with):
    engine = await engine_with()
    text = "[S1] Prompt words. [S1] New words."
    first = await engine.submit(synthesis(frames=30, prompt=0.5, text=text, temperature=0.0))
    again = await engine.submit(synthesis(frames=30, prompt=0.5, text=text, temperature=0.0))
    assert (engine.prompt_cache.misses, engine.prompt_cache.hits) == (1, 1)
    assert torch.equal(first.codes, again.codes)  # the cached codes are the ones the codec gave


def test_the_prompt_cache_drops_the_least_recently_used_past_its_bytes():
    cache = PromptCache(max_bytes=3 * 100 * 9 * 2)  # three prompts of 100 frames (int16 codes)
    codes = {name: torch.zeros((100, 9), dtype=torch.int16) for name in "abcd"}
    for name in "abc":
        cache.put(name.encode(), CachedPrompt(codes[name], ""))
    assert cache.get(b"a") is not None  # a is now the most recently used
    cache.put(b"d", CachedPrompt(codes["d"], ""))
    assert cache.get(b"b") is None and cache.get(b"c") is not None and cache.get(b"a") is not None
    assert cache.bytes == 3 * 100 * 9 * 2
    cache.put(b"huge", CachedPrompt(torch.zeros((1000, 9), dtype=torch.int16), ""))  # larger than the whole cache: not kept
    assert cache.get(b"huge") is None and cache.bytes == 3 * 100 * 9 * 2


# --- steps that fail, and the codec beside the loop -----------------------------------------------------


def counted(name: str) -> float:
    return prometheus_client.REGISTRY.get_sample_value(name) or 0.0


async def test_a_failing_step_is_retried_alone_so_only_the_request_at_fault_fails(engine_with, dia, monkeypatch):
    engine = await engine_with(max_rows=4)
    others = [synthesis(frames=40, temperature=0.0), synthesis(frames=60, temperature=0.0, cfg_scale=2.0)]
    expected = await asyncio.gather(*(engine.submit(r) for r in others))
    # The request at fault has a 2 s voice prompt (172 frames): the model fails whenever a step feeds
    # a position past 150, which only its row reaches (the others stop at 60).
    at_fault = synthesis(frames=40, temperature=0.0, prompt=2.0, text=PROMPTED)
    raised = fail_decode_steps(monkeypatch, lambda call, position: position > 150)
    failures, retried = counted("synth_step_failures_total"), counted("synth_rows_retried_total")

    results = await asyncio.gather(engine.submit(at_fault), *(engine.submit(r) for r in others),
                                   return_exceptions=True)  # fmt: skip
    assert isinstance(results[0], ApiError) and results[0].reason == "GENERATION_FAILED"
    assert "retried alone" in results[0].message and "injected" not in results[0].message
    for result, reference in zip(results[1:], expected):  # retried alone: the same audio
        assert torch.equal(result.codes, reference.codes)
        assert np.array_equal(result.samples, reference.samples)
    # The shared batch's step failed with all three in it; then the one at fault, alone.
    assert len(raised) == 2
    assert counted("synth_step_failures_total") - failures == 2
    assert counted("synth_rows_retried_total") - retried == 3
    # The loop goes on serving, beside and after it.
    after = await engine.submit(others[0])
    assert torch.equal(after.codes, expected[0].codes)
    assert engine.load == 0


async def test_without_retries_every_request_of_a_failed_step_fails_with_it(engine_with, dia, monkeypatch):
    engine = await engine_with(max_rows=4, retries=0)
    requests = [synthesis(frames=f, temperature=0.0) for f in (30, 50)]
    raised = fail_decode_steps(monkeypatch, lambda call, position: call == 3)
    retried = counted("synth_rows_retried_total")
    results = await asyncio.gather(*(engine.submit(r) for r in requests), return_exceptions=True)
    assert raised == [3] and counted("synth_rows_retried_total") == retried
    assert all(isinstance(r, ApiError) and r.reason == "GENERATION_FAILED" for r in results)
    assert (await engine.submit(requests[0])).generated_frames == 30  # and it goes on serving


def queued(feed: FrameFeed) -> list:
    return [feed.queue.get_nowait() for _ in range(feed.queue.qsize())]


async def test_a_step_that_fails_once_costs_no_request_its_audio_nor_a_stream_that_sent_none(
    engine_with, dia, monkeypatch
):
    engine = await engine_with(max_rows=6)
    loop = asyncio.get_running_loop()
    requests = [synthesis(frames=f, temperature=0.0, text=f"[S1] Number {f}.") for f in (30, 50, 70)]
    expected = await asyncio.gather(*(engine.submit(r) for r in requests))
    streamed = synthesis(frames=60, temperature=0.0, text="[S1] Streamed.")
    reference_feed = FrameFeed(loop)
    reference = await engine.submit(dataclasses.replace(streamed, on_frames=reference_feed))
    reference_frames = torch.cat(queued(reference_feed))
    raised = fail_decode_steps(monkeypatch, lambda call, position: call == 5)
    retried = counted("synth_rows_retried_total")

    unsent, sent = FrameFeed(loop), FrameFeed(loop)
    sent.audio_sent = True  # as if its first chunk had gone to its caller
    streams = [asyncio.ensure_future(engine.submit(dataclasses.replace(streamed, on_frames=feed)))
               for feed in (unsent, sent)]  # fmt: skip
    results = await asyncio.gather(*(engine.submit(r) for r in requests))
    assert raised == [5]
    assert counted("synth_rows_retried_total") - retried == 5
    for result, reference_result in zip(results, expected):  # retried alone: the same audio
        assert torch.equal(result.codes, reference_result.codes)
        assert np.array_equal(result.samples, reference_result.samples)
    # No audio had reached its caller: the stream follows the new take, whole, after a marker.
    assert torch.equal((await streams[0]).codes, reference.codes)
    frames = queued(unsent)
    assert sum(item is STARTED_OVER for item in frames) == 1
    marker = next(n for n, item in enumerate(frames) if item is STARTED_OVER)
    assert torch.equal(torch.cat(frames[marker + 1 :]), reference_frames)
    # Audio had: it fails, saying so, rather than send a new take.
    with pytest.raises(ApiError) as caught:
        await streams[1]
    assert caught.value.reason == "GENERATION_FAILED" and "streamed" in caught.value.message
    assert not any(item is STARTED_OVER for item in queued(sent))
    assert engine.load == 0


async def test_a_streamed_request_is_not_decoded_again_whole(engine_with, dia, monkeypatch):
    engine = await engine_with()
    codec = dia.processor.audio_tokenizer
    decode, decoded_frames = codec.decode, []

    def counting_decode(*, audio_codes, **kwargs):
        decoded_frames.append(audio_codes.shape[-1])
        return decode(audio_codes=audio_codes, **kwargs)

    monkeypatch.setattr(codec, "decode", counting_decode)
    whole = await engine.submit(synthesis(frames=80, seed=31, temperature=0.0))
    assert decoded_frames == [80 - 16]  # the unstreamed request: its audio frames, decoded once
    steps: list[torch.Tensor] = []
    streamed = dataclasses.replace(
        synthesis(frames=80, seed=31, temperature=0.0), on_frames=lambda codes, start: steps.append(codes.clone())
    )
    result = await engine.submit(streamed)
    assert decoded_frames == [80 - 16]  # its chunks are the stream's to decode (streaming.py): not again here
    assert result.samples is None
    # What the stream's last message reports is there without decoding: the frames, the codes.
    assert result.generated_frames == whole.generated_frames
    assert torch.equal(result.codes, whole.codes)
    assert len(steps) >= 80 - 1


@pytest.fixture
async def loop_errors():
    """What the event loop's exception handler is handed meanwhile (errors in callbacks)."""
    loop, errors = asyncio.get_running_loop(), []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    yield errors
    loop.set_exception_handler(None)


async def test_rows_are_decoded_beside_the_loop_and_a_caller_may_leave_meanwhile(
    engine_with, dia, monkeypatch, loop_errors
):
    engine = await engine_with()
    codec = dia.processor.audio_tokenizer
    decode, decoding, release = codec.decode, threading.Event(), threading.Event()

    def held_decode(*args, **kwargs):
        decoding.set()
        release.wait(60)
        return decode(*args, **kwargs)

    monkeypatch.setattr(codec, "decode", held_decode)
    long = asyncio.create_task(engine.submit(synthesis(frames=300)))
    short = asyncio.create_task(engine.submit(synthesis(frames=20)))
    await wait_until(decoding.is_set)  # the short one ended: its audio is being decoded
    held_at = engine.steps
    await wait_until(lambda: engine.steps >= held_at + 20)  # ... and the long one's steps go on meanwhile
    assert not short.done() and engine.load == 2
    short.cancel()
    release.set()
    assert (await long).generated_frames == 300
    with pytest.raises(asyncio.CancelledError):
        await short
    await wait_until(lambda: engine.load == 0)
    assert (await engine.submit(synthesis(frames=20))).generated_frames == 20
    assert not loop_errors  # (setting the result of a caller gone would have raised InvalidStateError)
