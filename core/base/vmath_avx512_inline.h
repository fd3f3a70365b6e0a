/* The AVX-512 building blocks of core/base/vmath.h's kernels, shared with the other kernels that must give
 * the same bits (the bf16 attention's fused softmax in core/model/gemm_bf16_pack_avx512.c). Only for files
 * compiled with AVX-512 (AVX512_FLAGS and up). */
#ifndef QLAB_CORE_BASE_VMATH_AVX512_INLINE_H
#define QLAB_CORE_BASE_VMATH_AVX512_INLINE_H

#include <immintrin.h>
#include <math.h>
#include <stddef.h>

#include "core/base/vmath_internal.h"

static inline __mmask16 tail_mask(size_t left) {
    return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
}

/* vm_tree_f32 of the 16 lanes of acc in registers: the same additions (lane j plus lane j + w for w = 8, 4,
 * 2, 1), so the same bits. */
static inline float tree16(__m512 acc) {
    __m256 v8 = _mm256_add_ps(_mm512_castps512_ps256(acc),
                              _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc), 1)));
    __m128 v4 = _mm_add_ps(_mm256_castps256_ps128(v8), _mm256_extractf128_ps(v8, 1));
    __m128 v2 = _mm_add_ps(v4, _mm_movehl_ps(v4, v4));
    return _mm_cvtss_f32(_mm_add_ss(v2, _mm_movehdup_ps(v2)));
}

/* vm_expf on 16 lanes: the same clamps, rounding and fused multiply-adds; the scaling by 2^n (n an integer
 * in [-126, 127] here, so 2^n is a normal number) with VSCALEFPS, which rounds the same exact product once
 * as the reference's multiplication by 2^n does. The lanes' clamps are applied only when a lane needs one. */
static inline __m512 exp16(__m512 x) {
    __mmask16 ok = _mm512_mask_cmp_ps_mask(_mm512_cmp_ps_mask(x, _mm512_set1_ps(VM_EXP_LO), _CMP_GE_OQ), x,
                                           _mm512_set1_ps(VM_EXP_HI), _CMP_LE_OQ); /* false for NaN */
    __m512 xc = ok == 0xffff ? x : _mm512_maskz_mov_ps(ok, x);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(VM_LOG2E)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-VM_LN2_HI), xc);
    r = _mm512_fmadd_ps(n, _mm512_set1_ps(-VM_LN2_LO), r);
    __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(VM_P0), r, _mm512_set1_ps(VM_P1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(VM_P2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(VM_P3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(VM_P4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(VM_P5));
    __m512 y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
    y = _mm512_scalef_ps(y, n);
    if (ok == 0xffff) return y;
    __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    __mmask16 lo = _mm512_cmp_ps_mask(x, _mm512_set1_ps(VM_EXP_LO), _CMP_LT_OQ);
    __mmask16 hi = _mm512_cmp_ps_mask(x, _mm512_set1_ps(VM_EXP_HI), _CMP_GT_OQ);
    y = _mm512_mask_mov_ps(y, lo, _mm512_setzero_ps());
    y = _mm512_mask_mov_ps(y, hi, _mm512_set1_ps(INFINITY));
    return _mm512_mask_mov_ps(y, nan, x);
}

static inline __m512 load(const float *p, __mmask16 m) {
    return m == 0xffff ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(m, p);
}

/* The largest of lanes that hold no NaN (VMAXPS returns its second operand when the first is NaN; which zero
 * wins does not matter once the result is added to +0): the reference's "largest non-NaN, a zero maximum as
 * +0" in any order. */
static inline float max16(__m512 best) {
    return _mm512_reduce_max_ps(best) + 0.0f;
}

/* <p, d> over [0, n) as vm_softmax_grad sums it: one fused multiply-add per element in lane i % 16, then the
 * lanes' tree. */
static inline float softmax_grad_total16(const float *d, const float *p, size_t n) {
    __m512 acc = _mm512_setzero_ps();
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        acc = _mm512_mask_mov_ps(acc, m, _mm512_fmadd_ps(load(p + i, m), load(d + i, m), acc));
    }
    return tree16(acc);
}

/* The softmax's input gradient of 16 elements: scale * p * (d - total). */
static inline __m512 softmax_grad16(__m512 scale, __m512 p, __m512 d, __m512 total) {
    return _mm512_mul_ps(_mm512_mul_ps(scale, p), _mm512_sub_ps(d, total));
}

/* Rows of up to VM_ROW values are scaled, reduced and exponentiated in registers (one load per element),
 * with the operations of vm_scale_max_avx512 and vm_exp_shift_sum_avx512 in their order: e[j] holds
 * exp(scale x - max) of elements 16j.. (lanes past n zero), the sum of the exponentials is returned. */
#define VM_ROW 256

static inline float scale_exp_sum16(__m512 e[VM_ROW / 16], const float *x, size_t n, float scale) {
    __m512 b0 = _mm512_set1_ps(-INFINITY), b1 = b0, s = _mm512_set1_ps(scale);
    size_t nv = (n + 15) / 16;
    for (size_t j = 0; j < nv; j++) {
        __mmask16 m = tail_mask(n - 16 * j);
        e[j] = _mm512_mul_ps(load(x + 16 * j, m), s);
        if (j & 1)
            b1 = _mm512_mask_max_ps(b1, m, e[j], b1);
        else
            b0 = _mm512_mask_max_ps(b0, m, e[j], b0);
    }
    __m512 acc = _mm512_setzero_ps(), shift = _mm512_set1_ps(max16(_mm512_max_ps(b1, b0)));
    for (size_t j = 0; j < nv; j++) {
        __mmask16 m = tail_mask(n - 16 * j);
        e[j] = _mm512_maskz_mov_ps(m, exp16(_mm512_sub_ps(e[j], shift)));
        acc = _mm512_mask_add_ps(acc, m, acc, e[j]);
    }
    return tree16(acc);
}

#endif
