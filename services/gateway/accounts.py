"""Accounts and API keys.

A key is ``vm_`` followed by 32 random bytes (256 bits) in URL-safe base64.
Only its SHA-256 is stored: for keys this random a plain hash is as good as a
slow password hash, and looking a key up by its hash means no comparison of
secret bytes whose timing could leak anything.
"""

from __future__ import annotations

import hashlib
import pathlib
import re
import secrets
from dataclasses import dataclass

import asyncpg

from runtime import database

MIGRATIONS = pathlib.Path(__file__).resolve().parent / "migrations"
SCHEMA = "gateway"

KEY_PREFIX = "vm_"
# How much of a key is kept in clear, to tell keys apart when listing them.
DISPLAY_PREFIX_CHARS = len(KEY_PREFIX) + 8
ACCOUNT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
ACCOUNT_NAME_RULE = "1 to 64 letters, digits or . _ @ -, starting with a letter or digit"
# gRPC methods whose HTTP routes need no key: the share token in their path is the secret.
KEYLESS_METHODS = {"/voice.gateway.v1.GenerationService/GetSharedGenerationAudio"}


async def open_pool(url: str | None = None) -> asyncpg.Pool:
    return await database.open_pool(SCHEMA, MIGRATIONS, url)


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class NewKey:
    account_id: int
    account_created: bool
    key: str
    prefix: str


async def create_key(pool: asyncpg.Pool, account_name: str) -> NewKey:
    """Create the account if it does not exist yet, and a new key for it."""
    if not ACCOUNT_NAME.match(account_name):
        raise ValueError(f"an account name is {ACCOUNT_NAME_RULE}")
    key = new_key()
    async with database.transaction(pool) as connection:
        # ON CONFLICT keeps two concurrent `make key` runs for one new account from failing.
        account_id = await connection.fetchval(
            "INSERT INTO accounts (name) VALUES ($1) ON CONFLICT (name) DO NOTHING RETURNING id",
            account_name,
        )
        created = account_id is not None
        if not created:
            account_id = await connection.fetchval("SELECT id FROM accounts WHERE name = $1", account_name)
        await connection.execute(
            "INSERT INTO api_keys (account_id, key_hash, prefix) VALUES ($1, $2, $3)",
            account_id,
            key_hash(key),
            key[:DISPLAY_PREFIX_CHARS],
        )
    return NewKey(account_id, created, key, key[:DISPLAY_PREFIX_CHARS])


def bearer_key(authorization: str) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header (or gRPC metadata), or None."""
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return None
    return key.strip()


async def account_for_key(pool: asyncpg.Pool, key: str) -> int | None:
    """The id of the account owning this key, or None for an unknown or revoked key."""
    with database.database_errors():
        return await pool.fetchval(
            "SELECT account_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
            key_hash(key),
        )
