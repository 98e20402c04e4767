#!/usr/bin/env python3
"""How small can per-chunk static entropy coding make MiniLM's BF16 weights? Estimates,
not files: the size (% of the tensors' bytes) an EXPMANT-like codec would reach, for chunk
sizes, numbers k of top mantissa bits coded with the exponent, and row contexts (each row
put in one of N buckets by its mean exponent, one frequency table per bucket per chunk).

    python bench/bound_bf16.py

Then the same with tables shared by all the chunks of a tensor, contexts from row and
column buckets (a format change: chunks would no longer carry their own tables).

Cost model per chunk, from fpfs's own payloads (FORMAT.md, codec 6): the symbols'
order-0 entropy under each context's table, 1.4 bytes per present symbol and 3 per table
(what rANS32 tables measured), 134 bytes of header and lane states, the 8 - k packed
bits per element, and log2(N) bits per row for the bucket. `fpfs compress --smallest`
writes 65.91 % of the whole file (k = 2, one table, 256 KiB); this prints what more
contexts, bits or chunk sizes could at best give, so that the next attempt at a smaller
level starts from numbers (none measured here reaches 65.7 %).
"""
from __future__ import annotations

import os
import sys
import warnings

import ml_dtypes
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tests.weights import load_real  # noqa: E402

TABLE_BYTES_PER_SYMBOL = 1.4
TABLE_BYTES = 3
CHUNK_OVERHEAD = 128 + 6


def entropy_bits(counts: np.ndarray) -> float:
    c = counts[counts > 0].astype(np.float64)
    return float(-(c * np.log2(c / c.sum())).sum())


def row_buckets(row_means: np.ndarray, buckets: int) -> np.ndarray:
    if buckets == 1:
        return np.zeros(len(row_means), np.int64)
    edges = np.quantile(row_means, np.linspace(0, 1, buckets + 1)[1:-1])
    return np.searchsorted(edges, row_means, side="right")


def symbols(x: np.ndarray, k: int):
    """(rows, cols, EXPMANT-like symbols e << k | top k mantissa bits, flat; mean nonzero
    exponent of each row; of each column) of a tensor cast to BF16 (1-D: one row)."""
    b = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    rows2d = b.reshape(b.shape[0], -1) if b.ndim > 1 else b.reshape(1, -1)
    e = ((rows2d >> 7) & 0xFF).astype(np.int64)
    sym = ((e << k) | ((rows2d >> (7 - k)) & ((1 << k) - 1))).ravel()
    nonzero = np.where(e > 0, e, np.nan)
    with warnings.catch_warnings():     # all-zero rows or columns: mean 0
        warnings.simplefilter("ignore", RuntimeWarning)
        row_means = np.nan_to_num(np.nanmean(nonzero, axis=1))
        col_means = np.nan_to_num(np.nanmean(nonzero, axis=0))
    return rows2d.shape[0], rows2d.shape[1], sym, row_means, col_means


def estimate(tensors, chunk_bytes: int, k: int, buckets: int) -> float:
    """Estimated coded size as a share of the tensors' BF16 bytes."""
    per_chunk = chunk_bytes // 2
    elements = 0
    size = 0.0
    for x in tensors:
        rows, cols, sym, means, _ = symbols(x, k)
        elements += sym.size
        contexts = buckets > 1 and cols >= 64 and rows > 1
        ctx = np.repeat(row_buckets(means, buckets), cols) if contexts \
            else np.zeros(sym.size, np.int64)
        for s in range(0, sym.size, per_chunk):
            sy, cx = sym[s:s + per_chunk], ctx[s:s + per_chunk]
            size += CHUNK_OVERHEAD + len(sy) * (8 - k) / 8
            for c in np.unique(cx):
                counts = np.bincount(sy[cx == c])
                size += entropy_bits(counts) / 8 + TABLE_BYTES_PER_SYMBOL * (counts > 0).sum() \
                    + TABLE_BYTES
            if contexts:
                size += len(sy) / cols * np.log2(buckets) / 8
    return size / (2 * elements)


def estimate_shared(tensors, row_buckets_n: int, col_buckets_n: int) -> float:
    """The same, k = 2, with one table per (row bucket, column bucket) shared by all the
    256 KiB chunks of a tensor (paid once per tensor), or the per-chunk single table where
    that is smaller; column buckets cost log2(N) bits per column."""
    per_chunk = (256 << 10) // 2
    elements = 0
    size = 0.0
    for x in tensors:
        rows, cols, sym, rmean, cmean = symbols(x, 2)
        elements += sym.size
        nchunks = -(-sym.size // per_chunk)
        local = sum(entropy_bits(np.bincount(sym[s:s + per_chunk])) / 8
                    + TABLE_BYTES_PER_SYMBOL * (np.bincount(sym[s:s + per_chunk]) > 0).sum()
                    + TABLE_BYTES for s in range(0, sym.size, per_chunk))
        ctx = np.repeat(row_buckets(rmean, row_buckets_n), cols) * col_buckets_n + \
            np.tile(row_buckets(cmean, col_buckets_n), rows)
        shared = 0.0
        for c in np.unique(ctx):
            counts = np.bincount(sym[ctx == c])
            shared += entropy_bits(counts) / 8 + TABLE_BYTES_PER_SYMBOL * (counts > 0).sum() \
                + TABLE_BYTES
        shared += (rows * np.log2(row_buckets_n) + cols * np.log2(col_buckets_n)) / 8
        size += min(local, shared) + nchunks * CHUNK_OVERHEAD + sym.size * 6 / 8
    return size / (2 * elements)


def main() -> None:
    tensors = [x for x in load_real().values() if x.dtype == np.float32]
    print("| chunk | k | row contexts | estimated size % |")
    print("|---:|---:|---:|---:|")
    for chunk in (256 << 10, 1 << 20):
        for k in (2, 3):
            for buckets in (1, 2, 4):
                pct = 100 * estimate(tensors, chunk, k, buckets)
                print(f"| {chunk >> 10} KiB | {k} | {buckets} | {pct:.3f} |", flush=True)
    print("\nTables shared by a tensor's 256 KiB chunks, k = 2 (per tensor: shared or "
          "per-chunk tables, whichever is smaller)\n")
    print("| row buckets | column buckets | estimated size % |")
    print("|---:|---:|---:|")
    for nr, nc in ((1, 1), (2, 1), (4, 1), (8, 1), (2, 2), (4, 2), (4, 4), (8, 4)):
        pct = 100 * estimate_shared(tensors, nr, nc)
        print(f"| {nr} | {nc} | {pct:.3f} |", flush=True)


if __name__ == "__main__":
    main()
