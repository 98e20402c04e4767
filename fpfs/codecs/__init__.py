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

from .. import _kernels
from .blocks import BLOCK_TYPES, BlocksCodec, block_type
from .delta import DeltaCodec
from .dtypes import DTYPE_CODES, DTYPE_NAMES, dtype_code, dtype_name, plane_layout
from .errors import DecodeError
from .expmant import DTYPES as EXPMANT_DTYPES, ExpMantCodec
from .general import LEVEL_TYPED, LEVEL_UNTYPED, ZstdCodec, untyped_level
from .masked import MaskedCodec
from .planes import DEFAULT_MIN_SAVING_PPM, PlanesCodec, RawCodec, scratch

(CODEC_RAW, CODEC_PLANES, CODEC_ZSTD, CODEC_BLOCKS, CODEC_DELTA, CODEC_MASKED,
 CODEC_EXPMANT) = range(7)
CODECS: Dict[int, object] = {c.codec_id: c for c in (
    RawCodec(), PlanesCodec(), ZstdCodec(), BlocksCodec(), DeltaCodec(), MaskedCodec(),
    ExpMantCodec())}
CODEC_NAMES = {cid: c.name for cid, c in CODECS.items()}
V1_CODECS = frozenset((CODEC_RAW, CODEC_PLANES))   # all a format-version-1 file may use
V4_CODECS = frozenset((CODEC_EXPMANT,))             # what versions 1-3 may not use

# Where zstd is tried: untyped bytes always; tensors of one-byte elements (whole-byte
# symbols, where exact repeats are what zstd finds and rANS cannot) when the chunk is
# small or repeats some 64-bit words (zstd_may_pay); wider floats only with
# exhaustive=True (zstd never won on them in any measurement, and trying costs time).
# "Small": on MiniLM FP8 and MXFP4 every chunk zstd won without repeats was under 2 KiB but
# a few of 10-64 KiB that it made 3-100 bytes smaller (0.0008 % of the file), while trying
# chunks of 4-64 KiB took 7 % of MXFP4's compress time.
ZSTD_ALWAYS_BYTES = 4 * 1024
REPEATS_PER_WORD = 1 / 1024
# Larger chunks only where rANS left more than half the bytes: on low-entropy bytes zstd's
# Huffman literals lose far more than its matches win (MXFP4's E8M0 scales, which rANS
# codes to 15-20 %, repeat words in runs of equal scales; zstd's frames were 18-50 % larger
# than rANS's payloads, and trying them took 13 % of MXFP4's compress time).
ZSTD_MIN_SHARE = 0.5
BaseReader = Callable[[int, int], memoryview]       # (base offset, length) -> base bytes


def encode_standalone(data: memoryview, dtype: str,
                      min_saving_ppm: int = DEFAULT_MIN_SAVING_PPM,
                      exhaustive: bool = False,
                      level_untyped: int = LEVEL_UNTYPED) -> Tuple[int, bytes]:
    """(codec id, payload) of the smallest encoding of one chunk on its own; untyped
    (RAW) bytes try zstd at level_untyped (general.untyped_level)."""
    n = len(data)
    best: Tuple[int, bytes] = (CODEC_RAW, b"")
    best_size = n

    def offer(codec: int, payload: Optional[bytes]) -> None:
        nonlocal best, best_size
        if payload is not None and len(payload) < best_size:
            best, best_size = (codec, payload), len(payload)

    btype = block_type(dtype)
    if btype is not None and n % btype.block_bytes == 0:
        offer(CODEC_BLOCKS, CODECS[CODEC_BLOCKS].encode(data, btype, min_saving_ppm))
    elif dtype != "RAW":
        # EXPMANT codes what PLANES codes plus the mantissa's skew at the same decode cost,
        # so where it applies PLANES is tried only when every encoding is wanted.
        expmant = CODECS[CODEC_EXPMANT].encode(data) if dtype in EXPMANT_DTYPES else None
        offer(CODEC_EXPMANT, expmant)
        if expmant is None or exhaustive or not min_saving_ppm:
            offer(CODEC_PLANES, CODECS[CODEC_PLANES].encode(data, dtype, min_saving_ppm))
        offer(CODEC_MASKED, CODECS[CODEC_MASKED].encode(data, dtype, min_saving_ppm))
    width = plane_layout(dtype, n)[0]
    if dtype == "RAW":
        offer(CODEC_ZSTD, CODECS[CODEC_ZSTD].encode(data, level_untyped))
    elif exhaustive or ((width == 1 or btype is not None) and zstd_may_pay(data, best_size)):
        offer(CODEC_ZSTD, CODECS[CODEC_ZSTD].encode(data, LEVEL_TYPED))
    if best[0] == CODEC_RAW:
        return CODEC_RAW, bytes(data)
    return best


def zstd_may_pay(data: memoryview, best_size: int) -> bool:
    """Whether zstd can beat rANS (best_size: the smallest payload so far) on a
    one-byte-element chunk: where it is small (rANS's table and 128 bytes of states weigh),
    or repeats 64-bit words (K/V rows of repeated tokens: 2-3 points smaller) and is not
    coded below ZSTD_MIN_SHARE already. Measured on MiniLM's FP8 and MXFP4 weights and
    bench_kv's FP8 caches: this turns away 98 % of the weight bytes, and the chunks it turns
    away that zstd would have coded smaller saved 0.0008 % of a file together (zstd, tried
    on all of them, cost over half the compress time)."""
    n = len(data)
    if n <= ZSTD_ALWAYS_BYTES:
        return True
    return best_size > n * ZSTD_MIN_SHARE and \
        _kernels.repeated_words(data) > n // 8 * REPEATS_PER_WORD


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
    codec = CODECS.get(codec_id)
    if codec is None:
        raise DecodeError(f"unknown codec id {codec_id}")
    if codec_id == CODEC_DELTA:
        codec.decode_into(payload, out, base_reader)
    else:
        codec.decode_into(payload, out)


__all__ = [
    "DEFAULT_MIN_SAVING_PPM", "CODEC_RAW", "CODEC_PLANES", "CODEC_ZSTD", "CODEC_BLOCKS",
    "CODEC_DELTA", "CODEC_MASKED", "CODEC_EXPMANT", "CODECS", "CODEC_NAMES", "V1_CODECS",
    "V4_CODECS", "BLOCK_TYPES", "DecodeError",
    "encode_chunk", "encode_standalone", "decode_chunk", "BaseReader", "DTYPE_CODES",
    "DTYPE_NAMES", "dtype_code", "dtype_name", "plane_layout", "scratch", "untyped_level",
]
