"""`fpfs decompress`: the original files of a container, a tree, or a published tree."""
from __future__ import annotations

import os

from ..compress import decompress_file
from ..container import SUFFIX, is_container
from ..options import UserError
from ..store import is_url
from ..tempfiles import copy_file_atomic
from ..tree import copy_link, copy_metadata, walk
from . import EXIT_OK, remote_containers


def cmd_decompress(args) -> int:
    src, dst = args.src, args.dst
    if is_url(src):
        return _decompress_from_store(src, dst)
    if not os.path.lexists(src):
        raise UserError(f"{src}: no such file or directory")
    if os.path.isfile(src):
        if not is_container(src):
            raise UserError(f"{src}: not an fpfs container")
        if os.path.isdir(dst):
            name = os.path.basename(src)
            dst = os.path.join(dst, name[:-len(SUFFIX)] if name.endswith(SUFFIX) else name)
        decompress_file(src, dst)
        copy_metadata(src, dst)
        return EXIT_OK
    os.makedirs(dst, exist_ok=True)
    for kind, path, rel in walk(src):
        out = os.path.join(dst, rel)
        if kind == "dir":
            os.makedirs(out, exist_ok=True)
        elif kind == "link":
            copy_link(path, out)
        elif kind == "file" and path.endswith(SUFFIX) and is_container(path):
            decompress_file(path, out[:-len(SUFFIX)])
            copy_metadata(path, out[:-len(SUFFIX)])
        elif kind == "file":
            copy_file_atomic(path, out)
    return EXIT_OK


def _decompress_from_store(url: str, dst: str) -> int:
    from ..store.download import download_tree
    targets, tree = remote_containers(url)
    if tree is None:
        if os.path.isdir(dst):
            name = url.rsplit("/", 1)[1]
            dst = os.path.join(dst, name[:-len(SUFFIX)] if name.endswith(SUFFIX) else name)
        decompress_file(url, dst)
        return EXIT_OK
    download_tree(tree, dst)
    return EXIT_OK
