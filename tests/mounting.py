"""Real mounts for tests, through the real command line (`python -m fpfs.cli ...` in a
subprocess). Every call has a timeout, and `mounted(...)` always unmounts in `finally`
(fpfs umount, then `fusermount3 -uz`, then `umount -l`) and makes sure the daemon is gone,
so a failing test never leaves a stuck mount or a hanging run.

A mount that cannot be made is a test failure, never a skip: CI must notice a missing FUSE."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Iterator, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI_TIMEOUT = 120        # seconds for any one CLI call (mount waits up to 60 s for ready)
UNMOUNT_TIMEOUT = 30


def cli(*args: str, timeout: float = CLI_TIMEOUT, check: bool = False,
        env: Optional[dict] = None) -> subprocess.CompletedProcess:
    """Run `python -m fpfs.cli ARGS` and capture its output (text)."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = REPO + os.pathsep + full_env.get("PYTHONPATH", "")
    if env:
        full_env.update(env)
    res = subprocess.run([sys.executable, "-m", "fpfs.cli", *args], capture_output=True,
                         text=True, timeout=timeout, stdin=subprocess.DEVNULL, env=full_env)
    if check and res.returncode != 0:
        raise AssertionError(f"fpfs {' '.join(args)} exited {res.returncode}:\n"
                             f"stdout: {res.stdout}\nstderr: {res.stderr}")
    return res


def compress(src: str, dst: str) -> None:
    cli("compress", src, dst, timeout=600, check=True)


def in_mountinfo(path: str) -> bool:
    """Whether path is a mount point in this namespace, per /proc/self/mountinfo. Unlike
    os.path.ismount this also sees a dead FUSE mount (stat fails with ENOTCONN there)."""
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            mp = fields[4].replace("\\040", " ").replace("\\011", "\t") \
                .replace("\\012", "\n").replace("\\134", "\\")
            if mp == real:
                return True
    return False


def process_alive(pid: int) -> bool:
    """True while pid runs (a zombie counts as exited: the daemon is not our child)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@dataclass
class Mount:
    backing: str
    mountpoint: str
    pid: int
    log_file: str

    def path(self, *parts: str) -> str:
        return os.path.join(self.mountpoint, *parts)

    def status(self) -> dict:
        res = cli("status", "--json", self.mountpoint, timeout=30, check=True)
        return json.loads(res.stdout)

    def log(self) -> str:
        try:
            with open(self.log_file, errors="replace") as f:
                return f.read()
        except OSError:
            return ""


def force_unmount(mountpoint: str, pid: Optional[int]) -> List[str]:
    """Get rid of the mount and the daemon whatever state they are in; returns what had to
    be done beyond a plain `fpfs umount` (empty list = the clean path worked)."""
    notes: List[str] = []
    if in_mountinfo(mountpoint):
        try:
            res = cli("umount", mountpoint, timeout=UNMOUNT_TIMEOUT)
            if res.returncode != 0:
                notes.append(f"fpfs umount exited {res.returncode}: {res.stderr.strip()}")
        except subprocess.TimeoutExpired:
            notes.append("fpfs umount timed out")
    for cmd in (["fusermount3", "-uz", mountpoint], ["umount", "-l", mountpoint]):
        if not in_mountinfo(mountpoint):
            break
        notes.append("needed " + " ".join(cmd))
        try:
            subprocess.run(cmd, capture_output=True, timeout=UNMOUNT_TIMEOUT)
        except (subprocess.TimeoutExpired, FileNotFoundError):
            pass
    if pid is not None and not wait_until(lambda: not process_alive(pid), 20):
        notes.append(f"daemon {pid} still running after unmount: killed")
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            if wait_until(lambda: not process_alive(pid), 10):
                break
        if in_mountinfo(mountpoint):
            subprocess.run(["fusermount3", "-uz", mountpoint], capture_output=True,
                           timeout=UNMOUNT_TIMEOUT)
    return notes


def mount(backing: str, mountpoint: str, *extra: str, log_file: Optional[str] = None) -> Mount:
    """`fpfs mount BACKING MOUNTPOINT` (background); fails the test if it does not mount."""
    os.makedirs(mountpoint, exist_ok=True)
    log_file = log_file or os.path.join(os.path.dirname(os.path.abspath(mountpoint)),
                                        os.path.basename(mountpoint) + ".log")
    res = cli("mount", backing, mountpoint, "--log-file", log_file, *extra)
    if res.returncode != 0 or not os.path.ismount(mountpoint):
        log = ""
        with contextlib.suppress(OSError):
            log = open(log_file, errors="replace").read()[-3000:]
        force_unmount(mountpoint, None)
        raise AssertionError(f"fpfs mount {backing} {mountpoint} failed (exit "
                             f"{res.returncode}); FUSE must work here (apt-get install fuse3; "
                             f"/dev/fuse)\nstdout: {res.stdout}\nstderr: {res.stderr}\n"
                             f"log: {log}")
    pid = None
    try:
        pid = json.loads(cli("status", "--json", mountpoint, timeout=30, check=True).stdout)["pid"]
    finally:
        if pid is None:
            force_unmount(mountpoint, None)
    if not backing.startswith("s3://"):
        backing = os.path.abspath(backing)
    return Mount(backing, os.path.abspath(mountpoint), pid, log_file)


@contextlib.contextmanager
def mounted(backing: str, mountpoint: str, *extra: str,
            log_file: Optional[str] = None) -> Iterator[Mount]:
    """Mount for the duration of the block; always unmounted (and the daemon gone) after."""
    m = mount(backing, mountpoint, *extra, log_file=log_file)
    try:
        yield m
    finally:
        force_unmount(m.mountpoint, m.pid)


@contextlib.contextmanager
def compressed_and_mounted(src: str, workdir: str, *extra: str) -> Iterator[Mount]:
    """Compress the tree src with `fpfs compress` into workdir/backing and mount it at
    workdir/mnt."""
    backing = os.path.join(workdir, "backing")
    compress(src, backing)
    with mounted(backing, os.path.join(workdir, "mnt"), *extra) as m:
        yield m
