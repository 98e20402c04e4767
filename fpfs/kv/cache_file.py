"""The FPKC file: one K/V cache - every layer's keys and values as FPKV blobs
(fpfs/kv/tensors.py), the token ids the cache is of, and a label naming the model that made
it - checksummed whole. The byte layout is in FORMAT.md ("FPKC: K/V cache files").

This module knows bytes and tensors only; transformers' cache classes are caches.py's."""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import xxhash

from ..errors import CorruptContainer, UnsupportedVersion
from .tensors import _TORCH, BlobHead, blob_head, compress, decompress

MAGIC = b"FPKC"
VERSION = 1
FLAG_TOKENS = 1                     # token ids follow the label
KNOWN_FLAGS = FLAG_TOKENS
KIND_FULL = 0                       # a layer whose K/V hold every token [first, first + S)
# magic version flags label_length layers tokens seq_length first original_bytes checksum
_HEADER = struct.Struct("<4sBBHIIQQQQ")
_CHECKSUM_AT = 40                   # the checksum covers the file without its own 8 bytes
_LAYER = struct.Struct("<B7xQQ")    # kind, reserved, key blob length, value blob length
MAX_LAYERS = 1 << 16
SEQ_DIM = 2                         # [batch, kv_heads, seq, head_dim], as transformers keeps them


@dataclass(frozen=True)
class Header:
    """The fixed header's fields (not yet checked against the rest of the file)."""
    flags: int
    label_length: int
    layers: int
    tokens: int
    seq_length: int
    first: int
    original_bytes: int
    checksum: int

    @property
    def table_end(self) -> int:
        return _HEADER.size + self.layers * _LAYER.size + self.label_length + 4 * self.tokens


@dataclass
class CacheFile:
    """A parsed, validated FPKC file: everything but the tensor data is checked; the blobs
    are decoded (and checked by their own checksums) by tensors()."""
    label: str
    token_ids: Optional[np.ndarray]         # uint32, or None
    seq_length: int
    first: int
    original_bytes: int
    heads: List[Tuple[BlobHead, BlobHead]]  # per layer: (keys, values)
    blobs: List[Tuple[memoryview, memoryview]]

    @property
    def dtypes(self) -> List[str]:
        return sorted({h.dtype for pair in self.heads for h in pair})

    def tensors(self) -> List[Tuple[Any, Any]]:
        """Every layer's (keys, values) torch tensors."""
        return [(decompress(k), decompress(v)) for k, v in self.blobs]


def encode(pairs: Sequence[Tuple[Any, Any]], token_ids: Optional[Sequence[int]] = None,
           label: str = "", first: int = 0) -> List[bytes]:
    """The parts of an FPKC file (write them in order) for per-layer (keys, values) torch
    tensors [batch, kv_heads, seq, head_dim] holding tokens [first, first + seq) of
    token_ids (all of them, from the sequence's start)."""
    if not pairs:
        raise ValueError("a K/V cache needs at least one layer")
    if len(pairs) >= MAX_LAYERS:
        raise ValueError(f"at most {MAX_LAYERS - 1} layers")
    seq = _check_pairs(pairs)
    tokens = b""
    if token_ids is not None:
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= 1 << 32):
            raise ValueError("token ids must lie in [0, 2**32)")
        if first + seq != ids.size:
            raise ValueError(f"the cache holds tokens {first}..{first + seq} of a sequence "
                             f"of {ids.size} token ids; they must end together")
        tokens = ids.astype("<u4").tobytes()
    elif first:
        raise ValueError("a cache that starts past the sequence's start needs its token ids")
    name = label.encode("utf-8")
    if len(name) > 0xFFFF:
        raise ValueError("the label is longer than 65535 bytes")
    blobs = [(compress(k), compress(v)) for k, v in pairs]
    original = sum(k.numel() * k.element_size() + v.numel() * v.element_size()
                   for k, v in pairs)
    table = b"".join(_LAYER.pack(KIND_FULL, len(k), len(v)) for k, v in blobs)
    flags = FLAG_TOKENS if token_ids is not None else 0
    header = _HEADER.pack(MAGIC, VERSION, flags, len(name), len(pairs), len(tokens) // 4,
                          seq, first, original, 0)
    parts = [table, name, tokens, *(b for pair in blobs for b in pair)]
    checksum = _checksum(header[:_CHECKSUM_AT], parts)
    return [header[:_CHECKSUM_AT] + struct.pack("<Q", checksum), *parts]


def _check_pairs(pairs) -> int:
    """The sequence length every layer shares; ValueError for shapes a cache cannot have."""
    seq = None
    for i, (k, v) in enumerate(pairs):
        if k.dim() != 4 or v.dim() != 4 or k.shape[0] != v.shape[0] or \
                k.shape[SEQ_DIM] != v.shape[SEQ_DIM]:
            raise ValueError(f"layer {i}: keys {tuple(k.shape)} and values {tuple(v.shape)} "
                             "are not [batch, heads, seq, head_dim] of one batch and length")
        if seq is None:
            seq = k.shape[SEQ_DIM]
        elif k.shape[SEQ_DIM] != seq:
            raise ValueError(f"layer {i} holds {k.shape[SEQ_DIM]} tokens, layer 0 {seq}")
    if not seq:
        raise ValueError("the cache holds no tokens")
    return seq


def _checksum(head: bytes, parts) -> int:
    h = xxhash.xxh3_64(head)
    for part in parts:
        h.update(part)
    return h.intdigest()


def _bad(name: str, why: str):
    raise CorruptContainer(f"{name}: not a valid K/V cache file: {why}")


def read_header(data, name: str = "K/V cache") -> Header:
    """The fixed header of an FPKC file (its first 48 bytes at least), magic and version
    checked; nothing else is."""
    if len(data) < _HEADER.size:
        _bad(name, "too short")
    magic, version, flags, label_length, layers, tokens, seq, first, original, csum = \
        _HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        _bad(name, "bad magic (not written by fpfs.kv.save_cache)")
    if version != VERSION or flags & ~KNOWN_FLAGS:
        raise UnsupportedVersion(f"{name}: K/V cache file version {version}, flags {flags:#x} "
                                 f"(this fpfs reads version {VERSION})")
    return Header(flags, label_length, layers, tokens, seq, first, original, csum)


def parse(data, name: str = "K/V cache") -> CacheFile:
    """Validate a whole FPKC file held in data (bytes-like); raises CorruptContainer
    (UnsupportedVersion for a newer one) for anything a writer would not have written."""
    data = memoryview(data).cast("B")
    h = read_header(data, name)
    if not 1 <= h.layers < MAX_LAYERS or h.seq_length == 0 or h.table_end > len(data):
        _bad(name, "truncated or impossible header")
    if h.checksum != _checksum(data[:_CHECKSUM_AT], [data[_HEADER.size:]]):
        _bad(name, "checksum mismatch (the file is damaged or truncated)")
    has_tokens = bool(h.flags & FLAG_TOKENS)
    if (h.first + h.seq_length != h.tokens) if has_tokens else (h.tokens or h.first):
        _bad(name, "token count does not match the cached tokens")
    label, tokens = identity(data, h, name)
    pos = h.table_end
    heads, blobs = [], []
    for i in range(h.layers):
        kind, klen, vlen = _LAYER.unpack_from(data, _HEADER.size + i * _LAYER.size)
        if kind != KIND_FULL:
            _bad(name, f"layer {i}: unknown kind {kind}")
        if pos + klen + vlen > len(data):
            _bad(name, f"layer {i}: blobs run past the end")
        pair = (data[pos:pos + klen], data[pos + klen:pos + klen + vlen])
        pos += klen + vlen
        heads.append(tuple(_blob_head(name, i, b, h.seq_length) for b in pair))
        blobs.append(pair)
    if pos != len(data):
        _bad(name, "trailing bytes after the last layer")
    if any(k.shape[0] != v.shape[0] for k, v in heads) or \
            sum(k.nbytes + v.nbytes for k, v in heads) != h.original_bytes:
        _bad(name, "layers disagree with each other or with the header")
    return CacheFile(label, tokens, h.seq_length, h.first, h.original_bytes, heads, blobs)


def identity(data, h: Header, name: str = "K/V cache") -> Tuple[str, Optional[np.ndarray]]:
    """The label and token ids (uint32, or None) from a file's first h.table_end bytes -
    not checked against the checksum, which covers the whole file."""
    if len(data) < h.table_end:
        _bad(name, "truncated header")
    pos = _HEADER.size + h.layers * _LAYER.size
    try:
        label = bytes(data[pos:pos + h.label_length]).decode("utf-8")
    except UnicodeDecodeError:
        _bad(name, "label is not UTF-8")
    pos += h.label_length
    if not h.flags & FLAG_TOKENS:
        return label, None
    return label, np.frombuffer(data, "<u4", h.tokens, pos).astype(np.uint32)


def _blob_head(name: str, layer: int, blob, seq_length: int) -> BlobHead:
    try:
        head = blob_head(blob)
    except CorruptContainer as exc:
        _bad(name, f"layer {layer}: {exc}")
    if head.framework != _TORCH or len(head.shape) != 4 or head.shape[SEQ_DIM] != seq_length:
        _bad(name, f"layer {layer}: a tensor of shape {head.shape} in a cache of "
                   f"{seq_length} tokens")
    return head
