"""The gateway's data: every SQL statement it runs, as named operations, one module per table group.

This package is the only part of the gateway that talks to PostgreSQL (an
import-linter contract holds it so): the rest asks a :class:`Store` for what
it needs, and gets rows as plain records or ApiErrors (a lost database is
DATABASE_UNAVAILABLE, 503, whatever the operation).

* ``accounts``: accounts (disabled, deleted and purged, their limits and
  quotas) and their hashed API keys with scopes, and browser tokens;
* ``usage``: each account's usage per UTC day and key, metered by the
  statements that admit a generation and store its success;
* ``providers``: the synth providers' registry (heartbeats);
* ``generations``: the history, one row per generation, with admission
  (the per-account limits, held in one statement) and sharing;
* ``jobs``: generations run in the background with a lease (predictions);
* ``predictions``: what the hosted predictor's client asked of a prediction;
* ``files``: files uploaded as inputs (/v1/files);
* ``object_deletions``: objects of the store whose rows are gone, until they are
  gone from the store too;
* ``prompt_samples``: the voice sample an audio prompt became, by content;
* ``webhooks``: each account's webhook signing secret;
* ``url_signing_key``: the key that signs generations' audio URLs;
* ``audio_move``: moving the bytes stored in PostgreSQL before the object
  store into it (tools/move_audio.py).
"""

from __future__ import annotations

import pathlib

import asyncpg

from runtime import database
from services.gateway.store.accounts import AccountsTable
from services.gateway.store.audio_move import AudioMoveTable
from services.gateway.store.files import FilesTable
from services.gateway.store.generations import GenerationsTable
from services.gateway.store.jobs import JobsTable
from services.gateway.store.object_deletions import ObjectDeletionsTable
from services.gateway.store.predictions import PredictionsTable
from services.gateway.store.prompt_samples import PromptSamplesTable
from services.gateway.store.providers import ProvidersTable
from services.gateway.store.url_signing_key import UrlSigningKeyTable
from services.gateway.store.usage import UsageTable
from services.gateway.store.webhooks import WebhooksTable

MIGRATIONS = pathlib.Path(__file__).resolve().parent.parent / "migrations"
SCHEMA = "gateway"


class Store:
    """The gateway's tables over one connection pool, opened by :meth:`open`."""

    def __init__(self) -> None:
        self._pool: asyncpg.Pool | None = None
        self.accounts = AccountsTable(self.pool)
        self.providers = ProvidersTable(self.pool)
        self.generations = GenerationsTable(self.pool)
        self.jobs = JobsTable(self.pool)
        self.predictions = PredictionsTable(self.pool)
        self.files = FilesTable(self.pool)
        self.object_deletions = ObjectDeletionsTable(self.pool)
        self.prompt_samples = PromptSamplesTable(self.pool)
        self.webhooks = WebhooksTable(self.pool)
        self.url_signing_key = UrlSigningKeyTable(self.pool)
        self.usage = UsageTable(self.pool)
        self.audio_move = AudioMoveTable(self.pool)

    @classmethod
    async def open(cls, url: str | None = None) -> "Store":
        """Connect to DATABASE_URL (or `url`), apply the migrations, and return the store."""
        store = cls()
        await store.connect(url)
        return store

    async def connect(self, url: str | None = None) -> None:
        self._pool = await database.open_pool(SCHEMA, MIGRATIONS, url)

    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "the store is not open"
        return self._pool

    async def is_reachable(self) -> bool:
        return await database.is_reachable(self.pool())

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
