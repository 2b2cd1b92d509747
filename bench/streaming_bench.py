"""Benchmark: time to first audio against time to the whole audio, streamed.

A 1024-frame generation (about 12 s of audio) is streamed from a synth
process over gRPC (StreamSynthesize, as the gateway calls it), alone and then
8 at once. For each request it times the first audio chunk and the last
message from the moment the request was sent, and prints them side by side
with their ratio (target: first audio at most 15 % of the whole).

    .venv/bin/python bench/streaming_bench.py [--frames N] [--model tiny-random] [--threads N]

With the tiny random-weight model (the default; no download) Dia's steps are
cheap and the codec's share of the work is larger than with the 1.6B model on
a GPU, so the ratio here is a pessimistic stand-in, not the real model's.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

import grpc

import harness

from runtime.server import channel_options
from voice.synth.v1 import synth_pb2, synth_pb2_grpc

SCRIPT = "[S1] Welcome back to the show. [S2] Thanks, it is good to be here again."
TARGET = 0.15


async def one(stub, frames: int) -> tuple[float, float]:
    """(seconds to the first audio, seconds to the end) of one streamed generation."""
    request = synth_pb2.StreamSynthesizeRequest(
        synthesis=synth_pb2.SynthesisSpec(script=SCRIPT, settings=synth_pb2.GenerationSettings(max_new_tokens=frames))
    )
    started = time.perf_counter()
    first = None
    async for message in stub.StreamSynthesize(request, timeout=3600):
        if first is None and message.pcm:
            first = time.perf_counter() - started
    return first if first is not None else float("nan"), time.perf_counter() - started


async def run(args) -> None:
    env = harness.mesh_env(
        DIA_MODEL=args.model,
        SYNTH_MAX_BATCH_SIZE="8",
        SYNTH_MAX_QUEUE="8",
        SYNTH_TORCH_THREADS=str(args.threads),
        GATEWAY_ADDR=f"127.0.0.1:{harness.free_port()}",  # no registry: its heartbeats go nowhere
    )
    print(f"{args.frames}-frame streamed generations, model {args.model}, {args.threads} torch threads; "
          f"first chunk after SYNTH_STREAM_FIRST_CHUNK_FRAMES (43 frames, 0.5 s of audio)")  # fmt: skip
    async with harness.running(["synth"], env) as mesh:
        async with grpc.aio.insecure_channel(mesh.address("synth"), options=channel_options()) as channel:
            stub = synth_pb2_grpc.SynthServiceStub(channel)
            await one(stub, 64)  # warm-up
            rows = []
            for concurrent in (1, 8):
                results = await asyncio.gather(*(one(stub, args.frames) for _ in range(concurrent)))
                first = statistics.median(r[0] for r in results)
                whole = statistics.median(r[1] for r in results)
                rows.append((concurrent, first, whole))
    print(f"{'requests at once':>16} | {'first audio (median)':>20} | {'whole audio (median)':>20} | first / whole")
    for concurrent, first, whole in rows:
        verdict = "ok" if first / whole <= TARGET else f"over the {TARGET:.0%} target"
        print(f"{concurrent:>16} | {first:>18.2f} s | {whole:>18.2f} s | {first / whole:6.1%} ({verdict})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1024, help="max_new_tokens of each generation (default 1024)")
    parser.add_argument("--threads", type=int, default=2, help="SYNTH_TORCH_THREADS (default 2)")
    parser.add_argument("--model", default="tiny-random", help="DIA_MODEL (default tiny-random)")
    asyncio.run(run(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
