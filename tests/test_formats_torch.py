"""The torch.save zip format layer (fpfs.formats.torch_zip), its inert pickle parser and the
shared zip reader: real torch.save files of the real MiniLM weights, views, every dtype
torch writes, a real AdamW checkpoint, hostile pickles, lying zip directories and fuzzing."""
from __future__ import annotations

import io
import mmap
import os
import pickle
import struct
import tracemalloc
import warnings
import zipfile
from typing import Dict

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st
from safetensors.torch import load_file

from fpfs.formats import FormatError, Layout, detect, recognise
from fpfs.formats import inert_pickle, npz, torch_zip, zip_entries
from tests.format_checks import (FUZZ_SETTINGS, MEMORY_BOUND, OPS, assert_tiles, mutate,
                                 recognise_oracle)
from tests.weights import MODEL_FILE

QUERY = "encoder.layer.0.attention.self.query.weight"


@pytest.fixture(scope="module")
def real_sd() -> Dict[str, torch.Tensor]:
    return load_file(MODEL_FILE)


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The bytes torch.save writes for a tensor that owns its whole storage (works for dtypes
    numpy lacks: bf16, float8, float4)."""
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def save(obj, path) -> str:
    torch.save(obj, path)
    return str(path)


def file_layout(path: str) -> Layout:
    found = detect(path)
    assert_tiles(found, os.path.getsize(path))
    return found


def by_name(found: Layout):
    regions = found.tensors()
    names = [r.tensor for r in regions]
    assert len(names) == len(set(names)), "tensor names must be unique"
    return {r.tensor: r for r in regions}


def assert_bytes(path: str, region, expected: bytes) -> None:
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        assert region.length == len(expected)
        assert m[region.offset:region.offset + region.length] == expected, region.tensor


# -- real files ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,name", [(torch.float32, "F32"), (torch.bfloat16, "BF16"),
                                        (torch.float16, "F16")])
def test_real_state_dict(real_sd, tmp_path, dtype, name):
    """torch.save of the real MiniLM state dict: one span per tensor, named by its state-dict
    key (the safetensors name), with the right dtype, shape and exactly the tensor's bytes."""
    sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in real_sd.items()}
    path = save(sd, tmp_path / f"minilm-{name}.pt")
    found = file_layout(path)
    assert found.format == "torch" and found.prefix_length == 0
    regions = by_name(found)
    assert set(regions) == set(sd)
    for key, t in sd.items():
        r = regions[key]
        assert r.dtype == (name if t.is_floating_point() else "I64"), key
        assert r.shape == tuple(t.shape), key
        assert_bytes(path, r, tensor_bytes(t))
    if name == "F32":   # the same names, dtypes and shapes as the safetensors original
        st_regions = by_name(detect(MODEL_FILE))
        assert {k: (r.dtype, r.shape) for k, r in st_regions.items()} == \
            {k: (r.dtype, r.shape) for k, r in regions.items()}


def test_views_share_one_storage(real_sd, tmp_path):
    """Views of one storage are one span, named by the first tensor in the pickle and shaped
    (numel,) because no single tensor covers it; a tensor saved twice is one tensor."""
    base = real_sd[QUERY][:16].clone()          # 16 x 384, its own storage
    tied = real_sd["embeddings.LayerNorm.weight"].clone()
    sd = {"rows": base[:4], "all": base, "cols": base.t(), "tied_a": tied, "tied_b": tied,
          "other": real_sd["embeddings.LayerNorm.bias"].clone()}
    path = save(sd, tmp_path / "views.pt")
    regions = by_name(file_layout(path))
    assert set(regions) == {"rows", "tied_a", "other"}
    assert regions["rows"].shape == (base.numel(),) and regions["rows"].dtype == "F32"
    assert_bytes(path, regions["rows"], tensor_bytes(base))
    assert regions["tied_a"].shape == (384,)
    assert_bytes(path, regions["tied_a"], tensor_bytes(tied))
    assert_bytes(path, regions["other"], tensor_bytes(sd["other"]))


def _dtype_cases(w: torch.Tensor):
    """(torch tensor from real weights, expected dtype name or None for RAW)."""
    ints = (w * 1000).round()
    return {
        "float32": (w, "F32"), "float64": (w.double(), "F64"), "float16": (w.half(), "F16"),
        "bfloat16": (w.bfloat16(), "BF16"), "int64": (ints.long(), "I64"),
        "int32": (ints.int(), "I32"), "int16": (ints.short(), "I16"),
        "int8": (ints.clamp(-128, 127).to(torch.int8), "I8"),
        "uint8": (ints.abs().clamp(max=255).to(torch.uint8), "U8"),
        "bool": (w > 0, "BOOL"), "complex64": (torch.complex(w, -w), "C64"),
        "uint16": (ints.abs().to(torch.uint16), "U16"),
        "uint32": (ints.abs().to(torch.uint32), "U32"),
        "uint64": (ints.abs().to(torch.uint64), "U64"),
        "float8_e4m3fn": (w.to(torch.float8_e4m3fn), "F8_E4M3"),
        "float8_e5m2": (w.to(torch.float8_e5m2), "F8_E5M2"),
        "float8_e4m3fnuz": (w.to(torch.float8_e4m3fnuz), "F8_E4M3FNUZ"),
        "float8_e5m2fnuz": (w.to(torch.float8_e5m2fnuz), "F8_E5M2FNUZ"),
        "float8_e8m0fnu": (w.abs().to(torch.float8_e8m0fnu), "F8_E8M0"),
        "float4_e2m1fn_x2": (ints.clamp(-128, 127).to(torch.int8).view(torch.uint8)
                             .view(torch.float4_e2m1fn_x2), "F4"),
        "complex128": (torch.complex(w.double(), w.double()), None),  # no C128: RAW
    }


def test_every_dtype(real_sd, tmp_path):
    """Typed storages (FloatStorage ...) and the untyped storages torch 2.13 writes through
    _rebuild_tensor_v3 for float8/uint16+/float4: each maps to its dtype name."""
    cases = _dtype_cases(real_sd[QUERY][:8, :48].clone())
    path = save({k: t for k, (t, _) in cases.items()}, tmp_path / "dtypes.pt")
    found = file_layout(path)
    regions = by_name(found)
    for key, (t, want) in cases.items():
        if want is None:
            assert key not in regions
            continue
        r = regions[key]
        assert (r.dtype, r.shape) == (want, tuple(t.shape)), key
        assert_bytes(path, r, tensor_bytes(t))
    # The RAW storage's bytes are still in the file, in RAW regions.
    assert sum(r.length for r in found.regions) == os.path.getsize(path)


def test_adamw_training_checkpoint(real_sd, tmp_path):
    """A real AdamW state after two real steps of a tiny loss on the real model, saved as
    {"model", "optimizer", "step"}: names are key paths through the checkpoint."""
    params = {k: torch.nn.Parameter(v.clone()) for k, v in real_sd.items()
              if v.is_floating_point()}
    order = list(params)
    ids = torch.tensor([[101, 7592, 2088, 102]])

    def loss():
        x = F.embedding(ids, params["embeddings.word_embeddings.weight"]) \
            + params["embeddings.position_embeddings.weight"][:4] \
            + params["embeddings.token_type_embeddings.weight"][0]
        x = F.layer_norm(x, (384,), params["embeddings.LayerNorm.weight"],
                         params["embeddings.LayerNorm.bias"])
        q = F.linear(x, params[QUERY], params["encoder.layer.0.attention.self.query.bias"])
        return q.pow(2).mean()

    opt = torch.optim.AdamW([params[k] for k in order], lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        loss().backward()
        opt.step()
    model = {k: p.detach() for k, p in params.items()}
    model["embeddings.position_ids"] = real_sd["embeddings.position_ids"]
    path = save({"model": model, "optimizer": opt.state_dict(), "step": 2},
                tmp_path / "checkpoint.pt")
    regions = by_name(file_layout(path))

    for k, t in model.items():
        assert_bytes(path, regions[f"model.{k}"], tensor_bytes(t))
    stepped = [i for i, k in enumerate(order) if params[k] in opt.state]
    assert len(stepped) == 7
    for i in stepped:
        state = opt.state[params[order[i]]]
        for field in ("exp_avg", "exp_avg_sq", "step"):
            r = regions[f"optimizer.state.{i}.{field}"]
            assert r.dtype == "F32" and r.shape == tuple(state[field].shape)
            assert_bytes(path, r, tensor_bytes(state[field]))
    assert regions["optimizer.state.0.step"].shape == ()
    assert len(regions) == len(model) + 3 * len(stepped)


def test_sniff_is_by_content(real_sd, tmp_path):
    path = save({"w": real_sd[QUERY][:2].clone()}, tmp_path / "no_suffix")
    head = open(path, "rb").read(4096)
    size = os.path.getsize(path)
    assert torch_zip.sniff(head, size) and not npz.sniff(head, size)
    assert detect(path).format == "torch"
    # torch names the archive after the file's stem: any single-directory prefix works.
    assert zipfile.ZipFile(path).namelist()[0] == "no_suffix/data.pkl"
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buf)
    assert torch_zip.sniff(buf.getvalue()[:4096], len(buf.getvalue()))
    assert not torch_zip.sniff(b"PK\x03\x04" + b"\0" * 60, 64)


# -- inert pickle parsing -----------------------------------------------------------------

def _plain(node):
    """An inert parse result as ordinary Python values (for comparing with pickle.loads)."""
    if isinstance(node, inert_pickle.PDict):
        return {_plain(k): _plain(v) for k, v in node.items}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    if isinstance(node, tuple):
        return tuple(_plain(v) for v in node)
    return node


LEAVES = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8),
                   st.binary(max_size=8), st.floats(allow_nan=False))
TREES = st.recursive(LEAVES, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.tuples(kids, kids),
    st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), kids, max_size=4)),
    max_leaves=30)


def _has_bytes(tree) -> bool:
    if isinstance(tree, bytes):
        return True
    if isinstance(tree, dict):
        return any(_has_bytes(v) for v in tree.values())
    return isinstance(tree, (list, tuple)) and any(_has_bytes(v) for v in tree)


@FUZZ_SETTINGS
@given(TREES, st.integers(0, pickle.HIGHEST_PROTOCOL))
def test_inert_parse_matches_pickle(tree, protocol):
    """On data-only pickles the stack machine builds what pickle.loads would, at every
    protocol (MARK/memo/frame handling, all the scalar and container opcodes)."""
    assume(protocol >= 3 or not _has_bytes(tree))   # protocols 0-2 pickle bytes by a call
    assert _plain(inert_pickle.parse(pickle.dumps(tree, protocol=protocol))) == tree


def _s(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


# A tensor as torch.save pickles it: _rebuild_tensor_v2(storage '0', 0, (4,), (1,), ...).
TENSOR_OPS = (b"ctorch._utils\n_rebuild_tensor_v2\n((" + _s("storage")
              + b"ctorch\nFloatStorage\n" + _s("0") + _s("cpu") + b"K\x04tQK\x00K\x04\x85"
              + b"K\x01\x85\x89ccollections\nOrderedDict\n)RtR")


def _hostile_calls(cmd: str):
    """Ways a pickle can call a named global with cmd: GLOBAL+REDUCE, STACK_GLOBAL, INST,
    OBJ, and builtins.exec of Python source."""
    run = f"import os; os.system({cmd!r})"
    return {
        "os.system": b"cos\nsystem\n" + _s(cmd) + b"\x85R",
        "posix.system": b"cposix\nsystem\n" + _s(cmd) + b"\x85R",
        "builtins.exec": b"cbuiltins\nexec\n" + _s(run) + b"\x85R",
        "stack_global": _s("os") + _s("system") + b"\x93" + _s(cmd) + b"\x85R",
        "inst": b"(" + _s(cmd) + b"ios\nsystem\n",
        "obj": b"(cos\nsystem\n" + _s(cmd) + b"o",
        "build": b"cos\nsystem\n" + _s(cmd) + b"\x85R}b",
    }


def _torch_like_zip(pkl: bytes, storages: Dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl)
        for key, data in storages.items():
            z.writestr(f"archive/data/{key}", data)
    return buf.getvalue()


def _hostile_pickle(call: bytes) -> bytes:
    return b"\x80\x02}(" + _s("evil") + call + _s("w") + TENSOR_OPS + b"u."


@pytest.mark.parametrize("kind", sorted(_hostile_calls("x")))
def test_hostile_pickle_is_never_executed(tmp_path, kind):
    """A data.pkl that calls os.system/posix.system/exec is parsed as inert structure: the
    command never runs, and the real tensor next to it is still found."""
    target = tmp_path / "pwned"
    pkl = _hostile_pickle(_hostile_calls(f"touch {target}")[kind])
    path = tmp_path / "hostile.pt"
    path.write_bytes(_torch_like_zip(pkl, {"0": struct.pack("<4f", 1, 2, 3, 4)}))
    with open(path, "rb") as f:
        found = torch_zip.layout(f, os.path.getsize(path))
    assert not target.exists()
    assert [(r.tensor, r.dtype, r.shape) for r in found.tensors()] == [("w", "F32", (4,))]
    assert detect(str(path)).format == "torch"
    assert not target.exists()


def test_hostile_payload_is_live(tmp_path):
    """The test's payload really does run under pickle.loads (so the test above means
    something): the command runs before the unpickler reaches the persistent id."""
    target = tmp_path / "proof"
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(_hostile_pickle(_hostile_calls(f"touch {target}")["os.system"]))
    assert target.exists()


def test_unsupported_opcode_and_missing_storage(tmp_path):
    """An extension opcode fails the whole file (stored as bytes); a storage the zip lacks
    or whose entry has the wrong length is left RAW."""
    ext = _torch_like_zip(b"\x80\x02\x82\x01.", {})
    layout, why = recognise(io.BytesIO(ext), len(ext))
    assert layout.format == "bytes" and "EXT1" in why
    short = _torch_like_zip(b"\x80\x02}(" + _s("w") + TENSOR_OPS + b"u.", {"0": b"\0" * 12})
    layout, why = recognise(io.BytesIO(short), len(short))
    assert layout.format == "torch" and layout.tensors() == []
    missing = _torch_like_zip(b"\x80\x02}(" + _s("w") + TENSOR_OPS + b"u.", {})
    assert recognise(io.BytesIO(missing), len(missing))[0].tensors() == []


def test_cyclic_and_deep_pickles_terminate():
    """Memo cycles (a list containing itself) and deep nesting neither loop nor recurse."""
    cyc = [1]
    cyc.append(cyc)
    pkl = _torch_like_zip(pickle.dumps({"a": cyc, "w": [[[[[]]]]]}, protocol=2), {})
    assert recognise(io.BytesIO(pkl), len(pkl))[0].format == "torch"
    deep = b"\x80\x02" + b"]" * 100000 + b"a" * 99999 + b"."
    pkl = _torch_like_zip(deep, {})
    assert recognise(io.BytesIO(pkl), len(pkl))[0].format == "torch"


def test_bad_string_escapes_raise_no_warning():
    """A protocol-0 STRING with an escape Python does not know: genops' DeprecationWarning
    must not reach the user (the CI log showed one from the fuzz test)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert inert_pickle.parse(b"S'\\q'\n.") == "\\q"
    assert not caught


# -- lying zip directories ----------------------------------------------------------------

@pytest.fixture(scope="module")
def small_torch(real_sd) -> bytes:
    """A small real torch.save file: a few real tensors in several dtypes."""
    buf = io.BytesIO()
    torch.save({"embeddings.LayerNorm.weight": real_sd["embeddings.LayerNorm.weight"],
                "q": real_sd[QUERY][:4, :32].bfloat16(),
                "position_ids": real_sd["embeddings.position_ids"][:, :16],
                "f8": real_sd[QUERY][4:8, :32].to(torch.float8_e4m3fn)}, buf)
    return buf.getvalue()


def _central(data: bytes):
    """(offset in data, ZipInfo) of each central directory record."""
    zf = zipfile.ZipFile(io.BytesIO(data))
    pos, out = zf.start_dir, []
    for info in zf.infolist():
        assert data[pos:pos + 4] == b"PK\x01\x02"
        out.append((pos, info))
        n, m, k = struct.unpack_from("<HHH", data, pos + 28)
        pos += 46 + n + m + k
    return out


def _patch(data: bytes, pos: int, fmt: str, value: int) -> bytes:
    buf = bytearray(data)
    struct.pack_into(fmt, buf, pos, value)
    return bytes(buf)


def _patch64(data: bytes, field: int, value: int) -> bytes:
    """Patch a field of the ZIP64 end record if there is one (torch.save always writes one,
    and zipfile then believes it over the 32-bit end record)."""
    at = data.rfind(b"PK\x06\x06")
    return data if at < 0 else _patch(data, at + field, "<Q", value)


def _corruptions(data: bytes):
    cd = _central(data)
    (p0, i0), (p1, i1) = cd[0], cd[-3]
    eocd = data.rindex(b"PK\x05\x06")
    local_name = i1.header_offset + 30
    renamed = bytearray(data)
    renamed[local_name + len(i1.filename) - 1] ^= 0x01
    return {
        "offset past end": _patch(data, p1 + 42, "<I", len(data) + 100),
        "overlap": _patch(_patch(data, p0 + 20, "<I", i0.compress_size + 200),
                          p0 + 24, "<I", i0.file_size + 200),
        "name mismatch": bytes(renamed),
        "no local header": _patch(data, i1.header_offset, "<I", 0x12345678),
        "method mismatch": _patch(data, i1.header_offset + 8, "<H", 8),
        "size past end": _patch(_patch(data, p1 + 20, "<I", 0x7FFFFFFF),
                                p1 + 24, "<I", 0x7FFFFFFF),
        "huge central dir": _patch(_patch64(data, 40, 2 ** 62), eocd + 12, "<I", 0xFFFFFFF0),
        "central dir past end": _patch(_patch64(data, 48, 2 ** 40), eocd + 16, "<I",
                                       0xFFFFFF00),
        "truncated": data[:len(data) // 2],
        "no end record": data[:eocd],
    }


@pytest.mark.parametrize("case", ["offset past end", "overlap", "name mismatch",
                                  "no local header", "method mismatch", "size past end",
                                  "huge central dir", "central dir past end", "truncated",
                                  "no end record"])
def test_corrupt_central_directory(small_torch, case):
    """A central directory that lies is a one-line FormatError (no other exception, no big
    allocation); recognise() then stores the file as plain bytes and says why."""
    data = _corruptions(small_torch)[case]
    tracemalloc.start()
    try:
        with pytest.raises(FormatError) as exc:
            zip_entries.read_entries(io.BytesIO(data), len(data))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "\n" not in str(exc.value) and peak < MEMORY_BOUND
    layout, why = recognise(io.BytesIO(data), len(data))
    assert layout.format == "bytes" and len(layout.regions) == 1
    assert why.startswith("looks like torch but")


def test_zip_entries_real_offsets(small_torch):
    """Entry data offsets come from the local headers (torch pads their extra fields to
    align storages to 64 bytes): each entry's bytes are exactly what zipfile extracts."""
    entries = zip_entries.read_entries(io.BytesIO(small_torch), len(small_torch))
    zf = zipfile.ZipFile(io.BytesIO(small_torch))
    assert [e.name for e in entries] == zf.namelist()
    for e in entries:
        assert small_torch[e.data_offset:e.data_end] == zf.read(e.name)
        if "/data/" in e.name:
            assert e.data_offset % 64 == 0


# -- fuzzing -------------------------------------------------------------------------------

@FUZZ_SETTINGS
@given(ops=OPS)
def test_fuzz_torch_file(small_torch, ops):
    """Byte flips, interesting integers, truncations, insertions and deletions of a real
    torch.save file: recognise() returns a tiling layout or plain bytes, nothing else."""
    recognise_oracle(mutate(small_torch, ops))


@FUZZ_SETTINGS
@given(ops=OPS)
def test_fuzz_torch_pickle(small_torch, ops):
    """Mutations of data.pkl alone, re-zipped with valid CRCs and offsets, so they reach the
    pickle parser: torch_zip.layout gives a tiling layout or FormatError, nothing else."""
    zf = zipfile.ZipFile(io.BytesIO(small_torch))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as out:
        for name in zf.namelist():
            data = zf.read(name)
            out.writestr(name, mutate(data, ops) if name.endswith("data.pkl") else data)
    data = buf.getvalue()
    try:
        found = torch_zip.layout(io.BytesIO(data), len(data))
    except FormatError as exc:
        assert "\n" not in str(exc)
        return
    assert_tiles(found, len(data))
    recognise_oracle(data)
