"""A small, hostile-input-safe reader of a ZIP file's entries (for torch.save and .npz).

The central directory is listed with Python's zipfile (which knows ZIP64), but nothing it
says is trusted: each entry's LOCAL header is read and checked here, because the local
header's extra field decides where the data really starts (torch.save pads it to align
storages to 64 bytes, np.savez puts a ZIP64 extra there; the central directory shows
neither). Every data range must lie inside the file, before the central directory, and
entries must not overlap. Any lie raises FormatError with a one-line reason; no length
field is ever used to size an allocation (reads are clamped to the file).
"""
from __future__ import annotations

import struct
import zipfile
from dataclasses import dataclass
from typing import BinaryIO, List, Optional

from .layout import FormatError

LOCAL_MAGIC = b"PK\x03\x04"
LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")     # 30 bytes, APPNOTE 4.3.7
STORED = 0
UTF8_NAME = 0x800               # general purpose flag bit 11: the name is UTF-8
# A bound on the entry count: np.savez of a million arrays is already absurd, and it keeps
# a forged central directory from building an unbounded list of ZipInfo objects.
MAX_ENTRIES = 1 << 20


@dataclass(frozen=True)
class ZipEntry:
    name: str
    method: int                 # 0 stored, 8 deflated, ...
    flags: int
    header_offset: int          # the local header
    data_offset: int            # first byte of the (possibly compressed) data
    length: int                 # bytes of data in the file (the compressed size)

    @property
    def data_end(self) -> int:
        return self.data_offset + self.length


def first_local_name(head: bytes) -> Optional[bytes]:
    """The entry name in the local header at offset 0, if head starts with one (for sniff)."""
    if len(head) < LOCAL_HEADER.size or head[:4] != LOCAL_MAGIC:
        return None
    n = LOCAL_HEADER.unpack_from(head, 0)[9]
    name = head[LOCAL_HEADER.size:LOCAL_HEADER.size + n]
    return name if len(name) == n else None


class _Clamped:
    """A read-only view of f limited to file_size bytes: zipfile's read(size_cd) of a forged
    size then returns what the file holds instead of allocating what the field claims."""

    def __init__(self, f: BinaryIO, file_size: int):
        self._f = f
        self._size = file_size
        self._pos = 0

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        pos = base + offset
        if pos < 0:             # zipfile expects OSError here (it probes before the file)
            raise OSError("seek before the start of the file")
        self._pos = pos
        return pos

    def tell(self) -> int:
        return self._pos

    def read(self, n: int = -1) -> bytes:
        left = max(self._size - self._pos, 0)
        n = left if n is None or n < 0 else min(n, left)
        if n == 0:
            return b""
        self._f.seek(self._pos)
        data = self._f.read(n)
        self._pos += len(data)
        return data

    def seekable(self) -> bool:
        return True


def _raw_name(info: zipfile.ZipInfo) -> bytes:
    """The name bytes as stored: zipfile decoded them with UTF-8 or cp437 (both round-trip
    exactly), and orig_filename is before its NUL truncation and separator rewriting."""
    return info.orig_filename.encode("utf-8" if info.flag_bits & UTF8_NAME else "cp437")


def _list(f: BinaryIO, file_size: int):
    try:
        zf = zipfile.ZipFile(_Clamped(f, file_size))  # type: ignore[arg-type]
        infos = zf.infolist()
        start_dir = getattr(zf, "start_dir", file_size)
    # zipfile's exceptions on a forged directory are not a documented set (BadZipFile,
    # struct.error, UnicodeDecodeError, NotImplementedError, ...): all mean "not a zip".
    except Exception as exc:    # noqa: BLE001
        raise FormatError(f"bad zip central directory ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    return infos, start_dir


def read_entries(f: BinaryIO, file_size: int) -> List[ZipEntry]:
    """The entries of the zip in f, in file order, each checked against its local header."""
    infos, start_dir = _list(f, file_size)
    if len(infos) > MAX_ENTRIES:
        raise FormatError(f"zip has {len(infos)} entries (limit {MAX_ENTRIES})")
    if not isinstance(start_dir, int) or not 0 <= start_dir <= file_size:
        raise FormatError("zip central directory lies outside the file")
    entries: List[ZipEntry] = []
    seen = set()
    for info in infos:
        entry = _check_local(f, file_size, info)
        if entry.name in seen:
            raise FormatError(f"zip entry {entry.name!r} appears twice")
        seen.add(entry.name)
        if entry.data_end > start_dir:
            raise FormatError(f"zip entry {entry.name!r} runs into the central directory")
        entries.append(entry)
    entries.sort(key=lambda e: e.header_offset)
    for prev, cur in zip(entries, entries[1:]):
        if cur.header_offset < prev.data_end:
            raise FormatError(f"zip entries {prev.name!r} and {cur.name!r} overlap")
    return entries


def _check_local(f: BinaryIO, file_size: int, info: zipfile.ZipInfo) -> ZipEntry:
    name = info.orig_filename
    off, size = info.header_offset, info.compress_size
    if not (isinstance(off, int) and isinstance(size, int) and off >= 0 and size >= 0):
        raise FormatError(f"zip entry {name!r} has a negative offset or size")
    if off + LOCAL_HEADER.size > file_size:
        raise FormatError(f"zip entry {name!r} has its local header outside the file")
    f.seek(off)
    raw = f.read(LOCAL_HEADER.size)
    if len(raw) != LOCAL_HEADER.size:
        raise FormatError(f"zip entry {name!r} local header is truncated")
    (magic, _version, _flags, method, _time, _date, _crc, _csize, _usize,
     name_len, extra_len) = LOCAL_HEADER.unpack(raw)
    if magic != LOCAL_MAGIC:
        raise FormatError(f"zip entry {name!r} has no local header at offset {off}")
    if method != info.compress_type:
        raise FormatError(f"zip entry {name!r} local and central compression methods differ")
    want = _raw_name(info)
    if name_len != len(want) or f.read(name_len) != want:
        raise FormatError(f"zip entry {name!r} local header names another file")
    data_offset = off + LOCAL_HEADER.size + name_len + extra_len
    if data_offset + size > file_size:
        raise FormatError(f"zip entry {name!r} data runs past the end of the file")
    if method == STORED and info.file_size != size:
        raise FormatError(f"zip entry {name!r} is stored but its two sizes differ")
    return ZipEntry(name, method, info.flag_bits, off, data_offset, size)


def read_stored(f: BinaryIO, entry: ZipEntry, limit: int) -> bytes:
    """The bytes of a STORED entry of at most limit bytes (FormatError otherwise)."""
    if entry.method != STORED:
        raise FormatError(f"zip entry {entry.name!r} is compressed (method {entry.method})")
    if entry.length > limit:
        raise FormatError(f"zip entry {entry.name!r} is {entry.length} bytes (limit {limit})")
    f.seek(entry.data_offset)
    data = f.read(entry.length)
    if len(data) != entry.length:
        raise FormatError(f"zip entry {entry.name!r} is truncated")
    return data
