"""The rANS32 stream (plane mode 3, format version 3) and the SIMD kernels: every decoder
(portable C, AVX2 where the CPU has it) gives the reference decoder's bytes on valid
streams and an error wherever the reference reports one; hostile streams never crash."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fpfs import _kernels, _reference
from fpfs._kernels import KernelError, rans_decode_bytes, rans_encode_bytes
from tests.simd import each_kernel, restore_kernel  # noqa: F401 (autouse fixture)

RANS32 = 3
SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])




def skewed(rng: np.random.Generator, n: int, alphabet: int = 16, scale: float = 1.5) -> bytes:
    symbols = rng.permutation(256)[:alphabet].astype(np.uint8)
    weights = np.exp(-np.arange(alphabet) / scale)
    return symbols[rng.choice(alphabet, size=n, p=weights / weights.sum())].tobytes()


def outcome(decode, stream: bytes, n: int):
    """The decoded bytes, or 'error' (KernelError / ReferenceError)."""
    try:
        return decode(stream, n)
    except (KernelError, _reference.ReferenceError):
        return "error"


def agree(stream: bytes, n: int):
    """Every kernel and the reference give the same outcome; returns it."""
    expected = outcome(_reference.rans32_decode, stream, n)
    for name in each_kernel():
        got = outcome(lambda s, k: rans_decode_bytes(s, k, RANS32), stream, n)
        assert got == expected, name
    return expected


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 6000),
       alphabet=st.integers(1, 256), scale=st.floats(0.05, 50.0))
def test_roundtrip_matches_reference(seed, n, alphabet, scale):
    data = skewed(np.random.default_rng(seed), n, alphabet, scale)
    stream = rans_encode_bytes(data, RANS32)
    assert len(stream) < n or not stream
    if stream:
        assert agree(stream, n) == data


def encodings(data: bytes):
    """{kernel: the rANS32 stream its encoder writes} for every encoder this CPU has."""
    return {name: rans_encode_bytes(data, RANS32) for name in each_kernel()}


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 20000),
       alphabet=st.integers(1, 256), scale=st.floats(0.05, 50.0))
def test_simd_encoder_writes_the_scalar_bytes(seed, n, alphabet, scale):
    """The AVX2 encoder steps (float quotient, corrected) write exactly the scalar
    encoder's stream, so a file's bytes never depend on the CPU that wrote it."""
    data = skewed(np.random.default_rng(seed), n, alphabet, scale)
    streams = encodings(data)
    assert len(set(streams.values())) == 1, {k: len(v) for k, v in streams.items()}


@pytest.mark.parametrize("cap_slack", [0, 1, 2, 63, 64, 65, 80, 81, 150, 400])
def test_simd_encoder_gives_up_where_the_scalar_one_does(cap_slack):
    """Room for the stream only just there (or not): the AVX2 steps stop 80 bytes short of
    the limit and leave the rest to the scalar loop, which decides exactly as before."""
    from fpfs._kernels import planes_payload
    data = np.frombuffer(skewed(np.random.default_rng(3), 8192, 40, 6.0), np.uint8)
    full = rans_encode_bytes(data.tobytes(), RANS32)
    results = set()
    for name in each_kernel():
        # plane payload: 2 + 5 header bytes, then the stream; cap just around its size
        results.add(planes_payload(data, 1, 0, np.empty(8192, np.uint8), 0, RANS32,
                                   cap=7 + len(full) + cap_slack - 40))
    assert len(results) == 1


@pytest.mark.parametrize("n", [300, 319, 320, 321, 351, 352, 353, 1000, 4095, 4096, 4097,
                               65535, 65536, 131072, 262143])
def test_lengths_around_steps(n):
    """Whole steps of 32, the padded tail of the last < 64 bytes, the partial last step
    (low-entropy data, so that even 300 bytes pay for the 128 bytes of states)."""
    data = skewed(np.random.default_rng(n), n, alphabet=3, scale=0.3)
    stream = rans_encode_bytes(data, RANS32)
    assert stream
    for _ in each_kernel():
        assert rans_decode_bytes(stream, n, RANS32) == data


def test_real_bf16_exponents_like_plane():
    """A skewed 256 KiB plane (BF16 exponents have ~2.6 bits of entropy)."""
    data = skewed(np.random.default_rng(5), 1 << 17, alphabet=40, scale=3.0)
    stream = rans_encode_bytes(data, RANS32)
    legacy = rans_encode_bytes(data, 1)
    assert len(stream) < len(legacy) + 100          # 32 states cost ~90 bytes more
    for _ in each_kernel():
        assert rans_decode_bytes(stream, len(data), RANS32) == data


def test_single_symbol_is_not_coded():
    """A frequency of 4096 does not fit the decode table: such a plane is stored CONST."""
    assert rans_encode_bytes(b"\x07" * 5000, RANS32) == b""


def test_forged_full_frequency_rejected():
    # sparse table (k 0, base 1) of one present symbol: gap EG0(7) = bits 0001000, LSB
    # first 0x08; its implied frequency is 4096
    stream = bytes([0x10, 1, 0, 0x08]) + (0x10000).to_bytes(4, "little") * 32
    assert _reference.read_freq_table(stream)[0][7] == 4096
    assert agree(stream, 100) == "error"


def test_truncation_at_every_prefix():
    data = skewed(np.random.default_rng(1), 3001, alphabet=5, scale=0.8)
    stream = rans_encode_bytes(data, RANS32)
    for cut in range(len(stream)):
        assert agree(stream[:cut], len(data)) == "error"


def test_trailing_bytes_and_wrong_lengths():
    data = skewed(np.random.default_rng(2), 5000)
    stream = rans_encode_bytes(data, RANS32)
    for extra in (b"\x00", b"\xff" * 3, b"\x00" * 64, b"\x00" * 200):
        assert agree(stream + extra, len(data)) == "error"
    for n in (1, 31, 32, 33, len(data) - 1, len(data) + 1, 2 * len(data)):
        agree(stream, n)


def test_forged_states_rejected():
    data = skewed(np.random.default_rng(3), 4000)
    stream = bytearray(rans_encode_bytes(data, RANS32))
    _, pos = _reference.read_freq_table(bytes(stream))      # the states follow the table
    for lane in (0, 7, 8, 31):
        bad = bytearray(stream)
        bad[pos + 4 * lane:pos + 4 * lane + 4] = (0xFFFF).to_bytes(4, "little")  # < 2^16
        assert agree(bytes(bad), len(data)) == "error"


def test_every_byte_flip_agrees():
    data = skewed(np.random.default_rng(4), 700, alphabet=6)
    stream = rans_encode_bytes(data, RANS32)
    for pos in range(len(stream)):
        for mask in (0x01, 0x80, 0xFF):
            bad = bytearray(stream)
            bad[pos] ^= mask
            agree(bytes(bad), len(data))


@SETTINGS
@given(st.binary(min_size=0, max_size=400), st.integers(1, 3000))
def test_garbage_streams_agree(stream, n):
    agree(stream, n)


def test_planes_payloads_of_both_stream_kinds_decode():
    """PLANES payloads with mode 1 (format versions 1-2) and mode 3 planes, every kernel."""
    rng = np.random.default_rng(9)
    values = (rng.normal(0, 0.02, 40000).astype(np.float32)).tobytes()
    for coder in (1, RANS32):
        payload = _kernels.planes_payload(values, 4, 1, np.empty(len(values), np.uint8), 0,
                                          coder, cap=2 * len(values))
        assert coder in payload[2:2 + 5 * 4:5]
        assert _reference.decode_planes(payload, len(values)) == values
        for _ in each_kernel():
            out = np.empty(len(values), np.uint8)
            _kernels.decode_planes_into(payload, out, np.empty(len(values), np.uint8))
            assert out.tobytes() == values


@pytest.mark.parametrize("width,rot", [(2, 0), (2, 1), (2, 9), (4, 0), (4, 1), (4, 23)])
@pytest.mark.parametrize("n", [1, 31, 32, 33, 1000])
def test_simd_merges_match_portable(width, rot, n):
    data = np.random.default_rng(n + width).integers(0, 256, n * width, dtype=np.uint8).tobytes()
    payload = _kernels.planes_payload(data, width, rot, np.empty(len(data), np.uint8),
                                      cap=2 * len(data) + 64)
    for _ in each_kernel():
        out = np.full(len(data), 0xA5, np.uint8)
        _kernels.decode_planes_into(payload, out, np.empty(len(data), np.uint8))
        assert out.tobytes() == data


def test_set_simd_kernel_falls_back():
    assert _kernels.set_simd_kernel("portable") == "portable"
    assert _kernels.simd_kernel() == "portable"
    assert _kernels.set_simd_kernel("avx2") in ("avx2", "portable")
    with pytest.raises(ValueError):
        _kernels.set_simd_kernel("avx1024")


def test_environment_forces_the_portable_kernel():
    """FPFS_SIMD=portable (what CI's second run sets) is read at import."""
    import subprocess
    import sys
    code = "import fpfs._kernels as k; print(k.simd_kernel())"
    env = dict(__import__("os").environ, FPFS_SIMD="portable")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "portable"
