# Interleaved static rANS over bytes: 8 lanes, 32-bit states, 16-bit renormalisation,
# 12-bit probabilities.  The byte layout is specified in FORMAT.md ("rANS stream").
#
# Why these constants: a 12-bit table of 4096 x uint32 decode entries (16 KiB) stays in L1;
# states live in [2^15, 2^31) so the encoder's reciprocal division (ryg's rans_byte trick)
# is exact and one 16-bit read always suffices to renormalise; 8 lanes hide the
# load -> multiply -> compare latency chain of a single state.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcpy, memset
from libc.stdlib cimport malloc, free
from libc.math cimport log2

cdef enum:
    SCALE_BITS = 12
    PROB_SCALE = 4096
    LANES = 8
    RANS_L = 32768            # 1 << 15: lower bound of a normalised state
    TABLE_BITMAP = 0          # freq table: 32-byte presence bitmap, then packed values
    TABLE_ALL = 1             # freq table: all 256 symbols present, packed values

# Error codes shared with the Python layer (kernels.pyx maps them to messages).
cdef enum:
    OK = 0
    ERR_TABLE = -1            # malformed frequency table
    ERR_TRUNCATED = -2        # stream ends before all symbols are decoded
    ERR_TRAILING = -3         # bytes left over after the last symbol
    ERR_STATE = -4            # a lane did not return to its initial state
    ERR_LAYOUT = -5           # plane layout / lengths inconsistent
    ERR_NOMEM = -6


cdef inline uint32_t _rd32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0]) | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


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
                cost = counts[s] * (log2(<double>freqs[s]) - log2(<double>(freqs[s] - 1)))
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
                cost = counts[s] * (log2(<double>(freqs[s] + 1)) - log2(<double>freqs[s]))
                if cost > best_cost:
                    best_cost = cost
                    best = s
        freqs[best] += 1
        total += 1


cdef Py_ssize_t table_size(const uint32_t* freqs, int* kind, int* width) noexcept nogil:
    """Bytes the serialised frequency table will take, and the layout chosen for it."""
    cdef int s, present = 0
    cdef uint32_t maxv = 0
    for s in range(256):
        if freqs[s]:
            present += 1
            if freqs[s] - 1 > maxv:
                maxv = freqs[s] - 1
    width[0] = 0
    while (1u << width[0]) <= maxv:
        width[0] += 1
    kind[0] = TABLE_ALL if present == 256 else TABLE_BITMAP
    return 2 + (0 if present == 256 else 32) + (present * width[0] + 7) // 8


cdef void write_table(const uint32_t* freqs, int kind, int width, uint8_t* dst) noexcept nogil:
    cdef int s
    cdef uint64_t acc = 0
    cdef int nbits = 0
    cdef uint8_t* p = dst
    p[0] = kind
    p[1] = width
    p += 2
    if kind == TABLE_BITMAP:
        memset(p, 0, 32)
        for s in range(256):
            if freqs[s]:
                p[s >> 3] |= <uint8_t>(1 << (s & 7))
        p += 32
    for s in range(256):
        if freqs[s]:
            acc |= (<uint64_t>(freqs[s] - 1)) << nbits
            nbits += width
            while nbits >= 8:
                p[0] = acc & 0xFF
                p += 1
                acc >>= 8
                nbits -= 8
    if nbits > 0:
        p[0] = acc & 0xFF


cdef Py_ssize_t read_table(const uint8_t* src, Py_ssize_t srclen, uint32_t* freqs) noexcept nogil:
    """Parse and validate a frequency table; returns bytes consumed or ERR_TABLE."""
    cdef int s, kind, width, present = 0
    cdef Py_ssize_t need, pos
    cdef uint64_t acc = 0
    cdef int nbits = 0
    cdef uint32_t total = 0
    cdef uint8_t present_map[256]
    if srclen < 2:
        return ERR_TABLE
    kind = src[0]
    width = src[1]
    if width > SCALE_BITS or (kind != TABLE_ALL and kind != TABLE_BITMAP):
        return ERR_TABLE
    pos = 2
    if kind == TABLE_ALL:
        memset(present_map, 1, 256)
        present = 256
    else:
        if srclen < 34:
            return ERR_TABLE
        for s in range(256):
            present_map[s] = (src[2 + (s >> 3)] >> (s & 7)) & 1
            present += present_map[s]
        pos = 34
    if present == 0:
        return ERR_TABLE
    need = pos + (present * width + 7) // 8
    if need > srclen:
        return ERR_TABLE
    for s in range(256):
        if present_map[s]:
            while nbits < width:
                acc |= (<uint64_t>src[pos]) << nbits
                pos += 1
                nbits += 8
            freqs[s] = <uint32_t>(acc & ((1u << width) - 1)) + 1
            acc >>= width
            nbits -= width
            total += freqs[s]
        else:
            freqs[s] = 0
    if total != PROB_SCALE:
        return ERR_TABLE
    return need


cdef double estimate_bits(const uint32_t* counts, const uint32_t* freqs) noexcept nogil:
    cdef int s
    cdef double bits = 0.0
    for s in range(256):
        if counts[s]:
            bits += counts[s] * (SCALE_BITS - log2(<double>freqs[s]))
    return bits


cdef Py_ssize_t rans_encode(const uint8_t* src, Py_ssize_t n, uint8_t* dst,
                            Py_ssize_t cap) noexcept nogil:
    """Encode n bytes into dst; returns bytes written, 0 when the result would not be
    smaller than cap (the caller then stores the plane raw), or ERR_NOMEM."""
    cdef uint32_t counts[256]
    cdef uint32_t freqs[256]
    cdef uint32_t cum[256]
    cdef uint32_t x_max[256]
    cdef uint32_t rcp[256]
    cdef uint32_t bias[256]
    cdef uint32_t cmpl[256]
    cdef uint8_t shift[256]
    cdef uint32_t states[LANES]
    cdef int s, kind, width, lane
    cdef uint32_t c = 0, f, sh, x
    cdef Py_ssize_t i, hdr, body
    cdef uint8_t* buf
    cdef uint8_t* ptr
    cdef uint8_t* limit
    if n == 0 or cap <= 0:
        return 0
    histogram(src, n, counts)
    normalize_freqs(counts, n, freqs)
    hdr = table_size(freqs, &kind, &width) + 4 * LANES
    # Skip the encode when the order-0 estimate already says it cannot pay.
    if hdr + <Py_ssize_t>(estimate_bits(counts, freqs) / 8.0) >= cap:
        return 0
    for s in range(256):
        cum[s] = c
        f = freqs[s]
        c += f
        if f == 0:
            continue
        x_max[s] = f << 19                      # ((RANS_L >> SCALE_BITS) << 16) * f
        cmpl[s] = PROB_SCALE - f
        if f < 2:
            rcp[s] = 0xFFFFFFFFu
            shift[s] = 0
            bias[s] = cum[s] + PROB_SCALE - 1
        else:
            sh = 0
            while f > (1u << sh):
                sh += 1
            rcp[s] = <uint32_t>(((<uint64_t>1 << (sh + 31)) + f - 1) // f)
            shift[s] = sh - 1
            bias[s] = cum[s]
    buf = <uint8_t*>malloc(cap)
    if buf == NULL:
        return ERR_NOMEM
    ptr = buf + cap
    limit = buf + hdr
    for lane in range(LANES):
        states[lane] = RANS_L
    i = n - 1
    while i >= 0:
        s = src[i]
        lane = i & (LANES - 1)
        x = states[lane]
        if x >= x_max[s]:
            ptr -= 2
            if ptr < limit:
                free(buf)
                return 0
            ptr[0] = x & 0xFF
            ptr[1] = (x >> 8) & 0xFF
            x >>= 16
        states[lane] = x + bias[s] + (<uint32_t>(((<uint64_t>x * rcp[s]) >> 32) >> shift[s])) * cmpl[s]
        i -= 1
    body = (buf + cap) - ptr
    write_table(freqs, kind, width, dst)
    for lane in range(LANES):
        _wr32(dst + hdr - 4 * LANES + 4 * lane, states[lane])
    memcpy(dst + hdr, ptr, body)
    free(buf)
    return hdr + body


cdef int rans_decode(const uint8_t* src, Py_ssize_t srclen, uint8_t* out,
                     Py_ssize_t n) noexcept nogil:
    """Decode exactly n bytes from a complete stream of srclen bytes. Every table and
    length is checked before the unchecked inner loop; returns OK or an ERR_* code."""
    cdef uint32_t freqs[256]
    cdef uint32_t table[PROB_SCALE]
    cdef uint32_t x0, x1, x2, x3, x4, x5, x6, x7, e, x, cumf = 0
    cdef uint64_t syms
    cdef uint32_t st[LANES]
    cdef Py_ssize_t pos, i = 0, blocks, b
    cdef int s, lane
    cdef uint32_t k
    cdef const uint8_t* p
    cdef const uint8_t* end
    pos = read_table(src, srclen, freqs)
    if pos < 0:
        return ERR_TABLE
    for s in range(256):
        for k in range(freqs[s]):
            table[cumf + k] = <uint32_t>s | ((freqs[s] - 1) << 8) | (k << 20)
        cumf += freqs[s]
    if pos + 4 * LANES > srclen:
        return ERR_TRUNCATED
    for lane in range(LANES):
        st[lane] = _rd32(src + pos + 4 * lane)
        if st[lane] < RANS_L or st[lane] >= 0x80000000u:
            return ERR_STATE
    p = src + pos + 4 * LANES
    end = src + srclen
    x0 = st[0]; x1 = st[1]; x2 = st[2]; x3 = st[3]
    x4 = st[4]; x5 = st[5]; x6 = st[6]; x7 = st[7]
    while True:
        # Each symbol reads at most one 16-bit word: a block of LANES symbols at most
        # 2 * LANES bytes, so this many blocks can run with no bounds checks at all.
        blocks = min((n - i) // LANES, (end - p) // (2 * LANES))
        if blocks <= 0:
            break
        for b in range(blocks):
            syms = 0
            x0 = _step(x0, table, &syms, 0, &p)
            x1 = _step(x1, table, &syms, 8, &p)
            x2 = _step(x2, table, &syms, 16, &p)
            x3 = _step(x3, table, &syms, 24, &p)
            x4 = _step(x4, table, &syms, 32, &p)
            x5 = _step(x5, table, &syms, 40, &p)
            x6 = _step(x6, table, &syms, 48, &p)
            x7 = _step(x7, table, &syms, 56, &p)
            memcpy(out + i, &syms, 8)      # one store per block; byte stores would alias p
            i += LANES
    st[0] = x0; st[1] = x1; st[2] = x2; st[3] = x3
    st[4] = x4; st[5] = x5; st[6] = x6; st[7] = x7
    # Tail: the last few symbols (or a stream too short for a whole block), checked.
    while i < n:
        lane = i & (LANES - 1)
        x = st[lane]
        e = table[x & (PROB_SCALE - 1)]
        out[i] = <uint8_t>e
        x = (((e >> 8) & 0xFFF) + 1) * (x >> SCALE_BITS) + (e >> 20)
        if x < RANS_L:
            if end - p < 2:
                return ERR_TRUNCATED
            x = (x << 16) | p[0] | (<uint32_t>p[1] << 8)
            p += 2
        st[lane] = x
        i += 1
    if p != end:
        return ERR_TRAILING
    for lane in range(LANES):
        if st[lane] != RANS_L:
            return ERR_STATE
    return OK


cdef inline uint32_t _step(uint32_t x, const uint32_t* table, uint64_t* syms, int shift,
                           const uint8_t** pp) noexcept nogil:
    """One unchecked decode step; the renormalisation is branch-free because whether a
    lane needs a word is data-dependent and would mispredict about half the time."""
    cdef uint32_t e = table[x & (PROB_SCALE - 1)]
    cdef const uint8_t* p = pp[0]
    cdef uint32_t c, m
    cdef uint16_t w
    syms[0] |= (<uint64_t>(e & 0xFF)) << shift
    x = (((e >> 8) & 0xFFF) + 1) * (x >> SCALE_BITS) + (e >> 20)
    c = x < RANS_L
    memcpy(&w, p, 2)
    m = 0u - c
    x = x ^ ((x ^ ((x << 16) | w)) & m)
    pp[0] = p + (c << 1)
    return x
