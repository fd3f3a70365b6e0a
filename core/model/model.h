/* A LLaMA-architecture transformer (RMSNorm, rotary embeddings, grouped-query attention, SwiGLU) with
 * forward and backward passes over fp32 parameters, in the style of llm.c: parameters, gradients and
 * activations each live in one contiguous buffer with named views. The seven projections of every block
 * go through linear_weight, whose frozen weight may be fp32 or a quant_tensor dequantized block by block. */
#ifndef QLAB_MODEL_H
#define QLAB_MODEL_H

#include <stdint.h>
#include <stddef.h>

#include "core/base/common.h"
#include "core/quant/quant.h"
#include "core/model/gemm_bf16.h"

/* The longest context a model may declare (2^20 positions). A header's context length is trusted only up
 * to this; loaders refuse a larger one naming the field. Nothing is sized by seq_len itself: the RoPE
 * tables and activations grow with the longest sequence actually run. */
#define MODEL_MAX_SEQ_LEN (1 << 20)

typedef enum { MODEL_ROPE_DEFAULT = 0, MODEL_ROPE_LINEAR, MODEL_ROPE_LLAMA3 } model_rope_scaling;

typedef struct {
    int dim;        /* model width */
    int hidden_dim; /* feed-forward width */
    int n_layers;
    int n_heads;
    int n_kv_heads; /* divides n_heads; 1 = multi-query */
    int vocab_size;
    int seq_len;           /* maximum context, 1..MODEL_MAX_SEQ_LEN */
    float norm_eps;        /* RMSNorm epsilon (llama2.c: 1e-5) */
    float rope_theta;      /* RoPE base (llama2.c: 10000) */
    int shared_classifier; /* 1: the output classifier is the token embedding */
    /* RoPE scaling, as Hugging Face's rope_type: every field 0 = plain RoPE. */
    model_rope_scaling rope_scaling;
    float rope_factor;               /* linear, llama3: frequencies divided by it */
    float rope_low_freq_factor;      /* llama3 only */
    float rope_high_freq_factor;     /* llama3 only */
    int rope_original_max_positions; /* llama3 only: original_max_position_embeddings */
} model_config;

/* The inverse frequency of rotation pair i (0 .. head_size/2 - 1) as RoPE uses it: theta^(-2i/head_size)
 * in fp32, then, for linear scaling, divided by rope_factor, and for llama3 (transformers'
 * _compute_llama3_parameters) divided by rope_factor when its wavelength 2 pi / f exceeds
 * original / low_freq_factor, kept when below original / high_freq_factor, and blended in between with
 * s = (original / wavelength - low) / (high - low): (1 - s) f / factor + s f. */
float model_rope_frequency(const model_config *c, int i, int head_size);
/* "default", "linear", "llama3". */
const char *model_rope_scaling_name(model_rope_scaling s);

/* ---- Parameter groups: the named tensors of the flat fp32 buffer, in buffer order (llama2.c's). ---- */
typedef enum {
    MODEL_GROUP_TOKEN_EMBEDDING = 0,
    MODEL_GROUP_RMS_ATT,
    MODEL_GROUP_WQ,
    MODEL_GROUP_WK,
    MODEL_GROUP_WV,
    MODEL_GROUP_WO,
    MODEL_GROUP_RMS_FFN,
    MODEL_GROUP_W1,
    MODEL_GROUP_W2,
    MODEL_GROUP_W3,
    MODEL_GROUP_RMS_FINAL,
    MODEL_GROUP_WCLS, /* count 0 when the classifier is shared with the embedding */
    MODEL_GROUP_COUNT
} model_group;

/* Views into the contiguous fp32 parameter buffer, one per group: by name (p->wq) or by group
 * (p->group[MODEL_GROUP_WQ]); the named fields are in model_group order (checked by a static assertion
 * in model.c). Matrices are row-major (out_features, in_features): y = W x. */
typedef union {
    struct {
        float *token_embedding; /* (vocab_size, dim) */
        float *rms_att;         /* (n_layers, dim) */
        float *wq;              /* (n_layers, n_heads*head_size, dim) */
        float *wk;              /* (n_layers, n_kv_heads*head_size, dim) */
        float *wv;              /* (n_layers, n_kv_heads*head_size, dim) */
        float *wo;              /* (n_layers, dim, n_heads*head_size) */
        float *rms_ffn;         /* (n_layers, dim) */
        float *w1;              /* (n_layers, hidden_dim, dim)  gate */
        float *w2;              /* (n_layers, dim, hidden_dim)  down */
        float *w3;              /* (n_layers, hidden_dim, dim)  up */
        float *rms_final;       /* (dim) */
        float *wcls;            /* (vocab_size, dim); == token_embedding when shared */
    };
    float *group[MODEL_GROUP_COUNT];
} model_params;

/* Elements of every group for a configuration: the one statement of the parameter layout, which the
 * views, the group table, model_num_params and the checkpoint readers are all derived from. */
void model_param_sizes(const model_config *cfg, size_t sizes[MODEL_GROUP_COUNT]);
const char *model_group_name(model_group g); /* "token_embedding", "rms_att", "wq", ..., "wcls" */

/* ---- The projection vocabulary: the seven linear layers of a block, in the order QLoRA quantizes them.
 * Model, linear layers, LoRA, checkpoints and the tools all name and size projections from this table. */
typedef enum { PROJ_Q = 0, PROJ_K, PROJ_V, PROJ_O, PROJ_GATE, PROJ_UP, PROJ_DOWN, PROJ_COUNT } model_proj;

typedef struct {
    const char *name;       /* PEFT / Hugging Face module name: "q_proj", ..., "gate_proj", "down_proj" */
    const char *short_name; /* "q", "k", "v", "o", "gate", "up", "down" */
    const char *block;      /* the Hugging Face LLaMA submodule holding it: "self_attn" or "mlp" */
    model_group group;      /* the parameter group holding its weight, one matrix per layer */
} model_proj_info;

/* The row of projection p; NULL when p is out of range. */
const model_proj_info *model_proj_get(model_proj p);
const char *model_proj_name(model_proj p); /* info->name, or "unknown_proj" when out of range */
/* (out_features, in_features) of projection p for this configuration; 0, 0 when p is out of range. */
void model_proj_shape(const model_config *cfg, model_proj p, int *out_features, int *in_features);
/* The projection whose weights group g holds, or -1 for embeddings, norms and the classifier. */
int model_group_projection(model_group g);
/* Parses a projection's name or short name ("gate_proj" or "gate"). Records a one-line error naming the
 * word and the known names. */
qlab_status model_proj_parse(const char *name, model_proj *p);

/* A linear layer's frozen weight: fp32 (w) or quantized (q); exactly one is non-NULL. */
typedef struct {
    int out_features, in_features;
    const float *w;        /* (out_features, in_features) */
    const quant_tensor *q; /* n = out_features * in_features, row-major */
} linear_weight;

typedef struct model model; /* opaque: owns buffers, activations, scratch */

/* Allocates a model with zeroed parameters for a configuration (checked: sizes positive, n_kv_heads
 * divides n_heads, dim divisible by n_heads, head size even). */
qlab_status model_create(model **out, const model_config *cfg);
void model_free(model *m);
const model_config *model_get_config(const model *m);
/* fp32 views, writable by checkpoint loaders (NULL for the projections of a quantized model). */
model_params *model_get_params(model *m);
/* The same views for code that only reads them (checkpoint writers, copies). */
const model_params *model_get_params_const(const model *m);
float *model_get_param_buffer(model *m, size_t *count);
const float *model_get_param_buffer_const(const model *m, size_t *count);
/* Allocated on first use; NULL (with the error recorded) when that allocation fails. */
float *model_get_grad_buffer(model *m, size_t *count);
size_t model_num_params(const model_config *cfg);
/* The linear weight of projection p in layer l (fp32 view or its quantized replacement). Out of range:
 * a weight with no data (w and q NULL, 0 features), which linear_forward/backward refuse. */
linear_weight model_get_linear(const model *m, int layer, model_proj p);
/* A new model with src's configuration, fp32 parameters and trainable flags, sharing nothing with src
 * (no gradients, activations or adapter are copied). Refuses a quantized src: its fp32 projections are
 * no longer the weights it computes with, so a copy of them would not be a copy of the model. */
qlab_status model_clone(const model *src, model **out);

/* Quantizes the seven projections of every block (embeddings, norms and classifier stay fp32, as in
 * QLoRA) and releases their fp32 copies: afterwards the parameter buffer holds only the groups that stay
 * full precision (token_embedding, rms_att, rms_ffn, rms_final, wcls), the projection views are NULL and
 * any gradient buffer is dropped. Refuses an already quantized model. On failure the model is unchanged. */
qlab_status model_quantize(model *m, quant_dtype dt, int blocksize, int double_quant);
/* A quantized model that never holds its projections in fp32: the full-precision groups are allocated
 * (zeroed, written through model_get_params) and each projection is quantized from weights held elsewhere
 * (a mapped checkpoint) by model_set_projection, tensor by tensor. model_forward refuses the model until
 * every projection has been set. */
qlab_status model_create_quantized(model **out, const model_config *cfg, quant_dtype dt, int blocksize,
                                   int double_quant);
/* Quantizes w (out_features x in_features of projection p, row-major, any alignment) as projection p of
 * layer `layer` of a quantized model, replacing what was there. Refuses an fp32 model. */
qlab_status model_set_projection(model *m, int layer, model_proj p, const float *w);
int model_is_quantized(const model *m);
/* The 4-bit type of a quantized model's projections; returns 0 (leaving the outputs alone) for an fp32
 * model. Any output pointer may be NULL. */
int model_get_quantization(const model *m, quant_dtype *dtype, int *blocksize, int *double_quant);

/* Bytes the model holds, by category. */
typedef struct {
    size_t
        fp32_weights; /* the fp32 parameter buffer (all groups, or the full-precision ones once quantized) */
    size_t quantized_weights; /* 4-bit codes and block constants of the quantized projections */
    size_t gradients;         /* the gradient buffer, once formed */
    size_t activations;       /* the last forward's activations and backward's activation gradients */
    size_t scratch;           /* dequantization tile, RoPE tables, saved tokens and targets */
} model_memory;
void model_get_memory(const model *m, model_memory *out);
/* The groups held in full precision, comma-separated ("token_embedding,rms_att,rms_ffn,rms_final" for a
 * quantized model with a shared classifier), into buf; returns buf. */
const char *model_full_precision_groups(const model *m, char *buf, size_t size);
/* Storage of the model as it stands: fp32 parameters at 32 bits plus quantized projections at their
 * exact stored size (bits). */
double model_total_bits(const model *m);

/* Compute dtype of the matrix products (projections and classifier, forward and backward); fp32 by
 * default. Parameters, gradients and everything else stay fp32 either way. */
void model_set_compute(model *m, qlab_compute c);
qlab_compute model_get_compute(const model *m);

/* For evaluation with bf16 compute: every projection and the classifier rounded or dequantized to bf16
 * once, in the GEMM's panel layout (2 bytes per weight, charged as scratch), so forward passes skip that
 * work; the logits are the same bits either way. Only valid while the weights do not change: the
 * caller unpacks before anything writes them (eval/ppl packs for one evaluation and unpacks at its end;
 * quantizing, setting a projection or another compute dtype unpack as well; a backward pass marks the
 * copies stale and keeps their memory, which a bf16 training forward packs again at every step and leaves
 * marked stale). A no-op returning QLAB_OK with fp32 compute. */
qlab_status model_pack_weights(model *m);
void model_unpack_weights(model *m);
int model_weights_packed(const model *m);
/* With bf16 compute the forward pass runs in chunks of positions, each chunk's norms, products, RoPE,
 * SwiGLU and residuals on one thread while in cache (training, and evaluation once the weights are packed;
 * not with an adapter's forward nor on the blas path). The same bits as the whole-matrix form, which off
 * selects (for tests and comparisons). On by default. */
void model_set_row_passes(model *m, int on);

/* Forward pass over B sequences of T tokens (T <= seq_len). tokens (B,T). If targets is non-NULL
 * (B,T; entries < 0 are ignored) the mean cross-entropy over non-ignored positions is returned in *loss.
 * logits, if non-NULL, receives (B,T,vocab) fp32. With targets the activations are kept for model_backward
 * (every layer's, or one layer's and the block inputs with checkpointing); without, no backward can follow
 * and each layer's activations replace the last one's (an evaluation's memory does not grow with depth). */
qlab_status model_forward(model *m, const int *tokens, const int *targets, int B, int T, float *logits,
                          float *loss);
/* The mean cross-entropy model_forward gives for these targets (the same bits; model_last_target_count the
 * positions scored), for evaluation: no backward can follow (model_backward refuses), so the activations
 * are laid out as without targets, one layer's at a time, plus the (B*T, vocab) probabilities. */
qlab_status model_forward_loss(model *m, const int *tokens, const int *targets, int B, int T, float *loss);
/* Forward pass without targets whose logits are those of positions at[0..n) only (indices into the B*T
 * positions, increasing): logits receives (n, vocab) fp32, the rows model_forward would give for them (the
 * same bits with bf16 compute off the blas path; fp32 and blas sums may depend on the row count, ~1e-6
 * relative). The classifier runs over those rows only: an evaluation that scores some positions (perplexity
 * of a window's second half, a multiple-choice answer, the next token) skips the rest of it. */
qlab_status model_forward_at(model *m, const int *tokens, int B, int T, const int *at, int n, float *logits);
/* Generation: the logits (vocab floats) of the last position of one sequence tokens[0..n), reusing the keys
 * and values this function cached for the longest prefix the sequence shares with the one of its last call
 * (a generation loop adds one token per call: one position's work instead of n). The logits
 * model_forward_at gives for that position: the same bits with bf16 compute on the ref and avx512bf16 paths
 * (tests/test_model_bf16.c; amx not yet measured), fp32 within ~1e-5 of the largest logit (OpenBLAS sums
 * over other blocks of rows). Any model_forward / model_forward_at drops the cache (the weights may have
 * changed since), as does model_cache_clear; a caller that changes the weights otherwise must clear it. */
qlab_status model_forward_next(model *m, const int *tokens, int n, float *logits);
void model_cache_clear(model *m);
/* Backward pass of the last forward (which must have had targets): accumulates d(loss)/d(param) into the
 * gradient buffer. Gradients of quantized (frozen) projections are not formed. */
qlab_status model_backward(model *m);
void model_zero_grad(model *m);

/* ---- Parameter groups as the optimizers and adapters see them. ---- */
typedef struct {
    const char *name; /* "token_embedding", "rms_att", "wq", ..., "wcls" */
    size_t offset;    /* first element in the parameter (and gradient) buffer */
    size_t count;     /* elements of the tensor; a quantized group has none in the buffers (see quantized) */
    int trainable;    /* 0: backward forms no gradient for it (it stays as it was in the buffer) */
    int quantized;    /* 1: held as quant_tensors only, with no fp32 storage (then never trainable) */
} model_param_group;

/* The group's place in the buffers; a group out of range gives name "unknown" and count 0. */
model_param_group model_get_param_group(const model *m, model_group g);
/* Freezes (0) or unfreezes (1) a group; every group starts trainable. Freezing the fp32 projections
 * skips their weight-gradient GEMMs, which is most of the backward cost when only adapters train.
 * Refuses a group out of range. */
qlab_status model_set_trainable(model *m, model_group g, int trainable);
void model_set_all_trainable(model *m, int trainable);

/* ---- Adapters (e.g. LoRA): extra terms added to the output of every projection. ----
 * Every callback may be NULL; a callback that fails (e.g. cannot allocate) returns its status, after
 * recording its message, and the forward or backward pass stops and returns that status. */
typedef struct {
    void *ctx;
    /* Runs at every model_forward before the first projection, so the adapter can size what it keeps for
     * backward. */
    qlab_status (*begin)(void *ctx, int B, int T);
    /* out (N, out_features) += adapter(inp (N, in_features)) for projection p of layer l. */
    qlab_status (*forward)(void *ctx, int layer, model_proj p, const float *inp, float *out, int N);
    /* Given the same inp and dout (N, out_features): accumulate the adapter's own gradients and
     * dinp (N, in_features) += d(adapter output)/d(inp)^T dout. */
    qlab_status (*backward)(void *ctx, int layer, model_proj p, const float *inp, const float *dout,
                            float *dinp, int N);
    /* With gradient checkpointing the backward pass runs each block's forward again. Between
     * recompute(ctx, 1) and recompute(ctx, 0) the forward calls repeat the last forward's calls for that
     * block and must compute the same values (e.g. the same dropout masks), not start new ones. */
    qlab_status (*recompute)(void *ctx, int recomputing);
    /* Optional, all five or none: the adapter inside the bf16 passes over chunks of positions (model.c,
     * model_set_row_passes), which otherwise run only without an adapter. For each pass over the N
     * positions of layer l, rows_begin runs once per projection p of the pass before its chunks (backward
     * 0: a forward, counting as p's forward call as forward above does; 1: a backward), then on every
     * chunk rows_forward, or rows_backward and rows_input, concurrently for different chunks on different
     * threads, then rows_end after the chunks. A chunk is rows [r0, r0 + rows), rows <= MODEL_ROWS_MAX.
     * Together they must give the bits of forward and backward over all N positions. */
    qlab_status (*rows_begin)(void *ctx, int layer, model_proj p, int N, int backward);
    /* out (rows, out_features) += adapter(inp (rows, in_features)). */
    void (*rows_forward)(void *ctx, int layer, model_proj p, const float *inp, float *out, int r0, int rows);
    /* dout_a: the rows of dout rounded to bf16, each round32(out_features) values, padded with zero rows to
     * a multiple of 32; dinp (rows, in_features) += d(adapter output)/d(inp)^T dout. */
    void (*rows_backward)(void *ctx, int layer, model_proj p, const uint16_t *dout_a, float *dinp, int r0,
                          int rows);
    /* The projection's input rows again (backward), for the adapter's own gradients. */
    void (*rows_input)(void *ctx, int layer, model_proj p, const float *inp, int r0, int rows);
    /* After a backward's chunks: the adapter's own gradients accumulated. */
    qlab_status (*rows_end)(void *ctx, int layer, model_proj p, int backward);
} model_adapter;
/* The most positions a chunk of the row passes holds (rows_forward, rows_backward, rows_input). */
#define MODEL_ROWS_MAX 64
/* Installs (copies) an adapter, or removes it with NULL. The callbacks run on the calling thread. */
void model_set_adapter(model *m, const model_adapter *adapter);

/* ---- Gradient checkpointing. ----
 * On (1): the forward keeps only each block's input (the residual stream, (B*T, dim) per layer) and the
 * working activations of one block; the backward recomputes every block's forward just before that
 * block's backward. Attention probabilities then take B*heads*T*T floats once, not once per layer.
 * Gradients, losses and logits are bit-identical to the run without checkpointing (the recomputation is
 * the same operations on the same inputs). Takes effect at the next model_forward. */
void model_set_checkpointing(model *m, int on);
int model_get_checkpointing(const model *m);
/* Bytes of the activations a forward over (B, T) keeps for backward (plus the backward's own gradient
 * buffers when with_backward), with the model's current checkpointing setting. For memory accounting. */
size_t model_activation_bytes(const model *m, int B, int T, int with_backward);

/* A bf16 forward with targets and no logits asked for (model_forward's training step with a frozen
 * classifier, model_forward_loss) runs the classifier over the scored positions only, this many rows at a
 * time, keeping one chunk of logits instead of B*T rows (model.c, model_head_fuses; not on the blas path).
 * 256 rows keep the classifier's products within about 10% of their speed over 512 rows at SmolLM2's shape
 * (each chunk packs the classifier's weight again). */
#define MODEL_HEAD_CHUNK 256

/* Whether bf16 compute runs in the row passes (model_set_row_passes) on this CPU's bf16 path: all paths
 * but blas. */
int model_bf16_row_path(void);

/* The bytes of the bf16 path's own buffers in a training step (forward and backward) of B x T positions on
 * `threads` threads, as model.c allocates them (the memory model's bf16 term, train/memory_model.c): the
 * weights packed for the forward (every projection and the classifier, or with per_layer one layer at a
 * time: over a quantized base, and without checkpointing), one layer packed for the input gradients, the
 * attention's operands packed ahead, the weight-gradient operands of the projections whose weights train (bit
 * 1 << p of trains) and the norm weights' partial sums (norms_train), and the calling thread's bf16
 * workspace: the largest request of the whole-matrix products (with room for a weight gradient's operand when
 * any weight trains), the row passes and the attention. On a path without row passes (model_bf16_row_path)
 * only the workspace. */
size_t model_bf16_training_bytes(const model_config *c, int B, int T, int threads, int per_layer,
                                 unsigned trains, int norms_train);

/* Number of positions with a non-ignored target in the last forward (the divisor of the mean loss). */
int model_last_target_count(const model *m);

#endif
