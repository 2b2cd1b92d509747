"""History records that a stopped gateway left open are closed as failed, never left running."""

from __future__ import annotations

import uuid

from services.gateway import accounts
from services.gateway.generation import history
from voice.gateway.v1 import generations_pb2


async def test_only_requests_older_than_any_deadline_are_marked_interrupted(database):
    pool = await accounts.open_pool(database.url)
    try:
        owner = await accounts.create_key(pool, f"sweep-{uuid.uuid4().hex[:8]}")
        request = history.NewGeneration(
            account_id=owner.account_id,
            input="[S1] Hello.",
            model="",
            speakers={},
            parameters=generations_pb2.GenerationParameters(),
            visibility="private",
            collection="",
        )
        unlimited = history.AccountLimits(per_second=0, burst=1, concurrent=0)
        abandoned = await history.admit(pool, request, unlimited)
        await history.mark_running(pool, abandoned, "synth-gone", "tiny-random")
        recent = await history.admit(pool, request, unlimited)
        finished = await history.admit(pool, request, unlimited)
        await history.mark_failed(pool, finished, "upstream_error", "bad")
        async with pool.acquire() as connection:
            await connection.execute(
                "UPDATE generations SET create_time = now() - interval '1 hour' WHERE id = ANY($1)",
                [abandoned, finished],
            )

        assert await history.fail_abandoned(pool, older_than_seconds=600) == 1

        rows = {g: await history.get(pool, owner.account_id, g) for g in (abandoned, recent, finished)}
        assert (rows[abandoned]["status"], rows[abandoned]["error_type"]) == ("failed", "interrupted")
        assert rows[abandoned]["end_time"] is not None
        assert rows[recent]["status"] == "queued"  # may still be in progress somewhere
        assert rows[finished]["error_type"] == "upstream_error"  # an ended request keeps its outcome
    finally:
        await pool.close()
