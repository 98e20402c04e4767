"""What a --writable mount of a local tree adds to the read side (local_ops.py): create,
write, truncate, rename, link, unlink, mkdir, chmod, xattrs and the rest of POSIX, files
being written kept in staging files until they are stored (staging.py)."""
from __future__ import annotations

import errno
import logging
import os
import stat
import uuid
from typing import Optional

from ..container import SUFFIX
from ..errors import FpfsError
from ..readahead import DEFAULT_WINDOW
from ..tempfiles import TMP_PREFIX
from .local_ops import HiddenFile, LocalReadOperations
from .nodes import (PROC_FD, chmod_nofollow, fallocate, is_regular, remove_nondir,
                    remove_regular, utimensat)
from .ops import WRITE_FLAGS, FuseOSError, Handle, fuse
from .staging import Owner, StagedFile, StagingArea

log = logging.getLogger("fpfs.mount")
HIDDEN_PREFIX = ".fuse_hidden"     # libfuse's name for an open file that was unlinked


class FpfsOperations(LocalReadOperations):
    """A local backing tree (read-only, or --writable through staging.py). Writable, it is
    a POSIX filesystem over the backing directory: every operation is done on the backing
    file (so the backing filesystem keeps ctime/mtime/nlink/permissions as a local one
    would), a file being written is shown from its staging file, a compressed file X.fpz
    is X to every operation, and new nodes belong to the calling user when the daemon is
    root."""

    def __init__(self, backing: str, cache_bytes: int, threads: int, writable: bool = False,
                 decode_ahead: int = DEFAULT_WINDOW):
        super().__init__(backing, cache_bytes, threads, decode_ahead)
        self.staging = StagingArea(self.root) if writable else None
        if self.staging is not None:
            self.staging.clean_leftovers()

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

    # -- writing (--writable) ------------------------------------------------------------
    def open(self, path, fi):
        if fi.flags & WRITE_FLAGS:
            return self._open_for_write(path, fi)
        return super().open(path, fi)

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
        return self._add_handle(Handle(staged=staged), fi)

    def create(self, path, mode, fi):
        staging = self._writable()
        target = self._backing(path)
        staged = staging.open(target, None, False, True, mode,
                              self._new_owner(os.path.dirname(target)))
        with self._lock:
            self._opened.pop(path, None)
        return self._add_handle(Handle(staged=staged), fi)

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
        if not packed and not is_regular(real):
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
        fallocate(handle.fd, mode, offset, size)
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
                remove_nondir(hidden.path)
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
            self._hidden[os.path.basename(hidden_name)] = HiddenFile(moved, packed, staged)
        return 0

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
            remove_nondir(dest)                 # the new name's plain older version
        else:
            os.replace(real, dest)
            if not source_dir:
                remove_regular(dest + SUFFIX)   # the new name's compressed older version
        staging.move(source, dest)
        with self._lock:
            self._opened.pop(new, None)
        return 0

    # -- metadata ----------------------------------------------------------------------
    def chmod(self, path, mode, fh=None):
        self._writable()
        for real in self._meta_targets(path, fh):
            chmod_nofollow(real, mode & 0o7777)
        return 0

    def chown(self, path, uid, gid, fh=None):
        self._writable()
        for real in self._meta_targets(path, fh):
            os.chown(real, uid, gid, follow_symlinks=real.startswith(PROC_FD))
        return 0

    def utimens(self, path, times=None, fh=None):
        """times: (atime, mtime), each nanoseconds or a (seconds, nanoseconds) pair whose
        nanoseconds may be UTIME_NOW or UTIME_OMIT; None sets both to now."""
        self._writable()
        for real in self._meta_targets(path, fh):
            utimensat(real, times)
        return 0

    # -- extended attributes (passed through to the backing file) ------------------------
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
