"""The fpfs codecs for in-memory K/V cache tensors (numpy arrays, ml_dtypes or torch).

    blob = fpfs.kv.compress(tensor)         # bytes, shape and dtype preserved
    tensor = fpfs.kv.decompress(blob)       # same type (numpy or torch) and dtype

Paged layouts ([num_blocks, block_size, heads, head_dim]) compress and restore one block
at a time with compress_block / restore_block. Supported: FP16, BF16, FP32, F8_E4M3,
F8_E5M2. The byte layout ("FPKV") is in FORMAT.md; every blob carries an xxh3 checksum so
a damaged buffer raises CorruptContainer instead of returning wrong values.
"""
from __future__ import annotations

import struct
import zlib
from typing import Any, List, NamedTuple, Optional, Tuple

import numpy as np
import xxhash

from .. import _kernels
from ..codecs import (CODEC_DELTA, CODEC_ZSTD, CODECS, LEVEL_TYPED, V1_CODECS, V4_CODECS,
                      DecodeError, decode_chunk, dtype_code, dtype_name, encode_chunk)
from ..container import DEFAULT_CHUNK_SIZE, validate_chunk_size
from ..errors import CorruptContainer, FpfsError

MAGIC = b"FPKV"
VERSION = 4                 # 4: BF16 chunks may be EXPMANT (container v4)
READABLE_VERSIONS = (1, 2, 3, 4)  # 3: rANS32 planes; 2: every container codec but DELTA
#                                   and EXPMANT; 1: RAW and PLANES only
_HEAD = struct.Struct("<4sBBBB")          # magic version dtype framework ndim
_TAIL = struct.Struct("<QQI")             # nbytes checksum nchunks
_CHUNK_SIZE = struct.Struct("<I")         # v2: chunk size, after the tail
# K/V rows repeat where a cache holds a token twice and the layer's keys or values depend on
# the token alone: the values of layer 0 in a RoPE model (60 % of their 64-bit words repeat
# an earlier one in bench_kv's trained Llama; its other tensors, 1.2 % at most), and in
# MiniLM's layer 0 the same token at the same position of many sequences.
# Order-0 coding cannot see repeats, zstd can (layer-0 values: 13-26 % of their size against
# 65 % BF16, 84 % FP16, 83 % FP32). Chunks of wider elements whose words repeat this much
# are tried with zstd too (one-byte chunks: the codecs' zstd_may_pay decides).
ROW_REPEATS = 1 / 16
# 256 KiB chunks cannot see repeats far apart, one chunk of the whole tensor can: up to this
# size, compress() tries both for one-byte tensors and for tensors with repeating chunks,
# and keeps the smaller.
MAX_WHOLE_CHUNK = 64 * 1024 * 1024
# One-byte tensors: repeats are what pays there, a deeper search finds more. Wider ones
# get LEVEL_TYPED: level 9 made MiniLM's BF16 layer 0 48 % of its size, not 54 %, but at
# 0.06 GB/s against 0.36 (compress) and 0.75 against 1.05 (decompress).
WHOLE_ZSTD_LEVEL = 9
_CHUNK = struct.Struct("<BI")             # codec payload_length
MAX_NDIM = 16
SUPPORTED = ("F16", "BF16", "F32", "F8_E4M3", "F8_E5M2")
_NUMPY, _TORCH = 0, 1


KV_CODECS = frozenset(CODECS) - {CODEC_DELTA}


class UnsupportedDtype(FpfsError, TypeError):
    pass


def _numpy_dtypes():
    import ml_dtypes
    return {"F16": np.dtype(np.float16), "BF16": np.dtype(ml_dtypes.bfloat16),
            "F32": np.dtype(np.float32), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
            "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2)}


def _torch_dtypes():
    import torch
    return {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
            "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


def _as_bytes(tensor: Any) -> Tuple[str, int, Tuple[int, ...], np.ndarray]:
    """(dtype name, framework, shape, uint8 view of the contiguous data)."""
    if type(tensor).__module__.startswith("torch"):
        import torch
        names = {v: k for k, v in _torch_dtypes().items()}
        if tensor.dtype not in names:
            raise UnsupportedDtype(f"unsupported K/V dtype {tensor.dtype}; use one of {SUPPORTED}")
        t = tensor.detach().to("cpu").contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else np.empty(0, np.uint8)
        return names[tensor.dtype], _TORCH, tuple(t.shape), raw
    arr = np.asarray(tensor)
    names = {v: k for k, v in _numpy_dtypes().items()}
    if arr.dtype not in names:
        raise UnsupportedDtype(f"unsupported K/V dtype {arr.dtype}; use one of {SUPPORTED}")
    shape = arr.shape           # ascontiguousarray turns a 0-d array into shape (1,)
    arr = np.ascontiguousarray(arr)
    return names[arr.dtype], _NUMPY, shape, arr.reshape(-1).view(np.uint8)


def compress(tensor: Any, chunk_size: Optional[int] = None) -> bytes:
    """Losslessly compress a K/V tensor; shape, dtype and framework are kept. chunk_size:
    original bytes per independently coded chunk (default: 256 KiB, or the whole tensor
    when that is smaller - tried for one-byte dtypes and for tensors whose rows repeat)."""
    name, framework, shape, raw = _as_bytes(tensor)
    if len(shape) > MAX_NDIM:
        raise ValueError(f"at most {MAX_NDIM} dimensions")
    view = memoryview(raw)
    head = _HEAD.pack(MAGIC, VERSION, dtype_code(name), framework, len(shape))
    dims = struct.pack(f"<{len(shape)}Q", *shape)
    size = validate_chunk_size(chunk_size) if chunk_size else DEFAULT_CHUNK_SIZE
    wide = _numpy_dtypes()[name].itemsize > 1
    coded = [_encode(view[off:off + size], name, wide) for off in range(0, len(view), size)]
    checksum = _checksum(view, head + dims)
    best = _body(len(view), checksum, size, [(c, p) for c, p, _ in coded])
    repeats = any(rows for _, _, rows in coded)
    if chunk_size is None and (repeats or not wide) and \
            DEFAULT_CHUNK_SIZE < len(view) <= MAX_WHOLE_CHUNK:     # the whole-tensor try
        whole = CODEC_ZSTD, CODECS[CODEC_ZSTD].encode(view, LEVEL_TYPED if wide
                                                      else WHOLE_ZSTD_LEVEL)
        if not wide:            # one-byte elements: rANS over the whole tensor may win too
            coded_whole = encode_chunk(view, name)
            if len(coded_whole[1]) < len(whole[1]):
                whole = coded_whole
        body = _body(len(view), checksum, len(view), [whole])
        if sum(map(len, body)) < sum(map(len, best)):
            best = body
    return b"".join([head, dims, *best])


def _encode(chunk: memoryview, name: str, wide: bool) -> Tuple[int, bytes, bool]:
    """(codec, payload, whether its rows repeat) of one chunk: the codecs' choice, and for
    wider elements whose rows repeat, zstd's if smaller."""
    codec, payload = encode_chunk(chunk, name)
    rows = wide and _kernels.repeated_words(chunk) > len(chunk) // 8 * ROW_REPEATS
    if rows and codec != CODEC_ZSTD:
        deflated = CODECS[CODEC_ZSTD].encode(chunk, LEVEL_TYPED)
        if len(deflated) < len(payload):
            codec, payload = CODEC_ZSTD, deflated
    return codec, payload, rows


def _body(nbytes: int, checksum: int, size: int, coded) -> List[bytes]:
    """A blob's parts after its dims (tail, chunk size, chunk table, payloads) for chunks
    of `size` bytes coded as (codec, payload)."""
    return [_TAIL.pack(nbytes, checksum, len(coded)), _CHUNK_SIZE.pack(size),
            *(_CHUNK.pack(codec, len(payload)) for codec, payload in coded),
            *(payload for _, payload in coded)]


def decompress(blob: bytes, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Any:
    """Inverse of compress. Raises CorruptContainer for damaged or foreign buffers.
    chunk_size only matters for version-1 blobs (later ones record it)."""
    name, framework, shape, out = _decode(memoryview(blob), chunk_size)
    if framework == _TORCH:
        import torch
        t = torch.from_numpy(out) if out.size else torch.empty(0, dtype=torch.uint8)
        return t.view(_torch_dtypes()[name]).reshape(shape)
    return out.view(_numpy_dtypes()[name]).reshape(shape)


class BlobHead(NamedTuple):
    """What a blob's header says, validated: its tensor's dtype name, shape and byte
    length; where its chunk entries start; its chunk size and count."""
    version: int
    dtype: str
    framework: int
    shape: Tuple[int, ...]
    nbytes: int
    checksum: int
    chunk_size: int
    nchunks: int
    table: int


def _bad(why: str):
    raise CorruptContainer(f"K/V blob: {why}")


def blob_head(blob, chunk_size: int = DEFAULT_CHUNK_SIZE) -> BlobHead:
    """The validated header of a blob (its dtype and shape without decoding it). Raises
    CorruptContainer; the data is checked only by decompress."""
    blob = memoryview(blob)
    if len(blob) < _HEAD.size:
        _bad("too short")
    magic, version, code, framework, ndim = _HEAD.unpack_from(blob, 0)
    if magic != MAGIC:
        _bad("bad magic (not produced by fpfs.kv.compress)")
    if version not in READABLE_VERSIONS or framework not in (_NUMPY, _TORCH) or \
            ndim > MAX_NDIM:
        _bad(f"unsupported version {version} or header fields")
    name = dtype_name(code)
    if name not in SUPPORTED:
        _bad(f"dtype code {code}")
    pos = _HEAD.size + 8 * ndim
    if len(blob) < pos + _TAIL.size:
        _bad("truncated header")
    shape = struct.unpack_from(f"<{ndim}Q", blob, _HEAD.size)
    nbytes, csum, nchunks = _TAIL.unpack_from(blob, pos)
    pos += _TAIL.size
    if version >= 2:
        if len(blob) < pos + _CHUNK_SIZE.size:
            _bad("truncated header")
        (chunk_size,) = _CHUNK_SIZE.unpack_from(blob, pos)
        pos += _CHUNK_SIZE.size
        if chunk_size == 0 or chunk_size > max(MAX_WHOLE_CHUNK, DEFAULT_CHUNK_SIZE):
            _bad(f"chunk size {chunk_size}")
    itemsize = _numpy_dtypes()[name].itemsize
    extent = 1                  # numpy refuses shapes whose non-zero dims overflow intp
    for dim in shape:
        extent *= max(dim, 1)
    if extent * itemsize >= 1 << 63:
        _bad("shape too large")
    if int(np.prod(shape, dtype=object)) * itemsize != nbytes or \
            nchunks != -(-nbytes // chunk_size) or pos + nchunks * _CHUNK.size > len(blob):
        _bad("inconsistent sizes")
    return BlobHead(version, name, framework, tuple(shape), nbytes, csum, chunk_size,
                    nchunks, pos)


def _decode(blob: memoryview, chunk_size: int):
    version, name, framework, shape, nbytes, csum, chunk_size, nchunks, pos = \
        blob_head(blob, chunk_size)
    out = np.empty(nbytes, dtype=np.uint8)
    data_pos = pos + nchunks * _CHUNK.size
    for i in range(nchunks):
        codec, length = _CHUNK.unpack_from(blob, pos + i * _CHUNK.size)
        if data_pos + length > len(blob):
            _bad("truncated payload")
        allowed = V1_CODECS if version == 1 else \
            KV_CODECS if version >= 4 else KV_CODECS - V4_CODECS
        if codec not in allowed:
            _bad(f"chunk {i}: codec {codec} not allowed in a version {version} blob")
        try:
            decode_chunk(codec, blob[data_pos:data_pos + length],
                         memoryview(out)[i * chunk_size:min(nbytes, (i + 1) * chunk_size)])
        except DecodeError as exc:
            _bad(f"chunk {i}: {exc}")
        data_pos += length
    if data_pos != len(blob):
        _bad("trailing bytes")
    if _checksum(out, bytes(blob[:_HEAD.size + 8 * len(shape)])) != csum:
        _bad("checksum mismatch")
    return name, framework, shape, out


def _checksum(data, header: bytes) -> int:
    """xxh3-64 of the data seeded with the CRC-32 of the header before it, so a damaged
    dtype, framework or shape field is caught like damaged data."""
    return xxhash.xxh3_64_intdigest(data, seed=zlib.crc32(header))


def compress_block(cache: Any, index: int) -> bytes:
    """Compress block `index` of a paged cache [num_blocks, block_size, heads, head_dim]."""
    return compress(cache[index])


def restore_block(cache: Any, index: int, blob: bytes) -> None:
    """Decode blob into block `index` of cache, in place; shape and dtype must match."""
    block = decompress(blob)
    target = cache[index]
    if tuple(block.shape) != tuple(target.shape) or block.dtype != target.dtype:
        raise ValueError(f"block of shape {tuple(block.shape)} {block.dtype} does not fit "
                         f"{tuple(target.shape)} {target.dtype}")
    if type(cache).__module__.startswith("torch"):
        target.copy_(block)
    else:
        target[...] = block
