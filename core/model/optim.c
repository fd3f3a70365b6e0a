/* AdamW, clipping, schedules and the optimizer-state allocator of optim.h. */
#include "core/model/optim.h"

#include <stdio.h>

#include "core/base/memacct.h"
#include "core/model/optim_paged.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- optimizer state memory */

static const optim_state_backend *paged_backend;

void optim_set_paged_backend(const optim_state_backend *backend) {
    paged_backend = backend;
}

qlab_status optim_state_alloc(optim_state_kind kind, size_t n, optim_state_buffer *out) {
    memset(out, 0, sizeof *out);
    if (kind != OPTIM_STATE_HOST && kind != OPTIM_STATE_PAGED)
        return qlab_fail(QLAB_ERR_ARG, "optim_state_alloc: unknown state memory kind %d", (int)kind);
    if (n > SIZE_MAX / sizeof(float))
        return qlab_fail(QLAB_ERR_NOMEM, "optim_state_alloc: %zu floats overflow the address space", n);
    /* Unified memory is memory too (on the device or, when paged out, in host RAM): charged either way. */
    QLAB_TRY(memacct_charge(MEMACCT_OPTIMIZER, n * sizeof(float)));
    out->n = n;
    out->requested = kind;
    if (kind == OPTIM_STATE_PAGED && paged_backend) {
        out->data = paged_backend->alloc(n > 0 ? n * sizeof(float) : sizeof(float));
        if (!out->data) {
            memacct_release(MEMACCT_OPTIMIZER, n * sizeof(float));
            return qlab_fail_context(QLAB_ERR_NOMEM, "optim_state_alloc: paged backend %s, %zu floats",
                                     paged_backend->name, n);
        }
        out->actual = OPTIM_STATE_PAGED;
        out->backend = paged_backend;
        out->note = "paged optimizer state";
        return QLAB_OK;
    }
    out->data = qlab_alloc_aligned(n * sizeof(float));
    if (!out->data) {
        memacct_release(MEMACCT_OPTIMIZER, n * sizeof(float));
        return qlab_fail_context(QLAB_ERR_NOMEM, "optim_state_alloc: %zu floats", n);
    }
    out->actual = OPTIM_STATE_HOST;
    out->note =
        kind == OPTIM_STATE_PAGED
            ? "paged optimizer state requested but no paged backend is available (no CUDA): using host memory"
            : "host memory";
    return QLAB_OK;
}

void optim_state_free(optim_state_buffer *b) {
    if (b->data) {
        if (b->backend)
            b->backend->release(b->data);
        else
            qlab_free_aligned(b->data);
        memacct_release(MEMACCT_OPTIMIZER, b->n * sizeof(float));
    }
    memset(b, 0, sizeof *b);
}

/* ---------------------------------------------------------------- AdamW */

static qlab_status check_hyper(const optim_adamw_hyper *h, int64_t t) {
    if (!isfinite(h->lr) || h->lr < 0)
        return qlab_fail(QLAB_ERR_ARG, "adamw: lr=%g must be finite and >= 0", h->lr);
    if (!(h->beta1 >= 0 && h->beta1 < 1) || !(h->beta2 >= 0 && h->beta2 < 1))
        return qlab_fail(QLAB_ERR_ARG, "adamw: beta1=%g and beta2=%g must lie in [0, 1)", h->beta1, h->beta2);
    if (!(h->eps > 0) || !isfinite(h->eps))
        return qlab_fail(QLAB_ERR_ARG, "adamw: eps=%g must be > 0", h->eps);
    if (!isfinite(h->weight_decay) || h->weight_decay < 0)
        return qlab_fail(QLAB_ERR_ARG, "adamw: weight_decay=%g must be finite and >= 0", h->weight_decay);
    if (t < 1) return qlab_fail(QLAB_ERR_ARG, "adamw: step %lld (the first step is 1)", (long long)t);
    return QLAB_OK;
}

qlab_status optim_adamw_update(float *params, const float *grads, float *m, float *v, size_t n,
                               const optim_adamw_hyper *hyper, int64_t t) {
    QLAB_TRY(check_hyper(hyper, t));
    const float beta1 = hyper->beta1, beta2 = hyper->beta2, eps = hyper->eps;
    const float one_minus_beta1 = (float)(1.0 - (double)beta1);
    const float one_minus_beta2 = (float)(1.0 - (double)beta2);
    const float decay = (float)(1.0 - (double)hyper->lr * (double)hyper->weight_decay);
    const float step_size = (float)((double)hyper->lr / (1.0 - pow((double)beta1, (double)t)));
    const float bias2_sqrt = (float)sqrt(1.0 - pow((double)beta2, (double)t));
    const int64_t count = (int64_t)n;
#pragma omp parallel for schedule(static) if (count > (1 << 16))
    for (int64_t i = 0; i < count; i++) {
        float g = grads[i];
        /* One fp32 rounding per operation, in the CUDA body's order: -std=c11 makes GCC default to
         * -ffp-contract=off, so none of these is fused into an FMA. */
        float mi = beta1 * m[i];
        float gm = one_minus_beta1 * g;
        mi = mi + gm;
        float vi = beta2 * v[i];
        float gv = one_minus_beta2 * g;
        gv = gv * g;
        vi = vi + gv;
        float denom = sqrtf(vi);
        denom = denom / bias2_sqrt;
        denom = denom + eps;
        float p = params[i] * decay;
        float update = mi / denom;
        update = step_size * update;
        p = p - update;
        m[i] = mi;
        v[i] = vi;
        params[i] = p;
    }
    return QLAB_OK;
}

qlab_status optim_adamw_init(optim_adamw *o, size_t n, optim_state_kind kind) {
    memset(o, 0, sizeof *o);
    o->n = n;
    QLAB_TRY(optim_state_alloc(kind, n, &o->m));
    qlab_status st = optim_state_alloc(kind, n, &o->v);
    if (st != QLAB_OK) optim_state_free(&o->m);
    return st;
}

qlab_status optim_adamw_init_paged(optim_adamw *o, size_t n, const struct optim_paging *paging) {
    memset(o, 0, sizeof *o);
    o->n = n;
    QLAB_TRY(optim_pager_create(n, paging, &o->pager));
    optim_paging_stats s = optim_pager_stats(o->pager);
    static _Thread_local char note[160];
    snprintf(note, sizeof note,
             "paged on the CPU: %lld pages of %zu bytes, %lld resident, the rest in a file",
             (long long)s.pages, paging->page_bytes ? paging->page_bytes : OPTIM_PAGE_BYTES_DEFAULT,
             (long long)s.resident_slots);
    o->m.n = o->v.n = n;
    o->m.requested = o->v.requested = o->m.actual = o->v.actual = OPTIM_STATE_PAGED;
    o->m.note = o->v.note = note;
    return QLAB_OK;
}

void optim_adamw_free(optim_adamw *o) {
    optim_state_free(&o->m);
    optim_state_free(&o->v);
    optim_pager_free(o->pager);
    memset(o, 0, sizeof *o);
}

qlab_status optim_adamw_update_range(optim_adamw *o, float *params, const float *grads, size_t offset,
                                     size_t count, const optim_adamw_hyper *hyper, int64_t t) {
    if (offset > o->n || count > o->n - offset)
        return qlab_fail(QLAB_ERR_ARG, "adamw: moments [%zu, %zu) outside the state of %zu elements", offset,
                         offset + count, o->n);
    if (o->pager) return optim_pager_adamw_update(o->pager, params, grads, offset, count, hyper, t);
    if (o->m.backend && o->m.backend->prefetch_to_host) {
        o->m.backend->prefetch_to_host(o->m.data + offset, count * sizeof(float));
        o->v.backend->prefetch_to_host(o->v.data + offset, count * sizeof(float));
    }
    return optim_adamw_update(params, grads, o->m.data + offset, o->v.data + offset, count, hyper, t);
}

qlab_status optim_adamw_state_copy(optim_adamw *o, size_t offset, size_t count, float *m, float *v,
                                   int to_state) {
    if (offset > o->n || count > o->n - offset)
        return qlab_fail(QLAB_ERR_ARG, "adamw: moments [%zu, %zu) outside the state of %zu elements", offset,
                         offset + count, o->n);
    if (o->pager)
        return to_state ? optim_pager_write(o->pager, offset, count, m, v)
                        : optim_pager_read(o->pager, offset, count, m, v);
    float *sm = o->m.data + offset, *sv = o->v.data + offset;
    if (to_state) {
        memcpy(sm, m, count * sizeof(float)), memcpy(sv, v, count * sizeof(float));
    } else {
        memcpy(m, sm, count * sizeof(float)), memcpy(v, sv, count * sizeof(float));
    }
    return QLAB_OK;
}

qlab_status optim_adamw_step(optim_adamw *o, float *params, const float *grads,
                             const optim_adamw_hyper *hyper) {
    QLAB_TRY(optim_adamw_update_range(o, params, grads, 0, o->n, hyper, o->step + 1));
    o->step++;
    return QLAB_OK;
}

/* ---------------------------------------------------------------- gradient clipping */

#define CLIP_CHUNK 65536

double optim_clip_grad_norm(float *grads, size_t n, double max_norm) {
    /* Partial sums over fixed chunks, added in chunk order: the same bits for any thread count. */
    int64_t n_chunks = (int64_t)((n + CLIP_CHUNK - 1) / CLIP_CHUNK);
    double total = 0.0;
    if (n_chunks > 0) {
        double stack_sums[64];
        double *sums = n_chunks <= 64 ? stack_sums : qlab_calloc((size_t)n_chunks, sizeof(double));
        if (!sums) {
            /* Out of memory for the partials: one sequential pass gives the same definition of the sum. */
            for (size_t i = 0; i < n; i++)
                total += (double)grads[i] * grads[i];
        } else {
#pragma omp parallel for schedule(static) if (n_chunks > 1)
            for (int64_t c = 0; c < n_chunks; c++) {
                size_t lo = (size_t)c * CLIP_CHUNK, hi = lo + CLIP_CHUNK < n ? lo + CLIP_CHUNK : n;
                double s = 0.0;
                for (size_t i = lo; i < hi; i++)
                    s += (double)grads[i] * grads[i];
                sums[c] = s;
            }
            for (int64_t c = 0; c < n_chunks; c++)
                total += sums[c];
            if (sums != stack_sums) free(sums);
        }
    }
    double norm = sqrt(total);
    if (!isfinite(norm)) return norm;
    if (max_norm > 0 && norm > max_norm) {
        float scale = (float)(max_norm / (norm + 1e-6));
        const int64_t count = (int64_t)n;
#pragma omp parallel for schedule(static) if (count > (1 << 16))
        for (int64_t i = 0; i < count; i++)
            grads[i] *= scale;
    }
    return norm;
}

/* ---------------------------------------------------------------- learning-rate schedules */

static const char *const lr_kind_names[] = {"constant", "cosine", "linear"};

const char *optim_lr_kind_name(optim_lr_kind kind) {
    return kind >= OPTIM_LR_CONSTANT && kind <= OPTIM_LR_LINEAR ? lr_kind_names[kind] : "unknown";
}

qlab_status optim_lr_kind_parse(const char *name, optim_lr_kind *kind) {
    for (int k = OPTIM_LR_CONSTANT; k <= OPTIM_LR_LINEAR; k++)
        if (name && !strcmp(name, lr_kind_names[k])) {
            *kind = (optim_lr_kind)k;
            return QLAB_OK;
        }
    return qlab_fail(QLAB_ERR_ARG,
                     "unknown learning-rate schedule '%s' (expected constant, linear or cosine)",
                     name ? name : "(null)");
}

qlab_status optim_lr_check(const optim_lr_schedule *s) {
    if (s->kind != OPTIM_LR_CONSTANT && s->kind != OPTIM_LR_COSINE && s->kind != OPTIM_LR_LINEAR)
        return qlab_fail(QLAB_ERR_ARG, "lr schedule: unknown kind %d", (int)s->kind);
    if (!isfinite(s->max_lr) || s->max_lr < 0)
        return qlab_fail(QLAB_ERR_ARG, "lr schedule: max_lr=%g", s->max_lr);
    if (s->kind != OPTIM_LR_CONSTANT && (!isfinite(s->min_lr) || s->min_lr < 0 || s->min_lr > s->max_lr))
        return qlab_fail(QLAB_ERR_ARG, "lr schedule: min_lr=%g must lie in [0, max_lr=%g]", s->min_lr,
                         s->max_lr);
    if (s->warmup_steps < 0)
        return qlab_fail(QLAB_ERR_ARG, "lr schedule: warmup_steps=%lld is negative",
                         (long long)s->warmup_steps);
    if (s->kind != OPTIM_LR_CONSTANT && s->total_steps < s->warmup_steps)
        return qlab_fail(QLAB_ERR_ARG, "lr schedule: total_steps=%lld is below warmup_steps=%lld",
                         (long long)s->total_steps, (long long)s->warmup_steps);
    return QLAB_OK;
}

double optim_lr_at(const optim_lr_schedule *s, int64_t step) {
    if (step < 0) step = 0;
    if (step < s->warmup_steps) return s->max_lr * (double)(step + 1) / (double)s->warmup_steps;
    if (s->kind == OPTIM_LR_CONSTANT) return s->max_lr;
    int64_t decay_steps = s->total_steps - s->warmup_steps;
    if (decay_steps <= 0 || step >= s->total_steps) return s->min_lr;
    double r = (double)(step - s->warmup_steps) / (double)decay_steps;
    if (s->kind == OPTIM_LR_LINEAR) return s->min_lr + (s->max_lr - s->min_lr) * (1.0 - r);
    return s->min_lr + (s->max_lr - s->min_lr) * 0.5 * (1.0 + cos(M_PI * r));
}
