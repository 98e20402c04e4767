"""`mount -t fuse.fpfs` and fstab lines, for real: mount(8) runs mount.fuse3, which runs
`fpfs BACKING MOUNTPOINT -o OPTIONS` (fpfs/mount/fstab.py) found on mount's own PATH
(/usr/local/bin, /usr/bin, ...); a local tree and an s3:// tree on the test's S3 server
are mounted, read, and unmounted with umount(8). An fstab line is tried through
`mount -T FILE MOUNTPOINT` (util-linux reads that file instead of /etc/fstab)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from fpfs.mount.fstab import FstabError, mount_argv
from tests.mounting import (REPO, cli, compress, force_unmount, in_mountinfo, process_alive,
                            wait_until)
from tests.s3server import BUCKET

# The PATH mount(8) gives its helpers (it does not keep the caller's).
MOUNT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
WRAPPER = "/usr/local/bin/fpfs"


def test_options_map_to_mount_flags():
    argv = ["s3://b/p", "/mnt", "-o", "rw,nodev,nosuid,_netdev,nofail,noauto,user,defaults,"
            "x-systemd.automount,allow_other,cache_size=2G,cache_dir=/var/cache/fpfs,"
            "disk_cache_size=50G,endpoint_url=http://127.0.0.1:8333,metrics=127.0.0.1:9110",
            "-oreadahead=0"]
    assert mount_argv(argv) == [
        "mount", "s3://b/p", "/mnt", "--allow-other", "--cache-size", "2G", "--cache-dir",
        "/var/cache/fpfs", "--disk-cache-size", "50G", "--endpoint-url",
        "http://127.0.0.1:8333", "--metrics", "127.0.0.1:9110", "--readahead", "0"]
    assert mount_argv(["/a", "/m", "-o", "writable"]) == ["mount", "/a", "/m", "--writable"]
    assert mount_argv(["/a", "/m"]) == ["mount", "/a", "/m"]
    for bad in (["/a", "/m", "-o", "frobnicate"], ["/a", "/m", "-o", "cache_size"],
                ["/a", "/m", "-o", "ro,writable"], ["/a", "/m", "-x"], ["/a", "/m", "-o"]):
        with pytest.raises(FstabError):
            mount_argv(bad)
    res = cli("/nonexistent", "/also-not", "-o", "frobnicate")
    assert res.returncode == 2 and "frobnicate" in res.stderr


@pytest.fixture(scope="module")
def fpfs_on_mount_path():
    """An `fpfs` where mount.fuse3 looks: the installed one, else a wrapper for this
    checkout (removed after)."""
    if shutil.which("fpfs", path=MOUNT_PATH):
        yield shutil.which("fpfs", path=MOUNT_PATH)
        return
    with open(WRAPPER, "w") as f:
        f.write(f'#!/bin/sh\nPYTHONPATH="{REPO}${{PYTHONPATH:+:$PYTHONPATH}}" '
                f'exec "{sys.executable}" -m fpfs.cli "$@"\n')
    os.chmod(WRAPPER, 0o755)
    try:
        yield WRAPPER
    finally:
        os.unlink(WRAPPER)


def mount_type(mountpoint: str) -> str:
    real = os.path.realpath(mountpoint)
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if fields[1] == real:
                return fields[2]
    return ""


def run(cmd) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL)
    assert res.returncode == 0, f"{cmd} exited {res.returncode}: {res.stdout} {res.stderr}"
    return res


def check_mounted(mountpoint: str, name: str, original: bytes) -> None:
    pid = None
    try:
        assert mount_type(mountpoint) == "fuse.fpfs"
        pid = cli("status", "--json", mountpoint, check=True).stdout
        pid = int(__import__("json").loads(pid)["pid"])
        with open(os.path.join(mountpoint, name), "rb") as f:
            assert f.read() == original
        with pytest.raises(OSError):
            open(os.path.join(mountpoint, "new"), "wb")          # read-only
        run(["umount", mountpoint])
        assert not in_mountinfo(mountpoint)
        assert wait_until(lambda: not process_alive(pid), 20)
    finally:
        force_unmount(mountpoint, pid)


@pytest.fixture(scope="module")
def model(real_files, tmp_path_factory):
    src = tmp_path_factory.mktemp("fstab-src")
    shutil.copyfile(real_files["BF16"], src / "model.safetensors")
    with open(real_files["BF16"], "rb") as f:
        return str(src), f.read()


def test_mount_t_fuse_fpfs_local_tree(fpfs_on_mount_path, model, tmp_path):
    src, original = model
    backing, mnt = str(tmp_path / "backing"), tmp_path / "mnt"
    compress(src, backing)
    mnt.mkdir()
    run(["mount", "-t", "fuse.fpfs", backing, str(mnt), "-o",
         f"ro,nodev,nosuid,_netdev,nofail,cache_size=64M,log_file={tmp_path / 'log'}"])
    check_mounted(str(mnt), "model.safetensors", original)


def test_fstab_line_for_an_s3_tree(fpfs_on_mount_path, model, s3_env, tmp_path):
    src, original = model
    url = f"s3://{BUCKET}/fstab"
    cli("compress", src, url, check=True, timeout=600)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    fstab = tmp_path / "fstab"
    fstab.write_text(
        f"{url} {mnt} fuse.fpfs _netdev,nofail,noauto,x-systemd.automount,"
        f"endpoint_url={s3_env['AWS_ENDPOINT_URL']},cache_dir={tmp_path / 'cache'},"
        f"disk_cache_size=1G,log_file={tmp_path / 'log'} 0 0\n")
    run(["mount", "-T", str(fstab), str(mnt)])
    check_mounted(str(mnt), "model.safetensors", original)
    assert os.listdir(tmp_path / "cache")                        # the disk cache was used
