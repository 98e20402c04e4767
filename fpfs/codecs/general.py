"""ZSTD: a general-purpose byte codec for what has no float structure to exploit - the
bytes around tensors (pickles, zip headers, GGUF metadata), tokenizer.json and vocab.txt,
and one-byte tensors with exact repeats (FP8 K/V caches whose first-layer rows repeat)
that an order-0 coder cannot see. One zstd frame per chunk, content size in the frame."""
from __future__ import annotations

import threading

import zstandard

from .errors import DecodeError

# Untyped bytes (the bytes around tensors, tokenizer.json, files fpfs does not recognise)
# get a level by how many of them a file has: a slow one for the few MiB of a side file
# (MiniLM's tokenizer.json, 256 KiB chunks, one core: 44.6 % at -3 in 145 MB/s, 39.9 % at
# -9 in 34 MB/s, 35.5 % at -19 in 4 MB/s), a fast one for gigabytes, so an unrecognised
# multi-GB file compresses at zstd -3 speed (-19 took 136 s for 1 GB). Typed chunks only
# try the fast level.
LEVEL_UNTYPED = 19
LEVEL_TYPED = 3
UNTYPED_LEVELS = ((32 << 20, LEVEL_UNTYPED), (256 << 20, 9))   # (up to bytes, level)


def untyped_level(untyped_bytes: int) -> int:
    """The zstd level for the untyped chunks of a file that has untyped_bytes of them."""
    for limit, level in UNTYPED_LEVELS:
        if untyped_bytes <= limit:
            return level
    return LEVEL_TYPED

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
