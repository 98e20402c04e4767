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
import uuid
from typing import Callable, Dict, List, Optional, Tuple

from .. import _kernels
from ..bases import BASES_DIR
from ..cache import ChunkCache
from ..container import SUFFIX, is_container
from ..errors import FpfsError
from ..packed_file import PackedFile
from ..readahead import DEFAULT_WINDOW, ReadAhead
from ..store import StoreObject
from .fuse_lib import load
from ..tempfiles import TMP_PREFIX
from .staging import Owner, StagedFile, StagingArea

log = logging.getLogger("fpfs.mount")
fuse = load()
FuseOSError = fuse.FuseOSError

STATUS_NAME = ".fpfs-status"       # virtual file read by `fpfs status`; not listed
STATUS_SIZE = 1 << 16
HIDDEN_PREFIX = ".fuse_hidden"     # libfuse's name for an open file that was unlinked
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
                 decode_ahead: int = DEFAULT_WINDOW):
        self.root = root
        self.staging: Optional[StagingArea] = None
        self.cache = ChunkCache(cache_bytes)
        self.readahead = ReadAhead(threads, decode_ahead)
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


class FpfsOperations(ReadOperations):
    """A local backing tree (read-only, or --writable through staging.py). Writable, it is
    a POSIX filesystem over the backing directory: every operation is done on the backing
    file (so the backing filesystem keeps ctime/mtime/nlink/permissions as a local one
    would), a file being written is shown from its staging file, a compressed file X.fpz
    is X to every operation, and new nodes belong to the calling user when the daemon is
    root."""

    def __init__(self, backing: str, cache_bytes: int, threads: int, writable: bool = False,
                 decode_ahead: int = DEFAULT_WINDOW):
        super().__init__(os.path.realpath(backing), cache_bytes, threads, decode_ahead)
        self.staging = StagingArea(self.root) if writable else None
        self.name_max = os.statvfs(self.root).f_namemax
        self._hidden: Dict[str, _Hidden] = {}   # libfuse's .fuse_hidden name -> the file
        if self.staging is not None:
            self.staging.clean_leftovers()

    # -- paths -------------------------------------------------------------------------
    def _backing(self, path: str) -> str:
        """Backing path for a mount path. The kernel resolves symlinks itself, so a path
        reaching us never crosses one; the check still refuses anything outside the root."""
        rel = path.lstrip("/")
        if rel.split("/", 1)[0] == BASES_DIR:
            raise FuseOSError(errno.ENOENT)     # the base store is fpfs's, not the user's
        if any(len(os.fsencode(part)) > self.name_max for part in rel.split("/")):
            raise FuseOSError(errno.ENAMETOOLONG)
        parent = os.path.realpath(os.path.join(self.root, os.path.dirname(rel)))
        if parent != self.root and not parent.startswith(self.root + os.sep):
            raise FuseOSError(errno.EACCES)
        name = os.path.basename(rel)
        return os.path.join(parent, name) if name else parent

    def _resolve(self, path: str) -> Tuple[str, bool]:
        """(backing path, is_container) for a mount path, or ENOENT."""
        return self._resolve_backing(self._backing(path))

    def _resolve_backing(self, real: str) -> Tuple[str, bool]:
        if os.path.lexists(real):
            return real, False
        packed = real + SUFFIX
        if os.path.basename(real) and _is_regular(packed) and is_container(packed):
            return packed, True
        raise FuseOSError(errno.ENOENT)

    def _lookup(self, path: str) -> Tuple[Optional[str], bool]:
        """(backing path, is_container) of what path names now, or (None, False)."""
        try:
            return self._resolve(path)
        except FuseOSError as exc:
            if exc.errno == errno.ENOENT:
                return None, False
            raise

    def _staged(self, path: str) -> Optional[StagedFile]:
        return self.staging.get(self._backing(path)) if self.staging is not None else None

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
            pf = PackedFile(real, self.cache, self.readahead, root=self.root)
        except FpfsError as exc:
            log.error("cannot open %s: %s", real, exc)
            raise FuseOSError(errno.EIO) from None
        with self._lock:
            self._files[real] = pf
        return pf

    def _handle(self, fi) -> _Handle:
        handle = self._handles.get(fi.fh) if fi is not None else None
        if handle is None:
            raise FuseOSError(errno.EBADF)
        return handle

    def _meta_targets(self, path: Optional[str], fi=None) -> List[str]:
        """The backing files a metadata change (chmod, chown, utimens, xattrs) applies to:
        a file being written has its staging file (what is stored at close) and its
        current version (kept if nothing is written after all). path is None when libfuse
        has no name for an open file: then the handle's own file."""
        if path is None:
            handle = self._handle(fi)
            if handle.staged is not None:
                return [handle.staged.path]
            if handle.packed is not None:
                return [handle.packed.path]
            return [_PROC_FD + str(handle.fd)]
        hidden = self._hidden_file(path)
        if hidden is not None:
            return [hidden.staged.path if hidden.staged is not None else hidden.path]
        staged = self._staged(path)
        targets = [staged.path] if staged is not None else []
        real, _ = self._lookup(path)
        if real is not None:
            targets.append(real)
        if not targets:
            raise FuseOSError(errno.ENOENT)
        return targets

    # -- ownership of new nodes --------------------------------------------------------
    def _new_owner(self, parent: str) -> Optional[Owner]:
        """(uid, gid) a new node gets: the caller's (from the FUSE request) when the
        daemon may give it, the group of a setgid parent directory as POSIX says."""
        if os.geteuid() != 0:
            return None
        try:
            uid, gid, _ = fuse.fuse_get_context()
        except ValueError:                     # called outside a FUSE request
            return None
        st = os.stat(parent)
        if st.st_mode & stat.S_ISGID:
            gid = st.st_gid
        return uid, gid

    def _own(self, real: str, mode: Optional[int] = None) -> None:
        """Give a node the daemon just made to the caller, with exactly the mode asked
        for (chown clears set-id bits of non-directories, so they are set again after)."""
        owner = self._new_owner(os.path.dirname(real))
        if owner is not None:
            os.chown(real, owner[0], owner[1], follow_symlinks=False)
        if mode is None:
            return
        # The kernel applied the caller's umask to mode already; the daemon's own umask
        # must not take more bits away (the daemon's umask stays, for fpfs's own files).
        st = os.lstat(real)
        if stat.S_ISDIR(st.st_mode):           # mkdir keeps a setgid parent's bit
            want = (mode & 0o1777) | (st.st_mode & stat.S_ISGID)
        else:
            want = mode & 0o7777
        if stat.S_IMODE(st.st_mode) != want:
            os.chmod(real, want)

    # -- metadata ----------------------------------------------------------------------
    def getattr(self, path, fh=None):
        handle = self._handles.get(fh.fh) if fh is not None else None
        if path is None or (handle is not None and handle.packed is None and handle.fd >= 0):
            # fstat (or the kernel checking an open file's size): the open file's own
            # attributes, even when its name was removed or replaced meanwhile
            return self._handle_attrs(self._handle(fh))
        if path == "/" + STATUS_NAME:
            return self._status_attrs()
        hidden = self._hidden_file(path)
        if hidden is not None:
            return hidden.attrs()
        staged = self._staged(path)
        if staged is not None:                 # being written: show the staged content
            return _attrs(os.fstat(staged.fd))
        real, packed = self._resolve(path)
        st = os.lstat(real)
        attrs = _attrs(st)
        if packed:
            pf = self._packed(real)
            attrs["st_size"] = pf.size
            self._saw_attrs(path, pf.identity)
            if self.staging is None:
                attrs["st_mode"] &= ~0o222      # read-only view
            attrs["st_blocks"] = st.st_blocks  # du through the mount shows the saving
        return attrs

    def _handle_attrs(self, handle: _Handle) -> dict:
        if handle.packed is not None:
            attrs = _attrs(os.stat(handle.packed.path))
            attrs["st_size"] = handle.packed.size
            return attrs
        if handle.fd < 0:
            return self._status_attrs()
        return _attrs(os.fstat(handle.fd))

    def access(self, path, amode):
        if amode & os.W_OK and self.staging is None:
            raise FuseOSError(errno.EROFS)
        if path != "/" + STATUS_NAME and self._staged(path) is None:
            self._resolve(path)
        return 0

    def readdir(self, path, fh):
        real, packed = self._resolve(path)
        if packed or not os.path.isdir(real) or os.path.islink(real):
            raise FuseOSError(errno.ENOTDIR)
        entries = {e.name: e for e in os.scandir(real)}
        names = shown_names(list(entries), real == self.root,
                            lambda name: is_container(os.path.join(real, name)))
        listed = [(name, _dirent(entries, name, real), 0) for name in names]
        if self.staging is not None:           # created, not stored yet
            present = set(names)
            listed += [(name, _attrs(os.fstat(staged.fd)), 0)
                       for name, staged in self.staging.names_in(real).items()
                       if name not in present]
        return listed

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
        staged = self._staged(path)
        if staged is not None:                 # the content written so far
            fd = os.open(staged.path, os.O_RDONLY | os.O_CLOEXEC)
            st = os.fstat(fd)
            return self._open_handle(path, _Handle(fd=fd), _identity(st), fi)
        real, packed = self._resolve(path)
        if packed:
            handle = _Handle(packed=self._packed(real))
            ident = handle.packed.identity
        else:
            handle = _Handle(fd=os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC))
            ident = _identity(os.fstat(handle.fd))
        return self._open_handle(path, handle, ident, fi)

    # -- writing (--writable) ------------------------------------------------------------
    def _writable(self) -> StagingArea:
        if self.staging is None:
            raise FuseOSError(errno.EROFS)
        return self.staging

    def _open_for_write(self, path, fi):
        staging = self._writable()
        target = self._backing(path)
        truncate = bool(fi.flags & os.O_TRUNC)
        staged = staging.get(target)
        if staged is not None:                 # join the writers of a file being written
            staged = staging.open(target, staged.path, False, truncate)
        else:
            real, packed = self._resolve(path)
            mode = os.lstat(real).st_mode
            if not stat.S_ISREG(mode):
                raise FuseOSError(errno.EISDIR if stat.S_ISDIR(mode) else errno.EPERM)
            staged = staging.open(target, real, packed, truncate)
        with self._lock:
            self._opened.pop(path, None)         # its page cache is stale after this write
        return self._add_handle(_Handle(staged=staged), fi)

    def create(self, path, mode, fi):
        staging = self._writable()
        target = self._backing(path)
        staged = staging.open(target, None, False, True, mode,
                              self._new_owner(os.path.dirname(target)))
        with self._lock:
            self._opened.pop(path, None)
        return self._add_handle(_Handle(staged=staged), fi)

    def write(self, path, data, offset, fi):
        handle = self._handles.get(fi.fh)
        if handle is None or handle.staged is None:
            raise FuseOSError(errno.EBADF)
        handle.staged.dirty = True
        n = os.pwrite(handle.fd, data, offset)
        self.staging.wrote(handle.staged, offset, n)
        return n

    def truncate(self, path, length, fh=None):
        staging = self._writable()
        if fh is not None and self._handles.get(fh.fh) is not None:     # ftruncate
            handle = self._handle(fh)
            if handle.staged is None:
                raise FuseOSError(errno.EBADF if handle.fd >= 0 else errno.EINVAL)
            os.ftruncate(handle.fd, length)
            handle.staged.dirty = True
            self.staging.changed(handle.staged, "truncated")
            return 0
        staged = self._staged(path)
        if staged is not None:
            os.ftruncate(staged.fd, length)
            staged.dirty = True
            self.staging.changed(staged, "truncated")
            return 0
        real, packed = self._resolve(path)
        if not packed and not _is_regular(real):
            raise FuseOSError(errno.EISDIR if os.path.isdir(real) else errno.EINVAL)
        staged = staging.open(self._backing(path), real, packed, length == 0)
        try:
            os.ftruncate(staged.fd, length)
            staged.dirty = True
            staging.commit(staged)
        finally:
            staging.release(staged)
        return 0

    def fallocate(self, path, mode, offset, size, fh):
        handle = self._handle(fh)
        if handle.staged is None:
            raise FuseOSError(errno.EBADF)
        _fallocate(handle.fd, mode, offset, size)
        handle.staged.dirty = True
        self.staging.changed(handle.staged, "fallocate")
        return 0

    def flush(self, path, fi):
        """close() returns what flush returns: store the file here, while the writer can
        still be told that it failed (ENOSPC, ...); release() cannot report errors."""
        handle = self._handles.get(fi.fh)
        if handle is None or handle.staged is None:
            return 0
        if handle.staged.refs == 1:
            self._commit(path, handle.staged)
        return 0

    def fsync(self, path, datasync, fi):
        """Durable means stored under its name: a file being written is committed."""
        handle = self._handles.get(fi.fh)
        if handle is None:
            return 0
        if handle.staged is not None:
            self._commit(path, handle.staged)
        elif handle.fd >= 0:
            os.fsync(handle.fd)
        return 0

    def _commit(self, path: Optional[str], staged: StagedFile) -> None:
        if not staged.dirty or staged.orphaned:
            return
        try:
            self.staging.commit(staged)
        except FpfsError as exc:
            log.error("storing %s failed: %s", path, exc)
            raise FuseOSError(errno.EIO) from None
        except OSError as exc:
            log.error("storing %s failed: %s (previous version kept)", path, exc)
            raise FuseOSError(exc.errno or errno.EIO) from None

    def _commit_path(self, path: str) -> None:
        """Store a file being written now, so the backing tree holds it under its name
        (before it is renamed or linked)."""
        staged = self._staged(path)
        if staged is not None:
            self._commit(path, staged)

    def unlink(self, path):
        staging = self._writable()
        hidden = self._hidden_file(path)
        if hidden is not None:                 # its last descriptor was closed
            with self._lock:
                self._hidden.pop(os.path.basename(path), None)
            if hidden.path is not None:
                _remove_nondir(hidden.path)
            return 0
        target = self._backing(path)
        staged = staging.get(target)
        real, _ = self._lookup(path)
        if real is None and staged is None:
            raise FuseOSError(errno.ENOENT)
        if real is not None:
            os.unlink(real)
        staging.forget(target)
        with self._lock:
            self._opened.pop(path, None)
        return 0

    def mknod(self, path, mode, dev):
        self._writable()
        real = self._backing(path)
        self._refuse_existing(path)
        os.mknod(real, mode, dev)
        self._own(real, mode)
        return 0

    def mkdir(self, path, mode):
        self._writable()
        real = self._backing(path)
        self._refuse_existing(path)
        os.mkdir(real, mode)
        self._own(real, mode)
        return 0

    def rmdir(self, path):
        staging = self._writable()
        real = self._backing(path)
        if staging.names_in(real):             # files created there, not stored yet
            raise FuseOSError(errno.ENOTEMPTY)
        os.rmdir(real)
        return 0

    def symlink(self, target, source):
        """Create the link `target` pointing to `source` (fusepy's naming)."""
        self._writable()
        real = self._backing(target)
        self._refuse_existing(target)
        os.symlink(source, real)
        self._own(real)
        return 0

    def link(self, target, source):
        """Hard link: the new name `target` for `source` (fusepy's naming). A compressed
        file is linked as its container, so both names share one inode."""
        self._writable()
        self._commit_path(source)
        real, packed = self._resolve(source)
        self._refuse_existing(target)
        dest = self._backing(target)
        os.link(real, dest + SUFFIX if packed else dest, follow_symlinks=False)
        return 0

    # -- open files whose name was removed --------------------------------------------
    def _hide(self, path: str, hidden_name: str) -> int:
        """libfuse keeps an unlinked (or renamed-over) open file alive by renaming it to
        .fuse_hiddenNNN in its directory; that name moves out of the user's directory
        here, to fpfs's temporary area at the top of the backing tree, so the directory
        can be removed while the file is still open (as on a local filesystem), and a
        file being written there is never stored."""
        staged = self._staged(path)
        real, packed = self._lookup(path)
        if real is None and staged is None:
            raise FuseOSError(errno.ENOENT)
        moved = None
        if real is not None:
            moved = os.path.join(self.root, f"{TMP_PREFIX}hidden-{uuid.uuid4().hex}"
                                            + (SUFFIX if packed else ""))
            os.rename(real, moved)
        if staged is not None:
            self.staging.forget(staged.target)
        with self._lock:
            self._hidden[os.path.basename(hidden_name)] = _Hidden(moved, packed, staged)
        return 0

    def _hidden_file(self, path: Optional[str]) -> Optional["_Hidden"]:
        if path is None or not self._hidden:
            return None
        with self._lock:
            return self._hidden.get(os.path.basename(path))

    def _refuse_existing(self, path: str) -> None:
        """EEXIST for a name that is a compressed file, or a file being written that
        has no stored version yet (the backing call sees neither)."""
        if self._staged(path) is not None or self._lookup(path)[0] is not None:
            raise FuseOSError(errno.EEXIST)

    def rename(self, old, new):
        staging = self._writable()
        if os.path.basename(new).startswith(HIDDEN_PREFIX):
            return self._hide(old, new)
        source, dest = self._backing(old), self._backing(new)
        self._commit_path(old)
        real, packed = self._resolve(old)
        dest_real, dest_packed = self._lookup(new)
        source_st = os.lstat(real)
        source_dir = stat.S_ISDIR(source_st.st_mode)
        if dest_real is not None:
            dest_st = os.lstat(dest_real)
            if os.path.samestat(source_st, dest_st):
                return 0                       # two names of one file: nothing to do
            dest_dir = not dest_packed and stat.S_ISDIR(dest_st.st_mode)
            if source_dir and not dest_dir:
                raise FuseOSError(errno.ENOTDIR)
            if dest_dir and not source_dir:
                raise FuseOSError(errno.EISDIR)
        if packed:
            os.replace(real, dest + SUFFIX)
            _remove_nondir(dest)                 # the new name's plain older version
        else:
            os.replace(real, dest)
            if not source_dir:
                _remove_regular(dest + SUFFIX)   # the new name's compressed older version
        staging.move(source, dest)
        with self._lock:
            self._opened.pop(new, None)
        return 0

    def chmod(self, path, mode, fh=None):
        self._writable()
        for real in self._meta_targets(path, fh):
            _chmod_nofollow(real, mode & 0o7777)
        return 0

    def chown(self, path, uid, gid, fh=None):
        self._writable()
        for real in self._meta_targets(path, fh):
            os.chown(real, uid, gid, follow_symlinks=real.startswith(_PROC_FD))
        return 0

    def utimens(self, path, times=None, fh=None):
        """times: (atime, mtime), each nanoseconds or a (seconds, nanoseconds) pair whose
        nanoseconds may be UTIME_NOW or UTIME_OMIT; None sets both to now."""
        self._writable()
        for real in self._meta_targets(path, fh):
            _utimensat(real, times)
        return 0

    # -- extended attributes (passed through to the backing file) ------------------------
    def getxattr(self, path, name, position=0):
        real = self._meta_targets(path)[0]
        return os.getxattr(real, name, follow_symlinks=False)

    def listxattr(self, path):
        return os.listxattr(self._meta_targets(path)[0], follow_symlinks=False)

    def setxattr(self, path, name, value, options, position=0):
        self._writable()
        for real in self._meta_targets(path):
            os.setxattr(real, name, value, options, follow_symlinks=False)
        return 0

    def removexattr(self, path, name):
        self._writable()
        targets = self._meta_targets(path)
        for real in targets[1:]:
            try:
                os.removexattr(real, name, follow_symlinks=False)
            except OSError as exc:
                if exc.errno != errno.ENODATA:
                    raise
        os.removexattr(targets[0], name, follow_symlinks=False)
        return 0


class _Hidden:
    """An open file whose last name was removed: where its content lives now."""
    __slots__ = ("path", "packed", "staged")

    def __init__(self, path: Optional[str], packed: bool, staged: Optional[StagedFile]):
        self.path = path          # the moved backing file (None: only ever staged)
        self.packed = packed
        self.staged = staged

    def attrs(self) -> dict:
        """Its attributes, with the link count the removed name no longer adds."""
        if self.staged is not None:
            attrs = _attrs(os.fstat(self.staged.fd))
        else:
            attrs = _attrs(os.lstat(self.path))
            if self.packed:
                attrs["st_size"] = PackedFile(self.path).size
        attrs["st_nlink"] = max(0, attrs["st_nlink"] - 1)
        return attrs


def _attrs(st: os.stat_result) -> dict:
    attrs = {key: getattr(st, key) for key in (
        "st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_ino", "st_rdev", "st_blocks")}
    for key in ("st_atime", "st_mtime", "st_ctime"):
        attrs[key] = getattr(st, key + "_ns")
    return attrs


def _dirent(entries: Dict[str, os.DirEntry], name: str, directory: str) -> dict:
    """Inode number and type of a listed name (with use_ino, libfuse lists what it is
    given, and a zero inode number hides the entry from readdir(3))."""
    entry = entries.get(name) or entries.get(name + SUFFIX)
    try:
        st = entry.stat(follow_symlinks=False) if entry is not None \
            else os.stat(os.path.join(directory, name))          # . and ..
    except OSError:                                              # gone meanwhile
        return {"st_ino": 1, "st_mode": stat.S_IFREG}
    return {"st_ino": st.st_ino, "st_mode": st.st_mode}


def _identity(st: os.stat_result) -> tuple:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_PROC_FD = "/proc/self/fd/"     # a path to an open descriptor's file (followed on purpose)
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
_AT_FDCWD = -100
_AT_SYMLINK_NOFOLLOW = 0x100
_libc = ctypes.CDLL(None, use_errno=True)
_libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec),
                            ctypes.c_int]
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def _utimensat(path: str, times) -> None:
    """utimensat(2) without following a symlink, with UTIME_NOW/UTIME_OMIT (os.utime
    has neither)."""
    spec = None
    if times is not None:
        spec = (_Timespec * 2)()
        for slot, value in zip(spec, times):
            slot.tv_sec, slot.tv_nsec = value if isinstance(value, tuple) \
                else divmod(int(value), 10**9)
    flags = 0 if path.startswith(_PROC_FD) else _AT_SYMLINK_NOFOLLOW
    if _libc.utimensat(_AT_FDCWD, os.fsencode(path), spec, flags) != 0:
        err = ctypes.get_errno()
        raise FuseOSError(err)


def _fallocate(fd: int, mode: int, offset: int, size: int) -> None:
    if _libc.fallocate(fd, mode, offset, size) != 0:
        raise FuseOSError(ctypes.get_errno())


def _chmod_nofollow(path: str, mode: int) -> None:
    """chmod that never follows a symlink put in the backing tree behind our back
    (Linux has no lchmod): through an O_PATH descriptor of the node itself."""
    if path.startswith(_PROC_FD):           # an open file's own descriptor
        os.chmod(path, mode)
        return
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.chmod(_PROC_FD + str(fd), mode)
    finally:
        os.close(fd)


def _remove_nondir(path: str) -> None:
    """Remove what a rename replaced under a name (any non-directory)."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


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
