/* GGUF metadata reader: header (magic, version, tensor count, kv count) and the key-value pairs, each
 * length checked against the bytes left (arrays of arrays are walked, up to 8 deep). */
#include "core/formats/gguf_meta.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const uint8_t *data;
    size_t size, pos;
    const char *path;
    qlab_status st;
} reader;

static int take(reader *r, void *dst, size_t n, const char *what) {
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

static size_t scalar_size(uint32_t type) {
    static const size_t sizes[GGUF_META_TYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    return type < GGUF_META_TYPE_COUNT ? sizes[type] : 0;
}

static void skip_string(reader *r, const char *what) {
    uint64_t len = 0;
    if (!take(r, &len, 8, what)) return;
    if (len > r->size - r->pos) {
        r->st = qlab_fail(QLAB_ERR_FORMAT, "%s: %s at byte %zu has length %llu, beyond the end of the file",
                          r->path, what, r->pos, (unsigned long long)len);
        return;
    }
    r->pos += (size_t)len;
}

static void skip_value(reader *r, uint32_t type, const char *what, int depth) {
    if (r->st != QLAB_OK) return;
    if (type == GGUF_META_STRING) {
        skip_string(r, what);
        return;
    }
    if (type == GGUF_META_ARRAY) {
        uint32_t elem = 0;
        uint64_t n = 0;
        take(r, &elem, 4, what);
        take(r, &n, 8, what);
        if (r->st != QLAB_OK) return;
        if (depth > 8) {
            r->st = qlab_fail(QLAB_ERR_FORMAT, "%s: %s nests arrays more than 8 deep", r->path, what);
            return;
        }
        size_t es = scalar_size(elem);
        if (es) {
            if (n > (r->size - r->pos) / es) {
                r->st =
                    qlab_fail(QLAB_ERR_FORMAT, "%s: %s: array of %llu elements runs past the end of the file",
                              r->path, what, (unsigned long long)n);
                return;
            }
            r->pos += (size_t)n * es;
        } else if (elem == GGUF_META_STRING || elem == GGUF_META_ARRAY) {
            for (uint64_t i = 0; i < n && r->st == QLAB_OK; i++)
                skip_value(r, elem, what, depth + 1);
        } else {
            r->st = qlab_fail(QLAB_ERR_FORMAT, "%s: %s: unknown array element type %u", r->path, what, elem);
        }
        return;
    }
    size_t sz = scalar_size(type);
    if (!sz) {
        r->st = qlab_fail(QLAB_ERR_FORMAT, "%s: %s: unknown value type %u", r->path, what, type);
        return;
    }
    take(r, NULL, sz, what);
}

int gguf_meta_is_gguf(const void *data, size_t size) {
    return size >= 4 && memcmp(data, "GGUF", 4) == 0;
}

qlab_status gguf_meta_parse(const char *path, const void *data, size_t size, gguf_meta *out) {
    memset(out, 0, sizeof *out);
    out->path = path;
    reader r = {data, size, 0, path, QLAB_OK};
    char magic[4] = {0};
    take(&r, magic, 4, "magic");
    if (r.st == QLAB_OK && memcmp(magic, "GGUF", 4) != 0)
        return qlab_fail(QLAB_ERR_FORMAT, "%s: bad magic (expected \"GGUF\")", path);
    take(&r, &out->version, 4, "version");
    uint64_t n_kv = 0;
    take(&r, &out->n_tensors, 8, "tensor count");
    take(&r, &n_kv, 8, "metadata count");
    if (r.st != QLAB_OK) return r.st;
    if (out->version != 2 && out->version != 3)
        return qlab_fail(QLAB_ERR_UNSUPPORTED, "%s: GGUF version %u (only 2 and 3 are supported)", path,
                         out->version);
    /* each pair takes at least 8 (key length) + 4 (type) + 1 bytes */
    if (n_kv > (size - r.pos) / 13)
        return qlab_fail(QLAB_ERR_FORMAT, "%s: header says %llu metadata pairs, more than the file holds",
                         path, (unsigned long long)n_kv);
    out->kv = qlab_calloc(n_kv ? (size_t)n_kv : 1, sizeof *out->kv);
    if (!out->kv) return qlab_fail_context(QLAB_ERR_NOMEM, "%s", path);
    for (uint64_t i = 0; i < n_kv; i++) {
        gguf_meta_kv *kv = &out->kv[i];
        uint64_t klen = 0;
        take(&r, &klen, 8, "metadata key");
        if (r.st == QLAB_OK && klen > r.size - r.pos)
            r.st = qlab_fail(QLAB_ERR_FORMAT,
                             "%s: metadata key %llu has length %llu, beyond the end of the file", path,
                             (unsigned long long)i, (unsigned long long)klen);
        if (r.st != QLAB_OK) break;
        kv->key.s = (const char *)r.data + r.pos;
        kv->key.len = (size_t)klen;
        r.pos += (size_t)klen;
        take(&r, &kv->type, 4, "metadata value type");
        if (r.st != QLAB_OK) break;
        char what[160];
        snprintf(what, sizeof what, "metadata %.*s", (int)(klen < 120 ? klen : 120), kv->key.s);
        kv->count = 1;
        size_t start = r.pos;
        if (kv->type == GGUF_META_ARRAY && r.size - r.pos >= 12) {
            memcpy(&kv->elem_type, r.data + r.pos, 4);
            memcpy(&kv->count, r.data + r.pos + 4, 8);
            start += 12;
        }
        skip_value(&r, kv->type, what, 0);
        if (r.st != QLAB_OK) break;
        kv->value = r.data + start;
        out->n_kv = (size_t)i + 1;
    }
    if (r.st != QLAB_OK) gguf_meta_free(out);
    return r.st;
}

void gguf_meta_free(gguf_meta *m) {
    free(m->kv);
    m->kv = NULL;
    m->n_kv = 0;
}

const gguf_meta_kv *gguf_meta_find(const gguf_meta *m, const char *key) {
    size_t n = strlen(key);
    for (size_t i = 0; i < m->n_kv; i++)
        if (m->kv[i].key.len == n && memcmp(m->kv[i].key.s, key, n) == 0) return &m->kv[i];
    return NULL;
}

static const gguf_meta_kv *lookup(const gguf_meta *m, const char *key, int *found) {
    const gguf_meta_kv *kv = gguf_meta_find(m, key);
    if (found) *found = kv != NULL;
    return kv;
}

static qlab_status wrong_type(const gguf_meta *m, const char *key, uint32_t type, const char *want) {
    return qlab_fail(QLAB_ERR_FORMAT, "%s: metadata %s has type %u, expected %s", m->path, key, type, want);
}

qlab_status gguf_meta_get_int(const gguf_meta *m, const char *key, int64_t *out, int *found) {
    const gguf_meta_kv *kv = lookup(m, key, found);
    if (!kv) return QLAB_OK;
    const uint8_t *b = kv->value;
    switch (kv->type) {
    case GGUF_META_UINT8:
        *out = b[0];
        return QLAB_OK;
    case GGUF_META_INT8:
        *out = (int8_t)b[0];
        return QLAB_OK;
    case GGUF_META_UINT16: {
        uint16_t x;
        memcpy(&x, b, 2);
        *out = x;
        return QLAB_OK;
    }
    case GGUF_META_INT16: {
        int16_t x;
        memcpy(&x, b, 2);
        *out = x;
        return QLAB_OK;
    }
    case GGUF_META_UINT32: {
        uint32_t x;
        memcpy(&x, b, 4);
        *out = x;
        return QLAB_OK;
    }
    case GGUF_META_INT32: {
        int32_t x;
        memcpy(&x, b, 4);
        *out = x;
        return QLAB_OK;
    }
    case GGUF_META_UINT64: {
        uint64_t x;
        memcpy(&x, b, 8);
        *out = x > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)x;
        return QLAB_OK;
    }
    case GGUF_META_INT64:
        memcpy(out, b, 8);
        return QLAB_OK;
    default:
        return wrong_type(m, key, kv->type, "an integer");
    }
}

qlab_status gguf_meta_get_bool(const gguf_meta *m, const char *key, int *out, int *found) {
    const gguf_meta_kv *kv = lookup(m, key, found);
    if (!kv) return QLAB_OK;
    if (kv->type != GGUF_META_BOOL) return wrong_type(m, key, kv->type, "a bool");
    *out = kv->value[0] != 0;
    return QLAB_OK;
}

qlab_status gguf_meta_get_string(const gguf_meta *m, const char *key, gguf_meta_str *out, int *found) {
    const gguf_meta_kv *kv = lookup(m, key, found);
    if (!kv) return QLAB_OK;
    if (kv->type != GGUF_META_STRING) return wrong_type(m, key, kv->type, "a string");
    uint64_t len;
    memcpy(&len, kv->value, 8);
    out->s = (const char *)kv->value + 8;
    out->len = (size_t)len;
    return QLAB_OK;
}

qlab_status gguf_meta_get_strings(const gguf_meta *m, const char *key, gguf_meta_str **out, size_t *n,
                                  int *found) {
    *out = NULL;
    *n = 0;
    const gguf_meta_kv *kv = lookup(m, key, found);
    if (!kv) return QLAB_OK;
    if (kv->type != GGUF_META_ARRAY || kv->elem_type != GGUF_META_STRING)
        return wrong_type(m, key, kv->type, "an array of strings");
    /* gguf_meta_parse checked that the strings lie in the file */
    gguf_meta_str *s = qlab_calloc(kv->count ? (size_t)kv->count : 1, sizeof *s);
    if (!s) return qlab_fail_context(QLAB_ERR_NOMEM, "%s: %s", m->path, key);
    const uint8_t *p = kv->value;
    for (uint64_t i = 0; i < kv->count; i++) {
        uint64_t len;
        memcpy(&len, p, 8);
        s[i].s = (const char *)p + 8;
        s[i].len = (size_t)len;
        p += 8 + len;
    }
    *out = s;
    *n = (size_t)kv->count;
    return QLAB_OK;
}

static qlab_status get_array32(const gguf_meta *m, const char *key, uint32_t t1, uint32_t t2,
                               const char *want, void **out, size_t *n, int *found) {
    *out = NULL;
    *n = 0;
    const gguf_meta_kv *kv = lookup(m, key, found);
    if (!kv) return QLAB_OK;
    if (kv->type != GGUF_META_ARRAY || (kv->elem_type != t1 && kv->elem_type != t2))
        return wrong_type(m, key, kv->type, want);
    void *buf = malloc(kv->count ? (size_t)kv->count * 4 : 4);
    if (!buf) return qlab_fail_context(QLAB_ERR_NOMEM, "%s: %s", m->path, key);
    memcpy(buf, kv->value, (size_t)kv->count * 4);
    *out = buf;
    *n = (size_t)kv->count;
    return QLAB_OK;
}

qlab_status gguf_meta_get_i32s(const gguf_meta *m, const char *key, int32_t **out, size_t *n, int *found) {
    void *p;
    qlab_status st =
        get_array32(m, key, GGUF_META_INT32, GGUF_META_UINT32, "an array of int32", &p, n, found);
    *out = p;
    return st;
}

qlab_status gguf_meta_get_f32s(const gguf_meta *m, const char *key, float **out, size_t *n, int *found) {
    void *p;
    qlab_status st =
        get_array32(m, key, GGUF_META_FLOAT32, GGUF_META_FLOAT32, "an array of float32", &p, n, found);
    *out = p;
    return st;
}
