#!/usr/bin/env python3
"""Codec benchmark on the real all-MiniLM-L6-v2 weights cast to FP32, BF16, FP16, FP8 and
MXFP4: stored size (% of the original file) and compress / decompress throughput (GB/s of
original bytes) for fpfs, zstd -3 and ZipNN, one thread and all threads, in one run.

    python bench/bench_codec.py [--repeat N] [--dtypes BF16,F32] [--kernels avx2,portable]
                                [--out-dir DIR]

"fpfs" is timed on its chunk codec (plan -> encode every chunk; decode every chunk, with its
checksum check, into its place in one reused output buffer), which is what `fpfs compress`
and reads through the mount run. "fpfs read()" is the public API a loader calls:
`fpfs.open(p).read()` of the whole .fpz (in the page cache), a new bytes object like
ZipNN's and zstd's output (their APIs offer no other way), decoded on 1 and on all threads.
"fpfs compress / decompress" is the command line's work on whole files: `fpfs compress` of
the original (all cores, SHA-256, fsync-ed, verified by decoding it all, renamed into
place) and `fpfs decompress` of that .fpz (all cores, SHA-256 checked, fsync-ed, renamed),
writing to --out-dir (default /dev/shm, so that the disk is not what is timed). "memcpy"
copies the original into a new bytes object: the ceiling for any decoder that returns one.
--kernels repeats the fpfs rows with each rANS32 decoder (FPFS_SIMD).
"fpfs, PLANES only (v3)" (BF16) codes every chunk as format version 3 did, without codec 6
EXPMANT: the same-run baseline of what version 4 changed.
ZipNN gets the safetensors header stored raw and the tensor data with the dtype hint (on the
whole file it is not lossless when the header length is odd); FP8/MXFP4 data is given to it
as float8_e4m3fn, its only one-byte float mode. Every codec's output is checked lossless.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import zstandard  # noqa: E402

from bench._common import best_time, report  # noqa: E402

import fpfs  # noqa: E402
from fpfs import _kernels, parallel  # noqa: E402
from fpfs.codecs import CODEC_PLANES, CODEC_RAW, CODECS, decode_chunk, encode_chunk  # noqa: E402
from fpfs.packed_file import PackedFile  # noqa: E402
from fpfs.compress import plan_chunks  # noqa: E402
from fpfs.container import DEFAULT_CHUNK_SIZE, checksum  # noqa: E402
from fpfs.formats import detect as read_layout  # noqa: E402
from tests.weights import REAL_DTYPES, real_weights_file  # noqa: E402

ZIPNN_DTYPE = {"F32": "float32", "BF16": "bfloat16", "F16": "float16",
               "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e4m3fn", "MXFP4": "float8_e4m3fn"}
THREADS = os.cpu_count() or 2


def planes_only(piece, dtype: str):
    """How format version 3 coded a chunk (PLANES or RAW): the same-run baseline of EXPMANT."""
    payload = CODECS[CODEC_PLANES].encode(piece, dtype)
    return (CODEC_RAW, bytes(piece)) if payload is None else (CODEC_PLANES, payload)


def bench_fpfs(path: str, data: bytes, repeat: int, encode=encode_chunk) -> dict:
    layout = read_layout(path)
    chunks = plan_chunks(layout, DEFAULT_CHUNK_SIZE)
    view = memoryview(data)

    def enc(chunk):
        off, length, dtype, _ = chunk
        piece = view[off:off + length]
        return encode(piece, dtype) + (checksum(piece), length)

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


def bench_fpfs_read(path: str, data: bytes, repeat: int, tmp: str) -> dict:
    """fpfs.open(p).read() of the whole file: threads=1 and all cores."""
    fpz = os.path.join(tmp, os.path.basename(path) + ".fpz")
    if not os.path.exists(fpz):
        fpfs.compress_file(path, fpz)
    res = {"size": os.path.getsize(fpz)}
    packed = PackedFile(fpz)
    try:
        for threads in (1, THREADS):
            def run():
                out, view = _kernels.bytes_for_writing(packed.size)
                parallel.read_into(packed, 0, view, threads)   # what FpzFile.read() runs
                view.release()
                return out
            res[f"d{threads}"] = best_time(run, repeat)
            assert run() == data
    finally:
        packed.close()
    with fpfs.open(fpz) as f:               # and the call itself gives the same bytes
        assert f.read() == data
    return res


def bench_fpfs_files(path: str, data: bytes, repeat: int, tmp: str, out_dir: str) -> dict:
    """`fpfs compress` (compress_file: encode on all cores, SHA-256, write a new file
    beside the output, fsync, verify by decoding it all, rename) and `fpfs decompress`
    (decompress_file: decode on all cores, SHA-256 check, write, fsync, rename) of the
    .fpz bench_fpfs_read wrote, both with their outputs in out_dir."""
    fpz = os.path.join(tmp, os.path.basename(path) + ".fpz")
    out = os.path.join(out_dir, f"fpfs-bench-{os.getpid()}")

    def compress():
        fpfs.compress_file(path, out + ".fpz", threads=THREADS)
        os.unlink(out + ".fpz")

    def decompress():
        fpfs.decompress_file(fpz, out)
        os.unlink(out)
    res = {"size": os.path.getsize(fpz), f"c{THREADS}": best_time(compress, repeat),
           f"d{THREADS}": best_time(decompress, repeat)}
    fpfs.decompress_file(fpz, out)
    with open(out, "rb") as f:
        assert f.read() == data
    os.unlink(out)
    return res


def bench_memcpy(data: bytes, repeat: int) -> dict:
    t = best_time(lambda: bytes(bytearray(data)), repeat) / 2     # two copies per call
    return {"size": len(data), "d1": t, f"d{THREADS}": t}


def cpu_model() -> str:
    """The model name, with the family/model numbers and the widest vector extension (a
    VM may name a Zen 3 and a Zen 4 alike "AMD EPYC"; fpfs's speed differs between them)."""
    info = {}
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
            if key.strip() == "flags":
                break
    flags = set(info.get("flags", "").split())
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return (f"{info.get('model name', 'unknown CPU')} (family {info.get('cpu family', '?')} "
            f"model {info.get('model', '?')}, {isa})")


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
    ap.add_argument("--dtypes", default=",".join(REAL_DTYPES),
                    help="comma-separated dtypes (default: all of %(default)s)")
    ap.add_argument("--kernels", default=_kernels.simd_kernel(),
                    help="rANS32 decoders to time fpfs with, comma-separated: avx2, "
                         "portable (default: the one this CPU uses, %(default)s)")
    ap.add_argument("--out-dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                    help="where `fpfs compress` and `fpfs decompress` write (default: "
                         "%(default)s, tmpfs, so that the disk's fsync is not what is timed; "
                         "ZipNN's functions return bytes in memory and write no file)")
    ap.add_argument("--write-docs", action="store_true",
                    help="also put the report into docs/BENCHMARKS.md")
    args = ap.parse_args()
    with report("bench_codec", args.write_docs):
        run(args)


def run(args) -> None:
    tmp = tempfile.mkdtemp(prefix="fpfs-bench-")
    args.out_dir = args.out_dir or tmp
    kernels = [k for k in args.kernels.split(",") if _kernels.set_simd_kernel(k) == k]
    rows = []
    for name in args.dtypes.split(","):
        path = real_weights_file(name, tmp)
        with open(path, "rb") as f:
            data = f.read()
        prefix = read_layout(path).prefix_length
        results = {}
        for kernel in kernels:
            _kernels.set_simd_kernel(kernel)
            tag = f" [{kernel}]" if len(kernels) > 1 else ""
            results["fpfs" + tag] = bench_fpfs(path, data, args.repeat)
            if name == "BF16":          # version 4's EXPMANT against version 3's PLANES
                results["fpfs, PLANES only (v3)" + tag] = bench_fpfs(path, data, args.repeat,
                                                                     planes_only)
            results["fpfs read()" + tag] = bench_fpfs_read(path, data, args.repeat, tmp)
            results["fpfs compress / decompress" + tag] = bench_fpfs_files(
                path, data, args.repeat, tmp, args.out_dir)
        _kernels.set_simd_kernel(kernels[0])
        results["zstd -3"] = bench_zstd(data, args.repeat)
        try:
            results["ZipNN"] = bench_zipnn(name, data, prefix, args.repeat)
        except Exception as exc:           # report, do not hide
            print(f"ZipNN failed on {name}: {exc}", file=sys.stderr)
        results["memcpy"] = bench_memcpy(data, args.repeat)
        zipnn = results.get("ZipNN")
        for codec, r in results.items():
            gb = len(data) / 1e9
            cell = (lambda key: f"{gb / r[key]:.2f}" if key in r else "")
            vs = (lambda key: f"{zipnn[key] / r[key]:.2f}×" if zipnn and key in r else "")
            rows.append((name, codec + (" (NOT lossless)" if r.get("lossy") else ""),
                         f"{100 * r['size'] / len(data):.2f}" if codec != "memcpy" else "",
                         cell("c1"), cell(f"c{THREADS}"), cell("d1"), vs("d1"),
                         cell(f"d{THREADS}"), vs(f"d{THREADS}")))
        print(f"done {name}", file=sys.stderr)
    print(f"\nall-MiniLM-L6-v2 (22.7 M parameters) on {cpu_model()} ({os.cpu_count()} cores; "
          f"rANS32 decoder: {', '.join(kernels)}); {THREADS}T = all cores; GB/s of original "
          f"bytes, best of {args.repeat}; ×: decompress speed over ZipNN's, same run\n")
    print(f"| dtype | codec | size % | compress 1T | compress {THREADS}T | "
          f"decompress 1T | × ZipNN | decompress {THREADS}T | × ZipNN |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
