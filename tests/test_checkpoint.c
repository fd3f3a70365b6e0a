/* Tests of the checkpoint readers and writers on the real stories260K model: the llama2.c .bin and the
 * GGUF hold identical weights, every writer round-trips bit-exactly, the Hugging Face rotary permutation
 * is the one that makes half-split RoPE agree with ours, and all formats give identical logits. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/check.h"
#include "core/model/checkpoint.h"
#include "core/base/common.h"
#include "core/base/half.h"
#include "core/base/rng.h"
#include "core/formats/safetensors.h"
#include "tests/test_util.h"

/* 1 when every parameter (classifier included) of a and b is bit-identical. */
static int same_params(model *a, model *b) {
    const model_config *ca = model_get_config(a), *cb = model_get_config(b);
    if (ca->dim != cb->dim || ca->hidden_dim != cb->hidden_dim || ca->n_layers != cb->n_layers ||
        ca->n_heads != cb->n_heads || ca->n_kv_heads != cb->n_kv_heads || ca->vocab_size != cb->vocab_size)
        return 0;
    model_params *pa = model_get_params(a), *pb = model_get_params(b);
    size_t D = (size_t)ca->dim, H = (size_t)ca->hidden_dim, L = (size_t)ca->n_layers,
           V = (size_t)ca->vocab_size;
    size_t KV = (size_t)ca->n_kv_heads * (D / (size_t)ca->n_heads);
    struct {
        const float *x, *y;
        size_t n;
    } parts[] = {{pa->token_embedding, pb->token_embedding, V * D},
                 {pa->rms_att, pb->rms_att, L * D},
                 {pa->wq, pb->wq, L * D * D},
                 {pa->wk, pb->wk, L * KV * D},
                 {pa->wv, pb->wv, L * KV * D},
                 {pa->wo, pb->wo, L * D * D},
                 {pa->rms_ffn, pb->rms_ffn, L * D},
                 {pa->w1, pb->w1, L * H * D},
                 {pa->w2, pb->w2, L * H * D},
                 {pa->w3, pb->w3, L * H * D},
                 {pa->rms_final, pb->rms_final, D},
                 {pa->wcls, pb->wcls, V * D}};
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
        if (memcmp(parts[i].x, parts[i].y, parts[i].n * sizeof(float)) != 0) {
            fprintf(stderr, "  parameter group %zu differs\n", i);
            return 0;
        }
    return 1;
}

static void test_llama2c(const char *bin) {
    model *m = NULL;
    qlab_status st = checkpoint_load(bin, &m);
    CHECKF(st == QLAB_OK, "%s", qlab_last_error());
    if (!m) return;
    const model_config *c = model_get_config(m);
    CHECK(c->dim == 64 && c->hidden_dim == 172 && c->n_layers == 5 && c->n_heads == 8 && c->n_kv_heads == 4);
    CHECK(c->vocab_size == 512 && c->seq_len == 512 && c->shared_classifier == 1);
    CHECK(c->norm_eps == 1e-5f && c->rope_theta == 10000.0f);
    /* the weights are the file's floats in order: compare the whole weight section, and a few by position */
    char *raw;
    size_t len;
    CHECK(qlab_read_file(bin, &raw, &len) == QLAB_OK);
    size_t count;
    model_get_param_buffer(m, &count);
    CHECK(count == 260032); /* the model card's parameter count */
    CHECK(len == 28 + 4 * (count + 2 * 512 * 4));
    model_params *p = model_get_params(m);
    /* the file's sections in llama2.c's order, compared through the named views */
    const float *views[11] = {p->token_embedding, p->rms_att, p->wq, p->wk, p->wv,       p->wo,
                              p->rms_ffn,         p->w1,      p->w2, p->w3, p->rms_final};
    size_t sizes[11] = {512 * 64, 5 * 64,       5 * 64 * 64,  5 * 32 * 64,  5 * 32 * 64, 5 * 64 * 64,
                        5 * 64,   5 * 172 * 64, 5 * 64 * 172, 5 * 172 * 64, 64};
    size_t at = 28;
    for (int i = 0; i < 11; i++) {
        CHECKF(memcmp(views[i], raw + at, sizes[i] * sizeof(float)) == 0, "section %d", i);
        at += sizes[i] * sizeof(float);
    }
    CHECK(at == 28 + 4 * count);
    float first, wq_l1, last;
    memcpy(&first, raw + 28, 4);
    memcpy(&wq_l1, raw + 28 + 4 * (512 * 64 + 5 * 64 + 4096), 4); /* wq of layer 1, element 0 */
    memcpy(&last, raw + 28 + 4 * (count - 1), 4);                 /* rms_final[63] */
    CHECK(p->token_embedding[0] == first && p->wq[4096] == wq_l1 && p->rms_final[63] == last);
    CHECK(p->wcls == p->token_embedding);
    free(raw);

    /* save -> load is bit-exact, and the file equals llama2.c's except for the last bits of a few RoPE
     * table entries (PyTorch's float sin/cos vs glibc's sinf/cosf) */
    const char *out = tmp_path("roundtrip.bin");
    st = checkpoint_save_llama2c(m, out);
    CHECKF(st == QLAB_OK, "%s", qlab_last_error());
    model *back = NULL;
    CHECK(checkpoint_load(out, &back) == QLAB_OK);
    if (back) CHECK(same_params(m, back) && model_get_config(back)->shared_classifier == 1);
    model_free(back);
    char *a, *b;
    size_t la, lb;
    if (qlab_read_file(bin, &a, &la) == QLAB_OK && qlab_read_file(out, &b, &lb) == QLAB_OK) {
        CHECK(la == lb);
        size_t weights_end = 28 + 4 * count;
        CHECK(memcmp(a, b, weights_end) == 0);
        double worst = 0;
        for (size_t i = weights_end; i + 4 <= la && la == lb; i += 4) {
            float x, y;
            memcpy(&x, a + i, 4);
            memcpy(&y, b + i, 4);
            worst = fmax(worst, fabs((double)x - y));
        }
        /* |angle| <= 511 rad in float: one ulp of the angle (6e-5) is the scale of sinf/cos disagreement */
        CHECK_NEAR(worst, 0, 1e-4);
        free(a);
        free(b);
    }
    CHECK(access(out, F_OK) == 0);
    model_free(m);
}

static void test_gguf(const char *bin, const char *gguf) {
    model *mb = NULL, *mg = NULL;
    CHECK(checkpoint_load(bin, &mb) == QLAB_OK);
    qlab_status st = checkpoint_load(gguf, &mg);
    CHECKF(st == QLAB_OK, "%s", qlab_last_error());
    if (!mb || !mg) goto done;
    checkpoint_format fmt;
    CHECK(checkpoint_detect(gguf, &fmt) == QLAB_OK && fmt == CHECKPOINT_GGUF);
    CHECK(checkpoint_detect(bin, &fmt) == QLAB_OK && fmt == CHECKPOINT_LLAMA2C);
    const model_config *c = model_get_config(mg);
    CHECK(c->dim == 64 && c->hidden_dim == 172 && c->n_layers == 5 && c->n_heads == 8 && c->n_kv_heads == 4);
    CHECK(c->vocab_size == 512);
    CHECK(c->seq_len == 2048);        /* the GGUF's llama.context_length, not the .bin's 512 */
    CHECK(c->shared_classifier == 0); /* it stores output.weight, a copy of the embedding */
    CHECK(c->norm_eps == 1e-5f && c->rope_theta == 10000.0f);
    /* every tensor identical, with attn_q/attn_k copied as they are: GGUF stores Q/K rows in the same
     * interleaved order as llama2.c (no un-permutation) */
    CHECK(same_params(mb, mg));

    /* GGUF writer: F32 round-trips bit-exactly; F16 and BF16 give exactly the rounded matrices */
    const char *out = tmp_path("roundtrip.gguf");
    st = checkpoint_save_gguf(mg, out, CHECKPOINT_F32);
    CHECKF(st == QLAB_OK, "%s", qlab_last_error());
    model *back = NULL;
    CHECK(checkpoint_load(out, &back) == QLAB_OK);
    if (back) CHECK(same_params(mg, back) && model_get_config(back)->seq_len == 2048);
    model_free(back);
    st = checkpoint_save_gguf(mb, out, CHECKPOINT_F32); /* shared classifier: no output.weight written */
    back = NULL;
    CHECK(st == QLAB_OK && checkpoint_load(out, &back) == QLAB_OK);
    if (back) CHECK(same_params(mb, back) && model_get_config(back)->shared_classifier == 1);
    model_free(back);
    for (int dt = CHECKPOINT_F16; dt <= CHECKPOINT_BF16; dt++) {
        back = NULL;
        CHECK(checkpoint_save_gguf(mb, out, (checkpoint_dtype)dt) == QLAB_OK);
        CHECK(checkpoint_load(out, &back) == QLAB_OK);
        if (!back) continue;
        model_params *p = model_get_params(mb), *q = model_get_params(back);
        int exact = 1;
        for (size_t i = 0; i < 5 * 64 * 172; i++) {
            float want = dt == CHECKPOINT_F16 ? fp16_to_f32(f32_to_fp16(p->w1[i]))
                                              : bf16_to_f32(f32_to_bf16(p->w1[i]));
            exact &= q->w1[i] == want;
        }
        CHECK(exact);
        CHECK(memcmp(p->rms_att, q->rms_att, 5 * 64 * sizeof(float)) == 0); /* norms stay F32 */
        model_free(back);
    }
done:
    model_free(mb);
    model_free(mg);
}

/* Interleaved RoPE (ours) on q = W x, then the Hugging Face permutation, must equal half-split RoPE
 * (rotate_half) on q' = permute(W) x: this fixes the direction of the permutation, not just that it
 * round-trips. */
static void test_rotary_permutation(void) {
    enum { HEADS = 3, HS = 8, COLS = 5, HALF = HS / 2 };
    float w[HEADS * HS * COLS], wp[HEADS * HS * COLS], x[COLS];
    rng_state r;
    rng_seed(&r, 7);
    for (int i = 0; i < HEADS * HS * COLS; i++)
        w[i] = (float)rng_normal(&r);
    for (int i = 0; i < COLS; i++)
        x[i] = (float)rng_normal(&r);
    memcpy(wp, w, sizeof w);
    CHECK(checkpoint_permute_rotary_rows(wp, HEADS, HS, COLS, 1) == QLAB_OK);
    /* the definition in Hugging Face's conversion script: view(heads, HS/2, 2, cols).transpose(1, 2) */
    int same_def = 1;
    for (int h = 0; h < HEADS; h++)
        for (int i = 0; i < HALF; i++)
            for (int j = 0; j < 2; j++)
                same_def &= memcmp(&wp[((h * HS) + j * HALF + i) * COLS], &w[((h * HS) + 2 * i + j) * COLS],
                                   COLS * sizeof(float)) == 0;
    CHECK(same_def);
    double worst = 0;
    int pos = 37;
    for (int h = 0; h < HEADS; h++) {
        double q[HS], qp[HS], rot[HS], rotp[HS];
        for (int o = 0; o < HS; o++) {
            q[o] = qp[o] = 0;
            for (int c = 0; c < COLS; c++) {
                q[o] += (double)w[(h * HS + o) * COLS + c] * x[c];
                qp[o] += (double)wp[(h * HS + o) * COLS + c] * x[c];
            }
        }
        for (int i = 0; i < HALF; i++) {
            double angle = pos * pow(10000.0, -2.0 * i / HS), cs = cos(angle), sn = sin(angle);
            rot[2 * i] = q[2 * i] * cs - q[2 * i + 1] * sn; /* ours: pairs (2i, 2i+1) */
            rot[2 * i + 1] = q[2 * i] * sn + q[2 * i + 1] * cs;
            rotp[i] = qp[i] * cs - qp[i + HALF] * sn; /* rotate_half: pairs (i, i + HS/2) */
            rotp[i + HALF] = qp[i + HALF] * cs + qp[i] * sn;
        }
        for (int i = 0; i < HALF; i++)
            for (int j = 0; j < 2; j++)
                worst = fmax(worst, fabs(rot[2 * i + j] - rotp[j * HALF + i]));
    }
    CHECK_NEAR(worst, 0, 1e-9); /* double arithmetic on identical products: only rounding order differs */
    CHECK(checkpoint_permute_rotary_rows(wp, HEADS, HS, COLS, 0) == QLAB_OK);
    CHECK(memcmp(w, wp, sizeof w) == 0);
}

static void test_hf(const char *bin, const char *gguf) {
    model *mb = NULL, *mg = NULL, *back = NULL;
    CHECK(checkpoint_load(bin, &mb) == QLAB_OK);
    if (gguf) CHECK(checkpoint_load(gguf, &mg) == QLAB_OK);
    if (!mb) goto done;
    const char *dir = tmp_path("hf");
    qlab_status st = checkpoint_save_hf(mb, dir);
    CHECKF(st == QLAB_OK, "%s", qlab_last_error());
    checkpoint_format fmt;
    CHECK(checkpoint_detect(dir, &fmt) == QLAB_OK && fmt == CHECKPOINT_HF);
    st = checkpoint_load(dir, &back);
    CHECKF(st == QLAB_OK, "%s", qlab_last_error());
    if (back) {
        CHECK(same_params(mb, back));
        const model_config *c = model_get_config(back), *cb = model_get_config(mb);
        CHECK(c->shared_classifier == 1 && c->seq_len == cb->seq_len && c->norm_eps == cb->norm_eps &&
              c->rope_theta == cb->rope_theta);
    }
    model_free(back);
    back = NULL;
    /* loading through the config.json path is the same */
    CHECK(checkpoint_load(tmp_path("hf/config.json"), &back) == QLAB_OK && back && same_params(mb, back));
    model_free(back);
    back = NULL;
    /* an untied model writes lm_head.weight */
    if (mg) {
        CHECK(checkpoint_save_hf(mg, dir) == QLAB_OK);
        CHECK(checkpoint_load(dir, &back) == QLAB_OK);
        if (back) CHECK(same_params(mg, back) && model_get_config(back)->shared_classifier == 0);
        model_free(back);
        back = NULL;
    }
    /* fp16 / bf16 store the rounded values */
    for (int dt = CHECKPOINT_F16; dt <= CHECKPOINT_BF16; dt++) {
        CHECK(checkpoint_save_hf_dtype(mb, dir, (checkpoint_dtype)dt) == QLAB_OK);
        CHECK(checkpoint_load(dir, &back) == QLAB_OK);
        if (!back) continue;
        model_params *p = model_get_params(mb), *q = model_get_params(back);
        int exact = 1;
        for (size_t i = 0; i < 5 * 64 * 64; i++) {
            float want = dt == CHECKPOINT_F16 ? fp16_to_f32(f32_to_fp16(p->wq[i]))
                                              : bf16_to_f32(f32_to_bf16(p->wq[i]));
            exact &= q->wq[i] == want;
        }
        CHECK(exact);
        model_free(back);
        back = NULL;
    }
done:
    model_free(mb);
    model_free(mg);
}

/* A sharded checkpoint (two shards + model.safetensors.index.json, as transformers writes large models)
 * loads to the same weights as the single file it was split from. */
static void test_hf_sharded(const char *bin) {
    model *m = NULL, *back = NULL;
    CHECK(checkpoint_load(bin, &m) == QLAB_OK);
    if (!m) return;
    const char *dir = tmp_path("hf_sharded");
    CHECK(checkpoint_save_hf(m, dir) == QLAB_OK);
    safetensors_file f;
    char single[300];
    snprintf(single, sizeof single, "%s/model.safetensors", dir);
    if (safetensors_open(&f, single) != QLAB_OK) {
        CHECKF(0, "%s", qlab_last_error());
        model_free(m);
        return;
    }
    safetensors_writer *w[2] = {safetensors_writer_new(), safetensors_writer_new()};
    char index[16384];
    size_t used = (size_t)snprintf(index, sizeof index, "{\"metadata\": {}, \"weight_map\": {");
    for (int i = 0; i < f.n_tensors; i++) {
        const safetensors_tensor *t = &f.tensors[i];
        int shard = i % 2;
        CHECK(safetensors_writer_add_copy(w[shard], t->name, t->dtype, t->ndim, t->shape, t->data) ==
              QLAB_OK);
        used += (size_t)snprintf(index + used, sizeof index - used,
                                 "%s\"%s\": \"model-0000%d-of-00002.safetensors\"", i ? ", " : "", t->name,
                                 shard + 1);
    }
    snprintf(index + used, sizeof index - used, "}}");
    CHECK(used < sizeof index - 4);
    safetensors_close(&f);
    for (int s = 0; s < 2; s++) {
        char shard_path[300];
        snprintf(shard_path, sizeof shard_path, "%s/model-0000%d-of-00002.safetensors", dir, s + 1);
        CHECK(safetensors_writer_write(w[s], shard_path) == QLAB_OK);
        safetensors_writer_free(w[s]);
    }
    unlink(single);
    CHECK(qlab_write_file_atomic(tmp_path("hf_sharded/model.safetensors.index.json"), index, strlen(index)) ==
          QLAB_OK);
    qlab_status st = checkpoint_load(dir, &back);
    CHECKF(st == QLAB_OK, "%s", qlab_last_error());
    if (back) CHECK(same_params(m, back));
    model_free(back);
    model_free(m);
}

/* The same tokens through the .bin, the GGUF and the Hugging Face round trip give the same logits. */
static void test_logits(const char *bin, const char *gguf) {
    model *m[3] = {NULL, NULL, NULL};
    CHECK(checkpoint_load(bin, &m[0]) == QLAB_OK);
    CHECK(checkpoint_load(gguf, &m[1]) == QLAB_OK);
    const char *dir = tmp_path("hf_logits");
    if (m[0]) CHECK(checkpoint_save_hf(m[0], dir) == QLAB_OK && checkpoint_load(dir, &m[2]) == QLAB_OK);
    if (!m[0] || !m[1] || !m[2]) goto done;
    enum { T = 12, V = 512 };
    int tokens[T] = {1, 403, 407, 261, 378, 430, 261, 271, 394, 285, 307, 260};
    float *logits[3] = {NULL, NULL, NULL};
    int ran = 1;
    for (int i = 0; i < 3; i++) {
        logits[i] = calloc((size_t)T * V, sizeof(float));
        qlab_status st = model_forward(m[i], tokens, NULL, 1, T, logits[i], NULL);
        if (st != QLAB_OK) {
            SKIP("model_forward failed (%s); logits comparison not run", qlab_last_error());
            ran = 0;
            break;
        }
    }
    if (ran) {
        int finite = 1;
        for (size_t i = 0; i < (size_t)T * V; i++)
            finite &= isfinite(logits[0][i]);
        CHECK(finite);
        /* identical weights and identical arithmetic (the classifier copy of the GGUF holds the same
         * values as the tied embedding), so bit-identical logits */
        CHECK(memcmp(logits[0], logits[1], sizeof(float) * T * V) == 0);
        CHECK(memcmp(logits[0], logits[2], sizeof(float) * T * V) == 0);
    }
    for (int i = 0; i < 3; i++)
        free(logits[i]);
done:
    for (int i = 0; i < 3; i++)
        model_free(m[i]);
}

/* llama2.c's header has no RoPE base nor RMSNorm epsilon (run.c and checkpoint_load assume 10000 and
 * 1e-5): a model with others is refused by name and nothing is written, never saved as another model. */
static void test_llama2c_refuses_theta_eps(void) {
    const float thetas[2] = {500000.0f, 10000.0f}, eps[2] = {1e-5f, 1e-6f};
    const char *names[2] = {"rope_theta", "norm_eps"};
    for (int k = 0; k < 2; k++) {
        model_config c = {.dim = 16,
                          .hidden_dim = 32,
                          .n_layers = 1,
                          .n_heads = 2,
                          .n_kv_heads = 2,
                          .vocab_size = 20,
                          .seq_len = 8,
                          .norm_eps = eps[k],
                          .rope_theta = thetas[k],
                          .shared_classifier = 1};
        model *m = NULL;
        CHECK(model_create(&m, &c) == QLAB_OK);
        const char *out = tmp_path(k ? "eps.bin" : "theta.bin");
        qlab_status st = m ? checkpoint_save_llama2c(m, out) : QLAB_ERR_ARG;
        CHECKF(st == QLAB_ERR_UNSUPPORTED && strstr(qlab_last_error(), names[k]) && access(out, F_OK) != 0,
               "%s: status %d, '%s'", names[k], (int)st, st == QLAB_OK ? "" : qlab_last_error());
        model_free(m);
    }
}

int main(void) {
    test_tmp_dir_create("checkpoint");
    test_llama2c_refuses_theta_eps();
    test_rotary_permutation();
    const char *bin = shared_data_path("models/stories260K.bin");
    const char *gguf = shared_data_path("models/stories260K.gguf");
    if (!bin) {
        SKIP("../shared/data/models/stories260K.bin is absent: real-model checkpoint tests not run");
    } else {
        test_llama2c(bin);
        test_hf(bin, gguf);
        test_hf_sharded(bin);
        if (!gguf) {
            SKIP("../shared/data/models/stories260K.gguf is absent: GGUF tests not run");
        } else {
            test_gguf(bin, gguf);
            test_logits(bin, gguf);
        }
    }
    test_tmp_dir_remove();
    return check_summary();
}
