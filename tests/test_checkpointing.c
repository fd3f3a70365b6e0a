/* Gradient checkpointing (model_set_checkpointing): the loss, logits and every gradient are bit-identical
 * to the run that keeps all activations — for full training of an fp32 model, and for LoRA with dropout on
 * an NF4 base (the recomputed forward must repeat the adapters' dropout masks), in fp32 and in bf16 compute
 * (whose recomputed blocks run in row chunks, as its forward) — over several steps, with the setting
 * switched between steps; and the activations kept shrink as the layer count says. A forward no
 * backward can follow (no targets: evaluation, generation) keeps one layer's working activations, two
 * slots of the residual stream and no logits buffer, and gives the logits of the forward that keeps all.
 * The logits' gradient takes the probabilities' place: a second backward forms them again. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tests/check.h"
#include "core/base/common.h"
#include "core/base/rng.h"
#include "core/model/lora.h"
#include "core/model/model.h"
#include "train/train.h"

static const model_config cfg = {.dim = 48,
                                 .hidden_dim = 96,
                                 .n_layers = 4,
                                 .n_heads = 4,
                                 .n_kv_heads = 2,
                                 .vocab_size = 64,
                                 .seq_len = 32,
                                 .norm_eps = 1e-5f,
                                 .rope_theta = 10000.0f,
                                 .shared_classifier = 1};
enum { B = 3, T = 32 };

static int tokens[B * T], targets[B * T];

/* One forward + backward; copies the loss, the logits and the gradients out. */
static int step(model *m, lora_set *l, float *loss, float *logits, float *grads, size_t n_grads) {
    if (l)
        lora_zero_grad(l);
    else
        model_zero_grad(m);
    if (model_forward(m, tokens, targets, B, T, logits, loss) != QLAB_OK || model_backward(m) != QLAB_OK) {
        fprintf(stderr, "%s\n", qlab_last_error());
        return 0;
    }
    const float *g = l ? lora_get_grad_buffer(l, NULL) : model_get_grad_buffer(m, NULL);
    memcpy(grads, g, n_grads * sizeof(float));
    return 1;
}

/* A model of cfg computing in compute; with use_lora its projections NF4 + DQ and LoRA r 4 on all of them
 * (*l), else *l NULL. Returns 0 (after a failed check) when it cannot be built. */
static int make_model(model **m, lora_set **l, qlab_compute compute, int use_lora, float dropout) {
    *l = NULL;
    if (model_create(m, &cfg) != QLAB_OK) {
        CHECKF(0, "%s", qlab_last_error());
        return 0;
    }
    train_init_params(*m, 5);
    model_set_compute(*m, compute);
    if (!use_lora) return 1;
    lora_config lc = {.targets = LORA_TARGETS_ALL, .rank = 4, .alpha = 8, .dropout = dropout, .seed = 3};
    int ok = model_quantize(*m, QUANT_NF4, 64, 1) == QLAB_OK && lora_create(l, &cfg, &lc) == QLAB_OK &&
             lora_attach(*l, *m, 1) == QLAB_OK;
    CHECKF(ok, "%s", qlab_last_error());
    return ok;
}

static void free_model(model *m, lora_set *l) {
    if (l) lora_detach(m);
    lora_free(l);
    model_free(m);
}

static void compare_runs(int use_lora, qlab_compute compute) {
    model *m[2] = {NULL, NULL};
    lora_set *l[2] = {NULL, NULL};
    for (int k = 0; k < 2; k++) {
        if (!make_model(&m[k], &l[k], compute, use_lora, 0.2f)) return;
        if (use_lora) {
            lora_set_training(l[k], 1);
            /* Non-zero B so the adapters shape the loss and their dropout matters. */
            size_t n;
            float *p = lora_get_param_buffer(l[k], &n);
            rng_state r;
            rng_seed(&r, 9);
            for (size_t i = 0; i < n; i++)
                p[i] = 0.05f * (float)rng_normal(&r);
        }
    }
    size_t n_grads = 0;
    if (use_lora)
        lora_get_grad_buffer(l[0], &n_grads);
    else
        model_get_param_buffer(m[0], &n_grads);
    size_t n_logits = (size_t)B * T * cfg.vocab_size;
    float *lg[2], *gr[2];
    for (int k = 0; k < 2; k++) {
        lg[k] = malloc(n_logits * sizeof(float));
        gr[k] = malloc(n_grads * sizeof(float));
    }
    /* Step 0: m[1] checkpoints; step 1: neither; step 2: m[1] checkpoints again (the masks advance alike). */
    const int ckpt_at[3] = {1, 0, 1};
    for (int s = 0; s < 3; s++) {
        model_set_checkpointing(m[1], ckpt_at[s]);
        float loss[2];
        for (int k = 0; k < 2; k++)
            CHECK(step(m[k], l[k], &loss[k], lg[k], gr[k], n_grads));
        CHECKF(loss[0] == loss[1], "%s compute %d step %d: loss %.9g vs %.9g", use_lora ? "lora" : "full",
               (int)compute, s, loss[0], loss[1]);
        CHECK(!memcmp(lg[0], lg[1], n_logits * sizeof(float)));
        CHECKF(!memcmp(gr[0], gr[1], n_grads * sizeof(float)), "%s compute %d step %d: gradients differ",
               use_lora ? "lora" : "full", (int)compute, s);
        double norm = 0;
        for (size_t i = 0; i < n_grads; i++)
            norm += (double)gr[0][i] * gr[0][i];
        CHECK(norm > 0); /* something was compared */
    }
    /* What is kept: without checkpointing every layer's working activations, with it one layer's. */
    model_set_checkpointing(m[1], 0);
    size_t full = model_activation_bytes(m[1], B, T, 0);
    model_set_checkpointing(m[1], 1);
    size_t ckpt = model_activation_bytes(m[1], B, T, 0);
    CHECKF(ckpt < full / 2, "activations %zu bytes with checkpointing vs %zu without", ckpt, full);
    for (int k = 0; k < 2; k++) {
        free_model(m[k], l[k]);
        free(lg[k]), free(gr[k]);
    }
}

/* A fresh model's activation bytes after one forward of B x T (targets or none). */
static size_t forward_bytes(model *m, const int *tg, float *logits) {
    float loss;
    if (model_forward(m, tokens, tg, B, T, logits, tg ? &loss : NULL) != QLAB_OK) {
        CHECKF(0, "%s", qlab_last_error());
        return 0;
    }
    model_memory mem;
    model_get_memory(m, &mem);
    return mem.activations;
}

static void evaluation_layout(qlab_compute compute, int packed) {
    size_t n_logits = (size_t)B * T * cfg.vocab_size, N = (size_t)B * T;
    float *keep = malloc(n_logits * sizeof(float)), *eval = malloc(n_logits * sizeof(float));
    float *at = malloc(2 * (size_t)cfg.vocab_size * sizeof(float));
    model *m[3];
    for (int k = 0; k < 3; k++) {
        CHECK(model_create(&m[k], &cfg) == QLAB_OK);
        train_init_params(m[k], 5);
        model_set_compute(m[k], compute);
        if (packed) CHECK(model_pack_weights(m[k]) == QLAB_OK);
    }
    model_set_checkpointing(m[1], 1);
    size_t full = forward_bytes(m[0], targets, keep), ckpt = forward_bytes(m[1], targets, NULL);
    size_t ev = forward_bytes(m[2], NULL, eval);
    /* checkpointing's layout less the res3 slots past two and the logits buffer; bf16 training in the row
     * passes keeps no norm or SwiGLU outputs, which the evaluation's one layer has, and keeps q, k and v at
     * 2 bytes each (T a multiple of 32), which the evaluation's layer has at 4 */
    size_t rows = compute == QLAB_COMPUTE_BF16 && model_bf16_row_path() ? 1 : 0;
    size_t qkv = N * (cfg.dim + 2 * (size_t)cfg.n_kv_heads * (cfg.dim / cfg.n_heads)), half = T % 32 == 0;
    size_t expect = ckpt - ((size_t)(cfg.n_layers - 2) * N * cfg.dim + N * cfg.vocab_size) * sizeof(float) +
                    rows * (N * (2 * (size_t)cfg.dim + cfg.hidden_dim) + half * qkv / 2) * sizeof(float);
    CHECKF(ev == expect,
           "compute %d packed %d: evaluation activations %zu bytes, expected %zu (training %zu)",
           (int)compute, packed, ev, expect, full);
    CHECKF(!memcmp(keep, eval, n_logits * sizeof(float)), "compute %d packed %d: evaluation logits differ",
           (int)compute, packed);
    CHECK(model_backward(m[2]) == QLAB_ERR_ARG); /* nothing kept to differentiate */
    /* model_forward_at over the same layout: the logits of those positions (bit for bit in bf16; fp32's
     * classifier over 2 rows may sum in another order than over all B*T) */
    const int pos[2] = {T + 5, 2 * T - 1};
    CHECK(model_forward_at(m[2], tokens, B, T, pos, 2, at) == QLAB_OK);
    double worst = 0;
    for (int r = 0; r < 2; r++)
        for (int v = 0; v < cfg.vocab_size; v++) {
            double d = fabs((double)at[r * cfg.vocab_size + v] - keep[(size_t)pos[r] * cfg.vocab_size + v]);
            worst = d > worst ? d : worst;
        }
    CHECKF(compute == QLAB_COMPUTE_FP32 ? worst < 1e-5 : worst == 0,
           "compute %d packed %d: model_forward_at's logits differ by %g", (int)compute, packed, worst);
    /* and a training step after it lays the activations out for the backward again */
    float l0, l2;
    CHECK(model_forward(m[2], tokens, targets, B, T, eval, &l2) == QLAB_OK &&
          model_backward(m[2]) == QLAB_OK);
    CHECK(model_forward(m[0], tokens, targets, B, T, NULL, &l0) == QLAB_OK && l0 == l2);
    CHECK(!memcmp(keep, eval, n_logits * sizeof(float)));
    for (int k = 0; k < 3; k++)
        model_free(m[k]);
    free(keep), free(eval), free(at);
}

/* A bf16 training forward in the row passes keeps only what their backward reads: a backward asked for
 * after the row passes were switched off, or (checkpointing) after the packed weights were released,
 * refuses with one line, and runs after the next forward. */
static void row_layout_guard(void) {
    if (!model_bf16_row_path()) return; /* the blas path has no row passes */
    model *m;
    CHECK(model_create(&m, &cfg) == QLAB_OK);
    train_init_params(m, 5);
    model_set_compute(m, QLAB_COMPUTE_BF16);
    float loss;
    CHECK(model_forward(m, tokens, targets, B, T, NULL, &loss) == QLAB_OK);
    model_set_row_passes(m, 0);
    CHECK(model_backward(m) == QLAB_ERR_ARG);
    CHECK(strstr(qlab_last_error(), "run model_forward again") != NULL);
    CHECK(model_forward(m, tokens, targets, B, T, NULL, &loss) == QLAB_OK && model_backward(m) == QLAB_OK);
    /* with checkpointing the recomputation needs the packed weights the forward ran on */
    model_set_row_passes(m, 1);
    model_set_checkpointing(m, 1);
    CHECK(model_forward(m, tokens, targets, B, T, NULL, &loss) == QLAB_OK);
    model_unpack_weights(m);
    CHECK(model_backward(m) == QLAB_ERR_ARG);
    CHECK(strstr(qlab_last_error(), "released") != NULL);
    CHECK(model_forward(m, tokens, targets, B, T, NULL, &loss) == QLAB_OK && model_backward(m) == QLAB_OK);
    model_free(m);
}

/* model_forward_loss: the loss of the training forward, bit for bit, over the evaluation layout plus the
 * probabilities (fp32 and bf16; full, and LoRA over an NF4 base); no backward follows it. */
static void loss_only(qlab_compute compute, int use_lora) {
    model *m[2];
    lora_set *l[2] = {NULL, NULL};
    float loss[2];
    size_t bytes[2];
    for (int k = 0; k < 2; k++) {
        if (!make_model(&m[k], &l[k], compute, use_lora, 0.0f)) return;
        CHECK((k ? model_forward_loss(m[k], tokens, targets, B, T, &loss[k])
                 : model_forward(m[k], tokens, targets, B, T, NULL, &loss[k])) == QLAB_OK);
        model_memory mem;
        model_get_memory(m[k], &mem);
        bytes[k] = mem.activations;
    }
    CHECKF(loss[0] == loss[1], "compute %d %s: model_forward_loss %.9g, model_forward %.9g", (int)compute,
           use_lora ? "lora" : "full", loss[1], loss[0]);
    CHECK(model_last_target_count(m[0]) == model_last_target_count(m[1]) &&
          model_last_target_count(m[1]) > 0);
    CHECK(model_backward(m[1]) == QLAB_ERR_ARG);
    /* the evaluation layout (one working layer, two res3 slots) plus the probabilities; in bf16 row chunks
     * without SwiGLU's output nor the norms' outputs (an adapter's row hooks read the chunk's own) */
    float *logits = malloc((size_t)B * T * cfg.vocab_size * sizeof(float));
    model *e;
    CHECK(model_create(&e, &cfg) == QLAB_OK);
    model_set_compute(e, compute);
    CHECK(model_forward(e, tokens, NULL, B, T, logits, NULL) == QLAB_OK);
    model_memory me;
    model_get_memory(e, &me);
    size_t N = (size_t)B * T, rows = compute == QLAB_COMPUTE_BF16 && model_bf16_row_path();
    size_t lean = rows * N * (cfg.hidden_dim + 2 * (size_t)cfg.dim) * sizeof(float);
    CHECKF(bytes[1] == me.activations + N * cfg.vocab_size * sizeof(float) - lean,
           "compute %d %s: loss-only activations %zu bytes, evaluation %zu (training %zu)", (int)compute,
           use_lora ? "lora" : "full", bytes[1], me.activations, bytes[0]);
    model_free(e);
    free(logits);
    for (int k = 0; k < 2; k++)
        free_model(m[k], l[k]);
}

/* The logits' gradient is formed in place of the probabilities: a second backward of the same forward forms
 * them again, as the forward did, and gives the same gradients bit for bit (full training over an fp32 base,
 * LoRA over an NF4 base; fp32 and bf16). */
static void second_backward(qlab_compute compute, int use_lora) {
    model *m;
    lora_set *l;
    if (!make_model(&m, &l, compute, use_lora, 0.0f)) return;
    if (use_lora) {
        size_t n;
        float *p = lora_get_param_buffer(l, &n);
        for (size_t i = 0; i < n; i++)
            p[i] = 0.01f * (float)(i % 7);
    }
    size_t n_grads;
    float *g = use_lora ? lora_get_grad_buffer(l, &n_grads) : model_get_grad_buffer(m, &n_grads);
    float *first = malloc(n_grads * sizeof(float)), loss;
    CHECK(model_forward(m, tokens, targets, B, T, NULL, &loss) == QLAB_OK);
    for (int k = 0; k < 2; k++) {
        use_lora ? lora_zero_grad(l) : model_zero_grad(m);
        CHECK(model_backward(m) == QLAB_OK);
        if (k == 0) memcpy(first, g, n_grads * sizeof(float));
    }
    CHECKF(!memcmp(first, g, n_grads * sizeof(float)),
           "compute %d %s: the second backward's gradients differ", (int)compute, use_lora ? "lora" : "full");
    free_model(m, l);
    free(first);
}

int main(void) {
    rng_state r;
    rng_seed(&r, 1);
    for (int i = 0; i < B * T; i++) {
        tokens[i] = (int)rng_below(&r, cfg.vocab_size);
        targets[i] = i % 5 == 0 ? -1 : (int)rng_below(&r, cfg.vocab_size);
    }
    compare_runs(0, QLAB_COMPUTE_FP32);
    compare_runs(1, QLAB_COMPUTE_FP32);
    compare_runs(0, QLAB_COMPUTE_BF16); /* the recomputed blocks in row chunks, as the forward ran them */
    compare_runs(1, QLAB_COMPUTE_BF16);
    evaluation_layout(QLAB_COMPUTE_FP32, 0);
    evaluation_layout(QLAB_COMPUTE_BF16, 0);
    evaluation_layout(QLAB_COMPUTE_BF16, 1);
    row_layout_guard();
    for (int k = 0; k < 2; k++) {
        loss_only(QLAB_COMPUTE_FP32, k);
        loss_only(QLAB_COMPUTE_BF16, k);
        second_backward(QLAB_COMPUTE_FP32, k);
        second_backward(QLAB_COMPUTE_BF16, k);
    }
    return check_summary();
}
