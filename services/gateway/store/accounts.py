"""Accounts and their API keys. A key is shown once, when it is made; only its SHA-256 is stored."""

from __future__ import annotations

from typing import Callable

import asyncpg

from runtime import database


class AccountsTable:
    def __init__(self, pool: Callable[[], asyncpg.Pool]) -> None:
        self.pool = pool

    async def add_key(self, account_name: str, key_hash: str, prefix: str) -> tuple[int, bool]:
        """Create the account if it does not exist yet and store a key's hash for it: (account id, created)."""
        async with database.transaction(self.pool()) as db:
            # ON CONFLICT keeps two concurrent `make key` runs for one new account from failing.
            account_id = await db.fetchval(
                "INSERT INTO accounts (name) VALUES ($1) ON CONFLICT (name) DO NOTHING RETURNING id", account_name
            )
            created = account_id is not None
            if not created:
                account_id = await db.fetchval("SELECT id FROM accounts WHERE name = $1", account_name)
            await db.execute(
                "INSERT INTO api_keys (account_id, key_hash, prefix) VALUES ($1, $2, $3)", account_id, key_hash, prefix
            )
        return account_id, created

    async def account_of_key(self, key_hash: str) -> int | None:
        """The account of a key that is not revoked, or None."""
        async with database.connection(self.pool()) as db:
            return await db.fetchval(
                "SELECT account_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", key_hash
            )
