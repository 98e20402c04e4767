"""Whole-file reads on all cores (fpfs/parallel.py): FpzFile.read/readall/readinto, verify
and decompress give the original bytes for every way a range can be cut into pieces, and
a damaged chunk anywhere is an error (after every piece stopped writing), never wrong
bytes or a hang."""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fpfs
from fpfs import parallel
from fpfs.errors import CorruptChunk, CorruptContainer
from fpfs.packed_file import PackedFile
from tests.weights import real_weights_file

@pytest.fixture
def packed_bf16(bf16_fpz_64k):
    return bf16_fpz_64k


def test_read_and_readall_are_the_original(packed_bf16):
    original, fpz = packed_bf16
    with fpfs.open(fpz) as f:
        assert f.read() == original
    with fpfs.open(fpz) as f:
        f.seek(12345)
        head = f.read(7)
        assert head == original[12345:12352]
        assert f.readall() == original[12352:]
        assert f.read() == b"" and f.read(10) == b""


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(offset=st.integers(0, 46_000_000), size=st.integers(0, 12_000_000),
       threads=st.sampled_from([1, 2, 3, 7]))
def test_readinto_any_range_any_threads(packed_bf16, offset, size, threads):
    original, fpz = packed_bf16
    packed = PackedFile(fpz)
    try:
        buf = bytearray(size)
        n = parallel.read_into(packed, offset, buf, threads)
        want = original[offset:offset + size]
        assert n == len(want) and bytes(buf[:n]) == want
    finally:
        packed.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(start=st.integers(0, 46_000_000), length=st.integers(1, 20_000_000),
       piece=st.integers(1, 5_000_000))
def test_pieces_tile_the_range_on_chunk_boundaries(packed_bf16, start, length, piece):
    _, fpz = packed_bf16
    packed = PackedFile(fpz)
    try:
        end = min(packed.size, start + length)
        spans = parallel.pieces(packed, start, end, piece)
        c = packed.container
        plen = len(c.prefix)
        assert [a for a, _ in spans[1:]] == [b for _, b in spans[:-1]]
        if start < end:
            assert spans[0][0] == start and spans[-1][1] == end
        for a, b in spans[:-1]:
            assert a < b
            assert b <= plen or c.chunk_span(c.chunk_index(b))[0] == b
    finally:
        packed.close()


def test_decompress_and_verify_whole_file(packed_bf16, tmp_path):
    original, fpz = packed_bf16
    out = tmp_path / "out.safetensors"
    assert fpfs.decompress_file(fpz, str(out)) == len(original)
    assert out.read_bytes() == original
    fpfs.verify_file(fpz)


@pytest.mark.parametrize("threads", [0, 1, 2])
def test_sink_sees_every_piece_at_its_offset(packed_bf16, threads):
    """The decode threads hand each piece to the sink (decompress writes it there) before
    the caller gets it, in any order, each piece once, at its own offset."""
    original, fpz = packed_bf16
    seen = {}
    packed = PackedFile(fpz)
    try:
        pieces = [bytes(p) for p in parallel.iter_original(
            packed, threads, piece_bytes=1 << 20,
            sink=lambda off, view: seen.setdefault(off, bytes(view)))]
    finally:
        packed.close()
    assert b"".join(pieces) == original
    assert b"".join(seen[k] for k in sorted(seen)) == original


def test_write_original_from_the_current_position(packed_bf16, tmp_path):
    """write_original writes at the file's position (pwrite from the decode threads) and
    leaves the position after the last byte, as a sequential writer would."""
    original, fpz = packed_bf16
    path = tmp_path / "out"
    packed = PackedFile(fpz)
    try:
        with open(path, "wb") as out:
            out.write(b"head")
            fpfs.compress.write_original(packed, out)
            assert out.tell() == 4 + len(original)
            out.write(b"tail")
    finally:
        packed.close()
    assert path.read_bytes() == b"head" + original + b"tail"


def test_pieces_longer_than_the_piece_size(tmp_path):
    """Chunks of 8 MiB, larger than a piece: iter_original's buffers fit the longest."""
    src = real_weights_file("F32", str(tmp_path))
    fpz = src + ".fpz"
    fpfs.compress_file(src, fpz, chunk_size=8 << 20)
    out = tmp_path / "out"
    fpfs.decompress_file(fpz, str(out))
    with open(src, "rb") as f:
        assert out.read_bytes() == f.read()
    with fpfs.open(fpz) as f:
        assert f.read() == out.read_bytes()


def _damage_middle_chunk(fpz: str, tmp_path) -> str:
    data = bytearray(open(fpz, "rb").read())
    with fpfs.container.Container(fpz) as c:
        index = len(c) // 2
        off = int(c.table[index]["comp_offset"]) + 20
    data[off] ^= 0xFF
    bad = tmp_path / "bad.fpz"
    bad.write_bytes(bytes(data))
    return str(bad)


@pytest.mark.parametrize("threads", [1, 2, 5])
def test_damaged_chunk_is_an_error_not_wrong_bytes(packed_bf16, tmp_path, threads):
    _, fpz = packed_bf16
    bad = _damage_middle_chunk(fpz, tmp_path)
    packed = PackedFile(bad)
    try:
        with pytest.raises(CorruptChunk):
            parallel.read_into(packed, 0, bytearray(packed.size), threads)
        with pytest.raises(CorruptChunk):
            for _ in parallel.iter_original(packed, threads):
                pass
    finally:
        packed.close()
    with pytest.raises(CorruptContainer):
        with fpfs.open(bad) as f:
            f.read()
    out = tmp_path / "out"
    with pytest.raises(CorruptContainer):
        fpfs.decompress_file(bad, str(out))
    assert not out.exists()


def test_abandoned_iteration_leaves_no_decode_running(packed_bf16):
    _, fpz = packed_bf16
    packed = PackedFile(fpz)
    try:
        it = parallel.iter_original(packed, 2, piece_bytes=1 << 20)
        next(it)
        it.close()                  # the finally clause waits for the pieces in flight
    finally:
        packed.close()
    assert os.path.exists(fpz)
