"""A chunk coded on its own: every codec but DELTA, which codes a chunk's difference from a
base file and then that residual on its own (delta.py). The codec ids, these codecs, and
the choice of the smallest encoding."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

from .. import _kernels
from .blocks import BlocksCodec, block_type
from .dtypes import plane_layout
from .errors import DecodeError
from .expmant import DTYPES as EXPMANT_DTYPES, ExpMantCodec
from .general import LEVEL_TYPED, LEVEL_UNTYPED, ZstdCodec
from .masked import MaskedCodec
from .planes import DEFAULT_MIN_SAVING_PPM, PlanesCodec, RawCodec

(CODEC_RAW, CODEC_PLANES, CODEC_ZSTD, CODEC_BLOCKS, CODEC_DELTA, CODEC_MASKED,
 CODEC_EXPMANT) = range(7)
STANDALONE: Dict[int, object] = {c.codec_id: c for c in (
    RawCodec(), PlanesCodec(), ZstdCodec(), BlocksCodec(), MaskedCodec(), ExpMantCodec())}

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
        offer(CODEC_BLOCKS, STANDALONE[CODEC_BLOCKS].encode(data, btype, min_saving_ppm))
    elif dtype != "RAW":
        # EXPMANT codes what PLANES codes plus the mantissa's skew at the same decode cost,
        # so where it applies PLANES is tried only when every encoding is wanted.
        expmant = STANDALONE[CODEC_EXPMANT].encode(data) if dtype in EXPMANT_DTYPES else None
        offer(CODEC_EXPMANT, expmant)
        if expmant is None or exhaustive or not min_saving_ppm:
            offer(CODEC_PLANES, STANDALONE[CODEC_PLANES].encode(data, dtype, min_saving_ppm))
        offer(CODEC_MASKED, STANDALONE[CODEC_MASKED].encode(data, dtype, min_saving_ppm))
    width = plane_layout(dtype, n)[0]
    if dtype == "RAW":
        offer(CODEC_ZSTD, STANDALONE[CODEC_ZSTD].encode(data, level_untyped))
    elif exhaustive or ((width == 1 or btype is not None) and zstd_may_pay(data, best_size)):
        offer(CODEC_ZSTD, STANDALONE[CODEC_ZSTD].encode(data, LEVEL_TYPED))
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


def decode_standalone(codec_id: int, payload, out: memoryview) -> None:
    """Decode a chunk coded on its own into out (exactly its original length)."""
    codec = STANDALONE.get(codec_id)
    if codec is None:
        raise DecodeError(f"unknown codec id {codec_id}")
    codec.decode_into(payload, out)
