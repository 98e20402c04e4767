"""FUSE operations (the fusepy/mfusepy Operations API) over a backing tree written by
`fpfs compress`: X.fpz is shown as X with its original size and bytes, everything else
passes through. Read-only unless writable (then staging.py stores what is written).
Any failure to produce correct bytes is EIO plus a log line."""
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
from typing import Callable, Dict, List, Optional, Tuple

from .. import SUFFIX
from ..bases import BASES_DIR
from ..cache import ChunkCache
from ..container import is_container
from ..errors import FpfsError
from ..packed_file import DEFAULT_PREFETCH, PackedFile
from ..store import StoreObject
from .fuse_lib import load
from ..tempfiles import TMP_PREFIX
from .staging import StagedFile, StagingArea

log = logging.getLogger("fpfs.mount")
fuse = load()
FuseOSError = fuse.FuseOSError

STATUS_NAME = ".fpfs-status"       # virtual file read by `fpfs status`; not listed
STATUS_SIZE = 1 << 16
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


class _Handle:
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
                 prefetch: int = DEFAULT_PREFETCH):
        self.root = root
        self.staging: Optional[StagingArea] = None
        self.cache = ChunkCache(cache_bytes)
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fpfs-prefetch")
        self.prefetch = prefetch
        self._files: Dict[str, object] = {}           # backing name -> open container
        self._handles: Dict[int, _Handle] = {}
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
        return self._add_handle(_Handle(), fi)

    def _add_handle(self, handle: _Handle, fi, keep_cache: bool = False) -> int:
        with self._lock:
            fh = next(self._next_fh)
            self._handles[fh] = handle
        fi.fh = fh
        fi.keep_cache = int(keep_cache)
        return 0

    def _open_handle(self, path: str, handle: _Handle, ident, fi) -> int:
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


class FpfsOperations(ReadOperations):
    """A local backing tree (read-only, or --writable through staging.py)."""

    def __init__(self, backing: str, cache_bytes: int, threads: int, writable: bool = False,
                 prefetch: int = DEFAULT_PREFETCH):
        super().__init__(os.path.realpath(backing), cache_bytes, threads, prefetch)
        self.staging = StagingArea(self.root) if writable else None
        if self.staging is not None:
            self.staging.clean_leftovers()

    # -- paths -------------------------------------------------------------------------
    def _backing(self, path: str) -> str:
        """Backing path for a mount path. The kernel resolves symlinks itself, so a path
        reaching us never crosses one; the check still refuses anything outside the root."""
        rel = path.lstrip("/")
        if rel.split("/", 1)[0] == BASES_DIR:
            raise FuseOSError(errno.ENOENT)     # the base store is fpfs's, not the user's
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
            pf = PackedFile(real, self.cache, self.pool, self.prefetch, root=self.root)
        except FpfsError as exc:
            log.error("cannot open %s: %s", real, exc)
            raise FuseOSError(errno.EIO) from None
        with self._lock:
            self._files[real] = pf
        return pf

    # -- metadata ----------------------------------------------------------------------
    def getattr(self, path, fh=None):
        if path == "/" + STATUS_NAME:
            return self._status_attrs()
        staged = self.staging.get(self._backing(path)) if self.staging else None
        if staged is not None:                 # being written: show the staged content
            real, packed = staged.path, False
        else:
            real, packed = self._resolve(path)
        st = os.lstat(real)
        attrs = {key: getattr(st, key) for key in (
            "st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_ino")}
        for key in ("st_atime", "st_mtime", "st_ctime"):
            attrs[key] = getattr(st, key + "_ns")
        if packed:
            pf = self._packed(real)
            attrs["st_size"] = pf.size
            self._saw_attrs(path, pf.identity)
            if self.staging is None:
                attrs["st_mode"] &= ~0o222      # read-only view
            attrs["st_blocks"] = st.st_blocks  # du through the mount shows the saving
        return attrs

    def readdir(self, path, fh):
        real, packed = self._resolve(path)
        if packed or not os.path.isdir(real) or os.path.islink(real):
            raise FuseOSError(errno.ENOTDIR)
        return shown_names(os.listdir(real), real == self.root,
                           lambda name: is_container(os.path.join(real, name)))

    def readlink(self, path):
        real, _ = self._resolve(path)
        return os.readlink(real)

    def statfs(self, path):
        sv = os.statvfs(self.root)
        return {key: getattr(sv, key) for key in (
            "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files",
            "f_flag", "f_frsize", "f_namemax")}

    # -- reading -----------------------------------------------------------------------
    def open(self, path, fi):
        if fi.flags & WRITE_FLAGS:
            return self._open_for_write(path, fi)
        if path == "/" + STATUS_NAME:
            return self._open_status(fi)
        real, packed = self._resolve(path)
        if packed:
            handle = _Handle(packed=self._packed(real))
            ident = handle.packed.identity
        else:
            handle = _Handle(fd=os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC))
            st = os.fstat(handle.fd)
            ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        return self._open_handle(path, handle, ident, fi)

    # -- writing (--writable) ------------------------------------------------------------
    def _writable(self) -> StagingArea:
        if self.staging is None:
            raise FuseOSError(errno.EROFS)
        return self.staging

    def _open_for_write(self, path, fi):
        staging = self._writable()
        target = self._backing(path)
        real, packed = self._resolve(path)
        if os.path.isdir(real) or os.path.islink(real):
            raise FuseOSError(errno.EISDIR if os.path.isdir(real) else errno.EPERM)
        staged = staging.open(target, real, packed, bool(fi.flags & os.O_TRUNC))
        with self._lock:
            self._opened.pop(path, None)         # its page cache is stale after this write
        return self._add_handle(_Handle(staged=staged), fi)

    def create(self, path, mode, fi):
        staged = self._writable().open(self._backing(path), None, False, True, mode)
        with self._lock:
            self._opened.pop(path, None)
        return self._add_handle(_Handle(staged=staged), fi)

    def write(self, path, data, offset, fi):
        handle = self._handles.get(fi.fh)
        if handle is None or handle.staged is None:
            raise FuseOSError(errno.EBADF)
        handle.staged.dirty = True
        return os.pwrite(handle.fd, data, offset)

    def truncate(self, path, length, fh=None):
        staging = self._writable()
        staged = staging.get(self._backing(path))
        if staged is not None:
            os.ftruncate(staged.fd, length)
            staged.dirty = True
            return 0
        real, packed = self._resolve(path)
        staged = staging.open(self._backing(path), real, packed, length == 0)
        try:
            os.ftruncate(staged.fd, length)
            staged.dirty = True
            staging.commit(staged)
        finally:
            staging.release(staged)
        return 0

    def flush(self, path, fi):
        """close() returns what flush returns: store the file here, while the writer can
        still be told that it failed (ENOSPC, ...); release() cannot report errors."""
        handle = self._handles.get(fi.fh)
        if handle is None or handle.staged is None:
            return 0
        staged = handle.staged
        if staged.dirty and staged.refs == 1:
            try:
                self.staging.commit(staged)
            except FpfsError as exc:
                log.error("storing %s failed: %s", path, exc)
                raise FuseOSError(errno.EIO) from None
            except OSError as exc:
                log.error("storing %s failed: %s (previous version kept)", path, exc)
                raise FuseOSError(exc.errno or errno.EIO) from None
        return 0

    def fsync(self, path, datasync, fi):
        handle = self._handles.get(fi.fh)
        if handle is not None and handle.fd >= 0:
            os.fsync(handle.fd)
        return 0

    def unlink(self, path):
        self._writable()
        real, _ = self._resolve(path)
        os.unlink(real)
        return 0

    def mkdir(self, path, mode):
        self._writable()
        os.mkdir(self._backing(path), mode)
        return 0

    def rmdir(self, path):
        self._writable()
        os.rmdir(self._backing(path))
        return 0

    def symlink(self, target, source):
        """Create the link `target` pointing to `source` (fusepy's naming)."""
        self._writable()
        os.symlink(source, self._backing(target))
        return 0

    def rename(self, old, new):
        staging = self._writable()
        dest = self._backing(new)
        moved = staging.move(self._backing(old), dest)
        try:
            real, packed = self._resolve(old)
        except FuseOSError:
            if moved:                          # written, never stored yet: nothing to move
                return 0
            raise
        if packed:
            os.replace(real, dest + SUFFIX)
            _remove_regular(dest)              # the new name's plain older version
        else:
            os.replace(real, dest)
            if not os.path.isdir(dest):
                _remove_regular(dest + SUFFIX)
        with self._lock:
            self._opened.pop(new, None)
        return 0

    def chmod(self, path, mode):
        self._writable()
        real, _ = self._resolve(path)
        os.chmod(real, mode & 0o7777)
        return 0

    def chown(self, path, uid, gid):
        self._writable()
        real, _ = self._resolve(path)
        os.chown(real, uid, gid, follow_symlinks=False)
        return 0

    def utimens(self, path, times=None):
        self._writable()
        real, _ = self._resolve(path)
        os.utime(real, ns=times, follow_symlinks=False) if times else \
            os.utime(real, follow_symlinks=False)
        return 0

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


def _remove_regular(path: str) -> None:
    if _is_regular(path):
        os.unlink(path)


def _is_regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False
