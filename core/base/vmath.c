/* The C reference of core/base/vmath.h and the run-time choice of the AVX-512 kernels (vmath_avx512.c).
 * Every function here is the definition the kernels reproduce bit for bit: the same operations (fused
 * multiply-adds where written as fmaf), the same lane of every sum, the same final tree. */
#include "core/base/vmath.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "core/base/common.h"
#include "core/base/vmath_internal.h"

/* ---------------------------------------------------------------- the reference */

float vm_expf(float x) {
    if (isnan(x)) return x;
    if (x < VM_EXP_LO) return 0.0f;
    if (x > VM_EXP_HI) return INFINITY;
    float n = rintf(x * VM_LOG2E);
    float r = fmaf(n, -VM_LN2_HI, x);
    r = fmaf(n, -VM_LN2_LO, r);
    float p = fmaf(VM_P0, r, VM_P1);
    p = fmaf(p, r, VM_P2);
    p = fmaf(p, r, VM_P3);
    p = fmaf(p, r, VM_P4);
    p = fmaf(p, r, VM_P5);
    float y = fmaf(p, r * r, r) + 1.0f;
    uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return y * scale;
}

float vm_tree_f32(float *lanes) {
    for (int w = VM_LANES / 2; w >= 1; w /= 2)
        for (int j = 0; j < w; j++)
            lanes[j] += lanes[j + w];
    return lanes[0];
}

double vm_tree_f64(double *lanes) {
    for (int w = VM_LANES / 2; w >= 1; w /= 2)
        for (int j = 0; j < w; j++)
            lanes[j] += lanes[j + w];
    return lanes[0];
}

static float exp_shift_sum_c(float *y, const float *x, size_t n, float shift) {
    float lanes[VM_LANES] = {0};
    for (size_t i = 0; i < n; i++) {
        float e = vm_expf(x[i] - shift);
        y[i] = e;
        lanes[i % VM_LANES] += e;
    }
    return vm_tree_f32(lanes);
}

static double exp_shift_sum_f64_c(float *y, const float *x, size_t n, float shift) {
    double lanes[VM_LANES] = {0};
    for (size_t i = 0; i < n; i++) {
        float e = vm_expf(x[i] - shift);
        if (y) y[i] = e;
        lanes[i % VM_LANES] += (double)e;
    }
    return vm_tree_f64(lanes);
}

static double sum_exp_shift_c(const float *x, size_t n, float shift) {
    return exp_shift_sum_f64_c(NULL, x, n, shift);
}

static void sum_exp_cross_c(const float *r, const float *x, size_t n, float shift, double *sum,
                            double *cross) {
    double s[VM_LANES] = {0}, c[VM_LANES] = {0};
    for (size_t i = 0; i < n; i++) {
        double e = (double)vm_expf(r[i] - shift);
        s[i % VM_LANES] += e;
        c[i % VM_LANES] += e * ((double)r[i] - (double)x[i]);
    }
    *sum = vm_tree_f64(s);
    *cross = vm_tree_f64(c);
}

static float max_index_c(const float *x, size_t n, size_t *index) {
    float m = -INFINITY;
    size_t at = 0;
    for (size_t i = 0; i < n; i++)
        if (x[i] > m) m = x[i], at = i;
    *index = at;
    return m;
}

static double dot_f64_c(const float *a, const float *b, size_t n) {
    double lanes[VM_LANES] = {0};
    for (size_t i = 0; i < n; i++)
        lanes[i % VM_LANES] += (double)a[i] * b[i];
    return vm_tree_f64(lanes);
}

static double dot3_f64_c(const float *a, const float *b, const float *c, size_t n) {
    double lanes[VM_LANES] = {0};
    for (size_t i = 0; i < n; i++)
        lanes[i % VM_LANES] += (double)a[i] * b[i] * c[i];
    return vm_tree_f64(lanes);
}

static float scale_max_c(float *x, size_t n, float scale) {
    float m = -INFINITY;
    for (size_t i = 0; i < n; i++) {
        x[i] *= scale;
        if (x[i] > m) m = x[i];
    }
    return m + 0.0f; /* a zero maximum as +0, whichever zero came first */
}

static void softmax_grad_c(float *d, const float *p, size_t n, float scale) {
    float lanes[VM_LANES] = {0};
    for (size_t i = 0; i < n; i++)
        lanes[i % VM_LANES] = fmaf(p[i], d[i], lanes[i % VM_LANES]);
    float total = vm_tree_f32(lanes);
    for (size_t i = 0; i < n; i++)
        d[i] = scale * p[i] * (d[i] - total);
}

static size_t first_nonfinite_c(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return i;
    return n;
}

static void silu_mul_c(float *out, const float *g, const float *u, size_t n) {
    for (size_t i = 0; i < n; i++)
        out[i] = g[i] / (1.0f + vm_expf(-g[i])) * u[i];
}

static void sigmoid_c(float *s, const float *g, size_t n) {
    for (size_t i = 0; i < n; i++)
        s[i] = 1.0f / (1.0f + vm_expf(-g[i]));
}

static void swiglu_backward_c(float *dgate, float *dup, float *hs, const float *dout, const float *g,
                              const float *u, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float gi = g[i], ui = u[i], d = dout[i], den = 1.0f + vm_expf(-gi), s = 1.0f / den;
        dgate[i] = 0.0f + d * ui * (s + gi * s * (1.0f - s));
        dup[i] = 0.0f + d * (gi * s);
        if (hs) hs[i] = gi / den * ui;
    }
}

/* ---------------------------------------------------------------- dispatch */

static int force_c_;

static int use_avx512(void) {
    return !force_c_ && qlab_cpu_avx512();
}

const char *vm_path_name(void) {
    return use_avx512() ? "avx512" : "c";
}

void vm_force_c(int on) {
    force_c_ = on;
}

float vm_exp_shift_sum(float *y, const float *x, size_t n, float shift) {
    return use_avx512() ? vm_exp_shift_sum_avx512(y, x, n, shift) : exp_shift_sum_c(y, x, n, shift);
}

double vm_exp_shift_sum_f64(float *y, const float *x, size_t n, float shift) {
    return use_avx512() ? vm_exp_shift_sum_f64_avx512(y, x, n, shift) : exp_shift_sum_f64_c(y, x, n, shift);
}

double vm_sum_exp_shift(const float *x, size_t n, float shift) {
    return use_avx512() ? vm_sum_exp_shift_avx512(x, n, shift) : sum_exp_shift_c(x, n, shift);
}

void vm_sum_exp_cross(const float *r, const float *x, size_t n, float shift, double *sum, double *cross) {
    if (use_avx512())
        vm_sum_exp_cross_avx512(r, x, n, shift, sum, cross);
    else
        sum_exp_cross_c(r, x, n, shift, sum, cross);
}

float vm_max_index(const float *x, size_t n, size_t *index) {
    return use_avx512() ? vm_max_index_avx512(x, n, index) : max_index_c(x, n, index);
}

size_t vm_first_nonfinite(const float *x, size_t n) {
    return use_avx512() ? vm_first_nonfinite_avx512(x, n) : first_nonfinite_c(x, n);
}

double vm_dot_f64(const float *a, const float *b, size_t n) {
    return use_avx512() ? vm_dot_f64_avx512(a, b, n) : dot_f64_c(a, b, n);
}

double vm_dot3_f64(const float *a, const float *b, const float *c, size_t n) {
    return use_avx512() ? vm_dot3_f64_avx512(a, b, c, n) : dot3_f64_c(a, b, c, n);
}

float vm_scale_max(float *x, size_t n, float scale) {
    return use_avx512() ? vm_scale_max_avx512(x, n, scale) : scale_max_c(x, n, scale);
}

float vm_scale_exp_sum(float *x, size_t n, float scale) {
    if (use_avx512()) return vm_scale_exp_sum_avx512(x, n, scale);
    float m = scale_max_c(x, n, scale);
    return exp_shift_sum_c(x, x, n, m);
}

void vm_add(float *out, const float *a, const float *b, size_t n) {
    if (use_avx512()) {
        vm_add_avx512(out, a, b, n);
        return;
    }
    for (size_t i = 0; i < n; i++)
        out[i] = a[i] + b[i];
}

void vm_rotate_pairs(float *y, const float *x, const float *c, const float *s, size_t half) {
    if (use_avx512()) {
        vm_rotate_pairs_avx512(y, x, c, s, half);
        return;
    }
    for (size_t i = 0; i < half; i++) {
        float x0 = x[2 * i], x1 = x[2 * i + 1];
        y[2 * i] = x0 * c[i] - x1 * s[i];
        y[2 * i + 1] = x0 * s[i] + x1 * c[i];
    }
}

void vm_softmax_grad(float *d, const float *p, size_t n, float scale) {
    if (use_avx512())
        vm_softmax_grad_avx512(d, p, n, scale);
    else
        softmax_grad_c(d, p, n, scale);
}

void vm_silu_mul(float *out, const float *g, const float *u, size_t n) {
    if (use_avx512())
        vm_silu_mul_avx512(out, g, u, n);
    else
        silu_mul_c(out, g, u, n);
}

void vm_sigmoid(float *s, const float *g, size_t n) {
    if (use_avx512())
        vm_sigmoid_avx512(s, g, n);
    else
        sigmoid_c(s, g, n);
}

void vm_swiglu_backward(float *dgate, float *dup, float *hs, const float *dout, const float *g,
                        const float *u, size_t n) {
    if (use_avx512())
        vm_swiglu_backward_avx512(dgate, dup, hs, dout, g, u, n);
    else
        swiglu_backward_c(dgate, dup, hs, dout, g, u, n);
}
