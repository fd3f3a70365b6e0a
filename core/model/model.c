/* The LLaMA model of model.h: parameter/gradient/activation buffers with named views, the linear-layer
 * dispatch between fp32 and quantized weights, and the batched forward and backward passes built from the
 * layer ops of ops.h. */
#include "core/model/model.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/base/memacct.h"
#include "core/base/vmath.h"
#include "core/model/gemm_bf16_kernels.h"
#include "core/model/linear.h"
#include "core/model/ops.h"

/* Activations of one forward pass over N = B*T positions; per-layer arrays are (n_layers, ...). Kept for
 * the backward pass, which needs every layer's inputs. A forward no backward can follow (no targets, or
 * model_forward_loss) keeps one layer's arrays and two of res3 (model_layout_acts). */
typedef struct {
    float *encoded;        /* (N,D) token embeddings: the residual stream entering layer 0 */
    float *ln1, *ln1_rstd; /* (L,N,D), (L,N) */
    float *q, *k, *v;      /* (L,N,D), (L,N,KV), (L,N,KV); q and k after RoPE */
    float *qkv16;          /* or, for the row passes' backward, per layer q, k, v rounded to bf16 (2 bytes) */
    float *att;            /* (L,B,NH,T,T) attention probabilities */
    float *atty;           /* (L,N,D) attention output before the o projection */
    float *res2;           /* (L,N,D) residual stream after attention */
    float *ln2, *ln2_rstd; /* (L,N,D), (L,N) */
    float *h1, *h3, *hs;   /* (L,N,H) gate, up, silu(gate)*up */
    float *res3;           /* (L,N,D) residual stream after the feed-forward block */
    float *lnf, *lnf_rstd; /* (N,D), (N) */
    float *probs;          /* (N,V) logits, turned into probabilities in place when targets are given; with
                            * the head in row chunks (model_head_fuses) one chunk's (MODEL_HEAD_CHUNK,V) */
    float *dlnf;           /* (N,D) with the head in row chunks before a backward: the classifier's input
                            * gradient, which the forward forms chunk by chunk */
    float *losses;         /* (N) */
} model_acts;

/* Gradients of activations, reused from layer to layer during backward. */
typedef struct {
    float *dresidual;        /* (N,D) */
    float *dln;              /* (N,D) */
    float *dq, *dq_pre;      /* (N,D) after / before RoPE */
    float *dk, *dk_pre, *dv; /* (N,KV) */
    float *datty;            /* (N,D) */
    float *dh1, *dh3, *dhs;  /* (N,H) */
    float *att_scratch;      /* (threads, T, T) */
} model_grad_acts;

struct model {
    model_config cfg;
    int head_size, kv_dim;
    size_t num_params;   /* floats in param_buffer: every group, or all but the projections once quantized */
    float *param_buffer; /* the fp32 groups, in group order */
    model_params params; /* NULL views for quantized projection groups */
    float *grad_buffer;  /* lazily allocated, same layout as param_buffer */
    model_params grads;
    int trainable[MODEL_GROUP_COUNT];
    quant_tensor *quantized;  /* n_layers * PROJ_COUNT tensors of a quantized model, else NULL */
    unsigned char *quant_set; /* (n_layers * PROJ_COUNT) 1 once that tensor holds weights */
    int quant_missing;        /* tensors not set yet (model_create_quantized before its loader ran) */
    quant_dtype quant_type;
    int quant_blocksize, quant_double;
    qlab_compute compute;
    bf16_packed_weight *packed; /* n_layers * PROJ_COUNT + 1 (the classifier last) while packed, else NULL */
    int packed_valid;           /* the panels hold the current weights (a backward pass clears it) */
    int row_passes;             /* bf16 forward in chunks of positions when it can (default 1) */
    void *att_ops;              /* bf16_att_operands of the forward in row chunks (while packed) */
    size_t att_ops_bytes;
    bf16_packed_weight
        *packed_dinp; /* PROJ_COUNT: a layer's weights for its input gradients (row backward) */
    /* PROJ_COUNT: a layer's weights for a training forward in row chunks over a quantized base, which packs
     * one layer at a time (a bf16 copy of every layer would outweigh the 4-bit base) */
    bf16_packed_weight *packed_layer;
    void *bwd_ops; /* the row backward's weight-gradient operands (model_brows) */
    size_t bwd_ops_bytes;
    float *tile; /* scratch for dequantized weight rows */
    size_t tile_floats;
    float *rope_cos, *rope_sin; /* (rope_len, head_size/2), grown on demand by the forward pass */
    int rope_len;
    model_adapter adapter;
    int has_adapter;

    /* Activations of the last forward, sized for act_capacity floats. */
    float *act_buffer;
    size_t act_capacity;
    model_acts acts;
    int *saved_tokens, *saved_targets; /* (N) copies of the last forward's inputs */
    int *head_rows; /* (N) the positions the classifier ran over when it ran over scored ones only */
    int head_n;     /* how many (head_rows, and saved_targets holds their targets), or -1: all N */
    size_t saved_capacity;
    int B, T, have_targets, target_count;
    int checkpointing; /* keep block inputs only; recompute each block in backward */
    int acts_keep;     /* the last forward's activations are laid out for a backward (MODEL_ACTS_TRAIN) */
    int acts_rows;     /* ... for the row passes' backward only (model_acts_rows) */
    int probs_grad;    /* acts.probs holds the logits' gradient (model_head_backward), not probabilities */
    int head_fused;    /* the last forward ran the head in row chunks (model_head_fuses) */

    /* Generation's cache (model_forward_next): per position, per layer the keys (after RoPE) and values of
     * the sequence kv_tokens[0..kv_len); room for kv_cap positions. */
    float *kv_cache;
    int *kv_tokens, kv_len, kv_cap;
    void *kv_scratch; /* the fp32 cached attention's scores */
    size_t kv_scratch_bytes;
    /* With bf16 compute, the cache's positions [0, kvb_len) also rounded and packed for the cached
     * attention's products (kvb.base allocated for kv_cap positions at first bf16 use, dropped when the
     * cache grows), so a generated token packs only its own key and value. */
    bf16_kv_cache kvb;
    int kvb_len;

    float *grad_act_buffer;
    size_t grad_act_capacity;
    model_grad_acts gacts;
    size_t quant_bytes; /* bytes of the quantized tensors set so far (charged as 4-bit weights) */
};

/* The views' named fields and the group array must line up, so p->wq is p->group[MODEL_GROUP_WQ]. */
#define MODEL_VIEW_AT(field, g) _Static_assert(offsetof(model_params, field) == (g) * sizeof(float *), #field)
MODEL_VIEW_AT(token_embedding, MODEL_GROUP_TOKEN_EMBEDDING);
MODEL_VIEW_AT(rms_att, MODEL_GROUP_RMS_ATT);
MODEL_VIEW_AT(wq, MODEL_GROUP_WQ);
MODEL_VIEW_AT(wk, MODEL_GROUP_WK);
MODEL_VIEW_AT(wv, MODEL_GROUP_WV);
MODEL_VIEW_AT(wo, MODEL_GROUP_WO);
MODEL_VIEW_AT(rms_ffn, MODEL_GROUP_RMS_FFN);
MODEL_VIEW_AT(w1, MODEL_GROUP_W1);
MODEL_VIEW_AT(w2, MODEL_GROUP_W2);
MODEL_VIEW_AT(w3, MODEL_GROUP_W3);
MODEL_VIEW_AT(rms_final, MODEL_GROUP_RMS_FINAL);
MODEL_VIEW_AT(wcls, MODEL_GROUP_WCLS);
_Static_assert(sizeof(model_params) == MODEL_GROUP_COUNT * sizeof(float *),
               "model_params: one view per group");
#undef MODEL_VIEW_AT

/* ---------------------------------------------------------------- layout: projections and groups */

/* The widths a projection maps between: the model width (n_heads * head_size = dim), the key/value
 * width (n_kv_heads * head_size) and the feed-forward width. */
typedef enum { MODEL_WIDTH_DIM, MODEL_WIDTH_KV, MODEL_WIDTH_HIDDEN } model_width;

static const struct {
    model_proj_info info;
    model_width out, in;
} model_projections[PROJ_COUNT] = {
    [PROJ_Q] = {{"q_proj", "q", "self_attn", MODEL_GROUP_WQ}, MODEL_WIDTH_DIM, MODEL_WIDTH_DIM},
    [PROJ_K] = {{"k_proj", "k", "self_attn", MODEL_GROUP_WK}, MODEL_WIDTH_KV, MODEL_WIDTH_DIM},
    [PROJ_V] = {{"v_proj", "v", "self_attn", MODEL_GROUP_WV}, MODEL_WIDTH_KV, MODEL_WIDTH_DIM},
    [PROJ_O] = {{"o_proj", "o", "self_attn", MODEL_GROUP_WO}, MODEL_WIDTH_DIM, MODEL_WIDTH_DIM},
    [PROJ_GATE] = {{"gate_proj", "gate", "mlp", MODEL_GROUP_W1}, MODEL_WIDTH_HIDDEN, MODEL_WIDTH_DIM},
    [PROJ_UP] = {{"up_proj", "up", "mlp", MODEL_GROUP_W3}, MODEL_WIDTH_HIDDEN, MODEL_WIDTH_DIM},
    [PROJ_DOWN] = {{"down_proj", "down", "mlp", MODEL_GROUP_W2}, MODEL_WIDTH_DIM, MODEL_WIDTH_HIDDEN},
};

static const char *model_group_names[MODEL_GROUP_COUNT] = {
    "token_embedding", "rms_att", "wq", "wk", "wv", "wo", "rms_ffn", "w1", "w2", "w3", "rms_final", "wcls"};

const model_proj_info *model_proj_get(model_proj p) {
    return (p >= 0 && p < PROJ_COUNT) ? &model_projections[p].info : NULL;
}

const char *model_proj_name(model_proj p) {
    return (p >= 0 && p < PROJ_COUNT) ? model_projections[p].info.name : "unknown_proj";
}

const char *model_group_name(model_group g) {
    return (g >= 0 && g < MODEL_GROUP_COUNT) ? model_group_names[g] : "unknown";
}

static int model_width_of(const model_config *c, model_width w) {
    switch (w) {
    case MODEL_WIDTH_DIM:
        return c->dim;
    case MODEL_WIDTH_KV:
        return c->n_heads > 0 ? c->n_kv_heads * (c->dim / c->n_heads) : 0;
    case MODEL_WIDTH_HIDDEN:
        return c->hidden_dim;
    }
    return 0;
}

void model_proj_shape(const model_config *c, model_proj p, int *out_features, int *in_features) {
    *out_features = 0, *in_features = 0;
    if (p < 0 || p >= PROJ_COUNT) return;
    *out_features = model_width_of(c, model_projections[p].out);
    *in_features = model_width_of(c, model_projections[p].in);
}

int model_group_projection(model_group g) {
    for (int p = 0; p < PROJ_COUNT; p++)
        if (model_projections[p].info.group == g) return p;
    return -1;
}

qlab_status model_proj_parse(const char *name, model_proj *p) {
    for (int i = 0; i < PROJ_COUNT; i++)
        if (name && (!strcmp(name, model_projections[i].info.name) ||
                     !strcmp(name, model_projections[i].info.short_name))) {
            *p = (model_proj)i;
            return QLAB_OK;
        }
    return qlab_fail(
        QLAB_ERR_ARG,
        "unknown projection '%s' (known: q_proj k_proj v_proj o_proj gate_proj up_proj down_proj, "
        "or q k v o gate up down)",
        name ? name : "(null)");
}

void model_param_sizes(const model_config *c, size_t sizes[MODEL_GROUP_COUNT]) {
    size_t L = (size_t)c->n_layers, D = (size_t)c->dim, V = (size_t)c->vocab_size;
    sizes[MODEL_GROUP_TOKEN_EMBEDDING] = V * D;
    sizes[MODEL_GROUP_RMS_ATT] = L * D;
    sizes[MODEL_GROUP_RMS_FFN] = L * D;
    sizes[MODEL_GROUP_RMS_FINAL] = D;
    sizes[MODEL_GROUP_WCLS] = c->shared_classifier ? 0 : V * D;
    for (int p = 0; p < PROJ_COUNT; p++) {
        int out_f, in_f;
        model_proj_shape(c, (model_proj)p, &out_f, &in_f);
        sizes[model_projections[p].info.group] = L * (size_t)out_f * (size_t)in_f;
    }
}

size_t model_num_params(const model_config *c) {
    size_t sizes[MODEL_GROUP_COUNT], total = 0;
    model_param_sizes(c, sizes);
    for (int g = 0; g < MODEL_GROUP_COUNT; g++)
        total += sizes[g];
    return total;
}

/* Floats of fp32 storage per group: model_param_sizes, with the projection groups at 0 when they are
 * quantized (a quantized model keeps no fp32 copy of them). */
static void model_stored_sizes(const model_config *c, int quantized, size_t sizes[MODEL_GROUP_COUNT]) {
    model_param_sizes(c, sizes);
    if (quantized)
        for (int p = 0; p < PROJ_COUNT; p++)
            sizes[model_projections[p].info.group] = 0;
}

static size_t model_stored_floats(const model_config *c, int quantized) {
    size_t sizes[MODEL_GROUP_COUNT], total = 0;
    model_stored_sizes(c, quantized, sizes);
    for (int g = 0; g < MODEL_GROUP_COUNT; g++)
        total += sizes[g];
    return total;
}

/* Points one view per stored group into base, in group order (NULL for the projections of a quantized
 * model); a shared classifier is the embedding. */
static void model_point_views(model_params *p, float *base, const model_config *c, int quantized) {
    size_t sizes[MODEL_GROUP_COUNT];
    model_stored_sizes(c, quantized, sizes);
    float *x = base;
    for (int g = 0; g < MODEL_GROUP_COUNT; g++) {
        p->group[g] = (quantized && model_group_projection((model_group)g) >= 0) ? NULL : x;
        x += sizes[g];
    }
    if (c->shared_classifier) p->wcls = p->token_embedding;
}

static qlab_status model_check_config(const model_config *c) {
    if (c->dim <= 0 || c->hidden_dim <= 0 || c->n_layers <= 0 || c->n_heads <= 0 || c->n_kv_heads <= 0 ||
        c->vocab_size <= 0 || c->seq_len <= 0)
        return qlab_fail(
            QLAB_ERR_ARG,
            "model config: sizes must be positive (dim %d, hidden_dim %d, n_layers %d, n_heads %d, "
            "n_kv_heads %d, vocab_size %d, seq_len %d)",
            c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads, c->vocab_size, c->seq_len);
    if (c->seq_len > MODEL_MAX_SEQ_LEN)
        return qlab_fail(QLAB_ERR_ARG, "model config: seq_len %d is above the limit %d (MODEL_MAX_SEQ_LEN)",
                         c->seq_len, MODEL_MAX_SEQ_LEN);
    if (c->n_heads % c->n_kv_heads != 0)
        return qlab_fail(QLAB_ERR_ARG, "model config: n_kv_heads %d does not divide n_heads %d",
                         c->n_kv_heads, c->n_heads);
    if (c->dim % c->n_heads != 0)
        return qlab_fail(QLAB_ERR_ARG, "model config: dim %d is not divisible by n_heads %d", c->dim,
                         c->n_heads);
    if ((c->dim / c->n_heads) % 2 != 0)
        return qlab_fail(QLAB_ERR_ARG, "model config: head size %d is odd (RoPE rotates pairs)",
                         c->dim / c->n_heads);
    if (!(c->norm_eps >= 0) || !isfinite(c->norm_eps))
        return qlab_fail(QLAB_ERR_ARG, "model config: norm_eps %g must be finite and >= 0", c->norm_eps);
    if (!(c->rope_theta > 0) || !isfinite(c->rope_theta))
        return qlab_fail(QLAB_ERR_ARG, "model config: rope_theta %g must be finite and > 0", c->rope_theta);
    if (c->rope_scaling != MODEL_ROPE_DEFAULT && c->rope_scaling != MODEL_ROPE_LINEAR &&
        c->rope_scaling != MODEL_ROPE_LLAMA3)
        return qlab_fail(QLAB_ERR_ARG, "model config: unknown RoPE scaling %d", (int)c->rope_scaling);
    if (c->rope_scaling != MODEL_ROPE_DEFAULT && !(c->rope_factor > 0 && isfinite(c->rope_factor)))
        return qlab_fail(QLAB_ERR_ARG, "model config: %s RoPE scaling factor %g must be finite and > 0",
                         model_rope_scaling_name(c->rope_scaling), c->rope_factor);
    if (c->rope_scaling == MODEL_ROPE_LLAMA3 &&
        !(c->rope_low_freq_factor > 0 && c->rope_high_freq_factor > c->rope_low_freq_factor &&
          isfinite(c->rope_high_freq_factor) && c->rope_original_max_positions > 0))
        return qlab_fail(
            QLAB_ERR_ARG,
            "model config: llama3 RoPE scaling needs 0 < low_freq_factor (%g) < high_freq_factor "
            "(%g) and original_max_position_embeddings (%d) > 0",
            c->rope_low_freq_factor, c->rope_high_freq_factor, c->rope_original_max_positions);
    /* Guard the size arithmetic: every tensor must fit comfortably in size_t and int64 element counts,
     * and per-row products (B*T*dim etc.) are formed in size_t later. */
    double total = 0, D = c->dim, H = c->hidden_dim;
    total = (double)c->vocab_size * D * 2 + (double)c->n_layers * (4 * D * D + 3 * D * H + 2 * D) + D;
    if (total > 4e12)
        return qlab_fail(QLAB_ERR_ARG, "model config: %.3g parameters is more than this build supports",
                         total);
    return QLAB_OK;
}

/* A model with zeroed fp32 storage for every group (quantized 0) or for all but the projections. */
static qlab_status model_alloc(model **out, const model_config *cfg, int quantized) {
    *out = NULL;
    QLAB_TRY(model_check_config(cfg));
    model *m = qlab_calloc(1, sizeof *m);
    if (!m) return QLAB_ERR_NOMEM;
    m->cfg = *cfg;
    m->cfg.shared_classifier = cfg->shared_classifier ? 1 : 0;
    m->head_size = cfg->dim / cfg->n_heads;
    m->kv_dim = cfg->n_kv_heads * m->head_size;
    m->num_params = model_stored_floats(&m->cfg, quantized);
    for (int g = 0; g < MODEL_GROUP_COUNT; g++)
        m->trainable[g] = 1;
    m->row_passes = 1;
    qlab_status st = memacct_charge(MEMACCT_FP_WEIGHTS, m->num_params * sizeof(float));
    m->param_buffer = st == QLAB_OK ? qlab_alloc_aligned(m->num_params * sizeof(float)) : NULL;
    if (!m->param_buffer) {
        if (st == QLAB_OK) memacct_release(MEMACCT_FP_WEIGHTS, m->num_params * sizeof(float));
        free(m);
        return st == QLAB_OK ? QLAB_ERR_NOMEM : st;
    }
    model_point_views(&m->params, m->param_buffer, &m->cfg, quantized);
    *out = m;
    return QLAB_OK;
}

qlab_status model_create(model **out, const model_config *cfg) {
    return model_alloc(out, cfg, 0);
}

static size_t model_rope_bytes(const model *m) {
    return 2 * (size_t)m->rope_len * (m->head_size / 2) * sizeof(float);
}

/* The RoPE tables cover the positions a forward pass has used so far (not seq_len, which a file header
 * sets and may be as large as MODEL_MAX_SEQ_LEN): a model is only charged for the context it runs. The
 * angles are formed in fp32 exactly as llama2.c's run.c forms them, so a llama2.c checkpoint reproduces
 * run.c's logits closely; growing the tables recomputes them identically. */
const char *model_rope_scaling_name(model_rope_scaling s) {
    return s == MODEL_ROPE_LINEAR ? "linear" : s == MODEL_ROPE_LLAMA3 ? "llama3" : "default";
}

float model_rope_frequency(const model_config *c, int i, int head_size) {
    float freq = 1.0f / powf(c->rope_theta, (float)(2 * i) / (float)head_size);
    if (c->rope_scaling == MODEL_ROPE_LINEAR) return freq / c->rope_factor;
    if (c->rope_scaling != MODEL_ROPE_LLAMA3) return freq;
    float original = (float)c->rope_original_max_positions, low = c->rope_low_freq_factor,
          high = c->rope_high_freq_factor;
    float wavelength = 2.0f * (float)M_PI / freq;
    if (wavelength > original / low) return freq / c->rope_factor;
    if (wavelength < original / high) return freq;
    float smooth = (original / wavelength - low) / (high - low);
    return (1.0f - smooth) * freq / c->rope_factor + smooth * freq;
}

static qlab_status model_rope_reserve(model *m, int T) {
    if (T <= m->rope_len) return QLAB_OK;
    int half = m->head_size / 2;
    size_t old_bytes = model_rope_bytes(m), new_bytes = 2 * (size_t)T * half * sizeof(float);
    QLAB_TRY(memacct_charge(MEMACCT_SCRATCH, new_bytes));
    float *cs = qlab_calloc((size_t)T * half, sizeof(float)),
          *sn = qlab_calloc((size_t)T * half, sizeof(float));
    if (!cs || !sn) {
        free(cs);
        free(sn);
        memacct_release(MEMACCT_SCRATCH, new_bytes);
        return QLAB_ERR_NOMEM;
    }
    for (int t = 0; t < T; t++)
        for (int i = 0; i < half; i++) {
            float freq = model_rope_frequency(&m->cfg, i, m->head_size);
            float angle = (float)t * freq;
            cs[(size_t)t * half + i] = cosf(angle);
            sn[(size_t)t * half + i] = sinf(angle);
        }
    free(m->rope_cos);
    free(m->rope_sin);
    memacct_release(MEMACCT_SCRATCH, old_bytes);
    m->rope_cos = cs, m->rope_sin = sn, m->rope_len = T;
    return QLAB_OK;
}

static void model_free_quantized(model *m) {
    if (m->quantized)
        for (int i = 0; i < m->cfg.n_layers * PROJ_COUNT; i++)
            quant_tensor_free(&m->quantized[i]);
    free(m->quantized);
    free(m->quant_set);
    qlab_free_aligned(m->tile);
    memacct_release(MEMACCT_QUANT_WEIGHTS, m->quant_bytes);
    memacct_release(MEMACCT_SCRATCH, m->tile_floats * sizeof(float));
    m->quant_bytes = 0;
    m->quantized = NULL;
    m->quant_set = NULL;
    m->tile = NULL;
    m->tile_floats = 0;
}

static void model_cache_free(model *m);

void model_free(model *m) {
    if (!m) return;
    model_unpack_weights(m);
    model_free_quantized(m);
    qlab_free_aligned(m->param_buffer);
    qlab_free_aligned(m->grad_buffer);
    qlab_free_aligned(m->act_buffer);
    qlab_free_aligned(m->grad_act_buffer);
    free(m->saved_tokens);
    free(m->saved_targets);
    free(m->head_rows);
    free(m->rope_cos);
    free(m->rope_sin);
    model_cache_free(m);
    memacct_release(MEMACCT_FP_WEIGHTS, m->num_params * sizeof(float));
    if (m->grad_buffer) memacct_release(MEMACCT_GRADIENTS, m->num_params * sizeof(float));
    memacct_release(MEMACCT_ACTIVATIONS, (m->act_capacity + m->grad_act_capacity) * sizeof(float));
    memacct_release(MEMACCT_SCRATCH, model_rope_bytes(m) + 3 * m->saved_capacity * sizeof(int));
    /* the bf16 GEMM workspace is a per-thread cache that the next product re-reserves */
    bf16_workspace_release();
    free(m);
}

const model_config *model_get_config(const model *m) {
    return &m->cfg;
}
model_params *model_get_params(model *m) {
    return &m->params;
}
const model_params *model_get_params_const(const model *m) {
    return &m->params;
}

float *model_get_param_buffer(model *m, size_t *count) {
    if (count) *count = m->num_params;
    return m->param_buffer;
}

const float *model_get_param_buffer_const(const model *m, size_t *count) {
    if (count) *count = m->num_params;
    return m->param_buffer;
}

float *model_get_grad_buffer(model *m, size_t *count) {
    if (count) *count = m->num_params;
    if (!m->grad_buffer) {
        if (memacct_charge(MEMACCT_GRADIENTS, m->num_params * sizeof(float)) != QLAB_OK) return NULL;
        m->grad_buffer = qlab_alloc_aligned(m->num_params * sizeof(float));
        if (!m->grad_buffer) {
            memacct_release(MEMACCT_GRADIENTS, m->num_params * sizeof(float));
            qlab_fail(QLAB_ERR_NOMEM, "model gradients: cannot allocate %zu floats", m->num_params);
            return NULL;
        }
        model_point_views(&m->grads, m->grad_buffer, &m->cfg, m->quantized != NULL);
    }
    return m->grad_buffer;
}

void model_zero_grad(model *m) {
    if (m->grad_buffer) qlab_zero_floats(m->grad_buffer, m->num_params);
}

qlab_status model_clone(const model *src, model **out) {
    *out = NULL;
    if (src->quantized)
        return qlab_fail(QLAB_ERR_ARG, "model_clone: the source model is quantized (its fp32 projections are "
                                       "no longer its weights); clone it before model_quantize");
    model *m;
    QLAB_TRY(model_create(&m, &src->cfg));
    memcpy(m->param_buffer, src->param_buffer, src->num_params * sizeof(float));
    memcpy(m->trainable, src->trainable, sizeof m->trainable);
    m->compute = src->compute;
    m->row_passes = src->row_passes;
    *out = m;
    return QLAB_OK;
}

/* Pointer to the fp32 matrix of projection p in layer l inside a parameter (or gradient) view set. */
static float *model_proj_matrix(const model_params *views, const model_config *c, int l, model_proj p) {
    int out_f, in_f;
    model_proj_shape(c, p, &out_f, &in_f);
    return views->group[model_projections[p].info.group] + (size_t)l * out_f * in_f;
}

linear_weight model_get_linear(const model *m, int layer, model_proj p) {
    linear_weight lw = {0, 0, NULL, NULL};
    if (layer < 0 || layer >= m->cfg.n_layers || p < 0 || p >= PROJ_COUNT) return lw;
    model_proj_shape(&m->cfg, p, &lw.out_features, &lw.in_features);
    if (m->quantized)
        lw.q = &m->quantized[(size_t)layer * PROJ_COUNT + p];
    else
        lw.w = model_proj_matrix(&m->params, &m->cfg, layer, p);
    return lw;
}

/* ---------------------------------------------------------------- parameter groups and adapters */

model_param_group model_get_param_group(const model *m, model_group g) {
    model_param_group out = {"unknown", 0, 0, 0, 0};
    if (g < 0 || g >= MODEL_GROUP_COUNT) return out;
    size_t sizes[MODEL_GROUP_COUNT], stored[MODEL_GROUP_COUNT], offset = 0;
    model_param_sizes(&m->cfg, sizes);
    model_stored_sizes(&m->cfg, m->quantized != NULL, stored);
    for (int i = 0; i < (int)g; i++)
        offset += stored[i];
    out.name = model_group_names[g];
    out.offset = offset;
    out.count = sizes[g];
    out.quantized = m->quantized && model_group_projection(g) >= 0;
    out.trainable = m->trainable[g] && !out.quantized && out.count > 0;
    return out;
}

qlab_status model_set_trainable(model *m, model_group g, int trainable) {
    if (g < 0 || g >= MODEL_GROUP_COUNT)
        return qlab_fail(QLAB_ERR_ARG, "model_set_trainable: group %d is outside [0, %d)", (int)g,
                         MODEL_GROUP_COUNT);
    m->trainable[g] = trainable ? 1 : 0;
    return QLAB_OK;
}

void model_set_all_trainable(model *m, int trainable) {
    for (int g = 0; g < MODEL_GROUP_COUNT; g++)
        m->trainable[g] = trainable ? 1 : 0;
}

void model_set_adapter(model *m, const model_adapter *adapter) {
    m->has_adapter = adapter != NULL;
    if (adapter)
        m->adapter = *adapter;
    else
        memset(&m->adapter, 0, sizeof m->adapter);
}

void model_set_compute(model *m, qlab_compute c) {
    if (c != m->compute) {
        model_unpack_weights(m);
        m->have_targets = 0; /* the kept activations differ (bf16 keeps no attention probabilities) */
    }
    m->compute = c;
}
qlab_compute model_get_compute(const model *m) {
    return m->compute;
}

/* Frees a scratch buffer of the model (charged to memory accounting as scratch). */
static void model_scratch_free(void **buf, size_t *bytes) {
    qlab_free_aligned(*buf);
    memacct_release(MEMACCT_SCRATCH, *bytes);
    *buf = NULL, *bytes = 0;
}

/* Grows a scratch buffer of the model to at least need bytes (contents not kept). */
static qlab_status model_scratch_reserve(void **buf, size_t *bytes, size_t need, const char *what) {
    if (need <= *bytes) return QLAB_OK;
    model_scratch_free(buf, bytes);
    QLAB_TRY(memacct_charge(MEMACCT_SCRATCH, need));
    if (!(*buf = qlab_alloc_aligned(need))) {
        memacct_release(MEMACCT_SCRATCH, need);
        return qlab_fail(QLAB_ERR_NOMEM, "%s (%zu bytes)", what, need);
    }
    *bytes = need;
    return QLAB_OK;
}

/* Frees a layer's PROJ_COUNT packed projections (model_pack_layer's slots). */
static void model_free_layer_slots(bf16_packed_weight **slots) {
    if (!*slots) return;
    for (int p = 0; p < PROJ_COUNT; p++)
        bf16_packed_weight_free(&(*slots)[p]);
    free(*slots);
    *slots = NULL;
}

void model_unpack_weights(model *m) {
    model_scratch_free(&m->att_ops, &m->att_ops_bytes);
    model_scratch_free(&m->bwd_ops, &m->bwd_ops_bytes);
    model_free_layer_slots(&m->packed_dinp);
    model_free_layer_slots(&m->packed_layer);
    m->packed_valid = 0;
    if (!m->packed) return;
    for (int i = 0; i <= m->cfg.n_layers * PROJ_COUNT; i++)
        bf16_packed_weight_free(&m->packed[i]);
    free(m->packed);
    m->packed = NULL;
}

int model_weights_packed(const model *m) {
    return m->packed && m->packed_valid;
}

/* Packs every projection and the classifier into m->packed: into the panels already there (for weights
 * that changed since) or newly allocated ones. */
static qlab_status model_pack_all(model *m) {
    if (m->quant_missing > 0)
        return qlab_fail(QLAB_ERR_ARG, "model_pack_weights: %d quantized projections were never set",
                         m->quant_missing);
    int n = m->cfg.n_layers * PROJ_COUNT, repack = m->packed != NULL;
    if (!repack && !(m->packed = qlab_calloc((size_t)n + 1, sizeof *m->packed))) return QLAB_ERR_NOMEM;
    qlab_status st = QLAB_OK;
    for (int i = 0; i <= n && st == QLAB_OK; i++) {
        linear_weight lw = i < n ? model_get_linear(m, i / PROJ_COUNT, (model_proj)(i % PROJ_COUNT))
                                 : (linear_weight){m->cfg.vocab_size, m->cfg.dim, m->params.wcls, NULL};
        st = repack ? bf16_repack_weight(lw.w, lw.q, &m->packed[i])
                    : bf16_pack_weight(lw.w, lw.q, lw.out_features, lw.in_features, &m->packed[i]);
    }
    if (st != QLAB_OK) {
        model_unpack_weights(m);
        return st;
    }
    m->packed_valid = 1;
    return QLAB_OK;
}

/* Packs layer l's projections into *slots (PROJ_COUNT, allocated on first use, then packed again in
 * place): for the forward's products, or (dinp) for their input gradients. */
static qlab_status model_pack_layer(model *m, int l, bf16_packed_weight **slots, int dinp) {
    if (!*slots && !(*slots = qlab_calloc(PROJ_COUNT, sizeof **slots))) return QLAB_ERR_NOMEM;
    for (int p = 0; p < PROJ_COUNT; p++) {
        linear_weight lw = model_get_linear(m, l, (model_proj)p);
        bf16_packed_weight *w = &(*slots)[p];
        qlab_status st = w->panels ? bf16_repack_weight(lw.w, lw.q, w)
                         : dinp    ? bf16_pack_weight_dinp(lw.w, lw.q, lw.out_features, lw.in_features, w)
                                   : bf16_pack_weight(lw.w, lw.q, lw.out_features, lw.in_features, w);
        if (st != QLAB_OK)
            return qlab_fail_context(st, "layer %d %s, packing for the %s", l, model_proj_name((model_proj)p),
                                     dinp ? "backward" : "forward");
    }
    return QLAB_OK;
}

qlab_status model_pack_weights(model *m) {
    if (m->compute != QLAB_COMPUTE_BF16 || model_weights_packed(m)) return QLAB_OK;
    return model_pack_all(m);
}

void model_set_row_passes(model *m, int on) {
    m->row_passes = on ? 1 : 0;
}

int model_last_target_count(const model *m) {
    return m->target_count;
}

/* ---------------------------------------------------------------- quantization */

/* The quantized-projection state of a model: n_layers * PROJ_COUNT empty tensors, their set flags and
 * the dequantization tile, sized from the shapes alone. On failure nothing is changed. */
static qlab_status model_alloc_quantized(model *m, quant_dtype dt, int blocksize, int double_quant) {
    size_t n = (size_t)m->cfg.n_layers * PROJ_COUNT, tile_floats = 0;
    for (int p = 0; p < PROJ_COUNT; p++) {
        linear_weight lw = {0, 0, NULL, NULL};
        model_proj_shape(&m->cfg, (model_proj)p, &lw.out_features, &lw.in_features);
        size_t need = linear_tile_floats_needed(&lw, LINEAR_TILE_FLOATS);
        if (need > tile_floats) tile_floats = need;
    }
    QLAB_TRY(memacct_charge(MEMACCT_SCRATCH, tile_floats * sizeof(float)));
    quant_tensor *qs = qlab_calloc(n, sizeof *qs);
    unsigned char *set = qlab_calloc(n, 1);
    float *tile = qlab_alloc_aligned(tile_floats * sizeof(float));
    if (!qs || !set || !tile) {
        free(qs), free(set), qlab_free_aligned(tile);
        memacct_release(MEMACCT_SCRATCH, tile_floats * sizeof(float));
        return qlab_fail_context(QLAB_ERR_NOMEM, "model: quantized projections");
    }
    m->quantized = qs, m->quant_set = set, m->quant_missing = (int)n;
    m->tile = tile, m->tile_floats = tile_floats;
    m->quant_type = dt, m->quant_blocksize = blocksize, m->quant_double = double_quant;
    return QLAB_OK;
}

/* Quantizes w (out_features x in_features of projection p) into the model's tensor for (layer, p). */
static qlab_status model_quantize_one(model *m, int layer, model_proj p, const float *w) {
    int out_f, in_f;
    model_proj_shape(&m->cfg, p, &out_f, &in_f);
    size_t i = (size_t)layer * PROJ_COUNT + p;
    size_t bytes = quant_bytes_for(m->quant_type, (int64_t)out_f * in_f, m->quant_blocksize, m->quant_double);
    QLAB_TRY(memacct_charge(MEMACCT_QUANT_WEIGHTS, bytes));
    quant_tensor qt;
    qlab_status st = quant_tensor_quantize(&qt, w, (int64_t)out_f * in_f, m->quant_type, m->quant_blocksize,
                                           m->quant_double);
    if (st != QLAB_OK) {
        memacct_release(MEMACCT_QUANT_WEIGHTS, bytes);
        return qlab_fail_context(st, "quantizing layer %d %s", layer, model_proj_name(p));
    }
    qt.ndim = 2;
    qt.shape[0] = out_f;
    qt.shape[1] = in_f;
    m->quant_bytes += bytes;
    if (m->quant_set[i]) {
        m->quant_bytes -= quant_tensor_bytes(&m->quantized[i]);
        memacct_release(MEMACCT_QUANT_WEIGHTS, quant_tensor_bytes(&m->quantized[i]));
        quant_tensor_free(&m->quantized[i]);
    }
    m->quant_missing -= m->quant_set[i] ? 0 : 1;
    m->quantized[i] = qt;
    m->quant_set[i] = 1;
    return QLAB_OK;
}

/* Moves the fp32 groups that stay into a buffer without the projections and frees the full one. */
static qlab_status model_release_projections(model *m) {
    size_t stored = model_stored_floats(&m->cfg, 1);
    QLAB_TRY(memacct_charge(MEMACCT_FP_WEIGHTS, stored * sizeof(float)));
    float *buffer = qlab_alloc_aligned(stored * sizeof(float));
    if (!buffer) {
        memacct_release(MEMACCT_FP_WEIGHTS, stored * sizeof(float));
        return qlab_fail_context(QLAB_ERR_NOMEM, "model: fp32 parameters without the projections");
    }
    model_params views;
    model_point_views(&views, buffer, &m->cfg, 1);
    size_t sizes[MODEL_GROUP_COUNT];
    model_stored_sizes(&m->cfg, 1, sizes);
    for (int g = 0; g < MODEL_GROUP_COUNT; g++)
        if (sizes[g]) memcpy(views.group[g], m->params.group[g], sizes[g] * sizeof(float));
    qlab_free_aligned(m->param_buffer);
    memacct_release(MEMACCT_FP_WEIGHTS, m->num_params * sizeof(float));
    if (m->grad_buffer) memacct_release(MEMACCT_GRADIENTS, m->num_params * sizeof(float));
    m->param_buffer = buffer, m->params = views, m->num_params = stored;
    /* gradients, if any were formed, belonged to the fp32 model */
    qlab_free_aligned(m->grad_buffer);
    m->grad_buffer = NULL;
    memset(&m->grads, 0, sizeof m->grads);
    return QLAB_OK;
}

qlab_status model_quantize(model *m, quant_dtype dt, int blocksize, int double_quant) {
    model_unpack_weights(m);
    if (m->quantized)
        return qlab_fail(QLAB_ERR_ARG, "model_quantize: the model is already quantized (its fp32 projections "
                                       "were released)");
    QLAB_TRY(model_alloc_quantized(m, dt, blocksize, double_quant));
    qlab_status st = QLAB_OK;
    for (int l = 0; l < m->cfg.n_layers && st == QLAB_OK; l++)
        for (int p = 0; p < PROJ_COUNT && st == QLAB_OK; p++)
            st = model_quantize_one(m, l, (model_proj)p,
                                    model_proj_matrix(&m->params, &m->cfg, l, (model_proj)p));
    if (st == QLAB_OK) st = model_release_projections(m);
    if (st != QLAB_OK) model_free_quantized(m); /* the model stays the fp32 model it was */
    return st;
}

qlab_status model_create_quantized(model **out, const model_config *cfg, quant_dtype dt, int blocksize,
                                   int double_quant) {
    *out = NULL;
    QLAB_TRY(quant_check_blocksize(dt, blocksize));
    if (double_quant && !quant_dtype_has_fp32_absmax(dt))
        return qlab_fail(QLAB_ERR_ARG,
                         "model_create_quantized: double_quant applies to fp32-absmax types (%s), "
                         "not %s",
                         quant_dtype_list(1), quant_dtype_name(dt));
    model *m;
    QLAB_TRY(model_alloc(&m, cfg, 1));
    qlab_status st = model_alloc_quantized(m, dt, blocksize, double_quant);
    if (st != QLAB_OK) {
        model_free(m);
        return st;
    }
    *out = m;
    return QLAB_OK;
}

qlab_status model_set_projection(model *m, int layer, model_proj p, const float *w) {
    model_unpack_weights(m);
    if (!m->quantized || !m->quant_set)
        return qlab_fail(QLAB_ERR_ARG, "model_set_projection: the model is not quantized (write fp32 weights "
                                       "through model_get_params)");
    if (layer < 0 || layer >= m->cfg.n_layers || p < 0 || p >= PROJ_COUNT)
        return qlab_fail(QLAB_ERR_ARG,
                         "model_set_projection: layer %d, projection %d out of range (%d layers)", layer,
                         (int)p, m->cfg.n_layers);
    return model_quantize_one(m, layer, p, w);
}

int model_is_quantized(const model *m) {
    return m->quantized != NULL;
}

int model_get_quantization(const model *m, quant_dtype *dtype, int *blocksize, int *double_quant) {
    if (!m->quantized) return 0;
    if (dtype) *dtype = m->quant_type;
    if (blocksize) *blocksize = m->quant_blocksize;
    if (double_quant) *double_quant = m->quant_double;
    return 1;
}

void model_get_memory(const model *m, model_memory *out) {
    memset(out, 0, sizeof *out);
    out->fp32_weights = m->num_params * sizeof(float);
    if (m->quantized)
        for (int i = 0; i < m->cfg.n_layers * PROJ_COUNT; i++)
            out->quantized_weights += quant_tensor_bytes(&m->quantized[i]);
    out->gradients = m->grad_buffer ? m->num_params * sizeof(float) : 0;
    out->activations = (m->act_capacity + m->grad_act_capacity) * sizeof(float);
    out->scratch = m->tile_floats * sizeof(float) +
                   2 * (size_t)m->rope_len * (m->head_size / 2) * sizeof(float) +
                   3 * m->saved_capacity * sizeof(int);
}

const char *model_full_precision_groups(const model *m, char *buf, size_t size) {
    size_t used = 0;
    buf[0] = 0;
    for (int g = 0; g < MODEL_GROUP_COUNT; g++) {
        model_param_group pg = model_get_param_group(m, (model_group)g);
        if (pg.count == 0 || pg.quantized || used >= size) continue;
        used += (size_t)snprintf(buf + used, size - used, "%s%s", used ? "," : "", pg.name);
    }
    return buf;
}

double model_total_bits(const model *m) {
    double bits = 32.0 * (double)m->num_params;
    if (m->quantized)
        for (int i = 0; i < m->cfg.n_layers * PROJ_COUNT; i++)
            bits += 8.0 * (double)quant_tensor_bytes(&m->quantized[i]);
    return bits;
}

/* ---------------------------------------------------------------- activation buffers */

/* Whether a forward keeps the attention probabilities for backward: fp32 does; bf16's attention backward
 * forms them again (attention_backward_bf16). */
static int model_keeps_probs(const model *m) {
    return m->compute != QLAB_COMPUTE_BF16;
}

static int model_adapter_rows(const model *m);
static int model_rows_usable(const model *m);
static int model_brows_usable(const model *m);

/* What a forward lays its activations out for: no backward and no loss (logits to the caller), the loss
 * without a backward (model_forward_loss: the probabilities too), or a backward. */
enum { MODEL_ACTS_EVAL, MODEL_ACTS_LOSS, MODEL_ACTS_TRAIN };

static int model_group_trains(const model *m, model_group g);
static model_group model_classifier_group(const model *m);
static int model_linear_backward_level(const model *m);

/* Whether a forward with targets (keep MODEL_ACTS_LOSS or MODEL_ACTS_TRAIN) runs its head over the scored
 * positions only, in chunks of MODEL_HEAD_CHUNK rows (model_head_chunks), instead of through an (N, V)
 * logits buffer: no logits asked for, bf16 products on a path where a row's bits do not depend on the other
 * rows (not blas; fp32 sgemm's may), and for a backward a frozen classifier (its weight gradient would sum
 * over every row; a frozen one's backward is only the input gradient, which the forward then forms chunk by
 * chunk). The loss and every gradient are the same bits as the whole head's: the skipped rows' logits only
 * ever gave zero gradient rows. A finetune that scores only the responses skips most of the classifier, the
 * largest product of a model with a large vocabulary, and keeps a chunk of logits instead of N rows (SmolLM2:
 * 49,152 floats a row). */
static int model_head_fuses(const model *m, int keep, int logits_asked) {
    return keep != MODEL_ACTS_EVAL && !logits_asked && m->compute == QLAB_COMPUTE_BF16 &&
           bf16_active_path() != BF16_PATH_BLAS &&
           (keep == MODEL_ACTS_LOSS || !model_group_trains(m, model_classifier_group(m)));
}

/* Rows of logits a forward with targets over N positions keeps: a chunk's with the head in row chunks. */
static size_t model_head_buffer_rows(size_t N, int fused) {
    return fused && N > MODEL_HEAD_CHUNK ? MODEL_HEAD_CHUNK : N;
}

/* Whether a forward keeps only what the bf16 row passes read: not the norms' outputs (a backward forms them
 * again; an adapter's row hooks read the chunk's own in the forward), nor SwiGLU's output. For a
 * backward in row passes (with checkpointing its recomputed blocks run in row chunks too,
 * model_block_redo), and for a loss-only forward, which runs in row chunks whenever they are usable. */
static int model_acts_rows(const model *m, int keep) {
    return keep == MODEL_ACTS_TRAIN ? model_brows_usable(m) : keep == MODEL_ACTS_LOSS && model_rows_usable(m);
}

/* Whether a training forward in row passes (rows: model_acts_rows) keeps q, k and v as bf16: the backward
 * reads them only rounded, and the forward then packs the attention's operands from its own chunk buffers
 * (they fit: T a multiple of 32), so no fp32 copy is needed (memory_model_activation_elements). */
static int model_keeps_qkv16(int rows, int T) {
    return rows && bf16_att_operands_fit(T);
}

/* A forward whose layout keeps q, k and v as bf16 only, on a path that would write them in fp32. */
static qlab_status model_no_fp32_qkv(void) {
    return qlab_fail(QLAB_ERR_ARG, "model_forward: the activations were laid out for the bf16 row passes, "
                                   "which this forward does not run");
}

/* Points the activation views for (B,T) into base (or only counts when base is NULL); returns floats. With
 * keep MODEL_ACTS_TRAIN (a backward may follow) the per-layer working activations are one layer's worth with
 * checkpointing (recomputed in backward), else one per layer, and the residual stream leaving each block
 * (res3) is kept per layer; the logits have their own buffer. Otherwise (evaluation, generation: no backward
 * follows) each layer's working activations replace the last one's, res3 takes two slots in turn
 * (model_res_slot: a layer reads the previous one's while writing its own) and the head writes the caller's
 * logits, or with MODEL_ACTS_LOSS the probabilities buffer the loss is taken from. */
static size_t model_layout_acts(model_acts *a, float *base, const model *m, int B, int T, int keep,
                                int fused) {
    int train = keep == MODEL_ACTS_TRAIN;
    size_t NL = (size_t)m->cfg.n_layers, L = train && !m->checkpointing ? NL : 1, D = (size_t)m->cfg.dim;
    size_t N = (size_t)B * T, R = train ? NL : NL < 2 ? 1 : 2;
    size_t H = (size_t)m->cfg.hidden_dim, KV = (size_t)m->kv_dim, V = (size_t)m->cfg.vocab_size;
    size_t NH = (size_t)m->cfg.n_heads, total = 0;
    int rows = model_acts_rows(m, keep), norms = !rows;       /* an adapter's hooks read the chunk's own */
    size_t qkv = train && model_keeps_qkv16(rows, T) ? 0 : 1; /* else half a float per value */
#define MODEL_TAKE(field, n)                                                                                 \
    do {                                                                                                     \
        a->field = base && (n) != 0 ? base + total : NULL;                                                   \
        total += (n);                                                                                        \
    } while (0)
    MODEL_TAKE(encoded, N * D);
    MODEL_TAKE(ln1, norms ? L * N * D : 0);
    MODEL_TAKE(ln1_rstd, L * N);
    MODEL_TAKE(q, qkv * L * N * D);
    MODEL_TAKE(k, qkv * L * N * KV);
    MODEL_TAKE(v, qkv * L * N * KV);
    MODEL_TAKE(qkv16, (1 - qkv) * L * N * (D + 2 * KV) / 2);
    MODEL_TAKE(att, model_keeps_probs(m) ? L * (size_t)B * NH * T * T : 0);
    MODEL_TAKE(atty, L * N * D);
    MODEL_TAKE(res2, L * N * D);
    MODEL_TAKE(ln2, norms ? L * N * D : 0);
    MODEL_TAKE(ln2_rstd, L * N);
    MODEL_TAKE(h1, L * N * H);
    MODEL_TAKE(h3, L * N * H);
    MODEL_TAKE(hs, rows ? 0 : L * N * H);
    MODEL_TAKE(res3, R * N * D);
    MODEL_TAKE(lnf, N * D);
    MODEL_TAKE(lnf_rstd, N);
    MODEL_TAKE(probs, keep == MODEL_ACTS_EVAL ? 0 : model_head_buffer_rows(N, fused) * V);
    MODEL_TAKE(dlnf, fused && train ? N * D : 0);
    MODEL_TAKE(losses, N);
#undef MODEL_TAKE
    return total;
}

/* The backward's activation gradients; the row passes' backward (model_brows_usable) keeps the gradients
 * before RoPE and those of the feed-forward block's hidden layer in its threads' chunk buffers instead. The
 * logits' gradient takes the place of the probabilities (model_head_backward). */
static size_t model_layout_grad_acts(model_grad_acts *g, float *base, const model *m, int B, int T,
                                     int threads) {
    size_t N = (size_t)B * T, D = (size_t)m->cfg.dim, H = (size_t)m->cfg.hidden_dim;
    size_t KV = (size_t)m->kv_dim, total = 0;
    size_t whole = model_brows_usable(m) ? 0 : 1;
#define MODEL_TAKE(field, n)                                                                                 \
    do {                                                                                                     \
        g->field = base && (n) != 0 ? base + total : NULL;                                                   \
        total += (n);                                                                                        \
    } while (0)
    MODEL_TAKE(dresidual, N * D);
    MODEL_TAKE(dln, N * D);
    MODEL_TAKE(dq, N * D);
    MODEL_TAKE(dq_pre, whole * N * D);
    MODEL_TAKE(dk, N * KV);
    MODEL_TAKE(dk_pre, whole * N * KV);
    MODEL_TAKE(dv, N * KV);
    MODEL_TAKE(datty, N * D);
    MODEL_TAKE(dh1, whole * N * H);
    MODEL_TAKE(dh3, whole * N * H);
    MODEL_TAKE(dhs, whole * N * H);
    MODEL_TAKE(att_scratch, (size_t)threads * T * T);
#undef MODEL_TAKE
    return total;
}

/* Grows *buffer to hold `need` floats (contents are not kept): the old buffer is freed first, so growing
 * never holds both (the sequence-length spike costs the new size, not old + new). */
static qlab_status model_reserve(float **buffer, size_t *capacity, size_t need) {
    if (need <= *capacity) return QLAB_OK;
    qlab_free_aligned(*buffer);
    memacct_release(MEMACCT_ACTIVATIONS, *capacity * sizeof(float));
    *buffer = NULL;
    *capacity = 0;
    QLAB_TRY(memacct_charge(MEMACCT_ACTIVATIONS, need * sizeof(float)));
    float *p = qlab_alloc_aligned(need * sizeof(float));
    if (!p) {
        memacct_release(MEMACCT_ACTIVATIONS, need * sizeof(float));
        return qlab_fail_context(QLAB_ERR_NOMEM, "model activations (%zu floats)", need);
    }
    *buffer = p;
    *capacity = need;
    return QLAB_OK;
}

/* Views of layer l's activations inside the per-layer arrays of the last forward. */
typedef struct {
    float *res_in;         /* (N,D) the residual stream entering the layer */
    float *ln1, *ln1_rstd; /* (N,D), (N) */
    float *q, *k, *v;      /* (N,D), (N,KV), (N,KV); NULL when kept as bf16: */
    uint16_t *q16, *k16, *v16;
    float *att;            /* (B,NH,T,T) */
    float *atty, *res2;    /* (N,D) */
    float *ln2, *ln2_rstd; /* (N,D), (N) */
    float *h1, *h3, *hs;   /* (N,H) */
    float *res3;           /* (N,D) the residual stream leaving the layer */
} model_layer_acts;

/* The res3 slot of layer l's output (model_layout_acts). */
static size_t model_res_slot(const model *m, int l) {
    return m->acts_keep ? (size_t)l : (size_t)l % 2;
}

/* The last layer's output: the head's input. */
static float *model_last_output(const model *m) {
    return m->acts.res3 + model_res_slot(m, m->cfg.n_layers - 1) * (size_t)m->B * m->T * m->cfg.dim;
}

static model_layer_acts model_layer_views(const model *m, int l) {
    const model_acts *a = &m->acts;
    size_t N = (size_t)m->B * m->T, ND = N * m->cfg.dim, NKVD = N * m->kv_dim, NHD = N * m->cfg.hidden_dim;
    size_t att = model_keeps_probs(m) ? (size_t)m->B * m->cfg.n_heads * m->T * m->T : 0;
    size_t w = m->checkpointing || !m->acts_keep ? 0 : (size_t)l; /* the slot of the working activations */
    model_layer_acts v;
    v.res_in = l == 0 ? a->encoded : a->res3 + model_res_slot(m, l - 1) * ND;
    v.ln1 = a->ln1 ? a->ln1 + w * ND : NULL, v.ln1_rstd = a->ln1_rstd + w * N; /* model_acts_rows */
    v.q = a->q ? a->q + w * ND : NULL, v.k = a->k ? a->k + w * NKVD : NULL,
    v.v = a->v ? a->v + w * NKVD : NULL;
    v.q16 = a->qkv16 ? (uint16_t *)a->qkv16 + w * (ND + 2 * NKVD) : NULL;
    v.k16 = v.q16 ? v.q16 + ND : NULL, v.v16 = v.q16 ? v.k16 + NKVD : NULL;
    v.att = att ? a->att + w * att : NULL, v.atty = a->atty + w * ND, v.res2 = a->res2 + w * ND;
    v.ln2 = a->ln2 ? a->ln2 + w * ND : NULL, v.ln2_rstd = a->ln2_rstd + w * N;
    v.h1 = a->h1 + w * NHD, v.h3 = a->h3 + w * NHD, v.hs = a->hs ? a->hs + w * NHD : NULL;
    v.res3 = a->res3 + model_res_slot(m, l) * ND;
    return v;
}

/* ---------------------------------------------------------------- forward */

static qlab_status model_adapter_forward(model *m, int l, model_proj p, float *out, const float *inp, int N) {
    if (m->has_adapter && m->adapter.forward) {
        qlab_status st = m->adapter.forward(m->adapter.ctx, l, p, inp, out, N);
        if (st != QLAB_OK) return qlab_fail_context(st, "adapter of layer %d %s", l, model_proj_name(p));
    }
    return QLAB_OK;
}

static qlab_status model_linear_forward(model *m, int l, model_proj p, float *out, const float *inp, int N) {
    linear_weight lw = model_get_linear(m, l, p);
    if (m->packed)
        QLAB_TRY(bf16_gemm_packed(N, inp, lw.in_features, &m->packed[l * PROJ_COUNT + p], 0, out,
                                  lw.out_features));
    else if (m->compute == QLAB_COMPUTE_BF16)
        QLAB_TRY(linear_forward_bf16(out, inp, &lw, N));
    else
        QLAB_TRY(linear_forward(out, inp, &lw, N, m->tile, m->tile_floats));
    return model_adapter_forward(m, l, p, out, inp, N);
}

/* Projections ps[0..n) (n <= 3) of layer l on the same input, in order: with bf16 compute the input is
 * rounded and packed once for all of them (the same bits as one call each). */
static qlab_status model_linear_forward_shared(model *m, int l, const model_proj *ps, float *const *outs,
                                               int n, const float *inp, int N) {
    if (m->compute != QLAB_COMPUTE_BF16) {
        for (int i = 0; i < n; i++)
            QLAB_TRY(model_linear_forward(m, l, ps[i], outs[i], inp, N));
        return QLAB_OK;
    }
    bf16_weight_product w[3];
    int K = 0;
    for (int i = 0; i < n; i++) {
        linear_weight lw = model_get_linear(m, l, ps[i]);
        const bf16_packed_weight *pw = m->packed ? &m->packed[l * PROJ_COUNT + ps[i]] : NULL;
        w[i] = (bf16_weight_product){.w = pw ? NULL : lw.w,
                                     .q = pw ? NULL : lw.q,
                                     .packed = pw,
                                     .N = lw.out_features,
                                     .C = outs[i],
                                     .ldc = lw.out_features};
        K = lw.in_features;
    }
    QLAB_TRY(bf16_gemm_shared(N, K, inp, K, n, w));
    for (int i = 0; i < n; i++)
        QLAB_TRY(model_adapter_forward(m, l, ps[i], outs[i], inp, N));
    return QLAB_OK;
}

/* Refuses a quantized model whose projections were not all set, shapes the buffers or the BLAS interface
 * cannot take and tokens or targets outside the vocabulary. */
static qlab_status model_forward_check(const model *m, const int *tokens, const int *targets, int B, int T) {
    const model_config *c = &m->cfg;
    if (m->quant_missing > 0)
        return qlab_fail(QLAB_ERR_ARG,
                         "model_forward: %d quantized projections were never set (model_set_projection)",
                         m->quant_missing);
    if (B <= 0 || T <= 0 || T > c->seq_len)
        return qlab_fail(QLAB_ERR_ARG, "model_forward: B=%d, T=%d (need B >= 1 and 1 <= T <= seq_len %d)", B,
                         T, c->seq_len);
    /* Keep every (N, width) product comfortably inside int for the BLAS interface. */
    int widest = c->hidden_dim > c->vocab_size ? c->hidden_dim : c->vocab_size;
    widest = widest > c->dim ? widest : c->dim;
    if ((double)B * T * widest > 2147483647.0 || (double)B * c->n_heads * T * T > 2147483647.0)
        return qlab_fail(QLAB_ERR_ARG, "model_forward: B*T = %d*%d positions is too many for one call", B, T);
    int V = c->vocab_size;
    for (int n = 0; n < B * T; n++) {
        if (tokens[n] < 0 || tokens[n] >= V)
            return qlab_fail(QLAB_ERR_ARG, "model_forward: token %d at position %d is outside [0, %d)",
                             tokens[n], n, V);
        if (targets && targets[n] >= V)
            return qlab_fail(QLAB_ERR_ARG, "model_forward: target %d at position %d is outside [0, %d)",
                             targets[n], n, V);
    }
    return QLAB_OK;
}

/* Sizes the RoPE tables and the activations for (B,T) (keep: what for, model_layout_acts), keeps a copy of
 * the tokens for backward and lets the adapter size what it keeps. */
static qlab_status model_forward_prepare(model *m, const int *tokens, int B, int T, int keep, int fused) {
    size_t N = (size_t)B * T;
    QLAB_TRY(model_rope_reserve(m, T));
    QLAB_TRY(model_reserve(&m->act_buffer, &m->act_capacity,
                           model_layout_acts(&m->acts, NULL, m, B, T, keep, fused)));
    model_layout_acts(&m->acts, m->act_buffer, m, B, T, keep, fused);
    m->acts_keep = keep == MODEL_ACTS_TRAIN;
    m->head_fused = fused;
    m->probs_grad = 0;
    m->acts_rows = model_acts_rows(m, keep);
    if (N > m->saved_capacity) {
        QLAB_TRY(memacct_charge(MEMACCT_SCRATCH, 3 * N * sizeof(int)));
        int *tk = qlab_calloc(N, sizeof(int)), *tg = qlab_calloc(N, sizeof(int)),
            *hr = qlab_calloc(N, sizeof(int));
        if (!tk || !tg || !hr) {
            free(tk);
            free(tg);
            free(hr);
            memacct_release(MEMACCT_SCRATCH, 3 * N * sizeof(int));
            return qlab_fail(QLAB_ERR_NOMEM, "model_forward: cannot keep %zu tokens for backward", N);
        }
        free(m->saved_tokens);
        free(m->saved_targets);
        free(m->head_rows);
        memacct_release(MEMACCT_SCRATCH, 3 * m->saved_capacity * sizeof(int));
        m->saved_tokens = tk;
        m->saved_targets = tg;
        m->head_rows = hr;
        m->saved_capacity = N;
    }
    m->head_n = -1;
    memcpy(m->saved_tokens, tokens, sizeof(int) * N);
    if (m->has_adapter && m->adapter.begin) {
        qlab_status st = m->adapter.begin(m->adapter.ctx, B, T);
        if (st != QLAB_OK) return qlab_fail_context(st, "adapter, preparing for %d x %d positions", B, T);
    }
    m->B = B, m->T = T;
    return QLAB_OK;
}

/* The start of block l: the norm of its input and the q, k, v projections, q and k rotated (RoPE) at their
 * positions: t of each of the B rows of T, or p0 + t for one sequence's positions from p0 (generation's
 * cache). */
static qlab_status model_block_qkv(model *m, int l, int p0) {
    const model_config *c = &m->cfg;
    int B = m->B, T = m->T, N = B * T, D = c->dim, NH = c->n_heads, NKV = c->n_kv_heads, HS = m->head_size;
    model_layer_acts x = model_layer_views(m, l);
    int lanes = m->compute == QLAB_COMPUTE_BF16; /* bf16 numerics: vectorized row sums */
    rmsnorm_forward_order(x.ln1, x.ln1_rstd, x.res_in, m->params.rms_att + (size_t)l * D, N, D, c->norm_eps,
                          lanes);
    static const model_proj qkv[3] = {PROJ_Q, PROJ_K, PROJ_V};
    QLAB_TRY(model_linear_forward_shared(m, l, qkv, (float *const[]){x.q, x.k, x.v}, 3, x.ln1, N));
    if (p0 == 0) {
        rope_forward(x.q, x.q, m->rope_cos, m->rope_sin, B, T, NH, HS);
        rope_forward(x.k, x.k, m->rope_cos, m->rope_sin, B, T, NKV, HS);
    } else { /* row i at position (p0 + i) % (p0 + T) */
        rope_forward_rows(x.q, x.q, m->rope_cos, m->rope_sin, p0, T, p0 + T, NH, HS);
        rope_forward_rows(x.k, x.k, m->rope_cos, m->rope_sin, p0, T, p0 + T, NKV, HS);
    }
    return QLAB_OK;
}

/* The rest of block l once attention's output is in x.atty: the output projection and residual, then the
 * feed-forward block x + W2 (silu(W1 n(x)) * W3 n(x)) into x.res3. */
static qlab_status model_block_output(model *m, int l) {
    const model_config *c = &m->cfg;
    int N = m->B * m->T, D = c->dim;
    size_t ND = (size_t)N * D, NHD = (size_t)N * c->hidden_dim;
    model_layer_acts x = model_layer_views(m, l);
    static const model_proj gate_up[2] = {PROJ_GATE, PROJ_UP};
    QLAB_TRY(model_linear_forward(m, l, PROJ_O, x.res2, x.atty, N));
    residual_forward(x.res2, x.res2, x.res_in, ND);
    rmsnorm_forward_order(x.ln2, x.ln2_rstd, x.res2, m->params.rms_ffn + (size_t)l * D, N, D, c->norm_eps,
                          m->compute == QLAB_COMPUTE_BF16);
    QLAB_TRY(model_linear_forward_shared(m, l, gate_up, (float *const[]){x.h1, x.h3}, 2, x.ln2, N));
    swiglu_forward(x.hs, x.h1, x.h3, NHD);
    QLAB_TRY(model_linear_forward(m, l, PROJ_DOWN, x.res3, x.hs, N));
    residual_forward(x.res3, x.res3, x.res2, ND);
    return QLAB_OK;
}

/* Transformer block l over the residual stream x.res_in, leaving it in x.res3. keep: the attention
 * probabilities are kept for backward (bf16 compute skips storing them otherwise). */
static qlab_status model_block_forward(model *m, int l, int keep) {
    int B = m->B, T = m->T, NH = m->cfg.n_heads, NKV = m->cfg.n_kv_heads, HS = m->head_size;
    model_layer_acts x = model_layer_views(m, l);
    if (!x.q) return model_no_fp32_qkv();
    /* attention block: x + Wo attention(rope(Wq n(x)), rope(Wk n(x)), Wv n(x)) */
    QLAB_TRY(model_block_qkv(m, l, 0));
    if (m->compute == QLAB_COMPUTE_BF16)
        QLAB_TRY(attention_forward_bf16(x.atty, keep ? x.att : NULL, x.q, x.k, x.v, B, T, NH, NKV, HS));
    else
        attention_forward(x.atty, x.att, x.q, x.k, x.v, B, T, NH, NKV, HS);
    return model_block_output(m, l);
}

static void model_head_loss(model *m, const int *targets, float *logits, float *loss);

/* The group the classifier's weight belongs to: the token embedding when shared, else its own. */
static model_group model_classifier_group(const model *m) {
    return m->cfg.shared_classifier ? MODEL_GROUP_TOKEN_EMBEDDING : MODEL_GROUP_WCLS;
}

/* The classifier over rows [r0, r0 + rows) of lnf into out (rows, V). */
static qlab_status model_classifier(model *m, int r0, int rows, float *out) {
    const model_config *c = &m->cfg;
    int D = c->dim, V = c->vocab_size;
    const float *x = m->acts.lnf + (size_t)r0 * D;
    if (rows == 0) return QLAB_OK;
    if (m->packed) return bf16_gemm_packed(rows, x, D, &m->packed[c->n_layers * PROJ_COUNT], 0, out, V);
    if (m->compute == QLAB_COMPUTE_BF16)
        return bf16_gemm(0, 1, rows, V, D, x, D, m->params.wcls, D, 0, out, V);
    matmul_forward(out, x, m->params.wcls, rows, D, V);
    return QLAB_OK;
}

/* The end of a head with targets over rows rows: the mean loss to *loss (when asked), the targets kept for
 * the backward. */
static void model_head_kept(model *m, const int *targets, int rows, float mean, float *loss) {
    if (loss) *loss = mean;
    if (targets != m->saved_targets) memcpy(m->saved_targets, targets, sizeof(int) * (size_t)rows);
    m->have_targets = 1;
}

/* The fused head (model_head_fuses) over the first rows rows of lnf with their targets: per chunk of
 * MODEL_HEAD_CHUNK rows the classifier into acts.probs, the softmax and each row's loss, and before a
 * backward the logits' gradient and from it the classifier's input gradient into acts.dlnf (the frozen
 * classifier's whole backward); then the mean loss. Each row's values are those of the whole head. */
static qlab_status model_head_chunks(model *m, const int *targets, int rows, float *loss) {
    const model_config *c = &m->cfg;
    model_acts *a = &m->acts;
    int D = c->dim, V = c->vocab_size, count = 0;
    size_t cap = model_head_buffer_rows((size_t)m->B * m->T, 1) * V; /* the buffer's floats: dout's room */
    for (int r = 0; r < rows; r++)
        count += targets[r] >= 0;
    if (a->dlnf) {
        qlab_zero_floats(a->dlnf, (size_t)rows * D);
        QLAB_TRY(linear_bf16_reserve(c, m->B * m->T, model_linear_backward_level(m)));
    }
    for (int r0 = 0; r0 < rows; r0 += MODEL_HEAD_CHUNK) {
        int n = rows - r0 < MODEL_HEAD_CHUNK ? rows - r0 : MODEL_HEAD_CHUNK;
        QLAB_TRY(model_classifier(m, r0, n, a->probs));
        softmax_forward(a->probs, a->probs, n, V);
        crossentropy_forward(a->losses + r0, a->probs, targets + r0, n, V, NULL);
        if (!a->dlnf || count == 0) continue;
        crossentropy_softmax_grad_inplace(a->probs, targets + r0, n, V, 1.0f / (float)count);
        QLAB_TRY(bf16_gemm_backward_consume(n, D, V, a->probs, cap, m->params.wcls, NULL,
                                            a->lnf + (size_t)r0 * D, a->dlnf + (size_t)r0 * D, NULL));
    }
    model_head_kept(m, targets, rows, crossentropy_mean(a->losses, targets, rows, &m->target_count), loss);
    return QLAB_OK;
}

/* The final norm and classifier of positions at[0..n) only (the last layer's output rows moved to its front
 * first; an evaluation forward keeps nothing for a backward), into logits (n, V). */
static qlab_status model_head_at(model *m, const int *at, int n, float *logits) {
    const model_config *c = &m->cfg;
    int D = c->dim;
    float *last = model_last_output(m);
    for (int k = 0; k < n; k++)
        if (at[k] != k) memcpy(last + (size_t)k * D, last + (size_t)at[k] * D, sizeof(float) * (size_t)D);
    rmsnorm_forward_order(m->acts.lnf, m->acts.lnf_rstd, last, m->params.rms_final, n, D, c->norm_eps,
                          m->compute == QLAB_COMPUTE_BF16);
    m->target_count = 0;
    return model_classifier(m, 0, n, logits);
}

/* Final norm and classifier; with targets, the softmax and the mean loss. */
static qlab_status model_head_forward(model *m, const int *targets, float *logits, float *loss) {
    const model_config *c = &m->cfg;
    const model_params *p = &m->params;
    model_acts *a = &m->acts;
    int N = m->B * m->T, D = c->dim, rows = N;
    if (!targets && !logits) { /* nothing asked of the head */
        m->target_count = 0;
        return QLAB_OK;
    }
    const float *last = model_last_output(m);
    rmsnorm_forward_order(a->lnf, a->lnf_rstd, last, p->rms_final, N, D, c->norm_eps,
                          m->compute == QLAB_COMPUTE_BF16);
    if (m->head_fused) { /* the scored rows to the front, their targets in saved_targets */
        int n = 0;
        for (int i = 0; i < N; i++) {
            if (targets[i] < 0) continue;
            if (n != i) memcpy(a->lnf + (size_t)n * D, a->lnf + (size_t)i * D, sizeof(float) * (size_t)D);
            m->head_rows[n++] = i;
        }
        if (n < N) {
            rows = m->head_n = n;
            for (int r = 0; r < n; r++)
                m->saved_targets[r] = targets[m->head_rows[r]];
        }
    }
    if (m->head_fused) return model_head_chunks(m, m->head_n >= 0 ? m->saved_targets : targets, rows, loss);
    /* Without targets the logits go straight to the caller's buffer (no copy of N x V floats). */
    QLAB_TRY(model_classifier(m, 0, rows, logits && !targets ? logits : a->probs));
    model_head_loss(m, m->head_n >= 0 ? m->saved_targets : targets, logits, loss);
    return QLAB_OK;
}

/* With targets (those of the head's rows: all N, or the scored ones when the head ran over those), the
 * logits (in acts.probs) copied to logits when given, then the softmax and the mean loss; without,
 * nothing. */
static void model_head_loss(model *m, const int *targets, float *logits, float *loss) {
    model_acts *a = &m->acts;
    int N = m->head_n >= 0 ? m->head_n : m->B * m->T, V = m->cfg.vocab_size;
    if (logits && targets) memcpy(logits, a->probs, sizeof(float) * (size_t)N * V);
    if (targets) {
        softmax_forward(a->probs, a->probs, N, V);
        model_head_kept(m, targets, N,
                        crossentropy_forward(a->losses, a->probs, targets, N, V, &m->target_count), loss);
    } else {
        m->target_count = 0;
    }
}

/* ---------------------------------------------------------------- the forward in row chunks */

/* With bf16 compute the forward runs each layer as two passes over chunks of positions around the
 * attention, one chunk per thread at a time: the chunk's norm, rounding, products (single-thread block
 * kernels over the packed panels), RoPE, SwiGLU and residual additions stay in that thread's cache. An
 * evaluation (weights packed by model_pack_weights, no targets) writes out only what the next pass reads
 * (the residual stream, the attention's input and output); a training forward (targets) packs the weights
 * again and writes every activation the backward reads, as model_block_forward does; the head runs the
 * same way. Each value is formed by the operations of model_block_forward and model_head_forward in the
 * same order, each output tile of a product by the same kernel code: the same bits (tests/
 * test_model_bf16.c). Not taken on the blas path (sgemm's summation order may depend on the number of rows)
 * nor with an adapter that has no row hooks (model_adapter). */

/* Whether the adapter (if any) takes part in the row passes through its row hooks. */
static int model_adapter_rows(const model *m) {
    const model_adapter *a = &m->adapter;
    return m->has_adapter && a->rows_begin && a->rows_forward && a->rows_backward && a->rows_input &&
           a->rows_end;
}

int model_bf16_row_path(void) {
    return bf16_active_path() != BF16_PATH_BLAS;
}

static int model_rows_usable(const model *m) {
    return m->compute == QLAB_COMPUTE_BF16 && m->row_passes &&
           !(m->has_adapter && m->adapter.forward && !model_adapter_rows(m)) && model_bf16_row_path();
}

/* Whether a backward runs in row chunks (model_brows below): bf16 row passes with no adapter taking part in
 * the backward. */
static int model_brows_usable(const model *m) {
    return model_rows_usable(m) && !(m->has_adapter && m->adapter.backward && !model_adapter_rows(m));
}

/* The row hooks of a pass (model_adapter_rows): rows_begin for each of its n projections, or rows_end. */
static qlab_status model_rows_hooks(model *m, int l, const model_proj *ps, int n, int backward, int end) {
    if (!model_adapter_rows(m)) return QLAB_OK;
    for (int i = 0; i < n; i++) {
        qlab_status st = end ? m->adapter.rows_end(m->adapter.ctx, l, ps[i], backward)
                             : m->adapter.rows_begin(m->adapter.ctx, l, ps[i], m->B * m->T, backward);
        if (st != QLAB_OK)
            return qlab_fail_context(st, "adapter of layer %d %s (row passes)", l, model_proj_name(ps[i]));
    }
    return QLAB_OK;
}

/* out rows [r0, r0 + rows) += the adapter of projection p (when its row hooks take part). */
static void model_rows_adapter(const model *m, int l, model_proj p, const float *inp, float *out, int r0,
                               int rows) {
    if (model_adapter_rows(m)) m->adapter.rows_forward(m->adapter.ctx, l, p, inp, out, r0, rows);
}

typedef struct {
    bf16_path path;
    int R, N, chunks;  /* rows per chunk (a multiple of 32), positions, chunks */
    int Ka;            /* widest product input rounded up to 32 */
    size_t a, f, g, n; /* bytes of a thread's buffers below */
    size_t per_thread; /* bytes of one thread's buffers */
    char *base;
    bf16_att_operands *ops; /* the attention's operands packed ahead, or NULL */
    int keep; /* training: the activations a backward needs are written (as model_block_forward) */
    /* with keep: also the projections' inputs (the norms' outputs, SwiGLU's), which the backward in row
     * chunks forms again (model_brows) but the whole-matrix backward reads */
    int keep_inputs;
    int norm_out;                 /* the norms' outputs written (fp32): with keep_inputs, or for an adapter */
    const bf16_packed_weight *pk; /* the layer's PROJ_COUNT packed projections */
} model_rows;

typedef struct {
    uint16_t *a;    /* R x Ka bf16: the chunk's packed product input; then the packers' staging */
    float *f1, *f2; /* R x max(D, H) fp32 */
    float *g;       /* R x 2 KV fp32: the chunk's keys and values when the operands are packed ahead */
    float *ln;      /* R x D fp32: the chunk's norm output for an adapter's row hooks, when not kept */
} model_rows_ws;

/* A pass's chunking and per-thread buffer sizes for N positions of T (packed_ops: the attention's operands
 * packed ahead, which needs chunks inside one batch row). */
static void model_rows_sizes(model_rows *p, const model_config *c, int N, int T, int threads,
                             int packed_ops) {
    int KV = c->n_kv_heads * (c->dim / c->n_heads), HS = c->dim / c->n_heads;
    p->N = N;
    p->R = N >= 128 * threads ? 64 : 32;
    if (packed_ops && T % p->R) p->R = 32; /* packing ahead: no chunk straddles two batch rows */
    p->chunks = (N + p->R - 1) / p->R;
    int widest = c->hidden_dim > c->dim ? c->hidden_dim : c->dim;
    p->Ka = gemm_bf16_kp(widest);
    size_t staging = 2 * ((size_t)gemm_bf16_kp(HS) + 32);
    size_t a = (size_t)p->R * p->Ka > staging ? (size_t)p->R * p->Ka : staging;
    p->a = (a * sizeof(uint16_t) + 63) / 64 * 64;
    p->f = ((size_t)p->R * widest * sizeof(float) + 63) / 64 * 64;
    p->g = ((size_t)p->R * 2 * KV * sizeof(float) + 63) / 64 * 64;
    p->n = ((size_t)p->R * c->dim * sizeof(float) + 63) / 64 * 64;
    p->per_thread = p->a + 2 * p->f + p->g + p->n;
}

static qlab_status model_rows_plan(model_rows *p, const model *m, bf16_att_operands *ops, int keep) {
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    p->path = bf16_active_path();
    p->keep = keep;
    p->keep_inputs = keep && !model_brows_usable(m);
    p->norm_out = p->keep_inputs || model_adapter_rows(m); /* an adapter reads the norms' fp32 outputs */
    p->ops = ops && bf16_att_operands_fit(m->T) ? ops : NULL;
    model_rows_sizes(p, &m->cfg, m->B * m->T, m->T, threads, p->ops != NULL);
    p->base = gemm_bf16_workspace(p->per_thread * (size_t)threads);
    return p->base ? QLAB_OK : qlab_last_status();
}

static model_rows_ws model_rows_thread(const model_rows *p) {
    int id = 0;
#ifdef _OPENMP
    id = omp_get_thread_num();
#endif
    char *u = p->base + p->per_thread * (size_t)id;
    return (model_rows_ws){(uint16_t *)u, (float *)(u + p->a), (float *)(u + p->a + p->f),
                           (float *)(u + p->a + 2 * p->f), (float *)(u + p->a + 2 * p->f + p->g)};
}

/* C (rows x w->N, row stride ldc) = a w^T, a packed rows of w->Kp values. */
static void model_rows_product(const model_rows *p, const uint16_t *a, int rows, const bf16_packed_weight *w,
                               float *C, int ldc) {
    gemm_bf16_block(p->path, a, (size_t)w->Kp, w->panels, (size_t)GEMM_BF16_PANEL * w->Kp, rows, w->N, w->Kp,
                    C, ldc, 0, NULL);
}

/* The rows' rmsnorm (as rmsnorm_forward_order with lanes), rounded and packed into a; with p->keep also
 * rstd and, with write_out, the output written (fp32, for the backward). */
static void model_rows_norm(const model_rows *p, model_rows_ws *ws, const float *x, const float *weight,
                            int rows, int D, float eps, float *out, float *rstd, int write_out) {
    int Kp = gemm_bf16_kp(D);
    if (write_out) {
        for (int i = 0; i < rows; i++)
            rstd[i] = rmsnorm_row(out + (size_t)i * D, x + (size_t)i * D, weight, D, eps, 1);
        gemm_bf16_pack_rows(ws->a, Kp, out, (size_t)D, rows, D, gemm_bf16_mp(rows));
        return;
    }
    for (int i = 0; i < rows; i++) {
        const float *xi = x + (size_t)i * D;
        float r = rmsnorm_rstd(xi, D, eps, 1);
        if (p->keep) rstd[i] = r;
        bf16_scale_round(ws->a + (size_t)i * Kp, xi, r, weight, D, Kp);
    }
    memset(ws->a + (size_t)rows * Kp, 0, sizeof(uint16_t) * (size_t)(gemm_bf16_mp(rows) - rows) * Kp);
}

/* The attention's inputs of rows [r0, r1) of layer l: q, k, v after RoPE. */
static void model_rows_qkv(model *m, const model_rows *p, model_rows_ws *ws, int l, int r0, int r1) {
    const model_config *c = &m->cfg;
    model_layer_acts x = model_layer_views(m, l);
    int D = c->dim, KV = m->kv_dim, rows = r1 - r0;
    const bf16_packed_weight *pk = p->pk;
    float *ln = x.ln1 ? x.ln1 + (size_t)r0 * D : ws->ln; /* written with p->norm_out */
    model_rows_norm(p, ws, x.res_in + (size_t)r0 * D, m->params.rms_att + (size_t)l * D, rows, D, c->norm_eps,
                    ln, x.ln1_rstd + r0, p->norm_out);
    /* packing ahead keeps q, k, v in this thread's buffers (evaluation; training keeping them as bf16),
     * otherwise they are the activations */
    int local = p->ops && (!p->keep || x.q16);
    float *q = local ? ws->f1 : x.q + (size_t)r0 * D, *k = local ? ws->g : x.k + (size_t)r0 * KV;
    float *v = local ? ws->g + (size_t)rows * KV : x.v + (size_t)r0 * KV;
    model_rows_product(p, ws->a, rows, &pk[PROJ_Q], q, D);
    model_rows_product(p, ws->a, rows, &pk[PROJ_K], k, KV);
    model_rows_product(p, ws->a, rows, &pk[PROJ_V], v, KV);
    model_rows_adapter(m, l, PROJ_Q, ln, q, r0, rows);
    model_rows_adapter(m, l, PROJ_K, ln, k, r0, rows);
    model_rows_adapter(m, l, PROJ_V, ln, v, r0, rows);
    rope_forward_rows(q, q, m->rope_cos, m->rope_sin, r0, rows, m->T, c->n_heads, m->head_size);
    rope_forward_rows(k, k, m->rope_cos, m->rope_sin, r0, rows, m->T, c->n_kv_heads, m->head_size);
    if (p->ops) bf16_att_operands_pack(p->ops, r0, rows, q, k, v, ws->a); /* rounded for the attention */
    if (p->keep && x.q16) { /* for the backward, which reads them only rounded */
        bf16_round_array(x.q16 + (size_t)r0 * D, q, (size_t)rows * D);
        bf16_round_array(x.k16 + (size_t)r0 * KV, k, (size_t)rows * KV);
        bf16_round_array(x.v16 + (size_t)r0 * KV, v, (size_t)rows * KV);
    }
}

/* The rest of layer l for rows [r0, r1): output projection, residual, feed-forward block, residual. */
static void model_rows_ffn(model *m, const model_rows *p, model_rows_ws *ws, int l, int r0, int r1) {
    const model_config *c = &m->cfg;
    model_layer_acts x = model_layer_views(m, l);
    int D = c->dim, H = c->hidden_dim, rows = r1 - r0;
    size_t n = (size_t)rows * D, off = (size_t)r0 * D;
    const bf16_packed_weight *pk = p->pk;
    float *res2 = x.res2 + off, *res3 = x.res3 + off;
    const float *res_in = x.res_in + off;
    gemm_bf16_pack_rows(ws->a, gemm_bf16_kp(D), x.atty + off, (size_t)D, rows, D, gemm_bf16_mp(rows));
    model_rows_product(p, ws->a, rows, &pk[PROJ_O], res2, D);
    model_rows_adapter(m, l, PROJ_O, x.atty + off, res2, r0, rows);
    vm_add(res2, res2, res_in, n);
    float *ln = x.ln2 ? x.ln2 + off : ws->ln; /* written with p->norm_out */
    model_rows_norm(p, ws, res2, m->params.rms_ffn + (size_t)l * D, rows, D, c->norm_eps, ln, x.ln2_rstd + r0,
                    p->norm_out);
    size_t offh = (size_t)r0 * H;
    float *h1 = p->keep ? x.h1 + offh : ws->f1, *h3 = p->keep ? x.h3 + offh : ws->f2;
    float *hs = p->keep_inputs ? x.hs + offh : ws->f1;
    model_rows_product(p, ws->a, rows, &pk[PROJ_GATE], h1, H);
    model_rows_product(p, ws->a, rows, &pk[PROJ_UP], h3, H);
    model_rows_adapter(m, l, PROJ_GATE, ln, h1, r0, rows);
    model_rows_adapter(m, l, PROJ_UP, ln, h3, r0, rows);
    int Kh = gemm_bf16_kp(H);
    for (int i = 0; i < rows; i++) { /* SwiGLU row by row, rounded while the row is in cache */
        float *g = hs + (size_t)i * H;
        vm_silu_mul(g, h1 + (size_t)i * H, h3 + (size_t)i * H, (size_t)H);
        gemm_bf16_pack_rows(ws->a + (size_t)i * Kh, Kh, g, (size_t)H, 1, H, 1);
    }
    memset(ws->a + (size_t)rows * Kh, 0, sizeof(uint16_t) * (size_t)(gemm_bf16_mp(rows) - rows) * Kh);
    model_rows_product(p, ws->a, rows, &pk[PROJ_DOWN], res3, D);
    model_rows_adapter(m, l, PROJ_DOWN, hs, res3, r0, rows);
    vm_add(res3, res3, res2, n);
}

/* The final norm and classifier of rows [r0, r1) into out (N, V). */
static void model_rows_head(model *m, const model_rows *p, model_rows_ws *ws, float *out, int r0, int r1) {
    const model_config *c = &m->cfg;
    int D = c->dim, V = c->vocab_size;
    const float *last = model_last_output(m);
    model_rows_norm(p, ws, last + (size_t)r0 * D, m->params.rms_final, r1 - r0, D, c->norm_eps,
                    m->acts.lnf + (size_t)r0 * D, m->acts.lnf_rstd + r0,
                    p->keep); /* the head's backward reads lnf */
    model_rows_product(p, ws->a, r1 - r0, &m->packed[c->n_layers * PROJ_COUNT], out + (size_t)r0 * V, V);
}

typedef enum { MODEL_ROWS_QKV, MODEL_ROWS_FFN, MODEL_ROWS_HEAD } model_rows_pass;

static qlab_status model_rows_run(model *m, model_rows_pass pass, int l, const bf16_packed_weight *pk,
                                  float *out, bf16_att_operands *ops, int keep) {
    model_rows p;
    QLAB_TRY(model_rows_plan(&p, m, ops, keep));
    p.pk = pk;
    static const model_proj qkv[] = {PROJ_Q, PROJ_K, PROJ_V}, ffn[] = {PROJ_O, PROJ_GATE, PROJ_UP, PROJ_DOWN};
    const model_proj *ps = pass == MODEL_ROWS_QKV ? qkv : ffn;
    int nps = pass == MODEL_ROWS_QKV ? 3 : pass == MODEL_ROWS_FFN ? 4 : 0;
    QLAB_TRY(model_rows_hooks(m, l, ps, nps, 0, 0));
#pragma omp parallel
    {
        model_rows_ws ws = model_rows_thread(&p);
        gemm_bf16_block_begin(p.path);
#pragma omp for schedule(static)
        for (int ch = 0; ch < p.chunks; ch++) {
            int r0 = ch * p.R, r1 = r0 + p.R < p.N ? r0 + p.R : p.N;
            if (pass == MODEL_ROWS_QKV)
                model_rows_qkv(m, &p, &ws, l, r0, r1);
            else if (pass == MODEL_ROWS_FFN)
                model_rows_ffn(m, &p, &ws, l, r0, r1);
            else
                model_rows_head(m, &p, &ws, out, r0, r1);
        }
        gemm_bf16_block_end(p.path);
    }
    return model_rows_hooks(m, l, ps, nps, 0, 1);
}

/* Whether a training forward in row chunks packs the layers one at a time rather than all of them into
 * m->packed (unless a packed copy is already there): over a quantized base, never packed whole (a bf16 copy
 * of every layer would outweigh the 4-bit base), and without checkpointing, where nothing reads the forward's
 * packed weights again (the backward packs each layer for its input gradients; checkpointing's
 * recomputation would pack every layer a second time). The same packing work, the same bits. */
static int model_packs_per_layer(const model *m) {
    return !m->packed && (m->quantized || !m->checkpointing);
}

/* The attention's operands packed ahead (into m->att_ops) when the sequence length allows: *po points to
 * their layout in ops, else is NULL. */
static qlab_status model_att_operands(model *m, bf16_att_operands *ops, bf16_att_operands **po) {
    const model_config *c = &m->cfg;
    *po = NULL;
    if (!bf16_att_operands_fit(m->T)) return QLAB_OK;
    size_t bytes = bf16_att_operands_bytes(m->B, m->T, c->n_heads, c->n_kv_heads, m->head_size);
    QLAB_TRY(
        model_scratch_reserve(&m->att_ops, &m->att_ops_bytes, bytes, "model_forward: attention operands"));
    bf16_att_operands_layout(ops, m->att_ops, m->B, m->T, c->n_heads, c->n_kv_heads, m->head_size);
    *po = ops;
    return QLAB_OK;
}

/* Layer l of the forward in row chunks: its weights m->packed, or with per_layer packed into
 * m->packed_layer first. */
static qlab_status model_layer_rows(model *m, int l, bf16_att_operands *po, int keep, int per_layer) {
    const model_config *c = &m->cfg;
    model_layer_acts x = model_layer_views(m, l);
    if (per_layer) QLAB_TRY(model_pack_layer(m, l, &m->packed_layer, 0));
    const bf16_packed_weight *pk = per_layer ? m->packed_layer : &m->packed[l * PROJ_COUNT];
    QLAB_TRY(model_rows_run(m, MODEL_ROWS_QKV, l, pk, NULL, po, keep));
    if (po)
        QLAB_TRY(attention_forward_bf16_packed(x.atty, keep ? x.att : NULL, po));
    else if (!x.q)
        return model_no_fp32_qkv();
    else
        QLAB_TRY(attention_forward_bf16(x.atty, keep ? x.att : NULL, x.q, x.k, x.v, m->B, m->T, c->n_heads,
                                        c->n_kv_heads, m->head_size));
    return model_rows_run(m, MODEL_ROWS_FFN, l, pk, NULL, NULL, keep);
}

/* The forward in row chunks from the embedded tokens to the logits (out); with keep (training) the
 * activations a backward needs are written as model_block_forward and model_head_forward write them. The
 * layers' weights are m->packed, or with per_layer packed one layer at a time into m->packed_layer. */
static qlab_status model_forward_rows(model *m, float *out, int keep, int per_layer) {
    bf16_att_operands ops, *po;
    QLAB_TRY(model_att_operands(m, &ops, &po));
    for (int l = 0; l < m->cfg.n_layers; l++)
        QLAB_TRY(model_layer_rows(m, l, po, keep, per_layer));
    return out ? model_rows_run(m, MODEL_ROWS_HEAD, 0, NULL, out, NULL, keep) : QLAB_OK;
}

/* model_forward (train: with targets), model_forward_loss (targets, not train), or with at (n positions)
 * model_forward_at's forward: the layers, then the head (of those positions only). */
static qlab_status model_forward_run(model *m, const int *tokens, const int *targets, int B, int T,
                                     float *logits, float *loss, const int *at, int n, int train) {
    m->have_targets = 0;
    m->kv_len = 0; /* the weights may have changed since generation's cache was filled */
    QLAB_TRY(model_forward_check(m, tokens, targets, B, T));
    int keep = train ? MODEL_ACTS_TRAIN : targets ? MODEL_ACTS_LOSS : MODEL_ACTS_EVAL;
    QLAB_TRY(model_forward_prepare(m, tokens, B, T, keep, !at && model_head_fuses(m, keep, logits != NULL)));
    if (m->compute == QLAB_COMPUTE_BF16) QLAB_TRY(linear_bf16_reserve(&m->cfg, B * T, 0));
    embedding_forward(m->acts.encoded, tokens, m->params.token_embedding, B * T, m->cfg.dim);
    qlab_status st = QLAB_OK;
    if (model_rows_usable(m) && (targets || model_weights_packed(m))) {
        /* training: the weights (changed by the last step) packed again into the kept panels; over a
         * quantized base never packed whole, one layer at a time, and the head as model_head_forward */
        int per_layer = targets && model_packs_per_layer(m);
        if (targets && !per_layer) QLAB_TRY(model_pack_all(m));
        int whole = per_layer || m->head_fused; /* the head as model_head_forward */
        float *out = at || whole ? NULL : targets ? m->acts.probs : logits; /* no logits asked: no head */
        st = model_forward_rows(m, out, train, per_layer);
        /* a training forward's copies serve this forward only: the caller may write the weights next */
        if (targets) m->packed_valid = 0;
        QLAB_TRY(st);
        if (at) return model_head_at(m, at, n, logits);
        if (whole)
            st = model_head_forward(m, targets, logits, loss);
        else
            model_head_loss(m, targets, logits, loss);
    } else {
        for (int l = 0; l < m->cfg.n_layers; l++)
            QLAB_TRY(model_block_forward(m, l, train));
        if (at) return model_head_at(m, at, n, logits);
        st = model_head_forward(m, targets, logits, loss);
    }
    if (!train) m->have_targets = 0; /* nothing was kept to differentiate */
    return st;
}

qlab_status model_forward(model *m, const int *tokens, const int *targets, int B, int T, float *logits,
                          float *loss) {
    return model_forward_run(m, tokens, targets, B, T, logits, loss, NULL, 0, targets != NULL);
}

qlab_status model_forward_loss(model *m, const int *tokens, const int *targets, int B, int T, float *loss) {
    if (!targets || !loss)
        return qlab_fail(QLAB_ERR_ARG, "model_forward_loss: no targets or no loss to fill");
    return model_forward_run(m, tokens, targets, B, T, NULL, loss, NULL, 0, 0);
}

qlab_status model_forward_at(model *m, const int *tokens, int B, int T, const int *at, int n, float *logits) {
    if (n < 1 || n > B * T || !at || !logits)
        return qlab_fail(QLAB_ERR_ARG, "model_forward_at: %d positions of %d x %d asked for", n, B, T);
    for (int k = 0; k < n; k++)
        if (at[k] < 0 || at[k] >= B * T || (k && at[k] <= at[k - 1]))
            return qlab_fail(
                QLAB_ERR_ARG,
                "model_forward_at: position %d (entry %d) is not after the last and inside [0, %d)", at[k], k,
                B * T);
    return model_forward_run(m, tokens, NULL, B, T, logits, NULL, at, n, 0);
}

/* ---------------------------------------------------------------- generation's cache */

static size_t model_kv_row(const model *m) { /* floats per cached position: keys and values of every layer */
    return (size_t)m->cfg.n_layers * 2 * m->cfg.n_kv_heads * m->head_size;
}

void model_cache_clear(model *m) {
    m->kv_len = 0;
}

/* The packed bf16 copy of the cache (model.kvb), if any. */
static void model_cache_bf16_release(model *m) {
    if (m->kvb.base) {
        memacct_release(MEMACCT_SCRATCH,
                        bf16_kv_cache_bytes(m->kvb.layers, m->kvb.NKV, m->kvb.HS, m->kvb.cap));
        qlab_free_aligned(m->kvb.base);
    }
    m->kvb.base = NULL, m->kvb_len = 0;
}

/* The packed bf16 copy for the cache's kv_cap positions, allocated (zeroed) if the cache has none. */
static qlab_status model_cache_bf16_reserve(model *m) {
    if (m->kvb.base) return QLAB_OK;
    const model_config *c = &m->cfg;
    size_t bytes = bf16_kv_cache_bytes(c->n_layers, c->n_kv_heads, m->head_size, m->kv_cap);
    QLAB_TRY(memacct_charge(MEMACCT_SCRATCH, bytes));
    uint16_t *base = qlab_alloc_aligned(bytes);
    if (!base) {
        memacct_release(MEMACCT_SCRATCH, bytes);
        return qlab_fail(QLAB_ERR_NOMEM,
                         "model_forward_next: no room for the bf16 cache of %d positions (%zu bytes)",
                         m->kv_cap, bytes);
    }
    memset(base, 0, bytes);
    bf16_kv_cache_layout(&m->kvb, base, c->n_layers, c->n_kv_heads, m->head_size, m->kv_cap);
    m->kvb_len = 0;
    return QLAB_OK;
}

/* The cache's arrays (not its scratch). */
static void model_cache_release(model *m) {
    memacct_release(MEMACCT_SCRATCH, (size_t)m->kv_cap * (model_kv_row(m) * sizeof(float) + sizeof(int)));
    qlab_free_aligned(m->kv_cache);
    free(m->kv_tokens);
    m->kv_cache = NULL, m->kv_tokens = NULL, m->kv_len = m->kv_cap = 0;
    model_cache_bf16_release(m);
}

static void model_cache_free(model *m) {
    model_cache_release(m);
    model_scratch_free(&m->kv_scratch, &m->kv_scratch_bytes);
}

/* Room for n positions, keeping the cached ones (grown to twice what it held, at least 64, at most
 * seq_len). */
static qlab_status model_cache_reserve(model *m, int n) {
    if (n <= m->kv_cap) return QLAB_OK;
    int cap = 2 * m->kv_cap > n ? 2 * m->kv_cap : n;
    cap = cap < 64 ? 64 : cap;
    cap = cap > m->cfg.seq_len ? m->cfg.seq_len : cap;
    size_t row = model_kv_row(m), bytes = (size_t)cap * (row * sizeof(float) + sizeof(int));
    QLAB_TRY(memacct_charge(MEMACCT_SCRATCH, bytes));
    float *kv = qlab_alloc_aligned((size_t)cap * row * sizeof(float));
    int *tk = qlab_calloc((size_t)cap, sizeof(int));
    if (!kv || !tk) {
        qlab_free_aligned(kv);
        free(tk);
        memacct_release(MEMACCT_SCRATCH, bytes);
        return qlab_fail(QLAB_ERR_NOMEM, "model_forward_next: no room to cache %d positions (%zu bytes)", cap,
                         bytes);
    }
    int len = m->kv_len;
    if (len) {
        memcpy(kv, m->kv_cache, (size_t)len * row * sizeof(float));
        memcpy(tk, m->kv_tokens, (size_t)len * sizeof(int));
    }
    model_cache_release(m);
    m->kv_cache = kv, m->kv_tokens = tk, m->kv_cap = cap, m->kv_len = len;
    return QLAB_OK;
}

/* Block l of the new positions [p0, p0 + T) of one sequence: their keys and values join the cache, their
 * queries attend over every cached position up to their own. */
static qlab_status model_block_cached(model *m, int l, int p0) {
    const model_config *c = &m->cfg;
    int n = m->T, NH = c->n_heads, NKV = c->n_kv_heads, HS = m->head_size, kvd = NKV * HS;
    model_layer_acts x = model_layer_views(m, l);
    QLAB_TRY(model_block_qkv(m, l, p0));
    size_t ld = model_kv_row(m);
    float *kc = m->kv_cache + (size_t)l * 2 * kvd, *vc = kc + kvd;
    for (int i = 0; i < n; i++) {
        memcpy(kc + (size_t)(p0 + i) * ld, x.k + (size_t)i * kvd, sizeof(float) * (size_t)kvd);
        memcpy(vc + (size_t)(p0 + i) * ld, x.v + (size_t)i * kvd, sizeof(float) * (size_t)kvd);
    }
    if (m->compute == QLAB_COMPUTE_BF16) { /* the positions not yet packed (the new ones at least) */
        bf16_kv_cache_put(&m->kvb, l, kc, vc, ld, m->kvb_len, p0 + n - m->kvb_len);
        QLAB_TRY(attention_forward_cached_bf16(x.atty, x.q, &m->kvb, l, p0, n, NH));
    } else
        attention_forward_cached(x.atty, x.q, kc, vc, ld, p0, n, NH, NKV, HS, m->kv_scratch,
                                 qlab_num_threads());
    return model_block_output(m, l);
}

qlab_status model_forward_next(model *m, const int *tokens, int n, float *logits) {
    QLAB_TRY(model_forward_check(m, tokens, NULL, 1, n));
    int p0 = 0; /* the longest cached prefix of tokens, the last position always computed */
    while (p0 < m->kv_len && p0 < n - 1 && m->kv_tokens[p0] == tokens[p0])
        p0++;
    m->kv_len = p0;
    if (m->kvb_len > p0) m->kvb_len = p0; /* the packed copy holds what is kept, at most */
    int fresh = n - p0;
    QLAB_TRY(model_cache_reserve(m, n));
    if (m->compute == QLAB_COMPUTE_BF16) QLAB_TRY(model_cache_bf16_reserve(m));
    /* fp32: scores of the fresh rows over up to kv_cap keys (the same buffer serves every token of a
     * generation); bf16's attention keeps its scratch in the GEMM workspace */
    if (m->compute != QLAB_COMPUTE_BF16) {
        size_t scores = sizeof(float) * (size_t)fresh * (size_t)m->kv_cap * (size_t)qlab_num_threads();
        QLAB_TRY(model_scratch_reserve(&m->kv_scratch, &m->kv_scratch_bytes, scores,
                                       "model_forward_next: scores"));
    }
    QLAB_TRY(model_forward_prepare(m, tokens + p0, 1, fresh, MODEL_ACTS_EVAL, 0));
    QLAB_TRY(model_rope_reserve(m, n));
    if (m->compute == QLAB_COMPUTE_BF16) QLAB_TRY(linear_bf16_reserve(&m->cfg, fresh, 0));
    embedding_forward(m->acts.encoded, tokens + p0, m->params.token_embedding, fresh, m->cfg.dim);
    for (int l = 0; l < m->cfg.n_layers; l++)
        QLAB_TRY(model_block_cached(m, l, p0));
    memcpy(m->kv_tokens + p0, tokens + p0, sizeof(int) * (size_t)fresh);
    m->kv_len = n;
    if (m->compute == QLAB_COMPUTE_BF16) m->kvb_len = n;
    const int last = fresh - 1;
    return model_head_at(m, &last, 1, logits);
}

/* ---------------------------------------------------------------- backward */

static int model_group_trains(const model *m, model_group g) {
    return m->trainable[g] && !(m->quantized && model_group_projection(g) >= 0);
}

/* ptr when group g forms gradients, else NULL (the ops then skip that gradient). */
static float *model_grad_or_null(const model *m, model_group g, float *ptr) {
    return model_group_trains(m, g) ? ptr : NULL;
}

/* The weight gradient of projection p of layer l, or NULL when it forms none (frozen or quantized). */
static float *model_proj_dweight(const model *m, int l, model_proj p) {
    if (!model_group_trains(m, model_projections[p].info.group) || !model_get_linear(m, l, p).w) return NULL;
    return model_proj_matrix(&m->grads, &m->cfg, l, p);
}

/* dinp += dout W (and the adapter's share); dW += dout^T inp when the projection trains. */
static qlab_status model_linear_backward(model *m, int l, model_proj p, float *dinp, const float *dout,
                                         const float *inp, int N) {
    linear_weight lw = model_get_linear(m, l, p);
    float *dweight = model_proj_dweight(m, l, p);
    if (m->compute == QLAB_COMPUTE_BF16)
        QLAB_TRY(linear_backward_bf16(dinp, dweight, dout, inp, &lw, N));
    else
        QLAB_TRY(linear_backward(dinp, dweight, dout, inp, &lw, N, m->tile, m->tile_floats));
    if (m->has_adapter && m->adapter.backward) {
        qlab_status st = m->adapter.backward(m->adapter.ctx, l, p, inp, dout, dinp, N);
        if (st != QLAB_OK)
            return qlab_fail_context(st, "adapter of layer %d %s, backward", l, model_proj_name(p));
    }
    return QLAB_OK;
}

#define MODEL_ZERO(ptr, n) qlab_zero_floats((ptr), (n))

/* The whole head's backward into g->dln (zeroed), rows the rows the classifier ran over: the logits'
 * gradient in place of the probabilities (no second (N,V) buffer; a second backward of one forward forms
 * the probabilities again, as it did), then the classifier's input gradient and, when it trains, its weight
 * gradient. */
static qlab_status model_head_backward_whole(model *m, int rows) {
    const model_config *c = &m->cfg;
    const model_params *p = &m->params;
    model_acts *a = &m->acts;
    int N = m->B * m->T, D = c->dim, V = c->vocab_size;
    if (m->probs_grad) {
        QLAB_TRY(model_classifier(m, 0, rows, a->probs));
        softmax_forward(a->probs, a->probs, rows, V);
    }
    crossentropy_softmax_grad_inplace(a->probs, m->saved_targets, rows, V, 1.0f / (float)m->target_count);
    m->probs_grad = 1;
    float *dwcls = model_grad_or_null(m, model_classifier_group(m), m->grads.wcls);
    if (m->compute != QLAB_COMPUTE_BF16) {
        matmul_backward(m->gacts.dln, dwcls, a->probs, a->lnf, p->wcls, N, D, V);
        return QLAB_OK;
    }
    /* the logits' gradient rounded into its own buffer (no copy in the workspace) */
    return bf16_gemm_backward_consume(rows, D, V, a->probs, (size_t)N * V, p->wcls, NULL, a->lnf,
                                      m->gacts.dln, dwcls);
}

/* From the loss to g->dresidual, the gradient of the residual stream leaving the last block. */
static qlab_status model_head_backward(model *m) {
    const model_config *c = &m->cfg;
    model_grad_acts *g = &m->gacts;
    int N = m->B * m->T, D = c->dim, rows = m->head_n >= 0 ? m->head_n : N;
    size_t ND = (size_t)N * D;
    MODEL_ZERO(g->dln, ND);
    if (m->head_fused) /* the forward formed the classifier's input gradient (model_head_chunks) */
        memcpy(g->dln, m->acts.dlnf, sizeof(float) * (size_t)rows * D);
    else
        QLAB_TRY(model_head_backward_whole(m, rows));
    /* the scored rows' input gradients to their positions (backwards: a row only moves later), zero rows
     * elsewhere, as the skipped rows' zero logit gradients gave */
    for (int r = rows - 1; m->head_n >= 0 && r >= 0; r--) {
        int at = m->head_rows[r];
        if (at == r) continue;
        memcpy(g->dln + (size_t)at * D, g->dln + (size_t)r * D, sizeof(float) * (size_t)D);
        memset(g->dln + (size_t)r * D, 0, sizeof(float) * (size_t)D);
    }
    MODEL_ZERO(g->dresidual, ND);
    rmsnorm_backward_order(g->dresidual, model_grad_or_null(m, MODEL_GROUP_RMS_FINAL, m->grads.rms_final),
                           g->dln, model_last_output(m), m->params.rms_final, m->acts.lnf_rstd, N, D,
                           m->compute == QLAB_COMPUTE_BF16);
    return QLAB_OK;
}

/* Block l backward: g->dresidual enters as the gradient of the block's output and leaves as that of its
 * input; parameter gradients accumulate into the groups that train. */
static qlab_status model_block_backward(model *m, int l, int threads) {
    const model_config *c = &m->cfg;
    const model_params *p = &m->params;
    model_params *gp = &m->grads;
    model_grad_acts *g = &m->gacts;
    int B = m->B, T = m->T, N = B * T, D = c->dim, NH = c->n_heads, NKV = c->n_kv_heads, HS = m->head_size;
    size_t ND = (size_t)N * D, NKVD = (size_t)N * m->kv_dim, NHD = (size_t)N * c->hidden_dim;
    model_layer_acts x = model_layer_views(m, l);
    int bf16 = m->compute == QLAB_COMPUTE_BF16; /* bf16 attention and lane-ordered norm sums */

    /* feed-forward block; the residual passes dresidual through unchanged */
    MODEL_ZERO(g->dhs, NHD);
    QLAB_TRY(model_linear_backward(m, l, PROJ_DOWN, g->dhs, g->dresidual, x.hs, N));
    swiglu_backward(g->dh1, g->dh3, g->dhs, x.h1, x.h3, NHD);
    MODEL_ZERO(g->dln, ND);
    QLAB_TRY(model_linear_backward(m, l, PROJ_GATE, g->dln, g->dh1, x.ln2, N));
    QLAB_TRY(model_linear_backward(m, l, PROJ_UP, g->dln, g->dh3, x.ln2, N));
    rmsnorm_backward_order(g->dresidual,
                           model_grad_or_null(m, MODEL_GROUP_RMS_FFN, gp->rms_ffn + (size_t)l * D), g->dln,
                           x.res2, p->rms_ffn + (size_t)l * D, x.ln2_rstd, N, D, bf16);

    /* attention block */
    MODEL_ZERO(g->datty, ND);
    QLAB_TRY(model_linear_backward(m, l, PROJ_O, g->datty, g->dresidual, x.atty, N));
    if (bf16) { /* stores dq, dk, dv */
        QLAB_TRY(attention_backward_bf16(g->dq, g->dk, g->dv, g->datty, x.q, x.k, x.v, B, T, NH, NKV, HS,
                                         g->att_scratch, threads));
    } else {
        MODEL_ZERO(g->dq, ND);
        MODEL_ZERO(g->dk, NKVD);
        MODEL_ZERO(g->dv, NKVD);
        attention_backward(g->dq, g->dk, g->dv, g->datty, x.att, x.q, x.k, x.v, B, T, NH, NKV, HS,
                           g->att_scratch, threads);
    }
    rope_backward(g->dq_pre, g->dq, m->rope_cos, m->rope_sin, B, T, NH, HS);
    rope_backward(g->dk_pre, g->dk, m->rope_cos, m->rope_sin, B, T, NKV, HS);
    MODEL_ZERO(g->dln, ND);
    QLAB_TRY(model_linear_backward(m, l, PROJ_Q, g->dln, g->dq_pre, x.ln1, N));
    QLAB_TRY(model_linear_backward(m, l, PROJ_K, g->dln, g->dk_pre, x.ln1, N));
    QLAB_TRY(model_linear_backward(m, l, PROJ_V, g->dln, g->dv, x.ln1, N));
    rmsnorm_backward_order(g->dresidual,
                           model_grad_or_null(m, MODEL_GROUP_RMS_ATT, gp->rms_att + (size_t)l * D), g->dln,
                           x.res_in, p->rms_att + (size_t)l * D, x.ln1_rstd, N, D, bf16);
    return QLAB_OK;
}

#undef MODEL_ZERO

/* ---------------------------------------------------------------- bf16 backward in row chunks */

/* With bf16 compute, where the forward runs in row passes (model_rows_usable) and no adapter takes part in
 * the backward, a block's backward is two passes over chunks of positions: the feed-forward block with the
 * o projection, then (after the attention's backward) the q/k/v projections. A chunk forms the input
 * gradients of its rows while they are in the thread's cache: its dout rounded once, multiplied by the
 * layer's weights packed for dinp (bf16_pack_weight_dinp, once per layer), the elementwise gradients
 * (SwiGLU, RoPE, the norms' input gradients) in between. It also leaves each weight gradient's operands in
 * place: the rounded dout transposed into a column block of dout^T, and the layer's input as B panels over
 * position pairs (one for q/k/v, one for gate/up). Each weight gradient is then one product over all
 * positions, and the norm weights' gradients are summed over all rows as before: every value is formed by
 * the operations of model_block_backward in the same order, each product's output tiles by the same
 * kernel code, so the bits are the same (tests/test_model_bf16.c). */

typedef enum { MODEL_BROWS_FFN, MODEL_BROWS_QKV } model_brows_pass;

typedef struct {
    bf16_path path;
    int R, N, chunks, KpN;    /* rows per chunk, positions, chunks, positions rounded up to 32 */
    size_t a, t, f;           /* bytes of a thread's buffers below */
    size_t per_thread;        /* bytes of one thread's buffers */
    char *base;               /* the threads' buffers */
    uint16_t *at[PROJ_COUNT]; /* the pass's dout^T (Kp(out) rows of KpN) of weights that train, else NULL */
    /* the layer's inputs as B panels over position pairs (NULL: no weight needs it) */
    uint16_t *x_ln, *x_atty, *x_hs;
    float *norm_partials; /* the pass's norm weight gradient per block of OPS_NORM_BLOCK rows, or NULL */
    int norm_blocks;
} model_brows;

typedef struct {
    uint16_t *a;         /* R x Kp(widest) bf16: the chunk's rounded dout */
    uint16_t *t;         /* the scalar packers' staging */
    float *f1, *f2, *f3; /* R x widest fp32 */
} model_brows_ws;

/* Packs layer l's projections for their input gradients into m->packed_dinp. */
static qlab_status model_pack_dinp(model *m, int l) {
    return model_pack_layer(m, l, &m->packed_dinp, 1);
}

static size_t model_round64(size_t bytes) {
    return (bytes + 63) / 64 * 64;
}

/* A backward pass's chunking and per-thread buffer sizes for N positions. */
static void model_brows_sizes(model_brows *p, const model_config *c, int N, int threads) {
    int D = c->dim, H = c->hidden_dim, widest = H > D ? H : D;
    p->N = N;
    p->R = N >= 128 * threads ? 64 : 32;
    p->chunks = (N + p->R - 1) / p->R;
    p->KpN = gemm_bf16_kp(N);
    p->a = model_round64((size_t)p->R * gemm_bf16_kp(widest) * sizeof(uint16_t));
    p->t = model_round64(2 * ((size_t)widest + GEMM_BF16_PANEL) * sizeof(uint16_t));
    p->f = model_round64((size_t)p->R * widest * sizeof(float));
    p->per_thread = p->a + p->t + 3 * p->f;
}

/* A pass's weight-gradient operands over N positions for the projections whose weights train (bit 1 << p
 * of trains): each one's dout^T (Kp(out) rows of Kp(N)), then the inputs they multiply as B panels
 * (SwiGLU's output for down, the norm's output for gate/up or q/k/v, the attention's output for o); laid
 * out from base into p's pointers (base NULL: only sized). Returns their bytes. */
static size_t model_brows_place(const model_config *c, int N, unsigned trains, model_brows_pass pass,
                                uint16_t *base, model_brows *p) {
    static const model_proj ffn[] = {PROJ_DOWN, PROJ_GATE, PROJ_UP, PROJ_O}, qkv[] = {PROJ_Q, PROJ_K, PROJ_V};
    const model_proj *ps = pass == MODEL_BROWS_FFN ? ffn : qkv;
    int n = pass == MODEL_BROWS_FFN ? 4 : 3;
    size_t KpN = (size_t)gemm_bf16_kp(N), r16 = GEMM_BF16_PANEL, used = 0;
    size_t cols_d = ((size_t)c->dim + r16 - 1) / r16 * r16,
           cols_h = ((size_t)c->hidden_dim + r16 - 1) / r16 * r16;
#define MODEL_BROWS_TAKE(ptr, rows)                                                                          \
    do {                                                                                                     \
        if (base) p->ptr = base + used;                                                                      \
        used += (rows)*KpN;                                                                                  \
    } while (0)
    for (int i = 0; i < n; i++) {
        int out, in;
        model_proj_shape(c, ps[i], &out, &in);
        if (trains & (1u << ps[i])) MODEL_BROWS_TAKE(at[ps[i]], (size_t)gemm_bf16_kp(out));
    }
    unsigned gate_up = (1u << PROJ_GATE) | (1u << PROJ_UP),
             q_k_v = (1u << PROJ_Q) | (1u << PROJ_K) | (1u << PROJ_V);
    if (pass == MODEL_BROWS_FFN) {
        if (trains & (1u << PROJ_DOWN)) MODEL_BROWS_TAKE(x_hs, cols_h);
        if (trains & gate_up) MODEL_BROWS_TAKE(x_ln, cols_d);
        if (trains & (1u << PROJ_O)) MODEL_BROWS_TAKE(x_atty, cols_d);
    } else if (trains & q_k_v) {
        MODEL_BROWS_TAKE(x_ln, cols_d);
    }
#undef MODEL_BROWS_TAKE
    return used * sizeof(uint16_t);
}

/* Both passes' operands share one buffer: the larger pass's bytes. */
static size_t model_brows_ops_bytes(const model_config *c, int N, unsigned trains) {
    size_t f = model_brows_place(c, N, trains, MODEL_BROWS_FFN, NULL, NULL),
           q = model_brows_place(c, N, trains, MODEL_BROWS_QKV, NULL, NULL);
    return f > q ? f : q;
}

/* Blocks of OPS_NORM_BLOCK positions over N: the norm weights' partial sums keep one row of D per block. */
static int model_norm_blocks(int N) {
    return (N + OPS_NORM_BLOCK - 1) / OPS_NORM_BLOCK;
}

/* The norm weights' partial sums, after the operands when a norm trains. */
static size_t model_brows_norm_bytes(const model_config *c, int N, int norms_train) {
    return norms_train ? (size_t)model_norm_blocks(N) * c->dim * sizeof(float) : 0;
}

/* Bit 1 << p for each projection of layer l whose weight trains. */
static unsigned model_trained_projections(const model *m, int l) {
    unsigned trains = 0;
    for (int pj = 0; pj < PROJ_COUNT; pj++)
        if (model_proj_dweight(m, l, (model_proj)pj)) trains |= 1u << pj;
    return trains;
}

static qlab_status model_brows_plan(model_brows *p, model *m, int l, model_brows_pass pass) {
    const model_config *c = &m->cfg;
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    memset(p, 0, sizeof *p);
    p->path = bf16_active_path();
    model_brows_sizes(p, c, m->B * m->T, threads);
    int norms = model_group_trains(m, MODEL_GROUP_RMS_FFN) || model_group_trains(m, MODEL_GROUP_RMS_ATT);
    unsigned trains = model_trained_projections(m, l);
    size_t ops_bytes = model_brows_ops_bytes(c, p->N, trains);
    p->norm_blocks = model_norm_blocks(p->N);
    QLAB_TRY(model_scratch_reserve(&m->bwd_ops, &m->bwd_ops_bytes,
                                   ops_bytes + model_brows_norm_bytes(c, p->N, norms),
                                   "model_backward: weight-gradient operands"));
    model_group norm = pass == MODEL_BROWS_FFN ? MODEL_GROUP_RMS_FFN : MODEL_GROUP_RMS_ATT;
    if (model_group_trains(m, norm)) p->norm_partials = (float *)((char *)m->bwd_ops + ops_bytes);
    model_brows_place(c, p->N, trains, pass, m->bwd_ops, p);
    p->base = gemm_bf16_workspace(p->per_thread * (size_t)threads);
    return p->base ? QLAB_OK : qlab_last_status();
}

static model_brows_ws model_brows_thread(const model_brows *p) {
    int id = 0;
#ifdef _OPENMP
    id = omp_get_thread_num();
#endif
    char *u = p->base + p->per_thread * (size_t)id;
    float *f = (float *)(u + p->a + p->t);
    return (model_brows_ws){(uint16_t *)u, (uint16_t *)(u + p->a), f, (float *)((char *)f + p->f),
                            (float *)((char *)f + 2 * p->f)};
}

/* Rows [0, rows) of dout (out features wide), positions r0.., rounded into ws->a for the input gradient and,
 * when projection pj's weight trains, transposed into its dout^T at columns r0... */
static void model_brows_dout(const model_brows *p, model_brows_ws *ws, model_proj pj, const float *dout,
                             int out, int r0, int rows) {
    int Kp = gemm_bf16_kp(out), mp = gemm_bf16_mp(rows);
    gemm_bf16_pack_rows(ws->a, Kp, dout, (size_t)out, rows, out, mp);
    if (p->at[pj]) gemm_bf16_transpose_rows(p->at[pj] + r0, (size_t)p->KpN, mp, ws->a, Kp, Kp, 1);
}

/* dinp (rows x w->N) += ws->a w, zeroed first when zero is set (as the whole-matrix form's buffers are). */
static void model_brows_dinp(const model_brows *p, const model_brows_ws *ws, int rows,
                             const bf16_packed_weight *w, float *dinp, int zero) {
    if (zero) memset(dinp, 0, sizeof(float) * (size_t)rows * w->N);
    gemm_bf16_block(p->path, ws->a, (size_t)w->Kp, w->panels, (size_t)GEMM_BF16_PANEL * w->Kp, rows, w->N,
                    w->Kp, dinp, w->N, 1, NULL);
}

/* The rows of positions [r0, r0 + rows) of a layer input (x at row r0, in features wide) as pairs r0/2.. of
 * B panels dst (if any). */
static void model_brows_input(const model_brows *p, model_brows_ws *ws, uint16_t *dst, const float *x, int in,
                              int r0, int rows) {
    if (!dst) return;
    gemm_bf16_pack_bn(dst + (size_t)r0 * GEMM_BF16_PANEL, (size_t)GEMM_BF16_PANEL * p->KpN,
                      gemm_bf16_mp(rows) / 2, x, (size_t)in, rows, in, ws->t, 1);
}

/* dinp rows += the adapter's input gradient of projection p, from the chunk's rounded dout in ws->a (when
 * the adapter's row hooks take part). */
static void model_brows_adapter(const model *m, const model_brows_ws *ws, int l, model_proj p, float *dinp,
                                int r0, int rows) {
    if (model_adapter_rows(m)) m->adapter.rows_backward(m->adapter.ctx, l, p, ws->a, dinp, r0, rows);
}

static void model_brows_adapter_input(const model *m, int l, model_proj p, const float *x, int r0, int rows) {
    if (model_adapter_rows(m)) m->adapter.rows_input(m->adapter.ctx, l, p, x, r0, rows);
}

/* The norm weight gradient's partial sums of rows [r0, r1) (dln and x at row r0), per block of rows. */
static void model_brows_norm_weight(const model_brows *p, const float *dln, const float *x, const float *rstd,
                                    int D, int r0, int r1) {
    if (!p->norm_partials) return;
    for (int b0 = r0; b0 < r1; b0 += OPS_NORM_BLOCK) {
        int rows = r1 - b0 < OPS_NORM_BLOCK ? r1 - b0 : OPS_NORM_BLOCK;
        size_t off = (size_t)(b0 - r0) * D;
        rmsnorm_weight_block(p->norm_partials + (size_t)(b0 / OPS_NORM_BLOCK) * D, dln + off, x + off,
                             rstd + (b0 - r0), rows, D);
    }
}

/* Rows [r0, r1) from the block's output gradient (g->dresidual) through the feed-forward block, its norm and
 * the o projection: g->dresidual += the norm's input gradient, g->datty and g->dln (the norm's output
 * gradient, for its weight) written. */
static void model_brows_ffn(model *m, const model_brows *p, model_brows_ws *ws, int l, int r0, int r1) {
    const model_config *c = &m->cfg;
    model_layer_acts x = model_layer_views(m, l);
    model_grad_acts *g = &m->gacts;
    const bf16_packed_weight *pd = m->packed_dinp;
    int D = c->dim, H = c->hidden_dim, rows = r1 - r0;
    size_t off = (size_t)r0 * D, offh = (size_t)r0 * H, nh = (size_t)rows * H;
    float *dres = g->dresidual + off, *dln = g->dln + off, *dhs = ws->f1, *dh1 = ws->f2, *dh3 = ws->f3;
    int hook = model_adapter_rows(m);
    model_brows_dout(p, ws, PROJ_DOWN, dres, D, r0, rows);
    model_brows_dinp(p, ws, rows, &pd[PROJ_DOWN], dhs, 1);
    model_brows_adapter(m, ws, l, PROJ_DOWN, dhs, r0, rows);
    /* SwiGLU's backward and, when the down projection trains or has an adapter, its input again (over dhs)
     * from the same exponentials */
    vm_swiglu_backward(dh1, dh3, p->x_hs || hook ? dhs : NULL, dhs, x.h1 + offh, x.h3 + offh, nh);
    model_brows_input(p, ws, p->x_hs, dhs, H, r0, rows);
    model_brows_adapter_input(m, l, PROJ_DOWN, dhs, r0, rows);
    if (p->x_ln || hook) { /* gate's and up's input: the norm's output again */
        rmsnorm_apply_rows(dhs, x.res2 + off, m->params.rms_ffn + (size_t)l * D, x.ln2_rstd + r0, rows, D);
        model_brows_input(p, ws, p->x_ln, dhs, D, r0, rows);
        model_brows_adapter_input(m, l, PROJ_GATE, dhs, r0, rows);
        model_brows_adapter_input(m, l, PROJ_UP, dhs, r0, rows);
    }
    model_brows_dout(p, ws, PROJ_GATE, dh1, H, r0, rows);
    model_brows_dinp(p, ws, rows, &pd[PROJ_GATE], dln, 1);
    model_brows_adapter(m, ws, l, PROJ_GATE, dln, r0, rows);
    model_brows_dout(p, ws, PROJ_UP, dh3, H, r0, rows);
    model_brows_dinp(p, ws, rows, &pd[PROJ_UP], dln, 0);
    model_brows_adapter(m, ws, l, PROJ_UP, dln, r0, rows);
    rmsnorm_backward_rows(dres, dln, x.res2 + off, m->params.rms_ffn + (size_t)l * D, x.ln2_rstd + r0, rows,
                          D, 1);
    model_brows_norm_weight(p, dln, x.res2 + off, x.ln2_rstd + r0, D, r0, r1);
    model_brows_dout(p, ws, PROJ_O, dres, D, r0, rows);
    model_brows_dinp(p, ws, rows, &pd[PROJ_O], g->datty + off, 1);
    model_brows_adapter(m, ws, l, PROJ_O, g->datty + off, r0, rows);
    model_brows_input(p, ws, p->x_atty, x.atty + off, D, r0, rows);
    model_brows_adapter_input(m, l, PROJ_O, x.atty + off, r0, rows);
}

/* Rows [r0, r1) from the attention's input gradients (g->dq, g->dk after RoPE, g->dv) through RoPE, the
 * q/k/v projections and the norm: g->dresidual += the norm's input gradient, g->dln written. */
static void model_brows_qkv(model *m, const model_brows *p, model_brows_ws *ws, int l, int r0, int r1) {
    const model_config *c = &m->cfg;
    model_layer_acts x = model_layer_views(m, l);
    model_grad_acts *g = &m->gacts;
    const bf16_packed_weight *pd = m->packed_dinp;
    int D = c->dim, KV = m->kv_dim, rows = r1 - r0;
    size_t off = (size_t)r0 * D, offkv = (size_t)r0 * KV;
    float *dres = g->dresidual + off, *dln = g->dln + off, *dq = ws->f1, *dk = ws->f2;
    rope_backward_rows(dq, g->dq + off, m->rope_cos, m->rope_sin, r0, rows, m->T, c->n_heads, m->head_size);
    model_brows_dout(p, ws, PROJ_Q, dq, D, r0, rows);
    model_brows_dinp(p, ws, rows, &pd[PROJ_Q], dln, 1);
    model_brows_adapter(m, ws, l, PROJ_Q, dln, r0, rows);
    rope_backward_rows(dk, g->dk + offkv, m->rope_cos, m->rope_sin, r0, rows, m->T, c->n_kv_heads,
                       m->head_size);
    model_brows_dout(p, ws, PROJ_K, dk, KV, r0, rows);
    model_brows_dinp(p, ws, rows, &pd[PROJ_K], dln, 0);
    model_brows_adapter(m, ws, l, PROJ_K, dln, r0, rows);
    model_brows_dout(p, ws, PROJ_V, g->dv + offkv, KV, r0, rows);
    model_brows_dinp(p, ws, rows, &pd[PROJ_V], dln, 0);
    model_brows_adapter(m, ws, l, PROJ_V, dln, r0, rows);
    if (p->x_ln || model_adapter_rows(m)) { /* the projections' input: the norm's output again */
        rmsnorm_apply_rows(ws->f3, x.res_in + off, m->params.rms_att + (size_t)l * D, x.ln1_rstd + r0, rows,
                           D);
        model_brows_input(p, ws, p->x_ln, ws->f3, D, r0, rows);
        model_brows_adapter_input(m, l, PROJ_Q, ws->f3, r0, rows);
        model_brows_adapter_input(m, l, PROJ_K, ws->f3, r0, rows);
        model_brows_adapter_input(m, l, PROJ_V, ws->f3, r0, rows);
    }
    rmsnorm_backward_rows(dres, dln, x.res_in + off, m->params.rms_att + (size_t)l * D, x.ln1_rstd + r0, rows,
                          D, 1);
    model_brows_norm_weight(p, dln, x.res_in + off, x.ln1_rstd + r0, D, r0, r1);
}

/* One pass, then the gradients of the weights whose operands it left: dW += dout^T x over all positions, the
 * norm's weight from the partial sums. */
static qlab_status model_brows_run(model *m, int l, model_brows_pass pass) {
    model_brows p;
    QLAB_TRY(model_brows_plan(&p, m, l, pass));
    static const model_proj qkv[] = {PROJ_Q, PROJ_K, PROJ_V}, ffn[] = {PROJ_DOWN, PROJ_GATE, PROJ_UP, PROJ_O};
    const model_proj *ps = pass == MODEL_BROWS_FFN ? ffn : qkv;
    int nps = pass == MODEL_BROWS_FFN ? 4 : 3;
    QLAB_TRY(model_rows_hooks(m, l, ps, nps, 1, 0));
#pragma omp parallel
    {
        model_brows_ws ws = model_brows_thread(&p);
        gemm_bf16_block_begin(p.path);
#pragma omp for schedule(static)
        for (int ch = 0; ch < p.chunks; ch++) {
            int r0 = ch * p.R, r1 = r0 + p.R < p.N ? r0 + p.R : p.N;
            if (pass == MODEL_BROWS_FFN)
                model_brows_ffn(m, &p, &ws, l, r0, r1);
            else
                model_brows_qkv(m, &p, &ws, l, r0, r1);
        }
        gemm_bf16_block_end(p.path);
    }
    if (p.norm_partials) {
        int D = m->cfg.dim;
        float *drms = pass == MODEL_BROWS_FFN ? m->grads.rms_ffn : m->grads.rms_att;
        rmsnorm_weight_add_blocks(drms + (size_t)l * D, p.norm_partials, p.norm_blocks, D);
    }
    const uint16_t *xs[PROJ_COUNT] = {0};
    xs[PROJ_DOWN] = p.x_hs, xs[PROJ_GATE] = xs[PROJ_UP] = p.x_ln, xs[PROJ_O] = p.x_atty;
    if (pass == MODEL_BROWS_QKV) xs[PROJ_Q] = xs[PROJ_K] = xs[PROJ_V] = p.x_ln;
    for (int pj = 0; pj < PROJ_COUNT; pj++) {
        if (!p.at[pj]) continue;
        int out, in;
        model_proj_shape(&m->cfg, (model_proj)pj, &out, &in);
        gemm_bf16_multiply(p.path, p.at[pj], xs[pj], out, in, p.KpN, model_proj_dweight(m, l, (model_proj)pj),
                           in, 1);
    }
    return model_rows_hooks(m, l, ps, nps, 1, 1);
}

/* model_block_backward in row chunks (model_brows_usable): the same gradients, bit for bit. */
static qlab_status model_block_backward_rows(model *m, int l, int threads) {
    const model_config *c = &m->cfg;
    model_grad_acts *g = &m->gacts;
    model_layer_acts x = model_layer_views(m, l);
    QLAB_TRY(model_pack_dinp(m, l));
    QLAB_TRY(model_brows_run(m, l, MODEL_BROWS_FFN));
    if (x.q16)
        QLAB_TRY(attention_backward_bf16_rounded(g->dq, g->dk, g->dv, g->datty, x.q16, x.k16, x.v16, m->B,
                                                 m->T, c->n_heads, c->n_kv_heads, m->head_size,
                                                 g->att_scratch, threads));
    else
        QLAB_TRY(attention_backward_bf16(g->dq, g->dk, g->dv, g->datty, x.q, x.k, x.v, m->B, m->T, c->n_heads,
                                         c->n_kv_heads, m->head_size, g->att_scratch, threads));
    return model_brows_run(m, l, MODEL_BROWS_QKV);
}

/* Block l's forward again for the backward: in row chunks when the forward ran them (over the weights it
 * packed: unchanged until the optimizer's step), else whole matrices; the same bits either way. */
static qlab_status model_block_redo(model *m, int l) {
    int per_layer = model_packs_per_layer(m);
    if (!model_rows_usable(m) || (!per_layer && !m->packed)) {
        if (m->acts_rows) /* its layout has no room for the whole-matrix block's outputs */
            return qlab_fail(QLAB_ERR_ARG, "model_backward: the weights the forward packed were released "
                                           "before its backward; run model_forward again");
        return model_block_forward(m, l, 1);
    }
    bf16_att_operands ops, *po;
    QLAB_TRY(model_att_operands(m, &ops, &po));
    return model_layer_rows(m, l, po, 1, per_layer);
}

/* Block l's forward again, from its kept input, with the adapter told to repeat its last forward. */
static qlab_status model_block_recompute(model *m, int l) {
    int hook = m->has_adapter && m->adapter.recompute;
    if (hook) {
        qlab_status st = m->adapter.recompute(m->adapter.ctx, 1);
        if (st != QLAB_OK) return qlab_fail_context(st, "adapter, recomputing layer %d", l);
    }
    qlab_status st = model_block_redo(m, l);
    if (hook) {
        qlab_status st2 = m->adapter.recompute(m->adapter.ctx, 0);
        if (st == QLAB_OK && st2 != QLAB_OK)
            st = qlab_fail_context(st2, "adapter, after recomputing layer %d", l);
    }
    return st;
}

void model_set_checkpointing(model *m, int on) {
    m->checkpointing = on ? 1 : 0;
    m->have_targets = 0; /* the kept activations no longer match the layout */
}

int model_get_checkpointing(const model *m) {
    return m->checkpointing;
}

size_t model_activation_bytes(const model *m, int B, int T, int with_backward) {
    model_acts a;
    size_t floats =
        model_layout_acts(&a, NULL, m, B, T, MODEL_ACTS_TRAIN, model_head_fuses(m, MODEL_ACTS_TRAIN, 0));
    if (with_backward) {
        int threads = qlab_num_threads();
        model_grad_acts g;
        floats += model_layout_grad_acts(&g, NULL, m, B, T, threads < 1 ? 1 : threads);
    }
    return floats * sizeof(float);
}

/* The whole-matrix backward's workspace level (linear_bf16_reserve): 2 when a projection's or the
 * classifier's weight trains (room for its gradient's operand), else 1 (input gradients only: LoRA, QLoRA).
 */
static int model_linear_backward_level(const model *m) {
    static const model_group weights[] = {MODEL_GROUP_WQ, MODEL_GROUP_WK, MODEL_GROUP_WV, MODEL_GROUP_WO,
                                          MODEL_GROUP_W1, MODEL_GROUP_W2, MODEL_GROUP_W3};
    int trains = model_group_trains(m, model_classifier_group(m));
    for (size_t i = 0; i < sizeof weights / sizeof *weights; i++)
        trains |= model_group_trains(m, weights[i]);
    return trains ? 2 : 1;
}

qlab_status model_backward(model *m) {
    m->packed_valid = 0; /* an optimizer step may follow: the packed copies would go stale (kept for reuse) */
    if (!m->have_targets)
        return qlab_fail(QLAB_ERR_ARG, "model_backward: the last model_forward had no targets (or failed)");
    int rows = model_brows_usable(m);
    if (m->acts_rows && !rows) /* row passes, compute or adapter changed since the forward */
        return qlab_fail(QLAB_ERR_ARG, "model_backward: the last model_forward kept only what the bf16 row "
                                       "passes' backward reads; run model_forward again");
    if (m->head_fused && !model_head_fuses(m, MODEL_ACTS_TRAIN, 0))
        return qlab_fail(QLAB_ERR_ARG,
                         "model_backward: the last model_forward formed only the input gradient "
                         "of a frozen bf16 classifier, which it no longer is; run model_forward "
                         "again");
    /* With every base group frozen (LoRA on a frozen or quantized base) no base gradient is formed, so
     * the gradient buffer, as large as the model, is not allocated. */
    int any_trains = 0;
    for (int gi = 0; gi < MODEL_GROUP_COUNT; gi++)
        any_trains |= model_group_trains(m, (model_group)gi);
    if (any_trains && !model_get_grad_buffer(m, NULL)) return QLAB_ERR_NOMEM;
    int threads = qlab_num_threads();
    if (threads < 1) threads = 1;
    QLAB_TRY(model_reserve(&m->grad_act_buffer, &m->grad_act_capacity,
                           model_layout_grad_acts(&m->gacts, NULL, m, m->B, m->T, threads)));
    model_layout_grad_acts(&m->gacts, m->grad_act_buffer, m, m->B, m->T, threads);
    if (m->compute == QLAB_COMPUTE_BF16)
        QLAB_TRY(linear_bf16_reserve(&m->cfg, m->B * m->T, model_linear_backward_level(m)));
    if (m->target_count == 0) return QLAB_OK; /* every target ignored: the loss is a constant */

    QLAB_TRY(model_head_backward(m));
    for (int l = m->cfg.n_layers - 1; l >= 0; l--) {
        /* The working slot holds the last block from the forward; every other block is recomputed. */
        if (m->checkpointing && l < m->cfg.n_layers - 1) QLAB_TRY(model_block_recompute(m, l));
        QLAB_TRY(rows ? model_block_backward_rows(m, l, threads) : model_block_backward(m, l, threads));
    }
    if (model_group_trains(m, MODEL_GROUP_TOKEN_EMBEDDING))
        embedding_backward(m->grads.token_embedding, m->gacts.dresidual, m->saved_tokens, m->B * m->T,
                           m->cfg.dim);
    return QLAB_OK;
}

size_t model_bf16_training_bytes(const model_config *c, int B, int T, int threads, int per_layer,
                                 unsigned trains, int norms_train) {
    int N = B * T, HS = c->dim / c->n_heads;
    size_t forward = 0, dinp = 0;
    for (int p = 0; p < PROJ_COUNT; p++) {
        int out, in;
        model_proj_shape(c, (model_proj)p, &out, &in);
        forward += bf16_packed_weight_bytes(out, in, 0);
        dinp += bf16_packed_weight_bytes(out, in, 1);
    }
    size_t packed = per_layer
                        ? forward
                        : forward * (size_t)c->n_layers + bf16_packed_weight_bytes(c->vocab_size, c->dim, 0);
    size_t ops = bf16_att_operands_fit(T) ? bf16_att_operands_bytes(B, T, c->n_heads, c->n_kv_heads, HS) : 0;
    size_t grads = model_brows_ops_bytes(c, N, trains) + model_brows_norm_bytes(c, N, norms_train);
    size_t ws = linear_bf16_workspace_bytes(c, N, trains ? 2 : 1),
           att = attention_bf16_workspace_bytes(T, HS, threads);
    if (!model_bf16_row_path()) return ws > att ? ws : att; /* whole-matrix products only */
    model_rows rows;
    model_brows brows;
    for (int ahead = 0; ahead < 2; ahead++) {
        model_rows_sizes(&rows, c, N, T, threads, ahead && ops);
        if (rows.per_thread * (size_t)threads > ws) ws = rows.per_thread * (size_t)threads;
    }
    model_brows_sizes(&brows, c, N, threads);
    if (brows.per_thread * (size_t)threads > ws) ws = brows.per_thread * (size_t)threads;
    if (att > ws) ws = att;
    return packed + dinp + ops + grads + ws;
}
