/* rANS32 encoder steps in AVX2 (FORMAT.md, "rANS32 stream"): the whole steps of 32
 * symbols, 8 lanes per instruction, producing exactly the bytes of the scalar encoder in
 * cython_ext/rans.pxi (rans32_encode), which does the partial last step, the table and the
 * states, and is the portable path.  Tested byte for byte against it (tests/test_rans32.py).
 *
 * Per lane and symbol s (frequency f, cumulative c), backwards:
 *     if x >= f << 20: emit x & 0xFFFF, x >>= 16
 *     x = (x / f) << 12 | (x % f) + c
 * The quotient comes from single-precision x * (1 / f), truncated: its error is below one
 * (x < f * 2^20, so x / f < 2^20 and the relative error of ~2^-22 is worth < 0.25, plus
 * the rounding of x itself), so one correction step each way makes it exact.
 * Words are emitted lanes 31..0 of each step, last step first, written downwards, so the
 * decoder reads them forwards in lane order: a group of 8 lanes packs the words of the
 * lanes that renormalise, in lane order, against the top of a 16-byte store ending at
 * the write pointer (the bytes below it are overwritten by the next group).
 */
#ifndef FPFS_RANS32_ENC_H
#define FPFS_RANS32_ENC_H

#include "fpfs_simd.h"

#ifdef FPFS_HAVE_AVX2_KERNELS
/* fpfs_r32_top[m]: for a renormalisation mask m of 8 lanes, output position j takes lane
   fpfs_r32_top[m][j]: the set lanes in order at positions 8 - popcount(m) .. 7. */
static uint32_t fpfs_r32_top[256][8];

static void fpfs_r32_init_enc(void) {
    for (int m = 0; m < 256; m++) {
        int pos = 8 - __builtin_popcount((unsigned)m);
        for (int j = 0; j < 8; j++)
            fpfs_r32_top[m][j] = 0;
        for (int j = 0; j < 8; j++)
            if ((m >> j) & 1)
                fpfs_r32_top[m][pos++] = (uint32_t)j;
    }
}

/* t[sym[0]], ..., t[sym[7]] as one vector. */
FPFS_AVX2 static inline __m256i fpfs_r32_load8(const int *t, const uint8_t *sym) {
    return fpfs_avx2_lookup8(t, sym[0], sym[1], sym[2], sym[3], sym[4], sym[5], sym[6], sym[7]);
}

/* One group of 8 lanes of one step: symbols sym[0..7] into states *xs. */
FPFS_AVX2 static inline void fpfs_r32_enc_lanes(__m256i *xs, const uint8_t *sym,
                                                const int *fc, const float *rcp,
                                                uint8_t **pp) {
    const __m256i low12 = _mm256_set1_epi32(0xFFF), low16 = _mm256_set1_epi32(0xFFFF);
    __m256i x = *xs;
    __m256i e = fpfs_r32_load8(fc, sym);
    __m256 r = _mm256_castsi256_ps(fpfs_r32_load8((const int *)rcp, sym));
    __m256i f = _mm256_and_si256(e, low12);
    __m256i cum = _mm256_srli_epi32(e, 16);
    /* renormalise: lanes with x >= f << 20 emit their low word */
    __m256i need = _mm256_cmpeq_epi32(_mm256_max_epu32(x, _mm256_slli_epi32(f, 20)), x);
    int m = _mm256_movemask_ps(_mm256_castsi256_ps(need));
    __m256i w = _mm256_permutevar8x32_epi32(
        _mm256_and_si256(x, low16), _mm256_loadu_si256((const __m256i *)fpfs_r32_top[m]));
    w = _mm256_permute4x64_epi64(_mm256_packus_epi32(w, w), 0x08);
    _mm_storeu_si128((__m128i *)(*pp - 16), _mm256_castsi256_si128(w));
    *pp -= 2 * __builtin_popcount((unsigned)m);
    x = _mm256_blendv_epi8(x, _mm256_srli_epi32(x, 16), need);
    /* x = (x / f) << 12 | x % f, + cum */
    __m256 xf = _mm256_add_ps(_mm256_cvtepi32_ps(x),
                              _mm256_and_ps(_mm256_castsi256_ps(_mm256_srai_epi32(x, 31)),
                                            _mm256_set1_ps(4294967296.0f)));
    __m256i q = _mm256_cvttps_epi32(_mm256_mul_ps(xf, r));
    __m256i rem = _mm256_sub_epi32(x, _mm256_mullo_epi32(q, f));
    __m256i under = _mm256_cmpgt_epi32(_mm256_setzero_si256(), rem);    /* rem < 0 */
    q = _mm256_add_epi32(q, under);
    rem = _mm256_add_epi32(rem, _mm256_and_si256(under, f));
    __m256i over = _mm256_cmpgt_epi32(rem, _mm256_sub_epi32(f, _mm256_set1_epi32(1)));
    q = _mm256_sub_epi32(q, over);
    rem = _mm256_sub_epi32(rem, _mm256_and_si256(over, f));
    *xs = _mm256_add_epi32(_mm256_add_epi32(_mm256_slli_epi32(q, 12), rem), cum);
}

/* Whole steps nsteps-1 .. 0 of src (32 symbols each), backwards, states st[32] (u32)
   updated, words written downwards from *pp while a step has 80 bytes of room above
   limit.  Returns the number of steps left (0 when all are done): the scalar encoder
   finishes those, with its own finer room check, so the bytes never depend on the CPU.
   fc[s] = frequency | cumulative << 16, rcp[s] = 1.0f / frequency, for present symbols. */
FPFS_AVX2 static inline ptrdiff_t fpfs_r32_encode_steps_avx2(uint32_t *st, const uint8_t *src,
                                                             ptrdiff_t nsteps,
                                                             const uint32_t *fc,
                                                             const float *rcp, uint8_t **pp,
                                                             const uint8_t *limit) {
    __m256i x[4];
    uint8_t *p = *pp;
    ptrdiff_t s;
    for (int g = 0; g < 4; g++)
        x[g] = _mm256_loadu_si256((const __m256i *)(st + 8 * g));
    for (s = nsteps - 1; s >= 0 && p - limit >= 64 + 16; s--)
        for (int g = 3; g >= 0; g--)
            fpfs_r32_enc_lanes(&x[g], src + 32 * s + 8 * g, (const int *)fc, rcp, &p);
    for (int g = 0; g < 4; g++)
        _mm256_storeu_si256((__m256i *)(st + 8 * g), x[g]);
    *pp = p;
    return s + 1;
}
#endif

/* The AVX2 steps where this CPU runs them (fpfs_simd_level), else nothing done: returns
   the steps left for the scalar encoder. */
static inline ptrdiff_t fpfs_r32_encode_steps(uint32_t *st, const uint8_t *src, ptrdiff_t nsteps,
                                              const uint32_t *fc, const float *rcp,
                                              uint8_t **pp, const uint8_t *limit) {
#ifdef FPFS_HAVE_AVX2_KERNELS
    if (fpfs_simd_level >= FPFS_SIMD_AVX2)
        return fpfs_r32_encode_steps_avx2(st, src, nsteps, fc, rcp, pp, limit);
#endif
    (void)st; (void)src; (void)fc; (void)rcp; (void)pp; (void)limit;
    return nsteps;
}

#endif /* FPFS_RANS32_ENC_H */
