# Interleaved static rANS over bytes: 8 lanes, 64-bit states, 32-bit renormalisation once per
# PAIR of symbols per lane, 12-bit probabilities.  The byte layout is specified in
# FORMAT.md, "rANS stream".
#
# Why these constants: states live in [2^24, 2^56).  Decoding one symbol shrinks a state by
# at most 12 bits, so two symbols shrink it by at most 24 bits and one 32-bit read then
# always restores the invariant: a lane renormalises after every second symbol only, which
# halves the (branch-free) renormalisation work per symbol.  The encoder mirrors this by
# treating each pair as one symbol of frequency f1*f2 out of 2^24.  The decode tables are
# three flat arrays (u8 symbol, u16 frequency, u16 bias; 20 KiB, L1 resident) so a symbol
# costs three loads and and/shr/imul/add.  8 lanes hide the load -> multiply chain.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcpy, memmove, memset
from libc.math cimport log2

cdef extern from *:
    # gcc/clang 128-bit integer, only for the encoder's exact reciprocal division.
    ctypedef unsigned long long _u128 "unsigned __int128"

# The decoder is plain C (fpfs_decode.h), shared with the libFuzzer targets.
cdef extern from "fpfs_decode.h" nogil:
    int rans_decode "fpfs_rans_decode"(const uint8_t* src, Py_ssize_t srclen, uint8_t* out,
                                       Py_ssize_t n)

cdef enum:
    SCALE_BITS = 12
    PROB_SCALE = 4096
    LANES = 8
    BLOCK = 16                # symbols per block: 2 per lane
    TABLE_SPARSE = 0x10       # table flag: symbol set coded as gaps (else all 256 present)
    EG_MAX_ZEROS = 20         # longest Exp-Golomb prefix a valid table can contain

# Lower bound of a normalised state (2^24); states are < RANS_L << 32 = 2^56.
cdef enum:
    RANS_L = 0x1000000

# Error codes shared with the Python layer (kernels.pyx maps them to messages).
cdef enum:
    OK = 0
    ERR_TABLE = -1            # malformed frequency table
    ERR_TRUNCATED = -2        # stream ends before all symbols are decoded
    ERR_TRAILING = -3         # bytes left over after the last symbol
    ERR_STATE = -4            # a lane did not return to its initial state
    ERR_LAYOUT = -5           # plane layout / lengths inconsistent


cdef inline void _wr32(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = v & 0xFF
    p[1] = (v >> 8) & 0xFF
    p[2] = (v >> 16) & 0xFF
    p[3] = (v >> 24) & 0xFF


cdef void histogram(const uint8_t* src, Py_ssize_t n, uint32_t* counts) noexcept nogil:
    """Byte histogram; four sub-histograms avoid store-to-load stalls on runs."""
    cdef uint32_t h[4][256]
    cdef Py_ssize_t i = 0, j
    memset(h, 0, sizeof(h))
    while i + 4 <= n:
        h[0][src[i]] += 1
        h[1][src[i + 1]] += 1
        h[2][src[i + 2]] += 1
        h[3][src[i + 3]] += 1
        i += 4
    while i < n:
        h[0][src[i]] += 1
        i += 1
    for j in range(256):
        counts[j] = h[0][j] + h[1][j] + h[2][j] + h[3][j]


# log2(f) for every frequency 0..4096 (entry 0 unused): the greedy rounding below evaluates
# it twice per symbol per unit moved, up to a few hundred units for 256-symbol alphabets.
cdef double _LOG2[PROB_SCALE + 1]
_LOG2[0] = 0.0
for _f in range(1, PROB_SCALE + 1):
    _LOG2[_f] = log2(<double>_f)


cdef void normalize_freqs(const uint32_t* counts, Py_ssize_t n, uint32_t* freqs) noexcept nogil:
    """Scale counts to integer frequencies summing to PROB_SCALE, every present symbol >= 1.

    Rounding leaves the sum off by a few units; each unit is then moved where it costs the
    fewest bits (greedy on the exact code-length change), which matters for flat
    distributions such as mantissa planes where dumping the error on one symbol would not.
    """
    cdef int s, best
    cdef int64_t total = 0
    cdef double cost, best_cost
    for s in range(256):
        if counts[s]:
            freqs[s] = <uint32_t>((<double>counts[s] * PROB_SCALE) / n + 0.5)
            if freqs[s] == 0:
                freqs[s] = 1
        else:
            freqs[s] = 0
        total += freqs[s]
    while total > PROB_SCALE:
        best = -1
        best_cost = 1e300
        for s in range(256):
            if freqs[s] > 1:
                cost = counts[s] * (_LOG2[freqs[s]] - _LOG2[freqs[s] - 1])
                if cost < best_cost:
                    best_cost = cost
                    best = s
        freqs[best] -= 1
        total -= 1
    while total < PROB_SCALE:
        best = -1
        best_cost = -1.0
        for s in range(256):
            if counts[s]:
                cost = counts[s] * (_LOG2[freqs[s] + 1] - _LOG2[freqs[s]])
                if cost > best_cost:
                    best_cost = cost
                    best = s
        freqs[best] += 1
        total += 1


# ---------------------------------------------------------------------------------------
# Frequency table: Exp-Golomb coded (FORMAT.md).  byte 0 = k | TABLE_SPARSE?,
# byte 1 = base (smallest frequency, 1..255), byte 2 = present - 1, then an LSB-first
# bit stream: per present symbol [EG0(gap) if sparse] [EGk(freq - base) unless last].

cdef extern from *:
    int __builtin_clz(unsigned int x) nogil


cdef inline int _eg_bits(uint32_t v, int k) noexcept nogil:
    cdef uint32_t u = (v >> k) + 1          # >= 1: clz is defined
    return 2 * (31 - __builtin_clz(u)) + 1 + k


cdef struct _BitW:
    uint8_t* p
    uint64_t acc
    int nbits


cdef inline void _bw_put(_BitW* w, uint32_t v, int nb) noexcept nogil:
    # nb <= 32
    w.acc |= (<uint64_t>v) << w.nbits
    w.nbits += nb
    while w.nbits >= 8:
        w.p[0] = w.acc & 0xFF
        w.p += 1
        w.acc >>= 8
        w.nbits -= 8


cdef inline void _bw_eg(_BitW* w, uint32_t v, int k) noexcept nogil:
    """Exp-Golomb order k: z zero bits, a one bit, then z + k low bits of u = v + 2^k."""
    cdef uint32_t u = v + (1u << k)
    cdef int z = 0, j
    while (u >> (z + k + 1)) != 0:
        z += 1
    _bw_put(w, 1u << z, z + 1)                 # z zeros then the leading one
    for j in range(z + k - 1, -1, -1):         # remaining bits, most significant first
        _bw_put(w, (u >> j) & 1, 1)


cdef int _table_layout(const uint32_t* freqs, int* k_out, int* base_out,
                       int* present_out) noexcept nogil:
    """Choose the table parameters; returns the serialised size in bytes."""
    cdef int s, k, i, bits, best_bits = -1, best_k = 0, present = 0, last = -1, prev = -1
    cdef int nvals = 0, gap_bits = 0
    cdef uint32_t fmin = 0xFFFFFFFFu
    cdef uint32_t vals[256]
    for s in range(256):
        if freqs[s]:
            present += 1
            last = s
            if freqs[s] < fmin:
                fmin = freqs[s]
    if fmin > 255:
        fmin = 255
    # The gaps cost the same whatever k; only the frequencies are tried at every k (a
    # chunk of a few hundred bytes spent more time here than in its whole encode).
    for s in range(256):
        if freqs[s]:
            gap_bits += _eg_bits(<uint32_t>(s - prev - 1), 0)
            if s != last:
                vals[nvals] = freqs[s] - fmin
                nvals += 1
            prev = s
    if present == 256:
        gap_bits = 0
    for k in range(SCALE_BITS + 1):
        bits = gap_bits
        for i in range(nvals):
            bits += _eg_bits(vals[i], k)
        if best_bits < 0 or bits < best_bits:
            best_bits = bits
            best_k = k
    k_out[0] = best_k
    base_out[0] = fmin
    present_out[0] = present
    return 3 + (best_bits + 7) // 8


cdef void write_table(const uint32_t* freqs, int k, int base, uint8_t* dst) noexcept nogil:
    """Serialise freqs with Exp-Golomb order k and base frequency (from _table_layout)."""
    cdef int s, present = 0, last = -1, prev = -1
    cdef _BitW w
    for s in range(256):
        if freqs[s]:
            present += 1
            last = s
    dst[0] = <uint8_t>(k | (TABLE_SPARSE if present < 256 else 0))
    dst[1] = <uint8_t>base
    dst[2] = <uint8_t>(present - 1)
    w.p = dst + 3
    w.acc = 0
    w.nbits = 0
    for s in range(256):
        if freqs[s]:
            if present < 256:
                _bw_eg(&w, <uint32_t>(s - prev - 1), 0)
            if s != last:
                _bw_eg(&w, freqs[s] - <uint32_t>base, k)
            prev = s
    if w.nbits > 0:
        w.p[0] = w.acc & 0xFF


cdef double estimate_bits(const uint32_t* counts, const uint32_t* freqs) noexcept nogil:
    cdef int s
    cdef double bits = 0.0
    for s in range(256):
        if counts[s]:
            bits += counts[s] * (SCALE_BITS - _LOG2[freqs[s]])
    return bits


# ---------------------------------------------------------------------------------------
# Encoder

cdef struct _EncSym:
    uint64_t rcp              # reciprocal of freq (ryg's rans64 trick; exact for x < 2^63)
    uint32_t bias
    uint32_t cmpl
    uint32_t shift
    uint32_t freq


cdef inline uint64_t _put(uint64_t x, const _EncSym* e) noexcept nogil:
    cdef uint64_t q = (<uint64_t>((<_u128>x * e.rcp) >> 64)) >> e.shift
    return x + e.bias + q * e.cmpl


cdef inline uint64_t _put_group(uint64_t x, const _EncSym* a, const _EncSym* b,
                                uint8_t** pp) noexcept nogil:
    """Encode the group (a, b) -- decoded in that order, then one renormalisation; b is
    NULL for a lane's final lone symbol.  Caller guarantees 4 bytes of room before *pp."""
    cdef uint64_t fprod = a.freq * (b.freq if b != NULL else <uint32_t>PROB_SCALE)
    cdef uint64_t c = x >= (fprod << 32)
    # Branch-free: always store the word, keep it only when the state needed shrinking.
    _wr32(pp[0] - 4, <uint32_t>x)
    pp[0] -= c << 2
    x >>= c << 5
    if b != NULL:
        x = _put(x, b)
    return _put(x, a)


cdef void _encoder_symbols(const uint32_t* freqs, _EncSym* es) noexcept nogil:
    """Per-symbol encoder constants (frequency, cumulative start, exact reciprocal)."""
    cdef int s
    cdef uint32_t c = 0, f, sh
    for s in range(256):
        f = freqs[s]
        es[s].freq = f
        es[s].cmpl = PROB_SCALE - f
        if f == 0:
            es[s].rcp = 0
            es[s].shift = 0
            es[s].bias = 0
        elif f < 2:
            es[s].rcp = 0xFFFFFFFFFFFFFFFFu
            es[s].shift = 0
            es[s].bias = c + PROB_SCALE - 1
        else:
            sh = 0
            while f > (1u << sh):
                sh += 1
            es[s].rcp = <uint64_t>((((<_u128>1) << (sh + 63)) + f - 1) // f)
            es[s].shift = sh - 1
            es[s].bias = c
        c += f


cdef Py_ssize_t rans_encode(const uint8_t* src, Py_ssize_t n, uint8_t* dst,
                            Py_ssize_t cap) noexcept nogil:
    """Encode n bytes into dst; returns bytes written, or 0 when the result would not be
    smaller than cap (the caller then stores the plane raw).  Uses no scratch memory;
    dst[0:cap] is scribbled on even when 0 is returned."""
    cdef uint32_t counts[256]
    cdef uint32_t freqs[256]
    cdef _EncSym es[256]
    cdef uint64_t st[LANES]
    cdef uint64_t x
    cdef int s, k, base, lane, nb, present
    cdef Py_ssize_t i, hdr, body, tbl, nfull, b, r
    cdef uint8_t* ptr
    cdef uint8_t* limit
    cdef uint8_t* q
    cdef uint16_t lens = 0
    if n == 0 or cap <= 0:
        return 0
    histogram(src, n, counts)
    normalize_freqs(counts, n, freqs)
    tbl = _table_layout(freqs, &k, &base, &present)
    hdr = tbl + 2 + 4 * LANES            # states take 4..7 bytes each
    # Skip the encode when the order-0 estimate already says it cannot pay.
    if hdr + <Py_ssize_t>(estimate_bits(counts, freqs) / 8.0) >= cap:
        return 0
    _encoder_symbols(freqs, es)
    # The body is written backwards from the end of dst and moved down behind the header
    # at the end (no scratch buffer).  Once ptr is below dst + the smallest possible
    # header the result cannot pay; above it, one block's words plus the unconditional
    # word store of _put_group (<= 4 * LANES + 4 bytes) stay inside dst since tbl >= 3.
    ptr = dst + cap
    limit = dst + tbl + 2 + 4 * LANES
    for lane in range(LANES):
        st[lane] = RANS_L
    nfull = n // BLOCK
    r = n - nfull * BLOCK
    # The partial last block first (the encoder runs backwards).
    if r:
        if ptr < limit:
            return 0
        i = nfull * BLOCK
        for lane in range(LANES - 1, -1, -1):
            if lane < r:
                st[lane] = _put_group(st[lane], &es[src[i + lane]],
                                      &es[src[i + LANES + lane]] if lane + LANES < r else NULL,
                                      &ptr)
    for b in range(nfull - 1, -1, -1):
        if ptr < limit:                  # a block emits at most LANES words
            return 0
        i = b * BLOCK
        for lane in range(LANES - 1, -1, -1):
            st[lane] = _put_group(st[lane], &es[src[i + lane]], &es[src[i + LANES + lane]], &ptr)
    body = (dst + cap) - ptr
    # Header: table, u16 state lengths (2 bits per lane: bytes - 4), the states.  Sizes
    # first: nothing is written below ptr unless the whole result fits in cap.
    hdr = tbl + 2
    for lane in range(LANES):
        x = st[lane]
        nb = 4
        while nb < 7 and (x >> (8 * nb)) != 0:
            nb += 1
        lens |= <uint16_t>((nb - 4) << (2 * lane))
        hdr += nb
    if hdr + body >= cap:
        return 0
    write_table(freqs, k, base, dst)
    dst[tbl] = lens & 0xFF
    dst[tbl + 1] = lens >> 8
    q = dst + tbl + 2
    for lane in range(LANES):
        x = st[lane]
        nb = 4 + ((lens >> (2 * lane)) & 3)
        for s in range(nb):
            q[s] = (x >> (8 * s)) & 0xFF
        q += nb
    memmove(dst + hdr, ptr, body)
    return hdr + body


# ---------------------------------------------------------------------------------------
# rANS32 (FORMAT.md, "rANS32 stream"): 32 lanes of 32-bit states in [2^16, 2^32), one
# 16-bit word per renormalisation, symbol i in lane i % 32.  The decoder (fpfs_rans32.h)
# renormalises 8 lanes per AVX2 instruction; the encoder is this scalar loop.

cdef enum:
    R32_LANES = 32
    R32_L = 0x10000
    R32_HEADER = 4 * R32_LANES


cdef extern from "fpfs_rans32_enc.h" nogil:
    Py_ssize_t fpfs_r32_encode_steps(uint32_t* st, const uint8_t* src, Py_ssize_t nsteps,
                                     const uint32_t* fc, const float* rcp, uint8_t** pp,
                                     const uint8_t* limit)


cdef inline bint _r32_put_steps(const uint8_t* src, Py_ssize_t n, Py_ssize_t start,
                                Py_ssize_t stop, uint64_t* st, const _EncSym* es,
                                uint8_t** pp, const uint8_t* limit) noexcept nogil:
    """Scalar encoder: steps starting at start, start - 32, ... down to stop, each lane
    31 .. 0 (the partial step: lanes n - start - 1 .. 0). False when out of room."""
    cdef uint8_t* ptr = pp[0]
    cdef const _EncSym* e
    cdef uint64_t x, c
    cdef uint16_t w16
    cdef int lane
    while start >= stop:
        if ptr < limit:
            return False
        lane = <int>min(n - start, R32_LANES) - 1
        while lane >= 0:
            e = &es[src[start + lane]]
            x = st[lane]
            c = x >= (<uint64_t>e.freq << 20)
            # Branch-free: always store the word, keep it only when the state needed
            # shrinking.
            w16 = <uint16_t>x
            memcpy(ptr - 2, &w16, 2)
            ptr -= c << 1
            st[lane] = _put(x >> (c << 4), e)
            lane -= 1
        start -= R32_LANES
    pp[0] = ptr
    return True


cdef Py_ssize_t rans32_encode(const uint8_t* src, Py_ssize_t n, uint8_t* dst,
                              Py_ssize_t cap) noexcept nogil:
    """Encode n bytes into dst as an rANS32 stream; returns bytes written, or 0 when the
    result would not be smaller than cap, or when one symbol fills the whole table (that
    plane is stored CONST).  Uses no scratch memory; dst[0:cap] is scribbled on."""
    cdef uint32_t counts[256]
    cdef uint32_t freqs[256]
    cdef uint32_t fc[256]
    cdef float rcp[256]
    cdef _EncSym es[256]
    cdef uint64_t st[R32_LANES]
    cdef uint32_t st32[R32_LANES]
    cdef uint32_t cum
    cdef int s, k, base, lane, present
    cdef Py_ssize_t hdr, body, tbl, nsteps, left
    cdef uint8_t* ptr
    cdef uint8_t* limit
    if n == 0 or cap <= 0:
        return 0
    histogram(src, n, counts)
    normalize_freqs(counts, n, freqs)
    for s in range(256):
        if freqs[s] >= PROB_SCALE:
            return 0
    tbl = _table_layout(freqs, &k, &base, &present)
    hdr = tbl + R32_HEADER
    if hdr + <Py_ssize_t>(estimate_bits(counts, freqs) / 8.0) >= cap:
        return 0
    _encoder_symbols(freqs, es)
    # Words are written backwards from the end of dst and moved behind the header at the
    # end.  A step of 32 symbols writes at most 64 bytes plus the unconditional store of
    # the last one; checking room once per step keeps every store above dst + hdr - 2.
    ptr = dst + cap
    limit = dst + hdr + 2 * R32_LANES + 2
    for lane in range(R32_LANES):
        st[lane] = R32_L
    # Backwards: the partial last step first (scalar), then the whole steps: the AVX2
    # steps (fpfs_rans32_enc.h) where the CPU has them, the scalar loop for any they
    # leave (the same bytes either way).
    nsteps = n // R32_LANES
    if n > nsteps * R32_LANES and \
            not _r32_put_steps(src, n, nsteps * R32_LANES, nsteps * R32_LANES, st, es, &ptr, limit):
        return 0
    left = nsteps
    if nsteps:
        cum = 0
        for s in range(256):
            fc[s] = freqs[s] | (cum << 16)
            rcp[s] = 1.0 / freqs[s] if freqs[s] else 0.0
            cum += freqs[s]
        for lane in range(R32_LANES):
            st32[lane] = <uint32_t>st[lane]
        left = fpfs_r32_encode_steps(st32, src, nsteps, fc, rcp, &ptr, limit)
        for lane in range(R32_LANES):
            st[lane] = st32[lane]
    if left and not _r32_put_steps(src, n, (left - 1) * R32_LANES, 0, st, es, &ptr, limit):
        return 0
    body = (dst + cap) - ptr
    if hdr + body >= cap:
        return 0
    write_table(freqs, k, base, dst)
    for lane in range(R32_LANES):
        _wr32(dst + tbl + 4 * lane, <uint32_t>st[lane])
    memmove(dst + hdr, ptr, body)
    return hdr + body


cdef extern from "fpfs_rans32.h" nogil:
    int rans32_decode "fpfs_rans32_decode"(const uint8_t* src, Py_ssize_t srclen,
                                           uint8_t* out, Py_ssize_t n)
    int fpfs_simd_level
