"""Benchmark: the time the mesh adds around synthesis, at p50 and p99.

A whole mesh (PostgreSQL, transcode, library, synth with the tiny model,
gateway) runs as processes; requests go one at a time to
POST /v1/voice/generations over HTTP. For each one:

* end to end: the client's time from sending the request to having the WAV;
* synthesis: the generation's own ``start_time`` → ``end_time`` in its
  history, which span the call to the synth provider (start_time is taken
  just before the call, end_time as its result is stored);
* overhead = end to end − synthesis: the HTTP front, both key checks, storing
  the request and its audio, fetching the voice samples from the library,
  joining them in transcode, and every hop between.

Two kinds of request: both speakers cloned from library samples (the full
path), and a plain script without cloning. As a cross-check the synth's own
server-side mean (its Prometheus histogram) is printed beside the history's.

    .venv/bin/python bench/mesh_overhead_bench.py [--requests N] [--frames N]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import pathlib
import re
import statistics
import sys
import time
import urllib.request

import harness
import aiohttp


FIXTURES = pathlib.Path(harness.ROOT) / "tests" / "fixtures"
SCRIPT = "[S1] Welcome back to the show. [S2] Thanks, it is good to be here again."
SAMPLES = {
    "S1": ("speech_hello.webm", "Hello world, this is a voice sample for testing."),
    "S2": ("speech_fox.webm", "The quick brown fox jumps over the lazy dog."),
}


def synth_server_seconds(metrics_port: str) -> tuple[float, float]:
    """(sum of seconds, count) of the synth's Synthesize calls, from its histogram."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    total = count = 0.0
    for kind, value in re.findall(
        r'^grpc_server_handling_seconds_(sum|count)\{[^}]*grpc_method="Synthesize"[^}]*\} (\S+)$', body, re.MULTILINE
    ):
        if kind == "sum":
            total += float(value)
        else:
            count += float(value)
    return total, count


def stamp(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text)


async def wait_for_provider(http, headers) -> None:
    deadline = time.monotonic() + 120
    while True:
        body = await (await http.get("/v1/models", headers=headers)).json()
        if any("voice-cloning" in card["features"] for card in body.get("data", [])):
            return
        if time.monotonic() > deadline:
            raise SystemExit("the synth provider never registered with the gateway")
        await asyncio.sleep(0.2)


async def upload_samples(http, headers) -> dict[str, int]:
    speakers = {}
    for speaker, (name, transcript) in SAMPLES.items():
        form = aiohttp.FormData()
        form.add_field("audio", (FIXTURES / name).read_bytes(), filename=name, content_type="audio/webm")
        form.add_field("speaker_name", speaker)
        form.add_field("transcript", transcript)
        response = await http.post("/v1/voice/samples", data=form, headers=headers)
        body = await response.json()
        if response.status != 200:
            raise SystemExit(f"uploading {name} failed: {body}")
        speakers[speaker] = body["id"]
    return speakers


async def measure(http, headers, body: dict, requests: int, metrics_port: str) -> None:
    end_to_end, synthesis = [], []
    server_before = synth_server_seconds(metrics_port)
    for _ in range(requests):
        started = time.perf_counter()
        response = await http.post("/v1/voice/generations", json=body, headers=headers)
        await response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            raise SystemExit(f"generation failed: {response.status} {await response.text()}")
        generation_id = response.headers["X-Generation-Id"]
        stored = await (await http.get(f"/v1/voice/generations/{generation_id}", headers=headers)).json()
        end_to_end.append(elapsed)
        synthesis.append((stamp(stored["end_time"]) - stamp(stored["start_time"])).total_seconds())
    server_after = synth_server_seconds(metrics_port)
    overhead = [total - synth for total, synth in zip(end_to_end, synthesis)]
    server_mean = (server_after[0] - server_before[0]) / max(server_after[1] - server_before[1], 1)
    print(f"  end to end        {harness.summary(end_to_end)}")
    print(f"  synthesis         {harness.summary(synthesis)}")
    print(f"  mesh overhead     {harness.summary(overhead)}")
    print(
        f"  cross-check: synth's own Synthesize mean {server_mean * 1000:.1f} ms → overhead mean "
        f"{(statistics.mean(end_to_end) - server_mean) * 1000:.1f} ms"
    )


async def run(args) -> None:
    with harness.throwaway_postgres() as database_url:
        async with harness.throwaway_object_store() as object_store:
            env = harness.mesh_env(database_url, **object_store)
            # Speech recognition is not on the generation path (samples come with typed transcripts).
            async with harness.running(["transcode", "library", "synth", "gateway"], env):
                (key,) = await harness.new_keys(database_url, 1)
                headers = {"Authorization": f"Bearer {key}"}
                async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{env['GATEWAY_HTTP_PORT']}") as http:
                    await wait_for_provider(http, headers)
                    speakers = await upload_samples(http, headers)
                    kinds = {
                        "both speakers cloned (library + transcode on the path)": {
                            "input": SCRIPT, "speakers": speakers, "max_new_tokens": args.frames,
                        },
                        "no cloning": {"input": SCRIPT, "max_new_tokens": args.frames},
                    }  # fmt: skip
                    for body in kinds.values():  # warm-up: connections, caches, first-call costs
                        for _ in range(2):
                            await (await http.post("/v1/voice/generations", json=body, headers=headers)).read()
                    print(f"{args.requests} requests of each kind, one at a time, {args.frames} frames, tiny model")
                    for name, body in kinds.items():
                        print(name)
                        await measure(http, headers, body, args.requests, env["SYNTH_METRICS_PORT"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50, help="requests of each kind (default 50)")
    parser.add_argument("--frames", type=int, default=256, help="max_new_tokens (default 256, the least allowed)")
    args = parser.parse_args()
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
