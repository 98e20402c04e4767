"""fpfs's temporary files: hidden names beside their target, locked while in use, so a later
run can tell a dead writer's leftovers (lock free) from a live writer's file (lock held);
atomic copies through them; and their writeback to the disk, started while they are still
being written."""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import shutil
import tempfile
from typing import Iterator, Tuple

log = logging.getLogger("fpfs")
TMP_PREFIX = ".fpfs-tmp-"            # every temporary file fpfs makes starts so


def create(directory: str, tag: str = "") -> Tuple[int, str]:
    """(fd, path) of a new temporary file in directory, flock-ed until fd is closed."""
    fd, path = tempfile.mkstemp(prefix=TMP_PREFIX + tag, dir=directory)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd, path


@contextlib.contextmanager
def replacing(dst: str) -> Iterator[Tuple[int, str]]:
    """(fd, path) of a locked temporary file beside dst, for the body to fill and rename
    over dst; removed if the body raises, closed either way."""
    fd, tmp = create(os.path.dirname(os.path.abspath(dst)))
    try:
        yield fd, tmp
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    finally:
        os.close(fd)


def copy_file_atomic(src: str, dst: str) -> None:
    """Copy bytes, mode and times through a (locked) temporary file and a rename."""
    with replacing(dst) as (fd, tmp):
        with open(src, "rb") as fin, os.fdopen(os.dup(fd), "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.flush()
            os.fsync(fout.fileno())
        shutil.copystat(src, tmp)
        os.replace(tmp, dst)


def write_atomic(dst: str, parts, durable: bool = True, mode: int = 0o644) -> None:
    """Write the bytes-like parts to dst through a (locked) temporary file beside it and
    a rename: readers see the old file or the whole new one, never a part. durable: the
    file is fsync-ed before the rename and the directory after it (a crash keeps the old
    file or the new one); without it a crash may leave a damaged file, which only a
    reader that checks a checksum may accept."""
    with replacing(dst) as (fd, tmp):
        os.fchmod(fd, mode)
        for part in parts:
            view = memoryview(part).cast("B")
            while view:
                view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
        os.replace(tmp, dst)
    if durable:
        dir_fd = os.open(os.path.dirname(os.path.abspath(dst)), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def remove_stale(root: str) -> int:
    """Delete temporary files under root that no live process holds (a killed compress or
    mount left them); returns how many were removed."""
    removed = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name.startswith(TMP_PREFIX) and _remove_if_unlocked(os.path.join(dirpath, name)):
                removed += 1
    if removed:
        log.info("removed %d leftover temporary file(s) under %s", removed, root)
    return removed


def _remove_if_unlocked(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False                     # a live writer holds it
    else:
        os.unlink(path)
        return True
    finally:
        os.close(fd)


def _sync_file_range():
    try:                                      # the process's own symbols: libc's among them
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):         # not Linux: commit's fsync does it all
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE = _sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing bytes [offset, offset + length) of fd to the disk without waiting
    (Linux sync_file_range), so that the fsync before a rename finds most of the file
    written: `fpfs decompress` to disk spent 92 of its 157 ms in that fsync. Advice only:
    errors are left to the fsync, which reports them."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, length, _SYNC_FILE_RANGE_WRITE)
