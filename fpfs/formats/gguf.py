"""GGUF (llama.cpp / ggml), versions 2 and 3, little-endian.

Layout of a file: magic b"GGUF", u32 version, u64 tensor count, u64 metadata KV count,
the KVs (key string, u32 value type, value), the tensor infos (name string, u32 n_dims,
u64 dims[n_dims], u32 ggml type, u64 offset), padding to general.alignment (default 32),
then the data section; each tensor's bytes start at data_start + offset. Strings are a
u64 length and UTF-8 bytes.

The header and metadata are not a verbatim prefix: the tokenizer vocabulary alone can be
megabytes, so they are left to the codecs as RAW bytes (prefix_length 0). Tensors of a
type whose byte size is unknown here are left RAW as well.

This module does not import the gguf package: parsing a file must not depend on an
optional dependency, and the type table below is part of what we have verified
(tests/test_formats_gguf.py checks it against gguf.GGML_QUANT_SIZES).
"""
from __future__ import annotations

from math import prod
from typing import BinaryIO, Dict, List, Set, Tuple

from .layout import FormatError, Layout, TensorSpan, tile
from ._reader import BoundedReader

NAME = "gguf"
MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
ALIGNMENT_KEY = b"general.alignment"

# ggml allows 4 dims; the GGUF spec does not cap n_dims, but no real file has more than 8.
MAX_DIMS = 8
# ggml caps tensor names at 63 bytes; be lenient, but never read a giant "name".
MAX_NAME_BYTES = 1 << 16
# Bounds on the work a hostile header can cause. Real files: a few thousand tensors and
# well under a million metadata strings (a 256k-token vocabulary plus its merges).
MAX_TENSORS = 1 << 20
MAX_LOOPED_ITEMS = 1 << 24
MAX_ARRAY_NESTING = 16

# ggml type id -> (fpfs dtype name, values per block, bytes per block). Sizes follow
# ggml's type traits (ggml.c). Plain types use safetensors names; block-quantized ones
# "GGUF_<TYPE>" (fpfs.codecs.blocks splits the ones it knows into their fields).
GGML_TYPES: Dict[int, Tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("GGUF_Q4_0", 32, 18),
    3: ("GGUF_Q4_1", 32, 20),
    # 4, 5: Q4_2 / Q4_3, removed from ggml before GGUF existed.
    6: ("GGUF_Q5_0", 32, 22),
    7: ("GGUF_Q5_1", 32, 24),
    8: ("GGUF_Q8_0", 32, 34),
    # ggml's block_q8_1 is two fp16 + 32 int8 = 36 bytes; gguf-py's table still says 40
    # (the old float layout). ggml is what writes and reads the tensor data.
    9: ("GGUF_Q8_1", 32, 36),
    10: ("GGUF_Q2_K", 256, 84),
    11: ("GGUF_Q3_K", 256, 110),
    12: ("GGUF_Q4_K", 256, 144),
    13: ("GGUF_Q5_K", 256, 176),
    14: ("GGUF_Q6_K", 256, 210),
    15: ("GGUF_Q8_K", 256, 292),
    16: ("GGUF_IQ2_XXS", 256, 66),
    17: ("GGUF_IQ2_XS", 256, 74),
    18: ("GGUF_IQ3_XXS", 256, 98),
    19: ("GGUF_IQ1_S", 256, 50),
    20: ("GGUF_IQ4_NL", 32, 18),
    21: ("GGUF_IQ3_S", 256, 110),
    22: ("GGUF_IQ2_S", 256, 82),
    23: ("GGUF_IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("GGUF_IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    # 31-33: Q4_0 repacked for ARM (interleaved block_q4_0x4/x8, same size as Q4_0).
    # Removed from ggml in late 2024 but such files were published; the interleaved
    # layout is not Q4_0's struct, so they get their own names.
    31: ("GGUF_Q4_0_4_4", 32, 18),
    32: ("GGUF_Q4_0_4_8", 32, 18),
    33: ("GGUF_Q4_0_8_8", 32, 18),
    34: ("GGUF_TQ1_0", 256, 54),
    35: ("GGUF_TQ2_0", 256, 66),
    # 36-38: IQ4_NL repacked, runtime-only in ggml, never written to files.
    39: ("GGUF_MXFP4", 32, 17),
    40: ("GGUF_NVFP4", 64, 36),
    41: ("GGUF_Q1_0", 128, 18),
}

# GGUF metadata value types.
_FIXED_SIZE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_UINT32, _STRING, _ARRAY = 4, 8, 9
# Fewest bytes one array element of a variable-size type can take (a string's u64 length;
# an array's u32 type and u64 count), for checking a count before looping over it.
_MIN_ELEMENT = {_STRING: 8, _ARRAY: 12}
# Fewest bytes of a KV (u64 key length, u32 type, a 1-byte value) and of a tensor info
# (u64 name length, u32 n_dims, u32 type, u64 offset).
_MIN_KV, _MIN_TENSOR_INFO = 13, 24


def sniff(head: bytes, file_size: int) -> bool:
    return head[:4] == MAGIC


def layout(f: BinaryIO, file_size: int) -> Layout:
    r = BoundedReader(f, file_size)
    if r.take(4, "magic") != MAGIC:
        raise FormatError("no GGUF magic")
    _check_version(r.u32("version"))
    n_tensors = r.u64("tensor count")
    n_kv = r.u64("metadata count")
    if n_tensors * _MIN_TENSOR_INFO + n_kv * _MIN_KV > r.remaining():
        raise FormatError(f"{n_tensors} tensors and {n_kv} metadata entries cannot fit in the file")
    if n_tensors > MAX_TENSORS:
        raise FormatError(f"{n_tensors} tensors is more than fpfs parses ({MAX_TENSORS})")
    if n_kv > MAX_LOOPED_ITEMS:
        raise FormatError(f"{n_kv} metadata entries is more than fpfs parses")

    parser = _MetadataSkipper(r)
    alignment = DEFAULT_ALIGNMENT
    alignment_seen = False
    for _ in range(n_kv):
        key_len = r.u64("metadata key length")
        # Only one key matters here; others are skipped without being read.
        if key_len == len(ALIGNMENT_KEY):
            is_alignment = r.take(key_len, "metadata key") == ALIGNMENT_KEY
        else:
            r.skip(key_len, "metadata key")
            is_alignment = False
        vtype = r.u32("metadata value type")
        if is_alignment:
            if vtype != _UINT32:
                raise FormatError("general.alignment is not a uint32")
            if alignment_seen:
                raise FormatError("general.alignment appears twice")
            alignment, alignment_seen = r.u32("general.alignment"), True
            if alignment == 0 or alignment & (alignment - 1):
                raise FormatError(f"general.alignment {alignment} is not a power of two")
        else:
            parser.skip_value(vtype, 0)

    infos = [_tensor_info(r) for _ in range(n_tensors)]
    names: Set[str] = set()
    for name, _, _, _ in infos:
        if name in names:
            raise FormatError(f"duplicate tensor name {name[:80]!r}")
        names.add(name)
    data_start = -(-r.pos // alignment) * alignment

    spans: List[TensorSpan] = []
    for name, dims, ggml_type, offset in infos:
        known = GGML_TYPES.get(ggml_type)
        if known is None:
            continue            # unknown size: its bytes stay RAW (tile() fills the gap)
        dtype, per_block, block_bytes = known
        n_values = prod(dims)
        # ggml stores whole blocks per row; anything else is not a tensor of this type.
        if (dims and dims[0] % per_block) or n_values % per_block:
            continue
        # The shape counts elements (not blocks) in numpy order: ggml lists the fastest
        # dimension first, gguf's reader reverses it. Spans outside the file or
        # overlapping an earlier one are dropped by tile().
        spans.append(TensorSpan(data_start + offset, n_values // per_block * block_bytes,
                                dtype, name, tuple(reversed(dims))))
    return Layout(NAME, 0, file_size, tile(spans, 0, file_size))


def _check_version(version: int) -> None:
    if version in (2, 3):
        return
    if version == 1:
        raise FormatError("GGUF v1 (32-bit lengths) is not supported")
    if version & 0xFFFF == 0 and int.from_bytes(version.to_bytes(4, "little"), "big") in (2, 3):
        raise FormatError("big-endian GGUF is not supported")
    raise FormatError(f"unknown GGUF version {version}")


def _tensor_info(r: BoundedReader) -> Tuple[str, Tuple[int, ...], int, int]:
    name_len = r.u64("tensor name length")
    if name_len > MAX_NAME_BYTES:
        raise FormatError(f"tensor name of {name_len} bytes")
    try:
        name = r.take(name_len, "tensor name").decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError("tensor name is not UTF-8") from None
    n_dims = r.u32("tensor n_dims")
    if n_dims > MAX_DIMS:
        raise FormatError(f"tensor {name[:80]!r} has {n_dims} dimensions")
    raw = r.take(8 * n_dims, "tensor dims")
    dims = tuple(int.from_bytes(raw[i:i + 8], "little") for i in range(0, 8 * n_dims, 8))
    ggml_type = r.u32("tensor type")
    offset = r.u64("tensor offset")
    return name, dims, ggml_type, offset


class _MetadataSkipper:
    """Skips metadata values by type, bounding the total number of elements it loops
    over (fixed-size arrays are skipped in one step and cost nothing)."""

    def __init__(self, r: BoundedReader):
        self.r = r
        self.looped = 0

    def skip_value(self, vtype: int, depth: int) -> None:
        r = self.r
        size = _FIXED_SIZE.get(vtype)
        if size is not None:
            r.skip(size, "metadata value")
        elif vtype == _STRING:
            r.skip(r.u64("metadata string length"), "metadata string")
        elif vtype == _ARRAY:
            if depth >= MAX_ARRAY_NESTING:
                raise FormatError("metadata arrays nested too deeply")
            item_type = r.u32("metadata array type")
            count = r.u64("metadata array length")
            size = _FIXED_SIZE.get(item_type)
            if size is not None:
                r.skip(count * size, "metadata array")
                return
            least = _MIN_ELEMENT.get(item_type)
            if least is None:
                raise FormatError(f"unknown metadata array type {item_type}")
            if count > r.remaining() // least:
                raise FormatError(f"metadata array of {count} elements cannot fit in the file")
            self.looped += count
            if self.looped > MAX_LOOPED_ITEMS:
                raise FormatError("metadata has more strings and arrays than fpfs parses")
            if item_type == _STRING:        # the hot loop: vocabularies and merges
                r.skip_strings(count, "metadata string")
            else:
                for _ in range(count):
                    self.skip_value(item_type, depth + 1)
        else:
            raise FormatError(f"unknown metadata value type {vtype}")
