"""Safetensors dtypes: their one-byte codes in the chunk table, and how each is cut into
byte planes before entropy coding."""
from __future__ import annotations

from typing import Dict, Tuple

# Order is part of the on-disk format (the chunk table stores the index): append only.
DTYPE_NAMES = (
    "RAW",  # bytes no tensor describes, or a dtype this version does not know
    "BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64",
    "F16", "BF16", "F32", "F64", "C64",
    "F8_E4M3", "F8_E5M2", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ",
    "F4", "F6_E2M3", "F6_E3M2",
    # block-quantized types (fpfs.codecs.blocks), format version 2
    "GGUF_Q4_0", "GGUF_Q4_1", "GGUF_Q5_0", "GGUF_Q5_1", "GGUF_Q8_0", "GGUF_Q8_1",
    "GGUF_Q2_K", "GGUF_Q3_K", "GGUF_Q4_K", "GGUF_Q5_K", "GGUF_Q6_K", "GGUF_Q8_K",
    "GGUF_IQ4_NL", "GGUF_IQ4_XS", "GGUF_MXFP4",
)
DTYPE_CODES: Dict[str, int] = {name: i for i, name in enumerate(DTYPE_NAMES)}

# (element width in bytes, left rotation in bits). Rotating floats left by one moves the
# sign to the bottom, so the top byte is exactly the 8-bit exponent (BF16, F32) or the
# exponent plus the top mantissa bits (F16, F64): the skewed part lands in one plane.
# Measured on all-MiniLM-L6-v2 (bench/bench_codec.py): F16 rot 1 beats rot 0 by 0.02 pt.
# One-byte types (FP8, FP4 pairs, F6, BOOL, U8/I8) are coded as whole-byte symbols:
# order-0 coding of the whole byte is never worse than coding its parts separately.
PLANE_LAYOUTS: Dict[str, Tuple[int, int]] = {
    "BF16": (2, 1), "F16": (2, 1), "F32": (4, 1), "C64": (4, 1), "F64": (8, 1),
    "I16": (2, 0), "U16": (2, 0), "I32": (4, 0), "U32": (4, 0), "I64": (8, 0), "U64": (8, 0),
}


def dtype_code(name: str) -> int:
    """Table code for a dtype name; unknown names are stored as RAW (never an error)."""
    return DTYPE_CODES.get(name, 0)


def dtype_name(code: int) -> str:
    return DTYPE_NAMES[code] if 0 <= code < len(DTYPE_NAMES) else "RAW"


def plane_layout(name: str, nbytes: int) -> Tuple[int, int]:
    """(width, rotation) for a chunk of nbytes of this dtype; whole bytes if it does not divide."""
    width, rot = PLANE_LAYOUTS.get(name, (1, 0))
    if nbytes % width:
        return 1, 0
    return width, rot
