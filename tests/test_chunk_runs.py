"""Runs of whole chunks read and decoded in one kernel call (Container.decode_run_into,
_kernels.decode_chunks_from_fd): the same bytes as chunk by chunk, and every failure - a
damaged payload, a truncated file, a bad checksum - is the chunk's error, never wrong
bytes."""
from __future__ import annotations

import os

import numpy as np
import pytest

from fpfs import _kernels
from fpfs.container import Container
from fpfs.errors import CorruptChunk

@pytest.fixture
def packed(bf16_fpz_64k):
    return bf16_fpz_64k


def _run_bytes(c: Container, first: int, last: int) -> bytes:
    start, _ = c.chunk_span(first)
    end = sum(c.chunk_span(last))
    out = np.full(end - start, 0xA5, np.uint8)
    c.decode_run_into(first, last, memoryview(out))
    return out.tobytes()


@pytest.mark.parametrize("first,count", [(0, 1), (0, 2), (3, 4), (100, 17), (-9, 9)])
def test_runs_equal_the_original(packed, first, count):
    original, fpz = packed
    with Container(fpz) as c:
        first = first % len(c)
        last = min(len(c) - 1, first + count - 1)
        start, _ = c.chunk_span(first)
        assert _run_bytes(c, first, last) == original[start:sum(c.chunk_span(last))]


def test_damaged_payload_names_its_chunk(packed, tmp_path):
    _, fpz = packed
    data = bytearray(open(fpz, "rb").read())
    with Container(fpz) as c:
        victim = 10
        assert int(c.table[victim]["codec"]) == 6        # EXPMANT: BF16
        off = int(c.table[victim]["comp_offset"]) + int(c.table[victim]["comp_length"]) // 2
    data[off] ^= 0x5A
    bad = tmp_path / "bad.fpz"
    bad.write_bytes(bytes(data))
    with Container(str(bad)) as c:
        with pytest.raises(CorruptChunk) as exc:
            _run_bytes(c, 8, 12)
        assert exc.value.index == victim
        _run_bytes(c, 0, 7)                     # the chunks before it are fine


def test_long_run_checks_every_slice(packed, tmp_path):
    """A run longer than RUN_SLICE_BYTES is decoded and checksummed slice by slice: damage
    in a later slice is still that chunk's error."""
    from fpfs.container import RUN_SLICE_BYTES
    _, fpz = packed
    data = bytearray(open(fpz, "rb").read())
    with Container(fpz) as c:
        per_slice = RUN_SLICE_BYTES // c.chunk_size
        victim = per_slice + 3
        assert victim + 2 < len(c)
        entry = c.table[victim]
        data[int(entry["comp_offset"]) + int(entry["comp_length"]) // 2] ^= 0x5A
    bad = tmp_path / "bad.fpz"
    bad.write_bytes(bytes(data))
    with Container(str(bad)) as c:
        with pytest.raises(CorruptChunk) as exc:
            _run_bytes(c, 0, victim + 2)
        assert exc.value.index == victim


def test_truncated_file_is_an_error(packed, tmp_path):
    _, fpz = packed
    with Container(fpz) as c:
        first, last = 5, 9
        fd = os.open(fpz, os.O_RDONLY)
        try:
            offsets, lengths, codecs, sizes = (a[first:last + 1].copy() for a in c._run_fields)
            offsets[-1] = os.fstat(fd).st_size - 3          # past the end: short read
            out = np.empty(int(sizes.sum()), np.uint8)
            failed, code, err = _kernels.decode_chunks_from_fd(
                fd, offsets, lengths, codecs, sizes, out, np.empty(int(lengths.max()), np.uint8),
                np.empty(int(sizes.max()), np.uint8))
            assert failed == 4 and err == 0
            assert _kernels.run_error_message(code) == "file truncated"
        finally:
            os.close(fd)


def test_kernel_refuses_what_it_cannot_decode(packed):
    _, fpz = packed
    with Container(fpz) as c:
        offsets, lengths, codecs, sizes = (a[:3].copy() for a in c._run_fields)
        fd = c.source.fileno()
        out = np.empty(int(sizes.sum()), np.uint8)
        pay, scr = np.empty(int(lengths.max()), np.uint8), np.empty(int(sizes.max()), np.uint8)
        bad = codecs.copy()
        bad[1] = 4                                            # DELTA: not here
        with pytest.raises(ValueError):
            _kernels.decode_chunks_from_fd(fd, offsets, lengths, bad, sizes, out, pay, scr)
        with pytest.raises(ValueError):                       # out too small
            _kernels.decode_chunks_from_fd(fd, offsets, lengths, codecs, sizes, out[:10], pay, scr)
        with pytest.raises(ValueError):                       # arrays of different lengths
            _kernels.decode_chunks_from_fd(fd, offsets[:2], lengths, codecs, sizes, out, pay, scr)
