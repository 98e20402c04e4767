"""What the read path asks of a backing store (the seam, fpfs/store/__init__.py): a Store
opens names, a StoreObject answers "bytes at offset", a ChunkReader reads one container's
chunk payloads (fetching several at once where the store is remote)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Hashable, Optional, Protocol

import numpy as np


class ChunkReader(Protocol):
    """Reads the stored payloads of one container's chunks (the offsets and lengths of its
    validated chunk table). A remote reader may fetch several at once and cache them."""

    def prepare(self, first: int, last: int) -> None:
        """A reader is about to need chunks first..last (a hint; may fetch them together)."""

    def read_into(self, index: int, out: memoryview) -> int:
        """Copy chunk index's payload into out (its exact length); returns bytes copied."""


class StoreObject(ABC):
    """One immutable blob: a local file, or one version of an S3 object."""

    name: str                   # a path or an s3:// URL, for messages and base lookups
    store: "Store"              # where a delta's base is looked for

    @property
    @abstractmethod
    def size(self) -> int: ...

    @property
    @abstractmethod
    def identity(self) -> Hashable:
        """Changes when the object is replaced: caches key on it."""

    @abstractmethod
    def read_into(self, offset: int, buf: memoryview) -> int:
        """Fill buf from offset; fewer bytes only at the end of the object."""

    def read(self, offset: int, size: int) -> bytes:
        buf = bytearray(size)
        n = self.read_into(offset, memoryview(buf))
        return bytes(buf[:n]) if n < size else bytes(buf)

    def chunk_reader(self, offsets: np.ndarray, lengths: np.ndarray) -> ChunkReader:
        return DirectChunkReader(self, offsets, lengths)

    def fileno(self) -> Optional[int]:
        """A descriptor the decoder may pread the object from itself, or None (remote)."""
        return None

    def close(self) -> None:
        pass


class DirectChunkReader:
    """One read per chunk straight from the object (local files: the page cache is the cache)."""

    def __init__(self, obj: StoreObject, offsets: np.ndarray, lengths: np.ndarray):
        self._obj = obj
        self._offsets = offsets

    def prepare(self, first: int, last: int) -> None:
        pass

    def read_into(self, index: int, out: memoryview) -> int:
        return self._obj.read_into(int(self._offsets[index]), out)


class Store(ABC):
    @abstractmethod
    def open(self, name: str) -> StoreObject: ...

    @abstractmethod
    def exists(self, name: str) -> bool:
        """Whether name is a regular file / object (a stored base, bases.py)."""
