"""Chunk codecs: a small registry of classes over the Cython kernels (numcodecs-style).

A chunk is encoded by every codec that applies and the smallest payload is kept; the codec
id goes into the chunk table. Python decides here; fpfs._kernels loops.

    0 RAW      the bytes as they are
    1 PLANES   byte planes of the elements, each rANS-coded, constant or raw
    2 ZSTD     one zstd frame (untyped bytes, one-byte tensors with exact repeats)
    3 BLOCKS   block-quantized tensors: each struct field gathered and coded on its own
    4 DELTA    XOR or difference with the same bytes of a base file, then one of 0-3, 5
    5 MASKED   a bitmap of the non-zero elements, then the planes of those alone
    6 EXPMANT  BF16: exponent and top mantissa bits as one rANS32 symbol, the rest packed
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

from .blocks import BLOCK_TYPES, block_type
from .delta import DeltaCodec
from .dtypes import DTYPE_CODES, DTYPE_NAMES, dtype_code, dtype_name, plane_layout
from .errors import DecodeError
from .general import LEVEL_TYPED, LEVEL_UNTYPED, untyped_level
from .planes import DEFAULT_MIN_SAVING_PPM, scratch
from .standalone import (CODEC_BLOCKS, CODEC_DELTA, CODEC_EXPMANT, CODEC_MASKED, CODEC_PLANES,
                         CODEC_RAW, CODEC_ZSTD, REPEATS_PER_WORD, STANDALONE, ZSTD_ALWAYS_BYTES,
                         ZSTD_MIN_SHARE, decode_standalone, encode_standalone, zstd_may_pay)

CODECS: Dict[int, object] = dict(sorted({**STANDALONE, CODEC_DELTA: DeltaCodec()}.items()))
CODEC_NAMES = {cid: c.name for cid, c in CODECS.items()}
V1_CODECS = frozenset((CODEC_RAW, CODEC_PLANES))   # all a format-version-1 file may use
V4_CODECS = frozenset((CODEC_EXPMANT,))             # what versions 1-3 may not use

BaseReader = Callable[[int, int], memoryview]       # (base offset, length) -> base bytes


def encode_chunk(data: memoryview, dtype: str,
                 min_saving_ppm: int = DEFAULT_MIN_SAVING_PPM,
                 base: Optional[Tuple[int, memoryview]] = None,
                 exhaustive: bool = False,
                 level_untyped: int = LEVEL_UNTYPED) -> Tuple[int, bytes]:
    """(codec id, payload) of the smallest encoding of one chunk; with base = (offset in
    the base file, the base's bytes there), delta encodings compete too."""
    codec, payload = encode_standalone(data, dtype, min_saving_ppm, exhaustive,
                                       level_untyped)
    if base is not None:
        delta = CODECS[CODEC_DELTA].encode(data, dtype, base[0], base[1], min_saving_ppm,
                                           len(payload))
        if delta is not None:
            return CODEC_DELTA, delta
    return codec, payload


def decode_chunk(codec_id: int, payload, out: memoryview,
                 base_reader: Optional[BaseReader] = None) -> None:
    """Decode payload into out (exactly the chunk's original length)."""
    if codec_id == CODEC_DELTA:
        CODECS[CODEC_DELTA].decode_into(payload, out, base_reader)
    else:
        decode_standalone(codec_id, payload, out)


__all__ = [
    "DEFAULT_MIN_SAVING_PPM", "CODEC_RAW", "CODEC_PLANES", "CODEC_ZSTD", "CODEC_BLOCKS",
    "CODEC_DELTA", "CODEC_MASKED", "CODEC_EXPMANT", "CODECS", "CODEC_NAMES", "V1_CODECS",
    "V4_CODECS", "BLOCK_TYPES", "DecodeError", "block_type",
    "encode_chunk", "encode_standalone", "decode_chunk", "BaseReader", "DTYPE_CODES",
    "DTYPE_NAMES", "dtype_code", "dtype_name", "plane_layout", "scratch", "untyped_level",
    "LEVEL_TYPED", "LEVEL_UNTYPED", "ZSTD_ALWAYS_BYTES", "ZSTD_MIN_SHARE", "REPEATS_PER_WORD",
    "zstd_may_pay",
]
