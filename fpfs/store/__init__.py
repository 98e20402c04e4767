"""Where container bytes come from: the backing-store seam.

The read path (fpfs/container.py, fpfs/packed_file.py) asks a StoreObject for "bytes at
offset" and a Store for "does this name exist / open it"; it never knows whether a local
file (local.py) or an S3 object (s3.py) answered. Names are local paths or `s3://BUCKET/KEY`
URLs; open_object() and store_for() pick the store from the name.
"""
from __future__ import annotations

import posixpath
from abc import ABC, abstractmethod
from typing import Hashable, Iterator, Optional, Protocol, Tuple

import numpy as np

from ..errors import FpfsError

S3_SCHEME = "s3://"


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


def is_url(name: str) -> bool:
    return isinstance(name, str) and name.startswith(S3_SCHEME)


def split_url(url: str) -> Tuple[str, str]:
    """s3://BUCKET/KEY -> (BUCKET, KEY); KEY may be empty (the whole bucket)."""
    if not is_url(url):
        raise FpfsError(f"{url}: not an s3:// URL")
    bucket, _, key = url[len(S3_SCHEME):].partition("/")
    if not bucket:
        raise FpfsError(f"{url}: no bucket in the URL (s3://BUCKET/PREFIX)")
    return bucket, key


def join_url(url: str, rel: str) -> str:
    return url.rstrip("/") + "/" + rel.lstrip("/") if rel else url.rstrip("/")


def url_ancestors(url: str, top: Optional[str] = None) -> Iterator[str]:
    """The "directories" of an object URL, nearest first, down to top (or the bucket)."""
    bucket, _ = split_url(url)
    stop = (top or S3_SCHEME + bucket).rstrip("/")
    d = posixpath.dirname(url.rstrip("/"))
    while True:
        yield d
        if d == stop or len(d) <= len(S3_SCHEME + bucket):
            return
        d = posixpath.dirname(d)


def store_for(name: str) -> Store:
    if is_url(name):
        from .s3 import default_store
        return default_store()
    from .local import LOCAL
    return LOCAL


def open_object(name: str) -> StoreObject:
    return store_for(name).open(name)
