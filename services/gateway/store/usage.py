"""``usage_daily``: what each account used, per UTC day and per key, metered once where the work is done.

The rows are written by the statements that do the work (generations.py):
``admit_generation`` counts a generation and its script's characters on the
day it is admitted, and the statement that stores its success adds its audio
and synthesis seconds to that same day. Here they are read: a range of days,
and this calendar month's totals, which the monthly quotas are held to.
"""

from __future__ import annotations

import datetime
from typing import Callable

import asyncpg

from runtime.database import connection


class UsageTable:
    def __init__(self, pool: Callable[[], asyncpg.Pool]) -> None:
        self.pool = pool

    async def days(self, account_id: int, start: datetime.date, end: datetime.date) -> list[asyncpg.Record]:
        """Each (day, key) of the account with usage from `start` to `end`, both included."""
        async with connection(self.pool()) as db:
            return await db.fetch(
                """SELECT day, key_id, generations, characters, audio_seconds, synthesis_seconds
                   FROM usage_daily WHERE account_id = $1 AND day BETWEEN $2 AND $3
                   ORDER BY day, key_id""",
                account_id,
                start,
                end,
            )

    async def this_month(self, account_id: int) -> asyncpg.Record:
        """The start of this calendar month (UTC), the start of the next (when quotas start afresh), and
        the account's generations, characters and audio seconds since the first, as admission counts them."""
        async with connection(self.pool()) as db:
            return await db.fetchrow(
                """WITH month AS (SELECT date_trunc('month', now() AT TIME ZONE 'UTC') AS local)
                   SELECT month.local AT TIME ZONE 'UTC' AS period_start,
                          (month.local + interval '1 month') AT TIME ZONE 'UTC' AS reset_time,
                          coalesce(sum(u.generations), 0) AS generations,
                          coalesce(sum(u.characters), 0) AS characters,
                          coalesce(sum(u.audio_seconds), 0) AS audio_seconds
                   FROM month LEFT JOIN usage_daily u ON u.account_id = $1 AND u.day >= month.local::date
                   GROUP BY month.local""",
                account_id,
            )
