"""A weights file over 4 GiB, end to end: compressed, verified, read with fpfs.open and
through the mount at offsets past 4 GiB, byte for byte equal to the original.

The file is one BF16 tensor made of a 16 MiB block of normally distributed values repeated
with a period of 16 MiB + 6 bytes: 2**32 is no multiple of the period, so a reader whose
offsets wrapped at 32 bits would return other bytes, not the same ones by accident. It is
written, compressed and removed within the test (about 4.3 GB, then 2.9 GB stored)."""
from __future__ import annotations

import json
import os
import shutil
import struct

import ml_dtypes
import numpy as np
import pytest

import fpfs
from tests.mounting import cli, mounted

GIB4 = 1 << 32
PERIOD = (16 << 20) + 6


def original_bytes(data_start: int, offset: int, length: int, block: bytes) -> bytes:
    """What the file holds at [offset, offset + length) of its data section."""
    out = bytearray()
    pos = offset - data_start
    while len(out) < length:
        i = pos % PERIOD
        take = min(length - len(out), PERIOD - i)
        out += block[i:i + take]
        pos += take
    return bytes(out)


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    work = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(4)
    block = (rng.standard_normal(PERIOD // 2) * 0.02).astype(ml_dtypes.bfloat16).tobytes()
    elements = (GIB4 + (96 << 20)) // 2
    header = json.dumps({"w": {"dtype": "BF16", "shape": [elements],
                               "data_offsets": [0, 2 * elements]}}).encode()
    header += b" " * (-len(header) % 8)
    src = work / "big.safetensors"
    with open(src, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        left = 2 * elements
        while left:
            n = min(left, PERIOD)
            f.write(block[:n])
            left -= n
    packed = work / "packed"
    packed.mkdir()
    cli("compress", str(src), str(packed / "big.safetensors.fpz"), check=True, timeout=900)
    yield src, packed, 8 + len(header), block
    shutil.rmtree(work, ignore_errors=True)


def spots(size: int, data_start: int, rng: np.random.Generator):
    """(offset, length): reads straddling 4 GiB, past it at random, and the file's end."""
    yield GIB4 - 100, 300
    yield GIB4 - (1 << 20), 3 << 20
    for off in rng.integers(GIB4, size - 1, 40):
        yield int(off), int(rng.integers(1, 3 << 20))
    yield size - 5000, 5000
    yield data_start, 4096


def test_file_over_4_gib_reads_exactly_past_4_gib(big, tmp_path):
    src, packed, data_start, block = big
    size = os.path.getsize(src)
    assert size > GIB4
    fpz = packed / "big.safetensors.fpz"
    assert cli("verify", str(fpz)).returncode == 0
    with fpfs.open(str(fpz)) as f:
        assert f.size == size
        for off, n in spots(size, data_start, np.random.default_rng(1)):
            f.seek(off)
            want = original_bytes(data_start, off, min(n, size - off), block)
            assert f.read(n) == want, off
    with mounted(str(packed), str(tmp_path / "mnt")) as m:
        path = m.path("big.safetensors")
        assert os.path.getsize(path) == size
        fd = os.open(path, os.O_RDONLY)
        try:
            for off, n in spots(size, data_start, np.random.default_rng(2)):
                want = original_bytes(data_start, off, min(n, size - off), block)
                assert os.pread(fd, n, off) == want, off
        finally:
            os.close(fd)
