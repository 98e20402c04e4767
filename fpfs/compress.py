"""Whole-file operations: compress any file into a .fpz container (its tensors by their
element type, everything else as bytes), decompress it back, verify it. Outputs are
written atomically (temporary file in the target directory, fsync, rename) and a compressed
file is verified before it is renamed into place."""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Callable, Dict, Iterator, List, Optional, Tuple

from . import parallel, tempfiles
from .bases import BASES_DIR, keep_base, stored_name
from .codecs import DEFAULT_MIN_SAVING_PPM, block_type, dtype_code, encode_chunk, untyped_level
from .container import (DEFAULT_CHUNK_SIZE, BaseRef, ChunkRecord, Container, ContainerWriter,
                        checksum, is_container, validate_chunk_size)
from .deltas import BaseSource, match_regions
from .errors import AlreadyCompressed, CorruptContainer, FpfsError
from .formats import Layout, detect
from .packed_file import PackedFile
from .store import Store

Progress = Optional[Callable[[int], None]]   # called with the number of original bytes done
Chunk = Tuple[int, int, str, Optional[int]]   # offset, length, dtype, offset in the base


class SourceChanged(FpfsError):
    """The input file changed size while it was being compressed."""


@dataclass(frozen=True)
class CompressResult:
    original_size: int
    stored_size: int
    format: str = "bytes"
    base: Optional[str] = None          # the base the file was coded against, if any

    @property
    def ratio(self) -> float:
        return self.stored_size / self.original_size if self.original_size else 1.0


def layout_level(layout: Layout) -> int:
    """The zstd level for a file's untyped chunks, by how many bytes it has no tensor for."""
    return untyped_level(sum(r.length for r in layout.regions if r.tensor is None))


def plan_chunks(layout: Layout, chunk_size: int,
                base_offsets: Optional[Dict[int, int]] = None) -> List[Chunk]:
    """(offset, length, dtype, base offset) of every chunk: regions cut at chunk_size (at a
    whole number of blocks for block-quantized types), never spanning two regions."""
    chunks = []
    base_offsets = base_offsets or {}
    for r in layout.regions:
        step = chunk_size
        btype = block_type(r.dtype)
        if btype is not None and r.length % btype.block_bytes == 0:
            step = max(btype.block_bytes, chunk_size // btype.block_bytes * btype.block_bytes)
        base_start = base_offsets.get(r.offset)
        end = r.offset + r.length
        # Cut at multiples of step in the file, not in the region: readers ask for aligned
        # ranges (the kernel's 1 MiB readahead, page-cache pages), which then cover whole
        # chunks - decoded straight into the reader's buffer - instead of straddling two.
        cuts = [r.offset] + list(range((r.offset // step + 1) * step, end, step)) \
            if step == chunk_size and r.length > step else \
            list(range(r.offset, end, step))
        for off, stop in zip(cuts, cuts[1:] + [end]):
            base_off = None if base_start is None else base_start + off - r.offset
            chunks.append((off, stop - off, r.dtype, base_off))
    return chunks


def encode_at(fd: int, chunk: Chunk, min_saving_ppm: int,
              base: Optional[BaseSource], level_untyped: int) -> Tuple[ChunkRecord, bytes]:
    """Read and encode one chunk (os.pread, not mmap: a source that shrinks or a full tmpfs
    must be an error, not a SIGBUS that kills the process, e.g. the mount daemon)."""
    off, length, dtype, base_off = chunk
    data = os.pread(fd, length, off)
    if len(data) != length:
        raise SourceChanged(f"source file shrank while being compressed (at byte {off})")
    base_bytes = None
    if base is not None and base_off is not None:
        base_bytes = (base_off, base.read(base_off, length))
    codec, payload = encode_chunk(memoryview(data), dtype, min_saving_ppm, base_bytes,
                                  level_untyped=level_untyped)
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


class AtomicOutput:
    """A temporary file beside dst that becomes dst only on commit()."""

    def __init__(self, dst: str):
        self.dst = dst
        directory = os.path.dirname(os.path.abspath(dst))
        fd, self.tmp = tempfiles.create(directory)
        self.file = os.fdopen(fd, "wb", buffering=1 << 20)
        self._sync: Optional[Future] = None

    def start_sync(self) -> None:
        """Start writing what is written so far to the disk (fsync on another thread), so
        that the caller's next work - verifying the file - overlaps it; commit() waits for
        it (and raises its error)."""
        self.file.flush()
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fpfs-fsync")
        self._sync = pool.submit(os.fsync, self.file.fileno())
        pool.shutdown(wait=False)

    def _wait_sync(self) -> None:
        sync, self._sync = self._sync, None
        if sync is not None:
            sync.result()

    def commit(self) -> None:
        self.file.flush()
        self._wait_sync()
        os.fsync(self.file.fileno())        # anything written since (cheap otherwise)
        self.file.close()
        os.replace(self.tmp, self.dst)
        dir_fd = os.open(os.path.dirname(os.path.abspath(self.dst)), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def abort(self) -> None:
        try:
            try:
                self._wait_sync()           # never close the fd under a running fsync
            except OSError:
                pass
            self.file.close()
        finally:
            try:
                os.unlink(self.tmp)
            except FileNotFoundError:
                pass


def compress_file(src: str, dst: str, chunk_size: int = DEFAULT_CHUNK_SIZE,
                  threads: Optional[int] = None, progress: Progress = None,
                  verify: bool = True,
                  min_saving_ppm: int = DEFAULT_MIN_SAVING_PPM,
                  base: Optional[str] = None, store_root: Optional[str] = None,
                  layout: Optional[Layout] = None) -> CompressResult:
    """Compress src into the container dst (atomically, verified). Any file is accepted:
    tensors of a recognised format (fpfs.formats) are coded by element type, other bytes
    by zstd or as they are. min_saving_ppm=0 codes every plane that saves anything
    (smallest files, slower reads).

    base: a file (an original or a .fpz) that src is a fine-tune or later checkpoint of;
    chunks of tensors it shares are coded as deltas where that is smaller. The base's
    container is kept in store_root/.fpfs-bases (default: dst's directory, bases.py)."""
    validate_chunk_size(chunk_size)
    if is_container(src):
        raise AlreadyCompressed(f"{src}: already an fpfs container")
    layout = layout or detect(src)
    threads = threads or os.cpu_count() or 1
    store_root = store_root or os.path.dirname(os.path.abspath(dst))
    source = BaseSource.open(base, store_root) if base else None
    out = AtomicOutput(dst)
    try:
        base_offsets = match_regions(layout, source.layout) if source else {}
        if not base_offsets:
            source = _close(source)
        with open(src, "rb") as f:
            if os.fstat(f.fileno()).st_size != layout.file_size:
                raise SourceChanged(f"{src}: changed while being compressed")
            ref = BaseRef(source.sha256, source.size) if source else None
            stored = _write_container(f.fileno(), layout, out.file, chunk_size, threads,
                                      progress, min_saving_ppm, source, base_offsets, ref)
        out.start_sync()
        if source is not None:
            _store_base(source, store_root, chunk_size, threads, min_saving_ppm)
        if verify:
            verify_file(out.tmp, root=store_root)
        out.commit()
    except BaseException:
        out.abort()
        raise
    finally:
        _close(source)
    return CompressResult(layout.file_size, stored, layout.format,
                          source.path if source else None)


# Unrecognised files smaller than this are kept as they are: a container costs a 112-byte
# frame, 40 bytes a chunk and one more open per read through the mount, and a model
# directory's config files (a few KiB each) would save kilobytes in all. tokenizer.json
# and vocab.txt (hundreds of KiB, zstd -19: 35 % and 43 %) are above it.
PLAIN_MIN_BYTES = 64 * 1024


# The container's bytes are handed to the disk in steps of this many as they are written
# (tempfiles.start_writeback), so that commit's fsync waits for little.
WRITEBACK_BYTES = 8 << 20


def worth_compressing(layout: Layout) -> bool:
    """Whether to try storing a file compressed: any recognised format, or plain bytes of
    at least PLAIN_MIN_BYTES."""
    return layout.format != "bytes" or layout.file_size >= PLAIN_MIN_BYTES


def compress_if_smaller(src: str, dst: str, **kwargs) -> Optional[CompressResult]:
    """compress_file, keeping dst only if it is smaller than src (else removed: None).
    So no file is ever stored larger than it was."""
    result = compress_file(src, dst, **kwargs)
    if result.stored_size >= result.original_size:
        os.unlink(dst)
        return None
    return result


def _close(source: Optional[BaseSource]) -> None:
    if source is not None:
        source.close()


def _store_base(source: BaseSource, store_root: str, chunk_size: int, threads: int,
                min_saving_ppm: int) -> None:
    """Keep the base's container where the delta's readers will look for it."""
    if source.container_path is not None:
        keep_base(source.container_path, store_root, source.sha256)
        return
    target = os.path.join(store_root, BASES_DIR, stored_name(source.sha256))
    if not os.path.isfile(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        compress_file(source.path, target, chunk_size, threads, None, True, min_saving_ppm)


def _write_container(fd, layout, file, chunk_size, threads, progress, min_saving_ppm,
                     base, base_offsets, ref) -> int:
    prefix = os.pread(fd, layout.prefix_length, 0)
    if len(prefix) != layout.prefix_length:
        raise SourceChanged("source file shrank while being compressed")
    sha = hashlib.sha256(prefix)
    writer = ContainerWriter(file, prefix, layout.file_size, chunk_size, ref)
    done = layout.prefix_length
    synced = 0
    level = layout_level(layout)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fpfs-enc") as pool:
        encode = lambda chunk: encode_at(fd, chunk, min_saving_ppm, base, level)  # noqa: E731
        for rec, data in _ordered_map(pool, encode,
                                      plan_chunks(layout, chunk_size, base_offsets),
                                      4 * threads):
            sha.update(data)
            writer.add(rec)
            if writer.position - synced >= WRITEBACK_BYTES:
                file.flush()
                tempfiles.start_writeback(file.fileno(), synced, writer.position - synced)
                synced = writer.position
            done += rec.orig_length
            if progress:
                progress(done)
    return writer.finish(sha.digest())


def verified_original(packed: PackedFile, progress: Progress = None,
                      sink: Optional[Callable[[int, memoryview], object]] = None
                      ) -> Iterator[memoryview]:
    """The original bytes of an open container in order (decoded on all cores; each piece
    valid until the next is taken), every chunk checksum-verified; raises CorruptContainer
    after the last piece if the whole-file SHA-256 differs (so a consumer must not publish
    what it got before the iteration completes). sink: see parallel.iter_original."""
    sha = hashlib.sha256()
    done = 0
    for piece in parallel.iter_original(packed, sink=sink):
        sha.update(piece)
        yield piece
        done += len(piece)
        if progress:
            progress(done)
    if sha.digest() != packed.container.sha256:
        raise CorruptContainer(f"{packed.path}: whole-file SHA-256 mismatch")


def verify_file(path: str, progress: Progress = None, root: Optional[str] = None,
                store: Optional[Store] = None) -> Container:
    """Decode every chunk, check every checksum and the whole-file SHA-256 (a delta's base
    is found and checked too; root bounds where, bases.py; path and bases come from store,
    default: the one path names). Raises CorruptContainer (or a subclass), or MissingBase,
    on any mismatch."""
    packed = PackedFile(path, root=root, store=store)
    try:
        for _ in verified_original(packed, progress):
            pass
    finally:
        packed.close()
    return packed.container


def write_original(packed: PackedFile, out: BinaryIO, progress: Progress = None) -> None:
    """Write the original bytes of an open container to out, a regular file, from its
    current position (raises CorruptContainer at the end on a hash mismatch: the caller
    must then discard what it wrote). The decoding threads write their pieces themselves
    (pwrite on out's descriptor), so the writes run beside the whole-file SHA-256, which
    this thread computes in order."""
    out.flush()
    fd, start = out.fileno(), out.tell()

    def put(offset: int, piece: memoryview) -> None:
        pos = start + offset
        length = len(piece)
        while piece:
            n = os.pwrite(fd, piece, pos)
            piece, pos = piece[n:], pos + n
        tempfiles.start_writeback(fd, start + offset, length)

    for _ in verified_original(packed, progress, sink=put):
        pass
    out.seek(start + packed.size)


def decompress_file(src: str, dst: str, progress: Progress = None,
                    root: Optional[str] = None, store: Optional[Store] = None) -> int:
    """Write the original bytes of container src (a path or an s3:// URL) to dst
    (atomically); returns its size. The whole-file hash is checked before dst appears."""
    packed = PackedFile(src, root=root, store=store)
    try:
        out = AtomicOutput(dst)
        try:
            write_original(packed, out.file, progress)
            out.commit()
        except BaseException:
            out.abort()
            raise
        return packed.size
    finally:
        packed.close()
