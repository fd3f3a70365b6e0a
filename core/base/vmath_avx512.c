/* AVX-512 kernels of core/base/vmath.h (compiled with AVX512_FLAGS, called only after the CPU check in
 * vmath.c). Sixteen elements per step; element i is in lane i % 16 of every accumulator, the tail is
 * masked (masked lanes are left untouched, as the C reference never adds to them), and the lanes are
 * reduced by the same tree as the reference, so every result equals vmath.c's bit for bit. */
#include <immintrin.h>
#include <math.h>

#include "core/base/vmath_avx512_inline.h"
#include "core/base/vmath_internal.h"

float vm_exp_shift_sum_avx512(float *y, const float *x, size_t n, float shift) {
    __m512 acc = _mm512_setzero_ps(), s = _mm512_set1_ps(shift);
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512 e = exp16(_mm512_sub_ps(load(x + i, m), s));
        _mm512_mask_storeu_ps(y + i, m, e);
        acc = _mm512_mask_add_ps(acc, m, acc, e);
    }
    return tree16(acc);
}

/* The 16 floats of x as doubles: lanes 0-7 in *lo, 8-15 in *hi. */
static inline void widen(__m512 x, __m512d *lo, __m512d *hi) {
    *lo = _mm512_cvtps_pd(_mm512_castps512_ps256(x));
    *hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)));
}

/* Adds the 16 doubles (lo, hi) to the accumulators under mask m. */
static inline void add_pair(__m512d *acc_lo, __m512d *acc_hi, __m512d lo, __m512d hi, __mmask16 m) {
    *acc_lo = _mm512_mask_add_pd(*acc_lo, (__mmask8)(m & 0xff), *acc_lo, lo);
    *acc_hi = _mm512_mask_add_pd(*acc_hi, (__mmask8)(m >> 8), *acc_hi, hi);
}

/* Adds the 16 floats of e (as doubles) to lanes 0-7 (lo) and 8-15 (hi) under mask m. */
static inline void add_f64(__m512d *lo, __m512d *hi, __m512 e, __mmask16 m) {
    __m512d elo, ehi;
    widen(e, &elo, &ehi);
    add_pair(lo, hi, elo, ehi, m);
}

/* vm_tree_f64 of lanes lo (0-7) and hi (8-15) in registers: the same additions (lane j plus lane j + w for
 * w = 8, 4, 2, 1), so the same bits. */
static double tree_pair(__m512d lo, __m512d hi) {
    __m512d v8 = _mm512_add_pd(lo, hi);
    __m256d v4 = _mm256_add_pd(_mm512_castpd512_pd256(v8), _mm512_extractf64x4_pd(v8, 1));
    __m128d v2 = _mm_add_pd(_mm256_castpd256_pd128(v4), _mm256_extractf128_pd(v4, 1));
    return _mm_cvtsd_f64(_mm_add_sd(v2, _mm_unpackhi_pd(v2, v2)));
}

double vm_exp_shift_sum_f64_avx512(float *y, const float *x, size_t n, float shift) {
    __m512d lo = _mm512_setzero_pd(), hi = _mm512_setzero_pd();
    __m512 s = _mm512_set1_ps(shift);
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512 e = exp16(_mm512_sub_ps(load(x + i, m), s));
        _mm512_mask_storeu_ps(y + i, m, e);
        add_f64(&lo, &hi, e, m);
    }
    return tree_pair(lo, hi);
}

double vm_sum_exp_shift_avx512(const float *x, size_t n, float shift) {
    __m512d lo = _mm512_setzero_pd(), hi = _mm512_setzero_pd();
    __m512 s = _mm512_set1_ps(shift);
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        add_f64(&lo, &hi, exp16(_mm512_sub_ps(load(x + i, m), s)), m);
    }
    return tree_pair(lo, hi);
}

void vm_sum_exp_cross_avx512(const float *r, const float *x, size_t n, float shift, double *sum,
                             double *cross) {
    __m512d slo = _mm512_setzero_pd(), shi = _mm512_setzero_pd();
    __m512d clo = _mm512_setzero_pd(), chi = _mm512_setzero_pd();
    __m512 s = _mm512_set1_ps(shift);
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512 vr = load(r + i, m), vx = load(x + i, m);
        __m512d elo, ehi, rlo, rhi, xlo, xhi;
        widen(exp16(_mm512_sub_ps(vr, s)), &elo, &ehi);
        widen(vr, &rlo, &rhi);
        widen(vx, &xlo, &xhi);
        add_pair(&slo, &shi, elo, ehi, m);
        add_pair(&clo, &chi, _mm512_mul_pd(elo, _mm512_sub_pd(rlo, xlo)),
                 _mm512_mul_pd(ehi, _mm512_sub_pd(rhi, xhi)), m);
    }
    *sum = tree_pair(slo, shi);
    *cross = tree_pair(clo, chi);
}

float vm_max_index_avx512(const float *x, size_t n, size_t *index) {
    __m512 best = _mm512_set1_ps(-INFINITY);
    __m512i at = _mm512_setzero_si512(),
            idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    /* Indices are kept in 32 bits: callers pass rows (a vocabulary), far below 2^31. */
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512 v = load(x + i, m);
        __mmask16 gt = _mm512_mask_cmp_ps_mask(m, v, best, _CMP_GT_OQ);
        best = _mm512_mask_mov_ps(best, gt, v);
        at = _mm512_mask_mov_epi32(at, gt, idx);
        idx = _mm512_add_epi32(idx, _mm512_set1_epi32(16));
    }
    float b[16];
    int a[16];
    _mm512_storeu_ps(b, best);
    _mm512_storeu_si512(a, at);
    float m = -INFINITY;
    int where = 0;
    for (int l = 0; l < 16; l++)
        if (b[l] > m || (b[l] == m && m > -INFINITY && a[l] < where)) m = b[l], where = a[l];
    *index = (size_t)where;
    return m;
}

/* An element is NaN or infinite when its exponent bits are all ones. */
size_t vm_first_nonfinite_avx512(const float *x, size_t n) {
    const __m512i exp = _mm512_set1_epi32(0x7f800000);
    for (size_t i = 0; i < n; i += 16) {
        __m512i u = _mm512_castps_si512(load(x + i, tail_mask(n - i)));
        __mmask16 bad = _mm512_mask_cmpeq_epi32_mask(tail_mask(n - i), _mm512_and_si512(u, exp), exp);
        if (bad) return i + (size_t)__builtin_ctz(bad);
    }
    return n;
}

/* -g as the reference's unary minus: the sign bit flipped (also for 0 and NaN). */
static inline __m512 neg(__m512 g) {
    return _mm512_xor_ps(g, _mm512_set1_ps(-0.0f));
}

double vm_dot_f64_avx512(const float *a, const float *b, size_t n) {
    __m512d lo = _mm512_setzero_pd(), hi = _mm512_setzero_pd();
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512d alo, ahi, blo, bhi;
        widen(load(a + i, m), &alo, &ahi);
        widen(load(b + i, m), &blo, &bhi);
        add_pair(&lo, &hi, _mm512_mul_pd(alo, blo), _mm512_mul_pd(ahi, bhi), m);
    }
    return tree_pair(lo, hi);
}

double vm_dot3_f64_avx512(const float *a, const float *b, const float *c, size_t n) {
    __m512d lo = _mm512_setzero_pd(), hi = _mm512_setzero_pd();
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512d alo, ahi, blo, bhi, clo, chi;
        widen(load(a + i, m), &alo, &ahi);
        widen(load(b + i, m), &blo, &bhi);
        widen(load(c + i, m), &clo, &chi);
        add_pair(&lo, &hi, _mm512_mul_pd(_mm512_mul_pd(alo, blo), clo),
                 _mm512_mul_pd(_mm512_mul_pd(ahi, bhi), chi), m);
    }
    return tree_pair(lo, hi);
}

/* best = the larger of v and best in lanes m; a NaN in v never replaces best. Two accumulators (even and
 * odd vectors) keep the chain short; the maximum does not depend on the order. */
float vm_scale_max_avx512(float *x, size_t n, float scale) {
    __m512 b0 = _mm512_set1_ps(-INFINITY), b1 = b0, s = _mm512_set1_ps(scale);
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512 v0 = _mm512_mul_ps(_mm512_loadu_ps(x + i), s),
               v1 = _mm512_mul_ps(_mm512_loadu_ps(x + i + 16), s);
        _mm512_storeu_ps(x + i, v0);
        _mm512_storeu_ps(x + i + 16, v1);
        b0 = _mm512_max_ps(v0, b0);
        b1 = _mm512_max_ps(v1, b1);
    }
    for (; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512 v = _mm512_mul_ps(load(x + i, m), s);
        _mm512_mask_storeu_ps(x + i, m, v);
        b0 = _mm512_mask_max_ps(b0, m, v, b0);
    }
    return max16(_mm512_max_ps(b1, b0));
}

float vm_scale_exp_sum_avx512(float *x, size_t n, float scale) {
    if (n > VM_ROW) {
        float m = vm_scale_max_avx512(x, n, scale);
        return vm_exp_shift_sum_avx512(x, x, n, m);
    }
    __m512 e[VM_ROW / 16];
    float sum = scale_exp_sum16(e, x, n, scale);
    for (size_t j = 0; j < (n + 15) / 16; j++)
        _mm512_mask_storeu_ps(x + 16 * j, tail_mask(n - 16 * j), e[j]);
    return sum;
}

void vm_add_avx512(float *out, const float *a, const float *b, size_t n) {
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        _mm512_mask_storeu_ps(out + i, m, _mm512_add_ps(load(a + i, m), load(b + i, m)));
    }
}

/* Eight pairs per step: c and s widened to both lanes of a pair, the sine negated in the even lanes, x with
 * its pairs swapped: y = x c + swap(x) (-s, s), products rounded, then added (x0 c + (-(x1 s)) is exactly
 * x0 c - x1 s). */
void vm_rotate_pairs_avx512(float *y, const float *x, const float *c, const float *s, size_t half) {
    const __m512i dup = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
    const __m512 even_sign = _mm512_castsi512_ps(
        _mm512_set_epi32(0, (int)0x80000000, 0, (int)0x80000000, 0, (int)0x80000000, 0, (int)0x80000000, 0,
                         (int)0x80000000, 0, (int)0x80000000, 0, (int)0x80000000, 0, (int)0x80000000));
    for (size_t i = 0; i < half; i += 8) {
        size_t left = half - i;
        __mmask8 m8 = left >= 8 ? (__mmask8)0xff : (__mmask8)((1u << left) - 1);
        __mmask16 m = tail_mask(2 * left);
        __m512 c2 = _mm512_permutexvar_ps(dup, _mm512_castps256_ps512(_mm256_maskz_loadu_ps(m8, c + i)));
        __m512 s2 = _mm512_permutexvar_ps(dup, _mm512_castps256_ps512(_mm256_maskz_loadu_ps(m8, s + i)));
        __m512 v = load(x + 2 * i, m);
        __m512 r = _mm512_add_ps(_mm512_mul_ps(v, c2),
                                 _mm512_mul_ps(_mm512_permute_ps(v, 0xb1), _mm512_xor_ps(s2, even_sign)));
        _mm512_mask_storeu_ps(y + 2 * i, m, r);
    }
}

void vm_softmax_grad_avx512(float *d, const float *p, size_t n, float scale) {
    __m512 total = _mm512_set1_ps(softmax_grad_total16(d, p, n)), s = _mm512_set1_ps(scale);
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        _mm512_mask_storeu_ps(d + i, m, softmax_grad16(s, load(p + i, m), load(d + i, m), total));
    }
}

void vm_silu_mul_avx512(float *out, const float *g, const float *u, size_t n) {
    __m512 one = _mm512_set1_ps(1.0f);
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512 vg = load(g + i, m);
        __m512 e = exp16(neg(vg));
        __m512 q = _mm512_div_ps(vg, _mm512_add_ps(one, e));
        _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(q, load(u + i, m)));
    }
}

void vm_sigmoid_avx512(float *s, const float *g, size_t n) {
    __m512 one = _mm512_set1_ps(1.0f);
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512 e = exp16(neg(load(g + i, m)));
        _mm512_mask_storeu_ps(s + i, m, _mm512_div_ps(one, _mm512_add_ps(one, e)));
    }
}

void vm_swiglu_backward_avx512(float *dgate, float *dup, float *hs, const float *dout, const float *g,
                               const float *u, size_t n) {
    __m512 one = _mm512_set1_ps(1.0f), zero = _mm512_setzero_ps();
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512 vg = load(g + i, m), vu = load(u + i, m), d = load(dout + i, m);
        __m512 den = _mm512_add_ps(one, exp16(neg(vg))), s = _mm512_div_ps(one, den);
        /* s + g s (1 - s), then dout u times it: the C expression's order, no contraction */
        __m512 ds = _mm512_add_ps(s, _mm512_mul_ps(_mm512_mul_ps(vg, s), _mm512_sub_ps(one, s)));
        _mm512_mask_storeu_ps(dgate + i, m, _mm512_add_ps(zero, _mm512_mul_ps(_mm512_mul_ps(d, vu), ds)));
        _mm512_mask_storeu_ps(dup + i, m, _mm512_add_ps(zero, _mm512_mul_ps(d, _mm512_mul_ps(vg, s))));
        if (hs) _mm512_mask_storeu_ps(hs + i, m, _mm512_mul_ps(_mm512_div_ps(vg, den), vu));
    }
}
