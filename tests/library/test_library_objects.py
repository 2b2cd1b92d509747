"""Voice samples' audio in the object store (the real SeaweedFS): PostgreSQL keeps what each sample is
and the keys of its two objects, the upload as it came and its WAV; deleting a sample, or all of an
account's, deletes them from the store; a store that is down fails uploads with storage_unavailable
and leaves nothing behind; objects that no row names are swept once older than the grace period."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2

from runtime import objects
from tests.conftest import ObjectStoreServer, free_port
from tests.library.helpers import (
    as_account,
    audio_of,
    library_client,
    library_process,
    new_account,
    refusal,
    speech_webm,
    tone_wav,
    upload,
    wait_health,
)
from voice.library.v1 import library_pb2, library_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
async def store(object_server):
    async with objects.ObjectStore(object_server.settings) as opened:
        yield opened


async def keys_under(store: objects.ObjectStore, prefix: str) -> set[str]:
    return {item.key async for item in store.list_objects(prefix)}


async def row(database, sample_id: int) -> asyncpg.Record:
    connection = await asyncpg.connect(database.url)
    try:
        return await connection.fetchrow(
            """SELECT original_key, normalized_key, pg_column_size(s.*) AS row_bytes
               FROM library.samples s WHERE id = $1""",
            sample_id,
        )
    finally:
        await connection.close()


async def test_a_samples_audio_is_in_the_bucket_and_its_row_names_it(library, account, store, database):
    uploaded = speech_webm()
    sample = await upload(library, account, uploaded, transcript="hello", content_type="audio/webm")
    stored = await row(database, sample.id)
    assert stored["original_key"].startswith(f"samples/{account}/")
    assert await store.get(stored["original_key"]) == uploaded  # the upload as it came
    assert await store.get(stored["normalized_key"]) == await audio_of(library, account, sample.id)
    assert sample.original_size_bytes == len(uploaded)
    # The row holds no audio: a few hundred bytes, whatever the clip.
    assert stored["row_bytes"] < 1024
    assert await keys_under(store, f"samples/{account}/") == {stored["original_key"], stored["normalized_key"]}


async def test_the_audio_downloads_in_pieces_and_a_range_of_it(library, account):
    sample = await upload(library, account, tone_wav(30.0, rate=44100), transcript="long")  # 2.6 MB of WAV
    whole = await audio_of(library, account, sample.id)
    request = library_pb2.DownloadVoiceSampleAudioRequest(id=sample.id)
    call = library.DownloadVoiceSampleAudio(request, metadata=as_account(account), timeout=30)
    pieces = [reply.audio.data async for reply in call]
    assert b"".join(pieces) == whole
    assert len(pieces) > 1 and max(map(len, pieces)) <= 512 * 1024  # never the whole file at once
    assert dict(await call.initial_metadata())["x-content-length"] == str(len(whole))

    ranged = library.DownloadVoiceSampleAudio(request, metadata=(*as_account(account), ("range", "bytes=100-199")))
    assert b"".join([reply.audio.data async for reply in ranged]) == whole[100:200]
    assert dict(await ranged.initial_metadata())["x-content-range"] == f"bytes 100-199/{len(whole)}"

    past = library.DownloadVoiceSampleAudio(request, metadata=(*as_account(account), ("range", f"bytes={len(whole)}-")))
    error = await refusal(past.read())
    assert (error.code, error.reason) == (grpc.StatusCode.OUT_OF_RANGE, "RANGE_NOT_SATISFIABLE")


async def test_deleting_a_sample_deletes_its_objects(library, account, store, database):
    sample = await upload(library, account, tone_wav(1.0), transcript="gone")
    stored = await row(database, sample.id)
    await library.DeleteVoiceSample(library_pb2.DeleteVoiceSampleRequest(id=sample.id), metadata=as_account(account))
    for key in (stored["original_key"], stored["normalized_key"]):
        with pytest.raises(objects.ObjectNotFound):
            await store.head(key)


@pytest.fixture
async def account_data(mesh):
    """The library's AccountDataService (the gateway's, to delete an account's samples)."""
    async with library_client(mesh.address("library")) as channel:
        yield library_pb2_grpc.AccountDataServiceStub(channel)


async def test_deleting_an_accounts_samples_deletes_everything_stored_under_it(library, account_data, account, store):
    other = new_account()
    kept = await upload(library, other, tone_wav(0.5), transcript="another account's")
    for n in range(3):
        await upload(library, account, tone_wav(0.5 + n / 10), transcript=f"sample {n}")
    # Left by an upload whose row never came (a crash between the two): it goes too.
    await store.put(f"samples/{account}/left-behind/original", b"voice")
    reply = await account_data.DeleteAccountSamples(library_pb2.DeleteAccountSamplesRequest(account_id=account))
    assert (reply.deleted_samples, reply.deleted_objects) == (3, 7)
    assert await keys_under(store, f"samples/{account}/") == set()
    listed = await library.ListVoiceSamples(library_pb2.ListVoiceSamplesRequest(), metadata=as_account(account))
    assert list(listed.voice_samples) == []
    # Another account's samples are untouched.
    assert await audio_of(library, other, kept.id)
    assert len(await keys_under(store, f"samples/{other}/")) == 2


async def test_without_the_store_the_library_is_not_ready_and_an_upload_is_storage_unavailable(
    mesh, database
):
    dead = f"http://127.0.0.1:{free_port()}"
    async with library_process(
        mesh.env, S3_ENDPOINT_URL=dead, S3_ATTEMPTS="1", S3_TIMEOUT_SECONDS="2", LIBRARY_READINESS_INTERVAL_SECONDS="0.5"
    ) as process:
        address = process.address("library")
        await wait_health(address, NOT_SERVING)
        account = new_account()
        async with library_client(address) as channel:
            stub = library_pb2_grpc.LibraryServiceStub(channel)
            error = await refusal(upload(stub, account, tone_wav(1.0), transcript="not kept"))
            assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "STORAGE_UNAVAILABLE")
            assert error.retry_after == pytest.approx(objects.UNAVAILABLE_RETRY_SECONDS)
            listed = await stub.ListVoiceSamples(library_pb2.ListVoiceSamplesRequest(), metadata=as_account(account))
            assert list(listed.voice_samples) == []  # nothing acknowledged, nothing stored


async def test_objects_no_row_names_are_swept_once_older_than_the_grace_period(mesh, object_server):
    grace = 6.0
    async with library_process(
        mesh.env, S3_SWEEP_SECONDS="1", S3_ORPHAN_GRACE_SECONDS=str(grace)
    ) as process, library_client(process.address("library")) as channel:
        stub = library_pb2_grpc.LibraryServiceStub(channel)
        account = new_account()
        async with objects.ObjectStore(object_server.settings) as store:
            kept = await upload(stub, account, tone_wav(0.5), transcript="kept")
            orphan = f"samples/{account}/crashed-upload/normalized.wav"
            await store.put(orphan, b"RIFF")
            put_at = time.monotonic()
            # Younger than the grace period (an upload whose row may still come): left alone.
            while time.monotonic() - put_at < grace - 3:
                assert orphan in await keys_under(store, f"samples/{account}/")
                await asyncio.sleep(0.5)
            deadline = put_at + grace + 15
            while orphan in await keys_under(store, f"samples/{account}/"):
                assert time.monotonic() < deadline, "the orphan was never swept"
                await asyncio.sleep(0.5)
            # A sample's own objects stay, however old.
            assert len(await keys_under(store, f"samples/{account}/")) == 2
            assert await audio_of(stub, account, kept.id)


async def test_a_sample_deleted_while_the_store_is_down_loses_its_objects_once_it_is_back(mesh, tmp_path):
    own = ObjectStoreServer()
    await own.start()
    try:
        settings = own.settings
        env = {**mesh.env, **settings.environment(), "S3_SWEEP_SECONDS": "1", "S3_ATTEMPTS": "1"}
        async with library_process(env) as process, library_client(process.address("library")) as channel:
            stub = library_pb2_grpc.LibraryServiceStub(channel)
            account = new_account()
            sample = await upload(stub, account, tone_wav(1.0), transcript="to delete")
            async with objects.ObjectStore(settings) as store:
                stored = await keys_under(store, f"samples/{account}/")
            assert len(stored) == 2
            await own.server.stop(0)  # killed
            await stub.DeleteVoiceSample(library_pb2.DeleteVoiceSampleRequest(id=sample.id), metadata=as_account(account))
            error = await refusal(stub.GetVoiceSample(library_pb2.GetVoiceSampleRequest(id=sample.id), metadata=as_account(account)))
            assert error.reason == "NOT_FOUND"  # the sample is gone at once
            await own.server.start(timeout=120)  # back, with what it held
            async with objects.ObjectStore(dataclasses.replace(settings, attempts=3)) as store:
                deadline = time.monotonic() + 30
                while await keys_under(store, f"samples/{account}/"):
                    assert time.monotonic() < deadline, "the deleted sample's objects stayed in the store"
                    await asyncio.sleep(0.5)
    finally:
        await own.stop()
