"""The scheduler: who runs, who waits and where each runs — policy only (no torch, no threads).

The engine's core asks it before every step (:meth:`Scheduler.schedule`) and
tells it after (:meth:`Scheduler.update_from_output`); the runner never
sees it. Between steps it decides who joins and who leaves:

* a request joins at the next step when there is room: fewer than
  `max_rows` rows in all, and the frames every row may hold (its prompt plus
  its max_new_tokens: the key/value budget, `max_frames`) within the limit
  (a request alone always fits). It leaves the step its last codebook ends,
  and its place is taken at the next step;
* requests of any settings, with or without a voice prompt, share the batch:
  each row samples with settings of its own (sampler.py);
* accounts take turns for free places (:class:`Turns`): the account served
  least recently goes first with its oldest request, then the next account,
  one request each per round; within an account requests go in order, and
  none overtakes the next turn's request when it does not fit;
* a request with a seed of its own runs in a lane of its own (a batch of
  one, stepped beside the shared one): a row's logits differ in the last
  bits with the rows beside it (measured on the tiny model in float32 on the
  CPU: up to 4e-6), which can change a sampled token, so only alone is its
  audio byte-identical run after run. Unseeded rows share the batch, each
  sampling from a generator seeded by the seed its response reports;
* once `max_rows + max_queue` requests are running, waiting or being
  decoded, a new one is refused at once (RESOURCE_EXHAUSTED, SYNTH_BUSY)
  with a RetryInfo: that load over the rate requests have been finishing at;
* a caller that goes away (deadline, cancelled RPC, closed connection)
  leaves the queue at once, or its lane before the next step;
* a step that raised (out of memory, a device error, a bug one row
  triggers) fails no request by itself: its lane was dropped, and its
  requests go back to the front of the queue, each to run once more in a
  lane of its own (`step_retries` times, SYNTH_STEP_RETRIES: 1). A request
  that fails again alone gets GENERATION_FAILED; the others finish as if
  nothing had happened (with temperature 0, the same audio).
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field

import grpc
import prometheus_client

from runtime.admission import Throughput, retry_after
from runtime.errors import ApiError
from services.synth.engine.request import SHARED_LANE, SynthesisInput, generation_failed

BATCH_SIZE = prometheus_client.Histogram(
    "synth_batch_size", "Requests generated together: the rows of each decode step.", buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32)
)
QUEUE_DEPTH = prometheus_client.Gauge("synth_queue_depth", "Requests waiting for the generator.")
REJECTED = prometheus_client.Counter("synth_rejected", "Requests refused because the queue was full.")
ROWS_ACTIVE = prometheus_client.Gauge("synth_rows_active", "Requests being generated now (rows of every lane).")
CAPACITY = prometheus_client.Gauge(
    "synth_capacity", "Requests this provider takes at once before SYNTH_BUSY: a full batch plus the queue."
)
STOPPED = prometheus_client.Counter(
    "synth_generations_stopped", "Generations cut short because their callers had gone (cancelled, timed out)."
)
FRAMES_HELD = prometheus_client.Gauge(
    "synth_frames_reserved", "Frames the running rows may hold in the key/value cache (prompt + max_new_tokens)."
)
ROWS_RETRIED = prometheus_client.Counter(
    "synth_rows_retried", "Requests put back in front of the queue, to run alone once more, after a step they were in failed."
)

# What the core reports for a request whose lane's step raised: the scheduler retries it or fails it.
STEP_FAILED = object()


def busy(load: int, retry_after_seconds: float) -> ApiError:
    return ApiError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "SYNTH_BUSY",
        f"the synthesizer is busy ({load} requests running or waiting); try again shortly",
        retry_after=retry_after_seconds,
    )


def failed_alone() -> ApiError:
    return generation_failed("the model failed while generating this request, also when it was retried alone")


@dataclass(eq=False)
class Job:
    """A request as the scheduler keeps it, from its arrival to its result."""

    request: SynthesisInput
    account: str = ""  # whose request it is (opaque; "" for callers that name no account): accounts take turns
    prompt_frames: int = 0  # its voice prompt's frames of codes
    arrived: float = field(default_factory=time.monotonic)
    canceled: bool = False
    lane: int | None = None  # the lane it runs in (SHARED_LANE, or one of its own); None while waiting
    joined_at: float = 0.0  # when it first joined (a retry keeps it: the caller has waited since)
    started: bool = False  # it had its first frame (time to first frame is observed once)
    failures: int = 0  # steps it was in that failed; after one it runs alone, where a failure is its own

    @property
    def reserved_frames(self) -> int:
        """What it may hold in the key/value cache: bos, its prompt's frames and max_new_tokens."""
        return 1 + self.prompt_frames + self.request.params.max_new_tokens


@dataclass
class SchedulerOutput:
    """What the next step does: who joins (each with its lane) and who leaves (cancelled)."""

    joining: list[Job]
    leaving: list[Job]


class Turns:
    """Which account goes first: the one served least recently, then the one waiting longest."""

    def __init__(self) -> None:
        self._rounds = 0
        # account → number of the last round it had a request join in (only accounts still waiting are kept)
        self._last_served: dict[str, int] = {}

    def order(self, waiting: collections.deque[Job]) -> list[str]:
        """The accounts with waiting jobs, in the order they take their turns."""
        first_place: dict[str, int] = {}
        for place, job in enumerate(waiting):
            first_place.setdefault(job.account, place)
        return sorted(first_place, key=lambda account: (self._last_served.get(account, -1), first_place[account]))

    def served(self, joined: list[Job], waiting: collections.deque[Job]) -> None:
        self._rounds += 1
        for job in joined:
            self._last_served[job.account] = self._rounds
        # An account with nothing left waiting starts afresh: its next request is a first one again.
        still = {job.account for job in waiting}
        self._last_served = {account: n for account, n in self._last_served.items() if account in still}


class Scheduler:
    def __init__(
        self, max_rows: int, window_seconds: float, max_queue: int, max_frames: int, step_retries: int = 1
    ) -> None:
        self.max_rows = max_rows
        self.window_seconds = window_seconds  # an idle engine waits this long, so that requests arriving together start together
        self.max_queue = max_queue
        self.max_frames = max_frames
        self.step_retries = step_retries  # times a request of a failed step runs again, alone
        self.waiting: collections.deque[Job] = collections.deque()
        self.running: list[Job] = []
        self.finishing: set[Job] = set()  # out of their lanes, their audio being decoded
        self.throughput = Throughput()  # requests finished (generated or failed) per second, lately
        self._turns = Turns()
        self._lanes_given = 0  # lanes of their own handed out so far (their ids follow SHARED_LANE)
        CAPACITY.set(max_rows + max_queue)

    @property
    def load(self) -> int:
        """Requests running, waiting, or being decoded."""
        return len(self.running) + len(self.waiting) + len(self.finishing)

    def add(self, job: Job) -> None:
        """Queue a request; SYNTH_BUSY at once when the queue is full."""
        if self.load >= self.max_rows + self.max_queue:
            REJECTED.inc()
            raise busy(self.load, retry_after(self.load, self.throughput))
        self.waiting.append(job)
        QUEUE_DEPTH.set(len(self.waiting))

    def cancel(self, job: Job) -> None:
        """Its caller went away: out of the queue at once, out of its lane at the next step."""
        job.canceled = True
        if job in self.waiting:
            self.waiting.remove(job)
            QUEUE_DEPTH.set(len(self.waiting))

    def schedule(self) -> SchedulerOutput:
        """Who leaves and who joins at the next step."""
        leaving = [job for job in self.running if job.canceled]
        for job in leaving:
            self.running.remove(job)
            STOPPED.inc()
        joining = self._take_joining()
        now = time.monotonic()
        for job in joining:
            job.lane = self._lane_for(job)
            job.joined_at = job.joined_at or now
        ROWS_ACTIVE.set(len(self.running))
        if self.running or leaving:
            BATCH_SIZE.observe(len(self.running))  # joining ones included
        return SchedulerOutput(joining, leaving)

    def update_from_output(self, outcomes: list[tuple[Job, object]]) -> list[tuple[Job, object]]:
        """After a step: the requests that ended or failed there leave the running ones. One of a step
        that raised (STEP_FAILED) goes back in front of the queue to run alone, or fails for good;
        returns the others with their outcome (a row to decode, a result, an error)."""
        ended, retried = [], []
        for job, outcome in outcomes:
            if job in self.running:
                self.running.remove(job)
            if outcome is STEP_FAILED:
                outcome = self._after_failed_step(job)
                if outcome is None:
                    retried.append(job)
                    continue
            ended.append((job, outcome))
        if retried:  # in front of the queue, in the order they were: they had been admitted first
            self.waiting.extendleft(reversed(retried))
            QUEUE_DEPTH.set(len(self.waiting))
        ROWS_ACTIVE.set(len(self.running))
        FRAMES_HELD.set(sum(job.reserved_frames for job in self.running))
        return ended

    def done(self, job: Job) -> None:
        """Its result (or error) is known: it finishes, which the rate of finishing counts."""
        self.finishing.discard(job)
        self.throughput.record(1, job.joined_at or self.throughput.clock())

    def _lane_for(self, job: Job) -> int:
        if not (job.request.params.seeded or job.failures):
            return SHARED_LANE
        self._lanes_given += 1
        return SHARED_LANE + self._lanes_given

    def _after_failed_step(self, job: Job) -> ApiError | None:
        """A request of a step that failed: None when it goes back in the queue to run again alone
        (step_retries times at most), else the error it ends with."""
        if job.canceled:  # nobody waits for it
            STOPPED.inc()
            return failed_alone()
        job.failures += 1
        if job.failures > self.step_retries:
            return failed_alone() if job.failures > 1 else generation_failed("the model failed while generating this request")
        ROWS_RETRIED.inc()
        job.lane = None
        return None

    def _take_joining(self) -> list[Job]:
        """The waiting requests that join at the next step: in account turns, while there is room."""
        free = self.max_rows - len(self.running)
        if free <= 0 or not self.waiting:
            return []
        reserved = sum(job.reserved_frames for job in self.running)
        joining: list[Job] = []
        full = False
        for job in [j for j in self.waiting if j.failures]:  # back from a failed step: first
            alone = not self.running and not joining
            if len(joining) >= free or (not alone and reserved + job.reserved_frames > self.max_frames):
                full = True
                break
            joining.append(job)
            reserved += job.reserved_frames
        order = self._turns.order(self.waiting)
        queues = {
            account: collections.deque(j for j in self.waiting if j.account == account and j not in joining)
            for account in order
        }
        while not full and len(joining) < free and any(queues.values()):
            for account in order:  # one from each account per round, in turn order
                if not queues[account] or len(joining) >= free:
                    continue
                job = queues[account][0]
                alone = not self.running and not joining
                if not alone and reserved + job.reserved_frames > self.max_frames:
                    full = True  # no overtaking: the next turn's request waits for room
                    break
                queues[account].popleft()
                joining.append(job)
                reserved += job.reserved_frames
        for job in joining:
            self.waiting.remove(job)
            self.running.append(job)
        if joining:
            self._turns.served(joining, self.waiting)
        QUEUE_DEPTH.set(len(self.waiting))
        return joining
