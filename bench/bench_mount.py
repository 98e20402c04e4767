#!/usr/bin/env python3
"""Mount benchmark on the real all-MiniLM-L6-v2 weights in BF16 and FP32: the raw safetensors
file against the same file read through `fpfs mount`, side by side in one run.

    python bench/bench_mount.py [--repeat N] [--random-reads N] [--cache-size SIZE]

Each dtype is compressed with `fpfs compress` into its own backing directory and mounted with
`fpfs mount` (background, default options; --cache-size if given); every mount is undone with
`fpfs umount`. The raw file is always in the page cache (the best case for it); the .fpz
backing file is read once first, so through the mount the cost measured is FUSE + decode, not
the disk. "Cold" means a fresh mount: empty fpfs chunk cache and no kernel page cache for the
mounted file.

Measured (GB/s are of original bytes):
- sequential read of the whole file with 1 MiB read() calls: raw best of N; mount best of N
  cold runs (a remount before each), plus a second read on the same mount (kernel page cache);
  and two threads reading the two halves at once (whether two cores serve more);
- random 4 KiB pread latency p50/p99 (4 KiB aligned offsets from a seeded RNG): raw, then
  through a fresh mount (cold-ish: chunks fill the fpfs cache as the run goes) and again
  with the same offsets on that mount (warm);
- safetensors.numpy.load_file: raw first load, then best of N further loads; mount: first
  load on a fresh mount, then best of N further loads on the same mount (kernel page cache);
- mean FUSE read request size (bytes_served / reads from `fpfs status --json`, the status
  file's own reads subtracted) for the cold sequential read and the random reads;
- daemon RSS (rss_bytes from `fpfs status --json`) after the loads, largest over all mounts,
  and the cache budget.
- beside them, in the same run: what this machine decodes in-process with all threads
  into a reused buffer (fpfs chunk codec, bench_codec.py's loop) and ZipNN's 2-thread
  decompress, so the mount's cold sequential read is put against its ceiling;
- fio 4 KiB random read IOPS and completion latency p50 (psync, 1 job, 5 s) on a fresh
  mount and on the raw file, when fio is installed.
Bytes read through the mount are checked equal to the raw file.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench._common import best_time, cli, mounted, percentile, status, report  # noqa: E402
from bench.bench_codec import (THREADS, bench_fpfs, bench_zipnn,  # noqa: E402
                               cpu_model)
from fpfs import _kernels  # noqa: E402
from fpfs.formats import detect  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402
from tests.weights import real_weights_file  # noqa: E402

DTYPES = ("BF16", "F32")
READ_SIZE = 1 << 20
PAGE = 4096


def read_all(path: str) -> int:
    """Read the whole file with 1 MiB read() calls into one reused buffer."""
    buf = bytearray(READ_SIZE)
    total = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                return total
            total += n


def file_hash(path: str) -> str:
    h = hashlib.blake2b()
    with open(path, "rb", buffering=0) as f:
        while True:
            block = f.read(READ_SIZE)
            if not block:
                return h.hexdigest()
            h.update(block)


def timed_read_all(path: str, size: int) -> float:
    t = time.perf_counter()
    n = read_all(path)
    dt = time.perf_counter() - t
    assert n == size, f"{path}: read {n} bytes, expected {size}"
    return dt


def timed_read_halves(path: str, size: int) -> float:
    """Two threads reading the two halves at once (1 MiB preads each): whether the mount
    serves concurrent requests on both cores, or what fills them."""
    got = [0, 0]

    def read_half(k: int) -> None:
        start, end = k * (size // 2), size if k else size // 2
        buf = bytearray(READ_SIZE)
        fd = os.open(path, os.O_RDONLY)
        try:
            off = start
            while off < end:
                n = os.preadv(fd, [memoryview(buf)[:min(READ_SIZE, end - off)]], off)
                if not n:
                    break
                off += n
                got[k] += n
        finally:
            os.close(fd)
    threads = [threading.Thread(target=read_half, args=(k,)) for k in (0, 1)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    dt = time.perf_counter() - t
    assert sum(got) == size, f"{path}: read {sum(got)} bytes, expected {size}"
    return dt


def random_latencies(path: str, offsets) -> list:
    """Seconds per 4 KiB os.pread at each offset, sorted."""
    out = []
    fd = os.open(path, os.O_RDONLY)
    try:
        for off in offsets:
            t = time.perf_counter_ns()
            data = os.pread(fd, PAGE, off)
            out.append((time.perf_counter_ns() - t) / 1e9)
            assert len(data) == PAGE
    finally:
        os.close(fd)
    return sorted(out)


def timed_load(path: str) -> float:
    t = time.perf_counter()
    tensors = load_file(path)
    dt = time.perf_counter() - t
    assert tensors
    return dt


def fio_randread(path: str, seconds: int = 5) -> dict:
    """fio 4 KiB random reads of path: {'iops', 'p50_us'}, or {} without fio."""
    if shutil.which("fio") is None:
        return {}
    res = subprocess.run(
        ["fio", "--name=randread", f"--filename={path}", "--rw=randread", "--bs=4k",
         "--ioengine=psync", "--numjobs=1", f"--runtime={seconds}", "--time_based",
         "--invalidate=1", "--output-format=json"],
        capture_output=True, text=True, check=True)
    job = json.loads(res.stdout)["jobs"][0]["read"]
    return {"iops": job["iops"], "p50_us": job["clat_ns"]["percentile"]["50.000000"] / 1e3}


class Requests:
    """FUSE read requests seen by the daemon between two points, without the status
    file's own reads (measured once per mount as the difference of two back-to-back
    status calls)."""

    def __init__(self, mnt: str):
        self.mnt = mnt
        a = status(mnt)
        b = status(mnt)
        self.own = (b["reads"] - a["reads"], b["bytes_served"] - a["bytes_served"])
        self.last = b

    def mark(self):
        """(reads, bytes) since the previous mark; updates the mark."""
        s = status(self.mnt)
        reads = s["reads"] - self.last["reads"] - self.own[0]
        nbytes = s["bytes_served"] - self.last["bytes_served"] - self.own[1]
        self.last = s
        return reads, nbytes, s


def bench_dtype(name: str, work: str, args) -> dict:
    src = os.path.join(work, f"src-{name}")
    backing = os.path.join(work, f"backing-{name}")
    mnt = os.path.join(work, f"mnt-{name}")
    os.makedirs(src)
    raw = real_weights_file(name, src)
    size = os.path.getsize(raw)
    cli("compress", src, backing)
    fpz = os.path.join(backing, os.path.basename(raw) + ".fpz")
    through = os.path.join(mnt, os.path.basename(raw))
    extra = ("--cache-size", args.cache_size) if args.cache_size else ()
    r = {"size": size, "stored": os.path.getsize(fpz), "rss": []}
    raw_hash = file_hash(raw)
    read_all(fpz)                                   # backing file into the page cache
    read_all(raw)                                   # raw file too: its best case

    # sequential
    r["seq_raw"] = best_time(lambda: read_all(raw), args.repeat)
    cold = []
    for i in range(args.repeat):
        with mounted(backing, mnt, *extra):
            req = Requests(mnt)
            cold.append(timed_read_all(through, size))
            reads, nbytes, s = req.mark()
            r["rss"].append(s["rss_bytes"])
            if i == 0:
                r["seq_req"] = (reads, nbytes)
                r["decode_gbps"] = s["cache"]["decode_gbps"]
                r["seq_warm"] = timed_read_all(through, size)
                assert file_hash(through) == raw_hash, "mount served wrong bytes"
    r["seq_cold"] = cold
    r["seq_raw2"] = best_time(lambda: timed_read_halves(raw, size), args.repeat)
    r["seq_cold2"] = []
    for _ in range(args.repeat):
        with mounted(backing, mnt, *extra):
            r["seq_cold2"].append(timed_read_halves(through, size))

    # random 4 KiB
    rng = random.Random(1234)
    offsets = [rng.randrange(0, (size - PAGE) // PAGE + 1) * PAGE
               for _ in range(args.random_reads)]
    random_latencies(raw, offsets)                  # warm the raw path (page cache, pyc)
    r["rand_raw"] = random_latencies(raw, offsets)
    with mounted(backing, mnt, *extra):
        req = Requests(mnt)
        r["rand_cold"] = random_latencies(through, offsets)
        reads, nbytes, s = req.mark()
        r["rand_req"] = (reads, nbytes)
        r["rand_warm"] = random_latencies(through, offsets)
        r["rss"].append(status(mnt)["rss_bytes"])

    # fio random 4 KiB (a fresh mount: its first reads decode chunks, later ones hit them)
    r["fio_raw"] = fio_randread(raw)
    with mounted(backing, mnt, *extra):
        r["fio_mnt"] = fio_randread(through)

    # the decode ceiling, in process
    with open(raw, "rb") as f:
        data = f.read()
    r["codec_fpfs"] = bench_fpfs(raw, data, args.repeat)
    try:
        r["codec_zipnn"] = bench_zipnn(name, data, detect(raw).prefix_length, args.repeat)
    except Exception as exc:          # report, do not hide
        print(f"ZipNN failed on {name}: {exc}", file=sys.stderr)

    # safetensors load_file
    first = timed_load(raw)
    r["load_raw"] = (first, min(timed_load(raw) for _ in range(args.repeat)))
    with mounted(backing, mnt, *extra):
        first = timed_load(through)
        r["load_mnt"] = (first, min(timed_load(through) for _ in range(args.repeat)))
        s = status(mnt)
        r["rss_after_load"] = s["rss_bytes"]
        r["rss"].append(s["rss_bytes"])
        r["cache_used"] = s["cache"]["used_bytes"]
        r["budget"] = s["cache"]["budget_bytes"]
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="best of N for throughput (default 3)")
    ap.add_argument("--random-reads", type=int, default=2000,
                    help="4 KiB preads per latency run (default 2000)")
    ap.add_argument("--cache-size", default=None,
                    help="fpfs mount --cache-size (default: the mount's own default)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--write-docs", action="store_true",
                    help="also put the report into docs/BENCHMARKS.md")
    args = ap.parse_args()
    with report("bench_mount", args.write_docs):
        run(args)


def run(args) -> None:
    work = tempfile.mkdtemp(prefix="fpfs-bench-mount-")
    results = {}
    try:
        for name in DTYPES:
            t = time.perf_counter()
            results[name] = bench_dtype(name, work, args)
            print(f"done {name} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    def us(v):
        return f"{v * 1e6:.1f}"

    mib = 1 << 20
    rows = []
    for name, r in results.items():
        gb = r["size"] / 1e9
        ceiling = r["codec_fpfs"][f"d{THREADS}"]
        rows += [
            (f"{name} sequential read GB/s (mount: cold fpfs cache, best of {args.repeat})",
             f"{gb / r['seq_raw']:.2f}", f"{gb / min(r['seq_cold']):.2f}"
             f" (runs {', '.join(f'{gb / t:.2f}' for t in r['seq_cold'])})"),
            (f"{name} sequential read GB/s, two readers of the halves at once (mount: cold, "
             f"best of {args.repeat})", f"{gb / r['seq_raw2']:.2f}",
             f"{gb / min(r['seq_cold2']):.2f}"),
            (f"{name} in-process decode GB/s, {THREADS} threads (raw column: ZipNN "
             f"decompress; mount column: fpfs into a reused buffer, and mount cold read / it)",
             f"ZipNN {gb / r['codec_zipnn'][f'd{THREADS}']:.2f}" if "codec_zipnn" in r else "",
             f"{gb / ceiling:.2f} ({ceiling / min(r['seq_cold']):.2f}×)"),
            (f"{name} sequential read GB/s, 2nd read same mount (kernel page cache)",
             "", f"{gb / r['seq_warm']:.2f}"),
            (f"{name} daemon chunk load GB/s per thread (status decode_gbps, cold run)", "",
             f"{r['decode_gbps']:.2f}"),
            (f"{name} mean FUSE request, cold sequential read (KiB)", "",
             f"{r['seq_req'][1] / max(r['seq_req'][0], 1) / 1024:.0f} "
             f"({r['seq_req'][0]} reads)"),
            (f"{name} random 4 KiB pread p50 / p99 µs, cold mount",
             f"{us(percentile(r['rand_raw'], 50))} / {us(percentile(r['rand_raw'], 99))}",
             f"{us(percentile(r['rand_cold'], 50))} / {us(percentile(r['rand_cold'], 99))}"),
            (f"{name} random 4 KiB pread p50 / p99 µs, warm (same offsets again)", "",
             f"{us(percentile(r['rand_warm'], 50))} / {us(percentile(r['rand_warm'], 99))}"),
            (f"{name} fio 4 KiB randread IOPS / p50 µs (psync, 1 job, 5 s, fresh mount)",
             f"{r['fio_raw']['iops']:.0f} / {r['fio_raw']['p50_us']:.1f}" if r["fio_raw"] else "",
             f"{r['fio_mnt']['iops']:.0f} / {r['fio_mnt']['p50_us']:.1f}" if r["fio_mnt"] else
             "(fio not installed)"),
            (f"{name} mean FUSE request, random 4 KiB preads (KiB)", "",
             f"{r['rand_req'][1] / max(r['rand_req'][0], 1) / 1024:.0f} "
             f"({r['rand_req'][0]} reads for {args.random_reads} preads)"),
            (f"{name} load_file s, first load (mount: fresh)",
             f"{r['load_raw'][0]:.3f}", f"{r['load_mnt'][0]:.3f}"),
            (f"{name} load_file s, second load (same mount; best of {args.repeat})",
             f"{r['load_raw'][1]:.3f}", f"{r['load_mnt'][1]:.3f} "
             f"({r['load_mnt'][1] / r['load_raw'][1]:.2f}x raw)"),
            (f"{name} daemon RSS MiB after loads / max over mounts (cache budget)", "",
             f"{r['rss_after_load'] / mib:.0f} / {max(r['rss']) / mib:.0f} "
             f"(budget {r['budget'] / mib:.0f}, cache used {r['cache_used'] / mib:.0f})"),
        ]
    print("\nall-MiniLM-L6-v2; file sizes: " + ", ".join(
        f"{n} {r['size'] / 1e6:.1f} MB -> {r['stored'] / 1e6:.1f} MB .fpz "
        f"({100 * r['stored'] / r['size']:.1f} %)" for n, r in results.items())
        + f"; {cpu_model()}, {os.cpu_count()} cores, rANS32 decoder {_kernels.simd_kernel()}; "
        f"raw file and .fpz in the page cache\n")
    print("| measurement | raw file | fpfs mount |")
    print("|---|---:|---:|")
    for label, a, b in rows:
        print(f"| {label} | {a} | {b} |")


if __name__ == "__main__":
    main()
