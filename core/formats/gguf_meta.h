/* The key-value metadata of a GGUF file (llama.cpp's format, v2/v3, little-endian), read without the
 * tensors: what a tokenizer needs from a model file (tokenizer.ggml.*). Every length is checked against
 * the file; values stay in the caller's buffer (no copies). */
#ifndef QLAB_GGUF_META_H
#define QLAB_GGUF_META_H

#include <stddef.h>
#include <stdint.h>

#include "core/base/common.h"

enum {
    GGUF_META_UINT8 = 0,
    GGUF_META_INT8,
    GGUF_META_UINT16,
    GGUF_META_INT16,
    GGUF_META_UINT32,
    GGUF_META_INT32,
    GGUF_META_FLOAT32,
    GGUF_META_BOOL,
    GGUF_META_STRING,
    GGUF_META_ARRAY,
    GGUF_META_UINT64,
    GGUF_META_INT64,
    GGUF_META_FLOAT64,
    GGUF_META_TYPE_COUNT
};

typedef struct {
    const char *s; /* not NUL-terminated; points into the file */
    size_t len;
} gguf_meta_str;

typedef struct {
    gguf_meta_str key;
    uint32_t type;        /* GGUF_META_* */
    uint32_t elem_type;   /* arrays: the element type */
    uint64_t count;       /* arrays: the element count; else 1 */
    const uint8_t *value; /* the value's bytes (arrays: the first element; strings: the length prefix) */
} gguf_meta_kv;

typedef struct {
    const char *path;
    uint32_t version;
    uint64_t n_tensors;
    gguf_meta_kv *kv;
    size_t n_kv;
} gguf_meta;

/* 1 when data starts with the GGUF magic. */
int gguf_meta_is_gguf(const void *data, size_t size);
/* Parses the header and every key-value pair of the file held in data (size bytes); errors name path and
 * the key. Free with gguf_meta_free. */
qlab_status gguf_meta_parse(const char *path, const void *data, size_t size, gguf_meta *out);
void gguf_meta_free(gguf_meta *m);

/* The pair called key, or NULL. */
const gguf_meta_kv *gguf_meta_find(const gguf_meta *m, const char *key);
/* Typed getters: QLAB_OK and the value; QLAB_ERR_FORMAT naming path and key when the type is wrong.
 * Absent keys leave *out alone and return QLAB_OK with *found = 0 (found may be NULL). */
qlab_status gguf_meta_get_int(const gguf_meta *m, const char *key, int64_t *out, int *found);
qlab_status gguf_meta_get_bool(const gguf_meta *m, const char *key, int *out, int *found);
qlab_status gguf_meta_get_string(const gguf_meta *m, const char *key, gguf_meta_str *out, int *found);
/* An array of strings as a malloc'd list of views (free() it); *n its length. */
qlab_status gguf_meta_get_strings(const gguf_meta *m, const char *key, gguf_meta_str **out, size_t *n,
                                  int *found);
/* An array of int32 or float32 copied into a malloc'd buffer (free() it). */
qlab_status gguf_meta_get_i32s(const gguf_meta *m, const char *key, int32_t **out, size_t *n, int *found);
qlab_status gguf_meta_get_f32s(const gguf_meta *m, const char *key, float **out, size_t *n, int *found);

#endif
