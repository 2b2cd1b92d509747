"""Accounts and their API keys. A key is shown once, when it is made; only its SHA-256 is stored.

An account may be disabled (no key of it works, no generation is admitted)
and deleted: its row stays as a tombstone (its name free for a new account)
while every row of its data in the gateway's schema is purged, once at once
and once more after other replicas' key caches have expired
(:meth:`AccountsTable.due_for_another_purge`). Keys have a random public id,
scopes, an optional expiry and a last-use time; browser tokens are keys of
kind ``browser_token``, each minted by a key and stopping with it.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import asyncpg
import grpc

from runtime import database
from runtime.errors import ApiError, not_found

KEY_COLUMNS = """k.id, k.public_id, k.account_id, k.name, k.prefix, k.scopes, k.kind, k.parent_id,
    k.created_at, k.last_used_at, k.expires_at"""
ACCOUNT_COLUMNS = """id, name, created_at, disabled_at, generations_per_second, generation_burst,
    concurrent_generations, monthly_audio_seconds, monthly_characters, monthly_generations"""
# What an operator may set on an account: its limits (NULL: the gateway's settings) and quotas (NULL: none).
SETTABLE = (
    "generations_per_second",
    "generation_burst",
    "concurrent_generations",
    "monthly_audio_seconds",
    "monthly_characters",
    "monthly_generations",
)
# Every table of the gateway's schema that holds an account's data, by its account_id, in the
# order they are emptied (generations take their predictions and jobs along, ON DELETE CASCADE;
# browser tokens go with the keys that minted them).
ACCOUNT_DATA = (
    "generations",
    "prediction_files",
    "prediction_prompt_samples",
    "webhook_secrets",
    "generation_allowances",
    "usage_daily",
    "api_keys",
)


@dataclass(frozen=True)
class NewKey:
    account_id: int
    key_hash: str
    prefix: str
    public_id: str
    name: str
    scopes: Sequence[str]
    kind: str = "key"  # or "browser_token"
    parent_id: int | None = None  # the key that mints a browser token
    expire_time: datetime.datetime | None = None  # None: never (a browser token: see ttl_seconds)
    ttl_seconds: float | None = None  # a browser token's life, from the database's now()


def account_name_taken(name: str) -> ApiError:
    return ApiError(
        grpc.StatusCode.ALREADY_EXISTS, "ALREADY_EXISTS", f"there is an account named {name!r} already", param="name"
    )


class AccountsTable:
    def __init__(self, pool: Callable[[], asyncpg.Pool]) -> None:
        self.pool = pool

    # --- accounts -------------------------------------------------------------------

    async def add_key(
        self, account_name: str, key_hash: str, prefix: str, public_id: str, scopes: Sequence[str]
    ) -> tuple[int, bool]:
        """Create the account if it does not exist yet and store a key's hash for it: (account id, created).
        (`make key`, the operator's bootstrap.)"""
        async with database.transaction(self.pool()) as db:
            # ON CONFLICT keeps two concurrent `make key` runs for one new account from failing.
            account_id = await db.fetchval(
                """INSERT INTO accounts (name) VALUES ($1)
                   ON CONFLICT (name) WHERE deleted_at IS NULL DO NOTHING RETURNING id""",
                account_name,
            )
            created = account_id is not None
            if not created:
                account_id = await db.fetchval(
                    "SELECT id FROM accounts WHERE name = $1 AND deleted_at IS NULL", account_name
                )
            await db.execute(
                """INSERT INTO api_keys (account_id, key_hash, prefix, public_id, scopes, name)
                   VALUES ($1, $2, $3, $4, $5, 'make key')""",
                account_id, key_hash, prefix, public_id, list(scopes),
            )  # fmt: skip
        return account_id, created

    async def create_account(self, name: str, settings: dict[str, Any]) -> asyncpg.Record:
        """A new account with these limits and quotas; ALREADY_EXISTS when a live account has the name."""
        columns = ["name", *(column for column in SETTABLE if settings.get(column) is not None)]
        values = [name, *(settings[column] for column in columns[1:])]
        placeholders = ", ".join(f"${n}" for n in range(1, len(columns) + 1))
        try:
            async with database.connection(self.pool()) as db:
                return await db.fetchrow(
                    f"INSERT INTO accounts ({', '.join(columns)}) VALUES ({placeholders}) RETURNING {ACCOUNT_COLUMNS}",
                    *values,
                )
        except asyncpg.UniqueViolationError:
            raise account_name_taken(name) from None

    async def get_account(self, account_id: int) -> asyncpg.Record:
        """A live account; NOT_FOUND for a deleted one, as for a made-up id."""
        async with database.connection(self.pool()) as db:
            row = await db.fetchrow(
                f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = $1 AND deleted_at IS NULL", account_id
            )
        return _account_found(row, account_id)

    async def list_accounts(self, after_id: int, limit: int) -> list[asyncpg.Record]:
        """Up to `limit` live accounts with ids above `after_id`, oldest first."""
        async with database.connection(self.pool()) as db:
            return await db.fetch(
                f"""SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE deleted_at IS NULL AND id > $1
                    ORDER BY id LIMIT $2""",
                after_id,
                limit,
            )

    async def update_account(
        self, account_id: int, settings: dict[str, Any], disabled: bool | None
    ) -> asyncpg.Record:
        """Set the given limits and quotas (a value of None removes one) and, unless `disabled` is
        None, disable the account (keeping the first time it was) or enable it."""
        unknown = set(settings) - set(SETTABLE)
        if unknown:
            raise ValueError(f"not settable: {sorted(unknown)}")
        assignments = [f"{column} = ${n}" for n, column in enumerate(settings, start=3)]
        assignments.append(
            "disabled_at = CASE WHEN $2::boolean IS NULL THEN disabled_at "
            "WHEN $2 THEN coalesce(disabled_at, now()) ELSE NULL END"
        )
        async with database.connection(self.pool()) as db:
            row = await db.fetchrow(
                f"""UPDATE accounts SET {', '.join(assignments)}
                    WHERE id = $1 AND deleted_at IS NULL RETURNING {ACCOUNT_COLUMNS}""",
                account_id,
                disabled,
                *settings.values(),
            )
        return _account_found(row, account_id)

    async def mark_deleted(self, account_id: int, purge_again_after_seconds: float) -> bool:
        """Make the account a tombstone (no key of it works from now on, no generation is admitted), to
        be purged once more after `purge_again_after_seconds`. Whether it was live; NOT_FOUND for an id
        that never was an account's."""
        async with database.connection(self.pool()) as db:
            row = await db.fetchrow(
                """WITH target AS (SELECT id, deleted_at FROM accounts WHERE id = $1 FOR UPDATE),
                        marked AS (UPDATE accounts a SET deleted_at = now(), disabled_at = coalesce(a.disabled_at, now()),
                                       purge_again_at = now() + make_interval(secs => $2)
                                   FROM target WHERE a.id = target.id AND target.deleted_at IS NULL RETURNING a.id)
                   SELECT target.deleted_at IS NULL AS was_live FROM target""",
                account_id,
                purge_again_after_seconds,
            )
        if row is None:
            raise not_found(f"there is no account {account_id}")
        return row["was_live"]

    async def purge(self, account_id: int) -> dict[str, int]:
        """Delete every row of a deleted account's data in the gateway's schema (its tombstone stays);
        the rows deleted, by table. Running it again deletes what came since, or nothing."""
        deleted: dict[str, int] = {}
        async with database.transaction(self.pool()) as db:
            live = await db.fetchval("SELECT deleted_at IS NULL FROM accounts WHERE id = $1 FOR UPDATE", account_id)
            if live:  # never purge an account that is not deleted
                raise ValueError(f"account {account_id} is not deleted")
            for table in ACCOUNT_DATA:
                status = await db.execute(f"DELETE FROM {table} WHERE account_id = $1", account_id)
                deleted[table] = int(status.split()[-1])
        return deleted

    async def due_for_another_purge(self) -> list[int]:
        """Deleted accounts whose time to be purged once more has come."""
        async with database.connection(self.pool()) as db:
            return [
                row["id"]
                for row in await db.fetch(
                    "SELECT id FROM accounts WHERE purge_again_at <= now() AND deleted_at IS NOT NULL ORDER BY id"
                )
            ]

    async def purged_for_good(self, account_id: int) -> None:
        async with database.connection(self.pool()) as db:
            await db.execute("UPDATE accounts SET purge_again_at = NULL WHERE id = $1", account_id)

    # --- keys -----------------------------------------------------------------------

    async def insert_key(self, key: NewKey, most: int) -> asyncpg.Record:
        """Store a key (or browser token) for a live account that has fewer than `most` of that kind
        working; NOT_FOUND for a deleted account, RATE_LIMITED when it has `most`."""
        async with database.transaction(self.pool()) as db:
            # The account's row, locked: its keys are counted and added one at a time on every replica.
            live = await db.fetchval(
                "SELECT true FROM accounts WHERE id = $1 AND deleted_at IS NULL FOR UPDATE", key.account_id
            )
            _account_found(live, key.account_id)
            working = await db.fetchval(
                """SELECT count(*) FROM api_keys WHERE account_id = $1 AND kind = $2 AND revoked_at IS NULL
                   AND (expires_at IS NULL OR expires_at > now())""",
                key.account_id,
                key.kind,
            )
            if working >= most:
                what = "browser tokens that have not expired" if key.kind == "browser_token" else "keys"
                raise ApiError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "RATE_LIMITED",
                    f"this account has {working} {what}, the most it may have; revoke some first"
                    if key.kind == "key"
                    else f"this account has {working} {what}, the most it may have; try again when some have",
                    retry_after=None if key.kind == "key" else 60,
                )
            return await db.fetchrow(
                f"""INSERT INTO api_keys AS k (account_id, key_hash, prefix, public_id, name, scopes, kind, parent_id,
                                               expires_at)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8,
                            coalesce($9, now() + make_interval(secs => $10::double precision)))
                    RETURNING {KEY_COLUMNS}""",
                key.account_id, key.key_hash, key.prefix, key.public_id, key.name, list(key.scopes), key.kind,
                key.parent_id, key.expire_time, key.ttl_seconds,
            )  # fmt: skip

    async def authenticate(self, key_hash: str) -> asyncpg.Record | None:
        """The key (or browser token) with this hash that works now, with its account's state
        (`disabled`) and the seconds it has left (`seconds_left`, None for no expiry); None for an
        unknown, revoked or expired key, a token whose minting key is revoked or expired, or a key of
        a deleted account. Its last use is now (unless its account is disabled)."""
        async with database.connection(self.pool()) as db:
            return await db.fetchrow(
                f"""WITH found AS (
                        SELECT {KEY_COLUMNS}, a.disabled_at IS NOT NULL AS disabled,
                               extract(epoch FROM least(k.expires_at, p.expires_at) - now()) AS seconds_left
                        FROM api_keys k
                        JOIN accounts a ON a.id = k.account_id AND a.deleted_at IS NULL
                        LEFT JOIN api_keys p ON p.id = k.parent_id
                        WHERE k.key_hash = $1 AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now())
                          AND (k.parent_id IS NULL
                               OR (p.revoked_at IS NULL AND (p.expires_at IS NULL OR p.expires_at > now())))),
                    used AS (UPDATE api_keys SET last_used_at = now()
                             WHERE id IN (SELECT id FROM found WHERE NOT disabled))
                    SELECT * FROM found""",
                key_hash,
            )

    async def get_key(self, account_id: int, key_id: int) -> asyncpg.Record:
        async with database.connection(self.pool()) as db:
            row = await db.fetchrow(
                f"SELECT {KEY_COLUMNS} FROM api_keys k WHERE k.id = $1 AND k.account_id = $2", key_id, account_id
            )
        if row is None:
            raise not_found("there is no such key")
        return row

    async def list_keys(self, account_id: int) -> list[asyncpg.Record]:
        """The account's keys that are not revoked (browser tokens left out), newest first."""
        async with database.connection(self.pool()) as db:
            return await db.fetch(
                f"""SELECT {KEY_COLUMNS} FROM api_keys k
                    WHERE k.account_id = $1 AND k.kind = 'key' AND k.revoked_at IS NULL
                    ORDER BY k.id DESC""",
                account_id,
            )

    async def rename_key(self, account_id: int, public_id: str, name: str) -> asyncpg.Record:
        async with database.connection(self.pool()) as db:
            row = await db.fetchrow(
                f"""UPDATE api_keys k SET name = $3
                    WHERE k.public_id = $1 AND k.account_id = $2 AND k.kind = 'key' AND k.revoked_at IS NULL
                    RETURNING {KEY_COLUMNS}""",
                public_id,
                account_id,
                name,
            )
        return _key_found(row, public_id)

    async def revoke_key(self, account_id: int, public_id: str) -> int:
        """Revoke the account's key and the browser tokens it minted; the key's number. NOT_FOUND for
        a key revoked already, another account's, or a made-up id."""
        async with database.connection(self.pool()) as db:
            key_id = await db.fetchval(
                """WITH target AS (SELECT id FROM api_keys
                                   WHERE public_id = $1 AND account_id = $2 AND kind = 'key' AND revoked_at IS NULL),
                        revoked AS (UPDATE api_keys SET revoked_at = now()
                                    WHERE (id IN (SELECT id FROM target) OR parent_id IN (SELECT id FROM target))
                                      AND revoked_at IS NULL)
                   SELECT id FROM target""",
                public_id,
                account_id,
            )
        return _key_found(key_id, public_id)

    async def keys_by_number(self, account_id: int, key_ids: Sequence[int]) -> dict[int, asyncpg.Record]:
        """The account's keys (revoked ones too) with these numbers, by number."""
        async with database.connection(self.pool()) as db:
            rows = await db.fetch(
                f"SELECT {KEY_COLUMNS} FROM api_keys k WHERE k.account_id = $1 AND k.id = ANY($2::bigint[])",
                account_id,
                list(key_ids),
            )
        return {row["id"]: row for row in rows}

    async def sweep_tokens(self, expired_for_seconds: float) -> int:
        """Delete the browser tokens that expired more than `expired_for_seconds` ago; how many."""
        async with database.connection(self.pool()) as db:
            status = await db.execute(
                """DELETE FROM api_keys WHERE kind = 'browser_token'
                   AND expires_at < now() - make_interval(secs => $1)""",
                expired_for_seconds,
            )
        return int(status.split()[-1])


def _account_found(row, account_id: int):
    if row is None:
        raise not_found(f"there is no account {account_id}")
    return row


def _key_found(row, public_id: str):
    # Another account's key is as unknown as a made-up id.
    if row is None:
        raise not_found(f"there is no key {public_id[:40]!r} of this account")
    return row
