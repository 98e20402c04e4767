"""The NumPy format layers (fpfs.formats.npy, fpfs.formats.npz): np.save / np.savez of the
real MiniLM weights in every dtype numpy writes, header versions, dtypes that must stay
RAW, hostile headers, lying members and fuzzing."""
from __future__ import annotations

import io
import os
import warnings

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given

from fpfs.formats import FormatError, detect, recognise
from fpfs.formats import npy, npz, torch_zip
from tests.format_checks import FUZZ_SETTINGS, OPS, assert_tiles, mutate, recognise_oracle
from tests.weights import MODEL_FILE, load_real

QUERY = "encoder.layer.0.attention.self.query.weight"


@pytest.fixture(scope="module")
def real():
    return load_real()


@pytest.fixture(scope="module")
def w(real) -> np.ndarray:
    return real[QUERY][:8, :48].copy()


def saved(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, **kw)
    return buf.getvalue()


def layout_of(data: bytes):
    found, why = recognise(io.BytesIO(data), len(data))
    assert_tiles(found, len(data))
    return found, why


def dtype_cases(w: np.ndarray):
    ints = np.round(w * 1000)
    return {
        "F32": w, "F16": w.astype(np.float16), "F64": w.astype(np.float64),
        "I8": np.clip(ints, -128, 127).astype(np.int8),
        "U8": np.clip(np.abs(ints), 0, 255).astype(np.uint8),
        "I16": ints.astype(np.int16), "U16": np.abs(ints).astype(np.uint16),
        "I32": ints.astype(np.int32), "U32": np.abs(ints).astype(np.uint32),
        "I64": ints.astype(np.int64), "U64": np.abs(ints).astype(np.uint64),
        "BOOL": w > 0, "C64": (w + 1j * w).astype(np.complex64),
        "BF16": w.astype(ml_dtypes.bfloat16),       # np.save writes descr '<V2'
    }


@pytest.mark.parametrize("want", ["F32", "F16", "F64", "I8", "U8", "I16", "U16", "I32",
                                  "U32", "I64", "U64", "BOOL", "C64", "BF16"])
def test_npy_dtypes(w, want):
    """np.save of real weights in each dtype: the header is the verbatim prefix and the
    array bytes are one span with the dtype and shape."""
    arr = dtype_cases(w)[want]
    data = saved(arr)
    found, _ = layout_of(data)
    assert found.format == "npy"
    assert found.prefix_length == len(data) - arr.nbytes
    [region] = found.regions
    assert (region.dtype, region.shape, region.tensor) == (want, arr.shape, "")
    assert data[region.offset:region.offset + region.length] == arr.tobytes()


@pytest.mark.parametrize("arr", [
    np.arange(6, dtype=">f4"), np.arange(6, dtype=">i2"), np.arange(3, dtype=np.complex128),
    np.array(["ab", "cde"]), np.array([b"ab", b"c"]),
    np.zeros(3, dtype=[("a", "<f4"), ("b", "<i2")]), np.arange(3).astype("datetime64[s]"),
    np.zeros(4, dtype=ml_dtypes.float8_e4m3fn),         # '<V1': which FP8 is unknowable
], ids=["f4-big", "i2-big", "c16", "unicode", "bytes", "structured", "datetime", "fp8"])
def test_npy_raw_dtypes(arr):
    """Big-endian, structured, string, datetime, complex128 and ambiguous one-byte void
    arrays keep the header as prefix and their data RAW."""
    data = saved(arr)
    found, _ = layout_of(data)
    assert found.format == "npy" and found.tensors() == []
    assert found.prefix_length == len(data) - arr.nbytes


def test_npy_object_array_is_raw():
    """An object array's data is a pickle: RAW bytes, never unpickled."""
    data = saved(np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    found, _ = layout_of(data)
    assert found.format == "npy" and found.tensors() == []


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_npy_header_versions(real, version):
    """v1 (2-byte length), v2 (4-byte length) and v3 (UTF-8 header) all parse."""
    arr = real["embeddings.LayerNorm.weight"]
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, version=version)
    data = buf.getvalue()
    assert data[6:8] == bytes(version)
    found, _ = layout_of(data)
    assert found.prefix_length == len(data) - arr.nbytes
    [region] = found.tensors()
    assert region.dtype == "F32" and data[region.offset:] == arr.tobytes()


def test_npy_fortran_empty_and_scalar(w):
    fortran = np.asfortranarray(w)
    data = saved(fortran)
    [region] = layout_of(data)[0].tensors()
    assert region.shape == w.shape and data[region.offset:] == w.tobytes(order="F")
    scalar = saved(np.float32(1.5))
    [region] = layout_of(scalar)[0].tensors()
    assert region.shape == () and region.length == 4
    empty = saved(np.zeros((0, 3), np.float32))
    found, _ = layout_of(empty)
    assert found.format == "npy" and found.regions == [] and found.prefix_length == len(empty)


def test_npy_real_tensor_file(real, tmp_path):
    """A real weight matrix written to disk with np.save and detected by content."""
    arr = real["embeddings.word_embeddings.weight"]
    path = tmp_path / "blob"
    np.save(path, arr)
    path = str(path) + ".npy"
    found = detect(path)
    assert_tiles(found, os.path.getsize(path))
    [region] = found.tensors()
    assert (region.dtype, region.shape, region.length) == ("F32", arr.shape, arr.nbytes)
    with open(path, "rb") as f:
        f.seek(region.offset)
        assert f.read() == arr.tobytes()


def _npy_with_header(text: str, data: bytes = b"", version: int = 1) -> bytes:
    raw = text.encode("latin-1")
    length = len(raw).to_bytes(2 if version == 1 else 4, "little")
    return b"\x93NUMPY" + bytes([version, 0]) + length + raw + data


def test_npy_hostile_headers(tmp_path):
    """Headers that are code, not literals, or whose lengths lie: FormatError (the file is
    then plain bytes), and nothing runs."""
    target = tmp_path / "pwned"
    code = f"__import__('os').system('touch {target}')"
    bad = {
        "code": "{'descr': %s, 'fortran_order': False, 'shape': (2,), }" % code,
        "call": "{'descr': '<f4', 'fortran_order': False, 'shape': (len('ab'),), }",
        "not a dict": "['descr', '<f4']",
        "extra key": "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}",
        "bad shape": "{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }",
        "bool shape": "{'descr': '<f4', 'fortran_order': False, 'shape': (True,), }",
        "bad order": "{'descr': '<f4', 'fortran_order': 0, 'shape': (2,), }",
        "nested": "(" * 5000 + ")" * 5000,
        "null": "{'descr': '<f4',\0 'fortran_order': False, 'shape': (2,)}",
    }
    for why, text in bad.items():
        with pytest.raises(FormatError):
            npy.parse_header(_npy_with_header(text, b"\0" * 8), 10 ** 6)
        data = _npy_with_header(text, b"\0" * 8)
        found, reason = layout_of(data)
        assert found.format == "bytes" and reason.startswith("looks like npy"), why
    assert not target.exists()
    # an escape Python does not know: the parser's SyntaxWarning (3.12+) or
    # DeprecationWarning must not reach the user; the header is simply not valid
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        text = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), '\\m': 1}"
        assert layout_of(_npy_with_header(text, b"\0" * 8))[0].format == "bytes"
    assert not caught
    lying = [b"\x93NUMPY\x01\x00\xff\xff{}", b"\x93NUMPY\x02\x00\xff\xff\xff\xff{}",
             b"\x93NUMPY\x04\x00\x10\x00" + b" " * 16, b"\x93NUMPY\x02\x00\x01"]
    for data in lying:
        assert layout_of(data)[0].format == "bytes"


def test_npy_truncated_data_is_raw(w):
    """Array data shorter than the header says: no span, the bytes stay RAW; data longer
    than it: the span covers the array and the tail is RAW."""
    data = saved(w)
    short, _ = layout_of(data[:-4])
    assert short.format == "npy" and short.tensors() == []
    long, _ = layout_of(data + b"tail")
    assert long.tensors()[0].length == w.nbytes and long.regions[-1].length == 4


# -- npz ----------------------------------------------------------------------------------

def test_npz_real_weights(real, tmp_path):
    """np.savez of all the real weights: one span per array, named by its key (as in the
    safetensors file), with exactly the array's bytes."""
    path = str(tmp_path / "minilm.npz")
    np.savez(path, **real)
    found = detect(path)
    assert found.format == "npz" and found.prefix_length == 0
    assert_tiles(found, os.path.getsize(path))
    regions = {r.tensor: r for r in found.tensors()}
    assert set(regions) == set(real)
    st_regions = {r.tensor: r for r in detect(MODEL_FILE).tensors()}
    with open(path, "rb") as f:
        for key, arr in real.items():
            r = regions[key]
            assert (r.dtype, r.shape) == (st_regions[key].dtype, st_regions[key].shape)
            f.seek(r.offset)
            assert f.read(r.length) == arr.tobytes(), key


def test_npz_every_dtype_and_odd_names(w):
    cases = dtype_cases(w)
    names = {f"layer/{k}.weight": v for k, v in cases.items()}
    buf = io.BytesIO()
    np.savez(buf, **names, big=np.arange(3, dtype=">f4"))
    data = buf.getvalue()
    found, _ = layout_of(data)
    regions = {r.tensor: r for r in found.tensors()}
    assert set(regions) == set(names)
    for key, arr in names.items():
        r = regions[key]
        assert (r.dtype, r.shape) == (key.split("/")[1].split(".")[0], arr.shape)
        assert data[r.offset:r.offset + r.length] == arr.tobytes()


def test_npz_compressed_is_raw(w):
    """np.savez_compressed deflates its members: recognised, but no spans."""
    buf = io.BytesIO()
    np.savez_compressed(buf, a=w, b=w.astype(np.float16))
    found, _ = layout_of(buf.getvalue())
    assert found.format == "npz" and found.tensors() == []


def test_npz_bad_member_is_raw(w):
    """A member that is not a valid .npy (or not .npy at all) stays RAW; the rest are found."""
    import zipfile
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("good.npy", saved(w))
        z.writestr("bad.npy", b"\x93NUMPY\x01\x00\xff\x00{}")
        z.writestr("notes.txt", b"hello")
        z.writestr("short.npy", saved(w)[:-8])
    found, _ = layout_of(buf.getvalue())
    assert [r.tensor for r in found.tensors()] == ["good"]


def test_sniffs_do_not_cross(w, tmp_path):
    """npz claims zips whose first entry is .npy, torch claims `<archive>/data.pkl`; npy
    needs the magic. recognise tries torch before npz, but neither sniff overlaps."""
    import torch
    buf = io.BytesIO()
    torch.save({"w": torch.from_numpy(w)}, buf)
    t = buf.getvalue()
    buf = io.BytesIO()
    np.savez(buf, w=w)
    z = buf.getvalue()
    n = saved(w)
    assert torch_zip.sniff(t[:4096], len(t)) and not npz.sniff(t[:4096], len(t))
    assert npz.sniff(z[:4096], len(z)) and not torch_zip.sniff(z[:4096], len(z))
    assert npy.sniff(n, len(n)) and not npy.sniff(z, len(z)) and not npz.sniff(n, len(n))
    assert [layout_of(d)[0].format for d in (t, z, n)] == ["torch", "npz", "npy"]


# -- fuzzing ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_npz(real) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, ln=real["embeddings.LayerNorm.weight"], q=real[QUERY][:4, :16],
             bf=real[QUERY][4:6, :16].astype(ml_dtypes.bfloat16),
             pos=real["embeddings.position_ids"][:, :8])
    return buf.getvalue()


@FUZZ_SETTINGS
@given(ops=OPS)
def test_fuzz_npy(w, ops):
    """Mutated .npy files: recognise() gives a tiling layout or plain bytes, nothing else."""
    recognise_oracle(mutate(saved(w[:2]), ops))


@FUZZ_SETTINGS
@given(ops=OPS)
def test_fuzz_npz(small_npz, ops):
    """Mutated .npz files (zip structure and member headers): the same contract."""
    recognise_oracle(mutate(small_npz, ops))
