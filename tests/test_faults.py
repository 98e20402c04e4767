"""Faults and access, for real: kill -9 during `fpfs compress --in-place` (the CLI in a
subprocess, on the real MiniLM weights), what the mount shows of the leftovers, who may read
a mount (with and without --allow-other), and that paths and symlinks never lead the daemon
outside the backing root. (Corrupt chunks, ENOSPC, unmount under load and replaced backing
files are in test_mount.py / test_cli.py.) Mount tests fail, never skip, without FUSE."""
from __future__ import annotations

import errno
import hashlib
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

import pytest

from fpfs.compress import verify_file
from fpfs.container import Container
from fpfs.errors import FpfsError
from tests.mounting import REPO, cli, compress, mounted

SUFFIX = ".fpz"
KILL_DTYPES = ("F32", "BF16", "F16", "F8_E4M3")
OTHER_UID = 65534                    # nobody: a second, unprivileged user that exists here


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -- kill -9 during compress --in-place -----------------------------------------------------
@pytest.fixture(scope="module")
def weights_tree(tmp_path_factory, real_files):
    """A tree of real weights in four dtypes (~200 MB) plus a non-safetensors file, and the
    SHA-256 of each original."""
    d = tmp_path_factory.mktemp("kill-src")
    for name in KILL_DTYPES:
        sub = d / name.lower()
        sub.mkdir()
        shutil.copyfile(real_files[name], sub / "model.safetensors")
    (d / "config.json").write_text('{"model_type": "bert"}')
    hashes = {os.path.relpath(os.path.join(r, f), d): sha256(os.path.join(r, f))
              for r, _, fs in os.walk(d) for f in fs}
    return str(d), hashes


def run_compress_in_place(tree: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "fpfs.cli", "compress", "--in-place", tree],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=env, start_new_session=True)


def check_nothing_lost(tree: str, hashes: dict) -> dict:
    """For every original: intact, or a .fpz in place that verifies and decodes to the
    original's SHA-256 (or both). Returns what was found."""
    found = {"original": 0, "fpz": 0, "both": 0, "tmp": []}
    for rel, digest in hashes.items():
        path = os.path.join(tree, rel)
        has_orig = os.path.exists(path)
        has_fpz = os.path.exists(path + SUFFIX)
        assert has_orig or has_fpz, f"{rel}: neither the original nor a .fpz survived"
        if has_orig:
            assert sha256(path) == digest, f"{rel}: original damaged"
        if has_fpz:
            try:
                verify_file(path + SUFFIX)
            except FpfsError as exc:
                raise AssertionError(f"{rel}{SUFFIX} is in place but does not verify: {exc}")
            with Container(path + SUFFIX) as c:
                assert c.sha256.hex() == digest, f"{rel}{SUFFIX} verifies but holds another file"
        found["both" if has_orig and has_fpz else "fpz" if has_fpz else "original"] += 1
    for r, _, fs in os.walk(tree):
        found["tmp"] += [os.path.join(r, f) for f in fs if f.startswith(".fpfs-tmp-")]
    return found


def test_kill_9_during_compress_in_place(weights_tree, tmp_path):
    """SIGKILL the whole `fpfs compress --in-place` process group at several random moments
    (seeded): nothing is ever lost, no .fpz in place is corrupt, and running the command again
    completes the job and removes the temporary files the killed run left (their flock is
    free once the writer is dead)."""
    src, hashes = weights_tree
    # how long an uninterrupted run takes here, to spread the kills over it
    full = str(tmp_path / "full")
    shutil.copytree(src, full)
    t0 = time.monotonic()
    proc = run_compress_in_place(full)
    assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()
    duration = time.monotonic() - t0
    assert check_nothing_lost(full, hashes)["fpz"] == 4
    rnd = random.Random(6)
    delays = sorted([rnd.uniform(0.05, 1.0) * duration for _ in range(5)] + [0.35 * duration])
    summary = []
    for k, delay in enumerate(delays):
        tree = str(tmp_path / f"kill{k}")
        shutil.copytree(src, tree)
        proc = run_compress_in_place(tree)
        time.sleep(delay)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stderr.close()
        found = check_nothing_lost(tree, hashes)
        summary.append((round(delay, 2), proc.returncode, found["original"], found["fpz"],
                        found["both"], len(found["tmp"])))
        # a second run finishes the job from whatever state the kill left; when the first
        # run had already replaced every original (the kill came too late), there is nothing
        # left and the CLI says so as a user error (test_cli.py::test_in_place)
        proc = run_compress_in_place(tree)
        rc, err = proc.wait(timeout=600), proc.stderr.read().decode()
        proc.stderr.close()
        if found["fpz"] == 4 and found["both"] == 0:
            assert rc == 2 and "no files to compress" in err, (rc, err)
        else:
            assert rc == 0, err
        after = check_nothing_lost(tree, hashes)
        assert after["fpz"] == 4 and after["original"] == 1        # config.json stays
        assert after["tmp"] == []                                   # leftovers cleaned
        shutil.rmtree(tree)
    print("delay s, rc, originals, fpz, both, tmp files:", summary)
    assert any(s[1] == -signal.SIGKILL for s in summary), "no run was actually killed"


def test_mount_hides_leftovers(weights_tree, tmp_path):
    """After a kill: leftover temporary files and a pair original + .fpz. The mount lists
    neither the .fpfs-tmp-* file nor a duplicate name, and serves the original bytes."""
    src, hashes = weights_tree
    backing = str(tmp_path / "backing")
    compress(src, backing)
    d = os.path.join(backing, "bf16")
    with open(os.path.join(d, ".fpfs-tmp-abc123"), "wb") as f:    # what a kill leaves
        f.write(open(os.path.join(d, "model.safetensors.fpz"), "rb").read()[:100000])
    shutil.copyfile(os.path.join(src, "f16", "model.safetensors"),
                    os.path.join(backing, "f16", "model.safetensors"))   # killed before unlink
    with mounted(backing, str(tmp_path / "mnt")) as m:
        assert sorted(os.listdir(m.path("bf16"))) == ["model.safetensors"]
        # original and container both present: the original passes through under its own
        # name (same bytes) and the container is visible as itself, not a duplicate name
        assert sorted(os.listdir(m.path("f16"))) == ["model.safetensors",
                                                     "model.safetensors.fpz"]
        for rel, digest in hashes.items():
            assert sha256(m.path(rel)) == digest
        # a leftover is hidden from listings only; opened by name it passes through as is
        assert os.path.getsize(m.path("bf16", ".fpfs-tmp-abc123")) == 100000


# -- access --------------------------------------------------------------------------------
def as_other_user(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", f"--reuid={OTHER_UID}", f"--regid={OTHER_UID}",
                           "--clear-groups", *argv], capture_output=True, text=True, timeout=60)


@pytest.fixture
def public_dir():
    """A directory every user can traverse (pytest's tmp dirs are private to root)."""
    assert os.geteuid() == 0, "the access tests run as root (they switch to uid 65534)"
    d = tempfile.mkdtemp(prefix="fpfs-access-", dir="/tmp")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def access_backing(public_dir, real_files):
    src = os.path.join(public_dir, "src")
    os.mkdir(src)
    shutil.copyfile(real_files["BF16"], os.path.join(src, "public.safetensors"))
    shutil.copyfile(real_files["F8_E4M3"], os.path.join(src, "secret.safetensors"))
    with open(os.path.join(src, "notes.txt"), "w") as f:
        f.write("secret notes\n")
    os.chmod(os.path.join(src, "public.safetensors"), 0o644)
    os.chmod(os.path.join(src, "secret.safetensors"), 0o600)
    os.chmod(os.path.join(src, "notes.txt"), 0o600)
    backing = os.path.join(public_dir, "backing")
    compress(src, backing)
    os.chmod(backing, 0o755)
    return src, backing


def test_mount_is_private_without_allow_other(public_dir, access_backing):
    src, backing = access_backing
    with mounted(backing, os.path.join(public_dir, "mnt")) as m:
        assert sha256(m.path("public.safetensors")) == sha256(os.path.join(src, "public.safetensors"))
        for target in (m.mountpoint, m.path("public.safetensors")):
            res = as_other_user("stat", target)
            assert res.returncode != 0 and "Permission denied" in res.stderr, res
        res = as_other_user("sha256sum", m.path("public.safetensors"))
        assert res.returncode != 0 and "Permission denied" in res.stderr, res
        res = as_other_user("ls", m.mountpoint)
        assert res.returncode != 0 and "Permission denied" in res.stderr, res


def test_allow_other_respects_file_modes(public_dir, access_backing):
    src, backing = access_backing
    with mounted(backing, os.path.join(public_dir, "mnt"), "--allow-other") as m:
        res = as_other_user("sha256sum", m.path("public.safetensors"))
        assert res.returncode == 0, res
        assert res.stdout.split()[0] == sha256(os.path.join(src, "public.safetensors"))
        for name in ("secret.safetensors", "notes.txt"):
            res = as_other_user("sha256sum", m.path(name))
            assert res.returncode != 0 and "Permission denied" in res.stderr, res
            assert stat.S_IMODE(os.stat(m.path(name)).st_mode) & 0o077 == 0
        res = as_other_user("ls", m.mountpoint)
        assert res.returncode == 0 and "secret.safetensors" in res.stdout, res
        # writing is refused to everybody (read-only mount)
        res = as_other_user("sh", "-c", f"echo x >> {m.path('public.safetensors')}")
        assert res.returncode != 0


# -- paths and symlinks ----------------------------------------------------------------------
@pytest.fixture
def link_backing(tmp_path, real_files):
    """A backing tree with links pointing outside it: absolute to a file and to a directory,
    relative escaping with .., and a legitimate relative link inside."""
    src = tmp_path / "src"
    (src / "inside").mkdir(parents=True)
    shutil.copyfile(real_files["F16"], src / "inside" / "model.safetensors")
    backing = str(tmp_path / "backing")
    compress(str(src), backing)
    os.symlink("/etc/passwd", os.path.join(backing, "passwd"))
    os.symlink("/etc", os.path.join(backing, "etc"))
    os.symlink("../../../../../../../../etc", os.path.join(backing, "up"))
    os.symlink("inside/model.safetensors", os.path.join(backing, "model.safetensors"))
    return str(src), backing


def test_symlinks_are_shown_as_links(tmp_path, link_backing):
    src, backing = link_backing
    with mounted(backing, str(tmp_path / "mnt")) as m:
        for name in ("passwd", "etc", "up", "model.safetensors"):
            assert stat.S_ISLNK(os.lstat(m.path(name)).st_mode), name
            assert os.readlink(m.path(name)) == os.readlink(os.path.join(backing, name))
        # a link inside the tree is followed by the kernel, back into the mount
        assert sha256(m.path("model.safetensors")) == \
            sha256(os.path.join(src, "inside", "model.safetensors"))
        # links leaving the tree are followed by the *kernel on the client side*, like any
        # symlink: the reader sees its own /etc, which is not served by the daemon
        assert os.path.realpath(m.path("etc")) == "/etc"
        with open(m.path("passwd"), "rb") as f, open("/etc/passwd", "rb") as g:
            assert f.read() == g.read()


def test_daemon_never_leaves_the_backing_root(tmp_path, link_backing):
    """The FUSE operations themselves, called with paths the kernel would never send (it
    resolves links and '..' first) - a buggy or hostile client must still not get the daemon
    to stat, list, read or readlink anything outside the root."""
    from fpfs.mount.ops import FuseOSError
    from fpfs.mount.write_ops import FpfsOperations

    class FI:
        flags = os.O_RDONLY
        fh = 0
        direct_io = keep_cache = 0

    _, backing = link_backing
    ops = FpfsOperations(backing, 1 << 24, 1)
    try:
        for path in ("/etc/passwd", "/etc/hostname", "/up/passwd", "/../../../etc/passwd",
                     "/inside/../../etc/passwd", "/etc/", "/up/"):
            for call in (lambda p: ops.getattr(p), lambda p: ops.readdir(p, 0),
                         lambda p: ops.readlink(p), lambda p: ops.open(p, FI()),
                         lambda p: ops.access(p, os.R_OK)):
                with pytest.raises((FuseOSError, OSError)) as info:
                    call(path)
                assert info.value.errno in (errno.EACCES, errno.ENOENT, errno.ENOTDIR,
                                            errno.ELOOP, errno.EINVAL), (path, info.value)
        # opening the link itself never opens its target (O_NOFOLLOW)
        with pytest.raises(OSError) as info:
            ops.open("/passwd", FI())
        assert info.value.errno == errno.ELOOP
        assert stat.S_ISLNK(ops.getattr("/passwd")["st_mode"])
        assert ops.readlink("/passwd") == "/etc/passwd"
    finally:
        ops.destroy("/")
