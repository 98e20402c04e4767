"""Helpers shared by the benchmarks: the fpfs command line and real mounts (the same helpers
the tests use, tests/mounting.py), and small timing/statistics helpers."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from typing import Callable, Iterator, List

# numpy's OpenBLAS threads spin for a while after a BLAS call, on the cores the timed code
# needs (the first fpfs.open().read() of bench_codec ran at 0.58 GB/s against 1.65 after);
# nothing timed here uses BLAS. Import this module before numpy for it to take effect.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from tests import mounting  # noqa: E402


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m fpfs.cli ARGS`; raises if it fails."""
    return mounting.cli(*args, timeout=timeout, check=True)


def status(mountpoint: str) -> dict:
    """`fpfs status MOUNTPOINT --json`."""
    return json.loads(cli("status", mountpoint, "--json", timeout=60).stdout)


@contextlib.contextmanager
def mounted(backing: str, mountpoint: str, *extra: str) -> Iterator[str]:
    """A real background mount for the block, always unmounted after (tests/mounting.py)."""
    with mounting.mounted(backing, mountpoint, *extra,
                          log_file=mountpoint.rstrip("/") + ".log") as m:
        yield m.mountpoint


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
