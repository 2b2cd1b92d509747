"""Limits at their edges, on a library process of this module's own with small
settings (beside the session's; same database and transcode service), and a
speech recognizer that never answers."""

from __future__ import annotations

import asyncio
import re
import urllib.request

import grpc
import pytest

from tests.conftest import free_port
from tools.mesh import Mesh
from tests.library.helpers import (
    library_client,
    library_process,
    new_account,
    refusal,
    tone_wav,
    upload,
)
from voice.library.v1 import library_pb2_grpc

MAX_SECONDS = 2.0
DURATION_TEST_RATE = 22050  # a CD-family rate; its clips stay under the byte limit below
# The largest upload allowed is exactly this clip (1 s at 48 kHz, 96 kB).
CLIP_AT_THE_BYTE_LIMIT = tone_wav(1.0, rate=48000)


@pytest.fixture(scope="module")
async def silent_stt():
    """A TCP port that accepts connections and never says a word: an STT stuck for good."""
    connections: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", free_port())
    yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    for writer in connections:
        writer.close()
    server.close()
    await server.wait_closed()


@pytest.fixture(scope="module")
async def limited(mesh, silent_stt):
    """A LibraryService stub on a library with small limits."""
    async with library_process(
        mesh.env,
        LIBRARY_MAX_UPLOAD_BYTES=str(len(CLIP_AT_THE_BYTE_LIMIT)),
        LIBRARY_MAX_SAMPLE_SECONDS=str(MAX_SECONDS),
        LIBRARY_STT_TIMEOUT_SECONDS="1",
        STT_ADDR=silent_stt,
    ) as process:
        async with library_client(process.address("library")) as channel:
            yield library_pb2_grpc.LibraryServiceStub(channel)


async def test_an_upload_of_exactly_the_byte_limit_is_accepted(limited):
    sample = await upload(limited, new_account(), CLIP_AT_THE_BYTE_LIMIT, transcript="at the limit")
    assert sample.original_size_bytes == len(CLIP_AT_THE_BYTE_LIMIT)


async def test_one_byte_over_the_limit_is_request_too_large(limited):
    error = await refusal(upload(limited, new_account(), CLIP_AT_THE_BYTE_LIMIT + b"\0"))
    assert (error.code, error.reason, error.param) == (
        grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_TOO_LARGE", "audio"
    )
    # Refused on its size alone, before any decoding: garbage says the same.
    garbage = b"\xff" * (len(CLIP_AT_THE_BYTE_LIMIT) + 1)
    assert (await refusal(upload(limited, new_account(), garbage))).reason == "REQUEST_TOO_LARGE"


async def test_a_clip_of_exactly_the_longest_duration_is_accepted(limited):
    sample = await upload(limited, new_account(), tone_wav(MAX_SECONDS, rate=DURATION_TEST_RATE), transcript="x")
    assert sample.duration_seconds == pytest.approx(MAX_SECONDS, abs=0.01)


async def test_a_clip_longer_than_the_limit_is_audio_too_long(limited):
    error = await refusal(upload(limited, new_account(), tone_wav(MAX_SECONDS + 0.1, rate=DURATION_TEST_RATE)))
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "AUDIO_TOO_LONG")


async def test_audio_over_the_transcode_byte_limit_is_request_too_large_while_it_streams(mesh):
    # A transcode service of its own that takes less than the library does: it refuses the
    # upload part way through the pieces, and the library says so as for its own limit.
    transcode_limit = 1_500_000
    env = dict(mesh.env)
    env.update(
        TRANSCODE_GRPC_PORT=str(free_port()),
        TRANSCODE_METRICS_PORT=str(free_port()),
        TRANSCODE_MAX_INPUT_BYTES=str(transcode_limit),
    )
    env["TRANSCODE_ADDR"] = f"127.0.0.1:{env['TRANSCODE_GRPC_PORT']}"
    transcode = Mesh(["transcode"], env)
    try:
        await transcode.start(timeout=60)
        async with library_process(env) as process, library_client(process.address("library")) as channel:
            stub = library_pb2_grpc.LibraryServiceStub(channel)
            error = await refusal(upload(stub, new_account(), b"\0" * 3_000_000, transcript="x"))
            assert (error.code, error.reason, error.param) == (
                grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_TOO_LARGE", "audio"
            )
            assert str(transcode_limit) in error.message
            fits = tone_wav(10.0, rate=44100)  # 882 kB
            assert (await upload(stub, new_account(), fits, transcript="x")).original_size_bytes == len(fits)
    finally:
        await transcode.stop()


async def test_a_speech_recognizer_that_does_not_answer_in_time_leaves_no_transcript(limited):
    # The recognizer never answers; the upload must not wait past LIBRARY_STT_TIMEOUT_SECONDS
    # (the client's deadline here is far longer), and the sample is kept without a transcript.
    sample = await upload(limited, new_account(), tone_wav(0.5), timeout=20)
    assert (sample.transcript, sample.transcript_source) == ("", "")


# --- uploads at once ---------------------------------------------------------------


async def uploads_in_progress(metrics_port: str) -> float:
    def read() -> str:
        return urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()

    found = re.search(r"^library_uploads_in_progress (\S+)$", await asyncio.to_thread(read), re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def test_past_the_uploads_at_once_one_more_is_refused_at_once_with_a_retry_after(mesh, silent_stt):
    # One upload at a time; the one without a transcript waits for the silent recognizer.
    async with library_process(
        mesh.env, LIBRARY_MAX_CONCURRENT_UPLOADS="1", LIBRARY_STT_TIMEOUT_SECONDS="10", STT_ADDR=silent_stt
    ) as process:
        async with library_client(process.address("library")) as channel:
            stub = library_pb2_grpc.LibraryServiceStub(channel)
            account = new_account()
            waiting = asyncio.create_task(upload(stub, account, tone_wav(0.5), timeout=60))
            deadline = asyncio.get_running_loop().time() + 30
            while await uploads_in_progress(process.env["LIBRARY_METRICS_PORT"]) != 1:
                assert asyncio.get_running_loop().time() < deadline, "the first upload never started"
                await asyncio.sleep(0.05)

            error = await refusal(upload(stub, account, tone_wav(0.5), transcript="typed"))
            assert (error.code, error.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "UPLOADS_BUSY")
            assert error.retry_after is not None and error.retry_after >= 1

            assert (await waiting).transcript == ""  # stored once the recognizer's time was up
            assert (await upload(stub, account, tone_wav(0.5), transcript="typed")).transcript == "typed"
