"""FUSE operations (the fusepy/mfusepy Operations API) over a backing tree written by
`fpfs compress`: X.fpz is shown as X with its original size and bytes, everything else
passes through. Read-only. Any failure to produce correct bytes is EIO plus a log line."""
from __future__ import annotations

import ctypes
import errno
import itertools
import json
import logging
import os
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Optional, Tuple

from .. import SUFFIX
from ..cache import ChunkCache
from ..container import is_container
from ..errors import FpfsError
from ..packed_file import PackedFile
from .fuse_lib import load

log = logging.getLogger("fpfs.mount")
fuse = load()
FuseOSError = fuse.FuseOSError

STATUS_NAME = ".fpfs-status"       # virtual file read by `fpfs status`; not listed
STATUS_SIZE = 1 << 16
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


class _Handle:
    __slots__ = ("packed", "fd")

    def __init__(self, packed: Optional[PackedFile] = None, fd: int = -1):
        self.packed = packed
        self.fd = fd


class FpfsOperations(fuse.Operations):
    use_ns = True

    def __init__(self, backing: str, cache_bytes: int, threads: int):
        self.root = os.path.realpath(backing)
        self.cache = ChunkCache(cache_bytes)
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fpfs-prefetch")
        self._files: Dict[str, PackedFile] = {}      # backing path -> open container
        self._handles: Dict[int, _Handle] = {}
        self._opened: Dict[str, tuple] = {}           # mount path -> identity at last open
        self._attrs: Dict[str, tuple] = {}            # mount path -> identity at last getattr
        self._next_fh = itertools.count(1)
        self._lock = threading.Lock()
        self.started = time.time()
        self.bytes_served = 0
        self.reads = 0
        self.read_errors = 0

    # -- paths -------------------------------------------------------------------------
    def _backing(self, path: str) -> str:
        """Backing path for a mount path. The kernel resolves symlinks itself, so a path
        reaching us never crosses one; the check still refuses anything outside the root."""
        rel = path.lstrip("/")
        parent = os.path.realpath(os.path.join(self.root, os.path.dirname(rel)))
        if parent != self.root and not parent.startswith(self.root + os.sep):
            raise FuseOSError(errno.EACCES)
        name = os.path.basename(rel)
        return os.path.join(parent, name) if name else parent

    def _resolve(self, path: str) -> Tuple[str, bool]:
        """(backing path, is_container) for a mount path, or ENOENT."""
        real = self._backing(path)
        if os.path.lexists(real):
            return real, False
        packed = real + SUFFIX
        if os.path.basename(real) and _is_regular(packed) and is_container(packed):
            return packed, True
        raise FuseOSError(errno.ENOENT)

    def _packed(self, real: str) -> PackedFile:
        """The open container for real, reopened if the backing file was replaced, so a
        changed file is never served as a mix of old and new chunks (cache keys carry the
        file identity too)."""
        st = os.stat(real)
        ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            pf = self._files.get(real)
            if pf is not None and pf.identity == ident:
                return pf
        try:
            pf = PackedFile(real, self.cache, self.pool)
        except FpfsError as exc:
            log.error("cannot open %s: %s", real, exc)
            raise FuseOSError(errno.EIO) from None
        with self._lock:
            self._files[real] = pf
        return pf

    # -- metadata ----------------------------------------------------------------------
    def getattr(self, path, fh=None):
        if path == "/" + STATUS_NAME:
            now = time.time_ns()
            return {"st_mode": stat.S_IFREG | 0o444, "st_nlink": 1, "st_size": STATUS_SIZE,
                    "st_mtime": now, "st_atime": now, "st_ctime": now,
                    "st_uid": os.getuid(), "st_gid": os.getgid()}
        real, packed = self._resolve(path)
        st = os.lstat(real)
        attrs = {key: getattr(st, key) for key in (
            "st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_ino")}
        for key in ("st_atime", "st_mtime", "st_ctime"):
            attrs[key] = getattr(st, key + "_ns")
        if packed:
            pf = self._packed(real)
            attrs["st_size"] = pf.size
            with self._lock:
                self._attrs[path] = pf.identity
            attrs["st_mode"] &= ~0o222          # read-only view
            attrs["st_blocks"] = st.st_blocks
        return attrs

    def readdir(self, path, fh):
        real, packed = self._resolve(path)
        if packed or not os.path.isdir(real) or os.path.islink(real):
            raise FuseOSError(errno.ENOTDIR)
        names = os.listdir(real)
        present = set(names)
        shown = [".", ".."]
        for name in names:
            if name.startswith(".fpfs-tmp-"):
                continue            # an interrupted writer's temporary file
            if name.endswith(SUFFIX) and name[:-len(SUFFIX)] and \
                    name[:-len(SUFFIX)] not in present and is_container(os.path.join(real, name)):
                shown.append(name[:-len(SUFFIX)])
            else:
                shown.append(name)
        return shown

    def readlink(self, path):
        real, _ = self._resolve(path)
        return os.readlink(real)

    def statfs(self, path):
        sv = os.statvfs(self.root)
        return {key: getattr(sv, key) for key in (
            "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files",
            "f_flag", "f_frsize", "f_namemax")}

    def access(self, path, amode):
        if amode & os.W_OK:
            raise FuseOSError(errno.EROFS)
        if path != "/" + STATUS_NAME:
            self._resolve(path)
        return 0

    # -- reading -----------------------------------------------------------------------
    def open(self, path, fi):
        if fi.flags & WRITE_FLAGS:
            raise FuseOSError(errno.EROFS)
        ident = None
        if path == "/" + STATUS_NAME:
            fi.direct_io = 1            # content changes on every read
            handle = _Handle()
        else:
            real, packed = self._resolve(path)
            if packed:
                handle = _Handle(packed=self._packed(real))
                ident = handle.packed.identity
                with self._lock:
                    stale = self._attrs.get(path, ident) != ident
                    self._attrs[path] = ident
                if stale:
                    # The kernel caches the size it got from getattr for attr_timeout; a
                    # replaced container of another size would be read to the old size
                    # (zero-filled past the new end). Make it ask again.
                    _invalidate_kernel_attrs(path)
            else:
                handle = _Handle(fd=os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC))
                st = os.fstat(handle.fd)
                ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            # Keep the kernel's page cache across opens only while the backing file is the
            # one it was filled from; a replaced file (new inode, size or mtime) drops it
            # here, at open, so a reader never gets cached old pages mixed with new ones.
            # (libfuse's auto_cache cannot do this: it rechecks only after attr_timeout.)
            fi.keep_cache = int(ident is not None and self._opened.get(path) == ident)
            if ident is not None:
                self._opened[path] = ident
            fh = next(self._next_fh)
            self._handles[fh] = handle
        fi.fh = fh
        return 0

    def read(self, path, size, offset, fi):
        handle = self._handles.get(fi.fh)
        if handle is None:
            raise FuseOSError(errno.EBADF)
        if handle.packed is not None:
            try:
                segments = handle.packed.pread_segments(offset, size)
            except FpfsError as exc:
                self.read_errors += 1
                log.error("read %s offset %d size %d: %s", path, offset, size, exc)
                raise FuseOSError(errno.EIO) from None
            except OSError as exc:
                self.read_errors += 1
                log.error("read %s offset %d: backing file: %s", path, offset, exc)
                raise FuseOSError(errno.EIO) from None
            self.reads += 1
            data = _fuse_buffer(segments)
            self.bytes_served += len(data)
            return data
        if handle.fd >= 0:
            data = os.pread(handle.fd, size, offset)
        else:
            data = self._status_bytes()[offset:offset + size]
        self.reads += 1
        self.bytes_served += len(data)
        return data

    def release(self, path, fi):
        with self._lock:
            handle = self._handles.pop(fi.fh, None)
        if handle is not None and handle.fd >= 0:
            os.close(handle.fd)
        return 0

    # -- status ------------------------------------------------------------------------
    def status(self) -> dict:
        up = time.time() - self.started
        d = {"backing": self.root, "uptime_seconds": up, "bytes_served": self.bytes_served,
             "reads": self.reads, "read_errors": self.read_errors, "open_files": len(self._files),
             "cache": self.cache.snapshot(), "pid": os.getpid()}
        try:
            with open("/proc/self/statm") as f:
                d["rss_bytes"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
        return d

    def _status_bytes(self) -> bytes:
        return (json.dumps(self.status()) + "\n").encode().ljust(STATUS_SIZE)

    def destroy(self, path):
        self.pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            for pf in self._files.values():
                pf.close()
            self._files.clear()


def _invalidate_kernel_attrs(path: str) -> None:
    """fuse_invalidate_path for path, from inside a request (needs its fuse context).
    Safe in open(): libfuse takes only its node-table lock, the kernel no inode lock."""
    lib = getattr(fuse, "_libfuse", None)
    func = getattr(lib, "fuse_invalidate_path", None) if lib is not None else None
    if func is None:
        return
    try:
        ctx = lib.fuse_get_context()
        res = func(ctypes.c_void_p(ctx.contents.fuse), path.encode())
        if res not in (0, -errno.ENOENT):
            log.info("fuse_invalidate_path(%s) returned %d", path, res)
    except Exception as exc:                # noqa: BLE001 - best effort, never fail open()
        log.info("fuse_invalidate_path(%s) failed: %s", path, exc)


def _is_regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _fuse_buffer(segments):
    """What read() hands libfuse: a ctypes view into the decoded chunk when the request lies
    in one chunk (a per-request 1 MiB bytes allocation costs up to 3x the read), else the
    joined bytes."""
    if len(segments) == 1:
        buf, start, stop = segments[0]
        if isinstance(buf, bytearray) and stop > start:
            return (ctypes.c_char * (stop - start)).from_buffer(buf, start)
    return b"".join(memoryview(buf)[start:stop] for buf, start, stop in segments)
