"""History records that a stopped gateway left open are closed as failed, never left running."""

from __future__ import annotations

import uuid

from services.gateway import accounts
from services.gateway.store import Store
from services.gateway.store import generations as history
from voice.gateway.v1 import generations_pb2


async def test_only_requests_older_than_any_deadline_are_marked_interrupted(database):
    store = await Store.open(database.url)
    table = store.generations
    try:
        owner = await accounts.create_key(store.accounts, f"sweep-{uuid.uuid4().hex[:8]}")
        request = history.NewGeneration(
            account_id=owner.account_id,
            input="[S1] Hello.",
            model="",
            speakers={},
            speaker_names={},
            parameters=generations_pb2.GenerationParameters(),
            visibility="private",
            collection="",
        )
        unlimited = history.AccountLimits(per_second=0, burst=1, concurrent=0)
        abandoned = await table.admit(request, unlimited)
        await table.mark_running(abandoned, "synth-gone", "tiny-random", generations_pb2.GenerationParameters())
        recent = await table.admit(request, unlimited)
        finished = await table.admit(request, unlimited)
        await table.mark_failed(finished, "upstream_error", "bad")
        async with store.pool().acquire() as connection:
            await connection.execute(
                "UPDATE generations SET create_time = now() - interval '1 hour' WHERE id = ANY($1)",
                [abandoned, finished],
            )

        assert await table.fail_abandoned(older_than_seconds=600) == 1

        rows = {g: await table.get(owner.account_id, g) for g in (abandoned, recent, finished)}
        assert (rows[abandoned]["status"], rows[abandoned]["error_type"]) == ("failed", "interrupted")
        assert rows[abandoned]["end_time"] is not None
        assert rows[recent]["status"] == "queued"  # may still be in progress somewhere
        assert rows[finished]["error_type"] == "upstream_error"  # an ended request keeps its outcome
    finally:
        await store.close()
