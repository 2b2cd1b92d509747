"""``predictions``: what the hosted predictor's client asked of a prediction, beside its generation.

A prediction is a generation (the history's row, with its status, timings
and audio) run as a background job (jobs.py); this table keeps what only the
predictor's dialect needs: the model and version as its client named them,
its input as sent (answered back as it was), and its webhook.
"""

from __future__ import annotations

import json
from typing import Callable

import asyncpg

from runtime.database import connection
from runtime.errors import not_found

# A prediction as GET /v1/predictions/{id} answers it: its generation, what was asked, its resumes.
COLUMNS = """g.seq, g.id, g.account_id, g.status, g.speakers, g.parameters, g.error_type, g.error_message,
    g.audio_duration_seconds, g.create_time, g.start_time, g.end_time, g.provider, g.model, g.url_epoch, g.analysis,
    p.model AS predicted_model, p.version, p.input, p.webhook, p.webhook_events_filter,
    coalesce(j.resumes, 0) AS resumes"""
_FROM = """predictions p JOIN generations g ON g.id = p.generation_id
    LEFT JOIN generation_jobs j ON j.generation_id = p.generation_id"""


class PredictionsTable:
    def __init__(self, pool: Callable[[], asyncpg.Pool]) -> None:
        self.pool = pool

    async def add(
        self, generation_id: str, model: str, version: str, given: dict, webhook: str, events: list[str]
    ) -> None:
        async with connection(self.pool()) as db:
            await db.execute(
                """INSERT INTO predictions (generation_id, model, version, input, webhook, webhook_events_filter)
                   VALUES ($1, $2, $3, $4, $5, $6)""",
                generation_id,
                model,
                version,
                json.dumps(given),
                webhook,
                json.dumps(events),
            )

    async def get(self, account_id: int, prediction_id: str) -> asyncpg.Record:
        async with connection(self.pool()) as db:
            row = await db.fetchrow(
                f"SELECT {COLUMNS} FROM {_FROM} WHERE g.id = $1 AND g.account_id = $2", prediction_id, account_id
            )
        if row is None:
            raise not_found(f"there is no prediction {prediction_id}")
        return row

    async def find(self, prediction_id: str) -> asyncpg.Record | None:
        """A prediction by id alone (its runner's webhooks), or None."""
        async with connection(self.pool()) as db:
            return await db.fetchrow(f"SELECT {COLUMNS} FROM {_FROM} WHERE g.id = $1", prediction_id)

    async def page(self, account_id: int, before_seq: int | None, page_size: int) -> list[asyncpg.Record]:
        """Up to page_size + 1 of the account's predictions, newest first, older than `before_seq`."""
        async with connection(self.pool()) as db:
            return await db.fetch(
                f"""SELECT {COLUMNS} FROM {_FROM}
                    WHERE g.account_id = $1 AND ($2::bigint IS NULL OR g.seq < $2)
                    ORDER BY g.seq DESC LIMIT $3""",
                account_id,
                before_seq,
                page_size + 1,
            )
