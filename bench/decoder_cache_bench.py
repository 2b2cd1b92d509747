"""Benchmark: what a join, a leave and a step of the decode loop cost, this checkout against another revision.

On the tiny model (CPU): `--rows` rows are generated together until they
hold about `--frames` frames each; then it times a decoder step of them all,
a join (one more request: text encoding, prompt prefill and taking a place in
the batch, minus what the step just before cost) and a leave (a cancelled
row removed), each the median of `--repeats` runs. The other revision's
services/synth/decoder.py (`git show REV:...`; by default acc172f, the last
decoder with one left-padded cache for the whole batch; any revision before
the engine package, 466efbc and earlier, has that file) is loaded beside this
checkout's runner (services/synth/engine/runner.py) and both batches run in
lockstep in the same process; ratios are old / new (above 1: the new one is
faster).

    .venv/bin/python bench/decoder_cache_bench.py [--against acc172f] [--rows 8] [--frames 500]
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

from services.synth import config, tiny_models
from services.synth.engine import model, runner
from services.synth.engine.prompts import Preparer, PromptCache
from services.synth.engine.request import RowSettings

SCRIPT = "[S1] Welcome back to the show. [S2] Thanks, it is good to be here again."


# The last revision whose decoder.py kept one left-padded cache for the whole batch.
BEFORE_SLOT_CACHE = "acc172f"


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def measure(batches: dict, preparer, rows: int, frames: int, repeats: int) -> dict[str, dict[str, float]]:
    """Seconds per step, join and leave of each batch with `rows` rows at about `frames` frames (medians).

    The batches run in lockstep, each timing taken of one batch right after
    the same of the others, so that what else the machine does weighs on all alike.
    """
    settings = RowSettings(3.0, 1.0, 0.95, 45, frames + 4 * repeats + 40, 0)
    for batch in batches.values():
        batch.step([preparer.prepare(SCRIPT, None, settings, n) for n in range(rows)])
    for _ in range(frames - 1):
        for batch in batches.values():
            batch.step()
    times = {name: {"step": [], "join": [], "leave": []} for name in batches}
    for n in range(repeats):
        for name, batch in batches.items():
            times[name]["step"].append(timed(batch.step))
    for n in range(repeats):
        for name, batch in batches.items():
            newcomer = preparer.prepare(SCRIPT, None, settings, f"new {n}")
            step = timed(batch.step)
            times[name]["join"].append(timed(lambda: batch.step([newcomer])) - step)
            times[name]["leave"].append(timed(lambda: batch.remove({f"new {n}"})))
    return {name: {what: statistics.median(values) for what, values in kinds.items()} for name, kinds in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--against", default=BEFORE_SLOT_CACHE, help="git revision whose decoder.py is measured beside this one")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=31)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compiled", action="store_true", help="also this checkout with SYNTH_COMPILE (compiles first)")
    arguments = parser.parse_args()
    torch.manual_seed(0)
    folder = tiny_models.ensure(config.tiny_model_dir())
    dia = model.load(str(folder / "dia"), str(folder / "dac"), config.TINY_MODEL_NAME, "cpu", threads=arguments.threads)
    preparer = Preparer(dia.processor, dia.delay_pattern, dia.special_tokens, PromptCache(1 << 20))
    with tempfile.TemporaryDirectory() as scratch:
        old = revisions.module_at(arguments.against, "services/synth/decoder.py", pathlib.Path(scratch))
        runs = [(arguments.against, old, {}), ("this checkout", runner, {})]
        if arguments.compiled:
            runs.append(("compiled", runner, {"compiled": True}))

        def batches():
            return {
                name: module.DecodeBatch(dia.model, max_rows=arguments.rows + 1, **options)
                for name, module, options in runs
            }

        measure(batches(), preparer, arguments.rows, 80, 2)  # warm-up: allocations, kernel choices, compiling
        results = measure(batches(), preparer, arguments.rows, arguments.frames, arguments.repeats)
    before = results[arguments.against]
    print(f"tiny model, {arguments.rows} rows at ~{arguments.frames} frames, {arguments.threads} thread(s), medians "
          f"(ratio: {arguments.against} / this one):")  # fmt: skip
    print(f"{'':8}" + "".join(f"{name:>16}{'ratio':>8}" if name != arguments.against else f"{name:>16}" for name in results))
    for what in ("step", "join", "leave"):
        line = f"{what:8}{before[what] * 1e3:>13.2f} ms"
        for name, after in results.items():
            if name != arguments.against:
                line += f"{after[what] * 1e3:>13.2f} ms{before[what] / after[what]:>7.2f}×"
        print(line)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
