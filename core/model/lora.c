/* LoRA adapters (lora.h): the forward/backward ops over raw arrays, the flat parameter set with PEFT's
 * initialisation, the model hook, merging, and PEFT-named safetensors files. Each training forward draws
 * its dropout mask from a seed derived from (seed, layer, projection, forward count) with a counter-based
 * generator (lora_dropout.h) and the hook keeps it as bits (N * in_features / 8 bytes per adapter) for
 * the backward, so a step is reproducible and hashes each mask once. */
#include "core/model/lora.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/base/memacct.h"
#include "core/model/checkpoint.h"
#include "core/model/gemm_bf16.h"
#include "core/model/gemm_bf16_kernels.h"
#include "core/model/lora_dropout.h"
#include "core/model/ops.h"
#include "core/base/rng.h"
#include "core/formats/safetensors.h"

/* ---------------------------------------------------------------- the ops */

/* Backward's scratch: dhidden (N,r), then with dropout one (N,IC) plane and the mask's bits (N rows of
 * lora_dropout_row_words(IC) 64-bit words, two floats each). */
size_t lora_scratch_floats(int N, int IC, int rank, float dropout) {
    size_t mask = dropout > 0 ? (size_t)N * IC + 2 * (size_t)N * lora_dropout_row_words(IC) : 0;
    return (size_t)N * rank + mask;
}

size_t lora_mask_bytes(int N, int IC, float dropout) {
    return dropout > 0 ? (size_t)N * lora_dropout_row_words(IC) * sizeof(uint64_t) : 0;
}

/* Where an op takes its dropout mask from: drawn from seed (and stored in bits when bits is non-NULL), or,
 * with stored set, read back from the bits an earlier draw of the same seed stored. Both give the same
 * mask; reading it back skips the hashing. */
typedef struct {
    float p; /* 0: no dropout */
    uint64_t seed;
    void *bits; /* N rows of lora_dropout_row_words(IC) words */
    int stored;
} lora_mask;

/* out (N,IC) = dropout(in) under mask m (p > 0). */
static void lora_mask_apply(float *out, const float *in, int N, int IC, const lora_mask *m) {
    lora_dropout_spec d = lora_dropout_spec_of(m->p);
    if (m->stored)
        lora_dropout_apply_bits(out, in, N, IC, d.keep_scale, m->bits);
    else
        lora_dropout_apply(out, in, N, IC, d, m->seed, m->bits);
}

static void lora_forward_masked(float *out, float *hidden, float *dropped, const float *inp, const float *A,
                                const float *B, int N, int IC, int OC, int rank, float scale,
                                const lora_mask *m) {
    const float *x = inp;
    if (m->p > 0) {
        lora_mask_apply(dropped, inp, N, IC, m);
        x = dropped;
    }
    /* hidden (N,r) = x A^T; out += scale hidden B^T. With B = 0 this adds exact zeros: out is unchanged. */
    ops_gemm(0, 1, N, rank, IC, 1.0f, x, IC, A, IC, 0.0f, hidden, rank);
    ops_gemm(0, 1, N, OC, rank, scale, hidden, rank, B, rank, 1.0f, out, OC);
}

void lora_forward(float *out, float *hidden, float *dropped, const float *inp, const float *A, const float *B,
                  int N, int IC, int OC, int rank, float scale, float dropout, uint64_t mask_seed) {
    lora_mask m = {dropout > 0 ? dropout : 0, mask_seed, NULL, 0};
    lora_forward_masked(out, hidden, dropped, inp, A, B, N, IC, OC, rank, scale, &m);
}

/* m->bits must hold the mask's bits afterwards: backward draws into them when they are not stored. */
static void lora_backward_masked(float *dA, float *dB, float *dinp, const float *dout, const float *inp,
                                 const float *hidden, const float *A, const float *B, int N, int IC, int OC,
                                 int rank, float scale, const lora_mask *m, float *scratch) {
    float *dhidden = scratch; /* (N,r) = scale dout B */
    ops_gemm(0, 0, N, rank, OC, scale, dout, OC, B, rank, 0.0f, dhidden, rank);
    /* dB (OC,r) += scale dout^T hidden */
    ops_gemm(1, 0, OC, rank, N, scale, dout, OC, hidden, rank, 1.0f, dB, rank);
    if (m->p <= 0) {
        ops_gemm(1, 0, rank, IC, N, 1.0f, dhidden, rank, inp, IC, 1.0f, dA, IC);
        if (dinp) ops_gemm(0, 0, N, IC, rank, 1.0f, dhidden, rank, A, IC, 1.0f, dinp, IC);
        return;
    }
    float *plane = scratch + (size_t)N * rank;
    lora_mask_apply(plane, inp, N, IC, m); /* the forward's dropout(inp), bit for bit */
    ops_gemm(1, 0, rank, IC, N, 1.0f, dhidden, rank, plane, IC, 1.0f, dA, IC);
    if (!dinp) return;
    ops_gemm(0, 0, N, IC, rank, 1.0f, dhidden, rank, A, IC, 0.0f, plane, IC);
    lora_dropout_accumulate_bits(dinp, plane, N, IC, lora_dropout_spec_of(m->p).keep_scale, m->bits);
}

/* The raw ops draw backward's mask again, into the bits at the end of scratch. */
static lora_mask lora_scratch_mask(float dropout, uint64_t mask_seed, float *scratch, int N, int IC,
                                   int rank) {
    lora_mask m = {dropout > 0 ? dropout : 0, mask_seed, scratch + (size_t)N * rank + (size_t)N * IC, 0};
    return m;
}

void lora_backward(float *dA, float *dB, float *dinp, const float *dout, const float *inp,
                   const float *hidden, const float *A, const float *B, int N, int IC, int OC, int rank,
                   float scale, float dropout, uint64_t mask_seed, float *scratch) {
    lora_mask m = lora_scratch_mask(dropout, mask_seed, scratch, N, IC, rank);
    lora_backward_masked(dA, dB, dinp, dout, inp, hidden, A, B, N, IC, OC, rank, scale, &m, scratch);
}

/* bf16 products: the same data flow as above, each ops_gemm replaced by bf16_gemm (which has no alpha, so
 * the scale multiplies the small (N,r) operand in fp32). */
static qlab_status lora_forward_bf16_masked(float *out, float *hidden, float *scratch, const float *inp,
                                            const float *A, const float *B, int N, int IC, int OC, int rank,
                                            float scale, const lora_mask *m) {
    const float *x = inp;
    float *scaled = scratch;
    if (m->p > 0) {
        lora_mask_apply(scratch, inp, N, IC, m);
        x = scratch;
        scaled = scratch + (size_t)N * IC;
    }
    QLAB_TRY(bf16_gemm(0, 1, N, rank, IC, x, IC, A, IC, 0, hidden, rank));
    size_t nr = (size_t)N * rank;
    for (size_t i = 0; i < nr; i++)
        scaled[i] = scale * hidden[i];
    return bf16_gemm(0, 1, N, OC, rank, scaled, rank, B, rank, 1, out, OC);
}

qlab_status lora_forward_bf16(float *out, float *hidden, float *scratch, const float *inp, const float *A,
                              const float *B, int N, int IC, int OC, int rank, float scale, float dropout,
                              uint64_t mask_seed) {
    lora_mask m = {dropout > 0 ? dropout : 0, mask_seed, NULL, 0};
    return lora_forward_bf16_masked(out, hidden, scratch, inp, A, B, N, IC, OC, rank, scale, &m);
}

static qlab_status lora_backward_bf16_masked(float *dA, float *dB, float *dinp, const float *dout,
                                             const float *inp, const float *hidden, const float *A,
                                             const float *B, int N, int IC, int OC, int rank, float scale,
                                             const lora_mask *m, float *scratch) {
    float *dhidden = scratch; /* first scale hidden (for dB), then (N,r) = scale dout B */
    size_t nr = (size_t)N * rank;
    for (size_t i = 0; i < nr; i++)
        dhidden[i] = scale * hidden[i];
    QLAB_TRY(bf16_gemm(1, 0, OC, rank, N, dout, OC, dhidden, rank, 1, dB, rank));
    QLAB_TRY(bf16_gemm(0, 0, N, rank, OC, dout, OC, B, rank, 0, dhidden, rank));
    for (size_t i = 0; i < nr; i++)
        dhidden[i] *= scale;
    if (m->p <= 0) {
        QLAB_TRY(bf16_gemm(1, 0, rank, IC, N, dhidden, rank, inp, IC, 1, dA, IC));
        if (dinp) QLAB_TRY(bf16_gemm(0, 0, N, IC, rank, dhidden, rank, A, IC, 1, dinp, IC));
        return QLAB_OK;
    }
    float *plane = scratch + nr;
    lora_mask_apply(plane, inp, N, IC, m);
    QLAB_TRY(bf16_gemm(1, 0, rank, IC, N, dhidden, rank, plane, IC, 1, dA, IC));
    if (!dinp) return QLAB_OK;
    QLAB_TRY(bf16_gemm(0, 0, N, IC, rank, dhidden, rank, A, IC, 0, plane, IC));
    lora_dropout_accumulate_bits(dinp, plane, N, IC, lora_dropout_spec_of(m->p).keep_scale, m->bits);
    return QLAB_OK;
}

qlab_status lora_backward_bf16(float *dA, float *dB, float *dinp, const float *dout, const float *inp,
                               const float *hidden, const float *A, const float *B, int N, int IC, int OC,
                               int rank, float scale, float dropout, uint64_t mask_seed, float *scratch) {
    lora_mask m = lora_scratch_mask(dropout, mask_seed, scratch, N, IC, rank);
    return lora_backward_bf16_masked(dA, dB, dinp, dout, inp, hidden, A, B, N, IC, OC, rank, scale, &m,
                                     scratch);
}

/* ---------------------------------------------------------------- target names */

qlab_status lora_parse_targets(const char *text, unsigned *targets) {
    *targets = 0;
    if (!text || !*text)
        return qlab_fail(QLAB_ERR_ARG, "lora targets: empty (use all, attention, qv or q_proj,...)");
    if (!strcmp(text, "all")) return *targets = LORA_TARGETS_ALL, QLAB_OK;
    if (!strcmp(text, "attention")) return *targets = LORA_TARGETS_ATTENTION, QLAB_OK;
    if (!strcmp(text, "qv")) return *targets = LORA_TARGETS_QV, QLAB_OK;
    unsigned mask = 0;
    const char *s = text;
    while (1) {
        const char *end = strchr(s, ',');
        size_t len = end ? (size_t)(end - s) : strlen(s);
        char word[32];
        model_proj p = PROJ_COUNT;
        snprintf(word, sizeof word, "%.*s", (int)(len < sizeof word ? len : sizeof word - 1), s);
        if (len >= sizeof word || model_proj_parse(word, &p) != QLAB_OK)
            return qlab_fail(
                QLAB_ERR_ARG,
                "lora targets '%s': unknown projection '%.*s' (known: q_proj k_proj v_proj o_proj "
                "gate_proj up_proj down_proj, or all, attention, qv)",
                text, (int)len, s);
        mask |= LORA_TARGET(p);
        if (!end) break;
        s = end + 1;
    }
    *targets = mask;
    return QLAB_OK;
}

/* ---------------------------------------------------------------- the set */

struct lora_set {
    lora_config cfg;
    model_config mc;
    float scale;
    int n_adapters;
    int *slot_of;           /* (n_layers, PROJ_COUNT): adapter index or -1 */
    lora_adapter *adapters; /* (n_adapters) views, in buffer order */
    float *params, *grads;
    size_t num_params;
    int training;

    /* State of the model hook: per adapter the forward count (the dropout stream), and what the last
     * forward used, which its backward must repeat. */
    uint64_t *forward_count;
    uint64_t *last_mask_seed;
    float *last_dropout;
    int *last_N;
    int recomputing;    /* the model is recomputing a block: repeat the last forward's masks */
    const model *model; /* the model attached to (its compute dtype picks the products' precision) */
    int capacity;       /* rows the buffers below hold */
    float *hidden;      /* (n_adapters, capacity, rank) */
    /* With dropout: each adapter's last training mask as bits, (capacity, lora_dropout_row_words(in))
     * words from word capacity * mask_words[s], so backward (and a recomputing forward) reads the mask
     * instead of drawing it again. */
    unsigned char *mask_bits;
    size_t *mask_words; /* (n_adapters + 1) prefix sums of the adapters' words per row */
    float *scratch;     /* forward's dropout plane or backward's scratch */
    size_t scratch_floats;
    int max_in_features;
    size_t charged_params, charged_hidden; /* bytes charged to memory accounting for the buffers above */
    /* The row passes' state (lora_rows_begin): per projection kind, then the threads' scratch and a
     * backward pass's operands (charged to memory accounting as scratch). */
    struct lora_rows_proj *rows;
    char *rows_scratch, *rows_ops;
    size_t rows_thread_bytes, rows_scratch_bytes, rows_ops_bytes;
    int rows_N, rows_KpN;
};

static void lora_rows_free(lora_set *l);

static qlab_status lora_check_config(const model_config *mc, const lora_config *lc) {
    if (mc->dim <= 0 || mc->hidden_dim <= 0 || mc->n_layers <= 0 || mc->n_heads <= 0 || mc->n_kv_heads <= 0 ||
        mc->dim % mc->n_heads != 0)
        return qlab_fail(QLAB_ERR_ARG,
                         "lora: model config is invalid (dim %d, hidden_dim %d, n_layers %d, n_heads %d, "
                         "n_kv_heads %d)",
                         mc->dim, mc->hidden_dim, mc->n_layers, mc->n_heads, mc->n_kv_heads);
    if (lc->targets == 0 || (lc->targets & ~LORA_TARGETS_ALL))
        return qlab_fail(QLAB_ERR_ARG, "lora: target mask 0x%x selects no projection or unknown ones",
                         lc->targets);
    if (lc->rank < 1 || lc->rank > 65536)
        return qlab_fail(QLAB_ERR_ARG, "lora: rank %d outside [1, 65536]", lc->rank);
    if (!isfinite(lc->alpha)) return qlab_fail(QLAB_ERR_ARG, "lora: alpha %g is not finite", lc->alpha);
    if (!(lc->dropout >= 0 && lc->dropout < 1))
        return qlab_fail(QLAB_ERR_ARG, "lora: dropout %g outside [0, 1)", lc->dropout);
    double total = 0;
    for (int p = 0; p < PROJ_COUNT; p++) {
        int o, i;
        model_proj_shape(mc, (model_proj)p, &o, &i);
        if (lc->targets & LORA_TARGET(p)) total += (double)lc->rank * ((double)o + i);
    }
    if (total * mc->n_layers > 1e12)
        return qlab_fail(QLAB_ERR_ARG, "lora: %.3g adapter parameters is more than this build supports",
                         total * mc->n_layers);
    return QLAB_OK;
}

qlab_status lora_create(lora_set **out, const model_config *mc, const lora_config *lc) {
    *out = NULL;
    QLAB_TRY(lora_check_config(mc, lc));
    lora_set *l = qlab_calloc(1, sizeof *l);
    if (!l) return QLAB_ERR_NOMEM;
    l->cfg = *lc;
    l->mc = *mc;
    /* PEFT's scaling, a Python double rounded to fp32 by torch: lora_alpha / r or lora_alpha / math.sqrt(r)
     */
    l->scale = lc->rslora ? (float)((double)lc->alpha / sqrt((double)lc->rank)) : lc->alpha / (float)lc->rank;
    l->training = 1;
    int L = mc->n_layers, per_layer = 0;
    for (int p = 0; p < PROJ_COUNT; p++)
        per_layer += (lc->targets & LORA_TARGET(p)) ? 1 : 0;
    l->n_adapters = L * per_layer;
    size_t na = (size_t)l->n_adapters;
    l->slot_of = qlab_calloc((size_t)L * PROJ_COUNT, sizeof *l->slot_of);
    l->adapters = qlab_calloc(na, sizeof *l->adapters);
    l->forward_count = qlab_calloc(na, sizeof *l->forward_count);
    l->last_mask_seed = qlab_calloc(na, sizeof *l->last_mask_seed);
    l->last_dropout = qlab_calloc(na, sizeof *l->last_dropout);
    l->last_N = qlab_calloc(na, sizeof *l->last_N);
    l->mask_words = qlab_calloc(na + 1, sizeof *l->mask_words);
    if (!l->slot_of || !l->adapters || !l->forward_count || !l->last_mask_seed || !l->last_dropout ||
        !l->last_N || !l->mask_words) {
        lora_free(l);
        return QLAB_ERR_NOMEM;
    }
    /* Layout: layer by layer, projections in model_proj order, A then B of each. */
    size_t offset = 0;
    int slot = 0, r = lc->rank;
    for (int layer = 0; layer < L; layer++)
        for (int p = 0; p < PROJ_COUNT; p++) {
            l->slot_of[layer * PROJ_COUNT + p] = -1;
            if (!(lc->targets & LORA_TARGET(p))) continue;
            lora_adapter *a = &l->adapters[slot];
            model_proj_shape(mc, (model_proj)p, &a->out_features, &a->in_features);
            a->rank = r;
            a->offset = offset;
            offset += (size_t)r * a->in_features + (size_t)a->out_features * r;
            if (a->in_features > l->max_in_features) l->max_in_features = a->in_features;
            l->mask_words[slot + 1] = l->mask_words[slot] + (size_t)lora_dropout_row_words(a->in_features);
            l->slot_of[layer * PROJ_COUNT + p] = slot++;
        }
    l->num_params = offset;
    qlab_status st = memacct_charge(MEMACCT_ADAPTERS, offset * sizeof(float));
    if (st == QLAB_OK) {
        st = memacct_charge(MEMACCT_GRADIENTS, offset * sizeof(float));
        if (st != QLAB_OK) memacct_release(MEMACCT_ADAPTERS, offset * sizeof(float));
    }
    if (st != QLAB_OK) {
        lora_free(l);
        return st;
    }
    l->charged_params = offset * sizeof(float);
    l->params = qlab_alloc_aligned(offset * sizeof(float));
    l->grads = qlab_alloc_aligned(offset * sizeof(float));
    if (!l->params || !l->grads) {
        lora_free(l);
        return QLAB_ERR_NOMEM;
    }
    rng_state rs;
    rng_seed(&rs, lc->seed);
    for (int s = 0; s < l->n_adapters; s++) {
        lora_adapter *a = &l->adapters[s];
        a->A = l->params + a->offset;
        a->B = a->A + (size_t)r * a->in_features;
        a->dA = l->grads + a->offset;
        a->dB = a->dA + (size_t)r * a->in_features;
        /* PEFT: kaiming_uniform_(A, a=sqrt(5)) has gain sqrt(2/(1+5)) and bound gain*sqrt(3/fan_in) =
         * 1/sqrt(in_features); B stays zero (the aligned allocation is zeroed). */
        double bound = 1.0 / sqrt((double)a->in_features);
        for (size_t i = 0; i < (size_t)r * a->in_features; i++)
            a->A[i] = (float)(bound * (2.0 * rng_uniform(&rs) - 1.0));
    }
    *out = l;
    return QLAB_OK;
}

void lora_free(lora_set *l) {
    if (!l) return;
    free(l->slot_of);
    free(l->adapters);
    free(l->forward_count);
    free(l->last_mask_seed);
    free(l->last_dropout);
    free(l->last_N);
    free(l->mask_words);
    qlab_free_aligned(l->mask_bits);
    qlab_free_aligned(l->params);
    qlab_free_aligned(l->grads);
    qlab_free_aligned(l->hidden);
    qlab_free_aligned(l->scratch);
    memacct_release(MEMACCT_ADAPTERS, l->charged_params);
    memacct_release(MEMACCT_GRADIENTS, l->charged_params);
    memacct_release(MEMACCT_ACTIVATIONS, l->charged_hidden);
    memacct_release(MEMACCT_SCRATCH, l->scratch_floats * sizeof(float));
    lora_rows_free(l);
    free(l);
}

const lora_config *lora_get_config(const lora_set *l) {
    return &l->cfg;
}
float lora_scale(const lora_set *l) {
    return l->scale;
}

float *lora_get_param_buffer(lora_set *l, size_t *count) {
    if (count) *count = l->num_params;
    return l->params;
}

float *lora_get_grad_buffer(lora_set *l, size_t *count) {
    if (count) *count = l->num_params;
    return l->grads;
}

void lora_zero_grad(lora_set *l) {
    memset(l->grads, 0, l->num_params * sizeof(float));
}
size_t lora_num_params(const lora_set *l) {
    return l->num_params;
}
size_t lora_param_bytes(const lora_set *l) {
    return l->num_params * sizeof(float);
}
void lora_set_training(lora_set *l, int training) {
    l->training = training ? 1 : 0;
}

size_t lora_num_adapters(const lora_set *l) {
    return (size_t)l->n_adapters;
}
void lora_get_stream(const lora_set *l, uint64_t *forward_counts) {
    memcpy(forward_counts, l->forward_count, (size_t)l->n_adapters * sizeof(uint64_t));
}
void lora_set_stream(lora_set *l, const uint64_t *forward_counts) {
    memcpy(l->forward_count, forward_counts, (size_t)l->n_adapters * sizeof(uint64_t));
}

static int lora_slot(const lora_set *l, int layer, model_proj p) {
    if (layer < 0 || layer >= l->mc.n_layers || p < 0 || p >= PROJ_COUNT) return -1;
    return l->slot_of[layer * PROJ_COUNT + p];
}

int lora_get_adapter(lora_set *l, int layer, model_proj p, lora_adapter *out) {
    memset(out, 0, sizeof *out);
    int s = lora_slot(l, layer, p);
    if (s < 0) return 0;
    *out = l->adapters[s];
    return 1;
}

qlab_status lora_reserve(lora_set *l, int n_positions) {
    if (n_positions <= l->capacity) return QLAB_OK;
    if (n_positions < 1) return qlab_fail(QLAB_ERR_ARG, "lora_reserve: %d positions", n_positions);
    size_t rows = (size_t)n_positions, r = (size_t)l->cfg.rank;
    size_t hidden_floats = (size_t)l->n_adapters * rows * r;
    size_t mask_bytes = 0; /* lora_mask_bytes summed over the adapters */
    if (l->cfg.dropout > 0) mask_bytes = rows * l->mask_words[l->n_adapters] * sizeof(uint64_t);
    /* hidden and the mask bits are what backward reads of the forward: activations */
    size_t kept_bytes = hidden_floats * sizeof(float) + mask_bytes;
    /* Backward needs (N,r) + (N,IC) + the mask bits with dropout; forward's dropout plane (N,IC) and
     * scaled hidden (N,r) fit inside that. */
    size_t scratch = lora_scratch_floats(n_positions, l->max_in_features, l->cfg.rank, l->cfg.dropout);
    /* The old buffers' contents are dropped either way: free them first, so growing never holds both. */
    qlab_free_aligned(l->hidden);
    qlab_free_aligned(l->mask_bits);
    qlab_free_aligned(l->scratch);
    memacct_release(MEMACCT_ACTIVATIONS, l->charged_hidden);
    memacct_release(MEMACCT_SCRATCH, l->scratch_floats * sizeof(float));
    l->hidden = l->scratch = NULL;
    l->mask_bits = NULL;
    l->charged_hidden = l->scratch_floats = 0;
    l->capacity = 0;
    for (int i = 0; i < l->n_adapters; i++)
        l->last_N[i] = 0; /* saved hidden states are gone */
    QLAB_TRY(memacct_charge(MEMACCT_ACTIVATIONS, kept_bytes));
    qlab_status st = memacct_charge(MEMACCT_SCRATCH, scratch * sizeof(float));
    if (st != QLAB_OK) {
        memacct_release(MEMACCT_ACTIVATIONS, kept_bytes);
        return st;
    }
    float *h = qlab_alloc_aligned(hidden_floats * sizeof(float));
    float *s = qlab_alloc_aligned(scratch * sizeof(float));
    unsigned char *bits = mask_bytes ? qlab_alloc_aligned(mask_bytes) : NULL;
    if (!h || !s || (mask_bytes && !bits)) {
        qlab_free_aligned(h);
        qlab_free_aligned(s);
        qlab_free_aligned(bits);
        memacct_release(MEMACCT_ACTIVATIONS, kept_bytes);
        memacct_release(MEMACCT_SCRATCH, scratch * sizeof(float));
        return qlab_fail_context(QLAB_ERR_NOMEM, "lora: buffers for %d positions", n_positions);
    }
    l->charged_hidden = kept_bytes;
    l->hidden = h;
    l->mask_bits = bits;
    l->scratch = s;
    l->scratch_floats = scratch;
    l->capacity = n_positions;
    for (int i = 0; i < l->n_adapters; i++)
        l->last_N[i] = 0; /* saved hidden states are gone */
    return QLAB_OK;
}

/* Adapter s's mask bits (its last training forward's mask), or NULL without dropout. */
static void *lora_mask_bits(const lora_set *l, int s) {
    if (!l->mask_bits) return NULL;
    return l->mask_bits + (size_t)l->capacity * l->mask_words[s] * sizeof(uint64_t);
}

/* ---------------------------------------------------------------- the model hook */

static qlab_status lora_hook_begin(void *ctx, int B, int T) {
    if ((double)B * T > 2147483647.0) return qlab_fail(QLAB_ERR_ARG, "lora: %d x %d positions", B, T);
    return lora_reserve(ctx, B * T);
}

/* A forward of adapter s (layer, p) over N rows begins: the buffers hold N rows, and m is the dropout mask
 * it applies (drawn from the next seed of its stream and kept as bits, or, recomputing, the last forward's
 * read back), which the backward will repeat. */
static qlab_status lora_forward_mask(lora_set *l, int s, int layer, model_proj p, int N, lora_mask *m) {
    /* model_forward reserved B*T rows through lora_hook_begin (and failed if it could not); growing here
     * serves a caller that runs the hook without it, and its failure fails the forward. */
    if (N > l->capacity) {
        l->last_N[s] = 0;
        QLAB_TRY(lora_reserve(l, N));
    }
    float dropout = l->training ? l->cfg.dropout : 0.0f;
    uint64_t mask_seed = 0;
    if (l->recomputing) {
        if (l->last_N[s] != N)
            return qlab_fail(QLAB_ERR_ARG,
                             "lora: recomputing layer %d %s over %d positions, but its last "
                             "forward ran over %d",
                             layer, model_proj_name(p), N, l->last_N[s]);
        dropout = l->last_dropout[s];
        mask_seed = l->last_mask_seed[s];
    } else if (dropout > 0) {
        uint64_t stream = ((uint64_t)layer << 8) | (uint64_t)p;
        mask_seed = lora_dropout_mix64(
            l->cfg.seed ^ lora_dropout_mix64(stream ^ lora_dropout_mix64(l->forward_count[s]++)));
    }
    /* A training forward draws the mask and keeps its bits; recomputing reads them back (the same mask). */
    *m = (lora_mask){dropout, mask_seed, dropout > 0 ? lora_mask_bits(l, s) : NULL, l->recomputing};
    l->last_mask_seed[s] = mask_seed;
    l->last_dropout[s] = dropout;
    l->last_N[s] = N;
    return QLAB_OK;
}

static qlab_status lora_hook_forward(void *ctx, int layer, model_proj p, const float *inp, float *out,
                                     int N) {
    lora_set *l = ctx;
    int s = lora_slot(l, layer, p);
    if (s < 0) return QLAB_OK; /* this projection is not adapted */
    lora_mask m;
    QLAB_TRY(lora_forward_mask(l, s, layer, p, N, &m));
    const lora_adapter *a = &l->adapters[s];
    float *hidden = l->hidden + (size_t)s * l->capacity * a->rank;
    if (l->model && model_get_compute(l->model) == QLAB_COMPUTE_BF16)
        return lora_forward_bf16_masked(out, hidden, l->scratch, inp, a->A, a->B, N, a->in_features,
                                        a->out_features, a->rank, l->scale, &m);
    lora_forward_masked(out, hidden, l->scratch, inp, a->A, a->B, N, a->in_features, a->out_features, a->rank,
                        l->scale, &m);
    return QLAB_OK;
}

static qlab_status lora_hook_recompute(void *ctx, int recomputing) {
    ((lora_set *)ctx)->recomputing = recomputing;
    return QLAB_OK;
}

/* A backward of adapter s (layer, p) over N rows: its last forward must have run over N rows; m is that
 * forward's mask, read back from its bits. */
static qlab_status lora_backward_mask(const lora_set *l, int s, int layer, model_proj p, int N,
                                      lora_mask *m) {
    if (l->last_N[s] != N)
        return qlab_fail(QLAB_ERR_ARG,
                         "lora: layer %d %s has no saved forward over %d positions (it holds %d): the "
                         "adapters were resized or not run by the forward this backward follows",
                         layer, model_proj_name(p), N, l->last_N[s]);
    float drop = l->last_dropout[s];
    *m = (lora_mask){drop, l->last_mask_seed[s], drop > 0 ? lora_mask_bits(l, s) : NULL, 1}; /* its bits */
    return QLAB_OK;
}

static qlab_status lora_hook_backward(void *ctx, int layer, model_proj p, const float *inp, const float *dout,
                                      float *dinp, int N) {
    lora_set *l = ctx;
    int s = lora_slot(l, layer, p);
    if (s < 0) return QLAB_OK; /* this projection is not adapted */
    lora_mask m;
    QLAB_TRY(lora_backward_mask(l, s, layer, p, N, &m));
    const lora_adapter *a = &l->adapters[s];
    const float *hidden = l->hidden + (size_t)s * l->capacity * a->rank;
    if (l->model && model_get_compute(l->model) == QLAB_COMPUTE_BF16)
        return lora_backward_bf16_masked(a->dA, a->dB, dinp, dout, inp, hidden, a->A, a->B, N, a->in_features,
                                         a->out_features, a->rank, l->scale, &m, l->scratch);
    lora_backward_masked(a->dA, a->dB, dinp, dout, inp, hidden, a->A, a->B, N, a->in_features,
                         a->out_features, a->rank, l->scale, &m, l->scratch);
    return QLAB_OK;
}

/* ---------------------------------------------------------------- the model's row passes */

/* The adapters inside the model's bf16 passes over chunks of positions (model_adapter's row hooks): the
 * operands, products and order of lora_forward_bf16_masked and lora_backward_bf16_masked, row by row, so the
 * same bits. A pass holds one layer, so one adapter per projection kind: its A and B packed for the pass's
 * products, and in a backward the operands of dA and dB gathered chunk by chunk (dout^T from the chunk's
 * rounded dout, the dropped input as B panels over position pairs, scale dout B) and multiplied at
 * rows_end, as the model's row backward forms its weight gradients. */
typedef struct lora_rows_proj {
    bf16_packed_weight a, b; /* A (r,IC) and B (OC,r): for y = x W^T (forward) or for dinp (backward) */
    lora_mask m;             /* the pass's mask (its bits from row 0) */
    uint16_t *dout_t;        /* backward: round32(OC) rows of KpN, dout^T */
    uint16_t *x_panels;      /* backward: the dropped input as round16(IC) / 16 panels of 16 x KpN */
    float *dhidden;          /* backward: (N, r) = scale dout B */
} lora_rows_proj;

/* A thread's buffers for one chunk: the dropped input rows or the dinp plane (MODEL_ROWS_MAX x max IC), x
 * rounded (x MODEL_ROWS_MAX rows of round32(max IC)), scaled hidden rows in fp32 and rounded, and
 * gemm_bf16_pack_bn's staging. */
typedef struct {
    float *x, *h;
    uint16_t *ax, *ah, *t;
} lora_rows_ws;

/* The next buffer of a layout: bytes (rounded up to 64) at offset *off of base, or none when base is NULL
 * (the layout only sized); *off moves past it. */
static void *lora_take(char *base, size_t *off, size_t bytes) {
    void *p = base ? base + *off : NULL;
    *off += (bytes + 63) / 64 * 64;
    return p;
}

/* A thread's buffers for inputs up to IC wide and rank r laid out from base (NULL: only sized); returns
 * their bytes. */
static size_t lora_rows_thread_place(int IC_, int r_, char *base, lora_rows_ws *w) {
    size_t R = MODEL_ROWS_MAX, IC = (size_t)IC_, r = (size_t)r_, off = 0;
    lora_rows_ws v;
    v.x = lora_take(base, &off, R * IC * sizeof(float));
    v.h = lora_take(base, &off, R * r * sizeof(float));
    v.ax = lora_take(base, &off, R * (size_t)gemm_bf16_kp((int)IC) * sizeof(uint16_t));
    v.ah = lora_take(base, &off, R * (size_t)gemm_bf16_kp((int)r) * sizeof(uint16_t));
    v.t = lora_take(base, &off, 2 * (IC + 16) * sizeof(uint16_t));
    if (w) *w = v;
    return off;
}

static lora_rows_ws lora_rows_thread(const lora_set *l, int id) {
    lora_rows_ws w;
    lora_rows_thread_place(l->max_in_features, l->cfg.rank,
                           l->rows_scratch + l->rows_thread_bytes * (size_t)id, &w);
    return w;
}

static lora_rows_ws lora_rows_this_thread(const lora_set *l) {
    int id = 0;
#ifdef _OPENMP
    id = omp_get_thread_num();
#endif
    return lora_rows_thread(l, id);
}

/* Grows *buf (charged as scratch) to hold bytes; the contents are not kept, so the old buffer goes first
 * (growing never holds both). */
static qlab_status lora_rows_grow(char **buf, size_t *have, size_t bytes, const char *what) {
    if (bytes <= *have) return QLAB_OK;
    qlab_free_aligned(*buf);
    memacct_release(MEMACCT_SCRATCH, *have);
    *buf = NULL, *have = 0;
    QLAB_TRY(memacct_charge(MEMACCT_SCRATCH, bytes));
    char *b = qlab_alloc_aligned(bytes);
    if (!b) {
        memacct_release(MEMACCT_SCRATCH, bytes);
        return qlab_fail(QLAB_ERR_NOMEM, "lora: %s (%zu bytes)", what, bytes);
    }
    *buf = b, *have = bytes;
    return QLAB_OK;
}

static qlab_status lora_rows_reserve_threads(lora_set *l) {
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    l->rows_thread_bytes = lora_rows_thread_place(l->max_in_features, l->cfg.rank, NULL, NULL);
    return lora_rows_grow(&l->rows_scratch, &l->rows_scratch_bytes, l->rows_thread_bytes * (size_t)threads,
                          "row passes' scratch");
}

/* A and B of adapter a packed for the pass (dinp: for the input gradient), into the kind's panels. */
static qlab_status lora_rows_pack(lora_rows_proj *rp, const lora_adapter *a, int dinp) {
    if (rp->a.panels && rp->a.dinp == dinp) {
        QLAB_TRY(bf16_repack_weight(a->A, NULL, &rp->a));
        return bf16_repack_weight(a->B, NULL, &rp->b);
    }
    bf16_packed_weight_free(&rp->a);
    bf16_packed_weight_free(&rp->b);
    qlab_status (*pack)(const float *, const quant_tensor *, int, int, bf16_packed_weight *) =
        dinp ? bf16_pack_weight_dinp : bf16_pack_weight;
    QLAB_TRY(pack(a->A, NULL, a->rank, a->in_features, &rp->a));
    return pack(a->B, NULL, a->out_features, a->rank, &rp->b);
}

/* A backward's operands of an adapter (in x out, rank r) over KpN positions laid out from base into rp
 * (NULL, NULL: only sized); returns their bytes. */
static size_t lora_rows_proj_place(char *base, int in, int out, int r, int KpN, lora_rows_proj *rp) {
    size_t off = 0, in16 = ((size_t)in + 15) / 16 * 16;
    uint16_t *dout_t = lora_take(base, &off, (size_t)gemm_bf16_kp(out) * KpN * sizeof(uint16_t));
    uint16_t *x_panels = lora_take(base, &off, in16 * KpN * sizeof(uint16_t));
    float *dhidden = lora_take(base, &off, (size_t)KpN * r * sizeof(float));
    if (rp) rp->dout_t = dout_t, rp->x_panels = x_panels, rp->dhidden = dhidden;
    return off;
}

/* rows_end's operands: scale hidden (KpN, r) in fp32 and as B panels, dhidden^T as a packed A; laid out
 * from base (NULL: only sized), first in the backward's buffer. */
typedef struct {
    float *sh;
    uint16_t *sh_panels, *dh_t;
} lora_rows_end_ops;

static size_t lora_rows_end_place(char *base, int rank, int KpN, lora_rows_end_ops *e) {
    size_t off = 0, r16 = ((size_t)rank + 15) / 16 * 16, r32 = (size_t)gemm_bf16_kp(rank);
    lora_rows_end_ops v;
    v.sh = lora_take(base, &off, (size_t)KpN * rank * sizeof(float));
    v.sh_panels = lora_take(base, &off, r16 * KpN * sizeof(uint16_t));
    v.dh_t = lora_take(base, &off, r32 * KpN * sizeof(uint16_t));
    if (e) *e = v;
    return off;
}

/* The operands of the adapted projections of layer's backward pass holding p (q, k, v; or o, gate, up, down)
 * laid out after rows_end's, for N positions. */
static qlab_status lora_rows_layout(lora_set *l, int layer, model_proj p, int N) {
    static const model_proj qkv[] = {PROJ_Q, PROJ_K, PROJ_V}, ffn[] = {PROJ_O, PROJ_GATE, PROJ_UP, PROJ_DOWN};
    int in_qkv = p == PROJ_Q || p == PROJ_K || p == PROJ_V, n = in_qkv ? 3 : 4;
    const model_proj *ps = in_qkv ? qkv : ffn;
    int KpN = gemm_bf16_kp(N);
    size_t end = lora_rows_end_place(NULL, l->cfg.rank, KpN, NULL), bytes = end;
    for (int i = 0; i < n; i++) {
        int s = lora_slot(l, layer, ps[i]);
        if (s >= 0)
            bytes += lora_rows_proj_place(NULL, l->adapters[s].in_features, l->adapters[s].out_features,
                                          l->adapters[s].rank, KpN, NULL);
    }
    QLAB_TRY(lora_rows_grow(&l->rows_ops, &l->rows_ops_bytes, bytes, "row backward's operands"));
    l->rows_N = N, l->rows_KpN = KpN;
    char *u = l->rows_ops + end;
    for (int i = 0; i < n; i++) {
        int s = lora_slot(l, layer, ps[i]);
        if (s >= 0)
            u += lora_rows_proj_place(u, l->adapters[s].in_features, l->adapters[s].out_features,
                                      l->adapters[s].rank, KpN, &l->rows[ps[i]]);
    }
    return QLAB_OK;
}

size_t lora_rows_bytes(const model_config *c, unsigned targets, int rank, int N, int threads) {
    static const model_proj passes[2][4] = {{PROJ_Q, PROJ_K, PROJ_V, PROJ_COUNT},
                                            {PROJ_O, PROJ_GATE, PROJ_UP, PROJ_DOWN}};
    int KpN = gemm_bf16_kp(N), max_in = 0;
    size_t ops = 0, packed = 0, end = lora_rows_end_place(NULL, rank, KpN, NULL);
    for (int k = 0; k < 2; k++) {
        size_t pass = 0;
        for (int i = 0; i < 4 && passes[k][i] != PROJ_COUNT; i++) {
            model_proj p = passes[k][i];
            if (!(targets & LORA_TARGET(p))) continue;
            int out, in;
            model_proj_shape(c, p, &out, &in);
            if (in > max_in) max_in = in;
            pass += lora_rows_proj_place(NULL, in, out, rank, KpN, NULL);
            size_t fwd = bf16_packed_weight_bytes(rank, in, 0) + bf16_packed_weight_bytes(out, rank, 0),
                   back = bf16_packed_weight_bytes(rank, in, 1) + bf16_packed_weight_bytes(out, rank, 1);
            packed += fwd > back ? fwd : back;
        }
        if (pass && end + pass > ops) ops = end + pass;
    }
    return max_in ? lora_rows_thread_place(max_in, rank, NULL, NULL) * (size_t)threads + ops + packed : 0;
}

static qlab_status lora_rows_begin(void *ctx, int layer, model_proj p, int N, int backward) {
    lora_set *l = ctx;
    int s = lora_slot(l, layer, p);
    if (s < 0) return QLAB_OK; /* this projection is not adapted */
    if (!l->rows && !(l->rows = qlab_calloc(PROJ_COUNT, sizeof *l->rows))) return QLAB_ERR_NOMEM;
    lora_rows_proj *rp = &l->rows[p];
    QLAB_TRY(lora_rows_reserve_threads(l));
    if (backward) {
        QLAB_TRY(lora_backward_mask(l, s, layer, p, N, &rp->m));
        QLAB_TRY(lora_rows_layout(l, layer, p, N));
    } else {
        QLAB_TRY(lora_forward_mask(l, s, layer, p, N, &rp->m));
    }
    return lora_rows_pack(rp, &l->adapters[s], backward);
}

/* The rows' mask row n0 on: its bits as the pass stores them. */
static unsigned char *lora_rows_bits(const lora_rows_proj *rp, int IC, int n0) {
    return (unsigned char *)rp->m.bits + (size_t)n0 * lora_dropout_row_words(IC) * sizeof(uint64_t);
}

/* out = inp's rows dropped under the kept mask (the forward's own draw stores it first). */
static void lora_rows_drop(const lora_rows_proj *rp, float *out, const float *inp, int IC, int r0, int rows,
                           int draw) {
    lora_dropout_spec d = lora_dropout_spec_of(rp->m.p);
    unsigned char *bits = lora_rows_bits(rp, IC, r0);
    if (draw) {
        lora_dropout_apply_rows(out, inp, r0, rows, IC, d, rp->m.seed, bits);
        return;
    }
    size_t row_bytes = (size_t)lora_dropout_row_words(IC) * sizeof(uint64_t);
    for (int i = 0; i < rows; i++)
        lora_dropout_mul(out + (size_t)i * IC, inp + (size_t)i * IC, bits + (size_t)i * row_bytes, IC,
                         d.keep_scale);
}

/* C (rows x w->N, ldc) = / += a w^T on the calling thread, a packed rows of w->Kp values. */
static void lora_rows_product(const uint16_t *a, int rows, const bf16_packed_weight *w, float *C, int ldc,
                              int accumulate) {
    gemm_bf16_block_depth(bf16_active_path(), a, (size_t)w->Kp, w->panels, (size_t)GEMM_BF16_PANEL * w->Kp,
                          rows, w->N, w->Kp, w->K, C, ldc, accumulate);
}

static void lora_rows_forward(void *ctx, int layer, model_proj p, const float *inp, float *out, int r0,
                              int rows) {
    lora_set *l = ctx;
    int s = lora_slot(l, layer, p);
    if (s < 0) return;
    const lora_adapter *a = &l->adapters[s];
    const lora_rows_proj *rp = &l->rows[p];
    lora_rows_ws w = lora_rows_this_thread(l);
    int IC = a->in_features, r = a->rank, mp = gemm_bf16_mp(rows);
    const float *x = inp;
    if (rp->m.p > 0) {
        lora_rows_drop(rp, w.x, inp, IC, r0, rows, !rp->m.stored);
        x = w.x;
    }
    /* hidden = x A^T (kept for the backward); out += (scale hidden) B^T */
    float *hidden = l->hidden + ((size_t)s * l->capacity + (size_t)r0) * r;
    gemm_bf16_pack_rows(w.ax, rp->a.Kp, x, (size_t)IC, rows, IC, mp);
    lora_rows_product(w.ax, rows, &rp->a, hidden, r, 0);
    for (size_t i = 0; i < (size_t)rows * r; i++)
        w.h[i] = l->scale * hidden[i];
    gemm_bf16_pack_rows(w.ah, rp->b.Kp, w.h, (size_t)r, rows, r, mp);
    lora_rows_product(w.ah, rows, &rp->b, out, a->out_features, 1);
}

static void lora_rows_backward(void *ctx, int layer, model_proj p, const uint16_t *dout_a, float *dinp,
                               int r0, int rows) {
    lora_set *l = ctx;
    int s = lora_slot(l, layer, p);
    if (s < 0) return;
    const lora_adapter *a = &l->adapters[s];
    const lora_rows_proj *rp = &l->rows[p];
    lora_rows_ws w = lora_rows_this_thread(l);
    int IC = a->in_features, r = a->rank, mp = gemm_bf16_mp(rows), Ko = rp->b.Kp;
    /* dout^T's columns for dB; dhidden = scale (dout B); dinp += dropout'(dhidden A) */
    gemm_bf16_transpose_rows(rp->dout_t + r0, (size_t)l->rows_KpN, mp, dout_a, Ko, Ko, 1);
    float *dh = rp->dhidden + (size_t)r0 * r;
    lora_rows_product(dout_a, rows, &rp->b, dh, r, 0);
    for (size_t i = 0; i < (size_t)rows * r; i++)
        dh[i] *= l->scale;
    gemm_bf16_pack_rows(w.ah, rp->a.Kp, dh, (size_t)r, rows, r, mp);
    if (rp->m.p <= 0) {
        lora_rows_product(w.ah, rows, &rp->a, dinp, IC, 1);
        return;
    }
    lora_rows_product(w.ah, rows, &rp->a, w.x, IC, 0);
    size_t row_bytes = (size_t)lora_dropout_row_words(IC) * sizeof(uint64_t);
    const unsigned char *bits = lora_rows_bits(rp, IC, r0);
    float keep = lora_dropout_spec_of(rp->m.p).keep_scale;
    for (int i = 0; i < rows; i++)
        lora_dropout_mul_add(dinp + (size_t)i * IC, w.x + (size_t)i * IC, bits + (size_t)i * row_bytes, IC,
                             keep);
}

static void lora_rows_input(void *ctx, int layer, model_proj p, const float *inp, int r0, int rows) {
    lora_set *l = ctx;
    int s = lora_slot(l, layer, p);
    if (s < 0) return;
    const lora_adapter *a = &l->adapters[s];
    const lora_rows_proj *rp = &l->rows[p];
    lora_rows_ws w = lora_rows_this_thread(l);
    int IC = a->in_features;
    const float *x = inp;
    if (rp->m.p > 0) {
        lora_rows_drop(rp, w.x, inp, IC, r0, rows, 0);
        x = w.x;
    }
    gemm_bf16_pack_bn(rp->x_panels + (size_t)r0 * GEMM_BF16_PANEL, (size_t)GEMM_BF16_PANEL * l->rows_KpN,
                      gemm_bf16_mp(rows) / 2, x, (size_t)IC, rows, IC, w.t, 1);
}

static qlab_status lora_rows_end(void *ctx, int layer, model_proj p, int backward) {
    lora_set *l = ctx;
    int s = lora_slot(l, layer, p);
    if (s < 0 || !backward) return QLAB_OK;
    const lora_adapter *a = &l->adapters[s];
    const lora_rows_proj *rp = &l->rows[p];
    int N = l->rows_N, KpN = l->rows_KpN, r = a->rank;
    bf16_path path = bf16_active_path();
    /* dB += dout^T (scale hidden), then dA += dhidden^T dropout(x), over all positions */
    lora_rows_end_ops e;
    lora_rows_end_place(l->rows_ops, r, KpN, &e);
    const float *hidden = l->hidden + (size_t)s * l->capacity * r;
    for (size_t i = 0; i < (size_t)N * r; i++)
        e.sh[i] = l->scale * hidden[i];
    gemm_bf16_pack_bn(e.sh_panels, (size_t)GEMM_BF16_PANEL * KpN, KpN / 2, e.sh, (size_t)r, N, r,
                      lora_rows_thread(l, 0).t, 0);
    gemm_bf16_multiply(path, rp->dout_t, e.sh_panels, a->out_features, r, KpN, a->dB, r, 1);
    gemm_bf16_pack_at(e.dh_t, KpN, rp->dhidden, r, N, r, gemm_bf16_kp(r));
    gemm_bf16_multiply(path, e.dh_t, rp->x_panels, r, a->in_features, KpN, a->dA, a->in_features, 1);
    return QLAB_OK;
}

static void lora_rows_free(lora_set *l) {
    if (l->rows)
        for (int p = 0; p < PROJ_COUNT; p++) {
            bf16_packed_weight_free(&l->rows[p].a);
            bf16_packed_weight_free(&l->rows[p].b);
        }
    free(l->rows);
    qlab_free_aligned(l->rows_scratch);
    qlab_free_aligned(l->rows_ops);
    memacct_release(MEMACCT_SCRATCH, l->rows_scratch_bytes + l->rows_ops_bytes);
}

qlab_status lora_attach(lora_set *l, model *m, int freeze_base) {
    const model_config *c = model_get_config(m);
    if (c->dim != l->mc.dim || c->hidden_dim != l->mc.hidden_dim || c->n_layers != l->mc.n_layers ||
        c->n_heads != l->mc.n_heads || c->n_kv_heads != l->mc.n_kv_heads)
        return qlab_fail(
            QLAB_ERR_ARG,
            "lora_attach: adapters were made for dim %d, hidden_dim %d, %d layers, %d/%d heads; the "
            "model has dim %d, hidden_dim %d, %d layers, %d/%d heads",
            l->mc.dim, l->mc.hidden_dim, l->mc.n_layers, l->mc.n_heads, l->mc.n_kv_heads, c->dim,
            c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads);
    model_adapter hook = {.ctx = l,
                          .begin = lora_hook_begin,
                          .forward = lora_hook_forward,
                          .backward = lora_hook_backward,
                          .recompute = lora_hook_recompute,
                          .rows_begin = lora_rows_begin,
                          .rows_forward = lora_rows_forward,
                          .rows_backward = lora_rows_backward,
                          .rows_input = lora_rows_input,
                          .rows_end = lora_rows_end};
    if (freeze_base) model_set_all_trainable(m, 0);
    model_set_adapter(m, &hook);
    l->model = m;
    return QLAB_OK;
}

void lora_detach(model *m) {
    model_set_adapter(m, NULL);
}

/* ---------------------------------------------------------------- merge */

qlab_status lora_merge(const lora_set *l, model *m) {
    const model_config *c = model_get_config(m);
    if (c->dim != l->mc.dim || c->hidden_dim != l->mc.hidden_dim || c->n_layers != l->mc.n_layers ||
        c->n_heads != l->mc.n_heads || c->n_kv_heads != l->mc.n_kv_heads)
        return qlab_fail(QLAB_ERR_ARG, "lora_merge: the adapters do not match the model's configuration");
    float *params = model_get_param_buffer(m, NULL);
    for (int layer = 0; layer < c->n_layers; layer++)
        for (int p = 0; p < PROJ_COUNT; p++) {
            int s = lora_slot(l, layer, (model_proj)p);
            if (s < 0) continue;
            linear_weight lw = model_get_linear(m, layer, (model_proj)p);
            if (!lw.w)
                return qlab_fail(
                    QLAB_ERR_UNSUPPORTED,
                    "lora_merge: layer %d %s is quantized; merge into an fp32 (dequantized) model", layer,
                    model_proj_name((model_proj)p));
            const lora_adapter *a = &l->adapters[s];
            model_param_group g = model_get_param_group(m, model_proj_get((model_proj)p)->group);
            float *W = params + g.offset + (size_t)layer * a->out_features * a->in_features;
            /* W (OC,IC) += scale B (OC,r) A (r,IC) */
            ops_gemm(0, 0, a->out_features, a->in_features, a->rank, l->scale, a->B, a->rank, a->A,
                     a->in_features, 1.0f, W, a->in_features);
        }
    return QLAB_OK;
}

/* ---------------------------------------------------------------- safetensors files (PEFT names) */

static void lora_tensor_name(char *buf, size_t size, int layer, model_proj p, char which) {
    const model_proj_info *info = model_proj_get(p);
    snprintf(buf, size, "base_model.model.model.layers.%d.%s.%s.lora_%c.weight", layer, info->block,
             info->name, which);
}

/* qlab keeps W_q and W_k in the interleaved rotary row order; Hugging Face (and so PEFT) stores them in the
 * half-split order, and the checkpoint writers permute the rows per head (checkpoint_permute_rotary_rows).
 * The adapter's contribution s B A lands on the same rows as W, so B of q_proj and k_proj takes the same
 * row permutation (per query head for q, per key/value head for k: grouped-query aware); A, whose rows are
 * the rank dimension, does not. Other projections are stored as they are. to_hf 1: qlab -> PEFT. */
static qlab_status lora_permute_b(const model_config *mc, model_proj p, float *B, int rank, int to_hf) {
    int head_size = mc->dim / mc->n_heads;
    if (p == PROJ_Q) return checkpoint_permute_rotary_rows(B, mc->n_heads, head_size, rank, to_hf);
    if (p == PROJ_K) return checkpoint_permute_rotary_rows(B, mc->n_kv_heads, head_size, rank, to_hf);
    return QLAB_OK;
}

static void lora_targets_text(unsigned targets, char *buf, size_t size) {
    buf[0] = 0;
    for (int p = 0; p < PROJ_COUNT; p++)
        if (targets & LORA_TARGET(p)) {
            size_t used = strlen(buf);
            snprintf(buf + used, size - used, "%s%s", used ? "," : "", model_proj_name((model_proj)p));
        }
}

qlab_status lora_save(const lora_set *l, const char *path) {
    QLAB_TRY(memacct_charge(MEMACCT_SCRATCH, l->num_params * sizeof(float)));
    safetensors_writer *w = safetensors_writer_new();
    /* The B matrices in PEFT's row order: a copy of the buffer (the writer keeps pointers until write). */
    float *hf = qlab_alloc_aligned(l->num_params * sizeof(float));
    if (!w || !hf) {
        safetensors_writer_free(w);
        qlab_free_aligned(hf);
        memacct_release(MEMACCT_SCRATCH, l->num_params * sizeof(float));
        return qlab_fail(QLAB_ERR_NOMEM, "saving LoRA adapters to %s: out of memory", path);
    }
    memcpy(hf, l->params, l->num_params * sizeof(float));
    qlab_status st = QLAB_OK;
    char name[160], text[160];
    for (int layer = 0; layer < l->mc.n_layers && st == QLAB_OK; layer++)
        for (int p = 0; p < PROJ_COUNT && st == QLAB_OK; p++) {
            int s = lora_slot(l, layer, (model_proj)p);
            if (s < 0) continue;
            const lora_adapter *a = &l->adapters[s];
            int64_t shape_a[2] = {a->rank, a->in_features}, shape_b[2] = {a->out_features, a->rank};
            float *A = hf + a->offset, *B = A + (size_t)a->rank * a->in_features;
            st = lora_permute_b(&l->mc, (model_proj)p, B, a->rank, 1);
            if (st != QLAB_OK) break;
            lora_tensor_name(name, sizeof name, layer, (model_proj)p, 'A');
            st = safetensors_writer_add(w, name, SAFETENSORS_F32, 2, shape_a, A);
            if (st != QLAB_OK) break;
            lora_tensor_name(name, sizeof name, layer, (model_proj)p, 'B');
            st = safetensors_writer_add(w, name, SAFETENSORS_F32, 2, shape_b, B);
        }
    /* PEFT writes {"format": "pt"}; the rest lets lora_load check the scale. */
    if (st == QLAB_OK) st = safetensors_writer_set_metadata(w, "format", "pt");
    snprintf(text, sizeof text, "%d", l->cfg.rank);
    if (st == QLAB_OK) st = safetensors_writer_set_metadata(w, "lora_rank", text);
    snprintf(text, sizeof text, "%.9g", l->cfg.alpha);
    if (st == QLAB_OK) st = safetensors_writer_set_metadata(w, "lora_alpha", text);
    snprintf(text, sizeof text, "%.9g", l->cfg.dropout);
    if (st == QLAB_OK) st = safetensors_writer_set_metadata(w, "lora_dropout", text);
    lora_targets_text(l->cfg.targets, text, sizeof text);
    if (st == QLAB_OK) st = safetensors_writer_set_metadata(w, "target_modules", text);
    if (st == QLAB_OK)
        st = safetensors_writer_set_metadata(w, "use_rslora", l->cfg.rslora ? "true" : "false");
    if (st == QLAB_OK) st = safetensors_writer_write(w, path);
    safetensors_writer_free(w);
    qlab_free_aligned(hf);
    memacct_release(MEMACCT_SCRATCH, l->num_params * sizeof(float));
    return st == QLAB_OK ? QLAB_OK : qlab_fail_context(st, "saving LoRA adapters to %s", path);
}

static qlab_status lora_load_tensor(const safetensors_file *f, const char *name, int64_t rows, int64_t cols,
                                    float *out) {
    const safetensors_tensor *t;
    QLAB_TRY(safetensors_require(f, name, &t));
    if (t->ndim != 2 || t->shape[0] != rows || t->shape[1] != cols)
        return qlab_fail(QLAB_ERR_FORMAT, "%s: tensor '%s' has shape %s(%lld, %lld), expected (%lld, %lld)",
                         f->path, name, t->ndim == 2 ? "" : "of other rank ",
                         (long long)(t->ndim > 0 ? t->shape[0] : 0),
                         (long long)(t->ndim > 1 ? t->shape[1] : 0), (long long)rows, (long long)cols);
    return safetensors_tensor_to_f32(t, out);
}

qlab_status lora_load(lora_set *l, const char *path) {
    safetensors_file f;
    QLAB_TRY(safetensors_open(&f, path));
    qlab_status st = QLAB_OK;
    const char *alpha = safetensors_metadata(&f, "lora_alpha");
    if (alpha) {
        char *end;
        double v = strtod(alpha, &end);
        if (end == alpha || *end || (float)v != l->cfg.alpha)
            st = qlab_fail(QLAB_ERR_FORMAT, "%s: lora_alpha is '%s' but the adapters use %.9g", path, alpha,
                           l->cfg.alpha);
    }
    const char *rs = safetensors_metadata(&f, "use_rslora"); /* qlab's metadata; PEFT writes only format */
    if (st == QLAB_OK && rs && !strcmp(rs, "true") != (l->cfg.rslora != 0))
        st = qlab_fail(QLAB_ERR_FORMAT, "%s: use_rslora is %s but the adapters' is %s", path, rs,
                       l->cfg.rslora ? "true" : "false");
    int charged = 0;
    if (st == QLAB_OK) {
        st = memacct_charge(MEMACCT_SCRATCH, l->num_params * sizeof(float));
        charged = st == QLAB_OK;
    }
    float *staged = st == QLAB_OK ? qlab_alloc_aligned(l->num_params * sizeof(float)) : NULL;
    if (st == QLAB_OK && !staged) st = QLAB_ERR_NOMEM;
    char name[160];
    for (int layer = 0; layer < l->mc.n_layers && st == QLAB_OK; layer++)
        for (int p = 0; p < PROJ_COUNT && st == QLAB_OK; p++) {
            int s = lora_slot(l, layer, (model_proj)p);
            if (s < 0) continue;
            const lora_adapter *a = &l->adapters[s];
            float *A = staged + a->offset, *B = A + (size_t)a->rank * a->in_features;
            lora_tensor_name(name, sizeof name, layer, (model_proj)p, 'A');
            st = lora_load_tensor(&f, name, a->rank, a->in_features, A);
            if (st != QLAB_OK) break;
            lora_tensor_name(name, sizeof name, layer, (model_proj)p, 'B');
            st = lora_load_tensor(&f, name, a->out_features, a->rank, B);
            if (st == QLAB_OK) st = lora_permute_b(&l->mc, (model_proj)p, B, a->rank, 0);
        }
    /* Every adapter of the set was found; any other LoRA tensor is one the set lacks and would be dropped. */
    for (int i = 0; i < f.n_tensors && st == QLAB_OK; i++) {
        const char *tn = f.tensors[i].name;
        if (!strstr(tn, ".lora_A.") && !strstr(tn, ".lora_B.")) continue;
        int layer = -1, known = 0;
        char block[16], proj[16], which = 0;
        if (sscanf(tn, "base_model.model.model.layers.%d.%15[^.].%15[^.].lora_%c", &layer, block, proj,
                   &which) == 4)
            for (int p = 0; p < PROJ_COUNT && !known; p++)
                if (!strcmp(proj, model_proj_name((model_proj)p)) &&
                    lora_slot(l, layer, (model_proj)p) >= 0) {
                    lora_tensor_name(name, sizeof name, layer, (model_proj)p, which);
                    known = !strcmp(name, tn);
                }
        if (!known)
            st = qlab_fail(QLAB_ERR_FORMAT,
                           "%s: tensor '%s' is a LoRA adapter these adapters do not have (targets, "
                           "layers or name differ)",
                           path, tn);
    }
    for (size_t i = 0; i < l->num_params && st == QLAB_OK; i++)
        if (!isfinite(staged[i]))
            st = qlab_fail(QLAB_ERR_NUMERIC,
                           "%s: adapter weights hold a non-finite value (element %zu of %zu)", path, i,
                           l->num_params);
    if (st == QLAB_OK) memcpy(l->params, staged, l->num_params * sizeof(float));
    qlab_free_aligned(staged);
    if (charged) memacct_release(MEMACCT_SCRATCH, l->num_params * sizeof(float));
    safetensors_close(&f);
    return st;
}
