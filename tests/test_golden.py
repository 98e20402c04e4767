"""Golden files: containers written by every released format version must decode, bit for
bit, forever. tests/golden/make_golden.py wrote them; never regenerate an existing version."""
from __future__ import annotations

import glob
import hashlib
import os

import pytest

import fpfs
from fpfs import _reference
from fpfs.bases import find_base
from fpfs.container import Container

GOLDEN = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "golden", "v*", "*.fpz")))


def test_golden_files_exist():
    assert GOLDEN, "no golden files committed"


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: os.path.relpath(p, os.path.dirname(p) + "/.."))
def test_golden_decodes(path, tmp_path):
    with open(path[:-len(".fpz")], "rb") as f:
        original = f.read()
    fpfs.verify_file(path)
    out = tmp_path / "out"
    fpfs.decompress_file(path, str(out))
    assert out.read_bytes() == original
    with Container(path) as c:
        assert c.sha256 == hashlib.sha256(original).digest()
        base = b""
        if c.base is not None:          # a delta: its base is kept by content hash
            with fpfs.open(find_base(path, c.base.sha256)) as f:
                base = f.read()
        # The slow reference decoder agrees on every chunk of every golden file.
        for i, entry in enumerate(c.table):
            start, length = int(entry["orig_offset"]), int(entry["orig_length"])
            ref = _reference.decode_chunk(int(entry["codec"]), c.read_payload(i), length, base)
            assert ref == original[start:start + length]


@pytest.mark.parametrize("version,expected", [("v2", set(range(6))), ("v3", set(range(6))),
                                              ("v4", set(range(7)))])
def test_golden_covers_every_codec(version, expected):
    codecs = set()
    for path in GOLDEN:
        if f"/{version}/" in path:
            with Container(path) as c:
                codecs |= {int(x) for x in c.table["codec"]}
    assert codecs == expected


def test_golden_v4_expmant_cases():
    """The v4 golden files hold EXPMANT chunks of both windows (k = 1, 2) and ones with
    exponent-zero symbols (zeros, subnormals)."""
    ks, zero_symbols = set(), False
    with Container(os.path.join(os.path.dirname(__file__), "golden", "v4",
                                "mixed.safetensors.fpz")) as c:
        for i, codec in enumerate(c.table["codec"]):
            if int(codec) == 6:
                payload = c.read_payload(i)
                k, slen = payload[0], int.from_bytes(payload[2:6], "little")
                symbols = _reference.rans32_decode(payload[6:6 + slen],
                                                   int(c.table["orig_length"][i]) // 2)
                ks.add(k)
                zero_symbols |= any(s >> k == 0 for s in symbols)
    assert ks == {1, 2} and zero_symbols


def _plane_modes(path: str) -> set:
    """Plane modes of the PLANES chunks of a golden file."""
    modes = set()
    with Container(path) as c:
        for i, codec in enumerate(c.table["codec"]):
            if int(codec) == 1:
                payload = c.read_payload(i)
                modes |= set(payload[2:2 + 5 * payload[0]:5])
    return modes


def test_golden_plane_modes_by_version():
    """v1/v2 files hold the 8-lane rANS planes (mode 1), v3/v4 files the rANS32 ones (mode 3)."""
    modes = {v: set() for v in ("v1", "v2", "v3", "v4")}
    for path in GOLDEN:
        version = os.path.basename(os.path.dirname(path))
        if version in modes:
            modes[version] |= _plane_modes(path)
    assert 1 in modes["v1"] and 1 in modes["v2"] and 3 not in modes["v2"]
    assert 3 in modes["v3"] and 1 not in modes["v3"]
    assert 3 in modes["v4"] and 1 not in modes["v4"]


KV_GOLDEN = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "golden", "v*",
                                          "kv-*.fpkv")))


@pytest.mark.parametrize("path", KV_GOLDEN, ids=os.path.basename)
def test_golden_kv_blobs_decode(path):
    """FPKV blobs of every version decode to the bytes they were made from."""
    import numpy as np
    import fpfs.kv
    want = np.load(path[:-len(".fpkv")] + ".npy")
    with open(path, "rb") as f:
        got = fpfs.kv.decompress(f.read())
    assert np.asarray(got).view(np.uint8).tobytes() == want.tobytes()


def test_golden_kv_blobs_exist():
    assert {os.path.basename(os.path.dirname(p)) for p in KV_GOLDEN} >= {"v1", "v2", "v3", "v4"}
