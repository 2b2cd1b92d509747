"""Refusing work a service has no room for, and saying when to come back.

A service that refuses a request because it is busy (a full queue, too many
uploads at once) tells the caller when trying again is likely to work: the
``retry_after`` of its :class:`~runtime.errors.ApiError`, which travels as a
``google.rpc.RetryInfo`` and becomes the HTTP ``Retry-After`` header. The
estimate is the work ahead divided by how fast the service has been finishing
work lately (:class:`Throughput`); before anything has finished it is
:data:`UNKNOWN_RETRY_SECONDS`.
"""

from __future__ import annotations

import collections
import contextlib
import time
from typing import Callable, Iterator

import prometheus_client

from runtime.errors import ApiError

# Retry-After when nothing has finished recently to estimate from.
UNKNOWN_RETRY_SECONDS = 1.0
# Longest Retry-After suggested: past this an estimate says little, and a client should look again.
MAX_RETRY_SECONDS = 60.0
# How far back completions count towards the rate.
THROUGHPUT_WINDOW_SECONDS = 60.0


class Throughput:
    """Requests finished per second lately: those finished within the window, over the time since
    the earliest of them began (so idle time before that does not count as slowness)."""

    def __init__(self, window_seconds: float = THROUGHPUT_WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.window_seconds = window_seconds
        self.clock = clock
        self._done: collections.deque[tuple[float, int, float]] = collections.deque()  # (finished, count, began)

    def record(self, count: int, began: float) -> None:
        """`count` requests finished now, begun at `began` (the clock's time)."""
        now = self.clock()
        self._done.append((now, count, began))
        self._forget(now)

    def per_second(self) -> float | None:
        """The recent rate, or None when nothing finished within the window."""
        now = self.clock()
        self._forget(now)
        if not self._done:
            return None
        began = min(began for _, _, began in self._done)
        return sum(count for _, count, _ in self._done) / max(now - began, 1e-3)

    def _forget(self, now: float) -> None:
        while self._done and self._done[0][0] < now - self.window_seconds:
            self._done.popleft()


def retry_after(ahead: int, throughput: Throughput) -> float:
    """Seconds until the `ahead` requests before a new one are done, at the recent rate (1 to 60)."""
    rate = throughput.per_second()
    if rate is None:
        return UNKNOWN_RETRY_SECONDS
    return min(max(ahead / rate, 1.0), MAX_RETRY_SECONDS)


class Gate:
    """At most `limit` requests inside at once; one more is refused at once, with a Retry-After."""

    def __init__(
        self, limit: int, refusal: Callable[[int, float], ApiError], gauge: prometheus_client.Gauge | None = None
    ) -> None:
        self.limit = limit
        self.refusal = refusal  # (requests inside, retry_after) -> the error to raise
        self.gauge = gauge  # set to the requests inside, when given
        self.inside = 0
        self.throughput = Throughput()

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        if self.inside >= self.limit:
            raise self.refusal(self.inside, retry_after(self.inside, self.throughput))
        self._count(+1)
        began = self.throughput.clock()
        try:
            yield
        finally:
            self._count(-1)
            self.throughput.record(1, began)

    def _count(self, change: int) -> None:
        self.inside += change
        if self.gauge is not None:
            self.gauge.set(self.inside)
