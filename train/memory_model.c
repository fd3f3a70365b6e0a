/* The memory model of memory_model.h. Each term restates, from the architecture numbers, the size of one
 * buffer qlab allocates (model.c's parameter, gradient and activation layouts, lora.c's buffers, optim.c's
 * moments, quant.c's stored tensors), so a change to those layouts shows up as a gap between this model
 * and the measured peak in experiments/memory_footprint. */
#include "train/memory_model.h"

#include <string.h>

#include "core/model/gemm_bf16.h"
#include "core/model/linear.h"
#include "core/model/lora.h"

static const char *const component_names[MEMORY_COMPONENT_COUNT] = {
    "quant_weights", "fp_weights",  "adapters", "gradients", "input_gradients",
    "optimizer",     "activations", "scratch",  "baseline"};

const char *memory_component_name(memory_component c) {
    return c >= 0 && c < MEMORY_COMPONENT_COUNT ? component_names[c] : "unknown";
}

void memory_model_spec_qlab(memory_model_spec *s) {
    memset(s, 0, sizeof *s);
    s->mode = FINETUNE_QLORA;
    s->quant_type = QUANT_NF4;
    s->blocksize = 64;
    s->double_quant = 1;
    s->base_bytes = s->fp_bytes = s->adapter_bytes = s->grad_bytes = s->activation_bytes = 4;
    s->optimizer_bytes = 8;
    s->lora_targets = LORA_TARGETS_ALL;
    s->rank = 8;
    s->dropout = 0.05f;
    s->threads = 1;
    s->quantized_scratch = 1;
    s->qlab_buffers = 1;
}

void memory_model_spec_paper(memory_model_spec *s, finetune_mode mode) {
    memory_model_spec_qlab(s);
    s->mode = mode;
    s->base_bytes = s->fp_bytes = s->adapter_bytes = s->grad_bytes = s->activation_bytes = 2;
    s->rank = 64;
    s->dropout = 0.05f;
    s->batch = 1;
    s->seq = 512;
    s->checkpointing = 1;
    s->quantized_scratch = 0;
    s->qlab_buffers = 0;
}

uint64_t memory_model_quant_tensor_bytes(quant_dtype dt, int blocksize, int double_quant, uint64_t n) {
    const quant_type_traits *t = quant_type_traits_get(dt);
    if (!t || blocksize < 1) return 0;
    uint64_t blocks = (n + (uint64_t)blocksize - 1) / (uint64_t)blocksize, codes = (n + 1) / 2;
    if (double_quant) {
        /* one uint8 per block, one fp32 absmax per 256 blocks, the fp32 offset */
        uint64_t dq_blocks = (blocks + QUANT_DQ_BLOCKSIZE - 1) / QUANT_DQ_BLOCKSIZE;
        return codes + blocks + 4 * dq_blocks + 4;
    }
    return codes + (uint64_t)t->scale_bytes * blocks + (t->tensor_scale ? 4 : 0);
}

static uint64_t kv_width(const model_config *a) {
    return (uint64_t)a->n_kv_heads * (uint64_t)(a->dim / a->n_heads);
}

/* model.c's model_layout_acts: with checkpointing the per-layer working arrays exist once, the residual
 * stream leaving every block (res3) is always kept per layer; the attention probabilities only when the
 * backward does not form them again; the norms' and SwiGLU's outputs only when the backward reads them; the
 * logits of every position, or with the head in row chunks one chunk's and the classifier's input gradient.
 */
uint64_t memory_model_activation_elements(const model_config *a, int B, int T, int checkpointing,
                                          int recompute_attention, int row_backward, int fused_head) {
    uint64_t N = (uint64_t)B * (uint64_t)T, D = (uint64_t)a->dim, H = (uint64_t)a->hidden_dim;
    uint64_t KV = kv_width(a), V = (uint64_t)a->vocab_size, NH = (uint64_t)a->n_heads;
    uint64_t L = (uint64_t)a->n_layers, W = checkpointing ? 1 : L;
    int rows = row_backward, norms = !rows;
    uint64_t qkv = N * D + 2 * N * KV; /* q, k, v; at 2 bytes when the row passes pack the attention's */
    if (rows && bf16_att_operands_fit(T)) qkv /= 2; /* operands from their own buffers (model_keeps_qkv16) */
    uint64_t per_layer = 2 * N * D                  /* atty, res2 */
                         + qkv                      /* q, k, v */
                         + (norms ? 2 * N * D : 0)  /* ln1, ln2 */
                         + 2 * N                    /* ln1_rstd, ln2_rstd */
                         +
                         (recompute_attention ? 0 : (uint64_t)B * NH * (uint64_t)T * (uint64_t)T) /* probs */
                         + (rows ? 2 : 3) * N * H; /* h1, h3, silu(h1) h3 */
    uint64_t logits = fused_head && N > MODEL_HEAD_CHUNK ? MODEL_HEAD_CHUNK : N;
    return N * D                       /* encoded */
           + W * per_layer + L * N * D /* res3 */
           + N * D + N                 /* lnf, lnf_rstd */
           + logits * V + N            /* probabilities (a chunk's when fused), losses */
           + (fused_head ? N * D : 0); /* the classifier's input gradient */
}

/* model.c's model_layout_grad_acts without the per-thread attention scratch. */
uint64_t memory_model_input_gradient_elements(const model_config *a, int B, int T, int row_backward) {
    uint64_t N = (uint64_t)B * (uint64_t)T, D = (uint64_t)a->dim, H = (uint64_t)a->hidden_dim;
    uint64_t KV = kv_width(a), whole = row_backward ? 0 : 1;
    return 4 * N * D            /* dresidual, dln, dq, datty (the logits' in place of the probabilities) */
           + whole * N * D      /* dq_pre */
           + 2 * N * KV         /* dk, dv */
           + whole * N * KV     /* dk_pre */
           + whole * 3 * N * H; /* dh1, dh3, dhs */
}

static qlab_status check_spec(const memory_model_spec *s) {
    const model_config *a = &s->arch;
    if (a->dim < 1 || a->hidden_dim < 1 || a->n_layers < 1 || a->n_heads < 1 || a->n_kv_heads < 1 ||
        a->vocab_size < 1 || a->dim % a->n_heads != 0 || a->n_heads % a->n_kv_heads != 0)
        return qlab_fail(QLAB_ERR_ARG,
                         "memory model: architecture (dim %d, hidden_dim %d, n_layers %d, n_heads %d, "
                         "n_kv_heads %d, vocab_size %d) is not a valid LLaMA shape",
                         a->dim, a->hidden_dim, a->n_layers, a->n_heads, a->n_kv_heads, a->vocab_size);
    if (s->mode < 0 || s->mode >= FINETUNE_MODE_COUNT)
        return qlab_fail(QLAB_ERR_ARG, "memory model: mode %d out of range", (int)s->mode);
    if (s->batch < 1 || s->seq < 1 || s->threads < 1)
        return qlab_fail(QLAB_ERR_ARG, "memory model: batch %d, seq %d and threads %d must be positive",
                         s->batch, s->seq, s->threads);
    if (s->base_bytes < 1 || s->fp_bytes < 1 || s->adapter_bytes < 1 || s->grad_bytes < 1 ||
        s->activation_bytes < 1 || s->optimizer_bytes < 0)
        return qlab_fail(QLAB_ERR_ARG, "memory model: element sizes must be positive");
    if (s->mode != FINETUNE_FULL &&
        (s->rank < 1 || s->lora_targets == 0 || (s->lora_targets & ~LORA_TARGETS_ALL)))
        return qlab_fail(QLAB_ERR_ARG, "memory model: LoRA rank %d / targets 0x%x invalid", s->rank,
                         s->lora_targets);
    if (s->mode == FINETUNE_QLORA) QLAB_TRY(quant_check_blocksize(s->quant_type, s->blocksize));
    return QLAB_OK;
}

qlab_status memory_model_predict(const memory_model_spec *s, memory_prediction *out) {
    memset(out, 0, sizeof *out);
    QLAB_TRY(check_spec(s));
    const model_config *a = &s->arch;
    uint64_t *b = out->bytes;
    uint64_t L = (uint64_t)a->n_layers, D = (uint64_t)a->dim, V = (uint64_t)a->vocab_size;
    uint64_t B = (uint64_t)s->batch, T = (uint64_t)s->seq, N = B * T;
    int quantized = s->mode == FINETUNE_QLORA, lora = s->mode != FINETUNE_FULL;

    /* weights: full precision groups, then the seven projections per layer */
    uint64_t fp_params = V * D * (a->shared_classifier ? 1 : 2) + 2 * L * D + D, proj_params = 0;
    uint64_t max_in = 0, adapter_params = 0, n_adapters = 0, mask_bytes_per_row = 0;
    for (int p = 0; p < PROJ_COUNT; p++) {
        int o, i;
        model_proj_shape(a, (model_proj)p, &o, &i);
        uint64_t n = (uint64_t)o * (uint64_t)i;
        proj_params += L * n;
        if (quantized)
            b[MEMORY_QUANT_WEIGHTS] +=
                L * memory_model_quant_tensor_bytes(s->quant_type, s->blocksize, s->double_quant, n);
        if (lora && (s->lora_targets & LORA_TARGET(p))) {
            adapter_params += L * (uint64_t)s->rank * ((uint64_t)o + (uint64_t)i);
            n_adapters += L;
            mask_bytes_per_row += L * (uint64_t)lora_mask_bytes(1, i, s->dropout);
            if ((uint64_t)i > max_in) max_in = (uint64_t)i;
        }
    }
    b[MEMORY_FP_WEIGHTS] = fp_params * (uint64_t)s->fp_bytes + (quantized ? 0 : proj_params * s->base_bytes);
    b[MEMORY_ADAPTERS] = adapter_params * (uint64_t)s->adapter_bytes;
    out->adapter_params = adapter_params;
    out->trainable_params = lora ? adapter_params : fp_params + proj_params;

    /* gradients and optimizer state of the trainable parameters */
    b[MEMORY_GRADIENTS] = out->trainable_params * (uint64_t)s->grad_bytes;
    uint64_t optimizer = out->trainable_params * (uint64_t)s->optimizer_bytes;
    if (s->optimizer_resident_bytes > 0 && s->optimizer_resident_bytes < optimizer)
        optimizer = s->optimizer_resident_bytes;
    b[MEMORY_OPTIMIZER] = optimizer;

    /* activations kept for backward, the adapters' hidden states and dropout-mask bits (B*T rows, which a
     * forward reserves), and the backward's activation gradients */
    uint64_t ab = (uint64_t)s->activation_bytes;
    int bf16 = s->compute == QLAB_COMPUTE_BF16, recompute = s->recompute_attention || bf16;
    int rows = bf16 && s->qlab_buffers && model_bf16_row_path(); /* qlab's bf16 row passes */
    uint64_t lora_rows = lora ? N : 0;
    b[MEMORY_ACTIVATIONS] = memory_model_activation_elements(a, s->batch, s->seq, s->checkpointing, recompute,
                                                             rows, rows && lora) *
                                ab +
                            n_adapters * lora_rows * (uint64_t)s->rank * ab + lora_rows * mask_bytes_per_row;
    b[MEMORY_INPUT_GRADIENTS] = memory_model_input_gradient_elements(a, s->batch, s->seq, rows) * ab;

    /* scratch: attention backward (T x T per thread), LoRA's backward planes, the dequantization tile,
     * qlab's small buffers, and with bf16 compute its packed operands */
    uint64_t scratch = (uint64_t)s->threads * T * T * ab;
    if (lora) scratch += (uint64_t)lora_scratch_floats((int)lora_rows, (int)max_in, s->rank, s->dropout) * ab;
    if (quantized && s->quantized_scratch) {
        uint64_t tile = LINEAR_TILE_FLOATS;
        for (int p = 0; p < PROJ_COUNT; p++) {
            int o, i;
            model_proj_shape(a, (model_proj)p, &o, &i);
            if (2 * (uint64_t)i > tile) tile = 2 * (uint64_t)i;
        }
        scratch += tile * 4;
    }
    if (s->qlab_buffers) {
        uint64_t head = D / (uint64_t)a->n_heads;
        scratch += 2 * T * (head / 2) * 4 /* RoPE cos and sin */
                   + 3 * N * 4            /* the tokens, targets and head rows model.c keeps for backward */
                   + 2 * N * 4;           /* the batch the finetuning job assembles */
    }
    if (bf16 &&
        s->qlab_buffers) { /* the bf16 path's packed weights and operands, the adapters' row buffers */
        int full = s->mode == FINETUNE_FULL;
        unsigned trains = full ? (1u << PROJ_COUNT) - 1 : 0;
        scratch += model_bf16_training_bytes(a, s->batch, s->seq, s->threads, quantized || !s->checkpointing,
                                             trains, full);
        if (lora && model_bf16_row_path())
            scratch += lora_rows_bytes(a, s->lora_targets, s->rank, (int)N, s->threads);
    }
    b[MEMORY_SCRATCH] = scratch;
    b[MEMORY_BASELINE] = s->baseline_bytes;
    for (int c = 0; c < MEMORY_COMPONENT_COUNT; c++)
        out->total += b[c];
    return QLAB_OK;
}
