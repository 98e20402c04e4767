"""Helpers shared by the benchmarks: the fpfs command line in a subprocess, a real mount that
is always unmounted, and small timing/statistics helpers."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from typing import Callable, Iterator, List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def cli(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m fpfs.cli ARGS` (this checkout first on the path), output captured."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-m", "fpfs.cli", *args], capture_output=True,
                         text=True, timeout=timeout, stdin=subprocess.DEVNULL, env=env)
    if check and res.returncode != 0:
        raise RuntimeError(f"fpfs {' '.join(args)} exited {res.returncode}:\n"
                           f"{res.stdout}{res.stderr}")
    return res


def status(mountpoint: str) -> dict:
    """`fpfs status MOUNTPOINT --json`."""
    return json.loads(cli("status", mountpoint, "--json", timeout=60).stdout)


def _in_mountinfo(path: str) -> bool:
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4].replace("\\040", " ") == real for line in f)


@contextlib.contextmanager
def mounted(backing: str, mountpoint: str, *extra: str) -> Iterator[str]:
    """`fpfs mount BACKING MOUNTPOINT` (background; returns when ready) for the block, then
    `fpfs umount` always; a lazy fusermount3 -uz only if that left the mount behind."""
    os.makedirs(mountpoint, exist_ok=True)
    log = mountpoint.rstrip("/") + ".log"
    cli("mount", backing, mountpoint, "--log-file", log, *extra, timeout=120)
    try:
        yield mountpoint
    finally:
        res = cli("umount", mountpoint, timeout=60, check=False)
        if _in_mountinfo(mountpoint):
            print(f"fpfs umount left {mountpoint} mounted ({res.stderr.strip()}); "
                  "fusermount3 -uz", file=sys.stderr)
            subprocess.run(["fusermount3", "-uz", mountpoint], capture_output=True, timeout=60)


def best_time(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def percentile(sorted_values: List[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(round(q / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]
