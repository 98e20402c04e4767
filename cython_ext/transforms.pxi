# Element transforms of the DELTA and MASKED codecs (FORMAT.md, codecs 4 and 5), in place,
# on buffers whose sizes the Python wrappers validated.

cdef void xor_into(uint8_t* out, const uint8_t* base, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        out[i] ^= base[i]


cdef void unzigzag_add16(uint8_t* out, const uint8_t* base, Py_ssize_t count) noexcept nogil:
    cdef Py_ssize_t i
    cdef uint16_t z, b
    for i in range(count):
        memcpy(&z, out + 2 * i, 2)
        memcpy(&b, base + 2 * i, 2)
        z = <uint16_t>(b + ((z >> 1) ^ (<uint16_t>0 - (z & 1))))
        memcpy(out + 2 * i, &z, 2)


cdef void unzigzag_add32(uint8_t* out, const uint8_t* base, Py_ssize_t count) noexcept nogil:
    cdef Py_ssize_t i
    cdef uint32_t z, b
    for i in range(count):
        memcpy(&z, out + 4 * i, 4)
        memcpy(&b, base + 4 * i, 4)
        z = b + ((z >> 1) ^ (<uint32_t>0 - (z & 1)))
        memcpy(out + 4 * i, &z, 4)


cdef void unzigzag_add64(uint8_t* out, const uint8_t* base, Py_ssize_t count) noexcept nogil:
    cdef Py_ssize_t i
    cdef uint64_t z, b
    for i in range(count):
        memcpy(&z, out + 8 * i, 8)
        memcpy(&b, base + 8 * i, 8)
        z = b + ((z >> 1) ^ (<uint64_t>0 - (z & 1)))
        memcpy(out + 8 * i, &z, 8)


cdef Py_ssize_t mask_count(const uint8_t* mask, Py_ssize_t count) noexcept nogil:
    """Set bits among the first count; -1 if any bit past count is set."""
    cdef Py_ssize_t i, total = 0
    cdef Py_ssize_t nbytes = (count + 7) // 8
    for i in range(count // 8):
        total += __builtin_popcount(mask[i])
    if count % 8:
        if mask[nbytes - 1] >> (count % 8):
            return -1
        total += __builtin_popcount(mask[nbytes - 1])
    return total


# EXPAND[m][e]: for mask byte m, which of the (compacted) values element e of the group of
# eight takes: its rank among the set bits, or 8 (a zero) when bit e is clear.
cdef uint8_t EXPAND[256][8]


cdef void _init_expand() noexcept nogil:
    cdef int m, e, r
    for m in range(256):
        r = 0
        for e in range(8):
            if (m >> e) & 1:
                EXPAND[m][e] = r
                r += 1
            else:
                EXPAND[m][e] = 8

_init_expand()


cdef inline void _scatter(uint8_t* out, const uint8_t* mask, const uint8_t* values,
                         Py_ssize_t count, const int width) noexcept nogil:
    """Eight elements per mask byte, no branch per element: load the next eight values into
    a table (slot 8 is zero) and pick each element's slot; values advance by the byte's
    popcount. Reads up to 8 * width bytes past the values used (MASK_SLACK)."""
    cdef Py_ssize_t g, e, j = 0, groups = count // 8
    cdef uint8_t slots[9 * 8]
    cdef const uint8_t* idx
    cdef uint8_t m
    memset(slots, 0, sizeof(slots))
    for g in range(groups):
        m = mask[g]
        idx = EXPAND[m]
        memcpy(slots, values + j * width, 8 * width)
        for e in range(8):
            memcpy(out + (g * 8 + e) * width, slots + idx[e] * width, width)
        j += __builtin_popcount(m)
    for e in range(groups * 8, count):
        if (mask[e >> 3] >> (e & 7)) & 1:
            memcpy(out + e * width, values + j * width, width)
            j += 1
        else:
            memset(out + e * width, 0, width)


cdef void mask_scatter(uint8_t* out, const uint8_t* mask, const uint8_t* values,
                       Py_ssize_t count, int width) noexcept nogil:
    """Element i of out = the next of values if bit i of mask is set, else zero bytes.
    Branch-free (zero and non-zero elements alternate unpredictably): every element loads
    the next value and masks it, so values MUST have 8 readable bytes past its end. One
    call per constant width, so the copies compile to single moves."""
    if width == 1:
        _scatter(out, mask, values, count, 1)
    elif width == 2:
        _scatter(out, mask, values, count, 2)
    elif width == 4:
        _scatter(out, mask, values, count, 4)
    else:
        _scatter(out, mask, values, count, 8)
