"""NumPy .npy: the magic "\\x93NUMPY", a version byte pair, a 2-byte (v1) or 4-byte (v2, v3)
little-endian header length, a header that is a Python dict literal
{'descr': ..., 'fortran_order': ..., 'shape': ...} padded with spaces, then the array bytes.

The magic, length and header are the verbatim prefix; the array bytes are one span. The
header is read with ast.literal_eval (a literal parser, never eval) on a length-checked
string. Only little-endian (or byte-order-free) numeric descrs get a dtype: big-endian,
object, structured and string arrays are stored as RAW bytes.
"""
from __future__ import annotations

import ast
import math
import re
import struct
from dataclasses import dataclass
from typing import BinaryIO, Dict, Optional, Tuple

from .layout import FormatError, Layout, TensorSpan, parser_warnings_ignored, tile

NAME = "npy"
MAGIC = b"\x93NUMPY"
# numpy itself refuses headers over 10000 bytes unless told otherwise; headers that long
# are structured dtypes with many fields, which are RAW anyway. The bound keeps
# literal_eval's input small.
MAX_HEADER_BYTES = 1 << 16

# descr -> dtype name. One-byte types have no byte order ('|'); numpy writes '<' for
# little-endian multi-byte types even on little-endian hosts.
DESCRS: Dict[str, str] = {
    "<f2": "F16", "<f4": "F32", "<f8": "F64", "<c8": "C64",
    "|i1": "I8", "<i1": "I8", "|u1": "U8", "<u1": "U8", "|b1": "BOOL", "<b1": "BOOL",
    "<i2": "I16", "<u2": "U16", "<i4": "I32", "<u4": "U32", "<i8": "I64", "<u8": "U64",
    # ml_dtypes.bfloat16 has no numpy type code: np.save writes it as a 2-byte void.
    # Nothing else common saves '<V2', and a wrong guess only costs compression (the
    # bytes are stored losslessly whatever the dtype hint says).
    "<V2": "BF16", "|V2": "BF16",
}
_DESCR = re.compile(r"^[<>|=]([biufcSV])(\d{1,7})$")


@dataclass(frozen=True)
class NpyHeader:
    header_length: int              # magic + length field + header text
    dtype: str                      # a dtype name, or RAW
    shape: Optional[Tuple[int, ...]]
    data_length: Optional[int]      # bytes of array data, None if the itemsize is unknown


def sniff(head: bytes, file_size: int) -> bool:
    return head[:6] == MAGIC and file_size >= 10


def layout(f: BinaryIO, file_size: int) -> Layout:
    f.seek(0)
    hdr = parse_header(f.read(12 + MAX_HEADER_BYTES), file_size)
    spans = []
    if hdr.dtype != "RAW" and hdr.data_length is not None \
            and hdr.header_length + hdr.data_length <= file_size:
        spans.append(TensorSpan(hdr.header_length, hdr.data_length, hdr.dtype, "", hdr.shape))
    return Layout(NAME, hdr.header_length, file_size,
                  tile(spans, hdr.header_length, file_size))


def parse_header(buf: bytes, total: int) -> NpyHeader:
    """The header at the start of buf, for an .npy of total bytes (buf may be shorter).
    FormatError if it is not a well-formed v1/v2/v3 header lying inside total bytes."""
    if buf[:6] != MAGIC or len(buf) < 10:
        raise FormatError("no .npy magic")
    major, minor = buf[6], buf[7]
    if (major, minor) not in ((1, 0), (2, 0), (3, 0)):
        raise FormatError(f".npy version {major}.{minor} is unknown")
    if major == 1:
        (n,), start = struct.unpack_from("<H", buf, 8), 10
    else:
        if len(buf) < 12:
            raise FormatError(".npy header is truncated")
        (n,), start = struct.unpack_from("<I", buf, 8), 12
    if n > MAX_HEADER_BYTES:
        raise FormatError(f".npy header is {n} bytes (limit {MAX_HEADER_BYTES})")
    if start + n > min(total, len(buf)):
        raise FormatError(".npy header runs past the end of the file")
    try:
        text = buf[start:start + n].decode("utf-8" if major == 3 else "latin-1")
        with parser_warnings_ignored():
            header = ast.literal_eval(text)
    # literal_eval rejects non-literals with ValueError/TypeError/SyntaxError; deeply
    # nested or huge literals give RecursionError/MemoryError: all are a bad header.
    except (UnicodeDecodeError, ValueError, TypeError, SyntaxError, RecursionError,
            MemoryError) as exc:
        raise FormatError(f".npy header is not a Python literal ({type(exc).__name__})") \
            from None
    return _interpret(header, start + n)


def _interpret(header: object, header_length: int) -> NpyHeader:
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise FormatError(".npy header is not a {descr, fortran_order, shape} dict")
    descr, shape = header["descr"], header["shape"]
    if not isinstance(header["fortran_order"], bool):
        raise FormatError(".npy fortran_order is not a bool")
    if not (isinstance(shape, tuple) and len(shape) <= 64 and all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2 ** 62
            for d in shape)):
        raise FormatError(".npy shape is not a tuple of sizes")
    # Fortran-order data is the same elements in column-major order: the element type,
    # all the codecs need, is unchanged.
    itemsize = _itemsize(descr)
    data_length = None if itemsize is None else math.prod(shape) * itemsize
    dtype = DESCRS.get(descr, "RAW") if isinstance(descr, str) else "RAW"
    return NpyHeader(header_length, dtype, shape, data_length)


def _itemsize(descr: object) -> Optional[int]:
    """Bytes per element of a simple descr ('<f4', '|S10', ...); None for structured,
    object, datetime and other descrs whose size we do not need to know."""
    if not isinstance(descr, str):
        return None
    m = _DESCR.match(descr)
    return int(m.group(2)) if m else None
