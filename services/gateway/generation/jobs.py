"""Generations run in the background, durable and shared by every gateway replica.

A job is an admitted generation (pipeline.py) that the gateway admitting it
generates in the background, whatever its caller does (the hosted
predictor's predictions are jobs). Its row (store/jobs.py) names the process
running it and when that process last said so, renewed every
LEASE_RENEW_SECONDS. A job whose runner has been silent for LEASE_SECONDS
(its gateway was killed or restarted) is taken over by any gateway and
generated again from its stored generation, at most MAX_RESUMES times; then
it ends ``failed`` with ``interrupted``. A gateway stopping gracefully hands
its jobs over at once. Cancelling marks the generation ``canceled``; its
runner sees that at its next renewal (whichever replica was asked) and stops
the generation, which stops the provider.

A job runs in the trace of the request that created it (runtime/tracing.py: a
span ``gateway.job``); one taken over resumes that trace from its row's traceparent.

Leases are written here rather than taken from a job-queue library: a job's
state is its generation's row (status, cancellation), so the lease is one
small table beside it and three statements (renew, take over, hand over).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Awaitable, Callable

import grpc
from google.protobuf import json_format

from runtime import tracing
from runtime.errors import ApiError
from services.gateway.config import SYNTH_TIMEOUT_SECONDS
from services.gateway.generation import request
from services.gateway.generation.pipeline import Admitted, Pipeline
from services.gateway.store.generations import GenerationsTable
from services.gateway.store.jobs import JobsTable
from voice.gateway.v1 import generations_pb2

log = logging.getLogger("gateway.jobs")

# A runner renews its leases this often, and sees cancellations then.
LEASE_RENEW_SECONDS = 1.0
# A job whose runner has been silent this long is taken over.
LEASE_SECONDS = 10.0
# Times a job is generated again after its gateway stopped, before it fails.
MAX_RESUMES = 2

# Told when a job starts ("start") and when it has ended however it ended ("completed"):
# (generation id, account id, event).
OnEvent = Callable[[str, int, str], Awaitable[None]]


async def _no_events(generation_id: str, account_id: int, event: str) -> None:
    pass


class Jobs:
    def __init__(
        self, pipeline: Pipeline, table: JobsTable, generations: GenerationsTable, on_event: OnEvent = _no_events
    ) -> None:
        self.pipeline = pipeline
        self.table = table
        self.generations = generations
        self.on_event = on_event
        self.runner = uuid.uuid4().hex[:12]  # this gateway process
        self._running: dict[str, asyncio.Task] = {}
        self._handing_over = False
        self._lease_task: asyncio.Task | None = None

    # --- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        self._lease_task = asyncio.create_task(self._keep_leases())

    async def close(self) -> None:
        """Hand the jobs under way over to another gateway (or to this one, restarted)."""
        if self._lease_task is not None:
            self._lease_task.cancel()
        self._handing_over = True
        ids = list(self._running)
        for task in list(self._running.values()):
            task.cancel()
        if ids:
            try:
                await self.table.hand_over(ids, self.runner)
                log.info("handed jobs over", extra={"count": len(ids)})
            except ApiError:
                pass  # their leases run out instead

    # --- jobs -------------------------------------------------------------------

    async def submit(self, admitted: Admitted) -> asyncio.Task:
        """Generate an admitted generation in the background, from now on under this process's lease."""
        # The job's task goes on in the request's trace; a gateway taking it over, from the row's traceparent.
        await self.table.start(admitted.generation_id, self.runner, tracing.traceparent())
        return self._spawn(admitted)

    async def wait(self, task: asyncio.Task, seconds: float) -> None:
        """Wait up to `seconds` for a job to end, however it ends; a caller hanging up leaves it running."""
        try:
            await asyncio.wait_for(asyncio.shield(task), seconds)
        except BaseException:  # noqa: BLE001 - over (however it ended) or still going
            if asyncio.current_task().cancelling():  # the caller hung up; the job goes on
                raise

    async def cancel(self, generation_id: str) -> None:
        """Stop a job that has not ended: its generation is canceled, here at once, elsewhere at the
        runner's next renewal."""
        await self.generations.mark_failed(generation_id, "canceled", "canceled by the caller", status="canceled")
        task = self._running.get(generation_id)
        if task is not None:
            task.cancel()

    def _spawn(self, admitted: Admitted) -> asyncio.Task:
        task = asyncio.create_task(self._run(admitted))
        self._running[admitted.generation_id] = task
        task.add_done_callback(lambda _: self._running.pop(admitted.generation_id, None))
        return task

    async def _run(self, admitted: Admitted) -> None:
        generation_id = admitted.generation_id
        await self._tell(generation_id, admitted.account_id, "start")
        with tracing.span("gateway.job", {"generation.id": generation_id}) as span:
            try:
                await self.pipeline.run(admitted, SYNTH_TIMEOUT_SECONDS.value, record_cancellation=False)
            except asyncio.CancelledError:
                if self._handing_over:
                    tracing.failed(span, "handed_over")
                    raise  # stays under way: another gateway resumes it
                tracing.failed(span, "canceled")  # by the caller: the row says so already
            except Exception as error:  # noqa: BLE001 - recorded in the row by the pipeline
                tracing.failed(span, error)
        try:
            await self.table.finish(generation_id, self.runner)
        except ApiError:
            pass  # the lease runs out; the row says how it ended
        await self._tell(generation_id, admitted.account_id, "completed")

    async def _tell(self, generation_id: str, account_id: int, event: str) -> None:
        try:
            await self.on_event(generation_id, account_id, event)
        except Exception:  # noqa: BLE001 - a listener's failure is not the job's
            log.exception("job event listener failed", extra={"generation": generation_id, "event": event})

    # --- leases -------------------------------------------------------------------

    async def _keep_leases(self) -> None:
        while True:
            try:
                await self._renew_and_take_over()
            except ApiError:  # database down: the next round
                pass
            except Exception:  # noqa: BLE001 - the loop must go on
                log.exception("job lease round failed")
            await asyncio.sleep(LEASE_RENEW_SECONDS)

    async def _renew_and_take_over(self) -> None:
        # First the outcomes the database missed: a job that ended while it was down is over, not silent.
        await self.generations.record_unrecorded()
        if self._running:
            for generation_id in await self.table.renew(list(self._running), self.runner):
                if generation_id in self._running:
                    self._running[generation_id].cancel()  # canceled, maybe through another replica
        for row in await self.table.take_over(self.runner, LEASE_SECONDS):
            await self._resume(row)

    async def _resume(self, row) -> None:
        with tracing.resumed(row["traceparent"]):  # in the trace of the request that created it
            await self._resume_job(row)

    async def _resume_job(self, row) -> None:
        generation_id, account_id = row["id"], row["account_id"]
        if row["resumes"] > MAX_RESUMES:
            await self.generations.mark_failed(
                generation_id, "interrupted",
                f"the gateway running this generation stopped {MAX_RESUMES + 1} times; create it again",
            )  # fmt: skip
            await self.table.finish(generation_id, self.runner)
            await self._tell(generation_id, account_id, "completed")
            return
        log.warning("resuming a job whose gateway stopped", extra={"generation": generation_id})
        parameters = json_format.Parse(row["parameters"], generations_pb2.GenerationParameters())
        spec = request.spec_of(
            row["input"], row["model"], json.loads(row["speakers"]), parameters, row["visibility"], row["collection"]
        )
        try:
            admitted = await self.pipeline.readmit(generation_id, account_id, spec)
        except (ApiError, grpc.aio.AioRpcError) as error:
            refusal = error if isinstance(error, ApiError) else ApiError.from_rpc_error(error)
            await self.generations.mark_failed(generation_id, refusal.reason.lower(), refusal.message)
            await self.table.finish(generation_id, self.runner)
            await self._tell(generation_id, account_id, "completed")
            return
        self._spawn(admitted)
