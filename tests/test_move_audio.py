"""`python -m tools.move_audio` on a database written before the audio moved to the object store:
every sample's, generation's and file's bytes go into the bucket, checked by their SHA-256, the
rows name them, and the migrations that waited drop the bytea columns; stopped half-way it goes
on where it was; until it has run, the services serve those rows from PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import pathlib
import random
import subprocess
import sys
import tempfile
import uuid

import asyncpg
import pytest

from runtime import database, objects
from runtime.errors import ApiError
from services.gateway.store import Store
from services.gateway.store import MIGRATIONS as GATEWAY_MIGRATIONS
from services.library import service as library_service
from services.library import store as library_store
from tests.conftest import ROOT, Database
from tools import mesh, move_audio

# The last migrations before issue 23, and what each service wrote then.
BEFORE = {"gateway": 10, "library": 1}


def audio(n: int, size: int = 50_000) -> bytes:
    return hashlib.sha256(str(n).encode()).digest() * (size // 32)


async def migrate_up_to(url: str, schema: str, folder: pathlib.Path, last: int) -> None:
    with tempfile.TemporaryDirectory() as copy:
        for version, path in database.migrations(folder):
            if version <= last:
                (pathlib.Path(copy) / path.name).write_text(path.read_text())
        connection = await asyncpg.connect(url)
        try:
            await database.migrate(connection, schema, pathlib.Path(copy))
        finally:
            await connection.close()


@pytest.fixture
async def old_database(database):
    """A database as the release before issue 23 left it: audio in bytea columns."""
    own = Database()
    own.admin_url = database.admin_url
    await own.create()
    await migrate_up_to(own.url, "gateway", GATEWAY_MIGRATIONS, BEFORE["gateway"])
    await migrate_up_to(own.url, "library", library_service.MIGRATIONS, BEFORE["library"])
    connection = await asyncpg.connect(own.url)
    try:
        # An id of its own: the objects go to the session's bucket, under samples/<account>/ and the like.
        account = await connection.fetchval(
            "INSERT INTO gateway.accounts (id, name) VALUES ($1, 'old') RETURNING id", random.randrange(10**12, 10**15)
        )
        for n in range(5):
            await connection.execute(
                """INSERT INTO library.samples (account_id, speaker_name, original_format, original_audio, normalized_wav,
                       duration_seconds) VALUES ($1, $2, 'wav/pcm_s16le', $3, $4, 1.0)""",
                account, f"speaker {n}", audio(n), audio(100 + n),
            )
            await connection.execute(
                """INSERT INTO gateway.generations (id, account_id, status, input, share_token, audio, end_time)
                   VALUES ($1, $2, 'succeeded', 'hello', $3, $4, now())""",
                f"gen_old{n:05d}", account, uuid.uuid4().hex, audio(200 + n),
            )
        await connection.execute(
            "INSERT INTO gateway.generations (id, account_id, status, input, share_token) VALUES ('gen_failed00', $1, 'failed', 'x', 'tok')",
            account,
        )
        await connection.execute(
            """INSERT INTO gateway.prediction_files (id, account_id, name, content_type, sha256, content)
               VALUES ('file_old', $1, 'old.wav', 'audio/wav', $2, $3)""",
            account, hashlib.sha256(audio(300)).hexdigest(), audio(300),
        )
    finally:
        await connection.close()
    own.account = account
    yield own
    await own.drop()


@pytest.fixture
async def bucket(object_server):
    """The session's bucket (SeaweedFS grows volumes for each bucket: a few fill a small disk)."""
    async with objects.ObjectStore(object_server.settings) as store:
        yield object_server.settings, store


def run_move(url: str, settings: objects.StoreSettings) -> subprocess.CompletedProcess:
    env = mesh.mesh_environment(None) | settings.environment() | {"DATABASE_URL": url, "LOG_FORMAT": "json"}
    return subprocess.run(
        [sys.executable, "-m", "tools.move_audio", "--batch", "2"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )


async def columns(url: str) -> set[str]:
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch(
            """SELECT table_schema || '.' || table_name || '.' || column_name AS name FROM information_schema.columns
               WHERE table_schema IN ('gateway', 'library')"""
        )
    finally:
        await connection.close()
    return {row["name"] for row in rows}


LEGACY_COLUMNS = {
    "library.samples.original_audio",
    "library.samples.normalized_wav",
    "gateway.generations.audio",
    "gateway.prediction_files.content",
}


async def test_it_moves_every_rows_bytes_into_the_bucket_and_then_the_columns_go(old_database, bucket):
    settings, store = bucket
    url = old_database.url
    result = run_move(url, settings)
    assert result.returncode == 0, result.stdout + result.stderr
    (report,) = [json.loads(line) for line in result.stderr.splitlines() if "audio moved" in line]
    assert (report["samples"], report["generations"], report["files"], report["columns_dropped"]) == (5, 5, 1, True)

    connection = await asyncpg.connect(url)
    try:
        for n, row in enumerate(await connection.fetch("SELECT * FROM library.samples ORDER BY id")):
            assert await store.get(row["original_key"]) == audio(n)
            assert await store.get(row["normalized_key"]) == audio(100 + n)
            assert (row["original_bytes"], row["normalized_bytes"]) == (len(audio(n)), len(audio(100 + n)))
        moved = await connection.fetch("SELECT * FROM gateway.generations WHERE status = 'succeeded' ORDER BY id")
        for n, row in enumerate(moved):
            assert await store.get(row["audio_key"]) == audio(200 + n)
            assert row["audio_bytes"] == len(audio(200 + n))
        assert await connection.fetchval("SELECT audio_key FROM gateway.generations WHERE id = 'gen_failed00'") is None
        file_key = await connection.fetchval("SELECT content_key FROM gateway.prediction_files")
        assert await store.get(file_key) == audio(300)
        # The migrations that waited for it ran: every one is recorded now.
        for schema, folder in (("gateway", GATEWAY_MIGRATIONS), ("library", library_service.MIGRATIONS)):
            recorded = [r[0] for r in await connection.fetch(f"SELECT version FROM {schema}.schema_migrations ORDER BY 1")]
            assert recorded == [version for version, _ in database.migrations(folder)]
    finally:
        await connection.close()
    assert not LEGACY_COLUMNS & await columns(url)

    again = run_move(url, settings)  # nothing left: nothing done, nothing broken
    assert again.returncode == 0, again.stdout + again.stderr
    (report,) = [json.loads(line) for line in again.stderr.splitlines() if "audio moved" in line]
    assert (report["samples"], report["generations"], report["files"]) == (0, 0, 0)


class FailingAfter(objects.ObjectStore):
    """The real store, which becomes unreachable after `puts` stores (as a store that dies does)."""

    def __init__(self, settings, puts: int) -> None:
        super().__init__(settings)
        self.left = puts

    async def put(self, key, data, content_type=None):
        if self.left <= 0:
            raise objects.storage_unavailable()
        self.left -= 1
        return await super().put(key, data, content_type)


async def test_stopped_half_way_it_goes_on_where_it_was_and_meanwhile_the_columns_stay(old_database, bucket, monkeypatch):
    settings, store = bucket
    url = old_database.url
    monkeypatch.setattr(move_audio.objects, "ObjectStore", lambda s: FailingAfter(s, puts=5))
    with pytest.raises(ApiError):
        await move_audio.move_all(url, settings, batch=2)
    monkeypatch.undo()
    connection = await asyncpg.connect(url)
    try:
        left = await connection.fetchval("SELECT count(*) FROM library.samples WHERE original_key IS NULL")
        assert 0 < left < 5  # some moved, some not
        # The rows not moved yet are still served from PostgreSQL, as before.
        pool = await database.open_pool(library_service.SCHEMA, library_service.MIGRATIONS, url)
        try:
            unmoved = await connection.fetchval("SELECT id FROM library.samples WHERE original_key IS NULL LIMIT 1")
            stored = await library_store.get_audio(pool, old_database.account, unmoved)
            assert stored.key is None and stored.legacy == audio(unmoved - 1 + 100)
        finally:
            await pool.close()
    finally:
        await connection.close()
    assert LEGACY_COLUMNS <= await columns(url)  # the drop waits

    moved = await move_audio.move_all(url, settings, batch=2)
    assert moved.samples == left and moved.generations == 5 and moved.files == 1
    assert not LEGACY_COLUMNS & await columns(url)
    # The objects a run cut short had stored were overwritten, not left beside: two per sample, one each else.
    assert len({item.key async for item in store.list_objects(f"samples/{old_database.account}/")}) == 10


async def test_a_stored_object_whose_checksum_differs_changes_no_row(old_database, bucket, monkeypatch):
    settings, store = bucket

    class Corrupting(objects.ObjectStore):
        async def get(self, key):
            return (await super().get(key))[:-1] + b"!"

    monkeypatch.setattr(move_audio.objects, "ObjectStore", Corrupting)
    with pytest.raises(move_audio.ChecksumMismatch):
        await move_audio.move_all(old_database.url, settings)
    connection = await asyncpg.connect(old_database.url)
    try:
        assert await connection.fetchval("SELECT count(*) FROM library.samples WHERE original_key IS NULL") == 5
    finally:
        await connection.close()


async def test_generations_written_before_are_served_from_postgresql_until_moved(old_database):
    store = await Store.open(old_database.url)  # migrates: keys and sizes, the bytes still in their columns
    try:
        stored = await store.generations.audio(old_database.account, "gen_old00003")
        assert (stored.key, stored.legacy, stored.size) == (None, audio(203), len(audio(203)))
        content = await store.files.content(old_database.account, "file_old")
        assert content.legacy == audio(300)
    finally:
        await store.close()
