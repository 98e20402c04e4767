"""transformers' DynamicCache saved to and loaded from one FPKC file (cache_file.py), on
local disk or at an s3:// URL:

    fpfs.kv.save_cache(cache, "prompt.fpkc", token_ids=ids)
    cache = fpfs.kv.load_cache("prompt.fpkc", expect=model)
    model.generate(ids_and_more, past_key_values=cache)

A file is written atomically (a temporary file, fsync, rename; an S3 object appears whole
or not at all) and read back only if every check passes: the file's checksum, every blob's,
and - when asked - the model's shape and dtype (expect=), the label and the token ids."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

from .. import tempfiles
from ..errors import FpfsError
from ..store import is_url, open_object
from .cache_file import SEQ_DIM, CacheFile, encode, parse
from .tensors import _torch_dtypes


class UnsupportedCache(FpfsError, TypeError):
    """A cache this fpfs cannot save as it is (not a DynamicCache of full-attention
    layers, or an empty one)."""


class CacheMismatch(FpfsError, ValueError):
    """A saved cache is not one for this model, label or token sequence."""


@dataclass(frozen=True)
class CacheSpec:
    """What a model's cache must look like; None fields are not checked. dtype: an fpfs
    dtype name (BF16, F16, F32, F8_E4M3, F8_E5M2)."""
    num_layers: Optional[int] = None
    kv_heads: Optional[int] = None
    head_dim: Optional[int] = None
    dtype: Optional[str] = None

    @classmethod
    def of(cls, model_or_config) -> "CacheSpec":
        """From a transformers model (its config and dtype) or config (its dtype if set)."""
        config = getattr(model_or_config, "config", model_or_config)
        if hasattr(config, "get_text_config"):
            config = config.get_text_config(decoder=True)
        heads = getattr(config, "num_attention_heads", None)
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None)
        if head_dim is None and heads and getattr(config, "hidden_size", None):
            head_dim = config.hidden_size // heads
        dtype = getattr(model_or_config, "dtype", None)     # a config's may be unset
        return cls(getattr(config, "num_hidden_layers", None), kv_heads, head_dim,
                   None if dtype in (None, "auto") else fpfs_dtype(dtype))

    def check(self, saved: CacheFile, name: str) -> None:
        """Raise CacheMismatch unless the saved cache fits."""
        def differ(what: str, saved_value, wanted) -> None:
            raise CacheMismatch(f"{name}: the cache has {what} {saved_value}, the model "
                                f"{wanted}")
        if self.num_layers is not None and len(saved.heads) != self.num_layers:
            differ("layers:", len(saved.heads), self.num_layers)
        for i, pair in enumerate(saved.heads):
            for kind, head in zip(("keys", "values"), pair):
                _, heads, _, dim = head.shape
                if self.kv_heads is not None and heads != self.kv_heads:
                    differ(f"layer {i} {kind} in heads:", heads, self.kv_heads)
                if self.head_dim is not None and dim != self.head_dim:
                    differ(f"layer {i} {kind} of head size", dim, self.head_dim)
                if self.dtype is not None and head.dtype != self.dtype:
                    differ(f"layer {i} {kind} in", head.dtype, self.dtype)


def fpfs_dtype(dtype) -> str:
    """A torch dtype (or its name: "bfloat16", "torch.float16") as an fpfs dtype name."""
    names = {str(v).removeprefix("torch."): k for k, v in _torch_dtypes().items()}
    key = str(dtype).removeprefix("torch.")
    if key not in names:
        raise UnsupportedCache(f"K/V caches of {dtype} are not supported "
                               f"(only {', '.join(sorted(names))})")
    return names[key]


def as_spec(expect) -> Optional[CacheSpec]:
    if expect is None or isinstance(expect, CacheSpec):
        return expect
    return CacheSpec.of(expect)


# -- transformers' caches ------------------------------------------------------------------
def cache_layers(cache) -> List[Tuple[Any, Any]]:
    """Every layer's (keys, values) of a DynamicCache (transformers 4.x or 5.x) or of a
    legacy tuple of (keys, values) pairs."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        from transformers.cache_utils import DynamicLayer
        pairs = []
        for i, layer in enumerate(layers):
            # Subclasses (sliding windows, quantized, offloaded layers) keep other state.
            if type(layer) is not DynamicLayer:
                raise UnsupportedCache(f"layer {i} is a {type(layer).__name__}; only "
                                       "DynamicLayer (full attention) caches can be saved")
            if not getattr(layer, "is_initialized", True) or layer.keys is None:
                raise UnsupportedCache(f"layer {i} holds nothing yet")
            pairs.append((layer.keys, layer.values))
        _check_cache_type(cache)
    elif hasattr(cache, "key_cache"):                   # transformers 4.x
        _check_cache_type(cache)
        pairs = list(zip(cache.key_cache, cache.value_cache))
    elif isinstance(cache, (tuple, list)) and all(len(p) == 2 for p in cache):
        pairs = [tuple(p) for p in cache]
    else:
        raise UnsupportedCache(f"cannot save a {type(cache).__name__} (a DynamicCache, or "
                               "a sequence of (keys, values) pairs)")
    if not pairs or any(k.dim() != 4 or k.shape[SEQ_DIM] == 0 for k, _ in pairs):
        raise UnsupportedCache("the cache holds no tokens")
    return pairs


def _check_cache_type(cache) -> None:
    from transformers import DynamicCache
    if not isinstance(cache, DynamicCache):
        raise UnsupportedCache(f"cannot save a {type(cache).__name__}: only DynamicCache")


def build_cache(pairs: Sequence[Tuple[Any, Any]], device=None):
    """A DynamicCache holding these (keys, values) per layer."""
    from transformers import DynamicCache
    cache = DynamicCache()
    for i, (k, v) in enumerate(pairs):
        if device is not None:
            k, v = k.to(device), v.to(device)
        cache.update(k, v, i)
    return cache


# -- files ---------------------------------------------------------------------------------
def save_cache(cache, path_or_url: str, token_ids: Optional[Sequence[int]] = None,
               label: str = "") -> int:
    """Write every layer's keys and values of cache (a DynamicCache; BF16, FP16, FP32 or
    FP8) to one file or s3:// object, atomically; returns its size. token_ids: the tokens
    the cache holds (checked by load_cache(token_ids=...)); label: a name for the model
    that made it (checked by load_cache(label=...)). Raises UnsupportedCache or
    UnsupportedDtype for caches it cannot keep, ValueError for token ids that do not fit."""
    parts = encode(cache_layers(cache), token_ids, label)
    write_parts(path_or_url, parts, durable=True)
    return sum(len(p) for p in parts)


def write_parts(path_or_url: str, parts: List[bytes], durable: bool) -> None:
    """Store the parts as one file (atomically) or one S3 object (whole or not at all)."""
    if not is_url(path_or_url):
        tempfiles.write_atomic(path_or_url, parts, durable=durable)
        return
    from ..store.s3 import default_store
    store = default_store()
    size = sum(len(p) for p in parts)
    if size <= store.settings.multipart_size:
        store.put_bytes(path_or_url, b"".join(parts))
        return
    with tempfile.NamedTemporaryFile(prefix=tempfiles.TMP_PREFIX) as f:  # S3 needs parts
        for part in parts:
            f.write(part)
        f.flush()
        store.upload(f.name, path_or_url)


def read_bytes(path_or_url: str) -> bytes:
    """The whole file, or s3:// object through the store seam."""
    if not is_url(path_or_url):
        with open(path_or_url, "rb") as f:      # one read: no 2 GiB cap as with a pread
            return f.read()
    obj = open_object(path_or_url)
    try:
        return obj.read(0, obj.size)
    finally:
        obj.close()


def load_cache(path_or_url: str, expect=None, label: Optional[str] = None,
               token_ids: Optional[Sequence[int]] = None, device=None):
    """The DynamicCache saved at path_or_url. expect: a model, its config or a CacheSpec -
    a cache of another number of layers, heads, head size or dtype raises CacheMismatch;
    so do another label or token ids than given. A damaged file raises CorruptContainer.
    Nothing is returned that was not checked."""
    saved = parse(read_bytes(path_or_url), path_or_url)
    check(saved, path_or_url, expect, label, token_ids)
    return build_cache(saved.tensors(), device)


def check(saved: CacheFile, name: str, expect=None, label: Optional[str] = None,
          token_ids: Optional[Sequence[int]] = None) -> None:
    spec = as_spec(expect)
    if spec is not None:
        spec.check(saved, name)
    if label is not None and saved.label != label:
        raise CacheMismatch(f"{name}: saved with label {saved.label!r}, not {label!r}")
    if token_ids is not None:
        import numpy as np
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        if saved.token_ids is None or not np.array_equal(saved.token_ids, ids):
            raise CacheMismatch(f"{name}: the cache is not of these token ids")
