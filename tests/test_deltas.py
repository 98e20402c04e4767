"""Fine-tunes and checkpoint series stored as deltas, on a real fine-tune of MiniLM (real
AdamW steps on real text, tests/finetune.py): sizes, round trips, reads of every file
through a real mount in random order with a small cache, and the lifetimes of bases -
deleted through the mount while a delta is read, deleted by hand, corrupted."""
from __future__ import annotations

import hashlib
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import fpfs
from fpfs.bases import BASES_DIR, find_base
from fpfs.cache import ChunkCache
from fpfs.container import Container
from fpfs.deltas import choose_base
from fpfs.errors import MissingBase
from fpfs.formats import detect
from fpfs.packed_file import PackedFile
from fpfs.stats import container_stats
from tests.finetune import SERIES_STEPS
from tests.mounting import cli, mounted

STEPS = SERIES_STEPS          # the `series` fixture (conftest.py)


def digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture
def src_tree(series, tmp_path):
    src = tmp_path / "src"
    for step, path in series.items():
        (src / f"checkpoint-{step}").mkdir(parents=True)
        shutil.copy(path, src / f"checkpoint-{step}" / "model.safetensors")
    return src


@pytest.fixture
def packed(src_tree, tmp_path):
    dst = tmp_path / "packed"
    cli("compress", str(src_tree), str(dst), check=True)
    return dst


def fpz(root, step):
    return str(root / f"checkpoint-{step}" / "model.safetensors.fpz")


def test_series_is_stored_as_deltas(series, src_tree, packed):
    alone = container_stats(fpz(packed, 0))
    assert alone["base"] is None and alone["ratio"] < 0.67
    for prev, step in zip(STEPS, STEPS[1:]):
        s = container_stats(fpz(packed, step))
        assert s["base"] is not None, step
        with Container(fpz(packed, prev)) as c:     # chained to the previous checkpoint
            assert s["base"]["sha256"] == c.sha256.hex()
        assert s["ratio"] < 0.2, (step, s["ratio"])
        with fpfs.open(fpz(packed, step)) as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest(series[step])
    assert cli("verify", str(packed)).returncode == 0
    assert sorted(os.listdir(packed)) == [BASES_DIR] + [f"checkpoint-{s}" for s in STEPS]


def test_no_delta_and_forced_base(series, src_tree, tmp_path):
    cli("compress", "--no-delta", str(src_tree), str(tmp_path / "plain"), check=True)
    assert container_stats(fpz(tmp_path / "plain", 4))["base"] is None
    out = tmp_path / "forced.fpz"
    cli("compress", "--base", series[0], series[4], str(out), check=True)
    with Container(str(out)) as c:
        assert c.base.sha256 == hashlib.sha256(open(series[0], "rb").read()).digest()
    with fpfs.open(str(out)) as f:
        assert hashlib.sha256(f.read()).hexdigest() == digest(series[4])


def test_max_depth_bounds_the_chain(series, src_tree, tmp_path):
    """--max-depth 1: every checkpoint is coded against one stored on its own (here the
    first), never against another delta; files stay exact. Out of range is a usage error."""
    shallow = tmp_path / "shallow"
    cli("compress", "--max-depth", "1", str(src_tree), str(shallow), check=True)
    first = container_stats(fpz(shallow, STEPS[0]))
    assert first["base"] is None
    for step in STEPS[1:]:
        with fpfs.open(fpz(shallow, step)) as f:
            assert f.depth == 1, step
            assert hashlib.sha256(f.read()).hexdigest() == digest(series[step])
    for bad in ("0", "99"):
        r = cli("compress", "--max-depth", bad, str(src_tree), str(tmp_path / bad))
        assert r.returncode != 0 and "--max-depth" in r.stderr
        assert not (tmp_path / bad).exists()


def test_mount_reads_every_file_in_random_order(series, packed, tmp_path):
    rng = np.random.default_rng(5)
    originals = {s: open(p, "rb").read() for s, p in series.items()}
    with mounted(str(packed), str(tmp_path / "mnt"), "--cache-size", "1M") as m:
        assert BASES_DIR not in os.listdir(m.mountpoint)
        for _ in range(300):
            step = int(rng.choice(STEPS))
            data = originals[step]
            off = int(rng.integers(0, len(data)))
            size = int(rng.integers(1, 600_000))
            with open(m.path(f"checkpoint-{step}", "model.safetensors"), "rb") as f:
                f.seek(off)
                assert f.read(size) == data[off:off + size]
        for step in STEPS:
            got = load_file(m.path(f"checkpoint-{step}", "model.safetensors"))
            want = load_file(series[step])
            assert all(torch.equal(got[k], want[k]) for k in want)


def test_fine_tunes_share_their_base_decoded_once(series, tmp_path):
    """Two fine-tunes of one base, read through one cache: each base chunk decoded once."""
    store = tmp_path / "t"
    store.mkdir()
    fpfs.compress_file(series[0], str(store / "base.fpz"))
    for step in (2, 4):
        fpfs.compress_file(series[step], str(store / f"ft{step}.fpz"),
                           base=str(store / "base.fpz"))
    cache = ChunkCache(1 << 30)
    files = [PackedFile(str(store / f"ft{s}.fpz"), cache) for s in (2, 4)]
    for pf in files:
        pf.pread(0, pf.size)
    base_chunks = len(files[0].base.container)
    delta_chunks = sum(1 for e in files[0].container.table if int(e["codec"]) == 4)
    assert files[0].base.identity == files[1].base.identity
    # base chunks decoded once for both (misses), the deltas' own chunks decoded directly
    assert cache.stats.misses <= base_chunks + 2
    assert delta_chunks > 0.9 * len(files[0].container)
    for pf in files:
        pf.close()


def test_base_deleted_through_the_mount_while_a_delta_is_read(series, packed, tmp_path):
    data = open(series[4], "rb").read()
    with mounted(str(packed), str(tmp_path / "mnt"), "--writable", "--cache-size", "1M") as m:
        with open(m.path("checkpoint-4", "model.safetensors"), "rb") as f:
            head = f.read(len(data) // 2)
            for step in (0, 2):
                os.unlink(m.path(f"checkpoint-{step}", "model.safetensors"))
            rest = f.read()
        assert head + rest == data
        assert not os.path.exists(m.path("checkpoint-0", "model.safetensors"))
    assert cli("verify", str(packed)).returncode == 0
    with mounted(str(packed), str(tmp_path / "mnt2")) as m:
        assert digest(m.path("checkpoint-4", "model.safetensors")) == digest(series[4])
    # gc keeps what deltas still need
    res = cli("gc", str(packed), check=True)
    assert digest_of_fpz(fpz(packed, 4)) == digest(series[4])
    assert "0 stored base" in res.stdout


def digest_of_fpz(path):
    with fpfs.open(path) as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_base_missing_is_a_clear_error(series, packed, tmp_path):
    os.unlink(fpz(packed, 0))
    shutil.rmtree(packed / BASES_DIR)
    res = cli("verify", str(packed))
    assert res.returncode == 1 and "missing" in res.stdout and "Traceback" not in res.stdout
    with pytest.raises(MissingBase):
        fpfs.open(fpz(packed, 2))
    with mounted(str(packed), str(tmp_path / "mnt")) as m:
        with pytest.raises(OSError) as info:
            open(m.path("checkpoint-2", "model.safetensors"), "rb").read()
        assert info.value.errno == 5
        assert "base" in m.log() and "missing" in m.log()


def test_base_corrupted_gives_eio_naming_the_base(series, packed, tmp_path):
    with Container(fpz(packed, 0)) as c:
        sha = c.sha256
        i = len(c) // 2
        off = int(c.table[i]["comp_offset"]) + 100
    stored = find_base(fpz(packed, 2), sha)
    with open(stored, "r+b") as f:          # the hard link: the visible base is damaged too
        f.seek(off)
        b = f.read(1)
        f.seek(off)
        f.write(bytes([b[0] ^ 0xFF]))
    assert cli("verify", fpz(packed, 2)).returncode == 1
    with mounted(str(packed), str(tmp_path / "mnt")) as m:
        with pytest.raises(OSError) as info:
            open(m.path("checkpoint-2", "model.safetensors"), "rb").read()
        assert info.value.errno == 5
        assert sha.hex() in m.log() or "checkpoint-0" in m.log()


def test_other_shapes_are_never_a_base(series, tmp_path):
    t = load_file(series[0])
    reshaped = {k: (v.reshape(-1) if v.dim() == 2 else v) for k, v in t.items()}
    save_file(reshaped, str(tmp_path / "flat.safetensors"))
    other = detect(str(tmp_path / "flat.safetensors"))
    assert choose_base(detect(series[2]), [("flat", other)]) is None
    assert choose_base(detect(series[2]), [("flat", other), ("base", detect(series[0]))]) \
        == "base"


def test_checkpoint_saved_into_writable_mount_is_a_delta(series, tmp_path):
    backing = tmp_path / "backing"
    (backing / "checkpoint-0").mkdir(parents=True)
    fpfs.compress_file(series[0], str(backing / "checkpoint-0" / "model.safetensors.fpz"))
    with mounted(str(backing), str(tmp_path / "mnt"), "--writable") as m:
        os.mkdir(m.path("checkpoint-2"))
        save_file(load_file(series[2]), m.path("checkpoint-2", "model.safetensors"))
        got = load_file(m.path("checkpoint-2", "model.safetensors"))
        want = load_file(series[2])
        assert all(torch.equal(got[k], want[k]) for k in want)
    s = container_stats(str(backing / "checkpoint-2" / "model.safetensors.fpz"))
    assert s["base"] is not None and s["ratio"] < 0.2
    assert cli("verify", str(backing)).returncode == 0
