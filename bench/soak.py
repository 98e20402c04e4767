"""Soak test: many concurrent readers on a real mount of the real weights for a bounded time,
every byte compared with the original; daemon RSS sampled every second.

    python bench/soak.py --seconds 240 --readers 16 --cache-size 64M

Compresses the MiniLM weights (BF16 and FP32 by default, from tests/weights.py) into a
scratch backing tree, mounts it with `fpfs mount` (the real CLI), and runs --readers threads
until the time is up. Each operation is, at random, a random read (4 KiB, 64 KiB or 1 MiB at
a random offset) or a sequential scan (8 MiB in 1 MiB reads from a random start); with
probability --drop the reader first drops the kernel's page cache of that file
(POSIX_FADV_DONTNEED) so the read reaches the daemon instead of the page cache. Prints
throughput, latency percentiles per kind, daemon RSS over time (min/max/last, first vs last
minute) against the cache budget, daemon status counters and every error; exits 1 on any
wrong byte or I/O error. The mount is always unmounted (tests/mounting.py).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench._common import proc_memory               # noqa: E402
from fpfs.options import parse_size                 # noqa: E402
from tests.mounting import compress, mounted         # noqa: E402
from tests.weights import real_weights_file          # noqa: E402

MiB = 1 << 20


def pct(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q / 100 * len(values)))]


class Soak:
    def __init__(self, mnt, files, originals, args):
        self.mnt, self.files, self.originals, self.args = mnt, files, originals, args
        self.lat = defaultdict(list)            # kind -> seconds per read call
        self.bytes = 0
        self.ops = 0
        self.errors = []
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def reader(self, k: int, deadline: float) -> None:
        rnd = random.Random(self.args.seed * 1000 + k)
        fds = {name: os.open(os.path.join(self.mnt, name), os.O_RDONLY) for name in self.files}
        lat, nbytes, ops = defaultdict(list), 0, 0
        try:
            while time.monotonic() < deadline and not self.stop.is_set():
                name = rnd.choice(self.files)
                fd, orig = fds[name], self.originals[name]
                if rnd.random() < self.args.drop:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                if rnd.random() < 0.5:
                    size = rnd.choice((4096, 64 << 10, MiB))
                    reads = [(rnd.randrange(0, len(orig)), size, f"random_{size >> 10}k")]
                else:
                    start = rnd.randrange(0, len(orig))
                    reads = [(start + i * MiB, MiB, "seq_1m") for i in range(8)
                             if start + i * MiB < len(orig)]
                for off, size, kind in reads:
                    t0 = time.perf_counter()
                    try:
                        data = os.pread(fd, size, off)
                    except OSError as exc:
                        with self.lock:
                            self.errors.append(f"{name} pread({off}, {size}): {exc}")
                        continue
                    lat[kind].append(time.perf_counter() - t0)
                    if data != orig[off:off + size]:
                        with self.lock:
                            self.errors.append(f"{name} pread({off}, {size}): WRONG BYTES")
                    nbytes += len(data)
                ops += 1
        finally:
            for fd in fds.values():
                os.close(fd)
            with self.lock:
                for kind, v in lat.items():
                    self.lat[kind].extend(v)
                self.bytes += nbytes
                self.ops += ops


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--readers", type=int, default=16)
    ap.add_argument("--cache-size", default="64M")
    ap.add_argument("--dtypes", default="BF16,F32")
    ap.add_argument("--drop", type=float, default=0.5,
                    help="probability of dropping the page cache before an operation")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    budget = parse_size(args.cache_size)
    work = tempfile.mkdtemp(prefix="fpfs-soak-", dir=args.workdir)
    try:
        src = os.path.join(work, "src")
        os.makedirs(src)
        files, originals = [], {}
        for name in args.dtypes.split(","):
            path = real_weights_file(name, src)
            files.append(os.path.basename(path))
            with open(path, "rb") as f:
                originals[files[-1]] = f.read()
        backing = os.path.join(work, "backing")
        compress(src, backing)
        with mounted(backing, os.path.join(work, "mnt"), "--cache-size", args.cache_size) as m:
            soak = Soak(m.mountpoint, files, originals, args)
            rss = []                                  # (t, bytes)
            t0 = time.monotonic()
            deadline = t0 + args.seconds
            threads = [threading.Thread(target=soak.reader, args=(k, deadline), daemon=True)
                       for k in range(args.readers)]
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                rss.append((time.monotonic() - t0, proc_memory(m.pid)))
                time.sleep(1)
            for t in threads:
                t.join()
            elapsed = time.monotonic() - t0
            status = m.status()
        vals = [r for _, r in rss]
        first = [r for t, r in rss if t < 60] or vals
        last = [r for t, r in rss if t > rss[-1][0] - 60] or vals
        result = {
            "seconds": round(elapsed, 1), "readers": args.readers, "files": files,
            "cache_budget_bytes": budget, "drop_probability": args.drop,
            "operations": soak.ops, "bytes_read": soak.bytes,
            "throughput_MBps": round(soak.bytes / elapsed / 1e6, 1),
            "latency_ms": {kind: {"n": len(v), "p50": round(pct(v, 50) * 1e3, 3),
                                  "p99": round(pct(v, 99) * 1e3, 3),
                                  "max": round(max(v) * 1e3, 3)}
                           for kind, v in sorted(soak.lat.items())},
            "rss_MiB": {"samples": len(vals), "min": round(min(vals) / MiB, 1),
                        "max": round(max(vals) / MiB, 1), "last": round(vals[-1] / MiB, 1),
                        "mean_first_minute": round(sum(first) / len(first) / MiB, 1),
                        "mean_last_minute": round(sum(last) / len(last) / MiB, 1)},
            "rss_timeline_MiB": [round(r / MiB, 1) for _, r in rss[::10]],
            "daemon": {"read_errors": status["read_errors"], "reads": status["reads"],
                       "cache": status["cache"]},
            "errors": soak.errors[:50], "error_count": len(soak.errors),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 1 if result["error_count"] or result["daemon"]["read_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
