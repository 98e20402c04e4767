"""Chunk payloads of one remote container: from the read-ahead buffer, the disk cache, or
ranged GETs.

A reader's request for chunks a..b becomes one GET for each run of neighbouring chunks
that are neither buffered, on disk nor already being fetched (split at request_size).
A reader that starts where the previous one ended (give or take the reordering of
parallel FUSE requests) is sequential: chunks are fetched ahead of it too, in parallel
GETs on the store's pool. The read-ahead window starts small (INITIAL_WINDOW) and grows
(x WINDOW_GROWTH) with every sequential request up to `readahead` bytes; a jump starts it
small again. So a loader that reads a file's header and then only some of its tensors
(safetensors' load_file maps the file; pages nobody touches are never read) does not
pull the whole object over the link, while a whole-file reader reaches the full window
within a few requests. Chunks the disk cache holds are read from it on the pool, in
parallel (cache files read cold from disk overlap their waits). Each chunk is fetched once however
many readers want it (they wait for the GET in flight), and kept in memory only until the
reader that wanted it takes it (the decoded chunk then lives in the chunk cache above)."""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..errors import CorruptContainer, StoreError

log = logging.getLogger("fpfs.store")
# A FUSE request that arrives this many chunks before or after the previous request's end
# still counts as sequential (parallel FUSE threads reorder a sequential reader's requests).
REORDER_CHUNKS = 16
# Chunks that the disk cache holds are read on the pool in runs of at most this many bytes
# (about one chunk: many in parallel, so cache files read cold from disk overlap their
# waits, and a reader waits only for its own chunk).
DISK_RUN_BYTES = 256 << 10
# The read-ahead window (compressed bytes) after an open or a jump; it grows with every
# sequential request, up to the store's `readahead`.
INITIAL_WINDOW = 1 << 20
WINDOW_GROWTH = 4


class _Flight:
    """One GET in flight for a run of chunks; readers of any of them wait on it."""
    __slots__ = ("event", "error")

    def __init__(self):
        self.event = threading.Event()
        self.error: Optional[BaseException] = None


class ChunkFetcher:
    def __init__(self, obj, offsets: np.ndarray, lengths: np.ndarray):
        self._obj = obj
        self._store = obj.store
        self._settings = obj.store.settings
        self._offsets = offsets.astype(np.int64)
        self._ends = self._offsets + lengths.astype(np.int64)
        self._disk = obj.store.disk_cache
        self._lock = threading.Lock()
        self._ready: "OrderedDict[int, bytes]" = OrderedDict()
        self._ready_bytes = 0
        self._from_disk_set = set()     # buffered chunks that came from the disk cache
        self._ready_budget = 2 * self._settings.readahead + self._settings.request_size
        self._flights: Dict[int, _Flight] = {}
        self._next = 0                  # the chunk after the last one asked for
        self._ahead = 0                 # chunks below this were fetched or scheduled ahead
        self._window = 0                # current read-ahead bytes (0: not sequential yet)
        # A reader waits at most the deadline for a GET (which may retry for longer).
        self._wait = self._settings.deadline
        self._identity = obj.identity

    def _disk_key(self, index: int) -> str:
        return f"{self._identity!r}:{int(self._offsets[index])}:" \
               f"{int(self._ends[index] - self._offsets[index])}"

    # -- what readers call -------------------------------------------------------------
    def prepare(self, first: int, last: int) -> None:
        with self._lock:
            sequential = self._next - REORDER_CHUNKS <= first <= self._next + REORDER_CHUNKS
            if sequential:
                self._next = max(self._next, last + 1)
                self._window = min(self._settings.readahead,
                                   max(INITIAL_WINDOW, WINDOW_GROWTH * self._window))
            else:                       # a jump: read-ahead starts again from here, small
                self._next = self._ahead = last + 1
                self._window = 0
            runs, disk_runs = self._claim(first, last + 1, from_disk=last > first)
            if sequential and self._window > 0:
                more, more_disk = self._top_up(last + 1)
                runs += more
                disk_runs += more_disk
        for run in runs:
            self._submit(run)
        for run in disk_runs:
            self._submit_disk(run)

    def read_into(self, index: int, out: memoryview) -> int:
        for _ in range(3):      # a buffered payload may be evicted before we take it
            with self._lock:
                payload = self._ready.pop(index, None)
                from_disk = False
                if payload is not None:
                    self._ready_bytes -= len(payload)
                    from_disk = index in self._from_disk_set
                    self._from_disk_set.discard(index)
                flight = self._flights.get(index) if payload is None else None
            if payload is not None:
                if len(payload) != len(out):
                    raise CorruptContainer(f"{self._obj.name}: chunk {index}: buffered "
                                           f"payload of {len(payload)} bytes, wanted "
                                           f"{len(out)}")
                if not from_disk:
                    self._store.stats.add(readahead_hits=1)
                out[:] = payload
                return len(payload)
            if flight is None:
                if self._disk is not None and self._disk.read_into(self._disk_key(index), out):
                    self._store.stats.add(disk_hits=1)
                    return len(out)
                self.prepare(index, index)     # also starts read-ahead if sequential
                with self._lock:
                    flight = self._flights.get(index)
                if flight is None:
                    continue            # fetched meanwhile by another reader
            if not flight.event.wait(self._wait):
                self._give_up(flight, StoreError(f"{self._obj.name}: chunk {index}: no answer "
                                                 f"from the store in {self._wait:g} s"))
            if flight.error is not None:
                raise flight.error
        raise StoreError(f"{self._obj.name}: chunk {index}: fetched but evicted before use "
                         f"(read-ahead buffer too small)")

    # -- planning (under the lock) -----------------------------------------------------
    def _top_up(self, start: int):
        """Claim read-ahead up to the window past start, once less than half of it is left
        ahead of the reader: so read-ahead goes out in GETs of up to request_size, not one
        small GET per reader request. Returns (runs to GET, runs to read from disk)."""
        n = len(self._offsets)
        if start >= n:
            return [], []
        ahead = max(self._ahead, start)
        left = (self._offsets[ahead] if ahead < n else self._ends[-1]) - self._offsets[start]
        if left >= self._window // 2:
            return [], []
        stop = int(np.searchsorted(self._ends, self._offsets[start] + self._window,
                                   side="right"))
        stop = max(stop, start + 1)
        self._ahead = max(ahead, stop)
        return self._claim(ahead, stop, from_disk=True)

    def _claim(self, start: int, stop: int, from_disk: bool = False):
        """Runs (first, last, flight) of chunks in [start, stop) nobody has or fetches, each
        at most request_size bytes, registered as in flight: (runs to GET, runs the disk
        cache holds, to be read on the pool in parallel). The second list is empty unless
        from_disk (a reader that wants one chunk reads it from disk itself)."""
        runs: List[Tuple[int, int, _Flight]] = []
        disk_runs: List[Tuple[int, int, _Flight]] = []
        limit = self._settings.request_size
        first, first_disk = -1, -1
        stop = min(stop, len(self._offsets))
        for i in range(start, stop):
            free = i not in self._ready and i not in self._flights
            on_disk = free and self._disk is not None and self._on_disk(i)
            wanted = free and not on_disk
            disk = on_disk and from_disk
            if wanted and first >= 0 and self._ends[i] - self._offsets[first] > limit:
                runs.append(self._register(first, i - 1))
                first = -1
            if wanted and first < 0:
                first = i
            elif not wanted and first >= 0:
                runs.append(self._register(first, i - 1))
                first = -1
            if disk and first_disk >= 0 and \
                    self._ends[i] - self._offsets[first_disk] > DISK_RUN_BYTES:
                disk_runs.append(self._register(first_disk, i - 1))
                first_disk = -1
            if disk and first_disk < 0:
                first_disk = i
            elif not disk and first_disk >= 0:
                disk_runs.append(self._register(first_disk, i - 1))
                first_disk = -1
        if first >= 0:
            runs.append(self._register(first, stop - 1))
        if first_disk >= 0:
            disk_runs.append(self._register(first_disk, stop - 1))
        if self._disk is not None and runs:     # chunks the disk cache did not have
            self._store.stats.add(disk_misses=sum(last - first + 1 for first, last, _ in runs))
        return runs, disk_runs

    def _on_disk(self, index: int) -> bool:
        return self._disk.contains(self._disk_key(index))

    def _register(self, first: int, last: int) -> Tuple[int, int, _Flight]:
        flight = _Flight()
        for i in range(first, last + 1):
            self._flights[i] = flight
        return first, last, flight

    # -- fetching (on the store's pool) ------------------------------------------------
    def _submit(self, run: Tuple[int, int, _Flight]) -> None:
        try:
            self._store.pool.submit(self._fetch, *run)
        except RuntimeError as exc:         # the pool is shut down (unmounting)
            self._finish(run[0], run[1], run[2], StoreError(str(exc)))

    def _submit_disk(self, run: Tuple[int, int, _Flight]) -> None:
        try:
            self._store.pool.submit(self._from_disk, *run)
        except RuntimeError as exc:         # the pool is shut down (unmounting)
            self._finish(run[0], run[1], run[2], StoreError(str(exc)))

    def _from_disk(self, first: int, last: int, flight: _Flight) -> None:
        """Read-ahead from the disk cache: its entries of chunks first..last into the
        buffer (each checked by the cache). A chunk it does not have (evicted, damaged)
        is simply not buffered: its reader fetches it then."""
        payloads = {}
        try:
            for i in range(first, last + 1):
                if flight.event.is_set():
                    break
                buf = bytearray(int(self._ends[i] - self._offsets[i]))
                if self._disk.read_into(self._disk_key(i), memoryview(buf)):
                    payloads[i] = buf
        except BaseException as exc:        # noqa: BLE001 - never kill a pool thread
            log.debug("reading chunks %d-%d of %s from the disk cache failed: %s", first,
                      last, self._obj.name, exc)
        if payloads:
            self._store.stats.add(disk_hits=len(payloads))
            self._buffer(payloads, readahead_hits=False)
        self._finish(first, last, flight, None)

    def _buffer(self, payloads: Dict[int, bytes], readahead_hits: bool = True) -> None:
        with self._lock:
            for i, payload in payloads.items():
                if i in self._ready:
                    continue
                self._ready[i] = payload
                self._ready_bytes += len(payload)
                if not readahead_hits:
                    self._from_disk_set.add(i)
            while self._ready_bytes > self._ready_budget and self._ready:
                old_i, old = self._ready.popitem(last=False)
                self._from_disk_set.discard(old_i)
                self._ready_bytes -= len(old)

    def _give_up(self, flight: _Flight, error: StoreError) -> None:
        """A GET that outlived the deadline: fail its waiters now, and let the next reader
        of its chunks ask again (the circuit breaker makes that fail fast while the store
        stays silent). The GET itself finishes on its own."""
        with self._lock:
            stuck = [i for i, f in self._flights.items() if f is flight]
            for i in stuck:
                del self._flights[i]
        if flight.error is None:
            flight.error = error
        flight.event.set()
        self._store.stats.add(errors=1)
        self._store.breaker.failure(error)
        raise error

    def _fetch(self, first: int, last: int, flight: _Flight) -> None:
        start, end = int(self._offsets[first]), int(self._ends[last])
        if flight.event.is_set():
            return                          # given up on before its turn came
        try:
            data = self._obj.fetch(start, end - start)
            if len(data) != end - start:
                raise CorruptContainer(f"{self._obj.name}: object truncated (wanted "
                                       f"{end - start} bytes at {start}, got {len(data)})")
        except BaseException as exc:        # noqa: BLE001 - handed to every waiter
            log.debug("fetching chunks %d-%d of %s failed: %s", first, last,
                      self._obj.name, exc)
            self._finish(first, last, flight, exc)
            return
        view = memoryview(data)
        payloads = {i: bytes(view[int(self._offsets[i]) - start:int(self._ends[i]) - start])
                    for i in range(first, last + 1)}
        # Readers first; the disk cache is written after (it only matters next time).
        self._buffer(payloads)
        self._finish(first, last, flight, None)
        if self._disk is not None:
            for i, payload in payloads.items():
                self._disk.put(self._disk_key(i), payload)

    def _finish(self, first: int, last: int, flight: _Flight,
                error: Optional[BaseException]) -> None:
        with self._lock:
            for i in range(first, last + 1):
                if self._flights.get(i) is flight:
                    del self._flights[i]
        if not flight.event.is_set():       # not given up on already (_give_up)
            flight.error = error
        flight.event.set()
