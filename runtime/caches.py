"""A cache bounded in bytes, for what a service keeps to avoid doing work again
(the gateway's assembled voice prompts, synth's prompt codec codes)."""

from __future__ import annotations

import collections
import threading
from typing import Callable, Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ByteBudgetCache(Generic[K, V]):
    """Values by key; the least recently used are dropped first once their sizes pass
    `max_bytes` (0 keeps nothing larger than 0 bytes). A value larger than the whole budget
    is not kept; a key kept once keeps its first value. Safe to use from several threads."""

    def __init__(self, max_bytes: int, size_of: Callable[[V], int]) -> None:
        self.max_bytes = max_bytes
        self.size_of = size_of
        self.bytes = 0
        self.hits = self.misses = 0
        self._entries: collections.OrderedDict[K, V] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: K, value: V) -> None:
        size = self.size_of(value)
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = value
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self.bytes -= self.size_of(dropped)
