"""Benchmark: the mesh under four times the load its synth can take.

The whole mesh runs as processes (tiny model). Several accounts, each with a
key of its own, keep sending POST /v1/voice/generations; together they keep
four times the synth's capacity (SYNTH_MAX_BATCH_SIZE + SYNTH_MAX_QUEUE, the
requests it takes at once) in flight for the whole run. A client refused with
429 waits the Retry-After it was given, as a well-behaved client does, then
sends again. Printed side by side at the end:

* every answer by status and error type, and how many were 5xx (should be 0);
* the refusals: each a 429 with a Retry-After (how many lacked one: should
  be 0), and the Retry-After values given;
* each key's generations served and refused: every key is served;
* each service's resident memory at the start and at its peak, sampled twice a
  second: it stays bounded.

    .venv/bin/python bench/load_bench.py [--seconds S] [--keys N] [--frames N]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import pathlib
import sys
import time

import aiohttp

import harness

from services.synth import config as synth_config
from tools import mesh as mesh_tools

OFFERED_TIMES_CAPACITY = 4


def rss_mib(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Tally:
    def __init__(self) -> None:
        self.answers: collections.Counter[tuple[int, str]] = collections.Counter()
        self.served: collections.Counter[str] = collections.Counter()
        self.refused: collections.Counter[str] = collections.Counter()
        self.retry_after: collections.Counter[str] = collections.Counter()
        self.refusals_without_retry_after = 0


async def client(http, name: str, key: str, frames: int, until: float, tally: Tally) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    body = {"input": "[S1] One more line for the load test.", "max_new_tokens": frames}
    while time.monotonic() < until:
        async with http.post("/v1/voice/generations", json=body, headers=headers) as response:
            if response.status == 200:
                await response.read()
                tally.answers[(200, "")] += 1
                tally.served[name] += 1
                continue
            error = (await response.json())["error"]["type"]
            tally.answers[(response.status, error)] += 1
            if response.status != 429:
                continue
            tally.refused[name] += 1
            retry_after = response.headers.get("Retry-After")
            if retry_after is None:
                tally.refusals_without_retry_after += 1
                retry_after = "1"
            tally.retry_after[retry_after] += 1
        await asyncio.sleep(min(float(retry_after), max(until - time.monotonic(), 0)))


async def sample_memory(mesh, peaks: dict[str, float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        for name, process in mesh.processes.items():
            peaks[name] = max(peaks.get(name, 0.0), rss_mib(process.pid))
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except asyncio.TimeoutError:
            pass


async def run(args) -> None:
    capacity = synth_config.SYNTH_MAX_BATCH_SIZE.value + synth_config.SYNTH_MAX_QUEUE.value
    clients = OFFERED_TIMES_CAPACITY * capacity
    with harness.throwaway_postgres() as database_url:
        async with harness.throwaway_object_store() as object_store:
            env = harness.mesh_env(database_url, **object_store)
            async with harness.running(mesh_tools.existing_services(), env) as mesh:
                keys = {f"key{n}": key for n, key in enumerate(await harness.new_keys(database_url, args.keys, "load"))}
                connector = aiohttp.TCPConnector(limit=clients)
                async with aiohttp.ClientSession(
                    base_url=f"http://127.0.0.1:{env['GATEWAY_HTTP_PORT']}", connector=connector
                ) as http:
                    key = next(iter(keys.values()))
                    await harness.wait_for_providers(http, {"Authorization": f"Bearer {key}"})
                    start = {name: rss_mib(process.pid) for name, process in mesh.processes.items()}
                    peaks: dict[str, float] = dict(start)
                    stop = asyncio.Event()
                    sampler = asyncio.create_task(sample_memory(mesh, peaks, stop))
                    print(
                        f"{clients} clients ({OFFERED_TIMES_CAPACITY}x the synth's capacity of {capacity}) over "
                        f"{args.keys} keys for {args.seconds:.0f} s, {args.frames} frames each, tiny model"
                    )
                    tally = Tally()
                    until = time.monotonic() + args.seconds
                    names = list(keys)
                    await asyncio.gather(
                        *(client(http, names[n % len(names)], keys[names[n % len(names)]], args.frames, until, tally)
                          for n in range(clients))
                    )  # fmt: skip
                    stop.set()
                    await sampler
    report(tally, names, start, peaks)


def report(tally: Tally, names: list[str], start: dict[str, float], peaks: dict[str, float]) -> None:
    print("answers:")
    for (status, error), count in sorted(tally.answers.items()):
        print(f"  {status} {error or 'ok':20} {count:6}")
    server_errors = sum(count for (status, _), count in tally.answers.items() if status >= 500)
    refusals = sum(count for (status, _), count in tally.answers.items() if status == 429)
    print(f"5xx answers: {server_errors}")
    print(
        f"429 refusals: {refusals}, without Retry-After: {tally.refusals_without_retry_after}; Retry-After given: "
        + ", ".join(f"{value} s x{count}" for value, count in sorted(tally.retry_after.items(), key=lambda i: float(i[0])))
    )
    print("per key: served / refused")
    for name in names:
        print(f"  {name:6} {tally.served[name]:5} / {tally.refused[name]:5}")
    unserved = [name for name in names if not tally.served[name]]
    print(f"keys never served: {len(unserved)} {unserved if unserved else ''}")
    print("memory (resident): start -> peak")
    for name in start:
        print(f"  {name:9} {start[name]:7.1f} MiB -> {peaks[name]:7.1f} MiB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60, help="how long the load lasts (default 60)")
    parser.add_argument("--keys", type=int, default=8, help="accounts sending, one key each (default 8)")
    parser.add_argument("--frames", type=int, default=256, help="max_new_tokens of each generation (default 256)")
    args = parser.parse_args()
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
