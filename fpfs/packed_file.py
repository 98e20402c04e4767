"""Random access to the original bytes of a container: PackedFile.pread(offset, size)
bisects the chunk table, takes decoded chunks from the cache (or decodes them, once) and
slices. This is the whole read path; the FUSE layer only translates paths and errors."""
from __future__ import annotations

import io
import threading
import time
from concurrent.futures import Executor
from typing import Optional, Union

import numpy as np

from . import _kernels, parallel
from .bases import MAX_CHAIN, find_base
from .cache import ChunkCache
from .container import Container
from .errors import CorruptContainer, MissingBase
from .store import Store, StoreObject, store_for

# Chunks decoded ahead of a sequential reader on a thread pool. Off by default: through the
# mount the kernel's readahead already sends concurrent 1 MiB requests that keep both cores
# decoding, and prefetch measured 10-20 % slower on cold sequential reads (2-core machine,
# bench/bench_mount.py). Worth trying with more cores than concurrent requests.
DEFAULT_PREFETCH = 0


class PackedFile:
    def __init__(self, source: Union[str, StoreObject, Container],
                 cache: Optional[ChunkCache] = None,
                 prefetch_pool: Optional[Executor] = None, prefetch: int = DEFAULT_PREFETCH,
                 root: Optional[str] = None, _depth: int = 0, store: Optional[Store] = None):
        """source: a .fpz path or s3:// URL, an opened StoreObject, or an already open
        Container (then shared, not closed separately). root: the top of the tree to look
        for a delta's base in (bases.py); store: where to look (default: the store the
        source came from). A delta's base is opened here too, sharing the cache (so N
        fine-tunes of one base decode each base chunk once); MissingBase if it cannot be
        found or is not the file the delta was coded against."""
        if isinstance(source, str):
            source = (store or store_for(source)).open(source)
        self.container = source if isinstance(source, Container) else Container(source)
        self.store = store or self.container.source.store
        self.path = self.container.path
        self.size = self.container.original_size
        # Without a shared cache, keep the last few chunks so small sequential reads
        # (io.BufferedReader, json parsers) do not decode a chunk per call.
        self.cache = cache if cache is not None else ChunkCache(4 * self.container.chunk_size)
        self.base: Optional[PackedFile] = None
        try:
            if self.container.base is not None:
                self.base = self._open_base(root, _depth)
                self.container.base_reader = self.base.read_cached
        except BaseException:
            if not isinstance(source, Container):
                self.container.close()
            raise
        self._pool = prefetch_pool
        self._prefetch = prefetch if prefetch_pool is not None else 0
        self._prefix = np.frombuffer(self.container.prefix, dtype=np.uint8)
        self._next_sequential = -1
        self._lock = threading.Lock()

    def _open_base(self, root: Optional[str], depth: int) -> "PackedFile":
        ref = self.container.base
        if depth >= MAX_CHAIN:
            raise MissingBase(f"{self.path}: chain of bases deeper than {MAX_CHAIN}")
        path = find_base(self.path, ref.sha256, root, self.store.exists)
        base = PackedFile(path, self.cache, root=root, _depth=depth + 1, store=self.store)
        if base.container.sha256 != ref.sha256 or base.size != ref.size:
            base.close()
            raise MissingBase(f"{self.path}: {path} is not its base (SHA-256 differs)")
        return base

    @property
    def depth(self) -> int:
        """How many bases deep this file's chain goes (0: not a delta)."""
        return 0 if self.base is None else 1 + self.base.depth

    def read_cached(self, offset: int, size: int) -> np.ndarray:
        """size original bytes at offset, every chunk through the cache (the read path of a
        base: the fine-tunes that share it then share its decoded chunks too). Read-only:
        a range inside one chunk is a view of the cached chunk, not a copy."""
        pos, end = offset, offset + size
        if end > self.size or offset < 0:
            raise CorruptContainer(f"{self.path}: a delta reads past the end of its base")
        plen = len(self._prefix)
        if pos >= plen and size:
            index = self.container.chunk_index(pos)
            start, length = self.container.chunk_span(index)
            if end <= start + length:       # the usual case: same layout, aligned chunks
                return self.chunk(index)[pos - start:end - start]
        out = np.empty(size, dtype=np.uint8)
        if pos < min(end, plen):
            stop = min(end, plen)
            out[:stop - pos] = self._prefix[pos:stop]
            pos = stop
        while pos < end:
            index = self.container.chunk_index(pos)
            start, length = self.container.chunk_span(index)
            stop = min(end, start + length)
            out[pos - offset:stop - offset] = self.chunk(index)[pos - start:stop - start]
            pos = stop
        return out

    @property
    def identity(self):
        return self.container.identity

    def chunk(self, index: int) -> np.ndarray:
        """Decoded chunk `index` (through the cache; shared, do not modify). Raises CorruptChunk."""
        return self.cache.get((self.container.identity, index),
                              lambda: self.container.decode(index))

    def read_into(self, offset: int, out) -> int:
        """Copy the original bytes at offset into the writable buffer out (fewer bytes only
        at end of file); returns the count. Whole chunks that are not cached are decoded
        straight into out - no allocation, no page faults, no second copy - and only the
        partly read chunks at the edges go through the cache, where the neighbouring
        request will find them. Raises CorruptChunk (nothing returned is ever wrong)."""
        dst = np.frombuffer(out, dtype=np.uint8)
        if offset < 0:
            raise ValueError("negative offset")
        end = min(offset + len(dst), self.size)
        pos = offset
        plen = len(self._prefix)
        if pos < min(end, plen):
            stop = min(end, plen)
            dst[:stop - pos] = self._prefix[pos:stop]
            pos = stop
        last = -1
        if pos < end:
            self.prepare(pos, end)
        while pos < end:
            index = self.container.chunk_index(pos)
            start, length = self.container.chunk_span(index)
            stop = min(end, start + length)
            target = dst[pos - offset:stop - offset]
            key = (self.container.identity, index)
            cached = self.cache.lookup(key)
            if cached is None and pos == start and stop == start + length:
                # A run of whole chunks the cache does not hold: decoded together, straight
                # into the reader's buffer.
                last_in_run = index
                while stop < end and last_in_run + 1 < len(self.container):
                    nstart, nlength = self.container.chunk_span(last_in_run + 1)
                    if nstart + nlength > end or \
                            self.cache.contains((self.container.identity, last_in_run + 1)):
                        break
                    last_in_run += 1
                    stop = nstart + nlength
                t0 = time.perf_counter()
                self.container.decode_run_into(index, last_in_run,
                                               memoryview(dst[pos - offset:stop - offset]))
                self.cache.record_direct(stop - pos, time.perf_counter() - t0)
                index = last_in_run
            else:
                chunk = cached if cached is not None else self.chunk(index)
                target[:] = chunk[pos - start:stop - start]
            pos = stop
            last = index
        if last >= 0:
            self._maybe_prefetch(offset, end, last)
        return max(0, end - offset)

    def prepare(self, pos: int, end: int) -> None:
        """Tell the store which chunks of [pos, end) are about to be decoded (not those the
        cache holds), so a remote one fetches them together (in requests of its own size,
        however the range is then cut among decode threads)."""
        first, last = self.container.chunk_index(pos), self.container.chunk_index(end - 1)
        identity = self.container.identity
        missing = [i for i in range(first, last + 1)
                   if not self.cache.contains((identity, i))]
        if missing:
            self.container.prepare(missing[0], missing[-1])

    def pread(self, offset: int, size: int) -> bytes:
        """Up to size original bytes at offset (fewer only at end of file)."""
        if size < 0:
            raise ValueError("negative size")
        buf = bytearray(max(0, min(size, self.size - offset)))
        n = self.read_into(offset, buf)
        return bytes(buf[:n]) if n < len(buf) else bytes(buf)

    def _maybe_prefetch(self, offset: int, end: int, last: int) -> None:
        if not self._prefetch:
            return
        with self._lock:
            sequential = offset == self._next_sequential
            self._next_sequential = end
        if not sequential:
            return
        for index in range(last + 1, min(last + 1 + self._prefetch, len(self.container))):
            key = (self.container.identity, index)
            if not self.cache.contains(key):
                self._pool.submit(self._prefetch_one, index)

    def _prefetch_one(self, index: int) -> None:
        try:
            self.chunk(index)
        except Exception:
            pass   # the reader that needs this chunk will decode it again and see the error

    def close(self) -> None:
        self.container.close()
        if self.base is not None:
            self.base.close()


class FpzFile(io.RawIOBase):
    """Read-only binary file object over a container: read/seek/tell plus pread. Large
    reads decode on all cores (fpfs/parallel.py); read() and readall() decode straight
    into the bytes object they return."""

    def __init__(self, path: Union[str, StoreObject], cache: Optional[ChunkCache] = None,
                 root: Optional[str] = None, store: Optional[Store] = None):
        super().__init__()
        self._packed = PackedFile(path, cache, root=root, store=store)
        self._pos = 0
        self.name = self._packed.path

    @property
    def size(self) -> int:
        return self._packed.size

    @property
    def depth(self) -> int:
        """How many bases deep this file's chain of deltas goes (0: not a delta)."""
        return self._packed.depth

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def pread(self, offset: int, size: int) -> bytes:
        self._checkClosed()
        return self._packed.pread(offset, size)

    def readinto(self, buffer) -> int:
        self._checkClosed()
        n = parallel.read_into(self._packed, self._pos, buffer)
        self._pos += n
        return n

    def read(self, size: int = -1) -> bytes:
        """Up to size bytes (all that is left when size < 0), in a new bytes object that
        is decoded into directly: no zero-fill, no second copy."""
        self._checkClosed()
        left = max(0, self.size - self._pos)
        n = left if size is None or size < 0 else min(size, left)
        out, view = _kernels.bytes_for_writing(n)
        try:
            got = parallel.read_into(self._packed, self._pos, view)
        finally:
            view.release()
        self._pos += got
        return out if got == n else out[:got]

    def readall(self) -> bytes:
        return self.read()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._checkClosed()
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}.get(whence)
        if base is None:
            raise ValueError(f"invalid whence {whence}")
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        if not self.closed:
            self._packed.close()
        super().close()


def open_packed(path: str, cache: Optional[ChunkCache] = None,
                root: Optional[str] = None) -> FpzFile:
    return FpzFile(path, cache, root)
