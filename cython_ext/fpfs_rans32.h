/* The rANS32 stream (FORMAT.md, "rANS32 stream", plane mode 3): 32 interleaved lanes of
 * 32-bit states, 12-bit probabilities, 16-bit renormalisation words.  Symbol i belongs to
 * lane i % 32; after decoding a symbol a lane whose state fell below 2^16 shifts in the
 * next word of the stream, lanes taking their words in increasing lane order.  That order
 * is what lets a SIMD decoder renormalise 8 (AVX2) lanes at once: the lanes that need a
 * word take the next popcount(mask) words, distributed by a permutation looked up from
 * the mask.
 *
 * Two decoders, held to each other and to the Python reference (fpfs/_reference.py) on
 * the same inputs: a portable one, and an AVX2 one compiled with a target attribute (the
 * module itself stays baseline x86-64) and chosen at run time when the CPU has AVX2
 * (fpfs_simd.h).
 *
 * Included by fpfs_decode.h and fpfs_expmant.h.  Hostile input: the table and every
 * length are validated before the unchecked loops, which stop while 64 readable bytes
 * remain (one step of 32 lanes reads at most 64); the rest runs from a zero-padded copy.
 */
#ifndef FPFS_RANS32_H
#define FPFS_RANS32_H

#define FPFS_R32_LANES 32
#define FPFS_R32_L 0x10000u                  /* states live in [2^16, 2^32) */
#define FPFS_R32_HEADER (4 * FPFS_R32_LANES) /* the initial states, u32 each */
#define FPFS_R32_STEP_BYTES (2 * FPFS_R32_LANES)

#include "fpfs_errors.h"
#include "fpfs_rans32_enc.h"
#include "fpfs_simd.h"
#include "fpfs_table.h"

#ifdef FPFS_HAVE_AVX2_KERNELS
/* tab[k] = first | k << 8 for k < f, eight entries per store. */
FPFS_AVX2 static inline uint32_t fpfs_r32_fill_avx2(uint32_t *tab, uint32_t first, uint32_t f) {
    __m256i v = _mm256_add_epi32(_mm256_set1_epi32((int)first),
                                 _mm256_setr_epi32(0, 256, 512, 768, 1024, 1280, 1536, 1792));
    const __m256i step = _mm256_set1_epi32(8 << 8);
    uint32_t k;
    for (k = 0; k + 8 <= f; k += 8) {
        _mm256_storeu_si256((__m256i *)(tab + k), v);
        v = _mm256_add_epi32(v, step);
    }
    return k;
}
#endif

/* One decode-table entry per slot: symbol (bits 0-7), bias = slot - cumulative frequency
   (bits 8-19), frequency (bits 20-31).  A frequency of 4096 (one symbol only) does not
   fit and is rejected: writers store such a plane CONST. */
static inline int fpfs_r32_build(const uint32_t *freqs, uint32_t *tab) {
    uint32_t cum = 0, f, k, first;
    for (int s = 0; s < 256; s++) {
        f = freqs[s];
        if (!f)
            continue;
        if (f >= FPFS_PROB_SCALE)
            return FPFS_ERR_TABLE;
        first = (uint32_t)s | (f << 20);
        k = 0;
#ifdef FPFS_HAVE_AVX2_KERNELS
        if (fpfs_simd_level >= FPFS_SIMD_AVX2)   /* 4096 entries per chunk: 2-5 % of F32 decode */
            k = fpfs_r32_fill_avx2(tab + cum, first, f);
#endif
        for (; k < f; k++)
            tab[cum + k] = first | (k << 8);
        cum += f;
    }
    return FPFS_OK;
}

static inline uint32_t fpfs_r32_dsym(uint32_t x, const uint32_t *tab, uint8_t *o) {
    uint32_t e = tab[x & (FPFS_PROB_SCALE - 1)];
    *o = (uint8_t)e;
    return (e >> 20) * (x >> FPFS_SCALE_BITS) + ((e >> 8) & (FPFS_PROB_SCALE - 1));
}

/* Whole steps of 32 symbols, portable, no bounds checks while *pp <= stop (the caller
   guarantees 64 readable bytes from any p <= stop).  Returns the steps decoded. */
static inline ptrdiff_t fpfs_r32_steps_portable(uint32_t *st, const uint32_t *tab,
                                                const uint8_t **pp, const uint8_t *stop,
                                                uint8_t *out, ptrdiff_t nsteps) {
    const uint8_t *p = *pp;
    ptrdiff_t k = 0;
    while (k < nsteps && p <= stop) {
        /* all 32 symbols first (independent table loads), then the renormalisations in
           lane order (a short serial chain through p) */
        for (int lane = 0; lane < FPFS_R32_LANES; lane++)
            st[lane] = fpfs_r32_dsym(st[lane], tab, out + lane);
        for (int lane = 0; lane < FPFS_R32_LANES; lane++) {
            uint32_t x = st[lane];
            uint32_t w = (uint32_t)p[0] | ((uint32_t)p[1] << 8);
            uint32_t c = x < FPFS_R32_L;    /* branch-free: a branch mispredicts often */
            st[lane] = (x << (c << 4)) | (w & (0u - c));
            p += c << 1;
        }
        out += FPFS_R32_LANES;
        k++;
    }
    *pp = p;
    return k;
}

#ifdef FPFS_HAVE_AVX2_KERNELS
/* fpfs_r32_perm[m]: for an 8-lane renormalisation mask m, lane j takes word
   popcount(m & ((1 << j) - 1)) of the 8 loaded (lanes outside m take anything). */
static uint32_t fpfs_r32_perm[256][8];

static void fpfs_r32_init_perm(void) {
    for (int m = 0; m < 256; m++) {
        int r = 0;
        for (int j = 0; j < 8; j++)
            fpfs_r32_perm[m][j] = (uint32_t)(((m >> j) & 1) ? r++ : 0);
    }
}

/* Eight lanes: decode one symbol each (returned in the low byte of each 32-bit lane) and
   renormalise, taking words from *pp in lane order. */
FPFS_AVX2 static inline __m256i
fpfs_r32_avx2_lanes(__m256i *xs, const int *tab, const uint8_t **pp) {
    const __m256i slot_mask = _mm256_set1_epi32(FPFS_PROB_SCALE - 1);
    __m256i x = *xs;
    uint32_t slot[8] __attribute__((aligned(32)));
    _mm256_store_si256((__m256i *)slot, _mm256_and_si256(x, slot_mask));
    __m256i e = fpfs_avx2_lookup8(tab, slot[0], slot[1], slot[2], slot[3], slot[4], slot[5],
                                  slot[6], slot[7]);
    __m256i f = _mm256_srli_epi32(e, 20);
    __m256i b = _mm256_and_si256(_mm256_srli_epi32(e, 8), slot_mask);
    x = _mm256_add_epi32(_mm256_mullo_epi32(f, _mm256_srli_epi32(x, FPFS_SCALE_BITS)), b);
    __m256i need = _mm256_cmpeq_epi32(_mm256_srli_epi32(x, 16), _mm256_setzero_si256());
    int m = _mm256_movemask_ps(_mm256_castsi256_ps(need));
    __m256i words = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)*pp));
    words = _mm256_permutevar8x32_epi32(
        words, _mm256_loadu_si256((const __m256i *)fpfs_r32_perm[m]));
    __m256i shifted = _mm256_or_si256(_mm256_slli_epi32(x, 16), words);
    *xs = _mm256_blendv_epi8(x, shifted, need);
    *pp += 2 * __builtin_popcount((unsigned)m);
    return e;
}

FPFS_AVX2 static inline ptrdiff_t
fpfs_r32_steps_avx2(uint32_t *st, const uint32_t *tab, const uint8_t **pp,
                    const uint8_t *stop, uint8_t *out, ptrdiff_t nsteps) {
    const int *t = (const int *)tab;
    const __m256i low_byte = _mm256_set1_epi32(0xFF);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    __m256i x[FPFS_R32_LANES / 8], e[FPFS_R32_LANES / 8];
    for (int g = 0; g < FPFS_R32_LANES / 8; g++)
        x[g] = _mm256_loadu_si256((const __m256i *)(st + 8 * g));
    const uint8_t *p = *pp;
    ptrdiff_t k = 0;
    while (k < nsteps && p <= stop) {
#pragma GCC unroll 8
        for (int g = 0; g < FPFS_R32_LANES / 8; g++)
            e[g] = fpfs_r32_avx2_lanes(&x[g], t, &p);
        /* 4 x 8 symbols in the low bytes of 32-bit lanes -> 32 bytes in lane order. */
#pragma GCC unroll 2
        for (int g = 0; g < FPFS_R32_LANES / 8; g += 4) {
            __m256i s01 = _mm256_packus_epi32(_mm256_and_si256(e[g], low_byte),
                                              _mm256_and_si256(e[g + 1], low_byte));
            __m256i s23 = _mm256_packus_epi32(_mm256_and_si256(e[g + 2], low_byte),
                                              _mm256_and_si256(e[g + 3], low_byte));
            __m256i s = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(s01, s23), order);
            _mm256_storeu_si256((__m256i *)(out + 8 * g), s);
        }
        out += FPFS_R32_LANES;
        k++;
    }
    for (int g = 0; g < FPFS_R32_LANES / 8; g++)
        _mm256_storeu_si256((__m256i *)(st + 8 * g), x[g]);
    *pp = p;
    return k;
}
#endif

static inline ptrdiff_t fpfs_r32_steps(uint32_t *st, const uint32_t *tab, const uint8_t **pp,
                                       const uint8_t *stop, uint8_t *out, ptrdiff_t nsteps) {
#ifdef FPFS_HAVE_AVX2_KERNELS
    if (fpfs_simd_level >= FPFS_SIMD_AVX2)
        return fpfs_r32_steps_avx2(st, tab, pp, stop, out, nsteps);
#endif
    return fpfs_r32_steps_portable(st, tab, pp, stop, out, nsteps);
}

/* Decode exactly n bytes from a complete rANS32 stream of srclen bytes. */
static inline int fpfs_rans32_decode(const uint8_t *src, ptrdiff_t srclen, uint8_t *out,
                                     ptrdiff_t n) {
    uint32_t freqs[256];
    uint32_t tab[FPFS_PROB_SCALE];
    uint32_t st[FPFS_R32_LANES];
    uint8_t pad[FPFS_R32_STEP_BYTES * 2 + 16];
    ptrdiff_t pos, nsteps, done, i = 0, r;
    const uint8_t *p, *end;
    int lane;
    pos = fpfs_read_table(src, srclen, freqs);
    if (pos < 0 || fpfs_r32_build(freqs, tab) != FPFS_OK)
        return FPFS_ERR_TABLE;
    if (pos + FPFS_R32_HEADER > srclen)
        return FPFS_ERR_TRUNCATED;
    for (lane = 0; lane < FPFS_R32_LANES; lane++) {
        st[lane] = fpfs_rd32(src + pos + 4 * lane);
        if (st[lane] < FPFS_R32_L)
            return FPFS_ERR_STATE;
    }
    p = src + pos + FPFS_R32_HEADER;
    end = src + srclen;
    nsteps = n / FPFS_R32_LANES;
    /* Whole steps straight from the stream while 64 readable bytes remain... */
    if (end - p >= FPFS_R32_STEP_BYTES) {
        done = fpfs_r32_steps(st, tab, &p, end - FPFS_R32_STEP_BYTES, out, nsteps);
        i = done * FPFS_R32_LANES;
        nsteps -= done;
    }
    /* ... then from a zero-padded copy of the last < 64 bytes: a step that starts inside
       the valid part reads at most 64 bytes, all inside pad, and over-reading is caught
       by the consumption check below. */
    if (nsteps > 0) {
        r = end - p;
        memset(pad, 0, sizeof(pad));
        memcpy(pad, p, (size_t)r);
        p = pad;
        end = pad + r;
        done = fpfs_r32_steps(st, tab, &p, end, out + i, nsteps);
        i += done * FPFS_R32_LANES;
        if (done < nsteps || p > end)
            return FPFS_ERR_TRUNCATED;
    }
    /* The partial last step, checked. */
    for (lane = 0; lane < n - i; lane++) {
        uint32_t x = fpfs_r32_dsym(st[lane], tab, out + i + lane);
        if (x < FPFS_R32_L) {
            if (end - p < 2)
                return FPFS_ERR_TRUNCATED;
            x = (x << 16) | (uint32_t)p[0] | ((uint32_t)p[1] << 8);
            p += 2;
        }
        st[lane] = x;
    }
    if (p != end)
        return p < end ? FPFS_ERR_TRAILING : FPFS_ERR_TRUNCATED;
    for (lane = 0; lane < FPFS_R32_LANES; lane++)
        if (st[lane] != FPFS_R32_L)
            return FPFS_ERR_STATE;
    return FPFS_OK;
}

/* Fill the renormalisation permutations of the decoder and the encoder (once, before any
   thread decodes or encodes). */
static void fpfs_r32_init(void) {
#ifdef FPFS_HAVE_AVX2_KERNELS
    fpfs_r32_init_perm();
    fpfs_r32_init_enc();
#endif
}

#endif /* FPFS_RANS32_H */
