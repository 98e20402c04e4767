"""Writes through a `--writable` mount. A file opened for writing is staged as a hidden
file at the top of the backing tree (never in the user's directory, so an `rmdir` right
after a close never sees it - FUSE's release is asynchronous); when the last writer closes
it, it is stored for good: content that fpfs recognises (fpfs.formats: sniffed, not named)
is compressed to TARGET.fpz (a safetensors file written in order already is, chunk by
chunk as its bytes arrived: fpfs/stream_compress.py) - as a delta when a file beside it
holds the same tensors (a checkpoint saved next to the previous one, a fine-tune next to
its base) - anything else
published as TARGET, each atomically (temporary file, fsync, rename). The previous version
stays intact until then, so a crash or a full disk loses at most the file being written.
A staged file carries the owner, mode and extended attributes the stored file will have.
Independent of FUSE, so it is tested directly too."""
from __future__ import annotations

import logging
import os
import shutil
import stat
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Optional, Tuple

from .. import tempfiles
from ..compress import compress_if_smaller, worth_compressing, write_original
from ..container import SUFFIX
from ..deltas import choose_base, neighbour_candidates
from ..formats import detect
from ..packed_file import PackedFile
from ..parallel import default_threads
from ..stream_compress import StreamingCompressor
from ..tree import copy_metadata

log = logging.getLogger("fpfs.mount")

Owner = Tuple[int, int]          # (uid, gid); -1 leaves that one as the daemon made it


class StagedFile:
    __slots__ = ("target", "path", "fd", "refs", "dirty", "orphaned", "stream")

    def __init__(self, target: str, path: str, fd: int):
        self.target = target      # backing path the file will have (without .fpz)
        self.path = path          # the staging file
        self.fd = fd
        self.refs = 0
        self.dirty = False
        self.orphaned = False     # its name was unlinked or renamed over: never stored
        self.stream: Optional[StreamingCompressor] = None   # compressing as it is written


class StagingArea:
    def __init__(self, root: str):
        self.root = root
        self._staged: Dict[str, StagedFile] = {}
        self._lock = threading.Lock()
        self._name_max = os.statvfs(root).f_namemax
        # Encoders of files compressed as they are written (threads start on first use).
        self._encoders = ThreadPoolExecutor(default_threads(), thread_name_prefix="fpfs-stream")

    def clean_leftovers(self) -> int:
        """Remove temporary files a killed daemon or compressor left; returns the count."""
        return tempfiles.remove_stale(self.root)

    def get(self, target: str) -> Optional[StagedFile]:
        with self._lock:
            return self._staged.get(target)

    def names_in(self, directory: str) -> Dict[str, StagedFile]:
        """Name -> staged file, for the files being written in directory (readdir must
        list a file from its creat() on, before it is stored)."""
        with self._lock:
            staged = list(self._staged.values())
        return {os.path.basename(f.target): f for f in staged
                if os.path.dirname(f.target) == directory}

    def open(self, target: str, existing: Optional[str], packed: bool, truncate: bool,
             mode: int = 0o644, owner: Optional[Owner] = None) -> StagedFile:
        """Start (or join) writing target. existing is its current backing file, if any
        (a container when packed); its content, owner, mode and extended attributes are
        staged (the content unless truncate). A new file gets mode and owner."""
        with self._lock:
            staged = self._staged.get(target)
            if staged is None:
                staged = self._stage(target, existing, packed, truncate, mode, owner)
                self._staged[target] = staged
                if (existing is None or truncate) and self._may_compress(target):
                    staged.stream = self._streaming(staged)
            elif truncate:
                os.ftruncate(staged.fd, 0)
                staged.dirty = True
                self.changed(staged, "truncated")
            staged.refs += 1
            if truncate or existing is None:
                staged.dirty = True
            return staged

    def _stage(self, target, existing, packed, truncate, mode, owner) -> StagedFile:
        name = os.path.basename(target)
        fd, path = tempfiles.create(self.root, f"stage-{name[:40]}-")
        try:
            st = os.stat(existing) if existing is not None else None
            if existing is not None and not truncate:
                with os.fdopen(os.dup(fd), "wb") as out:
                    if packed:
                        pf = PackedFile(existing, root=self.root)
                        try:
                            write_original(pf, out)
                        finally:
                            pf.close()
                        if os.stat(existing).st_atime_ns != st.st_atime_ns:
                            os.utime(existing, ns=(st.st_atime_ns, st.st_mtime_ns))
                    else:                # reading to stage is no access by the user
                        src = os.open(existing, os.O_RDONLY | os.O_NOATIME | os.O_CLOEXEC)
                        with open(src, "rb") as f:
                            shutil.copyfileobj(f, out, 1 << 20)
            if st is not None:
                _chown(path, (st.st_uid, st.st_gid))
                os.chmod(path, stat.S_IMODE(st.st_mode))
                copy_xattrs(existing, path)
                if not truncate:        # opening to write changes no time by itself
                    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
            else:
                _chown(path, owner)     # first: chown clears set-id bits, chmod sets them
                os.chmod(path, mode & 0o7777)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        return StagedFile(target, path, fd)

    def _streaming(self, staged: StagedFile) -> StreamingCompressor:
        def needs_base(layout) -> bool:
            return choose_base(layout, neighbour_candidates(staged.target, self.root)) \
                is not None
        return StreamingCompressor(staged.fd, self.root, self._encoders, needs_base)

    def wrote(self, staged: StagedFile, offset: int, length: int) -> None:
        """length bytes were written at offset (the stream compresses what is complete)."""
        if staged.stream is not None:
            staged.stream.wrote(offset, length)

    def changed(self, staged: StagedFile, why: str) -> None:
        """The staged content changed other than by a write (truncate, fallocate): what
        was compressed on the way may be stale, so the file is compressed whole."""
        if staged.stream is not None:
            staged.stream.give_up(why)

    def move(self, old_target: str, new_target: str) -> None:
        """A name (a file, or a directory with files being written under it) was renamed:
        what is being written there will be stored under the new name. A file being
        written under new_target was replaced by the rename: it is never stored."""
        with self._lock:
            replaced = self._staged.pop(new_target, None)
            if replaced is not None and replaced.target != old_target:
                replaced.orphaned = True
            prefix = old_target + os.sep
            for target in [t for t in self._staged if t == old_target or t.startswith(prefix)]:
                staged = self._staged.pop(target)
                staged.target = new_target + target[len(old_target):]
                self._staged[staged.target] = staged

    def forget(self, target: str) -> None:
        """target was unlinked: a file being written there keeps its content for the
        descriptors open on it, but is never stored."""
        with self._lock:
            staged = self._staged.pop(target, None)
            if staged is not None:
                staged.orphaned = True

    def commit(self, staged: StagedFile) -> None:
        """Store the staged content as the target's new version (raises OSError, e.g.
        ENOSPC: then the previous version is untouched and the staged data kept)."""
        if staged.orphaned:
            return
        # The staging file is made durable only where it is what gets stored: a copy into
        # a hard-linked target (fsynced there) or a container written from it (fsynced
        # with its directory) makes the new version durable without it, and its dirty
        # pages die with it unwritten (a 2.3 GB shard copied in: 2.3 GB less to the disk).
        if _linked_plain(staged.target, staged.fd):
            _rewrite_in_place(staged)
            staged.dirty = False
            return
        stored = False
        if self._may_compress(staged.target):
            stored = self._store_compressed(staged)
        if stored:
            _remove_file(staged.target)                  # a plain older version
        else:
            os.fsync(staged.fd)
            if not _same_file(staged.target, staged.fd):    # (else published already)
                # Keep the staging file (open descriptors still use it): publish a
                # copy-free hard link under the target name, atomically replacing any
                # old version.
                tmp = staged.path + ".publish"
                try:
                    os.link(staged.path, tmp)
                except OSError:                          # no hard links here
                    shutil.copy2(staged.path, tmp)
                    copy_xattrs(staged.path, tmp)
                    st = os.stat(staged.path)
                    _chown(tmp, (st.st_uid, st.st_gid))
                    os.chmod(tmp, stat.S_IMODE(st.st_mode))
                os.replace(tmp, staged.target)
                _remove_file(staged.target + SUFFIX)     # a compressed older version
        _fsync_dir(os.path.dirname(staged.target))
        staged.dirty = False

    def _may_compress(self, target: str) -> bool:
        """A name with no room for the .fpz suffix is stored as it is."""
        return len(os.fsencode(os.path.basename(target))) + len(SUFFIX) <= self._name_max

    def _store_compressed(self, staged: StagedFile) -> bool:
        """Compress the staged content to TARGET.fpz, if fpfs recognises it and that is
        smaller. The container is finished under a temporary name and renamed over the
        old version only then, so the target never goes missing on the way."""
        layout = detect(staged.path)
        if not worth_compressing(layout):
            return False
        candidates = neighbour_candidates(staged.target, self.root)
        base = choose_base(layout, candidates)
        tmp = os.path.join(self.root, f"{tempfiles.TMP_PREFIX}pub-{uuid.uuid4().hex}{SUFFIX}")
        try:
            streamed = self._streamed(staged, layout, base)
            if streamed is not None:
                streamed.dst = tmp
                streamed.commit()
                if os.path.getsize(tmp) >= layout.file_size:
                    return False
            elif compress_if_smaller(staged.path, tmp, layout=layout, base=base,
                                     store_root=self.root) is None:
                return False
            st = os.fstat(staged.fd)
            _chown(tmp, (st.st_uid, st.st_gid))
            copy_metadata(staged.path, tmp)
            copy_xattrs(staged.path, tmp)
            os.replace(tmp, staged.target + SUFFIX)
        finally:
            _remove_file(tmp)
        return True

    def _streamed(self, staged: StagedFile, layout, base):
        """The container the stream wrote while the file was written (AtomicOutput), if
        it is exactly what compressing the file whole would store now; else None."""
        stream = staged.stream
        if stream is None:
            return None
        if base is not None:
            stream.give_up("a delta base appeared")
            return None
        out = stream.finish(os.fstat(staged.fd).st_size, layout)
        if out is not None:
            staged.stream = None
        return out

    def release(self, staged: StagedFile) -> None:
        """Drop one writer; the last one commits pending changes and removes the staging
        file. A failed commit is logged (close() already got its error from flush)."""
        with self._lock:
            staged.refs -= 1
            if staged.refs > 0:
                return
            if self._staged.get(staged.target) is staged:
                del self._staged[staged.target]
        try:
            if staged.dirty:
                self.commit(staged)
        except OSError as exc:
            log.error("could not store %s: %s (previous version kept)", staged.target, exc)
        finally:
            if staged.stream is not None:
                staged.stream.give_up("closed")
            os.close(staged.fd)
            _remove_file(staged.path)


def copy_xattrs(src: str, dst: str) -> None:
    """Give dst the extended attributes of src (best effort: a filesystem without them,
    or a namespace the daemon may not write, keeps what it can)."""
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError:
        return
    for name in names:
        try:
            os.setxattr(dst, name, os.getxattr(src, name, follow_symlinks=False),
                        follow_symlinks=False)
        except OSError as exc:
            log.info("could not copy xattr %s to %s: %s", name, dst, exc)


def _chown(path: str, owner: Optional[Owner]) -> None:
    if owner is None or owner == (-1, -1):
        return
    try:
        os.chown(path, owner[0], owner[1], follow_symlinks=False)
    except PermissionError:     # a daemon that is not root keeps its own ownership
        pass


def _linked_plain(target: str, fd: int) -> bool:
    """Whether target is a plain file with other hard links (not the staged file)."""
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and \
        not os.path.samestat(st, os.fstat(fd))


def _rewrite_in_place(staged: StagedFile) -> None:
    """A file with several names is one inode: new content goes into it, so every name
    shows it (as on a local filesystem; this store is not atomic, unlike a replace)."""
    out = os.open(staged.target, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        size = os.fstat(staged.fd).st_size
        done = 0
        while done < size:
            n = os.copy_file_range(staged.fd, out, size - done, done, done)
            if n == 0:
                break
            done += n
        os.ftruncate(out, size)
        st = os.fstat(staged.fd)
        os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.fsync(out)
    finally:
        os.close(out)


def _same_file(path: str, fd: int) -> bool:
    try:
        return os.path.samestat(os.lstat(path), os.fstat(fd))
    except FileNotFoundError:
        return False


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
