"""Benchmark: the memory voice-sample uploads take, per upload in flight.

A mesh (PostgreSQL, transcode, library, gateway) runs as processes. Clients
upload a WAV of about 19 MB each (107 s of 44.1 kHz stereo 16-bit, under
LIBRARY_MAX_UPLOAD_BYTES and LIBRARY_MAX_SAMPLE_SECONDS) to
POST /v1/voice/samples as multipart forms, all at once. Before each round the
peak resident memory of the gateway and the library is reset
(/proc/PID/clear_refs); after it, each one's peak (VmHWM) less what it held
idle before the first big upload, divided by the uploads sent at once, is
printed as a multiple of the upload's size: the target is at most 3 times the
size in each process.

Two rounds: as many uploads as LIBRARY_MAX_CONCURRENT_UPLOADS (all admitted),
then twice that (the rest refused at once with 429 uploads_busy and a
Retry-After). The idle figure is taken after a small upload, so that
connections, pools and codecs count as idle, not as the uploads' cost.

    .venv/bin/python bench/upload_memory_bench.py [--uploads N] [--seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import pathlib
import sys
import wave

import aiohttp
import numpy as np

import harness

from services.library.config import MAX_CONCURRENT_UPLOADS

MIB = 1024 * 1024
RATE = 44100


def wav(seconds: float) -> bytes:
    """Stereo 16-bit noise at 44.1 kHz: incompressible, as a recording is."""
    samples = np.random.default_rng(0).integers(-8000, 8000, (int(seconds * RATE), 2), dtype="<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(2)
        writer.setsampwidth(2)
        writer.setframerate(RATE)
        writer.writeframes(samples.tobytes())
    return out.getvalue()


def status_kib(pid: int, field: str) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak(pid: int) -> None:
    pathlib.Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM starts again from VmRSS


async def upload(http, headers, audio: bytes) -> tuple[int, str | None]:
    form = aiohttp.FormData()
    form.add_field("audio", audio, filename="long.wav", content_type="audio/wav")
    form.add_field("speaker_name", "Bench")
    form.add_field("transcript", "a long recording")
    response = await http.post("/v1/voice/samples", data=form, headers=headers)
    body = await response.json()
    if response.status not in (200, 429):
        raise SystemExit(f"upload failed: {response.status} {body}")
    return response.status, response.headers.get("Retry-After")


async def one_round(http, headers, audio: bytes, uploads: int, pids: dict[str, int], idle: dict[str, int]) -> None:
    for pid in pids.values():
        reset_peak(pid)
    outcomes = await asyncio.gather(*(upload(http, headers, audio) for _ in range(uploads)))
    admitted = sum(status == 200 for status, _ in outcomes)
    refused = [after for status, after in outcomes if status == 429]
    peaks = {name: status_kib(pid, "VmHWM") for name, pid in pids.items()}
    extra = {name: (peaks[name] - idle[name]) * 1024 for name in pids}
    total = sum(extra.values())
    size = len(audio)
    print(
        f"{uploads} uploads of {size / MIB:.1f} MiB at once: {admitted} stored, {len(refused)} refused with 429 "
        f"(Retry-After {sorted(set(refused)) if refused else '-'})"
    )
    for name in pids:
        print(
            f"  {name:8} peak {peaks[name] / 1024:7.1f} MiB = idle + {extra[name] / MIB:6.1f} MiB "
            f"= {extra[name] / uploads / size:4.2f}x the upload per upload sent at once (target: at most 3x)"
        )
    print(f"  both     idle + {total / MIB:6.1f} MiB = {total / uploads / size:4.2f}x the upload per upload sent at once")


async def run(args) -> None:
    uploads = args.uploads or MAX_CONCURRENT_UPLOADS.value
    audio = wav(args.seconds)
    with harness.throwaway_postgres() as database_url:
        async with harness.throwaway_object_store() as object_store:
            env = harness.mesh_env(database_url, **object_store)
            # Typed transcripts: speech recognition is not on the path.
            async with harness.running(["transcode", "library", "gateway"], env) as mesh:
                (key,) = await harness.new_keys(database_url, 1)
                headers = {"Authorization": f"Bearer {key}"}
                pids = {name: mesh.processes[name].pid for name in ("gateway", "library")}
                async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{env['GATEWAY_HTTP_PORT']}") as http:
                    status, _ = await upload(http, headers, wav(1.0))  # warm-up: connections, pools, codecs
                    if status != 200:
                        raise SystemExit("the warm-up upload was refused")
                    await asyncio.sleep(1)
                    idle = {name: status_kib(pid, "VmRSS") for name, pid in pids.items()}
                    print(
                        "idle: " + ", ".join(f"{name} {kib / 1024:.1f} MiB" for name, kib in idle.items())
                        + f"; LIBRARY_MAX_CONCURRENT_UPLOADS={MAX_CONCURRENT_UPLOADS.value}"
                    )
                    await one_round(http, headers, audio, uploads, pids, idle)
                    await one_round(http, headers, audio, 2 * uploads, pids, idle)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=0, help="uploads of the first round (default: the cap)")
    parser.add_argument("--seconds", type=float, default=107.0, help="length of each WAV (default 107 s, 18.9 MB)")
    args = parser.parse_args()
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
