"""A local disk cache of compressed chunk payloads fetched from an object store.

One file per chunk, named by a hash of (object version, offset, length), so a replaced
object (new ETag) never finds its predecessor's entries. Entries are written to a locked
temporary file and renamed into place: a reader sees a whole entry or none, and several
mounts on one host share a directory safely (the same entry written twice is the same
bytes; a deleted entry is a miss). Each entry carries its own length and xxh3 checksum,
checked on every read, so an entry damaged by a crash (no fsync: a power loss may leave
a renamed file unwritten) is dropped and fetched again, never decoded. The decoder checks
every chunk's checksum on top of that.

Bounded: entries are used least-recently first (a hit touches the file's mtime); when the
bytes written since the last pass push the total over the budget, the oldest entries of
the whole directory (every mount's) are removed down to 90 %. A full disk turns writes
off for a minute with a log line: the mount goes on without its disk cache."""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import struct
import threading
import time
from typing import List, Optional, Tuple

import xxhash

from .. import tempfiles

log = logging.getLogger("fpfs.store")
ENTRY = struct.Struct("<8sQQ")            # magic, payload length, xxh3-64 of the payload
MAGIC = b"FPZCACH1"
LOW_WATER = 0.9
FULL_DISK_PAUSE = 60.0


class DiskCache:
    def __init__(self, directory: str, budget_bytes: int):
        self.directory = os.path.abspath(directory)
        self.budget = budget_bytes
        os.makedirs(self.directory, exist_ok=True)
        tempfiles.remove_stale(self.directory)     # a killed daemon's half-written entries
        self._lock = threading.Lock()
        self._evicting = threading.Lock()
        self._paused_until = 0.0
        self._used = sum(size for _, size, _ in self._entries())

    def _path(self, key: str) -> str:
        h = hashlib.sha256(key.encode()).hexdigest()
        return os.path.join(self.directory, h[:2], h[2:])

    def contains(self, key: str) -> bool:
        return os.path.exists(self._path(key))

    def read_into(self, key: str, out: memoryview) -> bool:
        """Fill out with the entry's payload (exactly len(out) bytes); False on a miss."""
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            head = os.pread(fd, ENTRY.size, 0)
            ok = len(head) == ENTRY.size
            if ok:
                magic, length, digest = ENTRY.unpack(head)
                ok = magic == MAGIC and length == len(out) and \
                    os.preadv(fd, [out], ENTRY.size) == length and \
                    xxhash.xxh3_64_intdigest(out) == digest
        except OSError:
            ok = False
        finally:
            os.close(fd)
        return _checked(path, ok)

    def get(self, key: str, max_size: int) -> Optional[bytes]:
        """The entry's payload, whatever its length (at most max_size); None on a miss."""
        path = self._path(key)
        try:
            with open(path, "rb", buffering=0) as f:
                data = f.read(ENTRY.size + max_size + 1)
        except OSError:
            return None
        ok = len(data) >= ENTRY.size
        if ok:
            magic, length, digest = ENTRY.unpack_from(data)
            payload = data[ENTRY.size:]
            ok = magic == MAGIC and length == len(payload) <= max_size and \
                xxhash.xxh3_64_intdigest(payload) == digest
        return payload if _checked(path, ok) else None

    def put(self, key: str, payload) -> None:
        """Store payload under key; never raises (a failing cache only costs fetches)."""
        if time.monotonic() < self._paused_until or len(payload) + ENTRY.size > self.budget:
            return
        path = self._path(key)
        directory = os.path.dirname(path)
        try:
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfiles.create(directory)
        except OSError as exc:
            self._failed(exc)
            return
        try:
            head = ENTRY.pack(MAGIC, len(payload), xxhash.xxh3_64_intdigest(payload))
            with os.fdopen(os.dup(fd), "wb") as f:
                f.write(head)
                f.write(payload)
            os.replace(tmp, path)
        except OSError as exc:
            _unlink(tmp)
            self._failed(exc)
            return
        finally:
            os.close(fd)
        with self._lock:
            self._used += len(payload) + ENTRY.size
            over = self._used > self.budget
        if over:
            self._evict()

    def _failed(self, exc: OSError) -> None:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            self._paused_until = time.monotonic() + FULL_DISK_PAUSE
            log.error("disk cache %s: disk full; not caching for %d s (%s)", self.directory,
                      FULL_DISK_PAUSE, exc)
        else:
            log.warning("disk cache %s: cannot write an entry: %s", self.directory, exc)

    def _entries(self) -> List[Tuple[float, int, str]]:
        """(mtime, size, path) of every entry in the directory (all mounts' entries)."""
        out = []
        for sub in os.scandir(self.directory):
            if not sub.is_dir(follow_symlinks=False):
                continue
            for e in os.scandir(sub.path):
                if e.name.startswith(tempfiles.TMP_PREFIX):
                    continue
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue                # removed by another mount meanwhile
                out.append((st.st_mtime, st.st_size, e.path))
        return out

    def _evict(self) -> None:
        if not self._evicting.acquire(blocking=False):
            return                          # another thread is already at it
        try:
            entries = sorted(self._entries())
            total = sum(size for _, size, _ in entries)
            target = int(self.budget * LOW_WATER)
            for _, size, path in entries:
                if total <= target:
                    break
                _unlink(path)
                total -= size
            with self._lock:
                self._used = total
        finally:
            self._evicting.release()

    @property
    def used(self) -> int:
        return self._used


def _checked(path: str, ok: bool) -> bool:
    """Settle an entry just read: a damaged one is dropped (with a log line), a good one
    marked most recently used. Returns ok."""
    if not ok:
        log.warning("disk cache entry %s is damaged: dropped, fetching again", path)
        _unlink(path)
        return False
    try:
        os.utime(path)              # most recently used
    except OSError:
        pass
    return True


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
