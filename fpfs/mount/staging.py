"""Writes through a `--writable` mount. A file opened for writing is staged as a hidden
file beside its target in the backing tree; when the last writer closes it, it is stored
for good: content that fpfs recognises (fpfs.formats: sniffed, not named) is compressed to
TARGET.fpz - as a delta when a file beside it holds the same tensors (a checkpoint saved next
to the previous one, a fine-tune next to its base) - anything else renamed to TARGET, each
atomically (temporary file, fsync, rename). The previous
version stays intact until then, so a crash or a full disk loses at most the file being
written. Independent of FUSE, so it is tested directly too."""
from __future__ import annotations

import logging
import os
import shutil
import threading
from typing import Dict, Optional

from .. import SUFFIX, tempfiles
from ..compress import compress_if_smaller, worth_compressing, write_original
from ..deltas import choose_base, neighbour_candidates
from ..formats import detect
from ..packed_file import PackedFile
from ..tree import copy_metadata

log = logging.getLogger("fpfs.mount")


class StagedFile:
    __slots__ = ("target", "path", "fd", "refs", "dirty")

    def __init__(self, target: str, path: str, fd: int):
        self.target = target      # backing path the file will have (without .fpz)
        self.path = path          # the staging file
        self.fd = fd
        self.refs = 0
        self.dirty = False


class StagingArea:
    def __init__(self, root: str):
        self.root = root
        self._staged: Dict[str, StagedFile] = {}
        self._lock = threading.Lock()

    def clean_leftovers(self) -> int:
        """Remove temporary files a killed daemon or compressor left; returns the count."""
        return tempfiles.remove_stale(self.root)

    def get(self, target: str) -> Optional[StagedFile]:
        with self._lock:
            return self._staged.get(target)

    def open(self, target: str, existing: Optional[str], packed: bool, truncate: bool,
             mode: int = 0o644) -> StagedFile:
        """Start (or join) writing target. existing is its current backing file, if any
        (a container when packed); its content is staged unless truncate."""
        with self._lock:
            staged = self._staged.get(target)
            if staged is None:
                staged = self._stage(target, existing, packed, truncate, mode)
                self._staged[target] = staged
            elif truncate:
                os.ftruncate(staged.fd, 0)
                staged.dirty = True
            staged.refs += 1
            if truncate or existing is None:
                staged.dirty = True
            return staged

    def _stage(self, target, existing, packed, truncate, mode) -> StagedFile:
        directory, name = os.path.split(target)
        fd, path = tempfiles.create(directory, f"stage-{name[:40]}-")
        try:
            if existing is not None and not truncate:
                with os.fdopen(os.dup(fd), "wb") as out:
                    if packed:
                        pf = PackedFile(existing, root=self.root)
                        try:
                            write_original(pf.container, out)
                        finally:
                            pf.close()
                    else:
                        with open(existing, "rb") as src:
                            shutil.copyfileobj(src, out, 1 << 20)
            os.chmod(path, os.stat(existing).st_mode & 0o7777 if existing else mode & 0o7777)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        return StagedFile(target, path, fd)

    def move(self, old_target: str, new_target: str) -> bool:
        """A file being written was renamed (safetensors and the HF hub write a temporary
        name and rename it, sometimes before closing): it will be stored under the new
        name. Returns whether old_target was being written."""
        with self._lock:
            staged = self._staged.pop(old_target, None)
            if staged is None:
                return False
            staged.target = new_target
            staged.dirty = True
            self._staged[new_target] = staged
            return True

    def commit(self, staged: StagedFile) -> None:
        """Store the staged content as the target's new version (raises OSError, e.g.
        ENOSPC: then the previous version is untouched and the staged data kept)."""
        os.fsync(staged.fd)
        layout = detect(staged.path)
        stored = None
        if worth_compressing(layout):
            candidates = neighbour_candidates(staged.target, self.root)
            base = choose_base(layout, candidates)
            stored = compress_if_smaller(staged.path, staged.target + SUFFIX, layout=layout,
                                         base=base, store_root=self.root)
        if stored is not None:
            copy_metadata(staged.path, staged.target + SUFFIX)
            _remove_file(staged.target)                  # a plain older version
        else:
            # Keep the staging file (open descriptors still use it): publish a copy-free
            # hard link under the target name, atomically replacing any old version.
            tmp = staged.path + ".publish"
            try:
                os.link(staged.path, tmp)
            except OSError:                              # no hard links on this fs
                shutil.copy2(staged.path, tmp)
            os.replace(tmp, staged.target)
            _remove_file(staged.target + SUFFIX)         # a compressed older version
        _fsync_dir(os.path.dirname(staged.target))
        staged.dirty = False

    def release(self, staged: StagedFile) -> None:
        """Drop one writer; the last one commits pending changes and removes the staging
        file. A failed commit is logged (close() already got its error from flush)."""
        with self._lock:
            staged.refs -= 1
            if staged.refs > 0:
                return
            del self._staged[staged.target]
        try:
            if staged.dirty:
                self.commit(staged)
        except OSError as exc:
            log.error("could not store %s: %s (previous version kept)", staged.target, exc)
        finally:
            os.close(staged.fd)
            _remove_file(staged.path)


def _remove_file(path: str) -> None:
    try:
        if os.path.isfile(path) and not os.path.islink(path):
            os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
