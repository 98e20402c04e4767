#!/usr/bin/env python3
"""Fine-tunes and checkpoint series stored as deltas, side by side with the peers that also
code a file against its base (z4ai, lmzip, glyd, ZipNN's delta mode, zstd --patch-from),
in one run, each peer's output checked to restore the file (bench/peers.py).

    python bench/bench_delta.py [--work DIR] [--repeat 3]

Data: a real fine-tune of all-MiniLM-L6-v2 (tests/finetune.py: AdamW on real English
text), BF16 safetensors at steps 0 (the base), 40, 80, 120; its FP32 training
checkpoints (model + AdamW state) at steps 0, 40, 80, 120. Reported:
  1. each fine-tune given the base (step 0) and given the previous step, % of its size;
  2. four checkpoints of one run (steps 0, 40, 80, 120) compressed as a tree, % of total;
  3. the FP32 AdamW checkpoint directory compressed as a tree, % of total;
  4. read speed of a delta file against the same file stored alone: fpfs.open().read()
     from a fresh cache, and a cold sequential read through a fresh mount;
  5. memory: three fine-tunes of one base read through one mount, and the decoded bytes
     the daemon's cache holds (the base's chunks once, not three times).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import fpfs  # noqa: E402
from fpfs.cache import ChunkCache  # noqa: E402
from bench import peers  # noqa: E402
from bench._common import cli, mounted, status, report  # noqa: E402
from tests.finetune import make_series  # noqa: E402

DELTA_PEERS = ("z4ai", "lmz", "glyd", "zipnn", "zstd")
STEPS = (0, 40, 80, 120)


def tree_ratio(files, work: str, name: str) -> tuple:
    """Compress files (a series) as one tree; (stored bytes, original bytes, stats)."""
    src = os.path.join(work, name + "-src")
    dst = os.path.join(work, name + "-fpfs")
    shutil.rmtree(src, ignore_errors=True)
    shutil.rmtree(dst, ignore_errors=True)
    for path in files:
        d = os.path.join(src, os.path.basename(os.path.dirname(path)))
        os.makedirs(d, exist_ok=True)
        os.link(path, os.path.join(d, os.path.basename(path)))
    cli("compress", src, dst)
    stored = sum(os.path.getsize(os.path.join(dp, f)) for dp, dn, fs in os.walk(dst)
                 for f in fs if ".fpfs-bases" not in dp)
    original = sum(os.path.getsize(p) for p in files)
    return stored, original, dst


def read_speeds(base: str, ft: str, other_ft: str, work: str, repeat: int) -> list:
    d = os.path.join(work, "speed")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    fpfs.compress_file(base, os.path.join(d, "base.safetensors.fpz"))
    fpfs.compress_file(ft, os.path.join(d, "alone.safetensors.fpz"))
    fpfs.compress_file(ft, os.path.join(d, "delta.safetensors.fpz"),
                       base=os.path.join(d, "base.safetensors.fpz"))
    fpfs.compress_file(other_ft, os.path.join(d, "other.safetensors.fpz"),
                       base=os.path.join(d, "base.safetensors.fpz"))
    size = os.path.getsize(ft)
    rows = []
    for name in ("alone", "delta", "delta, after another fine-tune of its base"):
        api, mnt = [], []
        file = "alone" if name == "alone" else "delta"
        for i in range(repeat):
            cache = ChunkCache(1 << 30)
            warm = name.startswith("delta, after")
            if warm:        # decodes (and caches) the base's chunks, as serving N fine-tunes does
                with fpfs.open(os.path.join(d, "other.safetensors.fpz"), cache) as f:
                    f.read()
            t = time.perf_counter()
            with fpfs.open(os.path.join(d, f"{file}.safetensors.fpz"), cache) as f:
                f.read()
            api.append(size / (time.perf_counter() - t) / 1e9)
            with mounted(d, os.path.join(work, f"mnt-{file}{i}")) as m:
                if warm:
                    _read_all(os.path.join(m, "other.safetensors"))
                t = time.perf_counter()
                _read_all(os.path.join(m, f"{file}.safetensors"))
                mnt.append(size / (time.perf_counter() - t) / 1e9)
        rows.append((name, max(api), max(mnt), mnt))
    return rows


def _read_all(path: str) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.read(1 << 20):
            pass


def shared_memory(base: str, fts, work: str) -> dict:
    d = os.path.join(work, "shared")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    fpfs.compress_file(base, os.path.join(d, "base.safetensors.fpz"))
    for i, ft in enumerate(fts):
        fpfs.compress_file(ft, os.path.join(d, f"ft{i}.safetensors.fpz"),
                           base=os.path.join(d, "base.safetensors.fpz"))
    with mounted(d, os.path.join(work, "mnt-shared"), "--cache-size", "2G") as m:
        for i in range(len(fts)):
            _read_all(os.path.join(m, f"ft{i}.safetensors"))
        s = status(m)
    return {"fine_tunes": len(fts), "base_bytes": os.path.getsize(base), "status": s}


def sizes(args, bf16: dict, ckpts: list) -> None:
    cols = ["fpfs"] + [p for p in DELTA_PEERS if p in peers.PEERS]
    print("| BF16 fine-tune | given | " + " | ".join(cols) + " |")
    print("|---|---|" + "---:|" * len(cols))
    tmp = os.path.join(args.work, "one")
    os.makedirs(tmp, exist_ok=True)
    for prev, step in zip(STEPS, STEPS[1:]):
        for base_step in sorted({0, prev}):
            out = os.path.join(tmp, f"s{step}-b{base_step}.fpz")
            r = fpfs.compress_file(bf16[step], out, base=bf16[base_step], store_root=tmp)
            cells = [f"**{100 * r.ratio:.2f}**"] + \
                [peers._cell(p, bf16[step], bf16[base_step]) for p in cols[1:]]
            print(f"| step {step} | step {base_step} | " + " | ".join(cells) + " |",
                  flush=True)
    alone = fpfs.compress_file(bf16[120], os.path.join(tmp, "alone.fpz"))
    print(f"| step 120 | (alone) | {100 * alone.ratio:.2f} | " +
          " | ".join(peers._cell(p, bf16[120]) for p in cols[1:]) + " |")

    four = [bf16[s] for s in (0, 40, 80, 120)]
    stored, original, _ = tree_ratio(four, args.work, "four")
    print(f"\nFour BF16 checkpoints of one run (steps 0, 40, 80, 120) as one tree: "
          f"{original / 1e6:.1f} MB -> {stored / 1e6:.1f} MB = **{100 * stored / original:.2f} %** "
          "(target ≤ 30 %)")
    stored, original, _ = tree_ratio(ckpts, args.work, "adamw")
    print(f"FP32 AdamW training checkpoints (model + optimizer, steps 0, 40, 80, 120) as one "
          f"tree: {original / 1e6:.1f} MB -> {stored / 1e6:.1f} MB = "
          f"**{100 * stored / original:.2f} %** (target ≤ 46 %)")



def speed(args, bf16: dict) -> None:
    print(f"\nRead speed, step 120 BF16, GB/s of original bytes, best of {args.repeat} "
          "(.fpz files in the page cache; fresh cache / fresh mount each run):\n")
    print("| stored as | fpfs.open().read() | cold mount read | mount runs |\n|---|---:|---:|---|")
    rows = read_speeds(bf16[0], bf16[120], bf16[80], args.work, args.repeat)
    for name, api, mnt, runs in rows:
        print(f"| {name} | {api:.2f} | {mnt:.2f} | {', '.join(f'{r:.2f}' for r in runs)} |")
    for row in rows[1:]:
        print(f"\n{row[0]} / alone: API {row[1] / rows[0][1]:.2f}x, mount "
              f"{row[2] / rows[0][2]:.2f}x (target ≥ 0.6x)")

    mem = shared_memory(bf16[0], [bf16[s] for s in (40, 80, 120)], args.work)
    cache = mem["status"].get("cache", {})
    print(f"\nThree fine-tunes of one base read through one mount: the daemon's cache holds "
          f"{cache.get('used_bytes', 0) / 1e6:.1f} MB of decoded chunks "
          f"(base file {mem['base_bytes'] / 1e6:.1f} MB; decoded once, shared), "
          f"daemon RSS {mem['status'].get('rss_bytes', 0) / 1e6:.0f} MB")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=os.path.join(REPO, "bench", "out", "delta"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", choices=("sizes", "speed"), default=None,
                    help="run one part (default: everything)")
    ap.add_argument("--write-docs", action="store_true",
                    help="also put the report into docs/BENCHMARKS.md")
    args = ap.parse_args(argv)
    with report("bench_delta", args.write_docs):
        return run(args)


def run(args) -> int:
    os.makedirs(args.work, exist_ok=True)
    series_root = os.path.join(args.work, "series")
    bf16 = dict(zip(STEPS, make_series(series_root, steps=STEPS, dtype="BF16")))
    ckpts = make_series(series_root, steps=(0, 40, 80, 120), dtype="F32", fmt="torch",
                        optimizer=True)
    print(f"### Deltas (`python bench/bench_delta.py`)\n{peers._cpu()}, {os.cpu_count()} "
          "cores; real MiniLM fine-tune (tests/finetune.py); % of the file's size, base "
          "not counted; every peer's output restored and compared\n")
    if args.only != "speed":
        sizes(args, bf16, ckpts)
    if args.only != "sizes":
        speed(args, bf16)
    return 0


if __name__ == "__main__":
    sys.exit(main())
