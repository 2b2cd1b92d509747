"""The library's tables (schema `library`): every query the service runs.

Each function takes the caller's account id and touches only that account's
rows, so a sample of another account is simply not found. Connection loss
becomes DATABASE_UNAVAILABLE through runtime.database (single reads and deletes
run as one statement each; changes of the default flag in a transaction).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import asyncpg
import grpc

from runtime.database import DATABASE_TIMEOUT_SECONDS, connection, transaction
from runtime.errors import ApiError, not_found
from services.library.rules import Position

log = logging.getLogger("library.store")

T = TypeVar("T")

# What the API shows of a sample: never the audio columns, which can be megabytes.
_SAMPLE_COLUMNS = """
    id, speaker_name, transcript, transcript_source, is_default, original_format,
    octet_length(original_audio) AS original_size_bytes, duration_seconds,
    visibility, collection, create_time, update_time
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
    original_audio: bytes | memoryview
    normalized_wav: bytes | memoryview
    duration_seconds: float


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
    """Store a sample; it is committed when this returns, metered in the same transaction as usage of
    the key `key_id` (sample_usage: one sample and its bytes, on the UTC day it was stored).

    The row goes in by COPY, streamed in chunks (:func:`_copy_row`): as a
    statement's parameters, asyncpg would copy the audio (megabytes) twice
    more before sending it, and the socket's buffer a third time.
    """

    async def work(connection: asyncpg.Connection) -> asyncpg.Record:
        if sample.is_default:
            await _clear_default(connection, account, None)
        sample_id = await connection.fetchval("SELECT nextval(pg_get_serial_sequence('samples', 'id'))")
        copy = connection.copy_to_table(
            "samples", source=_copy_row(sample_id, account, sample), columns=_COPIED_COLUMNS, format="binary"
        )
        try:
            # asyncpg's COPY waits for the socket to drain with no deadline: a server that goes
            # away mid-COPY would hold the upload forever. The statement timeout holds instead.
            await asyncio.wait_for(copy, DATABASE_TIMEOUT_SECONDS.value)
        except asyncpg.PostgresError:  # the server refused the row (a default race): the connection is fine
            raise
        except BaseException:
            # Cut short, the COPY leaves the connection mid-protocol: it must not go back to the pool.
            connection.terminate()
            raise
        row = await connection.fetchrow(f"SELECT {_SAMPLE_COLUMNS} FROM samples WHERE id = $1", sample_id)
        await connection.execute(
            """INSERT INTO sample_usage AS u (account_id, day, key_id, samples, bytes)
               VALUES ($1, ($2::timestamptz AT TIME ZONE 'UTC')::date, $3, 1, $4)
               ON CONFLICT (account_id, day, key_id) DO UPDATE
               SET samples = u.samples + 1, bytes = u.bytes + EXCLUDED.bytes""",
            account,
            row["create_time"],
            key_id,
            len(sample.original_audio) + len(sample.normalized_wav),
        )
        return row

    return await _changing_default(pool, work)


_COPIED_COLUMNS = [
    "id", "account_id", "speaker_name", "transcript", "transcript_source", "is_default", "visibility",
    "collection", "original_format", "original_audio", "normalized_wav", "duration_seconds",
]  # fmt: skip
# PostgreSQL's binary COPY format: signature, flags, header extension length.
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_COPY_CHUNK_BYTES = 256 * 1024


async def _copy_row(sample_id: int, account: int, sample: NewSample) -> AsyncIterator[bytes | memoryview]:
    """One row of _COPIED_COLUMNS in binary COPY format; the audio in slices, never copied whole."""

    def text(value: str) -> bytes:
        encoded = value.encode()
        return struct.pack("!i", len(encoded)) + encoded

    yield b"".join([
        _COPY_HEADER,
        struct.pack("!h", len(_COPIED_COLUMNS)),
        struct.pack("!iq", 8, sample_id),
        struct.pack("!iq", 8, account),
        *(text(value) for value in (sample.speaker_name, sample.transcript, sample.transcript_source)),
        struct.pack("!i?", 1, sample.is_default),
        *(text(value) for value in (sample.visibility, sample.collection, sample.original_format)),
    ])  # fmt: skip
    for audio in (sample.original_audio, sample.normalized_wav):
        yield struct.pack("!i", len(audio))
        view = memoryview(audio)
        for start in range(0, len(view), _COPY_CHUNK_BYTES):
            yield view[start : start + _COPY_CHUNK_BYTES]
    yield struct.pack("!id", 8, sample.duration_seconds) + struct.pack("!h", -1)  # the last field, the end


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


async def get_audio(pool: asyncpg.Pool, account: int, sample_id: int) -> bytes:
    async with connection(pool) as db:
        wav = await db.fetchval(
            "SELECT normalized_wav FROM samples WHERE account_id = $1 AND id = $2",
            account,
            sample_id,
        )
    return _found(wav, sample_id)


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


async def delete(pool: asyncpg.Pool, account: int, sample_id: int) -> None:
    async with connection(pool) as db:
        deleted = await db.fetchval(
            "DELETE FROM samples WHERE account_id = $1 AND id = $2 RETURNING id",
            account,
            sample_id,
        )
    _found(deleted, sample_id)


def _found(value: T | None, sample_id: int) -> T:
    if value is None:
        raise not_found(f"voice sample {sample_id} not found")
    return value


# --- the account as a whole (AccountDataService) --------------------------------------------


async def delete_account(pool: asyncpg.Pool, account: int) -> int:
    """Delete every sample of the account and its usage records; how many samples there were."""
    async with transaction(pool) as db:
        deleted = await db.execute("DELETE FROM samples WHERE account_id = $1", account)
        await db.execute("DELETE FROM sample_usage WHERE account_id = $1", account)
    return int(deleted.split()[-1])


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
                      coalesce(sum(octet_length(original_audio) + octet_length(normalized_wav)), 0) AS bytes
               FROM samples WHERE account_id = $1""",
            account,
        )
    return days, stored
