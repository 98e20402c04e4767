"""MASKED (FORMAT.md, codec 5): chunks where many elements are exactly zero.

Optimizer state is like that: AdamW's exp_avg and exp_avg_sq are 0 for every embedding
row whose token never occurred (47.5 % of all values after a 40-step MiniLM fine-tune), and
so is a delta wherever a tensor did not change. Byte planes code each plane on its own, so
a zero element costs about one bit in every plane; a bitmap of the non-zero elements plus
the planes of those elements alone costs one bit (less, coded) per element in all.
"""
from __future__ import annotations

import struct
from typing import Optional

import numpy as np

from .. import _kernels
from .dtypes import plane_layout
from .errors import DecodeError
from .substreams import SUBCODECS, smallest, work_buffer

_HEAD = struct.Struct("<BBHIBIB")    # width, zero, zero, nonzero count, mask codec,
#                                       mask length, values codec
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
# Below this share of zero elements the bitmap costs more than it saves.
MIN_ZERO_SHARE = 0.1


class MaskedCodec:
    codec_id = 5
    name = "masked"

    def encode(self, data: memoryview, dtype: str, min_saving_ppm: int) -> Optional[bytes]:
        n = len(data)
        width, rot = plane_layout(dtype, n)
        if n == 0:
            return None
        elements = np.frombuffer(data, dtype=_UINT[width])
        k = int(np.count_nonzero(elements))       # most chunks stop here: no mask built
        if k > (1 - MIN_ZERO_SHARE) * elements.size:
            return None
        nonzero = elements != 0
        mask = np.packbits(nonzero, bitorder="little")
        mask_codec, mask_body = smallest(memoryview(mask), "U8", min_saving_ppm)
        values = np.ascontiguousarray(elements[nonzero]).view(np.uint8)
        values_codec, values_body = smallest(memoryview(values), dtype, min_saving_ppm,
                                              (width, rot) if k else None)
        payload = _HEAD.pack(width, 0, 0, k, mask_codec, len(mask_body), values_codec) + \
            mask_body + values_body
        return payload if len(payload) < n else None

    def decode_into(self, payload, out: memoryview) -> None:
        payload = memoryview(payload)
        n = len(out)
        if len(payload) < _HEAD.size:
            raise DecodeError("masked payload truncated")
        width, z1, z2, k, mask_codec, mask_len, values_codec = _HEAD.unpack_from(payload, 0)
        if z1 or z2 or width not in _UINT or n % width or \
                mask_codec not in SUBCODECS or values_codec not in SUBCODECS:
            raise DecodeError("masked payload: bad header")
        count = n // width
        if k > count or _HEAD.size + mask_len > len(payload):
            raise DecodeError("masked payload: lengths exceed the chunk")
        mask = work_buffer("mask", (count + 7) // 8)
        SUBCODECS[mask_codec].decode_into(payload[_HEAD.size:_HEAD.size + mask_len],
                                           memoryview(mask))
        values = work_buffer("values", k * width + _kernels.MASK_SLACK)
        SUBCODECS[values_codec].decode_into(payload[_HEAD.size + mask_len:],
                                             memoryview(values)[:k * width])
        try:
            _kernels.mask_expand(out, mask, values, k, width)
        except _kernels.KernelError as exc:
            raise DecodeError(str(exc)) from None
