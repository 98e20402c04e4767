"""Block-quantized element types (GGUF's Q8_0, Q4_K, MXFP4, ...): each block is a small
struct of fields - fp16 scales, 6-bit sub-scales, packed quants. The BLOCKS codec gathers
each field of all blocks in a chunk into one stream and codes it as the kind of number it
is (a stream of F16 scales by byte planes, quants as whole bytes), instead of coding the
interleaved struct bytes as one mixed byte stream.

Layouts follow ggml's block structs (ggml-common.h); offsets in bytes within a block.
Field dtypes name how a field's stream is coded (fpfs.codecs.dtypes), nothing more: the
decoder reads the field layout from the payload, never from this table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple


@dataclass(frozen=True)
class BlockField:
    name: str
    offset: int
    length: int
    dtype: str          # how the field's stream is coded: F16, F32, I16, U8, I8, ...


@dataclass(frozen=True)
class BlockType:
    name: str
    block_bytes: int
    values_per_block: int
    fields: Tuple[BlockField, ...]

    def __post_init__(self):
        pos = 0
        for f in self.fields:
            assert f.offset == pos and f.length > 0, (self.name, f)
            pos += f.length
        assert pos == self.block_bytes, self.name


def _t(name: str, values: int, *fields: Tuple[str, int, str]) -> BlockType:
    out, pos = [], 0
    for fname, length, dtype in fields:
        out.append(BlockField(fname, pos, length, dtype))
        pos += length
    return BlockType(name, pos, values, tuple(out))


QK_K = 256
# Quants are U8 streams (packed nibbles / bit planes), coded as whole-byte symbols.
BLOCK_TYPES: Dict[str, BlockType] = {t.name: t for t in (
    _t("GGUF_Q4_0", 32, ("d", 2, "F16"), ("qs", 16, "U8")),
    _t("GGUF_Q4_1", 32, ("d", 2, "F16"), ("m", 2, "F16"), ("qs", 16, "U8")),
    _t("GGUF_Q5_0", 32, ("d", 2, "F16"), ("qh", 4, "U8"), ("qs", 16, "U8")),
    _t("GGUF_Q5_1", 32, ("d", 2, "F16"), ("m", 2, "F16"), ("qh", 4, "U8"), ("qs", 16, "U8")),
    _t("GGUF_Q8_0", 32, ("d", 2, "F16"), ("qs", 32, "I8")),
    _t("GGUF_Q8_1", 32, ("d", 2, "F16"), ("s", 2, "F16"), ("qs", 32, "I8")),
    _t("GGUF_Q2_K", QK_K, ("scales", 16, "U8"), ("qs", 64, "U8"), ("d", 2, "F16"),
       ("dmin", 2, "F16")),
    _t("GGUF_Q3_K", QK_K, ("hmask", 32, "U8"), ("qs", 64, "U8"), ("scales", 12, "U8"),
       ("d", 2, "F16")),
    _t("GGUF_Q4_K", QK_K, ("d", 2, "F16"), ("dmin", 2, "F16"), ("scales", 12, "U8"),
       ("qs", 128, "U8")),
    _t("GGUF_Q5_K", QK_K, ("d", 2, "F16"), ("dmin", 2, "F16"), ("scales", 12, "U8"),
       ("qh", 32, "U8"), ("qs", 128, "U8")),
    _t("GGUF_Q6_K", QK_K, ("ql", 128, "U8"), ("qh", 64, "U8"), ("scales", 16, "I8"),
       ("d", 2, "F16")),
    _t("GGUF_Q8_K", QK_K, ("d", 4, "F32"), ("qs", 256, "I8"), ("bsums", 32, "I16")),
    _t("GGUF_IQ4_NL", 32, ("d", 2, "F16"), ("qs", 16, "U8")),
    _t("GGUF_IQ4_XS", QK_K, ("d", 2, "F16"), ("scales_h", 2, "U16"), ("scales_l", 4, "U8"),
       ("qs", 128, "U8")),
    _t("GGUF_MXFP4", 32, ("e", 1, "F8_E8M0"), ("qs", 16, "U8")),
)}


def block_type(dtype: str) -> Optional[BlockType]:
    return BLOCK_TYPES.get(dtype)


# -- the BLOCKS codec (FORMAT.md, codec 3) -----------------------------------------------------
import struct  # noqa: E402

import numpy as np  # noqa: E402

from .errors import DecodeError  # noqa: E402
from .substreams import SUBCODECS, smallest, work_buffer  # noqa: E402

MAX_FIELDS = 32
_HEAD = struct.Struct("<HB")
_SUB = struct.Struct("<BI")


class BlocksCodec:
    """Gather each field of a block struct across the chunk's blocks; code each stream as
    its own dtype (raw, planes or zstd, whichever is smallest). The field layout travels in
    the payload, so decoding needs no table."""
    codec_id = 3
    name = "blocks"

    def encode(self, data: memoryview, btype: BlockType, min_saving_ppm: int):
        n = len(data)
        if n % btype.block_bytes or n == 0:
            return None
        blocks = np.frombuffer(data, dtype=np.uint8).reshape(-1, btype.block_bytes)
        head = [_HEAD.pack(btype.block_bytes, len(btype.fields))]
        head += [struct.pack("<H", f.length) for f in btype.fields]
        bodies = []
        for f in btype.fields:
            stream = memoryview(np.ascontiguousarray(blocks[:, f.offset:f.offset + f.length])
                                ).cast("B")
            sub, body = smallest(stream, f.dtype, min_saving_ppm)
            head.append(_SUB.pack(sub, len(body)))
            bodies.append(body)
        payload = b"".join(head + bodies)
        return payload if len(payload) < n else None

    def decode_into(self, payload, out: memoryview) -> None:
        payload = memoryview(payload)
        n = len(out)
        if len(payload) < _HEAD.size:
            raise DecodeError("blocks payload truncated")
        block_bytes, nfields = _HEAD.unpack_from(payload, 0)
        pos = _HEAD.size
        if not 1 <= nfields <= MAX_FIELDS or block_bytes == 0 or n % block_bytes:
            raise DecodeError("blocks payload: bad block layout")
        if len(payload) < pos + nfields * (2 + _SUB.size):
            raise DecodeError("blocks payload truncated")
        lengths = struct.unpack_from(f"<{nfields}H", payload, pos)
        pos += 2 * nfields
        if 0 in lengths or sum(lengths) != block_bytes:
            raise DecodeError("blocks payload: fields do not tile the block")
        subs = [_SUB.unpack_from(payload, pos + i * _SUB.size) for i in range(nfields)]
        pos += nfields * _SUB.size
        if pos + sum(size for _, size in subs) != len(payload):
            raise DecodeError("blocks payload: stream lengths do not add up")
        nblocks = n // block_bytes
        dst = np.frombuffer(out, dtype=np.uint8).reshape(nblocks, block_bytes)
        offset = 0
        for length, (sub, size) in zip(lengths, subs):
            codec = SUBCODECS.get(sub)
            if codec is None:
                raise DecodeError(f"blocks payload: unknown field codec {sub}")
            field = work_buffer("field", nblocks * length)
            codec.decode_into(payload[pos:pos + size], memoryview(field))
            dst[:, offset:offset + length] = field.reshape(nblocks, length)
            pos += size
            offset += length
