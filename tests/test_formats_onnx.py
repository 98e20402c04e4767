"""fpfs.formats.onnx against models written by onnx itself (onnx.helper / numpy_helper /
onnx.save) and by torch's exporter, from the real MiniLM weights; and hostile bytes.

The reference for every span is the tensor's own bytes: numpy's tobytes() of the array
the initializer was made from, and onnx's parsed raw_data.
"""
from __future__ import annotations

import io
import os
import struct
import time
import tracemalloc
from typing import Dict, List, Optional, Tuple

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fpfs.formats import FormatError, Layout, recognise  # noqa: E402
from fpfs.formats import onnx as fonnx  # noqa: E402
from tests.weights import cast_fp8, load_real  # noqa: E402

FLOAT_KINDS = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16}


# -- helpers ---------------------------------------------------------------------------
def layout_of_bytes(data: bytes) -> Tuple[Layout, Optional[str]]:
    return recognise(io.BytesIO(data), len(data))


def layout_of(path: str) -> Layout:
    with open(path, "rb") as f:
        found, why = recognise(f, os.fstat(f.fileno()).st_size)
    assert found.format == "onnx", why
    return found


def assert_tiles(found: Layout) -> None:
    pos = found.prefix_length
    for r in found.regions:
        assert r.offset == pos and r.length > 0
        pos += r.length
    assert pos == found.file_size


def model_bytes(graph, **kw) -> bytes:
    return helper.make_model(graph, **kw).SerializeToString()


def out(name: str, dims=None):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


@pytest.fixture(scope="module")
def real() -> Dict[str, np.ndarray]:
    return load_real()


# -- real weights through onnx.helper + onnx.save --------------------------------------
@pytest.fixture(scope="module")
def minilm_onnx(real, tmp_path_factory) -> Dict[str, Tuple[str, Dict[str, np.ndarray]]]:
    """kind -> (path, arrays): every MiniLM tensor as a raw_data initializer, float
    tensors cast to the kind, int64 position_ids as is; one Identity node per output."""
    out_dir = tmp_path_factory.mktemp("onnx")
    files = {}
    for kind, dtype in FLOAT_KINDS.items():
        arrays = {k: v.astype(dtype) if v.dtype == np.float32 else v for k, v in real.items()}
        inits = [numpy_helper.from_array(v, k) for k, v in arrays.items()]
        nodes = [helper.make_node("Identity", [k], [k + ".out"]) for k in list(arrays)[:3]]
        graph = helper.make_graph(nodes, "minilm", [], [out(k + ".out") for k in list(arrays)[:3]],
                                  initializer=inits)
        path = str(out_dir / f"minilm-{kind.lower()}.onnx")
        onnx.save(helper.make_model(graph, producer_name="fpfs-test"), path)
        files[kind] = path, arrays
    return files


@pytest.mark.parametrize("kind", sorted(FLOAT_KINDS))
def test_minilm_initializers(minilm_onnx, kind):
    path, arrays = minilm_onnx[kind]
    found = layout_of(path)
    assert_tiles(found)
    by_name = {r.tensor: r for r in found.tensors()}
    assert set(by_name) == set(arrays)
    raw = np.memmap(path, mode="r")
    for name, value in arrays.items():
        r = by_name[name]
        assert r.dtype == (kind if value.dtype != np.int64 else "I64"), name
        assert r.shape == value.shape, name
        assert raw[r.offset:r.offset + r.length].tobytes() == value.tobytes(), name
    # What is not a tensor is the protobuf framing: small.
    framing = sum(r.length for r in found.regions if r.tensor is None)
    assert framing < 64 * 1024


def test_every_dtype_and_where_tensors_live(real):
    """Each ONNX data type fpfs maps, and each place a tensor can live: initializer,
    sparse initializer, Constant node attribute, If-branch subgraph; plus the encodings
    that are not typed (external data, varint int32_data, strings)."""
    base = real["encoder.layer.0.attention.self.query.weight"][:8, :64]
    arrays = {
        "f32": base, "f16": base.astype(np.float16), "bf16": base.astype(ml_dtypes.bfloat16),
        "f64": base.astype(np.float64), "u8": (base * 100).astype(np.uint8),
        "i8": (base * 100).astype(np.int8), "u16": (base * 1e4).astype(np.uint16),
        "i16": (base * 1e4).astype(np.int16), "i32": (base * 1e6).astype(np.int32),
        "i64": (base * 1e6).astype(np.int64), "bool": base > 0,
        "u32": (base * 1e6).astype(np.uint32), "u64": (base * 1e6).astype(np.uint64),
        "c64": base.astype(np.complex64),
        "e4m3": cast_fp8(base, ml_dtypes.float8_e4m3fn),
        "e5m2": cast_fp8(base, ml_dtypes.float8_e5m2),
        "e4m3fnuz": cast_fp8(base, ml_dtypes.float8_e4m3fnuz),
        "e5m2fnuz": cast_fp8(base, ml_dtypes.float8_e5m2fnuz),
        "e8m0": np.abs(base).astype(ml_dtypes.float8_e8m0fnu),
    }
    expected = {"f32": "F32", "f16": "F16", "bf16": "BF16", "f64": "F64", "u8": "U8", "i8": "I8",
                "u16": "U16", "i16": "I16", "i32": "I32", "i64": "I64", "bool": "BOOL",
                "u32": "U32", "u64": "U64", "c64": "C64", "e4m3": "F8_E4M3", "e5m2": "F8_E5M2",
                "e4m3fnuz": "F8_E4M3FNUZ", "e5m2fnuz": "F8_E5M2FNUZ", "e8m0": "F8_E8M0"}
    inits = [numpy_helper.from_array(v, k) for k, v in arrays.items()]
    # float_data / double_data (packed fixed-width) are contiguous LE elements too.
    inits.append(helper.make_tensor("float_data", TensorProto.FLOAT, base.shape, base.ravel()))
    inits.append(helper.make_tensor("double_data", TensorProto.DOUBLE, base.shape,
                                    base.astype(np.float64).ravel()))
    # int32_data is varints: not the elements' bytes, stays RAW. So do strings.
    inits.append(helper.make_tensor("int32_data", TensorProto.INT32, [4], [1, -2, 300, 4]))
    inits.append(helper.make_tensor("strings", TensorProto.STRING, [2], [b"ab", b"cd"]))
    # FLOAT4E2M1 packs two values per byte.
    f4 = numpy_helper.from_array(np.clip(base[:1, :7], -6, 6).astype(ml_dtypes.float4_e2m1fn), "f4")
    inits.append(f4)
    # External data: the bytes live in another file; only the reference is here.
    ext = TensorProto(name="external", data_type=TensorProto.FLOAT, dims=[4],
                      data_location=TensorProto.EXTERNAL)
    ext.external_data.add(key="location", value="weights.bin")
    inits.append(ext)
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(base[0, :5].copy(), "sparse"),
        numpy_helper.from_array(np.array([0, 3, 9, 20, 63], dtype=np.int64), "sparse_idx"), [64])
    const = np.ascontiguousarray(base[:2, :16])
    then_init = real["embeddings.LayerNorm.weight"].astype(np.float16)
    then_graph = helper.make_graph(
        [helper.make_node("Identity", ["then_w"], ["y_then"])], "then", [], [out("y_then")],
        initializer=[numpy_helper.from_array(then_init, "then_w")])
    else_graph = helper.make_graph(
        [helper.make_node("Constant", [], ["y_else"], value=numpy_helper.from_array(const))],
        "else", [], [out("y_else")])
    nodes = [helper.make_node("Constant", [], ["c"], name="const_node",
                              value=numpy_helper.from_array(const)),
             helper.make_node("If", ["cond"], ["y"], then_branch=then_graph,
                              else_branch=else_graph)]
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    graph = helper.make_graph(nodes, "g", [cond],
                              [out("y"), out("c")], initializer=inits,
                              sparse_initializer=[sparse])
    data = model_bytes(graph)
    found, why = layout_of_bytes(data)
    assert found.format == "onnx", why
    assert_tiles(found)
    by_name = {r.tensor: r for r in found.tensors()}

    def span(name):
        r = by_name[name]
        return data[r.offset:r.offset + r.length]

    for name, value in arrays.items():
        assert by_name[name].dtype == expected[name], name
        assert by_name[name].shape == value.shape, name
        assert span(name) == value.tobytes(), name
    assert (by_name["float_data"].dtype, span("float_data")) == ("F32", base.tobytes())
    assert (by_name["double_data"].dtype, span("double_data")) == \
        ("F64", base.astype(np.float64).tobytes())
    assert (by_name["f4"].dtype, by_name["f4"].shape, span("f4")) == ("F4", (1, 7), f4.raw_data)
    assert span("sparse") == base[0, :5].tobytes()
    assert span("sparse_idx") == np.array([0, 3, 9, 20, 63], dtype=np.int64).tobytes()
    assert span("const_node/value") == const.tobytes()
    assert span("y_else/value") == const.tobytes()        # unnamed node: named by its output
    assert by_name["then_w"].dtype == "F16" and span("then_w") == then_init.tobytes()
    for untyped in ("int32_data", "strings", "external"):
        assert untyped not in by_name


def test_torch_exporter(real, tmp_path):
    """A model written by torch.onnx.export (initializers plus Constant nodes) from real
    MiniLM weights: every initializer and constant found, bytes equal to onnx's view."""
    torch = pytest.importorskip("torch")
    prefix = "encoder.layer.0."

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.query = torch.nn.Linear(384, 384)
            self.up = torch.nn.Linear(384, 1536)
            self.down = torch.nn.Linear(1536, 384)
            self.norm = torch.nn.LayerNorm(384)

        def forward(self, x):
            h = self.query(x) * torch.tensor(0.125) + torch.arange(384.0) / 1000
            return self.norm(self.down(torch.nn.functional.gelu(self.up(h))) + x)

    layer = Layer()
    sources = {"query": "attention.self.query", "up": "intermediate.dense",
               "down": "output.dense", "norm": "output.LayerNorm"}
    with torch.no_grad():
        for mod, src in sources.items():
            for p in ("weight", "bias"):
                value = torch.from_numpy(real[f"{prefix}{src}.{p}"])
                getattr(getattr(layer, mod), p).copy_(value)
    path = str(tmp_path / "layer.onnx")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(layer, (torch.zeros(1, 384),), path, dynamo=False)
    model = onnx.load(path)
    found = layout_of(path)
    assert_tiles(found)
    by_name = {r.tensor: r for r in found.tensors()}
    with open(path, "rb") as f:
        data = f.read()
    for init in model.graph.initializer:
        r = by_name[init.name]
        assert data[r.offset:r.offset + r.length] == init.raw_data
        assert r.shape == tuple(init.dims) and r.dtype == "F32"
    assert {n.split(".")[0] for n in by_name if "." in n} >= set(sources)
    n_const = sum(1 for n in model.graph.node for a in n.attribute if a.t.raw_data)
    assert len(found.tensors()) == len(model.graph.initializer) + n_const


# -- sniffing ---------------------------------------------------------------------------
def test_sniff_rejects_other_content(tmp_path):
    from tests.weights import MODEL_FILE
    with open(MODEL_FILE, "rb") as f:
        head = f.read(4096)
    samples = [head, b"GGUF" + bytes(100), b"\x08", b"\x08\x00\x12\x01a", b"\x08\x0e",
               b"\x08\x0e\x7a", b"\x08\xc8\x01\x12\x01a", b"\x08\x07\x3a\xff\xff\xff\x0f",
               os.urandom(4096).lstrip(b"\x08"), b"hello world" * 10]
    for s in samples:
        assert not fonnx.sniff(s, len(s)), s[:16]
    graph = helper.make_graph([], "g", [], [])
    assert fonnx.sniff(model_bytes(graph), len(model_bytes(graph)))


def test_model_without_graph_is_plain_bytes():
    m = onnx.ModelProto(ir_version=9, producer_name="x")
    data = m.SerializeToString()
    assert fonnx.sniff(data, len(data))
    found, why = layout_of_bytes(data)
    assert found.format == "bytes" and "no graph" in why


# -- hostile bytes ----------------------------------------------------------------------
def varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def nested_graphs(depth: int) -> bytes:
    g = b""
    for _ in range(depth):
        attr = field(1, b"body") + field(6, g)
        g = field(1, field(5, attr))            # graph { node { attribute { g } } }
    return g


HOSTILE = {
    "graph length 2^63": b"\x08\x09" + varint(7 << 3 | 2) + varint(2**63) + bytes(32),
    "varint of 11 bytes": b"\x08\x09" + varint(7 << 3 | 2) + b"\xff" * 10 + b"\x01",
    "wire type 3": b"\x08\x09" + field(7, varint(5 << 3 | 3) + bytes(8)),
    "field number 0": b"\x08\x09" + field(7, b"\x02\x00"),
    "graph is a varint": b"\x08\x09" + varint(7 << 3) + b"\x05",
    "tensor past its graph": b"\x08\x09" + field(7, varint(5 << 3 | 2) + varint(100) + bytes(10)),
    "name 2 MiB": b"\x08\x09" + field(7, field(5, field(8, b"n" * (2 << 20)))),
    "graphs nested 1000 deep": b"\x08\x09" + field(7, nested_graphs(1000)),
    "raw_data as varint": b"\x08\x09" + field(7, field(5, varint(9 << 3) + b"\x01")),
    "no graph": b"\x08\x09" + field(2, b"producer"),
}


def run_bounded(data: bytes):
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        found, err = fonnx.layout(io.BytesIO(data), len(data)), None
    except FormatError as exc:
        found, err = None, exc
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return found, err, peak, seconds


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_is_format_error_fast_and_small(case):
    data = HOSTILE[case]
    found, err, peak, seconds = run_bounded(data)
    assert found is None, f"{case}: parsed as {found}"
    assert "\n" not in str(err)
    assert seconds < 0.5
    assert peak < 2 * len(data) + (1 << 17), f"{case}: {peak} bytes allocated"


def test_shallow_nesting_parses():
    data = b"\x08\x09" + field(7, nested_graphs(fonnx.MAX_GRAPH_DEPTH - 1))
    found, err, _, _ = run_bounded(data)
    assert err is None and found.tensors() == []


@pytest.fixture(scope="module")
def small_onnx(real) -> bytes:
    w = real["encoder.layer.0.attention.self.query.weight"][:16]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(w.astype(np.float16), "h"),
             numpy_helper.from_array(real["embeddings.LayerNorm.bias"], "b")]
    nodes = [helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(w[:2])),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])
    graph = helper.make_graph(nodes, "g", [x],
                              [out("y")], initializer=inits)
    return model_bytes(graph, producer_name="fpfs-test")


def test_truncation_in_first_200_bytes(small_onnx):
    for n in range(201):
        found, err, peak, seconds = run_bounded(small_onnx[:n])
        assert err is not None or found is not None
        assert peak < (1 << 21) and seconds < 0.5
        if found is not None:
            assert_tiles(found)
    assert len(layout_of_bytes(small_onnx)[0].tensors()) == 4


FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@FUZZ
@given(data=st.data())
def test_fuzz_flips_and_truncation(small_onnx, data):
    """Random byte flips (mostly in the protobuf framing) and truncations: recognise()
    returns a tiling layout (onnx or plain bytes) and nothing else escapes."""
    buf = bytearray(small_onnx)
    framing = [r for r in layout_of_bytes(small_onnx)[0].regions if r.tensor is None]
    for _ in range(data.draw(st.integers(1, 8))):
        if data.draw(st.booleans()):
            r = data.draw(st.sampled_from(framing))
            pos = data.draw(st.integers(r.offset, r.offset + r.length - 1))
        else:
            pos = data.draw(st.integers(0, len(buf) - 1))
        buf[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        del buf[data.draw(st.integers(0, len(buf))):]
    found, _ = layout_of_bytes(bytes(buf))
    assert found.format in ("onnx", "bytes")
    assert_tiles(found)


def test_large_graph_streams_through_windows(real):
    """A graph of thousands of nodes (larger than any read window, so field headers are
    cut by window ends) with Constant tensors scattered through it: all found."""
    consts = {}
    nodes = []
    for i in range(6000):
        if i % 1000 == 999:
            row = real["encoder.layer.1.output.dense.weight"][i // 1000]
            value = np.ascontiguousarray(row[:100 + i // 100])
            consts[f"/block.{i}/Constant"] = value
            nodes.append(helper.make_node("Constant", [], [f"c{i}"], name=f"/block.{i}/Constant",
                                          value=numpy_helper.from_array(value)))
        else:
            nodes.append(helper.make_node("Gemm", [f"x{i}", "w", "b"], [f"x{i + 1}"],
                                          name=f"/block.{i}/Gemm", alpha=1.0, transB=1))
    ln = numpy_helper.from_array(real["embeddings.LayerNorm.weight"], "w")
    graph = helper.make_graph(nodes, "g", [], [out("x6000")], initializer=[ln])
    data = model_bytes(graph)
    assert len(data) > 4 * fonnx._Parser.IN_MEMORY      # streamed, not read whole
    t0 = time.perf_counter()
    found, why = layout_of_bytes(data)
    assert time.perf_counter() - t0 < 5
    assert found.format == "onnx", why
    by_name = {r.tensor: r for r in found.tensors()}
    assert set(by_name) == {"w"} | {k + "/value" for k in consts}
    for k, value in consts.items():
        r = by_name[k + "/value"]
        assert data[r.offset:r.offset + r.length] == value.tobytes() and r.shape == value.shape


@pytest.mark.parametrize("window", [33, 100, 4097])
def test_layout_does_not_depend_on_read_window(small_onnx, real, monkeypatch, window):
    """Tiny read windows cut field headers, names and packed dims at every position:
    the layout must come out the same (the big graph is streamed, never read whole)."""
    from fpfs.formats._reader import BoundedReader
    w = real["encoder.layer.0.attention.self.query.weight"][:32]
    nodes = [helper.make_node("Constant", [], [f"c{i}"], name=f"/n.{i}/Constant",
                              value=numpy_helper.from_array(w[i:i + 1])) for i in range(32)]
    graph = helper.make_graph(nodes, "g", [], [out("c0")], initializer=[
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(real["embeddings.LayerNorm.weight"], "ln")])
    samples = [small_onnx, model_bytes(graph)]
    expected = [layout_of_bytes(s)[0] for s in samples]
    monkeypatch.setattr(fonnx._Parser, "IN_MEMORY", 64)
    monkeypatch.setattr(BoundedReader, "MIN_WINDOW", window)
    monkeypatch.setattr(BoundedReader, "MAX_WINDOW", window)
    for s, want in zip(samples, expected):
        assert want.format == "onnx" and len(want.tensors()) >= 4
        assert layout_of_bytes(s)[0] == want
