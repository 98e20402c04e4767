"""Whole-file operations: compress a safetensors file into a .fpz container, decompress it
back, verify it. Outputs are written atomically (temporary file in the target directory,
fsync, rename) and a compressed file is verified before it is renamed into place."""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator, List, Optional, Tuple

from . import tempfiles
from .codecs import DEFAULT_MIN_SAVING_PPM, dtype_code, encode_chunk
from .container import (DEFAULT_CHUNK_SIZE, ChunkRecord, Container, ContainerWriter, checksum,
                        validate_chunk_size)
from .errors import CorruptContainer, FpfsError
from .safetensors_header import SafetensorsLayout, read_layout

Progress = Optional[Callable[[int], None]]   # called with the number of original bytes done


class SourceChanged(FpfsError):
    """The input file changed size while it was being compressed."""


@dataclass(frozen=True)
class CompressResult:
    original_size: int
    stored_size: int

    @property
    def ratio(self) -> float:
        return self.stored_size / self.original_size if self.original_size else 1.0


def plan_chunks(layout: SafetensorsLayout, chunk_size: int) -> List[Tuple[int, int, str]]:
    """(offset, length, dtype) of every chunk: regions cut at chunk_size, never spanning two."""
    chunks = []
    for r in layout.regions:
        for off in range(r.offset, r.offset + r.length, chunk_size):
            chunks.append((off, min(chunk_size, r.offset + r.length - off), r.dtype))
    return chunks


def _encode(fd: int, chunk: Tuple[int, int, str],
            min_saving_ppm: int) -> Tuple[ChunkRecord, bytes]:
    """Read and encode one chunk (os.pread, not mmap: a source that shrinks or a full tmpfs
    must be an error, not a SIGBUS that kills the process, e.g. the mount daemon)."""
    off, length, dtype = chunk
    data = os.pread(fd, length, off)
    if len(data) != length:
        raise SourceChanged(f"source file shrank while being compressed (at byte {off})")
    codec, payload = encode_chunk(memoryview(data), dtype, min_saving_ppm)
    return ChunkRecord(off, length, codec, dtype_code(dtype), checksum(data), payload), data


def _ordered_map(pool: ThreadPoolExecutor, fn, items, window: int) -> Iterator:
    """pool.map with a bounded number of results in flight (memory stays O(window))."""
    pending = []
    it = iter(items)
    for item in it:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.pop(0).result()
    for fut in pending:
        yield fut.result()


class _AtomicOutput:
    """A temporary file beside dst that becomes dst only on commit()."""

    def __init__(self, dst: str):
        self.dst = dst
        directory = os.path.dirname(os.path.abspath(dst))
        fd, self.tmp = tempfiles.create(directory)
        self.file = os.fdopen(fd, "wb", buffering=1 << 20)

    def commit(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.dst)
        dir_fd = os.open(os.path.dirname(os.path.abspath(self.dst)), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def abort(self) -> None:
        try:
            self.file.close()
        finally:
            try:
                os.unlink(self.tmp)
            except FileNotFoundError:
                pass


def compress_file(src: str, dst: str, chunk_size: int = DEFAULT_CHUNK_SIZE,
                  threads: Optional[int] = None, progress: Progress = None,
                  verify: bool = True,
                  min_saving_ppm: int = DEFAULT_MIN_SAVING_PPM) -> CompressResult:
    """Compress the safetensors file src into the container dst (atomically, verified).
    min_saving_ppm=0 codes every plane that saves anything (smallest files, slower reads)."""
    validate_chunk_size(chunk_size)
    layout = read_layout(src)
    threads = threads or os.cpu_count() or 1
    out = _AtomicOutput(dst)
    try:
        with open(src, "rb") as f:
            if os.fstat(f.fileno()).st_size != layout.file_size:
                raise SourceChanged(f"{src}: changed while being compressed")
            stored = _write_container(f.fileno(), layout, out.file, chunk_size, threads,
                                      progress, min_saving_ppm)
        out.file.flush()
        if verify:
            verify_file(out.tmp)
        out.commit()
    except BaseException:
        out.abort()
        raise
    return CompressResult(layout.file_size, stored)


def _write_container(fd, layout, file, chunk_size, threads, progress,
                     min_saving_ppm) -> int:
    prefix = os.pread(fd, layout.prefix_length, 0)
    if len(prefix) != layout.prefix_length:
        raise SourceChanged("source file shrank while being compressed")
    sha = hashlib.sha256(prefix)
    writer = ContainerWriter(file, prefix, layout.file_size, chunk_size)
    done = layout.prefix_length
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fpfs-enc") as pool:
        encode = lambda chunk: _encode(fd, chunk, min_saving_ppm)  # noqa: E731
        for rec, data in _ordered_map(pool, encode, plan_chunks(layout, chunk_size),
                                      4 * threads):
            sha.update(data)
            writer.add(rec)
            done += rec.orig_length
            if progress:
                progress(done)
    return writer.finish(sha.digest())


def verified_original(container: Container, progress: Progress = None) -> Iterator[bytes]:
    """The original bytes of an open container in order, every chunk checksum-verified;
    raises CorruptContainer after the last piece if the whole-file SHA-256 differs (so a
    consumer must not publish what it got before the iteration completes)."""
    sha = hashlib.sha256()
    done = 0
    for piece in container.iter_original():
        sha.update(piece)
        yield piece
        done += len(piece)
        if progress:
            progress(done)
    if sha.digest() != container.sha256:
        raise CorruptContainer(f"{container.path}: whole-file SHA-256 mismatch")


def verify_file(path: str, progress: Progress = None) -> Container:
    """Decode every chunk, check every checksum and the whole-file SHA-256.
    Raises CorruptContainer (or a subclass) on any mismatch."""
    with Container(path) as c:
        for _ in verified_original(c, progress):
            pass
        return c


def write_original(container: Container, out: BinaryIO, progress: Progress = None) -> None:
    """Write the original bytes of an open container to out (raises CorruptContainer at
    the end on a hash mismatch: the caller must then discard what it wrote)."""
    for piece in verified_original(container, progress):
        out.write(piece)


def decompress_file(src: str, dst: str, progress: Progress = None) -> int:
    """Write the original bytes of container src to dst (atomically); returns its size.
    The whole-file hash is checked before dst appears."""
    with Container(src) as c:
        out = _AtomicOutput(dst)
        try:
            write_original(c, out.file, progress)
            out.commit()
        except BaseException:
            out.abort()
            raise
        return c.original_size
