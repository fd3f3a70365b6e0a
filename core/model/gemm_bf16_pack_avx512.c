/* AVX-512 forms of the bf16 GEMM's packing (compiled with AVX-512F/BW, no BF16 instruction: used on every
 * AVX-512 path, avx512fma included, after the CPU check in gemm_bf16.c): the RNE rounding of fp32 to bf16,
 * the packing of A and B operands and their transposes, and attention's softmax rows and score gradients
 * rounded for the next product. Each is bit-identical with the scalar code it stands in for
 * (gemm_bf16.c, attention_bf16.c). */
#include <immintrin.h>
#include <string.h>

#include "core/base/vmath.h"
#include "core/base/vmath_avx512_inline.h"
#include "core/model/gemm_bf16_avx512_inline.h"
#include "core/model/gemm_bf16_kernels.h"

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

void gemm_bf16_round_avx512(uint16_t *out, const float *in, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(out + i), round16(_mm512_loadu_ps(in + i)));
    if (i < n) {
        __mmask16 mask = lanes((int)(n - i));
        __m256i r = round16(_mm512_maskz_loadu_ps(mask, in + i));
        _mm256_mask_storeu_epi16(out + i, mask, r);
    }
}

void gemm_bf16_widen_avx512(float *dst, size_t ldd, const uint16_t *src, size_t lds, int rows, int cols) {
    for (int r = 0; r < rows; r++) {
        const uint16_t *s = src + (size_t)r * lds;
        float *d = dst + (size_t)r * ldd;
        for (int c = 0; c < cols; c += 16) {
            __mmask16 mask = lanes(cols - c);
            __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, s + c));
            _mm512_mask_storeu_ps(d + c, mask, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
        }
    }
}

void gemm_bf16_scale_round_avx512(uint16_t *out, const float *x, float r, const float *w, int n, int width) {
    __m512 vr = _mm512_set1_ps(r);
    for (int i = 0; i < width; i += 16) {
        __mmask16 m = lanes(n - i);
        __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), vr),
                                 _mm512_maskz_loadu_ps(m, w + i));
        _mm256_mask_storeu_epi16(out + i, lanes(width - i), round16(v));
    }
}

void gemm_bf16_pack_at_avx512(uint16_t *Ap, int Kp, const float *A, int lda, int K, int mn) {
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

void gemm_bf16_transpose_packed_avx512(uint16_t *At, size_t ldt, int KT, const uint16_t *Ap, int Kp, int MpT,
                                       int stream) {
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

void gemm_bf16_transpose_f32_avx512(float *dst, size_t ldd, const float *src, size_t lds, int rows,
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

void gemm_bf16_pack_bt_avx512(uint16_t *dst, int Kp, const float *X, size_t ld, int rows, int cols) {
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

void gemm_bf16_pack_bn_avx512(uint16_t *dst, size_t bstride, int npairs, const float *X, size_t ld, int rows,
                              int cols, int stream) {
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

void gemm_bf16_softmax_round_avx512(float *row, float *dst, uint16_t *out, int n, float scale, int len,
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

void gemm_bf16_att_grad_pair_avx512(const float *dp, const float *p, size_t ld, int t, int valid, int cols,
                                    float scale, uint16_t *dsp, uint16_t *attp, size_t bstride, uint16_t *a,
                                    int Ka) {
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
