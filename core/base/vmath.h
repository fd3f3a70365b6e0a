/* Vector math for the model's fp32 elementwise work: exp, the shifted-exp sums of softmax and
 * log-softmax, and SiLU. One definition of each function (vm_expf below, a Cephes-style polynomial with
 * explicit fused multiply-adds), computed by a plain C reference or an AVX-512 kernel chosen at run time;
 * both give the same bits for every input, including the order of every sum (16 lanes, element i in lane
 * i % 16, then a fixed pairwise tree), so results do not depend on the CPU.
 *
 * vm_expf is within 2 ulp of exp over the normal range (tests/test_vmath.c measures it); results below
 * FLT_MIN (x < -87.3365) are flushed to 0 and x > 88.3763 gives +inf; NaN stays NaN. */
#ifndef QLAB_CORE_BASE_VMATH_H
#define QLAB_CORE_BASE_VMATH_H

#include <stddef.h>

/* The reference definition (always the plain C path). */
float vm_expf(float x);

/* y[i] = exp(x[i] - shift); returns the sum of y in fp32 (the lane order above). y may equal x. */
float vm_exp_shift_sum(float *y, const float *x, size_t n, float shift);

/* y[i] = exp(x[i] - shift); returns the sum of y accumulated in double (the lane order above). */
double vm_exp_shift_sum_f64(float *y, const float *x, size_t n, float shift);

/* sum of exp(x[i] - shift) in double, nothing stored. */
double vm_sum_exp_shift(const float *x, size_t n, float shift);

/* With e[i] = exp(r[i] - shift): *sum = sum e[i], *cross = sum e[i] * ((double)r[i] - (double)x[i]), both
 * in double. The KL divergence from r's softmax to x's is cross / sum - lse(r) + lse(x). */
void vm_sum_exp_cross(const float *r, const float *x, size_t n, float shift, double *sum, double *cross);

/* The largest x[i] and the first index holding it (n > 0; a NaN is never the maximum). */
float vm_max_index(const float *x, size_t n, size_t *index);

/* sum of a[i] * b[i], each product formed and accumulated in double, in the lane order above. */
double vm_dot_f64(const float *a, const float *b, size_t n);

/* sum of a[i] * b[i] * c[i], each product formed and accumulated in double, in the lane order above. */
double vm_dot3_f64(const float *a, const float *b, const float *c, size_t n);

/* x[i] *= scale; returns the largest product (a NaN is never the maximum; -inf when there is none; +0 for
 * a zero maximum). */
float vm_scale_max(float *x, size_t n, float scale);

/* x[i] = exp(scale * x[i] - m), m the largest scale * x[i]: vm_scale_max then vm_exp_shift_sum with shift m,
 * the same bits, in one call (the row stays in registers when it is short); returns the fp32 sum of the
 * exponentials in the lane order above. */
float vm_scale_exp_sum(float *x, size_t n, float scale);

/* The backward of a softmax row p with the logits scaled by scale: d holds d(p) on entry and
 * d(logits) = scale * p[i] * (d[i] - <p, d>) on exit, the dot product summed in the lane order above (each
 * lane one fused multiply-add per element). */
void vm_softmax_grad(float *d, const float *p, size_t n, float scale);

/* The index of the first NaN or infinite x[i], or n when every element is finite. */
size_t vm_first_nonfinite(const float *x, size_t n);

/* out[i] = silu(g[i]) * u[i] = g / (1 + exp(-g)) * u. */
void vm_silu_mul(float *out, const float *g, const float *u, size_t n);

/* s[i] = 1 / (1 + exp(-g[i])). */
void vm_sigmoid(float *s, const float *g, size_t n);

/* SwiGLU's backward with its forward output formed again, one exponential per element: with s = sigmoid(g)
 * as vm_sigmoid forms it, dgate = 0 + dout u (s + g s (1 - s)) and dup = 0 + dout (g s) (the expressions and
 * order of swiglu_backward_rows on zeroed buffers, so the same bits), and, when hs is not NULL, hs = silu(g)
 * u as vm_silu_mul forms it. hs may be dout (each element is read before it is written). */
void vm_swiglu_backward(float *dgate, float *dup, float *hs, const float *dout, const float *g,
                        const float *u, size_t n);

/* out[i] = a[i] + b[i]. */
void vm_add(float *out, const float *a, const float *b, size_t n);

/* The pairs (x[2i], x[2i+1]) rotated by the angles whose cosines and sines are c[i] and s[i], i < half:
 * y[2i] = x[2i] c[i] - x[2i+1] s[i], y[2i+1] = x[2i] s[i] + x[2i+1] c[i] (each product rounded, then the
 * sum: no fused multiply-add). y may equal x. */
void vm_rotate_pairs(float *y, const float *x, const float *c, const float *s, size_t half);

/* Which path runs: "avx512" or "c". vm_force_c(1) makes every call take the C reference (tests). */
const char *vm_path_name(void);
void vm_force_c(int on);

#endif
