"""fpfs.kv: K/V caches, losslessly compressed with the codecs fpfs uses for weights.

Tensors (tensors.py; numpy arrays, ml_dtypes or torch; FP16, BF16, FP32, F8_E4M3, F8_E5M2):

    blob = fpfs.kv.compress(tensor)         # bytes, shape and dtype preserved
    tensor = fpfs.kv.decompress(blob)       # same type (numpy or torch) and dtype

transformers' DynamicCache, one file or s3:// object per cache (caches.py, cache_file.py):

    fpfs.kv.save_cache(cache, "prompt.fpkc", token_ids=ids, label="my-model")
    cache = fpfs.kv.load_cache("prompt.fpkc", expect=model)
    model.generate(longer_ids, past_key_values=cache)

A store of prefix caches keyed by token ids, shared by processes (prefix_store.py):

    store = fpfs.kv.PrefixStore("/var/cache/kv", label="my-model", max_size=20 << 30)
    store.put(ids, cache)                   # the cache of every whole block of ids
    n, cache = store.longest_prefix(ids, expect=model)   # (0, None) on a miss

Damaged or foreign data raises CorruptContainer (a store answers a miss); a cache of
another model shape, dtype, label or token sequence raises CacheMismatch (a miss).
Byte layouts ("FPKV", "FPKC", the store's tree) are in FORMAT.md.
"""
from .cache_file import CacheFile
from .caches import (CacheMismatch, CacheSpec, UnsupportedCache, build_cache, cache_layers,
                     load_cache, save_cache)
from .prefix_store import PrefixStore
from .tensors import (MAGIC, MAX_WHOLE_CHUNK, SUPPORTED, VERSION, BlobHead, UnsupportedDtype,
                      blob_head, compress, compress_block, decompress, restore_block)

__all__ = ["compress", "decompress", "compress_block", "restore_block", "blob_head",
           "BlobHead", "UnsupportedDtype", "SUPPORTED", "MAGIC", "VERSION", "MAX_WHOLE_CHUNK",
           "save_cache", "load_cache", "build_cache", "cache_layers", "CacheSpec",
           "CacheFile", "CacheMismatch", "UnsupportedCache", "PrefixStore"]
