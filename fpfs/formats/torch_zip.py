"""torch.save's zip format (the default since torch 1.6): a ZIP of STORED entries,
`<archive>/data.pkl` (the pickled object, with storages as persistent ids), one
`<archive>/data/<key>` entry per storage holding its raw bytes, and small metadata entries.

Each stored storage entry becomes one typed span. Its dtype comes from the pickle, parsed
by fpfs.formats.inert_pickle and never executed: typed storages name their class
(torch.FloatStorage ...); storages of newer dtypes are untyped (torch.storage.UntypedStorage,
numel counted in bytes) and the dtype is the last argument of the `_rebuild_tensor_v3` call
that uses them. A tensor's name is the key path from the pickle's root to the first tensor
using the storage, so a state dict gives the same names as safetensors does. Headers, the
pickle and metadata stay RAW; prefix_length is 0.
"""
from __future__ import annotations

import math
from typing import Any, BinaryIO, Dict, Iterator, List, Optional, Tuple

from .layout import FormatError, Layout, TensorSpan, tile
from .inert_pickle import Call, Global, PDict, Persistent, parse
from .zip_entries import STORED, ZipEntry, first_local_name, read_entries, read_stored

NAME = "torch"
PICKLE_NAME = "data.pkl"
# torch.save's data.pkl holds structure, not tensor bytes: real ones are KBs to a few MB.
# The bound keeps a forged entry from making us read and walk gigabytes of "pickle".
MAX_PICKLE_BYTES = 64 << 20
# Deeper nesting than this is no checkpoint layout anyone writes; it only bounds the walk.
MAX_DEPTH = 128

# (storage class, dtype name, element size). The classes are looked up by name under
# `torch` (or `torch.cuda`, in files from before the storage refactor); never imported.
_STORAGES: Dict[str, Tuple[str, int]] = {
    "FloatStorage": ("F32", 4), "DoubleStorage": ("F64", 8), "HalfStorage": ("F16", 2),
    "BFloat16Storage": ("BF16", 2), "LongStorage": ("I64", 8), "IntStorage": ("I32", 4),
    "ShortStorage": ("I16", 2), "CharStorage": ("I8", 1), "ByteStorage": ("U8", 1),
    "BoolStorage": ("BOOL", 1), "ComplexFloatStorage": ("C64", 8),
    "ComplexDoubleStorage": ("RAW", 16),    # no C128 in the dtype table: stored as bytes
}
# torch dtypes as `_rebuild_tensor_v3` names them (torch 2.13 writes v3 with an untyped
# storage for float8_*, uint16/32/64, float4_e2m1fn_x2, complex32, bits*).
_TORCH_DTYPES: Dict[str, Tuple[str, int]] = {
    "float32": ("F32", 4), "float64": ("F64", 8), "float16": ("F16", 2),
    "bfloat16": ("BF16", 2), "int64": ("I64", 8), "int32": ("I32", 4), "int16": ("I16", 2),
    "int8": ("I8", 1), "uint8": ("U8", 1), "bool": ("BOOL", 1), "complex64": ("C64", 8),
    "uint16": ("U16", 2), "uint32": ("U32", 4), "uint64": ("U64", 8),
    "float8_e4m3fn": ("F8_E4M3", 1), "float8_e5m2": ("F8_E5M2", 1),
    "float8_e4m3fnuz": ("F8_E4M3FNUZ", 1), "float8_e5m2fnuz": ("F8_E5M2FNUZ", 1),
    "float8_e8m0fnu": ("F8_E8M0", 1),
    "float4_e2m1fn_x2": ("F4", 1),      # two E2M1 codes a byte, as safetensors' F4
}
_UNTYPED = {("torch.storage", "UntypedStorage"), ("torch", "UntypedStorage")}
_TENSOR_REBUILDS = {"_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3",
                    "_rebuild_qtensor"}


def sniff(head: bytes, file_size: int) -> bool:
    name = first_local_name(head)
    return name is not None and _is_pickle_name(name)


def _is_pickle_name(name: bytes) -> bool:
    """`<archive>/data.pkl` (torch names the archive after the file's stem) or `data.pkl`."""
    if not name.endswith(PICKLE_NAME.encode()):
        return False
    prefix = name[:-len(PICKLE_NAME)]
    return prefix == b"" or (prefix.endswith(b"/") and prefix.count(b"/") == 1)


class _Storage:
    """What the pickle says about one storage key."""

    def __init__(self, name: str, stype: Any, numel: Any):
        self.name = name
        self.stype = stype
        self.numel = numel
        self.consistent = True
        self.uses: List[Tuple[Any, ...]] = []     # (offset, size, stride, v3 dtype or None)


def layout(f: BinaryIO, file_size: int) -> Layout:
    entries = read_entries(f, file_size)
    pickles = [e for e in entries if _is_pickle_name(e.name.encode("utf-8", "replace"))]
    if len(pickles) != 1:
        raise FormatError(f"found {len(pickles)} data.pkl entries, want 1")
    prefix = pickles[0].name[:-len(PICKLE_NAME)]
    by_name = {e.name: e for e in entries}
    root = parse(read_stored(f, pickles[0], MAX_PICKLE_BYTES))
    big_endian = _big_endian(f, by_name.get(prefix + "byteorder"))

    storages = _storages(root)
    spans = []
    taken: Dict[str, str] = {}
    for key, st in storages.items():
        entry = by_name.get(f"{prefix}data/{key}")
        if entry is None or entry.method != STORED or entry.flags & 1:     # 1: encrypted
            continue
        found = _resolve(st, entry.length)
        if found is None:
            continue
        dtype, elsize, shape = found
        if big_endian and elsize > 1:
            continue
        name = st.name if taken.setdefault(st.name, key) == key else f"{st.name}#{key}"
        spans.append(TensorSpan(entry.data_offset, entry.length, dtype, name, shape))
    return Layout(NAME, 0, file_size, tile(spans, 0, file_size))


def _big_endian(f: BinaryIO, entry: Optional[ZipEntry]) -> bool:
    """torch records the writer's byte order; storages of a big-endian writer are not the
    little-endian element types the dtype names mean."""
    if entry is None:
        return False
    try:
        return read_stored(f, entry, 16).strip() == b"big"
    except FormatError:
        return False


def _storages(root: Any) -> Dict[str, _Storage]:
    """Storage key -> its first name and every tensor using it, in walk order."""
    out: Dict[str, _Storage] = {}
    for name, node in _walk(root):
        if isinstance(node, Persistent):
            pid, use = node.pid, None
        else:
            args = _tensor_args(node)
            assert args is not None
            pid, use = args[0].pid, args[1]
        ref = _storage_ref(pid)
        if ref is None:
            continue
        key, stype, numel = ref
        st = out.get(key)
        if st is None:
            st = out[key] = _Storage(name, stype, numel)
        elif not (_same(st.stype, stype) and _same(st.numel, numel)):
            st.consistent = False
        if use is not None:
            st.uses.append(use)
    return out


def _same(a: Any, b: Any) -> bool:
    """Equality for inert nodes without recursing into them (a forged cyclic list would
    make == recurse until RecursionError)."""
    if isinstance(a, (int, str, Global)) and type(a) is type(b):
        return a == b
    return a is b


def _storage_ref(pid: Any) -> Optional[Tuple[str, Any, Any]]:
    """(key, storage type, numel) of torch.save's ('storage', type, key, location, numel)."""
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
        return None
    key = pid[2]
    if isinstance(key, str):
        return key, pid[1], pid[4]
    if _is_int(key) and 0 <= key < 10 ** 18:
        return str(key), pid[1], pid[4]
    return None


def _tensor_args(node: Call) -> Optional[Tuple[Persistent, Tuple[Any, ...]]]:
    """(storage, (offset, size, stride, v3 dtype)) if node rebuilds a tensor from a storage.
    `_rebuild_from_type_v2(func, type, args, state)` wraps tensor subclasses and some
    Parameters: the rebuild is func(*args)."""
    func, args = node.func, node.args
    if func == Global("torch._tensor", "_rebuild_from_type_v2") and isinstance(args, tuple) \
            and len(args) >= 3:
        func, args = args[0], args[2]
    if not (isinstance(func, Global) and func.module == "torch._utils"
            and func.name in _TENSOR_REBUILDS and isinstance(args, tuple) and len(args) >= 4
            and isinstance(args[0], Persistent)):
        return None
    dtype = args[6] if func.name == "_rebuild_tensor_v3" and len(args) > 6 else None
    return args[0], (args[1], args[2], args[3], dtype)


def _component(key: Any) -> str:
    if isinstance(key, int) and abs(key) < 10 ** 18:    # str() of a huge int raises
        return str(key)
    if isinstance(key, (str, float)) or key is None:
        return str(key)
    if isinstance(key, bytes):
        return key.decode("latin-1")
    return "?"


def _is_leaf(node: Any) -> bool:
    return isinstance(node, (str, bytes, bytearray, int, float, Global)) or node is None


def _join(path: Any) -> str:
    """A path is (parent, component) cons cells, so a wide container costs one cell per
    child rather than a copy of the whole path."""
    parts: List[str] = []
    while path is not None:
        path, comp = path
        if comp is not None:
            parts.append(comp)
    return ".".join(reversed(parts))


def _walk(root: Any) -> Iterator[Tuple[str, Any]]:
    """(name, node) for every tensor rebuild and bare storage reachable from root, in
    pre-order (dict keys in pickle order). Each container is visited once, at its first
    path: memo references (shared tensors, cycles) add no names and cannot loop."""
    seen = set()
    todo: List[Tuple[Any, int, Any]] = [(None, 0, root)]
    while todo:
        path, depth, node = todo.pop()
        if id(node) in seen or depth > MAX_DEPTH:
            continue
        seen.add(id(node))
        children: List[Tuple[Any, Any]] = []        # (component or None, child)
        if isinstance(node, Persistent):
            yield _join(path), node
        elif isinstance(node, Call):
            if _tensor_args(node) is not None:
                yield _join(path), node
                continue
            # Arguments and BUILD state add no component: a Parameter is
            # _rebuild_parameter(tensor, ...), a pickled module's state is its __dict__.
            args = node.args if isinstance(node.args, tuple) else (node.args,)
            children += [(None, a) for a in args]
            children += [(None, node.kwargs)]
            children += [(_component(k), v) for k, v in node.items]
            children += [(str(i), v) for i, v in enumerate(node.appends)]
            children += [(None, s) for s in node.states]
        elif isinstance(node, PDict):
            children = [(_component(k), v) for k, v in node.items]
        elif isinstance(node, (list, tuple)):
            children = [(str(i), v) for i, v in enumerate(node)]
        todo.extend((path if comp is None else (path, comp), depth + 1, child)
                    for comp, child in reversed(children) if not _is_leaf(child))


def _resolve(st: _Storage, nbytes: int) -> Optional[Tuple[str, int, Tuple[int, ...]]]:
    """(dtype, element size, shape) of a storage whose entry holds nbytes, or None when the
    pickle and the entry disagree or the dtype is unknown (the bytes then stay RAW)."""
    if not st.consistent or not _is_int(st.numel) or st.numel < 0:
        return None
    stype = st.stype
    if not isinstance(stype, Global):
        return None
    if (stype.module, stype.name) in _UNTYPED:
        # numel counts bytes; every tensor using the storage must agree on the dtype.
        syms = [u[3] for u in st.uses]
        if not syms or not all(isinstance(s, Global) and s == syms[0] for s in syms):
            return None
        dtype_sym = syms[0]
        if dtype_sym.module != "torch":
            return None
        dtype, elsize = _TORCH_DTYPES.get(dtype_sym.name, ("RAW", 0))
        if st.numel != nbytes or elsize == 0 or nbytes % elsize:
            return None
        numel = nbytes // elsize
    elif stype.module in ("torch", "torch.cuda"):
        dtype, elsize = _STORAGES.get(stype.name, ("RAW", 0))
        if elsize == 0 or st.numel * elsize != nbytes:
            return None
        numel = st.numel
    else:
        return None
    if dtype == "RAW":
        return None
    return dtype, elsize, _shape(st.uses, numel)


def _shape(uses: List[Tuple[Any, ...]], numel: int) -> Tuple[int, ...]:
    """The tensor's size if exactly one tensor uses the whole storage contiguously from
    offset 0, else (numel,): the span is the storage, which views only cover in part."""
    if len(uses) == 1:
        offset, size, stride, _ = uses[0]
        if _is_int(offset) and offset == 0 and _is_int_tuple(size) and _is_int_tuple(stride) \
                and len(size) == len(stride) and math.prod(size) == numel \
                and _contiguous(size, stride):
            return tuple(size)
    return (numel,)


def _contiguous(size: Tuple[int, ...], stride: Tuple[int, ...]) -> bool:
    expected = 1
    for n, s in zip(reversed(size), reversed(stride)):
        if n != 1 and s != expected:    # a length-1 dim's stride is arbitrary, as in torch
            return False
        expected *= n
    return True


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_int_tuple(x: Any) -> bool:
    # Real tensors have at most a few dozen dims; the bound keeps math.prod cheap.
    return isinstance(x, tuple) and len(x) <= 64 and all(_is_int(d) and 0 <= d < 2 ** 62
                                                         for d in x)
