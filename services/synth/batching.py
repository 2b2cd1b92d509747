"""Static batching, as synth served before scheduler.py: the benchmarks' baseline; Turns serves both.

Requests wait in a bounded queue on the event loop. A scheduler task takes
batches from it and runs each in the generation thread, one at a time:

* accounts take turns (each request says whose it is): the account served
  least recently leads the next batch with its oldest request, and the
  requests that share its settings (`GenerationParams.batch_key`) and
  prompt-or-not fill the batch one account at a time, in the same order, up
  to the batch size. So one account's backlog delays another account's first
  request by at most the batch running when it arrives, and within an
  account requests go in order (no request starves);
* a request with a seed of its own is generated alone, so that its audio is
  byte-identical whatever else is being served (batch shapes change float
  rounding in the model). Unseeded requests batch, each row sampling with a
  generator seeded by the seed its response reports; repeating that seed
  gives the same audio up to that rounding;
* an idle scheduler waits `window` seconds before taking a batch, so that
  requests arriving together are generated together; while a batch runs,
  new requests gather by themselves;
* once `max_batch_size + max_queue` requests are running or waiting, a new
  one is refused at once (RESOURCE_EXHAUSTED, SYNTH_BUSY) instead of piling
  up in memory, with a RetryInfo: the requests running or waiting over the
  rate they have been finishing at lately (runtime.admission);
* a caller that goes away leaves the queue at once, and a running batch
  whose callers are all gone stops early;
* one request never fails its batch-mates: the engine answers an error for
  a row it could not generate and audio for the others, and a batch that
  fails as a whole is generated again one request at a time.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import threading
from dataclasses import dataclass, field
from typing import Callable

import grpc
import prometheus_client

from runtime.admission import Throughput, retry_after
from runtime.errors import ApiError
from runtime.server import stop_task
from services.synth.engine import Generated, GenerationStopped, SynthesisInput

log = logging.getLogger("synth.batching")

GENERATE_CALLS = prometheus_client.Counter(
    "synth_generate_calls", "Calls of Dia's generate (one per batch)."
)
BATCH_SIZE = prometheus_client.Histogram(
    "synth_batch_size", "Requests generated together: the rows of each decode step (the static batcher: of each generate call).", buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32)
)
QUEUE_DEPTH = prometheus_client.Gauge("synth_queue_depth", "Requests waiting for the generator.")
REJECTED = prometheus_client.Counter("synth_rejected", "Requests refused because the queue was full.")
ROWS_ACTIVE = prometheus_client.Gauge("synth_rows_active", "Requests being generated now (rows of the running batch).")
CAPACITY = prometheus_client.Gauge(
    "synth_capacity", "Requests this provider takes at once before SYNTH_BUSY: a full batch plus the queue."
)
STOPPED = prometheus_client.Counter(
    "synth_generations_stopped", "Generations cut short because their callers had gone (cancelled, timed out)."
)

# generate(batch, should_stop) -> one result per request, in order: its audio, or the error it alone failed with
GenerateFunction = Callable[[list[SynthesisInput], Callable[[], bool]], list[Generated | BaseException]]


@dataclass(eq=False)
class Job:
    request: SynthesisInput
    future: asyncio.Future
    # Whose request it is (opaque; "" for callers that name no account): accounts take turns.
    account: str = ""
    # Set on the event loop when the caller is gone; read by the generation thread.
    abandoned: threading.Event = field(default_factory=threading.Event)

    def batch_key(self) -> tuple:
        return (self.request.prompt is not None, *self.request.params.batch_key())


class Turns:
    """Which account goes first: the one served least recently, then the one waiting longest."""

    def __init__(self) -> None:
        self._batches = 0
        # account → number of the last batch it had a request in (only accounts still waiting are kept)
        self._last_served: dict[str, int] = {}

    def order(self, pending: collections.deque[Job]) -> list[str]:
        """The accounts with waiting jobs, in the order they take their turns."""
        first_place: dict[str, int] = {}
        for place, job in enumerate(pending):
            first_place.setdefault(job.account, place)
        return sorted(first_place, key=lambda account: (self._last_served.get(account, -1), first_place[account]))

    def served(self, batch: list[Job], pending: collections.deque[Job]) -> None:
        self._batches += 1
        for job in batch:
            self._last_served[job.account] = self._batches
        # An account with nothing left waiting starts afresh: its next request is a first one again.
        waiting = {job.account for job in pending}
        self._last_served = {account: n for account, n in self._last_served.items() if account in waiting}


def take_batch(pending: collections.deque[Job], max_size: int, turns: Turns | None = None) -> list[Job]:
    """Remove and return the next batch: the oldest job of the account whose turn it is, and the
    jobs it may share a call with, taken one account at a time in turn order."""
    if not pending:
        return []
    turns = turns or Turns()
    order = turns.order(pending)
    leader = next(job for job in pending if job.account == order[0])
    if leader.request.params.seeded:
        batch = [leader]
    else:
        key = leader.batch_key()
        joining = {account: collections.deque() for account in order}
        for job in pending:  # each account's in order: the leader heads its own
            if not job.request.params.seeded and job.batch_key() == key:
                joining[job.account].append(job)
        batch = []
        while len(batch) < max_size and any(joining.values()):
            for account in order:  # one from each account per round, in turn order
                if joining[account] and len(batch) < max_size:
                    batch.append(joining[account].popleft())
    for job in batch:
        pending.remove(job)
    turns.served(batch, pending)
    return batch


def busy(load: int, retry_after_seconds: float) -> ApiError:
    return ApiError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "SYNTH_BUSY",
        f"the synthesizer is busy ({load} requests running or waiting); try again shortly",
        retry_after=retry_after_seconds,
    )


class Batcher:
    def __init__(self, max_batch_size: int, window_seconds: float, max_queue: int) -> None:
        self.max_batch_size = max_batch_size
        self.window_seconds = window_seconds
        self.max_queue = max_queue
        self._pending: collections.deque[Job] = collections.deque()
        self._turns = Turns()
        self.throughput = Throughput()  # requests finished (generated or failed) per second, lately
        self._running = 0
        self._work = asyncio.Event()
        self._closing = threading.Event()
        # One thread owns the model: it loads it and runs every generation.
        self.thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="dia")
        self._scheduler: asyncio.Task | None = None
        CAPACITY.set(max_batch_size + max_queue)

    @property
    def load(self) -> int:
        """Requests running or waiting."""
        return self._running + len(self._pending)

    def start(self, generate: GenerateFunction) -> None:
        self._scheduler = asyncio.create_task(self._schedule(generate))

    async def submit(self, request: SynthesisInput, account: str = "") -> Generated:
        """Queue `account`'s request and wait for its audio; SYNTH_BUSY at once when the queue is full."""
        # Room for a full batch running plus the queue; counting the load rather
        # than the waiting list alone keeps requests that gather during the
        # collection window (not yet running) from using up the queue.
        if self.load >= self.max_batch_size + self.max_queue:
            REJECTED.inc()
            raise busy(self.load, retry_after(self.load, self.throughput))
        job = Job(request, asyncio.get_running_loop().create_future(), account)
        self._pending.append(job)
        QUEUE_DEPTH.set(len(self._pending))
        self._work.set()
        try:
            return await job.future
        except asyncio.CancelledError:  # the caller went away (cancelled, deadline)
            job.abandoned.set()
            if job in self._pending:
                self._pending.remove(job)
                QUEUE_DEPTH.set(len(self._pending))
            raise

    async def _schedule(self, generate: GenerateFunction) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._work.clear()
                await self._work.wait()
                await asyncio.sleep(self.window_seconds)  # let requests that arrive together batch
            batch = take_batch(self._pending, self.max_batch_size, self._turns)
            QUEUE_DEPTH.set(len(self._pending))
            if not batch:
                continue  # every waiting caller left during the window

            def should_stop(batch=batch) -> bool:
                return self._closing.is_set() or all(job.abandoned.is_set() for job in batch)

            self._running = len(batch)
            ROWS_ACTIVE.set(self._running)
            began = self.throughput.clock()
            GENERATE_CALLS.inc()
            BATCH_SIZE.observe(len(batch))
            try:
                results = await self._generate(loop, generate, batch, should_stop)
                for job, result in zip(batch, results):
                    if not job.future.done():
                        if isinstance(result, BaseException):
                            job.future.set_exception(result)
                        else:
                            job.future.set_result(result)
            finally:
                self._running = 0
                ROWS_ACTIVE.set(0)
                self.throughput.record(len(batch), began)

    async def _generate(self, loop, generate: GenerateFunction, batch: list[Job], should_stop) -> list:
        """One result (or error) per job. When a batch fails as a whole, its requests are
        generated again one at a time, so that the request at fault fails alone."""
        requests = [job.request for job in batch]
        try:
            return await loop.run_in_executor(self.thread, generate, requests, should_stop)
        except Exception as error:  # noqa: BLE001 - handed to the callers, who log it
            if len(batch) == 1 or isinstance(error, GenerationStopped) or should_stop():
                if should_stop():
                    STOPPED.inc()
                return [error] * len(batch)
            log.warning("a batch failed; generating its requests one at a time", extra={"error": repr(error)})
        results = []
        for job in batch:

            def alone_should_stop(job=job) -> bool:
                return self._closing.is_set() or job.abandoned.is_set()

            try:
                (result,) = await loop.run_in_executor(self.thread, generate, [job.request], alone_should_stop)
            except Exception as error:  # noqa: BLE001
                result = error
            results.append(result)
        return results

    async def close(self) -> None:
        """Stop the scheduler, end a running generation early, and let the thread finish."""
        self._closing.set()
        await stop_task(self._scheduler)
        await asyncio.to_thread(self.thread.shutdown, wait=True, cancel_futures=True)
