"""fpfs.load_file: the tensors of a compressed safetensors file without a mount (for
containers without /dev/fuse). A local path or an s3:// URL; every chunk is decoded, on
all cores, straight into one buffer the tensors are views of. The tensors equal what
safetensors.numpy / safetensors.torch `load_file` give for the original file (numpy has
no bfloat16 or float8: those come as ml_dtypes arrays)."""
from __future__ import annotations

import json
from typing import Any, Dict, Optional

import numpy as np

from . import parallel
from .errors import FpfsError
from .formats import FormatError
from .formats.safetensors import header_length, layout_from_header
from .packed_file import PackedFile
from .store import is_url

_NUMPY = {"F64": "float64", "F32": "float32", "F16": "float16", "I64": "int64",
          "U64": "uint64", "I32": "int32", "U32": "uint32", "I16": "int16", "U16": "uint16",
          "I8": "int8", "U8": "uint8", "BOOL": "bool", "C64": "complex64"}
_ML_DTYPES = {"BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
_TORCH = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
          "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
          "U16": "uint16", "U32": "uint32", "U64": "uint64", "BOOL": "bool",
          "C64": "complex64", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


def load_file(path: str, framework: str = "numpy",
              threads: Optional[int] = None) -> Dict[str, Any]:
    """{name: tensor} of the safetensors file stored in the container at path."""
    framework = {"np": "numpy", "pt": "torch"}.get(framework, framework)
    if framework not in ("numpy", "torch"):
        raise ValueError(f"framework must be 'numpy' or 'torch', not {framework!r}")
    packed = PackedFile(path)
    try:
        header = _header(packed)
        buf = np.empty(packed.size, dtype=np.uint8)
        if parallel.read_into(packed, 0, buf, threads or _default_threads(packed, path)) \
                != packed.size:
            raise FpfsError(f"{packed.path}: shorter than its header says")
    finally:
        packed.close()
    make = _numpy_tensor if framework == "numpy" else _torch_tensor
    start = 8 + header_length(packed.container.prefix, packed.size)
    return {name: make(buf, start, info) for name, info in header.items()
            if name != "__metadata__"}


def _header(packed: PackedFile) -> Dict[str, Any]:
    prefix = packed.container.prefix
    n = header_length(prefix, packed.size)
    if n is None or len(prefix) < 8 + n:
        raise FpfsError(f"{packed.path}: not a compressed safetensors file")
    raw = prefix[8:8 + n]
    try:
        layout_from_header(raw, packed.size)       # every offset inside the file
    except FormatError as exc:
        raise FpfsError(f"{packed.path}: {exc}") from None
    return json.loads(raw)


def _default_threads(packed: PackedFile, path: str) -> int:
    cores = parallel.default_threads()
    if is_url(path):            # waiting on the network, not the CPU: as many as GETs
        return max(cores, packed.store.settings.concurrency)
    return cores


def _numpy_tensor(buf: np.ndarray, start: int, info: dict):
    name = info["dtype"]
    if name in _NUMPY:
        dtype = np.dtype(_NUMPY[name])
    elif name in _ML_DTYPES:
        import ml_dtypes
        dtype = np.dtype(getattr(ml_dtypes, _ML_DTYPES[name]))
    else:
        raise FpfsError(f"dtype {name} has no numpy type")
    begin, end = info["data_offsets"]
    return buf[start + begin:start + end].view(dtype).reshape(info["shape"])


def _torch_tensor(buf: np.ndarray, start: int, info: dict):
    import torch
    name = info["dtype"]
    dtype = getattr(torch, _TORCH.get(name, ""), None)
    if dtype is None:
        raise FpfsError(f"dtype {name} has no torch type here")
    begin, end = info["data_offsets"]
    if end == begin:
        return torch.empty(info["shape"], dtype=dtype)
    return torch.frombuffer(buf, dtype=dtype, count=(end - begin) // dtype.itemsize,
                            offset=start + begin).reshape(info["shape"])
