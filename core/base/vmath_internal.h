/* Shared by vmath.c (the C reference and the dispatch) and vmath_avx512.c (the kernels): the constants of
 * vm_expf, so both paths compute the same polynomial, and the kernel entry points. */
#ifndef QLAB_CORE_BASE_VMATH_INTERNAL_H
#define QLAB_CORE_BASE_VMATH_INTERNAL_H

#include <stddef.h>

/* exp(x) = 2^n e^r, n = rint(x log2 e), r = x - n ln 2 (ln 2 split in a high part with few bits and the
 * rest), e^r = 1 + r + r^2 P(r) with Cephes' expf minimax coefficients (|r| <= ln 2 / 2). */
#define VM_EXP_LO (-87.3365447505531f) /* ln(FLT_MIN): below it the result is flushed to 0 */
#define VM_EXP_HI 88.37f               /* n stays <= 127: above it the result is +inf */
#define VM_LOG2E 1.44269504088896341f
#define VM_LN2_HI 0.693359375f
#define VM_LN2_LO (-2.12194440e-4f)
#define VM_P0 1.9875691500e-4f
#define VM_P1 1.3981999507e-3f
#define VM_P2 8.3334519073e-3f
#define VM_P3 4.1665795894e-2f
#define VM_P4 1.6666665459e-1f
#define VM_P5 5.0000001201e-1f

/* Lanes of every sum; element i goes to lane i % VM_LANES, then lanes are added pairwise (vm_tree). */
#define VM_LANES 16

float vm_tree_f32(float *lanes);
double vm_tree_f64(double *lanes);

float vm_exp_shift_sum_avx512(float *y, const float *x, size_t n, float shift);
double vm_exp_shift_sum_f64_avx512(float *y, const float *x, size_t n, float shift);
double vm_sum_exp_shift_avx512(const float *x, size_t n, float shift);
void vm_sum_exp_cross_avx512(const float *r, const float *x, size_t n, float shift, double *sum,
                             double *cross);
float vm_max_index_avx512(const float *x, size_t n, size_t *index);
size_t vm_first_nonfinite_avx512(const float *x, size_t n);
double vm_dot_f64_avx512(const float *a, const float *b, size_t n);
double vm_dot3_f64_avx512(const float *a, const float *b, const float *c, size_t n);
float vm_scale_max_avx512(float *x, size_t n, float scale);
float vm_scale_exp_sum_avx512(float *x, size_t n, float scale);
void vm_add_avx512(float *out, const float *a, const float *b, size_t n);
void vm_rotate_pairs_avx512(float *y, const float *x, const float *c, const float *s, size_t half);
void vm_softmax_grad_avx512(float *d, const float *p, size_t n, float scale);
void vm_silu_mul_avx512(float *out, const float *g, const float *u, size_t n);
void vm_sigmoid_avx512(float *s, const float *g, size_t n);
void vm_swiglu_backward_avx512(float *dgate, float *dup, float *hs, const float *dout, const float *g,
                               const float *u, size_t n);

#endif
