"""Apply a per-file operation to a file or a directory tree, mirroring it to a destination:
directories are recreated, symlinks copied as links (their targets untouched, so a Hugging
Face cache's snapshots/ -> ../../blobs/ links stay valid), regular files handed to the
operation, which decides the output name."""
from __future__ import annotations

import os
import stat
from typing import Iterator, List, Tuple

from . import tempfiles
from .bases import BASES_DIR


def walk(root: str) -> Iterator[Tuple[str, str, str]]:
    """(kind, src path, relative path) for everything under root; kind is dir|link|file|other.
    Symlinks are reported, never followed; fpfs's own temporary files and base stores
    (bases.py) are skipped."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if d != BASES_DIR]
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        for name in sorted(dirnames):
            path = os.path.join(dirpath, name)
            kind = "link" if os.path.islink(path) else "dir"
            yield kind, path, os.path.join(rel_dir, name)
        for name in sorted(filenames):
            if name.startswith(tempfiles.TMP_PREFIX):
                continue
            path = os.path.join(dirpath, name)
            mode = os.lstat(path).st_mode
            kind = "link" if stat.S_ISLNK(mode) else "file" if stat.S_ISREG(mode) else "other"
            yield kind, path, os.path.join(rel_dir, name)


def copy_link(src: str, dst: str) -> None:
    target = os.readlink(src)
    if os.path.lexists(dst):
        os.unlink(dst)
    os.symlink(target, dst)


def copy_metadata(src: str, dst: str) -> None:
    """Give dst the mode and times of src (the mount shows these for the original)."""
    st = os.stat(src)
    os.chmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


def regular_files(root: str) -> List[str]:
    if os.path.isfile(root):
        return [root]
    return [path for kind, path, _ in walk(root) if kind == "file"]
