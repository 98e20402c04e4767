"""Compressed trees on a real S3 server (SeaweedFS on 127.0.0.1, tests/s3server.py; no
mocks): publish with `fpfs compress SRC s3://...`, mount it, read through the mount and
compare bytes, load with safetensors and transformers, verify/stats/decompress from the
store, fpfs.open and fpfs.load_file on s3:// URLs, the disk cache across mounts, and
faults: the server killed or frozen mid-read (EIO within the timeouts and a log line,
reads resume after a restart) and an object replaced while mounted (never wrong bytes).
Mount tests fail, never skip, without FUSE or without the server."""
from __future__ import annotations

import errno
import gc
import hashlib
import json
import os
import shutil
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file as torch_load

import fpfs
from fpfs.store import s3
from tests.mounting import cli, mounted
from tests.s3server import BUCKET, S3Server, client_env
from tests.weights import MODEL_DIR

SUFFIX = ".fpz"
REV = "0123abcd"


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def tree_files(root: str) -> dict:
    """{relative path: ("link", target) | ("file", sha256)} of a tree (links not followed)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                out[rel] = ("link", os.readlink(path))
            elif os.path.isfile(path):
                out[rel] = ("file", sha256(path))
    return out


@pytest.fixture(scope="module")
def src_tree(tmp_path_factory, series):
    """A Hugging Face cache of MiniLM in BF16 (blobs + snapshot symlinks + refs) and a
    checkpoint series beside it (checkpoint-2 is stored as a delta of checkpoint-0)."""
    root = tmp_path_factory.mktemp("s3-src")
    repo = root / "hub" / "models--sentence-transformers--all-MiniLM-L6-v2"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REV)
    snap = repo / "snapshots" / REV
    snap.mkdir(parents=True)
    files = {"model.safetensors": series[0], "config.json": os.path.join(MODEL_DIR, "config.json"),
             "tokenizer.json": os.path.join(MODEL_DIR, "tokenizer.json")}
    for name, path in files.items():
        blob = sha256(path)
        shutil.copyfile(path, repo / "blobs" / blob)
        os.symlink(f"../../blobs/{blob}", snap / name)
    for step in (0, 2):
        path = series[step]
        (root / "train" / f"checkpoint-{step}").mkdir(parents=True)
        shutil.copyfile(path, root / "train" / f"checkpoint-{step}" / "model.safetensors")
    return str(root)


@pytest.fixture(scope="module")
def published(s3_env, src_tree):
    url = f"s3://{BUCKET}/trees/hf"
    cli("compress", src_tree, url, check=True, timeout=600)
    return url


def snapshot(root: str) -> str:
    return os.path.join(root, "hub", "models--sentence-transformers--all-MiniLM-L6-v2",
                        "snapshots", REV)


# -- publish, mount, read -------------------------------------------------------------------
def test_mount_shows_the_original_tree(published, src_tree, tmp_path):
    with mounted(published, str(tmp_path / "mnt")) as m:
        assert tree_files(m.mountpoint) == tree_files(src_tree)
        assert ".fpfs-bases" not in os.listdir(m.mountpoint)
        with pytest.raises(FileNotFoundError):
            os.stat(m.path(".fpfs-bases"))
        assert os.path.islink(os.path.join(snapshot(m.mountpoint), "model.safetensors"))
        for name in ("model.safetensors", "config.json"):      # a container, a plain file
            want_mode = os.stat(os.path.join(snapshot(src_tree), name)).st_mode
            assert want_mode & 0o200
            assert os.stat(os.path.join(snapshot(m.mountpoint), name)).st_mode == want_mode
            with pytest.raises(OSError) as exc:
                open(os.path.join(snapshot(m.mountpoint), name), "r+b")
            assert exc.value.errno == errno.EROFS
        # Frameworks load it unmodified, through the snapshot's symlinks.
        want = torch_load(os.path.join(snapshot(src_tree), "model.safetensors"))
        got = torch_load(os.path.join(snapshot(m.mountpoint), "model.safetensors"))
        assert want.keys() == got.keys()
        assert all(torch.equal(want[k], got[k]) for k in want)
        from transformers import AutoModel
        model = AutoModel.from_pretrained(snapshot(m.mountpoint)).state_dict()
        assert all(torch.equal(model[k].to(want[k].dtype), want[k]) for k in want if k in model)
        assert len(set(model) & set(want)) >= 100
        del model, got              # they may map the mount's file: let it unmount at once
        gc.collect()
        status = m.status()
        assert status["read_errors"] == 0 and status["store"]["errors"] == 0
        with pytest.raises(OSError) as exc:
            open(m.path("new-file"), "wb")
        assert exc.value.errno == errno.EROFS


def test_verify_stats_decompress_from_the_store(published, src_tree, tmp_path):
    res = cli("verify", published, check=True)
    assert res.stdout.count("OK ") == 4          # 3 safetensors + tokenizer.json
    stats = json.loads(cli("stats", "--json", published, check=True).stdout)
    deltas = {os.path.basename(os.path.dirname(f["path"])): f for f in stats["files"]
              if f["base"]}
    assert "checkpoint-2" in deltas and deltas["checkpoint-2"]["ratio"] < 0.3
    assert all(f["base"]["path"].startswith(published + "/.fpfs-bases/")
               for f in deltas.values())
    cli("decompress", published, str(tmp_path / "out"), check=True)
    assert tree_files(str(tmp_path / "out")) == tree_files(src_tree)


def test_library_open_and_load_file(published, src_tree, series):
    url = f"{published}/train/checkpoint-2/model.safetensors{SUFFIX}"   # a delta
    with open(series[2], "rb") as f:
        original = f.read()
    with fpfs.open(url) as f:
        assert f.size == len(original)
        rng = np.random.default_rng(7)
        for _ in range(20):
            off = int(rng.integers(0, len(original)))
            n = int(rng.integers(1, 3 << 20))
            assert f.pread(off, n) == original[off:off + n]
        f.seek(0)
        assert f.read() == original
    got = fpfs.load_file(url, framework="torch")
    want = torch_load(series[2])
    assert got.keys() == want.keys()
    assert all(got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]) for k in want)
    as_numpy = fpfs.load_file(url, framework="numpy")
    assert all(np.array_equal(as_numpy[k].view(np.uint16) if want[k].dtype == torch.bfloat16
                              else as_numpy[k],
                              want[k].view(torch.int16).numpy().view(np.uint16)
                              if want[k].dtype == torch.bfloat16 else want[k].numpy())
               for k in want)


def test_load_file_local_numpy(real_files, tmp_path):
    from safetensors.numpy import load_file as numpy_load
    fpz = str(tmp_path / "f16.safetensors.fpz")
    fpfs.compress_file(real_files["F16"], fpz)
    got, want = fpfs.load_file(fpz), numpy_load(real_files["F16"])
    assert got.keys() == want.keys()
    assert all(got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]) for k in want)


def test_disk_cache_serves_a_second_mount_and_warmup_fills_it(published, src_tree, tmp_path):
    model = os.path.join(snapshot(src_tree), "model.safetensors")
    warm = str(tmp_path / "warm")
    cli("warmup", published, "--cache-dir", warm, check=True)
    for run, cache in enumerate([str(tmp_path / "cache")] * 2 + [warm]):
        with mounted(published, str(tmp_path / f"mnt{run}"), "--cache-dir", cache) as m:
            assert sha256(os.path.join(snapshot(m.mountpoint), "model.safetensors")) == \
                sha256(model)
            store = m.status()["store"]
        if run == 0:
            assert store["disk_hits"] == 0 and store["bytes_fetched"] > 20 << 20
        else:
            # Every chunk and the container's head and table came from disk: the only
            # request was the manifest's.
            assert store["disk_hits"] > 100 and store["bytes_fetched"] < 1 << 20, store
            assert store["gets"] <= 1, store


def test_open_costs_two_gets_and_reads_are_coalesced(published, series):
    blob = hashlib.sha256(open(series[0], "rb").read()).hexdigest()
    url = f"{published}/hub/models--sentence-transformers--all-MiniLM-L6-v2/blobs/{blob}.fpz"
    stats = s3.default_store().stats
    before = stats.gets
    with fpfs.open(url) as f:
        opened = stats.gets - before
        stored = f._packed.container.stored_size
        assert f.read() == open(series[0], "rb").read()
    assert opened == 2                          # head + prefix, table + trailer
    request = s3.default_store().settings.request_size
    # Coalesced: GETs of up to request_size, plus the small ones of the read-ahead
    # window's ramp (fetcher.py: it starts at INITIAL_WINDOW after the open and after
    # each jump; parallel.read_into's pieces start where the previous ones do not end).
    assert stats.gets - before - opened <= -(-stored // request) + 8, \
        (stats.gets - before, stored)


# -- faults ---------------------------------------------------------------------------------
@pytest.fixture
def own_server(tmp_path, monkeypatch):
    """A server of this test's own (it gets killed); fpfs subprocesses talk to it."""
    server = S3Server(str(tmp_path / "server"))
    server.start()
    for key, value in client_env(server.endpoint).items():
        monkeypatch.setenv(key, value)
    try:
        yield server
    finally:
        server.stop()


# Bounded: a read fails after 2 tries of at most 1 s (+ backoff); the kernel retries a failed
# readahead page once more on its own.
FAULT_FLAGS = ("--timeout", "1", "--retries", "1", "--readahead", "0", "--request-size", "1M")


def store_cli(server: S3Server, *args: str, **kwargs):
    return cli(*args, "--endpoint-url", server.endpoint, **kwargs)


def read_at(path: str, offset: int, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def timed_eio(path: str, offset: int, limit: float) -> None:
    start = time.monotonic()
    with pytest.raises(OSError) as exc:
        read_at(path, offset, 1 << 20)
    assert exc.value.errno == errno.EIO
    assert time.monotonic() - start < limit


def test_store_stopped_mid_read(own_server, series, tmp_path):
    url = f"s3://{BUCKET}/faults"
    store_cli(own_server, "compress", series[0], url + "/", check=True)
    with open(series[0], "rb") as f:
        original = f.read()
    name = os.path.basename(series[0])
    with mounted(url, str(tmp_path / "mnt"), *FAULT_FLAGS, "--endpoint-url",
                 own_server.endpoint) as m:
        path = m.path(name)
        fd = os.open(path, os.O_RDONLY)
        try:
            assert os.pread(fd, 1 << 20, 0) == original[:1 << 20]
            own_server.kill()                          # dead: connections refused
            timed_eio(path, 20 << 20, 15)
            assert f"read /{name} offset" in m.log()
            own_server.start()
            assert os.pread(fd, 1 << 20, 20 << 20) == original[20 << 20:21 << 20]
            own_server.pause()                         # frozen: requests time out
            timed_eio(path, 30 << 20, 15)
            own_server.resume()
            assert read_at(path, 30 << 20, 1 << 20) == original[30 << 20:31 << 20]
            assert os.pread(fd, len(original), 0) == original
        finally:
            os.close(fd)
        assert m.status()["read_errors"] >= 2


def test_object_replaced_while_mounted(own_server, series, tmp_path):
    """v1 of a file is replaced by v2 (same size, other bytes) while mounted: every read is
    v1's or v2's bytes or EIO, never a mix; after the metadata TTL, v2."""
    url = f"s3://{BUCKET}/replaced/"
    name = "model.safetensors"
    versions = []
    for step in (0, 2):
        d = tmp_path / f"v{step}"
        d.mkdir()
        shutil.copyfile(series[step], d / name)
        with open(series[step], "rb") as f:
            versions.append(f.read())
    assert len(versions[0]) == len(versions[1]) and versions[0] != versions[1]
    store_cli(own_server, "compress", str(tmp_path / "v0" / name), url, check=True)
    with mounted(url, str(tmp_path / "mnt"), *FAULT_FLAGS, "--metadata-ttl", "1",
                 "--endpoint-url", own_server.endpoint) as m:
        path = m.path(name)
        fd = os.open(path, os.O_RDONLY)
        try:
            head = os.pread(fd, 1 << 20, 0)
            assert head == versions[0][:1 << 20]
            store_cli(own_server, "compress", str(tmp_path / "v2" / name), url, check=True)
            try:                                       # the old handle: v1 or EIO
                assert os.pread(fd, 4 << 20, 16 << 20) == versions[0][16 << 20:20 << 20]
            except OSError as exc:
                assert exc.errno == errno.EIO
        finally:
            os.close(fd)
        deadline = time.monotonic() + 20
        while True:
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as exc:
                assert exc.errno == errno.EIO
                data = None
            assert data in (None, versions[0], versions[1])
            if data == versions[1] or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert data == versions[1]


# -- metrics --------------------------------------------------------------------------------
def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict:
    """{'name{labels}': value} of the mount's /metrics (prometheus_client's own parser)."""
    import urllib.request
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[s.name + (f"{{{labels}}}" if labels else "")] = s.value
    return out


def test_metrics_of_a_remote_mount(published, src_tree, tmp_path):
    port = free_port()
    model = os.path.join(snapshot(src_tree), "model.safetensors")
    with mounted(published, str(tmp_path / "mnt"), "--cache-dir", str(tmp_path / "cache"),
                 "--metrics", f"127.0.0.1:{port}") as m:
        with open(os.path.join(snapshot(m.mountpoint), "model.safetensors"), "rb") as f:
            assert f.read() == open(model, "rb").read()
        got = scrape(port)
        store = m.status()["store"]
    size = os.path.getsize(model)
    assert got["fpfs_bytes_served_total"] >= size
    assert got["fpfs_read_errors_total"] == 0
    assert got["fpfs_store_bytes_fetched_total"] == store["bytes_fetched"] > 0.5 * size
    assert got["fpfs_store_gets_total"] == store["gets"] > 0
    assert got['fpfs_cache_misses_total{tier="ram"}'] > 0
    assert got['fpfs_cache_misses_total{tier="disk"}'] > 0           # a fresh cache dir
    assert got['fpfs_cache_hits_total{tier="disk"}'] == 0
    assert 0 < got['fpfs_cache_used_bytes{tier="disk"}'] <= \
        got['fpfs_cache_budget_bytes{tier="disk"}']
    assert got['fpfs_store_request_seconds_count{operation="GET"}'] >= store["gets"]
    assert got['fpfs_store_request_seconds_bucket{le="+Inf",operation="GET"}'] == \
        got['fpfs_store_request_seconds_count{operation="GET"}']
    assert got["fpfs_store_retries_total"] == 0 and got["fpfs_store_errors_total"] == 0
    assert got["fpfs_store_up"] == 1
    assert got["process_resident_memory_bytes"] > 0


def test_metrics_of_a_local_mount(real_files, tmp_path):
    from tests.mounting import compressed_and_mounted
    port = free_port()
    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(real_files["BF16"], src / "model.safetensors")
    with compressed_and_mounted(str(src), str(tmp_path), "--metrics",
                                f"127.0.0.1:{port}") as m:
        for _ in range(2):
            with open(m.path("model.safetensors"), "rb") as f:
                data = f.read()
        got = scrape(port)
    assert data == open(real_files["BF16"], "rb").read()
    assert got["fpfs_bytes_served_total"] >= len(data)
    assert got['fpfs_cache_misses_total{tier="ram"}'] > 0
    assert "fpfs_store_bytes_fetched_total" not in got


def test_metrics_address_is_checked(tmp_path):
    os.makedirs(tmp_path / "b")
    os.makedirs(tmp_path / "m")
    res = cli("mount", str(tmp_path / "b"), str(tmp_path / "m"), "--metrics", "nonsense")
    assert res.returncode != 0 and "HOST:PORT" in res.stderr
