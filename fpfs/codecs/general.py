"""ZSTD: a general-purpose byte codec for what has no float structure to exploit - the
bytes around tensors (pickles, zip headers, GGUF metadata), tokenizer.json and vocab.txt,
and one-byte tensors with exact repeats (FP8 K/V caches whose first-layer rows repeat)
that an order-0 coder cannot see. One zstd frame per chunk, content size in the frame."""
from __future__ import annotations

import threading

import zstandard

from .errors import DecodeError

# Untyped bytes are few and compress once, so they get a slow level (tokenizer.json:
# 44.0 % at -3, 39.5 % at -9, 34.7 % at -19); typed chunks only try a fast level.
LEVEL_UNTYPED = 19
LEVEL_TYPED = 3

_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    c = cache.get(level)
    if c is None:
        c = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True,
                                                    write_checksum=False)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "decompressor", None)
    if d is None:
        d = _local.decompressor = zstandard.ZstdDecompressor()
    return d


class ZstdCodec:
    codec_id = 2
    name = "zstd"

    def encode(self, data: memoryview, level: int = LEVEL_TYPED) -> bytes:
        return _compressor(level).compress(data)

    def decode_into(self, payload, out: memoryview) -> None:
        n = len(out)
        try:
            # zstandard allocates the content size the frame header claims, whatever
            # max_output_size says (a forged 2^40 is a MemoryError, 2^30 a 1 GiB buffer):
            # check it first. -1: not in the header, the output is then bounded at n.
            claimed = zstandard.frame_content_size(payload)
            if claimed not in (-1, n):
                raise DecodeError(f"zstd frame header says {claimed} bytes, chunk has {n}")
            data = _decompressor().decompress(payload, max_output_size=max(n, 1))
        except zstandard.ZstdError as exc:
            raise DecodeError(f"zstd: {exc}") from None
        if len(data) != n:
            raise DecodeError(f"zstd frame holds {len(data)} bytes, chunk has {n}")
        out[:] = data
