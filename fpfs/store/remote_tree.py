"""A tree published under s3://BUCKET/PREFIX as the mount and the CLI see it: entries by
relative path, from the manifest (manifest.py) or, for a prefix without one (objects
copied there by other tools), from a listing (files and the directories their keys
imply; no symlinks). Reloaded when older than ttl seconds (a conditional GET: an
unchanged manifest costs no transfer), or at once after invalidate().

It is also the Store the tree's containers are opened from: each object pinned to the
ETag and size its entry names, and a delta's base looked up among the entries."""
from __future__ import annotations

import logging
import posixpath
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional

from ..bases import BASES_DIR
from ..container import SUFFIX
from ..errors import FpfsError, ObjectChanged, StoreError
from . import Store, join_url
from .manifest import MANIFEST_NAME, Entry, loads
from .s3 import S3Object, S3Settings, S3Store

log = logging.getLogger("fpfs.store")
RETRY_AFTER_FAILURE = 5.0       # seconds before a failed reload is tried again
DIR_MODE = 0o755


@dataclass
class _Snapshot:
    entries: Dict[str, Entry]
    children: Dict[str, List[str]] = field(default_factory=dict)

    def __post_init__(self):
        """Complete the directories (a listing only implies them) and index children;
        entries under a non-directory are dropped."""
        for path in sorted(self.entries):
            parent = posixpath.dirname(path)
            while parent and parent not in self.entries:
                self.entries[parent] = Entry(parent, "dir", mode=DIR_MODE)
                parent = posixpath.dirname(parent)
        newest = max((e.mtime_ns for e in self.entries.values()), default=0)
        self.entries[""] = self.entries.get("", Entry("", "dir", mode=DIR_MODE,
                                                      mtime_ns=newest))
        for path in sorted(self.entries):
            if not path:
                continue
            parent = posixpath.dirname(path)
            if self.entries.get(parent, Entry("", "file")).kind != "dir":
                continue
            self.children.setdefault(parent, []).append(posixpath.basename(path))


class RemoteTree(Store):
    def __init__(self, store: S3Store, url: str, ttl: float = 60.0,
                 entries: Optional[Dict[str, Entry]] = None):
        """entries: use these (a tree just uploaded) instead of loading the manifest."""
        self.store = store
        self.url = url.rstrip("/")
        self.ttl = ttl
        self.from_manifest = entries is not None
        self._manifest_etag: Optional[str] = None
        self._lock = threading.Lock()
        self._next_load = time.monotonic() + ttl
        self._snap = _Snapshot(dict(entries)) if entries is not None else self._load()

    # -- loading -----------------------------------------------------------------------
    def _load(self) -> _Snapshot:
        manifest = join_url(self.url, MANIFEST_NAME)
        etag = self._manifest_etag
        try:
            # A lookup (getattr) waits for this: at most the store's deadline.
            got = self.store.bounded(f"GET {manifest}",
                                     lambda: self.store.get_if_changed(manifest, etag))
        except ObjectChanged:           # no manifest (404): a prefix of plain objects
            self._manifest_etag = None
            return self._listing()
        if got is None:                 # unchanged since the last load
            return self._snap
        self.from_manifest = True
        self._manifest_etag = got.etag
        return _Snapshot(loads(got.data, manifest))

    def _listing(self) -> _Snapshot:
        self.from_manifest = False
        entries = {}
        listing = self.store.bounded(f"LIST {self.url}/",
                                     lambda: list(self.store.list(self.url + "/")))
        for info in listing:
            rel = info.url[len(self.url) + 1:]
            if not rel or rel == MANIFEST_NAME or rel.endswith("/") or \
                    any(p in ("", ".", "..") for p in rel.split("/")):
                continue                # directory markers and names a path cannot hold
            entries[rel] = Entry(rel, "file", size=info.size, etag=info.etag,
                                 mode=0o644, mtime_ns=info.mtime_ns)
        if not entries:
            raise FpfsError(f"{self.url}: no objects under this prefix (and no "
                            f"{MANIFEST_NAME})")
        return _Snapshot(entries)

    def refresh(self, force: bool = False) -> None:
        """Reload when stale (or force); on failure keep serving the last snapshot."""
        now = time.monotonic()
        if not force and now < self._next_load:
            return
        if not self._lock.acquire(blocking=False):
            return                      # another thread is reloading; use what we have
        try:
            try:
                self._snap = self._load()
                self._next_load = time.monotonic() + self.ttl
            except FpfsError as exc:
                log.warning("cannot reload %s (keeping the last listing): %s", self.url, exc)
                self._next_load = time.monotonic() + min(self.ttl, RETRY_AFTER_FAILURE)
        finally:
            self._lock.release()

    def invalidate(self) -> None:
        """Reload at the next lookup (an object turned out replaced)."""
        self._next_load = 0.0

    # -- lookups -----------------------------------------------------------------------
    def entry(self, rel: str) -> Optional[Entry]:
        self.refresh()
        return self._snap.entries.get(rel.strip("/"))

    def children(self, rel: str) -> List[str]:
        self.refresh()
        return list(self._snap.children.get(rel.strip("/"), []))

    def walk(self) -> Iterator[Entry]:
        snap = self._snap
        for path in sorted(snap.entries):
            if path:
                yield snap.entries[path]

    def url_of(self, rel: str) -> str:
        return join_url(self.url, rel)

    def rel_of(self, url: str) -> Optional[str]:
        prefix = self.url + "/"
        return url[len(prefix):] if url.startswith(prefix) else None

    def is_container(self, e: Optional[Entry]) -> bool:
        """Whether e is a container: the manifest says so; a listing cannot tell without a
        GET, so there every NAME.fpz is taken for one (opening it checks)."""
        return e is not None and e.kind == "file" and \
            (e.is_container or (not self.from_manifest and e.path.endswith(SUFFIX)))

    def containers(self) -> List[str]:
        """URLs of the tree's containers, the base store left out (as fpfs.tree.walk does)."""
        return [self.url_of(e.path) for e in self.walk()
                if self.is_container(e) and BASES_DIR not in e.path.split("/")]

    # -- the Store interface -------------------------------------------------------------
    def _file(self, name: str) -> Optional[Entry]:
        rel = self.rel_of(name)
        e = self._snap.entries.get(rel) if rel is not None else None
        return e if e is not None and e.kind == "file" else None

    def exists(self, name: str) -> bool:
        return self._file(name) is not None

    def open(self, name: str) -> S3Object:
        e = self._file(name)
        if e is None:
            raise StoreError(f"{name}: not in {self.url}")
        return self.store.open(name, e.size, e.etag or None)


@dataclass(frozen=True)
class RemoteConfig:
    """How a mount reaches and caches a remote tree."""
    settings: S3Settings
    cache_dir: Optional[str] = None       # None: no disk cache
    disk_cache_size: int = 10 << 30
    metadata_ttl: float = 60.0


def open_tree(url: str, config: RemoteConfig) -> RemoteTree:
    from .disk_cache import DiskCache
    disk = DiskCache(config.cache_dir, config.disk_cache_size) if config.cache_dir else None
    return RemoteTree(S3Store(config.settings, disk), url, config.metadata_ttl)
