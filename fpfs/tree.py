"""Apply a per-file operation to a file or a directory tree, mirroring it to a destination:
directories are recreated, symlinks copied as links (their targets untouched, so a Hugging
Face cache's snapshots/ -> ../../blobs/ links stay valid), regular files handed to the
operation, which decides the output name."""
from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Tuple


@dataclass(frozen=True)
class Entry:
    src: str          # path of the source file
    rel: str          # path relative to the source root ('' for a single-file source)


def walk(root: str) -> Iterator[Tuple[str, str, str]]:
    """(kind, src path, relative path) for everything under root; kind is dir|link|file|other.
    Symlinks are reported, never followed."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        for name in sorted(dirnames):
            path = os.path.join(dirpath, name)
            kind = "link" if os.path.islink(path) else "dir"
            yield kind, path, os.path.join(rel_dir, name)
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            mode = os.lstat(path).st_mode
            kind = "link" if stat.S_ISLNK(mode) else "file" if stat.S_ISREG(mode) else "other"
            yield kind, path, os.path.join(rel_dir, name)


def copy_link(src: str, dst: str) -> None:
    target = os.readlink(src)
    if os.path.lexists(dst):
        os.unlink(dst)
    os.symlink(target, dst)


def copy_file_atomic(src: str, dst: str) -> None:
    """Copy bytes, mode and times through a temporary file and a rename."""
    tmp = os.path.join(os.path.dirname(os.path.abspath(dst)),
                       f".fpfs-tmp-{os.getpid()}-{os.path.basename(dst)}")
    try:
        shutil.copy2(src, tmp, follow_symlinks=False)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def copy_metadata(src: str, dst: str) -> None:
    """Give dst the mode and times of src (the mount shows these for the original)."""
    st = os.stat(src)
    os.chmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


def regular_files(root: str) -> List[str]:
    if os.path.isfile(root):
        return [root]
    return [path for kind, path, _ in walk(root) if kind == "file"]
