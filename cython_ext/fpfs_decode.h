/* fpfs decode kernels in plain C: the rANS stream, the PLANES payload, and the element
 * transforms of DELTA and MASKED (FORMAT.md). Header-only so that Cython (kernels.pyx)
 * and the libFuzzer targets in fuzz/libfuzzer/ compile the very same code.
 *
 * Every function treats its input as hostile: tables, lengths and counts are validated
 * before the unchecked inner loop, and the result is FPFS_OK or a negative FPFS_ERR_*.
 * Callers guarantee only the sizes of the buffers they pass (out, scratch).
 */
#ifndef FPFS_DECODE_H
#define FPFS_DECODE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "fpfs_errors.h"
#include "fpfs_simd.h"
#include "fpfs_table.h"
#include "fpfs_rans32.h"
#include "fpfs_expmant.h"

#define FPFS_LANES 8
#define FPFS_BLOCK 16            /* symbols per block: 2 per lane */
#define FPFS_RANS_L 0x1000000u

#define FPFS_PLANE_RAW 0
#define FPFS_PLANE_RANS 1
#define FPFS_PLANE_CONST 2
#define FPFS_PLANE_RANS32 3      /* format version 3: fpfs_rans32.h */
#define FPFS_PLANES_HEADER 2
#define FPFS_PLANE_ENTRY 5

/* Decoder renormalisation of one 64-bit rANS lane: if x < 2^24, shift in the next
   little-endian 32-bit word of the stream and advance *pp by 4.  It must be branch-free
   (whether a lane renormalises is data-dependent, a branch mispredicts ~1 in 6 pairs)
   and gcc turns every C formulation of the select into a branch, hence the two cmovs
   on x86-64.  The caller guarantees 4 readable bytes at *pp. */
static inline uint64_t fpfs_rans_renorm(uint64_t x, const uint8_t **pp) {
    const uint8_t *p = *pp;
#if defined(__GNUC__) && defined(__x86_64__)
    uint32_t w;
    memcpy(&w, p, 4);
    uint64_t y = (x << 32) | w;
    const uint8_t *p4 = p + 4;
    __asm__("cmpq $0x1000000, %[x]\n\t"
            "cmovbq %[y], %[x]\n\t"
            "cmovbq %[p4], %[p]"
            : [x] "+r"(x), [p] "+r"(p)
            : [y] "r"(y), [p4] "r"(p4)
            : "cc");
#else
    uint64_t w = (uint64_t)fpfs_rd32(p);
    uint64_t c = x < FPFS_RANS_L;
    x = (x << (unsigned)(c << 5)) | (w & (0 - c));
    p += c << 2;
#endif
    *pp = p;
    return x;
}

typedef struct {
    uint16_t freq[FPFS_PROB_SCALE];
    uint16_t bias[FPFS_PROB_SCALE];
    uint8_t sym[FPFS_PROB_SCALE];
} fpfs_dectab;

static inline uint64_t fpfs_dsym(uint64_t x, const fpfs_dectab *t, uint8_t *o) {
    uint32_t slot = (uint32_t)x & (FPFS_PROB_SCALE - 1);
    *o = t->sym[slot];
    return (uint64_t)t->freq[slot] * (x >> FPFS_SCALE_BITS) + t->bias[slot];
}

/* Up to nblocks whole blocks, no bounds checks, while *pp <= stop; the caller guarantees
   32 readable bytes from any p <= stop.  Returns the number of blocks decoded. */
static inline ptrdiff_t fpfs_dec_blocks(uint64_t *st, const fpfs_dectab *t,
                                        const uint8_t **pp, const uint8_t *stop,
                                        uint8_t *out, ptrdiff_t nblocks) {
    uint64_t x0 = st[0], x1 = st[1], x2 = st[2], x3 = st[3];
    uint64_t x4 = st[4], x5 = st[5], x6 = st[6], x7 = st[7];
    const uint8_t *p = *pp;
    ptrdiff_t b = 0;
    while (b < nblocks && p <= stop) {
        x0 = fpfs_dsym(x0, t, out + 0);
        x1 = fpfs_dsym(x1, t, out + 1);
        x2 = fpfs_dsym(x2, t, out + 2);
        x3 = fpfs_dsym(x3, t, out + 3);
        x4 = fpfs_dsym(x4, t, out + 4);
        x5 = fpfs_dsym(x5, t, out + 5);
        x6 = fpfs_dsym(x6, t, out + 6);
        x7 = fpfs_dsym(x7, t, out + 7);
        x0 = fpfs_dsym(x0, t, out + 8);
        x1 = fpfs_dsym(x1, t, out + 9);
        x2 = fpfs_dsym(x2, t, out + 10);
        x3 = fpfs_dsym(x3, t, out + 11);
        x4 = fpfs_dsym(x4, t, out + 12);
        x5 = fpfs_dsym(x5, t, out + 13);
        x6 = fpfs_dsym(x6, t, out + 14);
        x7 = fpfs_dsym(x7, t, out + 15);
        x0 = fpfs_rans_renorm(x0, &p);
        x1 = fpfs_rans_renorm(x1, &p);
        x2 = fpfs_rans_renorm(x2, &p);
        x3 = fpfs_rans_renorm(x3, &p);
        x4 = fpfs_rans_renorm(x4, &p);
        x5 = fpfs_rans_renorm(x5, &p);
        x6 = fpfs_rans_renorm(x6, &p);
        x7 = fpfs_rans_renorm(x7, &p);
        out += FPFS_BLOCK;
        b++;
    }
    st[0] = x0; st[1] = x1; st[2] = x2; st[3] = x3;
    st[4] = x4; st[5] = x5; st[6] = x6; st[7] = x7;
    *pp = p;
    return b;
}

/* Decode exactly n bytes from a complete stream of srclen bytes (FORMAT.md, "rANS
   stream").  Every table and length is checked before the unchecked inner loop. */
static inline int fpfs_rans_decode(const uint8_t *src, ptrdiff_t srclen, uint8_t *out,
                                   ptrdiff_t n) {
    uint32_t freqs[256];
    fpfs_dectab t;
    uint64_t st[FPFS_LANES];
    uint8_t pad[80];
    uint64_t x;
    uint32_t cumf = 0, f, kk;
    uint16_t lens;
    ptrdiff_t pos, i = 0, nfull, done, r, na, nb2;
    int s, lane, nb, j;
    const uint8_t *p, *end;
    pos = fpfs_read_table(src, srclen, freqs);
    if (pos < 0)
        return FPFS_ERR_TABLE;
    if (pos + 2 > srclen)
        return FPFS_ERR_TRUNCATED;
    lens = (uint16_t)(src[pos] | ((uint16_t)src[pos + 1] << 8));
    pos += 2;
    for (lane = 0; lane < FPFS_LANES; lane++) {
        nb = 4 + ((lens >> (2 * lane)) & 3);
        if (pos + nb > srclen)
            return FPFS_ERR_TRUNCATED;
        x = 0;
        for (j = 0; j < nb; j++)
            x |= (uint64_t)src[pos + j] << (8 * j);
        if (x < FPFS_RANS_L || x >= ((uint64_t)FPFS_RANS_L << 32))
            return FPFS_ERR_STATE;
        st[lane] = x;
        pos += nb;
    }
    for (s = 0; s < 256; s++) {
        f = freqs[s];
        if (f) {
            memset(&t.sym[cumf], s, f);
            for (kk = 0; kk < f; kk++) {
                t.freq[cumf + kk] = (uint16_t)f;
                t.bias[cumf + kk] = (uint16_t)kk;
            }
            cumf += f;
        }
    }
    p = src + pos;
    end = src + srclen;
    nfull = n / FPFS_BLOCK;
    /* Whole blocks straight from the stream while 32 readable bytes remain... */
    if (end - p >= 32) {
        done = fpfs_dec_blocks(st, &t, &p, end - 32, out, nfull);
        i = done * FPFS_BLOCK;
        nfull -= done;
    }
    /* ... then from a zero-padded copy of the last < 32 bytes (reads past its valid part
       stay inside pad and are caught by the consumption check below). */
    if (nfull > 0) {
        r = end - p;
        memset(pad, 0, sizeof(pad));
        memcpy(pad + 8, p, (size_t)r);
        p = pad + 8;
        end = pad + 8 + r;
        done = fpfs_dec_blocks(st, &t, &p, end, out + i, nfull);
        i += done * FPFS_BLOCK;
        if (done < nfull || p > end)
            return FPFS_ERR_TRUNCATED;
    }
    /* The partial last block, checked. */
    r = n - i;
    if (r > 0) {
        na = r < FPFS_LANES ? r : FPFS_LANES;
        nb2 = r - FPFS_LANES;
        for (lane = 0; lane < na; lane++)
            st[lane] = fpfs_dsym(st[lane], &t, out + i + lane);
        for (lane = 0; lane < nb2; lane++)
            st[lane] = fpfs_dsym(st[lane], &t, out + i + FPFS_LANES + lane);
        for (lane = 0; lane < na; lane++) {
            if (st[lane] < FPFS_RANS_L) {
                if (end - p < 4)
                    return FPFS_ERR_TRUNCATED;
                st[lane] = (st[lane] << 32) | fpfs_rd32(p);
                p += 4;
            }
        }
    }
    if (p != end)
        return p < end ? FPFS_ERR_TRAILING : FPFS_ERR_TRUNCATED;
    for (lane = 0; lane < FPFS_LANES; lane++)
        if (st[lane] != FPFS_RANS_L)
            return FPFS_ERR_STATE;
    return FPFS_OK;
}

static inline uint16_t fpfs_rotl16(uint16_t v, int r) {
    return r ? (uint16_t)((v << r) | (v >> ((16 - r) & 15))) : v;
}
static inline uint32_t fpfs_rotl32(uint32_t v, int r) {
    return r ? (v << r) | (v >> ((32 - r) & 31)) : v;
}
static inline uint64_t fpfs_rotl64(uint64_t v, int r) {
    return r ? (v << r) | (v >> ((64 - r) & 63)) : v;
}

#ifdef FPFS_HAVE_AVX2_KERNELS
/* AVX2 merges of 2 and 4 planes, 32 elements per iteration; the portable loop below
   finishes the last n % 32 (and is what they are tested against). */
FPFS_AVX2 static inline ptrdiff_t fpfs_merge2_avx2(const uint8_t *p0, const uint8_t *p1,
                                                  ptrdiff_t n, int rot, uint8_t *dst) {
    const __m128i right = _mm_cvtsi32_si128(rot), left = _mm_cvtsi32_si128((16 - rot) & 15);
    ptrdiff_t i;
    for (i = 0; i + 32 <= n; i += 32) {
        /* element order: the 64-bit quarters go to the halves unpack works within */
        __m256i hi = _mm256_permute4x64_epi64(_mm256_loadu_si256((const __m256i *)(p0 + i)), 0xD8);
        __m256i lo = _mm256_permute4x64_epi64(_mm256_loadu_si256((const __m256i *)(p1 + i)), 0xD8);
        __m256i a = _mm256_unpacklo_epi8(lo, hi), b = _mm256_unpackhi_epi8(lo, hi);
        if (rot) {   /* rotate right by rot = left by 16 - rot */
            a = _mm256_or_si256(_mm256_srl_epi16(a, right), _mm256_sll_epi16(a, left));
            b = _mm256_or_si256(_mm256_srl_epi16(b, right), _mm256_sll_epi16(b, left));
        }
        _mm256_storeu_si256((__m256i *)(dst + 2 * i), a);
        _mm256_storeu_si256((__m256i *)(dst + 2 * i + 32), b);
    }
    return i;
}

FPFS_AVX2 static inline ptrdiff_t fpfs_merge4_avx2(const uint8_t *const *pl, ptrdiff_t n,
                                                  int rot, uint8_t *dst) {
    const __m128i right = _mm_cvtsi32_si128(rot), left = _mm_cvtsi32_si128((32 - rot) & 31);
    ptrdiff_t i;
    for (i = 0; i + 32 <= n; i += 32) {
        __m256i b3 = _mm256_permute4x64_epi64(_mm256_loadu_si256((const __m256i *)(pl[0] + i)), 0xD8);
        __m256i b2 = _mm256_permute4x64_epi64(_mm256_loadu_si256((const __m256i *)(pl[1] + i)), 0xD8);
        __m256i b1 = _mm256_permute4x64_epi64(_mm256_loadu_si256((const __m256i *)(pl[2] + i)), 0xD8);
        __m256i b0 = _mm256_permute4x64_epi64(_mm256_loadu_si256((const __m256i *)(pl[3] + i)), 0xD8);
        /* 16-bit halves (elements 0-7 | 8-15 and 16-23 | 24-31 after the 64-bit
           permutes), then 32-bit elements (0-3 | 8-11, 4-7 | 12-15, ...), which the
           128-bit permutes put back in order. */
        __m256i hl = _mm256_unpacklo_epi8(b2, b3), hh = _mm256_unpackhi_epi8(b2, b3);
        __m256i ll = _mm256_unpacklo_epi8(b0, b1), lh = _mm256_unpackhi_epi8(b0, b1);
        __m256i v0 = _mm256_unpacklo_epi16(ll, hl), v1 = _mm256_unpackhi_epi16(ll, hl);
        __m256i v2 = _mm256_unpacklo_epi16(lh, hh), v3 = _mm256_unpackhi_epi16(lh, hh);
        __m256i o0 = _mm256_permute2x128_si256(v0, v1, 0x20);
        __m256i o1 = _mm256_permute2x128_si256(v0, v1, 0x31);
        __m256i o2 = _mm256_permute2x128_si256(v2, v3, 0x20);
        __m256i o3 = _mm256_permute2x128_si256(v2, v3, 0x31);
        if (rot) {
            o0 = _mm256_or_si256(_mm256_srl_epi32(o0, right), _mm256_sll_epi32(o0, left));
            o1 = _mm256_or_si256(_mm256_srl_epi32(o1, right), _mm256_sll_epi32(o1, left));
            o2 = _mm256_or_si256(_mm256_srl_epi32(o2, right), _mm256_sll_epi32(o2, left));
            o3 = _mm256_or_si256(_mm256_srl_epi32(o3, right), _mm256_sll_epi32(o3, left));
        }
        _mm256_storeu_si256((__m256i *)(dst + 4 * i), o0);
        _mm256_storeu_si256((__m256i *)(dst + 4 * i + 32), o1);
        _mm256_storeu_si256((__m256i *)(dst + 4 * i + 64), o2);
        _mm256_storeu_si256((__m256i *)(dst + 4 * i + 96), o3);
    }
    return i;
}
#endif

/* Inverse of the plane split: plane j (at pl[j], n bytes) holds byte (width-1-j) of
   rotl(element, rot). */
static inline void fpfs_merge_planes(const uint8_t *const *pl, ptrdiff_t n, int width,
                                     int rot, uint8_t *dst) {
    ptrdiff_t i = 0;
    int j;
    const uint8_t *p0 = pl[0], *p1 = width > 1 ? pl[1] : NULL;
#ifdef FPFS_HAVE_AVX2_KERNELS
    if (fpfs_simd_level >= FPFS_SIMD_AVX2) {
        if (width == 2)
            i = fpfs_merge2_avx2(p0, p1, n, rot, dst);
        else if (width == 4)
            i = fpfs_merge4_avx2(pl, n, rot, dst);
    }
#endif
    if (width == 1) {
        if (dst != p0)
            memcpy(dst, p0, (size_t)n);
    } else if (width == 2) {
        for (; i < n; i++) {
            uint16_t v = fpfs_rotl16((uint16_t)((p0[i] << 8) | p1[i]), (16 - rot) & 15);
            memcpy(dst + 2 * i, &v, 2);
        }
    } else if (width == 4) {
        const uint8_t *p2 = pl[2], *p3 = pl[3];
        for (; i < n; i++) {
            uint32_t v = ((uint32_t)p0[i] << 24) | ((uint32_t)p1[i] << 16)
                         | ((uint32_t)p2[i] << 8) | p3[i];
            v = fpfs_rotl32(v, (32 - rot) & 31);
            memcpy(dst + 4 * i, &v, 4);
        }
    } else {
        for (i = 0; i < n; i++) {
            uint64_t v = 0;
            for (j = 0; j < 8; j++)
                v = (v << 8) | pl[j][i];
            v = fpfs_rotl64(v, (64 - rot) & 63);
            memcpy(dst + 8 * i, &v, 8);
        }
    }
}

/* Decode a PLANES payload into exactly nbytes of out; scratch must hold nbytes.  The
   header and every plane length are validated before any plane is decoded. */
static inline int fpfs_decode_planes(const uint8_t *src, ptrdiff_t srclen, uint8_t *out,
                                     ptrdiff_t nbytes, uint8_t *scratch) {
    int width, rot, j, rc, mode;
    ptrdiff_t n, pos, length, total;
    if (srclen < FPFS_PLANES_HEADER)
        return FPFS_ERR_LAYOUT;
    width = src[0];
    rot = src[1];
    if (width != 1 && width != 2 && width != 4 && width != 8)
        return FPFS_ERR_LAYOUT;
    if (rot >= 8 * width || (width == 1 && rot != 0) || nbytes % width)
        return FPFS_ERR_LAYOUT;
    n = nbytes / width;
    pos = FPFS_PLANES_HEADER + FPFS_PLANE_ENTRY * width;
    if (srclen < pos)
        return FPFS_ERR_LAYOUT;
    total = pos;
    for (j = 0; j < width; j++) {
        mode = src[FPFS_PLANES_HEADER + FPFS_PLANE_ENTRY * j];
        length = fpfs_rd32(src + FPFS_PLANES_HEADER + FPFS_PLANE_ENTRY * j + 1);
        if (mode == FPFS_PLANE_RAW) {
            if (length != n)
                return FPFS_ERR_LAYOUT;
        } else if (mode == FPFS_PLANE_CONST) {
            if (length != 1)
                return FPFS_ERR_LAYOUT;
        } else if (mode != FPFS_PLANE_RANS && mode != FPFS_PLANE_RANS32) {
            return FPFS_ERR_LAYOUT;
        }
        total += length;
    }
    if (total != srclen)
        return FPFS_ERR_LAYOUT;
    /* Planes are merged from where they are: RAW ones straight from the payload, coded
       and CONST ones from scratch (width 1: decoded straight into the output). */
    const uint8_t *pl[8];
    for (j = 0; j < width; j++) {
        uint8_t *dec = width == 1 ? out : scratch + j * n;
        mode = src[FPFS_PLANES_HEADER + FPFS_PLANE_ENTRY * j];
        length = fpfs_rd32(src + FPFS_PLANES_HEADER + FPFS_PLANE_ENTRY * j + 1);
        pl[j] = dec;
        if (mode == FPFS_PLANE_RAW) {
            pl[j] = src + pos;
        } else if (mode == FPFS_PLANE_CONST) {
            memset(dec, src[pos], (size_t)n);
        } else if (mode == FPFS_PLANE_RANS32) {
            rc = fpfs_rans32_decode(src + pos, length, dec, n);
            if (rc != FPFS_OK)
                return rc;
        } else {
            rc = fpfs_rans_decode(src + pos, length, dec, n);
            if (rc != FPFS_OK)
                return rc;
        }
        pos += length;
    }
    fpfs_merge_planes(pl, n, width, rot, out);
    return FPFS_OK;
}

/* ---- DELTA (codec 4): out := base combined with the residual in out ---------------- */

static inline void fpfs_xor_into(uint8_t *out, const uint8_t *base, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++)
        out[i] ^= base[i];
}

#define FPFS_UNZIGZAG_ADD(NAME, T, W)                                                  \
    static inline void NAME(uint8_t *out, const uint8_t *base, ptrdiff_t count) {      \
        for (ptrdiff_t i = 0; i < count; i++) {                                         \
            T z, b;                                                                     \
            memcpy(&z, out + (W) * i, (W));                                             \
            memcpy(&b, base + (W) * i, (W));                                            \
            z = (T)(b + ((z >> 1) ^ ((T)0 - (z & 1))));                                 \
            memcpy(out + (W) * i, &z, (W));                                             \
        }                                                                               \
    }
FPFS_UNZIGZAG_ADD(fpfs_unzigzag_add16, uint16_t, 2)
FPFS_UNZIGZAG_ADD(fpfs_unzigzag_add32, uint32_t, 4)
FPFS_UNZIGZAG_ADD(fpfs_unzigzag_add64, uint64_t, 8)

/* transform 0 XOR (width 1), 1 SUB of zigzag w-byte elements; FPFS_ERR_LAYOUT if the
   transform, width or length is invalid. */
static inline int fpfs_delta_apply(uint8_t *out, const uint8_t *base, ptrdiff_t n,
                                   int transform, int width) {
    if (transform == 0 && width == 1) {
        fpfs_xor_into(out, base, n);
    } else if (transform == 1 && (width == 2 || width == 4 || width == 8) && n % width == 0) {
        if (width == 2)
            fpfs_unzigzag_add16(out, base, n / 2);
        else if (width == 4)
            fpfs_unzigzag_add32(out, base, n / 4);
        else
            fpfs_unzigzag_add64(out, base, n / 8);
    } else {
        return FPFS_ERR_LAYOUT;
    }
    return FPFS_OK;
}

/* ---- MASKED (codec 5): scatter non-zero elements by a bitmap ------------------------ */

#define FPFS_MASK_SLACK 64   /* bytes fpfs_mask_expand may read past the last value */

/* Set bits among the first count; -1 if any bit past count is set. */
static inline ptrdiff_t fpfs_mask_count(const uint8_t *mask, ptrdiff_t count) {
    ptrdiff_t i, total = 0, nbytes = (count + 7) / 8;
    for (i = 0; i + 8 <= count / 8; i += 8) {      /* eight mask bytes at a time */
        uint64_t word;
        memcpy(&word, mask + i, 8);
        total += __builtin_popcountll(word);
    }
    for (; i < count / 8; i++)
        total += __builtin_popcount(mask[i]);
    if (count % 8) {
        if (mask[nbytes - 1] >> (count % 8))
            return -1;
        total += __builtin_popcount(mask[nbytes - 1]);
    }
    return total;
}

/* fpfs_expand[m][e]: for mask byte m, which of the (compacted) values element e of the
   group of eight takes: its rank among the set bits, or 8 (a zero) when bit e is clear.
   fpfs_expand_shuf1/2[m]: the same as pshufb controls for one- and two-byte elements
   (0x80: a zero byte). Filled once by fpfs_decode_init(), before any thread decodes. */
static uint8_t fpfs_expand[256][8];
static uint8_t fpfs_expand_shuf1[256][16];
static uint8_t fpfs_expand_shuf2[256][16];

/* Once, before any thread decodes: tables, and the SIMD level (-1: the best this CPU
   has; 0: portable; fpfs_simd.h). */
static void fpfs_decode_init(int simd_level) {
    fpfs_simd_init(simd_level);
    fpfs_r32_init();
    for (int m = 0; m < 256; m++) {
        int r = 0;
        for (int e = 0; e < 8; e++) {
            int set = (m >> e) & 1;
            fpfs_expand[m][e] = (uint8_t)(set ? r : 8);
            fpfs_expand_shuf1[m][e] = (uint8_t)(set ? r : 0x80);
            fpfs_expand_shuf1[m][e + 8] = 0x80;
            fpfs_expand_shuf2[m][2 * e] = (uint8_t)(set ? 2 * r : 0x80);
            fpfs_expand_shuf2[m][2 * e + 1] = (uint8_t)(set ? 2 * r + 1 : 0x80);
            r += set;
        }
    }
}

/* Elements from `from` to count one by one (the last, partial group of eight); j: values
   used before `from`. */
static inline void fpfs_scatter_tail(uint8_t *out, const uint8_t *mask, const uint8_t *values,
                                     ptrdiff_t j, ptrdiff_t from, ptrdiff_t count, int w) {
    for (ptrdiff_t e = from; e < count; e++) {
        if ((mask[e >> 3] >> (e & 7)) & 1) {
            memcpy(out + e * w, values + j * w, (size_t)w);
            j++;
        } else {
            memset(out + e * w, 0, (size_t)w);
        }
    }
}

/* Eight elements per mask byte, no branch per element: the next eight values go into a
   table whose slot 8 is zero and each element picks its slot; values advance by the
   byte's popcount.  Reads up to 8 * width bytes past the values used (FPFS_MASK_SLACK). */
#define FPFS_SCATTER(NAME, W)                                                            \
    static inline void NAME(uint8_t *out, const uint8_t *mask, const uint8_t *values,   \
                            ptrdiff_t count) {                                          \
        uint8_t slots[9 * 8];                                                           \
        ptrdiff_t g, e, j = 0, groups = count / 8;                                      \
        memset(slots, 0, sizeof(slots));                                                \
        for (g = 0; g < groups; g++) {                                                  \
            const uint8_t *idx = fpfs_expand[mask[g]];                                  \
            memcpy(slots, values + j * (W), 8 * (W));                                   \
            for (e = 0; e < 8; e++)                                                     \
                memcpy(out + (g * 8 + e) * (W), slots + idx[e] * (W), (W));            \
            j += __builtin_popcount(mask[g]);                                           \
        }                                                                               \
        fpfs_scatter_tail(out, mask, values, j, groups * 8, count, (W));                \
    }
FPFS_SCATTER(fpfs_scatter1, 1)
FPFS_SCATTER(fpfs_scatter2, 2)
FPFS_SCATTER(fpfs_scatter4, 4)
FPFS_SCATTER(fpfs_scatter8, 8)

#ifdef FPFS_HAVE_AVX2_KERNELS
/* The same with one shuffle per group of eight (1.1 -> ~10 GB/s for two-byte elements, a
   delta's residual of BF16). One- and two-byte elements: pshufb by a table; four-byte:
   vpermd by the ranks, zeros where the mask bit is clear. Reads at most 32 bytes from the
   next value on (within FPFS_MASK_SLACK). */
FPFS_AVX2 static void fpfs_scatter1_avx2(uint8_t *out, const uint8_t *mask,
                                         const uint8_t *values, ptrdiff_t count) {
    ptrdiff_t g, j = 0, groups = count / 8;
    for (g = 0; g < groups; g++) {
        __m128i v = _mm_loadu_si128((const __m128i *)(values + j));
        v = _mm_shuffle_epi8(v, _mm_loadu_si128((const __m128i *)fpfs_expand_shuf1[mask[g]]));
        _mm_storel_epi64((__m128i *)(out + 8 * g), v);
        j += __builtin_popcount(mask[g]);
    }
    fpfs_scatter_tail(out, mask, values, j, groups * 8, count, 1);
}

FPFS_AVX2 static void fpfs_scatter2_avx2(uint8_t *out, const uint8_t *mask,
                                         const uint8_t *values, ptrdiff_t count) {
    ptrdiff_t g, j = 0, groups = count / 8;
    for (g = 0; g < groups; g++) {
        __m128i v = _mm_loadu_si128((const __m128i *)(values + 2 * j));
        v = _mm_shuffle_epi8(v, _mm_loadu_si128((const __m128i *)fpfs_expand_shuf2[mask[g]]));
        _mm_storeu_si128((__m128i *)(out + 16 * g), v);
        j += __builtin_popcount(mask[g]);
    }
    fpfs_scatter_tail(out, mask, values, j, groups * 8, count, 2);
}

FPFS_AVX2 static void fpfs_scatter4_avx2(uint8_t *out, const uint8_t *mask,
                                         const uint8_t *values, ptrdiff_t count) {
    const __m256i bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    ptrdiff_t g, j = 0, groups = count / 8;
    for (g = 0; g < groups; g++) {
        const uint8_t *idx = fpfs_expand[mask[g]];
        __m256i rank = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)idx));
        __m256i set = _mm256_cmpeq_epi32(
            _mm256_and_si256(_mm256_set1_epi32(mask[g]), bits), bits);
        __m256i v = _mm256_loadu_si256((const __m256i *)(values + 4 * j));
        v = _mm256_and_si256(_mm256_permutevar8x32_epi32(v, rank), set);
        _mm256_storeu_si256((__m256i *)(out + 32 * g), v);
        j += __builtin_popcount(mask[g]);
    }
    fpfs_scatter_tail(out, mask, values, j, groups * 8, count, 4);
}
#endif

/* out (count elements of width bytes) := the k values where mask bits are set, zeros
   elsewhere.  values must hold k * width + FPFS_MASK_SLACK readable bytes.  Returns
   FPFS_ERR_LAYOUT unless the mask has exactly k bits set, none past count. */
static inline int fpfs_mask_expand(uint8_t *out, const uint8_t *mask, const uint8_t *values,
                                   ptrdiff_t count, ptrdiff_t k, int width) {
    if (fpfs_mask_count(mask, count) != k)
        return FPFS_ERR_LAYOUT;
#ifdef FPFS_HAVE_AVX2_KERNELS
    if (fpfs_simd_level == FPFS_SIMD_AVX2 && width != 8) {
        if (width == 1)
            fpfs_scatter1_avx2(out, mask, values, count);
        else if (width == 2)
            fpfs_scatter2_avx2(out, mask, values, count);
        else if (width == 4)
            fpfs_scatter4_avx2(out, mask, values, count);
        else
            return FPFS_ERR_LAYOUT;
        return FPFS_OK;
    }
#endif
    if (width == 1)
        fpfs_scatter1(out, mask, values, count);
    else if (width == 2)
        fpfs_scatter2(out, mask, values, count);
    else if (width == 4)
        fpfs_scatter4(out, mask, values, count);
    else if (width == 8)
        fpfs_scatter8(out, mask, values, count);
    else
        return FPFS_ERR_LAYOUT;
    return FPFS_OK;
}

#endif /* FPFS_DECODE_H */
