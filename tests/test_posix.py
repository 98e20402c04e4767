"""`fpfs mount --writable --allow-other` as a POSIX filesystem (issue 13), through real FUSE
mounts as root: special files, hard links, ownership of new nodes by the caller, chown,
xattrs, times, files being written seen by every other operation, compressed files with
the semantics of the originals, rsync/tar of a tree and a fresh mount showing it again,
an fsx-style model check, bad names and paths, and a kill -9 in the middle of rsync/tar.
Every error expected is the one a local filesystem gives (checked against the local disk
where it matters)."""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from fpfs.container import is_container
from fpfs.mount.ops import FuseOSError
from fpfs.mount.write_ops import FpfsOperations
from tests import st_files
from tests.mounting import cli, force_unmount, mounted, wait_until

NOBODY = 65534
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="POSIX ownership tests run as root")


def safetensors_bytes(seed: int, nbytes: int = 1 << 20) -> bytes:
    """A BF16 + F32 safetensors file of plausible weights (stored compressed by fpfs)."""
    rng = np.random.default_rng(seed)
    return st_files.build([("w", "BF16", st_files.sample_bytes("BF16", nbytes, rng)),
                           ("b", "F32", st_files.sample_bytes("F32", nbytes // 4, rng))])


def errno_of(func, *args) -> int:
    try:
        func(*args)
    except OSError as exc:
        return exc.errno
    return 0


def as_user(uid: int, gid: int, script: str) -> subprocess.CompletedProcess:
    """Run a shell script as another user (the FUSE request then carries that uid/gid)."""
    return subprocess.run(["sh", "-c", script], user=uid, group=gid, extra_groups=[],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def mnt():
    """One writable, allow-other mount for the quick tests (each uses its own directory),
    where other users can reach it (pytest's tmp_path is root's alone)."""
    work = tempfile.mkdtemp(prefix="fpfs-posix-")
    os.chmod(work, 0o755)
    backing = os.path.join(work, "backing")
    os.mkdir(backing)
    try:
        with mounted(backing, os.path.join(work, "mnt"), "--writable", "--allow-other") as m:
            os.chmod(m.mountpoint, 0o755)
            yield m
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def d(mnt, request):
    """A fresh directory in the shared mount: (mount path, backing path)."""
    name = request.node.name.replace("[", "_").replace("]", "")
    path = mnt.path(name)
    os.mkdir(path)
    return path, os.path.join(mnt.backing, name)


# -- 1. operations a local filesystem has --------------------------------------------------
def test_special_files(d):
    path, backing = d
    os.mkfifo(os.path.join(path, "fifo"), 0o640)
    os.mknod(os.path.join(path, "null"), 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(os.path.join(path, "blk"), 0o600 | stat.S_IFBLK, os.makedev(7, 0))
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(os.path.join(path, "sock"))
    modes = {n: os.lstat(os.path.join(path, n)).st_mode for n in ("fifo", "null", "blk", "sock")}
    assert stat.S_ISFIFO(modes["fifo"]) and stat.S_IMODE(modes["fifo"]) == 0o640
    assert stat.S_ISCHR(modes["null"]) and stat.S_ISBLK(modes["blk"])
    assert stat.S_ISSOCK(modes["sock"])
    assert os.lstat(os.path.join(path, "null")).st_rdev == os.makedev(1, 3)
    fifo = os.path.join(path, "fifo")                     # the FIFO itself, not staged
    writer = subprocess.Popen(["sh", "-c", f"echo through > '{fifo}'"])
    with open(fifo, "rb") as f:
        assert f.read() == b"through\n"
    assert writer.wait(10) == 0
    assert errno_of(os.mkfifo, os.path.join(path, "fifo")) == errno.EEXIST
    assert sorted(os.listdir(backing)) == ["blk", "fifo", "null", "sock"]


def test_hard_links_plain_and_compressed(d):
    path, backing = d
    a, b = os.path.join(path, "a.txt"), os.path.join(path, "b.txt")
    with open(a, "w") as f:
        f.write("plain")
    before = os.stat(a).st_ctime_ns
    time.sleep(0.01)
    os.link(a, b)
    sa, sb = os.stat(a), os.stat(b)
    assert sa.st_ino == sb.st_ino and sa.st_nlink == sb.st_nlink == 2
    assert sa.st_ctime_ns > before                       # link changes the source's ctime
    os.chmod(b, 0o600)
    assert stat.S_IMODE(os.stat(a).st_mode) == 0o600     # one inode: no stale attributes
    data = safetensors_bytes(1)
    w, w2 = os.path.join(path, "w.safetensors"), os.path.join(path, "w2.safetensors")
    with open(w, "wb") as f:
        f.write(data)
    os.link(w, w2)
    assert os.stat(w).st_ino == os.stat(w2).st_ino and os.stat(w2).st_nlink == 2
    assert open(w2, "rb").read() == data
    c1, c2 = (os.path.join(backing, n + ".fpz") for n in ("w.safetensors", "w2.safetensors"))
    assert is_container(c1) and os.path.samefile(c1, c2)
    os.unlink(w)
    assert os.stat(w2).st_nlink == 1 and open(w2, "rb").read() == data
    assert errno_of(os.link, w2, b) == errno.EEXIST
    with open(b, "r+") as f:                             # written through one name
        f.write("PL")
    assert open(a).read() == "PLain" and os.stat(a).st_ino == os.stat(b).st_ino
    assert errno_of(os.link, path, os.path.join(path, "dirlink")) == errno.EPERM
    assert errno_of(os.link, os.path.join(path, "missing"), os.path.join(path, "x")) == errno.ENOENT


def test_new_nodes_belong_to_the_caller(d):
    path, _ = d
    os.chmod(path, 0o777)
    res = as_user(NOBODY, NOBODY, f"cd '{path}' && echo x > f && mkdir sub && ln -s f l "
                                   "&& mkfifo p && ln f hard")
    assert res.returncode == 0, res.stderr
    for name in ("f", "sub", "l", "p", "hard"):
        st = os.lstat(os.path.join(path, name))
        assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY), name
    # a setgid directory gives its group to what is made in it, and its bit to subdirs
    sg = os.path.join(path, "sg")
    os.mkdir(sg)
    os.chown(sg, 0, 1234)
    os.chmod(sg, 0o2777)
    assert as_user(NOBODY, NOBODY, f"cd '{sg}' && touch f && mkdir s").returncode == 0
    assert os.stat(os.path.join(sg, "f")).st_gid == 1234
    s = os.stat(os.path.join(sg, "s"))
    assert s.st_gid == 1234 and s.st_mode & stat.S_ISGID and s.st_uid == NOBODY


def test_sticky_directory_and_permissions(d):
    path, _ = d
    os.chmod(path, 0o1777)
    with open(os.path.join(path, "roots"), "w") as f:
        f.write("r")
    os.chmod(os.path.join(path, "roots"), 0o666)
    res = as_user(NOBODY, NOBODY, f"cd '{path}' && touch mine && rm -f mine && rm -f roots")
    assert res.returncode != 0 and "not permitted" in res.stderr      # sticky: EPERM
    assert os.path.exists(os.path.join(path, "roots"))
    os.chmod(os.path.join(path, "roots"), 0o600)
    res = as_user(NOBODY, NOBODY, f"cat '{path}/roots'")
    assert res.returncode != 0 and "Permission denied" in res.stderr
    res = as_user(NOBODY, NOBODY, f"chown {NOBODY} '{path}/roots'")
    assert res.returncode != 0 and "not permitted" in res.stderr


def test_chown_chmod_times(d):
    path, _ = d
    f = os.path.join(path, "f")
    with open(f, "w") as fh:
        fh.write("x")
    link = os.path.join(path, "l")
    os.symlink("f", link)
    os.lchown(link, 1000, 1001)
    assert (os.lstat(link).st_uid, os.lstat(link).st_gid) == (1000, 1001)
    assert os.stat(f).st_uid == 0                       # lchown did not follow
    os.chown(f, NOBODY, -1)
    assert (os.stat(f).st_uid, os.stat(f).st_gid) == (NOBODY, 0)
    os.chmod(f, 0o4755)
    os.chown(f, 1000, 1000)                             # as on a local fs: set-uid dropped
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o755
    ctime = os.stat(f).st_ctime_ns
    time.sleep(0.01)
    os.chmod(f, 0o640)
    assert os.stat(f).st_ctime_ns > ctime
    os.utime(f, ns=(10**18, 2 * 10**18))
    atime = os.stat(f).st_atime_ns
    subprocess.run(["touch", "-m", "-d", "@12345", f], check=True)   # UTIME_OMIT for atime
    assert os.stat(f).st_mtime_ns == 12345 * 10**9 and os.stat(f).st_atime_ns == atime
    subprocess.run(["touch", "-a", f], check=True)                    # UTIME_NOW for atime
    assert abs(os.stat(f).st_atime_ns - time.time_ns()) < 60 * 10**9
    mtime = os.stat(path).st_mtime_ns
    time.sleep(0.01)
    open(os.path.join(path, "new"), "w").close()
    assert os.stat(path).st_mtime_ns > mtime            # a new name changes the directory


def test_xattrs(d):
    path, backing = d
    w = os.path.join(path, "w.safetensors")
    with open(w, "wb") as f:
        f.write(safetensors_bytes(2))
        os.setxattr(w, "user.during", b"write")          # while it is being written
    os.setxattr(w, "user.origin", b"hub")
    assert os.getxattr(w, "user.origin") == b"hub"
    assert sorted(os.listxattr(w)) == ["user.during", "user.origin"]
    with open(w, "r+b") as f:                          # stored again: attributes kept
        f.write(b"\x08")
    assert os.getxattr(w, "user.origin") == b"hub"
    assert os.getxattr(os.path.join(backing, "w.safetensors.fpz"), "user.during") == b"write"
    os.removexattr(w, "user.origin")
    assert errno_of(os.getxattr, w, "user.origin") == errno.ENODATA
    assert errno_of(os.removexattr, w, "user.origin") == errno.ENODATA
    assert errno_of(os.setxattr, w, "user.during", b"x", os.XATTR_CREATE) == errno.EEXIST
    os.symlink("w.safetensors", os.path.join(path, "l"))
    assert os.listxattr(os.path.join(path, "l"), follow_symlinks=False) == []


def test_statfs_access_fallocate(d):
    path, backing = d
    sv, local = os.statvfs(path), os.statvfs(backing)
    assert sv.f_namemax == local.f_namemax == 255 and sv.f_bsize == local.f_bsize
    f = os.path.join(path, "f")
    fd = os.open(f, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        os.posix_fallocate(fd, 0, 1 << 20)
        assert os.fstat(fd).st_size == 1 << 20
    finally:
        os.close(fd)
    assert os.path.getsize(f) == 1 << 20
    assert os.access(f, os.R_OK | os.W_OK)
    assert not os.access(os.path.join(path, "missing"), os.F_OK)


# -- 2. files being written look like files ------------------------------------------------
def test_file_being_written_is_a_file(d):
    path, backing = d
    f, g = os.path.join(path, "f"), os.path.join(path, "g")
    fd = os.open(f, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"hello")
        assert os.stat(f).st_size == 5 and "f" in os.listdir(path)
        assert open(f, "rb").read() == b"hello"          # another descriptor sees it
        os.chmod(f, 0o600)
        os.utime(f, ns=(10**18, 10**18))
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
        os.truncate(f, 3)
        assert os.stat(f).st_size == 3
        os.fsync(fd)                                     # fsync: stored under its name
        assert open(os.path.join(backing, "f"), "rb").read() == b"hel"
        os.link(f, g)
        assert os.stat(g).st_ino == os.stat(f).st_ino
        os.write(fd, b"p!")
    finally:
        os.close(fd)
    assert open(g, "rb").read() == b"hel\0\0p!" == open(f, "rb").read()   # a hole, as POSIX
    assert os.stat(f).st_mtime_ns != 10**18              # written after the utime


def test_unlink_and_rename_while_written(d):
    path, backing = d
    a, b = os.path.join(path, "a"), os.path.join(path, "b")
    with open(b, "w") as fh:
        fh.write("old b")
    fd = os.open(a, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"new a")
        os.rename(a, b)                                   # rename while written, onto b
        assert open(b, "rb").read() == b"new a" and not os.path.exists(a)
        os.write(fd, b" more")
        os.unlink(b)                                      # unlink while open
        assert os.fstat(fd).st_nlink == 0
        os.write(fd, b"!")
        os.fchmod(fd, 0o600)
        assert os.pread(fd, 100, 0) == b"new a more!"
    finally:
        os.close(fd)
    assert os.listdir(path) == []
    assert wait_until(lambda: os.listdir(backing) == [], 5)
    # a directory whose file was written, closed and removed, or removed while open
    sub = os.path.join(path, "sub")
    for keep_open in (False, True):
        os.mkdir(sub)
        fd = os.open(os.path.join(sub, "x"), os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, b"data")
        if not keep_open:
            os.close(fd)
        os.unlink(os.path.join(sub, "x"))
        os.rmdir(sub)
        if keep_open:
            os.write(fd, b"still")
            os.close(fd)
    assert not os.path.exists(sub)


def test_rename_onto_file_being_written(d):
    path, _ = d
    a, b = os.path.join(path, "a"), os.path.join(path, "b")
    with open(a, "w") as fh:
        fh.write("A")
    fd = os.open(b, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"being written")
        os.rename(a, b)                                   # b's writer is orphaned
        os.write(fd, b" more")
    finally:
        os.close(fd)
    assert open(b).read() == "A" and os.listdir(path) == ["b"]


# -- 3. compressed files keep the semantics of the originals ------------------------------
def test_compressed_rename_and_read_modify_write(d):
    path, backing = d
    one, two = safetensors_bytes(3), safetensors_bytes(4)
    x, y, z = (os.path.join(path, n) for n in ("x.safetensors", "y.safetensors", "z.txt"))
    for name, data in ((x, one), (y, two)):
        with open(name, "wb") as f:
            f.write(data)
    with open(z, "w") as f:
        f.write("plain")
    fd = os.open(y, os.O_RDONLY)                          # a reader of the old y
    try:
        os.rename(x, y)
        assert open(y, "rb").read() == one
        assert os.pread(fd, 64, 0) == two[:64]            # keeps reading what it opened
    finally:
        os.close(fd)
    assert sorted(os.listdir(backing)) == ["y.safetensors.fpz", "z.txt"]
    os.rename(z, y)                                       # plain onto compressed
    assert open(y).read() == "plain" and sorted(os.listdir(backing)) == ["y.safetensors"]
    os.rename(y, x)
    with open(x, "wb") as f:
        f.write(one)
    with open(x, "r+b") as f:                             # read-modify-write
        assert f.read() == one
        f.seek(1000)
        f.write(b"\xff" * 10)
        f.seek(0)
        expect = one[:1000] + b"\xff" * 10 + one[1010:]
        assert f.read() == expect
    assert open(x, "rb").read() == expect
    assert is_container(os.path.join(backing, "x.safetensors.fpz"))
    assert cli("verify", os.path.join(backing, "x.safetensors.fpz")).returncode == 0


def test_rename_errors_like_a_local_fs(d, tmp_path):
    path, _ = d
    for root in (path, str(tmp_path)):                   # the mount, then the local disk
        j = lambda *p: os.path.join(root, *p)            # noqa: E731
        os.makedirs(j("dir", "child"))
        os.makedirs(j("full", "x"))
        with open(j("file"), "wb") as f:
            f.write(safetensors_bytes(5, 1 << 16))
        got = [errno_of(os.rename, j("dir"), j("dir", "child", "in")),
               errno_of(os.rename, j("file"), j("dir")),
               errno_of(os.rename, j("dir"), j("file")),
               errno_of(os.rename, j("dir"), j("full")),
               errno_of(os.rename, j("missing"), j("x")),
               errno_of(os.rmdir, j("full")),
               errno_of(os.unlink, j("dir")),
               errno_of(os.mkdir, j("file")),
               errno_of(os.rename, j("file"), j("file"))]
        if root == path:
            on_mount = got
    assert on_mount == got == [errno.EINVAL, errno.EISDIR, errno.ENOTDIR, errno.ENOTEMPTY,
                               errno.ENOENT, errno.ENOTEMPTY, errno.EISDIR, errno.EEXIST, 0]


# -- bad input -----------------------------------------------------------------------------
def test_bad_names_and_long_paths(d, tmp_path):
    path, backing = d
    odd = os.path.join(path, "new\nline\tand spaces")
    with open(odd, "w") as f:
        f.write("odd")
    assert "new\nline\tand spaces" in os.listdir(path) and open(odd).read() == "odd"
    long_name = os.path.join(path, "n" * 255)
    with open(long_name, "wb") as f:                      # no room for .fpz: kept plain
        f.write(safetensors_bytes(6, 1 << 16))
    assert os.path.getsize(long_name) == len(safetensors_bytes(6, 1 << 16))
    for target in (path, str(tmp_path)):
        too_long = os.path.join(target, "n" * 256)
        assert errno_of(open, too_long, "w") == errno.ENAMETOOLONG
        assert errno_of(os.stat, too_long) == errno.ENAMETOOLONG
        assert errno_of(os.mkdir, too_long) == errno.ENAMETOOLONG
    # deep paths up to where the backing path still fits PATH_MAX, then past PATH_MAX
    deep, parts = path, 0
    while len(os.fsencode(deep)) + len(os.fsencode(backing)) - len(os.fsencode(path)) < 3800:
        deep = os.path.join(deep, "d" * 200)
        os.mkdir(deep)
        parts += 1
    with open(os.path.join(deep, "f"), "w") as f:
        f.write("deep")
    assert open(os.path.join(deep, "f")).read() == "deep"
    past = os.path.join(deep, *["e" * 200] * 2)
    assert errno_of(os.makedirs, past) == errno.ENAMETOOLONG
    shutil.rmtree(os.path.join(path, "d" * 200))


def test_paths_never_escape_the_backing_root(tmp_path):
    """Operations called directly with paths no kernel sends (.., a symlink swapped in
    behind the mount's back) stop at the backing root."""
    backing = tmp_path / "b"
    outside = tmp_path / "outside"
    backing.mkdir()
    outside.mkdir()
    (outside / "secret").write_text("s")
    os.symlink(str(outside), backing / "evil")
    ops = FpfsOperations(str(backing), 1 << 20, 1, writable=True)
    calls = [lambda p: ops.getattr(p), lambda p: ops.unlink(p), lambda p: ops.mkdir(p, 0o755),
             lambda p: ops.chmod(p, 0o777), lambda p: ops.chown(p, 0, 0),
             lambda p: ops.truncate(p, 0), lambda p: ops.rename(p, "/x"),
             lambda p: ops.link("/x", p), lambda p: ops.symlink(p, "/etc"),
             lambda p: ops.mknod(p, stat.S_IFIFO | 0o644, 0),
             lambda p: ops.setxattr(p, "user.a", b"1", 0), lambda p: ops.utimens(p, None),
             lambda p: ops.readdir(p, None), lambda p: ops.readlink(p)]
    try:
        for path in ("/evil/secret", "/../outside/secret", "/evil/new"):
            for call in calls:
                with pytest.raises(FuseOSError) as exc:
                    call(path)
                assert exc.value.errno in (errno.EACCES, errno.ENOENT, errno.EINVAL)
    finally:
        ops.destroy("/")
    assert sorted(os.listdir(outside)) == ["secret"]
    assert (outside / "secret").read_text() == "s" and (outside / "secret").stat().st_uid == 0


def test_file_removed_by_another_process(d):
    path, backing = d
    f = os.path.join(path, "f")
    with open(f, "w") as fh:
        fh.write("content")
    reader = open(f, "rb")
    fd = os.open(os.path.join(path, "w"), os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.unlink(os.path.join(backing, "f"))             # behind the mount's back
        assert reader.read() == b"content"
        assert errno_of(os.unlink, f) == errno.ENOENT
        assert errno_of(os.chmod, f, 0o600) == errno.ENOENT
        assert errno_of(os.rename, f, os.path.join(path, "g")) == errno.ENOENT
        os.write(fd, b"x")
        os.rmdir(backing) if not os.listdir(backing) else None
    finally:
        reader.close()
        with contextlib.suppress(OSError):
            os.close(fd)
    assert os.path.isdir(os.path.dirname(path))          # the mount still answers


# -- 5. real tools: rsync -aHAX and tar -x, then a fresh mount --------------------------
def make_tree(root: str) -> None:
    """Hard links, symlinks, FIFOs, several owners, modes and mtimes, safetensors."""
    os.makedirs(os.path.join(root, "models", "a"))
    os.makedirs(os.path.join(root, "etc"))
    files = {"models/a/model.safetensors": safetensors_bytes(7),
             "models/a/config.json": b'{"hidden": 384}\n',
             "models/b.safetensors": safetensors_bytes(8, 1 << 18),
             "etc/secret": b"only root\n", "etc/nobody.txt": b"nobody's\n",
             "etc/empty": b"", "run.sh": b"#!/bin/sh\necho hi\n"}
    for rel, data in files.items():
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
    os.link(os.path.join(root, "models/a/model.safetensors"),
            os.path.join(root, "models/hardlinked.safetensors"))
    os.link(os.path.join(root, "run.sh"), os.path.join(root, "etc/run-link"))
    os.symlink("a/model.safetensors", os.path.join(root, "models/latest"))
    os.symlink("/nonexistent/target", os.path.join(root, "dangling"))
    os.mkfifo(os.path.join(root, "etc/fifo"), 0o620)
    os.setxattr(os.path.join(root, "models/a/config.json"), "user.origin", b"hub")
    owners = {"etc/nobody.txt": (NOBODY, NOBODY), "etc/fifo": (1000, 1000),
              "models/b.safetensors": (NOBODY, 100), "etc": (1000, 1001),
              "dangling": (NOBODY, NOBODY)}
    for rel, (uid, gid) in owners.items():
        os.lchown(os.path.join(root, rel), uid, gid)
    modes = {"etc/secret": 0o600, "run.sh": 0o4755, "models/a": 0o750, "etc/empty": 0o444}
    for rel, mode in modes.items():
        os.chmod(os.path.join(root, rel), mode)
    t = 1_600_000_000
    for i, (dirpath, dirs, names) in enumerate(sorted(os.walk(root, topdown=False))):
        for j, name in enumerate(sorted(names + dirs)):
            os.utime(os.path.join(dirpath, name), (t + i, t + 100 * i + j), follow_symlinks=False)
    os.utime(root, (t, t))


def listing(root: str) -> list:
    """find -printf of owner, group, mode, links, size (not of directories: the backing
    directory's size is the backing filesystem's), mtime, path; plus contents/xattrs."""
    out = subprocess.run(["find", ".", "-printf", "%u %g %m %n %y %s %T@ %p\n"], cwd=root,
                         capture_output=True, text=True, check=True).stdout
    lines = []
    for line in sorted(out.splitlines()):
        u, g, m, n, y, s, t, p = line.split(" ", 7)
        lines.append(" ".join((u, g, m, n, y, s if y != "d" else "-", t, p)))
        full = os.path.join(root, p)
        if y == "f":
            with open(full, "rb") as f:
                lines.append(f"  sha {hash(f.read())} xattrs "
                             f"{sorted((k, os.getxattr(full, k)) for k in os.listxattr(full))}")
        elif y == "l":
            lines.append("  -> " + os.readlink(full))
    return lines


def test_rsync_and_tar_into_the_mount(tmp_path):
    src = str(tmp_path / "src")
    make_tree(src)
    expected = listing(src)
    backing = tmp_path / "backing"
    backing.mkdir()
    with mounted(str(backing), str(tmp_path / "mnt"), "--writable", "--allow-other") as m:
        os.mkdir(m.path("rsync"))
        os.mkdir(m.path("tar"))
        res = subprocess.run(["rsync", "-aHAX", src + "/", m.path("rsync") + "/"],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        tar = subprocess.Popen(["tar", "-C", src, "--xattrs", "-cf", "-", "."],
                               stdout=subprocess.PIPE)
        res = subprocess.run(["tar", "-C", m.path("tar"), "--xattrs", "--xattrs-include=user.*",
                              "-xpf", "-"], stdin=tar.stdout, capture_output=True, text=True,
                             timeout=120)
        tar.wait(60)
        assert res.returncode == 0, res.stderr
        assert listing(m.path("rsync")) == expected
    for tree in ("rsync", "tar"):
        for rel in ("models/a/model.safetensors", "models/b.safetensors"):
            assert is_container(os.path.join(backing, tree, rel + ".fpz"))
    assert cli("verify", str(backing)).returncode == 0
    with mounted(str(backing), str(tmp_path / "mnt2"), "--writable", "--allow-other") as m:
        assert listing(m.path("rsync")) == expected
        assert listing(m.path("tar")) == expected


# -- fsx: random writes, truncates and reads against a model -------------------------------
class FileModel(RuleBasedStateMachine):
    """One file opened read-write through the mount, checked against the bytes it must
    hold; reopening it stores it (compressed again, for the safetensors file)."""
    mount_dir = ""
    initial = b""
    name = "f"

    @initialize()
    def open_file(self):
        self.path = os.path.join(self.mount_dir, self.name)
        with open(self.path, "wb") as f:
            f.write(self.initial)
        self.model = bytearray(self.initial)
        self.fd = os.open(self.path, os.O_RDWR)
        self.reopens = 0

    def teardown(self):
        if getattr(self, "fd", None) is not None:
            os.close(self.fd)
            self.fd = None

    @rule(offset=st.integers(0, 1 << 20), data=st.binary(min_size=1, max_size=5000))
    def write(self, offset, data):
        offset = min(offset, len(self.model) + 4096)
        assert os.pwrite(self.fd, data, offset) == len(data)
        if offset > len(self.model):
            self.model.extend(bytes(offset - len(self.model)))
        self.model[offset:offset + len(data)] = data

    @rule(length=st.integers(0, 1 << 20), by_path=st.booleans())
    def truncate(self, length, by_path):
        length = min(length, len(self.model) + 8192)
        if by_path:
            os.truncate(self.path, length)
        else:
            os.ftruncate(self.fd, length)
        del self.model[length:]
        self.model.extend(bytes(length - len(self.model)))

    @rule(offset=st.integers(0, 1 << 20), size=st.integers(1, 70000))
    def read(self, offset, size):
        offset = min(offset, len(self.model) + 10)
        assert os.pread(self.fd, size, offset) == bytes(self.model[offset:offset + size])

    @precondition(lambda self: self.reopens < 3)
    @rule()
    def reopen(self):
        os.close(self.fd)
        self.fd = None
        self.reopens += 1
        with open(self.path, "rb") as f:                  # another reader, after storing
            assert f.read() == bytes(self.model)
        self.fd = os.open(self.path, os.O_RDWR)

    @invariant()
    def size_matches(self):
        if getattr(self, "fd", None) is not None:
            assert os.fstat(self.fd).st_size == len(self.model)
            assert os.stat(self.path).st_size == len(self.model)


@pytest.mark.parametrize("kind", ["plain", "safetensors"])
def test_fsx_against_a_model(mnt, kind):
    directory = mnt.path("fsx-" + kind)
    os.mkdir(directory)
    initial = safetensors_bytes(9, 1 << 18) if kind == "safetensors" else b"seed" * 1000

    class Machine(FileModel):
        mount_dir = directory

    Machine.initial = initial
    Machine.name = "w.safetensors" if kind == "safetensors" else "f.bin"
    Machine.TestCase.settings = settings(
        max_examples=25, stateful_step_count=100, deadline=None, derandomize=True,
        suppress_health_check=list(HealthCheck))
    Machine.TestCase().runTest()


# -- 4. crash safety: kill -9 of the daemon in the middle of rsync / tar --------------------
def versions_tree(root: str, version: int) -> dict:
    """rel path -> content of a tree of mixed files; version changes every content."""
    os.makedirs(os.path.join(root, "sub"), exist_ok=True)
    files = {}
    for i in range(24):
        rel = f"sub/w{i}.safetensors" if i % 3 == 0 else f"f{i}.bin"
        data = safetensors_bytes(100 * version + i, 1 << 17) if i % 3 == 0 else \
            bytes([version, i]) * (40000 + 1000 * i)
        files[rel] = data
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
        os.utime(os.path.join(root, rel), (1_600_000_000 + version,) * 2)   # rsync: changed
    return files


@pytest.mark.parametrize("tool", ["rsync", "tar"])
def test_kill9_mid_copy_leaves_only_whole_files(tmp_path, tool):
    backing = tmp_path / "backing"
    backing.mkdir()
    old = versions_tree(str(tmp_path / "v1"), 1)
    new = versions_tree(str(tmp_path / "v2"), 2)
    mnt = str(tmp_path / "mnt")
    with mounted(str(backing), mnt, "--writable") as m:
        subprocess.run(["rsync", "-a", str(tmp_path / "v1") + "/", m.path("t") + "/"],
                       check=True, timeout=120)
        if tool == "rsync":
            cmd = f"rsync -a --bwlimit=4000 '{tmp_path}/v2/' '{m.path('t')}/'"
        else:
            cmd = f"tar -C '{tmp_path}/v2' -cf - . | pv -q -L 4m 2>/dev/null | " \
                  f"tar -C '{m.path('t')}' -xf - || true"
            if not shutil.which("pv"):
                cmd = f"tar -C '{tmp_path}/v2' -cf - . | tar -C '{m.path('t')}' -xf -"
        proc = subprocess.Popen(["sh", "-c", cmd], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            def copying() -> bool:   # a few new versions stored, more to come
                stored = [e for e in os.scandir(backing / "t" / "sub")
                          if e.stat().st_mtime == 1_600_000_002]
                return len(stored) >= 2 or proc.poll() is not None
            wait_until(copying, 30, 0.002)
            os.kill(m.pid, signal.SIGKILL)
        finally:
            proc.wait(60)
    force_unmount(mnt, None)
    assert cli("verify", str(backing)).returncode == 0
    with mounted(str(backing), str(tmp_path / "mnt2"), "--writable") as m:
        for rel in new:
            path = m.path("t", rel)
            if os.path.exists(path):
                with open(path, "rb") as f:
                    assert f.read() in (old[rel], new[rel]), rel
            else:
                assert tool == "tar", rel      # tar unlinks before it extracts
        names = {os.path.relpath(os.path.join(dp, n), m.path("t"))
                 for dp, _, ns in os.walk(m.path("t")) for n in ns}
        assert {n for n in names if not os.path.basename(n).startswith(".")} <= set(new)
    assert not [n for n in os.listdir(backing) if n.startswith(".fpfs-tmp-")]
