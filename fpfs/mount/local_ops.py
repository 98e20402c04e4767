"""FUSE operations over a local backing tree written by `fpfs compress`: X.fpz is shown as X
with its original size and bytes, everything else passes through. This is the read side:
names, attributes, listings and reads; a --writable mount adds the POSIX write operations
(write_ops.py), and what they leave - files being written (staging.py), open files whose
name was removed - is shown here as a local filesystem would show it."""
from __future__ import annotations

import errno
import logging
import os
from typing import Dict, List, Optional, Tuple

from ..bases import BASES_DIR
from ..container import SUFFIX, is_container
from ..errors import FpfsError
from ..packed_file import PackedFile
from ..readahead import DEFAULT_WINDOW
from .nodes import PROC_FD, dirent_attrs, fuse_attrs, identity, is_regular
from .ops import STATUS_NAME, WRITE_FLAGS, FuseOSError, Handle, ReadOperations, shown_names
from .staging import StagedFile

log = logging.getLogger("fpfs.mount")


class LocalReadOperations(ReadOperations):
    """A local backing tree, read-only (FpfsOperations in write_ops.py adds writes)."""

    def __init__(self, backing: str, cache_bytes: int, threads: int,
                 decode_ahead: int = DEFAULT_WINDOW):
        super().__init__(os.path.realpath(backing), cache_bytes, threads, decode_ahead)
        self.name_max = os.statvfs(self.root).f_namemax
        self._hidden: Dict[str, HiddenFile] = {}   # libfuse's .fuse_hidden name -> the file

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
        if os.path.basename(real) and is_regular(packed) and is_container(packed):
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

    def _handle(self, fi) -> Handle:
        handle = self._handles.get(fi.fh) if fi is not None else None
        if handle is None:
            raise FuseOSError(errno.EBADF)
        return handle

    def _meta_targets(self, path: Optional[str], fi=None, first: bool = False) -> List[str]:
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
            return [PROC_FD + str(handle.fd)]
        hidden = self._hidden_file(path)
        if hidden is not None:
            return [hidden.staged.path if hidden.staged is not None else hidden.path]
        staged = self._staged(path)
        targets = [staged.path] if staged is not None else []
        if first and targets:
            # getxattr, which the kernel sends before every write (security.capability):
            # no lookups of the backing tree when the staging file answers
            return targets
        real, _ = self._lookup(path)
        if real is not None:
            targets.append(real)
        if not targets:
            raise FuseOSError(errno.ENOENT)
        return targets

    def _hidden_file(self, path: Optional[str]) -> Optional["HiddenFile"]:
        if path is None or not self._hidden:
            return None
        with self._lock:
            return self._hidden.get(os.path.basename(path))

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
            return fuse_attrs(os.fstat(staged.fd))
        real, packed = self._resolve(path)
        st = os.lstat(real)
        attrs = fuse_attrs(st)
        if packed:
            pf = self._packed(real)
            attrs["st_size"] = pf.size
            self._saw_attrs(path, pf.identity)
            attrs["st_blocks"] = st.st_blocks  # du through the mount shows the saving
        return attrs

    def _handle_attrs(self, handle: Handle) -> dict:
        if handle.packed is not None:
            attrs = fuse_attrs(os.stat(handle.packed.path))
            attrs["st_size"] = handle.packed.size
            return attrs
        if handle.fd < 0:
            return self._status_attrs()
        return fuse_attrs(os.fstat(handle.fd))

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
        listed = [(name, dirent_attrs(entries, name, real), 0) for name in names]
        if self.staging is not None:           # created, not stored yet
            present = set(names)
            listed += [(name, fuse_attrs(os.fstat(staged.fd)), 0)
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
            raise FuseOSError(errno.EROFS)
        if path == "/" + STATUS_NAME:
            return self._open_status(fi)
        staged = self._staged(path)
        if staged is not None:                 # the content written so far
            fd = os.open(staged.path, os.O_RDONLY | os.O_CLOEXEC)
            st = os.fstat(fd)
            return self._open_handle(path, Handle(fd=fd), identity(st), fi)
        real, packed = self._resolve(path)
        if packed:
            handle = Handle(packed=self._packed(real))
            ident = handle.packed.identity
        else:
            handle = Handle(fd=os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC))
            ident = identity(os.fstat(handle.fd))
        return self._open_handle(path, handle, ident, fi)

    # -- extended attributes (passed through to the backing file) ------------------------
    def getxattr(self, path, name, position=0):
        real = self._meta_targets(path, first=True)[0]
        return os.getxattr(real, name, follow_symlinks=False)

    def listxattr(self, path):
        return os.listxattr(self._meta_targets(path, first=True)[0], follow_symlinks=False)


class HiddenFile:
    """An open file whose last name was removed: where its content lives now."""
    __slots__ = ("path", "packed", "staged")

    def __init__(self, path: Optional[str], packed: bool, staged: Optional[StagedFile]):
        self.path = path          # the moved backing file (None: only ever staged)
        self.packed = packed
        self.staged = staged

    def attrs(self) -> dict:
        """Its attributes, with the link count the removed name no longer adds."""
        if self.staged is not None:
            attrs = fuse_attrs(os.fstat(self.staged.fd))
        else:
            attrs = fuse_attrs(os.lstat(self.path))
            if self.packed:
                attrs["st_size"] = PackedFile(self.path).size
        attrs["st_nlink"] = max(0, attrs["st_nlink"] - 1)
        return attrs
