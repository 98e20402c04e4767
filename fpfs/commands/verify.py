"""`fpfs verify`: every chunk checksum and whole-file hash of the containers under a path."""
from __future__ import annotations

import sys

from ..compress import verify_file
from ..errors import FpfsError
from ..options import UserError
from ..store import is_url
from . import EXIT_FAIL, EXIT_OK, containers, remote_containers


def cmd_verify(args) -> int:
    # A published tree answers base lookups from its manifest (no request per lookup).
    files, tree = remote_containers(args.path) if is_url(args.path) \
        else (containers(args.path), None)
    if not files:
        raise UserError(f"{args.path}: no .fpz files found")
    root = tree.url if tree is not None else None
    failed = 0
    for path in files:
        try:
            verify_file(path, root=root, store=tree)
        except FpfsError as exc:
            failed += 1
            print(f"FAIL {path}: {exc}")
        else:
            print(f"OK   {path}")
    if failed:
        print(f"{failed} of {len(files)} file(s) failed verification", file=sys.stderr)
    return EXIT_FAIL if failed else EXIT_OK
