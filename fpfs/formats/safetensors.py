"""safetensors: an 8-byte little-endian header length, a JSON header naming each tensor's
dtype, shape and data_offsets, then the tensor bytes. The length field and the JSON header
are the verbatim prefix (metadata reads and `getattr` cost no decoding)."""
from __future__ import annotations

import json
import struct
from typing import BinaryIO, Optional

from .layout import FormatError, Layout, TensorSpan, tile

NAME = "safetensors"
# A safetensors header is JSON; the reference implementation caps it at 100 MB.
MAX_HEADER_BYTES = 100 * 1000 * 1000


def header_length(head: bytes, file_size: int) -> Optional[int]:
    """The JSON header length if these first bytes look like safetensors, else None."""
    if len(head) < 10 or file_size < 10:
        return None
    (n,) = struct.unpack_from("<Q", head, 0)
    if n < 2 or n > MAX_HEADER_BYTES or 8 + n > file_size:
        return None
    if head[8:9] != b"{":
        return None
    return n


def sniff(head: bytes, file_size: int) -> bool:
    return header_length(head, file_size) is not None


def layout(f: BinaryIO, file_size: int) -> Layout:
    f.seek(0)
    n = header_length(f.read(16), file_size)
    if n is None:
        raise FormatError("not a safetensors file")
    f.seek(8)
    raw = f.read(n)
    if len(raw) != n:
        raise FormatError("safetensors header truncated")
    return layout_from_header(raw, file_size)


def layout_from_header(raw: bytes, file_size: int) -> Layout:
    try:
        header = json.loads(raw.decode("utf-8"))
    # ValueError, not just JSONDecodeError: an integer literal of more than 4300 digits
    # raises a plain ValueError (int_max_str_digits) from inside the JSON parser.
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormatError(f"header is not valid JSON ({str(exc)[:200]})") from None
    except RecursionError:      # hostile nesting ('[[[[...') would otherwise escape as a crash
        raise FormatError("header JSON is nested too deeply") from None
    if not isinstance(header, dict):
        raise FormatError("header is not a JSON object")
    prefix = 8 + len(raw)
    data_len = file_size - prefix
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = info["data_offsets"]
            dtype = info["dtype"]
        except (TypeError, KeyError, ValueError):
            raise FormatError(f"tensor {name!r} has no dtype/data_offsets") from None
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= data_len):
            raise FormatError(f"tensor {name!r} has offsets outside the file")
        shape = info.get("shape")
        shape = tuple(shape) if isinstance(shape, list) and \
            all(isinstance(d, int) for d in shape) else None
        spans.append(TensorSpan(prefix + begin, end - begin,
                                dtype if isinstance(dtype, str) else "RAW", name, shape))
    return Layout(NAME, prefix, file_size, tile(spans, prefix, file_size))
