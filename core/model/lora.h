/* LoRA adapters for the projections of a model (QLoRA paper Eq. 5-6): Y = X W^T + s (dropout(X) A^T) B^T
 * with s = alpha / r (rank-stabilised LoRA: alpha / sqrt(r)), where W is the frozen (fp32 or quantized)
 * weight and only A (r, in) and B (out, r) train. Every adapter's A and B live in one contiguous fp32 buffer
 * with a gradient buffer of the same layout (llm.c style), so the optimizer is a single loop over a flat
 * array. */
#ifndef QLAB_LORA_H
#define QLAB_LORA_H

#include <stddef.h>
#include <stdint.h>

#include "core/base/common.h"
#include "core/model/model.h"

/* Bit p of a target mask selects projection p (model_proj). */
#define LORA_TARGET(p) (1u << (p))
#define LORA_TARGETS_ALL ((1u << PROJ_COUNT) - 1u) /* QLoRA: every linear layer of every block */
#define LORA_TARGETS_ATTENTION                                                                               \
    (LORA_TARGET(PROJ_Q) | LORA_TARGET(PROJ_K) | LORA_TARGET(PROJ_V) | LORA_TARGET(PROJ_O))
#define LORA_TARGETS_QV (LORA_TARGET(PROJ_Q) | LORA_TARGET(PROJ_V)) /* the original LoRA paper */

typedef struct {
    unsigned targets; /* mask of LORA_TARGET(p); non-zero */
    int rank;         /* r >= 1 */
    float alpha;      /* the scale is alpha / rank (alpha / sqrt(rank) with rslora) */
    float dropout;    /* probability in [0, 1) of zeroing an input element (training mode only) */
    uint64_t seed;    /* initialisation of A and the dropout masks */
    int rslora;       /* non-zero: rank-stabilised LoRA's scale alpha / sqrt(rank) (PEFT's use_rslora) */
} lora_config;

/* Parses "all", "attention", "qv", or a comma-separated list of projection names ("q_proj,v_proj"; the
 * short forms "q,k,v,o,gate,up,down" are accepted too). Records a one-line error naming the bad word. */
qlab_status lora_parse_targets(const char *text, unsigned *targets);

/* ---------------------------------------------------------------- the two ops over raw arrays */

/* Floats of scratch lora_backward needs: (N, r), plus with dropout > 0 one (N, IC) plane and the mask's
 * bits (N * ceil(IC / 64) 64-bit words). */
size_t lora_scratch_floats(int N, int IC, int rank, float dropout);
/* The bytes the adapters on the projections in targets (LORA_TARGET mask) hold in the model's bf16 row passes
 * over N positions on `threads` threads: the threads' chunk buffers, the backward's operands of the larger
 * pass (dout^T, the dropped input's panels, dhidden, and rows_end's), and each adapter kind's A and B packed
 * (the larger of the forward's and the input gradient's packing). */
size_t lora_rows_bytes(const model_config *c, unsigned targets, int rank, int N, int threads);

/* Bytes of dropout-mask bits the model hook keeps per adapter from a training forward to its backward, for
 * N rows of IC inputs: N * ceil(IC / 64) 64-bit words with dropout > 0, else 0 (charged as activations). */
size_t lora_mask_bytes(int N, int IC, float dropout);

/* out (N,OC) += scale * (dropout(inp) (N,IC) @ A (r,IC)^T) @ B (OC,r)^T.
 * hidden (N,r) receives dropout(inp) @ A^T, which lora_backward needs. dropped (N,IC) is scratch for
 * dropout(inp) (unused, may be NULL, when dropout == 0). The dropout mask is a counter-based function of
 * (mask_seed, row, column) (lora_dropout.h: an element is dropped with probability round(dropout 2^32) /
 * 2^32), and kept elements are multiplied by (float)(1/(1-dropout)), as torch.nn.Dropout does; the same
 * mask_seed gives the same mask on any thread count and CPU path. */
void lora_forward(float *out, float *hidden, float *dropped, const float *inp, const float *A, const float *B,
                  int N, int IC, int OC, int rank, float scale, float dropout, uint64_t mask_seed);
/* Accumulates dA (r,IC) += scale (dout B)^T dropout(inp); dB (OC,r) += scale dout^T hidden; and
 * dinp (N,IC, may be NULL) += dropout^T(scale dout B A), from dout (N,OC), inp (N,IC) and the hidden
 * (N,r) of the matching lora_forward with the same dropout and mask_seed. scratch holds
 * lora_scratch_floats(N, IC, rank, dropout) floats. */
void lora_backward(float *dA, float *dB, float *dinp, const float *dout, const float *inp,
                   const float *hidden, const float *A, const float *B, int N, int IC, int OC, int rank,
                   float scale, float dropout, uint64_t mask_seed, float *scratch);

/* The same two ops with bf16 matrix products (gemm_bf16.h: bf16-rounded inputs, fp32 accumulation), the
 * mixed precision of PEFT under bf16 autocast: A, B, their gradients and hidden stay fp32 (the master
 * adapters); every product rounds its two inputs to bf16. The scale is applied in fp32 to the (N,r)
 * hidden before the B product in forward (and to dout B in backward), so for a power-of-two scale (alpha
 * 16, r 8) the result equals scaling the product. scratch holds lora_scratch_floats(N, IC, rank, dropout)
 * floats (forward uses it for dropout(inp) and the scaled hidden). Fail only when the bf16 workspace
 * cannot be allocated. */
qlab_status lora_forward_bf16(float *out, float *hidden, float *scratch, const float *inp, const float *A,
                              const float *B, int N, int IC, int OC, int rank, float scale, float dropout,
                              uint64_t mask_seed);
qlab_status lora_backward_bf16(float *dA, float *dB, float *dinp, const float *dout, const float *inp,
                               const float *hidden, const float *A, const float *B, int N, int IC, int OC,
                               int rank, float scale, float dropout, uint64_t mask_seed, float *scratch);

/* ---------------------------------------------------------------- a set of adapters for a model */

typedef struct lora_set lora_set;

/* Allocates adapters for every targeted projection of every layer of a model with this configuration,
 * initialised as PEFT does: A Kaiming-uniform (a = sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in))) from the
 * seed, B = 0, so the adapted model starts equal to the base model. Starts in training mode. */
qlab_status lora_create(lora_set **out, const model_config *mc, const lora_config *lc);
void lora_free(lora_set *l);
const lora_config *lora_get_config(const lora_set *l);
float lora_scale(const lora_set *l); /* alpha / rank, or alpha / sqrt(rank) with rslora */

/* The flat buffers (count elements each); the gradient buffer has the parameter buffer's layout. */
float *lora_get_param_buffer(lora_set *l, size_t *count);
float *lora_get_grad_buffer(lora_set *l, size_t *count);
void lora_zero_grad(lora_set *l);
size_t lora_num_params(const lora_set *l);
/* Bytes of the fp32 parameters; training also holds the gradient and AdamW's two moments: 4x this. */
size_t lora_param_bytes(const lora_set *l);

/* The adapter of projection p in layer `layer`: views into the flat buffers. */
typedef struct {
    int in_features, out_features, rank;
    float *A, *B;   /* (rank, in_features), (out_features, rank) */
    float *dA, *dB; /* same shapes, in the gradient buffer */
    size_t offset;  /* of A in the flat buffers; B follows A */
} lora_adapter;
/* Returns 0 (and leaves *out zeroed) when that projection is not adapted or out of range. */
int lora_get_adapter(lora_set *l, int layer, model_proj p, lora_adapter *out);

/* Training mode applies dropout and advances the dropout masks at every forward; evaluation mode uses no
 * dropout and leaves the masks' sequence where it was, so evaluating mid-training does not change it. */
void lora_set_training(lora_set *l, int training);

/* The position of the dropout-mask stream: the number of training-mode forwards each adapter has seen
 * (n_adapters values, in the flat buffer's adapter order). Saving it with the parameters and restoring it
 * lets an interrupted run continue with exactly the masks it would have drawn. */
size_t lora_num_adapters(const lora_set *l);
void lora_get_stream(const lora_set *l, uint64_t *forward_counts);
void lora_set_stream(lora_set *l, const uint64_t *forward_counts);

/* Makes room for forwards over up to n_positions = B*T rows (the saved hidden states and the backward
 * scratch); never shrinks. The model's adapter hook reserves B*T at each forward (lora_attach reserves
 * nothing: a model's context, e.g. 8,192 positions, may be far longer than the batches it trains on). */
qlab_status lora_reserve(lora_set *l, int n_positions);

/* Installs the adapters into the model's adapter hook (model_set_adapter). With freeze_base non-zero every
 * base parameter group is frozen (model_set_all_trainable(m, 0)), so backward forms only input gradients
 * through the base weights and the adapters' own gradients; quantized projections are always frozen.
 * The set must outlive the attachment, match the model's configuration and serve one model at a time
 * (it keeps that model's hidden states for backward). lora_detach removes it (the base groups'
 * trainable flags stay as they are). */
qlab_status lora_attach(lora_set *l, model *m, int freeze_base);
void lora_detach(model *m);

/* W += scale B A for every adapter, in place in an fp32 model's parameters (fails on a quantized model:
 * dequantize into an fp32 model first). For evaluation without the adapter path. */
qlab_status lora_merge(const lora_set *l, model *m);

/* Saves A and B under PEFT's names (base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight,
 * ...mlp.gate_proj.lora_B.weight) as F32 safetensors, with rank, alpha, dropout and targets in the
 * metadata. The rows of q_proj's and k_proj's B are stored in Hugging Face's half-split rotary order (the
 * permutation the Hugging Face checkpoint writer applies to W_q and W_k), so the file means the same in
 * PEFT on the Hugging Face copy of the base; lora_load undoes it. lora_peft.h writes whole directories. */
qlab_status lora_save(const lora_set *l, const char *path);
/* Loads a file written by lora_save (or PEFT with matching targets and rank) into the set: every adapter
 * of the set must be present with its exact shape, and the file may hold no other LoRA tensor (an
 * adapter that would be silently dropped). Fails, leaving the set unchanged, with one line naming the
 * file and tensor. */
qlab_status lora_load(lora_set *l, const char *path);

#endif
