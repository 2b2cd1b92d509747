"""``prediction_files``: files uploaded as generation inputs (POST /v1/files).

A file's content is in the object store (runtime/objects.py, migration 012):
the row names it by ``content_key``, stored before the row is inserted. A
statement that deletes rows hands their objects to ``object_deletions``.
"""

from __future__ import annotations

import json
from typing import Callable

import asyncpg

from runtime.database import connection
from runtime.downloads import Stored
from runtime.errors import not_found

COLUMNS = "id, name, content_type, sha256, metadata, size, content_key, create_time"
# Most files one listing answers, newest first.
LISTED = 100
# What a file's content is sent as (the hosted predictor's file store does the same).
CONTENT_TYPE = "application/octet-stream"
_HAND_OVER = """INSERT INTO object_deletions (key) SELECT content_key FROM deleted WHERE content_key IS NOT NULL
    ON CONFLICT DO NOTHING"""


class FilesTable:
    def __init__(self, pool: Callable[[], asyncpg.Pool]) -> None:
        self.pool = pool

    async def add(
        self,
        file_id: str,
        account_id: int,
        name: str,
        content_type: str,
        sha256: str,
        metadata: dict,
        content_key: str,
        size: int,
    ) -> asyncpg.Record:
        """A file whose content is in the store already, under `content_key`."""
        async with connection(self.pool()) as db:
            return await db.fetchrow(
                f"""INSERT INTO prediction_files (id, account_id, name, content_type, sha256, metadata, content_key, size)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {COLUMNS}""",
                file_id,
                account_id,
                name,
                content_type,
                sha256,
                json.dumps(metadata),
                content_key,
                size,
            )

    async def get(self, account_id: int, file_id: str) -> asyncpg.Record:
        async with connection(self.pool()) as db:
            row = await db.fetchrow(
                f"SELECT {COLUMNS} FROM prediction_files WHERE id = $1 AND account_id = $2", file_id, account_id
            )
        if row is None:
            raise not_found(f"there is no file {file_id[:100]}")
        return row

    async def content(self, account_id: int, file_id: str) -> Stored:
        """Where the file's content is: its object, or (a row from before the content moved to the store,
        until tools/move_audio.py has run) the bytes themselves."""
        row = await self.get(account_id, file_id)
        if row["content_key"] is not None:
            return Stored(row["content_key"], row["size"], CONTENT_TYPE)
        async with connection(self.pool()) as db:
            try:
                legacy = await db.fetchval("SELECT content FROM prediction_files WHERE id = $1", file_id)
            except asyncpg.UndefinedColumnError:  # moved (and the column dropped) since the row was read
                return await self.content(account_id, file_id)
        if legacy is None:
            return await self.content(account_id, file_id)
        return Stored(None, len(legacy), CONTENT_TYPE, bytes(legacy))

    async def newest(self, account_id: int) -> list[asyncpg.Record]:
        async with connection(self.pool()) as db:
            return await db.fetch(
                f"SELECT {COLUMNS} FROM prediction_files WHERE account_id = $1 ORDER BY seq DESC LIMIT {LISTED}",
                account_id,
            )

    async def delete(self, account_id: int, file_id: str) -> str | None:
        """Delete the file; the key of its content's object, to delete from the store now (it waits in
        object_deletions until then)."""
        async with connection(self.pool()) as db:
            row = await db.fetchrow(
                f"""WITH deleted AS (DELETE FROM prediction_files WHERE id = $1 AND account_id = $2
                                     RETURNING content_key),
                         handed AS ({_HAND_OVER})
                    SELECT content_key FROM deleted""",
                file_id,
                account_id,
            )
        if row is None:
            raise not_found(f"there is no file {file_id[:100]}")
        return row["content_key"]

    async def delete_account(self, account_id: int) -> tuple[int, list[str]]:
        """Delete every file of the account: how many, and their objects' keys (as :meth:`delete`)."""
        async with connection(self.pool()) as db:
            rows = await db.fetch(
                f"""WITH deleted AS (DELETE FROM prediction_files WHERE account_id = $1 RETURNING content_key),
                         handed AS ({_HAND_OVER})
                    SELECT content_key FROM deleted""",
                account_id,
            )
        return len(rows), [row["content_key"] for row in rows if row["content_key"] is not None]
