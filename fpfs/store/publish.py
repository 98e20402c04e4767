"""Publishing: put a tree written by `fpfs compress` into s3://BUCKET/PREFIX.

Every file is uploaded (multipart above S3Settings.multipart_size; an object appears only
once complete), then read back from the store and checked - containers decoded whole
against their SHA-256, through the store's own view of the tree, so a delta whose base
did not arrive fails here - and only then is the manifest written: it is the commit
point, so a mount never sees a half-published tree. A manifest already under the prefix
is merged (the new entries win), so trees can be published into one prefix one by one."""
from __future__ import annotations

import os
from dataclasses import replace
from typing import Callable, Dict, Optional

from ..errors import CorruptContainer, ObjectChanged, StoreError
from . import join_url
from .manifest import MANIFEST_NAME, Entry, dumps, loads, local_entries
from .remote_tree import RemoteTree
from .s3 import S3Store

Say = Optional[Callable[[str], None]]
PIECE = 8 << 20         # plain files are read back in ranged GETs of this size


def publish(local_root: str, url: str, store: S3Store, say: Say = None) -> int:
    """Upload local_root to url, verify, write the manifest; returns the bytes uploaded."""
    url = url.rstrip("/")
    uploaded: Dict[str, Entry] = {}
    total = 0
    for e in local_entries(local_root):
        if e.kind == "file":
            info = store.upload(os.path.join(local_root, e.path), join_url(url, e.path))
            if info.size != e.size:
                raise StoreError(f"{info.url}: the store holds {info.size} bytes, "
                                 f"{e.size} were uploaded")
            e = replace(e, etag=info.etag)
            total += e.size
            if say:
                say(f"uploaded {info.url} ({e.size} bytes)")
        uploaded[e.path] = e
    verify_uploaded(RemoteTree(store, url, entries=uploaded), local_root)
    manifest = join_url(url, MANIFEST_NAME)
    try:
        entries = loads(store.get(manifest).data, manifest)
    except ObjectChanged:               # none yet
        entries = {}
    entries.update(uploaded)
    store.put_bytes(manifest, dumps(entries.values()))
    return total


def verify_uploaded(tree: RemoteTree, local_root: str) -> None:
    """Read every uploaded file back from the store; raises on the first difference."""
    from ..compress import verify_file
    from ..container import Container
    for e in tree.walk():
        if e.kind != "file":
            continue
        local = os.path.join(local_root, e.path)
        url = tree.url_of(e.path)
        if e.is_container:
            remote = verify_file(url, root=tree.url, store=tree)
            with Container(local) as c:
                if c.sha256 != remote.sha256:
                    raise CorruptContainer(f"{url}: differs from the file uploaded")
        elif not _same_bytes(local, tree.open(url), e.size):
            raise CorruptContainer(f"{url}: differs from the file uploaded")


def _same_bytes(path: str, obj, size: int) -> bool:
    with open(path, "rb") as f:
        return all(obj.read(offset, min(PIECE, size - offset)) == f.read(PIECE)
                   for offset in range(0, size, PIECE)) and f.read(1) == b""
