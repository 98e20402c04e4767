/* What both rANS streams (fpfs_decode.h, fpfs_rans32.h) share: the 12-bit probability
 * scale and the frequency table each stream starts with (FORMAT.md, "Frequency table"),
 * and the little-endian word read every decoder uses.  Hostile input: the table is
 * validated entry by entry and rejected with FPFS_ERR_TABLE.
 */
#ifndef FPFS_TABLE_H
#define FPFS_TABLE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "fpfs_errors.h"

#define FPFS_SCALE_BITS 12
#define FPFS_PROB_SCALE 4096
#define FPFS_TABLE_SPARSE 0x10
#define FPFS_EG_MAX_ZEROS 20

static inline uint32_t fpfs_rd32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16)
           | ((uint32_t)p[3] << 24);
}

/* One Exp-Golomb order-k value, LSB-first bit stream; -1 if malformed or past bitlen. */
static inline int fpfs_read_eg(const uint8_t *src, ptrdiff_t bitlen, ptrdiff_t *bitpos,
                               int k, uint32_t *v) {
    int z = 0, j;
    ptrdiff_t b = *bitpos;
    uint32_t u = 1;
    for (;;) {
        if (b >= bitlen)
            return -1;
        if ((src[b >> 3] >> (b & 7)) & 1) {
            b++;
            break;
        }
        b++;
        if (++z > FPFS_EG_MAX_ZEROS)
            return -1;
    }
    if (b + z + k > bitlen)
        return -1;
    for (j = 0; j < z + k; j++) {
        u = (u << 1) | ((src[b >> 3] >> (b & 7)) & 1);
        b++;
    }
    *bitpos = b;
    *v = u - (1u << k);
    return 0;
}

/* Parse and validate a frequency table; bytes consumed, or FPFS_ERR_TABLE. */
static inline ptrdiff_t fpfs_read_table(const uint8_t *src, ptrdiff_t srclen,
                                        uint32_t *freqs) {
    int s = -1, i, k, base, present, sparse;
    uint32_t v, total = 0;
    ptrdiff_t bitpos = 0, bitlen;
    if (srclen < 3)
        return FPFS_ERR_TABLE;
    k = src[0] & 0x0F;
    sparse = src[0] & FPFS_TABLE_SPARSE;
    base = src[1];
    present = src[2] + 1;
    if ((src[0] & 0xE0) || k > FPFS_SCALE_BITS || base == 0)
        return FPFS_ERR_TABLE;
    if (!sparse && present != 256)
        return FPFS_ERR_TABLE;
    memset(freqs, 0, 256 * sizeof(uint32_t));
    bitlen = (srclen - 3) * 8;
    for (i = 0; i < present; i++) {
        if (sparse) {
            if (fpfs_read_eg(src + 3, bitlen, &bitpos, 0, &v) < 0)
                return FPFS_ERR_TABLE;
            /* next symbol s + 1 + v must be <= 255; s == 255 leaves no room at all (and
               254 - s would wrap to 2^32 - 1: found by libFuzzer + ASan, a stack write
               past freqs[] in every decoder before this check) */
            if (s >= 255 || v > (uint32_t)(254 - s))
                return FPFS_ERR_TABLE;
            s = s + 1 + (int)v;
        } else {
            s = i;
        }
        if (i < present - 1) {
            if (fpfs_read_eg(src + 3, bitlen, &bitpos, k, &v) < 0)
                return FPFS_ERR_TABLE;
            if (v > (uint32_t)(FPFS_PROB_SCALE - base))
                return FPFS_ERR_TABLE;
            freqs[s] = v + (uint32_t)base;
            total += freqs[s];
            if (total >= FPFS_PROB_SCALE)      /* the implied last frequency must be >= 1 */
                return FPFS_ERR_TABLE;
        } else {
            freqs[s] = FPFS_PROB_SCALE - total;
        }
    }
    return 3 + (bitpos + 7) / 8;
}

#endif /* FPFS_TABLE_H */
