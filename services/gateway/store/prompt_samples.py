"""``prediction_prompt_samples``: the voice sample an audio prompt became, once per account and content."""

from __future__ import annotations

from typing import Callable

import asyncpg

from runtime.database import connection


class PromptSamplesTable:
    def __init__(self, pool: Callable[[], asyncpg.Pool]) -> None:
        self.pool = pool

    async def sample_of(self, account_id: int, sha256: str) -> int | None:
        async with connection(self.pool()) as db:
            return await db.fetchval(
                "SELECT sample_id FROM prediction_prompt_samples WHERE account_id = $1 AND sha256 = $2",
                account_id,
                sha256,
            )

    async def remember(self, account_id: int, sha256: str, sample_id: int) -> None:
        async with connection(self.pool()) as db:
            await db.execute(
                """INSERT INTO prediction_prompt_samples (account_id, sha256, sample_id) VALUES ($1, $2, $3)
                   ON CONFLICT (account_id, sha256) DO UPDATE SET sample_id = excluded.sample_id""",
                account_id,
                sha256,
                sample_id,
            )

    async def forget_account(self, account_id: int) -> None:
        """An account's erasure: which of its audio became which sample goes with the samples."""
        async with connection(self.pool()) as db:
            await db.execute("DELETE FROM prediction_prompt_samples WHERE account_id = $1", account_id)
