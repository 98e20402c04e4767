"""fpfs.open(path): a read-only binary file object over a container (read/seek/tell plus
pread). Large reads decode on all cores (fpfs/parallel.py) straight into the buffer they
return; small ones go through the packed file's cache of recent chunks."""
from __future__ import annotations

import io
from typing import Optional, Union

from . import _kernels, parallel
from .cache import ChunkCache
from .packed_file import PackedFile
from .store import Store, StoreObject


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
