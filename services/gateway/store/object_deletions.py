"""``object_deletions``: objects of the store whose rows are gone, until they are gone from the store too.

The statements that delete generations or files, or expire a generation's
audio, hand the objects' keys over here (generations.py, files.py), so a
store that is down at that moment leaves nothing behind: the gateway's sweep
deletes them once it answers again. It also finds the objects that no row
names (a gateway that died between storing an object and committing its row).
"""

from __future__ import annotations

from typing import Callable

import asyncpg

from runtime.database import connection


class ObjectDeletionsTable:
    def __init__(self, pool: Callable[[], asyncpg.Pool]) -> None:
        self.pool = pool

    async def done(self, keys: list[str]) -> None:
        """These objects are gone from the store: nothing waits for them any more."""
        async with connection(self.pool()) as db:
            await db.execute("DELETE FROM object_deletions WHERE key = ANY($1::text[])", keys)

    async def pending(self, most: int = 1000) -> list[str]:
        """Objects of deleted rows still to delete from the store (it was down when they went)."""
        async with connection(self.pool()) as db:
            rows = await db.fetch("SELECT key FROM object_deletions ORDER BY since LIMIT $1", most)
        return [row["key"] for row in rows]

    async def unnamed(self, keys: list[str]) -> list[str]:
        """Those of `keys` that no generation or file names, nor a pending deletion."""
        async with connection(self.pool()) as db:
            rows = await db.fetch(
                """SELECT k.key FROM unnest($1::text[]) AS k (key)
                   WHERE NOT EXISTS (SELECT 1 FROM generations WHERE audio_key = k.key)
                     AND NOT EXISTS (SELECT 1 FROM prediction_files WHERE content_key = k.key)
                     AND NOT EXISTS (SELECT 1 FROM object_deletions d WHERE d.key = k.key)""",
                keys,
            )
        return [row["key"] for row in rows]
