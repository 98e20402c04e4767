"""The bodies of the `fpfs` subcommands, one module each (fpfs/cli.py parses the command
line and calls them): each takes the parsed arguments and returns the exit code; a
mistake in what was asked raises UserError (fpfs/options.py)."""
from __future__ import annotations

import os
from typing import List

from ..container import SUFFIX
from ..options import UserError
from ..store import is_url, split_url
from ..tree import regular_files

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def remote_containers(url: str):
    """([container URLs], the tree they are in, or None for a single object URL)."""
    from ..store.remote_tree import RemoteTree
    from ..store.s3 import default_store
    split_url(url)
    store = default_store()
    if url.endswith(SUFFIX) and store.exists(url):
        return [url], None
    tree = RemoteTree(store, url)
    return tree.containers(), tree


def containers(path: str) -> List[str]:
    """The containers PATH names: itself, or the .fpz files under it (or under an s3:// URL)."""
    if is_url(path):
        return remote_containers(path)[0]
    if not os.path.lexists(path):
        raise UserError(f"{path}: no such file or directory")
    if os.path.isfile(path):
        return [path]
    return [p for p in regular_files(path) if p.endswith(SUFFIX)]
