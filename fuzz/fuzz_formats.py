"""Fuzz campaign over the format parsers (fpfs.formats.recognise: safetensors, torch.save zip
+ inert pickle, GGUF, .npy, .npz, ONNX) and the version-2 chunk codecs (ZSTD, BLOCKS,
DELTA, MASKED, with the PLANES/RAW sub-codecs under them), the codecs held to the plain
reference decoder in fpfs/_reference.py.

    python fuzz/fuzz_formats.py --target formats --seconds 600                  # atheris
    python fuzz/fuzz_formats.py --target codecs --seconds 600 --engine random

Seeds are real: slices of the real MiniLM weights (tests/weights.py) written by
torch.save (state dicts, shared views, an AdamW state, a pickled module, protocol 4, the
legacy format, a data.pkl that calls os.system/exec), the gguf package's GGUFWriter (F32,
F16, BF16, Q8_0, Q4_0, MXFP4 tensors, string arrays, general.alignment), np.save /
np.savez / np.savez_compressed, onnx.helper (initializers, float_data, Constant nodes,
If subgraphs, sparse and external tensors) and safetensors; chunk payloads are
fpfs.codecs.encode_chunk of real weights (BLOCKS of GGUF block types, MASKED of chunks with
many zero elements, DELTA against a base with base=(offset, base bytes)).

Mutations: the byte-level operators of fuzz_container.py (flips, sets, inserts, deletes,
truncations, appends, splices, interesting integers), plus structured ones: a field of
the seed's own structure (zip local/central/end records, GGUF counts, lengths, dims,
types and offsets, the npy header length, protobuf varints, codec headers at every
nesting level, zstd frame headers) set to an interesting value; rewrites that keep the
container valid around a damaged inside (a safetensors JSON header edited and re-framed,
a torch data.pkl or npz member mutated and re-zipped, a hostile call spliced into a
pickle); for codecs also another chunk length, codec id or base.

Oracles. Formats: recognise() returns a Layout whose regions tile [prefix_length,
file_size) (or plain bytes); any other exception, more than 2 s of CPU for one input,
a peak allocation over 64 MiB (tracemalloc, and RSS growth) or the marker file that the
hostile pickles would create is a violation. Codecs: fpfs.codecs.decode_chunk and
fpfs._reference.decode_chunk agree (same bytes, or both reject); the fast decoder raises
nothing but FpfsError, stays under the same time and memory bounds, and the reference
raises nothing but its ReferenceError. Violations are saved under --findings and counted;
the run exits 1 if there were any.

The same operators and oracles are used by tests/test_fuzz_formats.py (hypothesis).
"""
from __future__ import annotations

import io
import json
import os
import pickle
import random
import struct
import sys
import time
import tracemalloc
import zipfile
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz.driver import Campaign as Driven, Violation, instrumented, rss  # noqa: E402
from fuzz.driver import main as drive                                     # noqa: E402

with instrumented(__name__ == "__main__"):
    from fpfs import _reference                               # noqa: E402
    from fpfs.codecs import (CODEC_BLOCKS, CODEC_DELTA, CODEC_MASKED, CODEC_PLANES,  # noqa: E402
                             CODEC_RAW, CODEC_ZSTD, decode_chunk, encode_chunk)
    from fpfs.errors import CorruptContainer, FpfsError       # noqa: E402
    from fpfs.formats import Layout, recognise                # noqa: E402
    # the parsers are imported on first use; import them here so atheris instruments them
    from fpfs.formats import (gguf as _f1, inert_pickle as _f2, npy as _f3,  # noqa: E402,F401
                              npz as _f4, onnx as _f5, safetensors as _f6, torch_zip as _f7,
                              zip_entries as _f8)

from fuzz.fuzz_container import (INTERESTING, OP_KINDS, Op,  # noqa: E402
                                 _safetensors, apply_ops, random_ops)

# Bounds of the oracle (the brief of the campaign: inputs < 1 MB).
CPU_SECONDS = 2.0
MEMORY_BOUND = 64 << 20
MAX_INPUT = 1 << 20
BYTE_OPS = tuple(k for k in OP_KINDS if k not in ("field", "fixcrc"))
FORMAT_OPS = BYTE_OPS + ("ffield", "ffield", "struct", "struct", "hostile")
CODEC_OPS = BYTE_OPS + ("cfield", "cfield", "cfield", "length", "codec", "base")
MARKER_NAME = "PWNED-by-pickle"


# -- seeds: files ---------------------------------------------------------------------------
def _real():
    from tests.weights import load_real
    return load_real()


def _hostile_calls(marker: str) -> List[bytes]:
    """Pickle fragments that, under pickle.loads, create the marker file: os.system, posix
    .system and builtins.exec through GLOBAL+REDUCE, STACK_GLOBAL, INST, OBJ and BUILD."""
    def s(text: str) -> bytes:
        raw = text.encode()
        return b"X" + struct.pack("<I", len(raw)) + raw
    cmd = f"touch {marker}"
    src = f"open({marker!r}, 'w').close()"
    return [b"cos\nsystem\n" + s(cmd) + b"\x85R",
            b"cposix\nsystem\n" + s(cmd) + b"\x85R",
            b"cbuiltins\nexec\n" + s(src) + b"\x85R",
            s("os") + s("system") + b"\x93" + s(cmd) + b"\x85R",
            b"(" + s(cmd) + b"ios\nsystem\n",
            b"(cos\nsystem\n" + s(cmd) + b"o",
            b"cbuiltins\neval\n" + s(src) + b"\x85R}b"]


def _torch_zip(entries: Sequence[Tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in entries:
            z.writestr(name, data)
    return buf.getvalue()


def _torch_save(obj, **kw) -> bytes:
    import torch
    buf = io.BytesIO()
    torch.save(obj, buf, **kw)
    return buf.getvalue()


def _gguf_bytes(workdir: str, name: str, tensors, alignment: Optional[int] = None) -> bytes:
    import gguf
    path = os.path.join(workdir, name + ".gguf")
    w = gguf.GGUFWriter(path, "bert")
    w.add_name("fuzz-" + name)
    w.add_block_count(1)
    w.add_layer_norm_eps(1e-12)
    w.add_causal_attention(False)
    w.add_token_list([b"[PAD]", b"hello", b"world", "\u00e9t\u00e9".encode()])
    w.add_token_types([1, 1, 1, 1])
    w.add_array("fuzz.nested", [[1, 2], [3]])
    if alignment:
        w.add_custom_alignment(alignment)
    for tname, data, raw_dtype in tensors:
        if raw_dtype is None:
            w.add_tensor(tname, data)
        else:
            w.add_tensor(tname, data, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with open(path, "rb") as f:
        return f.read()


def _npy(arr, version=None) -> bytes:
    buf = io.BytesIO()
    if version is None:
        np.save(buf, arr, allow_pickle=True)
    else:
        np.lib.format.write_array(buf, arr, version=version, allow_pickle=True)
    return buf.getvalue()


def _npz(compressed: bool = False, **arrays) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def _onnx_models(q: np.ndarray, ln: np.ndarray) -> Dict[str, bytes]:
    import ml_dtypes
    from onnx import TensorProto, helper, numpy_helper
    out = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, None)  # noqa: E731
    base = q[:8, :32]
    inits = [numpy_helper.from_array(np.ascontiguousarray(base), "w_f32"),
             numpy_helper.from_array(base.astype(np.float16), "w_f16"),
             numpy_helper.from_array(base.astype(ml_dtypes.bfloat16), "w_bf16"),
             numpy_helper.from_array((base * 1e4).astype(np.int64), "w_i64"),
             helper.make_tensor("fdata", TensorProto.FLOAT, base[:2].shape, base[:2].ravel()),
             helper.make_tensor("ddata", TensorProto.DOUBLE, [16],
                                base[0, :16].astype(np.float64)),
             helper.make_tensor("i32data", TensorProto.INT32, [3], [1, -2, 300])]
    ext = TensorProto(name="external", data_type=TensorProto.FLOAT, dims=[4],
                      data_location=TensorProto.EXTERNAL)
    ext.external_data.add(key="location", value="weights.bin")
    inits.append(ext)
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.ascontiguousarray(base[0, :5]), "sp"),
        numpy_helper.from_array(np.array([0, 3, 9, 20, 31], dtype=np.int64), "sp_idx"), [32])
    then_g = helper.make_graph([helper.make_node("Identity", ["then_w"], ["y_then"])],
                               "then", [], [out("y_then")],
                               initializer=[numpy_helper.from_array(ln[:64].astype(np.float16),
                                                                    "then_w")])
    else_g = helper.make_graph(
        [helper.make_node("Constant", [], ["y_else"],
                          value=numpy_helper.from_array(np.ascontiguousarray(base[:2, :8])))],
        "else", [], [out("y_else")])
    nodes = [helper.make_node("Constant", [], ["c"], name="const_node",
                              value=numpy_helper.from_array(np.ascontiguousarray(base[:2]))),
             helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g),
             helper.make_node("MatMul", ["x", "w_f32"], ["mm"], name="mm")]
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    graph = helper.make_graph(nodes, "g", [cond, x], [out("y"), out("c"), out("mm")],
                              initializer=inits, sparse_initializer=[sparse])
    small = helper.make_graph([helper.make_node("Add", ["a", "b"], ["s"])], "small", [],
                              [out("s")], initializer=[
                                  numpy_helper.from_array(np.ascontiguousarray(ln[:96]), "a"),
                                  numpy_helper.from_array(np.ascontiguousarray(ln[96:192]), "b")])
    return {"onnx_full": helper.make_model(graph).SerializeToString(),
            "onnx_small": helper.make_model(small, producer_name="fuzz").SerializeToString()}


def format_seeds(workdir: str, marker: str) -> Dict[str, bytes]:
    """Small (< 64 KB) real files of every format recognise() knows, and a few it does not."""
    import ml_dtypes
    import torch
    real = _real()
    q = real["encoder.layer.0.attention.self.query.weight"]
    ln = real["embeddings.LayerNorm.weight"]
    ids = real["embeddings.position_ids"]
    tq = torch.from_numpy(np.ascontiguousarray(q[:16, :64]))
    out: Dict[str, bytes] = {}

    # safetensors
    out["safetensors"] = _safetensors([
        ("q", "BF16", (16, 64), q[:16, :64].astype(ml_dtypes.bfloat16).tobytes()),
        ("ln", "F32", (384,), ln.tobytes()),
        ("f8", "F8_E4M3", (8, 64), q[16:24, :64].astype(ml_dtypes.float8_e4m3fn).tobytes()),
        ("ids", "I64", (1, 32), ids[:, :32].tobytes())], {"format": "pt"})

    # torch.save
    out["torch_sd"] = _torch_save({
        "q": tq, "ln": torch.from_numpy(ln.copy()).bfloat16(),
        "half": tq[:4].half(), "f8": tq[4:8].to(torch.float8_e4m3fn),
        "ids": torch.from_numpy(ids[:, :32].copy()), "u16": (tq[:2] * 1e4).abs().to(torch.uint16)})
    shared = tq.clone()
    out["torch_views"] = _torch_save({"a": shared, "row": shared[1], "t": shared.t(),
                                      "nested": [{"x": shared[2:4]}, (shared[5],)]})
    lin = torch.nn.Linear(64, 16)
    with torch.no_grad():
        lin.weight.copy_(tq)
    opt = torch.optim.AdamW(lin.parameters(), lr=1e-3)
    lin(torch.from_numpy(np.ascontiguousarray(q[:3, :64]))).square().sum().backward()
    opt.step()
    out["torch_adamw"] = _torch_save({"model": lin.state_dict(), "optim": opt.state_dict(),
                                      "step": 1})
    out["torch_module_p4"] = _torch_save(lin, pickle_protocol=4)
    out["torch_legacy"] = _torch_save({"w": tq[:4]}, _use_new_zipfile_serialization=False)
    # a data.pkl that runs os.system / exec under pickle.load, next to a real storage
    tensor_ops = (b"ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storage"
                  b"ctorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x10tQK\x00"
                  b"K\x10\x85K\x01\x85\x89ccollections\nOrderedDict\n)RtR")
    calls = _hostile_calls(marker)
    pkl = b"\x80\x02}(" + b"".join(b"X\x02\x00\x00\x00e" + bytes([48 + i]) + c
                                   for i, c in enumerate(calls)) \
        + b"X\x01\x00\x00\x00w" + tensor_ops + b"u."
    out["torch_hostile"] = _torch_zip([("archive/data.pkl", pkl),
                                       ("archive/data/0", q[0, :16].tobytes()),
                                       ("archive/byteorder", b"little")])

    # GGUF
    import gguf
    Q = gguf.GGMLQuantizationType
    w2 = np.ascontiguousarray(q[:8, :256])
    out["gguf_mixed"] = _gguf_bytes(workdir, "mixed", [
        ("token_embd.norm.weight", np.ascontiguousarray(ln[:256]), None),
        ("blk.0.attn_q.weight", gguf.quants.quantize(w2, Q.Q8_0), Q.Q8_0),
        ("blk.0.attn_k.weight", w2[:4].astype(np.float16), None),
        ("blk.0.attn_v.weight", gguf.quants.quantize(w2[:4], Q.Q4_0), Q.Q4_0),
        ("blk.0.ffn_up.weight", gguf.quants.quantize(w2[:4], Q.MXFP4), Q.MXFP4)])
    out["gguf_bf16_align"] = _gguf_bytes(workdir, "bf16", [
        ("output.weight", gguf.quants.quantize(w2[:4], Q.BF16), Q.BF16),
        ("output.bias", np.ascontiguousarray(ln[:64]), None)], alignment=64)

    # .npy / .npz
    out["npy_f32"] = _npy(np.ascontiguousarray(q[:16, :64]))
    out["npy_bf16"] = _npy(q[:8, :64].astype(ml_dtypes.bfloat16))
    out["npy_f16_fortran_v2"] = _npy(np.asfortranarray(q[:8, :32].astype(np.float16)), (2, 0))
    out["npy_i64_v3"] = _npy(ids[:, :64].copy(), (3, 0))
    out["npy_struct"] = _npy(np.zeros(4, dtype=[("a", "<f4"), ("b", "<i8")]))
    out["npy_object"] = _npy(np.array([{"k": 1}, "s"], dtype=object))
    out["npz"] = _npz(q=np.ascontiguousarray(q[:8, :64]), ln=ln[:128].astype(np.float16),
                      bf=q[8:12, :64].astype(ml_dtypes.bfloat16), ids=ids[:, :16].copy())
    out["npz_compressed"] = _npz(True, q=np.ascontiguousarray(q[:4, :64]))

    # ONNX
    out.update(_onnx_models(q, ln))

    # not a format: plain bytes, and bytes that start like one
    rng = np.random.default_rng(5)
    out["noise"] = rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()
    out["json"] = json.dumps({"architectures": ["BertModel"], "hidden_size": 384}).encode()
    return out


# -- structure of the seed files: where the fields are ---------------------------------------
Field = Tuple[int, int]       # (offset, width in bytes) of a little-endian integer field


def zip_fields(data: bytes) -> List[Field]:
    """Every integer field of the zip's local headers, central records and end records."""
    out: List[Field] = []
    spec = {b"PK\x03\x04": [(6, 2), (8, 2), (18, 4), (22, 4), (26, 2), (28, 2)],
            b"PK\x01\x02": [(8, 2), (10, 2), (20, 4), (24, 4), (28, 2), (30, 2), (32, 2),
                            (42, 4)],
            b"PK\x05\x06": [(4, 2), (6, 2), (8, 2), (10, 2), (12, 4), (16, 4), (20, 2)],
            b"PK\x06\x06": [(4, 8), (24, 8), (32, 8), (40, 8), (48, 8)],
            b"PK\x06\x07": [(8, 8), (16, 4)]}
    for magic, fields in spec.items():
        pos = data.find(magic)
        while pos >= 0:
            out += [(pos + o, w) for o, w in fields if pos + o + w <= len(data)]
            pos = data.find(magic, pos + 1)
    # ZIP64 extra fields (np.savez puts one in every local header)
    pos = data.find(b"\x01\x00\x10\x00")
    while pos >= 0:
        out += [(pos + 4, 8), (pos + 12, 8)]
        pos = data.find(b"\x01\x00\x10\x00", pos + 1)
    return [(o, w) for o, w in out if o + w <= len(data)]


def gguf_fields(data: bytes) -> List[Field]:
    """Counts, key/string lengths, value types, array types and counts, tensor name lengths,
    n_dims, dims, ggml types and offsets of a (valid) GGUF file."""
    out: List[Field] = [(4, 4), (8, 8), (16, 8)]
    try:
        n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
        pos = 24
        fixed = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

        def value(vtype: int, pos: int) -> int:
            if vtype in fixed:
                out.append((pos, fixed[vtype]))
                return pos + fixed[vtype]
            if vtype == 8:
                out.append((pos, 8))
                return pos + 8 + struct.unpack_from("<Q", data, pos)[0]
            if vtype == 9:
                itype, count = struct.unpack_from("<IQ", data, pos)
                out.extend([(pos, 4), (pos + 4, 8)])
                pos += 12
                for _ in range(count):
                    pos = value(itype, pos)
                return pos
            raise ValueError(vtype)

        for _ in range(n_kv):
            out.append((pos, 8))
            pos += 8 + struct.unpack_from("<Q", data, pos)[0]
            vtype = struct.unpack_from("<I", data, pos)[0]
            out.append((pos, 4))
            pos = value(vtype, pos + 4)
        for _ in range(n_tensors):
            out.append((pos, 8))
            pos += 8 + struct.unpack_from("<Q", data, pos)[0]
            n_dims = struct.unpack_from("<I", data, pos)[0]
            out.append((pos, 4))
            pos += 4
            out += [(pos + 8 * i, 8) for i in range(n_dims)]
            pos += 8 * n_dims
            out += [(pos, 4), (pos + 4, 8)]
            pos += 12
    except (struct.error, ValueError):
        pass
    return [(o, w) for o, w in out if o + w <= len(data)]


def _varint_at(buf: bytes, pos: int) -> Tuple[int, int]:
    value = shift = 0
    for i in range(pos, min(pos + 10, len(buf))):
        value |= (buf[i] & 0x7F) << shift
        if buf[i] < 0x80:
            return value, i + 1
        shift += 7
    raise ValueError("varint")


def protobuf_fields(data: bytes, start: int = 0, end: Optional[int] = None,
                    depth: int = 0, out: Optional[List[Field]] = None) -> List[Field]:
    """(offset, -width) of every tag and length varint (negative width: a varint), walking
    into every LEN payload that itself parses as a message."""
    out = [] if out is None else out
    end = len(data) if end is None else end
    pos = start
    try:
        while pos < end:
            tag_at = pos
            tag, pos = _varint_at(data, pos)
            wire = tag & 7
            if wire == 0:
                v_at = pos
                _, pos = _varint_at(data, pos)
                out += [(tag_at, -(v_at - tag_at)), (v_at, -(pos - v_at))]
            elif wire == 2:
                n_at = pos
                n, pos = _varint_at(data, pos)
                out += [(tag_at, -(n_at - tag_at)), (n_at, -(pos - n_at))]
                if depth < 12 and n and pos + n <= end:
                    protobuf_fields(data, pos, pos + n, depth + 1, out)
                pos += n
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            else:
                break
    except ValueError:
        pass
    return out


def format_fields(data: bytes) -> List[Field]:
    if data[:4] == b"PK\x03\x04":
        return zip_fields(data)
    if data[:4] == b"GGUF":
        return gguf_fields(data)
    if data[:6] == b"\x93NUMPY":
        return [(6, 1), (7, 1), (8, 2 if data[6] == 1 else 4)]
    if data[:1] == b"\x08":
        return protobuf_fields(data)
    if len(data) > 8 and data[8:9] == b"{":
        return [(0, 8), (0, 4), (4, 4)]
    return []


def _edit_value(old: int, width: int, b: int) -> int:
    """A new value for a field of `width` bytes (as fuzz_container._set_field does)."""
    mask = (1 << (8 * width)) - 1
    k = b % 8
    return [INTERESTING[(b >> 3) % len(INTERESTING)], old + 1, old - 1,
            old ^ (1 << ((b >> 3) % (8 * width))), old * 2, old + 8, old - 8, b >> 3][k] & mask


def _encode_varint(v: int) -> bytes:
    out = bytearray()
    v &= (1 << 64) - 1
    while True:
        byte = v & 0x7F
        v >>= 7
        if v:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def set_field(buf: bytearray, fields: Sequence[Field], a: int, b: int) -> bytearray:
    """Set field a % len(fields) to a value picked by b (a varint may change length)."""
    if not fields:
        return buf
    off, width = fields[a % len(fields)]
    if width > 0:
        if off + width > len(buf):
            return buf
        old = int.from_bytes(buf[off:off + width], "little")
        buf[off:off + width] = _edit_value(old, width, b).to_bytes(width, "little")
        return buf
    width = -width
    if off + width > len(buf):
        return buf
    try:
        old, _ = _varint_at(bytes(buf[off:off + width]), 0)
    except ValueError:
        old = 0
    new = _encode_varint(_edit_value(old, 8, b))
    if (b >> 20) & 1 and len(new) < width:          # same length: pad with 0x80 groups
        new = bytes(x | 0x80 for x in new[:-1]) + bytes([new[-1] | 0x80]) \
            + b"\x80" * (width - len(new) - 1) + b"\x00"
    buf[off:off + width] = new
    return buf


# -- structured rewrites --------------------------------------------------------------------
_WEIRD_JSON = ["1" + "0" * 5000, "-1", "1e999", "1.5", "true", "null", "\"0\"", "[]", "{}",
               "[" * 3000 + "]" * 3000, "18446744073709551616", "9223372036854775807"]
_DTYPES = ["F32", "BF16", "F16", "F64", "I64", "U8", "F8_E4M3", "GGUF_Q8_0", "RAW", "", "X" * 300]


def _rewrite_safetensors(data: bytes, a: int, b: int, blob: bytes) -> Optional[bytes]:
    if len(data) < 8:
        return None
    n = struct.unpack_from("<Q", data, 0)[0]
    try:
        header = json.loads(data[8:8 + n])
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(header, dict):
        return None
    body = data[8 + n:]
    names = [k for k in header if k != "__metadata__"] or ["x"]
    name = names[a % len(names)]
    info = header.get(name) if isinstance(header.get(name), dict) else {}
    k = b % 9
    weird = _WEIRD_JSON[(b >> 4) % len(_WEIRD_JSON)]
    interesting = INTERESTING[(b >> 4) % len(INTERESTING)]
    raw_override = None
    if k == 0:
        info["data_offsets"] = [interesting, interesting + (a >> 8) % 4096]
    elif k == 1:
        off = info.get("data_offsets") or [0, 0]
        if isinstance(off, list) and len(off) == 2 and all(isinstance(x, int) for x in off):
            info["data_offsets"] = [off[0] + (a >> 8) % 9 - 4, off[1] + (b >> 8) % 9 - 4]
    elif k == 2:
        info["dtype"] = _DTYPES[(b >> 4) % len(_DTYPES)]
    elif k == 3:
        info["shape"] = [interesting, (a >> 8) % 7]
    elif k == 4:                    # a raw JSON value the json module cannot produce
        raw_override = (name, weird)
    elif k == 5:
        header[blob.hex()[:40] or "y"] = {"dtype": "F32", "shape": [2],
                                          "data_offsets": [(a >> 8) % max(1, len(body)), 8]}
    elif k == 6:
        header.pop(name, None)
    elif k == 7:
        header["__metadata__"] = {"format": blob.decode("latin-1")}
    else:
        info = [info] if b & 1 else str(info)
    if k != 6:
        header[name] = info
    text = json.dumps(header, separators=(",", ":"))
    if raw_override is not None:
        key = json.dumps(raw_override[0])
        field = ["data_offsets", "shape", "dtype"][(a >> 4) % 3]
        text = text.replace(key + ":{", key + ":{" + json.dumps(field) + ":" + raw_override[1]
                            + ",", 1)
    js = text.encode()
    js += b" " * ((a >> 16) % 2 * (-len(js) % 8))
    return struct.pack("<Q", len(js)) + js + body


def _zip_members(data: bytes) -> Optional[List[Tuple[str, bytes]]]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return [(i.filename, z.read(i)) for i in z.infolist()]
    except Exception:           # noqa: BLE001 - a mutated zip: nothing to rewrite
        return None


def _rewrite_zip(data: bytes, a: int, b: int, blob: bytes, marker: str) -> Optional[bytes]:
    """Re-zip with one member's contents mutated: the data.pkl (byte ops, or a hostile
    call spliced in at an opcode boundary), an .npy member's header, or a storage resized."""
    members = _zip_members(data)
    if not members:
        return None
    pkl = [i for i, (n, _) in enumerate(members) if n.endswith("data.pkl")]
    i = pkl[0] if pkl and (a & 3) else a % len(members)
    name, content = members[i]
    rnd = random.Random(a ^ (b << 32))
    if name.endswith(".pkl") and b % 3 == 0:
        content = _splice_call(content, marker, rnd)
    elif name.endswith(".npy") and b % 3 == 0:
        content = _rewrite_npy(content, a >> 4, b >> 2, blob) or content
    elif b % 3 == 1:
        content = content[:max(0, len(content) - 1 - (a >> 8) % 64)] + blob[:(b >> 8) % 8]
    else:
        content, _ = apply_ops(content, random_ops_bytes(rnd, 3), [])
    members[i] = (name, content)
    return _torch_zip(members)


def _splice_call(pkl: bytes, marker: str, rnd: random.Random) -> bytes:
    """Insert a hostile call (and a POP, so the stack stays balanced) at an opcode boundary."""
    import pickletools
    try:
        cuts = [pos for _, _, pos in pickletools.genops(pkl)]
    except Exception:           # noqa: BLE001
        cuts = [0]
    cut = rnd.choice(cuts[1:] or cuts) if cuts else 0
    call = rnd.choice(_hostile_calls(marker)) + (b"0" if rnd.random() < 0.7 else b"")
    return pkl[:cut] + call + pkl[cut:]


def _rewrite_npy(data: bytes, a: int, b: int, blob: bytes) -> Optional[bytes]:
    """Another header dict (descr, shape, fortran_order, extra keys or a non-literal) in
    front of the same array bytes, with a consistent length field."""
    if data[:6] != b"\x93NUMPY":
        return None
    major = data[6]
    start = 10 if major == 1 else 12
    n = struct.unpack_from("<H" if major == 1 else "<I", data, 8)[0]
    body = data[start + n:]
    descrs = ["<f4", "<f2", "<V2", "|u1", ">f4", "<f8", "|O", "<U10", "|S0", "<i99999999",
              "<f4" * 500, "[('a', '<f4')]", 7]
    shapes = ["(16, 64)", "()", "(0,)", "(-1,)", "(%d,)" % (1 << 62), "(1 << 70,)",
              "(%s,)" % ("9" * 5000), "(True,)", "((1,),)", "(1,) * 65", "(2**40, 2**40)",
              "(" * 200 + ")" * 200, "[16, 64]", "(16, 64.0)"]
    k = b % 4
    descr = repr(descrs[a % len(descrs)])
    shape = shapes[(a >> 4) % len(shapes)]
    if k == 0:
        text = "{'descr': %s, 'fortran_order': False, 'shape': %s, }" % (descr, shape)
    elif k == 1:
        text = "{'descr': %s, 'fortran_order': %s, 'shape': (8, 64), }" % (
            descr, ["True", "1", "None", "'x'"][(a >> 8) % 4])
    elif k == 2:
        text = "{'descr': '<f4', 'fortran_order': False, 'shape': (16, 64), 'x': %s}" % \
            ["__import__('os').system('true')", "b'" + "x" * 100 + "'", "{1: 2}"][(a >> 8) % 3]
    else:
        text = blob.decode("latin-1")
    raw = text.encode("latin-1", "replace")
    raw += b" " * (-(start + len(raw) + 1) % 64) + b"\n"
    if major == 1 and len(raw) > 0xFFFF:
        return None
    head = data[:8] + struct.pack("<H" if major == 1 else "<I", len(raw))
    return head + raw + body


def random_ops_bytes(rnd: random.Random, max_ops: int = 4) -> List[Op]:
    return [op for op in random_ops(rnd, max_ops) if op[0] not in ("field", "fixcrc")] or \
        [("flip", rnd.getrandbits(32), 0, b"\0")]


# -- formats: mutation and oracle -----------------------------------------------------------
@dataclass
class FormatSeed:
    name: str
    data: bytes
    fields: List[Field]


def make_format_seeds(workdir: str, marker: str) -> List[FormatSeed]:
    return [FormatSeed(n, d, format_fields(d)) for n, d in format_seeds(workdir, marker).items()]


def random_format_ops(rnd: random.Random, max_ops: int = 4) -> List[Op]:
    ops = []
    for _ in range(rnd.randint(1, max_ops)):
        ops.append((rnd.choice(FORMAT_OPS), rnd.getrandbits(32), rnd.getrandbits(32),
                    rnd.randbytes(rnd.choice((1, 1, 4, 8, 40, 300)))))
    return ops


def mutate_format(seed: FormatSeed, ops: Sequence[Op], others: Sequence[bytes],
                  marker: str) -> bytes:
    """Structured ops (ffield, struct, hostile) act on the seed's structure, in order, while
    it is still valid enough; the byte ops after them act on whatever that gave."""
    data = seed.data
    fields = seed.fields
    byte_ops: List[Op] = []
    for op in ops:
        kind, a, b, blob = op
        if kind == "ffield":
            data = bytes(set_field(bytearray(data), fields, a, b))
        elif kind == "struct":
            if data[:4] == b"PK\x03\x04":
                new = _rewrite_zip(data, a, b, blob, marker)
            elif data[:6] == b"\x93NUMPY":
                new = _rewrite_npy(data, a, b, blob)
            elif len(data) > 8 and data[8:9] == b"{":
                new = _rewrite_safetensors(data, a, b, blob)
            else:
                new = None
            if new is not None:
                data = new
                fields = format_fields(data)
        elif kind == "hostile":
            if data[:4] == b"PK\x03\x04":
                members = _zip_members(data)
                pk = [i for i, (n, _) in enumerate(members or []) if n.endswith("data.pkl")]
                if pk:
                    name, content = members[pk[0]]
                    members[pk[0]] = (name, _splice_call(content, marker, random.Random(a)))
                    data = _torch_zip(members)
                    fields = format_fields(data)
        else:
            byte_ops.append(op)
    if byte_ops:
        data, _ = apply_ops(data, byte_ops, others)
    return data[:MAX_INPUT]


@dataclass
class Bounds:
    cpu: float = 0.0
    wall: float = 0.0
    peak: int = 0


def _bounded(fn: Callable[[], object], trace: bool = True) -> Tuple[object, Bounds]:
    """fn() under tracemalloc, with its CPU and wall time. Exceptions propagate.

    If tracemalloc is already running (the campaign keeps it on), the peak is measured
    with reset_peak(): starting and stopping it for every input grows the process by
    ~1.8 KB an input (CPython's tracemalloc, not fpfs: 1.9 GiB after 900,000 inputs)."""
    b = Bounds()
    running = tracemalloc.is_tracing()
    if trace and running:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
    elif trace:
        tracemalloc.start()
        base = 0
    c0, w0 = time.process_time(), time.perf_counter()
    try:
        result = fn()
    finally:
        b.cpu, b.wall = time.process_time() - c0, time.perf_counter() - w0
        if trace:
            b.peak = tracemalloc.get_traced_memory()[1] - base
            if not running:
                tracemalloc.stop()
    return result, b


def _check_bounds(what: str, data_len: int, b: Bounds) -> None:
    if b.cpu > CPU_SECONDS:
        raise Violation(f"{what} took {b.cpu:.2f} s CPU ({b.wall:.2f} s wall) on {data_len} bytes")
    if b.peak > MEMORY_BOUND:
        raise Violation(f"{what} allocated {b.peak} bytes at peak on a {data_len}-byte input")


def check_layout(layout: object, size: int) -> None:
    """The oracle's own tiling check (independent of fpfs.formats._check_tiling)."""
    if not isinstance(layout, Layout):
        raise Violation(f"recognise returned {type(layout).__name__}, not a Layout")
    if layout.file_size != size or not 0 <= layout.prefix_length <= size:
        raise Violation(f"{layout.format} layout: size {layout.file_size}, prefix "
                        f"{layout.prefix_length} for a {size}-byte file")
    pos = layout.prefix_length
    for r in layout.regions:
        if r.offset != pos or r.length <= 0:
            raise Violation(f"{layout.format} layout does not tile the file at {pos}: {r}")
        if not isinstance(r.dtype, str) or (r.tensor is None and r.dtype != "RAW"):
            raise Violation(f"{layout.format} layout: region {r} has a dtype but no tensor")
        pos += r.length
    if pos != size:
        raise Violation(f"{layout.format} layout ends at {pos}, the file at {size}")


def check_format(data: bytes, marker: Optional[str] = None, trace: bool = True) -> str:
    """recognise() on data: a tiling Layout (or plain bytes), within the bounds, and no
    pickle executed. Returns the layout's format name ("bytes" for plain bytes)."""
    try:
        (layout, why), b = _bounded(lambda: recognise(io.BytesIO(data), len(data)), trace)
    except Exception as exc:                # noqa: BLE001 - that is the finding
        raise Violation(f"recognise raised {type(exc).__name__}: {str(exc)[:300]}") from exc
    finally:
        if marker and os.path.exists(marker):
            os.unlink(marker)
            raise Violation("a pickle was executed: the marker file appeared")
    _check_bounds("recognise", len(data), b)
    check_layout(layout, len(data))
    if why is not None and not isinstance(why, str):
        raise Violation(f"recognise's reason is {type(why).__name__}")
    if layout.format == "bytes" and why:        # "looks like torch but ...": claimed, refused
        return "refused-" + why.split()[2]
    return layout.format


# -- codecs: seeds ---------------------------------------------------------------------------
@dataclass
class CodecSeed:
    name: str
    codec: int
    payload: bytes
    length: int
    base: int                # index into the base files (DELTA)
    original: bytes


def _kquant_like(x: np.ndarray, name: str) -> np.ndarray:
    """Blocks with the field layout of a K-quant (gguf.quants cannot write one), filled from
    the real values: fp16/fp32 scales of each block, quant fields from 4-bit codes of the
    values (two per byte), taken in order."""
    from fpfs.codecs.blocks import BLOCK_TYPES
    bt = BLOCK_TYPES[name]
    vals = x.reshape(-1, 256)
    out = np.zeros((vals.shape[0], bt.block_bytes), np.uint8)
    for i, row in enumerate(vals):
        d = np.float32(np.abs(row).max() / 7 or 1)
        codes = np.clip(np.round(row / d) + 8, 0, 15).astype(np.uint8)
        stream = np.concatenate([codes[0::2] | (codes[1::2] << 4), codes, codes[::-1]])
        pos = 0
        for f in bt.fields:
            if f.dtype in ("F16", "F32"):
                v = np.array([d], np.float16 if f.dtype == "F16" else np.float32).view(np.uint8)
                out[i, f.offset:f.offset + f.length] = np.resize(v, f.length)
            else:
                out[i, f.offset:f.offset + f.length] = stream[pos:pos + f.length]
                pos += f.length
    return out


def _blocks_payload(raw: bytes, name: str) -> bytes:
    """A BLOCKS payload of raw even when it does not beat RAW (encode() returns None then)."""
    from fpfs.codecs.blocks import _HEAD, _SUB, BLOCK_TYPES
    from fpfs.codecs.substreams import SUBCODECS
    bt = BLOCK_TYPES[name]
    blocks = np.frombuffer(raw, np.uint8).reshape(-1, bt.block_bytes)
    head = [_HEAD.pack(bt.block_bytes, len(bt.fields))]
    head += [struct.pack("<H", f.length) for f in bt.fields]
    bodies = []
    for j, f in enumerate(bt.fields):
        stream = memoryview(np.ascontiguousarray(blocks[:, f.offset:f.offset + f.length])).cast("B")
        sub, body = 0, bytes(stream)
        planes = SUBCODECS[1].encode(stream, f.dtype, 0)
        if planes is not None and j % 2 == 0:
            sub, body = 1, planes
        elif j % 3 == 1:
            sub, body = 2, SUBCODECS[2].encode(stream, 3)
        head.append(_SUB.pack(sub, len(body)))
        bodies.append(body)
    return b"".join(head + bodies)


def codec_seeds() -> Tuple[List[CodecSeed], List[bytes]]:
    """(payload seeds, base files). Chunks of 1-16 KiB of real weights in each dtype and
    block type, with zeros (MASKED), and fine-tunes of a base (DELTA)."""
    import gguf
    import ml_dtypes
    from tests.weights import cast_fp8
    real = _real()
    q = real["encoder.layer.0.attention.self.query.weight"]
    k = real["encoder.layer.1.attention.self.key.weight"]
    rng = np.random.default_rng(99)
    seeds: List[CodecSeed] = []

    def add(name: str, raw: bytes, dtype: str, ppm: int = 10_000, base=None, base_i=0,
            want: Optional[int] = None) -> None:
        codec, payload = encode_chunk(memoryview(raw), dtype, ppm, base=base)
        if want is not None and codec != want:
            if want == CODEC_BLOCKS:
                codec, payload = want, _blocks_payload(raw, dtype)
            elif want == CODEC_MASKED:
                from fpfs.codecs import CODECS
                payload = CODECS[CODEC_MASKED].encode(memoryview(raw), dtype, ppm)
                if payload is None:
                    return
                codec = want
            else:
                return
        seeds.append(CodecSeed(f"{name}:{codec}", codec, payload, len(raw), base_i, raw))

    flat = q.ravel()
    bf = flat[:4096].astype(ml_dtypes.bfloat16).tobytes()
    add("bf16", bf, "BF16")
    add("bf16_smallest", bf, "BF16", 0)
    add("f32", flat[:2048].tobytes(), "F32")
    add("f16", flat[:3001].astype(np.float16).tobytes(), "F16")
    add("f8", cast_fp8(flat[:8192], ml_dtypes.float8_e4m3fn).tobytes(), "F8_E4M3")
    add("u8_repeats", (np.arange(6000) % 7).astype(np.uint8).tobytes(), "U8")
    add("raw_text", json.dumps(dict(enumerate(flat[:300].tolist()))).encode()[:5000], "RAW")
    add("f64_exhaustive", flat[:512].astype(np.float64).tobytes(), "F64")
    # MASKED: AdamW-like rows that never saw a gradient
    for dtype, np_t in (("BF16", ml_dtypes.bfloat16), ("F32", np.float32), ("F16", np.float16)):
        x = k.ravel()[:4096].copy()
        x[rng.random(4096) < 0.6] = 0
        add(f"masked_{dtype.lower()}", x.astype(np_t).tobytes(), dtype, want=CODEC_MASKED)
    x = k.ravel()[:2048].astype(np.float64)
    x[512:1900] = 0
    add("masked_f64", x.tobytes(), "F64", want=CODEC_MASKED)
    f8 = cast_fp8(k.ravel()[:4096], ml_dtypes.float8_e5m2)
    f8[rng.random(4096) < 0.8] = 0
    add("masked_f8", f8.tobytes(), "F8_E5M2", want=CODEC_MASKED)
    add("masked_all_zero", bytes(4096), "BF16", want=CODEC_MASKED)     # k = 0
    sparse = np.zeros(4096, np.float32)
    sparse[rng.integers(0, 4096, 9)] = k.ravel()[:9]
    add("masked_sparse", sparse.tobytes(), "F32", want=CODEC_MASKED)
    # BLOCKS
    Q = gguf.GGMLQuantizationType
    w = np.ascontiguousarray(q[:16, :256])
    for name, qt in (("GGUF_Q8_0", Q.Q8_0), ("GGUF_Q4_0", Q.Q4_0), ("GGUF_Q4_1", Q.Q4_1),
                     ("GGUF_Q5_0", Q.Q5_0), ("GGUF_Q5_1", Q.Q5_1), ("GGUF_MXFP4", Q.MXFP4)):
        add(name.lower(), gguf.quants.quantize(w, qt).tobytes(), name)
        add(name.lower(), gguf.quants.quantize(w[:6], qt).tobytes(), name, want=CODEC_BLOCKS)
    for name in ("GGUF_Q4_K", "GGUF_Q6_K", "GGUF_Q8_K", "GGUF_IQ4_XS", "GGUF_Q2_K",
                 "GGUF_Q3_K", "GGUF_Q5_K"):
        add(name.lower(), _kquant_like(q[:16, :256].ravel(), name).tobytes(), name,
            want=CODEC_BLOCKS)
    # DELTA: a fine-tune of a base file (the base is a whole safetensors-like byte string)
    bases: List[bytes] = []
    base_f = k.ravel()[:16384]
    for dtype, np_t in (("BF16", ml_dtypes.bfloat16), ("F32", np.float32), ("F16", np.float16)):
        base_file = rng.integers(0, 256, 100, dtype=np.uint8).tobytes() + \
            base_f.astype(np_t).tobytes()
        bases.append(base_file)
        bi = len(bases) - 1
        for step, scale in ((0, 1e-3), (1, 1e-5)):
            new = base_f + rng.normal(0, scale, base_f.size).astype(np.float32) * \
                (rng.random(base_f.size) < (0.3 if step else 1.0))
            item = np.dtype(np_t).itemsize
            start = 1000 * item
            raw = new.astype(np_t).tobytes()[start:start + 4096]
            off = 100 + start
            add(f"delta_{dtype.lower()}_{step}", raw, dtype,
                base=(off, memoryview(base_file)[off:off + len(raw)]), base_i=bi,
                want=CODEC_DELTA)
    # XOR delta of untyped bytes
    text = json.dumps(dict(enumerate(base_f[:400].tolist()))).encode()[:6000]
    bases.append(text)
    changed = bytearray(text)
    for i in range(0, len(changed), 97):
        changed[i] ^= 1
    add("delta_xor_raw", bytes(changed), "RAW", base=(0, memoryview(text)), base_i=len(bases) - 1,
        want=CODEC_DELTA)
    # a Q8_0 fine-tune (BLOCKS inside DELTA)
    qb = gguf.quants.quantize(w, Q.Q8_0).tobytes()
    qn = gguf.quants.quantize(w + rng.normal(0, 1e-4, w.shape).astype(np.float32), Q.Q8_0).tobytes()
    bases.append(qb)
    add("delta_q8_0", qn, "GGUF_Q8_0", base=(0, memoryview(qb)), base_i=len(bases) - 1,
        want=CODEC_DELTA)
    return seeds, bases


# -- codecs: structure and mutation -----------------------------------------------------------
def codec_fields(codec: int, payload: bytes, at: int = 0, depth: int = 0) -> List[Field]:
    """Every header field of a payload of this codec, and of the payloads nested in it
    (BLOCKS streams, DELTA's inner payload, MASKED's mask and values), with offsets in
    the outer payload."""
    out: List[Field] = []
    p = payload
    n = len(p)
    if depth > 4:
        return out
    try:
        if codec == CODEC_PLANES and n >= 2:
            w = p[0] if p[0] in (1, 2, 4, 8) else 1
            out += [(at, 1), (at + 1, 1)]
            out += [(at + 2 + 5 * j, 1) for j in range(w)] + [(at + 3 + 5 * j, 4) for j in range(w)]
        elif codec == CODEC_ZSTD and n >= 6:
            # magic, frame header descriptor, window/content-size bytes
            out += [(at, 4), (at + 4, 1), (at + 5, 1), (at + 5, 2), (at + 5, 4), (at + 5, 8),
                    (at + 6, 1), (at + 6, 4), (at + 6, 8)]
        elif codec == CODEC_BLOCKS and n >= 3:
            nf = p[2]
            out += [(at, 2), (at + 2, 1)]
            out += [(at + 3 + 2 * i, 2) for i in range(nf)]
            sub_at = 3 + 2 * nf
            out += [(at + sub_at + 5 * i, 1) for i in range(nf)]
            out += [(at + sub_at + 5 * i + 1, 4) for i in range(nf)]
            pos = sub_at + 5 * nf
            for i in range(nf):
                sub, size = struct.unpack_from("<BI", p, sub_at + 5 * i)
                out += codec_fields(sub, p[pos:pos + size], at + pos, depth + 1)
                pos += size
        elif codec == CODEC_DELTA and n >= 12:
            out += [(at, 1), (at + 1, 1), (at + 2, 1), (at + 3, 1), (at + 4, 8), (at + 4, 4)]
            out += codec_fields(p[2], p[12:], at + 12, depth + 1)
        elif codec == CODEC_MASKED and n >= 14:
            out += [(at, 1), (at + 1, 1), (at + 2, 2), (at + 4, 4), (at + 8, 1), (at + 9, 4),
                    (at + 13, 1)]
            m = struct.unpack_from("<I", p, 9)[0]
            out += codec_fields(p[8], p[14:14 + m], at + 14, depth + 1)
            out += codec_fields(p[13], p[14 + m:], at + 14 + m, depth + 1)
    except (struct.error, IndexError):
        pass
    return [(o, w) for o, w in out if o + w <= at + n]


def random_codec_ops(rnd: random.Random, max_ops: int = 3) -> List[Op]:
    ops = []
    for _ in range(rnd.randint(1, max_ops)):
        ops.append((rnd.choice(CODEC_OPS), rnd.getrandbits(32), rnd.getrandbits(32),
                    rnd.randbytes(rnd.choice((1, 1, 4, 8, 40)))))
    return ops


@dataclass
class CodecInput:
    codec: int
    payload: bytes
    length: int
    base: int

    def encode(self) -> bytes:
        """The input as one byte string (what atheris mutates and --findings saves)."""
        return struct.pack("<BIB", self.codec, self.length, self.base) + self.payload

    @classmethod
    def decode(cls, data: bytes, n_bases: int) -> "CodecInput":
        if len(data) < 6:
            data = data + bytes(6 - len(data))
        codec, length, base = struct.unpack_from("<BIB", data, 0)
        # L >= 1 (a container never holds an empty chunk); at most 64 KiB (reference speed)
        return cls(codec % 8, data[6:], 1 + (length - 1) % (64 << 10) if length else 1,
                   base % max(1, n_bases))


def mutate_codec(seed: CodecSeed, ops: Sequence[Op], n_bases: int) -> CodecInput:
    codec, length, base = seed.codec, seed.length, seed.base
    data = seed.payload
    fields = codec_fields(codec, data)
    byte_ops: List[Op] = []
    for op in ops:
        kind, a, b, blob = op
        if kind == "cfield":
            data = bytes(set_field(bytearray(data), fields, a, b))
            fields = codec_fields(codec, data)
        elif kind == "length":
            length = max(1, [length + 1, length - 1, length * 2, length // 2, 1, 8, 34,
                             length + 34, 4096, 65536, length + (b % 64) - 32][a % 11])
        elif kind == "codec":
            codec = [CODEC_RAW, CODEC_PLANES, CODEC_ZSTD, CODEC_BLOCKS, CODEC_DELTA,
                     CODEC_MASKED, 6, 255][a % 8]
        elif kind == "base":
            base = (base + 1 + a) % max(1, n_bases)
        else:
            byte_ops.append(op)
    if byte_ops:
        data, _ = apply_ops(data, byte_ops, [])
    return CodecInput(codec, data[:MAX_INPUT], length, base)


def base_reader_for(base: bytes) -> Callable[[int, int], np.ndarray]:
    """A base reader as PackedFile.read_cached behaves: read-only bytes, CorruptContainer
    for a range outside the base."""
    arr = np.frombuffer(base, dtype=np.uint8)

    def read(offset: int, size: int) -> np.ndarray:
        if offset < 0 or offset + size > arr.size:
            raise CorruptContainer("a delta reads past the end of its base")
        return arr[offset:offset + size]
    return read


def check_codec(codec: int, payload: bytes, length: int, base: bytes = b"",
                trace: bool = True) -> str:
    """The fast decoder against the reference: same bytes, or both reject; the fast one
    raises only FpfsError and stays within the bounds. Returns "ok" or "rejected"."""
    out = bytearray(length)
    try:
        _, b = _bounded(lambda: decode_chunk(codec, payload, memoryview(out),
                                             base_reader_for(base)), trace)
        fast: Optional[bytes] = bytes(out)
    except FpfsError:
        fast, b = None, None
    except Exception as exc:                # noqa: BLE001 - that is the finding
        raise Violation(f"decode_chunk({codec}) raised {type(exc).__name__}: "
                        f"{str(exc)[:300]}") from exc
    if b is not None:
        _check_bounds(f"decode_chunk({codec})", len(payload), b)
    try:
        ref: Optional[bytes] = _reference.decode_chunk(codec, bytes(payload), length, base)
    except _reference.ReferenceError:
        ref = None
    except Exception as exc:                # noqa: BLE001
        raise Violation(f"reference decode_chunk({codec}) raised {type(exc).__name__}: "
                        f"{str(exc)[:300]}") from exc
    if fast != ref:
        what = "rejects" if fast is None else "accepts" if ref is None else "differs from"
        raise Violation(f"codec {codec}: fast decoder {what} what the reference "
                        f"{'decodes' if ref is not None else 'rejects'} "
                        f"(payload {len(payload)} B, length {length})")
    return "ok" if fast is not None else "rejected"


# -- campaign ------------------------------------------------------------------------------
TARGETS = ("formats", "codecs")


class Campaign(Driven):
    """Inputs are (target, bytes): "formats" a whole file, "codecs" CodecInput.encode()."""
    max_len = MAX_INPUT

    def __init__(self, workdir: str, findings: str, targets: Sequence[str]):
        super().__init__(workdir, findings)
        self.targets = list(targets)
        self.marker = os.path.join(workdir, MARKER_NAME)
        check_marker_payload_is_live(self.marker)
        self.format_seeds = make_format_seeds(workdir, self.marker) if "formats" in targets else []
        self.format_bytes = [s.data for s in self.format_seeds]
        self.codec_seeds, self.bases = codec_seeds() if "codecs" in targets else ([], [])
        self._check_seeds()

    def _check_seeds(self) -> None:
        for s in self.format_seeds:
            fmt = check_format(s.data, self.marker)
            self.counts[f"seed.format.{fmt}"] += 1
        for s in self.codec_seeds:
            out = bytearray(s.length)
            decode_chunk(s.codec, s.payload, memoryview(out), base_reader_for(
                self.bases[s.base] if self.bases else b""))
            assert bytes(out) == s.original, s.name
            assert check_codec(s.codec, s.payload, s.length,
                               self.bases[s.base] if self.bases else b"") == "ok", s.name
            self.counts[f"seed.codec.{s.codec}"] += 1
        if "codecs" not in self.targets:
            # On for the whole run (see _bounded). Not with codecs: tracing the pure-Python
            # reference decoder too makes that target 10x slower (172 vs ~1,900 inputs/s).
            tracemalloc.start()

    def describe(self) -> str:
        return (f"targets {','.join(self.targets)}, {len(self.format_seeds)} file seeds, "
                f"{len(self.codec_seeds)} payload seeds, {len(self.bases)} base files")

    def test(self, item: Tuple[str, bytes], rnd: random.Random) -> None:
        target, data = item
        self.one(target, data, lambda: self._check(target, data))

    def _check(self, target: str, data: bytes) -> None:
        rss0 = rss()
        if target == "formats":
            fmt = check_format(data, self.marker)
            self.counts[f"formats.{fmt}"] += 1
        else:
            inp = CodecInput.decode(data, len(self.bases))
            base = self.bases[inp.base] if self.bases else b""
            r = check_codec(inp.codec, inp.payload, inp.length, base)
            self.counts[f"codecs.{inp.codec}.{r}"] += 1
        grown = rss() - rss0
        if grown > MEMORY_BOUND:            # the peak RSS jumped on this one input
            raise Violation(f"peak RSS grew by {grown >> 20} MiB on this input")

    def mutate(self, rnd: random.Random, target: Optional[str] = None) -> Tuple[str, bytes]:
        target = target or rnd.choice(self.targets)
        if target == "formats":
            seed = rnd.choice(self.format_seeds)
            return target, mutate_format(seed, random_format_ops(rnd), self.format_bytes,
                                         self.marker)
        seed = rnd.choice(self.codec_seeds)
        return target, mutate_codec(seed, random_codec_ops(rnd), len(self.bases)).encode()

    # libFuzzer's inputs: with both targets a first byte selects one
    def _head(self, target: str) -> bytes:
        return bytes([self.targets.index(target)]) if len(self.targets) > 1 else b""

    def encode(self, item: Tuple[str, bytes]) -> bytes:
        target, data = item
        return self._head(target) + data

    def decode(self, data: bytes) -> Optional[Tuple[str, bytes]]:
        if len(data) > MAX_INPUT:
            return None
        if len(self.targets) > 1:
            return self.targets[data[0] % 2] if data else self.targets[0], data[1:]
        return self.targets[0], data

    def corpus(self) -> Iterator[Tuple[str, bytes]]:
        for t in self.targets:
            items = [s.data for s in self.format_seeds] if t == "formats" else \
                [CodecInput(s.codec, s.payload, s.length, s.base).encode()
                 for s in self.codec_seeds]
            for i, item in enumerate(items):
                yield f"{t}{i}", self.encode((t, item))


def check_marker_payload_is_live(marker: str) -> None:
    """The hostile pickle fragments really create the marker under pickle.loads (so its
    absence after recognise() means something)."""
    for call in _hostile_calls(marker):
        if os.path.exists(marker):
            os.unlink(marker)
        try:
            pickle.loads(b"\x80\x02" + call + b".")
        except Exception:       # noqa: BLE001 - e.g. BUILD on os.system's int result
            pass
        if not os.path.exists(marker):
            raise RuntimeError(f"hostile pickle fragment {call[:30]!r} is not live")
        os.unlink(marker)


def main(argv: Optional[List[str]] = None) -> int:
    def add_target(ap) -> None:
        ap.add_argument("--target", choices=("formats", "codecs", "all"), default="all")

    def make(workdir: str, findings: str, args) -> Campaign:
        return Campaign(workdir, findings, list(TARGETS) if args.target == "all"
                        else [args.target])
    return drive(argv, __doc__.split("\n\n")[0], make, add_target, prefix="fpfs-fuzzf-")


if __name__ == "__main__":
    sys.exit(main())
