/* llama2.c's legacy checkpoint (run.c read_checkpoint / export.py legacy_export): a header of 7 int32
 * (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a negative vocab_size means the
 * classifier is stored separately), then fp32 weights in model_params order with the two legacy RoPE
 * tables (seq_len * head_size/2 floats each, unused here) between rms_final and the classifier. */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/model/checkpoint_internal.h"
#include "core/model/model_check.h"

#define LLAMA2C_HEADER_INTS 7

/* Float counts of the file's weight sections; 0 on overflow. */
typedef struct {
    size_t weights;     /* everything before the RoPE tables */
    size_t rope_tables; /* both tables */
    size_t classifier;  /* 0 when shared */
} llama2c_layout;

static int llama2c_layout_of(const model_config *c, llama2c_layout *lay) {
    size_t D = (size_t)c->dim, H = (size_t)c->hidden_dim, L = (size_t)c->n_layers, V = (size_t)c->vocab_size;
    size_t hs = D / (size_t)c->n_heads, kv = (size_t)c->n_kv_heads * hs;
    size_t emb, per_layer = 0, t, rope;
    if (!checkpoint_mul(V, D, &emb)) return 0;
    /* per layer: rms_att + rms_ffn, wq + wo, wk + wv, w1 + w2 + w3 */
    size_t parts[4];
    if (!checkpoint_mul(2, D, &parts[0]) || !checkpoint_mul(D, D, &t) || !checkpoint_mul(2, t, &parts[1]) ||
        !checkpoint_mul(kv, D, &t) || !checkpoint_mul(2, t, &parts[2]) || !checkpoint_mul(H, D, &t) ||
        !checkpoint_mul(3, t, &parts[3]))
        return 0;
    for (int i = 0; i < 4; i++) {
        if (per_layer > SIZE_MAX - parts[i]) return 0;
        per_layer += parts[i];
    }
    size_t layers;
    if (!checkpoint_mul(L, per_layer, &layers)) return 0;
    if (emb > SIZE_MAX - layers || emb + layers > SIZE_MAX - D) return 0;
    lay->weights = emb + layers + D;
    if (!checkpoint_mul((size_t)c->seq_len, hs, &rope)) return 0; /* 2 tables of seq_len * hs/2 */
    lay->rope_tables = rope;
    lay->classifier = c->shared_classifier ? 0 : emb;
    return 1;
}

/* The file's weight sections before the RoPE tables are the model's groups token_embedding..rms_final in
 * group order (llama2.c's order); the classifier, when stored, follows the RoPE tables. */
#define LLAMA2C_SECTIONS (MODEL_GROUP_RMS_FINAL + 1)

/* Those sections as views into the model, with their element counts (copied one by one so nothing
 * depends on how model.c arranges its buffer). */
static void llama2c_sections(const model_config *c, const model_params *p, float *ptr[LLAMA2C_SECTIONS],
                             size_t count[LLAMA2C_SECTIONS]) {
    size_t sizes[MODEL_GROUP_COUNT];
    model_param_sizes(c, sizes);
    for (int s = 0; s < LLAMA2C_SECTIONS; s++) {
        ptr[s] = p->group[s]; /* NULL for the projections of a quantized model */
        count[s] = sizes[s];
    }
}

/* The configuration in the 7-int header, checked (a negative vocab_size: the classifier is stored). */
static qlab_status llama2c_read_header(const checkpoint_mapping *map, const char *path, model_config *cfg) {
    if (map->size < LLAMA2C_HEADER_INTS * sizeof(int32_t))
        return qlab_fail(QLAB_ERR_FORMAT,
                         "%s: file holds %zu bytes, too short for the 28-byte llama2.c header", path,
                         map->size);
    int32_t h[LLAMA2C_HEADER_INTS];
    memcpy(h, map->data, sizeof h);
    static const char *names[LLAMA2C_HEADER_INTS] = {"dim",        "hidden_dim", "n_layers", "n_heads",
                                                     "n_kv_heads", "vocab_size", "seq_len"};
    for (int i = 0; i < LLAMA2C_HEADER_INTS; i++) {
        /* vocab_size may be negative (unshared classifier) but never zero or INT32_MIN */
        if (h[i] == 0 || (h[i] < 0 && i != 5) || h[i] == INT32_MIN)
            return qlab_fail(QLAB_ERR_FORMAT, "%s: header field %s = %d must be positive", path, names[i],
                             (int)h[i]);
    }
    *cfg = (model_config){
        .dim = h[0],
        .hidden_dim = h[1],
        .n_layers = h[2],
        .n_heads = h[3],
        .n_kv_heads = h[4],
        .vocab_size = abs(h[5]),
        .seq_len = h[6],
        .norm_eps = 1e-5f,
        .rope_theta = 10000.0f,
        .shared_classifier = h[5] > 0,
    };
    if (cfg->n_heads % cfg->n_kv_heads != 0)
        return qlab_fail(QLAB_ERR_FORMAT, "%s: header field n_kv_heads = %d does not divide n_heads = %d",
                         path, cfg->n_kv_heads, cfg->n_heads);
    if (cfg->dim % cfg->n_heads != 0 || (cfg->dim / cfg->n_heads) % 2 != 0)
        return qlab_fail(QLAB_ERR_FORMAT,
                         "%s: header field dim = %d is not n_heads = %d times an even head size", path,
                         cfg->dim, cfg->n_heads);
    return QLAB_OK;
}

/* The file's layout for cfg, and whether it holds the RoPE tables: its size must be exactly that of the
 * weights with or without them. */
static qlab_status llama2c_check_size(const checkpoint_mapping *map, const char *path,
                                      const model_config *cfg, llama2c_layout *lay, int *has_rope) {
    size_t with_rope = 0, without_rope = 0;
    int fits = llama2c_layout_of(cfg, lay);
    if (fits) {
        /* in bytes, header included; every term was checked above except these sums */
        size_t floats = lay->weights;
        fits = floats <= SIZE_MAX - lay->classifier &&
               floats + lay->classifier <= SIZE_MAX - lay->rope_tables &&
               (floats + lay->classifier + lay->rope_tables) <= (SIZE_MAX - 28) / 4;
        if (fits) {
            without_rope = 28 + 4 * (floats + lay->classifier);
            with_rope = without_rope + 4 * lay->rope_tables;
        }
    }
    if (!fits)
        return qlab_fail(QLAB_ERR_FORMAT,
                         "%s: header sizes (dim %d, hidden_dim %d, n_layers %d, vocab_size %d) "
                         "overflow; file holds %zu bytes",
                         path, cfg->dim, cfg->hidden_dim, cfg->n_layers, cfg->vocab_size, map->size);
    /* without RoPE tables the file size does not bound seq_len: the documented cap does */
    if (cfg->seq_len > MODEL_MAX_SEQ_LEN)
        return qlab_fail(QLAB_ERR_UNSUPPORTED, "%s: header field seq_len = %d is above the limit %d", path,
                         cfg->seq_len, MODEL_MAX_SEQ_LEN);
    /* llama2.c always writes the RoPE tables; a file without them is unambiguous too, so accept it */
    *has_rope = map->size == with_rope;
    if (!*has_rope && map->size != without_rope)
        return qlab_fail(QLAB_ERR_FORMAT,
                         "%s: file holds %zu bytes, header implies %zu (dim %d, hidden_dim %d, "
                         "n_layers %d, n_heads %d, n_kv_heads %d, vocab_size %d, seq_len %d)",
                         path, map->size, with_rope, cfg->dim, cfg->hidden_dim, cfg->n_layers, cfg->n_heads,
                         cfg->n_kv_heads, cfg->shared_classifier ? cfg->vocab_size : -cfg->vocab_size,
                         cfg->seq_len);
    return QLAB_OK;
}

/* Section `group` of the file (count floats at src) into the model: copied into an fp32 view, or, for
 * the projections of a quantized model, quantized layer by layer straight from the mapped file after a
 * finite-value check, so those fp32 weights are never copied. */
static qlab_status llama2c_take_section(model *m, const char *path, int group, float *view,
                                        const uint8_t *src, size_t count) {
    if (view) {
        memcpy(view, src, count * sizeof(float));
        return QLAB_OK;
    }
    model_proj p = (model_proj)model_group_projection((model_group)group);
    const model_config *c = model_get_config(m);
    int out_f, in_f;
    model_proj_shape(c, p, &out_f, &in_f);
    size_t per_layer = (size_t)out_f * in_f;
    char what[PATH_MAX + 64];
    for (int l = 0; l < c->n_layers; l++) {
        const float *w = (const float *)(const void *)(src + (size_t)l * per_layer * sizeof(float));
        snprintf(what, sizeof what, "%s: tensor %s (layer %d)", path, model_group_name((model_group)group),
                 l);
        QLAB_TRY(check_finite_floats(w, per_layer, (size_t)in_f, what, "row"));
        QLAB_TRY(model_set_projection(m, l, p, w));
    }
    return QLAB_OK;
}

/* quant NULL: an fp32 model; else a quantized one whose projections never exist in fp32. */
static qlab_status llama2c_load(const char *path, const checkpoint_quant *quant, model **out) {
    *out = NULL;
    checkpoint_mapping map;
    QLAB_TRY(checkpoint_map(path, &map));
    model_config cfg;
    llama2c_layout lay;
    int has_rope = 0;
    model *m = NULL;
    qlab_status st = llama2c_read_header(&map, path, &cfg);
    if (st == QLAB_OK) st = llama2c_check_size(&map, path, &cfg, &lay, &has_rope);
    if (st == QLAB_OK) {
        st = quant ? model_create_quantized(&m, &cfg, quant->dtype, quant->blocksize, quant->double_quant)
                   : model_create(&m, &cfg);
        if (st != QLAB_OK) qlab_fail_context(st, "%s", path);
    }
    if (st == QLAB_OK) {
        model_params *p = model_get_params(m);
        float *ptr[LLAMA2C_SECTIONS];
        size_t count[LLAMA2C_SECTIONS];
        llama2c_sections(&cfg, p, ptr, count);
        const uint8_t *src = map.data + 28;
        for (int i = 0; i < LLAMA2C_SECTIONS && st == QLAB_OK; i++) {
            st = llama2c_take_section(m, path, i, ptr[i], src, count[i]);
            src += count[i] * sizeof(float);
        }
        if (st == QLAB_OK && !cfg.shared_classifier) {
            if (has_rope) src += lay.rope_tables * sizeof(float);
            memcpy(p->wcls, src, lay.classifier * sizeof(float));
        }
    }
    checkpoint_unmap(&map);
    if (st != QLAB_OK) {
        model_free(m);
        return st;
    }
    *out = m;
    return QLAB_OK;
}

qlab_status checkpoint_load_llama2c(const char *path, model **out) {
    return llama2c_load(path, NULL, out);
}

qlab_status checkpoint_load_llama2c_quantized(const char *path, const checkpoint_quant *quant, model **out) {
    return llama2c_load(path, quant, out);
}

qlab_status checkpoint_save_llama2c(const model *m, const char *path) {
    QLAB_TRY(checkpoint_check_savable(m, path));
    const model_config *c = model_get_config(m);
    if (c->rope_scaling != MODEL_ROPE_DEFAULT)
        return qlab_fail(
            QLAB_ERR_UNSUPPORTED,
            "%s: llama2.c's format cannot store %s RoPE scaling; refusing rather than dropping it", path,
            model_rope_scaling_name(c->rope_scaling));
    /* nor a RoPE base or an RMSNorm epsilon: its readers (run.c, checkpoint_load) assume 10000 and 1e-5 */
    if (c->rope_theta != 10000.0f || c->norm_eps != 1e-5f)
        return qlab_fail(
            QLAB_ERR_UNSUPPORTED,
            "%s: llama2.c's format cannot store %s %g (its readers assume %g); refusing rather than "
            "dropping it",
            path, c->rope_theta != 10000.0f ? "rope_theta" : "norm_eps",
            c->rope_theta != 10000.0f ? (double)c->rope_theta : (double)c->norm_eps,
            c->rope_theta != 10000.0f ? 10000.0 : 1e-5);
    const model_params *p = checkpoint_params(m);
    llama2c_layout lay;
    if (!llama2c_layout_of(c, &lay)) return qlab_fail(QLAB_ERR_ARG, "%s: model sizes overflow", path);
    int32_t h[LLAMA2C_HEADER_INTS] = {c->dim,        c->hidden_dim,
                                      c->n_layers,   c->n_heads,
                                      c->n_kv_heads, c->shared_classifier ? c->vocab_size : -c->vocab_size,
                                      c->seq_len};
    checkpoint_writer w;
    QLAB_TRY(atomic_file_open(&w, path));
    atomic_file_write(&w, h, sizeof h);
    float *ptr[LLAMA2C_SECTIONS];
    size_t count[LLAMA2C_SECTIONS];
    llama2c_sections(c, p, ptr, count);
    for (int i = 0; i < LLAMA2C_SECTIONS; i++)
        atomic_file_write(&w, ptr[i], count[i] * sizeof(float));
    /* The legacy tables llama2.c writes (cos, then sin, of pos * theta^(-2i/head_size)); readers ignore them
     * but their presence keeps the file byte-compatible with llama2.c's run.c. */
    int hs = c->dim / c->n_heads, half = hs / 2;
    float *row = qlab_calloc((size_t)half, sizeof(float));
    if (!row) {
        atomic_file_abort(&w);
        return QLAB_ERR_NOMEM;
    }
    for (int table = 0; table < 2; table++)
        for (int pos = 0; pos < c->seq_len; pos++) {
            for (int i = 0; i < half; i++) {
                /* in float, step by step as PyTorch's precompute_freqs_cis does it */
                float freq = 1.0f / powf(c->rope_theta, (float)(2 * i) / (float)hs);
                float angle = (float)pos * freq;
                row[i] = table == 0 ? cosf(angle) : sinf(angle);
            }
            atomic_file_write(&w, row, (size_t)half * sizeof(float));
        }
    free(row);
    if (!c->shared_classifier) atomic_file_write(&w, p->wcls, lay.classifier * sizeof(float));
    return atomic_file_commit(&w);
}
