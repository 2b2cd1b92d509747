"""Benchmark: what a join, a leave and a step of the decode loop cost, this checkout against another revision.

On the tiny model (CPU): `--rows` rows are generated together until they
hold about `--frames` frames each; then it times a decoder step of them all,
a join (one more request: text encoding, prompt prefill and taking a place in
the batch, minus what the step costs without it) and a leave (a cancelled
row removed), each the median of `--repeats` runs. The other revision's
services/synth/decoder.py (`git show REV:...`, default main) is loaded beside
this checkout's and measured the same way, in the same process; ratios are
old / new (above 1: the new one is faster).

    .venv/bin/python bench/decoder_cache_bench.py [--against main] [--rows 8] [--frames 500]
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import harness  # noqa: F401 - puts the repository on the path like the other benchmarks

import torch

from services.synth import config, decoder, tiny_models
from services.synth.engine import DiaEngine
from services.synth.prompts import Preparer, PromptCache

SCRIPT = "[S1] Welcome back to the show. [S2] Thanks, it is good to be here again."


def load_revision(revision: str, folder: pathlib.Path):
    """services/synth/decoder.py as it is at `revision`, imported as a module of its own."""
    source = subprocess.run(
        ["git", "show", f"{revision}:services/synth/decoder.py"],
        cwd=harness.ROOT, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    path = folder / "decoder_at_revision.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("decoder_at_revision", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def measure(module, engine, preparer, rows: int, frames: int, repeats: int) -> dict[str, float]:
    """Seconds per step, join and leave with `rows` rows at about `frames` frames."""
    batch = module.DecodeBatch(engine.model, max_rows=rows + 1)
    settings = decoder.RowSettings(3.0, 1.0, 0.95, 45, frames + 4 * repeats + 40, 0)
    batch.step([preparer.prepare(SCRIPT, None, settings, n) for n in range(rows)])
    for _ in range(frames - 1):
        batch.step()
    steps = [timed(batch.step) for _ in range(repeats)]
    joins, leaves = [], []
    for n in range(repeats):
        newcomer = preparer.prepare(SCRIPT, None, settings, f"new {n}")
        joined = timed(lambda: batch.step([newcomer]))
        joins.append(joined - statistics.median(steps))
        leaves.append(timed(lambda: batch.remove({f"new {n}"})))
        batch.step()
    return {"step": statistics.median(steps), "join": statistics.median(joins), "leave": statistics.median(leaves)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--against", default="main", help="git revision whose decoder.py is measured beside this one")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    arguments = parser.parse_args()
    torch.manual_seed(0)
    folder = tiny_models.ensure(config.tiny_model_dir())
    engine = DiaEngine.load(
        str(folder / "dia"), str(folder / "dac"), config.TINY_MODEL_NAME, "cpu", threads=arguments.threads
    )
    preparer = Preparer(engine.processor, engine.model.config.delay_pattern, engine.special_tokens, PromptCache(1 << 20))
    with tempfile.TemporaryDirectory() as scratch:
        old = load_revision(arguments.against, pathlib.Path(scratch))
        results = {}
        for module in (old, decoder):  # warm-up: first calls pay for allocations and kernel choices
            measure(module, engine, preparer, arguments.rows, 20, 2)
        for name, module in ((arguments.against, old), ("this checkout", decoder)):
            results[name] = measure(module, engine, preparer, arguments.rows, arguments.frames, arguments.repeats)
    before, after = results[arguments.against], results["this checkout"]
    print(f"tiny model, {arguments.rows} rows at ~{arguments.frames} frames, {arguments.threads} thread(s), medians:")
    print(f"{'':8}{arguments.against:>16}{'this checkout':>16}{'ratio':>8}")
    for what in ("step", "join", "leave"):
        print(f"{what:8}{before[what] * 1e3:>13.2f} ms{after[what] * 1e3:>13.2f} ms{before[what] / after[what]:>7.2f}×")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
