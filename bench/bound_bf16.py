#!/usr/bin/env python3
"""How small can per-chunk static entropy coding make MiniLM's BF16 weights? Estimates,
not files: the size (% of the tensors' bytes) an EXPMANT-like codec would reach, for chunk
sizes, numbers k of top mantissa bits coded with the exponent, and row contexts (each row
put in one of N buckets by its mean exponent, one frequency table per bucket per chunk).

    python bench/bound_bf16.py

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


def estimate(tensors, chunk_bytes: int, k: int, buckets: int) -> float:
    """Estimated coded size as a share of the tensors' BF16 bytes."""
    per_chunk = chunk_bytes // 2
    elements = 0
    size = 0.0
    for x in tensors:
        b = x.astype(ml_dtypes.bfloat16).view(np.uint16)
        rows2d = b.reshape(b.shape[0], -1) if b.ndim > 1 else b.reshape(1, -1)
        rows, cols = rows2d.shape
        elements += b.size
        e = ((rows2d >> 7) & 0xFF).astype(np.int64)
        sym = ((e << k) | ((rows2d >> (7 - k)) & ((1 << k) - 1))).ravel()
        with warnings.catch_warnings():     # all-zero rows: mean 0
            warnings.simplefilter("ignore", RuntimeWarning)
            means = np.nan_to_num(np.nanmean(np.where(e > 0, e, np.nan), axis=1))
        contexts = buckets > 1 and cols >= 64 and rows > 1
        ctx = np.repeat(row_buckets(means, buckets), cols) if contexts \
            else np.zeros(b.size, np.int64)
        for s in range(0, b.size, per_chunk):
            sy, cx = sym[s:s + per_chunk], ctx[s:s + per_chunk]
            size += CHUNK_OVERHEAD + len(sy) * (8 - k) / 8
            for c in np.unique(cx):
                counts = np.bincount(sy[cx == c])
                size += entropy_bits(counts) / 8 + TABLE_BYTES_PER_SYMBOL * (counts > 0).sum() \
                    + TABLE_BYTES
            if contexts:
                size += len(sy) / cols * np.log2(buckets) / 8
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


if __name__ == "__main__":
    main()
