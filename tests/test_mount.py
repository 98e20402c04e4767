"""The FUSE mount, for real: `fpfs compress` a tree, `fpfs mount` it (the real CLI, in a
subprocess) and read it back through the kernel with os.pread, mmap, safetensors,
transformers and many threads. A mount that cannot be made fails these tests (never a skip):
CI must notice a missing FUSE (.ci/run installs fuse3)."""
from __future__ import annotations

import errno
import hashlib
import json
import mmap
import os
import shutil
import signal
import threading

import numpy as np
import pytest

from tests.mounting import (cli, compress, force_unmount, in_mountinfo, mount, mounted,
                            process_alive, wait_until)
from tests.weights import REAL_DTYPES

SUFFIX = ".fpz"
PAGE = os.sysconf("SC_PAGE_SIZE")
HF_REPO = "models--fpfs-test--minilm"
HF_REV = "0123456789abcdef0123456789abcdef01234567"


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def drop_page_cache(fd: int) -> None:
    """Forget the kernel's cached pages of fd so the next reads reach the daemon."""
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def random_ranges(rng: np.random.Generator, size: int, count: int, chunk: int = 256 << 10):
    """(offset, length) pairs: tiny, page-sized, chunk-crossing, large and past-EOF reads."""
    out = []
    for i in range(count):
        kind = i % 5
        if kind == 0:
            n = int(rng.integers(1, 17))
        elif kind == 1:
            n = int(rng.integers(1, 8193))
        elif kind == 2:                                  # straddles a chunk boundary
            n = int(rng.integers(2, 3 * chunk))
        elif kind == 3:
            n = int(rng.integers(1 << 20, 3 << 20))
        else:                                            # runs past the end of the file
            off = int(rng.integers(max(0, size - 100_000), size + 1))
            out.append((off, int(rng.integers(1, 300_000))))
            continue
        out.append((int(rng.integers(0, size)), n))
    return out


def make_hf_cache(root: str, model_dir: str) -> str:
    """A Hugging Face hub cache holding the real MiniLM as org/name: blobs named by hash,
    snapshots/<rev>/* -> ../../blobs/<hash> symlinks, refs/main -> <rev>."""
    repo = os.path.join(root, HF_REPO)
    blobs = os.path.join(repo, "blobs")
    snap = os.path.join(repo, "snapshots", HF_REV)
    os.makedirs(blobs)
    os.makedirs(snap)
    os.makedirs(os.path.join(repo, "refs"))
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(HF_REV)
    for name in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json",
                 "vocab.txt", "special_tokens_map.json"):
        data = read_bytes(os.path.join(model_dir, name))
        digest = hashlib.sha256(data).hexdigest() if name.endswith(".safetensors") \
            else hashlib.sha1(data).hexdigest()
        with open(os.path.join(blobs, digest), "wb") as f:
            f.write(data)
        os.symlink(os.path.join("..", "..", "blobs", digest), os.path.join(snap, name))
    return repo


# -- one shared tree, compressed once, mounted once for the module --------------------------
@pytest.fixture(scope="module")
def tree(tmp_path_factory, real_files, model_dir):
    """src: the original tree (every real dtype, the HF model directory, a HF cache);
    backing: the same tree after `fpfs compress`."""
    base = tmp_path_factory.mktemp("mount-tree")
    src = base / "src"
    weights = src / "weights"
    weights.mkdir(parents=True)
    for name, path in real_files.items():
        shutil.copyfile(path, weights / os.path.basename(path))
    shutil.copytree(model_dir, src / "model", symlinks=True)
    make_hf_cache(str(src / "hub"), model_dir)
    backing = base / "backing"
    compress(str(src), str(backing))
    return {"base": base, "src": str(src), "backing": str(backing),
            "weights": {name: "weights/" + os.path.basename(p) for name, p in real_files.items()}}


@pytest.fixture(scope="module")
def shared(tree):
    with mounted(tree["backing"], str(tree["base"] / "mnt")) as m:
        yield m


@pytest.fixture(scope="module")
def originals(tree):
    return {name: read_bytes(os.path.join(tree["src"], rel)) for name, rel in tree["weights"].items()}


# -- 1. bytes --------------------------------------------------------------------------------
def test_every_dtype_is_compressed_on_disk(tree):
    for rel in tree["weights"].values():
        assert os.path.isfile(os.path.join(tree["backing"], rel + SUFFIX))
        assert not os.path.exists(os.path.join(tree["backing"], rel))


@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_random_preads_and_whole_file(shared, tree, originals, dtype):
    orig = originals[dtype]
    path = shared.path(tree["weights"][dtype])
    st = os.stat(path)
    assert st.st_size == len(orig)
    rng = np.random.default_rng(REAL_DTYPES.index(dtype))
    fd = os.open(path, os.O_RDONLY)
    try:
        drop_page_cache(fd)
        for off, n in random_ranges(rng, len(orig), 200):
            got = os.pread(fd, n, off)
            assert got == orig[off:off + n], f"{dtype}: pread({n}, {off})"
        assert os.pread(fd, 10, len(orig)) == b""
        assert os.pread(fd, 10, len(orig) + 12345) == b""
    finally:
        os.close(fd)
    assert read_bytes(path) == orig


def test_listing_metadata_and_passthrough(shared, tree):
    names = sorted(os.listdir(shared.path("weights")))
    assert names == sorted(os.path.basename(r) for r in tree["weights"].values())
    assert ".fpfs-status" not in os.listdir(shared.mountpoint)
    for name in os.listdir(os.path.join(tree["src"], "model")):
        src = os.path.join(tree["src"], "model", name)
        if os.path.isfile(src):
            assert read_bytes(shared.path("model", name)) == read_bytes(src), name
    src_st = os.stat(os.path.join(tree["src"], tree["weights"]["BF16"]))
    st = os.stat(shared.path(tree["weights"]["BF16"]))
    assert st.st_mtime_ns == src_st.st_mtime_ns
    # The original's mode, write bits and all (rsync -a out of the mount keeps it); the
    # mount is read-only all the same.
    assert src_st.st_mode & 0o200 and st.st_mode == src_st.st_mode
    with pytest.raises(OSError) as exc:
        open(shared.path(tree["weights"]["BF16"]), "r+b")
    assert exc.value.errno == errno.EROFS
    assert not os.access(shared.path(tree["weights"]["BF16"]), os.W_OK)
    with pytest.raises(OSError) as exc:
        open(shared.path("weights", "new-file"), "wb")
    assert exc.value.errno in (errno.EROFS, errno.EACCES, errno.EPERM)


# -- 2. safetensors, mmap --------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["F32", "BF16", "F16", "F8_E4M3", "MXFP4"])
def test_safetensors_loaders(shared, tree, dtype):
    import torch
    from safetensors import safe_open
    from safetensors.numpy import load_file as np_load
    from safetensors.torch import load_file as torch_load

    orig_path = os.path.join(tree["src"], tree["weights"][dtype])
    path = shared.path(tree["weights"][dtype])

    try:
        want_np = np_load(orig_path)
    except (AttributeError, TypeError, ValueError):
        want_np = None          # numpy has no type for this dtype (FP8, E8M0)
    if want_np is not None:
        got_np = np_load(path)
        assert want_np.keys() == got_np.keys()
        for key in want_np:
            assert want_np[key].dtype == got_np[key].dtype
            assert want_np[key].tobytes() == got_np[key].tobytes(), key

    want_t, got_t = torch_load(orig_path), torch_load(path)
    assert want_t.keys() == got_t.keys()
    for key in want_t:
        assert want_t[key].dtype == got_t[key].dtype
        assert torch.equal(want_t[key].view(torch.uint8), got_t[key].view(torch.uint8)), key

    with safe_open(orig_path, "pt") as a, safe_open(path, "pt") as b:
        assert a.metadata() == b.metadata()
        assert sorted(a.keys()) == sorted(b.keys())
        for key in a.keys():
            assert torch.equal(a.get_tensor(key).view(torch.uint8),
                               b.get_tensor(key).view(torch.uint8)), key
            sa, sb = a.get_slice(key), b.get_slice(key)
            shape = sa.get_shape()
            if shape and shape[0] > 2:
                assert torch.equal(sa[1:3].view(torch.uint8), sb[1:3].view(torch.uint8))


@pytest.mark.parametrize("dtype", ["F32", "F16"])
def test_mmap(shared, tree, originals, dtype):
    orig = originals[dtype]
    with open(shared.path(tree["weights"][dtype]), "rb") as f:
        drop_page_cache(f.fileno())
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            assert len(mm) == len(orig)
            rng = np.random.default_rng(7)
            for off, n in random_ranges(rng, len(orig), 50):
                assert mm[off:off + n] == orig[off:off + n]
            assert mm[:] == orig


# -- 3. transformers from a mounted model directory ------------------------------------------
SENTENCES = ["Compressed weights, served as the original files.",
             "The quick brown fox jumps over the lazy dog.",
             "A third less disk for the same bits."]


def _embed(model_path, tokenizer_path=None, **kwargs):
    import torch
    from transformers import AutoModel, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tokenizer_path or model_path, **kwargs)
    model = AutoModel.from_pretrained(model_path, **kwargs).eval()
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch)
    return out.last_hidden_state, out.pooler_output, model


@pytest.fixture
def hf_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def test_transformers_from_mounted_model_dir(shared, tree, model_dir, hf_offline):
    import torch
    want_h, want_p, want_model = _embed(model_dir)
    got_h, got_p, got_model = _embed(shared.path("model"))
    assert torch.equal(want_h, got_h)
    assert torch.equal(want_p, got_p)
    want_sd, got_sd = want_model.state_dict(), got_model.state_dict()
    assert want_sd.keys() == got_sd.keys()
    for key in want_sd:
        assert torch.equal(want_sd[key], got_sd[key]), key


# -- 4. a Hugging Face cache ------------------------------------------------------------------
def test_hf_cache_layout(shared, tree, model_dir, hf_offline):
    import torch
    repo_src = os.path.join(tree["src"], "hub", HF_REPO)
    repo_back = os.path.join(tree["backing"], "hub", HF_REPO)
    repo_mnt = shared.path("hub", HF_REPO)
    blob = hashlib.sha256(read_bytes(os.path.join(model_dir, "model.safetensors"))).hexdigest()
    # on disk: the blob is compressed under its hash name, the snapshot link kept as is
    assert os.path.isfile(os.path.join(repo_back, "blobs", blob + SUFFIX))
    link = os.path.join("snapshots", HF_REV, "model.safetensors")
    assert os.readlink(os.path.join(repo_back, link)) == f"../../blobs/{blob}"
    # through the mount: the link, the blob and the snapshot path give the original bytes
    assert os.path.islink(os.path.join(repo_mnt, link))
    assert os.readlink(os.path.join(repo_mnt, link)) == f"../../blobs/{blob}"
    want = read_bytes(os.path.join(model_dir, "model.safetensors"))
    assert read_bytes(os.path.join(repo_mnt, link)) == want
    assert read_bytes(os.path.join(repo_mnt, "blobs", blob)) == want
    assert read_bytes(os.path.join(repo_mnt, "refs", "main")).decode() == HF_REV
    assert sorted(os.listdir(os.path.join(repo_mnt, "blobs"))) == \
        sorted(os.listdir(os.path.join(repo_src, "blobs")))

    want_h, want_p, _ = _embed(model_dir)
    got_h, got_p, _ = _embed("fpfs-test/minilm", cache_dir=shared.path("hub"),
                             local_files_only=True)
    assert torch.equal(want_h, got_h)
    assert torch.equal(want_p, got_p)


# -- 5. concurrent readers --------------------------------------------------------------------
def test_eight_concurrent_readers(tree, originals):
    """8 threads, each with its own descriptor, on a fresh mount with a small chunk cache
    (evictions, single-flight) and the page cache dropped as they go."""
    files = [("BF16", tree["weights"]["BF16"]), ("F32", tree["weights"]["F32"]),
             ("F8_E5M2", tree["weights"]["F8_E5M2"]), ("MXFP4", tree["weights"]["MXFP4"])]
    errors = []
    with mounted(tree["backing"], str(tree["base"] / "mnt-conc"), "--cache-size", "8M") as m:
        barrier = threading.Barrier(8)

        def reader(i):
            dtype, rel = files[i % len(files)]
            orig = originals[dtype]
            rng = np.random.default_rng(1000 + i)
            try:
                fd = os.open(m.path(rel), os.O_RDONLY)
                try:
                    barrier.wait(timeout=60)
                    if i < 4:                           # random preads
                        for j, (off, n) in enumerate(random_ranges(rng, len(orig), 150)):
                            if j % 25 == 0:
                                drop_page_cache(fd)
                            got = os.pread(fd, n, off)
                            if got != orig[off:off + n]:
                                errors.append(f"reader {i}: pread({n}, {off}) differs")
                                return
                    else:                               # sequential, odd buffer sizes
                        for rep in range(2):
                            drop_page_cache(fd)
                            os.lseek(fd, 0, os.SEEK_SET)
                            pos = 0
                            while True:
                                n = int(rng.choice([4096, 65536, 131072, 1 << 20, 777777]))
                                got = os.read(fd, n)
                                if not got:
                                    break
                                if got != orig[pos:pos + len(got)]:
                                    errors.append(f"reader {i}: read at {pos} differs")
                                    return
                                pos += len(got)
                            if pos != len(orig):
                                errors.append(f"reader {i}: EOF at {pos}, want {len(orig)}")
                                return
                finally:
                    os.close(fd)
            except Exception as exc:            # noqa: BLE001 - reported below
                errors.append(f"reader {i}: {exc!r}")

        threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=180)
        assert not any(t.is_alive() for t in threads), "a reader hung"
        assert not errors, errors
        status = m.status()
        assert status["read_errors"] == 0
        assert status["decoder"] in ("avx2", "portable")
        assert status["cache"]["used_bytes"] <= 8 << 20
        assert status["cache"]["evictions"] > 0


# -- 6. corruption ----------------------------------------------------------------------------
def test_corrupt_chunk_gives_eio_and_mount_survives(tree, originals, tmp_path):
    backing = tmp_path / "backing"
    backing.mkdir()
    rel = tree["weights"]["BF16"]
    good_rel = tree["weights"]["F16"]
    bad = backing / "bad.safetensors.fpz"
    shutil.copyfile(os.path.join(tree["backing"], rel + SUFFIX), bad)
    shutil.copyfile(os.path.join(tree["backing"], good_rel + SUFFIX),
                    backing / "good.safetensors.fpz")

    from fpfs.container import Container
    with Container(str(bad)) as c:
        table = c.table.copy()
    k = len(table) // 2
    comp_off, comp_len = int(table[k]["comp_offset"]), int(table[k]["comp_length"])
    o0, n0 = int(table[k]["orig_offset"]), int(table[k]["orig_length"])
    with open(bad, "r+b") as f:
        pos = comp_off + comp_len // 2
        byte = os.pread(f.fileno(), 1, pos)
        os.pwrite(f.fileno(), bytes([byte[0] ^ 0x10]), pos)

    orig = originals["BF16"]
    # the kernel reads whole pages: every page holding a byte of chunk k is unreadable
    bad_lo = o0 // PAGE * PAGE
    bad_hi = -(-(o0 + n0) // PAGE) * PAGE
    with mounted(str(backing), str(tmp_path / "mnt")) as m:
        fd = os.open(m.path("bad.safetensors"), os.O_RDONLY)
        try:
            for off, n in [(o0, 1), (o0, n0), (o0 + n0 // 2, 4096), (o0 + n0 - 1, 1),
                           (bad_lo, 8192), (o0 + n0 // 3, 3 << 20)]:
                for _ in range(2):                      # the error is not cached as data
                    with pytest.raises(OSError) as exc:
                        os.pread(fd, n, off)
                    assert exc.value.errno == errno.EIO, (off, n)
            # reads of other chunks are exact, before and after the bad one
            for off, n in [(0, 4096), (bad_lo - (1 << 20), 1 << 20), (bad_hi, 1 << 20),
                           (len(orig) - 5000, 5000), (int(table[0]["orig_offset"]), 300000)]:
                assert os.pread(fd, n, off) == orig[off:off + n], (off, n)
            # a read running into the bad pages stops short (or fails); it never lies
            try:
                got = os.pread(fd, 1 << 20, bad_lo - 100_000)
            except OSError as exc:
                assert exc.errno == errno.EIO
            else:
                assert len(got) <= 100_000
                assert got == orig[bad_lo - 100_000:bad_lo - 100_000 + len(got)]
        finally:
            os.close(fd)
        # the whole-file read fails; the mount still serves everything else
        with pytest.raises(OSError) as exc:
            read_bytes(m.path("bad.safetensors"))
        assert exc.value.errno == errno.EIO
        assert read_bytes(m.path("good.safetensors")) == originals["F16"]
        assert os.path.ismount(m.mountpoint) and process_alive(m.pid)
        status = m.status()
        assert status["read_errors"] >= 1
        res = cli("status", m.mountpoint, check=True)
        assert "error" in res.stdout
        log = m.log()
        assert f"chunk {k}" in log and "bad.safetensors" in log
        assert "Traceback" not in log


# -- 7. unmount under load --------------------------------------------------------------------
def test_unmount_under_load(tree, originals, tmp_path):
    orig = originals["BF16"]
    rel = tree["weights"]["BF16"]
    m = mount(tree["backing"], str(tmp_path / "mnt"))
    stop = threading.Event()
    detached = threading.Event()
    after_detach = [0] * 4
    errors = []

    def reader(i):
        rng = np.random.default_rng(i)
        try:
            fd = os.open(m.path(rel), os.O_RDONLY)
        except OSError as exc:
            errors.append(f"reader {i} open: {exc!r}")
            return
        try:
            j = 0
            while not stop.is_set():
                if j % 10 == 0:
                    drop_page_cache(fd)
                off = int(rng.integers(0, len(orig)))
                n = int(rng.integers(1, 1 << 20))
                got = os.pread(fd, n, off)
                if got != orig[off:off + n]:
                    errors.append(f"reader {i}: wrong bytes at {off}")
                    return
                if detached.is_set():
                    after_detach[i] += 1
                j += 1
        except OSError as exc:
            errors.append(f"reader {i}: {exc!r}")
        finally:
            os.close(fd)

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(4)]
    try:
        for t in threads:
            t.start()
        assert wait_until(lambda: m.status()["reads"] > 50, 30)
        # a plain umount refuses while files are open, says why and what to do, and the
        # mount keeps serving
        res = cli("umount", m.mountpoint, timeout=60)
        assert res.returncode != 0
        assert "busy" in res.stderr and "--lazy" in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
        assert os.path.ismount(m.mountpoint)
        # --lazy detaches at once; open descriptors are still served, correctly
        res = cli("umount", "--lazy", m.mountpoint, timeout=60)
        assert res.returncode == 0, res.stderr
        detached.set()
        assert not os.path.ismount(m.mountpoint)
        assert not in_mountinfo(m.mountpoint)
        assert os.listdir(m.mountpoint) == []
        assert wait_until(lambda: min(after_detach) >= 5 or errors, 60), after_detach
        assert process_alive(m.pid), "daemon left while files were still open"
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
        notes = force_unmount(m.mountpoint, m.pid)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    # the last descriptor closed: the daemon exits by itself, nothing is left mounted
    assert not notes, notes
    assert not process_alive(m.pid)
    assert not in_mountinfo(m.mountpoint)
    assert "Traceback" not in m.log()


def test_umount_when_idle(tree, tmp_path):
    m = mount(tree["backing"], str(tmp_path / "mnt"))
    try:
        res = cli("umount", m.mountpoint, timeout=60)
        assert res.returncode == 0, res.stderr
        assert not os.path.ismount(m.mountpoint)
        assert wait_until(lambda: not process_alive(m.pid), 20)
    finally:
        notes = force_unmount(m.mountpoint, m.pid)
    assert not notes
    assert not in_mountinfo(m.mountpoint)
    res = cli("umount", m.mountpoint, timeout=60)
    assert res.returncode != 0 and "not mounted" in res.stderr


# -- 8. command-line errors, signals ---------------------------------------------------------
def _one_line_error(res):
    assert res.returncode in (1, 2), (res.returncode, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("fpfs: error: ")
    assert "Traceback" not in res.stderr
    return lines[0]


def test_mount_errors(shared, tree, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    missing = tmp_path / "no-such-dir"
    line = _one_line_error(cli("mount", str(missing), str(mnt), timeout=60))
    assert str(missing) in line and "does not exist" in line
    assert not os.path.ismount(mnt)

    line = _one_line_error(cli("mount", tree["backing"], str(tmp_path / "no-mnt"), timeout=60))
    assert "mountpoint does not exist" in line

    full = tmp_path / "full"
    full.mkdir()
    (full / "something").write_text("x")
    line = _one_line_error(cli("mount", tree["backing"], str(full), timeout=60))
    assert "not empty" in line
    assert not os.path.ismount(full)

    line = _one_line_error(cli("mount", tree["backing"], shared.mountpoint, timeout=60))
    assert "already" in line
    assert os.path.ismount(shared.mountpoint)
    assert read_bytes(shared.path("model", "config.json")) == \
        read_bytes(os.path.join(tree["src"], "model", "config.json"))

    line = _one_line_error(cli("status", str(mnt), timeout=60))
    assert "not an fpfs mount" in line
    line = _one_line_error(cli("status", tree["src"], timeout=60))
    assert "not an fpfs mount" in line
    _one_line_error(cli("umount", str(mnt), timeout=60))


def test_status_reports(shared, tree):
    read_bytes(shared.path(tree["weights"]["F8_E4M3"]))
    s = shared.status()
    assert s["pid"] == shared.pid and s["backing"] == os.path.realpath(tree["backing"])
    assert s["bytes_served"] > 0 and s["reads"] > 0
    for key in ("hit_rate", "decode_gbps", "used_bytes", "budget_bytes"):
        assert key in s["cache"]
    assert s["cache"]["budget_bytes"] == 256 << 20
    res = cli("status", shared.mountpoint, check=True)
    assert "served" in res.stdout and "cache" in res.stdout and "decoded" in res.stdout
    assert "Ignoring invalid" not in shared.log()     # libfuse's warning on thread limits


def test_status_text_rates():
    """Decode speed is decoded bytes over decode time; what was served is rated over the
    uptime, on a line of its own."""
    from fpfs.mount.launcher import status_text
    s = {"backing": "/b", "pid": 1, "uptime_seconds": 100.0, "bytes_served": 3_000_000_000,
         "reads": 10, "read_errors": 0, "decoder": "avx2",
         "cache": {"used_bytes": 0, "budget_bytes": 1 << 20, "hit_rate": 0.5, "evictions": 0,
                   "decoded_bytes": 2_000_000_000, "decode_seconds": 0.5}}
    lines = {line.split()[0]: line for line in status_text(s).splitlines()}
    assert lines["served"].endswith("0.03 GB/s over the uptime")
    assert "in 0.50 s of decoding: 4.00 GB/s (avx2 rANS decoder)" in lines["decoded"]
    s["cache"]["decode_seconds"] = 0.0
    assert "0.00 GB/s" in status_text(s)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_unmounts_cleanly(tree, originals, tmp_path, sig):
    m = mount(tree["backing"], str(tmp_path / "mnt"))
    try:
        pid = json.loads(cli("status", "--json", m.mountpoint, check=True).stdout)["pid"]
        assert pid == m.pid
        assert read_bytes(m.path(tree["weights"]["MXFP4"])) == originals["MXFP4"]
        os.kill(pid, sig)
        assert wait_until(lambda: not process_alive(pid), 30), "daemon ignored the signal"
        assert not in_mountinfo(m.mountpoint)
        assert not os.path.ismount(m.mountpoint)
    finally:
        notes = force_unmount(m.mountpoint, m.pid)
    assert not notes, notes
    log = m.log()
    assert "Traceback" not in log and "unmounted" in log


# -- 9. a backing file replaced while mounted ------------------------------------------------
def test_replaced_backing_file(tree, originals, tmp_path):
    """os.replace of a .fpz under a live mount: a reopen, at once, gets exactly the new
    file's bytes and size; never cached pages of the old one, never the old size (the kernel
    caches both for a second unless the daemon drops them at open)."""
    backing = tmp_path / "backing"
    backing.mkdir()
    spare = tmp_path / "spare"
    spare.mkdir()
    target = backing / "swap.safetensors.fpz"
    shutil.copyfile(os.path.join(tree["backing"], tree["weights"]["F8_E4M3"] + SUFFIX), target)
    with mounted(str(backing), str(tmp_path / "mnt")) as m:
        path = m.path("swap.safetensors")
        old = originals["F8_E4M3"]
        assert read_bytes(path) == old
        # same size, other bytes (E5M2); larger (BF16); smaller again (E4M3)
        for dtype in ("F8_E5M2", "BF16", "F8_E4M3"):
            with open(path, "rb") as f:                 # fill the page cache, keep an mmap
                drop_page_cache(f.fileno())
                assert f.read() == old
                drop_page_cache(f.fileno())
                os.pread(f.fileno(), 1 << 20, len(old) // 3)   # part cached, part not
                held = open(path, "rb")
            src = os.path.join(tree["src"], tree["weights"][dtype])
            staged = spare / ("staged" + SUFFIX)
            res = cli("compress", src, str(staged), timeout=300)
            assert res.returncode == 0, res.stderr
            os.replace(staged, target)
            want = originals[dtype]
            with open(path, "rb") as f:                 # reopen at once
                got = f.read()
            assert len(got) == len(want), f"{dtype}: the kernel kept the old size"
            assert got == want, f"{dtype}: stale or mixed bytes after the replace"
            assert os.stat(path).st_size == len(want)
            with open(path, "rb") as f:
                rng = np.random.default_rng(3)
                for off, n in random_ranges(rng, len(want), 40):
                    assert os.pread(f.fileno(), n, off) == want[off:off + n], dtype
            held.close()
            old = want
        assert m.status()["read_errors"] == 0


# A child maps a mounted file and, once told to, walks it page by page against what it
# may legitimately see: the file as it was when mapped. It prints how far it got; a page
# the mount cannot serve any more kills it with SIGBUS (the mapping's EIO).
_WALK_MAPPING = """
import mmap, os, sys
path, expected_path = sys.argv[1:3]
expected = open(expected_path, "rb").read()
f = open(path, "rb")
m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
print("mapped", len(m), flush=True)
sys.stdin.readline()
os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)   # nothing stays cached
step = 64 << 10
for off in range(0, len(m), step):
    if m[off:off + step] != expected[off:off + step]:
        print("WRONG", off, flush=True)
        sys.exit(3)
    print("ok", off, flush=True)
print("done", flush=True)
"""


@pytest.mark.parametrize("change", ["truncated", "replaced"])
def test_backing_changed_under_a_mapping(tree, originals, tmp_path, change):
    """A .fpz truncated in place, or replaced by another file, while a loader has the
    mounted file mapped: its pages are the bytes it mapped or SIGBUS (EIO), never other
    bytes; the daemon logs the error and goes on serving."""
    import subprocess
    import sys
    backing = tmp_path / "backing"
    backing.mkdir()
    target = backing / "w.safetensors.fpz"
    shutil.copyfile(os.path.join(tree["backing"], tree["weights"]["BF16"] + SUFFIX), target)
    expected = tmp_path / "expected"
    expected.write_bytes(originals["BF16"])
    with mounted(str(backing), str(tmp_path / "mnt")) as m:
        path = m.path("w.safetensors")
        child = subprocess.Popen([sys.executable, "-c", _WALK_MAPPING, path, str(expected)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().split() == ["mapped", str(len(originals["BF16"]))]
            if change == "truncated":
                os.truncate(target, os.path.getsize(target) // 2)
            else:
                staged = tmp_path / "other.fpz"
                shutil.copyfile(os.path.join(tree["backing"], tree["weights"]["F16"] + SUFFIX),
                                staged)
                os.replace(staged, target)
            child.stdin.write("go\n")
            child.stdin.flush()
            out, _ = child.communicate(timeout=120)
        finally:
            if child.poll() is None:
                child.kill()
        assert "WRONG" not in out, out[-300:]
        if change == "truncated":
            # the first chunks are still there and exact; the lost ones are EIO
            assert child.returncode == -signal.SIGBUS, out[-300:]
            assert out.count("ok") > 0
            assert m.status()["read_errors"] >= 1
            assert "read /w.safetensors" in m.log()
            with pytest.raises(OSError) as exc:         # reopened: the file is damaged
                read_bytes(path)
            assert exc.value.errno == errno.EIO
        else:
            # the open file keeps the version it was opened with; a new open sees the new
            assert child.returncode == 0 and out.endswith("done\n"), out[-300:]
            assert read_bytes(path) == originals["F16"]
        assert os.path.ismount(m.mountpoint) and process_alive(m.pid)
        assert "Traceback" not in m.log()


def test_missing_fuse_pieces_say_what_to_install(tmp_path, monkeypatch):
    """Without /dev/fuse or fusermount3 the mount refuses with a message that names the fix
    (checked in-process: this machine has both)."""
    from fpfs.mount import launcher
    from fpfs.mount.fuse_lib import FuseUnavailable
    backing, mnt = tmp_path / "b", tmp_path / "m"
    backing.mkdir()
    mnt.mkdir()
    real_exists = os.path.exists
    monkeypatch.setattr(launcher.os.path, "exists",
                        lambda p: False if p == "/dev/fuse" else real_exists(p))
    with pytest.raises(FuseUnavailable, match="modprobe fuse"):
        launcher.check_environment(str(backing), str(mnt))
    monkeypatch.setattr(launcher.os.path, "exists", real_exists)
    monkeypatch.setattr(launcher.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(launcher.shutil, "which", lambda name: None)
    with pytest.raises(FuseUnavailable, match="apt-get install fuse3"):
        launcher.check_environment(str(backing), str(mnt))
