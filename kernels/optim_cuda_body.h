/* Kernel body of the 32-bit AdamW step, shared by kernels/optim_cuda.cu (GPU) and the CPU emulation.
 * Every fp32 operation is explicitly rounded (cuda_compat.h), so GPU, emulation and a plain C loop in the
 * same order give identical bits. */
#ifndef QLAB_OPTIM_CUDA_BODY_H
#define QLAB_OPTIM_CUDA_BODY_H

#include <math.h>
#include <stdint.h>

#include "kernels/cuda_compat.h"

/* Hyper-parameters of one AdamW step (PyTorch's AdamW: decoupled weight decay, bias correction). */
typedef struct {
    float lr, beta1, beta2, eps, weight_decay;
} optim_cuda_adamw_hyper;

/* What the kernel needs: flat arrays of n elements plus the per-step scalars, computed once on the host
 * (in double, then rounded) so no device powf enters the result. */
typedef struct {
    float *param;      /* (n) updated in place */
    const float *grad; /* (n) */
    float *m, *v;      /* (n) first and second moments, updated in place */
    int64_t n;
    float beta1, one_minus_beta1, beta2, one_minus_beta2, eps;
    float decay;      /* 1 - lr * weight_decay */
    float step_size;  /* lr / (1 - beta1^step) */
    float bias2_sqrt; /* sqrt(1 - beta2^step) */
} optim_cuda_adamw_args;

/* Fills the per-step scalars for step >= 1 (the first step is 1). */
static inline void optim_cuda_adamw_prepare(optim_cuda_adamw_args *a, const optim_cuda_adamw_hyper *h,
                                            int64_t step) {
    a->beta1 = h->beta1;
    a->one_minus_beta1 = (float)(1.0 - (double)h->beta1);
    a->beta2 = h->beta2;
    a->one_minus_beta2 = (float)(1.0 - (double)h->beta2);
    a->eps = h->eps;
    a->decay = (float)(1.0 - (double)h->lr * (double)h->weight_decay);
    a->step_size = (float)((double)h->lr / (1.0 - pow((double)h->beta1, (double)step)));
    a->bias2_sqrt = (float)sqrt(1.0 - pow((double)h->beta2, (double)step));
}

/* The update of element i, in this exact order:
 *   m = beta1 m + (1-beta1) g;  v = beta2 v + (1-beta2) g g
 *   p = p decay - step_size m / (sqrt(v) / bias2_sqrt + eps)                                        */
CUDA_DEVICE void optim_cuda_adamw_element(const optim_cuda_adamw_args *a, int64_t i) {
    float g = a->grad[i];
    float m = CUDA_ADD_RN(CUDA_MUL_RN(a->beta1, a->m[i]), CUDA_MUL_RN(a->one_minus_beta1, g));
    float v = CUDA_ADD_RN(CUDA_MUL_RN(a->beta2, a->v[i]), CUDA_MUL_RN(CUDA_MUL_RN(a->one_minus_beta2, g), g));
    float denom = CUDA_ADD_RN(CUDA_DIV_RN(CUDA_SQRT_RN(v), a->bias2_sqrt), a->eps);
    float p = CUDA_MUL_RN(a->param[i], a->decay);
    p = CUDA_SUB_RN(p, CUDA_MUL_RN(a->step_size, CUDA_DIV_RN(m, denom)));
    a->m[i] = m;
    a->v[i] = v;
    a->param[i] = p;
}

/* Grid-stride loop: any launch shape covers all n elements, each exactly once. No barrier, one phase. */
CUDA_DEVICE void optim_cuda_adamw_phase(cuda_thread t, void *shared, const optim_cuda_adamw_args *a) {
    (void)shared;
    int64_t stride = (int64_t)t.grid_dim * t.block_dim;
    for (int64_t i = (int64_t)t.block * t.block_dim + t.thread; i < a->n; i += stride)
        optim_cuda_adamw_element(a, i);
}

#define OPTIM_CUDA_ADAMW_THREADS 256
#define OPTIM_CUDA_ADAMW_MAX_BLOCKS 4096
/* bitsandbytes pages only optimizer state tensors with at least this many elements. */
#define OPTIM_CUDA_PAGE_MIN_ELEMENTS 100000

static inline int optim_cuda_adamw_blocks(int64_t n) {
    int64_t b = (n + OPTIM_CUDA_ADAMW_THREADS - 1) / OPTIM_CUDA_ADAMW_THREADS;
    if (b > OPTIM_CUDA_ADAMW_MAX_BLOCKS) b = OPTIM_CUDA_ADAMW_MAX_BLOCKS;
    return b < 1 ? 1 : (int)b;
}

#endif
