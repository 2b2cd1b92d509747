"""The ``generations`` table: every generation as it arrives, and how it ended.

A generation goes ``queued`` (admitted and stored, its voice prompt being
prepared) → ``running`` (sent to a provider) → ``succeeded`` (with its
audio), ``failed`` (with the public error type and message) or ``canceled``.
Only admitted requests are stored: a request refused at the door leaves no
record.

Admission is one statement, ``admit_generation`` (migrations 004, 007, 010 and
011), which checks the account's limits and stores the request together, under a
lock on the account's row, so the limits hold across every gateway replica:
a token bucket of GATEWAY_ACCOUNT_GENERATIONS_PER_SECOND (burst
GATEWAY_ACCOUNT_GENERATION_BURST), at most GATEWAY_ACCOUNT_CONCURRENT_GENERATIONS
generations queued or running (or the account's own limits, where an operator
set them), and the account's monthly quotas. It also meters the generation
(usage.py), as the statement that stores a success meters its audio.

A generation that ends while PostgreSQL is down (restarted, failed over)
cannot be closed then, and would count against its account until the
abandoned-generation sweep minutes later. :meth:`GenerationsTable.end` keeps
such an outcome in the process and writes it as soon as the database answers
again: before the next statement on this table, whichever (an admission
included, so the account's next request finds its place free), and by
:meth:`GenerationsTable.keep_recording`, which retries with a bounded backoff
while no statement comes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime
import json
import logging
import math
import re
import secrets
from dataclasses import dataclass
from typing import AsyncIterator, Callable

import asyncpg
import grpc
import tenacity
from google.protobuf import json_format

from runtime import pagination
from runtime.database import CONNECTION_ERRORS, connection
from runtime.downloads import Stored
from runtime.errors import ApiError, invalid_parameter, not_found
from voice.gateway.v1 import generations_pb2

log = logging.getLogger("gateway.generations")

ID_PREFIX = "gen_"
SHARED_VISIBILITIES = ("unlisted", "public")
UNDER_WAY = ("queued", "running")
# Columns of a Generation message (the audio itself is in the object store: audio_key).
COLUMNS = """seq, id, account_id, status, input, model, provider, speakers, speaker_names, parameters, error_type,
    error_message, audio_duration_seconds, visibility, collection, share_token, create_time, start_time, end_time,
    chunks, url_epoch, synthesis_seconds, key_id, audio_key, audio_bytes, audio_expired, analysis,
    coalesce((SELECT public_id FROM api_keys WHERE api_keys.id = generations.key_id), '') AS key_public_id"""
WAV = "audio/wav"
# Deleting a generation hands its audio's object to object_deletions in the same statement.
_HAND_OVER = """INSERT INTO object_deletions (key) SELECT audio_key FROM {rows} WHERE audio_key IS NOT NULL
    ON CONFLICT DO NOTHING"""


def audio_expired(generation_id: str) -> ApiError:
    return ApiError(
        grpc.StatusCode.NOT_FOUND,
        "AUDIO_EXPIRED",
        f"the audio of generation {generation_id} was deleted under this service's retention of generated audio; "
        "its record stays",
    )


def new_id() -> str:
    return ID_PREFIX + secrets.token_hex(12)


@dataclass(frozen=True)
class NewGeneration:
    account_id: int
    input: str
    model: str  # asked for ("" to auto-select)
    speakers: dict[str, int]
    speaker_names: dict[str, str]
    parameters: generations_pb2.GenerationParameters
    visibility: str
    collection: str
    generation_id: str = ""  # the caller's choice; "" for a new one
    key_id: int = 0  # the key it came with (a browser token's minting key), for usage; 0 for none


@dataclass(frozen=True)
class AccountLimits:
    per_second: float  # generations started per second, on average (0: no limit)
    burst: int  # started at once above that rate
    concurrent: int  # generations queued or running at once (0: no limit)


@dataclass(frozen=True)
class Outcome:
    """How a generation ended without audio, kept while the database cannot take it."""

    generation_id: str
    status: str  # failed or canceled
    error_type: str
    error_message: str
    end_time: datetime.datetime  # when it ended, not when it is written


def rate_limited(message: str, retry_after: float) -> ApiError:
    return ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", message, retry_after=retry_after)


# How each monthly quota is said in a refusal.
QUOTA_UNITS = {"audio_seconds": "seconds of audio", "characters": "characters of script", "generations": "generations"}


def quota_exceeded(quota: str, limit: float, used: float, reset_time: datetime.datetime, wait_seconds: float) -> ApiError:
    """QUOTA_EXCEEDED (429): the account has used its monthly `quota`; Retry-After is the time until reset_time."""
    reset = reset_time.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return ApiError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "QUOTA_EXCEEDED",
        f"this account has used {used:g} of its {limit:g} {QUOTA_UNITS.get(quota, quota)} this month "
        f"(monthly quota {quota}); it resets at {reset}",
        retry_after=max(wait_seconds, 1),
    )


def account_disabled() -> ApiError:
    return ApiError(
        grpc.StatusCode.PERMISSION_DENIED,
        "ACCOUNT_DISABLED",
        "this account is disabled: none of its keys works until an operator enables it again",
    )


def database_down(error: BaseException) -> bool:
    return isinstance(error, ApiError) and error.reason == "DATABASE_UNAVAILABLE"


def retry_pauses(first_seconds: float, longest_seconds: float) -> tenacity.wait.wait_base:
    """The pauses between tries to write the outcomes the database missed: `first_seconds`,
    doubling at each try that fails, at most `longest_seconds`."""
    return tenacity.wait_exponential(multiplier=first_seconds, max=longest_seconds)


class GenerationsTable:
    def __init__(self, pool: Callable[[], asyncpg.Pool]) -> None:
        self.pool = pool
        # Outcomes the database missed (it was down when they came), by generation, until written.
        self._unrecorded: dict[str, Outcome] = {}
        self._some_unrecorded = asyncio.Event()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection (runtime.database.connection) on which the outcomes the database missed are
        written first, so that no statement of this table sees a generation as under way that has ended."""
        async with connection(self.pool()) as db:
            if self._unrecorded:
                try:
                    await self._write_unrecorded(db)
                except asyncpg.PostgresError as error:
                    if isinstance(error, CONNECTION_ERRORS):
                        raise
                    # Not the connection: outcomes the database refuses must not block every statement after them.
                    log.exception("dropped generation outcomes that the database refused", extra={"count": self.unrecorded})
                    self._unrecorded.clear()
                    self._some_unrecorded.clear()
            yield db

    @property
    def unrecorded(self) -> int:
        """How many outcomes wait for the database."""
        return len(self._unrecorded)

    async def end(self, generation_id: str, error_type: str, error_message: str, status: str = "failed") -> bool:
        """End a generation without audio, as :meth:`mark_failed`; with the database down, keep the
        outcome and write it as soon as the database answers again. Whether it was written now."""
        outcome = Outcome(generation_id, status, error_type, error_message, datetime.datetime.now(datetime.UTC))
        try:
            await self.mark_failed(generation_id, error_type, error_message, status)
        except ApiError as error:
            if not database_down(error):
                raise
            self._unrecorded[generation_id] = outcome
            self._some_unrecorded.set()
            return False
        return True

    async def record_unrecorded(self) -> int:
        """Write the outcomes the database missed (DATABASE_UNAVAILABLE while it is still down);
        how many were waiting."""
        if not self._unrecorded:
            return 0
        async with connection(self.pool()) as db:
            return await self._write_unrecorded(db)

    async def _write_unrecorded(self, db: asyncpg.Connection) -> int:
        outcomes = list(self._unrecorded.values())
        await db.execute(
            """UPDATE generations g SET status = o.status, error_type = o.error_type, error_message = o.error_message,
                   end_time = greatest(g.create_time, o.end_time)
               FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])
                   AS o (id, status, error_type, error_message, end_time)
               WHERE g.id = o.id AND g.status IN ('queued', 'running')""",
            [outcome.generation_id for outcome in outcomes],
            [outcome.status for outcome in outcomes],
            [outcome.error_type for outcome in outcomes],
            [outcome.error_message for outcome in outcomes],
            [outcome.end_time for outcome in outcomes],
        )
        for outcome in outcomes:
            if self._unrecorded.get(outcome.generation_id) is outcome:
                del self._unrecorded[outcome.generation_id]
        if not self._unrecorded:
            self._some_unrecorded.clear()
        log.info("recorded the outcomes of generations that ended while the database was down", extra={"count": len(outcomes)})
        return len(outcomes)

    async def keep_recording(self, first_pause_seconds: float, longest_pause_seconds: float) -> None:
        """Forever (a task of the gateway's): whenever outcomes wait for the database, try to write
        them until it takes them, pausing between tries (retry_pauses)."""
        while True:
            await self._some_unrecorded.wait()
            try:
                async for attempt in tenacity.AsyncRetrying(
                    wait=retry_pauses(first_pause_seconds, longest_pause_seconds),
                    retry=tenacity.retry_if_exception(database_down),
                    reraise=True,
                ):
                    with attempt:
                        await self.record_unrecorded()
            except Exception:  # noqa: BLE001 - the task must go on
                log.exception("could not record the outcomes of generations that ended while the database was down")
                await asyncio.sleep(longest_pause_seconds)

    async def admit(self, generation: NewGeneration, limits: AccountLimits) -> str:
        """Store a request as queued if its account is within its limits and quotas, and return its id;
        RATE_LIMITED or QUOTA_EXCEEDED if not, ACCOUNT_DISABLED for a disabled account, UNAUTHORIZED for a
        deleted one, ALREADY_EXISTS if the caller's id is taken. The account's own limits, where an operator
        set them, replace `limits`."""
        generation_id = generation.generation_id or new_id()
        try:
            async with self._connection() as db:
                refusal, wait_seconds, quota, quota_limit, quota_used, reset_time = await db.fetchrow(
                    """SELECT refusal, wait_seconds, quota, quota_limit, quota_used, reset_time
                       FROM admit_generation($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)""",
                    generation_id,
                    generation.account_id,
                    generation.key_id,
                    generation.input,
                    generation.model,
                    json.dumps(generation.speakers),
                    json.dumps(generation.speaker_names),
                    json_format.MessageToJson(generation.parameters),
                    generation.visibility,
                    generation.collection,
                    secrets.token_urlsafe(24),
                    limits.per_second,
                    limits.burst,
                    limits.concurrent,
                )
        except asyncpg.UniqueViolationError as error:
            if error.constraint_name != "generations_id_key":
                raise
            raise ApiError(
                grpc.StatusCode.ALREADY_EXISTS,
                "ALREADY_EXISTS",
                f"there is a generation {generation_id} already: choose another generation_id",
                param="generation_id",
            ) from None
        if refusal == "deleted":
            raise ApiError(grpc.StatusCode.UNAUTHENTICATED, "UNAUTHORIZED", "invalid API key: its account is deleted")
        if refusal == "disabled":
            raise account_disabled()
        if refusal == "quota":
            raise quota_exceeded(quota, quota_limit, quota_used, reset_time, wait_seconds)
        if refusal == "rate":
            raise rate_limited(
                f"this account may start {limits.per_second:g} generations a second (up to {limits.burst} at once "
                f"after a pause); try again in {wait_seconds:.1f} s",
                wait_seconds,
            )
        if refusal == "concurrency":
            when = f" (in about {math.ceil(wait_seconds)} s)" if wait_seconds > 0 else ""
            raise rate_limited(
                f"this account has as many generations under way as it may have at once ({limits.concurrent}); "
                f"try again when one has finished{when}",
                wait_seconds,
            )
        return generation_id

    async def mark_running(
        self, generation_id: str, provider: str, model: str, parameters: generations_pb2.GenerationParameters
    ) -> None:
        """Sent to a provider (again, on a retry: the provider is the latest one tried), with the
        parameters it runs with (max_new_tokens fitted to that provider's model)."""
        async with self._connection() as db:
            await db.execute(
                """UPDATE generations SET status = 'running', provider = $2, model = $3, parameters = $4,
                       start_time = coalesce(start_time, now())
                   WHERE id = $1 AND status IN ('queued', 'running')""",
                generation_id,
                provider,
                model,
                json_format.MessageToJson(parameters),
            )

    async def mark_succeeded(
        self,
        generation_id: str,
        audio_key: str,
        audio_bytes: int,
        duration_seconds: float,
        model: str,
        seed: int,
        chunks: int = 1,
        synthesis_seconds: float = 0.0,
        analysis: generations_pb2.GenerationAnalysis | None = None,
    ) -> asyncpg.Record | None:
        """Succeeded, its audio stored under `audio_key` (with its `analysis` when there is one): the stored row; None if it had ended meanwhile
        (a canceled prediction) or was deleted (then its audio names no row, and is the caller's to delete).
        In the same statement its audio and synthesis seconds are metered, on the day it was admitted
        (usage.py)."""
        async with self._connection() as db:
            return await db.fetchrow(
                f"""WITH done AS (
                        UPDATE generations SET status = 'succeeded', audio_key = $2, audio_bytes = $3,
                            audio_duration_seconds = $4, model = $5,
                            parameters = jsonb_set(parameters, '{{seed}}', to_jsonb($6::text)),
                            end_time = now(), chunks = $7, synthesis_seconds = $8, analysis = $9::jsonb
                        WHERE id = $1 AND status IN ('queued', 'running')
                        RETURNING {COLUMNS}),
                    metered AS (
                        INSERT INTO usage_daily AS u (account_id, day, key_id, audio_seconds, synthesis_seconds)
                        SELECT account_id, (create_time AT TIME ZONE 'UTC')::date, key_id, audio_duration_seconds,
                               synthesis_seconds
                        FROM done
                        ON CONFLICT (account_id, day, key_id) DO UPDATE
                        SET audio_seconds = u.audio_seconds + EXCLUDED.audio_seconds,
                            synthesis_seconds = u.synthesis_seconds + EXCLUDED.synthesis_seconds)
                    SELECT * FROM done""",
                generation_id,
                audio_key,
                audio_bytes,
                duration_seconds,
                model,
                str(seed),  # proto JSON writes int64 as a string
                chunks,
                synthesis_seconds,
                json_format.MessageToJson(analysis) if analysis is not None else None,
            )

    async def mark_failed(
        self, generation_id: str, error_type: str, error_message: str, status: str = "failed"
    ) -> None:
        """End a generation without audio: `failed`, or `canceled` when its caller went away."""
        async with self._connection() as db:
            await db.execute(
                """UPDATE generations SET status = $4, error_type = $2, error_message = $3, end_time = now()
                   WHERE id = $1 AND status IN ('queued', 'running')""",
                generation_id,
                error_type,
                error_message,
                status,
            )

    async def fail_abandoned(self, older_than_seconds: float) -> int:
        """Mark failed the requests left queued or running by a gateway that stopped
        mid-way (crashed, killed, lost its database at the end); returns how many.

        Only requests older than any gateway could still be serving are touched, so
        this is safe to run from every replica. Background jobs have leases of
        their own (jobs.py) and are not touched.
        """
        async with self._connection() as db:
            status = await db.execute(
                """UPDATE generations SET status = 'failed', error_type = 'interrupted',
                       error_message = 'the gateway serving this request stopped before it finished',
                       end_time = now()
                   WHERE status IN ('queued', 'running') AND create_time < now() - make_interval(secs => $1)
                       AND NOT EXISTS (SELECT 1 FROM generation_jobs WHERE generation_id = generations.id)""",
                older_than_seconds,
            )
        return int(status.split()[-1])

    async def get(self, account_id: int, generation_id: str) -> asyncpg.Record:
        """The caller's generation; NOT_FOUND for another account's, as for a made-up id."""
        async with self._connection() as db:
            row = await db.fetchrow(
                f"SELECT {COLUMNS} FROM generations WHERE id = $1 AND account_id = $2", generation_id, account_id
            )
        return _found(row, generation_id)

    async def audio(self, account_id: int, generation_id: str) -> Stored:
        """Where the caller's generation's audio is; NOT_FOUND without audio, AUDIO_EXPIRED once
        the retention sweep deleted it."""
        async with self._connection() as db:
            row = await db.fetchrow(
                "SELECT id, status, audio_key, audio_bytes, audio_expired FROM generations WHERE id = $1 AND account_id = $2",
                generation_id,
                account_id,
            )
            row = _found(row, generation_id)
            if row["status"] != "succeeded":
                raise not_found(f"generation {generation_id} has no audio: it is {row['status']}")
            return await _stored(db, row)

    async def shared_audio(self, share_token: str) -> Stored:
        """The audio behind a share URL; a private generation's token finds nothing, like a made-up one."""
        async with self._connection() as db:
            row = await db.fetchrow(
                """SELECT id, status, audio_key, audio_bytes, audio_expired FROM generations
                   WHERE share_token = $1 AND visibility = ANY($2::text[]) AND status = 'succeeded'""",
                share_token,
                list(SHARED_VISIBILITIES),
            )
            if row is None:
                raise not_found("no shared generation audio at this URL")
            return await _stored(db, row)

    async def signed_audio(self, generation_id: str) -> tuple[int, Stored | None]:
        """Behind a signed URL, whoever asks: the generation's URL epoch and where its audio is, None once
        it expired (no key: the caller checks the signature against the epoch before it says so); one
        without audio is as unknown as a made-up id."""
        async with self._connection() as db:
            row = await db.fetchrow(
                """SELECT id, status, url_epoch, audio_key, audio_bytes, audio_expired FROM generations
                   WHERE id = $1 AND status = 'succeeded'""",
                generation_id,
            )
            if row is None:
                raise not_found("no generation audio at this URL")
            if row["audio_expired"]:
                return row["url_epoch"], None
            return row["url_epoch"], await _stored(db, row)

    async def delete(self, account_id: int, generation_id: str) -> str | None:
        """Delete the caller's generation with its audio (its prediction and job rows go with it, ON DELETE
        CASCADE); NOT_FOUND for none of the caller's, GENERATION_UNDER_WAY for one still queued or running
        (whose pipeline would go on working for nothing). The key of its audio's object, to delete from
        the store now (it waits in object_deletions until then)."""
        async with self._connection() as db:
            # One statement: the row's status is read under the lock the delete takes.
            row = await db.fetchrow(
                f"""WITH target AS (SELECT id, status FROM generations WHERE id = $1 AND account_id = $2 FOR UPDATE),
                        deleted AS (DELETE FROM generations g USING target
                                    WHERE g.id = target.id AND target.status <> ALL($3::text[])
                                    RETURNING g.id, g.audio_key),
                        handed AS ({_HAND_OVER.format(rows="deleted")})
                   SELECT target.status, EXISTS (SELECT 1 FROM deleted) AS deleted,
                          (SELECT audio_key FROM deleted) AS audio_key
                   FROM target""",
                generation_id,
                account_id,
                list(UNDER_WAY),
            )
        row = _found(row, generation_id)
        if not row["deleted"]:
            raise ApiError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "GENERATION_UNDER_WAY",
                f"generation {generation_id} is {row['status']}: delete it once it has ended "
                "(a prediction can be canceled first: POST /v1/predictions/{id}/cancel)",
            )
        return row["audio_key"]

    async def delete_account(self, account_id: int) -> tuple[int, list[str]]:
        """Delete every generation of the account (an account's erasure: one still under way then ends on
        a row that is gone, and its pipeline deletes the audio it made): how many, and their audio's keys
        (handed to object_deletions)."""
        async with self._connection() as db:
            rows = await db.fetch(
                f"""WITH deleted AS (DELETE FROM generations WHERE account_id = $1 RETURNING id, audio_key),
                        handed AS ({_HAND_OVER.format(rows="deleted")})
                   SELECT audio_key FROM deleted""",
                account_id,
            )
        return len(rows), [row["audio_key"] for row in rows if row["audio_key"] is not None]

    async def expire_audio(self, older_than_seconds: float, most: int = 1000) -> list[str]:
        """The retention sweep: generations that ended more than `older_than_seconds` ago lose their audio
        (the record stays, audio_expired); the keys of the objects to delete (handed to object_deletions)."""
        async with self._connection() as db:
            rows = await db.fetch(
                f"""WITH target AS (SELECT id, audio_key FROM generations
                                    WHERE audio_key IS NOT NULL AND end_time < now() - make_interval(secs => $1)
                                    ORDER BY end_time LIMIT $2 FOR UPDATE SKIP LOCKED),
                        expired AS (UPDATE generations g SET audio_expired = true, audio_key = NULL FROM target
                                    WHERE g.id = target.id RETURNING target.audio_key),
                        handed AS ({_HAND_OVER.format(rows="expired")})
                   SELECT audio_key FROM expired""",
                older_than_seconds,
                most,
            )
        return [row["audio_key"] for row in rows]

    async def list_page(
        self, account_id: int, page_size: int, page_token: str, status: str = "", collection: str = ""
    ) -> tuple[list[asyncpg.Record], str]:
        """One page, newest first, of those with this status and in this collection (empty: any),
        and the token of the next ("" after the last)."""
        limit = pagination.page_size(page_size)
        before = _decode_page_token(page_token)
        async with self._connection() as db:
            rows = await db.fetch(
                f"""SELECT {COLUMNS} FROM generations
                    WHERE account_id = $1 AND ($2::bigint IS NULL OR seq < $2)
                      AND ($4 = '' OR status = $4) AND ($5 = '' OR collection = $5)
                    ORDER BY seq DESC LIMIT $3""",
                account_id,
                before,
                limit + 1,  # one more tells whether there is a next page
                status,
                collection,
            )
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, _encode_page_token(rows[-1]["seq"]) if more else ""

    async def update_sharing(
        self, account_id: int, generation_id: str, visibility: str | None, collection: str | None
    ) -> asyncpg.Record:
        """Change the visibility and/or collection (None: unchanged); the share token stays, so
        a generation made unlisted again gets the URL it had. Made private (also when it already
        was), its URL epoch rises: every signed audio URL handed out stops working."""
        async with self._connection() as db:
            row = await db.fetchrow(
                f"""UPDATE generations SET visibility = COALESCE($3, visibility), collection = COALESCE($4, collection),
                        url_epoch = url_epoch + CASE WHEN $3 = 'private' THEN 1 ELSE 0 END
                    WHERE id = $1 AND account_id = $2 RETURNING {COLUMNS}""",
                generation_id,
                account_id,
                visibility,
                collection,
            )
        return _found(row, generation_id)


async def _stored(db: asyncpg.Connection, row: asyncpg.Record) -> Stored:
    """Where a succeeded generation's audio is: its object, or (a row from before the audio moved to
    the store, until tools/move_audio.py has run) the bytes themselves; AUDIO_EXPIRED once deleted
    under the retention setting."""
    if row["audio_expired"]:
        raise audio_expired(row["id"])
    if row["audio_key"] is not None:
        return Stored(row["audio_key"], row["audio_bytes"], WAV)
    try:
        legacy = await db.fetchval("SELECT audio FROM generations WHERE id = $1", row["id"])
    except asyncpg.UndefinedColumnError:  # moved (and the column dropped) since the row was read
        legacy = None
    if legacy is None:  # moved meanwhile: the row names its object now
        moved = await db.fetchrow("SELECT audio_key, audio_bytes FROM generations WHERE id = $1", row["id"])
        if moved is None or moved["audio_key"] is None:
            raise not_found(f"there is no audio of generation {row['id']}")
        return Stored(moved["audio_key"], moved["audio_bytes"], WAV)
    return Stored(None, len(legacy), WAV, bytes(legacy))


def _found(row: asyncpg.Record | None, generation_id: str) -> asyncpg.Record:
    # Another account's generation is as unknown as a made-up id.
    if row is None:
        raise not_found(f"there is no generation {generation_id}")
    return row


# A page token names the last generation of the previous page by its place in insertion order.
_TOKEN = re.compile(r"g1:([0-9]{1,18})")


def _encode_page_token(seq: int) -> str:
    return base64.urlsafe_b64encode(f"g1:{seq}".encode()).decode().rstrip("=")


def _decode_page_token(token: str) -> int | None:
    if not token:
        return None
    try:
        match = _TOKEN.fullmatch(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii"))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        match = None
    if match is None:
        raise invalid_parameter("page_token", "page_token is not valid: pass the next_page_token of the previous page")
    return int(match.group(1))
