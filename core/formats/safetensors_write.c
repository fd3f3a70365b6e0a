/* safetensors writer: collects named tensors and metadata, then writes the file atomically (temp file +
 * rename) with exactly the bytes the reference implementation's serialize() produces. */
#include "core/formats/safetensors.h"

#include "core/base/atomic_file.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    char *name;
    safetensors_dtype dtype;
    int ndim;
    int64_t shape[SAFETENSORS_MAX_DIMS];
    size_t nbytes;
    const void *data;
    void *owned; /* non-NULL when the writer copied the bytes */
} safetensors_entry;

struct safetensors_writer {
    safetensors_entry *entries;
    int n, cap;
    char **meta_keys, **meta_values;
    int n_meta, cap_meta;
};

safetensors_writer *safetensors_writer_new(void) {
    return qlab_calloc(1, sizeof(safetensors_writer));
}

void safetensors_writer_free(safetensors_writer *w) {
    if (!w) return;
    for (int i = 0; i < w->n; i++) {
        free(w->entries[i].name);
        free(w->entries[i].owned);
    }
    free(w->entries);
    for (int i = 0; i < w->n_meta; i++) {
        free(w->meta_keys[i]);
        free(w->meta_values[i]);
    }
    free(w->meta_keys);
    free(w->meta_values);
    free(w);
}

static qlab_status safetensors_writer_push(safetensors_writer *w, const char *name, safetensors_dtype dt,
                                           int ndim, const int64_t *shape, const void *data, int copy) {
    if (!name || !name[0] || !strcmp(name, "__metadata__"))
        return qlab_fail(QLAB_ERR_ARG, "safetensors: invalid tensor name '%s'", name ? name : "(null)");
    if ((unsigned)dt >= SAFETENSORS_DTYPE_COUNT)
        return qlab_fail(QLAB_ERR_ARG, "safetensors: tensor '%s': invalid dtype %d", name, (int)dt);
    if (ndim < 0 || ndim > SAFETENSORS_MAX_DIMS)
        return qlab_fail(QLAB_ERR_ARG, "safetensors: tensor '%s': ndim %d outside 0..%d", name, ndim,
                         SAFETENSORS_MAX_DIMS);
    uint64_t count = 1, nbytes;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return qlab_fail(QLAB_ERR_ARG, "safetensors: tensor '%s': negative dimension %" PRId64, name,
                             shape[i]);
        if (__builtin_mul_overflow(count, (uint64_t)shape[i], &count))
            return qlab_fail(QLAB_ERR_ARG, "safetensors: tensor '%s': shape product overflows", name);
    }
    if (__builtin_mul_overflow(count, (uint64_t)safetensors_dtype_size(dt), &nbytes) || nbytes > SIZE_MAX / 2)
        return qlab_fail(QLAB_ERR_ARG, "safetensors: tensor '%s' is too large", name);
    if (nbytes && !data) return qlab_fail(QLAB_ERR_ARG, "safetensors: tensor '%s' has no data", name);
    if (w->n == w->cap) {
        int cap = w->cap ? 2 * w->cap : 16;
        safetensors_entry *e = realloc(w->entries, (size_t)cap * sizeof *e);
        if (!e) return qlab_fail(QLAB_ERR_NOMEM, "safetensors: out of memory");
        w->entries = e;
        w->cap = cap;
    }
    safetensors_entry *e = &w->entries[w->n];
    memset(e, 0, sizeof *e);
    e->name = strdup(name);
    if (!e->name) return qlab_fail(QLAB_ERR_NOMEM, "safetensors: out of memory");
    e->dtype = dt;
    e->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        e->shape[i] = shape[i];
    e->nbytes = (size_t)nbytes;
    e->data = data;
    if (copy) {
        e->owned = malloc(e->nbytes ? e->nbytes : 1);
        if (!e->owned) {
            free(e->name);
            return qlab_fail(QLAB_ERR_NOMEM, "safetensors: out of memory copying tensor '%s'", name);
        }
        if (e->nbytes) memcpy(e->owned, data, e->nbytes);
        e->data = e->owned;
    }
    w->n++;
    return QLAB_OK;
}

qlab_status safetensors_writer_add(safetensors_writer *w, const char *name, safetensors_dtype dt, int ndim,
                                   const int64_t *shape, const void *data) {
    return safetensors_writer_push(w, name, dt, ndim, shape, data, 0);
}

qlab_status safetensors_writer_add_copy(safetensors_writer *w, const char *name, safetensors_dtype dt,
                                        int ndim, const int64_t *shape, const void *data) {
    return safetensors_writer_push(w, name, dt, ndim, shape, data, 1);
}

qlab_status safetensors_writer_set_metadata(safetensors_writer *w, const char *key, const char *value) {
    for (int i = 0; i < w->n_meta; i++)
        if (!strcmp(w->meta_keys[i], key)) {
            char *v = strdup(value);
            if (!v) return qlab_fail(QLAB_ERR_NOMEM, "safetensors: out of memory");
            free(w->meta_values[i]);
            w->meta_values[i] = v;
            return QLAB_OK;
        }
    if (w->n_meta == w->cap_meta) {
        int cap = w->cap_meta ? 2 * w->cap_meta : 8;
        char **k = realloc(w->meta_keys, (size_t)cap * sizeof *k);
        if (!k) return qlab_fail(QLAB_ERR_NOMEM, "safetensors: out of memory");
        w->meta_keys = k;
        char **v = realloc(w->meta_values, (size_t)cap * sizeof *v);
        if (!v) return qlab_fail(QLAB_ERR_NOMEM, "safetensors: out of memory");
        w->meta_values = v;
        w->cap_meta = cap;
    }
    w->meta_keys[w->n_meta] = strdup(key);
    w->meta_values[w->n_meta] = strdup(value);
    if (!w->meta_keys[w->n_meta] || !w->meta_values[w->n_meta]) {
        free(w->meta_keys[w->n_meta]);
        free(w->meta_values[w->n_meta]);
        return qlab_fail(QLAB_ERR_NOMEM, "safetensors: out of memory");
    }
    w->n_meta++;
    return QLAB_OK;
}

/* A growable byte buffer for the header text. */
typedef struct {
    char *p;
    size_t n, cap;
    int failed;
} safetensors_text;

static void safetensors_put(safetensors_text *t, const char *s, size_t len) {
    if (t->failed) return;
    if (t->n + len + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 1024;
        while (cap < t->n + len + 1)
            cap *= 2;
        char *p = realloc(t->p, cap);
        if (!p) {
            t->failed = 1;
            return;
        }
        t->p = p;
        t->cap = cap;
    }
    memcpy(t->p + t->n, s, len);
    t->n += len;
}

static void safetensors_puts(safetensors_text *t, const char *s) {
    safetensors_put(t, s, strlen(s));
}

/* JSON string literal with the escapes JSON requires. */
static void safetensors_put_json_string(safetensors_text *t, const char *s) {
    safetensors_put(t, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            safetensors_put(t, esc, 2);
        } else if (c < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            safetensors_put(t, esc, 6);
        } else {
            safetensors_put(t, (const char *)&c, 1);
        }
    }
    safetensors_put(t, "\"", 1);
}

static int safetensors_cmp_entry_name(const void *a, const void *b) {
    return strcmp(((const safetensors_entry *)a)->name, ((const safetensors_entry *)b)->name);
}

/* The reference implementation orders tensors by its Dtype enum (declared in increasing alignment) from
 * last to first, then by name; using the same ranks makes our files byte-identical to its output. */
static int safetensors_reference_rank(safetensors_dtype dt) {
    static const int rank[SAFETENSORS_DTYPE_COUNT] = {
        [SAFETENSORS_BOOL] = 0,    [SAFETENSORS_U8] = 1,   [SAFETENSORS_I8] = 2,   [SAFETENSORS_F8_E5M2] = 3,
        [SAFETENSORS_F8_E4M3] = 4, [SAFETENSORS_I16] = 5,  [SAFETENSORS_U16] = 6,  [SAFETENSORS_F16] = 7,
        [SAFETENSORS_BF16] = 8,    [SAFETENSORS_I32] = 9,  [SAFETENSORS_U32] = 10, [SAFETENSORS_F32] = 11,
        [SAFETENSORS_F64] = 12,    [SAFETENSORS_I64] = 13, [SAFETENSORS_U64] = 14,
    };
    return rank[dt];
}

static int safetensors_cmp_entry_layout(const void *a, const void *b) {
    const safetensors_entry *x = a, *y = b;
    int rx = safetensors_reference_rank(x->dtype), ry = safetensors_reference_rank(y->dtype);
    if (rx != ry) return rx > ry ? -1 : 1;
    return strcmp(x->name, y->name);
}

qlab_status safetensors_writer_write(safetensors_writer *w, const char *path) {
    if (w->n > 1) {
        qsort(w->entries, (size_t)w->n, sizeof *w->entries, safetensors_cmp_entry_name);
        for (int i = 1; i < w->n; i++)
            if (!strcmp(w->entries[i - 1].name, w->entries[i].name))
                return qlab_fail(QLAB_ERR_ARG, "%s: tensor '%s' added twice", path, w->entries[i].name);
        qsort(w->entries, (size_t)w->n, sizeof *w->entries, safetensors_cmp_entry_layout);
    }

    safetensors_text t = {0};
    char num[64];
    safetensors_puts(&t, "{");
    int first = 1;
    if (w->n_meta) {
        safetensors_puts(&t, "\"__metadata__\":{");
        for (int i = 0; i < w->n_meta; i++) {
            if (i) safetensors_puts(&t, ",");
            safetensors_put_json_string(&t, w->meta_keys[i]);
            safetensors_puts(&t, ":");
            safetensors_put_json_string(&t, w->meta_values[i]);
        }
        safetensors_puts(&t, "}");
        first = 0;
    }
    uint64_t pos = 0;
    for (int i = 0; i < w->n; i++) {
        const safetensors_entry *e = &w->entries[i];
        if (!first) safetensors_puts(&t, ",");
        first = 0;
        safetensors_put_json_string(&t, e->name);
        safetensors_puts(&t, ":{\"dtype\":\"");
        safetensors_puts(&t, safetensors_dtype_name(e->dtype));
        safetensors_puts(&t, "\",\"shape\":[");
        for (int d = 0; d < e->ndim; d++) {
            snprintf(num, sizeof num, "%s%" PRId64, d ? "," : "", e->shape[d]);
            safetensors_puts(&t, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", pos, pos + e->nbytes);
        safetensors_puts(&t, num);
        pos += e->nbytes;
    }
    safetensors_puts(&t, "}");
    while (t.n % 8)
        safetensors_puts(&t, " ");
    if (t.failed) {
        free(t.p);
        return qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory building the header", path);
    }
    if (t.n > SAFETENSORS_MAX_HEADER_BYTES) {
        free(t.p);
        return qlab_fail(QLAB_ERR_ARG, "%s: header of %zu bytes exceeds the %u-byte limit", path, t.n,
                         SAFETENSORS_MAX_HEADER_BYTES);
    }

    atomic_file f;
    qlab_status st = atomic_file_open(&f, path);
    if (st != QLAB_OK) {
        free(t.p);
        return st;
    }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (unsigned char)((uint64_t)t.n >> (8 * i));
    atomic_file_write(&f, len8, 8);
    atomic_file_write(&f, t.p, t.n);
    free(t.p);
    for (int i = 0; i < w->n; i++)
        atomic_file_write(&f, w->entries[i].data, w->entries[i].nbytes);
    return atomic_file_commit(&f);
}
