"""``prediction_files``: files uploaded as generation inputs (POST /v1/files)."""

from __future__ import annotations

import json
from typing import Callable

import asyncpg

from runtime.database import connection
from runtime.errors import not_found

COLUMNS = "id, name, content_type, sha256, metadata, octet_length(content) AS size, create_time"
# Most files one listing answers, newest first.
LISTED = 100


class FilesTable:
    def __init__(self, pool: Callable[[], asyncpg.Pool]) -> None:
        self.pool = pool

    async def add(
        self, file_id: str, account_id: int, name: str, content_type: str, sha256: str, metadata: dict, content: bytes
    ) -> asyncpg.Record:
        async with connection(self.pool()) as db:
            return await db.fetchrow(
                f"""INSERT INTO prediction_files (id, account_id, name, content_type, sha256, metadata, content)
                    VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}""",
                file_id,
                account_id,
                name,
                content_type,
                sha256,
                json.dumps(metadata),
                content,
            )

    async def get(self, account_id: int, file_id: str, with_content: bool = False) -> asyncpg.Record:
        columns = COLUMNS + (", content" if with_content else "")
        async with connection(self.pool()) as db:
            row = await db.fetchrow(
                f"SELECT {columns} FROM prediction_files WHERE id = $1 AND account_id = $2", file_id, account_id
            )
        if row is None:
            raise not_found(f"there is no file {file_id[:100]}")
        return row

    async def newest(self, account_id: int) -> list[asyncpg.Record]:
        async with connection(self.pool()) as db:
            return await db.fetch(
                f"SELECT {COLUMNS} FROM prediction_files WHERE account_id = $1 ORDER BY seq DESC LIMIT {LISTED}",
                account_id,
            )

    async def delete(self, account_id: int, file_id: str) -> None:
        async with connection(self.pool()) as db:
            deleted = await db.execute(
                "DELETE FROM prediction_files WHERE id = $1 AND account_id = $2", file_id, account_id
            )
        if deleted.endswith(" 0"):
            raise not_found(f"there is no file {file_id[:100]}")
