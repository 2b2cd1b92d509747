"""The engine's core: requests in and results out on the event loop, one step at a time in the
thread that owns the model (vLLM's engine core, with its front end).

Each turn of its loop:

1. the scheduler says who leaves and who joins, and in which lane (schedule);
2. in the generation thread ("dia"), the joining requests are prepared
   (prompts.py: text tokens, the voice prompt's codes), the runner steps
   every lane, and the output processor hands streamed rows their frames;
3. back on the event loop the scheduler learns what ended or failed
   (update_from_output); a row that ended is decoded to audio by the output
   processor in a thread of its own ("codec"), while the next step runs, so
   the other rows do not wait for it. A streamed request's audio went out
   chunk by chunk, so its row is not decoded again whole: its result
   carries the codes and frame count its stream's last message reports.

The core decides nothing itself: it carries the scheduler's decisions to the
runner and the runner's rows to the output processor.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import time
from dataclasses import dataclass, field

import prometheus_client

from runtime import tracing
from runtime.server import stop_task
from services.synth.engine.model import LoadedDia
from services.synth.engine.output_processor import OutputProcessor
from services.synth.engine.prompts import Preparer, Prepared, PromptCache
from services.synth.engine.request import (
    SHARED_LANE,
    Generated,
    RowSettings,
    SynthesisInput,
    generation_failed,
    no_token_left,
)
from services.synth.engine.runner import Finished, ModelRunner, NoTokenLeft
from services.synth.engine.scheduler import STEP_FAILED, Job, Scheduler, SchedulerOutput
from services.synth.spans import JobSpans

log = logging.getLogger("synth.engine")

STEPS = prometheus_client.Counter("synth_decode_steps", "Steps of the decode loop (each advances every row a frame).")
FRAMES = prometheus_client.Counter("synth_frames_generated", "Audio frames generated (about 86 per second of audio).")
FRAMES_PER_SECOND = prometheus_client.Gauge(
    "synth_frames_per_second", "Frames generated per second over the last 10 seconds of decoding."
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


class SynthEngine:
    def __init__(
        self,
        max_rows: int,
        window_seconds: float,
        max_queue: int,
        max_frames: int,
        prompt_cache_bytes: int,
        step_retries: int = 1,
    ) -> None:
        self.scheduler = Scheduler(max_rows, window_seconds, max_queue, max_frames, step_retries)
        self.prompt_cache = PromptCache(prompt_cache_bytes)
        # One thread owns the model: it loads it and runs every step.
        self.thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="dia")
        # Rows that ended are decoded to audio here, while the generation thread runs the next step.
        self.codec = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="codec")
        self.runner: ModelRunner | None = None
        self.output: OutputProcessor | None = None
        self._preparer: Preparer | None = None
        self._futures: dict[Job, asyncio.Future] = {}
        self._spans: dict[Job, JobSpans] = {}  # with tracing on (services/synth/spans.py)
        self._work = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._frame_rate = _FrameRate()
        self.steps = 0

    @property
    def max_rows(self) -> int:
        return self.scheduler.max_rows

    @property
    def load(self) -> int:
        """Requests running, waiting, or being decoded."""
        return self.scheduler.load

    def start(self, dia: LoadedDia) -> None:
        self._preparer = Preparer(dia.processor, dia.delay_pattern, dia.special_tokens, self.prompt_cache)
        self.runner = ModelRunner(dia.model, self.scheduler.max_rows)
        self.output = OutputProcessor(dia)
        self._task = asyncio.create_task(self._run())

    async def submit(self, request: SynthesisInput, account: str = "") -> Generated:
        """Queue `account`'s request and wait for its audio; SYNTH_BUSY at once when the queue is full."""
        job = Job(request, account, request.prompt_frames)
        if tracing.ENABLED:
            self._spans[job] = JobSpans()
        error: BaseException | str | None = None
        try:
            self.scheduler.add(job)
            future = self._futures[job] = asyncio.get_running_loop().create_future()
            self._work.set()
            return await future
        except asyncio.CancelledError:  # the caller went away (cancelled, deadline, closed connection)
            error = "canceled"
            self.scheduler.cancel(job)
            self._work.set()
            raise
        except BaseException as failure:
            error = failure
            raise
        finally:
            self._futures.pop(job, None)
            spans = self._spans.pop(job, None)
            if spans is not None:
                spans.ended(error)

    # --- the loop, on the event loop --------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        scheduler = self.scheduler
        while True:
            if not scheduler.running and not scheduler.waiting:
                self._work.clear()
                await self._work.wait()
                await asyncio.sleep(scheduler.window_seconds)
            plan = scheduler.schedule()
            if not (scheduler.running or plan.leaving):
                continue
            for job in plan.joining if self._spans else ():
                if job in self._spans:
                    self._spans[job].joining()
            try:
                outcomes = await loop.run_in_executor(self.thread, self._step, plan)
            except Exception as error:  # noqa: BLE001 - outside any one lane's step: every row's step failed
                STEP_FAILURES.inc()
                log.error("decode step failed", exc_info=error, extra={"rows": len(scheduler.running)})
                outcomes = [(job, STEP_FAILED) for job in scheduler.running]
                await loop.run_in_executor(self.thread, self.runner.reset)
            if self._spans:
                self._count_step(scheduler.running)
            for job, outcome in scheduler.update_from_output(outcomes):
                if isinstance(outcome, Finished):
                    self._decode(loop, job, outcome)
                else:
                    self._resolve(job, outcome)

    def _count_step(self, rows: list[Job]) -> None:
        for job in rows:
            spans = self._spans.get(job)
            if spans is not None:
                spans.stepped(len(rows))

    def _resolve(self, job: Job, outcome: Generated | BaseException) -> None:
        self.scheduler.done(job)
        future = self._futures.get(job)
        if future is None or future.done():  # the caller went away meanwhile
            return
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    def _decode(self, loop: asyncio.AbstractEventLoop, job: Job, finished: Finished) -> None:
        """Decode an ended row's audio in the codec thread; its caller gets it when done."""
        self.scheduler.finishing.add(job)
        if job in self._spans:
            self._spans[job].decoding()
        decoding = loop.run_in_executor(self.codec, self._decoded_row, job, finished)
        decoding.add_done_callback(lambda done: self._decoded(job, done))

    def _decoded_row(self, job: Job, finished: Finished) -> Generated | None:
        """In the codec thread: an ended row's audio (None when its caller has gone: not decoded)."""
        if job.canceled:
            return None
        return self.output.decoded(finished.sequence, finished.prefill_frames, job.joined_at)

    def _decoded(self, job: Job, done: asyncio.Future) -> None:
        if done.cancelled() or (done.exception() is None and done.result() is None):  # closing, or its caller had gone
            self.scheduler.finishing.discard(job)
        elif done.exception() is not None:
            log.error("decoding a row's audio failed", exc_info=done.exception())
            self._resolve(job, generation_failed("decoding the generated audio failed"))
        else:
            self._resolve(job, done.result())

    # --- one step, in the generation thread ----------------------------------------------------------

    def _step(self, plan: SchedulerOutput) -> list[tuple[Job, object]]:
        """One step of every lane. Per request that ended or failed: its Finished row (to decode), its
        Generated (a streamed one), its error, or STEP_FAILED (its lane's step raised)."""
        outcomes: list[tuple[Job, object]] = []
        joining: dict[int, list[Prepared]] = {}
        for job in plan.joining:
            request = job.request
            try:
                prepared = self._preparer.prepare(
                    request.text, request.prompt, RowSettings.of(request), tag=job,
                    codes=request.prompt_codes, key=request.prompt_key, transcript=request.prompt_transcript,
                )  # fmt: skip
            except Exception as error:  # noqa: BLE001 - its own fault (a prompt the codec refuses, ...)
                outcomes.append((job, error))
                continue
            joining.setdefault(job.lane, []).append(prepared)
        leaving: dict[int, set] = {}
        for job in plan.leaving:
            leaving.setdefault(job.lane, set()).add(job)

        result = self.runner.step(leaving, joining)
        for error, jobs in result.failed:
            STEP_FAILURES.inc()
            # The exception says what broke (a device error, out of memory); never the requests' text.
            log.error(
                "decode step failed",
                exc_info=error,
                extra={"rows": len(jobs), "lane": any(job.lane != SHARED_LANE for job in jobs)},
            )
            outcomes += [(job, STEP_FAILED) for job in jobs]
        outcomes += [(finished.tag, self._ended(finished)) for finished in result.finished]
        for job, codes, start in self.runner.codes_so_far():
            if job.request.on_frames is None:
                continue
            error = self.output.hand_frames(job.request, codes, start)
            if error is not None:
                outcomes.append((job, error))
                self.runner.remove(job.lane, {job})

        failed = {job for job, outcome in outcomes if outcome is STEP_FAILED or isinstance(outcome, BaseException)}
        for job in plan.joining:
            if job not in failed and not job.started:
                job.started = True
                TIME_TO_FIRST_FRAME.observe(time.monotonic() - job.arrived)
        self.steps += 1
        STEPS.inc()
        FRAMES.inc(result.frames)
        FRAMES_PER_SECOND.set(self._frame_rate.record(result.frames))
        return outcomes

    def _ended(self, finished: Finished) -> object:
        """What a row that left its lane comes to: an error, a streamed result, or itself (to decode)."""
        job = finished.tag
        handed = None
        if finished.sequence is not None:  # its last frames, to a streamed request
            handed = self.output.hand_frames(job.request, finished.sequence, finished.prefill_frames)
        if isinstance(finished.error, NoTokenLeft):
            return no_token_left()
        if finished.error is not None:
            return finished.error
        if handed is not None:
            return handed
        if job.request.on_frames is not None:
            return self.output.streamed(finished.sequence, finished.prefill_frames, job.joined_at)
        return finished  # decoded in the codec thread (_run)

    async def close(self) -> None:
        """Stop the loop (rows still running are dropped, audio not yet decoded is not) and let both threads finish."""
        await stop_task(self._task)
        for future in list(self._futures.values()):
            if not future.done():
                future.cancel()
        await asyncio.to_thread(self.thread.shutdown, wait=True, cancel_futures=True)
        await asyncio.to_thread(self.codec.shutdown, wait=True, cancel_futures=True)
