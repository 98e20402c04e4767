"""Hand-built safetensors files for tests: we control every dtype string, offset and byte
(8-byte little-endian header length, JSON header, data), including things the safetensors
library would refuse to write (overlaps, gaps, odd lengths, unknown dtypes)."""
from __future__ import annotations

import json
import os
import struct
from typing import Dict, Iterable, List, Optional, Tuple

import ml_dtypes
import numpy as np

ALL_DTYPES = ("BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64", "F16", "BF16",
              "F32", "F64", "C64", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F8_E4M3FNUZ",
              "F8_E5M2FNUZ", "F4", "F6_E2M3", "F6_E3M2")
UNKNOWN_DTYPE = "F12_E7M4_FUTURE"

_FLOATS = {
    "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F32": np.float32, "F64": np.float64,
    "C64": np.complex64, "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
    "F8_E4M3FNUZ": ml_dtypes.float8_e4m3fnuz, "F8_E5M2FNUZ": ml_dtypes.float8_e5m2fnuz,
}
_INTS = {"I8": np.int8, "U8": np.uint8, "I16": np.int16, "U16": np.uint16, "I32": np.int32,
         "U32": np.uint32, "I64": np.int64, "U64": np.uint64}
ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "U16": 2, "I32": 4, "U32": 4, "I64": 8,
            "U64": 8, "F16": 2, "BF16": 2, "F32": 4, "F64": 8, "C64": 8, "F8_E4M3": 1,
            "F8_E5M2": 1, "F8_E8M0": 1, "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1, "F4": 1,
            "F6_E2M3": 1, "F6_E3M2": 1}


def sample_bytes(dtype: str, nbytes: int, rng: np.random.Generator, kind: str = "real") -> bytes:
    """nbytes of plausible data of this dtype (kind 'real'), or 'random' / 'const' bytes."""
    if kind == "random":
        return rng.integers(0, 256, nbytes, dtype=np.uint8).tobytes()
    if kind == "const":
        return bytes([int(rng.integers(0, 256))]) * nbytes
    count = nbytes // ITEMSIZE.get(dtype, 1) + 1
    if dtype in _FLOATS:
        values = rng.normal(0, 0.05, count)
        if dtype == "C64":
            values = values + 1j * rng.normal(0, 0.05, count)
        elif dtype.startswith("F8"):
            values = values * 100
        raw = values.astype(_FLOATS[dtype]).tobytes()
    elif dtype in _INTS:
        raw = rng.integers(-3 if dtype[0] == "I" else 0, 40, count).astype(_INTS[dtype]).tobytes()
    elif dtype == "BOOL":
        raw = (rng.random(count) < 0.2).astype(np.uint8).tobytes()
    elif dtype == "F8_E8M0":
        raw = rng.integers(118, 130, count).astype(np.uint8).tobytes()
    elif dtype in ("F4", "F6_E2M3", "F6_E3M2"):
        codes = np.minimum(rng.geometric(0.35, 2 * count), 15).astype(np.uint8)
        raw = (codes[0::2] | (codes[1::2] << 4)).tobytes()
    else:
        raw = rng.integers(0, 256, count, dtype=np.uint8).tobytes()
    return raw[:nbytes]


def pack(header: dict, data: bytes, pad: bool = True) -> bytes:
    """Serialise a header dict and a data section into safetensors bytes."""
    raw = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


def build(tensors: Iterable[Tuple[str, str, bytes]], metadata: Optional[Dict[str, str]] = None,
          gaps: Optional[List[int]] = None, trailing: bytes = b"") -> bytes:
    """Tensors laid out in order, gaps[i] filler bytes before tensor i, then `trailing` bytes
    no tensor describes."""
    header: dict = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    data = bytearray()
    for i, (name, dtype, payload) in enumerate(tensors):
        if gaps:
            data += bytes([0xEE]) * gaps[i]
        size = ITEMSIZE.get(dtype, 1)
        shape = [len(payload) // size] if len(payload) % size == 0 else [len(payload)]
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(payload)]}
        data += payload
    return pack(header, bytes(data) + trailing)


def write(path, content: bytes) -> str:
    path = os.fspath(path)
    with open(path, "wb") as f:
        f.write(content)
    return path
