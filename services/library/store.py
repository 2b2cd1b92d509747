"""The library's tables (schema `library`): every query the service runs.

Each function takes the caller's account id and touches only that account's
rows, so a sample of another account is simply not found. Connection loss
becomes DATABASE_UNAVAILABLE through runtime.database (single reads and deletes
run as one statement each; changes of the default flag in a transaction).

The audio is in the object store (runtime/objects.py, migration 003): a row
names its objects, which the service stores before it inserts the row. A
statement that deletes rows hands their objects to ``object_deletions`` at
once, so that they are deleted from the store even if it is down just then.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, TypeVar

import asyncpg
import grpc

from runtime.database import connection, transaction
from runtime.downloads import Stored
from runtime.errors import ApiError, not_found
from services.library.rules import Position

log = logging.getLogger("library.store")

T = TypeVar("T")

WAV = "audio/wav"

# What the API shows of a sample (its audio is in the object store, by key).
_SAMPLE_COLUMNS = """
    id, speaker_name, transcript, transcript_source, is_default, original_format,
    original_bytes AS original_size_bytes, duration_seconds,
    visibility, collection, create_time, update_time, warnings
"""

# Columns UpdateVoiceSample may set; anything else is a programming error.
_UPDATABLE = {"speaker_name", "transcript", "transcript_source", "visibility", "collection"}

# Two requests making different samples of one account the default at the same
# moment: the unique index lets one commit and fails the other, which then
# retries and, seeing the first, clears it. More attempts than racers needed.
_DEFAULT_RACE_ATTEMPTS = 5


@dataclass(frozen=True)
class NewSample:
    speaker_name: str
    transcript: str
    transcript_source: str
    is_default: bool
    visibility: str
    collection: str
    original_format: str
    # The audio's objects in the store (stored before the row), and their sizes.
    original_key: str
    original_bytes: int
    normalized_key: str
    normalized_bytes: int
    duration_seconds: float
    # The words speech recognition heard, [(start, end, text)]; None when it could not be asked.
    word_timings: list[tuple[float, float, str]] | None = None
    # What the upload's check found: [{"code": "clipping", "message": "..."}].
    warnings: list[dict[str, str]] = field(default_factory=list)


async def _changing_default(
    pool: asyncpg.Pool, work: Callable[[asyncpg.Connection], Awaitable[T]]
) -> T:
    """Run `work` in a transaction, again if a concurrent default change won the race."""
    for attempt in range(1, _DEFAULT_RACE_ATTEMPTS + 1):
        try:
            async with transaction(pool) as connection:
                return await work(connection)
        except asyncpg.UniqueViolationError:
            log.info("default sample changed concurrently; retrying", extra={"attempt": attempt})
    raise ApiError(
        grpc.StatusCode.ABORTED,
        "CONFLICT",
        "the default sample was changed by several requests at once; try again",
    )


async def _clear_default(connection: asyncpg.Connection, account: int, keep_id: int | None) -> None:
    await connection.execute(
        """UPDATE samples SET is_default = false, update_time = now()
           WHERE account_id = $1 AND is_default AND id IS DISTINCT FROM $2""",
        account,
        keep_id,
    )


async def insert(pool: asyncpg.Pool, account: int, sample: NewSample, key_id: int = 0) -> asyncpg.Record:
    """Store a sample whose audio is in the object store already; it is committed when this returns,
    metered in the same transaction as usage of the key `key_id` (sample_usage: one sample and its
    bytes, on the UTC day it was stored)."""

    async def work(connection: asyncpg.Connection) -> asyncpg.Record:
        if sample.is_default:
            await _clear_default(connection, account, None)
        row = await connection.fetchrow(
            f"""INSERT INTO samples (account_id, speaker_name, transcript, transcript_source, is_default, visibility,
                    collection, original_format, original_key, original_bytes, normalized_key, normalized_bytes,
                    duration_seconds, word_timings, warnings)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14::jsonb, $15::jsonb)
                RETURNING {_SAMPLE_COLUMNS}""",
            account,
            sample.speaker_name,
            sample.transcript,
            sample.transcript_source,
            sample.is_default,
            sample.visibility,
            sample.collection,
            sample.original_format,
            sample.original_key,
            sample.original_bytes,
            sample.normalized_key,
            sample.normalized_bytes,
            sample.duration_seconds,
            _timings_json(sample.word_timings),
            json.dumps(sample.warnings),
        )
        await connection.execute(
            """INSERT INTO sample_usage AS u (account_id, day, key_id, samples, bytes)
               VALUES ($1, ($2::timestamptz AT TIME ZONE 'UTC')::date, $3, 1, $4)
               ON CONFLICT (account_id, day, key_id) DO UPDATE
               SET samples = u.samples + 1, bytes = u.bytes + EXCLUDED.bytes""",
            account,
            row["create_time"],
            key_id,
            sample.original_bytes + sample.normalized_bytes,
        )
        return row

    return await _changing_default(pool, work)


async def list_page(
    pool: asyncpg.Pool, account: int, after: Position | None, limit: int
) -> list[asyncpg.Record]:
    """Up to `limit` samples, newest first, starting after `after`."""
    arguments: list[Any] = [account, limit]
    after_clause = ""
    if after is not None:
        arguments += [after.create_time, after.id]
        after_clause = "AND (create_time, id) < ($3, $4)"
    async with connection(pool) as db:
        return await db.fetch(
            f"""SELECT {_SAMPLE_COLUMNS} FROM samples
                WHERE account_id = $1 {after_clause}
                ORDER BY create_time DESC, id DESC
                LIMIT $2""",
            *arguments,
        )


async def get(pool: asyncpg.Pool, account: int, sample_id: int) -> asyncpg.Record:
    async with connection(pool) as db:
        return await _fetch(db, account, sample_id)


async def _fetch(connection: asyncpg.Connection, account: int, sample_id: int) -> asyncpg.Record:
    row = await connection.fetchrow(
        f"SELECT {_SAMPLE_COLUMNS} FROM samples WHERE account_id = $1 AND id = $2",
        account,
        sample_id,
    )
    return _found(row, sample_id)


def _timings_json(words: list[tuple[float, float, str]] | None) -> str | None:
    return None if words is None else json.dumps([[start, end, text] for start, end, text in words])


@dataclass(frozen=True)
class PromptSample:
    """What a voice prompt is made of: the sample's transcript, length, version, audio and word timings."""

    id: int
    transcript: str
    duration_seconds: float
    update_time: Any  # datetime
    audio: Stored
    word_timings: list[tuple[float, float, str]] | None  # None: not timed yet


_PROMPT_SAMPLE_COLUMNS = """id, transcript, duration_seconds, update_time, normalized_key, normalized_bytes,
                            word_timings::text AS word_timings"""


async def prompt_sample(pool: asyncpg.Pool, account: int, sample_id: int) -> PromptSample:
    async with connection(pool) as db:
        row = await db.fetchrow(
            f"SELECT {_PROMPT_SAMPLE_COLUMNS} FROM samples WHERE account_id = $1 AND id = $2", account, sample_id
        )
    return _prompt_sample(_found(row, sample_id))


async def prompt_samples(pool: asyncpg.Pool, account: int, sample_ids: list[int]) -> dict[int, PromptSample]:
    """The account's samples among `sample_ids`, by id, in one query (an id it has none of is left out)."""
    async with connection(pool) as db:
        rows = await db.fetch(
            f"SELECT {_PROMPT_SAMPLE_COLUMNS} FROM samples WHERE account_id = $1 AND id = ANY($2::bigint[])",
            account,
            list(set(sample_ids)),
        )
    return {row["id"]: _prompt_sample(row) for row in rows}


def _prompt_sample(row: asyncpg.Record) -> PromptSample:
    timings = row["word_timings"]
    return PromptSample(
        row["id"], row["transcript"], row["duration_seconds"], row["update_time"],
        Stored(row["normalized_key"], row["normalized_bytes"], WAV),
        None if timings is None else [(float(start), float(end), str(text)) for start, end, text in json.loads(timings)],
    )  # fmt: skip


async def set_word_timings(
    pool: asyncpg.Pool, account: int, sample_id: int, words: list[tuple[float, float, str]]
) -> None:
    """Keep the word timings computed for a sample stored without them. Not a change of the sample:
    its update_time (the version prompts are cached by) stays."""
    async with connection(pool) as db:
        await db.execute(
            "UPDATE samples SET word_timings = $3::jsonb WHERE account_id = $1 AND id = $2",
            account,
            sample_id,
            _timings_json(words),
        )


async def get_audio(pool: asyncpg.Pool, account: int, sample_id: int) -> Stored:
    """Where the sample's normalized WAV is: its object, or (a row from before the audio moved to the
    store, until tools/move_audio.py has run) the bytes themselves."""
    async with connection(pool) as db:
        row = await db.fetchrow(
            "SELECT normalized_key, normalized_bytes FROM samples WHERE account_id = $1 AND id = $2",
            account,
            sample_id,
        )
        row = _found(row, sample_id)
        if row["normalized_key"] is not None:
            return Stored(row["normalized_key"], row["normalized_bytes"], WAV)
        try:
            legacy = await db.fetchval("SELECT normalized_wav FROM samples WHERE id = $1", sample_id)
        except asyncpg.UndefinedColumnError:  # moved and dropped meanwhile: read it again
            legacy = None
    if legacy is None:
        return await get_audio(pool, account, sample_id)
    return Stored(None, len(legacy), WAV, legacy)


async def update(
    pool: asyncpg.Pool,
    account: int,
    sample_id: int,
    changes: dict[str, Any],
    make_default: bool | None,
) -> asyncpg.Record:
    """Set the given columns (and the default flag when not None); bumps update_time."""
    unknown = set(changes) - _UPDATABLE
    if unknown:
        raise ValueError(f"not updatable: {sorted(unknown)}")
    assignments = dict(changes)
    if make_default is not None:
        assignments["is_default"] = make_default

    async def work(connection: asyncpg.Connection) -> asyncpg.Record:
        if not assignments:  # nothing to change: the sample as it is
            return await _fetch(connection, account, sample_id)
        exists = await connection.fetchval(
            "SELECT true FROM samples WHERE account_id = $1 AND id = $2 FOR UPDATE",
            account,
            sample_id,
        )
        _found(exists, sample_id)  # before touching the account's other samples
        if make_default:
            await _clear_default(connection, account, sample_id)
        columns = list(assignments)
        placeholders = ", ".join(f"{column} = ${n}" for n, column in enumerate(columns, start=3))
        return await connection.fetchrow(
            f"""UPDATE samples SET {placeholders}, update_time = now()
                WHERE account_id = $1 AND id = $2
                RETURNING {_SAMPLE_COLUMNS}""",
            account,
            sample_id,
            *(assignments[column] for column in columns),
        )

    return await _changing_default(pool, work)


# Deleting rows hands their objects to object_deletions in the same statement (migration 003).
_HAND_OVER = """INSERT INTO object_deletions (key)
    SELECT key FROM deleted, unnest(ARRAY[deleted.original_key, deleted.normalized_key]) AS key
    WHERE key IS NOT NULL ON CONFLICT DO NOTHING"""


async def delete(pool: asyncpg.Pool, account: int, sample_id: int) -> list[str]:
    """Delete the sample; the keys of its objects, which are to be deleted from the store now
    (they wait in object_deletions until :func:`objects_deleted` says they are gone)."""
    async with connection(pool) as db:
        row = await db.fetchrow(
            f"""WITH deleted AS (DELETE FROM samples WHERE account_id = $1 AND id = $2
                                 RETURNING id, original_key, normalized_key),
                     handed AS ({_HAND_OVER})
                SELECT id, original_key, normalized_key FROM deleted""",
            account,
            sample_id,
        )
    row = _found(row, sample_id)
    return [key for key in (row["original_key"], row["normalized_key"]) if key is not None]


async def delete_account(pool: asyncpg.Pool, account: int) -> tuple[int, list[str]]:
    """Delete every sample of the account and its usage records: how many samples, and the keys of
    their objects (handed over as :func:`delete` does)."""
    async with transaction(pool) as db:
        rows = await db.fetch(
            f"""WITH deleted AS (DELETE FROM samples WHERE account_id = $1 RETURNING id, original_key, normalized_key),
                     handed AS ({_HAND_OVER})
                SELECT original_key, normalized_key FROM deleted""",
            account,
        )
        await db.execute("DELETE FROM sample_usage WHERE account_id = $1", account)
    return len(rows), [key for row in rows for key in (row["original_key"], row["normalized_key"]) if key is not None]


async def objects_deleted(pool: asyncpg.Pool, keys: list[str]) -> None:
    """These objects are gone from the store: nothing waits for them any more."""
    async with connection(pool) as db:
        await db.execute("DELETE FROM object_deletions WHERE key = ANY($1::text[])", keys)


async def pending_deletions(pool: asyncpg.Pool, most: int = 1000) -> list[str]:
    """Objects of deleted rows still to delete from the store (the store was down when they went)."""
    async with connection(pool) as db:
        return [row["key"] for row in await db.fetch("SELECT key FROM object_deletions ORDER BY since LIMIT $1", most)]


async def unnamed(pool: asyncpg.Pool, keys: list[str]) -> list[str]:
    """Those of `keys` that no sample names (nor a pending deletion): objects left by an upload whose
    row was never committed."""
    async with connection(pool) as db:
        rows = await db.fetch(
            """SELECT k.key FROM unnest($1::text[]) AS k (key)
               WHERE NOT EXISTS (SELECT 1 FROM samples WHERE original_key = k.key OR normalized_key = k.key)
                 AND NOT EXISTS (SELECT 1 FROM object_deletions d WHERE d.key = k.key)""",
            keys,
        )
    return [row["key"] for row in rows]


def _found(value: T | None, sample_id: int) -> T:
    if value is None:
        raise not_found(f"voice sample {sample_id} not found")
    return value


# --- the account as a whole (AccountDataService) --------------------------------------------


async def usage(pool: asyncpg.Pool, account: int, start, end) -> tuple[list[asyncpg.Record], asyncpg.Record]:
    """The account's sample usage per (day, key) from `start` to `end`, both included, and what it keeps now
    (`samples`, `bytes`)."""
    async with connection(pool) as db:
        days = await db.fetch(
            """SELECT day, key_id, samples, bytes FROM sample_usage
               WHERE account_id = $1 AND day BETWEEN $2 AND $3 ORDER BY day, key_id""",
            account,
            start,
            end,
        )
        stored = await db.fetchrow(
            """SELECT count(*) AS samples,
                      coalesce(sum(original_bytes + normalized_bytes), 0)::bigint AS bytes
               FROM samples WHERE account_id = $1""",
            account,
        )
    return days, stored


# --- Moving audio written before migration 003 (tools/move_audio.py) ------------------------------


@dataclass(frozen=True)
class LegacySample:
    id: int
    account_id: int
    original: bytes
    normalized: bytes


async def legacy_samples(pool: asyncpg.Pool, most: int) -> list[LegacySample]:
    """Up to `most` samples that still hold their audio in PostgreSQL (none once the columns are gone)."""
    async with connection(pool) as db:
        try:
            rows = await db.fetch(
                """SELECT id, account_id, original_audio, normalized_wav FROM samples
                   WHERE original_key IS NULL ORDER BY id LIMIT $1""",
                most,
            )
        except asyncpg.UndefinedColumnError:  # dropped by migration 004: all moved
            return []
    return [
        LegacySample(row["id"], row["account_id"], bytes(row["original_audio"]), bytes(row["normalized_wav"]))
        for row in rows
    ]


async def sample_moved(
    pool: asyncpg.Pool, sample: LegacySample, keys: tuple[str, str], checksums: tuple[str, str]
) -> bool:
    """Name the objects in the row and empty its audio columns, if the row still holds the audio whose
    SHA-256s are `checksums`; whether it did (a sample deleted meanwhile did not)."""
    async with connection(pool) as db:
        done = await db.execute(
            """UPDATE samples SET original_key = $2, normalized_key = $3, original_audio = NULL, normalized_wav = NULL
               WHERE id = $1 AND original_key IS NULL
                 AND encode(sha256(original_audio), 'hex') = $4 AND encode(sha256(normalized_wav), 'hex') = $5""",
            sample.id,
            *keys,
            *checksums,
        )
    return done.endswith(" 1")


async def finish_move(pool: asyncpg.Pool) -> bool:
    """Say that every sample's audio is in the store (what migration 004 waits for), if none is left;
    whether all is moved (also when the columns are gone already)."""
    async with connection(pool) as db:
        try:
            return await db.fetchval(
                "UPDATE audio_move SET moved = NOT EXISTS (SELECT 1 FROM samples WHERE original_key IS NULL) RETURNING moved"
            )
        except asyncpg.UndefinedTableError:  # migration 004 ran: nothing was left
            return True
