/* The EXPMANT payload (FORMAT.md, "Codec 6: EXPMANT", format version 4): BF16 elements
 * (s | e8 | m7) coded as one rANS32 symbol per element that holds the exponent, in a
 * window of 2^(8-k) - 1 values above a base b (0 = exponent zero), together with the top
 * k mantissa bits, and the other 8 - k bits (sign on top, then the low mantissa bits)
 * packed LSB-first.  The mantissa's top bits depend on the exponent (within a binade the
 * density falls), which order-0 coding of the exponent byte alone cannot see: on MiniLM
 * BF16 this takes 0.4 point off the file at the same decode cost per element.
 *
 *   element = sign << 15 | e << 7 | top << (7 - k) | low
 *   symbol  = t << k | top,  t = 0 when e = 0, else e - b + 1 (1 <= t < 2^(8-k))
 *   field   = sign << (7 - k) | low          (8 - k bits)
 *
 * Included by fpfs_decode.h.  Hostile input: the header and
 * every length are validated before the loops; b is bounded so that every symbol maps
 * to an exponent <= 255, so the loops need no per-element check.
 */
#ifndef FPFS_EXPMANT_H
#define FPFS_EXPMANT_H

#include "fpfs_errors.h"
#include "fpfs_rans32.h"
#include "fpfs_simd.h"
#include "fpfs_table.h"

#define FPFS_EXPMANT_HEADER 6 /* u8 k, u8 b, u32 symbol stream length */

/* Element i from its symbol and field (the definition the SIMD merge is held to). */
static inline uint16_t fpfs_expmant_element(uint32_t sym, uint32_t field, int k, int b) {
    uint32_t t = sym >> k, e = t ? t + (uint32_t)b - 1 : 0;
    uint32_t top = sym & ((1u << k) - 1), low = field & ((1u << (7 - k)) - 1);
    return (uint16_t)(((field >> (7 - k)) << 15) | (e << 7) | (top << (7 - k)) | low);
}

#ifdef FPFS_HAVE_AVX2_KERNELS
/* 16 elements per iteration while 16 bytes of fields can be loaded; returns the number of
   elements done (a multiple of 16).  Fields: 16-bit lane j takes the two bytes holding
   bits [jW, jW + W) of the 16 loaded, shifts them up by a per-lane multiply and down. */
FPFS_AVX2 static inline ptrdiff_t fpfs_expmant_merge_avx2(const uint8_t *sym,
                                                         const uint8_t *fields,
                                                         ptrdiff_t fields_len, ptrdiff_t n,
                                                         int k, int b, uint8_t *dst) {
    const int w = 8 - k;
    int8_t ctl[32];
    int16_t mul[16];
    for (int j = 0; j < 16; j++) {
        int bit = j * w;
        ctl[2 * j] = (int8_t)(bit >> 3);
        ctl[2 * j + 1] = (int8_t)((bit >> 3) + 1);
        mul[j] = (int16_t)(1 << (16 - w - (bit & 7)));
    }
    const __m256i shuf = _mm256_loadu_si256((const __m256i *)ctl);
    const __m256i mult = _mm256_loadu_si256((const __m256i *)mul);
    const __m128i down = _mm_cvtsi32_si128(16 - w), up = _mm_cvtsi32_si128(7 - k);
    const __m256i tops = _mm256_set1_epi16((int16_t)((1 << k) - 1));
    const __m256i bias = _mm256_set1_epi16((int16_t)((b - 1) << k));
    const __m256i lows = _mm256_set1_epi16((int16_t)((1 << (7 - k)) - 1));
    const __m256i sign = _mm256_set1_epi16((int16_t)0x8000);
    const __m128i sign_up = _mm_cvtsi32_si128(8 + k);
    ptrdiff_t i;
    for (i = 0; i + 16 <= n && (i / 8) * w + 16 <= fields_len; i += 16) {
        __m256i raw = _mm256_broadcastsi128_si256(
            _mm_loadu_si128((const __m128i *)(fields + (i / 8) * w)));
        __m256i f = _mm256_srl_epi16(
            _mm256_mullo_epi16(_mm256_shuffle_epi8(raw, shuf), mult), down);
        __m256i s = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(sym + i)));
        __m256i add = _mm256_and_si256(_mm256_cmpgt_epi16(s, tops), bias);
        __m256i v = _mm256_sll_epi16(_mm256_add_epi16(s, add), up);
        v = _mm256_or_si256(v, _mm256_and_si256(f, lows));
        v = _mm256_or_si256(v, _mm256_and_si256(_mm256_sll_epi16(f, sign_up), sign));
        _mm256_storeu_si256((__m256i *)(dst + 2 * i), v);
    }
    return i;
}
#endif

/* Elements [i, n): element = high[symbol] | low[field], both tables built from the
   definition above; eight fields per 64-bit load while eight bytes remain. */
static inline __attribute__((always_inline)) void
fpfs_expmant_merge_k(const uint8_t *sym, const uint8_t *fields, ptrdiff_t fields_len,
                     ptrdiff_t i, ptrdiff_t n, const int k, int b, uint8_t *dst) {
    const int w = 8 - k;
    const uint64_t mask = (1u << w) - 1;
    uint16_t high[256], low[128], v;
    for (uint32_t s = 0; s < 256; s++)
        high[s] = fpfs_expmant_element(s, 0, k, b);
    for (uint32_t f = 0; f <= mask; f++)
        low[f] = fpfs_expmant_element(0, f, k, b);
    for (; i + 8 <= n && (i / 8) * w + 8 <= fields_len; i += 8) {
        uint64_t word;
        memcpy(&word, fields + (i / 8) * w, 8);   /* little-endian hosts (x86-64, arm64) */
        for (int j = 0; j < 8; j++) {
            v = high[sym[i + j]] | low[(word >> (w * j)) & mask];
            memcpy(dst + 2 * (i + j), &v, 2);
        }
    }
    for (; i < n; i++) {
        ptrdiff_t bit = i * w, at = bit >> 3;
        uint32_t pair = fields[at] | (at + 1 < fields_len ? (uint32_t)fields[at + 1] << 8 : 0);
        v = high[sym[i]] | low[(pair >> (bit & 7)) & mask];
        memcpy(dst + 2 * i, &v, 2);
    }
}

/* ---- encoder side ------------------------------------------------------------------ */

#ifdef FPFS_HAVE_AVX2_KERNELS
/* The window scan, 16 elements per iteration; returns the elements done. */
FPFS_AVX2 static inline ptrdiff_t fpfs_expmant_range_avx2(const uint8_t *src, ptrdiff_t n,
                                                         uint32_t *lo, uint32_t *hi) {
    const __m256i byte = _mm256_set1_epi16(0xFF), zero = _mm256_setzero_si256();
    __m256i vlo = _mm256_set1_epi16(255), vhi = zero;
    ptrdiff_t i;
    for (i = 0; i + 16 <= n; i += 16) {
        __m256i e = _mm256_and_si256(
            _mm256_srli_epi16(_mm256_loadu_si256((const __m256i *)(src + 2 * i)), 7), byte);
        vhi = _mm256_max_epu16(vhi, e);
        vlo = _mm256_min_epu16(vlo, _mm256_or_si256(e, _mm256_and_si256(
                                         _mm256_cmpeq_epi16(e, zero), byte)));
    }
    uint16_t l[16], h[16];
    _mm256_storeu_si256((__m256i *)l, vlo);
    _mm256_storeu_si256((__m256i *)h, vhi);
    for (int j = 0; j < 16; j++) {
        *lo = l[j] < *lo ? l[j] : *lo;
        *hi = h[j] > *hi ? h[j] : *hi;
    }
    return i;
}

/* The split, 16 elements per iteration while 16 bytes of fields can be stored (the
   store runs past the 2w bytes written; the next iteration overwrites the rest).
   Fields: lane j's field shifted up by (j w) % 8 within its 16-bit lane, then each
   output byte is the OR of up to three bytes of those lanes (pshufb, in each half).
   Returns the elements done (a multiple of 16). */
FPFS_AVX2 static inline ptrdiff_t fpfs_expmant_split_avx2(const uint8_t *src, ptrdiff_t n,
                                                         int k, int b, uint8_t *sym,
                                                         uint8_t *fields, ptrdiff_t flen) {
    const int w = 8 - k;
    int8_t ctl[3][32];
    int16_t mul[16];
    for (int c = 0; c < 3; c++)
        for (int j = 0; j < 32; j++)
            ctl[c][j] = -128;                       /* pshufb: zero */
    for (int j = 0; j < 16; j++) {
        int bit = (j % 8) * w, at = bit >> 3, half = 16 * (j / 8);
        mul[j] = (int16_t)(1 << (bit & 7));
        /* the low byte of lane j goes to output byte `at` (first or second source), its
           high byte (the spill) to `at + 1` (third source) */
        int c = ctl[0][half + at] == -128 ? 0 : 1;
        ctl[c][half + at] = (int8_t)(2 * (j % 8));
        ctl[2][half + at + 1] = (int8_t)(2 * (j % 8) + 1);
    }
    const __m256i c0 = _mm256_loadu_si256((const __m256i *)ctl[0]);
    const __m256i c1 = _mm256_loadu_si256((const __m256i *)ctl[1]);
    const __m256i c2 = _mm256_loadu_si256((const __m256i *)ctl[2]);
    const __m256i mult = _mm256_loadu_si256((const __m256i *)mul);
    const __m256i byte = _mm256_set1_epi16(0xFF), zero = _mm256_setzero_si256();
    const __m256i base = _mm256_set1_epi16((int16_t)(b - 1));
    const __m256i tops = _mm256_set1_epi16((int16_t)((1 << k) - 1));
    const __m256i lows = _mm256_set1_epi16((int16_t)((1 << (7 - k)) - 1));
    const __m128i sh_k = _mm_cvtsi32_si128(k), sh_top = _mm_cvtsi32_si128(7 - k);
    const __m128i sh_sign = _mm_cvtsi32_si128(15 - (7 - k));
    const __m256i sign = _mm256_set1_epi16((int16_t)(1 << (7 - k)));
    ptrdiff_t i;
    for (i = 0; i + 16 <= n && (i / 8) * w + 16 + w <= flen; i += 16) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(src + 2 * i));
        __m256i e = _mm256_and_si256(_mm256_srli_epi16(v, 7), byte);
        __m256i t = _mm256_andnot_si256(_mm256_cmpeq_epi16(e, zero),
                                        _mm256_sub_epi16(e, base));
        __m256i y = _mm256_or_si256(_mm256_sll_epi16(t, sh_k),
                                    _mm256_and_si256(_mm256_srl_epi16(v, sh_top), tops));
        __m128i y8 = _mm_packus_epi16(_mm256_castsi256_si128(y), _mm256_extracti128_si256(y, 1));
        _mm_storeu_si128((__m128i *)(sym + i), y8);
        __m256i f = _mm256_or_si256(_mm256_and_si256(v, lows),
                                    _mm256_and_si256(_mm256_srl_epi16(v, sh_sign), sign));
        f = _mm256_mullo_epi16(f, mult);
        __m256i o = _mm256_or_si256(_mm256_or_si256(_mm256_shuffle_epi8(f, c0),
                                                    _mm256_shuffle_epi8(f, c1)),
                                    _mm256_shuffle_epi8(f, c2));
        _mm_storeu_si128((__m128i *)(fields + (i / 8) * w), _mm256_castsi256_si128(o));
        _mm_storeu_si128((__m128i *)(fields + (i / 8) * w + w), _mm256_extracti128_si256(o, 1));
    }
    return i;
}
#endif

/* The window of n elements: k = 2 when the non-zero exponents span at most 63 values,
   k = 1 for 127, else 0 (the chunk does not fit); b is the lowest of them, lowered where
   needed so that the window ends at or below 255. */
static inline int fpfs_expmant_window(const uint8_t *src, ptrdiff_t n, int *b) {
    uint32_t lo = 255, hi = 0, e;
    uint16_t v;
    int k;
    ptrdiff_t i = 0;
#ifdef FPFS_HAVE_AVX2_KERNELS
    if (fpfs_simd_level >= FPFS_SIMD_AVX2)
        i = fpfs_expmant_range_avx2(src, n, &lo, &hi);
#endif
    for (; i < n; i++) {
        memcpy(&v, src + 2 * i, 2);
        e = (v >> 7) & 0xFF;
        hi = e > hi ? e : hi;
        e = e ? e : 255;
        lo = e < lo ? e : lo;
    }
    if (hi == 0)
        lo = hi = 1;
    k = hi - lo <= 62 ? 2 : hi - lo <= 126 ? 1 : 0;
    if (k) {
        uint32_t top = 257 - (1u << (8 - k));
        *b = (int)(lo < top ? lo : top);
    }
    return k;
}


/* Symbols (n bytes) and fields (exactly (n * (8 - k) + 7) / 8 bytes, unused bits zero) of
   n elements that fit window (k, b). */
static inline void fpfs_expmant_split(const uint8_t *src, ptrdiff_t n, int k, int b,
                                      uint8_t *sym, uint8_t *fields) {
    const int w = 8 - k;
    const ptrdiff_t flen = (n * w + 7) / 8;
    ptrdiff_t start = 0;
#ifdef FPFS_HAVE_AVX2_KERNELS
    if (fpfs_simd_level >= FPFS_SIMD_AVX2)
        start = fpfs_expmant_split_avx2(src, n, k, b, sym, fields, flen);
#endif
    for (ptrdiff_t g = start; g < n; g += 8) {
        uint64_t acc = 0;
        ptrdiff_t m = n - g < 8 ? n - g : 8;
        for (ptrdiff_t j = 0; j < m; j++) {
            uint16_t v;
            memcpy(&v, src + 2 * (g + j), 2);
            uint32_t e = (v >> 7) & 0xFF;
            uint32_t t = (e - (uint32_t)b + 1) & (0u - (e != 0));
            sym[g + j] = (uint8_t)((t << k) | ((v >> (7 - k)) & ((1u << k) - 1)));
            uint32_t field = ((uint32_t)(v >> 15) << (7 - k)) | (v & ((1u << (7 - k)) - 1));
            acc |= (uint64_t)field << (w * j);
        }
        ptrdiff_t at = (g / 8) * w;
        if (at + 8 <= flen) {
            memcpy(fields + at, &acc, 8);         /* little-endian hosts */
        } else {
            for (ptrdiff_t j = 0; at + j < flen; j++)
                fields[at + j] = (uint8_t)(acc >> (8 * j));
        }
    }
}

/* With k a constant, every field shift is by a constant. */
static inline void fpfs_expmant_merge_portable(const uint8_t *sym, const uint8_t *fields,
                                               ptrdiff_t fields_len, ptrdiff_t i,
                                               ptrdiff_t n, int k, int b, uint8_t *dst) {
    if (k == 2)
        fpfs_expmant_merge_k(sym, fields, fields_len, i, n, 2, b, dst);
    else
        fpfs_expmant_merge_k(sym, fields, fields_len, i, n, 1, b, dst);
}

/* Decode an EXPMANT payload into exactly nbytes of out; scratch must hold nbytes / 2. */
static inline int fpfs_decode_expmant(const uint8_t *src, ptrdiff_t srclen, uint8_t *out,
                                      ptrdiff_t nbytes, uint8_t *scratch) {
    int k, b, rc, w;
    ptrdiff_t n, slen, flen, i = 0;
    if (srclen < FPFS_EXPMANT_HEADER || nbytes <= 0 || nbytes % 2)
        return FPFS_ERR_LAYOUT;
    k = src[0];
    b = src[1];
    if (k < 1 || k > 2 || b < 1 || b + (1 << (8 - k)) - 2 > 255)
        return FPFS_ERR_LAYOUT;
    w = 8 - k;
    n = nbytes / 2;
    slen = fpfs_rd32(src + 2);
    flen = (n * w + 7) / 8;
    if (slen > srclen - FPFS_EXPMANT_HEADER || FPFS_EXPMANT_HEADER + slen + flen != srclen)
        return FPFS_ERR_LAYOUT;
    const uint8_t *fields = src + FPFS_EXPMANT_HEADER + slen;
    /* the unused top bits of the last field byte are zero (one encoding per chunk) */
    if ((n * w) % 8 && fields[flen - 1] >> ((n * w) % 8))
        return FPFS_ERR_LAYOUT;
    rc = fpfs_rans32_decode(src + FPFS_EXPMANT_HEADER, slen, scratch, n);
    if (rc != FPFS_OK)
        return rc;
#ifdef FPFS_HAVE_AVX2_KERNELS
    if (fpfs_simd_level >= FPFS_SIMD_AVX2)
        i = fpfs_expmant_merge_avx2(scratch, fields, flen, n, k, b, out);
#endif
    fpfs_expmant_merge_portable(scratch, fields, flen, i, n, k, b, out);
    return FPFS_OK;
}

#endif /* FPFS_EXPMANT_H */
