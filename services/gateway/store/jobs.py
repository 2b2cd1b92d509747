"""``generation_jobs``: generations run in the background by a gateway process, under a lease.

A job row names the gateway process running it (``runner``) and when that
process last said so (``runner_seen``). A job whose runner has been silent
too long is taken over by another process, which counts a resume. Cancelling
is the generation's own status (``canceled``): the runner sees it when it
renews its lease. The row stays when the job is over, with no runner, so that
its resumes can still be told. It keeps the W3C traceparent of the request that
created the job (runtime/tracing.py; '' with tracing off), so that a process
taking the job over goes on in that request's trace.
"""

from __future__ import annotations

from typing import Callable

import asyncpg

from runtime.database import connection

# Columns a resumed job needs: its generation as stored, how often it was resumed, and its trace.
RESUME_COLUMNS = """g.id, g.account_id, g.input, g.model, g.speakers, g.speaker_names, g.parameters,
    g.visibility, g.collection, j.resumes, j.traceparent"""


class JobsTable:
    def __init__(self, pool: Callable[[], asyncpg.Pool]) -> None:
        self.pool = pool

    async def start(self, generation_id: str, runner: str, traceparent: str = "") -> None:
        """A job for an admitted generation, held by `runner` from now, in the trace `traceparent` names."""
        async with connection(self.pool()) as db:
            await db.execute(
                """INSERT INTO generation_jobs (generation_id, runner, runner_seen, traceparent)
                   VALUES ($1, $2, now(), $3)""",
                generation_id,
                runner,
                traceparent,
            )

    async def renew(self, generation_ids: list[str], runner: str) -> list[str]:
        """Renew `runner`'s leases on these jobs; returns those whose generation was canceled meanwhile,
        or deleted (canceled, then deleted through another replica before this one heard of it)."""
        async with connection(self.pool()) as db:
            rows = await db.fetch(
                """WITH renewed AS (
                        UPDATE generation_jobs j SET runner_seen = now() FROM generations g
                        WHERE j.generation_id = ANY($1) AND j.runner = $2 AND g.id = j.generation_id
                        RETURNING g.id, g.status)
                   SELECT id FROM renewed WHERE status = 'canceled'
                   UNION ALL
                   SELECT wanted FROM unnest($1::text[]) AS wanted
                   WHERE NOT EXISTS (SELECT 1 FROM generations WHERE id = wanted)""",
                generation_ids,
                runner,
            )
        return [row[0] for row in rows]

    async def take_over(self, runner: str, silent_seconds: float, most: int = 10) -> list[asyncpg.Record]:
        """Jobs under way whose runner has been silent for `silent_seconds`, now `runner`'s (a resume
        counted), with what generating them again needs (RESUME_COLUMNS)."""
        async with connection(self.pool()) as db:
            return await db.fetch(
                f"""WITH taken AS (
                        UPDATE generation_jobs SET runner = $1, runner_seen = now(), resumes = resumes + 1
                        WHERE generation_id IN (
                            SELECT j.generation_id FROM generation_jobs j JOIN generations g ON g.id = j.generation_id
                            WHERE g.status IN ('queued', 'running')
                              AND j.runner_seen < now() - make_interval(secs => $2)
                            FOR UPDATE OF j SKIP LOCKED LIMIT $3)
                        RETURNING generation_id, resumes, traceparent)
                    SELECT {RESUME_COLUMNS} FROM taken j JOIN generations g ON g.id = j.generation_id""",
                runner,
                silent_seconds,
                most,
            )

    async def hand_over(self, generation_ids: list[str], runner: str) -> None:
        """Let another process take these jobs at once (a gateway stopping gracefully)."""
        async with connection(self.pool()) as db:
            await db.execute(
                "UPDATE generation_jobs SET runner_seen = '-infinity' WHERE generation_id = ANY($1) AND runner = $2",
                generation_ids,
                runner,
            )

    async def finish(self, generation_id: str, runner: str) -> None:
        """The job is over (its generation ended, however): nobody runs it any more."""
        async with connection(self.pool()) as db:
            await db.execute(
                "UPDATE generation_jobs SET runner = '' WHERE generation_id = $1 AND runner = $2", generation_id, runner
            )
