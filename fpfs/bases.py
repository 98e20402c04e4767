"""Where delta containers find their bases, and why a base outlives its name.

A delta container names its base by the SHA-256 of the base's original bytes (FORMAT.md),
never by a path. The base's container is kept, hard-linked, as

    <D>/.fpfs-bases/<sha256 hex>.fpz

for D the directory of the delta or its nearest ancestor that has one (`fpfs compress` of
a tree puts the store at the top of DST; a `--writable` mount at the top of its backing
tree). Because it is a second hard link, deleting, renaming or replacing the base file -
through the mount, with fpfs's commands or by hand - removes a name, not the data, and no
delta ever loses its base. `fpfs gc` (gc() below) removes stored bases that no delta
under the tree still needs. Should the stored base itself be deleted by hand, the delta
fails to open with MissingBase naming the SHA-256 it needs: never wrong bytes.
"""
from __future__ import annotations

import os
from typing import Callable, Iterable, Iterator, List, Optional, Set

from .errors import MissingBase
from .store import is_url, join_url, store_for, url_ancestors
from .tempfiles import copy_file_atomic

BASES_DIR = ".fpfs-bases"
# A base may itself be a delta; reading a file then decodes one chunk per level. Bounded so
# a cold read of the newest checkpoint of a long series costs at most this many decodes.
MAX_CHAIN = 4


def stored_name(sha256: bytes) -> str:
    return sha256.hex() + ".fpz"


def find_base(delta_path: str, sha256: bytes, root: Optional[str] = None,
              exists: Optional[Callable[[str], bool]] = None) -> str:
    """The stored base container for a delta at delta_path (a path or an s3:// URL),
    searching its directory and its ancestors (not above root, when given); exists tells
    whether a candidate is there (default: asks the delta's store). Raises MissingBase."""
    exists = exists or store_for(delta_path).exists
    name = stored_name(sha256)
    for d in _ancestors(delta_path, root):
        candidate = (join_url if is_url(d) else os.path.join)(d, f"{BASES_DIR}/{name}")
        if exists(candidate):
            return candidate
    raise MissingBase(f"{delta_path}: its base (original SHA-256 {sha256.hex()}) is "
                      f"missing: no {BASES_DIR}/{name} in its directory or above")


def _ancestors(path: str, root: Optional[str]) -> Iterator[str]:
    """The directories a base is looked for in, nearest first."""
    if is_url(path):
        yield from url_ancestors(path, root)
        return
    d = os.path.dirname(os.path.abspath(path))
    stop = os.path.abspath(root) if root else None
    while True:
        yield d
        parent = os.path.dirname(d)
        if parent == d or (stop is not None and d == stop):
            return
        d = parent


def keep_base(container_path: str, store_root: str, sha256: bytes) -> str:
    """Make sure store_root/.fpfs-bases holds the base container (a hard link to
    container_path, or an atomic copy across filesystems); returns its path."""
    store = os.path.join(store_root, BASES_DIR)
    os.makedirs(store, exist_ok=True)
    target = os.path.join(store, stored_name(sha256))
    if os.path.isfile(target):
        return target
    if os.path.abspath(container_path) == os.path.abspath(target):
        return target
    try:
        os.link(container_path, target)
    except FileExistsError:
        pass
    except OSError:                 # another filesystem, or no hard links: copy
        copy_file_atomic(container_path, target)
    return target


def gc(root: str, needed: Iterable[bytes]) -> List[str]:
    """Remove stored bases under root/.fpfs-bases that are neither needed by a delta (their
    SHA-256 in `needed`) nor still a user-visible file (link count > 1). Returns what was
    removed."""
    store = os.path.join(root, BASES_DIR)
    keep: Set[str] = {stored_name(s) for s in needed}
    removed = []
    try:
        names = os.listdir(store)
    except FileNotFoundError:
        return removed
    for name in names:
        path = os.path.join(store, name)
        if name in keep or not name.endswith(".fpz"):
            continue
        if os.stat(path).st_nlink <= 1:
            os.unlink(path)
            removed.append(path)
    return removed
