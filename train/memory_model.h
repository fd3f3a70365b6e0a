/* A memory model of finetuning: the bytes each component of a full, LoRA or QLoRA training step holds,
 * predicted from the architecture and the run's shape alone (no allocation, no model needed), so it can
 * be checked against the peak resident memory of qlab's own runs and evaluated at the paper's settings
 * (LLaMA 7B-65B, 16-bit weights and activations). The element sizes are parameters; with the qlab
 * defaults (memory_model_spec_qlab) every term is what qlab's buffers hold: the 4-bit tensors at their
 * stored size (the descriptor table's scale bytes, or double quantization), the fp32 parameter, gradient
 * and AdamW buffers, the activations of model.c's layout (with and without gradient checkpointing), the
 * LoRA hidden states and scratch, the dequantization tile and the RoPE tables. */
#ifndef QLAB_MEMORY_MODEL_H
#define QLAB_MEMORY_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "core/base/common.h"
#include "core/model/model.h"
#include "core/quant/quant.h"
#include "train/finetune.h"

typedef enum {
    MEMORY_QUANT_WEIGHTS = 0, /* 4-bit codes and block constants of the quantized projections */
    MEMORY_FP_WEIGHTS,        /* embeddings, norms, classifier, and the projections when not quantized */
    MEMORY_ADAPTERS,          /* LoRA A and B */
    MEMORY_GRADIENTS,         /* one gradient per trainable parameter */
    MEMORY_INPUT_GRADIENTS,   /* the backward's activation gradients (reused from layer to layer) */
    MEMORY_OPTIMIZER,         /* AdamW's moments (the resident part when paged) */
    MEMORY_ACTIVATIONS,       /* what the forward keeps for backward, the adapters' hidden states included */
    MEMORY_SCRATCH,           /* dequantization tile, RoPE tables, tokens, LoRA and attention scratch */
    MEMORY_BASELINE,          /* the process before any model is loaded (measured, or 0) */
    MEMORY_COMPONENT_COUNT
} memory_component;

/* "quant_weights", "fp_weights", "adapters", "gradients", "input_gradients", "optimizer", "activations",
 * "scratch", "baseline"; "unknown" out of range. */
const char *memory_component_name(memory_component c);

typedef struct {
    model_config arch; /* dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, shared_classifier;
                          seq_len is the context the adapters reserve rows for (lora_attach) */
    finetune_mode mode;
    /* FINETUNE_QLORA: the projections' 4-bit type (sizes from the descriptor table). */
    quant_dtype quant_type;
    int blocksize, double_quant;
    int base_bytes;                  /* bytes per projection weight when not quantized (4 fp32, 2 bf16) */
    int fp_bytes;                    /* bytes per embedding / norm / classifier weight */
    int adapter_bytes;               /* bytes per LoRA parameter */
    int grad_bytes;                  /* bytes per parameter gradient */
    int activation_bytes;            /* bytes per activation element (and activation gradient) */
    int optimizer_bytes;             /* optimizer state per trainable parameter (AdamW 32-bit: 8) */
    size_t optimizer_resident_bytes; /* paged optimizer: the resident part; 0 = all of it */
    unsigned lora_targets;           /* LORA_TARGET mask */
    int rank;
    float dropout;  /* > 0: LoRA keeps a (rows, in_features) scratch plane and its mask bits */
    int batch, seq; /* B rows of T tokens per step */
    int checkpointing;
    int recompute_attention; /* 1: backward forms the attention probabilities again (qlab's bf16 compute) */
    qlab_compute compute;    /* with qlab_buffers: QLAB_COMPUTE_BF16 adds the bf16 path's packed operands */
    int threads;             /* attention backward keeps one T x T scratch per thread */
    int quantized_scratch;   /* include the dequantization tile (qlab's 4-bit linear layers) */
    int qlab_buffers;        /* 1: add qlab's own small buffers (saved tokens, RoPE tables, job batch) */
    uint64_t baseline_bytes;
} memory_model_spec;

typedef struct {
    uint64_t bytes[MEMORY_COMPONENT_COUNT];
    uint64_t total;
    uint64_t trainable_params; /* parameters that get gradients and optimizer state */
    uint64_t adapter_params;
} memory_prediction;

/* qlab's element sizes: fp32 everywhere, AdamW 32-bit (8 bytes/param), the tile and qlab's buffers on,
 * rank 8 on all projections with dropout 0.05, checkpointing off, threads 1, baseline 0. The caller sets
 * arch, mode, batch and seq (and the 4-bit type for QLoRA, default NF4 + DQ block 64). */
void memory_model_spec_qlab(memory_model_spec *s);

/* The paper's settings (QLoRA §4 and its memory figure): 16-bit (bf16) weights, gradients, adapters and
 * activations, AdamW with 32-bit moments (8 bytes/param), LoRA r 64 on all projections, batch 1, sequence
 * 512, gradient checkpointing, one attention scratch, no dequantization tile or qlab buffers, everything
 * resident (a paged optimizer without memory pressure pages nothing), NF4 + DQ block 64 for QLoRA. The
 * activations are qlab's layout at 2 bytes per element, not a measurement of PyTorch's. The caller sets arch
 * (with seq_len 512) and mode. */
void memory_model_spec_paper(memory_model_spec *s, finetune_mode mode);

/* Fills *out; refuses (one line naming the field) sizes that are not positive or an unknown type. */
qlab_status memory_model_predict(const memory_model_spec *s, memory_prediction *out);

/* Elements of the activations model.c keeps for backward over (B, T), and of the backward's activation
 * gradients (threads T x T attention scratch excluded), for this architecture and checkpointing setting.
 * row_backward: the backward runs in bf16 row passes (model_bf16_row_path), which keep neither SwiGLU's
 * output nor the norms' outputs (adapters included: their row hooks read the chunk's own), nor the
 * gradients before RoPE and of the feed-forward hidden layer, and keep q, k and v at 2 bytes each when T
 * is a multiple of 32. fused_head: the head runs in row chunks (a bf16 step on a row path with a frozen
 * classifier, model.c's model_head_fuses), keeping MODEL_HEAD_CHUNK rows of logits instead of B*T, and the
 * classifier's input gradient (B*T, dim) the forward forms. */
uint64_t memory_model_activation_elements(const model_config *arch, int B, int T, int checkpointing,
                                          int recompute_attention, int row_backward, int fused_head);
uint64_t memory_model_input_gradient_elements(const model_config *arch, int B, int T, int row_backward);

/* The stored bytes of one out x in projection in a 4-bit type (codes, block constants, DQ). */
uint64_t memory_model_quant_tensor_bytes(quant_dtype dt, int blocksize, int double_quant, uint64_t n);

#endif
