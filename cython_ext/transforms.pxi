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


cdef void mask_scatter(uint8_t* out, const uint8_t* mask, const uint8_t* values,
                       Py_ssize_t count, int width) noexcept nogil:
    """Element i of out = the next of values if bit i of mask is set, else zero bytes.
    Branch-free (zero and non-zero elements alternate unpredictably): every element loads
    the next value and masks it, so values MUST have 8 readable bytes past its end."""
    cdef Py_ssize_t i, j = 0
    cdef uint64_t v, bit
    for i in range(count):
        bit = (mask[i >> 3] >> (i & 7)) & 1
        memcpy(&v, values + j * width, 8)
        v &= <uint64_t>0 - bit
        memcpy(out + i * width, &v, width)
        j += <Py_ssize_t>bit
