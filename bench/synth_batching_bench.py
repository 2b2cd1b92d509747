"""Benchmark: what batching buys a synth provider (continuous batching since issue 13).

Eight generations arrive at once at a synth process, over gRPC, as they
would from the gateway. Throughput is audio-seconds generated per
wall-clock second until the last one is back. The same load runs against a
synth with SYNTH_MAX_BATCH_SIZE=8 (one batch of eight) and then against one
with SYNTH_MAX_BATCH_SIZE=1 (eight generations one after another), each in a
process of its own with the same threads, and the ratio is printed.

    .venv/bin/python bench/synth_batching_bench.py [--frames N] [--rounds N] [--model tiny-random]

With the tiny random-weight model (the default; no download) the numbers
say how much per-step overhead batching saves, not how the 1.6B model
scales on a GPU. The requests carry no seed: seeded ones are generated alone.
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

CONCURRENT = 8
SCRIPT = "[S1] Welcome back to the show. [S2] Thanks, it is good to be here again."


async def one_round(stub, frames: int) -> tuple[float, float]:
    """(audio seconds, wall seconds) of CONCURRENT generations sent together."""
    request = synth_pb2.SynthesizeRequest(
        synthesis=synth_pb2.SynthesisSpec(script=SCRIPT, settings=synth_pb2.GenerationSettings(max_new_tokens=frames))
    )
    started = time.perf_counter()
    replies = await asyncio.gather(*(stub.Synthesize(request, timeout=3600) for _ in range(CONCURRENT)))
    wall = time.perf_counter() - started
    return sum(reply.duration_seconds for reply in replies), wall


async def throughput(batch_size: int, args) -> float:
    """Median audio-seconds per wall-second over the rounds, after a warm-up round."""
    env = harness.mesh_env(
        DIA_MODEL=args.model,
        SYNTH_MAX_BATCH_SIZE=str(batch_size),
        SYNTH_MAX_QUEUE=str(CONCURRENT),
        SYNTH_TORCH_THREADS=str(args.threads),
        GATEWAY_ADDR=f"127.0.0.1:{harness.free_port()}",  # no registry: its heartbeats go nowhere
    )
    async with harness.running(["synth"], env) as mesh:
        async with grpc.aio.insecure_channel(mesh.address("synth"), options=channel_options()) as channel:
            stub = synth_pb2_grpc.SynthServiceStub(channel)
            await one_round(stub, args.frames)  # warm-up
            rates = []
            for _ in range(args.rounds):
                audio, wall = await one_round(stub, args.frames)
                rates.append(audio / wall)
                print(f"  batch size {batch_size}: {audio:6.2f} audio-s in {wall:6.2f} s = {audio / wall:6.2f} audio-s/s")
    return statistics.median(rates)


async def run(args) -> None:
    print(f"{CONCURRENT} concurrent generations of {args.frames} frames, model {args.model}, "
          f"{args.threads} torch threads, {args.rounds} rounds each")  # fmt: skip
    batched = await throughput(CONCURRENT, args)
    one_by_one = await throughput(1, args)
    print(f"SYNTH_MAX_BATCH_SIZE={CONCURRENT}: {batched:6.2f} audio-s per wall-s (median)")
    print(f"SYNTH_MAX_BATCH_SIZE=1: {one_by_one:6.2f} audio-s per wall-s (median)")
    print(f"batched / one by one: {batched / one_by_one:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=512, help="max_new_tokens of each generation (default 512)")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds per batch size (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="SYNTH_TORCH_THREADS of both synths (default 2)")
    parser.add_argument("--model", default="tiny-random", help="DIA_MODEL (default tiny-random)")
    args = parser.parse_args()
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
