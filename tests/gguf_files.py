"""GGUF files of the real MiniLM weights (or of any FP32 safetensors of it, such as a step of
tests/finetune.py's series), written with the gguf package's GGUFWriter as llama.cpp's
convert_hf_to_gguf.py writes them: tensor names mapped to GGUF's BERT names
(encoder.layer.0.attention.self.query.weight -> blk.0.attn_q.weight), the BERT hyper-
parameters as key/values, 1-D tensors (biases, norms) kept F32, 2-D tensors in the file
type asked for: F32, F16, BF16 or Q8_0 (blocks of 32 int8 with one F16 scale, from
gguf.quants.quantize). Non-float tensors (position_ids) are left out, as the converter does.

    path = gguf_file(directory, "Q8_0")               # the base MiniLM
    path = gguf_file(directory, "BF16", source=step_40_f32_safetensors)
    write_gguf(path, {name: float32 array}, "F16")
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Dict

import numpy as np
from safetensors.numpy import load_file

from tests.weights import MODEL_DIR, MODEL_FILE

GGUF_TYPES = ("F32", "F16", "BF16", "Q8_0")


def _tensor_name_map(n_blocks: int):
    import gguf
    return gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, n_blocks)


def gguf_name(name: str, name_map) -> str:
    """GGUF's name for a Hugging Face BERT tensor name (the name itself if unmapped)."""
    mapped = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
    return mapped or name


def write_gguf(path: str, tensors: Dict[str, np.ndarray], ftype: str,
               config_dir: str = MODEL_DIR) -> str:
    """Write `tensors` (float32 arrays, Hugging Face BERT names) as a GGUF file of `ftype`."""
    import gguf
    ftype = ftype.upper()
    if ftype not in GGUF_TYPES:
        raise ValueError(f"ftype must be one of {GGUF_TYPES}, not {ftype!r}")
    qtype = getattr(gguf.GGMLQuantizationType, ftype)
    file_type = {"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
                 "BF16": gguf.LlamaFileType.MOSTLY_BF16,
                 "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[ftype]
    with open(os.path.join(config_dir, "config.json")) as f:
        cfg = json.load(f)
    n_blocks = int(cfg["num_hidden_layers"])
    name_map = _tensor_name_map(n_blocks)

    tmp = f"{path}.tmp{os.getpid()}"
    writer = gguf.GGUFWriter(tmp, "bert")
    try:
        writer.add_name("all-MiniLM-L6-v2")
        writer.add_block_count(n_blocks)
        writer.add_context_length(int(cfg["max_position_embeddings"]))
        writer.add_embedding_length(int(cfg["hidden_size"]))
        writer.add_feed_forward_length(int(cfg["intermediate_size"]))
        writer.add_head_count(int(cfg["num_attention_heads"]))
        writer.add_layer_norm_eps(float(cfg["layer_norm_eps"]))
        writer.add_causal_attention(False)
        writer.add_pooling_type(gguf.PoolingType.MEAN)
        writer.add_file_type(file_type)
        for name, value in tensors.items():
            if not np.issubdtype(value.dtype, np.floating):
                continue
            data = np.ascontiguousarray(value, dtype=np.float32)
            want = qtype if data.ndim >= 2 else gguf.GGMLQuantizationType.F32
            if want == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % 32:
                want = gguf.GGMLQuantizationType.F16     # as llama.cpp falls back
            if want == gguf.GGMLQuantizationType.F32:
                writer.add_tensor(gguf_name(name, name_map), data)
            elif want == gguf.GGMLQuantizationType.F16:
                writer.add_tensor(gguf_name(name, name_map), data.astype(np.float16))
            else:
                q = gguf.quants.quantize(data, want)
                writer.add_tensor(gguf_name(name, name_map), q, raw_dtype=want)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def gguf_file(directory: str, ftype: str, source: str = MODEL_FILE) -> str:
    """A GGUF file of `source` (an FP32 safetensors file of MiniLM, the shipped one by
    default) in `ftype`, written once into `directory` and reused after."""
    ftype = ftype.upper()
    tag = "base" if source == MODEL_FILE else \
        hashlib.sha256(os.path.abspath(source).encode()).hexdigest()[:10]
    path = os.path.join(directory, f"minilm-{tag}-{ftype.lower()}.gguf")
    if not os.path.exists(path):
        os.makedirs(directory, exist_ok=True)
        write_gguf(path, load_file(source), ftype)
    return path
