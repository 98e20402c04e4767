"""Compressing a file while it is being written, chunk by chunk as its bytes arrive.

A safetensors file written in order (cp, save_file, save_pretrained, rsync) announces its
layout in its first bytes: the header names every tensor's dtype and place, and the file's
size. From then on every chunk whose bytes have all been written is encoded at once, on a
pool of one thread per core, and appended to a container being written beside it; when
the writer closes the file only the last chunks and the trailer are left: each chunk was
decoded again and checked right after it was encoded, the whole-file SHA-256 taken of the
bytes as they were appended, and the finished container is opened (every header, table
and trailer check) before it is handed over.

Writes may arrive a little out of order (the kernel's writeback sends several at once and
FUSE threads serve them in any order): those beyond the bytes written from the start wait
in a small set of ranges. Anything else - a byte written twice, too many ranges apart, a
truncate, another format, a file that needs a delta base, a size that does not match its
header - gives the stream up, and the file is compressed whole when it is stored, as
before. The staged file stays the source of truth
either way (it is what a crash leaves), so this only decides how early the work is done.
"""
from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Deque, Dict, Optional, Tuple

import numpy as np

from .codecs import DEFAULT_MIN_SAVING_PPM, DecodeError, decode_chunk
from .compress import AtomicOutput, encode_at, layout_level, plan_chunks
from .container import DEFAULT_CHUNK_SIZE, Container, ContainerWriter, checksum
from .errors import CorruptContainer, FpfsError
from .formats import FormatError, Layout
from .formats.safetensors import header_length, layout_from_header

log = logging.getLogger("fpfs")

# Encoder tasks (of up to TASK_BYTES of chunks each: fewer thread hand-offs than one a
# chunk) running or done and not yet appended: bounds the memory a fast writer can make the
# stream hold (original bytes plus payloads), and makes such a writer wait for the encoders.
TASK_BYTES = 1 << 20
MAX_PENDING = 16
# Written ranges not yet joined to the bytes written from the start.
MAX_RANGES = 256


class StreamingCompressor:
    """Encodes the staged file behind fd as it is written (wrote() after each write),
    into a temporary container in directory. finish() hands the verified container over,
    or None when the file must be compressed whole (then nothing is left behind)."""

    def __init__(self, fd: int, directory: str, pool: ThreadPoolExecutor,
                 needs_base: Callable[[Layout], bool], chunk_size: int = DEFAULT_CHUNK_SIZE):
        self._fd = fd
        self._directory = directory
        self._pool = pool
        self._needs_base = needs_base
        self._chunk_size = chunk_size
        self._end = 0                   # bytes written in order from the start
        self._ahead: Dict[int, int] = {}  # written ranges beyond _end: start -> end
        self._layout: Optional[Layout] = None
        self._todo: Deque[Tuple[int, int, str, None]] = collections.deque()
        self._pending: Deque[Future] = collections.deque()
        self._out: Optional[AtomicOutput] = None
        self._writer: Optional[ContainerWriter] = None
        self._sha = hashlib.sha256()
        self._level = 0
        self._chunk_count = 0
        self.given_up: Optional[str] = None
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return self.given_up is None

    def wrote(self, offset: int, length: int) -> None:
        """length bytes were just written at offset of the staged file."""
        with self._lock:
            if self.given_up is not None or not length:
                return
            if not self._note_range(offset, offset + length):
                return
            try:
                if self._layout is None and not self._read_layout():
                    return
                self._submit_written()
                self._append_done(wait=len(self._pending) > MAX_PENDING)
            except (OSError, FpfsError, FormatError, ValueError) as exc:
                self._give_up(str(exc))

    def give_up(self, why: str) -> None:
        """The staged file changed other than by writing in order (truncate, fallocate,
        a second writer from the start): compress it whole later."""
        with self._lock:
            if self.given_up is None:
                self._give_up(why)

    def finish(self, size: int, layout: Layout) -> Optional[AtomicOutput]:
        """The writer is done, the staged file is size bytes long and has layout (as
        fpfs.formats reads it now): the container, written and verified (the caller
        commits it under its name, or aborts it), or None. A stream that cannot be
        finished yet (fewer bytes than its header says) stays."""
        with self._lock:
            if self.given_up is not None or self._layout is None:
                return None
            if layout != self._layout and self._end == self._layout.file_size == size:
                self._give_up("its layout differs from what its header said")
                return None
            if self._end != self._layout.file_size or size != self._end or self._ahead:
                if size > self._layout.file_size or self._end > self._layout.file_size:
                    self._give_up("longer than its header says")
                return None
            try:
                self._submit_written(all_of_them=True)
                self._append_done(wait=True, all_of_them=True)
                self._writer.finish(self._sha.digest())
                out, self._out = self._out, None
                self.given_up = "finished"
            except (OSError, FpfsError, FormatError, ValueError) as exc:
                self._give_up(str(exc))
                return None
        try:
            out.start_sync()
            with Container(out.tmp) as c:
                if c.original_size != size or c.sha256 != self._sha.digest() or \
                        len(c) != self._chunk_count:
                    raise CorruptContainer(f"{out.tmp}: not the container it was written as")
        except BaseException:
            out.abort()
            raise
        return out

    # -- under the lock -------------------------------------------------------------------
    def _note_range(self, start: int, end: int) -> bool:
        """Record [start, end) as written; False (given up) if any byte of it was written
        before (its chunk may be encoded already) or too many ranges wait."""
        if start < self._end or any(start < e and s < end for s, e in self._ahead.items()):
            self._give_up("a byte written twice")
            return False
        if start > self._end:
            if len(self._ahead) >= MAX_RANGES:
                self._give_up("written too far out of order")
                return False
            self._ahead[start] = end
            return True
        self._end = end
        while self._end in self._ahead:
            self._end = self._ahead.pop(self._end)
        return True

    def _read_layout(self) -> bool:
        """Once the header is in: the layout, and the container started. False: not yet."""
        if self._end < 16:
            return False
        head = os.pread(self._fd, 16, 0)
        n = header_length(head, 1 << 62)
        if n is None:
            self._give_up("not a safetensors file")
            return False
        if self._end < 8 + n:
            return False
        raw = os.pread(self._fd, n, 8)
        layout = layout_from_header(raw, 8 + n + _data_length(raw))
        if self._needs_base(layout):
            self._give_up("coded against a base")
            return False
        self._layout = layout
        self._level = layout_level(layout)
        self._todo.extend(plan_chunks(layout, self._chunk_size))
        self._chunk_count = len(self._todo)
        prefix = os.pread(self._fd, layout.prefix_length, 0)
        self._sha.update(prefix)
        self._out = AtomicOutput(os.path.join(self._directory, "stream.fpz"))
        self._writer = ContainerWriter(self._out.file, prefix, layout.file_size,
                                       self._chunk_size)
        return True

    def _submit_written(self, all_of_them: bool = False) -> None:
        """Hand the chunks written completely to the encoders, a task's worth at a time
        (all_of_them: the last, smaller task too)."""
        while self._todo:
            task, size = [], 0
            for chunk in self._todo:
                if chunk[0] + chunk[1] > self._end or size >= TASK_BYTES:
                    break
                task.append(chunk)
                size += chunk[1]
            if not task or (size < TASK_BYTES and len(task) < len(self._todo)
                            and not all_of_them and self._end < self._layout.file_size):
                return
            for _ in task:
                self._todo.popleft()
            self._pending.append(self._pool.submit(_encode_all, self._fd, task, self._level))

    def _append_done(self, wait: bool, all_of_them: bool = False) -> None:
        while self._pending and (self._pending[0].done() or wait):
            for rec, data in self._pending.popleft().result():
                self._sha.update(data)
                self._writer.add(rec)
            if not all_of_them and len(self._pending) <= MAX_PENDING // 2:
                wait = False
        if all_of_them and self._todo:
            raise ValueError("chunks left unwritten")

    def _give_up(self, why: str) -> None:
        self.given_up = why
        for fut in self._pending:
            fut.cancel()
        for fut in self._pending:
            try:
                fut.result()
            except BaseException:       # noqa: BLE001 - the file is compressed whole later
                pass
        self._pending.clear()
        self._todo.clear()
        if self._out is not None:
            self._out.abort()
            self._out = None
        log.debug("streaming compression given up: %s", why)


def _encode_all(fd: int, chunks, level: int) -> list:
    return [_encode_checked(fd, chunk, level) for chunk in chunks]


def _encode_checked(fd: int, chunk, level: int):
    """encode_at, then the payload decoded again and checked against the original's
    checksum (what verifying the finished file would do, while the chunk is in cache)."""
    rec, data = encode_at(fd, chunk, DEFAULT_MIN_SAVING_PPM, None, level)
    out = np.empty(rec.orig_length, np.uint8)
    try:
        decode_chunk(rec.codec, rec.payload, memoryview(out))
    except DecodeError as exc:
        raise CorruptContainer(f"chunk at {rec.orig_offset} does not decode: {exc}") from None
    if checksum(out) != rec.checksum:
        raise CorruptContainer(f"chunk at {rec.orig_offset} decodes to other bytes")
    return rec, data


def _data_length(raw: bytes) -> int:
    """The data section's length a safetensors header implies (its largest end offset)."""
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise FormatError("header is not valid JSON") from None
    if not isinstance(header, dict):
        raise FormatError("header is not a JSON object")
    ends = [info.get("data_offsets", [0, 0])[1] for name, info in header.items()
            if name != "__metadata__" and isinstance(info, dict)
            and isinstance(info.get("data_offsets"), list) and len(info["data_offsets"]) == 2]
    if not all(isinstance(e, int) and e >= 0 for e in ends):
        raise FormatError("invalid data_offsets")
    return max(ends, default=0)

