"""Corrupt, truncate and forge containers: every region of a .fpz damaged in turn must give
CorruptContainer (at open, on reading the affected bytes, or from verify_file), never wrong
bytes, never another exception, never a crash and never a huge allocation. Also the input
side: what compress_file must refuse as NotSafetensors."""
from __future__ import annotations

import os
import struct
import tracemalloc
import zlib

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

import fpfs
from fpfs.container import CHUNK_ENTRY, HEADER, TRAILER, Container
from fpfs.errors import AlreadyCompressed, CorruptChunk, CorruptContainer, UnsupportedVersion
from fpfs.formats import detect
from fpfs.packed_file import PackedFile
from tests import st_files
from tests.weights import load_real

CHUNK = 64 * 1024
HDR, TRL, ENT = HEADER.size, TRAILER.size, CHUNK_ENTRY.itemsize


# -- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bf16_sample(tmp_path_factory):
    """(original bytes, container bytes): real MiniLM weights (all but the word embeddings
    and layers 2-5) in BF16, layer 1 in F16, 64 KiB chunks: ~2.4 MB, ~40 chunks, EXPMANT
    (BF16), PLANES (F16) and RAW."""
    d = tmp_path_factory.mktemp("corrupt")
    tensors = {k: (v.astype(np.float16 if "layer.1." in k else ml_dtypes.bfloat16)
                   if v.dtype == np.float32 else v)
               for k, v in load_real().items()
               if "word_embeddings" not in k and not any(f"layer.{i}." in k for i in range(2, 6))}
    # one incompressible tensor so some chunks are RAW
    tensors["noise"] = np.random.default_rng(0).integers(0, 256, 3 * CHUNK, dtype=np.uint8)
    src = os.path.join(d, "sample.safetensors")
    save_file(tensors, src, metadata={"format": "pt"})
    fpz = src + ".fpz"
    fpfs.compress_file(src, fpz, chunk_size=CHUNK)
    with open(src, "rb") as f, open(fpz, "rb") as g:
        original, packed = f.read(), g.read()
    with Container(fpz) as c:
        codecs = set(int(x) for x in c.table["codec"])
        assert codecs == {0, 1, 6} and len(c) > 30
    return original, packed


# -- container anatomy and forging ---------------------------------------------------------
def parse(buf: bytes):
    h = list(HEADER.unpack_from(buf, 0))
    t = list(TRAILER.unpack_from(buf, len(buf) - TRL))
    table = np.frombuffer(buf, CHUNK_ENTRY, count=t[1], offset=t[0]).copy()
    return h, t, table


H_FIELDS = ("magic", "version", "flags", "chunk_size", "orig_size", "prefix_len", "crc", "zero")
T_FIELDS = ("table_off", "count", "orig_size", "sha256", "table_crc", "trailer_crc", "end")


def forge(buf: bytes, header=None, trailer=None, table_fn=None, payload_fn=None) -> bytes:
    """A copy of the container with fields changed and every CRC recomputed the way the
    reader computes it, so validation logic (not just CRCs) is what gets tested."""
    h, t, table = parse(buf)
    table_off0 = t[0]
    out = bytearray(buf)
    if payload_fn:
        payload_fn(out, table)
    if table_fn:
        table_fn(table)
    out[table_off0:table_off0 + len(table) * ENT] = table.tobytes()
    for k, v in (header or {}).items():
        h[H_FIELDS.index(k)] = v
    for k, v in (trailer or {}).items():
        t[T_FIELDS.index(k)] = v
    head = HEADER.pack(*h[:6], 0, h[7])
    if "crc" not in (header or {}):
        h[6] = zlib.crc32(bytes(out[HDR:HDR + h[5]]), zlib.crc32(head[:32]))
    out[:HDR] = HEADER.pack(*h)
    tail_start = len(out) - TRL
    if "table_crc" not in (trailer or {}):
        t[4] = zlib.crc32(bytes(out[t[0]:t[0] + t[1] * ENT])) if t[1] * ENT < 1 << 30 else 0
    body = TRAILER.pack(*t[:5], 0, t[6])
    if "trailer_crc" not in (trailer or {}):
        t[5] = zlib.crc32(body[:56], h[6])     # seeded with the header CRC
    out[tail_start:] = TRAILER.pack(*t)
    return bytes(out)


def regions(packed: bytes) -> dict:
    h, t, table = parse(packed)
    prefix_len = h[5]
    return {"header": (0, HDR), "prefix": (HDR, HDR + prefix_len),
            "payloads": (HDR + prefix_len, t[0]), "table": (t[0], len(packed) - TRL),
            "trailer": (len(packed) - TRL, len(packed))}


# -- the probe: what a reader sees of a damaged container ----------------------------------
def probe(path: str, original: bytes, tmp_dir: str) -> str:
    """Read everything every way; return where the damage was caught: 'open', 'read',
    'verify' or 'clean' (nothing detected: then every byte must have been right).
    Any exception other than CorruptContainer fails the test; so does a wrong byte."""
    try:
        pf = PackedFile(path)
    except CorruptContainer:
        with pytest.raises(CorruptContainer):
            fpfs.verify_file(path)
        check_decompress(path, tmp_dir, must_fail=True)
        return "open"
    caught = None
    try:
        assert pf.size == len(original)
        assert bytes(pf.pread(0, len(pf.container.prefix))) == \
            original[:len(pf.container.prefix)]
        for i in range(len(pf.container)):
            off, length = pf.container.chunk_span(i)
            for o, n in ((off, length), (off + length // 2, 1), (off - 3, length + 6)):
                o = max(o, 0)
                try:
                    got = pf.pread(o, n)
                except CorruptChunk as exc:
                    assert exc.index in (i - 1, i, i + 1)
                    caught = "read"
                else:
                    assert bytes(got) == original[o:o + n], f"wrong bytes at {o}+{n}"
    finally:
        pf.close()
    try:
        fpfs.verify_file(path)
    except CorruptContainer:
        check_decompress(path, tmp_dir, must_fail=True)
        return caught or "verify"
    assert caught is None, "verify passed a container whose chunks failed to read"
    check_decompress(path, tmp_dir, must_fail=False, original=original)
    return "clean"


def check_decompress(path, tmp_dir, must_fail, original=None):
    dst = os.path.join(tmp_dir, "restored")
    if must_fail:
        with pytest.raises(CorruptContainer):
            fpfs.decompress_file(path, dst)
        assert not os.path.exists(dst)
    else:
        fpfs.decompress_file(path, dst)
        with open(dst, "rb") as f:
            assert f.read() == original
        os.unlink(dst)
    assert not [n for n in os.listdir(tmp_dir) if n.startswith(".fpfs-tmp-")]


def damaged(tmp_path, data: bytes, name="bad.fpz") -> str:
    return st_files.write(tmp_path / name, data)


def flip(packed: bytes, pos: int, mask: int = 0xFF) -> bytes:
    out = bytearray(packed)
    out[pos] ^= mask
    return bytes(out)


# -- byte flips in every region ------------------------------------------------------------
def test_intact_sample_is_clean(bf16_sample, tmp_path):
    original, packed = bf16_sample
    assert probe(damaged(tmp_path, packed), original, str(tmp_path)) == "clean"


@pytest.mark.parametrize("region", ["header", "prefix", "table", "trailer"])
def test_flips_in_metadata_fail_at_open(bf16_sample, tmp_path, region):
    original, packed = bf16_sample
    start, stop = regions(packed)[region]
    h, t, table = parse(packed)
    if region in ("header", "trailer"):
        positions = range(start, stop)                        # every byte
    elif region == "prefix":
        positions = sorted({start, start + 1, start + 7, start + 8, start + 9,
                            (start + stop) // 2, stop - 2, stop - 1})
    else:                                                     # first, middle, last entry
        positions = [start + e * ENT + k for e in (0, len(table) // 2, len(table) - 1)
                     for k in range(ENT)]
    undetected = []
    for pos in positions:
        for mask in (0x01, 0x80):
            path = damaged(tmp_path, flip(packed, pos, mask))
            where = probe(path, original, str(tmp_path))
            if where != "open":
                undetected.append((pos, mask, where))
    # Every header byte is covered: the CRC (0-31 and the prefix), its own field, and the
    # reserved bytes 36-39 that MUST be zero.
    assert not undetected, undetected


def test_flips_in_payloads(bf16_sample, tmp_path):
    original, packed = bf16_sample
    h, t, table = parse(packed)
    n = len(table)
    results = {}
    picks = sorted({0, 1, n // 3, n // 2, n - 2, n - 1} |
                   {i for i in range(n) if table["codec"][i] == 0})        # all RAW chunks
    rng = np.random.default_rng(1)
    for i in picks:
        off, length = int(table["comp_offset"][i]), int(table["comp_length"][i])
        for pos in sorted({off, off + 1, off + length // 2, off + length - 1,
                           off + int(rng.integers(0, length))}):
            path = damaged(tmp_path, flip(packed, pos, 0x10))
            where = probe(path, original, str(tmp_path))
            results[(i, pos - off)] = where
            assert where in ("read", "clean"), (i, pos - off, where)   # opens fine
    # First and last payload byte (plane header / stream or RAW data) must be noticed; a
    # flip elsewhere may hit an unused padding bit of a rANS table and change nothing.
    for (i, rel), where in results.items():
        length = int(table["comp_length"][i])
        if rel in (0, length - 1) or table["codec"][i] == 0:
            assert where == "read", (i, rel)
    assert sum(w == "read" for w in results.values()) >= 0.9 * len(results)


def test_random_multi_byte_damage(bf16_sample, tmp_path):
    original, packed = bf16_sample
    rng = np.random.default_rng(2)
    seen = set()
    for trial in range(40):
        out = bytearray(packed)
        for _ in range(int(rng.integers(1, 6))):
            pos = int(rng.integers(0, len(out)))
            out[pos] = int(rng.integers(0, 256))
        seen.add(probe(damaged(tmp_path, bytes(out)), original, str(tmp_path)))
    assert "read" in seen          # (metadata is <1 % of the file: see the tests above)


def test_swapped_payloads_detected(bf16_sample, tmp_path):
    """Two chunks' payloads exchanged (table untouched): checksums catch it."""
    original, packed = bf16_sample
    h, t, table = parse(packed)
    lengths = table["comp_length"]
    same = [(i, j) for i in range(len(table)) for j in range(i + 1, len(table))
            if lengths[i] == lengths[j] and table["codec"][i] == table["codec"][j]]
    assert same
    i, j = same[0]
    out = bytearray(packed)
    a, b = int(table["comp_offset"][i]), int(table["comp_offset"][j])
    n = int(lengths[i])
    out[a:a + n], out[b:b + n] = packed[b:b + n], packed[a:a + n]
    assert probe(damaged(tmp_path, bytes(out)), original, str(tmp_path)) == "read"


# -- truncation and extension --------------------------------------------------------------
def test_truncation_everywhere(bf16_sample, tmp_path):
    original, packed = bf16_sample
    rng = np.random.default_rng(3)
    r = regions(packed)
    cuts = {0, 1, 7, 8, 39, 40, 41, len(packed) - 1}
    for start, stop in r.values():
        cuts |= {start, start + 1, stop - 1}
    cuts |= set(range(len(packed) - TRL - 2 * ENT, len(packed)))      # table tail, trailer
    cuts |= {int(x) for x in rng.integers(0, len(packed), 60)}
    for cut in sorted(cuts):
        path = damaged(tmp_path, packed[:cut])
        assert probe(path, original, str(tmp_path)) == "open", cut


@pytest.mark.parametrize("extra", [b"\x00", b"FPZ-END\n", b"\x00" * 4096])
def test_appended_bytes(bf16_sample, tmp_path, extra):
    original, packed = bf16_sample
    assert probe(damaged(tmp_path, packed + extra), original, str(tmp_path)) == "open"


def test_truncated_while_open(bf16_sample, tmp_path):
    """The file shrinks under an open reader: reads of lost chunks fail, never wrong bytes."""
    original, packed = bf16_sample
    path = damaged(tmp_path, packed)
    pf = PackedFile(path)
    try:
        h, t, table = parse(packed)
        mid = len(table) // 2
        os.truncate(path, int(table["comp_offset"][mid]) + 5)
        off, length = pf.container.chunk_span(0)
        assert bytes(pf.pread(off, length)) == original[off:off + length]
        for i in (mid, len(table) - 1):
            off, length = pf.container.chunk_span(i)
            with pytest.raises(CorruptChunk):
                pf.pread(off, length)
    finally:
        pf.close()


# -- the full real BF16 container ----------------------------------------------------------
def test_full_real_bf16_container(real_files, tmp_path):
    src = real_files["BF16"]
    fpz = str(tmp_path / "full.fpz")
    fpfs.compress_file(src, fpz, chunk_size=CHUNK)
    with open(src, "rb") as f:
        original = f.read()
    with open(fpz, "rb") as f:
        packed = f.read()
    h, t, table = parse(packed)
    mid = len(table) // 2
    off, length = int(table["comp_offset"][mid]), int(table["comp_length"][mid])
    cases = {
        "payload": flip(packed, off + length // 3, 0x04),
        "table": flip(packed, t[0] + mid * ENT + 20, 0x01),
        "trailer": flip(packed, len(packed) - 40),
        "truncated": packed[:off],
        "prefix": flip(packed, HDR + 100, 0x20),
    }
    for name, data in cases.items():
        where = probe(damaged(tmp_path, data), original, str(tmp_path))
        assert where == ("read" if name == "payload" else "open"), name


# -- forged containers: CRCs recomputed, the validation itself must catch it ---------------
def assert_rejected_cheaply(path, exc=CorruptContainer, match=None):
    tracemalloc.start()
    try:
        with pytest.raises(exc, match=match):
            Container(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"peak {peak} bytes while rejecting a hostile header"


def test_forge_identity_is_valid(bf16_sample, tmp_path):
    original, packed = bf16_sample
    assert forge(packed) == packed


def _set(field, index, value):
    def fn(table):
        table[field][index] = value
    return fn


HUGE = 1 << 60


@pytest.mark.parametrize("name,kwargs,match", [
    ("chunk_size_0", dict(header={"chunk_size": 0}), "chunk size"),
    ("chunk_size_huge", dict(header={"chunk_size": 0xFFFFFFF8}), "chunk size"),
    ("chunk_size_odd", dict(header={"chunk_size": CHUNK + 1}), "chunk size"),
    ("prefix_len_huge", dict(header={"prefix_len": HUGE}), "exceed"),
    ("prefix_len_2^64", dict(header={"prefix_len": 2**64 - 1, "orig_size": 2**64 - 1}),
     "exceed"),
    ("orig_size_huge", dict(header={"orig_size": HUGE}, trailer={"orig_size": HUGE}), "tile"),
    ("orig_size_mismatch", dict(trailer={"orig_size": 12345}), "inconsistent"),
    ("count_huge", dict(trailer={"count": HUGE}), "inconsistent"),
    ("count_2^64", dict(trailer={"count": 2**64 - 1}), "inconsistent"),
    ("table_off_huge", dict(trailer={"table_off": HUGE}), "inconsistent"),
    ("table_off_in_header", dict(trailer={"table_off": 8}), "inconsistent"),
    ("orig_len_huge", dict(table_fn=_set("orig_length", 3, 0xFFFFFFFF)), "original length"),
    ("orig_len_zero", dict(table_fn=_set("orig_length", 3, 0)), "original length"),
    ("orig_len_short", dict(table_fn=_set("orig_length", 3, 100)), "tile"),
    ("comp_len_huge", dict(table_fn=_set("comp_length", 3, 0xFFFFFFFF)), "tile"),
    ("comp_off_overlap", dict(table_fn=lambda t: t["comp_offset"].__setitem__(
        4, t["comp_offset"][3])), "tile"),
    ("comp_off_huge", dict(table_fn=_set("comp_offset", 5, HUGE)), "tile"),
    ("comp_off_2^64", dict(table_fn=_set("comp_offset", 5, 2**64 - 1)), "tile"),
    ("orig_off_overlap", dict(table_fn=lambda t: t["orig_offset"].__setitem__(
        4, t["orig_offset"][4] - 1)), "tile"),
    ("orig_off_2^64", dict(table_fn=_set("orig_offset", 0, 2**64 - 1)), "tile"),
    ("orig_off_gap", dict(table_fn=lambda t: t["orig_offset"].__setitem__(
        slice(4, None), t["orig_offset"][4:] + 8)), "tile"),
    ("codec_unknown", dict(table_fn=_set("codec", 2, 7)), "codec"),
    ("reserved", dict(table_fn=_set("reserved", 1, 1)), "reserved"),
    ("reserved2", dict(table_fn=_set("reserved2", 1, 1 << 31)), "reserved"),
    ("empty_table", dict(trailer={"count": 0}), None),
])
def test_hostile_headers(bf16_sample, tmp_path, name, kwargs, match):
    original, packed = bf16_sample
    data = forge(packed, **kwargs)
    path = damaged(tmp_path, data)
    assert_rejected_cheaply(path, CorruptContainer, match)
    assert probe(path, original, str(tmp_path)) == "open"


def test_raw_chunk_length_mismatch(bf16_sample, tmp_path):
    """A RAW chunk must store exactly its original length: shift one byte from a RAW
    payload to its neighbour (tiling still holds)."""
    original, packed = bf16_sample
    h, t, table = parse(packed)
    i = int(np.flatnonzero(table["codec"] == 0)[0])

    def fn(tab):
        tab["comp_length"][i] -= 1
        tab["comp_offset"][i + 1] -= 1
        tab["comp_length"][i + 1] += 1
    path = damaged(tmp_path, forge(packed, table_fn=fn))
    assert_rejected_cheaply(path, CorruptContainer, "raw chunk")


def test_forged_expmant_lengths(bf16_sample, tmp_path):
    """An EXPMANT payload whose symbol stream claims 4 GiB, or a window past exponent 255:
    rejected by the kernel's header check before any decode."""
    original, packed = bf16_sample
    h, t, table = parse(packed)
    i = int(np.flatnonzero(table["codec"] == 6)[1])
    off = int(table["comp_offset"][i])
    for patch in (lambda out: struct.pack_into("<I", out, off + 2, 0xFFFFFFFF),
                  lambda out: out.__setitem__(off + 1, 250),
                  lambda out: out.__setitem__(off, 3)):
        path = damaged(tmp_path, forge(packed, payload_fn=lambda out, tab: patch(out)))
        with Container(path) as c:
            with pytest.raises(CorruptChunk):
                c.decode(i)
        assert probe(path, original, str(tmp_path)) == "read"


def test_forged_checksum_codec_dtype(bf16_sample, tmp_path):
    """Table fields only a decode can check (CRCs recomputed): a wrong checksum, a RAW chunk
    relabelled PLANES, fail on reading that chunk; a wrong dtype code is a hint only."""
    original, packed = bf16_sample
    h, t, table = parse(packed)
    planes = int(np.flatnonzero(table["codec"] == 1)[2])
    raw = int(np.flatnonzero(table["codec"] == 0)[0])
    cases = [(_set("checksum", planes, int(table["checksum"][planes]) ^ 1), "read"),
             (_set("checksum", planes, 0), "read"),
             (_set("codec", raw, 1), "read"),
             (_set("dtype", planes, 250), "clean"),
             (_set("dtype", raw, 11), "clean")]
    for fn, expected in cases:
        path = damaged(tmp_path, forge(packed, table_fn=fn))
        assert probe(path, original, str(tmp_path)) == expected


def test_forged_plane_lengths(bf16_sample, tmp_path):
    """A PLANES payload whose plane entries claim 4 GiB: rejected by the kernel's layout
    check before any decode (the payload is not covered by any CRC at open)."""
    original, packed = bf16_sample
    h, t, table = parse(packed)
    i = int(np.flatnonzero(table["codec"] == 1)[1])
    off = int(table["comp_offset"][i])

    def payload_fn(out, tab):
        width = out[off]
        for j in range(width):
            struct.pack_into("<I", out, off + 2 + 5 * j + 1, 0xFFFFFFFF)
    path = damaged(tmp_path, forge(packed, payload_fn=payload_fn))
    with Container(path) as c:
        tracemalloc.start()
        try:
            with pytest.raises(CorruptChunk):
                c.decode(i)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 16 << 20
    assert probe(path, original, str(tmp_path)) == "read"


def test_wrong_whole_file_hash(bf16_sample, tmp_path):
    """Only the whole-file SHA-256 is wrong: reads are fine (each chunk checks out), but
    verify and decompress refuse."""
    original, packed = bf16_sample
    path = damaged(tmp_path, forge(packed, trailer={"sha256": b"\x00" * 32}))
    assert probe(path, original, str(tmp_path)) == "verify"
    with pytest.raises(CorruptContainer, match="SHA-256"):
        fpfs.verify_file(path)


@pytest.mark.parametrize("version,flags", [(5, 0), (0, 0), (65535, 0), (1, 1), (1, 0x8000),
                                           (2, 2), (2, 0x8000), (3, 2)])
def test_unsupported_version(bf16_sample, tmp_path, version, flags):
    original, packed = bf16_sample
    for fix_crc in (True, False):
        data = forge(packed, header={"version": version, "flags": flags})
        if not fix_crc:
            data = data[:32] + packed[32:36] + data[36:]
        path = damaged(tmp_path, data)
        with pytest.raises(UnsupportedVersion, match="version"):
            Container(path)
        with pytest.raises(UnsupportedVersion):
            fpfs.verify_file(path)


def test_expmant_chunks_need_version_4(bf16_sample, tmp_path):
    """Codec 6 (EXPMANT) exists from format version 4 on: the same file labelled version 3
    (CRCs recomputed) is rejected at open, not decoded."""
    original, packed = bf16_sample
    path = damaged(tmp_path, forge(packed, header={"version": 3}))
    assert_rejected_cheaply(path, CorruptContainer, "codec id 6 not allowed")


def test_not_a_container(tmp_path):
    for data in (b"", b"\x89FPZ", b"x" * 200, b"\x89FPZ\r\n\x1a\n" + b"\x00" * 200,
                 st_files.pack({}, b"\x00" * 500)):
        path = damaged(tmp_path, data)
        with pytest.raises(CorruptContainer):
            Container(path)
        with pytest.raises(CorruptContainer):
            fpfs.decompress_file(path, str(tmp_path / "out"))
        assert not os.path.exists(tmp_path / "out")


# -- the input side: what compress_file refuses --------------------------------------------
def _header(n: int) -> bytes:
    return struct.pack("<Q", n)


DEEP = b'{"a":' + b"[" * 200000 + b"]" * 200000 + b"}"
NOT_SAFETENSORS = {
    "empty": b"",
    "tiny": b"{}",
    "random": bytes(np.random.default_rng(4).integers(0, 256, 1000, dtype=np.uint8)),
    "text": b"hello world, this is not a weights file\n" * 10,
    "huge_header_len": _header(HUGE) + b'{"a":1}' + b"\x00" * 100,
    "header_len_2^64": _header(2**64 - 1) + b"{}" + b"\x00" * 100,
    "header_len_past_eof": _header(500) + b"{}" + b" " * 100,
    "header_len_over_cap": _header(100 * 1000 * 1000 + 1) + b"{" + b" " * 100,
    "header_len_1": _header(1) + b"{" + b"\x00" * 20,
    "not_json": _header(12) + b"{not json!!}" + b"\x00" * 8,
    "not_utf8": _header(8) + b'{"\xff\xfe":1}' + b"\x00" * 8,
    "json_array": _header(2) + b"[]" + b"\x00" * 8,
    "truncated_json": _header(10) + b'{"a":{"dty' + b"\x00" * 8,
    "no_offsets": st_files.pack({"a": {"dtype": "F32", "shape": [1]}}, b"\x00" * 4),
    "no_dtype": st_files.pack({"a": {"shape": [1], "data_offsets": [0, 4]}}, b"\x00" * 4),
    "tensor_not_object": st_files.pack({"a": [1, 2, 3]}, b"\x00" * 4),
    "offsets_past_data": st_files.pack({"a": {"dtype": "F32", "shape": [2],
                                              "data_offsets": [0, 8]}}, b"\x00" * 4),
    "offsets_huge": st_files.pack({"a": {"dtype": "F32", "shape": [2],
                                         "data_offsets": [0, HUGE]}}, b"\x00" * 4),
    "offsets_negative": st_files.pack({"a": {"dtype": "F32", "shape": [2],
                                             "data_offsets": [-4, 4]}}, b"\x00" * 4),
    "offsets_reversed": st_files.pack({"a": {"dtype": "F32", "shape": [1],
                                             "data_offsets": [4, 0]}}, b"\x00" * 4),
    "offsets_float": st_files.pack({"a": {"dtype": "F32", "shape": [1],
                                          "data_offsets": [0.0, 4.0]}}, b"\x00" * 4),
    "offsets_three": st_files.pack({"a": {"dtype": "F32", "shape": [1],
                                          "data_offsets": [0, 2, 4]}}, b"\x00" * 4),
    "deeply_nested": _header(len(DEEP)) + DEEP,
}


@pytest.mark.parametrize("name", sorted(NOT_SAFETENSORS))
def test_broken_safetensors_is_stored_as_bytes(tmp_path, name):
    """A file that only looks like safetensors is still stored - losslessly, as bytes."""
    src = damaged(tmp_path, NOT_SAFETENSORS[name], "input.safetensors")
    dst = str(tmp_path / "out.fpz")
    fpfs.compress_file(src, dst)
    assert detect(src).format == "bytes"
    with fpfs.open(dst) as f:
        assert f.read() == NOT_SAFETENSORS[name]
    assert sorted(os.listdir(tmp_path)) == ["input.safetensors", "out.fpz"]


def test_compress_rejects_a_container(bf16_sample, tmp_path):
    _, packed = bf16_sample
    src = damaged(tmp_path, packed, "already.fpz")
    with pytest.raises(AlreadyCompressed):
        fpfs.compress_file(src, str(tmp_path / "twice.fpz"))
    assert os.listdir(tmp_path) == ["already.fpz"]
