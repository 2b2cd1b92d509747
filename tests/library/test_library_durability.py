"""Samples survive restarts of the library and of PostgreSQL, and an upload that
meets a dead database fails quickly and cleanly.

These tests stop and start PostgreSQL, so they run on a server of their own
(an embedded PostgreSQL in a temporary folder) with a library process of their
own; the session's transcode service normalizes the audio. No speech
recognizer is reachable from this library.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil
import signal
import tempfile

import grpc
import pytest
from grpc_health.v1 import health_pb2

from runtime.errors import ApiError
from tests.conftest import free_port
from tests.library.helpers import (
    as_account,
    audio_of,
    health,
    library_client,
    library_process,
    new_account,
    sha256,
    speech_webm,
    tone_ogg_opus,
    tone_wav,
    upload,
    wait_health,
)
from tools.mesh import start_embedded_postgres
from voice.library.v1 import library_pb2, library_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# How long a client waits for an answer while the database is down: an upload
# must fail with DATABASE_UNAVAILABLE well within it, never hang into it.
UNAVAILABLE_DEADLINE_SECONDS = 30


class Postgres:
    """An embedded PostgreSQL this module can stop and start again."""

    def __init__(self) -> None:
        self.folder = pathlib.Path(tempfile.mkdtemp(prefix="voicemesh-library-pg-"))
        self.server = start_embedded_postgres(self.folder / "data")
        self.url = self.server.get_uri()

    async def stop(self) -> None:
        """A fast shutdown: open transactions rolled back, every connection cut, as in a crash.

        That is `pg_ctl -m fast stop`, done by signalling the postmaster directly:
        forking pg_ctl while gRPC threads are busy in this process can crash the child.
        """
        os.kill(self.server.get_pid(), signal.SIGINT)
        # Like pg_ctl, wait for the server to remove its pid file as it exits.
        while (self.server.pgdata / "postmaster.pid").exists():
            await asyncio.sleep(0.05)

    async def start(self) -> None:
        await asyncio.to_thread(self.server.ensure_postgres_running)
        assert self.server.get_uri() == self.url  # same socket: the library's URL still holds

    def remove(self) -> None:
        self.server.cleanup()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="module")
async def postgres():
    server = await asyncio.to_thread(Postgres)
    yield server
    await asyncio.to_thread(server.remove)


@pytest.fixture(scope="module")
async def own_library(mesh, postgres):
    """The library process (a tools.mesh.Mesh of one) on the module's own PostgreSQL."""
    async with library_process(
        mesh.env,
        DATABASE_URL=postgres.url,
        STT_ADDR=f"127.0.0.1:{free_port()}",  # nothing listens there
        LIBRARY_READINESS_INTERVAL_SECONDS="0.5",
        LIBRARY_DATABASE_RETRY_SECONDS="0.2",
        DATABASE_TIMEOUT_SECONDS="5",
        # A stream of uploads meets the database going away: none is refused for being one too many.
        LIBRARY_MAX_CONCURRENT_UPLOADS="1000",
    ) as process:
        yield process


@pytest.fixture
async def stub(own_library):
    # A fresh channel per test: the library's port stays, its process may change.
    async with library_client(own_library.address("library")) as channel:
        yield library_pb2_grpc.LibraryServiceStub(channel)


async def stored_state(stub, account: int) -> dict[int, tuple[library_pb2.VoiceSample, str]]:
    """Every sample of the account with the hash of its normalized audio."""
    page = await stub.ListVoiceSamples(
        library_pb2.ListVoiceSamplesRequest(page_size=100),
        metadata=as_account(account),
        timeout=30,
    )
    return {
        sample.id: (sample, sha256(await audio_of(stub, account, sample.id)))
        for sample in page.voice_samples
    }


async def upload_outcome(stub, account: int, audio: bytes) -> library_pb2.VoiceSample | ApiError:
    try:
        return await upload(stub, account, audio, transcript="words", timeout=UNAVAILABLE_DEADLINE_SECONDS)
    except grpc.aio.AioRpcError as error:
        return ApiError.from_rpc_error(error)


def assert_database_unavailable(outcome) -> None:
    assert isinstance(outcome, ApiError), f"acknowledged while the database was down: {outcome}"
    assert (outcome.code, outcome.reason) == (grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE")


async def test_without_a_reachable_speech_recognizer_a_sample_is_stored_without_transcript(stub):
    account = new_account()
    sample = await upload(stub, account, speech_webm())
    assert (sample.transcript, sample.transcript_source) == ("", "")
    assert sample.original_format == "webm/opus"


async def test_samples_survive_a_restart_of_the_library(own_library, stub):
    account = new_account()
    for n, audio in enumerate((speech_webm(), tone_ogg_opus(1.0), tone_wav(1.0))):
        await upload(stub, account, audio, transcript="kept", is_default=n == 0)
    before = await stored_state(stub, account)

    await own_library.stop_service("library")
    await own_library.start_service("library")
    await own_library.wait_serving("library", timeout=60)

    assert await stored_state(stub, account) == before
    assert len(before) == 3


async def test_samples_survive_a_restart_of_postgres(own_library, postgres, stub):
    account = new_account()
    for audio in (speech_webm(), tone_wav(2.0)):
        await upload(stub, account, audio, transcript="kept")
    before = await stored_state(stub, account)
    address = own_library.address("library")

    await postgres.stop()
    try:
        await wait_health(address, NOT_SERVING)  # the readiness probe notices
        # ... while the process stays alive: a liveness probe must not restart it for this.
        assert await health(address, "") == SERVING
        # Uploads and reads fail with a clear 503 within the client's deadline.
        assert_database_unavailable(await upload_outcome(stub, account, tone_wav(1.0)))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stored_state(stub, account)
        assert_database_unavailable(ApiError.from_rpc_error(caught.value))
    finally:
        await postgres.start()
    await wait_health(address, SERVING)

    assert await stored_state(stub, account) == before
    after = await upload(stub, account, tone_wav(0.5), transcript="after")
    assert after.id not in before


async def test_a_library_started_without_its_database_serves_once_the_database_is_back(
    own_library, postgres, stub
):
    account = new_account()
    kept = await upload(stub, account, tone_wav(1.0), transcript="kept")
    address = own_library.address("library")
    await own_library.stop_service("library")
    await postgres.stop()
    try:
        await own_library.start_service("library")
        await wait_health(address, NOT_SERVING)  # listening, but not ready for calls
        assert_database_unavailable(await upload_outcome(stub, account, tone_wav(1.0)))
    finally:
        await postgres.start()
    await own_library.wait_serving("library", timeout=60)
    assert list(await stored_state(stub, account)) == [kept.id]


async def test_every_acknowledged_upload_survives_postgres_stopping_mid_upload(
    own_library, postgres, stub
):
    account = new_account()
    clip = tone_wav(3.0, rate=44100)
    reference = await upload(stub, account, clip, transcript="reference")
    reference_audio = sha256(await audio_of(stub, account, reference.id))

    # A stream of uploads, one every few milliseconds; PostgreSQL stops as soon as one is
    # acknowledged, and the stream goes on until a few more have started with it down.
    uploads: list[asyncio.Task] = []
    acknowledged_once, postgres_down = asyncio.Event(), asyncio.Event()

    async def one_upload():
        outcome = await upload_outcome(stub, account, clip)
        if isinstance(outcome, library_pb2.VoiceSample):
            acknowledged_once.set()
        return outcome

    async def stream_of_uploads():
        started_while_down = 0
        while started_while_down < 3:
            started_while_down += postgres_down.is_set()
            uploads.append(asyncio.create_task(one_upload()))
            await asyncio.sleep(0.02)

    stream = asyncio.create_task(stream_of_uploads())
    try:
        await asyncio.wait_for(acknowledged_once.wait(), timeout=30)
        await postgres.stop()
        postgres_down.set()
        await stream
        outcomes = await asyncio.gather(*uploads)
    finally:
        stream.cancel()
        await postgres.start()
    await wait_health(own_library.address("library"), SERVING)

    acknowledged = {o.id for o in outcomes if isinstance(o, library_pb2.VoiceSample)}
    refused = [o for o in outcomes if not isinstance(o, library_pb2.VoiceSample)]
    assert acknowledged and len(refused) >= 3
    for outcome in refused:  # each within the client's deadline, none DEADLINE_EXCEEDED
        assert_database_unavailable(outcome)
    stored = await stored_state(stub, account)
    assert acknowledged | {reference.id} <= set(stored)
    assert all(audio_hash == reference_audio for _, audio_hash in stored.values())
