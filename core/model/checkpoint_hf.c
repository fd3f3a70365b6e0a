/* Hugging Face LLaMA checkpoints: a directory with config.json and model.safetensors (or a sharded
 * model.safetensors.index.json), fp32/fp16/bf16. Hugging Face rotates the two halves of each head
 * (rotate_half) where we rotate interleaved pairs, so its conversion script permutes the rows of W_q and
 * W_k; we undo that permutation on load and apply it on save (checkpoint_permute_rotary_rows). */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "core/model/checkpoint_internal.h"
#include "core/base/half.h"
#include "core/formats/safetensors.h"

/* dir and config.json path from what the user passed (the directory or its config.json). */
static qlab_status hf_paths(const char *path, char **dir, char **config) {
    *dir = *config = NULL;
    size_t n = strlen(path);
    const char *suffix = "config.json";
    size_t k = strlen(suffix);
    int is_config = n >= k && strcmp(path + n - k, suffix) == 0;
    if (is_config) {
        const char *slash = strrchr(path, '/');
        *dir = slash ? strndup(path, (size_t)(slash - path) + (slash == path)) : strdup(".");
        *config = strdup(path);
    } else {
        *dir = strdup(path);
        *config = malloc(n + 16);
        if (*config) snprintf(*config, n + 16, "%s/config.json", path);
    }
    if (!*dir || !*config) {
        free(*dir);
        free(*config);
        *dir = *config = NULL;
        return qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", path);
    }
    if (!is_config && access(*config, F_OK) != 0) { /* a folder, but not a model's */
        free(*dir);
        free(*config);
        *dir = *config = NULL;
        return qlab_fail(QLAB_ERR_IO,
                         "%s: is a directory without config.json (a model is a llama2.c .bin, a GGUF file or "
                         "a Hugging Face folder with config.json + model.safetensors)",
                         path);
    }
    return QLAB_OK;
}

/* A required (or, with fallback >= 0, optional) positive integer key. */
static qlab_status hf_int(const cJSON *root, const char *config, const char *key, int fallback, int *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) {
        if (fallback >= 0) {
            *out = fallback;
            return QLAB_OK;
        }
        return qlab_fail(QLAB_ERR_FORMAT, "%s: required key \"%s\" is missing", config, key);
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble))
        return qlab_fail(QLAB_ERR_FORMAT, "%s: key \"%s\" must be an integer", config, key);
    if (v->valuedouble < 1 || v->valuedouble > INT32_MAX)
        return qlab_fail(QLAB_ERR_FORMAT, "%s: key \"%s\" = %.17g is out of range (1 to %d)", config, key,
                         v->valuedouble, INT32_MAX);
    *out = (int)v->valuedouble;
    return QLAB_OK;
}

static qlab_status hf_float(const cJSON *root, const char *config, const char *key, float fallback,
                            float *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) {
        *out = fallback;
        return QLAB_OK;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return qlab_fail(QLAB_ERR_FORMAT, "%s: key \"%s\" must be a finite number", config, key);
    *out = (float)v->valuedouble;
    return QLAB_OK;
}

/* A positive finite number at obj[name] (the scaling parameters). */
static qlab_status hf_rope_number(const char *config, const char *key, const cJSON *obj, const char *name,
                                  double *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || !(v->valuedouble > 0))
        return qlab_fail(QLAB_ERR_FORMAT, "%s: %s.%s must be a positive number", config, key, name);
    *out = v->valuedouble;
    return QLAB_OK;
}

/* rope_scaling / rope_parameters: the plain RoPE ("rope_type" or the older "type" absent or "default"),
 * "linear" (factor) and "llama3" (factor, low_freq_factor, high_freq_factor,
 * original_max_position_embeddings) are computed (model_rope_frequency) and read into cfg; any other
 * type (dynamic, yarn, longrope, ...) and partial rotary are refused by name rather than run with the
 * wrong positions. A second object (rope_scaling beside rope_parameters) must say the same. */
static qlab_status hf_check_rope_type(const char *config, const char *key, const cJSON *obj,
                                      model_config *cfg) {
    if (!cJSON_IsObject(obj))
        return qlab_fail(QLAB_ERR_FORMAT, "%s: key \"%s\" must be an object or null", config, key);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(obj, "rope_type");
    if (!type) type = cJSON_GetObjectItemCaseSensitive(obj, "type");
    if (type && !cJSON_IsString(type))
        return qlab_fail(QLAB_ERR_FORMAT, "%s: %s.rope_type must be a string", config, key);
    const cJSON *partial = cJSON_GetObjectItemCaseSensitive(obj, "partial_rotary_factor");
    if (partial && !cJSON_IsNull(partial) && !(cJSON_IsNumber(partial) && partial->valuedouble == 1.0))
        return qlab_fail(QLAB_ERR_UNSUPPORTED,
                         "%s: %s.partial_rotary_factor is not 1: partial rotary is not implemented", config,
                         key);
    model_config s = {0};
    const char *name = type ? type->valuestring : "default";
    double factor = 0, low = 0, high = 0, original = 0;
    if (!strcmp(name, "linear")) {
        QLAB_TRY(hf_rope_number(config, key, obj, "factor", &factor));
        s.rope_scaling = MODEL_ROPE_LINEAR;
    } else if (!strcmp(name, "llama3")) {
        QLAB_TRY(hf_rope_number(config, key, obj, "factor", &factor));
        QLAB_TRY(hf_rope_number(config, key, obj, "low_freq_factor", &low));
        QLAB_TRY(hf_rope_number(config, key, obj, "high_freq_factor", &high));
        QLAB_TRY(hf_rope_number(config, key, obj, "original_max_position_embeddings", &original));
        if (!(high > low) || original != floor(original) || original > MODEL_MAX_SEQ_LEN)
            return qlab_fail(QLAB_ERR_FORMAT,
                             "%s: %s: llama3 needs high_freq_factor > low_freq_factor and an integer "
                             "original_max_position_embeddings <= %d",
                             config, key, MODEL_MAX_SEQ_LEN);
        s.rope_scaling = MODEL_ROPE_LLAMA3;
    } else if (strcmp(name, "default") != 0) {
        return qlab_fail(QLAB_ERR_UNSUPPORTED,
                         "%s: %s.rope_type is \"%s\": this RoPE scaling is not implemented (default, linear "
                         "and llama3 are)",
                         config, key, name);
    }
    s.rope_factor = (float)factor, s.rope_low_freq_factor = (float)low, s.rope_high_freq_factor = (float)high;
    s.rope_original_max_positions = (int)original;
    /* a scaling in one object and "default" (or nothing) in the other: the scaling, never dropped */
    if (cfg->rope_scaling != MODEL_ROPE_DEFAULT && s.rope_scaling != MODEL_ROPE_DEFAULT &&
        (cfg->rope_scaling != s.rope_scaling || cfg->rope_factor != s.rope_factor ||
         cfg->rope_low_freq_factor != s.rope_low_freq_factor ||
         cfg->rope_high_freq_factor != s.rope_high_freq_factor ||
         cfg->rope_original_max_positions != s.rope_original_max_positions))
        return qlab_fail(QLAB_ERR_FORMAT, "%s: rope_parameters and rope_scaling describe different scalings",
                         config);
    if (s.rope_scaling != MODEL_ROPE_DEFAULT) {
        cfg->rope_scaling = s.rope_scaling, cfg->rope_factor = s.rope_factor;
        cfg->rope_low_freq_factor = s.rope_low_freq_factor,
        cfg->rope_high_freq_factor = s.rope_high_freq_factor;
        cfg->rope_original_max_positions = s.rope_original_max_positions;
    }
    return QLAB_OK;
}

/* A key that changes the computation when true (biases): refused by name unless absent, null or false. */
static qlab_status hf_check_false(const cJSON *root, const char *config, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v) || cJSON_IsFalse(v)) return QLAB_OK;
    if (!cJSON_IsBool(v))
        return qlab_fail(QLAB_ERR_FORMAT, "%s: key \"%s\" must be true or false", config, key);
    return qlab_fail(QLAB_ERR_UNSUPPORTED, "%s: \"%s\": true is not implemented (LLaMA without biases only)",
                     config, key);
}

/* RoPE base: transformers 5 writes it inside "rope_parameters", older versions as top-level "rope_theta";
 * both may be present and must then agree. LlamaConfig's default 10000 when neither is. */
static qlab_status hf_rope_theta(const cJSON *root, const char *config, float *out, model_config *cfg) {
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(root, "rope_parameters");
    float top = 0, inner = 0;
    QLAB_TRY(hf_float(root, config, "rope_theta", -1.0f, &top));
    if (params && !cJSON_IsNull(params)) {
        QLAB_TRY(hf_check_rope_type(config, "rope_parameters", params, cfg));
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(params, "rope_theta");
        if (v && !cJSON_IsNull(v)) {
            if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
                return qlab_fail(QLAB_ERR_FORMAT,
                                 "%s: key \"rope_parameters.rope_theta\" must be a finite number", config);
            inner = (float)v->valuedouble;
        } else {
            inner = -1.0f;
        }
    } else {
        inner = -1.0f;
    }
    if (top > 0 && inner > 0 && top != inner)
        return qlab_fail(QLAB_ERR_FORMAT, "%s: rope_theta = %g but rope_parameters.rope_theta = %g", config,
                         (double)top, (double)inner);
    float theta = inner > 0 ? inner : top > 0 ? top : 10000.0f;
    if ((top != -1.0f && top <= 0) || (inner != -1.0f && inner <= 0) || !(theta > 0))
        return qlab_fail(QLAB_ERR_FORMAT, "%s: rope_theta must be positive", config);
    *out = theta;
    return QLAB_OK;
}

static qlab_status hf_parse_config(const char *config, model_config *cfg) {
    char *text;
    size_t len;
    QLAB_TRY(qlab_read_file(config, &text, &len));
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return qlab_fail(QLAB_ERR_FORMAT, "%s: not a JSON object", config);
    }
    qlab_status st = QLAB_OK;
    memset(cfg, 0, sizeof *cfg);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
    const cJSON *scaling = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    const cJSON *tie = cJSON_GetObjectItemCaseSensitive(root, "tie_word_embeddings");
    int head_dim = 0;
    if (type && !(cJSON_IsString(type) && strcmp(type->valuestring, "llama") == 0))
        st = qlab_fail(QLAB_ERR_UNSUPPORTED, "%s: model_type %s%s%s is not supported (only \"llama\")",
                       config, cJSON_IsString(type) ? "\"" : "",
                       cJSON_IsString(type) ? type->valuestring : "(not a string)",
                       cJSON_IsString(type) ? "\"" : "");
    else if (act && !(cJSON_IsString(act) && strcmp(act->valuestring, "silu") == 0))
        st = qlab_fail(QLAB_ERR_UNSUPPORTED, "%s: hidden_act must be \"silu\" (SwiGLU)", config);
    else if (scaling && !cJSON_IsNull(scaling))
        st = hf_check_rope_type(config, "rope_scaling", scaling, cfg);
    if (st == QLAB_OK) st = hf_check_false(root, config, "attention_bias");
    if (st == QLAB_OK) st = hf_check_false(root, config, "mlp_bias");
    if (st != QLAB_OK)
        ;
    else if (tie && !cJSON_IsBool(tie))
        st = qlab_fail(QLAB_ERR_FORMAT, "%s: key \"tie_word_embeddings\" must be true or false", config);
    if (st == QLAB_OK &&
        ((st = hf_int(root, config, "hidden_size", -1, &cfg->dim)) ||
         (st = hf_int(root, config, "intermediate_size", -1, &cfg->hidden_dim)) ||
         (st = hf_int(root, config, "num_hidden_layers", -1, &cfg->n_layers)) ||
         (st = hf_int(root, config, "num_attention_heads", -1, &cfg->n_heads)) ||
         (st = hf_int(root, config, "num_key_value_heads", cfg->n_heads, &cfg->n_kv_heads)) ||
         (st = hf_int(root, config, "vocab_size", -1, &cfg->vocab_size)) ||
         (st = hf_int(root, config, "max_position_embeddings", -1, &cfg->seq_len)) ||
         /* Hugging Face LlamaConfig's defaults for the optional keys */
         (st = hf_float(root, config, "rms_norm_eps", 1e-6f, &cfg->norm_eps)) ||
         (st = hf_rope_theta(root, config, &cfg->rope_theta, cfg)) ||
         (st = hf_int(root, config, "head_dim", cfg->dim / cfg->n_heads, &head_dim))))
        goto done;
    if (st != QLAB_OK) goto done;
    cfg->shared_classifier = tie && cJSON_IsTrue(tie);
    if (cfg->n_layers > 65536) /* bounds the tensor list we build before looking at the weights */
        st = qlab_fail(QLAB_ERR_FORMAT, "%s: num_hidden_layers = %d is implausibly large", config,
                       cfg->n_layers);
    else if (cfg->seq_len > MODEL_MAX_SEQ_LEN)
        st = qlab_fail(QLAB_ERR_UNSUPPORTED, "%s: max_position_embeddings = %d is above the limit %d", config,
                       cfg->seq_len, MODEL_MAX_SEQ_LEN);
    else if (cfg->n_heads % cfg->n_kv_heads != 0)
        st = qlab_fail(QLAB_ERR_FORMAT,
                       "%s: num_key_value_heads = %d does not divide num_attention_heads = %d", config,
                       cfg->n_kv_heads, cfg->n_heads);
    else if (cfg->dim % cfg->n_heads != 0 || head_dim != cfg->dim / cfg->n_heads)
        st = qlab_fail(QLAB_ERR_UNSUPPORTED,
                       "%s: head size must be hidden_size / num_attention_heads (%d / %d, "
                       "head_dim %d)",
                       config, cfg->dim, cfg->n_heads, head_dim);
done:
    cJSON_Delete(root);
    return st;
}

/* Reads tensor name of shape (rows, cols) (cols = 0: a vector of rows) into dst; dst NULL only checks it. */
static qlab_status hf_read(const safetensors_checkpoint *ck, const char *dir, const char *name, int rows,
                           int cols, float *dst) {
    const safetensors_file *file = NULL;
    const safetensors_tensor *t = safetensors_checkpoint_find(ck, name, &file);
    if (!t) {
        /* name the one file when there is one, else the index that should have listed the tensor */
        if (ck->n_files == 1)
            return qlab_fail(QLAB_ERR_FORMAT, "%s: tensor %s is missing", ck->files[0].path, name);
        return qlab_fail(QLAB_ERR_FORMAT, "%s/model.safetensors.index.json: tensor %s is missing", dir, name);
    }
    int want_ndim = cols ? 2 : 1;
    if (t->ndim != want_ndim || t->shape[0] != rows || (cols && t->shape[1] != cols)) {
        char got[128] = "";
        for (int d = 0; d < t->ndim && d < SAFETENSORS_MAX_DIMS; d++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", d ? ", " : "",
                     (long long)t->shape[d]);
        if (cols)
            return qlab_fail(QLAB_ERR_FORMAT, "%s: tensor %s has shape [%s], expected [%d, %d]", file->path,
                             name, got, rows, cols);
        return qlab_fail(QLAB_ERR_FORMAT, "%s: tensor %s has shape [%s], expected [%d]", file->path, name,
                         got, rows);
    }
    if (t->dtype != SAFETENSORS_F32 && t->dtype != SAFETENSORS_F16 && t->dtype != SAFETENSORS_BF16)
        return qlab_fail(QLAB_ERR_UNSUPPORTED,
                         "%s: tensor %s has dtype %s; only F32, F16 and BF16 are supported", file->path, name,
                         safetensors_dtype_name(t->dtype));
    return dst ? safetensors_tensor_to_f32(t, dst) : QLAB_OK;
}

/* The tensors of the model, in one list for the reader and the writer. */
typedef struct {
    char name[96];
    float *data;
    int rows, cols;  /* cols = 0: vector */
    int layer, proj; /* proj: the model_proj of a projection, -1 for any other tensor */
} hf_tensor;

/* p NULL: names and shapes only (data NULL). */
static hf_tensor *hf_tensor_list(const model_config *c, const model_params *p, int *count) {
    int L = c->n_layers, D = c->dim;
    size_t n = 2 + (c->shared_classifier ? 0 : 1) + 9 * (size_t)L;
    int k = 0;
    hf_tensor *ts = qlab_calloc(n, sizeof *ts);
    if (!ts) return NULL;
#define HF_AT(field, offset) (p ? p->field + (offset) : NULL)
#define HF_ADD(ptr, r, cl, ...)                                                                              \
    do {                                                                                                     \
        snprintf(ts[k].name, sizeof ts[k].name, __VA_ARGS__);                                                \
        ts[k].data = (ptr), ts[k].rows = (r), ts[k].cols = (cl), ts[k].layer = -1, ts[k].proj = -1;          \
        k++;                                                                                                 \
    } while (0)
    HF_ADD(HF_AT(token_embedding, 0), c->vocab_size, D, "model.embed_tokens.weight");
/* projection pj of layer l, named and shaped by the projection vocabulary */
#define HF_ADD_PROJ(pj)                                                                                      \
    do {                                                                                                     \
        const model_proj_info *info = model_proj_get(pj);                                                    \
        int rows, cols;                                                                                      \
        model_proj_shape(c, pj, &rows, &cols);                                                               \
        /* a quantized model's projection group is NULL: its tensors are read through a scratch buffer */    \
        HF_ADD(p && p->group[info->group] ? p->group[info->group] + (size_t)l * rows * cols : NULL, rows,    \
               cols, "model.layers.%d.%s.%s.weight", l, info->block, info->name);                            \
        ts[k - 1].layer = l, ts[k - 1].proj = (int)(pj);                                                     \
    } while (0)
    for (int l = 0; l < L; l++) {
        HF_ADD(HF_AT(rms_att, (size_t)l * D), D, 0, "model.layers.%d.input_layernorm.weight", l);
        for (int pj = PROJ_Q; pj <= PROJ_O; pj++)
            HF_ADD_PROJ((model_proj)pj);
        HF_ADD(HF_AT(rms_ffn, (size_t)l * D), D, 0, "model.layers.%d.post_attention_layernorm.weight", l);
        for (int pj = PROJ_GATE; pj <= PROJ_DOWN; pj++)
            HF_ADD_PROJ((model_proj)pj);
    }
    HF_ADD(HF_AT(rms_final, 0), D, 0, "model.norm.weight");
    if (!c->shared_classifier) HF_ADD(HF_AT(wcls, 0), c->vocab_size, D, "lm_head.weight");
#undef HF_ADD_PROJ
#undef HF_ADD
#undef HF_AT
    *count = k;
    return ts;
}

/* Permutes W_q and W_k of every layer between our order and Hugging Face's (to_hf 1) or back (0). */
static qlab_status hf_permute_qk(const model_config *c, float *wq, float *wk, int to_hf) {
    int D = c->dim, hs = D / c->n_heads, KV = c->n_kv_heads * hs;
    for (int l = 0; l < c->n_layers; l++) {
        QLAB_TRY(checkpoint_permute_rotary_rows(wq + (size_t)l * D * D, c->n_heads, hs, D, to_hf));
        QLAB_TRY(checkpoint_permute_rotary_rows(wk + (size_t)l * KV * D, c->n_kv_heads, hs, D, to_hf));
    }
    return QLAB_OK;
}

/* Reads projection tensor t into scratch, permutes W_q/W_k rows back to our rotary order (as
 * hf_permute_qk does on an fp32 load) and quantizes it into m. */
static qlab_status hf_quantize_projection(const safetensors_checkpoint *ck, const char *dir,
                                          const char *config, model *m, const hf_tensor *t, float *scratch) {
    const model_config *c = model_get_config(m);
    int hs = c->dim / c->n_heads;
    QLAB_TRY(hf_read(ck, dir, t->name, t->rows, t->cols, scratch));
    if (t->proj == PROJ_Q) QLAB_TRY(checkpoint_permute_rotary_rows(scratch, c->n_heads, hs, c->dim, 0));
    if (t->proj == PROJ_K) QLAB_TRY(checkpoint_permute_rotary_rows(scratch, c->n_kv_heads, hs, c->dim, 0));
    return checkpoint_quantize_projection(m, t->layer, (model_proj)t->proj, scratch, config, t->name);
}

/* quant NULL: an fp32 model; else a quantized one whose projections are quantized one at a time. */
static qlab_status hf_load(const char *path, const checkpoint_quant *quant, model **out) {
    *out = NULL;
    float *scratch = NULL;
    char *dir, *config;
    QLAB_TRY(hf_paths(path, &dir, &config));
    model_config cfg;
    model *m = NULL;
    hf_tensor *ts = NULL;
    safetensors_checkpoint ck = {0, NULL};
    int opened = 0;
    qlab_status st = hf_parse_config(config, &cfg);
    if (st != QLAB_OK) goto done;
    if ((st = safetensors_checkpoint_open(&ck, dir)) != QLAB_OK) goto done;
    opened = 1;
    /* every shape is checked before the model is allocated, so a config.json claiming a huge model over
     * small weights is refused without allocating (and zeroing) it */
    int n = 0;
    ts = hf_tensor_list(&cfg, NULL, &n);
    if (!ts) {
        st = QLAB_ERR_NOMEM;
        goto done;
    }
    for (int i = 0; i < n && st == QLAB_OK; i++)
        st = hf_read(&ck, dir, ts[i].name, ts[i].rows, ts[i].cols, NULL);
    free(ts);
    ts = NULL;
    if (st != QLAB_OK) goto done;
    st = quant ? model_create_quantized(&m, &cfg, quant->dtype, quant->blocksize, quant->double_quant)
               : model_create(&m, &cfg);
    if (st != QLAB_OK) {
        qlab_fail_context(st, "%s", config);
        goto done;
    }
    if (quant && !(scratch = checkpoint_projection_scratch(&cfg))) {
        st = qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory for one projection's fp32 weights", config);
        goto done;
    }
    model_params *p = model_get_params(m);
    ts = hf_tensor_list(&cfg, p, &n);
    if (!ts) {
        st = QLAB_ERR_NOMEM;
        goto done;
    }
    for (int i = 0; i < n && st == QLAB_OK; i++)
        st = quant && ts[i].proj >= 0 ? hf_quantize_projection(&ck, dir, config, m, &ts[i], scratch)
                                      : hf_read(&ck, dir, ts[i].name, ts[i].rows, ts[i].cols, ts[i].data);
    if (st == QLAB_OK && !quant) st = hf_permute_qk(&cfg, p->wq, p->wk, 0);
done:
    qlab_free_aligned(scratch);
    if (opened) safetensors_checkpoint_close(&ck);
    if (st != QLAB_OK) {
        model_free(m);
        m = NULL;
    }
    free(ts);
    free(dir);
    free(config);
    *out = m;
    return st;
}

qlab_status checkpoint_load_hf(const char *path, model **out) {
    return hf_load(path, NULL, out);
}

qlab_status checkpoint_load_hf_quantized(const char *path, const checkpoint_quant *quant, model **out) {
    return hf_load(path, quant, out);
}

/* Adds a number that reads back as exactly the float f, printed in its shortest form (1e-05, not
 * 9.99999974737875e-06). */
static void hf_add_float(cJSON *obj, const char *key, float f) {
    char buf[32];
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)f);
        if (strtof(buf, NULL) == f) break;
    }
    cJSON_AddNumberToObject(obj, key, strtod(buf, NULL));
}

static qlab_status hf_write_json(const char *path, cJSON *root) {
    char *text = root ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    if (!text) return qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", path);
    qlab_status st = qlab_write_file_atomic(path, text, strlen(text));
    free(text);
    return st;
}

/* generation_config.json as transformers writes it, so generate() stops at the EOS. */
static qlab_status hf_write_generation_config(const char *dir, int bos, int eos) {
    size_t n = strlen(dir) + 32;
    char *path = malloc(n);
    cJSON *root = cJSON_CreateObject();
    if (!path || !root) {
        free(path);
        cJSON_Delete(root);
        return qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", dir);
    }
    snprintf(path, n, "%s/generation_config.json", dir);
    cJSON_AddTrueToObject(root, "_from_model_config");
    if (bos >= 0) cJSON_AddNumberToObject(root, "bos_token_id", bos);
    if (eos >= 0) cJSON_AddNumberToObject(root, "eos_token_id", eos);
    qlab_status st = hf_write_json(path, root);
    free(path);
    return st;
}

static qlab_status hf_write_config(const model_config *c, const char *config, checkpoint_dtype dtype, int bos,
                                   int eos) {
    cJSON *root = cJSON_CreateObject();
    cJSON *arch = cJSON_CreateStringArray((const char *const[]){"LlamaForCausalLM"}, 1);
    if (!root || !arch) {
        cJSON_Delete(root);
        cJSON_Delete(arch);
        return qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", config);
    }
    cJSON_AddItemToObject(root, "architectures", arch);
    cJSON_AddStringToObject(root, "model_type", "llama");
    cJSON_AddStringToObject(root, "hidden_act", "silu");
    cJSON_AddNumberToObject(root, "hidden_size", c->dim);
    cJSON_AddNumberToObject(root, "intermediate_size", c->hidden_dim);
    cJSON_AddNumberToObject(root, "num_hidden_layers", c->n_layers);
    cJSON_AddNumberToObject(root, "num_attention_heads", c->n_heads);
    cJSON_AddNumberToObject(root, "num_key_value_heads", c->n_kv_heads);
    cJSON_AddNumberToObject(root, "vocab_size", c->vocab_size);
    cJSON_AddNumberToObject(root, "max_position_embeddings", c->seq_len);
    hf_add_float(root, "rms_norm_eps", c->norm_eps);
    /* transformers 5 reads the base from rope_parameters, older versions from the top level */
    hf_add_float(root, "rope_theta", c->rope_theta);
    cJSON *rope = cJSON_AddObjectToObject(root, "rope_parameters");
    if (rope) {
        cJSON_AddStringToObject(rope, "rope_type", model_rope_scaling_name(c->rope_scaling));
        hf_add_float(rope, "rope_theta", c->rope_theta);
    }
    /* the scaling in both places: rope_parameters (transformers 5) and rope_scaling (older versions) */
    cJSON *old = c->rope_scaling != MODEL_ROPE_DEFAULT ? cJSON_AddObjectToObject(root, "rope_scaling") : NULL;
    for (int k = 0; k < 2 && c->rope_scaling != MODEL_ROPE_DEFAULT; k++) {
        cJSON *o = k ? old : rope;
        if (!o) continue;
        if (k) cJSON_AddStringToObject(o, "rope_type", model_rope_scaling_name(c->rope_scaling));
        hf_add_float(o, "factor", c->rope_factor);
        if (c->rope_scaling == MODEL_ROPE_LLAMA3) {
            hf_add_float(o, "low_freq_factor", c->rope_low_freq_factor);
            hf_add_float(o, "high_freq_factor", c->rope_high_freq_factor);
            cJSON_AddNumberToObject(o, "original_max_position_embeddings", c->rope_original_max_positions);
        }
    }
    cJSON_AddBoolToObject(root, "attention_bias", 0);
    cJSON_AddBoolToObject(root, "mlp_bias", 0);
    if (bos >= 0) cJSON_AddNumberToObject(root, "bos_token_id", bos);
    if (eos >= 0) cJSON_AddNumberToObject(root, "eos_token_id", eos);
    cJSON_AddBoolToObject(root, "tie_word_embeddings", c->shared_classifier);
    cJSON_AddStringToObject(root, "torch_dtype",
                            dtype == CHECKPOINT_F32   ? "float32"
                            : dtype == CHECKPOINT_F16 ? "float16"
                                                      : "bfloat16");
    return hf_write_json(config, root);
}

qlab_status checkpoint_save_hf_dtype(const model *m, const char *dir, checkpoint_dtype dtype) {
    return checkpoint_save_hf_ids(m, dir, dtype, -1, -1);
}

qlab_status checkpoint_save_hf_ids(const model *m, const char *dir, checkpoint_dtype dtype, int bos,
                                   int eos) {
    QLAB_TRY(checkpoint_check_savable(m, dir));
    const model_config *c = model_get_config(m);
    const model_params *src = checkpoint_params(m);
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return qlab_fail(QLAB_ERR_IO, "%s: cannot create directory: %s", dir, strerror(errno));
    size_t n_dir = strlen(dir) + 32;
    char *config = malloc(n_dir), *weights = malloc(n_dir);
    int D = c->dim, KV = c->n_kv_heads * (D / c->n_heads);
    size_t q_count = (size_t)c->n_layers * D * D, k_count = (size_t)c->n_layers * KV * D;
    float *wq = qlab_calloc(q_count, sizeof(float)), *wk = qlab_calloc(k_count, sizeof(float));
    uint16_t *narrow = NULL;
    hf_tensor *ts = NULL;
    safetensors_writer *w = NULL;
    qlab_status st = QLAB_OK;
    if (!config || !weights || !wq || !wk) {
        st = qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", dir);
        goto done;
    }
    snprintf(config, n_dir, "%s/config.json", dir);
    snprintf(weights, n_dir, "%s/model.safetensors", dir);
    memcpy(wq, src->wq, q_count * sizeof(float));
    memcpy(wk, src->wk, k_count * sizeof(float));
    if ((st = hf_permute_qk(c, wq, wk, 1)) != QLAB_OK) goto done;
    /* the list points at the model's buffers except for the permuted copies of W_q and W_k */
    model_params view = *src;
    view.wq = wq;
    view.wk = wk;
    int n = 0;
    ts = hf_tensor_list(c, &view, &n);
    w = safetensors_writer_new();
    if (!ts || !w) {
        st = QLAB_ERR_NOMEM;
        goto done;
    }
    if (dtype != CHECKPOINT_F32) {
        narrow = qlab_calloc(model_num_params(c) + q_count + k_count, sizeof(uint16_t));
        if (!narrow) {
            st = QLAB_ERR_NOMEM;
            goto done;
        }
    }
    size_t used = 0;
    for (int i = 0; i < n && st == QLAB_OK; i++) {
        int64_t shape[2] = {ts[i].rows, ts[i].cols};
        size_t count = (size_t)ts[i].rows * (size_t)(ts[i].cols ? ts[i].cols : 1);
        const void *data = ts[i].data;
        if (narrow) {
            uint16_t *dst = narrow + used;
            for (size_t j = 0; j < count; j++)
                dst[j] = dtype == CHECKPOINT_F16 ? f32_to_fp16(ts[i].data[j]) : f32_to_bf16(ts[i].data[j]);
            used += count;
            data = dst;
        }
        safetensors_dtype dt = dtype == CHECKPOINT_F32   ? SAFETENSORS_F32
                               : dtype == CHECKPOINT_F16 ? SAFETENSORS_F16
                                                         : SAFETENSORS_BF16;
        st = safetensors_writer_add(w, ts[i].name, dt, ts[i].cols ? 2 : 1, shape, data);
    }
    if (st == QLAB_OK)
        st = safetensors_writer_set_metadata(w, "format", "pt"); /* what transformers expects */
    if (st == QLAB_OK) st = safetensors_writer_write(w, weights);
    if (st == QLAB_OK) st = hf_write_config(c, config, dtype, bos, eos);
    if (st == QLAB_OK && (bos >= 0 || eos >= 0)) st = hf_write_generation_config(dir, bos, eos);
done:
    safetensors_writer_free(w);
    free(narrow);
    free(ts);
    free(wq);
    free(wk);
    free(config);
    free(weights);
    return st;
}

qlab_status checkpoint_save_hf(const model *m, const char *dir) {
    return checkpoint_save_hf_dtype(m, dir, CHECKPOINT_F32);
}

/* bos_token_id / eos_token_id of a config object: an integer, or the first of a list; -1 when absent. */
static int hf_special_id(const cJSON *root, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (cJSON_IsArray(v)) v = v->child;
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > INT32_MAX ||
        v->valuedouble != floor(v->valuedouble))
        return -1;
    return (int)v->valuedouble;
}

qlab_status checkpoint_special_ids_hf(const char *path, int *bos, int *eos) {
    char *dir, *config;
    QLAB_TRY(hf_paths(path, &dir, &config));
    const char *names[2] = {config, NULL};
    size_t n = strlen(dir) + 32;
    char *gen = malloc(n);
    if (gen) snprintf(gen, n, "%s/generation_config.json", dir);
    names[1] = gen;
    for (int f = 0; f < 2 && names[f]; f++) {
        char *text;
        size_t len;
        if (qlab_read_file(names[f], &text, &len) != QLAB_OK)
            continue; /* generation_config.json is optional */
        cJSON *root = cJSON_ParseWithLength(text, len);
        free(text);
        if (*bos < 0) *bos = hf_special_id(root, "bos_token_id");
        if (*eos < 0) *eos = hf_special_id(root, "eos_token_id");
        cJSON_Delete(root);
    }
    free(gen);
    free(dir);
    free(config);
    return QLAB_OK;
}
