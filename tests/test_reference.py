"""The fast Cython decoder against the slow reference decoder (fpfs/_reference.py, written
from FORMAT.md): identical bytes on real and random chunks, and on damaged payloads the fast
decoder never accepts what the reference rejects."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fpfs import _kernels, _reference
from fpfs.codecs import DecodeError, decode_chunk, encode_chunk
from fpfs.compress import plan_chunks
from fpfs.formats import detect as read_layout

DTYPES = ["BF16", "F16", "F32", "F64", "F8_E4M3", "I64", "U16", "RAW"]


def fast(codec: int, payload: bytes, length: int):
    out = bytearray(length)
    try:
        decode_chunk(codec, payload, memoryview(out))
    except DecodeError:
        return None
    return bytes(out)


def reference(codec: int, payload: bytes, length: int):
    try:
        return _reference.decode_chunk(codec, payload, length)
    except (_reference.ReferenceError, IndexError):
        return None


@pytest.mark.parametrize("dtype", ["F32", "BF16", "F16", "F8_E4M3", "F8_E5M2", "MXFP4"])
def test_real_chunks_match_reference(real_files, dtype):
    path = real_files[dtype]
    layout = read_layout(path)
    with open(path, "rb") as f:
        data = f.read()
    chunks = plan_chunks(layout, 8192)
    rng = np.random.default_rng(3)
    for k in rng.choice(len(chunks), size=6, replace=False):
        off, length, name, _ = chunks[k]
        original = data[off:off + length]
        for min_saving in (0, 10_000):
            codec, payload = encode_chunk(memoryview(original), name, min_saving)
            assert _reference.decode_chunk(codec, payload, length) == original
            assert fast(codec, payload, length) == original


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(DTYPES), st.integers(0, 2000), st.integers(0, 2**32 - 1),
       st.floats(0.001, 10.0))
def test_random_chunks_match_reference(dtype, n, seed, scale):
    rng = np.random.default_rng(seed)
    width = {"BF16": 2, "F16": 2, "U16": 2, "F32": 4, "F64": 8, "I64": 8}.get(dtype, 1)
    raw = (rng.standard_normal(n) * scale).astype(np.float64).tobytes()[:n * width]
    codec, payload = encode_chunk(memoryview(raw), dtype, 0)
    assert _reference.decode_chunk(codec, payload, len(raw)) == raw
    assert fast(codec, payload, len(raw)) == raw


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 40))
def test_damaged_payloads_agree(seed, flips):
    """Whatever the damage, the fast decoder rejects at least what the reference rejects,
    and where both accept they produce the same bytes."""
    rng = np.random.default_rng(seed)
    values = (rng.standard_normal(700) * 0.02).astype(np.float32)
    raw = values.tobytes()
    codec, payload = encode_chunk(memoryview(raw), "F32", 0)
    damaged = bytearray(payload)
    for _ in range(int(rng.integers(1, flips + 1))):
        damaged[int(rng.integers(len(damaged)))] ^= 1 << int(rng.integers(8))
    ref = reference(codec, bytes(damaged), len(raw))
    got = fast(codec, bytes(damaged), len(raw))
    if ref is None:
        assert got is None
    else:
        assert got == ref


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=0, max_size=300), st.integers(1, 500))
def test_garbage_streams_agree(stream, n):
    try:
        ref = _reference.rans_decode(stream, n)
    except (_reference.ReferenceError, IndexError):
        ref = None
    try:
        got = _kernels.rans_decode_bytes(stream, n)
    except _kernels.KernelError:
        got = None
    if ref is None:
        assert got is None
    else:
        assert got == ref


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(["BF16", "F16", "F32", "I64", "U8", "GGUF_Q8_0", "GGUF_Q4_K"]),
       st.integers(1, 300), st.integers(0, 2**32 - 1), st.floats(0.0, 0.95),
       st.floats(0.0, 1.0))
def test_new_codecs_match_reference(dtype, blocks, seed, zero_share, change_share):
    """BLOCKS, MASKED and DELTA (with its XOR and SUB residuals) payloads decode to the same
    bytes in the fast codecs and the reference decoder."""
    from fpfs.codecs.blocks import BLOCK_TYPES
    rng = np.random.default_rng(seed)
    unit = BLOCK_TYPES[dtype].block_bytes if dtype in BLOCK_TYPES else 8
    n = blocks * unit
    values = (rng.standard_normal(-(-n // 4)) * 0.02).astype(np.float32)
    values[rng.random(values.size) < zero_share] = 0
    base = values.view(np.uint8)[:n].copy()
    new = base.copy()
    flip = rng.random(n) < change_share * 0.2
    new[flip] ^= rng.integers(1, 256, int(flip.sum()), dtype=np.uint8)
    raw, old = new.tobytes(), b"\x07" * 5 + base.tobytes()

    def base_reader(offset, length):
        return memoryview(old)[offset:offset + length]

    for min_saving in (0, 10_000):
        codec, payload = encode_chunk(memoryview(raw), dtype, min_saving,
                                      base=(5, memoryview(old)[5:5 + n]))
        assert _reference.decode_chunk(codec, payload, n, old) == raw
        out = bytearray(n)
        decode_chunk(codec, payload, memoryview(out), base_reader)
        assert bytes(out) == raw
