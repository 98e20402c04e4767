#!/usr/bin/env python3
"""Where a mount's read handler spends its time: py-spy (--native) samples the daemon while
a reader makes cold sequential 1 MiB reads of the real MiniLM weights, and each sample of a
busy FUSE thread is put in one bucket by its innermost recognisable frame.

    python bench/profile_mount.py [--dtype BF16] [--seconds 8]   (root: drops page caches)

Needs py-spy (`pip install py-spy`). The fpfs chunk cache is kept small (8 MiB) and the
kernel's page cache is dropped before every pass, so every pass decodes every chunk.
Prints the share of each bucket among the samples of threads inside a read (the idle FUSE
loop and the main thread are not counted)."""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench._common import cli, mounted, status  # noqa: E402
from tests.weights import real_weights_file  # noqa: E402

# A sample is put in the bucket of its innermost named frame (inlined SIMD intrinsics and
# unnamed libc addresses are skipped: the function that called them decides).
BUCKETS = [
    ("rANS decode (C)", ("fpfs_rans32", "fpfs_r32", "fpfs_rans_decode", "fpfs_dec_blocks",
                         "fpfs_dsym")),
    ("plane merge, other decode (C)", ("fpfs_merge", "fpfs_decode_planes", "fpfs_expmant",
                                       "fpfs_decode_expmant", "fpfs_mask",
                                       "fpfs_delta", "fpfs_scatter", "fpfs_read_table")),
    ("waiting for the GIL", ("take_gil", "pthread_cond_timedwait", "drop_gil",
                             "pthread_cond_signal", "PyEval_RestoreThread")),
    ("payload read (pread of the .fpz)", ("preadv", "pread")),
    ("checksum (xxh3)", ("xxh3", "XXH3", "intdigest")),
    ("copies (memmove)", ("memmove", "memcpy", "raw_array_assign", "PyArray_AssignArray")),
]


def bucket(frames) -> str:
    for frame in reversed(frames):
        name = frame.split(" (")[0]
        if name.startswith("0x") or name.startswith("_mm"):
            continue
        for label, keys in BUCKETS:
            if any(k in name for k in keys):
                return label
        if re.search(r"\.py:\d+\)", frame):
            return "Python code (fpfs, mfusepy)"
        return "Python runtime (interpreter, numpy, ctypes, libfuse)"
    return "unattributed (libc)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="BF16")
    ap.add_argument("--seconds", type=int, default=8)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="fpfs-profile-")
    src, backing, mnt = (os.path.join(work, d) for d in ("src", "backing", "mnt"))
    os.makedirs(src)
    raw = real_weights_file(args.dtype, src)
    cli("compress", src, backing)
    name = os.path.basename(raw)
    with mounted(backing, mnt, "--cache-size", "8M"):
        pid = status(mnt)["pid"]
        out = os.path.join(work, "profile.txt")
        spy = subprocess.Popen(["py-spy", "record", "-p", str(pid), "-d", str(args.seconds),
                                "--native", "-r", "500", "-f", "raw", "-o", out],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stop = time.monotonic() + args.seconds - 1
        passes = requests = 0
        before = status(mnt)
        while time.monotonic() < stop:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("1")
            with open(os.path.join(backing, name + ".fpz"), "rb") as f:   # backing cached
                while f.read(1 << 24):
                    pass
            with open(os.path.join(mnt, name), "rb", buffering=0) as f:
                while f.read(1 << 20):
                    pass
            passes += 1
        after = status(mnt)
        requests = after["reads"] - before["reads"]
        spy.wait()
    counts = collections.Counter()
    total = 0
    with open(out) as f:
        for line in f:
            stack, n = line.rsplit(" ", 1)
            frames = stack.split(";")
            if not any("read_into" in fr for fr in frames):
                continue                     # not a read: the FUSE loop, the main thread
            counts[bucket(frames)] += int(n)
            total += int(n)
    print(f"\n{args.dtype}: {passes} cold passes, {requests} FUSE read requests "
          f"(mean {(after['bytes_served'] - before['bytes_served']) / max(requests, 1) / 1024:.0f} KiB), "
          f"{total} samples of threads inside a read\n")
    print("| where the busy FUSE threads are | share of samples |")
    print("|---|---:|")
    for name_, n in counts.most_common():
        print(f"| {name_} | {100 * n / total:.1f} % |")


if __name__ == "__main__":
    main()
