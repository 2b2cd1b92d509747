"""Benchmark: what tracing costs (runtime/tracing.py), side by side in one run.

The whole mesh (PostgreSQL, SeaweedFS, transcode, library, synth with the tiny
model, gateway) runs as processes, three times:

* before: the revision before tracing (``--against``, default 823fbb3), its own tree;
* off: this checkout, no OpenTelemetry variable set (tracing's default);
* on: this checkout, every request traced (``OTEL_TRACES_SAMPLER=always_on``), the
  spans sent over OTLP/HTTP to a sink process on this machine that reads and drops them;
* tenth: the same with one request in ten traced (``parentbased_traceidratio``, 0.1).

Each time it measures:

* the mesh overhead of the cached two-voice path, as bench/mesh_overhead_bench.py does
  (end to end less the synthesis its history records), p50 and p99, one request at a time,
  and the CPU time the gateway, the library and transcode spent on them, per request (less
  swayed by other jobs on a shared machine than times are);
* the gateway's CPU per second of streamed audio: 8 streamed generations at once
  (POST /v1/voice/generations, "stream": true, 1024 frames each), three times over, the
  gateway process's CPU time (user + system, from /proc) over the seconds of audio they brought.

Target (issue 26): on adds at most 20 % to either; off adds nothing measurable to before.

    .venv/bin/python bench/tracing_bench.py [--requests N] [--streams N] [--stream-rounds N] [--rounds N]
        [--modes before,off,on,tenth] [--against REV]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import aiohttp
import numpy

import harness
from audio_storage_bench import TreeMesh, checkout, make_key
from mesh_overhead_bench import SCRIPT, stamp, upload_pair

SERVICES = ["transcode", "stt", "library", "synth", "gateway"]  # stt: the word timings of samples
# The span sink: OTLP/HTTP's POST /v1/traces answered 200 with an empty ExportTraceServiceResponse.
SINK = """
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
"""


@contextlib.contextmanager
def span_sink():
    port = harness.free_port()
    process = subprocess.Popen([sys.executable, "-c", SINK, str(port)])
    try:
        time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait()


def cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def overhead(http, headers, body: dict, requests: int) -> list[float]:
    """Seconds the mesh adds around synthesis, per request, one at a time."""
    added = []
    for _ in range(requests):
        started = time.perf_counter()
        response = await http.post("/v1/voice/generations", json=body, headers=headers)
        await response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            raise SystemExit(f"generation failed: {response.status} {await response.text()}")
        generation_id = response.headers["X-Generation-Id"]
        stored = await (await http.get(f"/v1/voice/generations/{generation_id}", headers=headers)).json()
        added.append(elapsed - (stamp(stored["end_time"]) - stamp(stored["start_time"])).total_seconds())
    return added


async def streamed_audio_seconds(http, headers, frames: int) -> float:
    body = {"input": SCRIPT, "max_new_tokens": frames, "stream": True}
    response = await http.post("/v1/voice/generations", json=body, headers=headers)
    data = await response.read()
    if response.status != 200:
        raise SystemExit(f"streamed generation failed: {response.status} {data[:300]!r}")
    return (len(data) - 44) / 2 / 44100  # 16-bit mono PCM after the WAV header


async def measure(label: str, tree: pathlib.Path | None, settings: dict[str, str], args) -> dict:
    """One mode; started again (once) if its mesh cannot start (a free port taken meanwhile on a shared machine)."""
    try:
        return await _measure(label, tree, settings, args)
    except RuntimeError as error:
        print(f"  ({label}: the mesh did not start, once more: {str(error).splitlines()[0]})", flush=True)
        return await _measure(label, tree, settings, args)


async def _measure(label: str, tree: pathlib.Path | None, settings: dict[str, str], args) -> dict:
    with harness.throwaway_postgres() as database_url:
        async with harness.throwaway_object_store() as object_store:
            # Analysis after synthesis (issue 25) has its own benchmark, bench/analysis_bench.py.
            env = harness.mesh_env(database_url, GATEWAY_ANALYSIS="false", **object_store)
            for name in [name for name in env if name.startswith("OTEL_")]:
                env.pop(name)
            env.update(
                SYNTH_MAX_BATCH_SIZE=str(args.streams),
                SYNTH_MAX_QUEUE=str(args.streams),
                GATEWAY_ACCOUNT_CONCURRENT_GENERATIONS=str(args.streams),
                **settings,
            )
            if tree is None:
                running = harness.running(SERVICES, env)
            else:
                running = _tree_running(SERVICES, env, tree)
            async with running as mesh:
                key = make_key(tree, database_url) if tree else (await harness.new_keys(database_url, 1))[0]
                headers = {"Authorization": f"Bearer {key}"}
                async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{env['GATEWAY_HTTP_PORT']}") as http:
                    await harness.wait_for_providers(http, headers)
                    speakers = await upload_pair(http, headers, numpy.random.default_rng(0))
                    body = {"input": SCRIPT, "speakers": speakers, "max_new_tokens": args.frames}
                    for _ in range(3):  # warm-up: connections, caches (the prompt's), first-call costs
                        await (await http.post("/v1/voice/generations", json=body, headers=headers)).read()
                    await streamed_audio_seconds(http, headers, 256)
                    around = [mesh.processes[name].pid for name in ("gateway", "library", "transcode")]
                    mesh_cpu = sum(cpu_seconds(pid) for pid in around)
                    added = await overhead(http, headers, body, args.requests)
                    mesh_cpu = sum(cpu_seconds(pid) for pid in around) - mesh_cpu
                    gateway = mesh.processes["gateway"].pid
                    before = cpu_seconds(gateway)
                    audio = []
                    for _ in range(args.stream_rounds):  # enough CPU time for /proc's 10 ms ticks to be fine
                        audio += await asyncio.gather(
                            *(streamed_audio_seconds(http, headers, args.stream_frames) for _ in range(args.streams))
                        )
                    cpu = cpu_seconds(gateway) - before
    result = {
        "p50": harness.percentile(added, 0.5) * 1000,
        "p99": harness.percentile(added, 0.99) * 1000,
        "mesh_cpu_ms": mesh_cpu * 1000 / args.requests,
        "cpu_ms_per_audio_second": cpu * 1000 / sum(audio),
        "audio_seconds": sum(audio),
    }
    print(
        f"  {label:<22} overhead p50 {result['p50']:6.1f} ms  p99 {result['p99']:6.1f} ms  "
        f"mesh CPU {result['mesh_cpu_ms']:5.1f} ms a request   "
        f"gateway CPU {result['cpu_ms_per_audio_second']:5.2f} ms per audio second ({result['audio_seconds']:.0f} s of audio)",
        flush=True,
    )
    return result


@contextlib.asynccontextmanager
async def _tree_running(services, env, tree):
    mesh = TreeMesh(services, env, tree)
    try:
        await mesh.start(timeout=300)
        yield mesh
    except BaseException:
        for name, lines in mesh.log_lines.items():
            print(f"--- last log lines of {name}:", *lines[-20:], sep="\n", file=sys.stderr)
        raise
    finally:
        await mesh.stop()


async def run(args) -> None:
    print(
        f"{args.requests} cached two-voice generations one at a time ({args.frames} frames) and {args.stream_rounds}× "
        f"{args.streams} streamed generations at once ({args.stream_frames} frames), tiny model; {args.rounds} round(s)"
    )
    results: dict[str, list[dict]] = {"before": [], "off": [], "on": [], "tenth": []}
    with tempfile.TemporaryDirectory(prefix="voicemesh-tracing-bench-") as scratch:
        tree = checkout(args.against, pathlib.Path(scratch)) if args.against else None
        with span_sink() as sink:
            on = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink, "OTEL_TRACES_SAMPLER": "always_on"}
            modes = [("before", f"before ({args.against})", tree, {})] if tree is not None else []
            modes += [("off", "tracing off", None, {}), ("on", "tracing on (100 %)", None, on)]
            tenth = {**on, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
            modes.append(("tenth", "tracing on (10 %)", None, tenth))
            modes = [mode for mode in modes if mode[0] in args.modes.split(",")]
            for number in range(args.rounds):
                print(f"round {number + 1}")
                # Every other round in the reverse order: a machine whose load drifts favours no mode.
                for mode, label, code, settings in modes if number % 2 == 0 else reversed(modes):
                    results[mode].append(await measure(label, code, settings, args))

    def median(mode: str, key: str) -> float:
        return statistics.median(result[key] for result in results[mode])

    if not results["off"]:
        return
    print("medians over the rounds, against tracing off:")
    for mode in [mode for mode in results if results[mode]]:
        p50, cpu, mesh_cpu = median(mode, "p50"), median(mode, "cpu_ms_per_audio_second"), median(mode, "mesh_cpu_ms")
        print(
            f"  {mode:<7} overhead p50 {p50:6.1f} ms ({p50 / median('off', 'p50'):5.2f}×)   "
            f"mesh CPU {mesh_cpu:5.1f} ms a request ({mesh_cpu / median('off', 'mesh_cpu_ms'):5.2f}×)   "
            f"gateway CPU {cpu:5.2f} ms per audio second ({cpu / median('off', 'cpu_ms_per_audio_second'):5.2f}×)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30, help="cached two-voice generations a mode (default 30)")
    parser.add_argument("--frames", type=int, default=256, help="their max_new_tokens (default 256, the least)")
    parser.add_argument("--streams", type=int, default=8, help="streamed generations at once (default 8)")
    parser.add_argument("--stream-frames", type=int, default=1024, help="their max_new_tokens (default 1024)")
    parser.add_argument("--stream-rounds", type=int, default=3, help="batches of streams a mode (default 3)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of the three modes (default 1)")
    parser.add_argument(
        "--modes", default="before,off,on,tenth", help="which of before, off, on, tenth (10 %% sampled; default all)"
    )
    parser.add_argument(
        "--against", default="823fbb3", help="the revision before tracing, measured as 'before' ('' for none)"
    )
    asyncio.run(run(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
