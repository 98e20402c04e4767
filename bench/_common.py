"""Helpers shared by the benchmarks: the fpfs command line and real mounts (the same helpers
the tests use, tests/mounting.py), and small timing/statistics helpers."""
from __future__ import annotations

import contextlib
import io
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


def proc_memory(pid: int, field: str = "VmRSS") -> int:
    """Bytes a process's /proc status gives for field (VmRSS now, VmHWM its peak); 0 if
    it has none."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) << 10
    return 0


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


DOCS = os.path.join(REPO, "docs", "BENCHMARKS.md")


def write_docs_section(section: str, text: str, docs: str = DOCS) -> None:
    """Put text, under the command that made it, between the <!-- section --> and
    <!-- /section --> markers of docs/BENCHMARKS.md (a new section at the end if the
    markers are not there yet), so the tables there are what the scripts print."""
    start, end = f"<!-- {section} -->", f"<!-- /{section} -->"
    args, skip = [], False
    for a in sys.argv[1:]:          # without --write-docs and where raw numbers were saved
        if not skip and a != "--write-docs" and a != "--json":
            args.append(a)
        skip = a == "--json"
    command = "python " + " ".join([os.path.relpath(sys.argv[0], REPO)] + args)
    lines = text.strip("\n").splitlines()
    if lines and lines[0].startswith("#"):          # the docs have the section's heading
        lines = lines[1:]
    block = f"{start}\n```sh\n{command}\n```\n" + "\n".join(lines).strip("\n") + f"\n{end}"
    current = open(docs).read() if os.path.exists(docs) else "# Benchmarks\n"
    if start in current and end in current:
        current = current[:current.index(start)] + block + \
            current[current.index(end) + len(end):]
    else:
        current = current.rstrip("\n") + f"\n\n## {section}\n\n{block}\n"
    with open(docs, "w") as f:
        f.write(current)


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self._streams = streams

    def write(self, text: str) -> int:
        for s in self._streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self._streams:
            s.flush()


@contextlib.contextmanager
def report(section: str, write_docs: bool) -> Iterator[None]:
    """What the block prints to stdout is the script's report (progress goes to stderr):
    with write_docs it also becomes the docs/BENCHMARKS.md section of that name."""
    if not write_docs:
        yield
        return
    captured = io.StringIO()
    with contextlib.redirect_stdout(_Tee(sys.stdout, captured)):
        yield
    write_docs_section(section, captured.getvalue())
