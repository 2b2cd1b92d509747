"""Benchmark: two S3 clients against the real SeaweedFS, side by side.

aiobotocore (botocore's S3 client on aiohttp, pure Python) against obstore
(Rust's object_store crate behind a Python API), each against the same
embedded SeaweedFS (tools/seaweedfs.py, as `make run` starts it, on free
ports in a temporary folder), with objects of --megabytes (20 MB: the
gateway's largest upload):

* put: --count objects one after another, then 8 at once, each from bytes
  held in memory (a single PUT each);
* get: the same objects read whole into memory, one after another, then 8 at once;
* stream: 8 objects at once read in 1 MiB pieces that are dropped at once
  (what an HTTP answer streamed from the store does: it never holds a whole object);
* multipart: 8 objects at once, each uploaded from 1 MiB pieces as they come
  (a multipart upload in 8 MiB parts, what a streamed upload does);
* range: 200 ranged GETs of 64 KiB at random offsets, 8 at a time.

Each phase runs in a fresh process of its own, so that its peak memory is
its own: "peak RSS" is the most resident memory the process held during
the phase above what it held just before (the objects to upload are made
before, so they are not counted; /proc's VmHWM is reset then). Throughput is
the median of --rounds rounds, in MB (10^6 bytes) per second of wall time;
"CPU" is the process's own CPU seconds per round (SeaweedFS's are not in it);
"stall" is the longest the asyncio event loop went without running a task
that wakes every millisecond (work done on the loop's thread, which a
service's other requests would wait for; on a busy machine, contention too).
The machine's cores are shared with SeaweedFS, as they would be with `make run`.

    .venv/bin/python bench/object_store_bench.py [--megabytes 20] [--count 5] [--rounds 3]

A benchmark, not a test: it prints, it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Self

from botocore.exceptions import BotoCoreError, ClientError

from tools import seaweedfs
from tools.mesh import free_ports

BUCKET = "bench"
CONCURRENCY = 8
PIECE = 1024 * 1024  # the pieces of a streamed download or upload
PART = 8 * 1024 * 1024  # multipart part size
RANGE_BYTES, RANGES = 64 * 1024, 200
CLIENTS = ["aiobotocore", "obstore"]
PHASES = ["put-1", "put-8", "get-1", "get-8", "stream-8", "multipart-8", "range-8"]


# --- The clients, doing the same things ------------------------------------


class Boto:
    name = "aiobotocore"

    def __init__(self, endpoint: str, key: str, secret: str) -> None:
        self.endpoint, self.key, self.secret = endpoint, key, secret

    async def __aenter__(self) -> Self:
        from aiobotocore.session import get_session
        from botocore.config import Config

        config = Config(
            s3={"addressing_style": "path"},
            max_pool_connections=CONCURRENCY * 2,
            # No CRC32 of every body in Python on top of the signature's SHA-256 (S3 needs neither).
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._context = get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.key,
            aws_secret_access_key=self.secret,
            config=config,
        )
        self.client = await self._context.__aenter__()
        return self

    async def __aexit__(self, *exc) -> None:
        await self._context.__aexit__(*exc)

    async def create_bucket(self) -> None:
        try:
            await self.client.create_bucket(Bucket=BUCKET)
        except self.client.exceptions.BucketAlreadyOwnedByYou:
            pass

    async def put(self, key: str, data: bytes) -> None:
        await self.client.put_object(Bucket=BUCKET, Key=key, Body=data)

    async def get(self, key: str) -> int:
        answer = await self.client.get_object(Bucket=BUCKET, Key=key)
        async with answer["Body"] as body:
            return len(await body.read())

    async def get_range(self, key: str, start: int, length: int) -> int:
        answer = await self.client.get_object(Bucket=BUCKET, Key=key, Range=f"bytes={start}-{start + length - 1}")
        async with answer["Body"] as body:
            return len(await body.read())

    async def stream(self, key: str) -> int:
        answer = await self.client.get_object(Bucket=BUCKET, Key=key)
        total = 0
        async with answer["Body"] as body:
            async for piece in body.iter_chunks(PIECE):
                total += len(piece)
        return total

    async def put_pieces(self, key: str, pieces) -> None:
        upload = await self.client.create_multipart_upload(Bucket=BUCKET, Key=key)
        parts, held, size = [], [], 0

        async def send() -> None:
            number = len(parts) + 1
            answer = await self.client.upload_part(
                Bucket=BUCKET, Key=key, UploadId=upload["UploadId"], PartNumber=number, Body=b"".join(held)
            )
            parts.append({"ETag": answer["ETag"], "PartNumber": number})
            held.clear()

        async for piece in pieces:  # pieces of PIECE bytes: a part is PART bytes
            held.append(piece)
            size += len(piece)
            if size >= PART:
                await send()
                size = 0
        if held or not parts:
            await send()
        await self.client.complete_multipart_upload(
            Bucket=BUCKET, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
        )


class Obstore:
    name = "obstore"

    def __init__(self, endpoint: str, key: str, secret: str) -> None:
        from obstore.store import S3Store

        self.store = S3Store(
            BUCKET,
            endpoint=endpoint,
            region="us-east-1",
            access_key_id=key,
            secret_access_key=secret,
            virtual_hosted_style_request=False,
            client_options={"allow_http": True, "pool_max_idle_per_host": str(CONCURRENCY * 2)},
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc) -> None:
        pass

    async def put(self, key: str, data: bytes) -> None:
        import obstore

        await obstore.put_async(self.store, key, data, use_multipart=False)

    async def get(self, key: str) -> int:
        import obstore

        answer = await obstore.get_async(self.store, key)
        return len(await answer.bytes_async())

    async def get_range(self, key: str, start: int, length: int) -> int:
        import obstore

        return len(await obstore.get_range_async(self.store, key, start=start, length=length))

    async def stream(self, key: str) -> int:
        import obstore

        answer = await obstore.get_async(self.store, key)
        total = 0
        async for piece in answer.stream(min_chunk_size=PIECE):
            total += len(piece)
        return total

    async def put_pieces(self, key: str, pieces) -> None:
        import obstore

        await obstore.put_async(self.store, key, pieces, chunk_size=PART, max_concurrency=1)


CLIENT_CLASSES = {"aiobotocore": Boto, "obstore": Obstore}


# --- One phase in a process of its own -------------------------------------


def rss_kib(field: str) -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


async def run_phase(args) -> dict:
    size = args.megabytes * 1_000_000
    data = os.urandom(size)
    names = [f"obj-{i}" for i in range(max(args.count, CONCURRENCY))]
    async with CLIENT_CLASSES[args.client](args.endpoint, args.key, args.secret) as client:
        await client.put("warm-up", b"x")  # connections and imports, before the baseline
        await client.get("warm-up")

        async def pieces():
            for start in range(0, size, PIECE):
                yield data[start : start + PIECE]
                await asyncio.sleep(0)

        offsets = random.Random(0)

        async def one_round(phase: str) -> int:
            """Bytes moved."""
            prefix = f"{args.client}-{phase}"
            if phase == "put-1":
                for name in names[: args.count]:
                    await client.put(f"{prefix}/{name}", data)
                return size * args.count
            if phase == "put-8":
                await asyncio.gather(*(client.put(f"{prefix}/{n}", data) for n in names[:CONCURRENCY]))
                return size * CONCURRENCY
            if phase == "get-1":
                return sum([await client.get(f"seed/{name}") for name in names[: args.count]])
            if phase == "get-8":
                return sum(await asyncio.gather(*(client.get(f"seed/{n}") for n in names[:CONCURRENCY])))
            if phase == "stream-8":
                return sum(await asyncio.gather(*(client.stream(f"seed/{n}") for n in names[:CONCURRENCY])))
            if phase == "multipart-8":
                await asyncio.gather(*(client.put_pieces(f"{prefix}/{n}", pieces()) for n in names[:CONCURRENCY]))
                return size * CONCURRENCY
            if phase == "range-8":
                gate = asyncio.Semaphore(CONCURRENCY)

                async def ranged(index: int) -> int:
                    async with gate:
                        start = offsets.randrange(0, size - RANGE_BYTES)
                        return await client.get_range(f"seed/{names[index % CONCURRENCY]}", start, RANGE_BYTES)

                return sum(await asyncio.gather(*(ranged(i) for i in range(RANGES))))
            raise ValueError(phase)

        many = size * CONCURRENCY
        expected = {"put-1": size * args.count, "get-1": size * args.count, "put-8": many, "get-8": many}
        expected.update({"stream-8": many, "multipart-8": many, "range-8": RANGES * RANGE_BYTES})
        baseline = rss_kib("VmRSS")
        pathlib.Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        seconds, cpu, moved, stalls = [], [], 0, [0.0]

        async def watch_loop() -> None:
            """The longest the event loop went without running this task (the other requests'
            tasks, a server's, wait as long): work done on the loop's thread shows here."""
            while True:
                began = time.perf_counter()
                await asyncio.sleep(0.001)
                stalls[0] = max(stalls[0], time.perf_counter() - began - 0.001)

        watcher = asyncio.create_task(watch_loop())
        await asyncio.sleep(0.01)
        stalls[0] = 0.0
        for _ in range(args.rounds):
            usage = resource.getrusage(resource.RUSAGE_SELF)
            began = time.perf_counter()
            moved = await one_round(args.phase)
            seconds.append(time.perf_counter() - began)
            after = resource.getrusage(resource.RUSAGE_SELF)
            cpu.append(after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime)
            if moved != expected[args.phase]:
                raise RuntimeError(f"moved {moved} bytes, not {expected[args.phase]}")
        peak = rss_kib("VmHWM")
        watcher.cancel()
    median = statistics.median(seconds)
    return {
        "mb_per_s": moved / 1e6 / median,
        "seconds": median,
        "cpu": statistics.median(cpu),
        "peak_mib": (peak - baseline) / 1024,
        "stall_ms": stalls[0] * 1000,
        "requests": RANGES if args.phase == "range-8" else None,
    }


async def seed(endpoint: str, key: str, secret: str, megabytes: int, count: int) -> None:
    async with Boto(endpoint, key, secret) as client:
        for _ in range(100):
            try:
                await client.create_bucket()
                break
            except (ClientError, BotoCoreError):  # its filer may answer a moment after its S3 port
                await asyncio.sleep(0.2)
        data = os.urandom(megabytes * 1_000_000)
        for i in range(max(count, CONCURRENCY)):
            await client.put(f"seed/obj-{i}", data)


def describe(result: dict) -> str:
    if result.get("error"):
        return f"failed: {result['error']}"
    speed = (
        f"{result['requests'] / result['seconds']:7.0f} req/s" if result["requests"] else f"{result['mb_per_s']:7.1f} MB/s"
    )
    return (
        f"{speed}  CPU {result['cpu']:4.2f} s  RSS +{result['peak_mib']:5.1f} MiB  stall {result['stall_ms']:3.0f} ms"
    )


async def main(args) -> int:
    with tempfile.TemporaryDirectory(prefix="voicemesh-s3-bench-") as folder:
        ports = dict(zip((port.setting.name for port in seaweedfs.PORTS), free_ports(len(seaweedfs.PORTS))))
        server = seaweedfs.SeaweedFS(pathlib.Path(folder), ports)
        await server.start(timeout=120)
        try:
            key, secret = server.credentials.access_key_id, server.credentials.secret_access_key
            await seed(server.endpoint_url, key, secret, args.megabytes, args.count)
            versions = {}
            for name in ("aiobotocore", "botocore", "obstore"):
                from importlib.metadata import version

                versions[name] = version(name)
            print(
                f"{args.megabytes} MB objects, {args.count} one after another, {CONCURRENCY} at once; median of "
                f"{args.rounds} rounds; SeaweedFS {seaweedfs.weed_binary().name} on 127.0.0.1; "
                + ", ".join(f"{name} {v}" for name, v in versions.items())
            )
            print(f"{'phase':<12}| " + " | ".join(f"{name:<52}" for name in CLIENTS))
            for number, phase in enumerate(PHASES):
                row = {}
                # Each client goes first in every other phase: the server's caches warm up for neither alone.
                for client in CLIENTS if number % 2 == 0 else reversed(CLIENTS):
                    command = [
                        sys.executable, __file__, "--child", client, phase, server.endpoint_url, key, secret,
                        "--megabytes", str(args.megabytes), "--count", str(args.count), "--rounds", str(args.rounds),
                    ]  # fmt: skip
                    done = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True)
                    try:
                        result = json.loads(done.stdout.strip().splitlines()[-1])
                    except (IndexError, ValueError):
                        result = {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
                    row[client] = describe(result)
                print(f"{phase:<12}| " + " | ".join(f"{row[client]:<52}" for client in CLIENTS), flush=True)
        finally:
            await server.stop(grace=5)
    return 0


def parse(argv: list[str]):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=20)
    parser.add_argument("--count", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", nargs=5, metavar=("CLIENT", "PHASE", "ENDPOINT", "KEY", "SECRET"))
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse(sys.argv[1:])
    if arguments.child:
        arguments.client, arguments.phase, arguments.endpoint, arguments.key, arguments.secret = arguments.child
        print(json.dumps(asyncio.run(run_phase(arguments))))
        sys.exit(0)
    sys.exit(asyncio.run(main(arguments)))
