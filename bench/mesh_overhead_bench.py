"""Benchmark: the time the mesh adds around synthesis, at p50 and p99, this checkout beside an earlier revision.

A whole mesh (PostgreSQL, object store, transcode, STT, library, synth with
the tiny model, gateway) runs as processes, once with an earlier revision's
code (`--against`, by default 823fbb3: voice prompts assembled by the
gateway, with transcode and STT; any revision whose tree runs on its own,
11a6030 too) and once with this checkout's; requests go
one at a time to POST /v1/voice/generations over HTTP. For each one:

* end to end: the client's time from sending the request to having the WAV;
* synthesis: the generation's own ``start_time`` → ``end_time`` in its
  history, which span the call to the synth provider (start_time is taken
  just before the call, end_time as its result is stored);
* overhead = end to end − synthesis + what the provider spent making a voice
  prompt inside that span (this checkout's synth fetches, cuts and joins the
  samples itself: its histogram synth_voice_prompt_making_seconds, read
  around each request), so that both revisions count the same work: the HTTP
  front, both key checks, storing the request and its audio, fetching the
  voice samples, cutting and joining them, and every hop between. The codec's
  encoding of a new prompt is inside synthesis on both sides.

Kinds of request, each speaker cloned from a library sample:

* cached: the same two samples every time (after a warm-up);
* cache miss: two new samples every request (uploaded beforehand, each with
  its own audio, so that no cache of either revision, by id or by content,
  has seen them);
* must trim: as cache miss, with max_audio_prompt_seconds short enough that
  each sample is longer than its share and is cut between words;
* no cloning, for reference.

    .venv/bin/python bench/mesh_overhead_bench.py [--against REV] [--requests N] [--frames N]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import io
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
import wave

import aiohttp
import numpy as np

import harness
from tools import mesh as mesh_tools

FIXTURES = pathlib.Path(harness.ROOT) / "tests" / "fixtures"
SCRIPT = "[S1] Welcome back to the show. [S2] Thanks, it is good to be here again."
SAMPLES = {
    "S1": ("speech_hello.wav", "Hello world, this is a voice sample for testing."),
    "S2": ("speech_fox.wav", "The quick brown fox jumps over the lazy dog."),
}
# The voice samples are about 3 s each: a 3 s prompt gives each 1.35 s, so both are cut.
TRIMMED_PROMPT_SECONDS = 3
# What this branch changed: voice prompts made by synth (issue 22). The revision before it.
BEFORE = "823fbb3"
SERVICES = ["transcode", "stt", "library", "synth", "gateway"]


def metric_sum(metrics_port: str, name: str) -> float:
    """The sum of one of the service's unlabelled histograms (0 when it has none)."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    match = re.search(rf"^{re.escape(name)}_sum (\S+)$", body, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def stamp(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text)


def own_audio(name: str, rng: np.random.Generator) -> bytes:
    """The fixture's WAV at a slightly different gain: the same speech, audio no cache has seen."""
    with wave.open(io.BytesIO((FIXTURES / name).read_bytes())) as reader:
        rate, pcm = reader.getframerate(), np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2")
    scaled = np.clip(pcm * rng.uniform(0.8, 0.99), -32768, 32767).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1), writer.setsampwidth(2), writer.setframerate(rate)
        writer.writeframes(scaled.tobytes())
    return out.getvalue()


async def upload_pair(http, headers, rng: np.random.Generator) -> dict[str, int]:
    speakers = {}
    for speaker, (name, transcript) in SAMPLES.items():
        form = aiohttp.FormData()
        form.add_field("audio", own_audio(name, rng), filename=name, content_type="audio/wav")
        form.add_field("speaker_name", speaker)
        form.add_field("transcript", transcript)
        response = await http.post("/v1/voice/samples", data=form, headers=headers)
        body = await response.json()
        if response.status != 200:
            raise SystemExit(f"uploading {name} failed: {body}")
        speakers[speaker] = body["id"]
    return speakers


async def measure(http, headers, bodies: list[dict], synth_metrics: str) -> dict[str, list[float]]:
    end_to_end, overhead = [], []
    for body in bodies:
        making_before = metric_sum(synth_metrics, "synth_voice_prompt_making_seconds")
        started = time.perf_counter()
        response = await http.post("/v1/voice/generations", json=body, headers=headers)
        await response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            raise SystemExit(f"generation failed: {response.status} {await response.text()}")
        making = metric_sum(synth_metrics, "synth_voice_prompt_making_seconds") - making_before
        stored = await (await http.get(f"/v1/voice/generations/{response.headers['X-Generation-Id']}", headers=headers)).json()
        synthesis = (stamp(stored["end_time"]) - stamp(stored["start_time"])).total_seconds()
        end_to_end.append(elapsed)
        overhead.append(elapsed - synthesis + making)
    return {"end_to_end": end_to_end, "overhead": overhead}


def old_tree(revision: str, scratch: pathlib.Path) -> pathlib.Path:
    """`revision`'s whole tree under `scratch`, its protos generated, this checkout's models beside it."""
    archive = subprocess.run(["git", "archive", "--format=tar", revision], cwd=harness.ROOT, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(scratch)], input=archive.stdout, check=True)
    subprocess.run([sys.executable, "tools/gen_protos.py"], cwd=scratch, check=True, capture_output=True)
    (scratch / "var").symlink_to(pathlib.Path(harness.ROOT) / "var")
    return scratch


def own_key(env: dict[str, str], tree: pathlib.Path | None) -> str:
    """A new API key, made by the revision's own `make key` (its gateway's schema may differ from this
    checkout's, which harness.new_keys would migrate it to)."""
    made = subprocess.run(
        [sys.executable, "-m", "tools.make_key", "bench"], cwd=tree or harness.ROOT, env=env, check=True,
        capture_output=True, text=True,
    )  # fmt: skip
    return made.stdout.strip().splitlines()[-1]


async def one_side(args, tree: pathlib.Path | None) -> dict[str, dict[str, list[float]]]:
    """Every kind of request on a mesh of `tree`'s code (None: this checkout's)."""
    rng = np.random.default_rng(22)
    with harness.throwaway_postgres() as database_url:
        async with harness.throwaway_object_store() as object_store:
            # Analysis after synthesis (issue 25) has its own benchmark, bench/analysis_bench.py.
            env = harness.mesh_env(database_url, GATEWAY_ANALYSIS="false", **object_store)
            if tree is not None:  # its services, runtime and protos: `python -m` runs them from the tree
                env["PYTHONPATH"] = f"{tree}{os.pathsep}{tree / 'gen'}"
            root, mesh_tools.ROOT = mesh_tools.ROOT, tree or mesh_tools.ROOT
            try:
                async with harness.running(SERVICES, env):
                    key = own_key(env, tree)
                    headers = {"Authorization": f"Bearer {key}"}
                    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{env['GATEWAY_HTTP_PORT']}") as http:
                        await harness.wait_for_providers(http, headers)
                        return await kinds(args, http, headers, rng, env["SYNTH_METRICS_PORT"])
            finally:
                mesh_tools.ROOT = root


async def kinds(args, http, headers, rng, synth_metrics: str) -> dict[str, dict[str, list[float]]]:
    base = {"input": SCRIPT, "max_new_tokens": args.frames}
    same = await upload_pair(http, headers, rng)
    new = [await upload_pair(http, headers, rng) for _ in range(args.requests)]
    trimmed = [await upload_pair(http, headers, rng) for _ in range(args.requests)]
    warm_up = [{**base, "speakers": same}, base, {**base, "speakers": await upload_pair(http, headers, rng)}]
    for body in warm_up + warm_up[:2]:  # connections, caches, first-call costs
        await (await http.post("/v1/voice/generations", json=body, headers=headers)).read()
    return {
        "cached": await measure(http, headers, [{**base, "speakers": same}] * args.requests, synth_metrics),
        "cache miss": await measure(http, headers, [{**base, "speakers": pair} for pair in new], synth_metrics),
        "must trim": await measure(
            http, headers,
            [{**base, "speakers": pair, "max_audio_prompt_seconds": TRIMMED_PROMPT_SECONDS} for pair in trimmed],
            synth_metrics,
        ),  # fmt: skip
        "no cloning": await measure(http, headers, [base] * args.requests, synth_metrics),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default=BEFORE, help=f"git revision measured beside this checkout (default {BEFORE})")
    parser.add_argument("--requests", type=int, default=20, help="requests of each kind (default 20)")
    parser.add_argument("--frames", type=int, default=256, help="max_new_tokens (default 256, the least allowed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        old = asyncio.run(one_side(args, old_tree(args.against, pathlib.Path(scratch))))
    new = asyncio.run(one_side(args, None))
    print(
        f"\n{args.requests} requests of each kind, one at a time, {args.frames} frames, tiny model, two cloned voices "
        f"(must trim: max_audio_prompt_seconds {TRIMMED_PROMPT_SECONDS}); {args.against} beside this checkout"
    )
    p50 = lambda values: harness.percentile(values, 0.5) * 1000  # noqa: E731
    p99 = lambda values: harness.percentile(values, 0.99) * 1000  # noqa: E731
    print(f"{'overhead':14}{args.against + ' p50':>14}{'p99':>10}{'this p50':>12}{'p99':>10}{'new / old':>11}")
    for kind in old:
        a, b = old[kind]["overhead"], new[kind]["overhead"]
        print(f"{kind:14}{p50(a):>11.1f} ms{p99(a):>7.1f} ms{p50(b):>9.1f} ms{p99(b):>7.1f} ms{p50(b) / p50(a):>10.2f}x")
    print(f"{'end to end':14}")
    for kind in old:
        a, b = old[kind]["end_to_end"], new[kind]["end_to_end"]
        print(f"{kind:14}{p50(a):>11.1f} ms{p99(a):>7.1f} ms{p50(b):>9.1f} ms{p99(b):>7.1f} ms{p50(b) / p50(a):>10.2f}x")
    for kind in ("cache miss", "must trim"):
        ratio = lambda side: p50(side[kind]["overhead"]) / p50(side["cached"]["overhead"])  # noqa: E731
        print(f"overhead p50 {kind} / cached: {args.against} {ratio(old):.1f}x, this checkout {ratio(new):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
