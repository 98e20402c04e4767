"""`fpfs warmup PATH...`: pull files in before a server needs them.

- s3://BUCKET/PREFIX (a published tree): every chunk payload of every container, the
  stored bases included, is fetched into the disk cache (--cache-dir) that mounts of
  the tree then read from - no mount, no decoding.
- a path in a mount (or any local path): every regular file under it is read once, so
  the mount's own caches (disk, memory) and the kernel's page cache hold it."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Optional

from .container import Container
from .store import is_url
from .store.remote_tree import RemoteConfig, RemoteTree, open_tree
from .tree import regular_files

BLOCK = 16 << 20
Say = Optional[Callable[[str], None]]


def warm_store(url: str, config: RemoteConfig, say: Say = None) -> int:
    """Fetch every chunk payload of the tree at url (its stored bases included: deltas
    read them) into config.cache_dir; returns the bytes cached."""
    tree = open_tree(url, config)
    total = 0
    for e in tree.walk():
        if tree.is_container(e):
            total += _warm_container(tree, tree.url_of(e.path))
            if say:
                say(f"cached {tree.url_of(e.path)}")
    return total


def _warm_container(tree: RemoteTree, name: str) -> int:
    """Each payload read once, in order: the store's read-ahead fetches the next ones in
    parallel GETs while earlier ones are taken, and every fetched payload is written to
    the disk cache."""
    with Container(tree.open(name)) as c:
        for index in range(len(c)):
            c.read_payload(index)
        return c.stored_size


def warm_paths(paths: List[str], threads: int = 4, say: Say = None) -> int:
    """Read every regular file under paths once; returns the bytes read."""
    files = [f for p in paths for f in regular_files(p)]

    def read(path: str) -> int:
        n = 0
        with open(path, "rb", buffering=0) as f:
            while True:
                got = len(f.read(BLOCK))
                if not got:
                    break
                n += got
        if say:
            say(f"read {path}")
        return n

    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(read, files))


def is_remote(paths: List[str]) -> bool:
    return any(is_url(p) for p in paths)


def check_paths(paths: List[str]) -> Optional[str]:
    """A one-line reason the paths cannot be warmed together, or None."""
    if is_remote(paths) and not all(is_url(p) for p in paths):
        return "give either s3:// URLs or local paths, not both"
    missing = [p for p in paths if not is_url(p) and not os.path.exists(p)]
    return f"{missing[0]}: no such file or directory" if missing else None
