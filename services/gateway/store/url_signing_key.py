"""``url_signing_key``: the one key that signs generations' audio URLs (generation/audio_urls.py)."""

from __future__ import annotations

from typing import Callable

import asyncpg

from runtime.database import connection


class UrlSigningKeyTable:
    def __init__(self, pool: Callable[[], asyncpg.Pool]) -> None:
        self.pool = pool

    async def key(self, made: bytes) -> bytes:
        """The key: `made` if there was none yet (the first gateway to ask makes it; the others read it)."""
        async with connection(self.pool()) as db:
            return await db.fetchval(
                """INSERT INTO url_signing_key (key) VALUES ($1)
                   ON CONFLICT (only_one) DO UPDATE SET key = url_signing_key.key
                   RETURNING key""",
                made,
            )
