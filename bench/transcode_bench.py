"""Benchmark: in-process decoding (the transcode service's code) against spawning ffmpeg.

Both decode the same 10 s, 48 kHz stereo Opus-in-WebM clip (made here with
PyAV) to 44.1 kHz mono 16-bit WAV, N times each, and the mean times are
printed side by side. ffmpeg gets the clip on stdin and writes the WAV to
stdout, so neither side touches the disk; it averages the channels with a
``pan`` filter, as the service does, so both do the same work.

    .venv/bin/python bench/transcode_bench.py [--runs N] [--ffmpeg PATH]

A benchmark, not a test: exits 2 with a message when ffmpeg is missing.
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import subprocess
import sys
import time
from fractions import Fraction

import av
import numpy as np

from services.transcode import audio
from services.transcode.audio import Limits

SECONDS, RATE = 10.0, 48000


def make_clip() -> bytes:
    """10 s of two tones (one per channel) plus a little noise, as stereo Opus in WebM."""
    t = np.arange(int(SECONDS * RATE)) / RATE
    noise = np.random.default_rng(0).normal(0, 0.02, (2, t.size))
    samples = (np.stack([0.4 * np.sin(2 * np.pi * 220 * t), 0.4 * np.sin(2 * np.pi * 330 * t)]) + noise)
    samples = samples.astype(np.float32)
    out = io.BytesIO()
    with av.open(out, "w", format="webm") as container:
        stream = container.add_stream("libopus", rate=RATE, layout="stereo")
        for start in range(0, t.size, 4800):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(samples[:, start : start + 4800]), format="fltp", layout="stereo"
            )
            frame.sample_rate, frame.pts, frame.time_base = RATE, start, Fraction(1, RATE)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return out.getvalue()


def in_process(clip: bytes) -> bytes:
    return audio.decode(clip, Limits(max_input_bytes=50 * 1024 * 1024, max_duration_seconds=600.0)).pcm.wav()


def with_ffmpeg(ffmpeg: str, clip: bytes) -> bytes:
    command = [
        ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error",
        "-i", "pipe:0",
        "-af", "pan=mono|c0=0.5*c0+0.5*c1",
        "-ar", "44100", "-sample_fmt", "s16", "-f", "wav", "pipe:1",
    ]  # fmt: skip
    return subprocess.run(command, input=clip, capture_output=True, check=True).stdout


def wav_seconds(data: bytes) -> float:
    """Seconds of 44.1 kHz mono s16 from the bytes after the data chunk header.

    ffmpeg writing to a pipe cannot go back to fill in the chunk sizes.
    """
    return (len(data) - data.index(b"data") - 8) / 2 / 44100


def timed(work, runs: int) -> list[float]:
    work()  # warm-up: imports, codec tables, page cache
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="decodes per side (default 20)")
    parser.add_argument("--ffmpeg", default="/usr/bin/ffmpeg", help="the ffmpeg command-line tool")
    args = parser.parse_args()
    if args.runs < 2:
        parser.error("--runs must be at least 2")
    ffmpeg = shutil.which(args.ffmpeg)
    if ffmpeg is None:
        print(f"ffmpeg not found at {args.ffmpeg}: install it (apt-get install ffmpeg) or pass --ffmpeg PATH")
        return 2

    clip = make_clip()
    ours, theirs = in_process(clip), with_ffmpeg(ffmpeg, clip)
    print(f"clip: {len(clip)} bytes, {SECONDS:g} s 48 kHz stereo Opus in WebM; {args.runs} runs each")
    print(
        f"output (44.1 kHz mono s16 WAV): in-process {wav_seconds(ours):.3f} s, ffmpeg {wav_seconds(theirs):.3f} s"
    )

    process_times = timed(lambda: in_process(clip), args.runs)
    ffmpeg_times = timed(lambda: with_ffmpeg(ffmpeg, clip), args.runs)
    mean_ours, mean_theirs = statistics.mean(process_times), statistics.mean(ffmpeg_times)
    print(f"{'':22}{'mean':>10}{'stdev':>10}{'min':>10}")
    for name, times in (("in-process (PyAV)", process_times), ("ffmpeg subprocess", ffmpeg_times)):
        print(f"{name:22}{statistics.mean(times) * 1000:>8.1f}ms{statistics.stdev(times) * 1000:>8.1f}ms"
              f"{min(times) * 1000:>8.1f}ms")  # fmt: skip
    print(f"ffmpeg / in-process: {mean_theirs / mean_ours:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
