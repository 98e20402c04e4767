"""The local store: a file read with os.pread on one descriptor (thread-safe, no position)."""
from __future__ import annotations

import os
from typing import Optional

from .objects import Store, StoreObject


class LocalObject(StoreObject):
    def __init__(self, path: str, store: "LocalStore"):
        self.name = path
        self.store = store
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        st = os.fstat(self._fd)
        self._size = st.st_size
        self._identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    @property
    def size(self) -> int:
        return self._size

    @property
    def identity(self):
        return self._identity

    def read_into(self, offset: int, buf: memoryview) -> int:
        return os.preadv(self._fd, [buf], offset)

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self._fd, size, offset)

    def fileno(self) -> Optional[int]:
        return self._fd if self._fd >= 0 else None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class LocalStore(Store):
    def open(self, name: str) -> LocalObject:
        return LocalObject(name, self)

    def exists(self, name: str) -> bool:
        return os.path.isfile(name)


LOCAL = LocalStore()
