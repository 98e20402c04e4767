#!/usr/bin/env python3
"""K/V cache benchmark: real attention keys and values of all-MiniLM-L6-v2 (transformers,
offline) on real text, in FP16, BF16, F8_E4M3 and F8_E5M2; stored size (% of the original
bytes) and compress / decompress throughput (GB/s of original bytes, one thread) for
fpfs.kv, zstd -3 and ZipNN, keys and values separately, in one run.

    python bench/bench_kv.py [--sentences N] [--repeat N]

Text: sentences cut from the docstrings of a fixed list of Python standard-library modules
(shipped with Python, so the run is deterministic for a given Python version), each run
through the model on its own (no padding tokens in the cache). For every layer the K and V
a cache would hold are that layer's attention.self.key / .value Linear applied to the
layer's input hidden state (output_hidden_states=True), shaped [1, tokens, heads=12,
head_dim=32]; one sentence's layer tensors are concatenated along tokens, so each layer gives
one [1, all tokens, 12, 32] tensor, and each codec compresses the 6 layer tensors one by one.
FP8: each layer tensor scaled so its largest |value| maps to half the format's max, then cast
with ml_dtypes (as tests/weights.py does for weights). ZipNN gets bytes with the dtype hint
("float16", "bfloat16", and "float8_e4m3fn" for both FP8 kinds: its only one-byte float),
threads=1, and a fresh copy of the input for every compress (ZipNN 0.5.4 rotates the sign
bit of bfloat16/float32 input in place, in the caller's bytes object). Every codec's output
is decompressed and compared bit for bit (fpfs.kv: also dtype and shape); a codec that does
not give back the input is marked NOT lossless.
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench._common import best_time, report  # noqa: E402  (first: it settles BLAS threads)

import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402
import zstandard  # noqa: E402

import fpfs.kv  # noqa: E402
from tests.weights import MODEL_DIR, cast_fp8  # noqa: E402

TEXT_MODULES = (
    "abc", "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "collections",
    "concurrent.futures", "configparser", "contextlib", "copy", "csv", "dataclasses",
    "datetime", "decimal", "difflib", "email", "enum", "fractions", "functools", "gettext",
    "glob", "gzip", "hashlib", "heapq", "hmac", "html", "http.client", "imaplib", "inspect",
    "io", "ipaddress", "itertools", "json", "logging", "mailbox", "math", "mimetypes",
    "multiprocessing", "operator", "optparse", "os", "pathlib", "pickle", "pkgutil",
    "platform", "pprint", "queue", "random", "re", "sched", "secrets", "selectors", "shelve",
    "shlex", "shutil", "signal", "smtplib", "socket", "sqlite3", "statistics", "string",
    "struct", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit", "token",
    "tokenize", "traceback", "typing", "unittest", "urllib.parse", "uuid", "warnings",
    "weakref", "xml.dom", "zipfile", "zlib")
DTYPES = {"FP16": np.float16, "BF16": ml_dtypes.bfloat16,
          "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2}
ZIPNN_DTYPE = {"FP16": "float16", "BF16": "bfloat16",
               "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e4m3fn"}


def sentences(count: int) -> list:
    """Up to `count` distinct sentences of 6-40 words from stdlib docstrings, in a fixed
    order (module list order, then sorted member names)."""
    out, seen = [], set()
    for name in TEXT_MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        docs = [mod.__doc__ or ""]
        for attr in sorted(dir(mod)):
            if not attr.startswith("_"):
                doc = getattr(getattr(mod, attr, None), "__doc__", None)
                if isinstance(doc, str):
                    docs.append(doc)
        for doc in docs:
            text = re.sub(r"\s+", " ", doc)
            for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
                s = s.strip()
                if 6 <= len(s.split()) <= 40 and s not in seen and not s.startswith(">>>"):
                    seen.add(s)
                    out.append(s)
                    if len(out) >= count:
                        return out
    return out


def capture_kv(texts: list):
    """Per layer: (K, V) float32 arrays [1, tokens, heads, head_dim] over all texts."""
    import torch
    from transformers import AutoModel, AutoTokenizer
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(MODEL_DIR, local_files_only=True)
    model = AutoModel.from_pretrained(MODEL_DIR, local_files_only=True).eval()
    layers = model.encoder.layer
    heads = model.config.num_attention_heads
    head_dim = model.config.hidden_size // heads
    keys = [[] for _ in layers]
    values = [[] for _ in layers]
    with torch.no_grad():
        for text in texts:
            enc = tok(text, return_tensors="pt", truncation=True, max_length=128)
            hidden = model(**enc, output_hidden_states=True).hidden_states
            for i, layer in enumerate(layers):
                h = hidden[i]                       # the input of layer i
                b, t, _ = h.shape
                keys[i].append(layer.attention.self.key(h).reshape(b, t, heads, head_dim))
                values[i].append(layer.attention.self.value(h).reshape(b, t, heads, head_dim))
    return ([torch.cat(k, dim=1).numpy() for k in keys],
            [torch.cat(v, dim=1).numpy() for v in values])


def cast(x: np.ndarray, name: str) -> np.ndarray:
    if name.startswith("F8"):
        return cast_fp8(x, DTYPES[name])
    return x.astype(DTYPES[name])


def as_bytes(obj) -> bytes:
    if isinstance(obj, np.ndarray):
        return np.ascontiguousarray(obj).reshape(-1).view(np.uint8).tobytes()
    return bytes(obj)


def run_codec(comp, decomp, make_inputs, raw_bytes, repeat):
    """(stored bytes, compress s, decompress s, lossless) for a list of layer tensors.
    make_inputs() gives fresh inputs for each compress pass, outside the timing (ZipNN
    rewrites the bytes it is given, in place, for bfloat16 and float32)."""
    tc = td = float("inf")
    blobs, outs = [], []
    for _ in range(repeat):
        inputs = make_inputs()
        t = time.perf_counter()
        blobs = [comp(x) for x in inputs]
        tc = min(tc, time.perf_counter() - t)
        t = time.perf_counter()
        outs = [decomp(b) for b in blobs]
        td = min(td, time.perf_counter() - t)
    lossless = all(as_bytes(o) == r for o, r in zip(outs, raw_bytes))
    if isinstance(outs[0], np.ndarray):
        lossless = lossless and all(o.dtype == x.dtype and o.shape == x.shape
                                    for o, x in zip(outs, make_inputs()))
    return sum(len(b) for b in blobs), tc, td, lossless


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", type=int, default=300, help="sentences of text (default 300)")
    ap.add_argument("--repeat", type=int, default=3, help="best of N timings (default 3)")
    ap.add_argument("--write-docs", action="store_true",
                    help="also put the report into docs/BENCHMARKS.md")
    args = ap.parse_args()
    with report("bench_kv", args.write_docs):
        run(args)


def run(args) -> None:
    from zipnn import ZipNN

    texts = sentences(args.sentences)
    t = time.perf_counter()
    keys, values = capture_kv(texts)
    tokens = keys[0].shape[1]
    print(f"captured K/V of {len(texts)} sentences, {tokens} tokens, {len(keys)} layers "
          f"in {time.perf_counter() - t:.1f} s", file=sys.stderr)

    zc = zstandard.ZstdCompressor(level=3)
    zd = zstandard.ZstdDecompressor()
    rows = []
    for name in DTYPES:
        zipnn = ZipNN(input_format="byte", bytearray_dtype=ZIPNN_DTYPE[name], threads=1)
        for kind, layer_tensors in (("K", keys), ("V", values)):
            tensors = [np.ascontiguousarray(cast(x, name)) for x in layer_tensors]
            raw = [t.tobytes() for t in tensors]
            total = sum(len(r) for r in raw)
            codecs = {
                "fpfs.kv": (fpfs.kv.compress, fpfs.kv.decompress, lambda: tensors),
                "zstd -3": (zc.compress, zd.decompress, lambda: raw),
                "ZipNN": (zipnn.compress, zipnn.decompress,
                          lambda: [bytes(bytearray(r)) for r in raw]),
            }
            for codec, (comp, decomp, inputs) in codecs.items():
                try:
                    size, tc, td, ok = run_codec(comp, decomp, inputs, raw, args.repeat)
                except Exception as exc:            # report, do not hide
                    print(f"{codec} failed on {name} {kind}: {exc!r}", file=sys.stderr)
                    rows.append((name, kind, codec + " (FAILED)", float("nan"), 0, 0, total))
                    continue
                note = "" if ok else " (NOT lossless)"
                rows.append((name, kind, codec + note, 100 * size / total,
                             total / tc / 1e9, total / td / 1e9, total))
        print(f"done {name}", file=sys.stderr)

    print(f"\nall-MiniLM-L6-v2 K/V cache: {len(texts)} sentences of stdlib docstrings, "
          f"{tokens} tokens x {len(keys)} layers x 12 heads x 32; one thread; "
          f"GB/s of original bytes, best of {args.repeat}\n")
    print("| dtype | K/V | codec | MB | size % | compress GB/s | decompress GB/s |")
    print("|---|---|---|---:|---:|---:|---:|")
    for name, kind, codec, pct, c, d, total in rows:
        print(f"| {name} | {kind} | {codec} | {total / 1e6:.1f} | {pct:.2f} | {c:.2f} | "
              f"{d:.2f} |")


if __name__ == "__main__":
    main()
