# Element transforms of the DELTA and MASKED codecs (FORMAT.md, codecs 4 and 5): plain C
# in fpfs_decode.h, shared with the libFuzzer targets.

cdef extern from "fpfs_decode.h" nogil:
    int FPFS_MASK_SLACK
    void fpfs_decode_init(int simd_level)
    void fpfs_simd_init(int level)
    int fpfs_delta_apply(uint8_t* out, const uint8_t* base, Py_ssize_t n, int transform,
                         int width)
    int fpfs_mask_expand(uint8_t* out, const uint8_t* mask, const uint8_t* values,
                         Py_ssize_t count, Py_ssize_t k, int width)
