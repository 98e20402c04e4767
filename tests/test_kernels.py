"""The Cython kernels on their own: rANS streams and PLANES payloads round-trip bit-exactly,
and hostile input (truncated, bit-flipped, forged headers) gives KernelError, never a crash
and never an out-of-bounds read or write."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fpfs import _kernels
from tests.simd import each_kernel, restore_kernel  # noqa: F401  (autouse fixture)
from fpfs._kernels import (KernelError, decode_planes_into, planes_payload,
                           normalized_freqs, rans_decode_bytes, rans_encode_bytes)

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
LAYOUTS = [(1, 0), (2, 0), (2, 1), (2, 7), (2, 15), (4, 0), (4, 1), (4, 9), (4, 31),
           (8, 0), (8, 1), (8, 13), (8, 63)]


# -- helpers -------------------------------------------------------------------------------
def skewed(rng: np.random.Generator, n: int, alphabet: int = 16, scale: float = 1.5) -> bytes:
    """n bytes drawn from a geometric-like distribution over `alphabet` random symbols."""
    symbols = rng.permutation(256)[:alphabet].astype(np.uint8)
    weights = np.exp(-np.arange(alphabet) / scale)
    return symbols[rng.choice(alphabet, size=n, p=weights / weights.sum())].tobytes()


def encode_planes(data: bytes, width: int, rot: int, cap: int = None) -> bytes:
    """A PLANES payload; with a roomy cap the encoder always writes one (RAW planes at worst)."""
    cap = cap if cap is not None else 2 * len(data) + 64
    scratch = np.empty(max(len(data), 1), dtype=np.uint8)
    return planes_payload(data, width, rot, scratch, cap=cap) or b""


def decode_planes(payload: bytes, n: int) -> bytes:
    out = np.empty(n, dtype=np.uint8)
    # Poison the output: a decoder that leaves bytes unwritten would be caught.
    out.fill(0xA5)
    scratch = np.full(max(n, 1), 0x5A, dtype=np.uint8)
    decode_planes_into(payload, out, scratch)
    return out.tobytes()


def rotl(values: np.ndarray, bits: int, rot: int) -> np.ndarray:
    if rot == 0:
        return values
    return (values << values.dtype.type(rot)) | (values >> values.dtype.type(bits - rot))


def try_decode(stream: bytes, n: int):
    """rans_decode_bytes or KernelError; anything else (a crash, another exception) fails."""
    try:
        out = rans_decode_bytes(stream, n)
    except KernelError:
        return None
    assert len(out) == n
    return out


def try_decode_planes(payload: bytes, n: int):
    try:
        out = decode_planes(payload, n)
    except KernelError:
        return None
    assert len(out) == n
    return out


# -- rANS streams --------------------------------------------------------------------------
@SETTINGS
@given(st.binary(min_size=0, max_size=5000))
def test_rans_random_bytes_roundtrip(data):
    stream = rans_encode_bytes(data)
    assert len(stream) < max(len(data), 1)        # b'' (does not pay) or strictly smaller
    if stream:
        assert rans_decode_bytes(stream, len(data)) == data


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 20000),
       alphabet=st.integers(1, 256), scale=st.floats(0.05, 50.0))
def test_rans_skewed_roundtrip(seed, n, alphabet, scale):
    data = skewed(np.random.default_rng(seed), n, alphabet, scale)
    stream = rans_encode_bytes(data)
    if stream:
        assert rans_decode_bytes(stream, n) == data


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 33, 255, 1001, 4097, 65537])
def test_rans_lengths(n):
    rng = np.random.default_rng(n)
    data = skewed(rng, n, alphabet=4, scale=0.7)
    stream = rans_encode_bytes(data)
    if n == 0:
        assert stream == b"" and rans_decode_bytes(b"", 0) == b""
        return
    if n >= 64:                     # long enough for the table and states to pay off
        assert stream
    if stream:
        assert rans_decode_bytes(stream, n) == data


@pytest.mark.parametrize("n", [100, 1000, 4096, 100003])
@pytest.mark.parametrize("symbol", [0, 1, 127, 255])
def test_rans_single_symbol(n, symbol):
    data = bytes([symbol]) * n
    stream = rans_encode_bytes(data)
    assert stream and len(stream) < 80          # one symbol of frequency 4096 costs ~nothing
    assert rans_decode_bytes(stream, n) == data


@pytest.mark.parametrize("p", [0.5, 0.1, 0.001])
def test_rans_two_symbols(p):
    rng = np.random.default_rng(7)
    n = 50000
    data = np.where(rng.random(n) < p, 200, 3).astype(np.uint8).tobytes()
    stream = rans_encode_bytes(data)
    assert stream
    assert rans_decode_bytes(stream, n) == data
    h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    # within a few percent of the entropy plus header (not a tight bound, just "it codes")
    assert len(stream) <= n * h / 8 * 1.05 + 100


def test_rans_all_256_symbols_present():
    """Dense (non-sparse) frequency table: every byte value occurs, distribution skewed."""
    rng = np.random.default_rng(3)
    data = np.concatenate([np.arange(256, dtype=np.uint8),
                           np.frombuffer(skewed(rng, 30000, 8, 1.0), dtype=np.uint8)])
    rng.shuffle(data)
    data = data.tobytes()
    stream = rans_encode_bytes(data)
    assert stream and not (stream[0] & 0x10)      # table flag: dense
    assert rans_decode_bytes(stream, len(data)) == data


def test_rans_extreme_skew_all_symbols():
    """255 symbols seen once, one seen 10^6 times: frequencies clamp to >= 1 and still sum."""
    data = bytearray(b"\x00" * 1_000_000)
    data[::3922] = bytes(range(1, 256)) + bytes(len(data[::3922]) - 255)
    data = bytes(data)
    assert len(set(data)) == 256
    freqs = normalized_freqs(data)
    assert sum(freqs) == 4096 and min(freqs) >= 1
    stream = rans_encode_bytes(data)
    assert stream
    assert rans_decode_bytes(stream, len(data)) == data


def _stream(seed=11, n=3001, alphabet=12, scale=2.0):
    data = skewed(np.random.default_rng(seed), n, alphabet, scale)
    stream = rans_encode_bytes(data)
    assert stream
    return data, stream


@pytest.mark.parametrize("n,alphabet", [(121, 1), (161, 1), (250, 2), (1003, 3), (3001, 5),
                                        (4097, 200)])
def test_rans_truncation_at_every_prefix(n, alphabet):
    # (table and states cost ~40 bytes, so short inputs are left raw: no stream to cut)
    data, stream = _stream(n=n, alphabet=alphabet, scale=0.8)
    for cut in range(len(stream)):
        with pytest.raises(KernelError):
            rans_decode_bytes(stream[:cut], n)


def test_rans_trailing_bytes_rejected():
    data, stream = _stream()
    for extra in (b"\x00", b"\xff" * 3, b"\x00" * 64):
        with pytest.raises(KernelError):
            rans_decode_bytes(stream + extra, len(data))


def test_rans_wrong_length_never_crashes():
    data, stream = _stream()
    for n in (1, 15, 16, 17, len(data) - 1, len(data) + 1, 2 * len(data), 10**6):
        try_decode(stream, n)
    with pytest.raises(ValueError):
        rans_decode_bytes(stream, -1)


def test_rans_every_byte_flip_never_crashes():
    data, stream = _stream(n=700)
    for pos in range(len(stream)):
        for mask in (0x01, 0x80, 0xFF):
            bad = bytearray(stream)
            bad[pos] ^= mask
            try_decode(bytes(bad), len(data))


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), flips=st.lists(
    st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=8))
def test_rans_random_flips_never_crash(seed, flips):
    data, stream = _stream(seed=seed, n=1000 + seed % 3000, alphabet=1 + seed % 40)
    bad = bytearray(stream)
    for pos, mask in flips:
        bad[pos % len(bad)] ^= mask
    try_decode(bytes(bad), len(data))


@SETTINGS
@given(st.binary(min_size=0, max_size=300), st.integers(0, 5000))
def test_rans_garbage_streams_never_crash(stream, n):
    if n == 0:
        assert rans_decode_bytes(stream, 0) == b""
    else:
        try_decode(stream, n)


def test_rans_forged_tables_rejected():
    """Frequency tables that cannot be valid: reserved flag bits, k > 12, base 0,
    dense table claiming fewer than 256 symbols, frequencies summing past 4096."""
    _, stream = _stream()
    for head in (b"\xe0", b"\x0d", b"\x1f"):             # reserved bits; k = 13; k = 15
        with pytest.raises(KernelError):
            rans_decode_bytes(head + stream[1:], 3001)
    with pytest.raises(KernelError):
        rans_decode_bytes(stream[:1] + b"\x00" + stream[2:], 3001)   # base 0
    with pytest.raises(KernelError):                     # dense but present = 200
        rans_decode_bytes(b"\x00\x01\xc7" + b"\xff" * 200, 100)
    # sparse, base 255, k 0: EG0 values all zero (single '1' bits) -> 255 + 255 + ... > 4096
    with pytest.raises(KernelError):
        rans_decode_bytes(b"\x10\xff\x20" + b"\xff" * 64, 100)
    for tiny in (b"\x10", b"\x10\x01", b"\x10\x01\x00"):
        with pytest.raises(KernelError):
            rans_decode_bytes(tiny, 10)


def test_rans_forged_state_rejected():
    """A lane state outside [2^24, 2^56) is rejected before decoding."""
    data = b"\x07" * 1000
    stream = rans_encode_bytes(data)
    # single-symbol table: 3 bytes (k|sparse, base, present-1) + gap bits; find the states
    # by re-encoding the lens field: set all lanes to 4-byte states of value 0.
    tbl_end = len(stream) - 2 - 8 * 4
    forged = stream[:tbl_end] + b"\x00\x00" + b"\x00" * 32
    assert len(forged) == len(stream)
    with pytest.raises(KernelError, match="state"):
        rans_decode_bytes(forged, 1000)
    # 7-byte states of 2^56 - 1: in range, but not where the encoder started
    wrong = stream[:tbl_end] + b"\xff\xff" + b"\xff" * 56
    with pytest.raises(KernelError, match="state"):
        rans_decode_bytes(wrong, 1000)


# -- normalized frequencies ----------------------------------------------------------------
@SETTINGS
@given(st.binary(min_size=1, max_size=3000))
def test_normalized_freqs_random(data):
    freqs = normalized_freqs(data)
    counts = np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256)
    assert len(freqs) == 256 and sum(freqs) == 4096
    for c, f in zip(counts, freqs):
        assert (f >= 1) if c else (f == 0)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 100000),
       alphabet=st.integers(1, 256), scale=st.floats(0.01, 100.0))
def test_normalized_freqs_skewed(seed, n, alphabet, scale):
    data = skewed(np.random.default_rng(seed), n, alphabet, scale)
    freqs = normalized_freqs(data)
    counts = np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256)
    assert sum(freqs) == 4096
    assert all((f >= 1) if c else (f == 0) for c, f in zip(counts, freqs))


def test_normalized_freqs_edge_cases():
    assert normalized_freqs(b"") == [0] * 256
    one = normalized_freqs(b"\x09")
    assert one[9] == 4096 and sum(one) == 4096
    flat = normalized_freqs(bytes(range(256)) * 3)
    assert flat == [16] * 256


# -- PLANES payloads -----------------------------------------------------------------------
@SETTINGS
@given(data=st.binary(min_size=0, max_size=4096), layout=st.sampled_from(LAYOUTS))
def test_planes_random_roundtrip(data, layout):
    width, rot = layout
    data = data[:len(data) - len(data) % width]
    payload = encode_planes(data, width, rot)
    if not data:
        assert payload == b""
        decode_planes(b"", 0)
        return
    assert payload[:2] == bytes([width, rot])
    assert decode_planes(payload, len(data)) == data


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), elements=st.integers(1, 5000),
       layout=st.sampled_from(LAYOUTS), alphabet=st.integers(1, 64))
def test_planes_float_like_roundtrip(seed, elements, layout, alphabet):
    """Skewed top byte (like an exponent), random low bytes, one constant byte plane."""
    width, rot = layout
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 256, size=(elements, width), dtype=np.uint8)
    values[:, -1] = np.frombuffer(skewed(rng, elements, alphabet), dtype=np.uint8)
    if width > 2:
        values[:, 1] = 0x3C
    data = values.tobytes()
    payload = encode_planes(data, width, rot)
    assert decode_planes(payload, len(data)) == data
    # the codec's own cap (len(data)): either 0 (store raw) or a payload that decodes
    tight = encode_planes(data, width, rot, cap=len(data))
    assert len(tight) < len(data)
    if tight:
        assert decode_planes(tight, len(data)) == data


@pytest.mark.parametrize("width,rot", [(2, 1), (4, 1), (8, 1), (2, 3), (4, 17), (8, 40)])
def test_planes_rotation_puts_top_bits_first(width, rot):
    """The first plane is the most significant byte of each element rotated left by rot."""
    rng = np.random.default_rng(width * 100 + rot)
    dt = {2: np.uint16, 4: np.uint32, 8: np.uint64}[width]
    values = rng.integers(0, np.iinfo(dt).max, size=2000, dtype=dt, endpoint=True)
    top = (rotl(values, 8 * width, rot) >> dt(8 * width - 8)).astype(np.uint8)
    top = top % 4                          # make plane 0 compressible, so it is RANS-coded
    # rebuild values whose rotated top byte is `top`, keeping the other bits
    rotated = rotl(values, 8 * width, rot) & ~(dt(0xFF) << dt(8 * width - 8))
    rotated |= top.astype(dt) << dt(8 * width - 8)
    values = rotl(rotated, 8 * width, (8 * width - rot) % (8 * width))
    data = values.astype("<" + np.dtype(dt).str[1:]).tobytes()
    payload = encode_planes(data, width, rot)
    assert payload[2] == 3                 # plane 0 coded with rANS32
    (length,) = struct.unpack_from("<I", payload, 3)
    stream = payload[2 + 5 * width:2 + 5 * width + length]
    assert rans_decode_bytes(stream, len(values), 3) == top.tobytes()
    assert decode_planes(payload, len(data)) == data


@pytest.mark.parametrize("width", [1, 2, 4, 8])
def test_planes_constant_and_tiny(width):
    for n in (1, 2, 3, 17, 1000):
        data = b"\x42" * (n * width)
        payload = encode_planes(data, width, 0)
        assert decode_planes(payload, len(data)) == data
        if n >= 2:
            assert all(payload[2 + 5 * j] == 2 for j in range(width))   # all CONST
    data = bytes(range(width))
    assert decode_planes(encode_planes(data, width, 0), width) == data


def test_planes_incompressible_returns_zero_with_tight_cap():
    data = np.random.default_rng(0).integers(0, 256, 8192, dtype=np.uint8).tobytes()
    for width in (1, 2, 4, 8):
        assert encode_planes(data, width, 1 if width > 1 else 0, cap=len(data)) == b""


def test_planes_argument_validation():
    scratch = np.empty(64, dtype=np.uint8)
    for width, rot in ((3, 0), (0, 0), (16, 0), (2, 16), (1, 8), (4, -1)):
        with pytest.raises(ValueError):
            planes_payload(b"\x00" * 48, width, rot, scratch)
    with pytest.raises(ValueError):
        planes_payload(b"\x00" * 7, 2, 0, scratch)                   # not whole elements
    with pytest.raises(ValueError):
        planes_payload(b"\x00" * 128, 1, 0, scratch)                 # scratch too small
    assert planes_payload(b"", 4, 0, scratch) is None
    assert planes_payload(b"\x00" * 16, 2, 0, scratch, cap=0) is None
    out = np.empty(128, dtype=np.uint8)
    with pytest.raises(ValueError):
        decode_planes_into(b"\x01\x00", out, scratch)                # scratch too small
    with pytest.raises(KernelError):
        decode_planes_into(b"\x01", out[:0], scratch)                # payload for n = 0
    with pytest.raises(KernelError):
        decode_planes_into(b"", out[:8], scratch)


def _plane_header(width, rot, entries):
    return bytes([width, rot]) + b"".join(struct.pack("<BI", m, ln) for m, ln in entries)


def test_planes_forged_headers_rejected():
    n = 64
    bad = [
        _plane_header(3, 0, [(0, n)] * 3) + b"\x00" * (3 * n),            # width 3
        _plane_header(2, 16, [(0, n // 2)] * 2) + b"\x00" * n,           # rot too big
        _plane_header(2, 0, [(0, n // 2), (0, n // 2 + 1)]) + b"\x00" * (n + 1),  # RAW len
        _plane_header(2, 0, [(2, 2), (0, n // 2)]) + b"\x00" * (n // 2 + 2),      # CONST len
        _plane_header(2, 0, [(3, 1), (0, n // 2)]) + b"\x00" * (n // 2 + 1),      # mode 3
        _plane_header(2, 0, [(1, 0xFFFFFFFF), (1, 0xFFFFFFFF)]) + b"\x00" * 40,   # huge RANS
        _plane_header(8, 0, [(1, 0x7FFFFFFF)] * 8) + b"\x00" * 10,       # lengths overflow
        _plane_header(2, 0, [(0, n // 2), (0, n // 2)]) + b"\x00" * (n - 1),      # short
        _plane_header(2, 0, [(0, n // 2), (0, n // 2)]) + b"\x00" * (n + 1),      # long
        _plane_header(2, 0, [(0, n // 2)]),                               # entries cut
        b"\x02",
        _plane_header(1, 0, [(0, n)]) + b"\x00" * n,    # fine for n, but asked for n + 1
    ]
    for payload in bad[:-1]:
        with pytest.raises(KernelError):
            decode_planes(payload, n)
    with pytest.raises(KernelError):
        decode_planes(bad[-1], n + 1)
    with pytest.raises(KernelError):                       # n not a multiple of width
        decode_planes(_plane_header(4, 0, [(2, 1)] * 4) + b"\x00" * 4, 10)


def test_planes_truncation_at_every_prefix():
    rng = np.random.default_rng(5)
    values = np.frombuffer(skewed(rng, 1600, 6, 1.0), dtype=np.uint8).reshape(-1, 4).copy()
    values[:, 0] = rng.integers(0, 256, len(values))
    data = values.tobytes()
    payload = encode_planes(data, 4, 1)
    for cut in range(len(payload)):
        with pytest.raises(KernelError):
            decode_planes(payload[:cut], len(data))


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), layout=st.sampled_from(LAYOUTS),
       flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)),
                      min_size=1, max_size=4))
def test_planes_random_flips_never_crash(seed, layout, flips):
    width, rot = layout
    rng = np.random.default_rng(seed)
    data = skewed(rng, 512 * width, 1 + seed % 30, 2.0)
    payload = bytearray(encode_planes(data, width, rot))
    for pos, mask in flips:
        payload[pos % len(payload)] ^= mask
    try_decode_planes(bytes(payload), len(data))


@SETTINGS
@given(st.binary(min_size=0, max_size=400), st.sampled_from([1, 2, 4, 8, 16, 100, 4096]))
def test_planes_garbage_never_crashes(payload, n):
    try_decode_planes(payload, n)


def test_kernel_error_is_value_error():
    assert issubclass(KernelError, ValueError)
    assert _kernels.KernelError is KernelError


def test_libfuzzer_regressions_are_rejected():
    """Inputs libFuzzer + ASan found against the plain-C decoders (fuzz/libfuzzer/) must be
    clean rejections. planes-table-past-255: a sparse rANS table whose symbols reached 255
    before the last one made the gap check wrap around and wrote past freqs[256]."""
    import glob
    import os
    paths = glob.glob(os.path.join(os.path.dirname(__file__), "regressions", "planes-*"))
    assert paths
    for path in paths:
        data = open(path, "rb").read()
        n = int.from_bytes(data[:3], "little") & 0xFFFFF
        with pytest.raises(_kernels.KernelError):
            _kernels.decode_planes_into(data[3:], bytearray(n), bytearray(n))


# -- repeated_words: what decides whether zstd is tried on one-byte chunks ------------------
def repeated_words_reference(data: bytes) -> int:
    table = [0] * 4096
    hits = 0
    for i in range(len(data) // 8):
        w = int.from_bytes(data[8 * i:8 * i + 8], "little")
        h = ((w * 0x9E3779B97F4A7C15) & (2**64 - 1)) >> 52
        hits += table[h] == w
        table[h] = w
    return hits


@SETTINGS
@given(st.binary(max_size=4096), st.integers(0, 7))
def test_repeated_words_matches_reference(data, repeats):
    data = data + data[:8 * repeats] * repeats       # some exact repeats too
    assert _kernels.repeated_words(data) == repeated_words_reference(data)


def test_repeated_words_sees_repeats_not_skew():
    rng = np.random.default_rng(7)
    # skewed like FP8 weights (about 6 bits per byte): 48-bit words do not repeat
    assert _kernels.repeated_words(skewed(rng, 1 << 18, alphabet=128, scale=20)) == 0
    row = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
    assert _kernels.repeated_words(row * 100) == 99 * 8
    assert _kernels.repeated_words(bytes(4096)) == 512
    assert _kernels.repeated_words(b"1234567") == 0


# -- MASKED's scatter ----------------------------------------------------------------------
@SETTINGS
@given(st.sampled_from([1, 2, 4, 8]), st.integers(0, 2100), st.floats(0.0, 1.0),
       st.integers(0, 2**32 - 1))
def test_mask_expand_kernels_match_numpy(width, count, density, seed):
    """Every kernel (SIMD and portable) scatters the values where the mask bits are set and
    zeros elsewhere, for any element count (partial last groups of eight too), and refuses
    a mask whose bit count is not k."""
    rng = np.random.default_rng(seed)
    dtype = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[width]
    keep = rng.random(count) < density
    k = int(keep.sum())
    values = rng.integers(1, 255, k * width + _kernels.MASK_SLACK, dtype=np.uint8)
    expected = np.zeros(count, dtype=dtype)
    expected[keep] = values[:k * width].view(dtype)
    mask = np.packbits(keep, bitorder="little")
    for _ in each_kernel():
        out = np.full(count * width, 0xA5, dtype=np.uint8)      # poisoned
        if count:
            _kernels.mask_expand(out, mask, values, k, width)
        assert out.tobytes() == expected.tobytes()
        if k:
            with pytest.raises(KernelError):
                _kernels.mask_expand(out, mask, values, k - 1, width)
