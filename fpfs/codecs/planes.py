"""RAW and PLANES chunk codecs over the Cython kernels (FORMAT.md, codecs 0 and 1)."""
from __future__ import annotations

import threading

import numpy as np

from .. import _kernels
from .dtypes import plane_layout
from .errors import DecodeError

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


def decode_with(decoder, payload, out: memoryview) -> None:
    """Run a kernel decoder, decoder(payload, out, scratch); its errors are DecodeError."""
    try:
        decoder(payload, out, scratch(len(out)))
    except _kernels.KernelError as exc:
        raise DecodeError(str(exc)) from None


class RawCodec:
    codec_id = 0
    name = "raw"

    def encode(self, data: memoryview) -> bytes:
        return bytes(data)

    def decode_into(self, payload, out: memoryview) -> None:
        if len(payload) != len(out):
            raise DecodeError(f"raw payload of {len(payload)} bytes for {len(out)} bytes")
        out[:] = payload


class PlanesCodec:
    """Byte planes (exponent first), each stored CONST, RAW or rANS-coded (FORMAT.md)."""
    codec_id = 1
    name = "planes"

    def encode(self, data: memoryview, dtype: str,
               min_saving_ppm: int = DEFAULT_MIN_SAVING_PPM, layout=None):
        """Payload bytes, or None when it would not be smaller than the raw chunk.
        layout: (width, rotation) instead of the dtype's own."""
        n = len(data)
        width, rot = layout if layout is not None else plane_layout(dtype, n)
        return _kernels.planes_payload(data, width, rot, scratch(n), min_saving_ppm)

    def decode_into(self, payload, out: memoryview) -> None:
        decode_with(_kernels.decode_planes_into, payload, out)
