"""Benchmark: the decode loop on the full-size Dia architecture with random weights.

``DiaConfig()`` defaults are the real 1.61 B-parameter architecture, so no
download is needed: the numbers are those of the real model's shapes (its
audio would be noise). For each concurrency it prefills that many requests
into one batch (services/synth/decoder.py, the engine synth serves with)
and times a number of steps; it prints steps per second, frames per second
(all rows) and the real-time factor of each request (seconds of decoding per
second of audio: below 1 is faster than real time).

    .venv/bin/python bench/fullsize_bench.py --device cuda --concurrency 1,8,32 --steps 100
    .venv/bin/python bench/fullsize_bench.py --device cpu --concurrency 1,8 --steps 24   # heavy: ~8 GB

bench/gpu.sh runs the first on a CUDA machine (bfloat16) and says so when there is none.
"""

from __future__ import annotations

import argparse
import sys
import time

import harness  # noqa: F401 - puts the repository on the path like the other benchmarks

import torch

FRAMES_PER_AUDIO_SECOND = 44100 / 512
SCRIPT = "[S1] Welcome back to the show. [S2] Thanks, it is good to be here again. (laughs)"


def build(device: str):
    """The random-weight full-size Dia on `device` (bfloat16 on CUDA, float32 on the CPU), and a row preparer."""
    from transformers import DiaConfig, DiaForConditionalGeneration

    from services.synth import config, tiny_models
    from services.synth.engine import DiaEngine, choose_device
    from services.synth.prompts import Preparer

    where, dtype = choose_device(device)
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
    tiny = DiaEngine.load(str(folder / "dia"), str(folder / "dac"), "tiny", "cpu", torch.get_num_threads())
    preparer = Preparer(tiny.processor, model.config.delay_pattern, tiny.special_tokens, None)
    return model, preparer


def measure(model, preparer, concurrency: int, steps: int) -> float:
    """Steps per second with `concurrency` rows in one batch (prefill not timed)."""
    from services.synth.decoder import DecodeBatch, RowSettings

    batch = DecodeBatch(model, concurrency)
    rows = [preparer.prepare(SCRIPT, None, RowSettings(3.0, 1.8, 0.95, 45, 3072, n), n) for n in range(concurrency)]
    batch.step(rows)
    batch.step()  # warm-up
    synchronize(model.device)
    began = time.perf_counter()
    for _ in range(steps):
        batch.step()
    synchronize(model.device)
    return steps / (time.perf_counter() - began)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated rows per batch (default 1,8,32)")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per concurrency (default 100)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here (torch sees none): nothing measured")
        return 0
    model, preparer = build(args.device)
    print(f"\n{'concurrent':>10} | {'steps/s':>8} | {'frames/s':>9} | {'RTF per request':>15} | {'audio-s per s':>13}")
    baseline = None
    for concurrency in [int(n) for n in args.concurrency.split(",")]:
        rate = measure(model, preparer, concurrency, args.steps)
        frames = rate * concurrency
        baseline = baseline or frames
        print(f"{concurrency:>10} | {rate:8.2f} | {frames:9.1f} | {FRAMES_PER_AUDIO_SECOND / rate:15.3f} | "
              f"{frames / FRAMES_PER_AUDIO_SECOND:13.2f}   ({frames / baseline:.2f}x the frames/s of the first)")  # fmt: skip
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
