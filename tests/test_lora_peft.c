/* Tests of LoRA adapters in Hugging Face PEFT's layout (core/model/lora_peft.h): for every target module,
 * q_proj and k_proj included (whose rows qlab keeps in the interleaved rotary order), the weight merged in
 * Hugging Face's order equals W_hf + (alpha/r) B A computed here in double from the files alone (the base
 * written by the Hugging Face checkpoint writer and the adapter as PEFT would read it); the qlab forward
 * with the adapter equals the forward of the merged model; save/load round trips are bit-exact; and what
 * qlab cannot apply is refused by name. Cross-checked once against the real PEFT 0.21.2 + transformers
 * 5.25 on stories260K (8 query / 4 key-value heads, r 4 on all seven modules, B ~ N(0, 0.2)): logits of
 * PeftModel.from_pretrained on the qlab adapter matched qlab's to 5.3e-5 (the adapter moves them by 21.7),
 * and a PEFT-saved adapter loaded by lora_load_peft matched PEFT's logits to 2.6e-5. */
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/check.h"
#include "tests/test_util.h"
#include "core/base/common.h"
#include "core/base/rng.h"
#include "core/formats/safetensors.h"
#include "core/model/checkpoint.h"
#include "core/model/lora.h"
#include "core/model/lora_peft.h"
#include "core/model/model.h"

static rng_state rng;

static model_config tiny_config(void) {
    /* 4 query heads sharing 2 key/value heads (grouped-query), head size 8: the permutation is per head. */
    model_config c = {.dim = 32,
                      .hidden_dim = 48,
                      .n_layers = 2,
                      .n_heads = 4,
                      .n_kv_heads = 2,
                      .vocab_size = 40,
                      .seq_len = 16,
                      .norm_eps = 1e-5f,
                      .rope_theta = 10000.0f,
                      .shared_classifier = 0};
    return c;
}

static model *random_model(const model_config *c) {
    model *m = NULL;
    if (model_create(&m, c) != QLAB_OK) {
        fprintf(stderr, "model_create: %s\n", qlab_last_error());
        exit(2);
    }
    size_t n;
    float *p = model_get_param_buffer(m, &n);
    for (size_t i = 0; i < n; i++)
        p[i] = (float)(0.2 * rng_normal(&rng));
    for (int g = 0; g < MODEL_GROUP_COUNT; g++)
        if (g == MODEL_GROUP_RMS_ATT || g == MODEL_GROUP_RMS_FFN || g == MODEL_GROUP_RMS_FINAL) {
            model_param_group pg = model_get_param_group(m, (model_group)g);
            for (size_t i = 0; i < pg.count; i++)
                p[pg.offset + i] = (float)(1.0 + 0.1 * rng_normal(&rng));
        }
    return m;
}

static const char *hf_module(model_proj p) {
    return p <= PROJ_O ? "self_attn" : "mlp";
}

/* A (rows, cols) F32 tensor of an open file, or NULL (with a failed check). */
static const float *tensor_f32(const safetensors_file *f, const char *name, int64_t rows, int64_t cols) {
    const safetensors_tensor *t = safetensors_find(f, name);
    CHECKF(t && t->dtype == SAFETENSORS_F32 && t->ndim == 2 && t->shape[0] == rows && t->shape[1] == cols,
           "%s: %s missing or of another shape", f->path, name);
    if (!t || t->dtype != SAFETENSORS_F32 || t->ndim != 2 || t->shape[0] != rows || t->shape[1] != cols)
        return NULL;
    return (const float *)t->data;
}

/* rslora: PEFT's use_rslora, whose scale is lora_alpha / math.sqrt(r) (PEFT 0.21.2 LoraLayer.update_layer).
 */
static void test_merge_in_hf_order(int rslora) {
    model_config c = tiny_config();
    model *m = random_model(&c);
    lora_config lc = {
        .targets = LORA_TARGETS_ALL, .rank = 3, .alpha = 6.0f, .dropout = 0.1f, .seed = 5, .rslora = rslora};
    lora_set *l = NULL;
    CHECK(lora_create(&l, &c, &lc) == QLAB_OK);
    size_t n;
    float *p = lora_get_param_buffer(l, &n);
    for (size_t i = 0; i < n; i++)
        p[i] = (float)(0.3 * rng_normal(&rng)); /* B non-zero: every row of every module matters */
    const char *base_dir = tmp_path(rslora ? "base_rs" : "base"),
               *adapter_dir = tmp_path(rslora ? "adapter_rs" : "adapter"),
               *merged_dir = tmp_path(rslora ? "merged_rs" : "merged");
    qlab_status st = checkpoint_save_hf(m, base_dir);
    CHECKF(st == QLAB_OK, "%s", qlab_last_error());
    st = lora_save_peft(l, adapter_dir, base_dir);
    CHECKF(st == QLAB_OK, "%s", qlab_last_error());

    /* The merge in qlab's own order, written by the Hugging Face writer. */
    model *merged = NULL;
    CHECK(model_create(&merged, &c) == QLAB_OK);
    memcpy(model_get_param_buffer(merged, NULL), model_get_param_buffer(m, NULL),
           model_num_params(&c) * sizeof(float));
    CHECK(lora_merge(l, merged) == QLAB_OK);
    st = checkpoint_save_hf(merged, merged_dir);
    CHECKF(st == QLAB_OK, "%s", qlab_last_error());

    /* The independent computation, from the files only: W_hf + (alpha/r) B_file A_file. */
    char path[600], name[160];
    safetensors_file base, adapter, out;
    snprintf(path, sizeof path, "%s/model.safetensors", base_dir);
    CHECK(safetensors_open(&base, path) == QLAB_OK);
    snprintf(path, sizeof path, "%s/%s", adapter_dir, LORA_PEFT_WEIGHTS);
    CHECK(safetensors_open(&adapter, path) == QLAB_OK);
    snprintf(path, sizeof path, "%s/model.safetensors", merged_dir);
    CHECK(safetensors_open(&out, path) == QLAB_OK);
    CHECK(adapter.n_tensors == 2 * PROJ_COUNT * c.n_layers);
    const char *fmt = safetensors_metadata(&adapter, "format");
    CHECK(fmt && !strcmp(fmt, "pt"));
    double scale = rslora ? lc.alpha / sqrt(lc.rank) : lc.alpha / lc.rank;
    CHECKF(lora_scale(l) == (float)scale, "scale %.9g, PEFT's %.9g", lora_scale(l), scale);
    for (int layer = 0; layer < c.n_layers; layer++)
        for (int pj = 0; pj < PROJ_COUNT; pj++) {
            linear_weight lw = model_get_linear(m, layer, (model_proj)pj);
            int OC = lw.out_features, IC = lw.in_features, r = lc.rank;
            const char *mod = model_proj_name((model_proj)pj), *blk = hf_module((model_proj)pj);
            snprintf(name, sizeof name, "model.layers.%d.%s.%s.weight", layer, blk, mod);
            const float *W = tensor_f32(&base, name, OC, IC), *Wm = tensor_f32(&out, name, OC, IC);
            snprintf(name, sizeof name, "base_model.model.model.layers.%d.%s.%s.lora_A.weight", layer, blk,
                     mod);
            const float *A = tensor_f32(&adapter, name, r, IC);
            snprintf(name, sizeof name, "base_model.model.model.layers.%d.%s.%s.lora_B.weight", layer, blk,
                     mod);
            const float *B = tensor_f32(&adapter, name, OC, r);
            if (!W || !Wm || !A || !B) continue;
            double worst = 0, moved = 0;
            for (int o = 0; o < OC; o++)
                for (int i = 0; i < IC; i++) {
                    double d = 0;
                    for (int k = 0; k < r; k++)
                        d += (double)B[(size_t)o * r + k] * A[(size_t)k * IC + i];
                    double want = W[(size_t)o * IC + i] + scale * d;
                    worst = fmax(worst, fabs(want - Wm[(size_t)o * IC + i]));
                    moved = fmax(moved, fabs(scale * d));
                }
            /* fp32 GEMM vs double: a few ulps of values ~1; a wrong row order is off by ~moved (~1). */
            CHECKF(worst < 1e-5 && moved > 0.1, "layer %d %s: merged HF weight off by %g (adapter moves %g)",
                   layer, mod, worst, moved);
        }
    safetensors_close(&base);
    safetensors_close(&adapter);
    safetensors_close(&out);

    /* The qlab forward with the adapter equals the forward of the merged model read back from HF. */
    model *reread = NULL;
    st = checkpoint_load_hf(merged_dir, &reread);
    CHECKF(st == QLAB_OK, "%s", qlab_last_error());
    enum { T = 12 };
    int tokens[T];
    for (int t = 0; t < T; t++)
        tokens[t] = (int)rng_below(&rng, (uint64_t)c.vocab_size);
    float *z_adapter = malloc(sizeof(float) * T * c.vocab_size),
          *z_merged = malloc(sizeof(float) * T * c.vocab_size);
    lora_set_training(l, 0);
    CHECK(lora_attach(l, m, 1) == QLAB_OK);
    CHECK(model_forward(m, tokens, NULL, 1, T, z_adapter, NULL) == QLAB_OK);
    if (reread) CHECK(model_forward(reread, tokens, NULL, 1, T, z_merged, NULL) == QLAB_OK);
    double worst = 0;
    for (int i = 0; i < T * c.vocab_size; i++)
        worst = fmax(worst, fabs((double)z_adapter[i] - z_merged[i]));
    CHECKF(worst < 1e-4, "forward with the adapter vs the merged model: max |diff| %g", worst);

    /* lora_load_peft reads the directory back bit for bit, with the configuration of adapter_config.json. */
    lora_set *back = NULL;
    st = lora_load_peft(adapter_dir, &c, &back);
    CHECKF(st == QLAB_OK, "%s", qlab_last_error());
    if (back) {
        const lora_config *bc = lora_get_config(back);
        CHECK(bc->targets == lc.targets && bc->rank == lc.rank && bc->alpha == lc.alpha &&
              bc->dropout == lc.dropout && bc->rslora == rslora && lora_scale(back) == lora_scale(l));
        size_t nb;
        CHECK(memcmp(lora_get_param_buffer(back, &nb), p, n * sizeof(float)) == 0 && nb == n);
        lora_free(back);
    }
    char *base_model = NULL;
    lora_config rc;
    snprintf(path, sizeof path, "%s/%s", adapter_dir, LORA_PEFT_CONFIG);
    CHECK(lora_read_peft_config(path, &rc, &base_model) == QLAB_OK && base_model &&
          !strcmp(base_model, base_dir));
    free(base_model);
    CHECK(rc.rslora == rslora);
    printf("  merged Hugging Face weights = W_hf + (alpha/%s) B A for all 7 modules x %d layers; adapter vs "
           "merged forward max |diff| %.2g\n",
           rslora ? "sqrt(r)" : "r", c.n_layers, worst);

    lora_detach(m);
    lora_free(l);
    model_free(m);
    model_free(merged);
    model_free(reread);
    free(z_adapter);
    free(z_merged);
}

/* Writes adapter_config.json: a valid configuration with extra (more keys) added, and reads it back. */
static qlab_status read_config_with(const char *dir, const char *extra) {
    char text[1024], path[600];
    snprintf(text, sizeof text,
             "{\"peft_type\": \"LORA\", \"task_type\": \"CAUSAL_LM\", \"r\": 3, \"lora_alpha\": 6, "
             "\"target_modules\": [\"q_proj\", \"v_proj\"]%s}",
             extra);
    snprintf(path, sizeof path, "%s/%s", dir, LORA_PEFT_CONFIG);
    write_bytes(path, text, strlen(text));
    lora_config lc;
    return lora_read_peft_config(dir, &lc, NULL);
}

/* The configuration with extra is refused with a message naming adapter_config.json and `expect`. */
static void expect_config_refused(const char *dir, const char *extra, const char *expect) {
    qlab_status st = read_config_with(dir, extra);
    CHECKF(st != QLAB_OK && strstr(qlab_last_error(), expect) &&
               strstr(qlab_last_error(), "adapter_config.json"),
           "config with %s: status %d, message '%s' (expected one naming '%s')", extra, (int)st,
           st == QLAB_OK ? "" : qlab_last_error(), expect);
}

/* The same valid configuration with one key added is accepted. */
static void expect_config_accepted(const char *dir, const char *extra) {
    qlab_status st = read_config_with(dir, extra);
    CHECKF(st == QLAB_OK, "config with %s refused: %s", extra, st == QLAB_OK ? "" : qlab_last_error());
}

/* PeftModel.from_pretrained (PEFT 0.21.2) redoes a PiSSA/OLoRA/... initialisation on load, rewriting the
 * base weights before A and B are loaded: measured on stories260K, a PiSSA adapter's logits on the plain
 * base plus B A were 12.2 away from PEFT's, OLoRA's 20.1 (a "gaussian" one's 5e-5). Such adapters, and
 * the variants whose forward is not W x + s B A x, are refused; the inits that only draw A and B and
 * VeLoRA (backward only) are accepted. */
static void test_peft_inits_and_variants(void) {
    const char *dir = tmp_path("inits");
    CHECK(mkdir(dir, 0777) == 0);
    const char *rewriting[] = {"\"pissa\"", "\"pissa_niter_4\"", "\"olora\"", "\"corda\"",
                               "\"loftq\"", "\"lora_ga\"",       "\"mica\""};
    char extra[128];
    for (size_t i = 0; i < sizeof rewriting / sizeof rewriting[0]; i++) {
        snprintf(extra, sizeof extra, ", \"init_lora_weights\": %s", rewriting[i]);
        expect_config_refused(dir, extra, "init_lora_weights");
    }
    const char *drawing[] = {"true", "false", "\"gaussian\"", "\"orthogonal\"", "\"eva\""};
    for (size_t i = 0; i < sizeof drawing / sizeof drawing[0]; i++) {
        snprintf(extra, sizeof extra, ", \"init_lora_weights\": %s", drawing[i]);
        expect_config_accepted(dir, extra);
    }
    expect_config_refused(dir, ", \"arrow_config\": {\"top_k\": 3}", "arrow_config");
    expect_config_refused(dir, ", \"use_bdlora\": {\"nblocks\": 2}", "use_bdlora");
    expect_config_refused(dir, ", \"monteclora_config\": {\"n_samples\": 4}", "monteclora_config");
    expect_config_refused(dir, ", \"kasa_config\": {}", "kasa_config"); /* {} is KasaConfig() */
    expect_config_accepted(dir, ", \"velora_config\": {\"num_groups\": 4}, \"loftq_config\": {}, "
                                "\"arrow_config\": null, \"use_bdlora\": null, \"kasa_config\": null");
}

/* target_modules as config text, read for a model of config c: its target mask, or 0 with the error. The
 * weights file holds the adapters of the targets lora_read_peft_config reads (which, knowing no model,
 * matches the names of a one-layer model), or with `weights` non-zero those of `weights`. */
static unsigned targets_of_weights(const model_config *c, const char *tm, unsigned weights) {
    const char *dir = tmp_path("targets");
    mkdir(dir, 0777);
    char text[512], path[600];
    snprintf(text, sizeof text, "{\"peft_type\": \"LORA\", \"r\": 2, \"target_modules\": %s}", tm);
    snprintf(path, sizeof path, "%s/%s", dir, LORA_PEFT_CONFIG);
    write_bytes(path, text, strlen(text));
    lora_config lc = {.targets = weights, .rank = 2, .alpha = 8};
    if (!weights && lora_read_peft_config(dir, &lc, NULL) != QLAB_OK) return 0;
    /* the weights of those targets, so that lora_load_peft checks target_modules on every layer */
    lora_set *l = NULL, *back = NULL;
    CHECK(lora_create(&l, c, &lc) == QLAB_OK);
    snprintf(path, sizeof path, "%s/%s", dir, LORA_PEFT_WEIGHTS);
    CHECK(l && lora_save(l, path) == QLAB_OK);
    lora_free(l);
    qlab_status st = lora_load_peft(dir, c, &back);
    unsigned got = back ? lora_get_config(back)->targets : 0;
    lora_free(back);
    return st == QLAB_OK ? got : 0;
}

static unsigned targets_of(const model_config *c, const char *tm) {
    return targets_of_weights(c, tm, 0);
}

/* target_modules as PEFT 0.21.2 matches it against LlamaForCausalLM's module names: a list entry is the
 * name or its end after a dot, a string a regular expression matched with re.fullmatch (so the string
 * "q_proj" selects nothing: PEFT raises "Target modules q_proj not found in the base model", while
 * ".*\.(q_proj|v_proj)" is an adapter PEFT saves as it is). A selection qlab cannot apply (an embedding,
 * lm_head, some layers only, a Python-only pattern) is refused by name. */
static void test_target_modules(void) {
    model_config c = tiny_config(); /* 2 layers */
    unsigned q = LORA_TARGET(PROJ_Q), v = LORA_TARGET(PROJ_V), down = LORA_TARGET(PROJ_DOWN);
    CHECK(targets_of(&c, "[\"q_proj\", \"v_proj\"]") == (q | v));
    CHECK(targets_of(&c, "[\"self_attn.q_proj\", \"mlp.down_proj\", \"q_proj\"]") == (q | down));
    CHECK(targets_of(&c, "\".*\\\\.(q_proj|v_proj)\"") == (q | v));
    CHECK(targets_of(&c, "\".*q_proj\"") == q);
    CHECK(targets_of(&c, "\"model\\\\.layers\\\\.[0-9]+\\\\.mlp\\\\.down_proj\"") == down);
    CHECK(targets_of_weights(&c, "[\"model.layers.0.self_attn.q_proj\", \"model.layers.1.self_attn.q_proj\"]",
                             q) == q);
    struct {
        const char *tm, *expect;
    } refused[] = {
        {"\"q_proj\"", "selects no module"},
        {"[\"q_proj\", \"lm_head\"]", "lm_head"},
        {"[\"embed_tokens\"]", "embed_tokens"},
        {"\".*\"", "cannot adapt"},
        {"\".*layers\\\\.0\\\\..*_proj\"", "1 of 2 layers"},
        {"\"model\\\\.layers\\\\.\\\\d+\\\\.mlp\\\\.down_proj\"", "regular expression"},
        {"\".*(?:q|v)_proj\"", "regular expression"},
        {"[\"q_proj\", \"qq_proj\"]", "qq_proj"},
    };
    unsigned t = targets_of_weights(
        &c, "[\"model.layers.0.self_attn.q_proj\", \"model.layers.0.self_attn.q_proj\"]", q);
    CHECKF(t == 0 && strstr(qlab_last_error(), "1 of 2 layers"), "layer 0 named twice: 0x%x", t);
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        t = targets_of(&c, refused[i].tm);
        CHECKF(t == 0 && strstr(qlab_last_error(), refused[i].expect), "target_modules %s: 0x%x, '%s'",
               refused[i].tm, t, t ? "" : qlab_last_error());
    }
}

static void test_refusals(void) {
    model_config c = tiny_config();
    const char *dir = tmp_path("bad");
    CHECK(mkdir(dir, 0777) == 0);
    expect_config_refused(dir, ", \"use_dora\": true", "use_dora");
    expect_config_refused(dir, ", \"use_rslora\": 1", "use_rslora");
    expect_config_refused(dir, ", \"bias\": \"all\"", "bias");
    expect_config_refused(dir, ", \"modules_to_save\": [\"lm_head\"]", "modules_to_save");
    expect_config_refused(dir, ", \"rank_pattern\": {\"q_proj\": 2}", "rank_pattern");
    expect_config_refused(dir, ", \"layers_to_transform\": [0]", "layers_to_transform");
    expect_config_refused(dir, ", \"fan_in_fan_out\": true", "fan_in_fan_out");

    /* embed_tokens / lm_head targets are named. */
    char path[600];
    snprintf(path, sizeof path, "%s/%s", dir, LORA_PEFT_CONFIG);
    const char *embed =
        "{\"peft_type\": \"LORA\", \"r\": 3, \"target_modules\": [\"q_proj\", \"embed_tokens\"]}";
    write_bytes(path, embed, strlen(embed));
    lora_config lc;
    CHECK(lora_read_peft_config(dir, &lc, NULL) == QLAB_ERR_UNSUPPORTED &&
          strstr(qlab_last_error(), "embed_tokens"));
    const char *ia3 = "{\"peft_type\": \"IA3\", \"r\": 3, \"target_modules\": [\"q_proj\"]}";
    write_bytes(path, ia3, strlen(ia3));
    CHECK(lora_read_peft_config(dir, &lc, NULL) == QLAB_ERR_UNSUPPORTED && strstr(qlab_last_error(), "IA3"));
    CHECK(lora_read_peft_config(tmp_path("missing"), &lc, NULL) != QLAB_OK);

    /* A weights file with a tensor qlab would not apply (a DoRA magnitude vector) is refused by name, and a
     * missing adapter is refused too. */
    lora_config good = {.targets = LORA_TARGETS_QV, .rank = 3, .alpha = 6.0f, .seed = 1};
    lora_set *l = NULL;
    CHECK(lora_create(&l, &c, &good) == QLAB_OK);
    const char *adir = tmp_path("extra");
    CHECK(lora_save_peft(l, adir, NULL) == QLAB_OK);
    snprintf(path, sizeof path, "%s/%s", adir, LORA_PEFT_WEIGHTS);
    safetensors_file f;
    CHECK(safetensors_open(&f, path) == QLAB_OK);
    safetensors_writer *w = safetensors_writer_new();
    for (int i = 0; i < f.n_tensors; i++)
        CHECK(safetensors_writer_add(w, f.tensors[i].name, f.tensors[i].dtype, f.tensors[i].ndim,
                                     f.tensors[i].shape, f.tensors[i].data) == QLAB_OK);
    float magnitude[32] = {0};
    int64_t shape[1] = {32};
    CHECK(safetensors_writer_add(w, "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector",
                                 SAFETENSORS_F32, 1, shape, magnitude) == QLAB_OK);
    const char *extra_path = tmp_path("extra.safetensors");
    CHECK(safetensors_writer_write(w, extra_path) == QLAB_OK);
    safetensors_writer_free(w);
    safetensors_close(&f);
    CHECK(rename(extra_path, path) == 0);
    lora_set *loaded = NULL;
    CHECK(lora_load_peft(adir, &c, &loaded) == QLAB_ERR_UNSUPPORTED && !loaded &&
          strstr(qlab_last_error(), "lora_magnitude_vector"));
    lora_free(l);
}

int main(void) {
    rng_seed(&rng, 20261204);
    test_tmp_dir_create("lora_peft");
    test_merge_in_hf_order(0);
    test_merge_in_hf_order(1);
    test_refusals();
    test_peft_inits_and_variants();
    test_target_modules();
    test_tmp_dir_remove();
    return check_summary();
}
