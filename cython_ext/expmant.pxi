# EXPMANT payload encoder (FORMAT.md, "Codec 6: EXPMANT"; the decoder is fpfs_expmant.h):
# BF16 elements as one rANS32 symbol (exponent in a window above a base, plus the top k
# mantissa bits) and a packed field of the other 8 - k bits.

cdef enum:
    EXPMANT_HEADER = 6        # u8 k, u8 b, u32 symbol stream length


cdef extern from "fpfs_decode.h" nogil:
    int decode_expmant "fpfs_decode_expmant"(const uint8_t* src, Py_ssize_t srclen,
                                             uint8_t* out, Py_ssize_t nbytes,
                                             uint8_t* scratch)
    int expmant_window "fpfs_expmant_window"(const uint8_t* src, Py_ssize_t n, int* b)
    void expmant_split "fpfs_expmant_split"(const uint8_t* src, Py_ssize_t n, int k, int b,
                                            uint8_t* sym, uint8_t* fields)


cdef Py_ssize_t encode_expmant(const uint8_t* src, Py_ssize_t nbytes, uint8_t* scratch,
                               uint8_t* dst, Py_ssize_t cap) noexcept nogil:
    """Write an EXPMANT payload for nbytes (even) of BF16 into dst; scratch must hold
    nbytes. Returns the payload size, or 0 when the chunk's non-zero exponents span more
    than 127 values or the payload would not be smaller than cap."""
    cdef Py_ssize_t n = nbytes // 2, flen, slen
    cdef int k, b = 0
    if n == 0:
        return 0
    k = expmant_window(src, n, &b)
    if k == 0:
        return 0
    flen = (n * (8 - k) + 7) // 8
    if EXPMANT_HEADER + flen >= cap:
        return 0
    # symbols in scratch[0:n], fields in scratch[n:n + flen] (flen <= n)
    expmant_split(src, n, k, b, scratch, scratch + n)
    slen = rans32_encode(scratch, n, dst + EXPMANT_HEADER, cap - EXPMANT_HEADER - flen)
    if slen == 0:
        return 0
    dst[0] = k
    dst[1] = b
    _wr32(dst + 2, <uint32_t>slen)
    memcpy(dst + EXPMANT_HEADER + slen, scratch + n, <size_t>flen)
    return EXPMANT_HEADER + slen + flen
