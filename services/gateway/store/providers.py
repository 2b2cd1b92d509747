"""The synth providers that announced themselves with heartbeats, shared by every gateway replica."""

from __future__ import annotations

import json
from typing import Callable

import asyncpg

from runtime import database


class ProvidersTable:
    def __init__(self, pool: Callable[[], asyncpg.Pool]) -> None:
        self.pool = pool

    async def heard_from(self, provider_id: str, address: str, models: list[dict], capacity: int, load: int) -> None:
        """Register a provider, or refresh it: its last heartbeat is now."""
        async with database.connection(self.pool()) as db:
            await db.execute(
                """INSERT INTO providers (provider_id, address, models, capacity, load)
                   VALUES ($1, $2, $3::jsonb, $4, $5)
                   ON CONFLICT (provider_id) DO UPDATE SET
                       address = EXCLUDED.address, models = EXCLUDED.models,
                       capacity = EXCLUDED.capacity, load = EXCLUDED.load, last_seen = now()""",
                provider_id,
                address,
                json.dumps(models),
                capacity,
                load,
            )

    async def remove(self, provider_id: str) -> None:
        async with database.connection(self.pool()) as db:
            await db.execute("DELETE FROM providers WHERE provider_id = $1", provider_id)

    async def online(self, within_seconds: float) -> list[asyncpg.Record]:
        """The providers heard from within the last `within_seconds` (models as JSON text)."""
        async with database.connection(self.pool()) as db:
            return await db.fetch(
                """SELECT provider_id, address, models, capacity, load, last_seen FROM providers
                   WHERE last_seen > now() - make_interval(secs => $1)""",
                within_seconds,
            )
