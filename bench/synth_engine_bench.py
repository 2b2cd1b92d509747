"""Benchmark: the continuous-batching engine against the static batcher it replaced.

Two measurements, each printed side by side with its ratio:

* mixed traffic (tiny model): requests arrive at random (Poisson), 128–1024
  frames each, with mixed cfg_scale / temperature / top_p / cfg_filter_top_k;
  the same trace is served by the new scheduler (scheduler.py) and by the
  static batcher (batching.py + transformers' generate), each in this process
  with the same threads. Throughput is audio-seconds per wall-second until the
  last request is back; latency is each request's arrival to its audio. For
  the new scheduler it also prints the time between steps (p50, p99, longest):
  a pause there stalls every row, streams included.
* repeated voices (tiny model): the same two cloned speakers, request after
  request, with the prompt cache on and off.

The full-size architecture (8 concurrent against one at a time, beside
transformers' generate) is bench/fullsize_bench.py (`make bench-fullsize`).

    .venv/bin/python bench/synth_engine_bench.py [--requests 30] [--rate 3]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time

import harness  # noqa: F401 - puts the repository on the path like the other benchmarks

import numpy as np
import torch

from services.synth import config, tiny_models
from services.synth.batching import Batcher
from services.synth.engine import SAMPLES_PER_FRAME, DiaEngine, SynthesisInput
from services.synth.params import FRAMES_WITHOUT_AUDIO, GenerationParams
from services.synth.scheduler import Scheduler

FRAMES_PER_SECOND = 44100 / SAMPLES_PER_FRAME
SCRIPT = "[S1] Welcome back to the show. [S2] Thanks, it is good to be here again."


def audio_seconds(frames: int) -> float:
    return (frames - FRAMES_WITHOUT_AUDIO) / FRAMES_PER_SECOND


def trace(requests: int, rate: float, seed: int) -> list[tuple[float, SynthesisInput]]:
    """(arrival second, request): Poisson arrivals, mixed lengths and settings, no seeds."""
    rng = random.Random(seed)
    at, items = 0.0, []
    for n in range(requests):
        at += rng.expovariate(rate)
        params = GenerationParams(
            cfg_scale=rng.choice([2.0, 3.0]),
            temperature=rng.choice([1.0, 1.8]),
            top_p=rng.choice([0.9, 0.95]),
            cfg_filter_top_k=rng.choice([30, 45]),
            max_new_tokens=rng.randint(128, 1024),
            speed_factor=1.0,
            seed=None,
        )
        items.append((at, SynthesisInput(SCRIPT, None, params, seed=n)))
    return items


async def replay(submit, items) -> tuple[float, list[float], float]:
    """(wall seconds, latencies, audio seconds) of serving the trace through `submit`."""
    started = time.perf_counter()
    latencies = []

    async def one(at: float, item: SynthesisInput) -> float:
        await asyncio.sleep(max(0.0, started + at - time.perf_counter()))
        arrived = time.perf_counter()
        generated = await submit(item)
        latencies.append(time.perf_counter() - arrived)
        return audio_seconds(generated.generated_frames)

    made = await asyncio.gather(*(one(at, item) for at, item in items))
    return time.perf_counter() - started, latencies, sum(made)


async def step_gaps(scheduler: Scheduler) -> list[float]:
    """Seconds per step between the event loop's looks at the scheduler's step count, until cancelled."""
    gaps: list[float] = []
    steps, at = scheduler.steps, time.perf_counter()
    try:
        while True:
            await asyncio.sleep(0.002)
            if scheduler.steps != steps:
                now = time.perf_counter()
                gaps.append((now - at) / (scheduler.steps - steps))
                steps, at = scheduler.steps, now
    except asyncio.CancelledError:
        return gaps


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


async def mixed_traffic(engine: DiaEngine, args) -> None:
    items = trace(args.requests, args.rate, seed=1)
    print(f"\nmixed traffic: {args.requests} requests, Poisson {args.rate}/s, 128-1024 frames, mixed settings, "
          f"batch size {args.batch}, tiny model")  # fmt: skip
    new = Scheduler(args.batch, 0.02, args.requests, 10**9, 0)
    new.start(engine)
    await replay(new.submit, trace(args.batch, 100.0, seed=2))  # warm-up
    watching = asyncio.ensure_future(step_gaps(new))
    results = {"continuous": await replay(new.submit, items)}
    watching.cancel()
    gaps = sorted(await watching)
    await new.close()
    old = Batcher(args.batch, 0.02, args.requests)
    old.start(engine.generate)
    results["static"] = await replay(old.submit, items)
    await old.close()
    for name, (wall, latencies, made) in results.items():
        print(f"  {name:10s}: {made / wall:6.2f} audio-s/s, latency p50 {p(latencies, 50):6.2f} s, "
              f"p90 {p(latencies, 90):6.2f} s, wall {wall:6.2f} s")  # fmt: skip
    # A row's codec decode inside the step would pause every other row (streams stall); beside it, none.
    print(f"  continuous: time between steps p50 {gaps[len(gaps) // 2] * 1000:.1f} ms, "
          f"p99 {gaps[int(len(gaps) * 0.99)] * 1000:.1f} ms, longest {gaps[-1] * 1000:.0f} ms")  # fmt: skip
    (new_wall, new_lat, new_made), (old_wall, old_lat, old_made) = results["continuous"], results["static"]
    print(f"  throughput continuous / static: {(new_made / new_wall) / (old_made / old_wall):.2f}x; "
          f"p50 latency static / continuous: {p(old_lat, 50) / p(new_lat, 50):.2f}x")  # fmt: skip


async def repeated_voices(engine: DiaEngine, args) -> None:
    def voice(seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return (rng.standard_normal(int(44100 * args.prompt_seconds)) * 0.1).astype(np.float32)

    voices = [voice(1), voice(2)]
    params = GenerationParams(3.0, 1.8, 0.95, 45, args.voice_frames, 1.0, None)
    items = [SynthesisInput("[S1] Me talking. [S2] And me. [S1] New words.", voices[n % 2], params, n)
             for n in range(args.voice_requests)]  # fmt: skip
    print(f"\nrepeated voices: {len(items)} requests one after another, two {args.prompt_seconds:g} s prompts "
          f"taking turns, {args.voice_frames} frames each, tiny model")  # fmt: skip
    rates = {}
    for name, cache_bytes in (("cached", 64 << 20), ("not cached", 0)):
        scheduler = Scheduler(1, 0.0, len(items), 10**9, cache_bytes)
        scheduler.start(engine)
        started = time.perf_counter()
        for item in items:
            await scheduler.submit(item)
        wall = time.perf_counter() - started
        await scheduler.close()
        rates[name] = len(items) / wall
        print(f"  {name:10s}: {rates[name]:6.2f} requests/s ({wall:.2f} s)")
    print(f"  cached / not cached: {rates['cached'] / rates['not cached']:.2f}x")


async def run(args) -> None:
    torch.set_num_threads(args.threads)
    folder = tiny_models.ensure(config.tiny_model_dir())
    engine = DiaEngine.load(str(folder / "dia"), str(folder / "dac"), config.TINY_MODEL_NAME, "cpu", args.threads)
    await mixed_traffic(engine, args)
    await repeated_voices(engine, args)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30, help="requests in the mixed trace (default 30)")
    parser.add_argument("--rate", type=float, default=3.0, help="mean arrivals per second (default 3)")
    parser.add_argument("--batch", type=int, default=8, help="rows per batch for both engines (default 8)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--voice-requests", type=int, default=12, help="requests in the repeated-voices run")
    parser.add_argument("--voice-frames", type=int, default=32, help="frames of each repeated-voice request")
    parser.add_argument("--prompt-seconds", type=float, default=8.0, help="seconds of each voice prompt")
    args = parser.parse_args()
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
