/* AdamW over one flat float array (llm.c style: params, grads and the two moments are each one buffer),
 * global gradient-norm clipping and the learning-rate schedules used for pretraining and finetuning.
 * Optimizer state is allocated through a small "state memory" interface so a paged backend (CUDA
 * unified memory, as in the QLoRA paper's paged optimizers) can plug in without touching the update. */
#ifndef QLAB_OPTIM_H
#define QLAB_OPTIM_H

#include <stddef.h>
#include <stdint.h>

#include "core/base/common.h"

/* ---------------------------------------------------------------- optimizer state memory */

typedef enum {
    OPTIM_STATE_HOST = 0, /* ordinary 64-byte aligned host memory */
    OPTIM_STATE_PAGED,    /* unified memory the driver may page between GPU and CPU; host memory when no
                             paged backend is registered (a build or machine without CUDA) */
} optim_state_kind;

/* A paged backend: alloc returns zeroed memory usable by the CPU update as well, or NULL (leaving a
 * message with qlab_fail). The CUDA code registers one (cudaMallocManaged / cudaFree). */
typedef struct {
    const char *name; /* "cuda-managed" */
    void *(*alloc)(size_t bytes);
    void (*release)(void *p);
    /* Optional (may be NULL): called before the CPU update touches [p, p + bytes), so the driver can
     * migrate the pages to host memory in bulk instead of faulting them in one by one. */
    void (*prefetch_to_host)(const void *p, size_t bytes);
} optim_state_backend;

/* Registers (or with NULL removes) the backend used for OPTIM_STATE_PAGED. Not thread-safe: call once at
 * start-up. */
void optim_set_paged_backend(const optim_state_backend *backend);

typedef struct {
    float *data; /* n floats, zeroed */
    size_t n;
    optim_state_kind requested, actual;
    const optim_state_backend *backend; /* NULL for host memory */
    /* One line for logs: "host memory", "paged (cuda-managed)", or "paged requested but no paged backend
     * is available (no CUDA): using host memory". The library never prints; programs may. */
    const char *note;
} optim_state_buffer;

qlab_status optim_state_alloc(optim_state_kind kind, size_t n, optim_state_buffer *out);
void optim_state_free(optim_state_buffer *b);

/* ---------------------------------------------------------------- AdamW */

/* PyTorch's AdamW: decoupled weight decay (p *= 1 - lr*wd, skipped exactly when wd = 0), bias-corrected
 * moments. */
typedef struct {
    float lr, beta1, beta2, eps, weight_decay;
} optim_adamw_hyper;

/* One step t >= 1 over n elements, in this order per element (the same fp32 operations as
 * kernels/optim_cuda_body.h, so CPU and GPU agree bit for bit):
 *   m = beta1 m + (1-beta1) g;   v = beta2 v + (1-beta2) g g
 *   p = p (1 - lr wd) - [lr / (1 - beta1^t)] m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
 * with the bracketed per-step scalars computed in double and rounded once. Element-wise, so the result
 * does not depend on the thread count. */
qlab_status optim_adamw_update(float *params, const float *grads, float *m, float *v, size_t n,
                               const optim_adamw_hyper *hyper, int64_t t);

struct optim_pager; /* core/model/optim_paged.h */
struct optim_paging;

typedef struct {
    size_t n;
    int64_t step;              /* number of steps taken */
    optim_state_buffer m, v;   /* m.data and v.data are NULL when the state is paged on the CPU */
    struct optim_pager *pager; /* the CPU page store (optim_adamw_init_paged), or NULL */
} optim_adamw;

qlab_status optim_adamw_init(optim_adamw *o, size_t n, optim_state_kind kind);
/* The moments in a CPU page store under a resident budget (optim_paged.h); m.data and v.data stay NULL:
 * update through optim_adamw_update_range and read or write the moments with optim_adamw_state_copy. */
qlab_status optim_adamw_init_paged(optim_adamw *o, size_t n, const struct optim_paging *paging);
/* AdamW on the moments [offset, offset + count) with the matching params and grads slices (pointing at
 * element offset of the flat buffers); works for every kind of state. */
qlab_status optim_adamw_update_range(optim_adamw *o, float *params, const float *grads, size_t offset,
                                     size_t count, const optim_adamw_hyper *hyper, int64_t t);
/* Copies the moments [offset, offset + count) out of (to_state = 0) or into (1) the optimizer's state. */
qlab_status optim_adamw_state_copy(optim_adamw *o, size_t offset, size_t count, float *m, float *v,
                                   int to_state);
void optim_adamw_free(optim_adamw *o);
/* Advances step and updates all n params. To exempt part of the buffer from weight decay (norm gains),
 * call optim_adamw_update on the sub-ranges of o->m.data / o->v.data with t = o->step + 1 instead. */
qlab_status optim_adamw_step(optim_adamw *o, float *params, const float *grads,
                             const optim_adamw_hyper *hyper);

/* ---------------------------------------------------------------- gradient clipping */

/* Global L2 norm of grads (summed in double over fixed chunks in a fixed order: thread-count
 * independent). If max_norm > 0 and the norm exceeds it, grads are scaled by max_norm / (norm + 1e-6)
 * (PyTorch's clip_grad_norm_). Returns the norm before clipping; a NaN/Inf norm is returned as is and the
 * gradients are left untouched, so the caller can skip the step. */
double optim_clip_grad_norm(float *grads, size_t n, double max_norm);

/* ---------------------------------------------------------------- learning-rate schedules */

typedef enum {
    OPTIM_LR_CONSTANT = 0, /* warmup, then max_lr */
    OPTIM_LR_COSINE,       /* warmup, then cosine from max_lr down to min_lr at total_steps, then min_lr */
    OPTIM_LR_LINEAR,       /* warmup, then a straight line from max_lr down to min_lr at total_steps */
} optim_lr_kind;

/* "constant", "cosine", "linear". */
const char *optim_lr_kind_name(optim_lr_kind kind);
qlab_status optim_lr_kind_parse(const char *name, optim_lr_kind *kind);

typedef struct {
    optim_lr_kind kind;
    double max_lr, min_lr;
    int64_t warmup_steps, total_steps;
} optim_lr_schedule;

/* Learning rate for step s (0-based: the s-th update). Warmup is linear, max_lr (s+1)/warmup_steps for
 * s < warmup_steps, so the first step is not wasted at lr 0 (llm.c's choice). Cosine:
 * min_lr + (max_lr - min_lr) (1 + cos(pi r)) / 2 with r = (s - warmup) / (total - warmup), clamped to 1.
 * Linear: min_lr + (max_lr - min_lr) (1 - r), the shape of transformers' get_linear_schedule_with_warmup
 * (which ends at 0: min_lr 0). */
double optim_lr_at(const optim_lr_schedule *schedule, int64_t s);
/* Checks the fields (finite, min_lr <= max_lr, 0 <= warmup <= total for cosine); one-line error. */
qlab_status optim_lr_check(const optim_lr_schedule *schedule);

#endif
