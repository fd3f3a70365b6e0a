/* AVX-512 helpers shared by the bf16 GEMM's files (gemm_bf16_avx512bf16.c, gemm_bf16_fma_avx512.c,
 * gemm_bf16_pack_avx512.c): AVX-512F/BW instructions only, inlined into files compiled for those ISAs. */
#ifndef QLAB_GEMM_BF16_AVX512_INLINE_H
#define QLAB_GEMM_BF16_AVX512_INLINE_H

#include <immintrin.h>

/* The first n of 16 lanes (none for n <= 0, all for n >= 16). */
static inline __mmask16 lanes(int n) {
    return n >= 16 ? (__mmask16)0xffff : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

/* r[i] element j -> r[j] element i, for 16 x 16 32-bit words: unpack 32-bit and 64-bit pairs within
 * 128-bit lanes, then gather the lanes of each column group. */
static inline void transpose16(__m512i r[16]) {
    __m512i t[16], u[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int g = 0; g < 16; g += 4) {
        u[g] = _mm512_unpacklo_epi64(t[g], t[g + 2]);
        u[g + 1] = _mm512_unpackhi_epi64(t[g], t[g + 2]);
        u[g + 2] = _mm512_unpacklo_epi64(t[g + 1], t[g + 3]);
        u[g + 3] = _mm512_unpackhi_epi64(t[g + 1], t[g + 3]);
    }
    /* u[4g + j], lane L: rows 4g..4g+3 of column 4L + j */
    for (int j = 0; j < 4; j++) {
        __m512i x0 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0x44),
                x1 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0xee);
        __m512i y0 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0x44),
                y1 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0xee);
        r[j] = _mm512_shuffle_i32x4(x0, y0, 0x88);
        r[4 + j] = _mm512_shuffle_i32x4(x0, y0, 0xdd);
        r[8 + j] = _mm512_shuffle_i32x4(x1, y1, 0x88);
        r[12 + j] = _mm512_shuffle_i32x4(x1, y1, 0xdd);
    }
}

#endif
