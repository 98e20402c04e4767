"""A real, deterministic fine-tune series of all-MiniLM-L6-v2, for delta-compression tests
and benchmarks.

`make_series(out_dir, steps=(0, 40, 80, 120), dtype="BF16", fmt="safetensors")` fine-tunes
the MiniLM of tests/weights.py (MODEL_DIR) with torch on the CPU and returns one file per
listed step, step 0 being the untouched base weights:

    fmt="safetensors"                 <series>/safetensors-bf16/step-0040/model.safetensors
    fmt="torch"                       <series>/torch-bf16/checkpoint-40/model.pt
                                      (torch.save of the state dict cast to dtype)
    fmt="torch", optimizer=True       <series>/torch-f32-adamw/checkpoint-40/ckpt.pt
                                      (torch.save of {"model": state_dict, "optimizer":
                                      optimizer.state_dict(), "step": 40}; FP32 only)

where <series> is out_dir/minilm-ft-s{seed}. Safetensors files hold every tensor of the
model's state dict (103, the pooler included: mean pooling does not train it, so its two
tensors stay equal to the base's, as in a real sentence-transformers fine-tune), cast to
dtype and made contiguous, written by safetensors.torch.save_file.

The objective is a real one: in-batch contrastive loss (MultipleNegativesRanking, scale 20)
on mean-pooled embeddings of (query, positive) pairs taken from the docstrings of the
Python standard library, read with ast (nothing is imported): the first line of a
docstring is the query, the rest of it the positive. AdamW, lr 2e-5 constant, weight decay
0.01, batch 16, sequences cut at 64 tokens, dropout on (seeded), gradients clipped at 1.0.

Deterministic: seeded (torch.random.fork_rng, so the caller's RNG state is untouched),
torch.use_deterministic_algorithms(True, warn_only=True) and 2 threads during training (the
previous settings are put back after). The trajectory depends on the seed only, never on
which steps are asked for, so the series is trained once per seed and cached: the FP32
weights of every step ever trained are kept as <series>/safetensors-f32/step-NNNN/
model.safetensors, and every other dtype or format is derived from them without training
again. Training runs only when a requested step has no cached FP32 weights (or, with
optimizer=True, no cached training checkpoint); it then restarts from the base and writes
every requested step. Files are written atomically under a lock file, so concurrent
callers (pytest-xdist) are safe. The data depend on the Python version's standard library
sources, so the pairs are kept in <series>/pairs.json and used again by any later training;
<series>/train.json records their hash, the settings, the loss of every step and the time.

Cost, on the 2 cores of this workplace's AMD EPYC with torch 2.13 CPU, from nothing: about
6 s reading the standard library, 3 s loading the model, 8-12 s for the first step, then
about 1 s a step when the cores are idle (TRAIN_SECONDS_PER_STEP); so steps=(0, 5, 10)
takes ~30 s and (0, 40, 80, 120) ~2.5 min. Shared cores stretch that: 120 steps took 7.9
min while another test run used them. A cached series costs only the imports (~3 s).
Disk: 90 MB of FP32 weights per trained step, 271 MB per AdamW checkpoint.
"""
from __future__ import annotations

import ast
import contextlib
import fcntl
import hashlib
import json
import os
import random
import sysconfig
import time
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tests.weights import MODEL_DIR

DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
FORMATS = ("safetensors", "torch")
DEFAULT_STEPS = (0, 40, 80, 120)
SERIES_STEPS = (0, 2, 4)        # the test suite's series (the `series` fixture, conftest.py)

BATCH = 16
SEQ_LEN = 64
LR = 2e-5
WEIGHT_DECAY = 0.01
SCALE = 20.0          # cosine-similarity scale of the contrastive loss
CLIP = 1.0
THREADS = 2
TRAIN_SECONDS_PER_STEP = 1.0    # measured here on 2 idle cores; see the module docstring


# --------------------------------------------------------------------------- data

def _docstrings(path: str) -> Iterator[str]:
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield doc


def stdlib_pairs() -> List[Tuple[str, str]]:
    """(first line, rest) of every standard-library docstring that has both, in a fixed
    order (sorted file paths, ast.walk order), with duplicate queries or positives dropped."""
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        parts = rel.split(os.sep)
        if "site-packages" in parts or "dist-packages" in parts or any(
                p in ("test", "tests", "idle_test", "__pycache__") for p in parts):
            dirnames[:] = []
            continue
        dirnames.sort()
        files += [os.path.join(dirpath, n) for n in sorted(filenames) if n.endswith(".py")]
    pairs, seen_q, seen_p = [], set(), set()
    for path in files:
        for doc in _docstrings(path):
            lines = doc.strip().splitlines()
            query = lines[0].strip()
            positive = " ".join(" ".join(lines[1:]).split())
            if len(query) < 12 or len(positive) < 40:
                continue
            if query in seen_q or positive in seen_p:
                continue
            seen_q.add(query)
            seen_p.add(positive)
            pairs.append((query, positive))
    return pairs


# --------------------------------------------------------------------------- files

def series_dir(out_dir: str, seed: int = 0) -> str:
    return os.path.join(out_dir, f"minilm-ft-s{seed}")


def _path(series: str, step: int, dtype: str, fmt: str, optimizer: bool) -> str:
    if fmt == "safetensors":
        return os.path.join(series, f"safetensors-{dtype.lower()}", f"step-{step:04d}",
                            "model.safetensors")
    if optimizer:
        return os.path.join(series, "torch-f32-adamw", f"checkpoint-{step}", "ckpt.pt")
    return os.path.join(series, f"torch-{dtype.lower()}", f"checkpoint-{step}", "model.pt")


def _atomic(path: str, write) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


def _cast(state: Dict[str, torch.Tensor], dtype: str) -> Dict[str, torch.Tensor]:
    target = DTYPES[dtype]
    return {k: (v.detach().to(target) if v.is_floating_point() else v.detach()).contiguous()
            for k, v in state.items()}


def _save_safetensors(state, path, dtype) -> None:
    tensors = _cast(state, dtype)
    # The same header at every step (no step number in the metadata), so that the files of
    # a series have equal lengths and byte-aligned tensors, as XOR deltas want.
    _atomic(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))


def _save_torch(obj, path) -> None:
    _atomic(path, lambda tmp: torch.save(obj, tmp))


@contextlib.contextmanager
def _locked(series: str) -> Iterator[None]:
    os.makedirs(series, exist_ok=True)
    with open(os.path.join(series, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- training

@contextlib.contextmanager
def _deterministic(seed: int) -> Iterator[None]:
    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    det_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        torch.set_num_threads(THREADS)
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(det, warn_only=det_warn)
            torch.set_num_threads(threads)
            random.setstate(py_state)
            np.random.set_state(np_state)


def _load_model_and_tokenizer():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModel.from_pretrained(MODEL_DIR, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR, local_files_only=True)
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    return model, tokenizer


def _mean_pool(model, enc) -> torch.Tensor:
    hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def _train(series: str, save_steps: Sequence[int], seed: int, optimizer_ckpts: bool) -> None:
    """Train from the base to max(save_steps), writing the FP32 safetensors (and, if
    optimizer_ckpts, the torch training checkpoint) of every step in save_steps."""
    last = max(save_steps)
    pairs_file = os.path.join(series, "pairs.json")
    if os.path.exists(pairs_file):      # the same data when training again, whatever Python
        with open(pairs_file) as f:
            pairs = [tuple(p) for p in json.load(f)]
    else:
        pairs = stdlib_pairs()
        _atomic(pairs_file, lambda tmp: _write_json(tmp, pairs))
    order = np.random.RandomState(seed).permutation(len(pairs))
    info = {"pairs": len(pairs), "sha256": hashlib.sha256(json.dumps(pairs).encode()).hexdigest(),
            "seed": seed, "batch": BATCH, "seq_len": SEQ_LEN, "lr": LR,
            "weight_decay": WEIGHT_DECAY, "trained_to": last, "loss": [], "seconds": 0.0}
    started = time.perf_counter()
    with _deterministic(seed):
        model, tokenizer = _load_model_and_tokenizer()
        opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)

        def save(step: int) -> None:
            if step not in save_steps:
                return
            state = model.state_dict()
            _save_safetensors(state, _path(series, step, "F32", "safetensors", False), "F32")
            if optimizer_ckpts:
                _save_torch({"model": _cast(state, "F32"), "optimizer": opt.state_dict(),
                             "step": step},
                            _path(series, step, "F32", "torch", True))

        save(0)
        model.train()
        for step in range(1, last + 1):
            idx = [order[i % len(order)] for i in range((step - 1) * BATCH, step * BATCH)]
            queries = [pairs[i][0] for i in idx]
            positives = [pairs[i][1] for i in idx]
            kw = dict(padding=True, truncation=True, max_length=SEQ_LEN, return_tensors="pt")
            q = _mean_pool(model, tokenizer(queries, **kw))
            p = _mean_pool(model, tokenizer(positives, **kw))
            scores = torch.nn.functional.normalize(q, dim=-1) @ \
                torch.nn.functional.normalize(p, dim=-1).T * SCALE
            loss = torch.nn.functional.cross_entropy(scores, torch.arange(len(idx)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
            opt.step()
            info["loss"].append(round(loss.item(), 4))
            save(step)
    info["seconds"] = round(time.perf_counter() - started, 1)
    _atomic(os.path.join(series, "train.json"), lambda tmp: _write_json(tmp, info))


# --------------------------------------------------------------------------- API

def make_series(out_dir: str, steps: Sequence[int] = DEFAULT_STEPS, dtype: str = "BF16",
                fmt: str = "safetensors", optimizer: bool = False, seed: int = 0) -> List[str]:
    """Paths of the fine-tune's weights at each of `steps` (0 = the base), in that order.

    dtype: "BF16", "F32" or "F16" (floating tensors cast to it). fmt: "safetensors" (a
    safetensors file of the state dict) or "torch" (torch.save of the state dict, or with
    optimizer=True of {"model", "optimizer", "step"}; that one needs dtype="F32").
    Trains only what is not cached under out_dir (see the module docstring)."""
    dtype = dtype.upper()
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, not {dtype!r}")
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, not {fmt!r}")
    if optimizer and (fmt != "torch" or dtype != "F32"):
        raise ValueError("optimizer=True needs fmt='torch' and dtype='F32'")
    steps = [int(s) for s in steps]
    if not steps or min(steps) < 0:
        raise ValueError("steps must be a non-empty list of steps >= 0")
    series = series_dir(out_dir, seed)
    wanted = [_path(series, s, dtype, fmt, optimizer) for s in steps]
    if all(os.path.exists(p) for p in wanted):
        return wanted
    with _locked(series):
        masters = {s: _path(series, s, "F32", "safetensors", False) for s in steps}
        if optimizer:
            missing = [s for s, p in zip(steps, wanted) if not os.path.exists(p)]
        else:
            missing = [s for s in steps if not os.path.exists(masters[s])]
        if missing:
            _train(series, sorted(set(steps)), seed, optimizer_ckpts=optimizer)
        for step, path in zip(steps, wanted):
            if os.path.exists(path):
                continue
            state = load_file(masters[step])
            if fmt == "safetensors":
                _save_safetensors(state, path, dtype)
            else:
                _save_torch(_cast(state, dtype), path)
    return wanted


def main(argv=None) -> int:
    """python -m tests.finetune OUT_DIR [--steps 0,40,80,120] [--dtype BF16] [--fmt ...]"""
    import argparse
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("out_dir")
    ap.add_argument("--steps", default=",".join(map(str, DEFAULT_STEPS)))
    ap.add_argument("--dtype", default="BF16")
    ap.add_argument("--fmt", default="safetensors", choices=FORMATS)
    ap.add_argument("--optimizer", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    t = time.perf_counter()
    paths = make_series(a.out_dir, [int(s) for s in a.steps.split(",")], a.dtype, a.fmt,
                        a.optimizer, a.seed)
    for p in paths:
        print(os.path.getsize(p), p)
    print(f"{time.perf_counter() - t:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
