"""`fpfs decompress s3://BUCKET/PREFIX DST`: the original files of a published tree,
written locally the way `fpfs decompress` writes a local tree's (directories, symlinks,
modes and times from the manifest; every container checked against its SHA-256)."""
from __future__ import annotations

import os

from ..bases import BASES_DIR
from ..compress import AtomicOutput, decompress_file
from ..container import SUFFIX
from .manifest import Entry
from .remote_tree import RemoteTree

PIECE = 8 << 20         # plain files are copied in ranged GETs of this size


def download_tree(tree: RemoteTree, dst: str) -> int:
    """Write the tree's original files under dst; returns how many files were written."""
    os.makedirs(dst, exist_ok=True)
    count = 0
    for e in tree.walk():
        if BASES_DIR in e.path.split("/"):
            continue
        out = os.path.join(dst, *e.path.split("/"))
        if e.kind == "dir":
            os.makedirs(out, exist_ok=True)
        elif e.kind == "link":
            if os.path.lexists(out):
                os.unlink(out)
            os.symlink(e.target, out)
        elif tree.is_container(e):
            out = out[:-len(SUFFIX)]
            decompress_file(tree.url_of(e.path), out, root=tree.url, store=tree)
            _set_metadata(out, e)
            count += 1
        else:
            _copy_object(tree, e, out)
            _set_metadata(out, e)
            count += 1
    return count


def _copy_object(tree: RemoteTree, e: Entry, out: str) -> None:
    obj = tree.open(tree.url_of(e.path))
    target = AtomicOutput(out)
    try:
        for offset in range(0, e.size, PIECE):
            target.file.write(obj.read(offset, min(PIECE, e.size - offset)))
        target.commit()
    except BaseException:
        target.abort()
        raise


def _set_metadata(path: str, e: Entry) -> None:
    os.chmod(path, e.mode & 0o7777)
    if e.mtime_ns:
        os.utime(path, ns=(e.mtime_ns, e.mtime_ns))
