"""Nodes of a local backing tree as its FUSE operations (local_ops.py, write_ops.py) need
them: a stat result as FUSE attributes, and the calls Python's os module has no form of -
utimensat with UTIME_NOW/UTIME_OMIT, chmod that never follows a symlink, fallocate."""
from __future__ import annotations

import ctypes
import os
import stat
from typing import Dict

from ..container import SUFFIX
from .ops import IO_BLOCK, FuseOSError


def fuse_attrs(st: os.stat_result) -> dict:
    attrs = {key: getattr(st, key) for key in (
        "st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_ino", "st_rdev", "st_blocks")}
    for key in ("st_atime", "st_mtime", "st_ctime"):
        attrs[key] = getattr(st, key + "_ns")
    attrs["st_blksize"] = IO_BLOCK
    return attrs


def dirent_attrs(entries: Dict[str, os.DirEntry], name: str, directory: str) -> dict:
    """Inode number and type of a listed name (with use_ino, libfuse lists what it is
    given, and a zero inode number hides the entry from readdir(3))."""
    entry = entries.get(name) or entries.get(name + SUFFIX)
    try:
        st = entry.stat(follow_symlinks=False) if entry is not None \
            else os.stat(os.path.join(directory, name))          # . and ..
    except OSError:                                              # gone meanwhile
        return {"st_ino": 1, "st_mode": stat.S_IFREG}
    return {"st_ino": st.st_ino, "st_mode": st.st_mode}


def identity(st: os.stat_result) -> tuple:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


PROC_FD = "/proc/self/fd/"     # a path to an open descriptor's file (followed on purpose)
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
_AT_FDCWD = -100
_AT_SYMLINK_NOFOLLOW = 0x100
_libc = ctypes.CDLL(None, use_errno=True)
_libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec),
                            ctypes.c_int]
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def utimensat(path: str, times) -> None:
    """utimensat(2) without following a symlink, with UTIME_NOW/UTIME_OMIT (os.utime
    has neither)."""
    spec = None
    if times is not None:
        spec = (_Timespec * 2)()
        for slot, value in zip(spec, times):
            slot.tv_sec, slot.tv_nsec = value if isinstance(value, tuple) \
                else divmod(int(value), 10**9)
    flags = 0 if path.startswith(PROC_FD) else _AT_SYMLINK_NOFOLLOW
    if _libc.utimensat(_AT_FDCWD, os.fsencode(path), spec, flags) != 0:
        err = ctypes.get_errno()
        raise FuseOSError(err)


def fallocate(fd: int, mode: int, offset: int, size: int) -> None:
    if _libc.fallocate(fd, mode, offset, size) != 0:
        raise FuseOSError(ctypes.get_errno())


def chmod_nofollow(path: str, mode: int) -> None:
    """chmod that never follows a symlink put in the backing tree behind our back
    (Linux has no lchmod): through an O_PATH descriptor of the node itself."""
    if path.startswith(PROC_FD):           # an open file's own descriptor
        os.chmod(path, mode)
        return
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.chmod(PROC_FD + str(fd), mode)
    finally:
        os.close(fd)


def remove_nondir(path: str) -> None:
    """Remove what a rename replaced under a name (any non-directory)."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


def remove_regular(path: str) -> None:
    if is_regular(path):
        os.unlink(path)


def is_regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False
