"""Chunk codecs: a small registry of classes over the Cython kernels (numcodecs-style).

A chunk is encoded by every codec that applies and the smallest payload is kept; the codec
id goes into the chunk table. Python decides here; fpfs._kernels loops.
"""
from __future__ import annotations

import threading
from typing import Dict, Tuple

import numpy as np

from .. import _kernels
from ..errors import FpfsError
from .dtypes import DTYPE_CODES, DTYPE_NAMES, dtype_code, dtype_name, plane_layout

CODEC_RAW = 0
CODEC_PLANES = 1

# A plane is rANS-coded only if that saves at least this share of it (parts per million).
# Decoding a coded plane costs ~0.7 ns/byte, a raw one a memcpy: on BF16 the nearly random
# sign/mantissa plane would save 0.3 % of itself for half the decode speed (measured on
# MiniLM: 66.12 % at 1.3 GB/s vs 66.23 % at 2.3 GB/s). 0 keeps every saving (--smallest).
DEFAULT_MIN_SAVING_PPM = 10_000

_local = threading.local()


def scratch(n: int) -> np.ndarray:
    """A per-thread work buffer of at least n bytes (reused: allocation would dominate)."""
    buf = getattr(_local, "buf", None)
    if buf is None or buf.size < n:
        buf = np.empty(max(n, 1 << 18), dtype=np.uint8)
        _local.buf = buf
    return buf


class DecodeError(FpfsError):
    """A payload could not be decoded (the caller adds file and chunk to the message)."""


class RawCodec:
    codec_id = CODEC_RAW
    name = "raw"

    def encode(self, data: memoryview, dtype: str, min_saving_ppm: int = 0) -> bytes:
        return bytes(data)

    def decode_into(self, payload, out: memoryview) -> None:
        if len(payload) != len(out):
            raise DecodeError(f"raw payload of {len(payload)} bytes for {len(out)} bytes")
        out[:] = payload


class PlanesCodec:
    """Byte planes (exponent first), each stored CONST, RAW or rANS-coded (FORMAT.md)."""
    codec_id = CODEC_PLANES
    name = "planes"

    def encode(self, data: memoryview, dtype: str,
               min_saving_ppm: int = DEFAULT_MIN_SAVING_PPM):
        """Payload bytes, or None when it would not be smaller than the raw chunk."""
        n = len(data)
        width, rot = plane_layout(dtype, n)
        dst = bytearray(n)
        size = _kernels.encode_planes_into(data, width, rot, scratch(n), dst, min_saving_ppm)
        if size == 0:
            return None
        del dst[size:]
        return bytes(dst)

    def decode_into(self, payload, out: memoryview) -> None:
        try:
            _kernels.decode_planes_into(payload, out, scratch(len(out)))
        except _kernels.KernelError as exc:
            raise DecodeError(str(exc)) from None


CODECS: Dict[int, object] = {c.codec_id: c for c in (RawCodec(), PlanesCodec())}
CODEC_NAMES = {cid: c.name for cid, c in CODECS.items()}


def encode_chunk(data: memoryview, dtype: str,
                 min_saving_ppm: int = DEFAULT_MIN_SAVING_PPM) -> Tuple[int, bytes]:
    """(codec id, payload) of the smallest encoding of one chunk."""
    payload = CODECS[CODEC_PLANES].encode(data, dtype, min_saving_ppm)
    if payload is None:
        return CODEC_RAW, CODECS[CODEC_RAW].encode(data, dtype)
    return CODEC_PLANES, payload


def decode_chunk(codec_id: int, payload, out: memoryview) -> None:
    """Decode payload into out (exactly the chunk's original length)."""
    codec = CODECS.get(codec_id)
    if codec is None:
        raise DecodeError(f"unknown codec id {codec_id}")
    codec.decode_into(payload, out)


__all__ = [
    "DEFAULT_MIN_SAVING_PPM", "CODEC_RAW", "CODEC_PLANES", "CODECS", "CODEC_NAMES", "DecodeError", "encode_chunk",
    "decode_chunk", "DTYPE_CODES", "DTYPE_NAMES", "dtype_code", "dtype_name", "plane_layout",
]
