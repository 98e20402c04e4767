/* Which SIMD kernels the decoders of fpfs_decode.h use: chosen once at start-up by what
 * the CPU has (fpfs_decode_init), or forced portable with FPFS_SIMD=portable in the
 * environment (fpfs/_kernels reads it at import; CI runs the test suite once that way).
 * SIMD kernels are compiled with target attributes, so the module itself stays baseline
 * x86-64 and runs anywhere; every SIMD kernel has a portable twin it is tested against. */
#ifndef FPFS_SIMD_H
#define FPFS_SIMD_H

#define FPFS_SIMD_PORTABLE 0
#define FPFS_SIMD_AVX2 1

#if defined(__GNUC__) && defined(__x86_64__)
#define FPFS_HAVE_AVX2_KERNELS 1
#include <immintrin.h>
#define FPFS_AVX2 __attribute__((target("avx2")))
#endif

/* Set once by fpfs_simd_init() before any thread decodes. */
static int fpfs_simd_level = FPFS_SIMD_PORTABLE;

/* Use the best level this CPU has, or at most `level` when level >= 0. */
static void fpfs_simd_init(int level) {
    int best = FPFS_SIMD_PORTABLE;
#ifdef FPFS_HAVE_AVX2_KERNELS
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2"))
        best = FPFS_SIMD_AVX2;
#endif
    fpfs_simd_level = (level >= 0 && level < best) ? level : best;
}

#endif /* FPFS_SIMD_H */
