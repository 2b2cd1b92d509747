"""Iteration-level (continuous) batching in front of the one thread that owns the model.

Requests wait in a bounded queue on the event loop. A scheduler task runs
the decode loop one step at a time in the generation thread; between steps
it decides who joins and who leaves:

* a request joins at the next step when there is room: fewer than
  `max_rows` rows in all, and the frames every row may hold (its prompt plus
  its max_new_tokens: the key/value budget, `max_frames`) within the limit
  (a request alone always fits). It leaves the step its last codebook ends,
  and its slot is taken at the next step;
* requests of any settings, with or without a voice prompt, share the batch:
  each row has its own cfg_scale, temperature, top_p, cfg_filter_top_k and
  max_new_tokens (decoder.py);
* accounts take turns for free slots (batching.Turns): the account served
  least recently goes first with its oldest request, then the next account,
  one request each per round; within an account requests go in order;
* a request with a seed of its own is generated in a lane of its own (a
  batch of one, stepped beside the shared one): a row's logits differ in the
  last bits with the rows beside it (measured on the tiny model in float32
  on the CPU: up to 4e-6), which can change a sampled token, so only alone
  is its audio byte-identical run after run. Unseeded rows share the batch,
  each sampling from a generator seeded by the seed its response reports;
* once `max_rows + max_queue` requests are running or waiting, a new one is
  refused at once (RESOURCE_EXHAUSTED, SYNTH_BUSY) with a RetryInfo: the
  requests running or waiting over the rate they have been finishing at;
* a caller that goes away (deadline, cancelled RPC, closed connection)
  leaves the queue at once, or the batch before the next step;
* a step that raises (out of memory, a CUDA error, a bug one row triggers)
  fails no request by itself: the batch (or lane) it happened in is dropped,
  and its requests go back to the front of the queue, each to run once more
  in a lane of its own (`step_retries` times, SYNTH_STEP_RETRIES: 1). A
  request that fails again alone gets GENERATION_FAILED; the others finish
  as if nothing had happened (with temperature 0, the same audio). A streamed request starts over too while
  none of its audio has reached its caller; after, its stream refuses the
  new take (streaming.FrameFeed) and it fails alone (GENERATION_FAILED,
  saying so) rather than send its audio again from the start;
* a row that ends is decoded by the codec in a thread of its own ("codec"),
  while the next step runs: the other rows do not wait for it. A streamed
  request's audio was decoded chunk by chunk as it was generated
  (streaming.py), so its row is not decoded again whole: its result carries
  the codes and frame count the stream's last message reports, no samples.
"""

from __future__ import annotations

import asyncio
import dataclasses
import collections
import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass, field

import grpc
import prometheus_client
import torch

from runtime.admission import Throughput, retry_after
from runtime.errors import ApiError, invalid_parameter
from runtime.server import stop_task
# The queue's metrics are the static batcher's (dashboards and alerts read them whichever runs).
from services.synth.batching import BATCH_SIZE, CAPACITY, QUEUE_DEPTH, REJECTED, ROWS_ACTIVE, STOPPED, Turns, busy
from services.synth.decoder import DecodeBatch, Finished, NoTokenLeft, Prepared, RowSettings
from services.synth.engine import SAMPLES_PER_FRAME, DiaEngine, Generated, SynthesisInput
from services.synth.params import FRAMES_WITHOUT_AUDIO
from services.synth.prompts import Preparer, PromptCache
from services.synth.streaming import StreamRestarted, stream_cut

log = logging.getLogger("synth.scheduler")

FRAMES_PER_SECOND_OF_AUDIO = 44100 / SAMPLES_PER_FRAME

FRAMES_HELD = prometheus_client.Gauge(
    "synth_frames_reserved", "Frames the running rows may hold in the key/value cache (prompt + max_new_tokens)."
)
STEPS = prometheus_client.Counter("synth_decode_steps", "Steps of the decode loop (each advances every row a frame).")
FRAMES = prometheus_client.Counter("synth_frames_generated", "Audio frames generated (about 86 per second of audio).")
AUDIO_SECONDS = prometheus_client.Counter("synth_audio_seconds_generated", "Seconds of audio generated.")
FRAMES_PER_SECOND = prometheus_client.Gauge(
    "synth_frames_per_second", "Frames generated per second over the last 10 seconds of decoding."
)
REAL_TIME_FACTOR = prometheus_client.Histogram(
    "synth_real_time_factor",
    "Per request: seconds from joining the batch to its end, over the seconds of audio it made (below 1: faster than real time).",
    buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30),
)
TIME_TO_FIRST_FRAME = prometheus_client.Histogram(
    "synth_time_to_first_frame_seconds",
    "Per request: seconds from arrival to its first generated frame (queueing, prompt encoding, prefill).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


STEP_FAILURES = prometheus_client.Counter(
    "synth_step_failures",
    "Steps of a batch or lane that raised (out of memory, a device error, a bug): their rows were retried or failed.",
)
ROWS_RETRIED = prometheus_client.Counter(
    "synth_rows_retried", "Requests put back in front of the queue, to run alone once more, after a step they were in failed."
)


def no_token_left() -> ApiError:
    return ApiError(
        grpc.StatusCode.INTERNAL,
        "GENERATION_FAILED",
        "the model left no audio token to choose for this request (its scores were all ruled out or not numbers)",
    )


def generation_failed(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.INTERNAL, "GENERATION_FAILED", message)


def failed_alone() -> ApiError:
    return generation_failed("the model failed while generating this request, also when it was retried alone")


# What _step answers for a row whose batch failed: the event loop retries it or fails it (_after_failed_step).
STEP_FAILED = object()


@dataclass(eq=False)
class Job:
    request: SynthesisInput
    future: asyncio.Future
    account: str = ""
    arrived: float = field(default_factory=time.monotonic)
    reserved_frames: int = 0  # prompt frames + max_new_tokens: what it may hold in the cache
    canceled: bool = False
    lane: DecodeBatch | None = None  # set in the generation thread when it joins
    joined_at: float = 0.0  # when it first joined (a retry keeps it: the caller has waited since)
    started: bool = False  # it had its first frame (time to first frame is observed once)
    failures: int = 0  # steps it was in that failed; after one it runs alone, where a failure is its own


@dataclass
class _FrameRate:
    """Frames per second over a sliding window of steps."""

    window_seconds: float = 10.0
    steps: collections.deque = field(default_factory=collections.deque)  # (time, frames)

    def record(self, frames: int) -> float:
        now = time.monotonic()
        self.steps.append((now, frames))
        while self.steps and self.steps[0][0] < now - self.window_seconds:
            self.steps.popleft()
        span = max(now - self.steps[0][0], 1e-3) if len(self.steps) > 1 else None
        return sum(f for _, f in list(self.steps)[1:]) / span if span else 0.0


class Scheduler:
    def __init__(
        self,
        max_rows: int,
        window_seconds: float,
        max_queue: int,
        max_frames: int,
        prompt_cache_bytes: int,
        step_retries: int = 1,
    ) -> None:
        self.max_rows = max_rows
        self.step_retries = step_retries  # times a request of a failed step runs again, alone
        self.window_seconds = window_seconds
        self.max_queue = max_queue
        self.max_frames = max_frames
        self.prompt_cache = PromptCache(prompt_cache_bytes)
        self._pending: collections.deque[Job] = collections.deque()
        self._running: list[Job] = []
        self._turns = Turns()
        self.throughput = Throughput()  # requests finished (generated or failed) per second, lately
        self._work = asyncio.Event()
        self._closing = threading.Event()
        # One thread owns the model: it loads it and runs every step.
        self.thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="dia")
        # Rows that ended are decoded to audio here, while the generation thread runs the next step.
        self.codec = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="codec")
        self._decoding: set[Job] = set()  # out of the batch, their audio being decoded
        self._task: asyncio.Task | None = None
        self._engine: DiaEngine | None = None
        self._preparer: Preparer | None = None
        self._shared: DecodeBatch | None = None
        self._lanes: list[DecodeBatch] = []  # seeded requests, one each
        self._frame_rate = _FrameRate()
        self.steps = 0
        CAPACITY.set(max_rows + max_queue)

    @property
    def load(self) -> int:
        """Requests running, waiting, or being decoded."""
        return len(self._running) + len(self._pending) + len(self._decoding)

    def start(self, engine: DiaEngine) -> None:
        self._engine = engine
        self._preparer = Preparer(
            engine.processor, engine.model.config.delay_pattern, engine.special_tokens, self.prompt_cache
        )
        self._shared = DecodeBatch(engine.model, self.max_rows)
        self._task = asyncio.create_task(self._run())

    async def submit(self, request: SynthesisInput, account: str = "") -> Generated:
        """Queue `account`'s request and wait for its audio; SYNTH_BUSY at once when the queue is full."""
        if self.load >= self.max_rows + self.max_queue:
            REJECTED.inc()
            raise busy(self.load, retry_after(self.load, self.throughput))
        job = Job(request, asyncio.get_running_loop().create_future(), account)
        prompt_frames = 0 if request.prompt is None else -(-len(request.prompt) // SAMPLES_PER_FRAME)
        job.reserved_frames = 1 + prompt_frames + request.params.max_new_tokens
        self._pending.append(job)
        QUEUE_DEPTH.set(len(self._pending))
        self._work.set()
        try:
            return await job.future
        except asyncio.CancelledError:  # the caller went away (cancelled, deadline, closed connection)
            job.canceled = True
            if job in self._pending:
                self._pending.remove(job)
                QUEUE_DEPTH.set(len(self._pending))
            self._work.set()
            raise

    # --- the loop, on the event loop --------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._running and not self._pending:
                self._work.clear()
                await self._work.wait()
                await asyncio.sleep(self.window_seconds)  # let requests that arrive together start together
            leaving = [job for job in self._running if job.canceled]
            for job in leaving:
                self._running.remove(job)
                STOPPED.inc()
            joining = self._take_joining()
            ROWS_ACTIVE.set(len(self._running))
            if not (self._running or joining or leaving):
                continue
            BATCH_SIZE.observe(len(self._running))  # joining ones included
            try:
                outcomes = await loop.run_in_executor(self.thread, self._step, joining, leaving, list(self._running))
            except Exception as error:  # noqa: BLE001 - outside any one batch's step: every row's step failed
                STEP_FAILURES.inc()
                log.error("decode step failed", exc_info=error, extra={"rows": len(self._running)})
                outcomes = [(job, STEP_FAILED) for job in self._running]
                self._reset()
            retried = []
            for job, outcome in outcomes:
                if job in self._running:
                    self._running.remove(job)
                if outcome is STEP_FAILED:
                    outcome = self._after_failed_step(job)
                    if outcome is None:
                        retried.append(job)
                        continue
                if isinstance(outcome, Finished):
                    self._decode(loop, job, outcome)
                else:
                    self._resolve(job, outcome)
            if retried:  # in front of the queue, in the order they were: they had been admitted first
                self._pending.extendleft(reversed(retried))
                QUEUE_DEPTH.set(len(self._pending))
            ROWS_ACTIVE.set(len(self._running))
            FRAMES_HELD.set(sum(job.reserved_frames for job in self._running))

    def _after_failed_step(self, job: Job) -> ApiError | None:
        """A row of a step that failed: None when it goes back in the queue to run again alone
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

    def _resolve(self, job: Job, outcome: Generated | BaseException) -> None:
        self.throughput.record(1, job.joined_at or self.throughput.clock())
        if job.future.done():  # the caller went away meanwhile
            return
        if isinstance(outcome, BaseException):
            job.future.set_exception(outcome)
        else:
            job.future.set_result(outcome)

    def _decode(self, loop: asyncio.AbstractEventLoop, job: Job, finished: Finished) -> None:
        """Decode an ended row's audio in the codec thread; its caller gets it when done."""
        self._decoding.add(job)
        decoding = loop.run_in_executor(self.codec, self._generated, job, finished)
        decoding.add_done_callback(lambda done: self._decoded(job, done))

    def _decoded(self, job: Job, done: asyncio.Future) -> None:
        self._decoding.discard(job)
        if done.cancelled():  # closing
            return
        error = done.exception()
        if error is not None:
            log.error("decoding a row's audio failed", exc_info=error)
            self._resolve(job, generation_failed("decoding the generated audio failed"))
        elif done.result() is not None:  # None: its caller had gone, it was not decoded
            self._resolve(job, done.result())

    def _take_joining(self) -> list[Job]:
        """The waiting requests that join at the next step: in account turns, while there is room."""
        free = self.max_rows - len(self._running)
        if free <= 0 or not self._pending:
            return []
        reserved = sum(job.reserved_frames for job in self._running)
        joining: list[Job] = []
        full = False
        for job in [j for j in self._pending if j.failures]:  # back from a failed step: first
            alone = not self._running and not joining
            if len(joining) >= free or (not alone and reserved + job.reserved_frames > self.max_frames):
                full = True
                break
            joining.append(job)
            reserved += job.reserved_frames
        order = self._turns.order(self._pending)
        queues = {
            account: collections.deque(j for j in self._pending if j.account == account and j not in joining)
            for account in order
        }
        while not full and len(joining) < free and any(queues.values()):
            for account in order:  # one from each account per round, in turn order
                if not queues[account] or len(joining) >= free:
                    continue
                job = queues[account][0]
                alone = not self._running and not joining
                if not alone and reserved + job.reserved_frames > self.max_frames:
                    full = True  # no overtaking: the next turn's request waits for room
                    break
                queues[account].popleft()
                joining.append(job)
                reserved += job.reserved_frames
        for job in joining:
            self._pending.remove(job)
            self._running.append(job)
        if joining:
            self._turns.served(joining, self._pending)
        QUEUE_DEPTH.set(len(self._pending))
        return joining

    def _reset(self) -> None:
        self._running.clear()
        if self._engine is not None:
            self._shared = DecodeBatch(self._engine.model, self.max_rows)
        self._lanes.clear()

    # --- one step, in the generation thread ----------------------------------------------------------

    def _step(self, joining: list[Job], leaving: list[Job], running: list[Job]) -> list[tuple[Job, object]]:
        """One step of the shared batch and of every lane. Per job that ends or fails: its Generated
        (a streamed one), its Finished row (to decode), its error, or STEP_FAILED (its batch's step raised)."""
        assert self._engine is not None and self._preparer is not None and self._shared is not None
        outcomes: list[tuple[Job, object]] = []
        for job in leaving:
            if job.lane is not None:
                job.lane.remove({job})
        self._lanes = [lane for lane in self._lanes if lane.rows]

        batches: dict[int, tuple[DecodeBatch, list[Prepared]]] = {id(self._shared): (self._shared, [])}
        for lane in self._lanes:
            batches[id(lane)] = (lane, [])
        for job in joining:
            try:
                prepared = self._prepare(job)
            except Exception as error:  # noqa: BLE001 - its own fault (a prompt the codec refuses, ...)
                outcomes.append((job, error))
                continue
            lane = self._shared
            if job.request.params.seeded or job.failures:
                lane = DecodeBatch(self._engine.model, 1)
                self._lanes.append(lane)
                batches[id(lane)] = (lane, [])
            job.lane = lane
            job.joined_at = job.joined_at or time.monotonic()
            batches[id(lane)][1].append(prepared)

        frames = 0
        for batch, prepared in batches.values():
            if not (batch.rows or prepared):
                continue
            try:
                ended = batch.step(prepared)
            except Exception as error:  # noqa: BLE001 - the batch is dropped, its rows retried (_run)
                outcomes += [(job, STEP_FAILED) for job in self._drop_failed(batch, error, running)]
                continue
            for finished in ended:
                job = finished.tag
                handed = None
                if finished.sequence is not None:  # its last frames, to a streamed request
                    handed = self._hand_frames(job, finished.sequence, finished.prefill_frames)
                if isinstance(finished.error, NoTokenLeft):
                    outcomes.append((job, no_token_left()))
                elif finished.error is not None:
                    outcomes.append((job, finished.error))
                elif handed is not None:
                    outcomes.append((job, handed))
                elif job.request.on_frames is not None:
                    outcomes.append((job, self._streamed(job, finished)))
                else:
                    outcomes.append((job, finished))  # decoded in the codec thread (_run)
                frames += finished.sequence is not None
            frames += len(batch.rows)
            broken = set()
            for job, codes, prefill_frames in batch.codes_so_far():
                error = self._hand_frames(job, codes, prefill_frames)
                if error is not None:
                    outcomes.append((job, error))
                    broken.add(job)
            if broken:
                batch.remove(broken)
        for job in joining:
            if job.lane is not None and not job.started:
                job.started = True
                TIME_TO_FIRST_FRAME.observe(time.monotonic() - job.arrived)
        self._lanes = [lane for lane in self._lanes if lane.rows]
        self.steps += 1
        STEPS.inc()
        FRAMES.inc(frames)
        FRAMES_PER_SECOND.set(self._frame_rate.record(frames))
        return outcomes

    def _drop_failed(self, batch: DecodeBatch, error: Exception, running: list[Job]) -> list[Job]:
        """A batch whose step raised is in no state to go on: drop it; its jobs."""
        members = [job for job in running if job.lane is batch]
        STEP_FAILURES.inc()
        # The exception says what broke (a device error, out of memory); never the requests' text.
        log.error(
            "decode step failed",
            exc_info=error,
            extra={"rows": len(members), "lane": batch is not self._shared},
        )
        if batch is self._shared:
            self._shared = DecodeBatch(self._engine.model, self.max_rows)
        else:
            self._lanes.remove(batch)
        for job in members:
            job.lane = None
        return members

    def _hand_frames(self, job: Job, codes: torch.Tensor, prefill_frames: int) -> ApiError | None:
        """A streamed request's frames so far to its on_frames; the error it then fails with, if that raised."""
        if job.request.on_frames is None:
            return None
        try:
            job.request.on_frames(codes, prefill_frames)
        except Exception as error:  # noqa: BLE001 - its stream's fault: the row fails alone
            log.error("a streamed row's frames could not be handed on", exc_info=error)
            if isinstance(error, StreamRestarted):  # a retry, after part of the first take was sent
                return stream_cut()
            return error if isinstance(error, ApiError) else generation_failed("streaming this request's audio failed")
        return None

    def _prepare(self, job: Job) -> Prepared:
        request = job.request
        params = request.params
        settings = RowSettings(
            params.cfg_scale, params.temperature, params.top_p, params.cfg_filter_top_k, params.max_new_tokens,
            request.seed,
        )  # fmt: skip
        prepared = self._preparer.prepare(request.text, request.prompt, settings, tag=job)
        # The decoder's positions hold the prompt and the new frames (3072 for Dia): the service
        # refuses a max_new_tokens the caller chose that cannot fit; here what is left is lowered.
        room = self._shared.room_for(prepared.prefill_frames)
        if room <= FRAMES_WITHOUT_AUDIO:
            raise invalid_parameter(
                "max_audio_prompt_seconds",
                f"the voice prompt ({prepared.prefill_frames - 1} frames) leaves no room for new audio in "
                f"Dia's {self._shared.max_positions} decoder positions; use a shorter prompt",
            )
        if settings.max_new_tokens > room:
            prepared.settings = dataclasses.replace(settings, max_new_tokens=room)
        return prepared

    def _streamed(self, job: Job, finished: Finished) -> Generated:
        """A streamed request's result: its audio went out chunk by chunk (streaming.py), so only
        its codes and frame count, for the stream's last message; no codec."""
        codes = self._engine.row_codes(finished.sequence[None], finished.prefill_frames)
        generated = Generated(samples=None, generated_frames=codes.shape[0] + FRAMES_WITHOUT_AUDIO, codes=codes)
        self._count_audio(job, generated)
        return generated

    def _generated(self, job: Job, finished: Finished) -> Generated | None:
        """In the codec thread: an ended row's audio (None when its caller has gone: not decoded)."""
        if job.canceled:
            return None
        generated = self._engine._decode_row(finished.sequence[None], finished.prefill_frames)
        self._count_audio(job, generated)
        return generated

    def _count_audio(self, job: Job, generated: Generated) -> None:
        audio_seconds = (generated.generated_frames - FRAMES_WITHOUT_AUDIO) / FRAMES_PER_SECOND_OF_AUDIO
        AUDIO_SECONDS.inc(max(audio_seconds, 0.0))
        if audio_seconds > 0:
            REAL_TIME_FACTOR.observe((time.monotonic() - job.joined_at) / audio_seconds)

    async def close(self) -> None:
        """Stop the loop (rows still running are dropped, audio not yet decoded is not) and let both threads finish."""
        self._closing.set()
        await stop_task(self._task)
        for job in [*self._running, *self._pending, *self._decoding]:
            if not job.future.done():
                job.future.cancel()
        await asyncio.to_thread(self.thread.shutdown, wait=True, cancel_futures=True)
        await asyncio.to_thread(self.codec.shutdown, wait=True, cancel_futures=True)
