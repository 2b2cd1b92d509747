"""Accounts, API keys with scopes, browser tokens, and who is calling.

A key is ``vm_`` followed by 32 random bytes (256 bits) in URL-safe base64; a
browser token ``vmt_`` and as many. Only their SHA-256 is stored: for keys
this random a plain hash is as good as a slow password hash, and looking a key
up by its hash means no comparison of secret bytes whose timing could leak
anything. The first characters of a key are kept in clear to tell keys apart
(``vm_`` and 8 more): what remains is 208 random bits, so knowing a prefix
gains nothing, and a key that differs from a real one anywhere is as unknown
as a made-up one (same answer, same message). Keys have a random public id
(``key_`` and 16 hex digits) that says nothing of other accounts' keys.

Each key has scopes (:data:`SCOPES`), and each method declares the one it
needs in its proto (``(voice.api.v1.method).scope``). Each request is
authenticated once, by :meth:`Accounts.authenticate`, which keeps what it
learnt of a key for GATEWAY_KEY_CACHE_SECONDS (or until the key expires, if
sooner): a key revoked on another replica still works for at most that long
in a process that saw it; on the replica that revoked it, at once. A
disabled account's keys are refused (ACCOUNT_DISABLED) and never cached.

The HTTP edge authenticates every keyed request and checks its scope. It
calls the other services with the account (``x-account-id``) and the key's
number (``x-key-id``, for usage), and this process's own services in process
(runtime/inprocess.py), with the runtime.callers.Caller it checked in their
context. Those services find their caller with :meth:`Accounts.caller`: that
Caller for an in-process call, otherwise the ``authorization: Bearer <key>``
of an internal gRPC client, checked the same way, scope included. A bare
``x-account-id`` is never trusted.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import re
import secrets
import time
from dataclasses import dataclass
from typing import Iterable, Sequence

import grpc

from runtime import callers
from runtime.callers import Caller
from runtime.errors import ApiError, invalid_parameter
from runtime.inprocess import InProcessContext
from services.gateway.config import (
    BROWSER_TOKEN_MAX_SECONDS,
    KEY_CACHE_SECONDS,
    MAX_BROWSER_TOKENS_PER_ACCOUNT,
    MAX_KEYS_PER_ACCOUNT,
)
from services.gateway.store.accounts import AccountsTable, NewKey as NewKeyRow

log = logging.getLogger("gateway.accounts")

KEY_PREFIX = "vm_"
TOKEN_PREFIX = "vmt_"
# How much of a key is kept in clear, to tell keys apart when listing them.
DISPLAY_PREFIX_CHARS = len(KEY_PREFIX) + 8
ACCOUNT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
ACCOUNT_NAME_RULE = "1 to 64 letters, digits or . _ @ -, starting with a letter or digit"
# Most keys kept in the cache; past that it starts afresh (a flood of made-up keys is not cached).
MAX_CACHED_KEYS = 10_000

# Every scope a key may have, in the order they are listed, and what it lets a key call.
SCOPES = {
    "library:read": "the voice library: list and read samples and their audio, list voices (GET /v1/audio/voices)",
    "library:write": "the voice library: upload, change and delete samples",
    "generate": "generate: POST /v1/voice/generations, POST /v1/audio/speech; mint browser tokens",
    "history": "the generation history: list, read, play, share and delete generations",
    "predictions": "the hosted predictor's API: predictions, files, the webhook secret",
    "usage:read": "the account's usage and quotas (GET /v1/usage)",
    "keys": "the account's own API keys: list, create, rename, revoke",
    "admin": "operators: every account (create, list, limits and quotas, disable, delete, their keys and usage)",
}
# What a key gets when nobody says otherwise (`make key`, an operator's key for an account): all but admin.
DEFAULT_SCOPES = tuple(scope for scope in SCOPES if scope != "admin")
# A browser token's one scope.
TOKEN_SCOPES = ("generate",)
# A browser token asked for without ttl_seconds lives this long (or BROWSER_TOKEN_MAX_SECONDS if shorter).
TOKEN_DEFAULT_SECONDS = 300


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_public_id(kind: str = "key") -> str:
    return ("tok_" if kind == "browser_token" else "key_") + secrets.token_hex(8)


def key_hash(key: str) -> str:
    # surrogateescape: a header's bytes that are not UTF-8 (aiohttp keeps them so) make an unknown key, not an error.
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def display_prefix(secret: str) -> str:
    return secret[: DISPLAY_PREFIX_CHARS + (len(TOKEN_PREFIX) - len(KEY_PREFIX) if secret.startswith(TOKEN_PREFIX) else 0)]


def ordered_scopes(scopes: Iterable[str]) -> list[str]:
    """The scopes without repeats, in SCOPES' order; ValueError naming one that is no scope."""
    wanted = set(scopes)
    unknown = sorted(wanted - set(SCOPES))
    if unknown:
        raise ValueError(f"no such scope: {', '.join(unknown)} (scopes: {', '.join(SCOPES)})")
    return [scope for scope in SCOPES if scope in wanted]


@dataclass(frozen=True)
class NewKey:
    account_id: int
    account_created: bool
    key: str
    prefix: str


async def create_key(table: AccountsTable, account_name: str, scopes: Sequence[str] = DEFAULT_SCOPES) -> NewKey:
    """Create the account if it does not exist yet, and a new key for it (`make key`)."""
    if not ACCOUNT_NAME.match(account_name):
        raise ValueError(f"an account name is {ACCOUNT_NAME_RULE}")
    key = new_key()
    account_id, created = await table.add_key(
        account_name, key_hash(key), display_prefix(key), new_public_id(), ordered_scopes(scopes)
    )
    return NewKey(account_id, created, key, display_prefix(key))


def bearer_key(authorization: str) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header (or gRPC metadata), or None."""
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return None
    return key.strip()


def unauthorized(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.UNAUTHENTICATED, "UNAUTHORIZED", message)


def account_disabled() -> ApiError:
    return ApiError(
        grpc.StatusCode.PERMISSION_DENIED,
        "ACCOUNT_DISABLED",
        "this key's account is disabled: none of its keys works until an operator enables it again",
    )


# The one answer to a key that does not work, whatever the reason: nothing to learn from it.
INVALID_KEY = "invalid API key"


def check_expire_time(expire_time, param: str = "expire_time") -> datetime.datetime | None:
    """A key's expiry as a datetime (None for never); INVALID_PARAMETER for one not in the future."""
    if expire_time is None:
        return None
    when = expire_time.ToDatetime(tzinfo=datetime.UTC)
    if when <= datetime.datetime.now(datetime.UTC):
        raise invalid_parameter(param, f"{param} must be in the future; leave it out for a key that never expires")
    return when


class Accounts:
    """Key checks with a short cache, for the edge and this process's gRPC services, and the keys'
    and accounts' life cycle (which drops what this process's cache knows at once)."""

    def __init__(self, table: AccountsTable) -> None:
        self.table = table
        self._cache: dict[str, tuple[Caller, float]] = {}  # key hash → (caller, expiry on the monotonic clock)

    # --- who is calling -----------------------------------------------------------

    async def authenticate(self, authorization: str) -> Caller:
        """The caller of an ``Authorization: Bearer <key>`` value; UNAUTHORIZED for a missing, unknown,
        revoked or expired key, ACCOUNT_DISABLED for a key of a disabled account."""
        key = bearer_key(authorization)
        if key is None:
            raise unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        hashed = key_hash(key)
        now = time.monotonic()
        cached = self._cache.get(hashed)
        if cached is not None and cached[1] > now:
            return cached[0]
        row = await self.table.authenticate(hashed)
        if row is None:
            self._cache.pop(hashed, None)
            raise unauthorized(INVALID_KEY)
        if row["disabled"]:
            self._cache.pop(hashed, None)
            raise account_disabled()
        token = row["kind"] == "browser_token"
        caller = Caller(
            account_id=row["account_id"],
            key_id=row["parent_id"] if token else row["id"],
            scopes=frozenset(row["scopes"]),
            token=token,
            credential_id=row["id"],
        )
        if len(self._cache) >= MAX_CACHED_KEYS:
            self._cache.clear()
        lifetime = KEY_CACHE_SECONDS.value
        if row["seconds_left"] is not None:
            lifetime = min(lifetime, float(row["seconds_left"]))
        self._cache[hashed] = (caller, now + lifetime)
        return caller

    async def principal(self, context) -> Caller:
        """Who calls one of the gateway's own services that needs a key, with the scope its method
        declares checked (INSUFFICIENT_SCOPE)."""
        if isinstance(context, InProcessContext) and context.caller is not None:
            return context.caller  # the edge checked the key of this request, and its scope
        metadata = dict(context.invocation_metadata() or ())
        caller = await self.authenticate(metadata.get("authorization", ""))
        callers.require(caller, callers.scope_of(callers.CURRENT_METHOD.get()))
        return caller

    async def caller(self, context) -> int:
        """The account calling one of the gateway's own services that needs a key (see principal)."""
        return (await self.principal(context)).account_id

    def forget(self, *, account_id: int | None = None, key_id: int | None = None) -> None:
        """Drop what the cache knows of an account's keys, or of a key and the browser tokens it minted."""
        for hashed, (caller, _) in list(self._cache.items()):
            if caller.account_id == account_id or (key_id is not None and key_id in (caller.credential_id, caller.key_id)):
                self._cache.pop(hashed, None)

    # --- keys --------------------------------------------------------------------

    async def create_key(
        self, account_id: int, name: str, scopes: Sequence[str], expire_time=None, *, within: Caller | None = None
    ):
        """A new key of the account: (its row, the key itself). With `within`, the calling key, its scopes
        are at most that key's (none asked: the caller's own; one it lacks: INSUFFICIENT_SCOPE); without,
        an operator's (none asked: DEFAULT_SCOPES)."""
        if within is not None:
            asked = ordered_scopes(scopes) if scopes else ordered_scopes(within.scopes)
            for scope in asked:
                if scope not in within.scopes:
                    raise callers.insufficient_scope(
                        scope, f"a key can only make keys with scopes it has itself, and this one lacks {scope!r}"
                    )
        else:
            asked = ordered_scopes(scopes) if scopes else list(DEFAULT_SCOPES)
        if not asked:
            raise invalid_parameter("scopes", "a key needs at least one scope")
        secret = new_key()
        row = await self.table.insert_key(
            NewKeyRow(
                account_id=account_id,
                key_hash=key_hash(secret),
                prefix=display_prefix(secret),
                public_id=new_public_id(),
                name=name.strip(),
                scopes=asked,
                expire_time=check_expire_time(expire_time),
            ),
            MAX_KEYS_PER_ACCOUNT.value,
        )
        log.info("API key created", extra={"account_id": account_id, "key": row["public_id"], "scopes": asked})
        return row, secret

    async def revoke_key(self, account_id: int, public_id: str) -> None:
        key_id = await self.table.revoke_key(account_id, public_id)
        self.forget(key_id=key_id)
        log.info("API key revoked", extra={"account_id": account_id, "key": public_id})

    async def mint_token(self, caller: Caller, ttl_seconds: int | None):
        """A browser token for the calling key: (its row, the token itself)."""
        if caller.token:
            raise callers.insufficient_scope(
                "generate", "a browser token cannot mint another: mint browser tokens with an API key"
            )
        most = BROWSER_TOKEN_MAX_SECONDS.value
        seconds = min(TOKEN_DEFAULT_SECONDS, most) if ttl_seconds is None else ttl_seconds
        secret = new_token()
        row = await self.table.insert_key(
            NewKeyRow(
                account_id=caller.account_id,
                key_hash=key_hash(secret),
                prefix=display_prefix(secret),
                public_id=new_public_id("browser_token"),
                name="",
                scopes=TOKEN_SCOPES,
                kind="browser_token",
                parent_id=caller.credential_id,
                ttl_seconds=float(seconds),
            ),
            MAX_BROWSER_TOKENS_PER_ACCOUNT.value,
        )
        return row, secret

    # --- accounts ----------------------------------------------------------------

    @staticmethod
    def check_account_name(name: str) -> str:
        if not ACCOUNT_NAME.match(name):
            raise invalid_parameter("name", f"an account name is {ACCOUNT_NAME_RULE}")
        return name

    async def set_disabled(self, account_id: int, settings: dict, disabled: bool | None):
        row = await self.table.update_account(account_id, settings, disabled)
        if disabled:
            self.forget(account_id=account_id)
        log.info(
            "account changed",
            extra={"account_id": account_id, "disabled": disabled, "settings": sorted(settings)},
        )
        return row

    async def mark_deleted(self, account_id: int, purge_again_after_seconds: float) -> bool:
        """No key of the account works from now on (here at once; elsewhere within the key cache's time)."""
        was_live = await self.table.mark_deleted(account_id, purge_again_after_seconds)
        self.forget(account_id=account_id)
        return was_live
