"""fpfs.kv.save_cache / load_cache and PrefixStore with transformers' real DynamicCache and a
real (tiny, randomly initialised, seeded) LlamaForCausalLM: greedy generation continues
from a restored cache exactly as from the live one; every dtype round-trips bit for bit;
and bad input - truncated or damaged files, a cache of another model shape, dtype, label
or token sequence, a forged key collision, a store deleted under a running process,
writers racing on one prefix - gives a clear error or a miss, never a wrong cache."""
from __future__ import annotations

import copy
import glob
import json
import multiprocessing
import os
import shutil

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM
from transformers.cache_utils import DynamicSlidingWindowLayer

import fpfs.kv as kv
from fpfs.cli import main as cli_main
from fpfs.errors import CorruptContainer, FpfsError, UnsupportedVersion
from fpfs.kv import prefix_store
from fpfs.kv import cache_file
from fpfs.kv.cache_file import MAGIC, parse
from fpfs.tempfiles import TMP_PREFIX

VOCAB = 256
DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn,
          torch.float8_e5m2]


def tiny_config(layers: int = 2, kv_heads: int = 2) -> LlamaConfig:
    return LlamaConfig(hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
                       num_key_value_heads=kv_heads, intermediate_size=128,
                       vocab_size=VOCAB)


_MODELS = {}


def tiny_model(dtype=torch.bfloat16, layers: int = 2, kv_heads: int = 2):
    key = (dtype, layers, kv_heads)
    if key not in _MODELS:
        torch.manual_seed(0)
        _MODELS[key] = LlamaForCausalLM(tiny_config(layers, kv_heads)).to(dtype).eval()
    return _MODELS[key]


def prompt(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (1, n), generator=torch.Generator().manual_seed(seed))


def prefill(model, ids: torch.Tensor) -> DynamicCache:
    with torch.no_grad():
        return model(ids, use_cache=True).past_key_values


def generate(model, ids: torch.Tensor, cache) -> torch.Tensor:
    return model.generate(ids, cache=cache, max_new_tokens=12, do_sample=False,
                          attention_mask=torch.ones_like(ids))


def pairs_of(cache):
    return [(layer.keys, layer.values) for layer in cache.layers]


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and \
        torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def same_cache(a, b) -> bool:
    pa, pb = pairs_of(a), pairs_of(b)
    return len(pa) == len(pb) and all(same_bits(x, y) for p, q in zip(pa, pb)
                                      for x, y in zip(p, q))


def sliced(cache, n: int) -> DynamicCache:
    """The first n tokens of a cache, built with transformers' own update()."""
    out = DynamicCache()
    for i, (k, v) in enumerate(pairs_of(cache)):
        out.update(k[:, :, :n].clone(), v[:, :, :n].clone(), i)
    return out


def random_cache(dtype, layers=2, batch=1, heads=2, seq=10, dim=8, seed=0) -> DynamicCache:
    g = torch.Generator().manual_seed(seed)
    cache = DynamicCache()
    for i in range(layers):
        k = (torch.randn(batch, heads, seq, dim, generator=g) * 0.3).to(dtype)
        v = (torch.randn(batch, heads, seq, dim, generator=g) * 0.3).to(dtype)
        cache.update(k, v, i)
    return cache


def token_cache(ids, layers: int = 2, heads: int = 2, dim: int = 4) -> DynamicCache:
    """A synthetic cache whose every position holds its token id (and layer, head; exact in
    FP32), so the right cache of any prefix is known without a model."""
    t = torch.as_tensor(np.asarray(ids, dtype=np.int64)).to(torch.float32)
    cache = DynamicCache()
    for i in range(layers):
        base = t.view(1, 1, -1, 1).expand(1, heads, -1, dim)
        offs = torch.arange(heads, dtype=torch.float32).view(1, heads, 1, 1)
        cache.update((base + 1000 * i + 100 * offs).contiguous(),
                     (-base - 1000 * i).contiguous(), i)
    return cache


# -- save_cache / load_cache ----------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_generate_continues_exactly_from_a_loaded_cache(dtype, tmp_path):
    model = tiny_model(dtype)
    ids = prompt(40)
    live = prefill(model, ids[:, :33])
    path = str(tmp_path / "prompt.fpkc")
    kv.save_cache(live, path, token_ids=ids[0, :33], label="tiny")
    restored = kv.load_cache(path, expect=model, label="tiny", token_ids=ids[0, :33])
    assert type(restored) is DynamicCache and restored.get_seq_length() == 33
    assert same_cache(live, restored)
    want = generate(model, ids, copy.deepcopy(live))
    assert torch.equal(generate(model, ids, restored), want)
    # The comparison can see a cache: another prompt's cache continues differently.
    other = prefill(model, prompt(33, seed=7))
    assert not torch.equal(generate(model, ids, other), want)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(TMP_PREFIX)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_dtype_round_trips(dtype, tmp_path):
    cache = random_cache(dtype, layers=3, batch=2, heads=3, seq=17, dim=16)
    path = str(tmp_path / "c.fpkc")
    size = kv.save_cache(cache, path)
    assert size == os.path.getsize(path)
    back = kv.load_cache(path)
    assert same_cache(cache, back) and back.get_seq_length() == 17
    with open(path, "rb") as f:
        saved = parse(f.read())
    assert saved.dtypes == [kv.caches.fpfs_dtype(dtype)]


def test_bf16_cache_compresses(tmp_path):
    cache = random_cache(torch.bfloat16, layers=2, heads=4, seq=512, dim=64)
    size = kv.save_cache(cache, str(tmp_path / "c.fpkc"))
    assert size < 0.75 * 2 * 2 * 4 * 512 * 64 * 2


def chunk_codecs(blob: bytes) -> set:
    head = kv.blob_head(blob)
    return {kv.tensors._CHUNK.unpack_from(blob, head.table + i * kv.tensors._CHUNK.size)[0]
            for i in range(head.nchunks)}


@pytest.mark.parametrize("seq", [512, 4096])        # one chunk a head; two, tried whole
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_rows_of_repeated_tokens_are_coded_as_repeats(dtype, seq):
    """Layer 0's values depend on the token alone, so a prompt that repeats tokens repeats
    their rows: zstd codes them, order-0 rANS cannot (bench_kv's trained model: 13-26 % of
    their size against 65-84 %). Rows that do not repeat keep the rANS codecs."""
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(64, 4, 64, generator=gen)            # per token: heads x head_dim
    tokens = torch.randint(0, 64, (seq,), generator=gen)
    values = table[tokens].permute(1, 0, 2).unsqueeze(0).to(dtype).contiguous()
    blob = kv.compress(values)
    assert same_bits(kv.decompress(blob), values)
    assert len(blob) < 0.3 * values.nbytes
    assert kv.tensors.CODEC_ZSTD in chunk_codecs(blob)
    fresh = torch.randn(1, 4, seq, 64, generator=gen).to(dtype)
    assert kv.tensors.CODEC_ZSTD not in chunk_codecs(kv.compress(fresh))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dtype=st.sampled_from(DTYPES), layers=st.integers(1, 3), batch=st.integers(1, 2),
       heads=st.integers(1, 3), seq=st.integers(1, 40), dim=st.integers(1, 12),
       seed=st.integers(0, 2**16))
def test_round_trip_any_shape(tmp_path_factory, dtype, layers, batch, heads, seq, dim, seed):
    cache = random_cache(dtype, layers, batch, heads, seq, dim, seed)
    path = str(tmp_path_factory.mktemp("rt") / "c.fpkc")
    kv.save_cache(cache, path, token_ids=list(range(seq)) if batch == 1 else None)
    assert same_cache(cache, kv.load_cache(path))


def test_legacy_pairs_and_device(tmp_path):
    cache = random_cache(torch.float16)
    path = str(tmp_path / "c.fpkc")
    kv.save_cache(tuple(pairs_of(cache)), path)
    assert same_cache(cache, kv.load_cache(path, device="cpu"))


def test_caches_it_cannot_save(tmp_path):
    path = str(tmp_path / "c.fpkc")
    with pytest.raises(kv.UnsupportedCache):
        kv.save_cache(DynamicCache(), path)                    # nothing in it
    sliding = DynamicCache()
    sliding.layers.append(DynamicSlidingWindowLayer(sliding_window=4))
    sliding.update(torch.zeros(1, 1, 2, 4, dtype=torch.bfloat16),
                   torch.zeros(1, 1, 2, 4, dtype=torch.bfloat16), 0)
    with pytest.raises(kv.UnsupportedCache, match="DynamicSlidingWindowLayer"):
        kv.save_cache(sliding, path)
    with pytest.raises(kv.UnsupportedDtype):
        kv.save_cache(random_cache(torch.float64), path)
    with pytest.raises(ValueError, match="end together"):
        kv.save_cache(random_cache(torch.float16, seq=3), path, token_ids=[1, 2])
    with pytest.raises(kv.UnsupportedCache):
        kv.save_cache("not a cache", path)
    assert not os.listdir(tmp_path)


def test_a_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = str(tmp_path / "c.fpkc")
    old = random_cache(torch.bfloat16, seed=1)
    kv.save_cache(old, path)

    def broken(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        kv.save_cache(random_cache(torch.bfloat16, seed=2), path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["c.fpkc"] and same_cache(old, kv.load_cache(path))


@pytest.fixture(scope="module")
def saved_bytes(tmp_path_factory) -> bytes:
    path = str(tmp_path_factory.mktemp("saved") / "c.fpkc")
    kv.save_cache(prefill(tiny_model(), prompt(20)), path, token_ids=prompt(20)[0],
                  label="tiny")
    with open(path, "rb") as f:
        return f.read()


def test_every_truncation_is_an_error(saved_bytes, tmp_path):
    path = str(tmp_path / "cut.fpkc")
    for cut in sorted(set(range(0, 200)) | set(range(0, len(saved_bytes), 37)) |
                      {len(saved_bytes) - 1}):
        with open(path, "wb") as f:
            f.write(saved_bytes[:cut])
        with pytest.raises(CorruptContainer):
            kv.load_cache(path)
    with open(path, "wb") as f:
        f.write(saved_bytes + b"\0")
    with pytest.raises(CorruptContainer):
        kv.load_cache(path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), flips=st.integers(1, 6))
def test_flipped_bits_never_give_a_wrong_cache(saved_bytes, tmp_path_factory, seed, flips):
    rng = np.random.default_rng(seed)
    data = bytearray(saved_bytes)
    for _ in range(flips):
        data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
    path = str(tmp_path_factory.mktemp("flip") / "c.fpkc")
    with open(path, "wb") as f:
        f.write(data)
    try:
        got = kv.load_cache(path)
    except CorruptContainer:
        return
    assert same_cache(got, kv.build_cache(parse(saved_bytes).tensors()))


def test_newer_version_and_foreign_files(saved_bytes, tmp_path):
    path = str(tmp_path / "c.fpkc")
    for data, error in ((saved_bytes[:4] + b"\x09" + saved_bytes[5:], UnsupportedVersion),
                        (b"FPKV" + saved_bytes[4:], CorruptContainer),
                        (b"\0" * 100, CorruptContainer)):
        with open(path, "wb") as f:
            f.write(data)
        with pytest.raises(error):
            kv.load_cache(path)
    assert saved_bytes[:4] == MAGIC


def test_a_cache_of_another_model_is_refused(tmp_path):
    path = str(tmp_path / "c.fpkc")
    kv.save_cache(prefill(tiny_model(), prompt(12)), path, token_ids=prompt(12)[0],
                  label="tiny")
    for other, what in ((tiny_model(layers=3), "layers"),
                        (tiny_model(kv_heads=4), "heads"),
                        (tiny_model(torch.float32), "F32"),
                        (kv.CacheSpec(head_dim=32), "head size")):
        with pytest.raises(kv.CacheMismatch, match=what):
            kv.load_cache(path, expect=other)
    assert kv.load_cache(path, expect=tiny_config()).get_seq_length() == 12  # no dtype
    with pytest.raises(kv.CacheMismatch):
        kv.load_cache(path, label="another model")
    with pytest.raises(kv.CacheMismatch):
        kv.load_cache(path, token_ids=prompt(12, seed=3)[0])
    with pytest.raises(kv.CacheMismatch):
        kv.load_cache(path, token_ids=prompt(13)[0])


def test_a_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        kv.load_cache(str(tmp_path / "none.fpkc"))


GOLDEN = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "golden", "kvcache-v*",
                                      "*.fpkc")))


@pytest.mark.parametrize("path", GOLDEN, ids=os.path.basename)
def test_golden_cache_files_load(path):
    """FPKC files of every version load to the tensors they were made from, forever."""
    want = safe_open(path[:-len(".fpkc")] + ".safetensors", "pt")
    meta = want.metadata()
    cache = kv.load_cache(path, label=meta["label"], token_ids=json.loads(meta["token_ids"]),
                          expect=kv.CacheSpec(num_layers=2, kv_heads=2, head_dim=16))
    for i, (k, v) in enumerate(pairs_of(cache)):
        assert same_bits(k, want.get_tensor(f"layers.{i}.keys"))
        assert same_bits(v, want.get_tensor(f"layers.{i}.values"))


def test_golden_cache_files_exist():
    assert {os.path.basename(p) for p in GOLDEN} >= {"cache-bf16.fpkc", "cache-e4m3.fpkc"}


# -- PrefixStore ----------------------------------------------------------------------------
def test_store_gives_the_longest_stored_prefix(tmp_path):
    model = tiny_model()
    ids = prompt(45)
    live = prefill(model, ids[:, :37])
    store = kv.PrefixStore(str(tmp_path / "s"), block_size=8, label="tiny")
    assert store.put(ids[0, :37], live) == 32            # four whole blocks
    assert len(store.entries()) == 4
    assert store.put(ids[0, :37], live) == 32 and store.counts["blocks_written"] == 4
    # The same 20 tokens then others: two whole blocks match.
    query = torch.cat([ids[:, :20], prompt(10, seed=5)], dim=1)
    n, cache = store.longest_prefix(query, expect=model)
    assert n == 16 and same_cache(cache, sliced(live, 16))
    assert torch.equal(generate(model, query, cache),
                       generate(model, query, sliced(live, 16)))
    # The whole prompt: every stored block, and generation continues as from the live cache.
    n, cache = store.longest_prefix(ids[0], expect=model)
    assert n == 32 and same_cache(cache, sliced(live, 32))
    assert torch.equal(generate(model, ids, cache), generate(model, ids, sliced(live, 32)))
    assert store.longest_prefix(prompt(30, seed=9)) == (0, None)
    assert store.longest_prefix(ids[0, :7]) == (0, None)     # under one block
    assert store.counts["hits"] == 2 and store.counts["misses"] == 2


def test_shared_prefixes_are_stored_once(tmp_path):
    store = kv.PrefixStore(str(tmp_path / "s"), block_size=4)
    a = list(range(1, 13))
    b = a[:8] + [99, 98, 97, 96]
    store.put(a, token_cache(a))
    store.put(b, token_cache(b))
    assert len(store.entries()) == 4                       # 3 of a, 1 more of b
    for ids in (a, b):
        n, cache = store.longest_prefix(ids)
        assert n == 12 and same_cache(cache, token_cache(ids))


def test_reopen_takes_the_stores_block_size(tmp_path):
    root = str(tmp_path / "s")
    kv.PrefixStore(root, block_size=4)
    assert kv.PrefixStore(root).block_size == 4
    with pytest.raises(FpfsError, match="4 tokens"):
        kv.PrefixStore(root, block_size=8)
    with pytest.raises(prefix_store.NotAStore):
        kv.PrefixStore(str(tmp_path / "none"), create=False)
    with open(os.path.join(root, prefix_store.CONFIG_NAME), "w") as f:
        json.dump({"fpfs_kv_store": 1, "block_size": -3}, f)
    with pytest.raises(prefix_store.NotAStore):
        kv.PrefixStore(root)


def test_bad_token_ids_and_batches(tmp_path):
    store = kv.PrefixStore(str(tmp_path / "s"), block_size=4)
    with pytest.raises(ValueError):
        store.put([1, -2, 3, 4], token_cache([1, 2, 3, 4]))
    with pytest.raises(ValueError):
        store.longest_prefix(np.zeros((2, 8), dtype=np.int64))
    with pytest.raises(kv.UnsupportedCache):
        store.put(list(range(8)), random_cache(torch.bfloat16, batch=2, seq=8))


def test_a_forged_collision_is_a_miss(tmp_path):
    store = kv.PrefixStore(str(tmp_path / "s"), block_size=4, label="m")
    a, b = [1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 9, 9, 9, 9]
    store.put(a, token_cache(a))
    store.put(b, token_cache(b))
    names_a, names_b = block_names(a, 4, "m"), block_names(b, 4, "m")
    path = store._files.path
    # b's second block copied where a's second block lives: same name, other tokens.
    shutil.copyfile(path(names_b[1]), path(names_a[1]))
    n, cache = store.longest_prefix(a)
    assert n == 4 and same_cache(cache, token_cache(a[:4]))
    assert store.counts["mismatched"] == 1
    # A block of another label (model) under this label's key: a miss as well.
    other = kv.PrefixStore(str(tmp_path / "s"), label="other")
    other.put(a, token_cache(a))
    shutil.copyfile(path(block_names(a, 4, "other")[0]), path(names_a[0]))
    assert store.longest_prefix(a) == (0, None)
    store.put(a, token_cache(a))                          # written over
    n, cache = store.longest_prefix(a)
    assert n == 8 and same_cache(cache, token_cache(a))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seqs=st.lists(st.lists(st.integers(0, 3), min_size=3, max_size=14), min_size=1,
                     max_size=6), queries=st.lists(st.lists(st.integers(0, 3), max_size=14),
                                                   max_size=6))
def test_colliding_keys_never_give_a_wrong_cache(tmp_path_factory, seqs, queries):
    """With a hash chain that collides everywhere (a key is the block's depth), every
    answer is still the cache of the asked tokens, or a shorter one, or a miss."""
    store = kv.PrefixStore(str(tmp_path_factory.mktemp("collide")), block_size=3)
    orig = prefix_store.chain_keys
    try:
        prefix_store.chain_keys = lambda ids, n, label: (f"{j:064x}" for j in
                                                         range(len(ids) // n))
        for ids in seqs:
            store.put(ids, token_cache(ids))
        for ids in seqs + queries:
            n, cache = store.longest_prefix(ids)
            assert n % 3 == 0 and n <= len(ids)
            if n:
                assert same_cache(cache, token_cache(ids[:n]))
        assert store.longest_prefix(seqs[-1])[0] == len(seqs[-1]) // 3 * 3
    finally:
        prefix_store.chain_keys = orig


@pytest.mark.parametrize("damage", ["flip", "flip-rehashed", "truncate", "empty"])
def test_a_damaged_block_is_a_miss_and_removed(tmp_path, damage):
    store = kv.PrefixStore(str(tmp_path / "s"), block_size=4)
    ids = list(range(10, 22))
    store.put(ids, token_cache(ids))
    victim = store._files.path(block_names(ids, 4)[1])
    with open(victim, "r+b") as f:
        data = bytearray(f.read())
        if damage.startswith("flip"):
            data[len(data) - 5] ^= 0x10                   # in the last blob's payload
        if damage == "flip-rehashed":                     # so that only the blob sees it
            data[40:48] = cache_file._checksum(data[:40], [data[48:]]).to_bytes(8, "little")
        elif damage == "truncate":
            data = data[:len(data) // 2]
        else:
            data = b""
        f.seek(0)
        f.truncate()
        f.write(data)
    n, cache = store.longest_prefix(ids)
    assert n == 4 and same_cache(cache, token_cache(ids[:4]))
    assert store.counts["damaged"] == 1 and not os.path.exists(victim)
    store.put(ids, token_cache(ids))                      # rewritten
    assert store.longest_prefix(ids)[0] == 12


def test_a_store_deleted_under_a_running_process(tmp_path):
    root = str(tmp_path / "s")
    store = kv.PrefixStore(root, block_size=4, max_size=1 << 20)
    ids = list(range(12))
    store.put(ids, token_cache(ids))
    shutil.rmtree(root)
    assert store.longest_prefix(ids) == (0, None)
    assert store.entries() == []
    assert store.put(ids, token_cache(ids)) == 12         # the store is made again
    assert kv.PrefixStore(root, create=False).block_size == 4
    n, cache = store.longest_prefix(ids)
    assert n == 12 and same_cache(cache, token_cache(ids))
    shutil.rmtree(root)
    with open(root, "w") as f:                             # a file where the store was
        f.write("x")
    assert store.longest_prefix(ids) == (0, None)


def test_blocks_of_another_model_shape_are_a_miss(tmp_path):
    model = tiny_model()
    ids = prompt(16)
    store = kv.PrefixStore(str(tmp_path / "s"), block_size=8)
    store.put(ids, prefill(model, ids))
    for other in (tiny_model(layers=3), tiny_model(torch.float32), tiny_model(kv_heads=4)):
        assert store.longest_prefix(ids, expect=other) == (0, None)
    assert store.counts["mismatched"] == 3
    assert store.longest_prefix(ids, expect=model)[0] == 16


def block_names(ids, n: int, label: str = "") -> list:
    keys = prefix_store.chain_keys(np.array(ids, np.uint32), n, label)
    return [prefix_store.entry_name(k, depth) for depth, k in enumerate(keys)]


def test_lru_eviction_keeps_the_recently_used(tmp_path):
    store = kv.PrefixStore(str(tmp_path / "s"), block_size=4)
    seqs = {name: [seed] * 4 + list(range(seed, seed + 8))
            for name, seed in (("a", 1), ("b", 50), ("c", 100))}
    store.put(seqs["a"], token_cache(seqs["a"]))
    size = sum(e.size for e in store.entries())
    store.put(seqs["b"], token_cache(seqs["b"]))
    store.longest_prefix(seqs["a"])                        # a used after b
    store.max_size = int(2.5 * size)
    store.put(seqs["c"], token_cache(seqs["c"]))
    assert sum(e.size for e in store.entries()) <= store.max_size
    assert store.counts["evicted"] >= 2
    assert store.longest_prefix(seqs["a"])[0] == 12
    assert store.longest_prefix(seqs["c"])[0] == 12
    # b went first, its deeper blocks before its first ones: what is left is a prefix.
    left = {e.name for e in store.entries()}
    kept = [name in left for name in block_names(seqs["b"], 4)]
    assert kept == sorted(kept, reverse=True) and not all(kept)
    assert store.longest_prefix(seqs["b"])[0] == 4 * sum(kept)
    removed, _ = store.gc(size // 3 + 1)
    assert removed > 0 and sum(e.size for e in store.entries()) <= size // 3 + 1
    for ids in seqs.values():
        n, cache = store.longest_prefix(ids)
        assert n == 0 or same_cache(cache, token_cache(ids[:n]))


def _writer(root: str, ids, rounds: int, started) -> None:
    """Remove the prefix's blocks and write them again, rounds times."""
    store = kv.PrefixStore(root)
    started.release()
    for _ in range(rounds):
        for e in store.entries():
            store._files.remove(e.name)
        store.put(ids, token_cache(ids))


def test_processes_writing_one_prefix_never_tear_it(tmp_path):
    root = str(tmp_path / "s")
    store = kv.PrefixStore(root, block_size=4)
    ids = list(range(40, 56))
    ctx = multiprocessing.get_context("spawn")
    started = ctx.Semaphore(0)
    writers = [ctx.Process(target=_writer, args=(root, ids, 60, started)) for _ in range(2)]
    for w in writers:
        w.start()
    for w in writers:
        assert started.acquire(timeout=120)
    answers = set()
    while any(w.is_alive() for w in writers):
        n, cache = store.longest_prefix(ids)
        answers.add(n)
        assert n == 0 or same_cache(cache, token_cache(ids[:n]))
    for w in writers:
        w.join()
        assert w.exitcode == 0
    assert max(answers) > 0
    assert store.counts["damaged"] == 0 and store.counts["read_errors"] == 0
    store.put(ids, token_cache(ids))
    assert store.longest_prefix(ids)[0] == 16
    assert not [n for _, _, names in os.walk(root) for n in names if n.startswith(TMP_PREFIX)]


# -- the command line -----------------------------------------------------------------------
def run(capsys, *argv):
    code = cli_main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_ls_stats_gc(tmp_path, capsys):
    root = str(tmp_path / "s")
    store = kv.PrefixStore(root, block_size=16)
    model = tiny_model()
    for seed in (1, 2):
        ids = prompt(48, seed)
        store.put(ids, prefill(model, ids))
    code, out, _ = run(capsys, "kv", "ls", root)
    assert code == 0 and len(out.splitlines()) == 7 and " 48 " in out
    code, out, _ = run(capsys, "kv", "stats", root, "--json")
    stats = json.loads(out)
    assert code == 0 and stats["blocks"] == 6 and stats["prefixes"] == 2
    assert stats["longest_prefix_tokens"] == 48 and stats["block_size"] == 16
    assert stats["original_bytes"] == 6 * 2 * 2 * (1 * 2 * 16 * 16 * 2)
    code, out, _ = run(capsys, "kv", "stats", root)
    assert code == 0 and "6 blocks of 16 tokens" in out
    code, out, _ = run(capsys, "kv", "gc", root, "--max-size", str(stats["stored_bytes"] // 2))
    assert code == 0 and "removed" in out
    assert sum(e.size for e in store.entries()) <= stats["stored_bytes"] // 2
    code, _, err = run(capsys, "kv", "ls", str(tmp_path))
    assert code == 2 and "not a K/V prefix store" in err
    code, _, err = run(capsys, "kv", "gc", str(tmp_path / "none"), "--max-size", "1M")
    assert code == 2 and "no such directory" in err


# -- S3 -------------------------------------------------------------------------------------
def test_s3_save_load_and_store(s3_env, capsys):
    from tests.s3server import BUCKET
    model = tiny_model()
    ids = prompt(24)
    live = prefill(model, ids[:, :20])
    url = f"s3://{BUCKET}/kv/prompt.fpkc"
    kv.save_cache(live, url, token_ids=ids[0, :20])
    restored = kv.load_cache(url, expect=model, token_ids=ids[0, :20])
    assert torch.equal(generate(model, ids, restored), generate(model, ids, copy.deepcopy(live)))
    store = kv.PrefixStore(f"s3://{BUCKET}/kv/store", block_size=8, label="tiny")
    assert store.put(ids[0, :20], live) == 16
    n, cache = kv.PrefixStore(f"s3://{BUCKET}/kv/store", label="tiny").longest_prefix(
        ids, expect=model)
    assert n == 16 and same_cache(cache, sliced(live, 16))
    assert len(store.entries()) == 2
    assert store.longest_prefix(prompt(24, seed=4)) == (0, None)
    code, out, _ = run(capsys, "kv", "ls", f"s3://{BUCKET}/kv/store")
    assert code == 0 and len(out.splitlines()) == 3 and " 16 " in out
    with pytest.raises(FpfsError):
        store.gc(0)
