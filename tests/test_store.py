"""The object-store pieces that need no server: the disk cache of chunk payloads (damaged
entries, bounds, sharing, a killed writer's leftovers, a full disk), the manifest's
validation of hostile input, and the URL rules bases are found by."""
from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import threading

import pytest

from fpfs.bases import find_base
from fpfs.errors import MissingBase
from fpfs.store import split_url, url_ancestors
from fpfs.store.disk_cache import ENTRY, DiskCache
from fpfs.store.manifest import CorruptManifest, Entry, dumps, loads
from fpfs.tempfiles import TMP_PREFIX


def payload(i: int, size: int = 1000) -> bytes:
    return bytes((i * 7 + j) % 251 for j in range(size))


def read(cache: DiskCache, key: str, size: int = 1000):
    out = bytearray(size)
    return bytes(out) if cache.read_into(key, memoryview(out)) else None


def entry_files(directory: str):
    return [os.path.join(d, n) for d, _, names in os.walk(directory) for n in names
            if not n.startswith(TMP_PREFIX)]


# -- disk cache -----------------------------------------------------------------------------
def test_round_trip_and_misses(tmp_path):
    cache = DiskCache(str(tmp_path), 1 << 20)
    cache.put("a", payload(1))
    assert read(cache, "a") == payload(1)
    assert read(cache, "b") is None
    assert read(cache, "a", 999) is None        # another length: not this entry


def damage_entry(path: str, damage: str, flip_at: int, cut: int) -> None:
    """Damage a cache entry file: flip a payload bit at flip_at, cut the last `cut` bytes,
    empty it (renamed into place, never written: power loss), break its header, or
    ("none") leave it alone."""
    data = bytearray(open(path, "rb").read())
    if damage == "flip":
        data[ENTRY.size + flip_at] ^= 1
    elif damage == "truncate":
        data = data[:-cut]
    elif damage == "empty":
        data = bytearray()
    elif damage == "header":
        data[0] ^= 0xFF
    open(path, "wb").write(data)


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "header"])
def test_damaged_entry_is_dropped_never_served(tmp_path, damage, caplog):
    cache = DiskCache(str(tmp_path), 1 << 20)
    cache.put("k", payload(2))
    (path,) = entry_files(str(tmp_path))
    damage_entry(path, damage, flip_at=500, cut=10)
    with caplog.at_level(logging.WARNING, "fpfs.store"):
        assert read(cache, "k") is None
    assert not os.path.exists(path)
    assert "damaged" in caplog.text
    cache.put("k", payload(2))
    assert read(cache, "k") == payload(2)


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "header", "none"])
def test_get_any_length_checks_every_entry(tmp_path, damage):
    """get(): entries of unknown length (a container's head and table)."""
    cache = DiskCache(str(tmp_path), 1 << 20)
    cache.put("m", payload(3, 777))
    (path,) = entry_files(str(tmp_path))
    damage_entry(path, damage, flip_at=5, cut=1)
    if damage == "none":
        assert cache.get("m", 777) == payload(3, 777)
        assert cache.get("m", 776) is None          # longer than the caller allows
    else:
        assert cache.get("m", 777) is None
        assert not os.path.exists(path)
    assert cache.get("other", 777) is None


class _FakeObject:
    """Just enough of an S3Object for a ChunkFetcher: records its GETs."""

    def __init__(self, data: bytes, disk=None, readahead=64 << 20):
        from fpfs.store.s3 import S3Settings, StoreStats
        from fpfs.store.breaker import CircuitBreaker
        from concurrent.futures import ThreadPoolExecutor
        self.data = data
        self.name = "s3://b/fake"
        self.identity = ("s3", self.name, "etag", len(data))
        self.gets = []
        lock = threading.Lock()
        self._lock = lock

        class _Store:
            settings = S3Settings(request_size=1 << 20, readahead=readahead)
            stats = StoreStats()
            breaker = CircuitBreaker("fake")
            pool = ThreadPoolExecutor(4)
            disk_cache = disk
        self.store = _Store()

    def fetch(self, offset: int, size: int) -> bytes:
        with self._lock:
            self.gets.append((offset, size))
        return self.data[offset:offset + size]


def _fetcher(obj, chunk=64 << 10):
    import numpy as np
    from fpfs.store.fetcher import ChunkFetcher
    n = len(obj.data) // chunk
    offsets = np.arange(n, dtype=np.int64) * chunk
    return ChunkFetcher(obj, offsets, np.full(n, chunk, dtype=np.int64)), n, chunk


def _read(f, i, chunk):
    out = bytearray(chunk)
    assert f.read_into(i, memoryview(out)) == chunk
    return bytes(out)


def test_readahead_window_starts_small_and_a_jump_restarts_it(tmp_path):
    """A reader that reads the head and then jumps (safetensors' load_file) does not pull
    the object; a sequential reader gets the whole window within a few reads (then wraps
    around to the chunks nobody has read); and the second pass is served by the disk
    cache, read ahead in parallel."""
    from fpfs.store.fetcher import INITIAL_WINDOW
    data = os.urandom(32 << 20)
    obj = _FakeObject(data, DiskCache(str(tmp_path), 1 << 30), readahead=8 << 20)
    f, n, chunk = _fetcher(obj)
    f.prepare(0, 3)
    for i in range(4):
        assert _read(f, i, chunk) == data[i * chunk:(i + 1) * chunk]
    obj.store.pool.shutdown(wait=True)          # every GET of the first read is done
    fetched = sum(size for _, size in obj.gets)
    assert fetched <= 4 * chunk + INITIAL_WINDOW + chunk
    obj.store.pool = __import__("concurrent.futures").futures.ThreadPoolExecutor(4)
    start = n // 2                              # a jump, then sequential reads to the end
    for i in range(start, n, 4):
        f.prepare(i, min(i + 3, n - 1))
        for j in range(i, min(i + 4, n)):
            assert _read(f, j, chunk) == data[j * chunk:(j + 1) * chunk]
    obj.store.pool.shutdown(wait=True)
    got = sorted(obj.gets)
    # Nothing between the head and the jump until the stream, at its full window, reached
    # the end: then it wraps around (a loader that reads every tensor comes back for the
    # rest) by at most one window, and no byte is fetched twice.
    assert sum(size for _, size in got) <= 4 * chunk + INITIAL_WINDOW + chunk + \
        len(data) - start * chunk + obj.store.settings.readahead
    assert all(a + sa <= b for (a, sa), (b, _) in zip(got, got[1:]))
    assert max(size for _, size in got) == obj.store.settings.request_size
    # A second fetcher of the same version: every chunk from the disk cache, no GET.
    obj.gets.clear()
    obj.store.pool = __import__("concurrent.futures").futures.ThreadPoolExecutor(4)
    f2, _, _ = _fetcher(obj)
    for i in range(start, n, 4):
        f2.prepare(i, min(i + 3, n - 1))
        for j in range(i, min(i + 4, n)):
            assert _read(f2, j, chunk) == data[j * chunk:(j + 1) * chunk]
    obj.store.pool.shutdown(wait=True)
    assert obj.gets == []


def test_bounded_least_recently_used_first(tmp_path):
    entry = 1000 + ENTRY.size
    cache = DiskCache(str(tmp_path), 10 * entry)
    for i in range(10):
        cache.put(f"k{i}", payload(i))
    for path in entry_files(str(tmp_path)):
        os.utime(path, (1000, 1000))            # all long unused ...
    assert read(cache, "k0") == payload(0)       # ... but k0, just hit
    for i in range(10, 14):
        cache.put(f"k{i}", payload(i))
    used = sum(os.path.getsize(p) for p in entry_files(str(tmp_path)))
    assert used <= 10 * entry
    assert read(cache, "k0") == payload(0)
    assert read(cache, "k13") == payload(13)
    assert sum(read(cache, f"k{i}") is not None for i in range(1, 10)) < 9


def test_shared_by_two_caches_and_many_threads(tmp_path):
    a, b = DiskCache(str(tmp_path), 1 << 20), DiskCache(str(tmp_path), 1 << 20)
    errors = []

    def work(cache, n):
        try:
            for i in range(50):
                cache.put(f"k{i % 10}", payload(i % 10))
                got = read(cache, f"k{(i + n) % 10}")
                assert got in (None, payload((i + n) % 10))
        except BaseException as exc:        # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(c, n)) for n, c in enumerate([a, b] * 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(read(b, f"k{i}") == payload(i) for i in range(10))
    assert not [n for d, _, ns in os.walk(tmp_path) for n in ns if n.startswith(TMP_PREFIX)]


def test_killed_writers_leftovers_are_removed_live_ones_kept(tmp_path):
    os.makedirs(tmp_path / "ab")
    dead = tmp_path / "ab" / (TMP_PREFIX + "dead")
    dead.write_bytes(b"half an entry")
    live = tmp_path / "ab" / (TMP_PREFIX + "live")
    live.write_bytes(b"being written")
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        DiskCache(str(tmp_path), 1 << 20)
        assert not dead.exists() and live.exists()
    finally:
        os.close(fd)


def test_full_disk_turns_the_cache_off_with_a_log_line(tmp_path, caplog):
    """A real full filesystem: a 1 MiB tmpfs (needs root, as the mount tests do)."""
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        cache = DiskCache(str(small), 100 << 20)
        with caplog.at_level(logging.ERROR, "fpfs.store"):
            for i in range(20):
                cache.put(f"k{i}", payload(i, 100_000))
        assert "disk full" in caplog.text
        assert caplog.text.count("disk full") == 1       # once, then off for a while
        assert read(cache, "k0", 100_000) == payload(0, 100_000)
        assert not [n for d, _, ns in os.walk(small) for n in ns if n.startswith(TMP_PREFIX)]
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


# -- manifest -------------------------------------------------------------------------------
def test_manifest_round_trip():
    entries = [Entry("a", "dir", mode=0o755), Entry("a/b", "link", target="../x"),
               Entry("a/c.fpz", "file", size=3, etag='"e"', original_size=9, mtime_ns=5)]
    got = loads(dumps(entries), "test")
    assert list(got.values()) == entries


@pytest.mark.parametrize("doc", [
    b"not json", b"[]", b'{"fpfs_manifest": 2, "entries": []}',
    b'{"fpfs_manifest": 1, "entries": {}}',
    b'{"fpfs_manifest": 1, "entries": [{"path": "../x", "kind": "file"}]}',
    b'{"fpfs_manifest": 1, "entries": [{"path": "/etc/passwd", "kind": "file"}]}',
    b'{"fpfs_manifest": 1, "entries": [{"path": "a//b", "kind": "file"}]}',
    b'{"fpfs_manifest": 1, "entries": [{"path": "a/./b", "kind": "dir"}]}',
    b'{"fpfs_manifest": 1, "entries": [{"path": "a\\u0000b", "kind": "file"}]}',
    b'{"fpfs_manifest": 1, "entries": [{"path": "a", "kind": "fifo"}]}',
    b'{"fpfs_manifest": 1, "entries": [{"path": "a", "kind": "file", "size": -1}]}',
    b'{"fpfs_manifest": 1, "entries": [{"path": "a", "kind": "file", "size": true}]}',
    b'{"fpfs_manifest": 1, "entries": [{"path": "a", "kind": "link", "target": 3}]}',
    b'[' * 100000,
])
def test_hostile_manifests_are_rejected(doc):
    with pytest.raises(CorruptManifest):
        loads(doc, "test")


# -- URLs and bases -------------------------------------------------------------------------
def test_url_rules():
    assert split_url("s3://b/p/x.fpz") == ("b", "p/x.fpz")
    assert split_url("s3://b") == ("b", "")
    assert list(url_ancestors("s3://b/p/q/x.fpz")) == ["s3://b/p/q", "s3://b/p", "s3://b"]
    assert list(url_ancestors("s3://b/p/q/x.fpz", "s3://b/p/")) == ["s3://b/p/q", "s3://b/p"]


def test_find_base_on_urls():
    sha = bytes(range(32))
    name = f".fpfs-bases/{sha.hex()}.fpz"
    present = {f"s3://b/p/{name}"}
    assert find_base("s3://b/p/q/x.fpz", sha, "s3://b/p", present.__contains__) == \
        f"s3://b/p/{name}"
    with pytest.raises(MissingBase):
        find_base("s3://b/p/q/x.fpz", sha, "s3://b/p/q", present.__contains__)


# -- circuit breaker ------------------------------------------------------------------------
def test_circuit_breaker_fails_fast_probes_and_closes(caplog):
    import time
    from fpfs.store.breaker import CircuitBreaker, StoreUnavailable
    breaker = CircuitBreaker("test", cooldown=0.2)
    assert breaker.before("GET a") is False              # closed: every request goes out
    with caplog.at_level(logging.WARNING, "fpfs.store"):
        breaker.failure(OSError("connection refused"))
        assert breaker.is_open and breaker.trips == 1
        with pytest.raises(StoreUnavailable, match="connection refused"):
            breaker.before("GET b")                       # open: fail at once
        time.sleep(0.25)
        assert breaker.before("GET c") is True            # one probe after the cooldown ...
        with pytest.raises(StoreUnavailable):
            breaker.before("GET d")                       # ... and only one
        breaker.failure(OSError("still down"), probe=True)
        with pytest.raises(StoreUnavailable):
            breaker.before("GET e")
        time.sleep(0.25)
        probe = breaker.before("GET f")
        breaker.success(probe)
    assert not breaker.is_open and breaker.before("GET g") is False
    assert breaker.trips == 1
    assert "not answering" in caplog.text and "answers again" in caplog.text


def test_interleaved_sequential_readers_each_keep_their_read_ahead():
    """Two loader threads faulting pages of two tensors far apart interleave their
    requests: each is a stream of its own, not a jump that restarts the window."""
    from fpfs.store.fetcher import INITIAL_WINDOW
    data = os.urandom(16 << 20)
    obj = _FakeObject(data, readahead=4 << 20)
    f, n, chunk = _fetcher(obj)
    a, b = 8, n // 2
    for step in range(6):
        for start in (a + 2 * step, b + 2 * step):
            f.prepare(start, start + 1)
            for j in (start, start + 1):
                assert _read(f, j, chunk) == data[j * chunk:(j + 1) * chunk]
    windows = sorted(s.window for s in f._streams if s.window)
    assert len(windows) >= 2 and windows[-2] > INITIAL_WINDOW
    obj.store.pool.shutdown(wait=True)
    got = sorted(obj.gets)
    assert all(x + sx <= y for (x, sx), (y, _) in zip(got, got[1:]))    # each byte once


def test_a_reader_gets_its_chunk_before_the_rest_of_the_get_arrives():
    """The body of a GET is handed over chunk by chunk: the reader of its first chunk
    does not wait for the last one (the fake store holds the rest back until then)."""
    import threading
    data = os.urandom(1 << 20)
    obj = _FakeObject(data, readahead=0)
    first_read = threading.Event()

    def fetch_streamed(offset, size, sink):
        obj.gets.append((offset, size))
        sink(data[offset:offset + (64 << 10)])
        assert first_read.wait(10)
        sink(data[offset + (64 << 10):offset + size])
    obj.fetch_streamed = fetch_streamed
    f, n, chunk = _fetcher(obj)
    f.prepare(0, n - 1)                       # one GET for the whole object
    assert _read(f, 0, chunk) == data[:chunk]
    first_read.set()
    for j in range(1, n):
        assert _read(f, j, chunk) == data[j * chunk:(j + 1) * chunk]
    obj.store.pool.shutdown(wait=True)
    assert obj.gets == [(0, len(data))]
