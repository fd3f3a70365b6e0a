/* AVX-512 BF16 kernel of the bf16 GEMM (compiled with -mavx512bf16, called only after the CPU check in
 * gemm_bf16.c). Register block: 8 rows x 32 columns = 16 zmm accumulators; per k pair, two 64-byte loads
 * of B (two packed panels), eight 32-bit broadcasts of A and sixteen vdpbf16ps. Every output element is
 * accumulated over k pairs in order in one accumulator lane, with the instruction's own two-step rounding
 * (odd element first, then even, each an FMA with DAZ/FTZ), so the result equals the scalar reference's
 * bit for bit. Also the vector form of the RNE rounding used for packing, and the packing of a transposed
 * A. */
#include <immintrin.h>
#include <string.h>

#include "core/base/vmath.h"
#include "core/base/vmath_avx512_inline.h"
#include "core/model/gemm_bf16_kernels.h"

#define MR 8

/* The first n of 16 lanes (none for n <= 0, all for n >= 16). */
static inline __mmask16 lanes(int n) {
    return n >= 16 ? (__mmask16)0xffff : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

/* Rows [m0, m0 + rows) x panels j0, j0 + npan - 1 of C over k pairs [0, Kp/2): A rows lda elements apart,
 * B panels bstride elements apart. */
static inline __attribute__((always_inline)) void tile(const uint16_t *Ap, size_t lda, const uint16_t *Bp,
                                                       size_t bstride, int Kp, int m0, int rows, int j0,
                                                       int npan, int ncols, float *C, int ldc,
                                                       int accumulate) {
    __m512 acc[MR][2];
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++)
        acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    const uint16_t *b0 = Bp + (size_t)j0 * bstride;
    const uint16_t *b1 = b0 + bstride;
    const uint16_t *a = Ap + (size_t)m0 * lda;
    int KP2 = Kp / 2;
    for (int p = 0; p < KP2; p++) {
        __m512bh vb0 = (__m512bh)_mm512_loadu_si512(b0 + (size_t)p * 32);
        __m512bh vb1 = vb0;
        if (npan == 2) vb1 = (__m512bh)_mm512_loadu_si512(b1 + (size_t)p * 32);
#pragma GCC unroll 8
        for (int r = 0; r < MR; r++) {
            int32_t pair;
            memcpy(&pair, a + (size_t)r * lda + 2 * p, 4);
            __m512bh va = (__m512bh)_mm512_set1_epi32(pair);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], va, vb0);
            if (npan == 2) acc[r][1] = _mm512_dpbf16_ps(acc[r][1], va, vb1);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++) {
        if (r >= rows) break;
        float *c = C + (size_t)(m0 + r) * ldc + (size_t)j0 * GEMM_BF16_PANEL;
#pragma GCC unroll 2
        for (int q = 0; q < npan; q++) {
            int valid = ncols - (j0 + q) * GEMM_BF16_PANEL;
            if (valid <= 0) break;
            __mmask16 mask = lanes(valid);
            __m512 v = acc[r][q];
            if (accumulate) v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, c + q * 16), v);
            _mm512_mask_storeu_ps(c + q * 16, mask, v);
        }
    }
}

void gemm_bf16_kernel_avx512bf16(const uint16_t *Ap, const uint16_t *Bp, int M, int ncols, int Kp, int K,
                                 float *C, int ldc, int accumulate) {
    int npanels = (ncols + GEMM_BF16_PANEL - 1) / GEMM_BF16_PANEL;
    /* whole pairs (a pair with one padding zero still runs), then one pair of padding zeros: it turns an
     * accumulator flushed to -0 into +0 as the rest of the padding would, and the pairs after it change
     * nothing */
    int Ku = (K + 1) / 2 * 2 + 2;
    if (Ku > Kp) Ku = Kp;
    int mt = (M + MR - 1) / MR, nt = (npanels + 1) / 2;
    long tiles = (long)mt * nt;
#pragma omp parallel for schedule(static)
    for (long t = 0; t < tiles; t++) {
        int jt = (int)(t / mt), it = (int)(t % mt);
        int m0 = it * MR, rows = M - m0 < MR ? M - m0 : MR, j0 = 2 * jt;
        size_t bstride = (size_t)GEMM_BF16_PANEL * Kp;
        if (j0 + 1 < npanels)
            tile(Ap, (size_t)Kp, Bp, bstride, Ku, m0, rows, j0, 2, ncols, C, ldc, accumulate);
        else
            tile(Ap, (size_t)Kp, Bp, bstride, Ku, m0, rows, j0, 1, ncols, C, ldc, accumulate);
    }
}

void gemm_bf16_block_avx512bf16(const uint16_t *A, size_t lda, const uint16_t *B, size_t bstride, int M,
                                int ncols, int Kp, float *C, int ldc, int accumulate) {
    int npanels = (ncols + GEMM_BF16_PANEL - 1) / GEMM_BF16_PANEL;
    for (int j0 = 0; j0 < npanels; j0 += 2)
        for (int m0 = 0; m0 < M; m0 += MR) {
            int rows = M - m0 < MR ? M - m0 : MR;
            if (j0 + 1 < npanels)
                tile(A, lda, B, bstride, Kp, m0, rows, j0, 2, ncols, C, ldc, accumulate);
            else
                tile(A, lda, B, bstride, Kp, m0, rows, j0, 1, ncols, C, ldc, accumulate);
        }
}

/* RNE as core/base/half.h f32_to_bf16: u + 0x7fff + ((u >> 16) & 1), NaNs quieted by setting bit 6; the
 * bf16 bits in the low half of each 32-bit lane. */
static inline __m512i round32(__m512 x) {
    __m512i u = _mm512_castps_si512(x);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
    __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                            _mm512_set1_epi32(0x7f800000));
    __m512i q = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    return _mm512_mask_mov_epi32(r, nan, q);
}

static inline __m256i round16(__m512 x) {
    return _mm512_cvtepi32_epi16(round32(x));
}

void gemm_bf16_round_avx512bf16(uint16_t *out, const float *in, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(out + i), round16(_mm512_loadu_ps(in + i)));
    if (i < n) {
        __mmask16 mask = lanes((int)(n - i));
        __m256i r = round16(_mm512_maskz_loadu_ps(mask, in + i));
        _mm256_mask_storeu_epi16(out + i, mask, r);
    }
}

void gemm_bf16_scale_round_avx512bf16(uint16_t *out, const float *x, float r, const float *w, int n,
                                      int width) {
    __m512 vr = _mm512_set1_ps(r);
    for (int i = 0; i < width; i += 16) {
        __mmask16 m = lanes(n - i);
        __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), vr),
                                 _mm512_maskz_loadu_ps(m, w + i));
        _mm256_mask_storeu_epi16(out + i, lanes(width - i), round16(v));
    }
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

void gemm_bf16_pack_at_avx512bf16(uint16_t *Ap, int Kp, const float *A, int lda, int K, int mn) {
    __mmask16 mask = lanes(mn);
    for (int k0 = 0; k0 < Kp; k0 += 32) {
        /* r[p][i] = bf16(A[k0 + 2p][i]) | bf16(A[k0 + 2p + 1][i]) << 16: zero beyond K and mn */
        __m512i r[16];
        for (int p = 0; p < 16; p++) {
            int k = k0 + 2 * p;
            __m512i lo =
                k < K ? round32(_mm512_maskz_loadu_ps(mask, A + (size_t)k * lda)) : _mm512_setzero_si512();
            __m512i hi = k + 1 < K ? round32(_mm512_maskz_loadu_ps(mask, A + (size_t)(k + 1) * lda))
                                   : _mm512_setzero_si512();
            r[p] = _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16));
        }
        /* row i of the block = column i of r */
        transpose16(r);
        for (int i = 0; i < 16; i++)
            _mm512_storeu_si512(Ap + (size_t)i * Kp + k0, r[i]);
    }
}

/* A whole 64-byte line of a destination, past the caches when stream is set (dst 64-byte aligned). */
static inline void store_line(void *dst, __m512i v, int stream) {
    if (stream)
        _mm512_stream_si512((__m512i *)dst, v);
    else
        _mm512_storeu_si512(dst, v);
}

void gemm_bf16_transpose_packed_avx512bf16(uint16_t *At, size_t ldt, int KT, const uint16_t *Ap, int Kp,
                                           int MpT, int stream) {
    stream = stream && ((uintptr_t)At & 63) == 0 && ldt % 32 == 0;
    for (int m0 = 0; m0 < MpT; m0 += 16)
        for (int k0 = 0; k0 < KT; k0 += 32) {
            /* r[p] word i = Ap[k0 + 2p][m0 + i] | Ap[k0 + 2p + 1][m0 + i] << 16; transposed, row i */
            __m512i r[16];
            for (int p = 0; p < 16; p++) {
                const uint16_t *a = Ap + (size_t)(k0 + 2 * p) * Kp + m0;
                __m512i lo = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)a));
                __m512i hi = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(a + Kp)));
                r[p] = _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16));
            }
            transpose16(r);
            for (int i = 0; i < 16; i++)
                store_line(At + (size_t)(m0 + i) * ldt + k0, r[i], stream);
        }
    if (stream) _mm_sfence();
}

void gemm_bf16_transpose_f32_avx512bf16(float *dst, size_t ldd, const float *src, size_t lds, int rows,
                                        int cols) {
    for (int r0 = 0; r0 < rows; r0 += 16)
        for (int c0 = 0; c0 < cols; c0 += 16) {
            int nr = rows - r0 < 16 ? rows - r0 : 16, nc = cols - c0 < 16 ? cols - c0 : 16;
            __mmask16 mc = lanes(nc), mr = lanes(nr);
            __m512i r[16];
            for (int i = 0; i < 16; i++)
                r[i] = i < nr ? _mm512_maskz_loadu_epi32(mc, src + (size_t)(r0 + i) * lds + c0)
                              : _mm512_setzero_si512();
            transpose16(r);
            for (int j = 0; j < nc; j++)
                _mm512_mask_storeu_epi32(dst + (size_t)(c0 + j) * ldd + r0, mr, r[j]);
        }
}

/* 32 fp32 values (n <= 32 valid, zero beyond) rounded to 16 bf16 pairs: word p = bf16(x[2p]) | bf16(x[2p+1])
 * << 16. */
static inline __m512i round_pairs(const float *x, int n) {
    __m256i lo = round16(_mm512_maskz_loadu_ps(lanes(n), x)),
            hi = round16(_mm512_maskz_loadu_ps(lanes(n - 16), x + 16));
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

void gemm_bf16_pack_bt_avx512bf16(uint16_t *dst, int Kp, const float *X, size_t ld, int rows, int cols) {
    int npan = (rows + 15) / 16;
    for (int j = 0; j < npan; j++) {
        uint16_t *out = dst + (size_t)j * 16 * Kp;
        for (int k0 = 0; k0 < Kp; k0 += 32) {
            /* r[c] = the 16 pairs k0/2.. of row 16j + c; transposed, r[p] = pair k0/2 + p of the 16 rows */
            __m512i r[16];
            for (int c = 0; c < 16; c++) {
                int s = j * 16 + c;
                r[c] = s < rows ? round_pairs(X + (size_t)s * ld + k0, cols - k0) : _mm512_setzero_si512();
            }
            transpose16(r);
            for (int p = 0; p < 16; p++)
                _mm512_storeu_si512(out + (size_t)(k0 / 2 + p) * 32, r[p]);
        }
    }
}

void gemm_bf16_pack_bn_avx512bf16(uint16_t *dst, size_t bstride, int npairs, const float *X, size_t ld,
                                  int rows, int cols, int stream) {
    stream = stream && ((uintptr_t)dst & 63) == 0 && bstride % 32 == 0;
    int npan = (cols + 15) / 16;
    for (int p = 0; p < npairs; p++) {
        int s = 2 * p;
        for (int j = 0; j < npan; j++) {
            __mmask16 mask = lanes(cols - 16 * j);
            __m512i lo = s < rows ? round32(_mm512_maskz_loadu_ps(mask, X + (size_t)s * ld + 16 * j))
                                  : _mm512_setzero_si512();
            __m512i hi = s + 1 < rows
                             ? round32(_mm512_maskz_loadu_ps(mask, X + (size_t)(s + 1) * ld + 16 * j))
                             : _mm512_setzero_si512();
            store_line(dst + (size_t)j * bstride + (size_t)p * 32,
                       _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)), stream);
        }
    }
    if (stream) _mm_sfence();
}

/* A row's probabilities v of elements i.. to dst (lanes before len; none when len is 0) and, rounded, to
 * out (lanes before Kr). */
static inline void store_probs(float *dst, uint16_t *out, int i, __m512 v, int len, int Kr) {
    __mmask16 mrow = lanes(len - i), mout = lanes(Kr - i);
    if (mrow) _mm512_mask_storeu_ps(dst + i, mrow, v);
    if (mout) _mm256_mask_storeu_epi16(out + i, mout, round16(v));
}

void gemm_bf16_softmax_round_avx512bf16(float *row, float *dst, uint16_t *out, int n, float scale, int len,
                                        int Kr) {
    /* past n, zeros times 1 / sum, as the scalar loops form them */
    if (n > VM_ROW) { /* the exponentials over the row (vm_scale_exp_sum), then read back */
        __m512 vi = _mm512_set1_ps(1.0f / vm_scale_exp_sum(row, (size_t)n, scale));
        for (int i = 0; i < n || i < len || i < Kr; i += 16)
            store_probs(dst, out, i, _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes(n - i), row + i), vi), len,
                        Kr);
        return;
    }
    __m512 e[VM_ROW / 16];
    __m512 vi = _mm512_set1_ps(1.0f / scale_exp_sum16(e, row, (size_t)n, scale));
    int nv = (n + 15) / 16;
    for (int i = 0, j = 0; i < n || i < len || i < Kr; i += 16, j++)
        store_probs(dst, out, i, _mm512_mul_ps(j < nv ? e[j] : _mm512_setzero_ps(), vi), len, Kr);
}

void gemm_bf16_att_grad_pair_avx512bf16(const float *dp, const float *p, size_t ld, int t, int valid,
                                        int cols, float scale, uint16_t *dsp, uint16_t *attp, size_t bstride,
                                        uint16_t *a, int Ka) {
    const float *dp1 = dp + ld, *p1 = p + ld;
    __m512 s = _mm512_set1_ps(scale), tot0 = _mm512_set1_ps(softmax_grad_total16(dp, p, (size_t)t + 1));
    __m512 tot1 = valid == 2 ? _mm512_set1_ps(softmax_grad_total16(dp1, p1, (size_t)t + 2)) : tot0;
    int npan = (cols + 15) / 16;
    for (int j = 0; j < npan; j++) {
        int i = 16 * j;
        __mmask16 m0 = lanes(t + 1 - i), m1 = valid == 2 ? lanes(t + 2 - i) : 0, mc = lanes(cols - i);
        /* ds: the softmax backward on and below the diagonal, zero past it */
        __m512 g0 = _mm512_maskz_mov_ps(
            m0, softmax_grad16(s, _mm512_maskz_loadu_ps(m0, p + i), _mm512_maskz_loadu_ps(m0, dp + i), tot0));
        __m512 g1 = _mm512_maskz_mov_ps(m1, softmax_grad16(s, _mm512_maskz_loadu_ps(m1, p1 + i),
                                                           _mm512_maskz_loadu_ps(m1, dp1 + i), tot1));
        __m512i lo = round32(g0), hi = round32(g1);
        _mm512_storeu_si512(dsp + (size_t)j * bstride, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
        _mm256_storeu_si256((__m256i *)(a + i), _mm512_cvtepi32_epi16(lo));
        if (valid == 2) _mm256_storeu_si256((__m256i *)(a + Ka + i), _mm512_cvtepi32_epi16(hi));
        /* the probabilities as gemm_bf16_pack_bn reads them: keys [0, cols) */
        __m512i plo = round32(_mm512_maskz_loadu_ps(mc, p + i));
        __m512i phi = valid == 2 ? round32(_mm512_maskz_loadu_ps(mc, p1 + i)) : _mm512_setzero_si512();
        _mm512_storeu_si512(attp + (size_t)j * bstride, _mm512_or_si512(plo, _mm512_slli_epi32(phi, 16)));
    }
    for (int r = 0; r < valid; r++)
        memset(a + (size_t)r * Ka + 16 * npan, 0, sizeof(uint16_t) * (size_t)(Ka - 16 * npan));
}
