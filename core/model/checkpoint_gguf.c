/* GGUF (llama.cpp's model file, versions 2 and 3) for the "llama" architecture with F32, F16, BF16 or
 * ggml block-quantized tensors (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K, dequantized to fp32 on load bit for
 * bit as ggml's reference does: core/quant/ggml_quants.h): header, typed metadata (every value's length
 * checked, unneeded ones skipped), tensor infos (dims fastest-first: ne[0] = in_features) and aligned tensor
 * data. GGUF keeps LLaMA's Q/K rows in the interleaved rotary order of the original weights (llama.cpp's
 * converter undoes Hugging Face's permutation), which is also our order: the rows are copied as they are.
 * A quantized load dequantizes one projection at a time into a scratch buffer and quantizes it from there. */
#include <stdlib.h>
#include <string.h>

#include "core/model/checkpoint_internal.h"
#include "core/quant/ggml_quants.h"

enum {
    GGUF_TYPE_UINT8 = 0,
    GGUF_TYPE_INT8,
    GGUF_TYPE_UINT16,
    GGUF_TYPE_INT16,
    GGUF_TYPE_UINT32,
    GGUF_TYPE_INT32,
    GGUF_TYPE_FLOAT32,
    GGUF_TYPE_BOOL,
    GGUF_TYPE_STRING,
    GGUF_TYPE_ARRAY,
    GGUF_TYPE_UINT64,
    GGUF_TYPE_INT64,
    GGUF_TYPE_FLOAT64,
    GGUF_TYPE_COUNT
};
#define GGUF_MAX_DIMS 4
#define GGUF_DEFAULT_ALIGNMENT 32

/* A bounds-checked cursor over the mapped file; the first failure is recorded and later reads are no-ops. */
typedef struct {
    const uint8_t *data;
    size_t size, pos;
    const char *path;
    qlab_status st;
} gguf_reader;

typedef struct {
    const char *s; /* not NUL-terminated */
    uint64_t len;
} gguf_string;

static int gguf_take(gguf_reader *r, void *dst, size_t n, const char *what) {
    if (r->st != QLAB_OK) return 0;
    if (n > r->size - r->pos) {
        r->st =
            qlab_fail(QLAB_ERR_FORMAT, "%s: truncated at byte %zu reading %s (%zu bytes needed, %zu left)",
                      r->path, r->pos, what, n, r->size - r->pos);
        return 0;
    }
    if (dst) memcpy(dst, r->data + r->pos, n);
    r->pos += n;
    return 1;
}

static uint32_t gguf_u32(gguf_reader *r, const char *what) {
    uint32_t v = 0;
    gguf_take(r, &v, 4, what);
    return v;
}

static uint64_t gguf_u64(gguf_reader *r, const char *what) {
    uint64_t v = 0;
    gguf_take(r, &v, 8, what);
    return v;
}

static gguf_string gguf_str(gguf_reader *r, const char *what) {
    gguf_string s = {NULL, 0};
    uint64_t len = gguf_u64(r, what);
    if (r->st != QLAB_OK) return s;
    if (len > r->size - r->pos) {
        r->st = qlab_fail(QLAB_ERR_FORMAT,
                          "%s: truncated: %s at byte %zu has length %llu, beyond the end of the file",
                          r->path, what, r->pos, (unsigned long long)len);
        return s;
    }
    s.s = (const char *)r->data + r->pos;
    s.len = len;
    r->pos += (size_t)len;
    return s;
}

static int gguf_str_is(gguf_string s, const char *lit) {
    return s.s && s.len == strlen(lit) && memcmp(s.s, lit, s.len) == 0;
}

static size_t gguf_scalar_size(uint32_t type) {
    static const size_t sizes[GGUF_TYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    return type < GGUF_TYPE_COUNT ? sizes[type] : 0;
}

/* Skips one value of the given type (arrays of arrays included), checking every length. */
static void gguf_skip_value(gguf_reader *r, uint32_t type, const char *key, int depth) {
    if (r->st != QLAB_OK) return;
    if (type == GGUF_TYPE_STRING) {
        gguf_str(r, key);
    } else if (type == GGUF_TYPE_ARRAY) {
        if (depth > 8) {
            r->st = qlab_fail(QLAB_ERR_FORMAT, "%s: %s nests arrays more than 8 deep", r->path, key);
            return;
        }
        uint32_t elem = gguf_u32(r, key);
        uint64_t n = gguf_u64(r, key);
        if (r->st != QLAB_OK) return;
        size_t es = gguf_scalar_size(elem);
        if (es) {
            if (n > (r->size - r->pos) / es) {
                r->st = qlab_fail(QLAB_ERR_FORMAT,
                                  "%s: truncated: %s: array of %llu elements runs past the end of "
                                  "the file",
                                  r->path, key, (unsigned long long)n);
                return;
            }
            r->pos += (size_t)n * es;
        } else if (elem == GGUF_TYPE_STRING || elem == GGUF_TYPE_ARRAY) {
            for (uint64_t i = 0; i < n && r->st == QLAB_OK; i++)
                gguf_skip_value(r, elem, key, depth + 1);
        } else {
            r->st = qlab_fail(QLAB_ERR_FORMAT, "%s: %s: unknown array element type %u", r->path, key, elem);
        }
    } else {
        size_t sz = gguf_scalar_size(type);
        if (!sz) {
            r->st = qlab_fail(QLAB_ERR_FORMAT, "%s: %s: unknown value type %u", r->path, key, type);
            return;
        }
        gguf_take(r, NULL, sz, key);
    }
}

/* Reads an integer-typed value into *v; 0 (with the error recorded) for any other type. */
static int gguf_read_int(gguf_reader *r, uint32_t type, const char *key, int64_t *v) {
    uint8_t b[8] = {0};
    size_t sz = gguf_scalar_size(type);
    int is_int = type <= GGUF_TYPE_INT32 || type == GGUF_TYPE_UINT64 || type == GGUF_TYPE_INT64;
    if (!is_int) {
        r->st = qlab_fail(QLAB_ERR_FORMAT, "%s: metadata %s has type %u, expected an integer", r->path, key,
                          type);
        return 0;
    }
    if (!gguf_take(r, b, sz, key)) return 0;
    switch (type) {
    case GGUF_TYPE_UINT8:
        *v = b[0];
        break;
    case GGUF_TYPE_INT8:
        *v = (int8_t)b[0];
        break;
    case GGUF_TYPE_UINT16: {
        uint16_t x;
        memcpy(&x, b, 2);
        *v = x;
        break;
    }
    case GGUF_TYPE_INT16: {
        int16_t x;
        memcpy(&x, b, 2);
        *v = x;
        break;
    }
    case GGUF_TYPE_UINT32: {
        uint32_t x;
        memcpy(&x, b, 4);
        *v = x;
        break;
    }
    case GGUF_TYPE_INT32: {
        int32_t x;
        memcpy(&x, b, 4);
        *v = x;
        break;
    }
    case GGUF_TYPE_UINT64: {
        uint64_t x;
        memcpy(&x, b, 8);
        *v = x > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)x;
        break;
    }
    default:
        memcpy(v, b, 8);
        break;
    }
    return 1;
}

static int gguf_read_float(gguf_reader *r, uint32_t type, const char *key, double *v) {
    if (type == GGUF_TYPE_FLOAT32) {
        float f = 0;
        if (!gguf_take(r, &f, 4, key)) return 0;
        *v = f;
        return 1;
    }
    if (type == GGUF_TYPE_FLOAT64) return gguf_take(r, v, 8, key);
    r->st = qlab_fail(QLAB_ERR_FORMAT, "%s: metadata %s has type %u, expected a float", r->path, key, type);
    return 0;
}

/* The llama.* hyperparameters; -1 / NaN when absent. */
typedef struct {
    int64_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, context_length, rope_dims, vocab_size;
    double norm_eps, rope_theta;
    int64_t alignment;
    int have_architecture;
} gguf_hparams;

static void gguf_read_metadata(gguf_reader *r, uint64_t n_kv, gguf_hparams *hp) {
    struct {
        const char *key;
        int64_t *dst;
    } ints[] = {
        {"llama.embedding_length", &hp->dim},
        {"llama.feed_forward_length", &hp->hidden_dim},
        {"llama.block_count", &hp->n_layers},
        {"llama.attention.head_count", &hp->n_heads},
        {"llama.attention.head_count_kv", &hp->n_kv_heads},
        {"llama.context_length", &hp->context_length},
        {"llama.rope.dimension_count", &hp->rope_dims},
        {"llama.vocab_size", &hp->vocab_size},
        {"general.alignment", &hp->alignment},
    };
    char key[256], what[300];
    for (uint64_t i = 0; i < n_kv && r->st == QLAB_OK; i++) {
        gguf_string k = gguf_str(r, "metadata key");
        uint32_t type = gguf_u32(r, "metadata value type");
        if (r->st != QLAB_OK) return;
        snprintf(key, sizeof key, "%.*s", (int)(k.len < 200 ? k.len : 200), k.s);
        snprintf(what, sizeof what, "metadata %s", key);
        int used = 0;
        for (size_t j = 0; j < sizeof ints / sizeof ints[0]; j++)
            if (gguf_str_is(k, ints[j].key)) {
                if (type == GGUF_TYPE_ARRAY) {
                    r->st = qlab_fail(QLAB_ERR_UNSUPPORTED,
                                      "%s: metadata %s is per-layer (an array); only one value "
                                      "for all layers is supported",
                                      r->path, key);
                    return;
                }
                gguf_read_int(r, type, key, ints[j].dst);
                used = 1;
            }
        if (gguf_str_is(k, "llama.attention.layer_norm_rms_epsilon")) {
            gguf_read_float(r, type, key, &hp->norm_eps);
            used = 1;
        } else if (gguf_str_is(k, "llama.rope.freq_base")) {
            gguf_read_float(r, type, key, &hp->rope_theta);
            used = 1;
        } else if (gguf_str_is(k, "general.architecture")) {
            if (type != GGUF_TYPE_STRING) {
                r->st = qlab_fail(QLAB_ERR_FORMAT,
                                  "%s: metadata general.architecture has type %u, expected a string", r->path,
                                  type);
                return;
            }
            gguf_string arch = gguf_str(r, key);
            if (r->st == QLAB_OK && !gguf_str_is(arch, "llama")) {
                r->st = qlab_fail(QLAB_ERR_UNSUPPORTED,
                                  "%s: general.architecture is \"%.*s\"; only \"llama\" is "
                                  "supported",
                                  r->path, (int)(arch.len < 64 ? arch.len : 64), arch.s);
                return;
            }
            hp->have_architecture = 1;
            used = 1;
        } else if (gguf_str_is(k, "llama.rope.scaling.type")) {
            /* linear/yarn scaling changes the positions RoPE sees: refusing beats wrong logits */
            r->st = qlab_fail(QLAB_ERR_UNSUPPORTED,
                              "%s: RoPE scaling (llama.rope.scaling.type) is not supported", r->path);
            return;
        }
        if (!used) gguf_skip_value(r, type, what, 0);
    }
}

typedef struct {
    gguf_string name;
    uint32_t n_dims;
    uint64_t ne[GGUF_MAX_DIMS];
    uint32_t type;
    uint64_t offset;
    size_t nbytes;
} gguf_tensor_info;

typedef struct {
    const char *path;
    const uint8_t *tensor_data; /* start of the aligned data section */
    gguf_tensor_info *infos;
    uint64_t n_infos;
} gguf_file;

/* Finds the tensor called name (exactly once); NULL with no error when absent. */
static const gguf_tensor_info *gguf_find(const gguf_file *g, const char *name, qlab_status *st) {
    const gguf_tensor_info *hit = NULL;
    for (uint64_t i = 0; i < g->n_infos; i++)
        if (gguf_str_is(g->infos[i].name, name)) {
            if (hit) {
                *st = qlab_fail(QLAB_ERR_FORMAT, "%s: tensor %s appears twice", g->path, name);
                return NULL;
            }
            hit = &g->infos[i];
        }
    return hit;
}

/* Copies tensor name, which must have shape (ne0, ne1) (ne1 = 0: a vector of ne0), into dst; dst NULL
 * only checks it. */
static qlab_status gguf_load_tensor(const gguf_file *g, const char *name, int ne0, int ne1, float *dst) {
    qlab_status st = QLAB_OK;
    const gguf_tensor_info *t = gguf_find(g, name, &st);
    if (st != QLAB_OK) return st;
    if (!t) return qlab_fail(QLAB_ERR_FORMAT, "%s: tensor %s is missing", g->path, name);
    uint32_t want_dims = ne1 ? 2 : 1;
    int ok = t->n_dims == want_dims && t->ne[0] == (uint64_t)ne0 && (!ne1 || t->ne[1] == (uint64_t)ne1);
    if (!ok) {
        char got[96] = "";
        for (uint32_t d = 0; d < t->n_dims; d++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%llu", d ? ", " : "",
                     (unsigned long long)t->ne[d]);
        if (ne1)
            return qlab_fail(QLAB_ERR_FORMAT, "%s: tensor %s has shape [%s], expected [%d, %d]", g->path,
                             name, got, ne0, ne1);
        return qlab_fail(QLAB_ERR_FORMAT, "%s: tensor %s has shape [%s], expected [%d]", g->path, name, got,
                         ne0);
    }
    /* gguf_parse_infos sized every tensor from its type, so the bytes are in the file */
    if (dst &&
        !ggml_dequantize(t->type, g->tensor_data + t->offset, dst, (size_t)ne0 * (size_t)(ne1 ? ne1 : 1)))
        return qlab_fail(QLAB_ERR_UNSUPPORTED, "%s: tensor %s: ggml type %u cannot be read", g->path, name,
                         t->type);
    return QLAB_OK;
}

/* Checks (m NULL) or loads every tensor of the model described by c. A quantized m gets each projection
 * dequantized into scratch (one projection's fp32 floats) and quantized from there. */
static qlab_status gguf_load_all(const gguf_file *g, const model_config *c, model *m, float *scratch) {
    int D = c->dim, H = c->hidden_dim, KV = c->n_kv_heads * (D / c->n_heads), V = c->vocab_size;
    size_t DD = (size_t)D * D, KD = (size_t)KV * D, HD = (size_t)H * D;
    model_params *p = m ? model_get_params(m) : NULL;
    int quantized = m && model_is_quantized(m);
#define GGUF_AT(field, offset) (p ? p->field + (offset) : NULL)
/* a projection's destination: NULL when only checking or when it is quantized through scratch */
#define GGUF_PROJ_AT(field, offset) (p && !quantized ? p->field + (offset) : NULL)
    QLAB_TRY(gguf_load_tensor(g, "token_embd.weight", D, V, GGUF_AT(token_embedding, 0)));
    QLAB_TRY(gguf_load_tensor(g, "output_norm.weight", D, 0, GGUF_AT(rms_final, 0)));
    if (!c->shared_classifier) QLAB_TRY(gguf_load_tensor(g, "output.weight", D, V, GGUF_AT(wcls, 0)));
    for (int l = 0; l < c->n_layers; l++) {
        struct {
            const char *suffix;
            int ne0, ne1;
            float *dst;
            int proj; /* model_proj, or -1 for a norm */
        } t[] = {
            {"attn_norm", D, 0, GGUF_AT(rms_att, (size_t)l * D), -1},
            {"attn_q", D, D, GGUF_PROJ_AT(wq, l * DD), PROJ_Q},
            {"attn_k", D, KV, GGUF_PROJ_AT(wk, l * KD), PROJ_K},
            {"attn_v", D, KV, GGUF_PROJ_AT(wv, l * KD), PROJ_V},
            {"attn_output", D, D, GGUF_PROJ_AT(wo, l * DD), PROJ_O},
            {"ffn_norm", D, 0, GGUF_AT(rms_ffn, (size_t)l * D), -1},
            {"ffn_gate", D, H, GGUF_PROJ_AT(w1, l * HD), PROJ_GATE},
            {"ffn_down", H, D, GGUF_PROJ_AT(w2, l * HD), PROJ_DOWN},
            {"ffn_up", D, H, GGUF_PROJ_AT(w3, l * HD), PROJ_UP},
        };
        for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
            char name[64];
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, t[i].suffix);
            if (quantized && t[i].proj >= 0) {
                QLAB_TRY(gguf_load_tensor(g, name, t[i].ne0, t[i].ne1, scratch));
                QLAB_TRY(checkpoint_quantize_projection(m, l, (model_proj)t[i].proj, scratch, g->path, name));
            } else {
                QLAB_TRY(gguf_load_tensor(g, name, t[i].ne0, t[i].ne1, t[i].dst));
            }
        }
    }
#undef GGUF_PROJ_AT
#undef GGUF_AT
    return QLAB_OK;
}

static qlab_status gguf_parse_infos(gguf_reader *r, gguf_file *g, uint64_t n_tensors) {
    /* each info takes at least 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset) bytes */
    if (n_tensors > (r->size - r->pos) / 24)
        return qlab_fail(QLAB_ERR_FORMAT, "%s: header says %llu tensors, more than the file can describe",
                         r->path, (unsigned long long)n_tensors);
    g->infos = qlab_calloc(n_tensors ? (size_t)n_tensors : 1, sizeof *g->infos);
    if (!g->infos) return QLAB_ERR_NOMEM;
    g->n_infos = n_tensors;
    for (uint64_t i = 0; i < n_tensors; i++) {
        gguf_tensor_info *t = &g->infos[i];
        t->name = gguf_str(r, "tensor name");
        t->n_dims = gguf_u32(r, "tensor n_dims");
        if (r->st != QLAB_OK) return r->st;
        char name[128];
        snprintf(name, sizeof name, "%.*s", (int)(t->name.len < 100 ? t->name.len : 100), t->name.s);
        if (t->n_dims == 0 || t->n_dims > GGUF_MAX_DIMS)
            return qlab_fail(QLAB_ERR_FORMAT, "%s: tensor %s has %u dimensions (1 to %d allowed)", r->path,
                             name, t->n_dims, GGUF_MAX_DIMS);
        for (uint32_t d = 0; d < t->n_dims; d++)
            t->ne[d] = gguf_u64(r, "tensor dims");
        t->type = gguf_u32(r, "tensor type");
        t->offset = gguf_u64(r, "tensor offset");
        if (r->st != QLAB_OK) return r->st;
        size_t count = 1;
        for (uint32_t d = 0; d < t->n_dims; d++)
            if (t->ne[d] == 0 || t->ne[d] > SIZE_MAX || !checkpoint_mul(count, (size_t)t->ne[d], &count))
                return qlab_fail(QLAB_ERR_FORMAT, "%s: tensor %s: dimension %u = %llu is zero or overflows",
                                 r->path, name, d, (unsigned long long)t->ne[d]);
        size_t be, bb;
        if (!ggml_type_block(t->type, &be, &bb)) {
            /* other ggml types are not read: a skipped tensor we need is reported as unsupported */
            t->nbytes = 0;
            continue;
        }
        /* ggml quantizes along rows: each row (ne[0] values) is a whole number of blocks */
        if (t->ne[0] % be != 0)
            return qlab_fail(QLAB_ERR_FORMAT,
                             "%s: tensor %s: type %s needs rows of a multiple of %zu values, ne[0] is %llu",
                             r->path, name, ggml_type_name(t->type), be, (unsigned long long)t->ne[0]);
        if (!checkpoint_mul(count / be, bb, &t->nbytes))
            return qlab_fail(QLAB_ERR_FORMAT, "%s: tensor %s: byte size overflows", r->path, name);
    }
    return QLAB_OK;
}

/* Magic, version and the two counts that follow them. */
static qlab_status gguf_read_header(gguf_reader *r, uint64_t *n_tensors, uint64_t *n_kv) {
    char magic[4] = {0};
    gguf_take(r, magic, 4, "magic");
    if (r->st == QLAB_OK && memcmp(magic, "GGUF", 4) != 0)
        r->st = qlab_fail(QLAB_ERR_FORMAT, "%s: bad magic (expected \"GGUF\")", r->path);
    uint32_t version = gguf_u32(r, "version");
    if (r->st == QLAB_OK && (version & 0xffff) == 0 && version != 0)
        r->st = qlab_fail(QLAB_ERR_UNSUPPORTED,
                          "%s: version field 0x%08x looks big-endian; only little-endian GGUF is "
                          "supported",
                          r->path, version);
    else if (r->st == QLAB_OK && version != 2 && version != 3)
        r->st = qlab_fail(QLAB_ERR_UNSUPPORTED, "%s: GGUF version %u (only 2 and 3 are supported)", r->path,
                          version);
    *n_tensors = gguf_u64(r, "tensor count");
    *n_kv = gguf_u64(r, "metadata count");
    return r->st;
}

/* Every tensor lies aligned inside the data_size bytes of tensor data and has a type this reader
 * converts; scaled RoPE is refused. */
static qlab_status gguf_check_tensors(const gguf_file *g, size_t data_size, size_t align, const char *path) {
    qlab_status st = QLAB_OK;
    for (uint64_t i = 0; i < g->n_infos; i++) {
        const gguf_tensor_info *t = &g->infos[i];
        int name_len = (int)(t->name.len < 100 ? t->name.len : 100);
        if (t->offset % align != 0)
            return qlab_fail(QLAB_ERR_FORMAT,
                             "%s: tensor %.*s: offset %llu is not a multiple of the alignment %zu", path,
                             name_len, t->name.s, (unsigned long long)t->offset, align);
        if (t->offset > data_size || t->nbytes > data_size - t->offset)
            return qlab_fail(QLAB_ERR_FORMAT,
                             "%s: tensor %.*s: offset %llu + %zu bytes is beyond the %zu bytes of tensor "
                             "data",
                             path, name_len, t->name.s, (unsigned long long)t->offset, t->nbytes, data_size);
        if (t->nbytes == 0 && t->name.len >= 7 && memcmp(t->name.s + t->name.len - 7, ".weight", 7) == 0)
            return qlab_fail(QLAB_ERR_UNSUPPORTED,
                             "%s: tensor %.*s has ggml type %u; supported: F32, F16, BF16, Q4_0, Q4_1, "
                             "Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K",
                             path, name_len, t->name.s, t->type);
    }
    if (gguf_find(g, "rope_freqs.weight", &st))
        return qlab_fail(QLAB_ERR_UNSUPPORTED, "%s: tensor rope_freqs.weight (scaled RoPE) is not supported",
                         path);
    return QLAB_OK;
}

/* The model configuration from the metadata, checked; the vocabulary size comes from the embedding. */
static qlab_status gguf_model_config(const gguf_file *g, gguf_hparams *hp, const char *path,
                                     model_config *cfg) {
    /* the vocabulary size comes from the embedding; every other size from the metadata */
    qlab_status st = QLAB_OK;
    const gguf_tensor_info *emb = gguf_find(g, "token_embd.weight", &st);
    if (st != QLAB_OK) return st;
    if (!emb || emb->n_dims != 2 || emb->ne[1] > INT32_MAX)
        return qlab_fail(QLAB_ERR_FORMAT, "%s: tensor token_embd.weight is %s", path,
                         emb ? "not a 2-D matrix" : "missing");
    struct {
        const char *key;
        int64_t v;
    } required[] = {{"llama.embedding_length", hp->dim},
                    {"llama.feed_forward_length", hp->hidden_dim},
                    {"llama.block_count", hp->n_layers},
                    {"llama.attention.head_count", hp->n_heads},
                    {"llama.context_length", hp->context_length}};
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++) {
        if (required[i].v == -1)
            return qlab_fail(QLAB_ERR_FORMAT, "%s: metadata %s is missing", path, required[i].key);
        if (required[i].v <= 0 || required[i].v > INT32_MAX)
            return qlab_fail(QLAB_ERR_FORMAT, "%s: metadata %s = %lld is out of range", path, required[i].key,
                             (long long)required[i].v);
    }
    if (hp->context_length > MODEL_MAX_SEQ_LEN)
        return qlab_fail(QLAB_ERR_UNSUPPORTED,
                         "%s: metadata llama.context_length = %lld is above the limit %d", path,
                         (long long)hp->context_length, MODEL_MAX_SEQ_LEN);
    if (emb->ne[0] != (uint64_t)hp->dim)
        return qlab_fail(QLAB_ERR_FORMAT,
                         "%s: tensor token_embd.weight has shape [%llu, %llu] but metadata "
                         "llama.embedding_length = %lld",
                         path, (unsigned long long)emb->ne[0], (unsigned long long)emb->ne[1],
                         (long long)hp->dim);
    if (hp->n_kv_heads == -1) hp->n_kv_heads = hp->n_heads;
    if (hp->n_kv_heads <= 0 || hp->n_kv_heads > INT32_MAX || hp->n_heads % hp->n_kv_heads != 0)
        return qlab_fail(QLAB_ERR_FORMAT,
                         "%s: metadata llama.attention.head_count_kv = %lld does not divide head_count "
                         "= %lld",
                         path, (long long)hp->n_kv_heads, (long long)hp->n_heads);
    if (hp->dim % hp->n_heads != 0)
        return qlab_fail(QLAB_ERR_FORMAT,
                         "%s: metadata llama.embedding_length = %lld is not divisible by head_count = "
                         "%lld",
                         path, (long long)hp->dim, (long long)hp->n_heads);
    if (hp->rope_dims != -1 && hp->rope_dims != hp->dim / hp->n_heads)
        return qlab_fail(QLAB_ERR_UNSUPPORTED,
                         "%s: metadata llama.rope.dimension_count = %lld: partial rotary (head size "
                         "%lld) is not supported",
                         path, (long long)hp->rope_dims, (long long)(hp->dim / hp->n_heads));
    if (hp->vocab_size != -1 && (uint64_t)hp->vocab_size != emb->ne[1])
        return qlab_fail(QLAB_ERR_FORMAT,
                         "%s: metadata llama.vocab_size = %lld but token_embd.weight has %llu rows", path,
                         (long long)hp->vocab_size, (unsigned long long)emb->ne[1]);
    *cfg = (model_config){
        .dim = (int)hp->dim,
        .hidden_dim = (int)hp->hidden_dim,
        .n_layers = (int)hp->n_layers,
        .n_heads = (int)hp->n_heads,
        .n_kv_heads = (int)hp->n_kv_heads,
        .vocab_size = (int)emb->ne[1],
        .seq_len = (int)hp->context_length,
        .norm_eps = hp->norm_eps >= 0 ? (float)hp->norm_eps : 1e-5f, /* llama.cpp's defaults when absent */
        .rope_theta = hp->rope_theta >= 0 ? (float)hp->rope_theta : 10000.0f,
    };
    qlab_status ost = QLAB_OK;
    cfg->shared_classifier =
        gguf_find(g, "output.weight", &ost) == NULL; /* llama.cpp ties when it is absent */
    return ost;
}

/* quant NULL: an fp32 model; else a quantized one whose projections are quantized one at a time. */
static qlab_status gguf_load(const char *path, const checkpoint_quant *quant, model **out) {
    *out = NULL;
    float *scratch = NULL;
    checkpoint_mapping map;
    QLAB_TRY(checkpoint_map(path, &map));
    gguf_reader r = {map.data, map.size, 0, path, QLAB_OK};
    gguf_file g = {path, NULL, NULL, 0};
    model *m = NULL;
    qlab_status st;
    uint64_t n_tensors = 0, n_kv = 0;
    st = gguf_read_header(&r, &n_tensors, &n_kv);
    if (st != QLAB_OK) goto done;
    gguf_hparams hp = {-1, -1, -1, -1, -1, -1, -1, -1, -1.0, -1.0, GGUF_DEFAULT_ALIGNMENT, 0};
    gguf_read_metadata(&r, n_kv, &hp);
    if ((st = r.st) != QLAB_OK) goto done;
    if (!hp.have_architecture) {
        st = qlab_fail(QLAB_ERR_FORMAT, "%s: metadata general.architecture is missing", path);
        goto done;
    }
    if (hp.alignment <= 0 || hp.alignment > (1 << 30) || (hp.alignment & (hp.alignment - 1)) != 0) {
        st = qlab_fail(QLAB_ERR_FORMAT, "%s: general.alignment = %lld is not a power of two", path,
                       (long long)hp.alignment);
        goto done;
    }
    if ((st = gguf_parse_infos(&r, &g, n_tensors)) != QLAB_OK) goto done;
    size_t align = (size_t)hp.alignment, data_start = (r.pos + align - 1) / align * align;
    if (data_start > map.size) {
        st = qlab_fail(QLAB_ERR_FORMAT,
                       "%s: tensor data would start at byte %zu, past the end of the file (%zu bytes)", path,
                       data_start, map.size);
        goto done;
    }
    g.tensor_data = map.data + data_start;
    if ((st = gguf_check_tensors(&g, map.size - data_start, align, path)) != QLAB_OK) goto done;
    model_config cfg;
    if ((st = gguf_model_config(&g, &hp, path, &cfg)) != QLAB_OK) goto done;
    /* every shape is checked before the model is allocated, so lying metadata cannot make us allocate (and
     * zero) a huge model */
    if ((st = gguf_load_all(&g, &cfg, NULL, NULL)) != QLAB_OK) goto done;
    st = quant ? model_create_quantized(&m, &cfg, quant->dtype, quant->blocksize, quant->double_quant)
               : model_create(&m, &cfg);
    if (st != QLAB_OK) {
        qlab_fail_context(st, "%s", path);
        goto done;
    }
    if (quant && !(scratch = checkpoint_projection_scratch(&cfg))) {
        st = qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory for one projection's fp32 weights", path);
        goto done;
    }
    if ((st = gguf_load_all(&g, &cfg, m, scratch)) != QLAB_OK) goto done;
done:
    qlab_free_aligned(scratch);
    if (st != QLAB_OK) {
        model_free(m);
        m = NULL;
    }
    free(g.infos);
    checkpoint_unmap(&map);
    *out = m;
    return st;
}

qlab_status checkpoint_load_gguf(const char *path, model **out) {
    return gguf_load(path, NULL, out);
}

qlab_status checkpoint_load_gguf_quantized(const char *path, const checkpoint_quant *quant, model **out) {
    return gguf_load(path, quant, out);
}

/* ---------------------------------------------------------------- writer */

static void gguf_put_string(checkpoint_writer *w, const char *s) {
    uint64_t n = strlen(s);
    atomic_file_write(w, &n, 8);
    atomic_file_write(w, s, (size_t)n);
}

static void gguf_put_kv_u32(checkpoint_writer *w, const char *key, uint32_t v) {
    uint32_t type = GGUF_TYPE_UINT32;
    gguf_put_string(w, key);
    atomic_file_write(w, &type, 4);
    atomic_file_write(w, &v, 4);
}

static void gguf_put_kv_f32(checkpoint_writer *w, const char *key, float v) {
    uint32_t type = GGUF_TYPE_FLOAT32;
    gguf_put_string(w, key);
    atomic_file_write(w, &type, 4);
    atomic_file_write(w, &v, 4);
}

typedef struct {
    char name[64];
    const float *data;
    uint64_t ne0, ne1; /* ne1 = 0: vector */
    checkpoint_dtype dtype;
    uint64_t offset;
} gguf_out_tensor;

/* layer < 0: a model-level tensor named name; else "blk.<layer>.<name>.weight". */
static void gguf_add(gguf_out_tensor *t, const char *name, int layer, const float *data, int ne0, int ne1,
                     checkpoint_dtype dtype) {
    if (layer < 0)
        snprintf(t->name, sizeof t->name, "%s", name);
    else
        snprintf(t->name, sizeof t->name, "blk.%d.%s.weight", layer, name);
    t->data = data;
    t->ne0 = (uint64_t)ne0;
    t->ne1 = (uint64_t)ne1;
    t->dtype = dtype;
}

qlab_status checkpoint_save_gguf(const model *m, const char *path, checkpoint_dtype dtype) {
    QLAB_TRY(checkpoint_check_savable(m, path));
    const model_config *c = model_get_config(m);
    if (c->rope_scaling != MODEL_ROPE_DEFAULT) /* llama.cpp keeps llama3's as a rope_freqs tensor */
        return qlab_fail(QLAB_ERR_UNSUPPORTED,
                         "%s: GGUF output does not store %s RoPE scaling (qlab writes it to Hugging Face "
                         "configs only); refusing rather than dropping it",
                         path, model_rope_scaling_name(c->rope_scaling));
    const model_params *p = checkpoint_params(m);
    int L = c->n_layers, D = c->dim, H = c->hidden_dim, KV = c->n_kv_heads * (D / c->n_heads);
    size_t DD = (size_t)D * D, KD = (size_t)KV * D, HD = (size_t)H * D;
    size_t n = 2 + (c->shared_classifier ? 0 : 1) + 9 * (size_t)L;
    gguf_out_tensor *ts = qlab_calloc(n, sizeof *ts);
    if (!ts) return qlab_fail_context(QLAB_ERR_NOMEM, "%s", path);
    size_t k = 0;
    gguf_add(&ts[k++], "token_embd.weight", -1, p->token_embedding, D, c->vocab_size, dtype);
    gguf_add(&ts[k++], "output_norm.weight", -1, p->rms_final, D, 0, CHECKPOINT_F32);
    if (!c->shared_classifier) gguf_add(&ts[k++], "output.weight", -1, p->wcls, D, c->vocab_size, dtype);
    for (int l = 0; l < L; l++) {
        gguf_add(&ts[k++], "attn_norm", l, p->rms_att + (size_t)l * D, D, 0, CHECKPOINT_F32);
        gguf_add(&ts[k++], "attn_q", l, p->wq + l * DD, D, D, dtype);
        gguf_add(&ts[k++], "attn_k", l, p->wk + l * KD, D, KV, dtype);
        gguf_add(&ts[k++], "attn_v", l, p->wv + l * KD, D, KV, dtype);
        gguf_add(&ts[k++], "attn_output", l, p->wo + l * DD, D, D, dtype);
        gguf_add(&ts[k++], "ffn_norm", l, p->rms_ffn + (size_t)l * D, D, 0, CHECKPOINT_F32);
        gguf_add(&ts[k++], "ffn_gate", l, p->w1 + l * HD, D, H, dtype);
        gguf_add(&ts[k++], "ffn_down", l, p->w2 + l * HD, H, D, dtype);
        gguf_add(&ts[k++], "ffn_up", l, p->w3 + l * HD, D, H, dtype);
    }
    uint64_t offset = 0;
    for (size_t i = 0; i < n; i++) {
        ts[i].offset = offset;
        uint64_t bytes = ts[i].ne0 * (ts[i].ne1 ? ts[i].ne1 : 1) * checkpoint_dtype_size(ts[i].dtype);
        offset += (bytes + GGUF_DEFAULT_ALIGNMENT - 1) / GGUF_DEFAULT_ALIGNMENT * GGUF_DEFAULT_ALIGNMENT;
    }
    checkpoint_writer w;
    qlab_status st = atomic_file_open(&w, path);
    if (st != QLAB_OK) {
        free(ts);
        return st;
    }
    uint32_t version = 3, arch_type = GGUF_TYPE_STRING;
    uint64_t n_tensors = n, n_kv = 11;
    atomic_file_write(&w, "GGUF", 4);
    atomic_file_write(&w, &version, 4);
    atomic_file_write(&w, &n_tensors, 8);
    atomic_file_write(&w, &n_kv, 8);
    gguf_put_string(&w, "general.architecture");
    atomic_file_write(&w, &arch_type, 4);
    gguf_put_string(&w, "llama");
    gguf_put_kv_u32(&w, "general.alignment", GGUF_DEFAULT_ALIGNMENT);
    gguf_put_kv_u32(&w, "llama.context_length", (uint32_t)c->seq_len);
    gguf_put_kv_u32(&w, "llama.embedding_length", (uint32_t)D);
    gguf_put_kv_u32(&w, "llama.feed_forward_length", (uint32_t)H);
    gguf_put_kv_u32(&w, "llama.block_count", (uint32_t)L);
    gguf_put_kv_u32(&w, "llama.attention.head_count", (uint32_t)c->n_heads);
    gguf_put_kv_u32(&w, "llama.attention.head_count_kv", (uint32_t)c->n_kv_heads);
    gguf_put_kv_u32(&w, "llama.rope.dimension_count", (uint32_t)(D / c->n_heads));
    gguf_put_kv_f32(&w, "llama.attention.layer_norm_rms_epsilon", c->norm_eps);
    gguf_put_kv_f32(&w, "llama.rope.freq_base", c->rope_theta);
    for (size_t i = 0; i < n; i++) {
        uint32_t n_dims = ts[i].ne1 ? 2 : 1;
        uint32_t type = ts[i].dtype == CHECKPOINT_F32   ? GGML_TYPE_F32
                        : ts[i].dtype == CHECKPOINT_F16 ? GGML_TYPE_F16
                                                        : GGML_TYPE_BF16;
        gguf_put_string(&w, ts[i].name);
        atomic_file_write(&w, &n_dims, 4);
        atomic_file_write(&w, &ts[i].ne0, 8);
        if (n_dims == 2) atomic_file_write(&w, &ts[i].ne1, 8);
        atomic_file_write(&w, &type, 4);
        atomic_file_write(&w, &ts[i].offset, 8);
    }
    atomic_file_pad(&w,
                    (GGUF_DEFAULT_ALIGNMENT - w.written % GGUF_DEFAULT_ALIGNMENT) % GGUF_DEFAULT_ALIGNMENT);
    uint64_t data_start = w.written;
    for (size_t i = 0; i < n; i++) {
        atomic_file_pad(&w, (size_t)(data_start + ts[i].offset - w.written));
        checkpoint_writer_write_floats(&w, ts[i].data, (size_t)(ts[i].ne0 * (ts[i].ne1 ? ts[i].ne1 : 1)),
                                       ts[i].dtype);
    }
    free(ts);
    return atomic_file_commit(&w);
}
