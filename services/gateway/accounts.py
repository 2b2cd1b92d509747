"""Accounts and API keys, and who is calling.

A key is ``vm_`` followed by 32 random bytes (256 bits) in URL-safe base64.
Only its SHA-256 is stored: for keys this random a plain hash is as good as a
slow password hash, and looking a key up by its hash means no comparison of
secret bytes whose timing could leak anything.

Each request is authenticated once, by :meth:`Accounts.authenticate`, which
keeps the account of a key it has looked up for GATEWAY_KEY_CACHE_SECONDS:
a revoked key still works for at most that long in a process that saw it.
The HTTP edge authenticates every keyed request. It calls the other
services with the account (``x-account-id``), and this process's own
services in process (runtime/inprocess.py), with the account it checked in
their context. Those services find their caller with
:meth:`Accounts.caller`: that account for an in-process call, otherwise the
``authorization: Bearer <key>`` of an internal gRPC client, checked the same
way. A bare ``x-account-id`` is never trusted.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass

import grpc

from runtime.inprocess import InProcessContext
from runtime.errors import ApiError
from services.gateway.config import KEY_CACHE_SECONDS
from services.gateway.store.accounts import AccountsTable

KEY_PREFIX = "vm_"
# How much of a key is kept in clear, to tell keys apart when listing them.
DISPLAY_PREFIX_CHARS = len(KEY_PREFIX) + 8
ACCOUNT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
ACCOUNT_NAME_RULE = "1 to 64 letters, digits or . _ @ -, starting with a letter or digit"
# Most keys kept in the cache; past that it starts afresh (a flood of made-up keys is not cached).
MAX_CACHED_KEYS = 10_000


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_hash(key: str) -> str:
    # surrogateescape: a header's bytes that are not UTF-8 (aiohttp keeps them so) make an unknown key, not an error.
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class NewKey:
    account_id: int
    account_created: bool
    key: str
    prefix: str


async def create_key(table: AccountsTable, account_name: str) -> NewKey:
    """Create the account if it does not exist yet, and a new key for it."""
    if not ACCOUNT_NAME.match(account_name):
        raise ValueError(f"an account name is {ACCOUNT_NAME_RULE}")
    key = new_key()
    account_id, created = await table.add_key(account_name, key_hash(key), key[:DISPLAY_PREFIX_CHARS])
    return NewKey(account_id, created, key, key[:DISPLAY_PREFIX_CHARS])


def bearer_key(authorization: str) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header (or gRPC metadata), or None."""
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return None
    return key.strip()


def unauthorized(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.UNAUTHENTICATED, "UNAUTHORIZED", message)


class Accounts:
    """Key checks with a short cache, for the edge and this process's gRPC services."""

    def __init__(self, table: AccountsTable) -> None:
        self.table = table
        self._cache: dict[str, tuple[int, float]] = {}  # key hash → (account, expiry)

    async def authenticate(self, authorization: str) -> int:
        """The account of an ``Authorization: Bearer <key>`` value; UNAUTHORIZED otherwise."""
        key = bearer_key(authorization)
        if key is None:
            raise unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        hashed = key_hash(key)
        now = time.monotonic()
        cached = self._cache.get(hashed)
        if cached is not None and cached[1] > now:
            return cached[0]
        account_id = await self.table.account_of_key(hashed)
        if account_id is None:
            self._cache.pop(hashed, None)
            raise unauthorized("invalid API key")
        if len(self._cache) >= MAX_CACHED_KEYS:
            self._cache.clear()
        self._cache[hashed] = (account_id, now + KEY_CACHE_SECONDS.value)
        return account_id

    async def caller(self, context) -> int:
        """The account calling one of the gateway's own services that needs a key."""
        if isinstance(context, InProcessContext) and context.caller is not None:
            return context.caller  # the edge checked the key of this request
        metadata = dict(context.invocation_metadata() or ())
        return await self.authenticate(metadata.get("authorization", ""))
