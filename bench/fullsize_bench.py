"""Benchmark: the decode loop on the full-size Dia architecture with random weights.

``DiaConfig()`` defaults are the real 1.61 B-parameter architecture, so no
download is needed: the numbers are those of the real model's shapes (its
audio would be noise). For each concurrency it prefills that many requests
into one batch (services/synth/engine/runner.py, the runner synth serves with)
and times a number of steps; it prints steps per second, frames per second
(all rows) and the real-time factor of each request (seconds of decoding per
second of audio: below 1 is faster than real time).

With ``--compare-generate`` the same requests also go through transformers'
own ``generate`` (the static batch synth used before), in the same run, so
the engine's gain from concurrency can be read beside ``generate``'s; with
``--compile`` through the engine with its steps compiled (SYNTH_COMPILE:
CUDA graphs on a GPU), to show where compiling helps.
with ``--against REV`` through that revision's decode loop
(services/synth/decoder.py at REV, e.g. 466efbc, before the engine package)
beside this checkout's, on the same model, in lockstep: both batches hold the
same rows and take their steps in turn (which goes first alternating), each
step timed, medians; so that what else the machine does weighs on both
alike. The other ways run one after the other at each concurrency, their
order alternating between rounds.
``--rounds`` repeats the whole measurement and prints the median of each
ratio: on a shared machine one round can be off.

    .venv/bin/python bench/fullsize_bench.py --device cuda --concurrency 1,8,32 --steps 100
    .venv/bin/python bench/fullsize_bench.py --device cpu --concurrency 1,8 --steps 24 --compare-generate  # ~8 GB

bench/gpu.sh runs the first on a CUDA machine (bfloat16) and says so when there is none;
`make bench` runs the second (`make bench-fullsize` alone).
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import tempfile
import time

import harness  # noqa: F401 - puts the repository on the path like the other benchmarks
import revisions

import torch

FRAMES_PER_AUDIO_SECOND = 44100 / 512
SCRIPT = "[S1] Welcome back to the show. [S2] Thanks, it is good to be here again. (laughs)"
# Dia's own defaults for sampling (the service's defaults): cfg 3, temperature 1.8, top_p 0.95, top_k 45.
CFG_SCALE, TEMPERATURE, TOP_P, TOP_K = 3.0, 1.8, 0.95, 45


def build(device: str, dtype_name: str | None):
    """The random-weight full-size Dia on `device` and a row preparer (tokenizer and processor of the tiny model)."""
    from transformers import DiaConfig, DiaForConditionalGeneration

    from services.synth import config, tiny_models
    from services.synth.engine import model as loading
    from services.synth.engine.prompts import Preparer

    where, dtype = loading.choose_device(device, dtype_name or "auto")
    torch.manual_seed(0)
    started = time.perf_counter()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(where):  # built in place: no float32 copy on the CPU first
            model = DiaForConditionalGeneration(DiaConfig()).eval()
    finally:
        torch.set_default_dtype(previous)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"built the full-size Dia ({parameters / 1e9:.2f} B parameters, random weights) on {where} in {dtype} "
          f"in {time.perf_counter() - started:.0f} s")  # fmt: skip
    # Only the tiny model's tokenizer and delay maths are used: Dia's are fixed, whatever the weights.
    folder = tiny_models.ensure(config.tiny_model_dir())
    tiny = loading.load(str(folder / "dia"), str(folder / "dac"), "tiny", "cpu", torch.get_num_threads())
    preparer = Preparer(tiny.processor, model.config.delay_pattern, tiny.special_tokens, None)
    return model, preparer, tiny.processor


def measure_engine(model, preparer, concurrency: int, steps: int, compiled: bool = False) -> float:
    """Steps per second of our decode loop with `concurrency` rows in one batch (prefill not timed).

    compiled: steps through torch.compile (SYNTH_COMPILE); a first batch runs the same steps untimed,
    so that compiling (and, on CUDA, recording the graphs of each shape) is not what is measured.
    """
    from services.synth.engine import runner
    from services.synth.engine.request import RowSettings

    settings = [RowSettings(CFG_SCALE, TEMPERATURE, TOP_P, TOP_K, 3072, n) for n in range(concurrency)]
    for warming_up in ([True] if compiled else []) + [False]:
        batch = runner.DecodeBatch(model, concurrency, compiled=compiled)
        batch.step([preparer.prepare(SCRIPT, None, row, n) for n, row in enumerate(settings)])
        batch.step()  # warm-up
        if warming_up:
            for _ in range(steps):
                batch.step()
    synchronize(model.device)
    began = time.perf_counter()
    for _ in range(steps):
        batch.step()
    synchronize(model.device)
    return steps / (time.perf_counter() - began)


def measure_lockstep(model, preparer, concurrency: int, steps: int, loops: dict) -> dict[str, float]:
    """Steps per second of each decode loop (name → module with a DecodeBatch), their batches holding the
    same `concurrency` rows and stepped in turn, the first of each turn alternating; medians of the
    steps' times (prefill not timed)."""
    from services.synth.engine.request import RowSettings

    settings = [RowSettings(CFG_SCALE, TEMPERATURE, TOP_P, TOP_K, 3072, n) for n in range(concurrency)]
    batches = {name: loop.DecodeBatch(model, concurrency, compiled=False) for name, loop in loops.items()}
    for batch in batches.values():
        batch.step([preparer.prepare(SCRIPT, None, row, n) for n, row in enumerate(settings)])
        batch.step()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in batches}
    for turn in range(steps):
        for name in list(batches) if turn % 2 == 0 else list(batches)[::-1]:
            synchronize(model.device)
            began = time.perf_counter()
            batches[name].step()
            synchronize(model.device)
            times[name].append(time.perf_counter() - began)
    # The fastest step of each (as timeit's best of N): what the step costs when nothing else runs.
    fastest = ", ".join(f"{name} {min(values) * 1000:.0f} ms" for name, values in times.items())
    print(f"  lockstep, {concurrency} concurrent: fastest step {fastest}")
    return {name: 1 / statistics.median(values) for name, values in times.items()}


@torch.inference_mode()
def measure_generate(model, processor, concurrency: int, steps: int) -> float:
    """Steps per second of transformers' generate for `concurrency` equal requests (text encoding and prefill
    included: one step's worth, small beside the `steps` timed)."""
    from transformers import GenerationConfig

    inputs = processor(text=[SCRIPT] * concurrency, padding="longest", return_tensors="pt").to(model.device)
    special = model.config.decoder_config

    def generate(frames: int) -> int:
        config = GenerationConfig(
            do_sample=True, temperature=TEMPERATURE, top_p=TOP_P, top_k=TOP_K, guidance_scale=CFG_SCALE,
            max_new_tokens=frames, use_cache=True, bos_token_id=special.bos_token_id,
            eos_token_id=special.eos_token_id, pad_token_id=special.pad_token_id,
        )  # fmt: skip
        output = model.generate(**inputs, generation_config=config)
        return output.shape[1] - 1  # frames made (bos aside): fewer than asked if every row ended early

    generate(2)  # warm-up
    synchronize(model.device)
    began = time.perf_counter()
    made = generate(steps)
    synchronize(model.device)
    return made / (time.perf_counter() - began)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="default: synth's (SYNTH_DTYPE=auto)")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated rows per batch (default 1,8,32)")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per concurrency (default 100)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--rounds", type=int, default=1, help="measure everything this many times; medians at the end")
    parser.add_argument("--compare-generate", action="store_true", help="also time transformers' generate")
    parser.add_argument("--compile", action="store_true", help="also time the engine with SYNTH_COMPILE (torch.compile)")
    parser.add_argument("--against", metavar="REV", help="also time REV's decode loop (services/synth/decoder.py there)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here (torch sees none): nothing measured")
        return 0
    model, preparer, processor = build(args.device, args.dtype)
    concurrencies = [int(n) for n in args.concurrency.split(",")]
    ways = [("engine", lambda c: measure_engine(model, preparer, c, args.steps))]
    scratch = tempfile.TemporaryDirectory()
    if args.against:
        from services.synth.engine import runner

        old = revisions.module_at(args.against, "services/synth/decoder.py", pathlib.Path(scratch.name))
        loops = {args.against: old, "engine": runner}
        # Both in one way: measured in lockstep, each concurrency once a round.
        ways[0] = ("engine", lambda c: measure_lockstep(model, preparer, c, args.steps, loops))
    if args.compare_generate:
        ways.append(("generate", lambda c: measure_generate(model, processor, c, args.steps)))
    if args.compile:  # last: on a GPU compiling takes minutes, and the other ways are printed by then
        ways.append(("compiled", lambda c: measure_engine(model, preparer, c, args.steps, compiled=True)))
    ratios: dict[tuple[str, int], list[float]] = {}
    rates: dict[tuple[str, int], list[float]] = {}
    # At each concurrency the ways in turn; compiling last (on a GPU it takes minutes: the others are printed by then).
    groups = [[way for way in ways if way[0] != "compiled"], [way for way in ways if way[0] == "compiled"]]
    for round_number in range(1, args.rounds + 1):
        print(f"\nround {round_number} of {args.rounds}, {args.steps} steps each")
        print(f"{'way':>8} | {'concurrent':>10} | {'steps/s':>8} | {'frames/s':>9} | {'RTF per request':>15} | "
              f"{'audio-s per s':>13} | frames/s against one at a time")  # fmt: skip
        baseline: dict[str, float] = {}
        for group in groups:
            for concurrency in concurrencies:
                # Their order alternates between rounds: a machine whose load drifts weighs on both alike.
                for way, measure in group if round_number % 2 else group[::-1]:
                    measured = measure(concurrency)
                    for name, rate in (measured.items() if isinstance(measured, dict) else [(way, measured)]):
                        frames = rate * concurrency
                        baseline.setdefault(name, frames)
                        ratios.setdefault((name, concurrency), []).append(frames / baseline[name])
                        rates.setdefault((name, concurrency), []).append(rate)
                        print(f"{name:>8} | {concurrency:>10} | {rate:8.2f} | {frames:9.1f} | {FRAMES_PER_AUDIO_SECOND / rate:15.3f} | "
                              f"{frames / FRAMES_PER_AUDIO_SECOND:13.2f} | {frames / baseline[name]:.2f}x")  # fmt: skip
                        sys.stdout.flush()
    if args.rounds > 1 or args.compare_generate or args.against:
        print(f"\nmedian over {args.rounds} round(s): frames/s with N concurrent requests over frames/s one at a time")
        for (name, concurrency), values in ratios.items():
            if concurrency != concurrencies[0]:
                listed = ", ".join(f"{v:.2f}" for v in values)
                print(f"{name:>8} {concurrency:>3} concurrent: {statistics.median(values):.2f}x  ({listed})")
    if args.against:
        print(f"\nsteps/s of this checkout's engine over {args.against}'s decode loop (median over {args.rounds} round(s))")
        for concurrency in concurrencies:
            new, old = rates[("engine", concurrency)], rates[(args.against, concurrency)]
            print(f"{concurrency:>3} concurrent: {statistics.median(new):.2f} against {statistics.median(old):.2f} steps/s: "
                  f"{statistics.median(new) / statistics.median(old):.2f}x")  # fmt: skip
    scratch.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
