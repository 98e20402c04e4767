#!/usr/bin/env python3
"""A small Llama-shaped causal LM trained on real text, for the K/V cache benchmark
(bench_kv.py): no causal LM with real weights ships here, and a cache of random weights
has none of the structure real attention gives keys and values.

    python bench/kv_model.py [--out /var/tmp/fpfs-kv-model] [--steps N] [--force]

Text: the docstrings of bench_kv.TEXT_MODULES (the modules, their public members and the
public members of their classes; shipped with Python, so a run is deterministic for a given
Python version); every 20th docstring is held out for the evaluation loss.

Tokenizer: byte-level BPE (`tokenizers`) of 4096 tokens trained on the same text, not
plain bytes: at ≈ 3.7 bytes a token a 4k-token prompt is ≈ 15 KB of text, as with a real
LM's subword vocabulary, and the model learns words rather than spelling in the few
minutes of CPU it gets (bytes would need a longer context and more steps for the same).

Model: transformers LlamaConfig / LlamaForCausalLM, 4 layers, hidden 256, GQA (8 query
heads, 4 K/V heads, head size 64), RoPE, max_position_embeddings 8192, 5.0 M parameters;
AdamW, warm-up then cosine decay, FP32, torch threads = 2, 600 steps of 2048 tokens:
windows of 128 tokens drawn from the token stream, then for the last quarter of the steps
windows of 1024 (short windows teach the most per second of CPU; the long ones, attention
across the distances a long prompt has; positions past 1024 it never saw in training).
≈ 7 minutes on 2 cores (AMD EPYC). It prints the held-out loss before and after (8.37 ->
5.19; the text's unigram entropy is 6.6) and how far from uniform its attention is (mean
entropy of each query's attention over the positions it sees, as a share of the uniform
entropy: 1.00 for the random weights, 0.13 trained).

Saved with save_pretrained (model and tokenizer) into --out, outside the repository, with a
stamp file (kv-model.json) of the parameters, the text's hash and the results; a later run
with the same parameters and text reuses it. Weights are never committed."""
from __future__ import annotations

import argparse
import hashlib
import importlib
import inspect
import json
import math
import os
import subprocess
import sys
import time
from typing import List, Optional, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

DEFAULT_OUT = "/var/tmp/fpfs-kv-model"
STAMP = "kv-model.json"
SCRIPT_VERSION = 1          # bump when the training changes in a way the params do not say
EOS = "<|endoftext|>"
HELD_OUT_EVERY = 20
DOCSTRINGS_OF = "--docstrings-of"   # the child process of docstrings()
PARAMS = {                  # everything that makes the model; the stamp must match all of it
    "vocab": 4096, "layers": 4, "hidden": 256, "heads": 8, "kv_heads": 4, "head_dim": 64,
    "intermediate": 768, "max_positions": 8192, "steps": 600, "tokens": 2048, "seq": 128,
    "long_seq": 1024, "lr": 3e-3, "warmup": 20, "seed": 0,
}


def docstrings(modules: Optional[Sequence[str]] = None) -> List[str]:
    """Every distinct docstring of the modules (default: bench_kv.TEXT_MODULES), their
    public members and their classes' public members, cleaned (inspect.cleandoc), in a
    fixed order. Gathered in a fresh interpreter: transformers and torch patch the standard
    library when imported (logging.Logger gains warning_once, inspect.getfile is replaced),
    and which submodules are attributes of a package depends on what was imported."""
    if modules is None:
        from bench.bench_kv import TEXT_MODULES as modules
    out = subprocess.run([sys.executable, "-W", "ignore", os.path.abspath(__file__),
                          DOCSTRINGS_OF, *modules], capture_output=True, check=True)
    return json.loads(out.stdout)


def gather_docstrings(modules: Sequence[str]) -> List[str]:
    """docstrings(), in this process (imports nothing but the modules)."""
    out, seen = [], set()
    for name in modules:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        objs = [mod]
        for attr in sorted(dir(mod)):
            obj = getattr(mod, attr, None) if not attr.startswith("_") else None
            if obj is None or inspect.ismodule(obj):
                continue
            objs.append(obj)
            if inspect.isclass(obj) and getattr(obj, "__module__", None) == mod.__name__:
                objs.extend(getattr(obj, m, None) for m in sorted(vars(obj))
                            if not m.startswith("_"))
        for obj in objs:
            doc = getattr(obj, "__doc__", None)
            if isinstance(doc, str) and doc.strip():
                doc = inspect.cleandoc(doc)
                if doc not in seen:
                    seen.add(doc)
                    out.append(doc)
    return out


def text_hash(docs: List[str]) -> str:
    return hashlib.sha256("\0".join(docs).encode()).hexdigest()[:16]


def train_tokenizer(docs: List[str], vocab: int):
    """A byte-level BPE tokenizer of `vocab` tokens (EOS included) as a transformers fast
    tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS,
                                   pad_token=EOS)


def token_stream(tokenizer, docs: List[str]):
    """All docs' token ids, each followed by EOS, as one int64 tensor."""
    import torch
    ids: List[int] = []
    for enc in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids, dtype=torch.int64)


def make_config(p: dict, tokenizer):
    from transformers import LlamaConfig
    return LlamaConfig(
        vocab_size=p["vocab"], hidden_size=p["hidden"], intermediate_size=p["intermediate"],
        num_hidden_layers=p["layers"], num_attention_heads=p["heads"],
        num_key_value_heads=p["kv_heads"], head_dim=p["head_dim"],
        max_position_embeddings=p["max_positions"], tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)


def eval_windows(stream, seq: int, count: int = 16):
    """Fixed, evenly spaced [count, seq + 1] windows of a token stream."""
    import torch
    starts = torch.linspace(0, len(stream) - seq - 2, count).long()
    return torch.stack([stream[s:s + seq + 1] for s in starts.tolist()])


def held_out_loss(model, windows) -> float:
    import torch
    with torch.no_grad():
        return float(model(windows[:, :-1], labels=windows[:, :-1]).loss)


def attention_uniformity(model, ids) -> float:
    """Mean over layers, heads and query positions >= 16 of the entropy of a query's
    attention divided by log(positions it sees): 1.0 is uniform (random), lower is
    attention that picks tokens out."""
    import torch
    model.config._attn_implementation = "eager"     # sdpa returns no weights
    try:
        with torch.no_grad():
            attn = model(ids, output_attentions=True).attentions
    finally:
        model.config._attn_implementation = "sdpa"
    n = ids.shape[1]
    seen = torch.arange(1, n + 1, dtype=torch.float64)[16:]
    shares = []
    for a in attn:                                  # [batch, heads, query, key]
        p = a.double()[:, :, 16:, :].clamp_min(1e-30)
        entropy = -(p * p.log()).sum(-1)
        shares.append(float((entropy / seen.log()).mean()))
    return sum(shares) / len(shares)


def train(p: dict, docs: List[str], log=print):
    """(model, tokenizer, results) trained from scratch with parameters p."""
    import torch
    from transformers import LlamaForCausalLM
    torch.manual_seed(p["seed"])
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    tokenizer = train_tokenizer(docs, p["vocab"])
    held = [d for i, d in enumerate(docs) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1]
    train_docs = [d for i, d in enumerate(docs) if i % HELD_OUT_EVERY != HELD_OUT_EVERY - 1]
    stream, held_stream = token_stream(tokenizer, train_docs), token_stream(tokenizer, held)
    log(f"tokenizer: {p['vocab']} tokens in {time.perf_counter() - t0:.1f} s; "
        f"{len(stream)} training tokens ({sum(map(len, train_docs)) / len(stream):.2f} "
        f"bytes a token), {len(held_stream)} held out")
    model = LlamaForCausalLM(make_config(p, tokenizer)).float()
    windows = eval_windows(held_stream, p["long_seq"], count=4)
    probe = windows[:2, :-1]
    results = {"params": sum(t.numel() for t in model.parameters()),
               "loss_before": held_out_loss(model.eval(), windows),
               "attention_before": attention_uniformity(model, probe)}
    opt = torch.optim.AdamW(model.parameters(), lr=p["lr"], betas=(0.9, 0.95),
                            weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / p["warmup"]) *
                                              0.5 * (1 + math.cos(math.pi * s / p["steps"])))
    gen = torch.Generator().manual_seed(p["seed"])
    model.train()
    t1 = time.perf_counter()
    for step in range(p["steps"]):
        seq = p["seq"] if step < p["steps"] * 3 // 4 else p["long_seq"]
        starts = torch.randint(0, len(stream) - seq - 1, (p["tokens"] // seq,), generator=gen)
        batch = torch.stack([stream[s:s + seq] for s in starts.tolist()])
        loss = model(batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == p["steps"] - 1:
            log(f"step {step:4d}  loss {loss.item():.3f}  {time.perf_counter() - t1:.0f} s")
    model.eval()
    results.update(loss_after=held_out_loss(model, windows),
                   attention_after=attention_uniformity(model, probe),
                   train_seconds=round(time.perf_counter() - t1, 1))
    return model, tokenizer, results


def read_stamp(out: str) -> Optional[dict]:
    try:
        with open(os.path.join(out, STAMP)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def wanted(params: dict, docs: List[str]) -> dict:
    return {"script": SCRIPT_VERSION, "params": params, "text": text_hash(docs)}


def ensure(out: str = DEFAULT_OUT, params: Optional[dict] = None, force: bool = False,
           log=print) -> dict:
    """The stamp of the model in out, trained first unless one made with these
    parameters from this text is there."""
    params = dict(PARAMS, **(params or {}))
    docs = docstrings()
    want = wanted(params, docs)
    stamp = read_stamp(out)
    if not force and stamp is not None and \
            {k: stamp.get(k) for k in want} == want:
        return stamp
    log(f"training the K/V benchmark model into {out} ...")
    model, tokenizer, results = train(params, docs, log)
    os.makedirs(out, exist_ok=True)
    if os.path.exists(os.path.join(out, STAMP)):
        os.unlink(os.path.join(out, STAMP))           # no stale stamp over new weights
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    stamp = dict(want, results=results)
    tmp = os.path.join(out, STAMP + ".tmp")
    with open(tmp, "w") as f:
        json.dump(stamp, f, indent=1)
    os.replace(tmp, os.path.join(out, STAMP))
    return stamp


def load(out: str = DEFAULT_OUT, dtype=None):
    """(model in eval mode, tokenizer) from out; dtype: a torch dtype (default FP32)."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM
    model = LlamaForCausalLM.from_pretrained(out, dtype=dtype or torch.float32,
                                             local_files_only=True).eval()
    return model, AutoTokenizer.from_pretrained(out, local_files_only=True)


def summary(stamp: dict) -> str:
    """One line: what the model is and how far it trained."""
    p, r = stamp["params"], stamp["results"]
    return (f"Llama-shaped, {r['params'] / 1e6:.1f} M parameters: {p['layers']} layers, "
            f"hidden {p['hidden']}, {p['heads']} heads / {p['kv_heads']} K/V heads of "
            f"{p['head_dim']}, BPE vocabulary {p['vocab']}; {p['steps']} steps of "
            f"{p['tokens']} tokens of stdlib docstrings "
            f"({r['train_seconds']:.0f} s); held-out loss {r['loss_before']:.2f} -> "
            f"{r['loss_after']:.2f}, attention entropy {r['attention_before']:.2f} -> "
            f"{r['attention_after']:.2f} of uniform")


def main() -> None:
    if sys.argv[1:2] == [DOCSTRINGS_OF]:
        json.dump(gather_docstrings(sys.argv[2:]), sys.stdout)
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help=f"model directory ({DEFAULT_OUT})")
    ap.add_argument("--steps", type=int, default=PARAMS["steps"],
                    help=f"training steps (default {PARAMS['steps']})")
    ap.add_argument("--force", action="store_true", help="train even if the stamp matches")
    args = ap.parse_args()
    stamp = ensure(args.out, {"steps": args.steps}, args.force)
    print(summary(stamp))


if __name__ == "__main__":
    main()
