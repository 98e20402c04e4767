"""`fpfs gc`: remove stored bases that no delta under a tree needs any more."""
from __future__ import annotations

import os

from ..errors import FpfsError
from ..options import UserError
from ..store import is_url
from . import EXIT_OK, containers


def _needed_bases(root: str) -> set:
    """SHA-256 of every stored base that a container under root needs, directly or
    through a chain of bases."""
    from ..bases import find_base
    from ..container import Container
    needed, todo = set(), list(containers(root))
    while todo:
        path = todo.pop()
        try:
            with Container(path) as c:
                ref = c.base
        except FpfsError:
            continue                    # a damaged file keeps nothing alive, nor loses it
        if ref is None or ref.sha256 in needed:
            continue
        needed.add(ref.sha256)
        try:
            todo.append(find_base(path, ref.sha256, root))
        except FpfsError:
            pass
    return needed


def cmd_gc(args) -> int:
    from ..bases import gc
    if is_url(args.path):
        raise UserError("gc works on local trees only")
    if not os.path.isdir(args.path):
        raise UserError(f"{args.path}: not a directory")
    removed = []
    while True:                          # a removed base may have been the last user of its own
        gone = gc(args.path, _needed_bases(args.path))
        if not gone:
            break
        removed += gone
    for path in removed:
        print(f"removed {path}")
    print(f"{args.path}: {len(removed)} stored base(s) removed (no delta needs them and "
          f"their files are gone)")
    return EXIT_OK
