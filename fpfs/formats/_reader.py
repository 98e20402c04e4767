"""Bounded sequential reads for the binary format parsers (GGUF, ONNX).

Every read or skip is checked against the file size before it happens, so a hostile
length (2**63, a count of a billion strings) becomes a FormatError at once instead of an
allocation, a long loop or a short read that is noticed later. Reads go through a window
of the file, so parsing a header of many small fields costs few system calls, and bytes
that are skipped (tensor data, long metadata strings) are never read at all.

The window grows while reads are sequential (a GGUF header, an ONNX node list) and
shrinks after a jump: ONNX interleaves small tensor headers with megabytes of tensor
data, and a fixed large window would read a slice of every tensor for nothing.
"""
from __future__ import annotations

import struct
from typing import BinaryIO, Tuple

from .layout import FormatError

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class BoundedReader:
    MIN_WINDOW = 1 << 14
    MAX_WINDOW = 1 << 20

    def __init__(self, f: BinaryIO, file_size: int, pos: int = 0):
        self.f = f
        self.size = file_size
        self.pos = pos
        self._buf = b""
        self._buf_at = 0
        self._window = self.MIN_WINDOW

    def remaining(self) -> int:
        return self.size - self.pos

    def need(self, n: int, what: str) -> None:
        if n < 0 or n > self.size - self.pos:
            raise FormatError(f"{what} runs past the end of the file")

    def skip(self, n: int, what: str) -> None:
        self.need(n, what)
        self.pos += n

    def take(self, n: int, what: str) -> bytes:
        """n bytes at the current position (n already known to be sane by the caller's
        limits; it is still checked against the bytes left)."""
        self.need(n, what)
        start = self.pos - self._buf_at
        if start < 0 or start + n > len(self._buf):
            self._fill(n, what)
            start = 0
        self.pos += n
        return self._buf[start:start + n]

    def window_at(self, pos: int, least: int) -> Tuple[bytes, int]:
        """(buffer, index of pos in it): the current window, refilled if it holds fewer
        than min(least, bytes left) bytes from pos. For parsers that decode many tiny
        fields straight from the buffer; they may look at all of it, not just `least`."""
        self.pos = pos
        least = min(least, self.size - pos)
        start = pos - self._buf_at
        if start < 0 or start + least > len(self._buf):
            self._fill(least, "field")
            start = 0
        return self._buf, start

    def _fill(self, n: int, what: str) -> None:
        if self._buf_at <= self.pos <= self._buf_at + len(self._buf):   # reading on
            self._window = min(2 * self._window, self.MAX_WINDOW)
        else:
            self._window = self.MIN_WINDOW
        self.f.seek(self.pos)
        want = min(max(n, self._window), self.size - self.pos)
        self._buf = self.f.read(want)
        self._buf_at = self.pos
        if len(self._buf) < n:
            # The file is shorter than the size we were told (it changed under us).
            raise FormatError(f"{what} truncated: file ended early")

    def skip_strings(self, count: int, what: str) -> None:
        """Skip count strings of a u64 length and that many bytes (GGUF's vocabularies
        and merges, up to millions): lengths are decoded straight from the window."""
        unpack = _U64.unpack_from
        while count:
            buf, at = self._buf, self._buf_at
            i, last, limit = self.pos - at, len(buf) - 8, self.size - at
            while count and 0 <= i <= last:
                i += 8 + unpack(buf, i)[0]
                count -= 1
                if i > limit:
                    raise FormatError(f"{what} runs past the end of the file")
            self.pos = at + i
            if count:       # the next length is not in the window: read it the slow way
                self.skip(self.u64(what), what)
                count -= 1

    def u32(self, what: str) -> int:
        return _U32.unpack(self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return _U64.unpack(self.take(8, what))[0]
