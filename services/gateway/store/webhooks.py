"""``webhook_secrets``: the key that signs each account's webhook deliveries."""

from __future__ import annotations

from typing import Callable

import asyncpg

from runtime.database import connection


class WebhooksTable:
    def __init__(self, pool: Callable[[], asyncpg.Pool]) -> None:
        self.pool = pool

    async def secret(self, account_id: int, made: str) -> str:
        """The account's signing secret: `made` if it had none yet (made on first use)."""
        async with connection(self.pool()) as db:
            return await db.fetchval(
                """INSERT INTO webhook_secrets (account_id, secret) VALUES ($1, $2)
                   ON CONFLICT (account_id) DO UPDATE SET secret = webhook_secrets.secret
                   RETURNING secret""",
                account_id,
                made,
            )
