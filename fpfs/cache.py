"""Byte-budget LRU of decoded chunks, single-flight: concurrent readers of one chunk wait for
a single decode instead of each decoding it.

Besides chunks decoded for a reader (get), it holds chunks decoded *ahead* of sequential
readers (claim/fulfil, fpfs/readahead.py) in an LRU of their own, within a part of the
budget (ahead_budget): the chunks readers asked for (a delta's base chunks among them)
never push out what was decoded ahead and not yet read, nor the other way round. A chunk a
sequential reader has read to its end is dropped (discard), since through the mount the
kernel's page cache keeps what was read."""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, Hashable, Optional

import numpy as np


_nesting = threading.local()


class DecodeTimer:
    """CPU seconds this thread spends on one decode, less the decodes nested in it (a
    delta's base chunks, which the cache counts on their own): decoded bytes over these
    seconds is the speed of one core, whether the cores were shared or the decode waited
    for a disk or a store. Use as a context manager; .seconds after the block."""
    __slots__ = ("seconds", "_start", "_outer")

    def __enter__(self) -> "DecodeTimer":
        self._outer = getattr(_nesting, "seconds", 0.0)
        _nesting.seconds = 0.0
        self._start = time.thread_time()
        return self

    def __exit__(self, *exc) -> None:
        total = time.thread_time() - self._start
        self.seconds = max(0.0, total - _nesting.seconds)
        _nesting.seconds = self._outer + total


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
    ahead: int = 0              # chunks decoded ahead of a sequential reader
    taken: int = 0              # chunks dropped once a sequential reader had read them

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        total = self.hits + self.misses + self.waits
        d["hit_rate"] = (self.hits + self.waits) / total if total else 0.0
        d["decode_gbps"] = (self.decoded_bytes / self.decode_seconds / 1e9
                            if self.decode_seconds else 0.0)
        return d


class _InFlight:
    __slots__ = ("event", "value", "error", "ahead", "started")

    def __init__(self, ahead: int = 0):
        self.event = threading.Event()
        self.value = None
        self.error = None
        self.ahead = ahead          # bytes reserved in the ahead budget (0: a reader's)
        self.started = not ahead    # a decode ahead still queued can be taken over


class ChunkCache:
    def __init__(self, budget_bytes: int, ahead_budget: Optional[int] = None):
        """ahead_budget: bytes of chunks decoded ahead and not yet read (default half the
        budget) - the rest stays for chunks readers asked for."""
        if budget_bytes < 0:
            raise ValueError("cache budget must be >= 0")
        self.budget = budget_bytes
        self.ahead_budget = budget_bytes // 2 if ahead_budget is None else ahead_budget
        self.used = 0               # bytes in _lru
        self.ahead_used = 0         # bytes in _ahead plus those being decoded ahead
        self.stats = CacheStats()
        self._lru: "OrderedDict[Hashable, np.ndarray]" = OrderedDict()
        self._ahead: "OrderedDict[Hashable, np.ndarray]" = OrderedDict()   # not yet read
        self._inflight: Dict[Hashable, _InFlight] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, load: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached value for key, or load() it once however many threads ask at once.
        An exception from load() reaches every waiter and nothing is cached. A decode
        ahead that was given up (abandon) leaves its waiters to load it themselves."""
        while True:
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
            if owner:
                break
            with self._lock:
                if not flight.started:
                    # Queued ahead and not begun (the pool is busy, or stuck on a slow
                    # store): the reader decodes it now rather than wait its turn.
                    flight.started = True
                    self.ahead_used -= flight.ahead
                    flight.ahead = 0
                    self.stats.waits -= 1
                    self.stats.misses += 1
                    owner = True
            if owner:
                break
            flight.event.wait()
            if flight.error is not None:
                raise flight.error
            if flight.value is not None:
                return flight.value
        timer = DecodeTimer()
        try:
            with timer:
                value = load()
        except BaseException as exc:
            flight.error = exc
            with self._lock:
                self.stats.errors += 1
                del self._inflight[key]
            flight.event.set()
            raise
        flight.value = value
        with self._lock:
            del self._inflight[key]
            self.stats.decoded_bytes += len(value)
            self.stats.decode_seconds += timer.seconds
            self._insert(key, value)
        flight.event.set()
        return value

    def claim(self, key: Hashable, ahead_bytes: int = 0) -> Optional[_InFlight]:
        """Take key's decode on oneself: None when it is cached or being decoded already
        (or, with ahead_bytes, when the ahead budget has no room for it). The claimer then
        calls fulfil (ahead decodes) or abandon, and readers of key wait for that. A claim
        ahead is only a place in the queue until begin(): a reader that needs the chunk
        before then decodes it itself."""
        with self._lock:
            if key in self._lru or key in self._ahead or key in self._inflight:
                return None
            if ahead_bytes:
                # room by dropping the oldest chunks decoded ahead (a reader that stopped
                # left them), never those still being decoded
                while self.ahead_used + ahead_bytes > self.ahead_budget and self._ahead:
                    _, old = self._ahead.popitem(last=False)
                    self.ahead_used -= len(old)
                    self.stats.evictions += 1
                if self.ahead_used + ahead_bytes > self.ahead_budget:
                    return None
                self.ahead_used += ahead_bytes
            flight = self._inflight[key] = _InFlight(ahead_bytes)
            return flight

    def begin(self, flights) -> list:
        """The pool starts on claims made ahead: for each, whether it is still its to
        decode (False: a reader took it over, and fulfils it itself)."""
        with self._lock:
            mine = [not f.started for f in flights]
            for f in flights:
                f.started = True
            return mine

    def fulfil(self, key: Hashable, value: np.ndarray, seconds: float = 0.0) -> None:
        """A claimed decode is done: cache value (as decoded ahead) and wake its readers."""
        with self._lock:
            flight = self._inflight.pop(key)
            flight.value = value
            self.stats.ahead += 1
            self.stats.decoded_bytes += len(value)
            self.stats.decode_seconds += seconds
            self.ahead_used -= flight.ahead
            if flight.ahead:
                self._ahead[key] = value
                self.ahead_used += len(value)
            else:
                self._insert(key, value)
        flight.event.set()

    def abandon(self, key: Hashable) -> None:
        """A claimed decode is given up (failed, or decoded straight into a reader's
        buffer): nothing is cached and its waiters decode it themselves."""
        with self._lock:
            flight = self._inflight.pop(key, None)
            if flight is None:
                return
            self.ahead_used -= flight.ahead
        flight.event.set()

    def discard(self, key: Hashable) -> None:
        """Readers behind the mount have read all of key: drop it (the kernel's page
        cache keeps those bytes; nothing else reads them again soon)."""
        with self._lock:
            value = self._ahead.pop(key, None)
            if value is not None:
                self.ahead_used -= len(value)
            else:
                value = self._lru.pop(key, None)
                if value is None:
                    return
                self.used -= len(value)
            self.stats.taken += 1

    def lookup(self, key: Hashable):
        """The cached value for key (a hit), or None without loading anything."""
        with self._lock:
            return self._hit(key)

    def _hit(self, key: Hashable):
        """Under the lock: the cached value, marked most recently used, or None."""
        value = self._lru.get(key)
        if value is not None:
            self._lru.move_to_end(key)
        else:
            value = self._ahead.get(key)
        if value is not None:
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
            return key in self._lru or key in self._ahead or key in self._inflight

    def _insert(self, key: Hashable, value: np.ndarray) -> None:
        """Under the lock: cache a chunk a reader asked for, within what the chunks
        decoded ahead leave of the budget."""
        size = len(value)
        if size > self.budget - self.ahead_used:
            return
        self._lru[key] = value
        self.used += size
        while self.used + self.ahead_used > self.budget and self._lru:
            _, old = self._lru.popitem(last=False)
            self.used -= len(old)
            self.stats.evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._lru.clear()
            self._ahead.clear()
            self.used = 0
            self.ahead_used = sum(f.ahead for f in self._inflight.values())

    def snapshot(self) -> dict:
        with self._lock:
            d = self.stats.as_dict()
            d["used_bytes"] = self.used + sum(len(v) for v in self._ahead.values())
            d["ahead_bytes"] = self.ahead_used
            d["budget_bytes"] = self.budget
            d["entries"] = len(self._lru) + len(self._ahead)
            return d
