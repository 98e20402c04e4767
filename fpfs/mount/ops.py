"""FUSE operations (the fusepy/mfusepy Operations API) that every fpfs mount shares: the
read path, open-file handles and the status file (ReadOperations). Each backing
subclasses them: a local tree (local_ops.py; write_ops.py adds --writable) and a tree in
an object store (remote_ops.py)."""
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
from typing import Callable, Dict, List, Optional

from .. import _kernels
from ..bases import BASES_DIR
from ..cache import ChunkCache
from ..container import SUFFIX
from ..errors import FpfsError
from ..packed_file import PackedFile
from ..readahead import DEFAULT_WINDOW, ReadAhead
from ..store import StoreObject
from ..tempfiles import TMP_PREFIX
from .fuse_lib import load
from .staging import StagedFile, StagingArea

log = logging.getLogger("fpfs.mount")
fuse = load()
FuseOSError = fuse.FuseOSError

STATUS_NAME = ".fpfs-status"       # virtual file read by `fpfs status`; not listed
STATUS_SIZE = 1 << 16
# st_blksize of every file shown: cp, rsync and stdio size their buffers by it. A 1 MiB
# write(2) is one FUSE request (libfuse's max_write), a 128 KiB one (cp's default) is eight
# times the round trips, each with the kernel's GETXATTR security.capability.
IO_BLOCK = 1 << 20
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


class Handle:
    __slots__ = ("packed", "fd", "staged", "obj")

    def __init__(self, packed: Optional[PackedFile] = None, fd: int = -1,
                 staged: Optional[StagedFile] = None, obj: Optional[StoreObject] = None):
        self.packed = packed
        self.fd = staged.fd if staged is not None else fd
        self.staged = staged
        self.obj = obj              # a plain file of a remote tree


def shown_names(names: List[str], at_root: bool, is_container: Callable[[str], bool]) -> List[str]:
    """What readdir lists for a backing directory's names: NAME.fpz as NAME (unless a NAME
    is there too), without fpfs's temporary files or, at the top, the base store."""
    present = set(names)
    shown = [".", ".."]
    for name in names:
        if name.startswith(TMP_PREFIX) or (name == BASES_DIR and at_root):
            continue
        stem = name[:-len(SUFFIX)] if name.endswith(SUFFIX) else ""
        shown.append(stem if stem and stem not in present and is_container(name) else name)
    return shown


class ReadOperations(fuse.Operations):
    """What every fpfs mount does alike, whatever its backing: open-file handles, reads
    (chunks decoded straight into libfuse's buffer; any failure EIO plus a log line), the
    kernel page cache kept only while a file is unchanged, and the status file."""
    use_ns = True

    def __init__(self, root: str, cache_bytes: int, threads: int,
                 decode_ahead: int = DEFAULT_WINDOW):
        self.root = root
        self.staging: Optional[StagingArea] = None
        self.cache = ChunkCache(cache_bytes)
        self.readahead = ReadAhead(threads, decode_ahead)
        self._files: Dict[str, object] = {}           # backing name -> open container
        self._handles: Dict[int, Handle] = {}
        self._opened: Dict[str, tuple] = {}           # mount path -> identity at last open
        self._attrs: Dict[str, tuple] = {}            # mount path -> identity at last getattr
        self._next_fh = itertools.count(1)
        self._lock = threading.Lock()
        self.started = time.time()
        self.bytes_served = 0
        self.reads = 0
        self.read_errors = 0

    def access(self, path, amode):
        if amode & os.W_OK and self.staging is None:
            raise FuseOSError(errno.EROFS)
        if path != "/" + STATUS_NAME:
            self._resolve(path)         # every backing's own name lookup
        return 0

    def _status_attrs(self) -> dict:
        now = time.time_ns()
        return {"st_mode": stat.S_IFREG | 0o444, "st_nlink": 1, "st_size": STATUS_SIZE,
                "st_mtime": now, "st_atime": now, "st_ctime": now,
                "st_uid": os.getuid(), "st_gid": os.getgid()}

    def _saw_attrs(self, path: str, ident) -> None:
        with self._lock:
            self._attrs[path] = ident

    def _open_status(self, fi) -> int:
        fi.direct_io = 1            # content changes on every read
        return self._add_handle(Handle(), fi)

    def _add_handle(self, handle: Handle, fi, keep_cache: bool = False) -> int:
        with self._lock:
            fh = next(self._next_fh)
            self._handles[fh] = handle
        fi.fh = fh
        fi.keep_cache = int(keep_cache)
        return 0

    def _open_handle(self, path: str, handle: Handle, ident, fi) -> int:
        """Register an open file whose content is identified by ident."""
        with self._lock:
            # The kernel caches the size it got from getattr for attr_timeout; a replaced
            # container of another size would be read to the old size (zero-filled past
            # the new end). Make it ask again.
            stale = handle.packed is not None and self._attrs.get(path, ident) != ident
            if handle.packed is not None:
                self._attrs[path] = ident
            # Keep the kernel's page cache across opens only while the backing file is the
            # one it was filled from; a replaced file (new inode, size or mtime; new ETag)
            # drops it here, at open, so a reader never gets cached old pages mixed with
            # new ones. (libfuse's auto_cache rechecks only after attr_timeout.)
            keep = self._opened.get(path) == ident
            self._opened[path] = ident
        if stale:
            _invalidate_kernel_attrs(path)
        return self._add_handle(handle, fi, keep)

    def read(self, path, size, offset, fi):
        """The fusepy-style read (returns bytes); the daemon uses read_into instead."""
        buf = ctypes.create_string_buffer(size)
        n = self.read_into(path, ctypes.addressof(buf), size, offset, fi)
        return buf.raw[:n]

    def read_into(self, path, address: int, size: int, offset: int, fi) -> int:
        """Fill libfuse's buffer at address with up to size bytes at offset: whole chunks are
        decoded straight into it, no per-request allocation. Returns the byte count; a chunk
        that fails its checks is EIO (the partly filled buffer is never returned)."""
        handle = self._handles.get(fi.fh)
        if handle is None:
            raise FuseOSError(errno.EBADF)
        if handle.packed is not None or handle.obj is not None:
            out = (ctypes.c_char * size).from_address(address)
            try:
                n = handle.packed.read_into(offset, out) if handle.packed is not None \
                    else _read_object(handle.obj, offset, memoryview(out).cast("B"))
            except (FpfsError, OSError) as exc:
                self.read_errors += 1
                log.error("read %s offset %d size %d: %s", os.fsdecode(path), offset, size, exc)
                self._read_failed(exc)
                raise FuseOSError(errno.EIO) from None
        elif handle.fd >= 0:
            n = os.preadv(handle.fd, [(ctypes.c_char * size).from_address(address)], offset)
        else:
            data = self._status_bytes()[offset:offset + size]
            ctypes.memmove(address, data, len(data))
            n = len(data)
        self.reads += 1
        self.bytes_served += n
        return n

    def _read_failed(self, exc: Exception) -> None:
        """Hook: what a failed read tells the backing (a remote tree reloads its listing)."""

    def release(self, path, fi):
        with self._lock:
            handle = self._handles.pop(fi.fh, None)
        if handle is None:
            return 0
        if handle.staged is not None:
            self.staging.release(handle.staged)
        elif handle.fd >= 0:
            os.close(handle.fd)
        return 0

    def status(self) -> dict:
        up = time.time() - self.started
        d = {"backing": self.root, "uptime_seconds": up, "bytes_served": self.bytes_served,
             "reads": self.reads, "read_errors": self.read_errors, "open_files": len(self._files),
             "cache": self.cache.snapshot(), "pid": os.getpid(),
             "decoder": _kernels.simd_kernel()}
        try:
            with open("/proc/self/statm") as f:
                d["rss_bytes"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
        return d

    def _status_bytes(self) -> bytes:
        return (json.dumps(self.status()) + "\n").encode().ljust(STATUS_SIZE)

    def destroy(self, path):
        self.readahead.shutdown()
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


def _read_object(obj: StoreObject, offset: int, out: memoryview) -> int:
    """A plain file of a remote tree: one ranged GET, bounded by the object's size."""
    size = max(0, min(len(out), obj.size - offset))
    return obj.read_into(offset, out[:size]) if size else 0
