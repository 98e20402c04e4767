"""Recognise safetensors files by content and map their bytes to dtype regions.

The region map is only a hint for the codecs: bytes that no well-formed tensor covers are
still stored (as untyped bytes), so compression stays lossless for any input that passes
the recognition check.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from typing import List, Optional

from .errors import NotSafetensors

# A safetensors header is JSON; the reference implementation caps it at 100 MB.
MAX_HEADER_BYTES = 100 * 1000 * 1000


@dataclass(frozen=True)
class Region:
    """A byte range of the original file and the dtype its bytes hold ("RAW" if none)."""
    offset: int
    length: int
    dtype: str


@dataclass(frozen=True)
class SafetensorsLayout:
    prefix_length: int          # 8-byte length field + JSON header
    file_size: int
    regions: List[Region]       # cover [prefix_length, file_size) in order, no gaps


def sniff(prefix: bytes, file_size: int) -> Optional[int]:
    """Return the JSON header length if these first bytes look like safetensors."""
    if len(prefix) < 10 or file_size < 10:
        return None
    (n,) = struct.unpack_from("<Q", prefix, 0)
    if n < 2 or n > MAX_HEADER_BYTES or 8 + n > file_size:
        return None
    if prefix[8:9] != b"{":
        return None
    return n


def read_layout(path: str) -> SafetensorsLayout:
    """Parse the header of the safetensors file at path; raise NotSafetensors if it is not one."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(16)
        n = sniff(head, size)
        if n is None:
            raise NotSafetensors(f"{path}: not a safetensors file")
        f.seek(8)
        raw = f.read(n)
    return layout_from_header(raw, size, path)


def layout_from_header(raw: bytes, file_size: int, path: str = "<input>") -> SafetensorsLayout:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NotSafetensors(f"{path}: header is not valid JSON ({exc})") from None
    except RecursionError:      # hostile nesting ('[[[[...') would otherwise escape as a crash
        raise NotSafetensors(f"{path}: header JSON is nested too deeply") from None
    if not isinstance(header, dict):
        raise NotSafetensors(f"{path}: header is not a JSON object")
    prefix = 8 + len(raw)
    data_len = file_size - prefix
    tensors = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = info["data_offsets"]
            dtype = info["dtype"]
        except (TypeError, KeyError, ValueError):
            raise NotSafetensors(f"{path}: tensor {name!r} has no dtype/data_offsets") from None
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= data_len):
            raise NotSafetensors(f"{path}: tensor {name!r} has offsets outside the file")
        if end > begin:
            tensors.append((begin, end, dtype if isinstance(dtype, str) else "RAW"))
    tensors.sort()
    regions: List[Region] = []
    pos = 0
    for begin, end, dtype in tensors:
        if begin < pos:             # overlapping tensors: keep the bytes, drop the hint
            begin = pos
            dtype = "RAW"
            if begin >= end:
                continue
        if begin > pos:
            regions.append(Region(prefix + pos, begin - pos, "RAW"))
        regions.append(Region(prefix + begin, end - begin, dtype))
        pos = end
    if pos < data_len:
        regions.append(Region(prefix + pos, data_len - pos, "RAW"))
    return SafetensorsLayout(prefix, file_size, regions)


def is_safetensors(path: str) -> bool:
    try:
        read_layout(path)
    except (NotSafetensors, OSError):
        return False
    return True
