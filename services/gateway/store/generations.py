"""The ``generations`` table: every generation as it arrives, and how it ended.

A generation goes ``queued`` (admitted and stored, its voice prompt being
prepared) → ``running`` (sent to a provider) → ``succeeded`` (with its
audio), ``failed`` (with the public error type and message) or ``canceled``.
Only admitted requests are stored: a request refused at the door leaves no
record.

Admission is one statement, ``admit_generation`` (migrations 004 and 007),
which checks the account's limits and stores the request together, under a
lock on the account's row, so the limits hold across every gateway replica:
a token bucket of GATEWAY_ACCOUNT_GENERATIONS_PER_SECOND (burst
GATEWAY_ACCOUNT_GENERATION_BURST), and at most
GATEWAY_ACCOUNT_CONCURRENT_GENERATIONS generations queued or running.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from dataclasses import dataclass
from typing import Callable

import asyncpg
import grpc
from google.protobuf import json_format

from runtime import pagination
from runtime.database import connection
from runtime.errors import ApiError, invalid_parameter, not_found
from voice.gateway.v1 import generations_pb2

ID_PREFIX = "gen_"
SHARED_VISIBILITIES = ("unlisted", "public")
UNDER_WAY = ("queued", "running")
# Columns of a Generation message: everything but the audio itself.
COLUMNS = """seq, id, account_id, status, input, model, provider, speakers, speaker_names, parameters, error_type,
    error_message, audio_duration_seconds, visibility, collection, share_token, create_time, start_time, end_time,
    chunks, url_epoch"""


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


@dataclass(frozen=True)
class AccountLimits:
    per_second: float  # generations started per second, on average (0: no limit)
    burst: int  # started at once above that rate
    concurrent: int  # generations queued or running at once (0: no limit)


def rate_limited(message: str, retry_after: float) -> ApiError:
    return ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", message, retry_after=retry_after)


class GenerationsTable:
    def __init__(self, pool: Callable[[], asyncpg.Pool]) -> None:
        self.pool = pool

    async def admit(self, generation: NewGeneration, limits: AccountLimits) -> str:
        """Store a request as queued if its account is within its limits, and return its id;
        RATE_LIMITED if not, ALREADY_EXISTS if the caller's id is taken."""
        generation_id = generation.generation_id or new_id()
        try:
            async with connection(self.pool()) as db:
                refusal, wait_seconds = await db.fetchrow(
                    """SELECT refusal, wait_seconds
                       FROM admit_generation($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)""",
                    generation_id,
                    generation.account_id,
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
        if refusal == "rate":
            raise rate_limited(
                f"this account may start {limits.per_second:g} generations a second (up to {limits.burst} at once "
                f"after a pause); try again in {wait_seconds:.1f} s",
                wait_seconds,
            )
        if refusal == "concurrency":
            raise rate_limited(
                f"this account has as many generations under way as it may have at once ({limits.concurrent}); "
                "try again when one has finished",
                wait_seconds,
            )
        return generation_id

    async def mark_running(
        self, generation_id: str, provider: str, model: str, parameters: generations_pb2.GenerationParameters
    ) -> None:
        """Sent to a provider (again, on a retry: the provider is the latest one tried), with the
        parameters it runs with (max_new_tokens fitted to that provider's model)."""
        async with connection(self.pool()) as db:
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
        self, generation_id: str, audio: bytes, duration_seconds: float, model: str, seed: int, chunks: int = 1
    ) -> asyncpg.Record | None:
        """The stored row; None if it had ended meanwhile (a canceled prediction)."""
        async with connection(self.pool()) as db:
            return await db.fetchrow(
                f"""UPDATE generations SET status = 'succeeded', audio = $2, audio_duration_seconds = $3,
                        model = $4, parameters = jsonb_set(parameters, '{{seed}}', to_jsonb($5::text)),
                        end_time = now(), chunks = $6
                    WHERE id = $1 AND status IN ('queued', 'running')
                    RETURNING {COLUMNS}""",
                generation_id,
                audio,
                duration_seconds,
                model,
                str(seed),  # proto JSON writes int64 as a string
                chunks,
            )

    async def mark_failed(
        self, generation_id: str, error_type: str, error_message: str, status: str = "failed"
    ) -> None:
        """End a generation without audio: `failed`, or `canceled` when its caller went away."""
        async with connection(self.pool()) as db:
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
        async with connection(self.pool()) as db:
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
        async with connection(self.pool()) as db:
            row = await db.fetchrow(
                f"SELECT {COLUMNS} FROM generations WHERE id = $1 AND account_id = $2", generation_id, account_id
            )
        return _found(row, generation_id)

    async def audio(self, account_id: int, generation_id: str) -> bytes:
        async with connection(self.pool()) as db:
            row = await db.fetchrow(
                "SELECT status, audio FROM generations WHERE id = $1 AND account_id = $2", generation_id, account_id
            )
        row = _found(row, generation_id)
        if row["audio"] is None:
            raise not_found(f"generation {generation_id} has no audio: it is {row['status']}")
        return row["audio"]

    async def shared_audio(self, share_token: str) -> bytes:
        """The audio behind a share URL; a private generation's token finds nothing, like a made-up one."""
        async with connection(self.pool()) as db:
            audio = await db.fetchval(
                "SELECT audio FROM generations WHERE share_token = $1 AND visibility = ANY($2::text[])",
                share_token,
                list(SHARED_VISIBILITIES),
            )
        if audio is None:
            raise not_found("no shared generation audio at this URL")
        return audio

    async def signed_audio(self, generation_id: str) -> tuple[int, bytes]:
        """Behind a signed URL, whoever asks: the generation's URL epoch and its audio (no key: the
        caller checks the signature against the epoch); one without audio is as unknown as a made-up id."""
        async with connection(self.pool()) as db:
            row = await db.fetchrow(
                "SELECT url_epoch, audio FROM generations WHERE id = $1 AND audio IS NOT NULL", generation_id
            )
        if row is None:
            raise not_found("no generation audio at this URL")
        return row["url_epoch"], row["audio"]

    async def delete(self, account_id: int, generation_id: str) -> None:
        """Delete the caller's generation with its audio (its prediction and job rows go with it, ON DELETE
        CASCADE); NOT_FOUND for none of the caller's, GENERATION_UNDER_WAY for one still queued or running
        (whose pipeline would go on working for nothing)."""
        async with connection(self.pool()) as db:
            # One statement: the row's status is read under the lock the delete takes.
            row = await db.fetchrow(
                """WITH target AS (SELECT id, status FROM generations WHERE id = $1 AND account_id = $2 FOR UPDATE),
                        deleted AS (DELETE FROM generations g USING target
                                    WHERE g.id = target.id AND target.status <> ALL($3::text[]) RETURNING g.id)
                   SELECT target.status, EXISTS (SELECT 1 FROM deleted) AS deleted FROM target""",
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

    async def list_page(
        self, account_id: int, page_size: int, page_token: str, status: str = "", collection: str = ""
    ) -> tuple[list[asyncpg.Record], str]:
        """One page, newest first, of those with this status and in this collection (empty: any),
        and the token of the next ("" after the last)."""
        limit = pagination.page_size(page_size)
        before = _decode_page_token(page_token)
        async with connection(self.pool()) as db:
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
        async with connection(self.pool()) as db:
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
