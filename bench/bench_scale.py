#!/usr/bin/env python3
"""fpfs at the sizes users run: multi-GB models made with the real writers, loaded with the
real loaders, from the raw files and through fpfs, side by side in one run.

    python bench/bench_scale.py [--data DIR] [--rounds 3] [--only PARTS] [--peers]
                                [--write-docs]

Models (bench/scale_models.py; generated once into --data, default /var/tmp/fpfs-scale,
never into the repository): a Llama-3.2-3B-shaped BF16 checkpoint in three safetensors
shards (6.4 GB, written by safetensors.torch.save_file, index and config as
save_pretrained writes them), a 2.2 GB torch.save state dict (FP32), a 2.2 GB GGUF (F16,
written by the gguf package), a 1 GB text file fpfs does not recognise, and a chain of four
512 MB BF16 checkpoints each a small step from the one before. Weights are random: right
for sizes and speeds, not for ratios (bench_formats.py has the ratios of real weights).

Parts (--only, comma-separated; default all):
- load: safetensors.torch.load_file of every shard, every tensor copied (`.clone()`:
  safetensors maps lazily), and per-shard speeds; raw files, a fresh fpfs mount,
  fpfs.load_file of the .fpz files, and (--peers) lmzip's mount of the same model.
- pretrained: transformers AutoModelForCausalLM.from_pretrained + every weight page read.
- torch: torch.load(mmap=True, weights_only=True) + every page read; raw and mount.
- gguf: gguf.GGUFReader + every tensor page read; raw and mount.
- cores: cold sequential 1 MiB reads of the shards through a mount whose daemon is pinned
  to one core (taskset) and on all; in-process decode on all cores (fpfs.open().readinto)
  beside it.
- write: cp of a 2.3 GB shard into a --writable mount + sync; cp to the disk + sync;
  `fpfs compress` of the same file.
- untyped: `fpfs compress` of the 1 GB text file against `zstd -3 -T0`.
- delta: the last checkpoint of the chain (a delta of a delta of a delta of a base) read
  through the mount against the same file stored alone.
Every load and read starts with the page cache dropped (root: `sync; echo 3 >
/proc/sys/vm/drop_caches`) in a fresh process (times exclude imports), mount variants on
a fresh mount. Best of --rounds; every round's numbers are kept in the JSON (--json).

On a VM with free page reporting (virtio-balloon; Firecracker here) every first touch of
memory the host took back costs 0.4-1 GiB/s, which swamps loads of either kind (raw shard
loads measured 0.38-1.35 GB/s in a row). Unless --keep-page-reporting, the run stops the
guest from reporting free pages for its duration (page_reporting_order above the largest
order) and touches the free memory once, then restores the setting; the table says so.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Dict, Iterator, List, Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench._common import cli, mounted, proc_memory, write_docs_section  # noqa: E402
from tests import mounting  # noqa: E402
from bench.bench_codec import cpu_model  # noqa: E402
from bench import scale_models  # noqa: E402
import fpfs  # noqa: E402

PARTS = ("load", "pretrained", "torch", "gguf", "cores", "write", "untyped", "delta")
REPORTING = "/sys/module/page_reporting/parameters/page_reporting_order"

# Loaders, each run as `python -c LOADER ARGS...` in a fresh process; they print one JSON
# line {"seconds": total, "each": [per file]}. Imports are outside the timing.
_TOUCH = '''
import torch
def touch(t):
    b = t.detach().contiguous().view(-1).view(torch.uint8)
    return int(b[::4096].sum()) if b.numel() else 0
'''
LOADERS = {
    "load_file": _TOUCH + '''
import json, sys, time
from safetensors.torch import load_file
keep, each = [], []
t0 = time.perf_counter()
for path in sys.argv[1:]:
    t = time.perf_counter()
    keep.append({k: v.clone() for k, v in load_file(path).items()})
    each.append(time.perf_counter() - t)
print(json.dumps({"seconds": time.perf_counter() - t0, "each": each}))
''',
    "fpfs.load_file": '''
import json, sys, time
import fpfs
keep, each = [], []
t0 = time.perf_counter()
for path in sys.argv[1:]:
    t = time.perf_counter()
    keep.append(fpfs.load_file(path, "torch"))
    each.append(time.perf_counter() - t)
print(json.dumps({"seconds": time.perf_counter() - t0, "each": each}))
''',
    "from_pretrained": _TOUCH + '''
import json, sys, time
from transformers import AutoModelForCausalLM
t0 = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
n = sum(touch(p) for p in model.parameters())
print(json.dumps({"seconds": time.perf_counter() - t0, "each": []}))
''',
    "torch.load": _TOUCH + '''
import json, sys, time
t0 = time.perf_counter()
sd = torch.load(sys.argv[1], mmap=True, weights_only=True)
n = sum(touch(v) for v in sd.values())
print(json.dumps({"seconds": time.perf_counter() - t0, "each": []}))
''',
    "GGUFReader": '''
import json, sys, time
import numpy as np
import gguf
t0 = time.perf_counter()
reader = gguf.GGUFReader(sys.argv[1])
n = sum(int(np.asarray(t.data).reshape(-1).view(np.uint8)[::4096].sum()) for t in reader.tensors)
print(json.dumps({"seconds": time.perf_counter() - t0, "each": []}))
''',
    "read": '''
import json, sys, time
buf = bytearray(1 << 20)
each = []
t0 = time.perf_counter()
for path in sys.argv[1:]:
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
    each.append(time.perf_counter() - t)
print(json.dumps({"seconds": time.perf_counter() - t0, "each": each}))
''',
}


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


_hold_memory = False      # set while guest_memory_held is in force


def _tree_bytes(root: str) -> int:
    """Bytes of the files under root, each inode once (the store hard-links bases)."""
    seen, total = set(), 0
    for d, _, names in os.walk(root):
        for n in names:
            st = os.lstat(os.path.join(d, n))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def fresh_start() -> None:
    """Before each timed run: the page cache dropped and, while the guest's memory is held,
    all free memory touched again (the host takes back pages however it was told, so a
    run after a large free would otherwise pay for first touches the other did not)."""
    drop_caches()
    if _hold_memory:
        touch_free_memory()


def touch_free_memory() -> int:
    avail = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    touch = max(0, avail - (1 << 30))
    subprocess.run([sys.executable, "-c", f"import numpy as np; a = np.ones({touch}, np.uint8)"],
                   check=True)
    return touch


def run_loader(name: str, *args: str) -> dict:
    fresh_start()
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-c", LOADERS[name], *args], capture_output=True,
                         text=True, env=env, timeout=1800)
    if res.returncode != 0:
        raise RuntimeError(f"{name} {args} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def guest_memory_held(keep: bool) -> Iterator[str]:
    """Stop free page reporting for the block (see the module docstring); yields a note."""
    if keep or not os.path.exists(REPORTING) or os.geteuid() != 0:
        yield "guest free page reporting left as it was"
        return
    with open(REPORTING) as f:
        old = f.read().strip()
    global _hold_memory
    with open(REPORTING, "w") as f:
        f.write("11\n")
    _hold_memory = True
    try:
        drop_caches()
        touch = touch_free_memory()
        yield (f"guest free page reporting held off for the run (page_reporting_order {old} "
               f"-> 11, restored after) and the free memory ({human(touch)}) touched before "
               f"each timed run")
    finally:
        _hold_memory = False
        with open(REPORTING, "w") as f:
            f.write(old + "\n")


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    return f"{n:.1f} GiB"


def total_size(paths: List[str]) -> int:
    return sum(os.path.getsize(p) for p in paths)


class Scale:
    def __init__(self, args):
        self.args = args
        self.data = os.path.abspath(args.data)
        self.models = os.path.join(self.data, "models")
        self.packed = os.path.join(self.data, "packed")
        self.mnt = os.path.join(self.data, "mnt")
        self.results: Dict[str, dict] = {}
        self.rows: List[tuple] = []
        self.notes: List[str] = []

    # -- data ----------------------------------------------------------------------------
    def prepare(self) -> None:
        os.makedirs(self.models, exist_ok=True)
        parts = set(self.args.only)
        t = time.perf_counter()
        self.shards = scale_models.make_llama(os.path.join(self.models, "llama-3b"))
        if parts & {"torch"}:
            self.torch_file = scale_models.make_torch_checkpoint(
                os.path.join(self.models, "torch", "checkpoint.pt"))
        if parts & {"gguf"}:
            self.gguf_file = scale_models.make_gguf(os.path.join(self.models, "gguf",
                                                                 "model-f16.gguf"))
        print(f"models ready in {time.perf_counter() - t:.0f} s", flush=True)
        wanted = [self.packed_path(p) for p in self.shards + [
            getattr(self, "torch_file", None), getattr(self, "gguf_file", None)] if p]
        if not all(os.path.exists(p) for p in wanted):
            shutil.rmtree(self.packed, ignore_errors=True)
            t = time.perf_counter()
            cli("compress", self.models, self.packed, timeout=3600)
            took = time.perf_counter() - t
            self.notes.append(f"`fpfs compress` of the model tree: {took:.1f} s")
        os.makedirs(self.mnt, exist_ok=True)

    def in_mount(self, path: str) -> str:
        return os.path.join(self.mnt, os.path.relpath(path, self.models))

    def packed_path(self, path: str) -> str:
        return os.path.join(self.packed, os.path.relpath(path, self.models)) + ".fpz"

    # -- measuring -----------------------------------------------------------------------
    def best(self, key: str, fn) -> dict:
        """Best of --rounds of fn() -> {"seconds", "each"}; every round kept."""
        rounds = [fn() for _ in range(self.args.rounds)]
        best = min(rounds, key=lambda r: r["seconds"])
        self.results[key] = {"best": best, "rounds": rounds}
        print(f"  {key}: " + ", ".join(f"{r['seconds']:.2f}" for r in rounds) + " s",
              flush=True)
        return best

    def on_mount(self, loader: str, paths: List[str], *mount_args: str) -> dict:
        """loader through a fresh mount; with the daemon's peak RSS (MiB) over the load."""
        with mounting.mounted(self.packed, self.mnt, *mount_args) as m:
            result = run_loader(loader, *[self.in_mount(p) for p in paths])
            result["daemon_rss_mib"] = proc_memory(m.pid, "VmHWM") >> 20
            return result

    def on_lmzip(self, loader: str, model_dir: str, files: List[str]) -> dict:
        store = os.path.join(self.data, "lmzip-store")
        if not os.path.isdir(os.path.join(store, "models")):
            subprocess.run(["lmz", "add", "-q", "-j", str(os.cpu_count()), "--store", store,
                            "--name", "llama-3b", model_dir], check=True)
        mnt = os.path.join(self.data, "lmz-mnt")
        os.makedirs(mnt, exist_ok=True)
        subprocess.run(["lmz", "mount", "-q", "-d", "--store", store, mnt], check=True,
                       timeout=120)
        try:
            args = [os.path.join(mnt, "llama-3b", os.path.basename(f)) for f in files] \
                if files else [os.path.join(mnt, "llama-3b")]
            return run_loader(loader, *args)
        finally:
            subprocess.run(["lmz", "umount", mnt], capture_output=True, timeout=120)

    def row(self, what: str, raw: Optional[dict], fpfs_: Optional[dict], note: str = "",
            size: int = 0) -> None:
        self.rows.append((what, raw, fpfs_, note, size))

    # -- parts ---------------------------------------------------------------------------
    def part_load(self) -> None:
        shards, size = self.shards, total_size(self.shards)
        raw = self.best("load_file raw", lambda: run_loader("load_file", *shards))
        mnt = self.best("load_file mount", lambda: self.on_mount("load_file", shards))
        fl = self.best("fpfs.load_file", lambda: run_loader(
            "fpfs.load_file", *[self.packed_path(p) for p in shards]))
        self.row(f"`load_file`, {len(shards)} shards, every tensor copied", raw, mnt,
                 "per shard GB/s: raw " + shard_speeds(raw, shards) + "; mount "
                 + shard_speeds(mnt, shards) + f"; daemon peak RSS {mnt['daemon_rss_mib']}"
                 " MiB (default `--cache-size`)", size)
        self.row("`fpfs.load_file` (no FUSE) vs raw `load_file`", raw, fl, "", size)
        if self.args.peers and shutil.which("lmz"):
            lmz = self.best("load_file lmzip mount", lambda: self.on_lmzip(
                "load_file", os.path.dirname(shards[0]), shards))
            self.row("same through lmzip's mount (lmzip 1.3.0)", raw, lmz, "", size)

    def raw_vs_mount(self, loader: str, path: str, what: str, size: int) -> None:
        """loader on path (a file or model directory) from the raw files and through a
        fresh mount, one row."""
        raw = self.best(f"{loader} raw", lambda: run_loader(loader, path))
        mnt = self.best(f"{loader} mount", lambda: self.on_mount(loader, [path]))
        self.row(what, raw, mnt, f"daemon peak RSS {mnt['daemon_rss_mib']} MiB", size)

    def part_pretrained(self) -> None:
        self.raw_vs_mount("from_pretrained", os.path.dirname(self.shards[0]),
                          "`from_pretrained` + every weight read", total_size(self.shards))

    def part_torch(self) -> None:
        self.raw_vs_mount("torch.load", self.torch_file,
                          "`torch.load(mmap=True)` FP32 state dict + every page",
                          os.path.getsize(self.torch_file))

    def part_gguf(self) -> None:
        self.raw_vs_mount("GGUFReader", self.gguf_file,
                          "`gguf.GGUFReader` F16 + every tensor page",
                          os.path.getsize(self.gguf_file))

    def part_cores(self) -> None:
        shards, size = self.shards, total_size(self.shards)
        raw = self.best("read raw", lambda: run_loader("read", *shards))

        def pinned() -> dict:
            with mounting.mounted(self.packed, self.mnt) as m:
                subprocess.run(["taskset", "-a", "-p", "0x1", str(m.pid)],
                               check=True, capture_output=True)
                return run_loader("read", *[self.in_mount(p) for p in shards])
        one = self.best("read mount 1 core", pinned)
        both = self.best("read mount all cores", lambda: self.on_mount("read", shards))
        inproc = self.best("in-process decode", lambda: in_process_decode(
            [self.packed_path(p) for p in shards]))
        self.row("sequential 1 MiB `read`s, cold", raw, both, "", size)
        self.row("same, daemon pinned to 1 core (taskset) vs all cores", one, both,
                 f"all cores {one['seconds'] / both['seconds']:.2f}x one", size)
        self.row("same vs in-process decode on all cores (page cache warm)", inproc, both,
                 f"mount at {inproc['seconds'] / both['seconds']:.2f}x in-process", size)

    def part_write(self) -> None:
        src = self.shards[0]
        wback, wmnt = os.path.join(self.data, "wback"), os.path.join(self.data, "wmnt")
        disk = os.path.join(self.data, "copy.safetensors")

        def cp_raw() -> dict:
            fresh_start()
            t = time.perf_counter()
            subprocess.run(["cp", src, disk], check=True)
            subprocess.run(["sync"], check=True)
            took = time.perf_counter() - t
            os.unlink(disk)
            return {"seconds": took, "each": []}

        def cp_mount() -> dict:
            shutil.rmtree(wback, ignore_errors=True)
            os.makedirs(wback)
            with mounted(wback, wmnt, "--writable"):
                fresh_start()
                t = time.perf_counter()
                subprocess.run(["cp", src, wmnt], check=True)
                subprocess.run(["sync"], check=True)
                took = time.perf_counter() - t
            stored = glob.glob(os.path.join(wback, "*.fpz"))
            if len(stored) != 1:
                raise RuntimeError(f"writable mount stored {os.listdir(wback)}")
            shutil.rmtree(wback)
            return {"seconds": took, "each": []}

        def compress() -> dict:
            out = os.path.join(self.data, "one.fpz")
            fresh_start()
            t = time.perf_counter()
            cli("compress", src, out, timeout=1800)
            took = time.perf_counter() - t
            os.unlink(out)
            return {"seconds": took, "each": []}
        raw = self.best("cp raw", cp_raw)
        mnt = self.best("cp writable mount", cp_mount)
        comp = self.best("fpfs compress", compress)
        size = os.path.getsize(src)
        self.row("`cp` + `sync` of a shard into a `--writable` mount", raw, mnt, "", size)
        self.row("`fpfs compress` of the same shard vs `cp`", raw, comp, "", size)

    def part_untyped(self) -> None:
        text = scale_models.make_text(os.path.join(self.data, "text", "text-1g.txt"))
        out = os.path.join(self.data, "text.out")

        def timed(cmd: List[str]) -> dict:
            fresh_start()
            t = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            took = time.perf_counter() - t
            size = os.path.getsize(out)
            os.unlink(out)
            return {"seconds": took, "each": [], "stored": size}
        zstd = self.best("zstd -3 -T0", lambda: timed(["zstd", "-q", "-3", "-T0", "-f", text,
                                                        "-o", out]))
        fp = self.best("fpfs compress text", lambda: timed(
            [sys.executable, "-m", "fpfs.cli", "compress", text, out]))
        size = os.path.getsize(text)
        self.row("compress a 1 GB file fpfs does not recognise (text)", zstd, fp,
                 f"stored: zstd -3 {100 * zstd['stored'] / size:.1f} %, fpfs "
                 f"{100 * fp['stored'] / size:.1f} %", size)

    def part_delta(self) -> None:
        chain_dir = os.path.join(self.data, "chain")
        files = scale_models.make_chain(chain_dir)
        back_chain, back_alone = os.path.join(self.data, "chain.fpfs"), \
            os.path.join(self.data, "alone.fpfs")
        back_shallow = os.path.join(self.data, "chain-depth1.fpfs")
        last = files[-1]
        if not os.path.isdir(back_chain):
            cli("compress", chain_dir, back_chain, timeout=3600)
        if not os.path.isdir(back_shallow):
            cli("compress", "--max-depth", "1", chain_dir, back_shallow, timeout=3600)
        if not os.path.isdir(back_alone):
            os.makedirs(back_alone)
            cli("compress", "--no-delta", last,
                os.path.join(back_alone, os.path.basename(last) + ".fpz"), timeout=3600)
        with fpfs.open(os.path.join(back_chain, os.path.basename(last) + ".fpz")) as f:
            depth = f.depth

        def read_through(backing: str) -> dict:
            with mounted(backing, self.mnt):
                return run_loader("read", os.path.join(self.mnt, os.path.basename(last)))
        chain = self.best("delta chain read", lambda: read_through(back_chain))
        shallow = self.best("--max-depth 1 read", lambda: read_through(back_shallow))
        alone = self.best("stored alone read", lambda: read_through(back_alone))

        def stored(root: str) -> str:
            return f"{_tree_bytes(root) / 1e6:.0f} MB"
        self.row(f"sequential read of a checkpoint stored as a delta {depth} deep vs alone",
                 alone, chain, f"chain at {alone['seconds'] / chain['seconds']:.2f}x alone; "
                 f"the {len(files)} checkpoints stored in {stored(back_chain)}",
                 os.path.getsize(last))
        self.row("same, compressed with `--max-depth 1` (1 deep)", alone, shallow,
                 f"{alone['seconds'] / shallow['seconds']:.2f}x alone; the {len(files)} "
                 f"checkpoints stored in {stored(back_shallow)}", os.path.getsize(last))

    # -- report --------------------------------------------------------------------------
    def table(self) -> str:
        load = os.getloadavg()[0]
        lines = [f"CPU: {cpu_model()}, {os.cpu_count()} cores; load before the run "
                 f"{self.load_before:.2f}, after {load:.2f}; best of {self.args.rounds}; "
                 + "; ".join(self.notes), "",
                 "| what | size | baseline | fpfs | fpfs / baseline | note |",
                 "|---|---:|---:|---:|---:|---|"]
        for what, base, ours, note, size in self.rows:
            b = base["seconds"] if base else float("nan")
            o = ours["seconds"] if ours else float("nan")
            lines.append(f"| {what} | {size / 1e9:.2f} GB | {b:.2f} s ({size / b / 1e9:.2f} "
                         f"GB/s) | {o:.2f} s ({size / o / 1e9:.2f} GB/s) | {o / b:.2f}x | "
                         f"{note} |")
        lines += ["", "Baseline: the raw files from the same disk (for the pinned-core row: the "
                  "daemon on one core; for the in-process row: `fpfs.open().readinto` on all "
                  "cores; for the delta rows: the same checkpoint stored alone). Time ratios: "
                  "below 1 is fpfs faster. Weights are random normal (ratios of real weights: "
                  "the tables below)."]
        return "\n".join(lines)

    def run(self) -> None:
        self.load_before = os.getloadavg()[0]
        self.prepare()
        with guest_memory_held(self.args.keep_page_reporting) as note:
            self.notes.append(note)
            for part in PARTS:
                if part in self.args.only:
                    print(f"{part}:", flush=True)
                    getattr(self, "part_" + part)()


def shard_speeds(result: dict, paths: List[str]) -> str:
    return "/".join(f"{os.path.getsize(p) / t / 1e9:.2f}" for p, t in zip(paths, result["each"]))


def in_process_decode(paths: List[str]) -> dict:
    """fpfs.open(p).readinto on all cores, backing files in the page cache, output buffer
    reused (what the machine decodes with no FUSE and no disk)."""
    code = '''
import json, sys, time
import numpy as np
import fpfs
for p in sys.argv[1:]:
    open(p, "rb").read()
buf = np.empty(max(fpfs.open(p).size for p in sys.argv[1:]), np.uint8)
buf[:] = 0
t0 = time.perf_counter()
for p in sys.argv[1:]:
    with fpfs.open(p) as f:
        f.readinto(memoryview(buf)[:f.size])
print(json.dumps({"seconds": time.perf_counter() - t0, "each": []}))
'''
    res = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True,
                         check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/var/tmp/fpfs-scale",
                    help="where models are generated and compressed (default %(default)s; "
                         "needs about 30 GB)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default=",".join(PARTS),
                    help="parts to run, comma-separated (default: all): " + ", ".join(PARTS))
    ap.add_argument("--peers", action="store_true", help="also lmzip's mount (pip install lmzip)")
    ap.add_argument("--keep-page-reporting", action="store_true",
                    help="leave the guest's free page reporting on (see above)")
    ap.add_argument("--json", help="write every round's numbers here")
    ap.add_argument("--write-docs", action="store_true",
                    help="put the table into docs/BENCHMARKS.md")
    args = ap.parse_args()
    args.only = [p for p in args.only.split(",") if p]
    unknown = set(args.only) - set(PARTS)
    if unknown:
        ap.error(f"unknown parts: {', '.join(sorted(unknown))}")
    if os.geteuid() != 0:
        ap.error("needs root (drop_caches, FUSE, taskset of the daemon)")
    scale = Scale(args)
    scale.run()
    table = scale.table()
    print("\n" + table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(scale.results, f, indent=1)
    if args.write_docs:
        write_docs_section("bench_scale", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
