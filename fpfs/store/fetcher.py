"""Chunk payloads of one remote container: from the read-ahead buffer, the disk cache, or
ranged GETs.

A reader's request for chunks a..b becomes one GET for each run of neighbouring chunks
that are neither buffered, on disk nor already being fetched (split at request_size).
A reader that starts where one of the object's recent readers ended (give or take the
reordering of parallel FUSE requests; up to MAX_STREAMS streams, as when the mmap faults
of several loader threads interleave) is sequential: chunks are fetched ahead of it too,
in parallel GETs on the store's pool. The read-ahead window starts small (INITIAL_WINDOW)
and grows (x WINDOW_GROWTH) with every sequential request up to `readahead` bytes; a jump
starts a new stream, small again. So a loader that reads a file's header and then only a
few pages does not pull the whole object over the link, while a whole-file reader reaches
the full window within a few requests. A stream at its full window that reaches the end
of the object wraps around to the chunks no reader has taken yet (safetensors' loaders
read the tensors in name order, not in file order: the link stays busy across their
jumps). A GET's body is handed over chunk by chunk as it arrives: a reader waits for its
own chunk, not for the whole request. Chunks the disk cache holds are read from it on the
pool, in parallel (cache files read cold from disk overlap their waits). Each chunk is
fetched once however many readers want it (they wait for the GET in flight), and kept in
memory only until the reader that wanted it takes it (the decoded chunk then lives in the
chunk cache above)."""
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
# Sequential streams tracked per object (loader threads that fault pages of several tensors).
MAX_STREAMS = 4
# A stream with the full window that reaches the end goes on from the start (_top_up).
WRAP = True


class _Flight:
    """One GET in flight for a run of chunks: set when it is over (error: why it failed);
    a reader waits on its own chunk's event, set as soon as that chunk is in."""
    __slots__ = ("event", "error", "chunk_events")

    def __init__(self):
        self.event = threading.Event()
        self.error: Optional[BaseException] = None
        self.chunk_events: Dict[int, threading.Event] = {}


class _Runs:
    """Consecutive wanted chunks grouped into runs, each registered as one flight; a run
    ends at an unwanted chunk or when too_long(first, i) says chunk i would overgrow it."""

    def __init__(self, register, too_long):
        self._register = register
        self._too_long = too_long
        self._first = -1
        self.runs: List[Tuple[int, int, _Flight]] = []

    def add(self, i: int, wanted: bool) -> None:
        if self._first >= 0 and (not wanted or self._too_long(self._first, i)):
            self.runs.append(self._register(self._first, i - 1))
            self._first = -1
        if wanted and self._first < 0:
            self._first = i

    def finish(self, stop: int) -> List[Tuple[int, int, _Flight]]:
        if self._first >= 0:
            self.runs.append(self._register(self._first, stop - 1))
            self._first = -1
        return self.runs


class _Stream:
    """One sequential reader of the object: the chunk after its last request, the chunk
    its read-ahead has been claimed up to (a virtual position: past the last chunk it
    wraps around to the first), and its read-ahead window (0: not sequential yet)."""
    __slots__ = ("next", "ahead", "window")

    def __init__(self, start: int):
        self.next = self.ahead = start
        self.window = 0


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
        self._streams: List[_Stream] = [_Stream(0)]    # the open starts one at chunk 0
        self._taken = np.zeros(len(self._offsets), dtype=bool)   # handed to a reader
        self._cum = np.concatenate(([0], np.cumsum(lengths.astype(np.int64))))
        # A reader waits at most the deadline for a GET (which may retry for longer).
        self._wait = self._settings.deadline
        self._identity = obj.identity

    def _disk_key(self, index: int) -> str:
        return f"{self._identity!r}:{int(self._offsets[index])}:" \
               f"{int(self._ends[index] - self._offsets[index])}"

    # -- what readers call -------------------------------------------------------------
    def prepare(self, first: int, last: int) -> None:
        with self._lock:
            stream = self._stream_of(first)
            if stream is not None:
                stream.next = max(stream.next, last + 1)
                stream.window = min(self._settings.readahead,
                                    max(INITIAL_WINDOW, WINDOW_GROWTH * stream.window))
            else:                       # a jump: a new stream, read ahead small at first
                stream = self._new_stream(last + 1)
            self._streams.remove(stream)
            self._streams.append(stream)        # most recently used last
            runs, disk_runs = self._claim(first, last + 1, from_disk=last > first)
            if stream.window > 0:
                more, more_disk = self._top_up(stream)
                runs += more
                disk_runs += more_disk
        for run in runs:
            self._submit(run)
        for run in disk_runs:
            self._submit_disk(run)

    def _stream_of(self, first: int) -> Optional["_Stream"]:
        """The sequential stream a request starting at chunk first continues (parallel FUSE
        threads and mmap faults of several loader threads interleave a few streams)."""
        for stream in reversed(self._streams):
            if stream.next - REORDER_CHUNKS <= first <= stream.next + REORDER_CHUNKS:
                return stream
        return None

    def _new_stream(self, start: int) -> "_Stream":
        if len(self._streams) >= MAX_STREAMS:
            self._streams.pop(0)                # the least recently used
        stream = _Stream(start)
        self._streams.append(stream)
        return stream

    def read_into(self, index: int, out: memoryview) -> int:
        for _ in range(3):      # a buffered payload may be evicted before we take it
            with self._lock:
                payload = self._ready.pop(index, None)
                self._taken[index] = True
                from_disk = False
                if payload is not None:
                    self._ready_bytes -= len(payload)
                    from_disk = index in self._from_disk_set
                    self._from_disk_set.discard(index)
                flight = self._flights.get(index) if payload is None else None
                event = None if flight is None else \
                    flight.chunk_events.setdefault(index, threading.Event())
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
                self._taken[index] = True
                if self._disk is not None and self._disk.read_into(self._disk_key(index), out):
                    self._store.stats.add(disk_hits=1)
                    return len(out)
                self.prepare(index, index)     # also starts read-ahead if sequential
                with self._lock:
                    flight = self._flights.get(index)
                    event = None if flight is None else \
                        flight.chunk_events.setdefault(index, threading.Event())
                if flight is None:
                    continue            # fetched meanwhile by another reader
            if not event.wait(self._wait):
                self._give_up(flight, StoreError(f"{self._obj.name}: chunk {index}: no answer "
                                                 f"from the store in {self._wait:g} s"))
            if flight.error is not None:
                with self._lock:
                    buffered = index in self._ready     # in before the GET failed
                if not buffered:
                    raise flight.error
        raise StoreError(f"{self._obj.name}: chunk {index}: fetched but evicted before use "
                         f"(read-ahead buffer too small)")

    # -- planning (under the lock) -----------------------------------------------------
    def _top_up(self, stream: "_Stream"):
        """Claim read-ahead up to the stream's window past its reader, once less than half
        of it is left ahead: so read-ahead goes out in GETs of up to request_size, not one
        small GET per reader request. A stream whose window is full and reaches the end
        of the object goes on from the object's start (wrapping around once) over the
        chunks no reader has taken yet: a loader that reads every tensor in its own
        order (safetensors sorts them by name, not by offset) then finds the rest of
        the file fetched while it decodes, and the link never idles between its jumps.
        Returns (runs to GET, runs to read from disk)."""
        n = len(self._offsets)
        start = stream.next
        if start >= n:
            if stream.window < self._settings.readahead or not WRAP:
                return [], []
        if stream.ahead < start:
            stream.ahead = start
        limit = start + (n if stream.window >= self._settings.readahead and WRAP else 0)
        limit = min(max(limit, n), start + n)   # virtual positions: p >= n is chunk p - n
        if stream.ahead >= limit:
            return [], []
        left = self._vpos_bytes(stream.ahead) - self._vpos_bytes(start)
        if left >= stream.window // 2:
            return [], []
        target = self._vpos_bytes(start) + stream.window
        stop = int(np.searchsorted(self._cum, target, side="right")) - 1
        if stop == n and target > self._cum[n]:
            stop = n + int(np.searchsorted(self._cum, target - self._cum[n],
                                           side="right")) - 1
        stop = min(max(stop, stream.ahead + 1), limit)
        ahead, stream.ahead = stream.ahead, stop
        runs, disk_runs = [], []
        for lo, hi in ((ahead, min(stop, n)), (max(ahead, n) - n, max(stop, n) - n)):
            if lo < hi:
                more, more_disk = self._claim(lo, hi, from_disk=True, ahead=True)
                runs += more
                disk_runs += more_disk
        return runs, disk_runs

    def _vpos_bytes(self, p: int) -> int:
        """Compressed bytes before virtual position p (p >= n: wrapped around)."""
        n = len(self._offsets)
        return int(self._cum[p]) if p <= n else int(self._cum[n] + self._cum[p - n])

    def _claim(self, start: int, stop: int, from_disk: bool = False, ahead: bool = False):
        """Runs (first, last, flight) of chunks in [start, stop) nobody has or fetches, each
        at most request_size bytes, registered as in flight: (runs to GET, runs the disk
        cache holds, to be read on the pool in parallel). The second list is empty unless
        from_disk (a reader that wants one chunk reads it from disk itself)."""
        limit = self._settings.request_size
        offsets, ends = self._offsets, self._ends
        # A GET stays within one request_size-aligned window of the object; a disk run
        # within DISK_RUN_BYTES.
        net = _Runs(self._register, lambda first, i: ends[i] - offsets[first] > limit or
                    offsets[i] // limit != offsets[first] // limit)
        disk = _Runs(self._register, lambda first, i: ends[i] - offsets[first] > DISK_RUN_BYTES)
        stop = min(stop, len(offsets))
        for i in range(start, stop):
            free = i not in self._ready and i not in self._flights and \
                not (ahead and self._taken[i])
            on_disk = free and self._disk is not None and self._on_disk(i)
            net.add(i, free and not on_disk)
            disk.add(i, on_disk and from_disk)
        runs, disk_runs = net.finish(stop), disk.finish(stop)
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
            events = list(flight.chunk_events.values())
            flight.chunk_events.clear()
        if flight.error is None:
            flight.error = error
        flight.event.set()
        for ev in events:
            ev.set()
        self._store.stats.add(errors=1)
        self._store.breaker.failure(error)
        raise error

    def _fetch(self, first: int, last: int, flight: _Flight) -> None:
        start, end = int(self._offsets[first]), int(self._ends[last])
        if flight.event.is_set():
            return                          # given up on before its turn came
        streamed = getattr(self._obj, "fetch_streamed", None)
        got = bytearray()
        done = first                        # chunks first..done-1 are buffered already
        written = {}

        def sink(data: bytes) -> None:
            # Hand every chunk to its readers as soon as its last byte is in: a reader
            # waits for its own chunk, not for the whole GET.
            nonlocal done
            got.extend(data)
            have = start + len(got)
            stop = done
            while stop <= last and int(self._ends[stop]) <= have:
                stop += 1
            if stop > done:
                payloads = {i: bytes(got[int(self._offsets[i]) - start:
                                         int(self._ends[i]) - start])
                            for i in range(done, stop)}
                self._buffer(payloads)
                self._finish(done, stop - 1, flight, None, partial=True)
                written.update(payloads)
                done = stop
        try:
            if streamed is not None:
                streamed(start, end - start, sink)
            else:
                sink(self._obj.fetch(start, end - start))
            if len(got) != end - start:
                raise CorruptContainer(f"{self._obj.name}: object truncated (wanted "
                                       f"{end - start} bytes at {start}, got {len(got)})")
        except BaseException as exc:        # noqa: BLE001 - handed to every waiter
            log.debug("fetching chunks %d-%d of %s failed: %s", done, last,
                      self._obj.name, exc)
            self._finish(done, last, flight, exc)
            return
        self._finish(first, last, flight, None)
        if self._disk is not None:
            for i, payload in written.items():
                self._disk.put(self._disk_key(i), payload)

    def _finish(self, first: int, last: int, flight: _Flight,
                error: Optional[BaseException], partial: bool = False) -> None:
        """Chunks first..last of flight are done (buffered, or failed with error); the
        flight's waiters wake up (partial: only these chunks' readers, the GET goes on)."""
        with self._lock:
            for i in range(first, last + 1):
                if self._flights.get(i) is flight:
                    del self._flights[i]
            if partial:
                events = [flight.chunk_events.pop(i) for i in range(first, last + 1)
                          if i in flight.chunk_events]
            else:
                events = list(flight.chunk_events.values())
                flight.chunk_events.clear()
        if not partial:
            if not flight.event.is_set():   # not given up on already (_give_up)
                flight.error = error
            flight.event.set()
        for ev in events:
            ev.set()
