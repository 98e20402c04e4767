"""fpfs.formats.gguf against real GGUF files (the gguf package's GGUFWriter, the real
MiniLM weights) and hostile headers.

The reference for every span is gguf's own GGUFReader: its tensor data_offset / n_bytes
must be exactly the region fpfs reports, with the right dtype and numpy-order shape.
"""
from __future__ import annotations

import hashlib
import io
import os
import struct
import time
import tracemalloc
from typing import Dict, List, Optional, Tuple

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

gguf = pytest.importorskip("gguf")
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as QT  # noqa: E402

from fpfs.codecs.blocks import BLOCK_TYPES  # noqa: E402
from fpfs.formats import FormatError, Layout, RAW, recognise  # noqa: E402
from fpfs.formats import gguf as fgguf  # noqa: E402
from tests.weights import load_real  # noqa: E402

# fpfs dtype each ggml type must be reported as.
EXPECTED_DTYPE = {name: name for name in ("F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64")}
# Files written below: kind -> ggml type of the 2-D weights (1-D vectors stay F32, as
# llama.cpp's converters keep them). Rows that are not whole blocks fall back as in
# llama.cpp's llama_tensor_get_type: Q4_K to Q5_0 (MiniLM's 384 is 1.5 super-blocks),
# other types to F16.
KINDS = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "MXFP4")


# -- writing ---------------------------------------------------------------------------
def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    """A plain Q4_K quantizer (gguf.quants only dequantizes K-quants): per 32 values a
    6-bit scale and min, per 256 an fp16 d and dmin, 4-bit quants; ggml's block_q4_K
    byte layout (d, dmin, 12 packed scale bytes, 128 bytes of nibbles)."""
    rows = x.astype(np.float32).reshape(-1, 256)
    sub = rows.reshape(len(rows), 8, 32)
    lo = np.minimum(sub.min(axis=2), 0.0)
    scale = (sub.max(axis=2) - lo) / 15.0
    d = (scale.max(axis=1) / 63.0).astype(np.float16)
    dmin = (-lo.min(axis=1) / 63.0).astype(np.float16)
    d32, dmin32 = d.astype(np.float32)[:, None], dmin.astype(np.float32)[:, None]
    sc = np.clip(np.round(scale / np.where(d32 > 0, d32, 1)), 0, 63).astype(np.uint8)
    mn = np.clip(np.round(-lo / np.where(dmin32 > 0, dmin32, 1)), 0, 63).astype(np.uint8)
    step = (d32 * sc)[:, :, None]
    q = np.round((sub + (dmin32 * mn)[:, :, None]) / np.where(step > 0, step, 1))
    q = np.clip(q, 0, 15).astype(np.uint8)
    packed_sc = np.concatenate([
        sc[:, :4] | ((sc[:, 4:] & 0x30) << 2),
        mn[:, :4] | ((mn[:, 4:] & 0x30) << 2),
        (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4)], axis=1)
    qs = (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(len(rows), 128)
    blocks = np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2),
                             packed_sc, qs], axis=1)
    return blocks.reshape(*x.shape[:-1], x.shape[-1] // 256 * 144)


def encode(value: np.ndarray, kind: str) -> Tuple[np.ndarray, Optional[QT]]:
    """(array to write, raw ggml type or None) of one MiniLM tensor in file kind `kind`."""
    if value.dtype != np.float32 or value.ndim != 2 or kind == "F32":
        return value, None
    if kind == "F16":
        return value.astype(np.float16), None
    qtype = QT[kind]
    if value.shape[-1] % GGML_QUANT_SIZES[qtype][0]:
        if kind != "Q4_K":
            return value.astype(np.float16), None
        qtype = QT.Q5_0
    if qtype == QT.Q4_K:
        return quantize_q4_k(value), qtype
    return gguf.quants.quantize(value, qtype), qtype


def write_gguf(path: str, tensors: Dict[str, np.ndarray], kind: str,
               alignment: Optional[int] = None, vocab: int = 30522) -> Dict[str, bytes]:
    """Write the GGUF file; return each tensor's digest as written (for checking spans
    without holding every encoding in memory)."""
    digests = {}
    w = gguf.GGUFWriter(path, "bert")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    # Metadata of every shape the skipper must walk: strings, arrays of strings (a real
    # vocabulary's worth), arrays of numbers, nested arrays, scalars of each width.
    w.add_name("all-MiniLM-L6-v2 " + kind)
    w.add_uint32("bert.context_length", 512)
    w.add_float32("bert.attention.layer_norm_epsilon", 1e-12)
    w.add_bool("tokenizer.ggml.add_bos", True)
    w.add_int64("test.int64", -5)
    w.add_float64("test.float64", 0.5)
    w.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(vocab)])
    w.add_array("tokenizer.ggml.scores", [float(i) for i in range(vocab)])
    w.add_array("test.nested", [[1, 2, 3], [4, 5], [6]])
    w.add_array("test.nested_strings", [["a", "bc"], ["déf"]])
    for name, value in tensors.items():
        data, raw = encode(value, kind)
        digests[name] = digest(data.tobytes())
        w.add_tensor(name, data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return digests


def digest(data) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


@pytest.fixture(scope="module")
def real() -> Dict[str, np.ndarray]:
    return load_real()


@pytest.fixture(scope="module")
def gguf_files(real, tmp_path_factory) -> Dict[str, Tuple[str, Dict[str, bytes]]]:
    """kind -> (path, tensor digests). The F32 file carries MiniLM's full-size vocabulary
    (30522 strings and scores); the others a short one, so gguf's slow reader stays fast."""
    out = tmp_path_factory.mktemp("gguf")
    files = {}
    for kind in KINDS + ("Q8_0-align256",):
        path = str(out / f"minilm-{kind.lower()}.gguf")
        base, _, align = kind.partition("-align")
        files[kind] = path, write_gguf(path, real, base, alignment=int(align) if align else None,
                                       vocab=30522 if kind == "F32" else 500)
    return files


def layout_of(path: str) -> Layout:
    with open(path, "rb") as f:
        found, why = recognise(f, os.fstat(f.fileno()).st_size)
    assert found.format == "gguf", why
    return found


def layout_of_bytes(data: bytes) -> Tuple[Layout, Optional[str]]:
    return recognise(io.BytesIO(data), len(data))


def assert_tiles(found: Layout) -> None:
    pos = found.prefix_length
    for r in found.regions:
        assert r.offset == pos and r.length > 0
        pos += r.length
    assert pos == found.file_size


def expected_dtype(qtype: QT) -> str:
    return EXPECTED_DTYPE.get(qtype.name, "GGUF_" + qtype.name)


# -- real files --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS + ("Q8_0-align256",))
def test_spans_match_gguf_reader(gguf_files, real, kind):
    path, digests = gguf_files[kind]
    found = layout_of(path)
    assert_tiles(found)
    assert found.prefix_length == 0 and found.regions[0].dtype == RAW   # header stays RAW
    by_name = {r.tensor: r for r in found.tensors()}
    reader = gguf.GGUFReader(path)
    assert len(reader.tensors) == len(real) == len(by_name)
    raw = np.memmap(path, mode="r")
    for t in reader.tensors:
        region = by_name[t.name]
        assert (region.offset, region.length) == (t.data_offset, t.n_bytes), t.name
        assert region.dtype == expected_dtype(t.tensor_type), t.name
        assert region.shape == tuple(reversed(t.shape.tolist())), t.name
        span = raw[region.offset:region.offset + region.length]
        assert digest(span) == digest(t.data) == digests[t.name], t.name
    # Everything RAW is header, metadata or alignment padding - and padding is zeros.
    for r in found.regions[1:]:
        if r.dtype == RAW:
            assert r.length < reader.alignment and not raw[r.offset:r.offset + r.length].any()
    assert found.regions[0].length == reader.data_offset
    if kind.endswith("align256"):
        assert reader.alignment == 256 and all(r.offset % 256 == 0 for r in found.tensors())


def test_block_types_appear(gguf_files):
    """Each quantized file really holds its block type (not an F16 fallback only)."""
    for kind in ("Q8_0", "Q4_0", "Q4_K", "MXFP4"):
        dtypes = {r.dtype for r in layout_of(gguf_files[kind][0]).tensors()}
        assert {"GGUF_" + kind, "F32", "I64"} <= dtypes and "F16" not in dtypes
    assert "GGUF_Q5_0" in {r.dtype for r in layout_of(gguf_files["Q4_K"][0]).tensors()}


def test_q4_k_quantizer_is_ggml_q4_k(real):
    """The test's own Q4_K bytes decode (with gguf's dequantizer) to the weights."""
    w = real["encoder.layer.0.output.dense.weight"]       # (384, 1536): rows of 6 blocks
    back = gguf.quants.dequantize(quantize_q4_k(w), QT.Q4_K)
    assert back.shape == w.shape
    assert np.abs(back - w).max() <= np.abs(w).max() / 10


def test_type_table_matches_gguf_py():
    """fpfs's own ggml type table agrees with gguf-py's sizes and names (Q8_1 excepted:
    gguf-py still has the pre-2024 float layout, 40 bytes; ggml's block_q8_1 is 36)."""
    for qtype in QT:
        if qtype.value not in fgguf.GGML_TYPES:
            continue
        dtype, per_block, block_bytes = fgguf.GGML_TYPES[qtype.value]
        assert dtype == expected_dtype(qtype)
        if qtype == QT.Q8_1:
            assert (per_block, block_bytes) == (32, 36)
        else:
            assert (per_block, block_bytes) == GGML_QUANT_SIZES[qtype], qtype.name
    missing = {q.name for q in QT} - {fgguf.GGML_TYPES[q.value][0].replace("GGUF_", "")
                                      for q in QT if q.value in fgguf.GGML_TYPES}
    assert not missing
    # Every type the BLOCKS codec splits has the same block size here.
    by_name = {v[0]: v for v in fgguf.GGML_TYPES.values()}
    for name, bt in BLOCK_TYPES.items():
        assert by_name[name][1:] == (bt.values_per_block, bt.block_bytes), name


# -- versions and endianness ----------------------------------------------------------------
@pytest.fixture(scope="module")
def small_gguf(real, tmp_path_factory) -> bytes:
    """A small real GGUF: a few MiniLM tensors in Q8_0, a short vocabulary."""
    path = str(tmp_path_factory.mktemp("small") / "small.gguf")
    names = ["embeddings.LayerNorm.weight", "embeddings.token_type_embeddings.weight",
             "encoder.layer.0.attention.self.query.weight", "embeddings.position_ids"]
    write_gguf(path, {n: real[n][:64] if real[n].ndim == 2 else real[n] for n in names},
               "Q8_0", vocab=40)
    with open(path, "rb") as f:
        return f.read()


def test_version_2_parses_like_version_3(small_gguf):
    v3, _ = layout_of_bytes(small_gguf)
    v2, _ = layout_of_bytes(small_gguf[:4] + struct.pack("<I", 2) + small_gguf[8:])
    assert v3.format == v2.format == "gguf" and v3.regions == v2.regions
    assert len(v3.tensors()) == 4


def test_version_1_and_big_endian_are_plain_bytes(real, small_gguf, tmp_path):
    v1, why = layout_of_bytes(small_gguf[:4] + struct.pack("<I", 1) + small_gguf[8:])
    assert v1.format == "bytes" and "v1" in why
    path = str(tmp_path / "be.gguf")
    w = gguf.GGUFWriter(path, "bert", endianess=gguf.GGUFEndian.BIG)
    w.add_tensor("x", real["embeddings.LayerNorm.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with open(path, "rb") as f:
        found, why = layout_of_bytes(f.read())
    assert found.format == "bytes" and "big-endian" in why


# -- hostile headers ----------------------------------------------------------------------
def gstr(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


def header(n_tensors: int, n_kv: int, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


def tensor_info(name: bytes, dims: List[int], ggml_type: int, offset: int) -> bytes:
    return gstr(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, ggml_type, offset)


def with_data(head: bytes, data: bytes, alignment: int = 32) -> bytes:
    return head + bytes(-len(head) % alignment) + data


def one_kv(typed_value: bytes) -> bytes:
    """A header with no tensors and one KV named "k": typed_value is its type and value."""
    return header(0, 1) + gstr(b"k") + typed_value


HOSTILE = {
    "tensor count 2^64-1": header(2**64 - 1, 0) + bytes(64),
    "kv count 2^63": header(0, 2**63) + bytes(64),
    "kv count just too big": header(0, 5) + bytes(5 * 13 - 1),
    "key length 2^63": header(0, 1) + struct.pack("<Q", 2**63) + bytes(64),
    "string value length 2^63": one_kv(struct.pack("<IQ", 8, 2**63) + bytes(64)),
    "string value length 2^64-1": one_kv(struct.pack("<IQ", 8, 2**64 - 1)),
    "u8 array length 2^63": one_kv(struct.pack("<IIQ", 9, 0, 2**63) + bytes(64)),
    "u64 array length 2^62": one_kv(struct.pack("<IIQ", 9, 10, 2**62) + bytes(64)),
    "string array length 2^63": one_kv(struct.pack("<IIQ", 9, 8, 2**63) + bytes(64)),
    "string array one too long": one_kv(struct.pack("<IIQ", 9, 8, 9) + bytes(64)),
    "string in array past EOF": one_kv(struct.pack("<IIQ", 9, 8, 3) + gstr(b"ab")
                                       + struct.pack("<Q", 2**63) + bytes(64)),
    "nested array length 2^63": one_kv(struct.pack("<IIQ", 9, 9, 2**63) + bytes(64)),
    "arrays nested 1000 deep": one_kv(struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * 1000
                                      + struct.pack("<IQ", 0, 0)),
    "unknown value type": one_kv(struct.pack("<I", 13) + bytes(64)),
    "unknown array type": one_kv(struct.pack("<IIQ", 9, 99, 1) + bytes(64)),
    "tensor name length 2^63": header(1, 0) + struct.pack("<Q", 2**63) + bytes(64),
    "tensor name 1 MiB": header(1, 0) + gstr(b"n" * (1 << 20)) + bytes(64),
    "tensor name not utf-8": header(1, 0) + tensor_info(b"\xff\xfe", [4], 0, 0) + bytes(64),
    "n_dims 1000": header(1, 0) + gstr(b"t") + struct.pack("<I", 1000) + bytes(8 * 1000 + 64),
    "n_dims 2^32-1": header(1, 0) + gstr(b"t") + struct.pack("<I", 2**32 - 1) + bytes(64),
    "duplicate tensor names": with_data(header(2, 0) + tensor_info(b"t", [8], 0, 0)
                                        + tensor_info(b"t", [8], 0, 32), bytes(64)),
    "alignment 0": header(0, 1) + gstr(b"general.alignment") + struct.pack("<II", 4, 0),
    "alignment 3": header(0, 1) + gstr(b"general.alignment") + struct.pack("<II", 4, 3),
    "alignment not u32": header(0, 1) + gstr(b"general.alignment") + struct.pack("<IQ", 10, 32),
    "alignment twice": header(0, 2) + (gstr(b"general.alignment") + struct.pack("<II", 4, 32)) * 2,
    "version 1": header(0, 0, version=1),
    "version 99": header(0, 0, version=99),
}


def run_bounded(data: bytes) -> Tuple[Optional[Layout], Optional[FormatError], int, float]:
    """fpfs.formats.gguf.layout on data: (layout or None, error or None, peak bytes
    allocated, seconds)."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        found, err = fgguf.layout(io.BytesIO(data), len(data)), None
    except FormatError as exc:
        found, err = None, exc
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return found, err, peak, seconds


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_header_is_format_error_fast_and_small(case):
    data = HOSTILE[case]
    found, err, peak, seconds = run_bounded(data)
    assert found is None, f"{case}: parsed as {found}"
    assert "\n" not in str(err)
    assert seconds < 0.5
    # The reader's window is min(1 MiB, bytes left); nothing may scale with a claimed count.
    assert peak < 2 * len(data) + (1 << 16), f"{case}: {peak} bytes allocated"


def test_offsets_beyond_eof_and_overlaps_stay_raw():
    infos = (tensor_info(b"ok", [8], 0, 0)              # 32 bytes at data start
             + tensor_info(b"overlap", [8], 0, 16)      # overlaps "ok": dropped
             + tensor_info(b"past_eof", [8], 0, 2**40)  # outside the file: dropped
             + tensor_info(b"huge", [2**40, 2**40], 0, 64)  # 2^82 bytes: dropped
             + tensor_info(b"half_block", [48], 8, 64)  # Q8_0 row of 1.5 blocks: dropped
             + tensor_info(b"unknown_type", [8], 77, 64)  # size unknown: dropped
             + tensor_info(b"scalar", [], 0, 96))       # 0-dim F32: 4 bytes
    data = with_data(header(7, 0) + infos, bytes(100))
    found, err, _, _ = run_bounded(data)
    assert err is None
    assert_tiles(found)
    start = len(data) - 100
    assert [(r.tensor, r.offset - start, r.length, r.shape) for r in found.tensors()] == \
        [("ok", 0, 32, (8,)), ("scalar", 96, 4, ())]


def test_data_section_past_eof_is_all_raw():
    data = header(1, 0) + tensor_info(b"t", [4], 0, 0)   # no padding, no data
    found, err, _, _ = run_bounded(data)
    assert err is None and found.tensors() == [] and len(found.regions) == 1


def test_truncation_in_first_200_bytes(small_gguf):
    t0 = time.perf_counter()
    for n in range(201):
        found, err, peak, _ = run_bounded(small_gguf[:n])
        assert err is not None or found is not None
        assert peak < (1 << 21)
        if found is not None:
            assert_tiles(found)
    assert time.perf_counter() - t0 < 5


# -- fuzz -------------------------------------------------------------------------------
FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@FUZZ
@given(data=st.data())
def test_fuzz_flips_and_truncation(small_gguf, data):
    """Random byte flips (mostly in the header) and truncations: recognise() returns a
    tiling layout (gguf or plain bytes) and nothing else escapes."""
    buf = bytearray(small_gguf)
    header_end = layout_of_bytes(small_gguf)[0].tensors()[0].offset
    for _ in range(data.draw(st.integers(1, 8))):
        limit = header_end if data.draw(st.booleans()) else len(buf)
        pos = data.draw(st.integers(0, limit - 1))
        buf[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        del buf[data.draw(st.integers(0, len(buf))):]
    found, _ = layout_of_bytes(bytes(buf))
    assert found.format in ("gguf", "bytes")
    assert_tiles(found)


@pytest.mark.parametrize("window", [8, 100, 4097])
def test_layout_does_not_depend_on_read_window(small_gguf, monkeypatch, window):
    """Tiny read windows cut lengths and strings at every position (the vocabulary's
    fast path falls back to single reads): the layout must come out the same."""
    from fpfs.formats._reader import BoundedReader
    want = layout_of_bytes(small_gguf)[0]
    monkeypatch.setattr(BoundedReader, "MIN_WINDOW", window)
    monkeypatch.setattr(BoundedReader, "MAX_WINDOW", window)
    assert layout_of_bytes(small_gguf)[0] == want and len(want.tensors()) == 4
