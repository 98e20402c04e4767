"""FUSE operations over a tree published to an object store (s3://BUCKET/PREFIX), read-only.
The names, sizes and symlinks come from the tree's manifest (fpfs/store/remote_tree.py),
shown exactly as a local backing tree is (X.fpz as X, the base store hidden); container
bytes come through the store (ranged GETs, the disk cache) into the same read path."""
from __future__ import annotations

import errno
import logging
import os
import posixpath
import stat
from typing import Dict, Tuple

from ..bases import BASES_DIR
from ..container import SUFFIX
from ..errors import FpfsError, ObjectChanged
from ..packed_file import PackedFile
from ..readahead import DEFAULT_WINDOW
from ..store.manifest import Entry
from ..store.remote_tree import RemoteConfig, open_tree
from .ops import IO_BLOCK, STATUS_NAME, WRITE_FLAGS, FuseOSError, Handle, ReadOperations, shown_names

log = logging.getLogger("fpfs.mount")


class RemoteOperations(ReadOperations):
    def __init__(self, url: str, config: RemoteConfig, cache_bytes: int, threads: int,
                 decode_ahead: int = DEFAULT_WINDOW):
        super().__init__(url.rstrip("/"), cache_bytes, threads, decode_ahead)
        self.tree = open_tree(url, config)
        self._versions: Dict[str, Tuple[str, int]] = {}     # backing name -> (ETag, size)
        self._uid, self._gid = os.getuid(), os.getgid()

    # -- names ---------------------------------------------------------------------------
    def _resolve(self, path: str) -> Tuple[Entry, bool]:
        """(entry of the backing object, is_container) for a mount path, or ENOENT."""
        rel = path.strip("/")
        if rel.split("/", 1)[0] == BASES_DIR:
            raise FuseOSError(errno.ENOENT)     # the base store is fpfs's, not the user's
        e = self.tree.entry(rel)
        if e is not None:
            return e, False
        packed = self.tree.entry(rel + SUFFIX) if rel else None
        if self.tree.is_container(packed):
            return packed, True
        raise FuseOSError(errno.ENOENT)

    def _packed(self, e: Entry) -> PackedFile:
        """The open container of entry e, reopened when the tree names another version."""
        version = (e.etag, e.size)
        with self._lock:
            pf = self._files.get(e.path)
            if pf is not None and self._versions.get(e.path) == version:
                return pf
        try:
            pf = PackedFile(self.tree.open(self.tree.url_of(e.path)), self.cache,
                            self.readahead, root=self.tree.url, store=self.tree)
        except FpfsError as exc:
            log.error("cannot open %s: %s", self.tree.url_of(e.path), exc)
            self._read_failed(exc)
            raise FuseOSError(errno.EIO) from None
        with self._lock:
            self._files[e.path] = pf
            self._versions[e.path] = version
        return pf

    def _read_failed(self, exc: Exception) -> None:
        if isinstance(exc, ObjectChanged):
            self.tree.invalidate()          # the next lookup reads the manifest again

    # -- metadata ------------------------------------------------------------------------
    def getattr(self, path, fh=None):
        if path == "/" + STATUS_NAME:
            return self._status_attrs()
        e, packed = self._resolve(path)
        size = e.size
        if e.kind == "dir":
            mode, size = stat.S_IFDIR | e.mode, 0
        elif e.kind == "link":
            mode, size = stat.S_IFLNK | 0o777, len(e.target.encode())
        else:
            mode = stat.S_IFREG | e.mode
        if packed:
            size = e.original_size if e.original_size is not None else self._packed(e).size
            self._saw_attrs(path, (e.etag, e.size))
        return {"st_mode": mode, "st_nlink": 2 if e.kind == "dir" else 1, "st_size": size,
                "st_uid": self._uid, "st_gid": self._gid, "st_blocks": (e.size + 511) // 512,
                "st_blksize": IO_BLOCK,
                "st_atime": e.mtime_ns, "st_mtime": e.mtime_ns, "st_ctime": e.mtime_ns}

    def readdir(self, path, fh):
        e, packed = self._resolve(path)
        if packed or e.kind != "dir":
            raise FuseOSError(errno.ENOTDIR)
        return shown_names(self.tree.children(e.path), not e.path,
                           lambda name: self.tree.is_container(
                               self.tree.entry(posixpath.join(e.path, name))))

    def readlink(self, path):
        e, _ = self._resolve(path)
        if e.kind != "link":
            raise FuseOSError(errno.EINVAL)
        return e.target

    def statfs(self, path):
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 0, "f_bfree": 0,
                "f_bavail": 0, "f_files": 0, "f_ffree": 0, "f_favail": 0, "f_namemax": 255}

    # -- reading -------------------------------------------------------------------------
    def open(self, path, fi):
        if fi.flags & WRITE_FLAGS:
            raise FuseOSError(errno.EROFS)
        if path == "/" + STATUS_NAME:
            return self._open_status(fi)
        e, packed = self._resolve(path)
        if e.kind != "file":
            raise FuseOSError(errno.EISDIR if e.kind == "dir" else errno.ELOOP)
        if packed:
            handle = Handle(packed=self._packed(e))
        else:
            handle = Handle(obj=self.tree.open(self.tree.url_of(e.path)))
        return self._open_handle(path, handle, (e.etag, e.size), fi)

    def status(self) -> dict:
        d = super().status()
        store = self.tree.store
        d["store"] = store.stats.as_dict()
        d["store"]["up"] = not store.breaker.is_open       # False: reads fail fast (EIO)
        if store.disk_cache is not None:
            d["disk_cache"] = {"directory": store.disk_cache.directory,
                               "used_bytes": store.disk_cache.used,
                               "budget_bytes": store.disk_cache.budget}
        return d

    def destroy(self, path):
        super().destroy(path)
        self.tree.store.close()
