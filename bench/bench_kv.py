#!/usr/bin/env python3
"""K/V cache benchmark, in one run:

1. Real attention keys and values of all-MiniLM-L6-v2 (transformers, offline) on real text,
   in FP16, BF16, F8_E4M3 and F8_E5M2; stored size (% of the original bytes) and compress /
   decompress throughput (GB/s of original bytes, one thread) for fpfs.kv, zstd -3 and
   ZipNN, keys and values separately.
2. The DynamicCache of a causal LM trained here (bench/kv_model.py; trained first, ≈ 8 min
   on 2 cores, unless --model-dir holds it) on real prompts, as generation uses it: file
   size of fpfs.kv.save_cache against torch.save, safetensors, zstd -3 and ZipNN of the
   same cache; PrefixStore.longest_prefix and load_cache of a 4096-token prefix against
   recomputing its prefill; load_cache's decode speed on one core; and whether greedy
   generation from a restored cache gives the live cache's tokens.

    python bench/bench_kv.py [--sentences N] [--repeat N] [--model-dir DIR] [--write-docs]

Part 1:
Text: sentences cut from the docstrings of a fixed list of Python standard-library modules
(shipped with Python, so the run is deterministic for a given Python version), each run
through the model on its own (no padding tokens in the cache). For every layer the K and V
a cache would hold are that layer's attention.self.key / .value Linear applied to the
layer's input hidden state (output_hidden_states=True), shaped [1, tokens, heads=12,
head_dim=32]; one sentence's layer tensors are concatenated along tokens, so each layer gives
one [1, all tokens, 12, 32] tensor, and each codec compresses the 6 layer tensors one by one.
FP8: each layer tensor scaled so its largest |value| maps to half the format's max, then cast
with ml_dtypes (as tests/weights.py does for weights). ZipNN gets bytes with the dtype hint
("float16", "bfloat16", and "float8_e4m3fn" for both FP8 kinds: its only one-byte float),
threads=1, and a fresh copy of the input for every compress (ZipNN 0.5.4 rotates the sign
bit of bfloat16/float32 input in place, in the caller's bytes object). Every codec's output
is decompressed and compared bit for bit (fpfs.kv: also dtype and shape); a codec that does
not give back the input is marked NOT lossless.

Part 2: the model runs in BF16, FP16 and FP32 (each its own cache); FP8 caches are the FP32
ones cast per tensor as above. Prompts: the source of argparse.py (the model saw its
docstrings, not its code), its first 4096 tokens cached; and the docstrings of
PROMPT_MODULES (none of which it trained on), 1024 tokens cached; each prompt goes on
CONTINUE tokens past its cached prefix. Sizes are of both prompts' caches: fpfs.kv is the
save_cache file (label, no token ids); torch.save gets the list of per-layer (keys, values)
tensors, safetensors a dict of them, zstd -3 and ZipNN (threads=1) their raw bytes joined;
every one is decoded and compared bit for bit. Timings are best of --repeat, torch threads
= 2, the files in the page cache (/var/tmp): longest_prefix (16 files of 256 tokens) and
load_cache (one file) of the 4096-token prefix, its prefill (model(ids, use_cache=True));
the decode speed is load_cache with torch threads = 1 (fpfs.kv decodes on the calling
thread), GB/s of cache bytes. Generation: model.generate (greedy, NEW_TOKENS tokens) of
each whole prompt from a deep copy of the live cache, from load_cache's and from
longest_prefix's; "identical" when all three give the same tokens for both prompts.
"""
from __future__ import annotations

import argparse
import copy
import importlib
import inspect
import io
import os
import re
import shutil
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench._common import best_time, report  # noqa: E402  (first: it settles BLAS threads)

import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402
import zstandard  # noqa: E402

import fpfs.kv  # noqa: E402
from bench.bench_codec import cpu_model  # noqa: E402
from tests.weights import MODEL_DIR, cast_fp8  # noqa: E402

TEXT_MODULES = (
    "abc", "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "collections",
    "concurrent.futures", "configparser", "contextlib", "copy", "csv", "dataclasses",
    "datetime", "decimal", "difflib", "email", "enum", "fractions", "functools", "gettext",
    "glob", "gzip", "hashlib", "heapq", "hmac", "html", "http.client", "imaplib", "inspect",
    "io", "ipaddress", "itertools", "json", "logging", "mailbox", "math", "mimetypes",
    "multiprocessing", "operator", "optparse", "os", "pathlib", "pickle", "pkgutil",
    "platform", "pprint", "queue", "random", "re", "sched", "secrets", "selectors", "shelve",
    "shlex", "shutil", "signal", "smtplib", "socket", "sqlite3", "statistics", "string",
    "struct", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit", "token",
    "tokenize", "traceback", "typing", "unittest", "urllib.parse", "uuid", "warnings",
    "weakref", "xml.dom", "zipfile", "zlib")
DTYPES = {"FP16": np.float16, "BF16": ml_dtypes.bfloat16,
          "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2}
ZIPNN_DTYPE = {"FP16": "float16", "BF16": "bfloat16", "FP32": "float32",
               "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e4m3fn"}
# Part 2: the trained model's caches.
MODEL_DTYPES = ("BF16", "FP16", "FP32")     # the model runs in these
FP8_FROM_FP32 = ("F8_E4M3", "F8_E5M2")
TORCH_DTYPES = {"BF16": "bfloat16", "FP16": "float16", "FP32": "float32",
                "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
LONG = "argparse.py source"
PROMPT_MODULES = (                          # docstrings the model did not train on
    "bdb", "cmd", "codeop", "colorsys", "filecmp", "fileinput", "fnmatch", "ftplib",
    "getopt", "graphlib", "linecache", "locale", "netrc", "numbers", "plistlib", "poplib",
    "pstats", "reprlib", "trace", "tracemalloc", "wave", "zipapp")
PREFIX = 4096                               # the long prompt's cached tokens
DOCS_PREFIX = 1024                          # the docstring prompt's
CONTINUE = 64                               # prompt tokens past the cached prefix
NEW_TOKENS = 32
STORE_BLOCK = 256
WORK_DIR = "/var/tmp/fpfs-bench-kv"


def sentences(count: int) -> list:
    """Up to `count` distinct sentences of 6-40 words from stdlib docstrings, in a fixed
    order (module list order, then sorted member names)."""
    out, seen = [], set()
    for name in TEXT_MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        docs = [mod.__doc__ or ""]
        for attr in sorted(dir(mod)):
            if not attr.startswith("_"):
                doc = getattr(getattr(mod, attr, None), "__doc__", None)
                if isinstance(doc, str):
                    docs.append(doc)
        for doc in docs:
            text = re.sub(r"\s+", " ", doc)
            for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
                s = s.strip()
                if 6 <= len(s.split()) <= 40 and s not in seen and not s.startswith(">>>"):
                    seen.add(s)
                    out.append(s)
                    if len(out) >= count:
                        return out
    return out


def capture_kv(texts: list):
    """Per layer: (K, V) float32 arrays [1, tokens, heads, head_dim] over all texts."""
    import torch
    from transformers import AutoModel, AutoTokenizer
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(MODEL_DIR, local_files_only=True)
    model = AutoModel.from_pretrained(MODEL_DIR, local_files_only=True).eval()
    layers = model.encoder.layer
    heads = model.config.num_attention_heads
    head_dim = model.config.hidden_size // heads
    keys = [[] for _ in layers]
    values = [[] for _ in layers]
    with torch.no_grad():
        for text in texts:
            enc = tok(text, return_tensors="pt", truncation=True, max_length=128)
            hidden = model(**enc, output_hidden_states=True).hidden_states
            for i, layer in enumerate(layers):
                h = hidden[i]                       # the input of layer i
                b, t, _ = h.shape
                keys[i].append(layer.attention.self.key(h).reshape(b, t, heads, head_dim))
                values[i].append(layer.attention.self.value(h).reshape(b, t, heads, head_dim))
    return ([torch.cat(k, dim=1).numpy() for k in keys],
            [torch.cat(v, dim=1).numpy() for v in values])


def cast(x: np.ndarray, name: str) -> np.ndarray:
    if name.startswith("F8"):
        return cast_fp8(x, DTYPES[name])
    return x.astype(DTYPES[name])


def as_bytes(obj) -> bytes:
    if isinstance(obj, np.ndarray):
        return np.ascontiguousarray(obj).reshape(-1).view(np.uint8).tobytes()
    return bytes(obj)


def run_codec(comp, decomp, make_inputs, raw_bytes, repeat):
    """(stored bytes, compress s, decompress s, lossless) for a list of layer tensors.
    make_inputs() gives fresh inputs for each compress pass, outside the timing (ZipNN
    rewrites the bytes it is given, in place, for bfloat16 and float32)."""
    tc = td = float("inf")
    blobs, outs = [], []
    for _ in range(repeat):
        inputs = make_inputs()
        t = time.perf_counter()
        blobs = [comp(x) for x in inputs]
        tc = min(tc, time.perf_counter() - t)
        t = time.perf_counter()
        outs = [decomp(b) for b in blobs]
        td = min(td, time.perf_counter() - t)
    lossless = all(as_bytes(o) == r for o, r in zip(outs, raw_bytes))
    if isinstance(outs[0], np.ndarray):
        lossless = lossless and all(o.dtype == x.dtype and o.shape == x.shape
                                    for o, x in zip(outs, make_inputs()))
    return sum(len(b) for b in blobs), tc, td, lossless


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", type=int, default=300, help="sentences of text (default 300)")
    ap.add_argument("--repeat", type=int, default=3, help="best of N timings (default 3)")
    ap.add_argument("--model-dir", default=None,
                    help="the trained model (bench/kv_model.py; default its --out)")
    ap.add_argument("--write-docs", action="store_true",
                    help="also put the report into docs/BENCHMARKS.md")
    args = ap.parse_args()
    with report("bench_kv", args.write_docs):
        run(args)
        run_model(args)


def run(args) -> None:
    from zipnn import ZipNN

    texts = sentences(args.sentences)
    t = time.perf_counter()
    keys, values = capture_kv(texts)
    tokens = keys[0].shape[1]
    print(f"captured K/V of {len(texts)} sentences, {tokens} tokens, {len(keys)} layers "
          f"in {time.perf_counter() - t:.1f} s", file=sys.stderr)

    zc = zstandard.ZstdCompressor(level=3)
    zd = zstandard.ZstdDecompressor()
    rows = []
    for name in DTYPES:
        zipnn = ZipNN(input_format="byte", bytearray_dtype=ZIPNN_DTYPE[name], threads=1)
        for kind, layer_tensors in (("K", keys), ("V", values)):
            tensors = [np.ascontiguousarray(cast(x, name)) for x in layer_tensors]
            raw = [t.tobytes() for t in tensors]
            total = sum(len(r) for r in raw)
            codecs = {
                "fpfs.kv": (fpfs.kv.compress, fpfs.kv.decompress, lambda: tensors),
                "zstd -3": (zc.compress, zd.decompress, lambda: raw),
                "ZipNN": (zipnn.compress, zipnn.decompress,
                          lambda: [bytes(bytearray(r)) for r in raw]),
            }
            for codec, (comp, decomp, inputs) in codecs.items():
                try:
                    size, tc, td, ok = run_codec(comp, decomp, inputs, raw, args.repeat)
                except Exception as exc:            # report, do not hide
                    print(f"{codec} failed on {name} {kind}: {exc!r}", file=sys.stderr)
                    rows.append((name, kind, codec + " (FAILED)", float("nan"), 0, 0, total))
                    continue
                note = "" if ok else " (NOT lossless)"
                rows.append((name, kind, codec + note, 100 * size / total,
                             total / tc / 1e9, total / td / 1e9, total))
        print(f"done {name}", file=sys.stderr)

    print(f"{cpu_model()}, {os.cpu_count()} cores. "
          f"all-MiniLM-L6-v2 K/V cache: {len(texts)} sentences of stdlib docstrings, "
          f"{tokens} tokens x {len(keys)} layers x 12 heads x 32; one thread; "
          f"GB/s of original bytes, best of {args.repeat}\n")
    print("| dtype | K/V | codec | MB | size % | compress GB/s | decompress GB/s |")
    print("|---|---|---|---:|---:|---:|---:|")
    for name, kind, codec, pct, c, d, total in rows:
        print(f"| {name} | {kind} | {codec} | {total / 1e6:.1f} | {pct:.2f} | {c:.2f} | "
              f"{d:.2f} |")



# -- part 2: a trained causal LM's DynamicCache -----------------------------------------------
def kv_model():
    from bench import kv_model as module   # imported late: kv_model imports TEXT_MODULES
    return module


def cache_keyword(model) -> str:
    """The keyword forward and generate take the cache by (transformers 5 renamed
    past_key_values to cache)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters \
        else "past_key_values"


def prefill(model, ids):
    """The DynamicCache of ids."""
    import torch
    with torch.no_grad():
        out = model(ids, use_cache=True)
    return out["cache"] if "cache" in out.keys() else out["past_key_values"]


def generate(model, ids, cache) -> list:
    """NEW_TOKENS greedy tokens after ids, the first of them in cache."""
    import torch
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=NEW_TOKENS, **{cache_keyword(model): cache})
    return out[0, ids.shape[1]:].tolist()


def model_prompts(tokenizer) -> dict:
    """name -> (token ids [1, cached + CONTINUE], tokens cached)."""
    import argparse as source_module
    texts = {LONG: (inspect.getsource(source_module), PREFIX),
             "held-out docstrings": ("\n\n".join(kv_model().docstrings(PROMPT_MODULES)),
                                     DOCS_PREFIX)}
    out = {}
    for name, (text, cached) in texts.items():
        ids = tokenizer(text, return_tensors="pt").input_ids[:, :cached + CONTINUE]
        if ids.shape[1] < cached + CONTINUE:
            raise SystemExit(f"{name}: only {ids.shape[1]} tokens")
        out[name] = (ids, cached)
    return out


def fp8_cache(cache, name: str):
    """The cache with every tensor cast to FP8 as part 1 casts (cast_fp8 per tensor)."""
    import torch
    to = getattr(torch, TORCH_DTYPES[name])
    return fpfs.kv.build_cache(
        [tuple(torch.from_numpy(cast(t.float().numpy(), name).view(np.uint8)).view(to)
               for t in pair) for pair in fpfs.kv.cache_layers(cache)])


def tensors_of(cache) -> list:
    return [t.contiguous() for pair in fpfs.kv.cache_layers(cache) for t in pair]


def raw_bytes(tensors) -> bytes:
    import torch
    return b"".join(t.reshape(-1).view(torch.uint8).numpy().tobytes() for t in tensors)


def same_tensors(a, b) -> bool:
    """Same dtypes, shapes and bits."""
    return len(a) == len(b) and all(x.dtype == y.dtype and x.shape == y.shape for x, y
                                    in zip(a, b)) and raw_bytes(a) == raw_bytes(b)


def store_sizes(cache, name: str) -> dict:
    """codec -> (stored bytes, lossless) for one cache, and "raw" -> (its bytes, True)."""
    import safetensors.torch
    import torch
    from zipnn import ZipNN
    tensors = tensors_of(cache)
    raw = raw_bytes(tensors)
    path = os.path.join(WORK_DIR, f"{name}-size.fpkc")
    out = {"raw": (len(raw), True)}
    size = fpfs.kv.save_cache(cache, path, label="bench-kv")
    out["fpfs.kv"] = (size, same_tensors(tensors, tensors_of(fpfs.kv.load_cache(path))))
    buf = io.BytesIO()
    torch.save(list(zip(tensors[0::2], tensors[1::2])), buf)
    back = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    out["torch.save"] = (buf.tell(), same_tensors(tensors, [t for p in back for t in p]))
    named = {f"layers.{i // 2}.{'values' if i % 2 else 'keys'}": t
             for i, t in enumerate(tensors)}
    st = safetensors.torch.save(named)
    back = safetensors.torch.load(st)
    out["safetensors"] = (len(st), same_tensors(tensors, [back[k] for k in named]))
    z = zstandard.ZstdCompressor(level=3).compress(raw)
    out["zstd -3"] = (len(z), zstandard.ZstdDecompressor().decompress(z) == raw)
    zipnn = ZipNN(input_format="byte", bytearray_dtype=ZIPNN_DTYPE[name], threads=1)
    blob = zipnn.compress(bytes(bytearray(raw)))    # it rewrites its input in place
    out["ZipNN"] = (len(blob), bytes(zipnn.decompress(blob)) == raw)
    return out


def total_sizes(caches: dict, name: str) -> dict:
    """store_sizes summed over the prompts' caches."""
    total: dict = {}
    for cache in caches.values():
        for codec, (size, ok) in store_sizes(cache, name).items():
            old_size, old_ok = total.get(codec, (0, True))
            total[codec] = (old_size + size, old_ok and ok)
    return total


def speeds(name: str, caches: dict, prompts: dict, repeat: int) -> dict:
    """longest_prefix and load_cache times of the long prompt's prefix, and load_cache's
    decode speed on one thread."""
    import torch
    ids, cached = prompts[LONG]
    cache = caches[LONG]
    store_dir = os.path.join(WORK_DIR, f"store-{name}")
    shutil.rmtree(store_dir, ignore_errors=True)
    store = fpfs.kv.PrefixStore(store_dir, block_size=STORE_BLOCK, label=name)
    store.put(ids[:, :cached], cache)
    if store.longest_prefix(ids)[0] != cached:
        raise SystemExit(f"{name}: the store does not give back the {cached}-token prefix")
    path = os.path.join(WORK_DIR, f"{name}-prefix.fpkc")
    fpfs.kv.save_cache(cache, path, token_ids=ids[0, :cached], label=name)
    nbytes = len(raw_bytes(tensors_of(cache)))
    res = {"store": store, "nbytes": nbytes,
           "lookup": best_time(lambda: store.longest_prefix(ids), repeat),
           "load": best_time(lambda: fpfs.kv.load_cache(path), repeat)}
    torch.set_num_threads(1)
    res["decode"] = nbytes / best_time(lambda: fpfs.kv.load_cache(path), repeat) / 1e9
    torch.set_num_threads(2)
    return res


def same_generation(model, tokenizer, name: str, caches: dict, prompts: dict,
                    res: dict) -> bool:
    """Whether greedy generation of every prompt from its live cache (a deep copy), from
    load_cache's and (long prompt) from longest_prefix's gives the same tokens."""
    path = os.path.join(WORK_DIR, f"{name}-generate.fpkc")
    same = True
    for prompt, (ids, cached) in prompts.items():
        live = generate(model, ids, copy.deepcopy(caches[prompt]))
        fpfs.kv.save_cache(caches[prompt], path, token_ids=ids[0, :cached], label=name)
        restored = [fpfs.kv.load_cache(path, expect=model, label=name,
                                       token_ids=ids[0, :cached])]
        if prompt == LONG:
            restored.append(res["store"].longest_prefix(ids, expect=model)[1])
        same = same and all(generate(model, ids, c) == live for c in restored)
        print(f"{name}, {prompt}: ...{tokenizer.decode(live)!r}", file=sys.stderr)
    return same


def run_model(args) -> None:
    import torch
    km = kv_model()
    model_dir = args.model_dir or km.DEFAULT_OUT
    stamp = km.ensure(model_dir, log=lambda m: print(m, file=sys.stderr))
    torch.set_num_threads(2)
    os.makedirs(WORK_DIR, exist_ok=True)
    sizes, results, prompts, captured = {}, {}, None, {}
    for name in MODEL_DTYPES:
        model, tokenizer = km.load(model_dir, getattr(torch, TORCH_DTYPES[name]))
        prompts = prompts or model_prompts(tokenizer)
        caches = captured[name] = {p: prefill(model, ids[:, :cached])
                                   for p, (ids, cached) in prompts.items()}
        sizes[name] = total_sizes(caches, name)
        res = results[name] = speeds(name, caches, prompts, args.repeat)
        ids, cached = prompts[LONG]
        res["prefill"] = best_time(lambda: prefill(model, ids[:, :cached]), args.repeat)
        res["identical"] = same_generation(model, tokenizer, name, caches, prompts, res)
        print(f"done {name}", file=sys.stderr)
    for name in FP8_FROM_FP32:
        caches = {p: fp8_cache(c, name) for p, c in captured["FP32"].items()}
        sizes[name] = total_sizes(caches, name)
        results[name] = speeds(name, caches, prompts, args.repeat)
        print(f"done {name}", file=sys.stderr)
    print_model_tables(km.summary(stamp), prompts, sizes, results, args.repeat)


def print_model_tables(summary: str, prompts: dict, sizes: dict, results: dict,
                       repeat: int) -> None:
    tokens = sum(cached for _, cached in prompts.values())
    print(f"\n{cpu_model()}, {os.cpu_count()} cores. Trained model (bench/kv_model.py): "
          f"{summary}.\n\nIts DynamicCache on " +
          " and ".join(f"{p} ({c} tokens cached)" for p, (_, c) in prompts.items()) +
          f"; the model run in BF16, FP16 and FP32, FP8 cast from FP32. Stored size of "
          f"both caches ({tokens} tokens), % of torch.save of the per-layer (keys, values) "
          f"list:\n")
    codecs = ("fpfs.kv", "safetensors", "zstd -3", "ZipNN")
    print("| dtype | cache MB | torch.save MB | " + " | ".join(f"{c} %" for c in codecs) +
          " | fpfs.kv smallest |")
    print("|---|---:|---:|" + "---:|" * len(codecs) + "---|")
    for name, total in sizes.items():
        base = total["torch.save"][0]
        cells = [f"{100 * total[c][0] / base:.2f}" + ("" if total[c][1] else " (NOT lossless)")
                 for c in codecs]
        smallest = all(total["fpfs.kv"][0] < total[c][0]
                       for c in ("torch.save",) + codecs[1:])
        print(f"| {name} | {total['raw'][0] / 1e6:.1f} | {base / 1e6:.2f} | " +
              " | ".join(cells) + f" | {'yes' if smallest else 'NO'} |")
    print(f"\nThe {PREFIX}-token prefix of the {LONG}: PrefixStore.longest_prefix "
          f"({PREFIX // STORE_BLOCK} blocks of {STORE_BLOCK} tokens) and load_cache (one "
          f"file) against recomputing its prefill, torch threads = 2, best of {repeat}; "
          f"decode: load_cache on one thread, GB/s of cache bytes; generate: "
          f"{NEW_TOKENS} greedy tokens after each prompt from the restored caches identical "
          f"to those from the live cache\n")
    print("| dtype | cache MB | longest_prefix ms | load_cache ms | prefill ms | "
          "decode GB/s, 1 core | generate identical |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, r in results.items():
        prefill_ms = f"{1e3 * r['prefill']:.0f}" if "prefill" in r else "—"
        same = ("yes" if r["identical"] else "NO") if "identical" in r else "—"
        print(f"| {name} | {r['nbytes'] / 1e6:.1f} | {1e3 * r['lookup']:.1f} | {1e3 * r['load']:.1f} | "
              f"{prefill_ms} | {r['decode']:.2f} | {same} |")


if __name__ == "__main__":
    main()
