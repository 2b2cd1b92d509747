"""Benchmark: the synth engine under mixed traffic, this checkout against an earlier revision's.

Two measurements, each printed side by side with its ratio:

* mixed traffic (tiny model): requests arrive at random (Poisson), 128–1024
  frames each, with mixed cfg_scale / temperature / top_p / cfg_filter_top_k;
  the same trace is served by this checkout's engine and by the revision's
  (`--against`, by default 466efbc: the scheduler over decoder.py, before the
  engine became services/synth/engine/). Throughput is audio-seconds per
  wall-second until the last request is back; latency is each request's
  arrival to its audio; the time between steps (p50, p99, longest) shows
  pauses, which stall every row, streams included;
* repeated voices (tiny model): the same two cloned speakers, request after
  request, with the prompt cache on and off.

Each side runs in a process of its own with the same threads (the revision's
`services` package unpacked first on its path), one after the other, their
order alternating between rounds; the figures are medians over `--rounds`.

The static batcher that synth served with before continuous batching left the
code with the engine's restructuring; to measure against it, check out a
revision that has it (466efbc and before) and run that revision's copy of this
benchmark.

The full-size architecture (8 concurrent against one at a time) is
bench/fullsize_bench.py (`make bench-fullsize`).

    .venv/bin/python bench/synth_engine_bench.py [--against 466efbc] [--rounds 2] [--requests 30] [--rate 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import random
import statistics
import subprocess
import sys
import tempfile
import time

import harness  # noqa: F401 - puts the repository on the path like the other benchmarks
import revisions

FRAMES_PER_SECOND = 44100 / 512
FRAMES_WITHOUT_AUDIO = 16  # the end marker and Dia's 15-frame delay tail
SCRIPT = "[S1] Welcome back to the show. [S2] Thanks, it is good to be here again."
# The last revision with the scheduler over decoder.py (before services/synth/engine/).
BEFORE_ENGINE_PACKAGE = "466efbc"


def audio_seconds(frames: int) -> float:
    return (frames - FRAMES_WITHOUT_AUDIO) / FRAMES_PER_SECOND


def p(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


# --- one side, in a process of its own --------------------------------------------------------------------


def engine_api():
    """(load the tiny model, make an engine on it, SynthesisInput, GenerationParams) of whichever
    `services.synth` this process imports: this checkout's engine package, or the scheduler before it."""
    from services.synth import config, tiny_models
    from services.synth.params import GenerationParams

    folder = tiny_models.ensure(config.tiny_model_dir())
    try:
        from services.synth.engine import model
        from services.synth.engine.core import SynthEngine as Engine
        from services.synth.engine.request import SynthesisInput

        def load(threads: int):
            return model.load(str(folder / "dia"), str(folder / "dac"), config.TINY_MODEL_NAME, "cpu", threads)
    except ImportError:  # before the engine package: services/synth/scheduler.py over engine.DiaEngine
        from services.synth.engine import DiaEngine, SynthesisInput
        from services.synth.scheduler import Scheduler as Engine

        def load(threads: int):
            return DiaEngine.load(str(folder / "dia"), str(folder / "dac"), config.TINY_MODEL_NAME, "cpu", threads)

    def make(loaded, max_rows: int, window: float, max_queue: int, cache_bytes: int):
        engine = Engine(max_rows, window, max_queue, 10**9, cache_bytes)
        engine.start(loaded)
        return engine

    return load, make, SynthesisInput, GenerationParams


def trace(requests: int, rate: float, seed: int, SynthesisInput, GenerationParams) -> list:
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

    async def one(at: float, item) -> float:
        await asyncio.sleep(max(0.0, started + at - time.perf_counter()))
        arrived = time.perf_counter()
        generated = await submit(item)
        latencies.append(time.perf_counter() - arrived)
        return audio_seconds(generated.generated_frames)

    made = await asyncio.gather(*(one(at, item) for at, item in items))
    return time.perf_counter() - started, latencies, sum(made)


async def step_gaps(engine) -> list[float]:
    """Seconds per step between the event loop's looks at the engine's step count, until cancelled."""
    gaps: list[float] = []
    steps, at = engine.steps, time.perf_counter()
    try:
        while True:
            await asyncio.sleep(0.002)
            if engine.steps != steps:
                now = time.perf_counter()
                gaps.append((now - at) / (engine.steps - steps))
                steps, at = engine.steps, now
    except asyncio.CancelledError:
        return gaps


async def one_side(args) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    load, make, SynthesisInput, GenerationParams = engine_api()
    loaded = load(args.threads)
    figures = {}

    engine = make(loaded, args.batch, 0.02, args.requests, 0)
    await replay(engine.submit, trace(args.batch, 100.0, 2, SynthesisInput, GenerationParams))  # warm-up
    watching = asyncio.ensure_future(step_gaps(engine))
    wall, latencies, made = await replay(engine.submit, trace(args.requests, args.rate, 1, SynthesisInput, GenerationParams))
    watching.cancel()
    gaps = sorted(await watching)
    await engine.close()
    figures.update(
        throughput=made / wall, p50=p(latencies, 50), p90=p(latencies, 90), wall=wall,
        gap_p50=gaps[len(gaps) // 2], gap_p99=gaps[int(len(gaps) * 0.99)], gap_max=gaps[-1],
    )  # fmt: skip

    def voice(seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return (rng.standard_normal(int(44100 * args.prompt_seconds)) * 0.1).astype(np.float32)

    voices = [voice(1), voice(2)]
    params = GenerationParams(3.0, 1.8, 0.95, 45, args.voice_frames, 1.0, None)
    items = [SynthesisInput("[S1] Me talking. [S2] And me. [S1] New words.", voices[n % 2], params, n)
             for n in range(args.voice_requests)]  # fmt: skip
    for name, cache_bytes in (("cached", 64 << 20), ("not_cached", 0)):
        engine = make(loaded, 1, 0.0, len(items), cache_bytes)
        started = time.perf_counter()
        for item in items:
            await engine.submit(item)
        figures[name] = len(items) / (time.perf_counter() - started)
        await engine.close()
    return figures


# --- the driver: both sides, rounds, side by side ---------------------------------------------------------


def run_side(args, pythonpath: str | None) -> dict:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    command = [sys.executable, __file__, "--side", *sys.argv[1:]]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"a side of the benchmark failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_of(rounds: list[dict]) -> dict:
    return {key: statistics.median(figures[key] for figures in rounds) for key in rounds[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default=BEFORE_ENGINE_PACKAGE, help="git revision measured beside this checkout")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of both sides, order alternating (default 1)")
    parser.add_argument("--requests", type=int, default=30, help="requests in the mixed trace (default 30)")
    parser.add_argument("--rate", type=float, default=3.0, help="mean arrivals per second (default 3)")
    parser.add_argument("--batch", type=int, default=8, help="rows at once (SYNTH_MAX_BATCH_SIZE, default 8)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--voice-requests", type=int, default=12, help="requests in the repeated-voices run")
    parser.add_argument("--voice-frames", type=int, default=32, help="frames of each repeated-voice request")
    parser.add_argument("--prompt-seconds", type=float, default=8.0, help="seconds of each voice prompt")
    parser.add_argument("--side", action="store_true", help=argparse.SUPPRESS)  # one side, printing JSON
    args = parser.parse_args()
    if args.side:
        print(json.dumps(asyncio.run(one_side(args))))
        return 0

    new, old = "this checkout", args.against
    results: dict[str, list[dict]] = {new: [], old: []}
    with tempfile.TemporaryDirectory() as scratch:
        old_path = str(revisions.services_at(args.against, pathlib.Path(scratch)))
        for round_number in range(args.rounds):
            order = [(old, old_path), (new, None)]
            for name, path in order if round_number % 2 == 0 else reversed(order):
                results[name].append(figures := run_side(args, path))
                print(f"round {round_number + 1}, {name}: {figures['throughput']:.2f} audio-s/s, "
                      f"p50 {figures['p50']:.2f} s", flush=True)  # fmt: skip
    a, b = median_of(results[old]), median_of(results[new])
    print(f"\nmixed traffic: {args.requests} requests, Poisson {args.rate}/s, 128-1024 frames, mixed settings, "
          f"{args.batch} rows, tiny model, {args.threads} threads; medians of {args.rounds} round(s)")  # fmt: skip
    print(f"{'':28}{old:>20}{new:>20}{'new / old':>11}")
    for label, key, unit, scale in (
        ("throughput", "throughput", "audio-s/s", 1), ("latency p50", "p50", "s", 1), ("latency p90", "p90", "s", 1),
        ("time between steps p50", "gap_p50", "ms", 1000), ("time between steps p99", "gap_p99", "ms", 1000),
        ("longest time between steps", "gap_max", "ms", 1000),
    ):  # fmt: skip
        print(f"{label:28}{a[key] * scale:>10.2f} {unit:<9}{b[key] * scale:>10.2f} {unit:<9}{b[key] / a[key]:>10.2f}x")
    print(f"\nrepeated voices: {args.voice_requests} requests one after another, two {args.prompt_seconds:g} s prompts "
          f"taking turns, {args.voice_frames} frames each")  # fmt: skip
    for label, key in (("prompt cache on", "cached"), ("prompt cache off", "not_cached")):
        print(f"{label:28}{a[key]:>10.2f} {'req/s':<9}{b[key]:>10.2f} {'req/s':<9}{b[key] / a[key]:>10.2f}x")
    print(f"{'cached / not cached':28}{a['cached'] / a['not_cached']:>10.2f}x{'':9}{b['cached'] / b['not_cached']:>10.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
