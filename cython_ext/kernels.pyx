# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Hot loops of fpfs: byte-plane split/merge and interleaved rANS, all with the GIL released.

Python decides (fpfs/codecs), Cython loops (here). Every function validates its buffer
sizes before dropping the GIL; the decoders validate every table and length in the
payload before their unchecked inner loops.
"""

from cpython.ref cimport PyObject
from cpython.mem cimport PyMem_RawMalloc, PyMem_RawFree

include "rans.pxi"
include "planes.pxi"
include "expmant.pxi"
include "transforms.pxi"

import os as _os

# FPFS_SIMD=portable forces the portable decoders (CI runs the suite once that way);
# anything else (or unset) takes the best this CPU has.
fpfs_decode_init(0 if _os.environ.get("FPFS_SIMD", "").lower() in ("portable", "0", "off")
                 else -1)

_SIMD_NAMES = ("portable", "avx2")


def simd_kernel() -> str:
    """Which rANS32 decoder runs: 'portable' or 'avx2'."""
    return _SIMD_NAMES[fpfs_simd_level]


def set_simd_kernel(str name) -> str:
    """Use decoder `name` ('portable' or 'avx2') if this CPU has it, else the best it has;
    returns the one now in use. Not thread-safe: call before decoding (tests, benchmarks)."""
    fpfs_simd_init(_SIMD_NAMES.index(name))
    return simd_kernel()

_ERRORS = {
    ERR_TABLE: "malformed rANS frequency table",
    ERR_TRUNCATED: "rANS stream truncated",
    ERR_TRAILING: "rANS stream has trailing bytes",
    ERR_STATE: "rANS final state mismatch",
    ERR_LAYOUT: "inconsistent plane layout",
}


class KernelError(ValueError):
    """A payload failed validation in a decoder kernel."""


cdef _raise(int rc):
    raise KernelError(_ERRORS.get(rc, "kernel error %d" % rc))


def _check_width(int width, int rot):
    if width not in (1, 2, 4, 8):
        raise ValueError("width must be 1, 2, 4 or 8, not %d" % width)
    if not 0 <= rot < 8 * width or (width == 1 and rot):
        raise ValueError("rotation %d out of range for width %d" % (rot, width))


# Encoders return their payload as a new bytes object, written in place and shrunk to its
# size: no zero-filled buffer and no copy (a bytearray, trimmed and copied into bytes, cost
# 150-240 us per 256 KiB chunk here - page faults on two fresh buffers and the copy).
cdef extern from "Python.h":
    PyObject* _new_bytes "PyBytes_FromStringAndSize"(const char* v, Py_ssize_t n) except NULL
    int _PyBytes_Resize(PyObject** b, Py_ssize_t n) except -1
    char* _bytes_data "PyBytes_AS_STRING"(PyObject* b)
    void _decref "Py_DECREF"(PyObject* o)


# glibc serves blocks above its mmap threshold (128 KiB at start) with fresh mappings, and
# raises the threshold to the size of any mapped block freed. Encoder outputs are
# allocated at the chunk's size (256 KiB) and shrunk, so until some larger block is freed
# every one would be a new mapping whose pages fault in (on this VM often host faults:
# F32 compress 0.90 -> 0.63 GB/s in bench_codec). Freeing one 4 MiB block here raises the
# threshold as any larger temporary buffer would; other allocators ignore this.
PyMem_RawFree(PyMem_RawMalloc(4 << 20))


cdef object _payload(PyObject* out, Py_ssize_t size):
    """The first size bytes of out (a new bytes object nothing else refers to, consumed),
    or None for size 0 (the encoder found coding does not pay)."""
    if size == 0:
        _decref(out)
        return None
    _PyBytes_Resize(&out, size)          # shrinks in place; frees out if it raises
    result = <object>out
    _decref(out)
    return result


def planes_payload(const uint8_t[::1] src, int width, int rot, uint8_t[::1] scratch,
                   Py_ssize_t min_saving_ppm=0, int coder=PLANE_RANS32,
                   Py_ssize_t cap=-1):
    """A PLANES payload for src (bytes), or None if it would not be smaller than cap bytes
    (default len(src): store the chunk raw then). coder: the plane mode of coded planes,
    3 (rANS32, what fpfs writes) or 1 (the rANS of format versions 1 and 2)."""
    cdef Py_ssize_t n = src.shape[0], r
    _check_width(width, rot)
    if n % width:
        raise ValueError("%d bytes is not a whole number of %d-byte elements" % (n, width))
    if scratch.shape[0] < n:
        raise ValueError("scratch buffer too small")
    if not 0 <= min_saving_ppm <= 1000000:
        raise ValueError("min_saving_ppm must be within 0..1000000")
    if coder != PLANE_RANS and coder != PLANE_RANS32:
        raise ValueError("coder must be 1 or 3, not %d" % coder)
    cap = n if cap < 0 else cap
    if n == 0 or cap == 0:
        return None
    cdef PyObject* out = _new_bytes(NULL, cap)
    cdef uint8_t* dst = <uint8_t*>_bytes_data(out)
    with nogil:
        r = encode_planes(&src[0], n, width, rot, &scratch[0], dst, cap, min_saving_ppm, coder)
    return _payload(out, r)


def decode_planes_into(const uint8_t[::1] payload, uint8_t[::1] out, uint8_t[::1] scratch):
    """Decode a PLANES payload into all of out (its length is the chunk's original length)."""
    cdef int rc
    cdef Py_ssize_t n = out.shape[0]
    if scratch.shape[0] < n:
        raise ValueError("scratch buffer too small")
    if n == 0:
        if payload.shape[0] != 0:
            raise KernelError("payload for an empty chunk")
        return
    if payload.shape[0] == 0:
        _raise(ERR_LAYOUT)
    with nogil:
        rc = decode_planes(&payload[0], payload.shape[0], &out[0], n, &scratch[0])
    if rc != OK:
        _raise(rc)


def expmant_payload(const uint8_t[::1] src, uint8_t[::1] scratch):
    """An EXPMANT payload for src (BF16, an even number of bytes) as bytes, or None when the
    chunk does not fit the format's exponent window or the payload would not be smaller
    than src."""
    cdef Py_ssize_t n = src.shape[0], r
    if n % 2:
        raise ValueError("%d bytes is not a whole number of BF16 elements" % n)
    if scratch.shape[0] < n:
        raise ValueError("scratch buffer too small")
    if n == 0:
        return None
    cdef PyObject* out = _new_bytes(NULL, n)
    cdef uint8_t* dst = <uint8_t*>_bytes_data(out)
    with nogil:
        r = encode_expmant(&src[0], n, &scratch[0], dst, n)
    return _payload(out, r)


def decode_expmant_into(const uint8_t[::1] payload, uint8_t[::1] out, uint8_t[::1] scratch):
    """Decode an EXPMANT payload into all of out; scratch must hold len(out) // 2 bytes."""
    cdef int rc
    cdef Py_ssize_t n = out.shape[0]
    if scratch.shape[0] < n // 2:
        raise ValueError("scratch buffer too small")
    if n == 0 or payload.shape[0] == 0:
        _raise(ERR_LAYOUT)
    with nogil:
        rc = decode_expmant(&payload[0], payload.shape[0], &out[0], n, &scratch[0])
    if rc != OK:
        _raise(rc)


from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from libc.stdint cimport int64_t
from libc.errno cimport errno, EINTR

cdef extern from "<unistd.h>" nogil:
    Py_ssize_t pread(int fd, void* buf, size_t count, long long offset)


cdef enum:
    RUN_OK = 0
    RUN_SHORT = -100          # the file ended before a payload did
    RUN_IO = -101             # pread failed (errno kept)


def decode_chunks_from_fd(int fd, const int64_t[::1] offsets, const int64_t[::1] lengths,
                          const int64_t[::1] codecs, const int64_t[::1] sizes,
                          uint8_t[::1] out, uint8_t[::1] payload, uint8_t[::1] scratch):
    """Read and decode consecutive RAW (0), PLANES (1) or EXPMANT (6) chunks from a local
    container in one call without the GIL: chunk i's payload is lengths[i] bytes at
    offsets[i] of fd, its sizes[i] original bytes go to out, back to back. Returns (-1, 0, 0) when all decoded, else
    (i, code, errno) for the first chunk that failed: code a kernel error (see _ERRORS),
    RUN_SHORT (file truncated) or RUN_IO (errno). Checksums are the caller's."""
    cdef Py_ssize_t k = offsets.shape[0], i, pos = 0, got, r, total = 0, longest = 0, widest = 0
    cdef int rc = 0, err = 0
    if lengths.shape[0] != k or codecs.shape[0] != k or sizes.shape[0] != k:
        raise ValueError("chunk arrays differ in length")
    for i in range(k):
        if codecs[i] != 0 and codecs[i] != 1 and codecs[i] != 6:
            raise ValueError("only RAW, PLANES and EXPMANT chunks are decoded here")
        if lengths[i] <= 0 or sizes[i] <= 0 or offsets[i] < 0:
            raise ValueError("empty or negative chunk")
        total += sizes[i]
        longest = max(longest, lengths[i])
        widest = max(widest, sizes[i])
    if total > out.shape[0] or longest > payload.shape[0] or widest > scratch.shape[0]:
        raise ValueError("buffers too small for these chunks")
    i = 0
    with nogil:
        while i < k:
            got = 0
            while got < lengths[i]:
                r = pread(fd, &payload[got], <size_t>(lengths[i] - got), offsets[i] + got)
                if r < 0:
                    if errno == EINTR:
                        continue
                    err = errno
                    rc = RUN_IO
                    break
                if r == 0:
                    rc = RUN_SHORT
                    break
                got += r
            if rc != 0:
                break
            if codecs[i] == 0:
                if lengths[i] != sizes[i]:
                    rc = ERR_LAYOUT
                    break
                memcpy(&out[pos], &payload[0], <size_t>sizes[i])
            elif codecs[i] == 1:
                rc = decode_planes(&payload[0], lengths[i], &out[pos], sizes[i], &scratch[0])
                if rc != 0:
                    break
            else:
                rc = decode_expmant(&payload[0], lengths[i], &out[pos], sizes[i], &scratch[0])
                if rc != 0:
                    break
            pos += sizes[i]
            i += 1
    if rc == 0:
        return (-1, 0, 0)
    return (i, rc, err)


def run_error_message(int code) -> str:
    """What a code of decode_chunks_from_fd means."""
    if code == RUN_SHORT:
        return "file truncated"
    return _ERRORS.get(code, "kernel error %d" % code)

from cpython.memoryview cimport PyMemoryView_FromMemory
from cpython.buffer cimport PyBUF_WRITE
from libc.stdint cimport uintptr_t

cdef extern from "<sys/mman.h>" nogil:
    int madvise(void* addr, size_t length, int advice)
    int MADV_HUGEPAGE

cdef enum:
    HUGE_PAGE = 2 << 20


def bytes_for_writing(Py_ssize_t n):
    """(a new bytes object of n uninitialised bytes, a writable memoryview of them): read()
    decodes straight into the bytes it returns, with no zero-fill and no second copy. The
    caller fills all of it before the bytes object is shared, then drops the view. Large
    ones are backed by transparent huge pages where the kernel allows (one page fault per
    2 MiB instead of per 4 KiB: first-touch faults would cost a third of decode time)."""
    if n < 0:
        raise ValueError("negative size")
    out = PyBytes_FromStringAndSize(NULL, n)
    cdef char* p = PyBytes_AS_STRING(out)
    cdef uintptr_t start, end
    if n >= 2 * HUGE_PAGE:
        start = (<uintptr_t>p + HUGE_PAGE - 1) & ~(<uintptr_t>HUGE_PAGE - 1)
        end = (<uintptr_t>p + n) & ~(<uintptr_t>HUGE_PAGE - 1)
        if end > start:
            madvise(<void*>start, end - start, MADV_HUGEPAGE)   # advice only: errors ignored
    return out, PyMemoryView_FromMemory(p, n, PyBUF_WRITE)


def rans_encode_bytes(const uint8_t[::1] src, int coder=PLANE_RANS) -> bytes:
    """One rANS stream for src (for tests and the K/V API); b'' when coding does not pay.
    coder: 1 the 8-lane stream (FORMAT.md "rANS stream"), 3 rANS32."""
    cdef Py_ssize_t n = src.shape[0], r
    if coder != PLANE_RANS and coder != PLANE_RANS32:
        raise ValueError("coder must be 1 or 3, not %d" % coder)
    if n == 0:
        return b""
    cdef PyObject* out = _new_bytes(NULL, n)
    cdef uint8_t* dst = <uint8_t*>_bytes_data(out)
    with nogil:
        if coder == PLANE_RANS32:
            r = rans32_encode(&src[0], n, dst, n)
        else:
            r = rans_encode(&src[0], n, dst, n)
    stream = _payload(out, r)
    return b"" if stream is None else stream


def rans_decode_bytes(const uint8_t[::1] stream, Py_ssize_t n, int coder=PLANE_RANS) -> bytes:
    """Decode one rANS stream (coder 1) or rANS32 stream (coder 3) of exactly n symbols."""
    cdef int rc
    if coder != PLANE_RANS and coder != PLANE_RANS32:
        raise ValueError("coder must be 1 or 3, not %d" % coder)
    if n < 0:
        raise ValueError("negative length")
    if n == 0:
        return b""
    if stream.shape[0] == 0:
        _raise(ERR_TRUNCATED)
    # Decode straight into a fresh (not yet shared) bytes object: no zero-fill, no copy.
    out = PyBytes_FromStringAndSize(NULL, n)
    cdef uint8_t* o = <uint8_t*>PyBytes_AS_STRING(out)
    with nogil:
        if coder == PLANE_RANS32:
            rc = rans32_decode(&stream[0], stream.shape[0], o, n)
        else:
            rc = rans_decode(&stream[0], stream.shape[0], o, n)
    if rc != OK:
        _raise(rc)
    return out


def normalized_freqs(const uint8_t[::1] src) -> list:
    """The 12-bit frequencies the encoder would use for src (for tests and stats)."""
    cdef uint32_t counts[256]
    cdef uint32_t freqs[256]
    if src.shape[0] == 0:
        return [0] * 256
    histogram(&src[0], src.shape[0], counts)
    normalize_freqs(counts, src.shape[0], freqs)
    return [freqs[i] for i in range(256)]


def delta_apply(uint8_t[::1] out, const uint8_t[::1] base, int transform, int width):
    """out := base combined with the residual in out (DELTA: 0 XOR, 1 SUB of zigzag
    w-byte elements)."""
    cdef Py_ssize_t n = out.shape[0]
    cdef int rc
    if base.shape[0] != n:
        raise ValueError("base and residual differ in length")
    if n == 0:
        return
    with nogil:
        rc = fpfs_delta_apply(&out[0], &base[0], n, transform, width)
    if rc != OK:
        raise ValueError("bad delta transform")


MASK_SLACK = FPFS_MASK_SLACK    # bytes mask_expand may read past the last value


def mask_expand(uint8_t[::1] out, const uint8_t[::1] mask, const uint8_t[::1] values,
                Py_ssize_t k, int width):
    """MASKED: scatter the k values (w bytes each) into out where mask bits are set, zeros
    elsewhere. values must hold k * w + MASK_SLACK bytes. Raises KernelError unless the
    mask has exactly k bits set, none past the element count."""
    cdef Py_ssize_t n = out.shape[0], count
    cdef int rc
    if width not in (1, 2, 4, 8) or n % width:
        raise ValueError("bad element width")
    count = n // width
    if mask.shape[0] != (count + 7) // 8 or k < 0 or values.shape[0] < k * width + MASK_SLACK:
        raise ValueError("mask or values of the wrong size")
    if count == 0:
        return
    with nogil:
        rc = fpfs_mask_expand(&out[0], &mask[0], &values[0], count, k, width)
    if rc != OK:
        raise KernelError("masked payload: bitmap does not match its count")


cdef enum:
    REPEAT_HASH_BITS = 12


def repeated_words(const uint8_t[::1] src) -> int:
    """How many of src's aligned 8-byte words equal the last earlier word with the same
    12-bit hash: exact repeats, which zstd's matches code and an order-0 coder cannot. Bytes
    that only share a skewed histogram (any weight tensor) repeat no 64-bit word; K/V rows
    of repeated tokens do. About 8 GB/s, so encoders can ask before paying for a zstd run."""
    cdef Py_ssize_t nwords = src.shape[0] // 8, i, hits = 0
    cdef uint64_t table[1 << REPEAT_HASH_BITS]
    cdef uint64_t w
    cdef uint32_t h
    if nwords == 0:
        return 0
    with nogil:
        memset(table, 0, sizeof(table))
        for i in range(nwords):
            memcpy(&w, &src[8 * i], 8)
            h = <uint32_t>((w * <uint64_t>0x9E3779B97F4A7C15) >> (64 - REPEAT_HASH_BITS))
            # word 0 in an empty slot counts as a repeat: all-zero words are repeats too
            hits += table[h] == w
            table[h] = w
    return hits
