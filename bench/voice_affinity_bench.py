"""Benchmark: routing that follows the cached voices, on against off.

A mesh (PostgreSQL, the object store, transcode, library) runs as processes;
for each setting of GATEWAY_VOICE_AFFINITY a gateway and THREE synth
providers with the tiny model are started fresh (so every synth's prompt
cache starts empty), the same requests are sent, and the synths are stopped
again. 20 voices (espeak-ng clips, each a sentence in another espeak voice)
are uploaded once; the requests clone two of them each, drawn from 20 pairs
(each voice in two), in the same order for both settings, a few at once. For
each setting:

* the synths' prompt-cache hit rate: ``synth_prompt_cache_hits`` over hits
  and ``synth_prompt_cache_misses`` of the three (every request has a
  prompt, so every request asks the cache once);
* p50 and p90 of the client's time to the WAV, and the synths' own mean
  time from a request's arrival to its first frame
  (``synth_time_to_first_frame_seconds``: queueing, prompt encoding, prefill);
* how the requests spread over the providers, and the gateway's decisions
  (``gateway_voice_routing_total``: affinity, fallback).

    .venv/bin/python bench/voice_affinity_bench.py [--requests N] [--concurrency N] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import random
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

import aiohttp
import harness

VOICES = 20
PROVIDERS = ["synth-a", "synth-b", "synth-c"]
# espeak-ng voices and sentences: each of the 20 samples sounds and says something of its own.
ESPEAK_VOICES = ["en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029"]
SENTENCES = [
    "Good morning, and welcome to the programme.",
    "The weather today is mild with a light breeze.",
    "I have been reading about the history of bridges.",
    "Please remember to water the plants on Friday.",
]
SCRIPT = "[S1] Thanks for coming in today. [S2] It is a pleasure to be here."


def speak(voice: str, sentence: str) -> bytes:
    """A WAV of espeak-ng saying `sentence` in `voice`."""
    with tempfile.NamedTemporaryFile(suffix=".wav") as wav:
        subprocess.run(["espeak-ng", "-v", voice, "-w", wav.name, sentence], check=True)
        return pathlib.Path(wav.name).read_bytes()


def scrape(port: str) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def metric(body: str, name: str, labels: str = "") -> float:
    """The sum of the samples of `name` (whose label text contains `labels`)."""
    pattern = rf"^{re.escape(name)}(?:\{{([^}}]*)\}})? (\S+)$"
    return sum(float(value) for found, value in re.findall(pattern, body, re.MULTILINE) if labels in found)


async def upload_voices(http, headers) -> list[int]:
    ids = []
    for number in range(VOICES):
        voice = ESPEAK_VOICES[number % len(ESPEAK_VOICES)]
        sentence = SENTENCES[number // len(ESPEAK_VOICES) % len(SENTENCES)]
        form = aiohttp.FormData()
        form.add_field("audio", speak(voice, sentence), filename=f"voice-{number}.wav", content_type="audio/wav")
        form.add_field("speaker_name", f"voice {number}")
        form.add_field("transcript", sentence)
        response = await http.post("/v1/voice/samples", data=form, headers=headers)
        body = await response.json()
        if response.status != 200:
            raise SystemExit(f"uploading voice {number} failed: {body}")
        ids.append(body["id"])
    return ids


def synth_env(env: dict[str, str], provider_id: str) -> dict[str, str]:
    own = dict(env, SYNTH_PROVIDER_ID=provider_id)
    own["SYNTH_GRPC_PORT"], own["SYNTH_METRICS_PORT"] = map(str, harness.free_ports(2))
    own["SYNTH_ADDR"] = f"127.0.0.1:{own['SYNTH_GRPC_PORT']}"
    return own


async def one_setting(env: dict[str, str], key: str, affinity: bool, requests: list[dict], concurrency: int) -> dict:
    """Run `requests` through a fresh gateway and three fresh synths with affinity on or off."""
    env = dict(env, GATEWAY_VOICE_AFFINITY="true" if affinity else "false")
    env["GATEWAY_HTTP_PORT"], env["GATEWAY_GRPC_PORT"], env["GATEWAY_METRICS_PORT"] = map(str, harness.free_ports(3))
    env["GATEWAY_ADDR"] = f"127.0.0.1:{env['GATEWAY_GRPC_PORT']}"
    synths = [synth_env(env, provider_id) for provider_id in PROVIDERS]
    headers = {"Authorization": f"Bearer {key}"}
    async with harness.running(["gateway"], env):
        async with harness.running(["synth"], synths[0]), harness.running(["synth"], synths[1]), harness.running(
            ["synth"], synths[2]
        ):
            async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{env['GATEWAY_HTTP_PORT']}") as http:
                await harness.wait_for_providers(http, headers, len(PROVIDERS))
                latencies: list[float] = []
                queue = list(requests)

                async def client() -> None:
                    while queue:
                        body = queue.pop(0)
                        started = time.perf_counter()
                        response = await http.post("/v1/voice/generations", json=body, headers=headers)
                        await response.read()
                        if response.status != 200:
                            raise SystemExit(f"generation failed: {response.status} {await response.text()}")
                        latencies.append(time.perf_counter() - started)

                began = time.perf_counter()
                await asyncio.gather(*(client() for _ in range(concurrency)))
                wall = time.perf_counter() - began
            per_provider = {}
            hits = misses = first_frame_seconds = 0.0
            for provider_id, own in zip(PROVIDERS, synths):
                body = scrape(own["SYNTH_METRICS_PORT"])
                provider_hits = metric(body, "synth_prompt_cache_hits_total")
                provider_misses = metric(body, "synth_prompt_cache_misses_total")
                per_provider[provider_id] = int(provider_hits + provider_misses)
                hits, misses = hits + provider_hits, misses + provider_misses
                first_frame_seconds += metric(body, "synth_time_to_first_frame_seconds_sum")
            gateway_metrics = scrape(env["GATEWAY_METRICS_PORT"])
    return {
        "hit rate": hits / max(hits + misses, 1),
        "misses": int(misses),
        "latencies": latencies,
        "first frame": first_frame_seconds,  # summed over the requests
        "wall": wall,
        "per provider": per_provider,
        "affinity": int(metric(gateway_metrics, "gateway_voice_routing_total", 'decision="affinity"')),
        "fallback": int(metric(gateway_metrics, "gateway_voice_routing_total", 'decision="fallback"')),
    }


def show(name: str, result: dict) -> str:
    spread = "/".join(str(result["per provider"][provider_id]) for provider_id in PROVIDERS)
    return (
        f"  {name:<13} hit rate {result['hit rate'] * 100:5.1f} % ({result['misses']:3d} encodings)  "
        f"p50 {harness.percentile(result['latencies'], 0.5) * 1000:7.1f} ms  "
        f"p90 {harness.percentile(result['latencies'], 0.9) * 1000:7.1f} ms  "
        f"{len(result['latencies']) / result['wall']:5.2f} req/s  synth's time to first frame mean "
        f"{result['first frame'] / len(result['latencies']) * 1000:6.1f} ms  per provider {spread}  "
        f"decisions: {result['affinity']} affinity, {result['fallback']} fallback"
    )


async def run(args) -> None:
    with harness.throwaway_postgres() as database_url:
        async with harness.throwaway_object_store() as object_store:
            env = harness.mesh_env(
                database_url,
                **object_store,
                # Short heartbeats, so that each setting's synths register quickly.
                SYNTH_HEARTBEAT_SECONDS="0.5",
                GATEWAY_HEARTBEAT_INTERVAL_SECONDS="0.5",
                GATEWAY_PROVIDER_TIMEOUT_SECONDS="3",
                # One account sends every request: its limits must refuse none.
                GATEWAY_ACCOUNT_CONCURRENT_GENERATIONS="64",
                GATEWAY_ACCOUNT_GENERATIONS_PER_SECOND="1000",
                GATEWAY_ACCOUNT_GENERATION_BURST="1000",
            )
            async with harness.running(["transcode", "library"], env):
                (key,) = await harness.new_keys(database_url, 1, prefix="affinity")
                # The library's uploads go through a gateway; the one of the first setting would do,
                # but uploading first keeps the settings' runs alike.
                upload_env = dict(env, GATEWAY_VOICE_AFFINITY="true")
                async with harness.running(["gateway"], upload_env):
                    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{env['GATEWAY_HTTP_PORT']}") as http:
                        voice_ids = await upload_voices(http, {"Authorization": f"Bearer {key}"})
                pairs = [(voice_ids[n], voice_ids[(n + 1) % VOICES]) for n in range(VOICES)]
                draw = random.Random(7)
                requests = []
                for _ in range(args.requests):
                    first, second = draw.choice(pairs)
                    requests.append(
                        {"input": SCRIPT, "speakers": {"S1": first, "S2": second}, "max_new_tokens": args.frames}
                    )
                print(
                    f"{args.requests} requests, {args.concurrency} at a time, two cloned voices each from "
                    f"{len(pairs)} pairs of {VOICES} voices, {len(PROVIDERS)} synth providers (tiny model, "
                    f"{args.frames} frames); every setting on fresh synths (empty prompt caches)"
                )
                results: dict[str, list[dict]] = {"affinity off": [], "affinity on": []}
                for round_ in range(args.rounds):
                    order = [False, True] if round_ % 2 == 0 else [True, False]
                    for affinity in order:
                        name = "affinity on" if affinity else "affinity off"
                        result = await one_setting(env, key, affinity, requests, args.concurrency)
                        results[name].append(result)
                        print(show(f"{name} #{round_ + 1}", result), flush=True)
                print("side by side (all rounds together):")
                for name, runs in results.items():
                    merged = {
                        "hit rate": sum(r["hit rate"] for r in runs) / len(runs),
                        "misses": sum(r["misses"] for r in runs),
                        "latencies": [latency for r in runs for latency in r["latencies"]],
                        "first frame": sum(r["first frame"] for r in runs),
                        "wall": sum(r["wall"] for r in runs),
                        "per provider": {p: sum(r["per provider"][p] for r in runs) for p in PROVIDERS},
                        "affinity": sum(r["affinity"] for r in runs),
                        "fallback": sum(r["fallback"] for r in runs),
                    }
                    results[name] = [merged]
                    print(show(name, merged))
                on, off = results["affinity on"][0], results["affinity off"][0]
                print(
                    f"on against off: hit rate {on['hit rate'] * 100:.1f} % against {off['hit rate'] * 100:.1f} %, "
                    f"encodings {on['misses']} against {off['misses']}, p50 "
                    f"{harness.percentile(on['latencies'], 0.5) * 1000:.1f} against "
                    f"{harness.percentile(off['latencies'], 0.5) * 1000:.1f} ms"
                )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=120, help="requests per setting (default 120)")
    parser.add_argument("--concurrency", type=int, default=3, help="requests at once (default 3)")
    parser.add_argument("--frames", type=int, default=256, help="max_new_tokens (default 256, the least allowed)")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each setting, alternating (default 1)")
    args = parser.parse_args()
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
