"""fpfs.kv: K/V cache tensors round-trip bit-exactly with shape, dtype and framework kept;
paged blocks restore in place; damaged or foreign buffers and unsupported dtypes give clear
errors."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fpfs.kv as kv
from fpfs.errors import CorruptContainer

NUMPY = [np.float16, np.float32, ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn,
         ml_dtypes.float8_e5m2]
TORCH = [torch.float16, torch.float32, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2]


def same_bits(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and \
            torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", NUMPY, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(0,), (1,), (3, 5), (2, 16, 12, 32), (1, 300_000)])
def test_numpy_round_trip(dtype, shape, rng):
    a = (rng.standard_normal(shape) * 0.1).astype(dtype)
    b = kv.decompress(kv.compress(a))
    assert isinstance(b, np.ndarray) and same_bits(a, b)


@pytest.mark.parametrize("dtype", TORCH, ids=str)
def test_torch_round_trip(dtype):
    t = (torch.randn(4, 16, 12, 32) * 0.1).to(dtype)
    u = kv.decompress(kv.compress(t))
    assert isinstance(u, torch.Tensor) and same_bits(t, u)


def test_non_contiguous_torch_tensor():
    t = torch.randn(8, 16, 12, 32, dtype=torch.bfloat16).transpose(1, 2)
    assert same_bits(t.contiguous(), kv.decompress(kv.compress(t)))


def test_compresses_real_looking_bf16(rng):
    a = (rng.standard_normal((64, 16, 12, 32)) * 0.05).astype(ml_dtypes.bfloat16)
    assert len(kv.compress(a)) < 0.75 * a.nbytes


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_paged_blocks(framework, rng):
    cache = (rng.standard_normal((6, 16, 12, 32)) * 0.1).astype(np.float16)
    if framework == "torch":
        cache = torch.from_numpy(cache)
    blobs = [kv.compress_block(cache, i) for i in range(6)]
    original = cache.clone() if framework == "torch" else cache.copy()
    cache[...] = 0
    for i in (5, 0, 3, 1, 2, 4):
        kv.restore_block(cache, i, blobs[i])
    assert same_bits(original, cache)
    with pytest.raises(ValueError):
        kv.restore_block(cache, 0, kv.compress(original[0][:8]))


@pytest.mark.parametrize("bad", [np.zeros(4, np.int32), np.zeros(4, np.float64),
                                 torch.zeros(4, dtype=torch.int8)], ids=str)
def test_unsupported_dtype(bad):
    with pytest.raises(kv.UnsupportedDtype):
        kv.compress(bad)


def test_damaged_buffers_are_rejected(rng):
    blob = kv.compress((rng.standard_normal((4, 1000)) * 0.1).astype(ml_dtypes.bfloat16))
    for cut in (0, 3, 8, 20, len(blob) // 2, len(blob) - 1):
        with pytest.raises(CorruptContainer):
            kv.decompress(blob[:cut])
    with pytest.raises(CorruptContainer):
        kv.decompress(blob + b"\x00")
    with pytest.raises(CorruptContainer):
        kv.decompress(b"not a kv blob at all")


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 8))
def test_flipped_bits_never_give_wrong_values(seed, flips):
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal((3, 700)) * 0.1).astype(np.float16)
    blob = bytearray(kv.compress(a))
    for _ in range(flips):
        blob[int(rng.integers(len(blob)))] ^= 1 << int(rng.integers(8))
    try:
        b = kv.decompress(bytes(blob))
    except CorruptContainer:
        return
    assert same_bits(a, b)            # a flip that changed nothing observable


def test_header_damage_is_caught(rng):
    """F16 and BF16 differ in one bit of the dtype code: a flip there must not reinterpret
    the same bytes as another dtype."""
    blob = bytearray(kv.compress((rng.standard_normal(500) * 0.1).astype(np.float16)))
    for pos in range(4, 16):
        for bit in range(8):
            damaged = bytearray(blob)
            damaged[pos] ^= 1 << bit
            with pytest.raises(CorruptContainer):
                kv.decompress(bytes(damaged))
