/* libFuzzer targets for the plain-C decoders of cython_ext/fpfs_decode.h, one decoder per
 * binary (-DFPFS_TARGET=1 rans, 2 planes, 3 mask, 4 delta, 5 rans32, 6 expmant), built with
 * ASan and UBSan by ./build.sh. The planes, rans32 and expmant targets run every SIMD level this CPU has
 * (portable, AVX2), each on buffers of its own, and trap unless all give the same result:
 * a differential fuzz of the SIMD kernels against the portable ones. Buffers are allocated at exactly the size the decoder is promised, so any
 * read or write outside them is a sanitizer report; the only other outcome allowed is a
 * return code (FPFS_OK or FPFS_ERR_*). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fpfs_decode.h"

static int best_level;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    fpfs_decode_init(-1);
    best_level = fpfs_simd_level;
    return 0;
}

/* Run decode(level) at every SIMD level up to the best; trap if any result differs from
   the portable one (return code, or output bytes when it succeeded). */
#define FPFS_DIFFERENTIAL(NOUT, CALL)                                                  \
    do {                                                                                \
        uint8_t *first = NULL;                                                          \
        int first_rc = 0;                                                               \
        for (int level = 0; level <= best_level; level++) {                             \
            fpfs_simd_level = level;                                                    \
            uint8_t *out = malloc((NOUT) ? (size_t)(NOUT) : 1);                         \
            int rc = (CALL);                                                            \
            if (level == 0) {                                                           \
                first = out;                                                            \
                first_rc = rc;                                                          \
                continue;                                                               \
            }                                                                           \
            if (rc != first_rc || (rc == FPFS_OK && memcmp(out, first, (size_t)(NOUT))))\
                __builtin_trap();                                                       \
            free(out);                                                                  \
        }                                                                               \
        free(first);                                                                    \
    } while (0)

static uint32_t le(const uint8_t *p, int n) {
    uint32_t v = 0;
    for (int i = 0; i < n; i++)
        v |= (uint32_t)p[i] << (8 * i);
    return v;
}

/* Inputs of the stream and PLANES targets: 3 bytes of decoded length (< 2^20), then the
   payload, copied into a buffer of exactly its size (ASan sees any read past it). NULL
   when the input is too short; the caller frees the copy. */
static uint8_t *framed(const uint8_t *data, size_t size, ptrdiff_t *n, ptrdiff_t *srclen) {
    if (size < 3)
        return NULL;
    *n = le(data, 3) & 0xFFFFF;
    *srclen = (ptrdiff_t)size - 3;
    uint8_t *copy = malloc(*srclen ? (size_t)*srclen : 1);
    memcpy(copy, data + 3, (size_t)*srclen);
    return copy;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
#if FPFS_TARGET == 1
    /* rANS stream of n symbols */
    ptrdiff_t n, srclen;
    uint8_t *copy = framed(data, size, &n, &srclen);
    if (copy == NULL)
        return 0;
    uint8_t *out = malloc(n ? (size_t)n : 1);
    if (n > 0 && srclen > 0)
        (void)fpfs_rans_decode(copy, srclen, out, n);
    free(copy);
    free(out);
#elif FPFS_TARGET == 2
    /* PLANES payload of a chunk of nbytes */
    ptrdiff_t nbytes, srclen;
    uint8_t *copy = framed(data, size, &nbytes, &srclen);
    if (copy == NULL)
        return 0;
    uint8_t *scratch = malloc(nbytes ? (size_t)nbytes : 1);
    if (nbytes > 0)
        FPFS_DIFFERENTIAL(nbytes, fpfs_decode_planes(copy, srclen, out, nbytes, scratch));
    free(copy);
    free(scratch);
#elif FPFS_TARGET == 3
    /* MASKED expand: width selector, 2 bytes of element count, k claimed (2 bytes), then
       the mask and values; values get exactly k * width + FPFS_MASK_SLACK bytes. */
    if (size < 5)
        return 0;
    int width = 1 << (data[0] & 3);
    ptrdiff_t count = le(data + 1, 2);
    ptrdiff_t k = le(data + 3, 2);
    ptrdiff_t mlen = (count + 7) / 8;
    if (k > count || (ptrdiff_t)size - 5 < mlen)
        return 0;       /* the Python wrapper refuses these before calling */
    uint8_t *mask = malloc(mlen ? (size_t)mlen : 1);
    memcpy(mask, data + 5, (size_t)mlen);
    size_t vlen = (size_t)(k * width + FPFS_MASK_SLACK);
    uint8_t *values = calloc(vlen, 1);
    size_t avail = size - 5 - (size_t)mlen;
    memcpy(values, data + 5 + mlen, avail < vlen ? avail : vlen);
    uint8_t *out = malloc(count ? (size_t)(count * width) : 1);
    if (count > 0)
        (void)fpfs_mask_expand(out, mask, values, count, k, width);
    free(mask);
    free(values);
    free(out);
#elif FPFS_TARGET == 4
    /* DELTA apply: transform, width, then residual and base of equal length. */
    if (size < 2)
        return 0;
    int transform = data[0] & 1, width = 1 << (data[1] & 3);
    ptrdiff_t n = ((ptrdiff_t)size - 2) / 2;
    uint8_t *out = malloc(n ? (size_t)n : 1), *base = malloc(n ? (size_t)n : 1);
    memcpy(out, data + 2, (size_t)n);
    memcpy(base, data + 2 + n, (size_t)n);
    if (n > 0)
        (void)fpfs_delta_apply(out, base, n, transform, width);
    free(out);
    free(base);
#elif FPFS_TARGET == 5
    /* rANS32 stream of n symbols */
    ptrdiff_t n, srclen;
    uint8_t *copy = framed(data, size, &n, &srclen);
    if (copy == NULL)
        return 0;
    if (n > 0 && srclen > 0)
        FPFS_DIFFERENTIAL(n, fpfs_rans32_decode(copy, srclen, out, n));
    free(copy);
#elif FPFS_TARGET == 6
    /* EXPMANT payload of a chunk of nbytes; scratch of exactly nbytes / 2 */
    ptrdiff_t nbytes, srclen;
    uint8_t *copy = framed(data, size, &nbytes, &srclen);
    if (copy == NULL)
        return 0;
    uint8_t *scratch = malloc(nbytes / 2 ? (size_t)(nbytes / 2) : 1);
    if (nbytes > 0)
        FPFS_DIFFERENTIAL(nbytes, fpfs_decode_expmant(copy, srclen, out, nbytes, scratch));
    free(copy);
    free(scratch);
#else
#error "define FPFS_TARGET (1 rans, 2 planes, 3 mask, 4 delta, 5 rans32, 6 expmant)"
#endif
    return 0;
}
