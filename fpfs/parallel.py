"""Decoding many chunks of a container on all cores. Chunks are independent and the
kernels release the GIL, so a large read is cut at chunk boundaries into pieces that a
shared pool of threads decodes, each straight into its place in the caller's buffer
(`fpfs.open(p).read()`, `readinto`, `fpfs.load_file`: read_into), or that threads of
their own decode ahead while the caller hashes them in order (`fpfs decompress`,
`fpfs verify`: iter_original). Reads through the mount do not come here: the mount's
decode-ahead (fpfs/readahead.py) spreads them over the cores."""
from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterator, List, Optional, Tuple

import numpy as np

from .errors import CorruptContainer
from .packed_file import PackedFile

# Original bytes per task: large enough that task overhead is nothing (a few µs against
# ~1 ms of decode), small enough that two cores share even a 20 MB file evenly.
PIECE_BYTES = 2 << 20

_pool: Optional[ThreadPoolExecutor] = None
_pool_lock = threading.Lock()


def default_threads() -> int:
    """Decode threads: every core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def decode_pool() -> ThreadPoolExecutor:
    """The process-wide pool of decode threads (created on first use)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(default_threads(), thread_name_prefix="fpfs-decode")
        return _pool


def pieces(packed: PackedFile, start: int, end: int,
           piece_bytes: int = PIECE_BYTES) -> List[Tuple[int, int]]:
    """[start, end) cut into [a, b) spans of about piece_bytes that end on chunk boundaries
    (the first and last may be partial chunks)."""
    c = packed.container
    spans = []
    pos = start
    while pos < end:
        stop = min(end, pos + piece_bytes)
        if stop < end and stop > len(c.prefix):
            chunk_start, chunk_len = c.chunk_span(c.chunk_index(stop))
            if chunk_start > pos:
                stop = chunk_start
            else:
                stop = min(end, chunk_start + chunk_len)
        spans.append((pos, stop))
        pos = stop
    return spans


def read_into(packed: PackedFile, offset: int, out, threads: Optional[int] = None) -> int:
    """packed.read_into(offset, out) decoded on `threads` threads (default: all cores);
    returns the byte count. Raises what read_into raises, only after every piece has
    stopped writing into out."""
    view = memoryview(out).cast("B")
    n = max(0, min(len(view), packed.size - offset))
    threads = threads or default_threads()
    if threads == 1 or n < 2 * PIECE_BYTES:
        return packed.read_into(offset, view)
    spans = pieces(packed, offset, offset + n)
    first = max(offset, len(packed.container.prefix))
    if first < offset + n:
        packed.prepare(first, offset + n)
    # More threads than cores only pay while waiting on a store (fpfs.load_file of s3://).
    own_pool = ThreadPoolExecutor(threads - 1) if threads > default_threads() else None
    pool = own_pool or decode_pool()
    try:
        futures = [pool.submit(packed.read_into, a, view[a - offset:b - offset])
                   for a, b in spans[1:]]
    finally:
        if own_pool is not None:
            own_pool.shutdown(wait=False)
    error: Optional[BaseException] = None
    try:                                        # this thread decodes the first piece
        a, b = spans[0]
        packed.read_into(a, view[:b - offset])
    except BaseException as exc:
        error = exc
    for f in futures:
        try:
            f.result()
        except BaseException as exc:
            error = error or exc
    if error is not None:
        raise error
    return n


def iter_original(packed: PackedFile, threads: Optional[int] = None,
                  piece_bytes: int = PIECE_BYTES,
                  sink: Optional[Callable[[int, memoryview], object]] = None
                  ) -> Iterator[memoryview]:
    """All original bytes in order, as views of reused buffers (each valid until the next
    one is taken), decoded ahead by `threads` threads of their own (default: one per core
    but one, which the caller's work on each piece needs - the SHA-256 of verify and
    decompress, 1.6 GB/s, is the slowest stage; 0: all in the caller). Every chunk is
    checksum-verified (the caller checks the whole-file hash). sink(offset, piece), when
    given, runs on the decoding thread right after each piece is decoded (fpfs decompress
    writes the file there, in parallel, while the caller hashes in order)."""
    if threads is None:
        threads = default_threads() - 1
    spans = pieces(packed, 0, packed.size, piece_bytes)
    longest = max((b - a for a, b in spans), default=0)   # > piece_bytes for huge chunks

    def decode(offset: int, view: memoryview) -> None:
        _read_exact(packed, offset, view)
        if sink is not None:
            sink(offset, view)

    if threads < 1 or len(spans) < 2:
        buf = np.empty(longest, np.uint8)
        for a, b in spans:
            view = memoryview(buf)[:b - a]
            decode(a, view)
            yield view
            view.release()
        return
    # `threads` decoding, one decoded and waiting, one with the caller
    window = threads + 2
    free = [np.empty(longest, np.uint8) for _ in range(window)]   # no zero-fill
    in_flight: List[Tuple[Future, memoryview, np.ndarray]] = []
    pool = ThreadPoolExecutor(threads, thread_name_prefix="fpfs-pieces")

    def submit(span: Tuple[int, int]) -> None:
        buf = free.pop()
        view = memoryview(buf)[:span[1] - span[0]]
        in_flight.append((pool.submit(decode, span[0], view), view, buf))

    todo = iter(spans)
    try:
        for span in todo:
            submit(span)
            if len(in_flight) == window - 1:
                break
        while in_flight:
            future, view, buf = in_flight.pop(0)
            future.result()
            yield view
            view.release()
            free.append(buf)
            span = next(todo, None)
            if span is not None:
                submit(span)
    finally:
        for future, view, _ in in_flight:       # an error or an abandoned iteration:
            future.cancel()                     # let no decode outlive the buffers
            try:
                future.result()
            except BaseException:
                pass
        pool.shutdown(wait=True)


def _read_exact(packed: PackedFile, offset: int, view: memoryview) -> None:
    if packed.read_into(offset, view) != len(view):
        raise CorruptContainer(f"{packed.path}: shorter than its header says")
