"""Helpers of the library tests: calls with an account, errors, audio made with PyAV,
and library processes of a test's own."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import itertools
import os
import pathlib
import random
import time
import wave
from typing import AsyncIterator

import av
import grpc
import numpy as np
import pytest
from google.api import httpbody_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runtime.errors import ApiError
from runtime.server import channel_options
from tests.audio import wav_file
from tests.conftest import free_port
from tools.mesh import Mesh
from voice.library.v1 import library_pb2

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "fixtures"

# Account ids far above what the gateway hands out, so tests never meet another's samples.
_accounts = itertools.count(random.randrange(10**12, 10**15, 10**6))


def new_account() -> int:
    return next(_accounts)


def as_account(account: int) -> tuple[tuple[str, str], ...]:
    return (("x-account-id", str(account)),)


def library_client(address: str) -> grpc.aio.Channel:
    # Normalized audio is megabytes: the mesh's message limit, not gRPC's default 4 MiB.
    return grpc.aio.insecure_channel(address, options=channel_options())


async def upload(
    stub, account: int, audio: bytes, *, content_type: str = "", timeout: float = 60, **fields
) -> library_pb2.VoiceSample:
    fields.setdefault("speaker_name", "Test speaker")
    request = library_pb2.CreateVoiceSampleRequest(
        audio=httpbody_pb2.HttpBody(data=audio, content_type=content_type), **fields
    )
    reply = await stub.CreateVoiceSample(request, metadata=as_account(account), timeout=timeout)
    return reply.voice_sample


async def audio_of(stub, account: int, sample_id: int) -> bytes:
    reply = await stub.GetVoiceSampleAudio(
        library_pb2.GetVoiceSampleAudioRequest(id=sample_id), metadata=as_account(account), timeout=30
    )
    assert reply.audio.content_type == "audio/wav"
    return reply.audio.data


async def refusal(call) -> ApiError:
    """The error an awaited call fails with, as code, reason and param."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return ApiError.from_rpc_error(caught.value)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- Audio ---------------------------------------------------------------


def tone_wav(seconds: float, rate: int = 8000, frequency: float = 440.0) -> bytes:
    """A 16-bit mono sine tone, `seconds` long exactly (whole samples)."""
    count = int(round(seconds * rate))
    return wav_file(np.sin(2 * np.pi * frequency * np.arange(count) / rate) * 8000, rate)


def tone_ogg_opus(seconds: float) -> bytes:
    """A stereo 48 kHz Opus tone in Ogg, as another compressed format than the WebM fixtures."""
    rate = 48000
    out = io.BytesIO()
    with av.open(out, "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=rate, layout="stereo")
        t = np.arange(int(seconds * rate)) / rate
        signal = (np.sin(2 * np.pi * 330 * t) * 0.3).astype(np.float32)
        for start in range(0, len(signal), 960):
            block = np.repeat(signal[np.newaxis, start : start + 960], 2, axis=0)
            frame = av.AudioFrame.from_ndarray(block, format="fltp", layout="stereo")
            frame.sample_rate = rate
            frame.pts = start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def wav_properties(data: bytes) -> tuple[int, int, int, float]:
    """(sample rate, channels, sample width in bytes, duration in seconds) of a WAV."""
    with wave.open(io.BytesIO(data)) as reader:
        return (
            reader.getframerate(),
            reader.getnchannels(),
            reader.getsampwidth(),
            reader.getnframes() / reader.getframerate(),
        )


def speech_webm() -> bytes:
    """A browser-style WebM/Opus recording of someone saying "Hello world, ..."."""
    return (FIXTURES / "speech_hello.webm").read_bytes()


# --- Processes of our own ------------------------------------------------


@contextlib.asynccontextmanager
async def library_process(base_env: dict[str, str], **settings: str) -> AsyncIterator[Mesh]:
    """A library process of the test's own, with `settings` on top of `base_env`, SERVING."""
    env = dict(base_env)
    env.update(LIBRARY_GRPC_PORT=str(free_port()), LIBRARY_METRICS_PORT=str(free_port()))
    env.update(settings)
    process = Mesh(["library"], env)
    process.echo = bool(os.environ.get("MESH_ECHO"))
    try:
        await process.start(timeout=60)
        yield process
    finally:
        await process.stop()


LIBRARY_SERVICE = "voice.library.v1.LibraryService"


async def health(address: str, service: str = LIBRARY_SERVICE) -> int:
    """The readiness of the library's service ("" asks whether the process is alive)."""
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=5
            )
        except grpc.aio.AioRpcError:
            return health_pb2.HealthCheckResponse.UNKNOWN
        return reply.status


async def wait_health(address: str, status: int, timeout: float = 60) -> None:
    """Poll the health check until it reports `status`."""
    deadline = time.monotonic() + timeout
    while (current := await health(address)) != status:
        assert time.monotonic() < deadline, f"health is {current}, not {status}, after {timeout} s"
        await asyncio.sleep(0.2)
