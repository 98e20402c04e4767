"""Faults of the object store, through a real mount of a tree on the real S3 server
(SeaweedFS on 127.0.0.1), with a fault-injecting HTTP proxy in between (tests/faultproxy.py;
no mocks of S3): 5xx answers retried with backoff, or EIO plus a log line once the retries
are used up; a slow store still served; connections dropped or cut mid-body retried; a
frozen store failing reads at the deadline and then at once (circuit breaker) instead of
hanging them, and reads resuming when it answers again; a full cache disk turning the disk
cache off with a log line. Every read that succeeds is compared with the original."""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time

import pytest

from tests.faultproxy import FaultProxy
from tests.mounting import cli, mounted, wait_until
from tests.s3server import BUCKET

MiB = 1 << 20
# Requests of one chunk run (1 MiB), no read-ahead: each read below is a known few GETs.
FLAGS = ("--readahead", "0", "--request-size", "1M")


@pytest.fixture(scope="module")
def published(s3_env, real_files, tmp_path_factory):
    """(URL of the tree, file name, original bytes): real BF16 MiniLM weights."""
    src = tmp_path_factory.mktemp("faults-src")
    name = "model.safetensors"
    shutil.copyfile(real_files["BF16"], src / name)
    url = f"s3://{BUCKET}/faults-proxy"
    cli("compress", str(src), url, check=True, timeout=600)
    with open(src / name, "rb") as f:
        return url, name, f.read()


@pytest.fixture
def proxy(s3_env):
    p = FaultProxy(s3_env["AWS_ENDPOINT_URL"])
    try:
        yield p
    finally:
        p.close()


def pread(fd: int, offset: int, size: int = MiB) -> bytes:
    return os.pread(fd, size, offset)


def expect_eio(fd: int, offset: int) -> float:
    """A read that must fail with EIO; returns how long it took."""
    start = time.monotonic()
    with pytest.raises(OSError) as exc:
        pread(fd, offset)
    assert exc.value.errno == errno.EIO
    return time.monotonic() - start


def read_when_back(fd: int, offset: int, original: bytes, timeout: float = 20) -> None:
    """Reads resume once the store answers (the breaker lets a probe through each second)."""
    got = []

    def attempt() -> bool:
        try:
            got.append(pread(fd, offset))
            return True
        except OSError as exc:
            assert exc.errno == errno.EIO
            return False

    assert wait_until(attempt, timeout, interval=0.5), "reads did not resume"
    assert got[-1] == original[offset:offset + MiB]


def test_5xx_answers_are_retried_then_eio_then_served_again(published, proxy, tmp_path):
    url, name, original = published
    with mounted(url, str(tmp_path / "mnt"), *FLAGS, "--timeout", "2", "--retries", "2",
                 "--endpoint-url", proxy.endpoint) as m:
        fd = os.open(m.path(name), os.O_RDONLY)
        try:
            assert pread(fd, 0) == original[:MiB]
            for status in (503, 500):               # fewer failures than tries: served
                proxy.set("status", status=status, count=2)
                off = 8 * MiB if status == 503 else 12 * MiB
                assert pread(fd, off) == original[off:off + MiB]
            # (a retried GET may be the kernel's read-ahead, still finishing in the background)
            assert wait_until(lambda: m.status()["store"]["retries"] >= 4, 15)
            assert m.status()["read_errors"] == 0
            proxy.set("status", status=503)         # until cleared: EIO, a log line
            expect_eio(fd, 20 * MiB)
            assert f"read /{name} offset" in m.log() and "ServiceUnavailable" in m.log()
            proxy.clear()
            assert pread(fd, 20 * MiB) == original[20 * MiB:21 * MiB]   # at once
            assert pread(fd, 0, len(original)) == original
        finally:
            os.close(fd)


def test_slow_dropped_and_cut_requests_are_served(published, proxy, tmp_path):
    url, name, original = published
    with mounted(url, str(tmp_path / "mnt"), *FLAGS, "--timeout", "5", "--retries", "3",
                 "--endpoint-url", proxy.endpoint) as m:
        fd = os.open(m.path(name), os.O_RDONLY)
        try:
            proxy.set("delay", seconds=1.5, count=3)      # slow, well inside the deadline
            assert pread(fd, 4 * MiB, 2 * MiB) == original[4 * MiB:6 * MiB]
            proxy.set("drop", count=2)                     # closed without an answer
            assert pread(fd, 10 * MiB) == original[10 * MiB:11 * MiB]
            proxy.set("cut", count=2)                      # half a body, then closed
            assert pread(fd, 16 * MiB) == original[16 * MiB:17 * MiB]
            assert proxy.injected >= 7
            status = m.status()
            assert status["read_errors"] == 0 and status["store"]["retries"] >= 4, status
        finally:
            os.close(fd)


def test_frozen_store_fails_reads_in_bounded_time_then_resumes(published, proxy, tmp_path):
    """Per-request timeouts and retries alone would hold a read 4 x 10 s here; the deadline
    (3 s) ends it, and the open circuit breaker fails the next reads at once."""
    url, name, original = published
    with mounted(url, str(tmp_path / "mnt"), *FLAGS, "--deadline", "3",
                 "--endpoint-url", proxy.endpoint) as m:
        fd = os.open(m.path(name), os.O_RDONLY)
        try:
            assert pread(fd, 0) == original[:MiB]
            proxy.set("hang")
            first = expect_eio(fd, 8 * MiB)
            assert first < 25, first                # never a hung read (the bound is ~3 s)
            assert "no answer from the store in 3 s" in m.log()
            assert "not answering" in m.log()
            sent = proxy.requests
            for off in (12, 16, 24):                # failing fast: no request per read
                expect_eio(fd, off * MiB)
            assert proxy.requests - sent <= 2       # at most the breaker's probes
            assert m.status()["store"]["up"] is False
            proxy.clear()                           # the held requests are answered now
            read_when_back(fd, 30 * MiB, original)
            assert m.status()["store"]["up"] is True
            assert pread(fd, 0, len(original)) == original
        finally:
            os.close(fd)


def test_full_cache_disk_degrades_to_no_disk_cache(published, tmp_path):
    url, name, original = published
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], check=True)
    try:
        with mounted(url, str(tmp_path / "mnt"), "--cache-dir", str(small)) as m:
            with open(m.path(name), "rb") as f:
                assert f.read() == original
            assert "disk full" in m.log()
            status = m.status()
            assert status["read_errors"] == 0
            assert status["disk_cache"]["used_bytes"] <= 2 * MiB
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
