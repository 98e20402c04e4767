"""Multi-GB models made with the real writers, for bench/bench_scale.py (never committed:
they are generated into a directory the caller names).

- make_llama(): a Llama-3.2-3B-shaped BF16 checkpoint (3.2 B parameters, 6.4 GB) cut into
  shards by `transformers`' own sharding rule (max_shard_size), each shard written by
  `safetensors.torch.save_file` (so the library's own layout: header, tensors ordered as it
  orders them), with `model.safetensors.index.json` and `config.json` as `save_pretrained`
  writes them. Weights are normal(0, 0.02) random: right for size and speed, not for ratios.
- make_torch_checkpoint(): a `torch.save` state dict of FP32 tensors (zip format).
- make_gguf(): a GGUF file of F16 matrices written by the `gguf` package.
- make_text(): about 1 GB of text fpfs does not recognise (Python's own sources, repeated).
- make_chain(): four BF16 checkpoints, each a small step from the one before (every weight
  moved by about 0.5 %, as a few optimizer steps move them), for delta chains.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Tuple

# Llama-3.2-3B
LLAMA_3B = dict(hidden=3072, intermediate=8192, layers=28, heads=24, kv_heads=8, vocab=128256)


def llama_shapes(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int,
                 vocab: int) -> List[Tuple[str, Tuple[int, ...]]]:
    head_dim = hidden // heads
    kv = kv_heads * head_dim
    shapes = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes += [(p + "input_layernorm.weight", (hidden,)),
                   (p + "mlp.down_proj.weight", (hidden, intermediate)),
                   (p + "mlp.gate_proj.weight", (intermediate, hidden)),
                   (p + "mlp.up_proj.weight", (intermediate, hidden)),
                   (p + "post_attention_layernorm.weight", (hidden,)),
                   (p + "self_attn.k_proj.weight", (kv, hidden)),
                   (p + "self_attn.o_proj.weight", (hidden, hidden)),
                   (p + "self_attn.q_proj.weight", (hidden, hidden)),
                   (p + "self_attn.v_proj.weight", (kv, hidden))]
    shapes.append(("model.norm.weight", (hidden,)))
    return shapes


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def make_llama(out_dir: str, shard_bytes: int = 2_300_000_000, scale: float = 1.0,
               seed: int = 0) -> List[str]:
    """Write the sharded BF16 model into out_dir (skipped when already complete); returns
    the shard paths. scale < 1 shrinks every dimension's layer count for quick runs."""
    import torch
    from safetensors.torch import save_file

    cfg = dict(LLAMA_3B)
    cfg["layers"] = max(1, int(round(cfg["layers"] * scale)))
    shapes = llama_shapes(**cfg)
    # transformers' rule: tensors in order, a new shard when the next would pass the limit
    shards: List[List[Tuple[str, Tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in shapes:
        nbytes = 2 * _numel(shape)
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    paths = [os.path.join(out_dir, n) for n in names]
    done = os.path.join(out_dir, ".complete")
    if os.path.exists(done):
        return paths
    os.makedirs(out_dir, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    weight_map: Dict[str, str] = {}
    total = 0
    for name, members in zip(names, shards):
        tensors = {}
        for tname, shape in members:
            if len(shape) == 1:
                t = torch.ones(shape, dtype=torch.bfloat16)
            else:
                t = torch.empty(shape, dtype=torch.bfloat16)
                t.normal_(0.0, 0.02, generator=gen)
            tensors[tname] = t
            weight_map[tname] = name
            total += t.numel() * 2
        save_file(tensors, os.path.join(out_dir, name), metadata={"format": "pt"})
        del tensors
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": cfg["hidden"], "intermediate_size": cfg["intermediate"],
        "num_hidden_layers": cfg["layers"], "num_attention_heads": cfg["heads"],
        "num_key_value_heads": cfg["kv_heads"], "head_dim": cfg["hidden"] // cfg["heads"],
        "vocab_size": cfg["vocab"], "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "hidden_act": "silu", "bos_token_id": 128000, "eos_token_id": 128001,
    }
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    open(done, "w").close()
    return paths


def make_torch_checkpoint(path: str, nbytes: int = 2_200_000_000, seed: int = 1) -> str:
    """A torch.save zip of FP32 matrices (about nbytes), as a training script saves a
    state dict."""
    import torch
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    state = {}
    rows, cols = 4096, 4096
    for i in range(max(1, nbytes // (rows * cols * 4))):
        t = torch.empty(rows, cols, dtype=torch.float32)
        t.normal_(0.0, 0.02, generator=gen)
        state[f"layers.{i}.weight"] = t
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def make_gguf(path: str, nbytes: int = 2_200_000_000, seed: int = 2) -> str:
    """A GGUF v3 file of F16 matrices (about nbytes) written by the gguf package."""
    import numpy as np
    import gguf
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    tmp = path + ".tmp"
    w = gguf.GGUFWriter(tmp, "llama")
    w.add_name("fpfs-scale")
    rows, cols = 4096, 4096
    for i in range(max(1, nbytes // (rows * cols * 2))):
        w.add_tensor(f"blk.{i}.ffn.weight",
                     (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02)
                     .astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)
    return path


def make_text(path: str, nbytes: int = 1 << 30) -> str:
    """About nbytes of text: the standard library's .py files, concatenated and repeated."""
    import sysconfig
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    root = sysconfig.get_paths()["stdlib"]
    sources = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs
                     if f.endswith(".py"))
    tmp = path + ".tmp"
    written, i = 0, 0
    with open(tmp, "wb") as out:
        while written < nbytes:
            with open(sources[i % len(sources)], "rb") as f:
                data = f.read()
            out.write(data)
            written += len(data)
            i += 1
    os.replace(tmp, path)
    return path


def make_chain(out_dir: str, nbytes: int = 512 << 20, steps: int = 4,
               seed: int = 3) -> List[str]:
    """checkpoint-000 ... of BF16 matrices (about nbytes each), each the one before plus
    normal noise of 0.5 % of the weights' scale, saved with safetensors."""
    import torch
    from safetensors.torch import save_file
    names = [os.path.join(out_dir, f"checkpoint-{40 * k:03d}.safetensors")
             for k in range(steps)]
    if all(os.path.exists(n) for n in names):
        return names
    os.makedirs(out_dir, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    rows, cols = 4096, 4096
    count = max(1, nbytes // (rows * cols * 2))
    state = {f"layers.{i}.weight": torch.empty(rows, cols).normal_(0, 0.02, generator=gen)
             for i in range(count)}
    for name in names:
        save_file({k: v.to(torch.bfloat16) for k, v in state.items()}, name)
        for v in state.values():
            v.add_(torch.empty_like(v).normal_(0, 1e-4, generator=gen))
    return names
