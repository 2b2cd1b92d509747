"""Helpers of the synth tests: requests, WAV inspection, errors, metrics, a synth of a test's own."""

from __future__ import annotations

import contextlib
import io
import re
import urllib.request
import wave
from typing import AsyncIterator

import grpc
import numpy as np
import pytest

from runtime.errors import ApiError
from tests.audio import wav_file
from tests.conftest import free_port
from tools.mesh import Mesh
from voice.synth.v1 import synth_pb2

SAMPLE_RATE = 44100
SAMPLES_PER_FRAME = 512
FRAMES_WITHOUT_AUDIO = 16  # end marker + 15-frame delay tail
SCRIPT = "[S1] Hello, and welcome to the show. [S2] Thanks for having me."
# Short generations keep the suite fast on two shared cores.
FRAMES = 60


def request(
    script: str = SCRIPT, prompt: tuple[bytes, str] | None = None, model: str = "", **settings
) -> synth_pb2.SynthesizeRequest:
    settings.setdefault("max_new_tokens", FRAMES)
    synthesis = synth_pb2.SynthesisSpec(model=model, script=script, settings=synth_pb2.GenerationSettings(**settings))
    if prompt is not None:
        synthesis.audio_prompt.wav, synthesis.audio_prompt.transcript = prompt
    return synth_pb2.SynthesizeRequest(synthesis=synthesis)


async def error_of(call) -> ApiError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return ApiError.from_rpc_error(caught.value)


def wav_layout(wav: bytes) -> tuple[int, int, int]:
    """(sample rate, channels, bits per sample)."""
    with wave.open(io.BytesIO(wav)) as reader:
        return reader.getframerate(), reader.getnchannels(), 8 * reader.getsampwidth()


def wav_samples(wav: bytes) -> np.ndarray:
    with wave.open(io.BytesIO(wav)) as reader:
        return np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2")


def noise_wav(seconds: float, rate: int = SAMPLE_RATE, channels: int = 1, seed: int = 0) -> bytes:
    """Quiet noise as 16-bit WAV: a stand-in voice for cloning prompts."""
    count = round(seconds * rate)
    return wav_file(np.random.default_rng(seed).standard_normal(count * channels) * 3000, rate, channels)


def audio_samples_for(generated_frames: int) -> int:
    return (generated_frames - FRAMES_WITHOUT_AUDIO) * SAMPLES_PER_FRAME


def metric(metrics_port: str | int, name: str) -> float:
    """One unlabelled sample of the service's Prometheus /metrics (0 when absent)."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    match = re.search(rf"^{re.escape(name)} (\S+)$", body, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@contextlib.asynccontextmanager
async def own_synth(mesh, registered: bool = False, **settings: str) -> AsyncIterator[Mesh]:
    """A synth process of the test's own, with its own settings and ports.

    Unless `registered`, its heartbeats go to a port nobody listens on, so the
    mesh's gateway never routes the other tests' requests to it.
    """
    env = dict(mesh.env, **settings)
    env.update(SYNTH_GRPC_PORT=str(free_port()), SYNTH_METRICS_PORT=str(free_port()))
    if not registered:
        env["GATEWAY_ADDR"] = f"127.0.0.1:{free_port()}"
    process = Mesh(["synth"], env)
    process.echo = mesh.echo
    try:
        await process.start_service("synth")
        yield process
    finally:
        await process.stop()


async def serving_synth(mesh, **settings: str):
    """own_synth, once SERVING; yields its address."""
    async with own_synth(mesh, **settings) as process:
        await process.wait_serving("synth", timeout=120)
        yield process.address("synth")


def fail_decode_steps(monkeypatch, fails) -> list[int]:
    """Make decode steps (one new frame per row: model_step.decoder_step, not a prefill) raise when
    `fails(number of the call, highest position fed)` says so; returns the calls that raised."""
    from services.synth.engine import model_step  # here: the gateway's tests use these helpers without torch

    step, raised, calls = model_step.decoder_step, [], [0]

    def step_with_faults(model, frames, positions, *cache):
        calls[0] += 1
        if fails(calls[0], int(positions.max())):
            raised.append(calls[0])
            raise RuntimeError("injected fault (a device error, say)")
        return step(model, frames, positions, *cache)

    monkeypatch.setattr(model_step, "decoder_step", step_with_faults)
    return raised
