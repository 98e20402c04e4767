"""fpfs's temporary files: hidden names beside their target, locked while in use, so a later
run can tell a dead writer's leftovers (lock free) from a live writer's file (lock held)."""
from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from typing import Tuple

log = logging.getLogger("fpfs")
TMP_PREFIX = ".fpfs-tmp-"            # every temporary file fpfs makes starts so


def create(directory: str, tag: str = "") -> Tuple[int, str]:
    """(fd, path) of a new temporary file in directory, flock-ed until fd is closed."""
    fd, path = tempfile.mkstemp(prefix=TMP_PREFIX + tag, dir=directory)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd, path


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
