"""Move the audio that PostgreSQL holds into the object store, then let the migrations drop its columns.

`python -m tools.move_audio` (with DATABASE_URL and the S3_* settings the
services have): before issue 23 every voice sample's audio (the upload and
its WAV), every generation's WAV and every uploaded file was a ``bytea``
value. For each such row, a batch at a time, it

1. stores the bytes in the bucket under the key the row will name
   (``samples/<account>/moved-<id>/...``, ``generations/<account>/<id>-moved.wav``,
   ``files/<account>/<id>``: the same key on every run, so a run cut short
   and run again overwrites what it stored, leaving nothing behind);
2. reads the object back and checks its SHA-256 against the bytes';
3. names the object in the row and empties the column, in one statement
   that does so only if the row still holds those bytes (a row deleted or
   changed meanwhile keeps its own, and the object is deleted again).

It is resumable: stopped at any point (Ctrl-C, a crash, the store or the
database going away), the next run goes on with the rows still holding
bytes. Once none is left it says so in each schema's ``audio_move`` table and
applies the migrations that waited for that (library 003, gateway 012), which
drop the ``bytea`` columns. Running it again then finds nothing to move.

Run it once every replica runs this version (an older one still writes audio
into those columns); `make run` runs it before it starts the services.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import sys
from dataclasses import dataclass, field

import asyncpg

from runtime import config, database, logs, objects
from runtime.errors import ApiError
from services.gateway.store import Store
from services.gateway.store.audio_move import Legacy
from services.library import service as library_service
from services.library import store as library_store
from tools import migrate

log = logging.getLogger("tools.move_audio")

# Rows read at once: their bytes are held in memory together.
DEFAULT_BATCH = 16


class ChecksumMismatch(Exception):
    pass


@dataclass
class Moved:
    """What a run did, by kind of row."""

    samples: int = 0
    generations: int = 0
    files: int = 0
    bytes: int = 0
    skipped: int = 0  # rows deleted or changed while they were moved
    finished: dict[str, bool] = field(default_factory=dict)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def stored_and_checked(store: objects.ObjectStore, key: str, data: bytes, content_type: str) -> str:
    """Store `data` under `key`, read it back and compare checksums; its SHA-256."""
    expected = sha256(data)
    await store.put(key, data, content_type)
    if sha256(await store.get(key)) != expected:
        raise ChecksumMismatch(f"{key}: the stored object's SHA-256 is not the row's")
    return expected


async def move_samples(pool: asyncpg.Pool, store: objects.ObjectStore, moved: Moved, batch: int) -> None:
    while samples := await library_store.legacy_samples(pool, batch):
        for sample in samples:
            folder = f"{library_service.PREFIX}{sample.account_id}/moved-{sample.id}"
            keys = (f"{folder}/original", f"{folder}/normalized.wav")
            checksums = (
                await stored_and_checked(store, keys[0], sample.original, "application/octet-stream"),
                await stored_and_checked(store, keys[1], sample.normalized, library_store.WAV),
            )
            if await library_store.sample_moved(pool, sample, keys, checksums):
                moved.samples += 1
                moved.bytes += len(sample.original) + len(sample.normalized)
            else:  # deleted (or changed) meanwhile: its row names nothing, so neither may the store
                await store.delete_all(keys)
                moved.skipped += 1
        log.info("moved voice samples", extra={"samples": moved.samples})


async def move_gateway_rows(gateway: Store, store: objects.ObjectStore, moved: Moved, batch: int) -> None:
    for table in ("generations", "prediction_files"):
        while rows := await gateway.audio_move.pending(table, batch):
            for row in rows:
                key = _gateway_key(row)
                content_type = "audio/wav" if table == "generations" else "application/octet-stream"
                checksum = await stored_and_checked(store, key, row.data, content_type)
                if await gateway.audio_move.moved(row, key, checksum):
                    if table == "generations":
                        moved.generations += 1
                    else:
                        moved.files += 1
                    moved.bytes += len(row.data)
                else:
                    await store.delete(key)
                    moved.skipped += 1
            log.info("moved", extra={"table": table, "generations": moved.generations, "files": moved.files})


def _gateway_key(row: Legacy) -> str:
    if row.table == "generations":
        return f"generations/{row.account_id}/{row.id}-moved.wav"
    return f"files/{row.account_id}/{row.id}"


async def move_all(url: str, settings: objects.StoreSettings, batch: int = DEFAULT_BATCH) -> Moved:
    """Migrate (the key columns must exist), move every row's bytes, record that all is moved, and
    migrate again (the columns are dropped then). Raises the first failure; run again to go on."""
    await migrate.migrate_all(url)
    moved = Moved()
    library_pool = await database.open_pool(library_service.SCHEMA, library_service.MIGRATIONS, url)
    gateway = await Store.open(url)
    try:
        async with objects.ObjectStore(settings) as store:
            await move_samples(library_pool, store, moved, batch)
            await move_gateway_rows(gateway, store, moved, batch)
        moved.finished = {
            library_service.SCHEMA: await library_store.finish_move(library_pool),
            "gateway": await gateway.audio_move.finish(),
        }
    finally:
        await library_pool.close()
        await gateway.close()
    await migrate.migrate_all(url)  # the drops, now that they may run
    return moved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="rows read at once (their bytes in memory)")
    args = parser.parse_args()
    logs.setup("move_audio")
    url = config.DATABASE_URL.value
    if not url:
        log.error("DATABASE_URL is not set")
        return 2
    try:
        moved = asyncio.run(move_all(url, objects.StoreSettings.from_environment(), max(1, args.batch)))
    except database.CONNECTION_ERRORS as error:
        log.error("database unreachable: %s; run again to go on", type(error).__name__)
        return 1
    except ApiError as error:
        log.error("%s: %s; run again to go on", error.reason.lower(), error.message)
        return 1
    except ChecksumMismatch as error:
        log.error("%s; nothing of that row was changed: run again", error)
        return 1
    log.info(
        "audio moved into the object store",
        extra={
            "samples": moved.samples,
            "generations": moved.generations,
            "files": moved.files,
            "bytes": moved.bytes,
            "skipped": moved.skipped,
            "columns_dropped": all(moved.finished.values()),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
