/* Which SIMD kernels the decoders of fpfs_decode.h use: chosen once at start-up by what
 * the CPU has (fpfs_decode_init), or forced portable with FPFS_SIMD=portable in the
 * environment (fpfs/_kernels reads it at import; CI runs the test suite once that way).
 * SIMD kernels are compiled with target attributes, so the module itself stays baseline
 * x86-64 and runs anywhere; every SIMD kernel has a portable twin it is tested against. */
#ifndef FPFS_SIMD_H
#define FPFS_SIMD_H

#include <stdint.h>

#define FPFS_SIMD_PORTABLE 0
#define FPFS_SIMD_AVX2 1

#if defined(__GNUC__) && defined(__x86_64__)
#define FPFS_HAVE_AVX2_KERNELS 1
#include <immintrin.h>
/* popcnt too: every AVX2 CPU has it, and without it __builtin_popcount is a libgcc call */
#define FPFS_AVX2 __attribute__((target("avx2,popcnt")))
#endif

#ifdef FPFS_HAVE_AVX2_KERNELS
/* t[i0], ..., t[i7] as one vector, for the rANS32 decoder's and encoder's table lookups:
   eight scalar loads, not vpgatherdd (faster on AMD Zen 3: 0.67 against 0.78 ns per
   decoded BF16 exponent symbol; no slower on Intel, where gathers are cheaper), inserted
   into registers, not stored and reloaded as one vector (a failed store-to-load forward
   each time: 3-5 % on Zen 3). */
FPFS_AVX2 static inline __m256i fpfs_avx2_lookup8(const int *t, uint32_t i0, uint32_t i1,
                                                 uint32_t i2, uint32_t i3, uint32_t i4,
                                                 uint32_t i5, uint32_t i6, uint32_t i7) {
    __m128i lo = _mm_cvtsi32_si128(t[i0]), hi = _mm_cvtsi32_si128(t[i4]);
    lo = _mm_insert_epi32(lo, t[i1], 1);
    hi = _mm_insert_epi32(hi, t[i5], 1);
    lo = _mm_insert_epi32(lo, t[i2], 2);
    hi = _mm_insert_epi32(hi, t[i6], 2);
    lo = _mm_insert_epi32(lo, t[i3], 3);
    hi = _mm_insert_epi32(hi, t[i7], 3);
    return _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
}
#endif

/* Set once by fpfs_simd_init() before any thread decodes. */
static int fpfs_simd_level = FPFS_SIMD_PORTABLE;

/* Use the best level this CPU has, or at most `level` when level >= 0. */
static void fpfs_simd_init(int level) {
    int best = FPFS_SIMD_PORTABLE;
#ifdef FPFS_HAVE_AVX2_KERNELS
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt"))
        best = FPFS_SIMD_AVX2;
#endif
    fpfs_simd_level = (level >= 0 && level < best) ? level : best;
}

#endif /* FPFS_SIMD_H */
