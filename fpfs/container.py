"""The .fpz container: header, verbatim safetensors header, chunk payloads, chunk table,
trailer. FORMAT.md is the byte-by-byte specification; this module is its only reader and
writer. The reader treats every byte as hostile and validates all of it at open time, so
later reads only need the per-chunk checks (payload decode + checksum)."""
from __future__ import annotations

import array
import os
import bisect
import struct
import threading
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Optional, Tuple, Union

import numpy as np
import xxhash

from . import _kernels
from .codecs import (CODECS, CODEC_DELTA, CODEC_EXPMANT, CODEC_PLANES, CODEC_RAW, V1_CODECS,
                     V4_CODECS, BaseReader, DecodeError, decode_chunk, scratch)
from .errors import CorruptChunk, CorruptContainer, UnsupportedVersion
from .store import StoreObject, open_object

SUFFIX = ".fpz"             # a container of X is stored as X.fpz
MAGIC = b"\x89FPZ\r\n\x1a\n"
END_MAGIC = b"FPZ-END\n"
VERSION = 4                 # written; versions 1 to 4 are read
READABLE_VERSIONS = (1, 2, 3, 4)   # 3: rANS32 planes (PLANES mode 3); 4: codec 6 EXPMANT
# Codecs that decode_chunks_from_fd decodes (a run of them is one call without the GIL).
_FUSED_CODECS = frozenset((CODEC_RAW, CODEC_PLANES, CODEC_EXPMANT))
RUN_SLICE_BYTES = 1 << 20   # original bytes decoded per call before their checksums
FLAG_BASE = 0x1             # v2: a base section follows the header (a delta file)
HEADER = struct.Struct("<8sHHIQQII")          # magic version flags chunk_size orig_size prefix_len crc zero
TRAILER = struct.Struct("<QQQ32sII8s")         # table_off count orig_size sha256 table_crc trailer_crc end
CHUNK_ENTRY = np.dtype([
    ("orig_offset", "<u8"), ("comp_offset", "<u8"), ("orig_length", "<u4"),
    ("comp_length", "<u4"), ("checksum", "<u8"), ("codec", "u1"), ("dtype", "u1"),
    ("reserved", "<u2"), ("reserved2", "<u4"),
])
BASE_SECTION = struct.Struct("<32sQ")   # base SHA-256, base original size
assert HEADER.size == 40 and TRAILER.size == 72 and CHUNK_ENTRY.itemsize == 40

DEFAULT_CHUNK_SIZE = 256 * 1024
TAIL_SLACK_CHUNKS = 256     # table entries read beyond one per chunk_size (tensor boundaries)
MIN_CHUNK_SIZE = 4096
MAX_CHUNK_SIZE = 64 * 1024 * 1024


_payload_buffers = threading.local()


def _payload_buffer(size: int, chunk_size: int) -> bytearray:
    """This thread's reusable payload buffer, at least size bytes (a fresh one per chunk
    would cost page faults on every read)."""
    buf = getattr(_payload_buffers, "buf", None)
    if buf is None or len(buf) < size:
        buf = _payload_buffers.buf = bytearray(max(size, chunk_size + 1024))
    return buf


def checksum(data) -> int:
    """Per-chunk checksum of original bytes (xxh3-64: ~60 GB/s, costs nothing beside decode)."""
    return xxhash.xxh3_64_intdigest(data)


def validate_chunk_size(chunk_size: int) -> int:
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE or chunk_size % 8:
        raise ValueError(f"chunk size must be a multiple of 8 between {MIN_CHUNK_SIZE} "
                         f"and {MAX_CHUNK_SIZE} bytes, not {chunk_size}")
    return chunk_size


@dataclass(frozen=True)
class ChunkRecord:
    orig_offset: int
    orig_length: int
    codec: int
    dtype: int
    checksum: int
    payload: bytes


@dataclass(frozen=True)
class BaseRef:
    """The file a delta container is coded against: named by content, never by path."""
    sha256: bytes
    size: int


class ContainerWriter:
    """Streams a container to a binary file object: never seeks back (FORMAT.md)."""

    def __init__(self, out: BinaryIO, prefix: bytes, original_size: int, chunk_size: int,
                 base: Optional[BaseRef] = None):
        self._out = out
        self._original_size = original_size
        self._prefix_len = len(prefix)
        flags = FLAG_BASE if base is not None else 0
        section = BASE_SECTION.pack(base.sha256, base.size) if base is not None else b""
        head = HEADER.pack(MAGIC, VERSION, flags, validate_chunk_size(chunk_size),
                           original_size, len(prefix), 0, 0)
        crc = zlib.crc32(prefix, zlib.crc32(section, zlib.crc32(head[:32])))
        head = HEADER.pack(MAGIC, VERSION, flags, chunk_size, original_size, len(prefix), crc, 0)
        self._header_crc = crc
        self._has_base = base is not None
        out.write(head)
        out.write(section)
        out.write(prefix)
        self._pos = len(head) + len(section) + len(prefix)
        self._next_orig = len(prefix)
        self._entries = []

    def add(self, rec: ChunkRecord) -> None:
        if rec.orig_offset != self._next_orig:
            raise ValueError("chunks must be added in order without gaps")
        if rec.codec == CODEC_DELTA and not self._has_base:
            raise ValueError("a delta chunk needs a container with a base")
        self._out.write(rec.payload)
        self._entries.append((rec.orig_offset, self._pos, rec.orig_length, len(rec.payload),
                              rec.checksum, rec.codec, rec.dtype, 0, 0))
        self._pos += len(rec.payload)
        self._next_orig += rec.orig_length

    @property
    def position(self) -> int:
        """Bytes of the container written so far."""
        return self._pos

    def finish(self, sha256: bytes) -> int:
        """Write table and trailer; returns the container's size."""
        if self._next_orig != self._original_size:
            raise ValueError("chunks do not cover the whole original file")
        table = np.array(self._entries, dtype=CHUNK_ENTRY).tobytes()
        self._out.write(table)
        body = TRAILER.pack(self._pos, len(self._entries), self._original_size, sha256,
                            zlib.crc32(table), 0, END_MAGIC)
        # Seeded with the header CRC: a trailer (and the table it vouches for) only
        # validates together with the header and prefix it was written with.
        trailer_crc = zlib.crc32(body[:56], self._header_crc)
        self._out.write(TRAILER.pack(self._pos, len(self._entries), self._original_size, sha256,
                                     zlib.crc32(table), trailer_crc, END_MAGIC))
        return self._pos + len(table) + TRAILER.size


class Container:
    """Read side of a .fpz file: validated metadata plus per-chunk decode.

    The bytes come from a StoreObject (fpfs/store/: a local file, or an S3 object); a path
    or s3:// URL is opened through the matching store. Opening costs one read of the head
    (header, base section, prefix) and one of the tail (chunk table, trailer) - a single
    one for a small file - and each chunk one read of its payload, which the store may
    batch with its neighbours. Thread-safe: reads keep no position."""

    def __init__(self, source: Union[str, StoreObject]):
        self.source = source if isinstance(source, StoreObject) else open_object(source)
        self.path = self.source.name
        # Set by whoever resolved self.base (PackedFile): reads the base's original bytes.
        self.base_reader: Optional[BaseReader] = None
        try:
            self._load()
            self.identity = self.source.identity
            self._chunks = self.source.chunk_reader(self.table["comp_offset"],
                                                    self.table["comp_length"])
        except BaseException:
            self.source.close()
            raise

    # -- opening -----------------------------------------------------------------------
    def _fail(self, what: str):
        raise CorruptContainer(f"{self.path}: {what}")

    def _load(self) -> None:
        meta = _MetadataReads(self.source, self._fail)
        file_size = meta.file_size
        if file_size < HEADER.size + TRAILER.size:
            self._fail(f"too short for a container ({file_size} bytes)")
        head = meta.get(0, HEADER.size)
        magic, version, flags, chunk_size, orig_size, prefix_len, crc, zero = HEADER.unpack(head)
        if magic != MAGIC:
            self._fail("not an fpfs container (bad magic)")
        if zero:
            self._fail("reserved header field is not zero")
        if version not in READABLE_VERSIONS or flags & ~(FLAG_BASE if version >= 2 else 0):
            raise UnsupportedVersion(f"{self.path}: format version {version} flags {flags:#x} "
                                     f"(this fpfs reads versions 1 to 3); upgrade fpfs")
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE or chunk_size % 8:
            self._fail(f"invalid chunk size {chunk_size}")
        section_len = BASE_SECTION.size if flags & FLAG_BASE else 0
        if prefix_len > orig_size or \
                HEADER.size + section_len + prefix_len + TRAILER.size > file_size:
            self._fail("header lengths exceed the file")
        section = meta.get(HEADER.size, section_len)
        prefix = meta.get(HEADER.size + section_len, prefix_len)
        if zlib.crc32(prefix, zlib.crc32(section, zlib.crc32(head[:32]))) != crc:
            self._fail("header checksum mismatch")
        self.base = BaseRef(*BASE_SECTION.unpack(section)) if section_len else None
        self.version = version
        data_start = HEADER.size + section_len + prefix_len
        # One read for table and trailer: the table of an honest file has about one entry
        # per chunk_size of data past the prefix, plus one per tensor boundary.
        guess = (orig_size - prefix_len) // chunk_size + TAIL_SLACK_CHUNKS
        meta.read_tail(min(file_size - data_start, TRAILER.size + CHUNK_ENTRY.itemsize * guess))
        tail = meta.get(file_size - TRAILER.size, TRAILER.size)
        table_off, count, orig2, sha, table_crc, trailer_crc, end = TRAILER.unpack(tail)
        if end != END_MAGIC:
            self._fail("trailer missing (incomplete write?)")
        if zlib.crc32(tail[:56], crc) != trailer_crc:
            self._fail("trailer damaged, or header and trailer from different files")
        if orig2 != orig_size or table_off < data_start or \
                table_off + count * CHUNK_ENTRY.itemsize != file_size - TRAILER.size:
            self._fail("trailer inconsistent with header and file size")
        raw_table = meta.get(table_off, count * CHUNK_ENTRY.itemsize)
        if zlib.crc32(raw_table) != table_crc:
            self._fail("chunk table checksum mismatch")
        table = np.frombuffer(raw_table, dtype=CHUNK_ENTRY)
        self._validate_table(table, chunk_size, prefix_len, orig_size, data_start, table_off)
        self.chunk_size = chunk_size
        self.original_size = orig_size
        self.prefix = prefix
        self.sha256 = sha
        self.table = table
        self.stored_size = file_size
        # Per-chunk fields as array.array: the read path indexes them per chunk, and a
        # numpy scalar costs ~10x a plain int (bisect works on them directly).
        self._orig_offsets = array.array("q", table["orig_offset"].astype(np.int64).tobytes())
        self._orig_lengths = array.array("q", table["orig_length"].astype(np.int64).tobytes())
        self._comp_lengths = array.array("q", table["comp_length"].astype(np.int64).tobytes())
        self._codecs = array.array("q", table["codec"].astype(np.int64).tobytes())
        self._checksums = array.array("Q", table["checksum"].astype(np.uint64).tobytes())
        # The same fields as contiguous int64 arrays, sliced for decode_chunks_from_fd.
        self._run_fields = tuple(np.ascontiguousarray(table[f], dtype=np.int64) for f in
                                 ("comp_offset", "comp_length", "codec", "orig_length"))

    def _validate_table(self, t, chunk_size, prefix_len, orig_size, data_start, table_off):
        n = len(t)
        if n == 0:
            if prefix_len != orig_size or table_off != data_start:
                self._fail("empty chunk table but data present")
            return
        olen = t["orig_length"].astype(np.int64)
        clen = t["comp_length"].astype(np.int64)
        ooff = t["orig_offset"].astype(np.int64)
        coff = t["comp_offset"].astype(np.int64)
        if (olen < 1).any() or (olen > chunk_size).any():
            self._fail("chunk with invalid original length")
        if ooff[0] != prefix_len or (ooff[1:] != ooff[:-1] + olen[:-1]).any() \
                or ooff[-1] + olen[-1] != orig_size:
            self._fail("chunks do not tile the original file")
        if coff[0] != data_start or (coff[1:] != coff[:-1] + clen[:-1]).any() \
                or coff[-1] + clen[-1] != table_off:
            self._fail("chunk payloads do not tile the data section")
        codecs = t["codec"]
        if self.version == 1:
            allowed = set(V1_CODECS)
        else:
            allowed = set(CODECS) - (set() if self.version >= 4 else set(V4_CODECS))
        if self.base is None:
            allowed.discard(CODEC_DELTA)
        known = np.isin(codecs, np.array(sorted(allowed), dtype=np.uint8))
        if not known.all():
            self._fail(f"codec id {int(codecs[~known][0])} not allowed in this file")
        raw = codecs == CODEC_RAW
        if (clen[raw] != olen[raw]).any():
            self._fail("raw chunk whose stored length differs from its original length")
        if (t["reserved"] != 0).any() or (t["reserved2"] != 0).any():
            self._fail("reserved chunk-table fields are not zero")

    # -- reading -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.table)

    def chunk_index(self, offset: int) -> int:
        """Index of the chunk holding original byte offset (offset >= len(prefix))."""
        return bisect.bisect_right(self._orig_offsets, offset) - 1

    def chunk_span(self, index: int) -> Tuple[int, int]:
        return self._orig_offsets[index], self._orig_lengths[index]

    def read_payload(self, index: int) -> bytes:
        """The stored payload of chunk `index`, as read from disk."""
        return bytes(self._read_payload_view(index))

    def prepare(self, first: int, last: int) -> None:
        """Chunks first..last are about to be decoded: a remote store fetches their
        payloads together (one GET for neighbours) instead of one request each."""
        self._chunks.prepare(first, last)

    def _read_payload_view(self, index: int) -> memoryview:
        """The payload read into this thread's reusable buffer (valid until this thread's
        next call): a fresh bytes object per chunk would cost page faults on every read."""
        size = self._comp_lengths[index]
        view = memoryview(_payload_buffer(size, self.chunk_size))[:size]
        if self._chunks.read_into(index, view) != size:
            raise CorruptChunk(self.path, index, "file truncated")
        return view

    def decode_run_into(self, first: int, last: int, out: memoryview) -> None:
        """Decode chunks first..last into out (exactly their original bytes, back to back)
        and verify their checksums. A local file of RAW, PLANES and EXPMANT chunks is read
        and decoded in one call that holds the GIL once, not twice per chunk (a 1 MiB read
        through the mount is 4 chunks); anything else goes chunk by chunk. (Cutting that
        call among threads of its own measured slower through the mount: the kernel already
        keeps ~1.4 requests in flight, and two per request oversubscribe two cores.)"""
        fd = self.source.fileno()
        if fd is None or first == last or \
                any(self._codecs[i] not in _FUSED_CODECS or self._comp_lengths[i] < 1
                    for i in range(first, last + 1)):
            pos = 0
            for i in range(first, last + 1):
                n = self._orig_lengths[i]
                self.decode_into(i, out[pos:pos + n])
                pos += n
            return
        # Slices of RUN_SLICE_BYTES, each checksummed right after it is decoded, while it
        # is still in cache (a whole-file read() is one run: checksumming 45 MB after
        # decoding it all read it back from memory).
        pos = 0
        while first <= last:
            stop, span = first, self._orig_lengths[first]
            while stop < last and span + self._orig_lengths[stop + 1] <= RUN_SLICE_BYTES:
                stop += 1
                span += self._orig_lengths[stop]
            self._decode_slice(fd, first, stop, out[pos:pos + span])
            pos += span
            first = stop + 1

    def _decode_slice(self, fd: int, first: int, last: int, out: memoryview) -> None:
        offsets, lengths, codecs, sizes = (a[first:last + 1] for a in self._run_fields)
        payload = _payload_buffer(max(lengths), self.chunk_size)
        failed, code, err = _kernels.decode_chunks_from_fd(
            fd, offsets, lengths, codecs, sizes, out, payload, scratch(int(max(sizes))))
        if failed >= 0:
            if err:
                raise OSError(err, os.strerror(err), self.path)
            raise CorruptChunk(self.path, first + failed, _kernels.run_error_message(code))
        pos = 0
        for i in range(first, last + 1):
            n = self._orig_lengths[i]
            if checksum(out[pos:pos + n]) != self._checksums[i]:
                raise CorruptChunk(self.path, i, "checksum mismatch")
            pos += n

    def decode(self, index: int) -> np.ndarray:
        """The original bytes of chunk `index` (uint8 array), checksum-verified. Callers
        share the result through the cache and must not modify it."""
        out = np.empty(self._orig_lengths[index], dtype=np.uint8)
        self.decode_into(index, memoryview(out))       # every byte is overwritten
        return out

    def decode_into(self, index: int, out: memoryview) -> None:
        """Decode chunk `index` into out (exactly its original length) and verify its
        checksum; on CorruptChunk the content of out is undefined."""
        payload = self._read_payload_view(index)
        try:
            decode_chunk(self._codecs[index], payload, out, self.base_reader)
        except DecodeError as exc:
            raise CorruptChunk(self.path, index, str(exc)) from None
        if checksum(out) != self._checksums[index]:
            raise CorruptChunk(self.path, index, "checksum mismatch")

    def close(self) -> None:
        self.source.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class _MetadataReads:
    """The few reads that open a container: the head (header, base section, prefix) in one,
    the tail (table, trailer) in another; any range they miss is read on its own."""
    HEAD_BYTES = 64 * 1024

    def __init__(self, source: StoreObject, fail):
        self._source = source
        self._fail = fail
        self._head = source.read(0, self.HEAD_BYTES)
        self.file_size = source.size            # known after the first read of an S3 object
        self._tail = b""

    def read_tail(self, size: int) -> None:
        start = self.file_size - max(size, TRAILER.size)
        if start <= len(self._head):        # head and tail meet: the rest in one read
            if len(self._head) < self.file_size:
                self._head += self._read(len(self._head), self.file_size - len(self._head))
            return
        self._tail = self._read(start, self.file_size - start)

    def get(self, offset: int, size: int) -> bytes:
        if offset + size <= len(self._head):
            return self._head[offset:offset + size]
        tail_start = self.file_size - len(self._tail)
        if self._tail and offset >= tail_start:
            return self._tail[offset - tail_start:offset - tail_start + size]
        return self._read(offset, size)

    def _read(self, offset: int, size: int) -> bytes:
        data = self._source.read(offset, size)
        if len(data) != size:
            self._fail(f"truncated: wanted {size} bytes at {offset}, got {len(data)}")
        return data


def is_container(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False
