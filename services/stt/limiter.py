"""Bounded concurrency for blocking work run in threads.

Speech recognition is CPU (or GPU) bound and blocking, so it runs in worker
threads, at most ``concurrency`` at once. Requests past that wait, at most
``queue`` of them; a request beyond those is refused at once rather than
piling up, so memory stays bounded however many clients call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from typing import AsyncIterator, Callable, TypeVar

T = TypeVar("T")


class LimiterFull(Exception):
    """Every running slot and every waiting place is taken."""


class ConcurrencyLimiter:
    def __init__(self, concurrency: int, queue: int) -> None:
        if concurrency < 1 or queue < 0:
            raise ValueError("concurrency must be at least 1 and queue at least 0")
        self.concurrency = concurrency
        self.queue = queue
        self._admitted = 0  # requests inside admit(): running or waiting
        self._running = 0  # worker threads holding a slot
        self._slots = asyncio.Semaphore(concurrency)
        self._threads = concurrent.futures.ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix="limited"
        )

    @property
    def admitted(self) -> int:
        return self._admitted

    @property
    def running(self) -> int:
        return self._running

    @contextlib.asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Hold a place for one request, or raise LimiterFull without waiting.

        A request takes its place before its preparation (decoding its audio),
        so a refusal comes before any work is spent on it.
        """
        if self._admitted >= self.concurrency + self.queue:
            raise LimiterFull
        self._admitted += 1
        try:
            yield
        finally:
            self._admitted -= 1

    async def run(self, function: Callable[..., T], *args) -> T:
        """Wait for a free slot (call inside admit()), then run `function` in a worker thread.

        The slot is given back when the thread finishes, not when the caller
        stops waiting: a cancelled request cannot stop its thread, and the
        thread still counts against the concurrency until it ends.
        """
        await self._slots.acquire()
        self._running += 1
        try:
            job = self._threads.submit(function, *args)
        except BaseException:
            self._release()
            raise
        loop = asyncio.get_running_loop()
        job.add_done_callback(lambda _: loop.call_soon_threadsafe(self._release))
        return await asyncio.wrap_future(job)

    def _release(self) -> None:
        self._running -= 1
        self._slots.release()

    def close(self) -> None:
        """Drop work that has not started and wait for the running threads."""
        self._threads.shutdown(wait=True, cancel_futures=True)
