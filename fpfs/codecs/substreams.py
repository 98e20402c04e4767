"""What codecs that split a chunk into streams (BLOCKS: one per struct field; MASKED: the
bitmap and the non-zero values) share: the codecs a stream may use, the choice of the
smallest, and per-thread buffers to decode streams into."""
from __future__ import annotations

import threading
from typing import Optional, Tuple

import numpy as np

from .general import LEVEL_TYPED, ZstdCodec
from .planes import PlanesCodec, RawCodec

SUBCODECS = {c.codec_id: c for c in (RawCodec(), PlanesCodec(), ZstdCodec())}
RAW, PLANES, ZSTD = 0, 1, 2

_local = threading.local()


def smallest(stream: memoryview, dtype: str, min_saving_ppm: int,
             layout: Optional[Tuple[int, int]] = None) -> Tuple[int, bytes]:
    """(sub-codec id, payload) of the smallest of RAW, PLANES (as dtype, or layout) and
    ZSTD for one stream."""
    best = (RAW, bytes(stream))
    planes = SUBCODECS[PLANES].encode(stream, dtype, min_saving_ppm, layout)
    if planes is not None and len(planes) < len(best[1]):
        best = (PLANES, planes)
    packed = SUBCODECS[ZSTD].encode(stream, LEVEL_TYPED)
    if len(packed) < len(best[1]):
        best = (ZSTD, packed)
    return best


def work_buffer(name: str, n: int) -> np.ndarray:
    """This thread's buffer called name, n bytes long (reused: fresh buffers page-fault).
    Distinct names never alias; PlanesCodec has its own (planes.scratch)."""
    buf = getattr(_local, name, None)
    if buf is None or buf.size < n:
        buf = np.empty(max(n, 1 << 16), dtype=np.uint8)
        setattr(_local, name, buf)
    return buf[:n]
