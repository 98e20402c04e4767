"""Decoding ahead of sequential readers, on a pool of one thread per core.

Through the mount the kernel keeps only one or two read requests in flight per file, so a
FUSE thread that decodes what it was asked for leaves the other cores idle. A PackedFile
given a ReadAhead instead watches its reads: once a run of them continues where the last
ones ended (a `read` loop, or mmap faults walking forward, on several files at once as
parallel loaders do), it has the pool decode the chunks that come next, so requests mostly
find them decoded and only copy. The window of bytes decoded ahead of a stream starts
small and doubles while the stream stays sequential (as JuiceFS and mountpoint-s3 grow
theirs); random readers never start one. A stream is decoded ahead only up to the end of
the tensor it is in until it has shown that it reads on across tensors (loaders copy
tensors in their own order, often in two halves on two threads), and never over chunks it
has served already (the kernel's page cache has those). What is decoded ahead waits in the
chunk cache, within its ahead budget, and is dropped as soon as the reader has taken it.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Optional, Tuple

DEFAULT_WINDOW = 32 << 20     # most bytes decoded ahead of one stream
FIRST_WINDOW = 2 << 20        # ahead of a stream that has just shown itself sequential
GROUP_BYTES = 1 << 20         # original bytes per pool task (one fused decode call)
# How far from a stream's end a read still continues it: a few reads of its own size (the
# kernel sends its readahead requests concurrently and FUSE threads may serve them out of
# order), so a random reader's small reads seldom land near an earlier one's end.
SLACK_READS = 4
MAX_STREAMS = 8               # sequential streams followed per file (least recent dropped)
SEQUENTIAL_READS = 3          # reads in a row before a stream is decoded ahead of (the
                              # first two may be a loader touching each tensor's first page)


class ReadAhead:
    """The pool that decodes ahead, and the largest window of one stream."""

    def __init__(self, threads: int, window: int = DEFAULT_WINDOW):
        self.window = max(0, window)
        self.pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="fpfs-ahead")

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class _Stream:
    __slots__ = ("end", "reads", "window", "scheduled", "crosses")

    def __init__(self, end: int):
        self.end = end              # furthest byte read so far
        self.reads = 1              # reads that continued the stream
        self.window = 0
        self.scheduled = end        # decoded ahead up to here
        self.crosses = False        # has read on from one tensor into the next


class Streams:
    """The sequential streams of one file (a few, so parallel readers of one file each
    keep theirs). Thread-safe."""

    def __init__(self):
        self._streams: List[_Stream] = []
        self._lock = threading.Lock()

    def note(self, offset: int, end: int, max_window: int,
             boundary: Callable[[int], int]) -> Optional[Tuple[int, int]]:
        """Record a read of [offset, end). boundary(pos): where the first tensor (region)
        at or after pos starts. Returns the byte range to decode ahead now, or None."""
        slack = SLACK_READS * (end - offset)
        with self._lock:
            for s in self._streams:
                if s.end - slack <= offset <= s.end + slack:
                    break
            else:
                if len(self._streams) >= MAX_STREAMS:
                    del self._streams[0]
                self._streams.append(_Stream(end))
                return None
            self._streams.remove(s)             # most recently used last
            self._streams.append(s)
            if end <= s.end:                    # behind its end: no progress to count
                return None
            s.reads += 1
            if boundary(s.end) < end:
                s.crosses = True
            s.end = end
            if s.reads < SEQUENTIAL_READS or not max_window:
                return None
            s.window = min(max_window, max(FIRST_WINDOW, 2 * s.window))
            start = max(s.scheduled, s.end)
            target = s.end + s.window
            if not s.crosses:
                target = min(target, boundary(s.end))
                if target <= start:
                    return None
            if target - start < GROUP_BYTES and target < s.end + s.window:
                return None             # little to add: wait for a group's worth
            s.scheduled = max(s.scheduled, target)
            return start, target

    def scheduled_to(self, end_before: int, got_to: int) -> None:
        """Ahead decoding stopped at got_to (the budget was full) instead of end_before."""
        with self._lock:
            for s in self._streams:
                if s.scheduled == end_before:
                    s.scheduled = max(s.end, got_to)
