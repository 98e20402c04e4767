# Byte-plane transform and the PLANES chunk payload (FORMAT.md, "PLANES payload").
#
# A chunk of n elements of `width` bytes is rotated left by `rot` bits per element (so the
# exponent of a float lands in one byte) and cut into `width` planes of n bytes, most
# significant byte first. Each plane is then stored as CONST, RAW or RANS, whichever is
# smallest.

cdef enum:
    PLANE_RAW = 0
    PLANE_RANS = 1
    PLANE_CONST = 2
    PLANE_RANS32 = 3          # format version 3
    PLANES_HEADER = 2         # u8 width, u8 rot
    PLANE_ENTRY = 5           # u8 mode, u32 length


cdef inline uint16_t _rotl16(uint16_t v, int r) noexcept nogil:
    return <uint16_t>((v << r) | (v >> ((16 - r) & 15))) if r else v

cdef inline uint32_t _rotl32(uint32_t v, int r) noexcept nogil:
    return (v << r) | (v >> ((32 - r) & 31)) if r else v

cdef inline uint64_t _rotl64(uint64_t v, int r) noexcept nogil:
    return (v << r) | (v >> ((64 - r) & 63)) if r else v


cdef void split_planes(const uint8_t* src, Py_ssize_t n, int width, int rot,
                       uint8_t* dst) noexcept nogil:
    """n elements of width bytes (little-endian) -> width planes of n bytes, MSB plane first."""
    cdef Py_ssize_t i
    cdef int j
    cdef uint16_t v16
    cdef uint32_t v32
    cdef uint64_t v64
    if width == 1:
        memcpy(dst, src, n)
    elif width == 2:
        for i in range(n):
            memcpy(&v16, src + 2 * i, 2)
            v16 = _rotl16(v16, rot)
            dst[i] = v16 >> 8
            dst[n + i] = v16 & 0xFF
    elif width == 4:
        for i in range(n):
            memcpy(&v32, src + 4 * i, 4)
            v32 = _rotl32(v32, rot)
            dst[i] = v32 >> 24
            dst[n + i] = (v32 >> 16) & 0xFF
            dst[2 * n + i] = (v32 >> 8) & 0xFF
            dst[3 * n + i] = v32 & 0xFF
    else:
        for i in range(n):
            memcpy(&v64, src + 8 * i, 8)
            v64 = _rotl64(v64, rot)
            for j in range(8):
                dst[j * n + i] = (v64 >> (56 - 8 * j)) & 0xFF


cdef Py_ssize_t encode_planes(const uint8_t* src, Py_ssize_t nbytes, int width, int rot,
                              uint8_t* scratch, uint8_t* dst, Py_ssize_t cap,
                              Py_ssize_t min_saving_ppm, int coder) noexcept nogil:
    """Write a PLANES payload for nbytes (a multiple of width) into dst.

    scratch must hold nbytes. Returns the payload size, or 0 when it would not be smaller
    than cap. coder: PLANE_RANS32 (what fpfs writes) or PLANE_RANS (the stream of format
    versions 1 and 2, kept for tests of its decoder)."""
    cdef Py_ssize_t n = nbytes // width
    cdef Py_ssize_t pos = PLANES_HEADER + PLANE_ENTRY * width
    cdef Py_ssize_t written, j, k, limit
    cdef const uint8_t* plane
    cdef uint8_t* entry
    cdef bint same
    if pos >= cap:
        return 0
    split_planes(src, n, width, rot, scratch)
    dst[0] = width
    dst[1] = rot
    for j in range(width):
        plane = scratch + j * n
        entry = dst + PLANES_HEADER + PLANE_ENTRY * j
        same = n > 0
        for k in range(1, n):
            if plane[k] != plane[0]:
                same = False
                break
        if same:
            if pos + 1 > cap:
                return 0
            entry[0] = PLANE_CONST
            _wr32(entry + 1, 1)
            dst[pos] = plane[0]
            pos += 1
            continue
        # A coded plane costs ~0.7 ns/byte to decode, a raw one a memcpy: code it only
        # when it saves at least min_saving_ppm of the plane.
        limit = min(n - n * min_saving_ppm // 1000000, cap - pos)
        if coder == PLANE_RANS32:
            written = rans32_encode(plane, n, dst + pos, limit)
        else:
            written = rans_encode(plane, n, dst + pos, limit)
        if written > 0:
            entry[0] = coder
        else:
            if pos + n > cap:
                return 0
            memcpy(dst + pos, plane, n)
            written = n
            entry[0] = PLANE_RAW
        _wr32(entry + 1, <uint32_t>written)
        pos += written
    return pos if pos < cap else 0


cdef extern from "fpfs_decode.h" nogil:
    int decode_planes "fpfs_decode_planes"(const uint8_t* src, Py_ssize_t srclen,
                                           uint8_t* out, Py_ssize_t nbytes, uint8_t* scratch)
