"""Benchmark: audio in PostgreSQL (another revision, by default the last before issue 23) against audio
in the object store (this checkout), one mesh after the other on the same machine, in one run.

Each mesh (transcode, library, synth with the tiny model, gateway) runs as processes on a throwaway
PostgreSQL of its own; this checkout's also on a throwaway SeaweedFS, as `make run` starts it. The
other revision is extracted with `git archive` into a temporary folder, its protos generated there,
and its services run from there. For each it prints:

* PostgreSQL bytes per stored voice sample (a 5 s clip: its upload and its WAV) and per stored
  generation (1024 frames of the tiny model, about 12 s of WAV): each column of the row as stored
  (pg_column_size: compressed, or moved out to TOAST) and its header, beside the audio's own size
  (target: under 4 KB, from about the audio's size);
* the peak resident memory of the gateway and of the library above idle (VmHWM, reset before each
  round through /proc/PID/clear_refs) while 20 clients download a 20 MB file at once
  (GET /v1/files/{id}/content: the gateway alone) and a 20 MB voice sample's audio at once
  (GET /v1/voice/samples/{id}/audio: the library and the gateway), with the throughput the 20 got;
* upload throughput: a 20 MB file to POST /v1/files, one after another.

    .venv/bin/python bench/audio_storage_bench.py [--against 0f785bb] [--clients 20]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import wave

import aiohttp
import asyncpg
import numpy as np

import harness

from tools import mesh as mesh_tools

ROOT = pathlib.Path(__file__).resolve().parent.parent
BEFORE = "0f785bb"  # the gateway core with the object store's groundwork: audio still in bytea columns
MB = 1_000_000
MIB = 1024 * 1024
SERVICES = ["transcode", "library", "synth", "gateway"]
FILE_BYTES = 20 * MB
LONG_SAMPLE_SECONDS = 240  # 8 kHz mono upload (3.8 MB) -> a 21 MB WAV at 44.1 kHz


def wav(seconds: float, rate: int, seed: int) -> bytes:
    """Mono 16-bit noise: incompressible, as a recording is."""
    samples = np.random.default_rng(seed).integers(-8000, 8000, int(seconds * rate), dtype="<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(samples.tobytes())
    return out.getvalue()


def checkout(revision: str, folder: pathlib.Path) -> pathlib.Path:
    """The revision's tree in `folder`, with its protos generated."""
    archive = subprocess.run(["git", "archive", revision], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    subprocess.run([sys.executable, "tools/gen_protos.py"], cwd=folder, check=True, capture_output=True)
    return folder


class TreeMesh(mesh_tools.Mesh):
    """The mesh's services run from another tree (another revision's code and generated protos)."""

    def __init__(self, services, env, tree: pathlib.Path) -> None:
        super().__init__(services, {**env, "PYTHONPATH": f"{tree}{os.pathsep}{tree / 'gen'}"})
        self.tree = tree
        self.echo = False

    async def start_service(self, name: str) -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", f"services.{name}", cwd=self.tree, env=self.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.processes[name] = process
        self._pumps[name] = asyncio.create_task(self._pump(name, process))


def make_key(tree: pathlib.Path, database_url: str) -> str:
    """A key made by the tree's own `tools.make_key` (this checkout's store would migrate an older
    tree's database ahead of it)."""
    env = {**os.environ, "DATABASE_URL": database_url, "PYTHONPATH": f"{tree}{os.pathsep}{tree / 'gen'}"}
    done = subprocess.run(
        [sys.executable, "-m", "tools.make_key", "bench"], cwd=tree, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip().splitlines()[-1]


def status_kib(pid: int, field: str) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak(pid: int) -> None:
    pathlib.Path(f"/proc/{pid}/clear_refs").write_text("5")


async def row_bytes(database_url: str, table: str, newest: int) -> float:
    """The mean bytes PostgreSQL stores for each of the table's `newest` rows: every column as stored
    (compressed or moved out to TOAST, pg_column_size), plus the row's 24-byte header; indexes left out."""
    schema, name = table.split(".")
    connection = await asyncpg.connect(database_url)
    try:
        columns = [
            row["column_name"]
            for row in await connection.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2",
                schema,
                name,
            )
        ]
        stored = " + ".join(f'coalesce(pg_column_size(t."{column}"), 0)' for column in columns)
        order = "seq" if "seq" in columns else "id"
        return await connection.fetchval(
            f"SELECT avg(24 + {stored}) FROM (SELECT * FROM {table} ORDER BY {order} DESC LIMIT $1) t", newest
        )
    finally:
        await connection.close()


async def upload_sample(http, headers, audio: bytes, name: str) -> dict:
    form = aiohttp.FormData()
    form.add_field("audio", audio, filename="clip.wav", content_type="audio/wav")
    form.add_field("speaker_name", name)
    form.add_field("transcript", "a recording")
    response = await http.post("/v1/voice/samples", data=form, headers=headers)
    body = await response.json()
    if response.status != 200:
        raise SystemExit(f"upload failed: {response.status} {body}")
    return body


async def upload_file(http, headers, content: bytes) -> dict:
    form = aiohttp.FormData()
    form.add_field("content", content, filename="big.wav", content_type="audio/wav")
    response = await http.post("/v1/files", data=form, headers=headers)
    body = await response.json()
    if response.status != 200:
        raise SystemExit(f"file upload failed: {response.status} {body}")
    return body


async def download(http, path: str, headers) -> int:
    received = 0
    async with http.get(path, headers=headers) as response:
        if response.status != 200:
            raise SystemExit(f"download of {path} failed: {response.status} {await response.text()}")
        async for piece in response.content.iter_chunked(MIB):
            received += len(piece)
    return received


async def downloads_at_once(http, path: str, headers, clients: int, pids: dict[str, int], idle: dict[str, int]) -> dict:
    for pid in pids.values():
        reset_peak(pid)
    began = time.perf_counter()
    sizes = await asyncio.gather(*(download(http, path, headers) for _ in range(clients)))
    seconds = time.perf_counter() - began
    peaks = {name: (status_kib(pid, "VmHWM") - idle[name]) / 1024 for name, pid in pids.items()}
    return {"peaks_mib": peaks, "mb_per_s": sum(sizes) / MB / seconds, "size": sizes[0]}


async def measure(tree: pathlib.Path | None, label: str, clients: int) -> dict:
    """Everything, on a mesh of `tree`'s code (None: this checkout's)."""
    results: dict = {"label": label}
    with harness.throwaway_postgres() as database_url:
        async with harness.throwaway_object_store() as object_store:
            env = harness.mesh_env(
                database_url,
                **object_store,
                LIBRARY_MAX_SAMPLE_SECONDS=str(LONG_SAMPLE_SECONDS + 10),
                GATEWAY_ACCOUNT_GENERATIONS_PER_SECOND="0",
            )
            mesh = TreeMesh(SERVICES, env, tree) if tree is not None else mesh_tools.Mesh(SERVICES, env)
            mesh.echo = False
            try:
                await mesh.start(timeout=300)
                key = make_key(tree or ROOT, database_url)
                headers = {"Authorization": f"Bearer {key}"}
                async with aiohttp.ClientSession(
                    base_url=f"http://127.0.0.1:{env['GATEWAY_HTTP_PORT']}", timeout=aiohttp.ClientTimeout(total=600)
                ) as http:
                    await upload_sample(http, headers, wav(1, 44100, 0), "warm-up")
                    # PostgreSQL bytes per sample.
                    clip = wav(5, 44100, 1)
                    count = 20
                    for n in range(count):
                        await upload_sample(http, headers, wav(5, 44100, 10 + n), f"clip {n}")
                    results["sample_row"] = await row_bytes(database_url, "library.samples", count)
                    results["sample_audio"] = 2 * len(clip)  # the upload and its WAV (the same size here)
                    # PostgreSQL bytes per generation.
                    body = {"input": "[S1] How many bytes does this take?", "max_new_tokens": 1024, "seed": 1}
                    await (await http.post("/v1/voice/generations", json=body, headers=headers)).read()
                    count = 8
                    sizes = []
                    for _ in range(count // 4):
                        replies = await asyncio.gather(
                            *(http.post("/v1/voice/generations", json=body, headers=headers) for _ in range(4))
                        )
                        sizes += [len(await reply.read()) for reply in replies]
                    results["generation_row"] = await row_bytes(database_url, "gateway.generations", count)
                    results["generation_audio"] = statistics.mean(sizes)
                    # Uploads of a 20 MB file, one after another.
                    content = os.urandom(FILE_BYTES)
                    began, file = time.perf_counter(), None
                    for _ in range(5):
                        file = await upload_file(http, headers, content)
                    results["file_upload_mb_s"] = 5 * FILE_BYTES / MB / (time.perf_counter() - began)
                    long = await upload_sample(http, headers, wav(LONG_SAMPLE_SECONDS, 8000, 2), "long")
                    # Downloads, `clients` at once.
                    await download(http, f"/v1/files/{file['id']}/content", headers)  # warm-up
                    await download(http, f"/v1/voice/samples/{long['id']}/audio", headers)
                    await asyncio.sleep(1)
                    pids = {name: mesh.processes[name].pid for name in ("gateway", "library")}
                    idle = {name: status_kib(pid, "VmRSS") for name, pid in pids.items()}
                    results["idle_mib"] = {name: kib / 1024 for name, kib in idle.items()}
                    results["file_download"] = await downloads_at_once(
                        http, f"/v1/files/{file['id']}/content", headers, clients, pids, idle
                    )
                    results["sample_download"] = await downloads_at_once(
                        http, f"/v1/voice/samples/{long['id']}/audio", headers, clients, pids, idle
                    )
            except BaseException:
                for name, lines in mesh.log_lines.items():
                    print(f"--- last log lines of {name}:", *lines[-20:], sep="\n", file=sys.stderr)
                raise
            finally:
                await mesh.stop()
    return results


def report(old: dict, new: dict, clients: int) -> None:
    width = 26

    def row(what: str, before: str, after: str) -> None:
        print(f"{what:<62}{before:>{width}}{after:>{width}}")

    row("", old["label"], new["label"])
    row(
        f"PostgreSQL bytes per voice sample (audio {old['sample_audio'] / 1000:,.0f} kB)",
        f"{old['sample_row']:,.0f}", f"{new['sample_row']:,.0f}",
    )  # fmt: skip
    row(
        f"PostgreSQL bytes per generation (audio {new['generation_audio'] / 1000:,.0f} kB)",
        f"{old['generation_row']:,.0f}", f"{new['generation_row']:,.0f}",
    )  # fmt: skip
    row("upload of a 20 MB file, one at a time (MB/s)", f"{old['file_upload_mb_s']:.1f}", f"{new['file_upload_mb_s']:.1f}")
    for kind, what in (("file_download", "a 20 MB file"), ("sample_download", "a voice sample's 21 MB WAV")):
        size = new[kind]["size"] / MB
        row(f"{clients} clients downloading {what} at once ({size:.1f} MB each)", "", "")
        row("  throughput of all of them (MB/s)", f"{old[kind]['mb_per_s']:.0f}", f"{new[kind]['mb_per_s']:.0f}")
        for name in ("gateway", "library"):
            row(
                f"  {name} peak above idle (MiB)",
                f"{old[kind]['peaks_mib'][name]:,.1f}", f"{new[kind]['peaks_mib'][name]:,.1f}",
            )  # fmt: skip
    row(
        "idle gateway / library (MiB)",
        "{gateway:.0f} / {library:.0f}".format(**old["idle_mib"]), "{gateway:.0f} / {library:.0f}".format(**new["idle_mib"]),
    )  # fmt: skip


async def run(args) -> None:
    with tempfile.TemporaryDirectory(prefix="voicemesh-bench-tree-") as scratch:
        tree = checkout(args.against, pathlib.Path(scratch))
        old = await measure(tree, f"before ({args.against})", args.clients)
    new = await measure(None, "after (this checkout)", args.clients)
    print(f"tiny model on CPU; {os.cpu_count()} CPUs; one mesh after the other")
    report(old, new, args.clients)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", default=BEFORE, help="git revision keeping audio in PostgreSQL")
    parser.add_argument("--clients", type=int, default=20, help="downloads at once")
    args = parser.parse_args()
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
