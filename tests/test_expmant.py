"""EXPMANT (codec 6, format version 4): BF16 exponent + top mantissa bits as one rANS32
symbol. Every decoder (portable C, AVX2 where the CPU has it) gives the original bytes and
the reference decoder's bytes on what the encoder writes, and an error wherever the
reference reports one on hostile payloads; the writer's window choice and the ratio on
real weights."""
from __future__ import annotations

import struct

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fpfs import _reference
from fpfs.codecs import CODEC_EXPMANT, CODECS, DecodeError, encode_chunk
from tests.simd import each_kernel, restore_kernel  # noqa: F401 (autouse fixture)
from tests.weights import cast_tensors, load_real

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
CODEC = CODECS[CODEC_EXPMANT]




def outcome(payload: bytes, length: int):
    """{kernel: bytes or 'error'} and the reference's bytes or 'error'."""
    got = {}
    for name in each_kernel():
        out = bytearray(length)
        try:
            CODEC.decode_into(payload, memoryview(out))
            got[name] = bytes(out)
        except DecodeError:
            got[name] = "error"
    try:
        ref = _reference.decode_expmant(payload, length)
    except _reference.ReferenceError:
        ref = "error"
    return got, ref


def roundtrip(data: bytes) -> bytes:
    """Encode, then check every kernel and the reference give data back; the payload."""
    payload = CODEC.encode(memoryview(data))
    assert payload is not None and len(payload) < len(data)
    got, ref = outcome(payload, len(data))
    assert ref == data
    assert all(v == data for v in got.values()), [k for k, v in got.items() if v != data]
    return payload


def bf16(values) -> bytes:
    return np.asarray(values, dtype=np.float32).astype(ml_dtypes.bfloat16).tobytes()


def elements(exponents, rng) -> bytes:
    """BF16 bit patterns with the given exponents and random signs and mantissas."""
    e = np.asarray(exponents, dtype=np.uint16)
    v = (rng.integers(0, 2, e.size, dtype=np.uint16) << 15) | (e << 7) | \
        rng.integers(0, 128, e.size, dtype=np.uint16)
    return v.astype("<u2").tobytes()


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(40, 5000), low=st.integers(1, 254),
       span=st.integers(0, 126), zeros=st.floats(0.0, 0.5), skew=st.floats(0.5, 30.0))
def test_roundtrip_matches_reference(seed, n, low, span, zeros, skew):
    """Windows of every width and position, zero exponents (zeros and subnormals), lengths
    that end anywhere within a group of eight fields and a SIMD step; every encoder writes
    the same payload."""
    rng = np.random.default_rng(seed)
    span = min(span, 255 - low)
    offsets = np.minimum(rng.exponential(skew, n).astype(np.int64), span)
    exps = np.where(rng.random(n) < zeros, 0, low + offsets)
    data = elements(exps, rng)
    payloads = set()
    for _ in each_kernel():         # the AVX2 window scan and split write the same bytes
        payloads.add(CODEC.encode(memoryview(data)))
    assert len(payloads) == 1
    payload = payloads.pop()
    if payload is not None:         # random mantissas: coding may not pay
        got, ref = outcome(payload, len(data))
        assert ref == data and all(v == data for v in got.values())


@pytest.mark.parametrize("span,k", [(0, 2), (62, 2), (63, 1), (126, 1), (127, None)])
def test_window_choice(span, k):
    rng = np.random.default_rng(span)
    exps = np.concatenate([np.full(2000, 120), [100, 100 + span]])
    exps = np.where(exps > 100 + span, 100 + span, exps)
    data = elements(np.sort(exps) if span else exps, rng)
    payload = CODEC.encode(memoryview(bytes(data)))
    if k is None:
        assert payload is None
    else:
        assert payload is not None and payload[0] == k
        roundtrip(data)


def test_window_at_the_top_and_specials():
    """Exponents up to 255 (infinities, NaNs) within a window: b is lowered to its bound."""
    rng = np.random.default_rng(1)
    data = elements(np.r_[np.full(3000, 250), [255, 255, 200, 0]], rng)
    payload = roundtrip(data)
    assert payload[:2] == bytes([2, 193])


@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 1000, 4097])
def test_lengths(n):
    """Every kernel handles the SIMD and 64-bit-load tails (the encoder must also find it
    worth coding: exponents constant, mantissas skewed)."""
    rng = np.random.default_rng(n)
    v = (np.uint16(120) << 7) | rng.choice([0, 1, 2, 127], n, p=[0.7, 0.1, 0.1, 0.1]).astype(np.uint16)
    data = v.astype("<u2").tobytes()
    payload = CODEC.encode(memoryview(data))
    if payload is not None:
        got, ref = outcome(payload, len(data))
        assert ref == data and all(x == data for x in got.values())


def test_real_weights_smaller_than_planes():
    """On real BF16 weights EXPMANT is what the writer picks and is smaller than PLANES."""
    w = cast_tensors(load_real(), "BF16")["encoder.layer.0.intermediate.dense.weight"]
    data = w.tobytes()[:256 * 1024]
    codec, payload = encode_chunk(memoryview(data), "BF16")
    assert codec == CODEC_EXPMANT
    roundtrip(data)
    planes = CODECS[1].encode(memoryview(data), "BF16")
    assert len(payload) < len(planes) * 0.997


def _payload() -> bytes:
    rng = np.random.default_rng(5)
    return roundtrip(bf16(rng.standard_normal(3001) * 0.05))   # 6 padding bits


@pytest.mark.parametrize("name,patch", [
    ("k=0", lambda p: p.__setitem__(0, 0)),
    ("k=3", lambda p: p.__setitem__(0, 3)),
    ("b=0", lambda p: p.__setitem__(1, 0)),
    ("b past 255", lambda p: p.__setitem__(1, 194)),
    ("stream 4 GiB", lambda p: struct.pack_into("<I", p, 2, 0xFFFFFFFF)),
    ("stream 1 short", lambda p: struct.pack_into("<I", p, 2, struct.unpack_from("<I", p, 2)[0] - 1)),
    ("padding bits", lambda p: p.__setitem__(-1, p[-1] | 0x80)),
    ("truncated", lambda p: p.__delitem__(slice(-1, None))),
    ("trailing", lambda p: p.append(0)),
])
def test_hostile_headers(name, patch):
    payload = bytearray(_payload())
    patch(payload)
    got, ref = outcome(bytes(payload), 6002)
    assert ref == "error" and set(got.values()) == {"error"}, name


@SETTINGS
@given(cuts=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1,
                     max_size=6), length=st.sampled_from([6000, 6002, 6004]))
def test_mutated_payloads_match_reference(cuts, length):
    """Byte flips anywhere: every kernel gives the reference's bytes, or all reject."""
    payload = bytearray(_payload())
    for pos, val in cuts:
        payload[pos % len(payload)] = val
    got, ref = outcome(bytes(payload), length)
    assert all(v == ref for v in got.values())


def test_odd_or_empty_lengths_rejected():
    payload = _payload()
    for length in (0, 1, 6001):
        got, ref = outcome(payload, length)
        assert ref == "error" and set(got.values()) == {"error"}
