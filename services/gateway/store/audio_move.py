"""Moving the bytes written into PostgreSQL before migration 013 into the object store (tools/move_audio.py).

Generations' ``audio`` and files' ``content`` (``bytea``) are read a batch at
a time; the mover stores each in the bucket, checks it there by its SHA-256,
and :meth:`AudioMoveTable.moved` then names the object in the row and empties
the column, if the row still holds the same bytes. Once no row holds any,
:meth:`AudioMoveTable.finish` says so (``audio_move``), and migration 013,
waiting for that, drops the columns. After that there is nothing to move.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import asyncpg

from runtime.database import connection

# What is moved, by table: its id, its account, the bytes column and the key column.
TABLES = {
    "generations": ("audio", "audio_key"),
    "prediction_files": ("content", "content_key"),
}


@dataclass(frozen=True)
class Legacy:
    table: str
    id: str
    account_id: int
    data: bytes


class AudioMoveTable:
    def __init__(self, pool: Callable[[], asyncpg.Pool]) -> None:
        self.pool = pool

    async def pending(self, table: str, most: int) -> list[Legacy]:
        """Up to `most` rows of `table` that still hold their bytes (none once the columns are gone)."""
        data, key = TABLES[table]
        async with connection(self.pool()) as db:
            try:
                rows = await db.fetch(
                    f"""SELECT id, account_id, {data} AS data FROM {table}
                        WHERE {data} IS NOT NULL AND {key} IS NULL ORDER BY seq LIMIT $1""",
                    most,
                )
            except asyncpg.UndefinedColumnError:  # dropped by migration 013: all moved
                return []
        return [Legacy(table, row["id"], row["account_id"], bytes(row["data"])) for row in rows]

    async def moved(self, legacy: Legacy, key: str, sha256: str) -> bool:
        """Name `key` in the row and empty its bytes column, if the row still holds the bytes whose
        SHA-256 is `sha256`; whether it did (a row deleted meanwhile did not)."""
        data, key_column = TABLES[legacy.table]
        size = ", audio_bytes = octet_length(audio)" if legacy.table == "generations" else ""
        async with connection(self.pool()) as db:
            done = await db.execute(
                f"""UPDATE {legacy.table} SET {key_column} = $2, {data} = NULL{size}
                    WHERE id = $1 AND {key_column} IS NULL AND encode(sha256({data}), 'hex') = $3""",
                legacy.id,
                key,
                sha256,
            )
        return done.endswith(" 1")

    async def finish(self) -> bool:
        """Say that every row's bytes are in the store (what migration 013 waits for), if none is left;
        whether all is moved (also when the columns are gone already)."""
        async with connection(self.pool()) as db:
            try:
                return await db.fetchval(
                    """UPDATE audio_move SET moved = NOT EXISTS (SELECT 1 FROM generations WHERE audio IS NOT NULL)
                           AND NOT EXISTS (SELECT 1 FROM prediction_files WHERE content_key IS NULL)
                       RETURNING moved"""
                )
            except asyncpg.UndefinedTableError:  # migration 013 ran: nothing was left
                return True
