"""Decoding ahead of sequential readers (fpfs/readahead.py, PackedFile.read_into) and
compressing files as they are written (fpfs/stream_compress.py, mount/staging.py), tested
without FUSE on real weights: bytes always equal the original, what is decoded ahead is
dropped once read, random readers start nothing, a stuck pool never holds a reader up, a
corrupt chunk is an error for its own reads only; and a stream that cannot be trusted
(writes out of order, a truncate, a header that lies) falls back to compressing the whole
file."""
from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

import fpfs
from fpfs.cache import ChunkCache
from fpfs.codecs import LEVEL_TYPED, LEVEL_UNTYPED, untyped_level
from fpfs.container import Container
from fpfs.errors import CorruptChunk
from fpfs.mount.staging import StagingArea
from fpfs.packed_file import PackedFile
from fpfs.readahead import FIRST_WINDOW, SEQUENTIAL_READS, ReadAhead, Streams
from tests.st_files import build
from tests.weights import load_real

MiB = 1 << 20


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A BF16 safetensors file of about 12 MiB of all-MiniLM-L6-v2's real weights, and its
    container."""
    d = tmp_path_factory.mktemp("ahead")
    tensors, total = [], 0
    for name, value in sorted(load_real().items(), key=lambda kv: -kv[1].size):
        bf16 = (np.ascontiguousarray(value, np.float32).view(np.uint32) >> 16).astype(np.uint16)
        tensors.append((name, "BF16", bf16.tobytes()))
        total += bf16.nbytes
        if total > 12 * MiB:
            break
    content = build(tensors)
    src = d / "m.safetensors"
    src.write_bytes(content)
    fpz = str(d / "m.safetensors.fpz")
    fpfs.compress_file(str(src), fpz)
    return content, fpz


def sequential(pf: PackedFile, size: int, step: int = MiB) -> bytes:
    out = bytearray(pf.size)
    for off in range(0, pf.size, step):
        n = pf.read_into(off, memoryview(out)[off:off + step])
        assert n == min(step, pf.size - off)
    return bytes(out)


def note(s: Streams, offset: int, end: int, boundary=lambda pos: 1 << 62):
    return s.note(offset, end, 32 * MiB, boundary)


def test_streams_need_consecutive_reads():
    s = Streams()
    assert note(s, 0, MiB) is None
    for k in range(1, SEQUENTIAL_READS - 1):
        assert note(s, k * MiB, (k + 1) * MiB) is None
    ahead = note(s, (SEQUENTIAL_READS - 1) * MiB, SEQUENTIAL_READS * MiB)
    assert ahead == (SEQUENTIAL_READS * MiB, SEQUENTIAL_READS * MiB + FIRST_WINDOW)
    # a far jump starts another stream; nothing ahead for it yet
    assert note(s, 500 * MiB, 501 * MiB) is None
    # the window grows while the first stream goes on, never past the largest
    windows = []
    for k in range(SEQUENTIAL_READS, SEQUENTIAL_READS + 12):
        ahead = note(s, k * MiB, (k + 1) * MiB)
        if ahead:
            windows.append(ahead[1] - (k + 1) * MiB)
    assert max(windows) == 32 * MiB and windows == sorted(windows)
    # small reads scattered at random never make a stream
    rng = np.random.default_rng(0)
    s = Streams()
    for _ in range(1000):
        off = int(rng.integers(0, 1 << 30)) & ~4095
        assert note(s, off, off + 4096) is None


def test_ahead_stops_at_the_tensor_end_until_a_stream_reads_across():
    tensor_starts = [10 * MiB, 40 * MiB]

    def boundary(pos):
        return next((b for b in tensor_starts if b >= pos), 1 << 62)
    s = Streams()
    aheads = [note(s, k * MiB, (k + 1) * MiB, boundary) for k in range(10)]
    assert max(a[1] for a in aheads if a) == 10 * MiB       # not into the next tensor
    for k in range(10, 12):                                  # reads on across it
        note(s, k * MiB, (k + 1) * MiB, boundary)
    ahead = note(s, 12 * MiB, 13 * MiB, boundary)
    assert ahead is not None and ahead[1] > 13 * MiB + FIRST_WINDOW


def test_sequential_reads_decode_ahead_and_drop_what_was_read(model):
    content, fpz = model
    cache = ChunkCache(64 * MiB)
    ra = ReadAhead(2)
    pf = PackedFile(fpz, cache, ra)
    try:
        assert sequential(pf, len(content)) == content
        s = cache.snapshot()
        assert s["ahead"] > len(pf.container) // 2       # most chunks came from the pool
        assert s["taken"] >= s["ahead"] - 1
        assert cache.used <= 2 * pf.container.chunk_size  # read data is not kept
        assert cache.ahead_used <= cache.ahead_budget
    finally:
        pf.close()
        ra.shutdown()


@pytest.mark.parametrize("window", [0, 32 * MiB])
def test_chunks_read_in_pieces_leave_once_every_byte_is_read(model, window):
    """Behind the mount (a ReadAhead given, even with decode-ahead off) the kernel asks for
    each page once, in any order: a chunk read in pieces, its last piece first, leaves the
    cache once all its bytes were read; in-process readers (no ReadAhead) keep theirs."""
    content, fpz = model
    cache = ChunkCache(64 * MiB)
    ra = ReadAhead(2, window)
    pf = PackedFile(fpz, cache, ra)
    rng = np.random.default_rng(2)
    try:
        pieces = []
        for i in range(len(pf.container)):
            start, length = pf.container.chunk_span(i)
            cut = start + int(rng.integers(1, length)) // 4096 * 4096
            pieces += [(cut, start + length), (start, cut)]     # the end first
        order = rng.permutation(len(pieces) // 2)
        for k in order:
            for off, end in pieces[2 * k:2 * k + 2]:
                if off < end:
                    assert pf.pread(off, end - off) == content[off:end]
        ra.pool.submit(lambda: None).result()
        assert cache.used == 0, "chunks whose every byte was read are still held"
    finally:
        pf.close()
        ra.shutdown()
    pf = PackedFile(fpz, cache)
    try:
        start, length = pf.container.chunk_span(len(pf.container) // 2)
        half = start + length // 2
        assert pf.pread(half, start + length - half) == content[half:start + length]
        assert pf.pread(start, half - start) == content[start:half]
        assert cache.used >= length
    finally:
        pf.close()


def test_random_reads_start_nothing(model):
    content, fpz = model
    cache = ChunkCache(64 * MiB)
    ra = ReadAhead(2)
    pf = PackedFile(fpz, cache, ra)
    rng = np.random.default_rng(1)
    try:
        for _ in range(200):
            off = int(rng.integers(0, len(content) - 4096))
            assert pf.pread(off, 4096) == content[off:off + 4096]
        assert cache.stats.ahead == 0
    finally:
        pf.close()
        ra.shutdown()


def test_stuck_pool_never_holds_a_reader(model):
    """Every pool thread blocked (a store that hangs): sequential readers take over the
    chunks queued for the pool and go on."""
    content, fpz = model
    cache = ChunkCache(64 * MiB)
    ra = ReadAhead(1)
    release = threading.Event()
    ra.pool.submit(release.wait)
    pf = PackedFile(fpz, cache, ra)
    try:
        t = time.monotonic()
        assert sequential(pf, len(content)) == content
        assert time.monotonic() - t < 20
        assert cache.stats.ahead == 0
    finally:
        release.set()
        pf.close()
        ra.shutdown()


def test_corrupt_chunk_fails_only_its_reads(model, tmp_path):
    content, fpz = model
    bad = str(tmp_path / "bad.fpz")
    data = bytearray(open(fpz, "rb").read())
    c = Container(fpz)
    victim = len(c) // 2
    entry = c.table[victim]
    off, start, length = int(entry["comp_offset"]), int(entry["orig_offset"]), \
        int(entry["orig_length"])
    c.close()
    data[off + int(entry["comp_length"]) // 2] ^= 0xFF
    open(bad, "wb").write(bytes(data))
    cache = ChunkCache(64 * MiB)
    ra = ReadAhead(2)
    pf = PackedFile(bad, cache, ra)
    try:
        for off in range(0, pf.size, MiB):
            end = min(off + MiB, pf.size)
            if off < start + length and start < end:
                with pytest.raises(CorruptChunk):
                    pf.read_into(off, bytearray(end - off))
            else:
                buf = bytearray(end - off)
                assert pf.read_into(off, buf) == end - off and bytes(buf) == content[off:end]
    finally:
        pf.close()
        ra.shutdown()


def test_untyped_level_by_amount():
    assert untyped_level(100 << 10) == LEVEL_UNTYPED           # tokenizer.json
    assert LEVEL_TYPED < untyped_level(100 << 20) < LEVEL_UNTYPED
    assert untyped_level(4 << 30) == LEVEL_TYPED                # a multi-GB unknown file


# -- compressing as it is written -----------------------------------------------------------
def write_staged(area: StagingArea, target: str, content: bytes, pieces, truncate_at=None):
    staged = area.open(target, None, False, True)
    for off, n in pieces:
        os.pwrite(staged.fd, content[off:off + n], off)
        area.wrote(staged, off, n)
        if truncate_at is not None and off + n >= truncate_at:
            os.ftruncate(staged.fd, truncate_at)
            area.changed(staged, "truncated")
            truncate_at = None
    stream = staged.stream
    area.commit(staged)
    area.release(staged)
    return stream


def in_order(size: int, step: int = MiB):
    return [(off, min(step, size - off)) for off in range(0, size, step)]


def stored_bytes(path: str) -> bytes:
    with fpfs.open(path) as f:
        return f.read()


def test_written_in_order_is_compressed_on_the_way(model, tmp_path):
    content, _ = model
    area = StagingArea(str(tmp_path))
    stream = write_staged(area, str(tmp_path / "m.safetensors"), content, in_order(len(content)))
    assert stream.given_up == "finished"
    assert stored_bytes(str(tmp_path / "m.safetensors.fpz")) == content
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors.fpz"]


@pytest.mark.parametrize("plain", [False, True])
def test_staging_file_is_synced_only_when_it_is_what_is_stored(model, tmp_path, monkeypatch,
                                                              plain):
    """A file stored compressed is made durable by its container's fsync (and its
    directory's): the staging file is not written out to the disk too. A file stored as
    it is (here: random bytes, which nothing makes smaller) is the staging file: that one
    is fsynced."""
    from fpfs.mount import staging as staging_module
    content, _ = model
    if plain:
        content = np.random.default_rng(3).integers(0, 256, MiB, dtype=np.uint8).tobytes()
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)
    monkeypatch.setattr(staging_module.os, "fsync", fsync)
    area = StagingArea(str(tmp_path))
    staged = area.open(str(tmp_path / "m.safetensors"), None, False, True)
    for off, n in in_order(len(content)):
        os.pwrite(staged.fd, content[off:off + n], off)
        area.wrote(staged, off, n)
    area.commit(staged)
    staging_file = staged.path
    area.release(staged)
    if plain:
        assert staging_file in synced
        assert open(tmp_path / "m.safetensors", "rb").read() == content
    else:
        assert staging_file not in synced and str(tmp_path) in synced   # the directory
        assert stored_bytes(str(tmp_path / "m.safetensors.fpz")) == content


def test_writes_a_little_out_of_order_still_stream(model, tmp_path):
    """The kernel's writeback sends several writes at once; FUSE threads serve them in any
    order."""
    content, _ = model
    area = StagingArea(str(tmp_path))
    pieces = in_order(len(content), 256 << 10)
    for i in range(0, len(pieces) - 3, 4):
        pieces[i:i + 4] = [pieces[i + 2], pieces[i], pieces[i + 3], pieces[i + 1]]
    stream = write_staged(area, str(tmp_path / "m.safetensors"), content, pieces)
    assert stream.given_up == "finished"
    assert stored_bytes(str(tmp_path / "m.safetensors.fpz")) == content


@pytest.mark.parametrize("how", ["overlapping", "rewritten", "truncated", "short", "long"])
def test_untrusted_streams_fall_back(model, tmp_path, how):
    content, _ = model
    area = StagingArea(str(tmp_path))
    pieces = in_order(len(content), 256 << 10)
    truncate_at = None
    expect = content
    if how == "overlapping":
        pieces = pieces[:3] + [(pieces[3][0] + 4096, pieces[3][1])] + pieces[3:]
    elif how == "rewritten":
        pieces = pieces + [pieces[10]]
    elif how == "truncated":
        truncate_at = 5 * MiB
        expect = content[:5 * MiB]
    elif how == "short":
        expect = content[:-4096]
        pieces = in_order(len(expect), 256 << 10)
    elif how == "long":
        expect = content + b"trailing bytes"
        pieces = in_order(len(expect), 256 << 10)
    stream = write_staged(area, str(tmp_path / "m.safetensors"), expect, pieces, truncate_at)
    assert stream.given_up not in (None, "finished")
    names = os.listdir(tmp_path)
    if "m.safetensors.fpz" in names:
        assert stored_bytes(str(tmp_path / "m.safetensors.fpz")) == expect
    else:
        assert open(tmp_path / "m.safetensors", "rb").read() == expect
    assert not [n for n in names if n.startswith(".fpfs-tmp")]


def test_chunks_readers_ask_for_never_push_out_those_decoded_ahead():
    """A delta's base chunks (or random reads) fill the reader part of the cache; what the
    pool decoded ahead and no one read yet stays, within its own budget."""
    cache = ChunkCache(8 * MiB, ahead_budget=4 * MiB)
    chunk = np.zeros(MiB, np.uint8)
    for i in range(4):
        flight = cache.claim(("ahead", i), MiB)
        assert flight is not None and cache.begin([flight]) == [True]
        cache.fulfil(("ahead", i), chunk)
    # the ahead budget is full: a new claim drops the oldest chunk decoded ahead
    assert cache.claim(("ahead", 9), MiB) is not None
    assert not cache.contains(("ahead", 0)) and cache.ahead_used == 4 * MiB
    cache.abandon(("ahead", 9))
    for i in range(20):
        cache.get(("reader", i), lambda: chunk.copy())
    assert all(cache.contains(("ahead", i)) for i in range(1, 4))
    assert cache.used + cache.ahead_used <= 8 * MiB
    cache.discard(("ahead", 1))
    assert not cache.contains(("ahead", 1)) and cache.stats.taken == 1


def test_stopped_readers_do_not_hold_the_ahead_budget(model):
    """A reader that stops mid-file leaves chunks decoded ahead that no one reads; later
    streams still get theirs (the oldest left-overs are dropped), within the budget."""
    content, fpz = model
    cache = ChunkCache(8 * MiB, ahead_budget=2 * MiB)
    ra = ReadAhead(2)
    pf = PackedFile(fpz, cache, ra)
    try:
        stop = len(content) - 4 * MiB             # read a little near the end, then stop
        for off in range(stop - 4 * MiB, stop, MiB):
            pf.read_into(off, bytearray(MiB))
        ra.pool.submit(lambda: None).result()
        assert cache.ahead_used > MiB             # left-overs hold the budget
        before = cache.stats.ahead
        half = (len(content) // 2) & ~(MiB - 1)
        for off in range(0, half, MiB):           # another stream, far from them
            buf = bytearray(MiB)
            pf.read_into(off, buf)
            assert bytes(buf) == content[off:off + MiB]
        assert cache.stats.ahead > before
        assert cache.ahead_used <= cache.ahead_budget
    finally:
        pf.close()
        ra.shutdown()


def test_decode_timer_counts_nested_decodes_once():
    """A decode nested in another (a delta's base chunk) is counted by itself, not again in
    the outer one; the seconds are this thread's CPU time, not time spent waiting."""
    import time
    from fpfs.cache import DecodeTimer

    def spin(seconds: float) -> None:
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass
    with DecodeTimer() as outer:
        spin(0.05)
        with DecodeTimer() as inner:
            spin(0.05)
            time.sleep(0.1)                 # waiting is not decoding
        spin(0.05)
    assert 0.04 < inner.seconds < 0.09
    assert 0.09 < outer.seconds < 0.16
