"""What `fpfs mount/umount/status` do before and around the daemon: check the environment,
start the daemon in the background and wait until the mount answers."""
from __future__ import annotations

import json
import logging
import os
import select
import shutil
import subprocess
import sys
import time
from typing import List, Optional

from ..errors import FpfsError
from ..options import STORE_OPTIONS, store_settings
from ..progress import human_bytes
from ..store import is_url
from .fuse_lib import FuseUnavailable
from ..store.remote_tree import RemoteConfig, open_tree

READY_TIMEOUT = 60


class MountError(FpfsError):
    pass


def check_environment(backing: str, mountpoint: str) -> None:
    if not is_url(backing) and not os.path.isdir(backing):
        raise MountError(f"{backing}: backing directory does not exist")
    if not os.path.isdir(mountpoint):
        raise MountError(f"{mountpoint}: mountpoint does not exist (create it with mkdir)")
    if os.path.ismount(mountpoint):
        raise MountError(f"{mountpoint}: already a mount point (fpfs umount {mountpoint})")
    if os.listdir(mountpoint):
        raise MountError(f"{mountpoint}: mountpoint is not empty")
    real_b, real_m = os.path.realpath(backing), os.path.realpath(mountpoint)
    if not is_url(backing) and (real_m == real_b or real_m.startswith(real_b + os.sep)):
        raise MountError("the mountpoint must not be inside the backing directory")
    if not os.path.exists("/dev/fuse"):
        raise FuseUnavailable("/dev/fuse is missing: load the fuse module (modprobe fuse) or, "
                              "in a container, pass --device /dev/fuse")
    if os.geteuid() != 0 and not shutil.which("fusermount3"):
        raise FuseUnavailable("fusermount3 not found: apt-get install fuse3")


def default_log_file(mountpoint: str) -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    name = os.path.realpath(mountpoint).strip("/").replace("/", "_") or "root"
    return os.path.join(base, "fpfs", f"mount-{name}.log")


def remote_config(args) -> Optional[RemoteConfig]:
    """How to reach and cache an s3:// backing (None for a local one)."""
    if not is_url(args.backing):
        return None
    if args.writable:
        raise MountError("an s3:// backing is mounted read-only (drop --writable)")
    return RemoteConfig(store_settings(args), args.cache_dir, args.disk_cache_size,
                        args.metadata_ttl)


def mount(args) -> int:
    check_environment(args.backing, args.mountpoint)
    if args.metrics:
        from ..metrics import parse_address
        parse_address(args.metrics)         # a bad address fails here, in one line
    remote = remote_config(args)
    threads = args.threads or os.cpu_count() or 2
    if remote is not None and not args.foreground:
        open_tree(args.backing, remote)     # fail here, in one line, if it is unreachable
    if args.foreground:
        logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            stream=sys.stderr)
        from .daemon import run
        ready_fd = getattr(args, "ready_fd", None)
        run(args.backing, args.mountpoint, args.cache_size, threads, args.allow_other,
            args.debug, ready_fd, args.writable, args.decode_ahead, remote, args.metrics)
        return 0
    return _spawn(args, threads)


def _spawn(args, threads: int) -> int:
    log_file = args.log_file or default_log_file(args.mountpoint)
    os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
    r, w = os.pipe()
    backing = args.backing if is_url(args.backing) else os.path.abspath(args.backing)
    cmd = [sys.executable, "-m", "fpfs.cli", "mount", backing,
           os.path.abspath(args.mountpoint), "--foreground", "--cache-size",
           str(args.cache_size), "--threads", str(threads), "--decode-ahead", str(args.decode_ahead),
           "--ready-fd", str(w)] + _store_flags(args)
    if args.allow_other:
        cmd.append("--allow-other")
    if args.writable:
        cmd.append("--writable")
    if args.debug:
        cmd.append("--debug")
    if args.metrics:
        cmd += ["--metrics", args.metrics]
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                pass_fds=(w,), start_new_session=True, close_fds=True)
    os.close(w)
    try:
        ready = _wait_ready(r, proc)
    finally:
        os.close(r)
    if not ready:
        if proc.poll() is None:
            proc.terminate()
        raise MountError(f"mount failed; see {log_file}:\n" + _tail(log_file))
    print(f"mounted {args.backing} at {args.mountpoint} (pid {proc.pid}, log {log_file})")
    return 0


def _store_flags(args) -> List[str]:
    """The object-store options again, for the daemon's command line."""
    flags = []
    names = STORE_OPTIONS + (("cache_dir", "disk_cache_size", "metadata_ttl")
                             if is_url(args.backing) else ())
    for name in names:
        value = getattr(args, name)
        if value is not None:
            if name == "cache_dir":
                value = os.path.abspath(value)
            flags += ["--" + name.replace("_", "-"), str(value)]
    return flags


def _wait_ready(fd: int, proc: subprocess.Popen) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        readable, _, _ = select.select([fd], [], [], 0.2)
        if readable:
            return os.read(fd, 64).startswith(b"ready")   # b"" = daemon exited
        if proc.poll() is not None:
            return False
    return False


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, "rb") as f:
            return b"".join(f.readlines()[-lines:]).decode(errors="replace")
    except OSError:
        return ""


def umount(mountpoint: str, lazy: bool = False) -> int:
    """Unmount; lazy detaches the mount at once even while files are open (the daemon
    keeps serving those and exits when the last one is closed)."""
    if not os.path.ismount(mountpoint):
        raise MountError(f"{mountpoint}: not mounted")
    flag = "-uz" if lazy else "-u"
    tools = [["fusermount3", flag, mountpoint], ["fusermount", flag, mountpoint]]
    if os.geteuid() == 0:
        tools.append(["umount"] + (["-l"] if lazy else []) + [mountpoint])
    last = ""
    for cmd in tools:
        if not shutil.which(cmd[0]):
            continue
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode == 0:
            for _ in range(100):            # the daemon exits once the kernel lets go
                if not os.path.ismount(mountpoint):
                    break
                time.sleep(0.05)
            return 0
        last = res.stderr.strip()
    hint = "" if lazy or "busy" not in last else \
        f" (files are open; close them, or detach now with: fpfs umount --lazy {mountpoint})"
    raise MountError(f"cannot unmount {mountpoint}: "
                     f"{last or 'no fusermount3/umount found'}{hint}")


def read_status(mountpoint: str) -> dict:
    from .ops import STATUS_NAME
    path = os.path.join(mountpoint, STATUS_NAME)
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode())
    except (OSError, ValueError) as exc:
        raise MountError(f"{mountpoint}: not an fpfs mount ({exc})") from None


def status(mountpoint: str, as_json: bool = False) -> int:
    s = read_status(mountpoint)
    if as_json:
        print(json.dumps(s, indent=2))
        return 0
    print(status_text(s))
    return 0


def status_text(s: dict) -> str:
    """`fpfs status` for people. Two rates, each over its own time: what readers got over
    the mount's uptime (idle time included), and the decoder's speed over the time spent
    decoding (summed over the threads that decoded)."""
    c = s["cache"]
    up = s["uptime_seconds"]
    lines = [
        f"backing      {s['backing']} (pid {s['pid']}, up {up:.0f} s)",
        f"served       {human_bytes(s['bytes_served'])} in {s['reads']} reads, "
        f"{s['read_errors']} errors: {_gbps(s['bytes_served'], up)} over the uptime",
        f"cache        {human_bytes(c['used_bytes'])} of {human_bytes(c['budget_bytes'])}, "
        f"hit rate {100 * c['hit_rate']:.1f} %, {c['evictions']} evictions",
        f"decoded      {human_bytes(c['decoded_bytes'])} in {c['decode_seconds']:.2f} s of "
        f"decoding: {_gbps(c['decoded_bytes'], c['decode_seconds'])}"
        + (f" ({s['decoder']} rANS decoder)" if "decoder" in s else "")]
    if "rss_bytes" in s:
        lines.append(f"memory       {human_bytes(s['rss_bytes'])} resident")
    return "\n".join(lines)


def _gbps(nbytes: int, seconds: float) -> str:
    return f"{nbytes / seconds / 1e9 if seconds > 0 else 0.0:.2f} GB/s"
