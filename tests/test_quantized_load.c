/* Tests of the 4-bit-resident base (issue 8): checkpoint_load_quantized equals checkpoint_load followed by
 * model_quantize bit for bit (tensors, bits, logits), and the model's allocated bytes by category show that
 * a quantized model keeps no fp32 projections: its fp32 buffer is exactly the full-precision groups
 * (embedding, norms, classifier), counted here from the configuration by hand. Also the refusals around it
 * (forward before every projection is set, setting one on an fp32 model, quantizing twice, saving a
 * quantized model, NaN in a projection of the file). On synthetic llama2.c files and on the real
 * stories260K when ../shared/data has it. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/check.h"
#include "core/base/common.h"
#include "core/base/rng.h"
#include "core/model/checkpoint.h"
#include "core/model/linear.h"
#include "core/quant/quant.h"
#include "tests/test_util.h"

static rng_state rng;

static model *random_model(model_config c) {
    model *m = NULL;
    if (model_create(&m, &c) != QLAB_OK) {
        fprintf(stderr, "model_create: %s\n", qlab_last_error());
        exit(2);
    }
    size_t n;
    float *p = model_get_param_buffer(m, &n);
    for (size_t i = 0; i < n; i++)
        p[i] = (float)(0.2 * rng_normal(&rng));
    return m;
}

/* 1 when every projection of a and b holds the same codes and block constants. */
static int same_quantized(const model *a, const model *b) {
    const model_config *c = model_get_config(a);
    for (int l = 0; l < c->n_layers; l++)
        for (int p = 0; p < PROJ_COUNT; p++) {
            linear_weight x = model_get_linear(a, l, (model_proj)p),
                          y = model_get_linear(b, l, (model_proj)p);
            if (!x.q || !y.q || x.q->n != y.q->n || x.q->nblocks != y.q->nblocks ||
                quant_tensor_bytes(x.q) != quant_tensor_bytes(y.q) ||
                memcmp(x.q->codes, y.q->codes, (size_t)(x.q->n + 1) / 2) != 0)
                return 0;
            for (int64_t k = 0; k < x.q->nblocks; k++)
                if (quant_tensor_block_scale(x.q, k) != quant_tensor_block_scale(y.q, k)) return 0;
        }
    return 1;
}

/* Floats of the groups that stay full precision, written out from the configuration. */
static size_t full_precision_floats(const model_config *c) {
    size_t V = (size_t)c->vocab_size, D = (size_t)c->dim, L = (size_t)c->n_layers;
    return V * D + 2 * L * D + D + (c->shared_classifier ? 0 : V * D);
}

/* Loads path both ways with quant and checks they agree; returns the quantized load (NULL on failure). */
static model *check_both_ways(const char *path, const checkpoint_quant *quant, const char *tag) {
    model *ref = NULL, *q = NULL;
    CHECKF(checkpoint_load(path, &ref) == QLAB_OK, "%s: %s", tag, qlab_last_error());
    CHECKF(checkpoint_load_quantized(path, quant, &q) == QLAB_OK, "%s: %s", tag, qlab_last_error());
    if (!ref || !q) {
        model_free(ref), model_free(q);
        return NULL;
    }
    const model_config *c = model_get_config(q);
    model_memory before, after, mq;
    model_get_memory(ref, &before);
    CHECK(before.fp32_weights == model_num_params(c) * sizeof(float) && before.quantized_weights == 0);
    CHECKF(model_quantize(ref, quant->dtype, quant->blocksize, quant->double_quant) == QLAB_OK, "%s", tag);
    model_get_memory(ref, &after);
    model_get_memory(q, &mq);
    /* No fp32 projections in either: the fp32 buffer is the full-precision groups, to the byte. */
    size_t fp = full_precision_floats(c) * sizeof(float);
    CHECKF(after.fp32_weights == fp && mq.fp32_weights == fp, "%s: fp32 bytes %zu and %zu, expected %zu", tag,
           after.fp32_weights, mq.fp32_weights, fp);
    size_t qbytes = 0;
    for (int l = 0; l < c->n_layers; l++)
        for (int p = 0; p < PROJ_COUNT; p++)
            qbytes += quant_tensor_bytes(model_get_linear(q, l, (model_proj)p).q);
    CHECK(mq.quantized_weights == qbytes && after.quantized_weights == qbytes && qbytes > 0);
    CHECK(mq.gradients == 0 && mq.activations == 0);
    CHECKF(same_quantized(ref, q), "%s: quantized tensors differ", tag);
    size_t n_ref, n_q;
    const float *pr = model_get_param_buffer_const(ref, &n_ref), *pq = model_get_param_buffer_const(q, &n_q);
    CHECK(n_ref == n_q && n_q * sizeof(float) == fp && memcmp(pr, pq, n_q * sizeof(float)) == 0);
    CHECK(model_total_bits(ref) == model_total_bits(q));
    for (int g = 0; g < MODEL_GROUP_COUNT; g++) {
        model_param_group pg = model_get_param_group(q, (model_group)g);
        CHECK(pg.quantized == (model_group_projection((model_group)g) >= 0) &&
              (model_get_params_const(q)->group[g] == NULL) == pg.quantized);
    }
    char names[160];
    CHECKF(!strcmp(model_full_precision_groups(q, names, sizeof names),
                   c->shared_classifier ? "token_embedding,rms_att,rms_ffn,rms_final"
                                        : "token_embedding,rms_att,rms_ffn,rms_final,wcls"),
           "%s: %s", tag, names);

    int T = c->seq_len < 16 ? c->seq_len : 16, tokens[16], targets[16];
    for (int i = 0; i < T; i++)
        tokens[i] = (int)rng_below(&rng, (uint64_t)c->vocab_size);
    for (int i = 0; i < T; i++)
        targets[i] = tokens[(i + 1) % T];
    size_t nl = (size_t)T * c->vocab_size;
    float *la = malloc(nl * sizeof(float)), *lb = malloc(nl * sizeof(float)), loss_a = 0, loss_b = 0;
    CHECKF(model_forward(ref, tokens, targets, 1, T, la, &loss_a) == QLAB_OK, "%s", qlab_last_error());
    CHECK(model_forward(q, tokens, targets, 1, T, lb, &loss_b) == QLAB_OK);
    CHECKF(memcmp(la, lb, nl * sizeof(float)) == 0 && loss_a == loss_b, "%s: logits differ", tag);
    free(la), free(lb);
    model_free(ref);
    return q;
}

static void test_synthetic(void) {
    model_config c = {.dim = 64,
                      .hidden_dim = 96,
                      .n_layers = 3,
                      .n_heads = 4,
                      .n_kv_heads = 2,
                      .vocab_size = 50,
                      .seq_len = 16,
                      .norm_eps = 1e-5f,
                      .rope_theta = 10000.0f,
                      .shared_classifier = 0};
    for (int shared = 0; shared < 2; shared++) {
        c.shared_classifier = shared;
        model *m = random_model(c);
        const char *path = tmp_path(shared ? "shared.bin" : "separate.bin");
        CHECK(checkpoint_save_llama2c(m, path) == QLAB_OK);
        checkpoint_quant kinds[] = {{QUANT_NF4, 64, 1}, {QUANT_FP4, 64, 0}, {QUANT_INT4, 128, 0}};
        for (int k = 0; k < 3; k++) {
            char tag[64];
            snprintf(tag, sizeof tag, "%s %s", shared ? "shared" : "separate",
                     quant_dtype_name(kinds[k].dtype));
            model *q = check_both_ways(path, &kinds[k], tag);
            if (k == 0 && q) {
                /* a quantized model is refused where its fp32 projections would be needed */
                CHECK(model_quantize(q, QUANT_NF4, 64, 0) == QLAB_ERR_ARG);
                CHECK(checkpoint_save_llama2c(q, tmp_path("again.bin")) == QLAB_ERR_UNSUPPORTED);
                CHECK(strstr(qlab_last_error(), "quantized") != NULL);
                CHECK(checkpoint_save_gguf(q, tmp_path("again.gguf"), CHECKPOINT_F32) ==
                      QLAB_ERR_UNSUPPORTED);
                CHECK(checkpoint_save_hf(q, tmp_path("again_hf")) == QLAB_ERR_UNSUPPORTED);
            }
            model_free(q);
        }
        /* GGUF and Hugging Face files stream too (one projection at a time, HF's Q/K rows permuted back):
         * each equals its own fp32 load then model_quantize, and an fp32 file equals the llama2.c load. */
        checkpoint_dtype dts[] = {CHECKPOINT_F32, CHECKPOINT_F16, CHECKPOINT_BF16};
        for (int d = 0; d < 3; d++) {
            char name[64], tag[96];
            snprintf(name, sizeof name, "%s_%d.gguf", shared ? "shared" : "separate", d);
            const char *gguf = tmp_path(name);
            CHECK(checkpoint_save_gguf(m, gguf, dts[d]) == QLAB_OK);
            snprintf(name, sizeof name, "%s_hf_%d", shared ? "shared" : "separate", d);
            const char *hf = tmp_path(name);
            CHECK(checkpoint_save_hf_dtype(m, hf, dts[d]) == QLAB_OK);
            for (int k = 0; k < 3; k++) {
                snprintf(tag, sizeof tag, "gguf dtype %d %s", d, quant_dtype_name(kinds[k].dtype));
                model *g = check_both_ways(gguf, &kinds[k], tag);
                snprintf(tag, sizeof tag, "hf dtype %d %s", d, quant_dtype_name(kinds[k].dtype));
                model *h = check_both_ways(hf, &kinds[k], tag);
                model *b = NULL;
                if (d == 0) {
                    CHECK(checkpoint_load_quantized(path, &kinds[k], &b) == QLAB_OK);
                    CHECKF(g && h && b && same_quantized(g, b) && same_quantized(h, b),
                           "fp32 gguf / hf / llama2.c %s differ", quant_dtype_name(kinds[k].dtype));
                }
                model_free(g), model_free(h), model_free(b);
            }
        }
        model_free(m);
    }

    /* Building a quantized model by hand: forward is refused until every projection is set. */
    model *m = random_model(c), *q = NULL;
    CHECK(model_create_quantized(&q, &c, QUANT_NF4, 64, 1) == QLAB_OK);
    int tokens[4] = {1, 2, 3, 4};
    for (int l = 0; l < c.n_layers; l++)
        for (int p = 0; p < PROJ_COUNT; p++) {
            if (l == c.n_layers - 1 && p == PROJ_DOWN) {
                CHECK(model_forward(q, tokens, NULL, 1, 4, NULL, NULL) == QLAB_ERR_ARG);
                CHECK(strstr(qlab_last_error(), "1 quantized projections were never set") != NULL);
            }
            CHECK(model_set_projection(q, l, (model_proj)p, model_get_linear(m, l, (model_proj)p).w) ==
                  QLAB_OK);
        }
    CHECK(model_forward(q, tokens, NULL, 1, 4, NULL, NULL) == QLAB_OK);
    CHECK(model_set_projection(q, c.n_layers, PROJ_Q, model_get_linear(m, 0, PROJ_Q).w) == QLAB_ERR_ARG);
    CHECK(model_set_projection(m, 0, PROJ_Q, model_get_linear(m, 0, PROJ_Q).w) == QLAB_ERR_ARG);
    model *bad = NULL;
    CHECK(model_create_quantized(&bad, &c, QUANT_NF4, 48, 0) != QLAB_OK && !bad);
    CHECK(model_create_quantized(&bad, &c, QUANT_MXFP4, 32, 1) == QLAB_ERR_ARG && !bad);
    CHECK(strstr(qlab_last_error(), "double_quant") != NULL);
    model_free(q);

    /* A NaN in a projection of the file is refused by the streaming load, naming tensor and layer. */
    c.shared_classifier = 0;
    model_get_params(m)->w3[(size_t)1 * c.hidden_dim * c.dim + 5 * c.dim + 7] = NAN;
    const char *path = tmp_path("nan.bin");
    CHECK(checkpoint_save_llama2c(m, path) == QLAB_OK);
    checkpoint_quant nf4 = {QUANT_NF4, 64, 1};
    CHECK(checkpoint_load_quantized(path, &nf4, &q) == QLAB_ERR_NUMERIC && q == NULL);
    CHECKF(strstr(qlab_last_error(), "tensor w3 (layer 1) is nan at row 5") != NULL, "%s", qlab_last_error());
    /* ... and by the GGUF and Hugging Face streaming loads, naming the file's tensor */
    path = tmp_path("nan.gguf");
    CHECK(checkpoint_save_gguf(m, path, CHECKPOINT_F32) == QLAB_OK);
    CHECK(checkpoint_load_quantized(path, &nf4, &q) == QLAB_ERR_NUMERIC && q == NULL);
    CHECKF(strstr(qlab_last_error(), "tensor blk.1.ffn_up.weight is nan at row 5") != NULL, "%s",
           qlab_last_error());
    path = tmp_path("nan_hf");
    CHECK(checkpoint_save_hf(m, path) == QLAB_OK);
    CHECK(checkpoint_load_quantized(path, &nf4, &q) == QLAB_ERR_NUMERIC && q == NULL);
    CHECKF(strstr(qlab_last_error(), "tensor model.layers.1.mlp.up_proj.weight is nan at row 5") != NULL,
           "%s", qlab_last_error());
    model_free(m);
}

static void test_stories260k(void) {
    const char *bin = shared_data_path("models/stories260K.bin");
    FILE *f = fopen(bin, "rb");
    if (!f) {
        SKIP("../shared/data/models/stories260K.bin is absent: the real-model quantized load is not tested");
        return;
    }
    fclose(f);
    checkpoint_quant nf4dq = {QUANT_NF4, 64, 1};
    model *q = check_both_ways(bin, &nf4dq, "stories260K nf4+dq");
    if (!q) return;
    model_memory mem;
    model_get_memory(q, &mem);
    size_t fp32_all = model_num_params(model_get_config(q)) * sizeof(float);
    printf("stories260K NF4+DQ: fp32 %zu B + 4-bit %zu B = %zu B resident weights (fp32 model: %zu B)\n",
           mem.fp32_weights, mem.quantized_weights, mem.fp32_weights + mem.quantized_weights, fp32_all);
    CHECK(mem.fp32_weights + mem.quantized_weights < fp32_all / 2);
    model_free(q);
}

/* The real GGUF files of ../shared/data: the streaming load equals fp32 load + model_quantize. */
static void test_real_gguf(void) {
    const char *files[] = {"models/stories260K.gguf", "models/SmolLM2-135M-Instruct.Q4_1.gguf"};
    checkpoint_quant nf4dq = {QUANT_NF4, 64, 1};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        const char *path = shared_data_path(files[i]);
        FILE *f = fopen(path, "rb");
        if (!f) {
            char msg[160];
            snprintf(msg, sizeof msg,
                     "../shared/data/%s is absent: its streaming quantized load is not tested", files[i]);
            SKIP(msg);
            continue;
        }
        fclose(f);
        model_free(check_both_ways(path, &nf4dq, files[i]));
    }
}

int main(void) {
    rng_seed(&rng, 20240801);
    test_tmp_dir_create("quantized_load");
    test_synthetic();
    test_stories260k();
    test_real_gguf();
    test_tmp_dir_remove();
    return check_summary();
}
