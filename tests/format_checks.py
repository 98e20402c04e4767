"""Shared checks for the format-layer tests (tests/test_formats_*.py): the tiling invariant,
byte-level mutations for fuzzing, and the oracle every mutated file is held to."""
from __future__ import annotations

import io
import struct
import tracemalloc
from typing import Sequence, Tuple

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from fpfs.formats import Layout, recognise

FUZZ_SETTINGS = settings(max_examples=300, deadline=None, database=None,
                         suppress_health_check=[HealthCheck.too_slow,
                                                HealthCheck.data_too_large])
# Seeds are a few KB; a parser that sizes an allocation from a forged length field would
# blow far past this.
MEMORY_BOUND = 16 << 20

INTERESTING = (0, 1, 2, 30, 64, 0x7F, 0xFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)
U32 = st.integers(0, 2 ** 32 - 1)
OP = st.one_of(
    st.tuples(st.just("flip"), U32, st.integers(0, 7)),
    st.tuples(st.just("set"), U32, st.integers(0, 255)),
    st.tuples(st.just("u16"), U32, st.sampled_from(INTERESTING)),
    st.tuples(st.just("u32"), U32, st.sampled_from(INTERESTING)),
    st.tuples(st.just("truncate"), U32, st.just(0)),
    st.tuples(st.just("delete"), U32, st.integers(1, 64)),
    st.tuples(st.just("insert"), U32, st.binary(min_size=1, max_size=32)),
)
OPS = st.lists(OP, min_size=1, max_size=4)


def mutate(data: bytes, ops: Sequence[Tuple]) -> bytes:
    """Apply byte flips, sets, interesting little-endian integers, truncations, deletions
    and insertions (positions taken modulo the current length)."""
    buf = bytearray(data)
    for kind, pos, arg in ops:
        if not buf:
            break
        pos %= len(buf)
        if kind == "flip":
            buf[pos] ^= 1 << arg
        elif kind == "set":
            buf[pos] = arg
        elif kind in ("u16", "u32"):
            fmt, width = ("<H", 2) if kind == "u16" else ("<I", 4)
            if pos + width <= len(buf):
                buf[pos:pos + width] = struct.pack(fmt, arg & (256 ** width - 1))
        elif kind == "truncate":
            del buf[pos:]
        elif kind == "delete":
            del buf[pos:pos + arg]
        elif kind == "insert":
            buf[pos:pos] = arg
    return bytes(buf)


def assert_tiles(layout: Layout, file_size: int) -> None:
    assert layout.file_size == file_size
    assert 0 <= layout.prefix_length <= file_size
    pos = layout.prefix_length
    for r in layout.regions:
        assert r.offset == pos and r.length > 0, (r, pos)
        assert r.tensor is not None or r.dtype == "RAW", r
        pos += r.length
    assert pos == file_size


def recognise_oracle(data: bytes) -> Layout:
    """recognise() must return a layout that tiles the file (a parser's FormatError makes
    it plain bytes); any other exception propagates and fails the test."""
    tracemalloc.start()
    try:
        layout, _why = recognise(io.BytesIO(data), len(data))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(layout, Layout)
    assert_tiles(layout, len(data))
    assert peak < MEMORY_BOUND, f"parsing a {len(data)}-byte file allocated {peak} bytes"
    return layout

