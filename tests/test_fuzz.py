"""Hypothesis fuzzing of everything that parses untrusted bytes: the container reader
(open, decode of every chunk, PackedFile.pread), the PLANES chunk decoder (held to the plain
reference decoder) and fpfs.kv.decompress.

Inputs are small valid containers / payloads / K/V blobs mutated by bit flips, byte sets,
insertions, deletions, truncations, appends, splices of two valid inputs, interesting
integers, and field edits with the CRCs recomputed (so the checks behind the CRCs are
reached). The contract, checked by the oracles in fuzz/fuzz_container.py (shared with the
standalone campaign there): every input gives either authentic bytes or a typed fpfs error
(FpfsError) - no other exception, no wrong bytes, no hang (faulthandler watchdog), and claims
of huge sizes are refused before anything big is allocated (tracemalloc)."""
from __future__ import annotations

import faulthandler
import struct
import tracemalloc

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fpfs.kv as kv
from fpfs import _reference
from fpfs.codecs import DecodeError, decode_chunk
from fpfs.container import HEADER, TRAILER
from fpfs.errors import CorruptContainer, FpfsError
from fuzz.fuzz_container import (ENT, OP_KINDS, apply_ops,
                                 build_seeds, check_container, check_kv, check_payload,
                                 fix_crcs, kv_seeds, parse, payload_seeds)

SETTINGS = settings(max_examples=400, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
HANG_SECONDS = 120          # one example taking this long is a hang: dump stacks and abort
MEMORY_BOUND = 16 << 20     # seeds are < 60 KB; no input may make us allocate more than this

U32 = st.integers(0, 2**32 - 1)
OP = st.tuples(st.sampled_from(OP_KINDS), U32, U32, st.binary(min_size=1, max_size=64))
RAW_OPS = st.lists(OP.filter(lambda op: op[0] not in ("field", "fixcrc")), min_size=1, max_size=4)
ANY_OPS = st.lists(OP, min_size=1, max_size=5)
FORGED_OPS = st.lists(st.tuples(st.just("field"), U32, U32, st.just(b"\0")), min_size=1,
                      max_size=3)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    seeds = build_seeds(str(d))
    kvs = kv_seeds()
    return {"seeds": seeds, "originals": [s.original for s in seeds],
            "packed": [s.packed for s in seeds], "path": str(d / "input.fpz"),
            "kv": kvs, "kv_originals": [t for t, _ in kvs], "kv_blobs": [b for _, b in kvs],
            "payloads": payload_seeds(seeds)}


@pytest.fixture(autouse=True)
def watchdog():
    faulthandler.dump_traceback_later(HANG_SECONDS * 3, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def bounded(fn):
    """Run fn under tracemalloc; fail if it allocated more than MEMORY_BOUND at peak."""
    tracemalloc.start()
    try:
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_BOUND, f"peak allocation {peak} bytes"
    return result


def test_seeds_are_valid_and_varied(corpus):
    """The seeds decode, and between them hold RAW and PLANES chunks, rANS32/RAW/CONST planes
    (the 8-lane rANS planes of format versions 1-2 are fuzzed in test_kernels.py),
    widths 1, 2, 4, 8 and an empty container (no chunks)."""
    widths, modes, codecs = set(), set(), set()
    for s in corpus["seeds"]:
        o = check_container(s.packed, corpus["originals"], corpus["path"])
        assert o.kind == "read" and o.chunks_bad == 0 and not o.notes
        _, _, table = parse(s.packed)
        for e in table:
            codecs.add(int(e["codec"]))
            if int(e["codec"]) == 1:
                off = int(e["comp_offset"])
                w = s.packed[off]
                widths.add(w)
                modes.update(s.packed[off + 2 + 5 * j] for j in range(w))
    assert {0, 1} <= codecs and widths == {1, 2, 4, 8} and modes == {0, 2, 3}
    assert any(len(parse(s.packed)[2]) == 0 for s in corpus["seeds"])


# -- the container reader ------------------------------------------------------------------
@SETTINGS
@given(which=st.integers(0, 100), ops=RAW_OPS)
def test_mutated_containers(corpus, which, ops):
    """Flips, inserts, deletes, truncations, splices: open fails, or every chunk decodes to
    the original's bytes (or fails), and pread agrees."""
    packed = corpus["packed"]
    data, forged = apply_ops(packed[which % len(packed)], ops, packed)
    assert not forged
    bounded(lambda: check_container(data, corpus["originals"], corpus["path"]))


@SETTINGS
@given(which=st.integers(0, 100), ops=ANY_OPS)
def test_mutated_and_forged_containers(corpus, which, ops):
    """The same with field edits and recomputed CRCs mixed in (header, trailer, table entries,
    plane headers set to 0, 2^60, 2^64-1, old +- 1, ...): typed errors, and anything that
    decodes matches its checksum and the reference decoder."""
    packed = corpus["packed"]
    data, forged = apply_ops(packed[which % len(packed)], ops, packed)
    bounded(lambda: check_container(data, corpus["originals"], corpus["path"], forged))


@SETTINGS
@given(a=st.integers(0, 100), b=st.integers(0, 100), cut=U32, cut2=U32, aligned=st.booleans())
def test_splices_of_two_containers(corpus, a, b, cut, cut2, aligned):
    """A[:i] + B[j:] (torn or misdirected writes): never a chunk that is not authentic."""
    packed = corpus["packed"]
    x, y = packed[a % len(packed)], packed[b % len(packed)]
    i = cut % (len(x) + 1)
    j = i if aligned and i <= len(y) else cut2 % (len(y) + 1)
    check_container(x[:i] + y[j:], corpus["originals"], corpus["path"])


@SETTINGS
@given(which=st.integers(0, 100), data=st.binary(max_size=2000), keep=st.integers(0, 200))
def test_random_bytes_after_a_valid_header(corpus, which, data, keep):
    """A valid header (and prefix) followed by garbage of random length."""
    packed = corpus["packed"]
    x = packed[which % len(packed)]
    plen = struct.unpack_from("<Q", x, 24)[0]
    head = x[:HEADER.size + plen + keep]
    check_container(head + data, corpus["originals"], corpus["path"])
    buf = bytearray(head + data)
    fix_crcs(buf)
    check_container(bytes(buf), corpus["originals"], corpus["path"], forged=True)


HUGE = (1 << 60, (1 << 64) - 1, (1 << 63), (1 << 32) - 1, 1 << 40)


@settings(max_examples=150, deadline=None, database=None)
@given(which=st.integers(0, 100), field=U32, value=st.sampled_from(HUGE))
def test_huge_size_claims_rejected_before_allocating(corpus, which, field, value):
    """Any header, trailer or table field (CRCs recomputed) claiming a 2^60-byte file, prefix,
    table, chunk or payload: rejected with CorruptContainer at open (or, for what only a
    decode can check, on that chunk) with a small peak allocation."""
    packed = corpus["packed"]
    buf = bytearray(packed[which % len(packed)])
    n = len(buf)
    targets = [(16, 8), (24, 8), (12, 4), (n - TRAILER.size, 8), (n - TRAILER.size + 8, 8),
               (n - TRAILER.size + 16, 8)]
    table_off, count = struct.unpack_from("<QQ", buf, n - TRAILER.size)
    if count:
        e = table_off + (field >> 8) % count * ENT
        targets += [(e, 8), (e + 8, 8), (e + 16, 4), (e + 20, 4)]
    off, width = targets[field % len(targets)]
    buf[off:off + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
    if field & 1 << 31:                         # both header and trailer original size
        buf[16:24] = buf[n - TRAILER.size + 16:n - TRAILER.size + 24] = \
            (value & (2**64 - 1)).to_bytes(8, "little")
    fix_crcs(buf)
    outcome = bounded(lambda: check_container(bytes(buf), corpus["originals"], corpus["path"],
                                              forged=True))
    if bytes(buf) != packed[which % len(packed)]:
        assert outcome.kind == "open-error" or outcome.chunks_bad > 0


# -- the chunk decoder ---------------------------------------------------------------------
@SETTINGS
@given(which=st.integers(0, 1000), ops=RAW_OPS, length_delta=st.sampled_from((0, 0, 0, 1, -1, 8)))
def test_mutated_plane_payloads_match_reference(corpus, which, ops, length_delta):
    """Mutated PLANES payloads: the Cython decoder returns what the reference decoder returns,
    or both reject (known divergence: see test_width1_rotation_matches_reference)."""
    payload, length = corpus["payloads"][which % len(corpus["payloads"])]
    data, _ = apply_ops(payload, [op for op in ops if op[0] != "splice"], [])
    bounded(lambda: check_payload(data, max(1, length + length_delta)))


@SETTINGS
@given(width=st.sampled_from((1, 2, 4, 8, 0, 3, 255)), rot=st.integers(0, 255),
       modes=st.lists(st.integers(0, 3), min_size=8, max_size=8),
       lengths=st.lists(st.integers(0, 300), min_size=8, max_size=8),
       body=st.binary(max_size=600), n=st.integers(1, 64))
def test_synthetic_plane_payloads_match_reference(width, rot, modes, lengths, body, n):
    """Plane headers built field by field with arbitrary streams behind them."""
    w = width if width in (1, 2, 4, 8) else 1
    head = bytes([width, rot % (8 * w) if rot < 128 else rot])
    for j in range(w):
        head += bytes([modes[j]]) + struct.pack("<I", lengths[j])
    length = n * w
    check_payload(head + body[:sum(lengths[:w])], length)


def test_width1_rotation_is_rejected_by_both_decoders():
    """Found by fuzzing: the kernel ignored r for w = 1 while the reference rotated. FORMAT.md
    now says r = 0 when w = 1, and both decoders reject anything else."""
    payload = bytes([1, 3, 0]) + struct.pack("<I", 4) + b"\x01\x02\x80\xff"
    with pytest.raises(DecodeError):
        decode_chunk(1, payload, memoryview(bytearray(4)))
    with pytest.raises(_reference.ReferenceError):
        _reference.decode_chunk(1, payload, 4)


# -- fpfs.kv -------------------------------------------------------------------------------
@SETTINGS
@given(which=st.integers(0, 100), ops=RAW_OPS)
def test_mutated_kv_blobs(corpus, which, ops):
    """kv.decompress of a damaged blob: the original tensor (same dtype, shape, framework,
    bytes) or CorruptContainer."""
    blobs = corpus["kv_blobs"]
    data, _ = apply_ops(blobs[which % len(blobs)], ops, blobs)
    bounded(lambda: check_kv(data, corpus["kv_originals"]))


@pytest.mark.parametrize("shape", [(0, 2**62), (2**62, 0, 2**62), (0, 2**64 - 1), (2**60,),
                                   (2**32, 2**32), (16,) * 16])
def test_kv_huge_shapes_rejected_before_allocating(shape):
    """A K/V header claiming a huge (or overflowing, zero-size) shape: CorruptContainer, no
    big allocation. (Before the fix, a zero-size shape with a 2^62 dimension raised numpy's
    ValueError - found by the campaign.)"""
    blob = kv.compress(np.zeros(3, np.float16))
    head = blob[:7] + bytes([len(shape)]) + struct.pack(f"<{len(shape)}Q", *shape)
    itemsize = 2
    nbytes = int(np.prod(shape, dtype=object)) * itemsize
    nchunks = -(-nbytes // (256 << 10))
    tail = struct.pack("<QQI", nbytes & (2**64 - 1), 0, nchunks & (2**32 - 1))
    forged = head + tail + blob[8 + 8 + 20:]
    with pytest.raises(CorruptContainer):
        bounded(lambda: kv.decompress(forged))


def test_kv_header_is_covered_by_the_checksum():
    """A dtype-code flip F16 (10) -> BF16 (11) keeps every size consistent; the checksum
    (which covers the header since aa19c8f; found by this fuzzing) must catch it."""
    a = np.arange(8, dtype=np.float16)
    blob = bytearray(kv.compress(a))
    blob[5] ^= 1
    with pytest.raises(CorruptContainer):
        kv.decompress(bytes(blob))


def test_kv_header_flips_are_all_detected():
    """Every single-bit flip in the header, shape, sizes and chunk entries: CorruptContainer."""
    a = np.random.default_rng(1).normal(0, 1, (4, 6)).astype(ml_dtypes.bfloat16)
    blob = kv.compress(a)
    for pos in range(8 + 8 * 2 + 20):
        for bit in range(8):
            bad = bytearray(blob)
            bad[pos] ^= 1 << bit
            try:
                t = kv.decompress(bytes(bad))
            except FpfsError:
                continue
            raise AssertionError(f"flip of bit {bit} of byte {pos} gave {t.dtype} {t.shape}")


def test_prefix_splice_is_rejected_at_open(corpus):
    """Found by the campaign: A[:40+P] + B[40+P:] of two files with equal header fields used
    to open and read as a mix. The trailer CRC is now seeded with the header CRC."""
    by_name = {s.name: s for s in corpus["seeds"]}
    a, b = by_name["bf16"].packed, by_name["bf16_meta"].packed
    plen = HEADER.size + struct.unpack_from("<Q", a, 24)[0]
    assert a[:plen] != b[:plen] and a[16:32] == b[16:32]
    outcome = check_container(a[:plen] + b[plen:], corpus["originals"], corpus["path"])
    assert outcome.kind == "open-error"


def test_prefix_splice_fails_verify(corpus, tmp_path):
    """`fpfs verify` on such a splice fails (at open, before any decoding)."""
    from fpfs.compress import verify_file
    by_name = {s.name: s for s in corpus["seeds"]}
    a, b = by_name["bf16"].packed, by_name["bf16_meta"].packed
    plen = HEADER.size + struct.unpack_from("<Q", a, 24)[0]
    path = tmp_path / "splice.fpz"
    path.write_bytes(a[:plen] + b[plen:])
    with pytest.raises(CorruptContainer, match="different files"):
        verify_file(str(path))


def test_kv_zero_dim_tensors_round_trip():
    """Found by the campaign (its 0-d seed came back as shape (1,)): numpy's
    ascontiguousarray makes a 0-d array 1-d, and torch cannot view a 0-d F16 as bytes."""
    import torch
    a = np.array(1.5, np.float32)
    b = kv.decompress(kv.compress(a))
    assert b.shape == () and b.dtype == a.dtype and b.tobytes() == a.tobytes()
    t = torch.tensor(2.5, dtype=torch.float16)
    u = kv.decompress(kv.compress(t))
    assert u.shape == () and u.dtype == t.dtype and u.item() == 2.5
