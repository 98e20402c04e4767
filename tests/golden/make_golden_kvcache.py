#!/usr/bin/env python3
"""Write the golden K/V cache files (FPKC, fpfs.kv.save_cache) of the current FPKC version
into tests/golden/kvcache-v<VERSION>/: the cache of a 12-token prompt of a tiny seeded
LlamaForCausalLM in BF16, and the same cache cast to F8_E4M3, each beside a safetensors
file of the tensors it holds (metadata: label, token ids).

Run once when an FPKC version is created, commit the output, and never regenerate it:
tests/test_kv_cache.py loads these files forever."""
from __future__ import annotations

import json
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import fpfs.kv  # noqa: E402
from fpfs.kv.cache_file import VERSION  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

LABEL = "tiny-llama-seed0"


def main() -> None:
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"kvcache-v{VERSION}")
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, vocab_size=256)
    model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cache = model(ids, use_cache=True).past_key_values
    pairs = fpfs.kv.cache_layers(cache)
    for name, dtype in (("bf16", torch.bfloat16), ("e4m3", torch.float8_e4m3fn)):
        cast = [(k.to(dtype), v.to(dtype)) for k, v in pairs]
        path = os.path.join(out, f"cache-{name}.fpkc")
        fpfs.kv.save_cache(cast, path, token_ids=ids[0], label=LABEL)
        tensors = {f"layers.{i}.{kind}": t.contiguous() for i, pair in enumerate(cast)
                   for kind, t in zip(("keys", "values"), pair)}
        save_file(tensors, path[:-len(".fpkc")] + ".safetensors",
                  metadata={"label": LABEL, "token_ids": json.dumps(ids[0].tolist())})
        print("wrote", path, os.path.getsize(path))


if __name__ == "__main__":
    main()
