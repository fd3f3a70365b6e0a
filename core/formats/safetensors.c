/* safetensors reader: memory-maps a file (or the shards of a checkpoint) and validates it completely. The
 * rules follow the reference implementation: tensors must tile the data section exactly, in offset order,
 * with no gap and no overlap, so a file we accept is one every other reader accepts too. */
#include "core/formats/safetensors.h"

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/base/half.h"

static const struct {
    const char *name;
    size_t size;
} safetensors_dtypes[SAFETENSORS_DTYPE_COUNT] = {
    [SAFETENSORS_BOOL] = {"BOOL", 1},       [SAFETENSORS_U8] = {"U8", 1},
    [SAFETENSORS_I8] = {"I8", 1},           [SAFETENSORS_F8_E4M3] = {"F8_E4M3", 1},
    [SAFETENSORS_F8_E5M2] = {"F8_E5M2", 1}, [SAFETENSORS_I16] = {"I16", 2},
    [SAFETENSORS_U16] = {"U16", 2},         [SAFETENSORS_F16] = {"F16", 2},
    [SAFETENSORS_BF16] = {"BF16", 2},       [SAFETENSORS_I32] = {"I32", 4},
    [SAFETENSORS_U32] = {"U32", 4},         [SAFETENSORS_F32] = {"F32", 4},
    [SAFETENSORS_I64] = {"I64", 8},         [SAFETENSORS_U64] = {"U64", 8},
    [SAFETENSORS_F64] = {"F64", 8},
};

const char *safetensors_dtype_name(safetensors_dtype dt) {
    return (unsigned)dt < SAFETENSORS_DTYPE_COUNT ? safetensors_dtypes[dt].name : "?";
}

size_t safetensors_dtype_size(safetensors_dtype dt) {
    return (unsigned)dt < SAFETENSORS_DTYPE_COUNT ? safetensors_dtypes[dt].size : 0;
}

qlab_status safetensors_dtype_parse(const char *name, safetensors_dtype *dt) {
    for (int i = 0; i < SAFETENSORS_DTYPE_COUNT; i++)
        if (!strcmp(name, safetensors_dtypes[i].name)) {
            *dt = (safetensors_dtype)i;
            return QLAB_OK;
        }
    return qlab_fail(QLAB_ERR_UNSUPPORTED, "unknown safetensors dtype '%s'", name);
}

/* ------------------------------------------------------------------ reader */

static int safetensors_cmp_name(const void *a, const void *b) {
    return strcmp(((const safetensors_tensor *)a)->name, ((const safetensors_tensor *)b)->name);
}

static int safetensors_cmp_offset(const void *a, const void *b) {
    const safetensors_tensor *x = *(const safetensors_tensor *const *)a,
                             *y = *(const safetensors_tensor *const *)b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    if (x->nbytes != y->nbytes) return x->nbytes < y->nbytes ? -1 : 1;
    return strcmp(x->name, y->name);
}

void safetensors_close(safetensors_file *f) {
    if (!f) return;
    for (int i = 0; i < f->n_tensors; i++)
        free(f->tensors[i].name);
    free(f->tensors);
    for (int i = 0; i < f->n_metadata; i++) {
        free(f->metadata_keys[i]);
        free(f->metadata_values[i]);
    }
    free(f->metadata_keys);
    free(f->metadata_values);
    if (f->map_base && f->map_size) munmap(f->map_base, f->map_size);
    free(f->path);
    memset(f, 0, sizeof *f);
}

/* A JSON number that is an exact non-negative integer below 2^53 (what JSON can carry losslessly). */
static int safetensors_json_uint(const cJSON *j, uint64_t *out) {
    if (!cJSON_IsNumber(j)) return 0;
    double d = j->valuedouble;
    if (!(d >= 0) || d > 9007199254740992.0 || floor(d) != d) return 0;
    *out = (uint64_t)d;
    return 1;
}

static qlab_status safetensors_parse_entry(const char *path, const cJSON *item, safetensors_tensor *t,
                                           uint64_t data_size, uint64_t *begin, uint64_t *end) {
    const char *name = item->string;
    if (!cJSON_IsObject(item))
        return qlab_fail(QLAB_ERR_FORMAT, "%s: tensor '%s': entry is not a JSON object", path, name);
    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(item, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
    if (!dtype || !shape || !offs)
        return qlab_fail(QLAB_ERR_FORMAT, "%s: tensor '%s': missing '%s'", path, name,
                         !dtype   ? "dtype"
                         : !shape ? "shape"
                                  : "data_offsets");
    if (!cJSON_IsString(dtype))
        return qlab_fail(QLAB_ERR_FORMAT, "%s: tensor '%s': dtype is not a string", path, name);
    if (safetensors_dtype_parse(dtype->valuestring, &t->dtype) != QLAB_OK)
        return qlab_fail(QLAB_ERR_UNSUPPORTED, "%s: tensor '%s': unknown dtype '%s'", path, name,
                         dtype->valuestring);
    if (!cJSON_IsArray(shape))
        return qlab_fail(QLAB_ERR_FORMAT, "%s: tensor '%s': shape is not a list", path, name);
    int ndim = cJSON_GetArraySize(shape);
    if (ndim > SAFETENSORS_MAX_DIMS)
        return qlab_fail(QLAB_ERR_UNSUPPORTED, "%s: tensor '%s': %d dimensions (at most %d supported)", path,
                         name, ndim, SAFETENSORS_MAX_DIMS);
    t->ndim = ndim;
    int64_t count = 1;
    int i = 0;
    const cJSON *d;
    cJSON_ArrayForEach(d, shape) {
        uint64_t v;
        if (!safetensors_json_uint(d, &v))
            return qlab_fail(QLAB_ERR_FORMAT, "%s: tensor '%s': shape entry %d is not a non-negative integer",
                             path, name, i);
        t->shape[i++] = (int64_t)v;
        if (__builtin_mul_overflow(count, (int64_t)v, &count))
            return qlab_fail(QLAB_ERR_FORMAT, "%s: tensor '%s': shape product overflows 64 bits", path, name);
    }
    t->count = count;
    uint64_t nbytes;
    if (__builtin_mul_overflow((uint64_t)count, (uint64_t)safetensors_dtype_size(t->dtype), &nbytes) ||
        nbytes > SIZE_MAX)
        return qlab_fail(QLAB_ERR_FORMAT, "%s: tensor '%s': byte size overflows", path, name);
    t->nbytes = (size_t)nbytes;
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 || !safetensors_json_uint(offs->child, begin) ||
        !safetensors_json_uint(offs->child->next, end))
        return qlab_fail(QLAB_ERR_FORMAT, "%s: tensor '%s': data_offsets must be two non-negative integers",
                         path, name);
    if (*end < *begin)
        return qlab_fail(QLAB_ERR_FORMAT,
                         "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] are reversed", path, name,
                         *begin, *end);
    if (*end - *begin != nbytes)
        return qlab_fail(QLAB_ERR_FORMAT,
                         "%s: tensor '%s': data_offsets span %" PRIu64 " bytes but shape x %s needs %" PRIu64,
                         path, name, *end - *begin, safetensors_dtype_name(t->dtype), nbytes);
    if (*end > data_size)
        return qlab_fail(QLAB_ERR_FORMAT,
                         "%s: tensor '%s': data_offsets end %" PRIu64 " is outside the data section (%" PRIu64
                         " bytes)",
                         path, name, *end, data_size);
    return QLAB_OK;
}

/* Offset of the first byte that breaks UTF-8 (overlong forms, surrogates and values above U+10FFFF
 * included), or n when the text is valid. The reference refuses non-UTF-8 headers; so do we. */
static size_t safetensors_utf8_error(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (len == 0 || i + len > n) return i;
        uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1f) : len == 3 ? (c & 0x0f) : (c & 0x07);
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return i;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min_cp[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
        i += len;
    }
    return n;
}

/* The __metadata__ object: string keys to string values, copied into f. */
static qlab_status safetensors_parse_metadata(safetensors_file *f, const cJSON *item) {
    const char *path = f->path;
    if (f->metadata_keys) return qlab_fail(QLAB_ERR_FORMAT, "%s: __metadata__ appears twice", path);
    if (!cJSON_IsObject(item))
        return qlab_fail(QLAB_ERR_FORMAT, "%s: __metadata__ is not a JSON object", path);
    int m = cJSON_GetArraySize(item);
    f->metadata_keys = qlab_calloc((size_t)m + 1, sizeof(char *));
    f->metadata_values = qlab_calloc((size_t)m + 1, sizeof(char *));
    if (!f->metadata_keys || !f->metadata_values) return QLAB_ERR_NOMEM;
    const cJSON *kv;
    cJSON_ArrayForEach(kv, item) {
        if (!cJSON_IsString(kv))
            return qlab_fail(QLAB_ERR_FORMAT, "%s: __metadata__ value for '%s' is not a string", path,
                             kv->string);
        f->metadata_keys[f->n_metadata] = strdup(kv->string);
        f->metadata_values[f->n_metadata] = strdup(kv->valuestring);
        if (!f->metadata_keys[f->n_metadata] || !f->metadata_values[f->n_metadata])
            return qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", path);
        f->n_metadata++;
    }
    return QLAB_OK;
}

/* Every entry of the header object: __metadata__ or a tensor, appended to f->tensors. */
static qlab_status safetensors_parse_entries(safetensors_file *f, const cJSON *root, uint64_t data_size,
                                             size_t data_start) {
    const char *path = f->path;
    int n_items = cJSON_GetArraySize(root);
    f->tensors = qlab_calloc((size_t)n_items + 1, sizeof *f->tensors);
    if (!f->tensors) return QLAB_ERR_NOMEM;
    const cJSON *item;
    cJSON_ArrayForEach(item, root) {
        if (!item->string) continue;
        if (!strcmp(item->string, "__metadata__")) {
            qlab_status st = safetensors_parse_metadata(f, item);
            if (st != QLAB_OK) return st;
            continue;
        }
        safetensors_tensor *t = &f->tensors[f->n_tensors];
        uint64_t begin = 0, end = 0;
        qlab_status st = safetensors_parse_entry(path, item, t, data_size, &begin, &end);
        if (st != QLAB_OK) return st;
        t->name = strdup(item->string);
        if (!t->name) return qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", path);
        t->offset = data_start + (size_t)begin;
        t->data = (const char *)f->map_base + t->offset;
        f->n_tensors++;
    }
    return QLAB_OK;
}

/* Names must be unique (cJSON keeps duplicate keys, so they show up here as neighbours once sorted). */
static qlab_status safetensors_check_unique_names(safetensors_file *f) {
    qsort(f->tensors, (size_t)f->n_tensors, sizeof *f->tensors, safetensors_cmp_name);
    for (int i = 1; i < f->n_tensors; i++)
        if (!strcmp(f->tensors[i - 1].name, f->tensors[i].name))
            return qlab_fail(QLAB_ERR_FORMAT, "%s: tensor '%s' appears twice in the header", f->path,
                             f->tensors[i].name);
    return QLAB_OK;
}

/* The tensors must tile [0, data_size) exactly, in offset order. */
static qlab_status safetensors_check_tiling(const safetensors_file *f, uint64_t data_size,
                                            size_t data_start) {
    const char *path = f->path;
    const safetensors_tensor **order = qlab_calloc((size_t)f->n_tensors + 1, sizeof *order);
    if (!order) return QLAB_ERR_NOMEM;
    for (int i = 0; i < f->n_tensors; i++)
        order[i] = &f->tensors[i];
    qsort(order, (size_t)f->n_tensors, sizeof *order, safetensors_cmp_offset);
    qlab_status st = QLAB_OK;
    uint64_t pos = 0;
    for (int i = 0; i < f->n_tensors && st == QLAB_OK; i++) {
        uint64_t b = order[i]->offset - data_start;
        if (b < pos)
            st = qlab_fail(QLAB_ERR_FORMAT, "%s: tensor '%s' overlaps tensor '%s' (data_offsets)", path,
                           order[i]->name, order[i - 1]->name);
        else if (b > pos)
            st =
                qlab_fail(QLAB_ERR_FORMAT, "%s: tensor '%s': gap of %" PRIu64 " unused bytes before its data",
                          path, order[i]->name, b - pos);
        pos = b + order[i]->nbytes;
    }
    if (st == QLAB_OK && pos != data_size)
        st = qlab_fail(QLAB_ERR_FORMAT,
                       "%s: data section is %" PRIu64 " bytes but the tensors cover %" PRIu64
                       " (trailing bytes)",
                       path, data_size, pos);
    free(order);
    return st;
}

static qlab_status safetensors_parse_header(safetensors_file *f, const char *json, size_t n,
                                            uint64_t data_size, size_t data_start) {
    const char *path = f->path, *parse_end = NULL;
    size_t bad = safetensors_utf8_error((const unsigned char *)json, n);
    if (bad < n) return qlab_fail(QLAB_ERR_FORMAT, "%s: header is not valid UTF-8 (byte %zu)", path, bad);
    cJSON *root = cJSON_ParseWithLengthOpts(json, n, &parse_end, 0);
    if (!root) {
        size_t at =
            cJSON_GetErrorPtr() && cJSON_GetErrorPtr() >= json ? (size_t)(cJSON_GetErrorPtr() - json) : 0;
        return qlab_fail(QLAB_ERR_FORMAT, "%s: header is not valid JSON (near byte %zu)", path, at);
    }
    qlab_status st = QLAB_OK;
    for (const char *p = parse_end; p && p < json + n && st == QLAB_OK; p++)
        if (*p != ' ' && *p != '\n' && *p != '\r' && *p != '\t' && *p != 0)
            st = qlab_fail(QLAB_ERR_FORMAT, "%s: header has bytes after the JSON object", path);
    if (st == QLAB_OK && !cJSON_IsObject(root))
        st = qlab_fail(QLAB_ERR_FORMAT, "%s: header is not a JSON object", path);
    if (st == QLAB_OK) st = safetensors_parse_entries(f, root, data_size, data_start);
    if (st == QLAB_OK) st = safetensors_check_unique_names(f);
    if (st == QLAB_OK) st = safetensors_check_tiling(f, data_size, data_start);
    cJSON_Delete(root);
    return st;
}

static qlab_status safetensors_open_inner(safetensors_file *f, const char *path) {
    memset(f, 0, sizeof *f);
    f->path = strdup(path);
    if (!f->path) return qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", path);
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        qlab_status st = qlab_fail(QLAB_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        safetensors_close(f);
        return st;
    }
    struct stat sb;
    qlab_status st = QLAB_OK;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        st = qlab_fail(QLAB_ERR_IO, "%s: %s", path,
                       S_ISDIR(sb.st_mode) ? "is a directory" : "not a regular file");
    } else if ((uint64_t)sb.st_size < 8) {
        st = qlab_fail(QLAB_ERR_FORMAT,
                       "%s: file is %" PRIu64 " bytes, too short for the 8-byte header length", path,
                       (uint64_t)sb.st_size);
    } else if ((uint64_t)sb.st_size > SIZE_MAX) {
        st = qlab_fail(QLAB_ERR_UNSUPPORTED, "%s: file too large to map", path);
    } else {
        f->map_size = (size_t)sb.st_size;
        void *m = mmap(NULL, f->map_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            f->map_size = 0;
            st = qlab_fail(QLAB_ERR_IO, "%s: cannot map: %s", path, strerror(errno));
        } else {
            f->map_base = m;
        }
    }
    close(fd);
    if (st != QLAB_OK) {
        safetensors_close(f);
        return st;
    }
    const unsigned char *b = f->map_base;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | b[i];
    uint64_t size = f->map_size;
    if (n > size - 8)
        st = qlab_fail(QLAB_ERR_FORMAT,
                       "%s: header length %" PRIu64 " goes beyond the file (%" PRIu64 " bytes)%s", path, n,
                       size, memcmp(b, "\x93NUMPY", 6) == 0 ? ": this is a .npy file, not safetensors" : "");
    else if (n > SAFETENSORS_MAX_HEADER_BYTES)
        st = qlab_fail(QLAB_ERR_FORMAT, "%s: header length %" PRIu64 " exceeds the %u-byte limit", path, n,
                       SAFETENSORS_MAX_HEADER_BYTES);
    else if (n < 2 || b[8] != '{')
        st = qlab_fail(QLAB_ERR_FORMAT, "%s: header is not a JSON object", path);
    else
        st = safetensors_parse_header(f, (const char *)b + 8, (size_t)n, size - 8 - n, (size_t)(8 + n));
    if (st != QLAB_OK) {
        safetensors_close(f);
        return st;
    }
    return QLAB_OK;
}

qlab_status safetensors_open(safetensors_file *f, const char *path) {
    return safetensors_open_inner(f, path);
}

const safetensors_tensor *safetensors_find(const safetensors_file *f, const char *name) {
    if (!f || !name || f->n_tensors == 0) return NULL;
    safetensors_tensor key = {.name = (char *)name};
    return bsearch(&key, f->tensors, (size_t)f->n_tensors, sizeof *f->tensors, safetensors_cmp_name);
}

qlab_status safetensors_require(const safetensors_file *f, const char *name, const safetensors_tensor **out) {
    *out = safetensors_find(f, name);
    if (!*out) return qlab_fail(QLAB_ERR_FORMAT, "%s: no tensor named '%s'", f->path, name);
    return QLAB_OK;
}

const char *safetensors_metadata(const safetensors_file *f, const char *key) {
    for (int i = 0; i < f->n_metadata; i++)
        if (!strcmp(f->metadata_keys[i], key)) return f->metadata_values[i];
    return NULL;
}

qlab_status safetensors_tensor_to_f32(const safetensors_tensor *t, float *out) {
    const unsigned char *p = t->data;
    int64_t n = t->count;
    switch (t->dtype) {
    case SAFETENSORS_F32:
        memcpy(out, p, t->nbytes);
        return QLAB_OK;
    case SAFETENSORS_F16:
    case SAFETENSORS_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            out[i] = t->dtype == SAFETENSORS_F16 ? fp16_to_f32(h) : bf16_to_f32(h);
        }
        return QLAB_OK;
    case SAFETENSORS_F64:
        for (int64_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, p + 8 * i, 8);
            out[i] = (float)d;
        }
        return QLAB_OK;
#define SAFETENSORS_INT_CASE(DT, TYPE)                                                                       \
    case DT:                                                                                                 \
        for (int64_t i = 0; i < n; i++) {                                                                    \
            TYPE v;                                                                                          \
            memcpy(&v, p + sizeof(TYPE) * i, sizeof(TYPE));                                                  \
            out[i] = (float)v;                                                                               \
        }                                                                                                    \
        return QLAB_OK;
        SAFETENSORS_INT_CASE(SAFETENSORS_U8, uint8_t)
        SAFETENSORS_INT_CASE(SAFETENSORS_I8, int8_t)
        SAFETENSORS_INT_CASE(SAFETENSORS_I16, int16_t)
        SAFETENSORS_INT_CASE(SAFETENSORS_U16, uint16_t)
        SAFETENSORS_INT_CASE(SAFETENSORS_I32, int32_t)
        SAFETENSORS_INT_CASE(SAFETENSORS_U32, uint32_t)
        SAFETENSORS_INT_CASE(SAFETENSORS_I64, int64_t)
        SAFETENSORS_INT_CASE(SAFETENSORS_U64, uint64_t)
#undef SAFETENSORS_INT_CASE
    default:
        break;
    }
    return qlab_fail(QLAB_ERR_UNSUPPORTED, "tensor '%s': dtype %s cannot be converted to fp32", t->name,
                     safetensors_dtype_name(t->dtype));
}

qlab_status safetensors_read_f32(const safetensors_file *f, const char *name, float *out, int64_t count) {
    const safetensors_tensor *t;
    QLAB_TRY(safetensors_require(f, name, &t));
    if (t->count != count)
        return qlab_fail(QLAB_ERR_FORMAT, "%s: tensor '%s' has %" PRId64 " elements, expected %" PRId64,
                         f->path, name, t->count, count);
    qlab_status st = safetensors_tensor_to_f32(t, out);
    if (st != QLAB_OK) return qlab_fail_context(st, "%s", f->path);
    return QLAB_OK;
}

qlab_status safetensors_read_f32_alloc(const safetensors_file *f, const char *name, float **out,
                                       int64_t *count) {
    const safetensors_tensor *t;
    *out = NULL;
    QLAB_TRY(safetensors_require(f, name, &t));
    float *buf = qlab_alloc_aligned((size_t)t->count * sizeof(float));
    if (!buf) return qlab_fail_context(QLAB_ERR_NOMEM, "%s: tensor '%s'", f->path, name);
    qlab_status st = safetensors_tensor_to_f32(t, buf);
    if (st != QLAB_OK) {
        qlab_free_aligned(buf);
        return qlab_fail_context(st, "%s", f->path);
    }
    *out = buf;
    *count = t->count;
    return QLAB_OK;
}

qlab_status safetensors_read_raw(const safetensors_file *f, const char *name, safetensors_dtype dt, void *out,
                                 int64_t count) {
    const safetensors_tensor *t;
    QLAB_TRY(safetensors_require(f, name, &t));
    if (t->dtype != dt)
        return qlab_fail(QLAB_ERR_FORMAT, "%s: tensor '%s' is %s, expected %s", f->path, name,
                         safetensors_dtype_name(t->dtype), safetensors_dtype_name(dt));
    if (count >= 0 && t->count != count)
        return qlab_fail(QLAB_ERR_FORMAT, "%s: tensor '%s' has %" PRId64 " elements, expected %" PRId64,
                         f->path, name, t->count, count);
    if (t->nbytes) memcpy(out, t->data, t->nbytes);
    return QLAB_OK;
}

/* ------------------------------------------------------------------ sharded checkpoints */

void safetensors_checkpoint_close(safetensors_checkpoint *ck) {
    if (!ck) return;
    for (int i = 0; i < ck->n_files; i++)
        safetensors_close(&ck->files[i]);
    free(ck->files);
    memset(ck, 0, sizeof *ck);
}

static int safetensors_ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

static qlab_status safetensors_checkpoint_from_index(safetensors_checkpoint *ck, const char *index_path) {
    char *text;
    size_t len;
    QLAB_TRY(qlab_read_file(index_path, &text, &len));
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root) return qlab_fail(QLAB_ERR_FORMAT, "%s: not valid JSON", index_path);
    qlab_status st = QLAB_OK;
    char dir[4096];
    const char *slash = strrchr(index_path, '/');
    if (slash)
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - index_path), index_path);
    else
        snprintf(dir, sizeof dir, ".");
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map"), *e;
    if (!cJSON_IsObject(map)) {
        st = qlab_fail(QLAB_ERR_FORMAT, "%s: missing or non-object 'weight_map'", index_path);
        goto done;
    }
    int n_entries = cJSON_GetArraySize(map);
    if (n_entries == 0) {
        st = qlab_fail(QLAB_ERR_FORMAT, "%s: 'weight_map' is empty", index_path);
        goto done;
    }
    const char **shard_names = qlab_calloc((size_t)n_entries, sizeof(char *));
    ck->files = qlab_calloc((size_t)n_entries, sizeof *ck->files);
    if (!shard_names || !ck->files) {
        free(shard_names);
        st = QLAB_ERR_NOMEM;
        goto done;
    }
    int n_shards = 0;
    cJSON_ArrayForEach(e, map) {
        if (!cJSON_IsString(e)) {
            st = qlab_fail(QLAB_ERR_FORMAT, "%s: weight_map entry '%s' is not a file name", index_path,
                           e->string);
            break;
        }
        const char *s = e->valuestring;
        if (!s[0] || strchr(s, '/') || !strcmp(s, ".") || !strcmp(s, "..")) {
            st = qlab_fail(QLAB_ERR_FORMAT, "%s: weight_map entry '%s': shard '%s' is not a plain file name",
                           index_path, e->string, s);
            break;
        }
        int seen = 0;
        for (int i = 0; i < n_shards && !seen; i++)
            seen = !strcmp(shard_names[i], s);
        if (!seen) shard_names[n_shards++] = s;
    }
    for (int i = 0; i < n_shards && st == QLAB_OK; i++) {
        char p[8192];
        snprintf(p, sizeof p, "%s/%s", dir, shard_names[i]);
        st = safetensors_open(&ck->files[i], p);
        if (st == QLAB_OK)
            ck->n_files++;
        else
            qlab_fail_context(st, "%s", index_path);
    }
    free(shard_names);
    /* Every weight_map entry must be where the index says. */
    cJSON_ArrayForEach(e, map) {
        if (st != QLAB_OK) break;
        const safetensors_file *in = NULL;
        for (int i = 0; i < ck->n_files && !in; i++) {
            const char *base = strrchr(ck->files[i].path, '/');
            if (!strcmp(base ? base + 1 : ck->files[i].path, e->valuestring)) in = &ck->files[i];
        }
        if (!in || !safetensors_find(in, e->string))
            st = qlab_fail(QLAB_ERR_FORMAT, "%s: tensor '%s' is listed in shard '%s' but not found there",
                           index_path, e->string, e->valuestring);
    }
done:
    cJSON_Delete(root);
    return st;
}

static qlab_status safetensors_checkpoint_open_inner(safetensors_checkpoint *ck, const char *path) {
    memset(ck, 0, sizeof *ck);
    struct stat sb;
    if (stat(path, &sb) != 0) return qlab_fail(QLAB_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    char buf[8192];
    const char *file = path;
    int is_index = safetensors_ends_with(path, ".json");
    if (S_ISDIR(sb.st_mode)) {
        snprintf(buf, sizeof buf, "%s/model.safetensors.index.json", path);
        if (stat(buf, &sb) == 0) {
            is_index = 1;
        } else {
            snprintf(buf, sizeof buf, "%s/model.safetensors", path);
            if (stat(buf, &sb) != 0)
                return qlab_fail(QLAB_ERR_IO,
                                 "%s: holds neither model.safetensors.index.json nor model.safetensors",
                                 path);
        }
        file = buf;
    }
    qlab_status st;
    if (is_index) {
        st = safetensors_checkpoint_from_index(ck, file);
    } else {
        ck->files = qlab_calloc(1, sizeof *ck->files);
        if (!ck->files) return QLAB_ERR_NOMEM;
        st = safetensors_open(&ck->files[0], file);
        if (st == QLAB_OK) ck->n_files = 1;
    }
    if (st != QLAB_OK) {
        safetensors_checkpoint_close(ck);
        return st;
    }
    /* A name in two shards would make lookups depend on shard order: refuse it. */
    for (int i = 1; i < ck->n_files; i++)
        for (int j = 0; j < ck->files[i].n_tensors; j++)
            for (int k = 0; k < i; k++)
                if (safetensors_find(&ck->files[k], ck->files[i].tensors[j].name)) {
                    st = qlab_fail(QLAB_ERR_FORMAT, "%s: tensor '%s' is in both %s and %s", path,
                                   ck->files[i].tensors[j].name, ck->files[k].path, ck->files[i].path);
                    safetensors_checkpoint_close(ck);
                    return st;
                }
    return QLAB_OK;
}

qlab_status safetensors_checkpoint_open(safetensors_checkpoint *ck, const char *path) {
    return safetensors_checkpoint_open_inner(ck, path);
}

const safetensors_tensor *safetensors_checkpoint_find(const safetensors_checkpoint *ck, const char *name,
                                                      const safetensors_file **file) {
    for (int i = 0; i < ck->n_files; i++) {
        const safetensors_tensor *t = safetensors_find(&ck->files[i], name);
        if (t) {
            if (file) *file = &ck->files[i];
            return t;
        }
    }
    return NULL;
}

qlab_status safetensors_checkpoint_read_f32(const safetensors_checkpoint *ck, const char *name, float *out,
                                            int64_t count) {
    const safetensors_file *f;
    if (!safetensors_checkpoint_find(ck, name, &f))
        return qlab_fail(QLAB_ERR_FORMAT, "%s: no tensor named '%s'",
                         ck->n_files ? ck->files[0].path : "checkpoint", name);
    return safetensors_read_f32(f, name, out, count);
}
