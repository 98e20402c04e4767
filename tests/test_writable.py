"""Writes through a real `fpfs mount --writable`: what frameworks do when they save
(safetensors save_file, transformers save_pretrained, the Hugging Face hub's download
pattern), ordinary file operations, and the crash/ENOSPC guarantees. Everything written is
read back through a fresh mount and compared with the original bytes."""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from fpfs.container import is_container
from tests.mounting import cli, mounted, wait_until

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def tensors(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(256, 384, generator=g).to(torch.bfloat16),
            "f": torch.randn(1000, generator=g), "i": torch.arange(77)}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def backing(tmp_path):
    d = tmp_path / "backing"
    d.mkdir()
    return str(d)


def test_save_file_is_stored_compressed(backing, tmp_path):
    t = tensors()
    with mounted(backing, str(tmp_path / "mnt"), "--writable") as m:
        save_file(t, m.path("model.safetensors"))
        assert same(load_file(m.path("model.safetensors")), t)
        assert os.listdir(m.mountpoint) == ["model.safetensors"]
    assert sorted(os.listdir(backing)) == ["model.safetensors.fpz"]
    assert cli("verify", backing).returncode == 0
    size = os.path.getsize(os.path.join(backing, "model.safetensors.fpz"))
    with mounted(backing, str(tmp_path / "mnt2")) as m:          # fresh, read-only
        assert same(load_file(m.path("model.safetensors")), t)
        assert os.path.getsize(m.path("model.safetensors")) > size


def test_save_pretrained_round_trip(backing, tmp_path, model_dir):
    from transformers import AutoModel
    model = AutoModel.from_pretrained(model_dir)
    with mounted(backing, str(tmp_path / "mnt"), "--writable") as m:
        model.save_pretrained(m.path("saved"))
    assert is_container(os.path.join(backing, "saved", "model.safetensors.fpz"))
    with mounted(backing, str(tmp_path / "mnt2")) as m:
        again = AutoModel.from_pretrained(m.path("saved"))      # weights mmap'd: compare
        a, b = model.state_dict(), again.state_dict()          # before unmounting
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        del again, b


def test_hub_download_pattern(backing, tmp_path, model_dir):
    """The hub writes blobs/<sha>.incomplete, renames it to blobs/<sha>, then links
    snapshots/<rev>/<file> -> ../../blobs/<sha>."""
    with open(os.path.join(model_dir, "model.safetensors"), "rb") as f:
        data = f.read()
    sha = hashlib.sha256(data).hexdigest()
    repo = "models--fpfs--writable"
    with mounted(backing, str(tmp_path / "mnt"), "--writable") as m:
        blobs = m.path(repo, "blobs")
        os.makedirs(blobs)
        os.makedirs(m.path(repo, "snapshots", "rev1"))
        os.makedirs(m.path(repo, "refs"))
        with open(os.path.join(blobs, sha + ".incomplete"), "wb") as f:
            for off in range(0, len(data), 1 << 20):          # chunked, like a download
                f.write(data[off:off + (1 << 20)])
        os.replace(os.path.join(blobs, sha + ".incomplete"), os.path.join(blobs, sha))
        os.symlink(f"../../blobs/{sha}", m.path(repo, "snapshots", "rev1", "model.safetensors"))
        with open(m.path(repo, "refs", "main"), "w") as f:
            f.write("rev1")
    assert os.listdir(os.path.join(backing, repo, "blobs")) == [sha + ".fpz"]
    with mounted(backing, str(tmp_path / "mnt2")) as m:
        with open(m.path(repo, "snapshots", "rev1", "model.safetensors"), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == sha


def test_file_operations(backing, tmp_path):
    t = tensors(1)
    with mounted(backing, str(tmp_path / "mnt"), "--writable") as m:
        os.makedirs(m.path("a", "b"))
        save_file(t, m.path("a", "b", "x.safetensors"))
        with open(m.path("a", "notes.txt"), "w") as f:
            f.write("hello")
        with open(m.path("a", "notes.txt"), "a") as f:
            f.write(" world")
        assert open(m.path("a", "notes.txt")).read() == "hello world"
        os.truncate(m.path("a", "notes.txt"), 5)
        assert open(m.path("a", "notes.txt")).read() == "hello"
        os.chmod(m.path("a", "notes.txt"), 0o600)
        assert os.stat(m.path("a", "notes.txt")).st_mode & 0o777 == 0o600
        os.utime(m.path("a", "notes.txt"), ns=(10**18, 10**18))
        assert os.stat(m.path("a", "notes.txt")).st_mtime_ns == 10**18
        os.symlink("b/x.safetensors", m.path("a", "link.safetensors"))
        assert same(load_file(m.path("a", "link.safetensors")), t)
        # rename over an existing file, both compressed
        save_file(tensors(2), m.path("a", "y.safetensors"))
        os.rename(m.path("a", "b", "x.safetensors"), m.path("a", "y.safetensors"))
        assert same(load_file(m.path("a", "y.safetensors")), t)
        assert sorted(os.listdir(os.path.join(backing, "a"))) == \
            ["b", "link.safetensors", "notes.txt", "y.safetensors.fpz"]
        # rewrite part of an existing compressed file in place
        with open(m.path("a", "y.safetensors"), "r+b") as f:
            f.seek(-4, os.SEEK_END)
            f.write(b"\x00\x00\x00\x00")
        with open(m.path("a", "y.safetensors"), "rb") as f:
            assert f.read()[-4:] == b"\x00" * 4
        os.unlink(m.path("a", "y.safetensors"))
        os.unlink(m.path("a", "link.safetensors"))
        os.rmdir(m.path("a", "b"))
        assert sorted(os.listdir(m.path("a"))) == ["notes.txt"]
    assert sorted(os.listdir(os.path.join(backing, "a"))) == ["notes.txt"]


def test_read_only_by_default(backing, tmp_path):
    with mounted(backing, str(tmp_path / "mnt")) as m:
        with pytest.raises(OSError) as exc:
            open(m.path("new.txt"), "w")
        assert exc.value.errno == 30            # EROFS


def test_sigkill_mid_write_keeps_existing_files(backing, tmp_path):
    t = tensors(3)
    mnt = str(tmp_path / "mnt")
    with mounted(backing, mnt, "--writable") as m:
        save_file(t, m.path("keep.safetensors"))
        writer = subprocess.Popen([sys.executable, "-c", (
            "import time\n"
            f"f = open({m.path('big.bin')!r}, 'wb')\n"
            "while True:\n"
            "    f.write(b'x' * 65536); f.flush(); time.sleep(0.001)\n")])
        try:
            assert wait_until(lambda: any(n.startswith(".fpfs-tmp-stage-")
                                          for n in os.listdir(backing)), 20)
            os.kill(m.pid, signal.SIGKILL)
            assert wait_until(lambda: writer.poll() is not None or True, 1)
        finally:
            writer.kill()
            writer.wait(10)
    assert any(n.startswith(".fpfs-tmp-stage-") for n in os.listdir(backing))
    assert cli("verify", backing).returncode == 0
    with mounted(backing, str(tmp_path / "mnt2"), "--writable") as m:
        assert same(load_file(m.path("keep.safetensors")), t)
        assert os.listdir(m.mountpoint) == ["keep.safetensors"]
    assert os.listdir(backing) == ["keep.safetensors.fpz"]        # leftovers cleaned


def test_enospc_reports_error_and_keeps_previous_version(tmp_path):
    backing = tmp_path / "small"
    backing.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(backing)], check=True)
    try:
        old = tensors(4)
        with mounted(str(backing), str(tmp_path / "mnt"), "--writable") as m:
            save_file(old, m.path("m.safetensors"))
            big = {"w": torch.randn(700_000)}                     # 2.8 MB: cannot fit
            with pytest.raises(Exception) as exc:
                save_file(big, m.path("m.safetensors"))
            assert "No space" in str(exc.value) or "os error 28" in str(exc.value)
            assert same(load_file(m.path("m.safetensors")), old)
        with mounted(str(backing), str(tmp_path / "mnt2")) as m:
            assert same(load_file(m.path("m.safetensors")), old)
    finally:
        subprocess.run(["umount", "-l", str(backing)], check=False)
