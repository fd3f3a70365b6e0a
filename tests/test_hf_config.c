/* Hugging Face config.json as transformers writes it today (core/model/checkpoint_hf.c): rope_theta inside
 * "rope_parameters" (transformers 5) or top-level (older), a conflict between them refused; linear and
 * llama3 RoPE scaling computed (checked against a hand computation), other scalings and biases refused
 * by name, never ignored; the writer keeps theta, eps and BOS/EOS (config.json and
 * generation_config.json), and so does `qlab merge`; `qlab convert --to llama2c` and `qlab merge --to
 * llama2c` refuse what llama2.c cannot store. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "tests/check.h"
#include "core/base/common.h"
#include "core/base/rng.h"
#include "core/model/checkpoint.h"
#include "core/model/lora.h"
#include "core/model/lora_peft.h"
#include "tests/test_util.h"

static char dir[512], config[600];
static char *original; /* config.json as the writer made it */

/* Rewrites config.json from the original with edit applied. */
static void write_config(void (*edit)(cJSON *root)) {
    cJSON *root = cJSON_Parse(original);
    if (edit) edit(root);
    char *text = cJSON_Print(root);
    write_bytes(config, text, strlen(text));
    free(text);
    cJSON_Delete(root);
}

static void drop_top_theta(cJSON *r) {
    cJSON_DeleteItemFromObject(r, "rope_theta");
}
static void drop_params(cJSON *r) {
    cJSON_DeleteItemFromObject(r, "rope_parameters");
}
static void drop_both(cJSON *r) {
    drop_top_theta(r), drop_params(r);
}
static void conflict(cJSON *r) {
    cJSON_ReplaceItemInObject(r, "rope_theta", cJSON_CreateNumber(10000));
}
static void llama3_incomplete(cJSON *r) {
    cJSON *p = cJSON_GetObjectItem(r, "rope_parameters");
    cJSON_ReplaceItemInObject(p, "rope_type", cJSON_CreateString("llama3"));
    cJSON_AddNumberToObject(p, "factor", 8);
}
static void llama3(cJSON *r) { /* Llama 3.1's values (original 8192, factors 8, 1, 4) */
    llama3_incomplete(r);
    cJSON *p = cJSON_GetObjectItem(r, "rope_parameters");
    cJSON_AddNumberToObject(p, "low_freq_factor", 1);
    cJSON_AddNumberToObject(p, "high_freq_factor", 4);
    cJSON_AddNumberToObject(p, "original_max_position_embeddings", 8192);
}
static void dynamic_scaling(cJSON *r) {
    cJSON *s = cJSON_AddObjectToObject(r, "rope_scaling");
    cJSON_AddStringToObject(s, "rope_type", "dynamic");
    cJSON_AddNumberToObject(s, "factor", 2);
}
static void scaling_mismatch(cJSON *r) {
    llama3(r);
    cJSON *s = cJSON_AddObjectToObject(r, "rope_scaling");
    cJSON_AddStringToObject(s, "type", "linear");
    cJSON_AddNumberToObject(s, "factor", 8);
}
static void linear_scaling(cJSON *r) {
    cJSON *s = cJSON_AddObjectToObject(r, "rope_scaling");
    cJSON_AddStringToObject(s, "type", "linear");
    cJSON_AddNumberToObject(s, "factor", 2);
}
static void default_scaling(cJSON *r) {
    cJSON *s = cJSON_AddObjectToObject(r, "rope_scaling");
    cJSON_AddStringToObject(s, "rope_type", "default");
}
static void partial(cJSON *r) {
    cJSON_AddNumberToObject(cJSON_GetObjectItem(r, "rope_parameters"), "partial_rotary_factor", 0.5);
}
static void attn_bias(cJSON *r) {
    cJSON_ReplaceItemInObject(r, "attention_bias", cJSON_CreateTrue());
}
static void mlp_bias(cJSON *r) {
    cJSON_ReplaceItemInObject(r, "mlp_bias", cJSON_CreateTrue());
}
static void bias_string(cJSON *r) {
    cJSON_ReplaceItemInObject(r, "mlp_bias", cJSON_CreateString("no"));
}

static float theta_of(void) {
    model *m = NULL;
    qlab_status st = checkpoint_load(dir, &m);
    CHECKF(st == QLAB_OK, "%s", qlab_last_error());
    float t = m ? model_get_config(m)->rope_theta : -1;
    model_free(m);
    return t;
}

static void refused(void (*edit)(cJSON *), qlab_status want, const char *word) {
    write_config(edit);
    model *m = NULL;
    qlab_status st = checkpoint_load(dir, &m);
    CHECKF(st == want && m == NULL, "status %d, want %d (%s)", (int)st, (int)want, word);
    CHECKF(strstr(qlab_last_error(), word) && strstr(qlab_last_error(), "config.json"),
           "message lacks \"%s\": %s", word, qlab_last_error());
    model_free(m);
}

/* Inverse frequencies by hand (double, transformers' formulas) for theta 500000, head size 8: pairs
 * 0..3 have wavelengths 6.3, 167.6, 4443 and 117,800 positions, so with original 8192 and factors 1 / 4
 * (wavelength bounds 8192 and 2048) llama3 keeps pairs 0 and 1, blends pair 2 and divides pair 3. */
static void test_rope_scaling(void) {
    const double pi = 3.14159265358979323846;
    model_config lin = {.rope_theta = 500000.0f, .rope_scaling = MODEL_ROPE_LINEAR, .rope_factor = 2.0f};
    model_config l3 = {.rope_theta = 500000.0f,
                       .rope_scaling = MODEL_ROPE_LLAMA3,
                       .rope_factor = 8.0f,
                       .rope_low_freq_factor = 1.0f,
                       .rope_high_freq_factor = 4.0f,
                       .rope_original_max_positions = 8192};
    model_config plain = {.rope_theta = 500000.0f};
    for (int i = 0; i < 4; i++) {
        double f = pow(500000.0, -2.0 * i / 8.0), wavelength = 2 * pi / f, want3;
        if (wavelength < 8192.0 / 4.0)
            want3 = f;
        else if (wavelength > 8192.0 / 1.0)
            want3 = f / 8.0;
        else {
            double smooth = (8192.0 / wavelength - 1.0) / (4.0 - 1.0);
            want3 = (1 - smooth) * f / 8.0 + smooth * f;
            CHECKF(i == 2 && smooth > 0 && smooth < 1, "pair %d blended (smooth %g)", i, smooth);
        }
        double got0 = model_rope_frequency(&plain, i, 8), got1 = model_rope_frequency(&lin, i, 8),
               got3 = model_rope_frequency(&l3, i, 8);
        /* fp32 evaluation of the same formulas: a few fp32 roundings (powf, divisions) from double */
        CHECKF(fabs(got0 - f) <= 4e-7 * f, "plain pair %d: %.9g vs %.9g", i, got0, f);
        CHECKF(fabs(got1 - f / 2) <= 4e-7 * f / 2, "linear pair %d: %.9g vs %.9g", i, got1, f / 2);
        CHECKF(fabs(got3 - want3) <= 1e-6 * want3, "llama3 pair %d: %.9g vs %.9g", i, got3, want3);
    }

    /* read from config.json, used by the forward pass, written back in both places */
    write_config(llama3);
    model *m = NULL, *plain_m = NULL, *back = NULL;
    CHECKF(checkpoint_load(dir, &m) == QLAB_OK, "%s", qlab_last_error());
    if (!m) return;
    const model_config *c = model_get_config(m);
    CHECK(c->rope_scaling == MODEL_ROPE_LLAMA3 && c->rope_factor == 8.0f && c->rope_low_freq_factor == 1.0f &&
          c->rope_high_freq_factor == 4.0f && c->rope_original_max_positions == 8192);
    write_config(NULL);
    CHECK(checkpoint_load(dir, &plain_m) == QLAB_OK);
    int tokens[64];
    for (int t = 0; t < 64; t++)
        tokens[t] = (t * 7) % 50;
    float *a = malloc(sizeof(float) * 64 * 50), *b = malloc(sizeof(float) * 64 * 50);
    CHECK(model_forward(m, tokens, NULL, 1, 64, a, NULL) == QLAB_OK &&
          model_forward(plain_m, tokens, NULL, 1, 64, b, NULL) == QLAB_OK);
    /* position 0 has angle 0 either way; later positions differ through the scaled pairs */
    CHECK(memcmp(a, b, sizeof(float) * 50) == 0 && memcmp(a + 63 * 50, b + 63 * 50, sizeof(float) * 50) != 0);
    free(a);
    free(b);
    char out[600];
    snprintf(out, sizeof out, "%s/hf_llama3", test_tmp_dir());
    CHECK(checkpoint_save_hf(m, out) == QLAB_OK);
    CHECKF(checkpoint_load(out, &back) == QLAB_OK, "%s", qlab_last_error());
    if (back) {
        const model_config *d = model_get_config(back);
        CHECK(d->rope_scaling == MODEL_ROPE_LLAMA3 && d->rope_factor == 8.0f &&
              d->rope_low_freq_factor == 1.0f && d->rope_high_freq_factor == 4.0f &&
              d->rope_original_max_positions == 8192);
    }
    /* formats that cannot store it refuse by name */
    snprintf(out, sizeof out, "%s/x.gguf", test_tmp_dir());
    CHECK(checkpoint_save_gguf(m, out, CHECKPOINT_F32) == QLAB_ERR_UNSUPPORTED &&
          strstr(qlab_last_error(), "llama3") && access(out, F_OK) != 0);
    snprintf(out, sizeof out, "%s/x.bin", test_tmp_dir());
    CHECK(checkpoint_save_llama2c(m, out) == QLAB_ERR_UNSUPPORTED && strstr(qlab_last_error(), "llama3") &&
          access(out, F_OK) != 0);
    model_free(back);
    model_free(plain_m);
    model_free(m);
    write_config(linear_scaling);
    CHECKF(checkpoint_load(dir, &m) == QLAB_OK, "%s", qlab_last_error());
    CHECK(m && model_get_config(m)->rope_scaling == MODEL_ROPE_LINEAR &&
          model_get_config(m)->rope_factor == 2.0f);
    model_free(m);
}

/* qlab merge writes what qlab convert writes: the base's BOS/EOS (7, 9) in the merged Hugging Face
 * directory, and a refusal (rope_theta 500000) instead of a llama2.c file that would run with 10000. */
static void test_merge(const char *qlab) {
    model *m = NULL;
    lora_set *l = NULL;
    lora_config lc = {.targets = LORA_TARGETS_QV, .rank = 2, .alpha = 4, .seed = 1};
    static char adapter[600], out[600], cmd[4096], log[600], path[700];
    char *text = NULL;
    snprintf(adapter, sizeof adapter, "%s/adapter", test_tmp_dir());
    snprintf(log, sizeof log, "%s/merge_log", test_tmp_dir());
    CHECK(checkpoint_load(dir, &m) == QLAB_OK && lora_create(&l, model_get_config(m), &lc) == QLAB_OK &&
          lora_save_peft(l, adapter, NULL) == QLAB_OK);
    lora_free(l);
    model_free(m);
    snprintf(out, sizeof out, "%s/merged_hf", test_tmp_dir());
    snprintf(cmd, sizeof cmd, "%s merge --model %s --adapter %s --out %s >%s 2>&1", qlab, dir, adapter, out,
             log);
    CHECKF(run_shell(cmd) == 0, "%s", cmd);
    int bos = -1, eos = -1;
    snprintf(path, sizeof path, "%s/generation_config.json", out);
    CHECKF(checkpoint_special_ids(out, &bos, &eos) == QLAB_OK && bos == 7 && eos == 9 &&
               access(path, F_OK) == 0,
           "merged BOS %d EOS %d, generation_config.json %s", bos, eos,
           access(path, F_OK) ? "missing" : "present");
    snprintf(out, sizeof out, "%s/merged.bin", test_tmp_dir());
    snprintf(cmd, sizeof cmd, "%s merge --model %s --adapter %s --out %s --to llama2c >%s 2>&1", qlab, dir,
             adapter, out, log);
    int rc = run_shell(cmd);
    size_t len;
    CHECK(rc == 1 && access(out, F_OK) != 0);
    CHECK(qlab_read_file(log, &text, &len) == QLAB_OK && strstr(text, "cannot store rope_theta = 500000"));
    free(text);
}

int main(void) {
    test_tmp_dir_create("hf_config");
    snprintf(dir, sizeof dir, "%s/hf", test_tmp_dir());
    snprintf(config, sizeof config, "%s/config.json", dir);
    model_config cfg = {.dim = 32,
                        .hidden_dim = 64,
                        .n_layers = 2,
                        .n_heads = 4,
                        .n_kv_heads = 2,
                        .vocab_size = 50,
                        .seq_len = 64,
                        .norm_eps = 1e-6f,
                        .rope_theta = 500000.0f,
                        .shared_classifier = 1};
    model *m = NULL;
    CHECK(model_create(&m, &cfg) == QLAB_OK);
    size_t n = 0;
    float *w = model_get_param_buffer(m, &n);
    rng_state r;
    rng_seed(&r, 3);
    for (size_t i = 0; i < n; i++)
        w[i] = 0.1f * (float)rng_normal(&r);
    CHECK(checkpoint_save_hf_ids(m, dir, CHECKPOINT_F32, 7, 9) == QLAB_OK);
    model_free(m);
    size_t len;
    CHECK(qlab_read_file(config, &original, &len) == QLAB_OK);

    /* the written config reads back: theta and eps kept, both spellings of theta present */
    cJSON *root = cJSON_Parse(original);
    cJSON *params = cJSON_GetObjectItem(root, "rope_parameters");
    CHECK(cJSON_GetObjectItem(root, "rope_theta")->valuedouble == 500000.0);
    CHECK(params && cJSON_GetObjectItem(params, "rope_theta")->valuedouble == 500000.0 &&
          !strcmp(cJSON_GetObjectItem(params, "rope_type")->valuestring, "default"));
    CHECK(cJSON_GetObjectItem(root, "bos_token_id")->valuedouble == 7 &&
          cJSON_GetObjectItem(root, "eos_token_id")->valuedouble == 9);
    CHECK(cJSON_IsFalse(cJSON_GetObjectItem(root, "attention_bias")) &&
          cJSON_IsFalse(cJSON_GetObjectItem(root, "mlp_bias")));
    cJSON_Delete(root);
    char gen[600];
    snprintf(gen, sizeof gen, "%s/generation_config.json", dir);
    char *gtext = NULL;
    CHECK(qlab_read_file(gen, &gtext, &len) == QLAB_OK);
    cJSON *g = cJSON_Parse(gtext);
    CHECK(g && cJSON_GetObjectItem(g, "bos_token_id")->valuedouble == 7 &&
          cJSON_GetObjectItem(g, "eos_token_id")->valuedouble == 9);
    cJSON_Delete(g);
    free(gtext);
    int bos = 0, eos = 0;
    CHECK(checkpoint_special_ids(dir, &bos, &eos) == QLAB_OK && bos == 7 && eos == 9);
    model *back = NULL;
    CHECK(checkpoint_load(dir, &back) == QLAB_OK && back && model_get_config(back)->norm_eps == 1e-6f);
    model_free(back);

    /* theta from either place */
    CHECK(theta_of() == 500000.0f);
    write_config(drop_top_theta); /* transformers 5 */
    CHECK(theta_of() == 500000.0f);
    write_config(drop_params); /* transformers 4 */
    CHECK(theta_of() == 500000.0f);
    write_config(drop_both); /* LlamaConfig's default */
    CHECK(theta_of() == 10000.0f);
    write_config(default_scaling); /* an explicit "default" rope_scaling is plain RoPE */
    CHECK(theta_of() == 500000.0f);

    /* refusals, by name */
    refused(conflict, QLAB_ERR_FORMAT, "rope_parameters.rope_theta");
    refused(llama3_incomplete, QLAB_ERR_FORMAT, "rope_parameters.low_freq_factor");
    refused(dynamic_scaling, QLAB_ERR_UNSUPPORTED, "rope_scaling.rope_type is \"dynamic\"");
    refused(scaling_mismatch, QLAB_ERR_FORMAT, "different scalings");
    test_rope_scaling();
    refused(partial, QLAB_ERR_UNSUPPORTED, "partial_rotary_factor");
    refused(attn_bias, QLAB_ERR_UNSUPPORTED, "attention_bias");
    refused(mlp_bias, QLAB_ERR_UNSUPPORTED, "mlp_bias");
    refused(bias_string, QLAB_ERR_FORMAT, "mlp_bias");

    /* qlab convert --to llama2c refuses theta 500000 and writes nothing */
    write_config(NULL);
    char qlab[600], cmd[2048], out[600];
    snprintf(qlab, sizeof qlab, "%s/bin/qlab", getenv("QLAB_BUILD") ? getenv("QLAB_BUILD") : "build");
    snprintf(out, sizeof out, "%s/out.bin", test_tmp_dir());
    if (access(qlab, X_OK) == 0) {
        snprintf(cmd, sizeof cmd, "%s convert --to llama2c %s %s >%s/log 2>&1", qlab, dir, out,
                 test_tmp_dir());
        int rc = run_shell(cmd);
        char log[600], *text = NULL;
        snprintf(log, sizeof log, "%s/log", test_tmp_dir());
        CHECK(rc == 1 && access(out, F_OK) != 0);
        CHECK(qlab_read_file(log, &text, &len) == QLAB_OK &&
              strstr(text, "cannot store rope_theta = 500000"));
        free(text);
        test_merge(qlab);
    } else {
        SKIP("build/bin/qlab not built: convert refusal not run");
    }
    free(original);
    test_tmp_dir_remove();
    return check_summary();
}
