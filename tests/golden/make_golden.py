#!/usr/bin/env python3
"""Write the golden files of the current format version into tests/golden/v<VERSION>/.

Run once when a format version is created, commit the output, and never regenerate it:
test_golden.py decodes these files forever. Inputs are a slice of the real MiniLM weights
in several dtypes plus synthetic edge cases, small enough to keep in git."""
from __future__ import annotations

import os
import sys

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import fpfs  # noqa: E402
from fpfs.container import VERSION  # noqa: E402
from tests.weights import cast_fp8, load_real, quantize_mxfp4  # noqa: E402


def tensors() -> dict:
    real = load_real()["encoder.layer.0.attention.self.query.weight"][:64]   # 64 x 384 FP32
    packed, scales = quantize_mxfp4(real)
    rng = np.random.default_rng(7)
    return {
        "f32": real, "bf16": real.astype(ml_dtypes.bfloat16), "f16": real.astype(np.float16),
        "e4m3": cast_fp8(real, ml_dtypes.float8_e4m3fn),
        "e5m2": cast_fp8(real, ml_dtypes.float8_e5m2),
        "mxfp4.blocks": packed, "mxfp4.scales": scales.view(ml_dtypes.float8_e8m0fnu),
        "f64": real[:4].astype(np.float64), "i64": np.arange(100, dtype=np.int64),
        "u16": rng.integers(0, 50, 333).astype(np.uint16), "bool": rng.random(77) < 0.1,
        "zeros": np.zeros(5000, np.float32), "scalar": np.array(3.5, np.float32),
        "sparse": np.where(rng.random(8192) < 0.6, 0, real.ravel()[:8192]).astype(np.float32),
        "empty": np.zeros((0, 3), np.float16),
        **(bf16_windows(real) if VERSION >= 4 else {}),
    }


def bf16_windows(real: np.ndarray) -> dict:
    """Version 4 (EXPMANT) edge cases: exponents spanning more than 63 values (k = 1),
    exact zeros and subnormals (symbol 0 .. 3), and a span too wide for any window (inf,
    NaN and tiny values: stored PLANES)."""
    x = real.ravel()[:4096]
    wide = x * np.exp2(np.arange(x.size) % 100 - 50).astype(np.float32)
    zeros = np.where(np.arange(x.size) % 29 == 0, 0, x).astype(np.float32)
    zeros[::31] = 1e-40                     # a BF16 subnormal: exponent 0, mantissa != 0
    unfit = x.copy()
    unfit[:3] = (np.inf, np.nan, 1e-38)
    return {"bf16.wide": wide.astype(ml_dtypes.bfloat16),
            "bf16.zeros": zeros.astype(ml_dtypes.bfloat16),
            "bf16.unfit": unfit.astype(ml_dtypes.bfloat16)}


def fine_tuned(t: dict) -> dict:
    """The float tensors nudged as a few optimizer steps would (for a delta golden file)."""
    rng = np.random.default_rng(11)
    out = {}
    for k, v in t.items():
        if v.dtype.kind == "f" or v.dtype == ml_dtypes.bfloat16:
            x = np.asarray(v, dtype=np.float32)
            noise = rng.standard_normal(x.shape).astype(np.float32) * 1e-3 * np.abs(x)
            out[k] = np.asarray(x + noise).astype(v.dtype)
        else:
            out[k] = v
    return out


def write_torch(path: str) -> None:
    import torch
    t = load_real()
    sd = {k: torch.from_numpy(t[k][:8].copy()) for k in sorted(t)[:6]}
    sd["bf16"] = sd[sorted(sd)[0]].to(torch.bfloat16)
    torch.save(sd, path)


def write_gguf(path: str) -> None:
    import gguf
    real = load_real()["encoder.layer.0.attention.self.query.weight"][:64]
    w = gguf.GGUFWriter(path, "bert")
    w.add_tensor("q8", gguf.quants.quantize(real, gguf.GGMLQuantizationType.Q8_0),
                 raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("f16", real.astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> None:
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"v{VERSION}")
    os.makedirs(out, exist_ok=True)
    src = os.path.join(out, "mixed.safetensors")
    t = tensors()
    save_file(t, src, metadata={"format": "pt", "golden": f"v{VERSION}"})
    fpfs.compress_file(src, src + ".fpz", chunk_size=16384)
    written = [src]
    if VERSION >= 2:            # ZSTD, BLOCKS and DELTA chunks, a base store
        tuned = os.path.join(out, "tuned.safetensors")
        save_file(fine_tuned(t), tuned, metadata={"format": "pt", "golden": f"v{VERSION}"})
        fpfs.compress_file(tuned, tuned + ".fpz", chunk_size=16384, base=src + ".fpz")
        write_torch(os.path.join(out, "model.pt"))
        write_gguf(os.path.join(out, "q8.gguf"))
        for name in ("model.pt", "q8.gguf"):
            path = os.path.join(out, name)
            fpfs.compress_file(path, path + ".fpz", chunk_size=16384)
        written += [tuned, os.path.join(out, "model.pt"), os.path.join(out, "q8.gguf")]
    for path in written:
        print("wrote", path, os.path.getsize(path), "->", os.path.getsize(path + ".fpz"))
    if VERSION >= 3:            # FPKV blobs, from the K/V tensors of the v2 golden files
        write_kv(out)


def write_kv(out: str) -> None:
    """kv-<name>.fpkv and the bytes it holds (.npy), from the v2 inputs (bf16 K/V rows, FP8
    with exact repeats)."""
    import fpfs.kv
    v2 = os.path.join(os.path.dirname(out), "v2")
    for name, dtype in (("kv-bf16", ml_dtypes.bfloat16), ("kv-e4m3-repeats", ml_dtypes.float8_e4m3fn)):
        raw = np.load(os.path.join(v2, name + ".npy"))
        tensor = raw.view(dtype)
        np.save(os.path.join(out, name + ".npy"), raw)
        with open(os.path.join(out, name + ".fpkv"), "wb") as f:
            f.write(fpfs.kv.compress(tensor))
        print("wrote", os.path.join(out, name + ".fpkv"))


if __name__ == "__main__":
    main()
