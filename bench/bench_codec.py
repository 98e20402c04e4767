#!/usr/bin/env python3
"""Codec benchmark on the real all-MiniLM-L6-v2 weights cast to FP32, BF16, FP16, FP8 and
MXFP4: stored size (% of the original file) and compress / decompress throughput (GB/s of
original bytes) for fpfs, zstd -3 and ZipNN, one thread and all threads, in one run.

    python bench/bench_codec.py [--repeat N] [--markdown]

fpfs is timed on its chunk codec (plan -> encode every chunk; decode every chunk, with its
checksum check, into its place in one output buffer), which is what `fpfs compress` and
reads through the mount run. zstd and ZipNN allocate their output (their APIs offer no
other way).
ZipNN gets the safetensors header stored raw and the tensor data with the dtype hint (on the
whole file it is not lossless when the header length is odd); FP8/MXFP4 data is given to it
as float8_e4m3fn, its only one-byte float mode. Every codec's output is checked lossless.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import zstandard  # noqa: E402

from bench._common import best_time  # noqa: E402

from fpfs.codecs import decode_chunk, encode_chunk  # noqa: E402
from fpfs.compress import plan_chunks  # noqa: E402
from fpfs.container import DEFAULT_CHUNK_SIZE, checksum  # noqa: E402
from fpfs.formats import detect as read_layout  # noqa: E402
from tests.weights import REAL_DTYPES, real_weights_file  # noqa: E402

ZIPNN_DTYPE = {"F32": "float32", "BF16": "bfloat16", "F16": "float16",
               "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e4m3fn", "MXFP4": "float8_e4m3fn"}
THREADS = os.cpu_count() or 2


def bench_fpfs(path: str, data: bytes, repeat: int) -> dict:
    layout = read_layout(path)
    chunks = plan_chunks(layout, DEFAULT_CHUNK_SIZE)
    view = memoryview(data)

    def enc(chunk):
        off, length, dtype, _ = chunk
        piece = view[off:off + length]
        return encode_chunk(piece, dtype) + (checksum(piece), length)

    # Decode into one output buffer, each chunk into its place, as reads through the mount
    # and fpfs.open().readinto do (the destination is the reader's buffer).
    output = bytearray(len(data))
    output[:layout.prefix_length] = data[:layout.prefix_length]
    out_view = memoryview(output)

    def dec(item_and_chunk):
        (codec, payload, csum, length), (off, _, _, _) = item_and_chunk
        target = out_view[off:off + length]
        decode_chunk(codec, payload, target)
        assert checksum(target) == csum

    res = {}
    encoded = None
    for threads in (1, THREADS):
        with ThreadPoolExecutor(threads) as pool:
            # One thread runs in the caller, as a reader does: no executor overhead.
            mapper = (lambda fn, items: list(map(fn, items))) if threads == 1 else \
                (lambda fn, items: list(pool.map(fn, items)))

            def run_enc():
                nonlocal encoded
                encoded = mapper(enc, chunks)
            res[f"c{threads}"] = best_time(run_enc, repeat)
            res[f"d{threads}"] = best_time(lambda: mapper(dec, zip(encoded, chunks)), repeat)
    assert output == data, "fpfs round trip failed"
    table = len(chunks) * 40 + 40 + 72         # chunk table, header, trailer
    res["size"] = layout.prefix_length + sum(len(e[1]) for e in encoded) + table
    return res


def bench_zstd(data: bytes, repeat: int) -> dict:
    res = {}
    for threads in (1, THREADS):
        cctx = zstandard.ZstdCompressor(level=3, threads=threads if threads > 1 else 0)
        out = None

        def run():
            nonlocal out
            out = cctx.compress(data)
        res[f"c{threads}"] = best_time(run, repeat)
        dctx = zstandard.ZstdDecompressor()
        res[f"d{threads}"] = best_time(lambda: dctx.decompress(out), repeat)
        assert dctx.decompress(out) == data
        res["size"] = len(out)
    return res


def bench_zipnn(name: str, data: bytes, prefix: int, repeat: int) -> dict:
    from zipnn import ZipNN
    body = data[prefix:]
    res = {}
    for threads in (1, THREADS):
        z = ZipNN(input_format="byte", bytearray_dtype=ZIPNN_DTYPE[name], threads=threads)
        out = None

        def run():
            nonlocal out
            out = z.compress(fresh)
        # ZipNN rewrites its BF16/F32 input in place (it moves the sign bit): give every
        # timed call a fresh copy, made outside the timer.
        best = float("inf")
        for _ in range(repeat):
            fresh = bytes(bytearray(body))
            best = min(best, best_time(run, 1))
        res[f"c{threads}"] = best
        res[f"d{threads}"] = best_time(lambda: z.decompress(out), repeat)
        if bytes(z.decompress(out)) != body:
            res["lossy"] = True
        res["size"] = prefix + len(out)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="best of N timings (default 3)")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="fpfs-bench-")
    rows = []
    for name in REAL_DTYPES:
        path = real_weights_file(name, tmp)
        with open(path, "rb") as f:
            data = f.read()
        prefix = read_layout(path).prefix_length
        results = {"fpfs": bench_fpfs(path, data, args.repeat),
                   "zstd -3": bench_zstd(data, args.repeat)}
        try:
            results["ZipNN"] = bench_zipnn(name, data, prefix, args.repeat)
        except Exception as exc:           # report, do not hide
            print(f"ZipNN failed on {name}: {exc}", file=sys.stderr)
        for codec, r in results.items():
            gb = len(data) / 1e9
            rows.append((name, codec, 100 * r["size"] / len(data), gb / r["c1"],
                         gb / r[f"c{THREADS}"], gb / r["d1"], gb / r[f"d{THREADS}"],
                         " (NOT lossless)" if r.get("lossy") else ""))
        print(f"done {name}", file=sys.stderr)
    print(f"\nall-MiniLM-L6-v2 (22.7 M parameters), {THREADS} threads = all cores; "
          f"GB/s of original bytes, best of {args.repeat}\n")
    print(f"| dtype | codec | size % | compress 1T | compress {THREADS}T | "
          f"decompress 1T | decompress {THREADS}T |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, codec, pct, c1, cn, d1, dn, note in rows:
        print(f"| {name} | {codec}{note} | {pct:.2f} | {c1:.2f} | {cn:.2f} | {d1:.2f} | {dn:.2f} |")


if __name__ == "__main__":
    main()
