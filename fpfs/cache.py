"""Byte-budget LRU of decoded chunks, single-flight: concurrent readers of one chunk wait for
a single decode instead of each decoding it."""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, Hashable

import numpy as np


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    waits: int = 0              # readers that joined a decode already in flight
    direct: int = 0             # whole chunks decoded straight into a reader's buffer
    evictions: int = 0
    decoded_bytes: int = 0
    decode_seconds: float = 0.0
    errors: int = 0

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        total = self.hits + self.misses + self.waits
        d["hit_rate"] = (self.hits + self.waits) / total if total else 0.0
        d["decode_gbps"] = (self.decoded_bytes / self.decode_seconds / 1e9
                            if self.decode_seconds else 0.0)
        return d


class _InFlight:
    __slots__ = ("event", "value", "error")

    def __init__(self):
        self.event = threading.Event()
        self.value = None
        self.error = None


class ChunkCache:
    def __init__(self, budget_bytes: int):
        if budget_bytes < 0:
            raise ValueError("cache budget must be >= 0")
        self.budget = budget_bytes
        self.used = 0
        self.stats = CacheStats()
        self._lru: "OrderedDict[Hashable, np.ndarray]" = OrderedDict()
        self._inflight: Dict[Hashable, _InFlight] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, load: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached value for key, or load() it once however many threads ask at once.
        An exception from load() reaches every waiter and nothing is cached."""
        with self._lock:
            value = self._hit(key)
            if value is not None:
                return value
            flight = self._inflight.get(key)
            owner = flight is None
            if owner:
                flight = self._inflight[key] = _InFlight()
                self.stats.misses += 1
            else:
                self.stats.waits += 1
        if not owner:
            flight.event.wait()
            if flight.error is not None:
                raise flight.error
            return flight.value
        start = time.perf_counter()
        try:
            value = load()
        except BaseException as exc:
            flight.error = exc
            with self._lock:
                self.stats.errors += 1
                del self._inflight[key]
            flight.event.set()
            raise
        elapsed = time.perf_counter() - start
        flight.value = value
        with self._lock:
            del self._inflight[key]
            self.stats.decoded_bytes += len(value)
            self.stats.decode_seconds += elapsed
            self._insert(key, value)
        flight.event.set()
        return value

    def lookup(self, key: Hashable):
        """The cached value for key (a hit), or None without loading anything."""
        with self._lock:
            return self._hit(key)

    def _hit(self, key: Hashable):
        """Under the lock: the cached value, marked most recently used, or None."""
        value = self._lru.get(key)
        if value is not None:
            self._lru.move_to_end(key)
            self.stats.hits += 1
        return value

    def record_direct(self, nbytes: int, seconds: float) -> None:
        """Account a decode done outside the cache (straight into a reader's buffer)."""
        with self._lock:
            self.stats.direct += 1
            self.stats.decoded_bytes += nbytes
            self.stats.decode_seconds += seconds

    def contains(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._lru or key in self._inflight

    def _insert(self, key: Hashable, value: np.ndarray) -> None:
        size = len(value)
        if size > self.budget:
            return
        self._lru[key] = value
        self.used += size
        while self.used > self.budget:
            _, old = self._lru.popitem(last=False)
            self.used -= len(old)
            self.stats.evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._lru.clear()
            self.used = 0

    def snapshot(self) -> dict:
        with self._lock:
            d = self.stats.as_dict()
            d["used_bytes"] = self.used
            d["budget_bytes"] = self.budget
            d["entries"] = len(self._lru)
            return d
