"""Hypothesis fuzzing of the format parsers (fpfs.formats.recognise) and the version-2 chunk
codecs (ZSTD, BLOCKS, DELTA, MASKED), with the operators and oracles of
fuzz/fuzz_formats.py (the standalone campaign):

* files: real small safetensors, torch.save (incl. a data.pkl that would run os.system),
  GGUF, .npy, .npz and ONNX files, mutated byte-wise and structurally; recognise() must
  return a Layout that tiles the file (or plain bytes), raise nothing, stay under 2 s CPU
  and 64 MiB, and never execute a pickle (a marker file the hostile pickles would create);
* payloads: fpfs.codecs.encode_chunk of real weights, mutated (bytes, header fields at
  every nesting level, chunk length, codec id, base); decode_chunk must agree with the
  reference decoder fpfs/_reference.py (same bytes or both reject) and raise only FpfsError.

Plus regression tests for what the campaign found."""
from __future__ import annotations

import io
import os
import struct
import tracemalloc

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fpfs import _reference
from fpfs.codecs import (CODEC_BLOCKS, CODEC_DELTA, CODEC_MASKED, CODEC_ZSTD, DecodeError,
                         decode_chunk)
from fpfs.formats import FormatError, recognise
from fpfs.formats import safetensors as fsafetensors
from fuzz.fuzz_formats import (CODEC_OPS, FORMAT_OPS, MEMORY_BOUND, CodecSeed,
                               check_codec, check_format, check_marker_payload_is_live,
                               codec_fields, codec_seeds, make_format_seeds, mutate_codec,
                               mutate_format)

SETTINGS = settings(max_examples=250, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])
U32 = st.integers(0, 2**32 - 1)


def ops_of(kinds):
    return st.lists(st.tuples(st.sampled_from(kinds), U32, U32,
                              st.binary(min_size=1, max_size=40)), min_size=1, max_size=4)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzzf")
    marker = str(d / "PWNED")
    seeds = make_format_seeds(str(d), marker)
    return {"seeds": seeds, "bytes": [s.data for s in seeds], "marker": marker}


@pytest.fixture(scope="module")
def payloads():
    seeds, bases = codec_seeds()
    return {"seeds": seeds, "bases": bases}


# -- format parsers ----------------------------------------------------------------------------
def test_format_seeds_are_recognised(files):
    """Every seed parses as its own format (a few are meant to be plain bytes), and the
    hostile pickle payload is live: pickle.loads of it creates the marker."""
    got = {s.name: check_format(s.data, files["marker"]) for s in files["seeds"]}
    for name, fmt in got.items():
        want = name.split("_")[0] if name not in ("torch_legacy", "noise", "json") else "bytes"
        assert fmt == want, (name, fmt)
    check_marker_payload_is_live(files["marker"])
    assert not os.path.exists(files["marker"])


@SETTINGS
@given(which=st.integers(0, 1000), ops=ops_of(FORMAT_OPS))
def test_mutated_files(files, which, ops):
    """Byte ops, field edits, re-framed JSON headers, re-zipped pickles and npy members,
    hostile calls: a tiling layout or plain bytes, nothing raised, nothing executed."""
    seed = files["seeds"][which % len(files["seeds"])]
    data = mutate_format(seed, ops, files["bytes"], files["marker"])
    check_format(data, files["marker"])


# -- codecs ------------------------------------------------------------------------------------
def test_codec_seeds_cover_every_codec(payloads):
    codecs = {s.codec for s in payloads["seeds"]}
    assert {CODEC_ZSTD, CODEC_BLOCKS, CODEC_DELTA, CODEC_MASKED} <= codecs
    for s in payloads["seeds"]:
        assert check_codec(s.codec, s.payload, s.length, payloads["bases"][s.base]) == "ok", s.name


@SETTINGS
@given(which=st.integers(0, 1000), ops=ops_of(CODEC_OPS))
def test_mutated_payloads_match_reference(payloads, which, ops):
    """Mutated payloads: decode_chunk gives the reference decoder's bytes, or both reject."""
    seed: CodecSeed = payloads["seeds"][which % len(payloads["seeds"])]
    inp = mutate_codec(seed, ops, len(payloads["bases"]))
    check_codec(inp.codec, inp.payload, inp.length, payloads["bases"][inp.base])


# -- regressions (found by fuzz/fuzz_formats.py) ---------------------------------------------
def _st(header: str) -> bytes:
    js = header.encode()
    return struct.pack("<Q", len(js)) + js + bytes(16)


@pytest.mark.parametrize("literal", ["1" + "0" * 5000, "-" + "9" * 4301],
                         ids=["5001-digits", "minus-4301-digits"])
def test_safetensors_huge_integer_is_plain_bytes(literal):
    """A JSON integer of more than 4300 digits made json.loads raise a plain ValueError
    (int_max_str_digits), not JSONDecodeError: it escaped recognise()."""
    data = _st('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,%s]}}' % literal)
    layout, why = recognise(io.BytesIO(data), len(data))
    assert layout.format == "bytes" and "safetensors" in why
    with pytest.raises(FormatError):
        fsafetensors.layout_from_header(data[8:-16], len(data))


def _forged_zstd(claim: int) -> bytes:
    """A zstd frame of 100 bytes whose header claims `claim` bytes of content."""
    frame = zstandard.ZstdCompressor(write_content_size=True).compress(b"a" * 100)
    assert frame[4] == 0x20                 # single segment, 1-byte content size
    return frame[:4] + b"\xe0" + struct.pack("<Q", claim) + frame[6:]


def _bounded(fn):
    tracemalloc.start()
    try:
        return fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < MEMORY_BOUND, peak


@pytest.mark.parametrize("claim", [101, 1 << 30, 1 << 40, (1 << 64) - 1])
def test_zstd_claimed_content_size_is_checked_before_allocating(claim):
    """zstandard allocates the content size a frame header claims, whatever
    max_output_size says: 2^40 raised MemoryError (not DecodeError) from both decoders,
    2^30 made a 1 GiB buffer. Now a claim other than L is rejected first."""
    payload = _forged_zstd(claim)
    with pytest.raises(DecodeError):
        _bounded(lambda: decode_chunk(CODEC_ZSTD, payload, memoryview(bytearray(100))))
    with pytest.raises(_reference.ReferenceError):
        _bounded(lambda: _reference.decode_chunk(CODEC_ZSTD, payload, 100))
    assert check_codec(CODEC_ZSTD, payload, 100) == "rejected"


def test_zstd_claim_nested_in_blocks_masked_delta():
    """The same frame as a BLOCKS field stream, a MASKED mask and a DELTA residual."""
    z = _forged_zstd(1 << 40)
    blocks = struct.pack("<HBH", 1, 1, 1) + struct.pack("<BI", 2, len(z)) + z
    masked = struct.pack("<BBHIBIB", 1, 0, 0, 1, 2, len(z), 0) + z + b"\x01"
    delta = struct.pack("<BBBBQ", 0, 1, CODEC_ZSTD, 0, 0) + z
    for codec, payload in ((CODEC_BLOCKS, blocks), (CODEC_MASKED, masked), (CODEC_DELTA, delta)):
        assert _bounded(lambda: check_codec(codec, payload, 100, bytes(100))) == "rejected"


def test_masked_without_nonzero_values_agrees_with_reference():
    """k = 0 with the values sub-codec PLANES: the kernel took an empty PLANES payload for
    0 bytes and refused a header-only one; the reference the other way round. FORMAT.md
    now says the PLANES payload of 0 bytes is empty; both decoders follow it."""
    head = struct.Struct("<BBHIBIB")
    mask = bytes([1, 0, 2]) + struct.pack("<I", 1) + b"\0"     # PLANES: one CONST 0 plane
    empty = head.pack(2, 0, 0, 0, 1, len(mask), 1) + mask
    header_only = empty + bytes([1, 0, 0]) + struct.pack("<I", 0)
    assert check_codec(CODEC_MASKED, empty, 4096) == "ok"
    out = bytearray(b"\xff" * 4096)
    decode_chunk(CODEC_MASKED, empty, memoryview(out))
    assert out == bytes(4096)
    assert check_codec(CODEC_MASKED, header_only, 4096) == "rejected"


def test_codec_fields_cover_nested_headers(payloads):
    """The field editor reaches inner headers (DELTA's inner payload, MASKED's two
    sub-payloads, BLOCKS' streams), not just the outer one."""
    for s in payloads["seeds"]:
        fields = codec_fields(s.codec, s.payload)
        if s.codec == CODEC_DELTA:
            assert any(off >= 12 for off, _ in fields), s.name
        if s.codec == CODEC_MASKED and s.payload[8] in (1, 2):
            assert any(off >= 14 for off, _ in fields), s.name

