"""Random access to the original bytes of a container: PackedFile.pread(offset, size)
bisects the chunk table, takes decoded chunks from the cache (or decodes them, once) and
slices. This is the whole read path; the FUSE layer only translates paths and errors."""
from __future__ import annotations

import io
import threading
from concurrent.futures import Executor
from typing import List, Optional, Tuple

import numpy as np

from .cache import ChunkCache
from .container import Container

DEFAULT_PREFETCH = 4     # chunks decoded ahead of a sequential reader
Segment = Tuple[np.ndarray, int, int]     # (buffer, start, stop)


class PackedFile:
    def __init__(self, path: str, cache: Optional[ChunkCache] = None,
                 prefetch_pool: Optional[Executor] = None, prefetch: int = DEFAULT_PREFETCH):
        self.container = Container(path)
        self.path = path
        self.size = self.container.original_size
        # Without a shared cache, keep the last few chunks so small sequential reads
        # (io.BufferedReader, json parsers) do not decode a chunk per call.
        self.cache = cache if cache is not None else ChunkCache(4 * self.container.chunk_size)
        self._pool = prefetch_pool
        self._prefetch = prefetch if prefetch_pool is not None else 0
        self._prefix = np.frombuffer(self.container.prefix, dtype=np.uint8)
        self._next_sequential = -1
        self._lock = threading.Lock()

    @property
    def identity(self):
        return self.container.identity

    def chunk(self, index: int) -> np.ndarray:
        """Decoded chunk `index` (through the cache; shared, do not modify). Raises CorruptChunk."""
        return self.cache.get((self.container.identity, index),
                              lambda: self.container.decode(index))

    def pread_segments(self, offset: int, size: int) -> List[Segment]:
        """The original bytes [offset, offset+size) clipped to the file, as (buffer, start,
        stop) pieces of the prefix and of decoded chunks; no bytes are copied."""
        if offset < 0 or size < 0:
            raise ValueError("negative offset or size")
        end = min(offset + size, self.size)
        segments: List[Segment] = []
        pos = offset
        plen = len(self._prefix)
        if pos < min(end, plen):
            segments.append((self._prefix, pos, min(end, plen)))
            pos = min(end, plen)
        last = -1
        while pos < end:
            index = self.container.chunk_index(pos)
            start, length = self.container.chunk_span(index)
            stop = min(end, start + length)
            segments.append((self.chunk(index), pos - start, stop - start))
            pos = stop
            last = index
        if last >= 0:
            self._maybe_prefetch(offset, end, last)
        return segments

    def pread(self, offset: int, size: int):
        """Up to size original bytes at offset (fewer only at end of file), as a bytes-like
        object: a read-only view when the range lies in one piece, else joined bytes."""
        segments = self.pread_segments(offset, size)
        if len(segments) == 1:
            buf, start, stop = segments[0]
            return memoryview(buf)[start:stop].toreadonly()
        return b"".join(memoryview(buf)[start:stop] for buf, start, stop in segments)

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


class FpzFile(io.RawIOBase):
    """Read-only binary file object over a container: read/seek/tell plus pread."""

    def __init__(self, path: str, cache: Optional[ChunkCache] = None):
        super().__init__()
        self._packed = PackedFile(path, cache)
        self._pos = 0
        self.name = path

    @property
    def size(self) -> int:
        return self._packed.size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def pread(self, offset: int, size: int) -> bytes:
        self._checkClosed()
        return bytes(self._packed.pread(offset, size))

    def readinto(self, buffer) -> int:
        self._checkClosed()
        view = memoryview(buffer).cast("B")
        data = self._packed.pread(self._pos, len(view))
        n = len(data)
        view[:n] = data
        self._pos += n
        return n

    def readall(self) -> bytes:
        return self.read(max(0, self.size - self._pos))

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


def open_packed(path: str, cache: Optional[ChunkCache] = None) -> FpzFile:
    return FpzFile(path, cache)
