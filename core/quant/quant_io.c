/* Saving and loading quant_tensor in the bitsandbytes / transformers safetensors layout described in
 * quant_io.h. Loading trusts nothing: every size is derived from the JSON state and checked against the
 * tensors before a byte is copied, and the code books must equal ours so dequantization means the same. */
#include "core/quant/quant_io.h"

#include <cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define QUANT_IO_NAME_MAX 1024

/* The tensors holding a type's own block constants (types without an fp32 absmax), by the row's scale
 * size: 1-byte formats (E8M0, E4M3) in P.scale8 (U8), 2-byte ones (fp16) in P.scale16 (F16); a type with
 * a tensor scale adds P.tensor_scale (F32 [1]). */
static const char *quant_io_scale_suffix(const quant_type_traits *t) {
    return t->scale_bytes == 2 ? ".scale16" : ".scale8";
}

static safetensors_dtype quant_io_scale_dtype(const quant_type_traits *t) {
    return t->scale_bytes == 2 ? SAFETENSORS_F16 : SAFETENSORS_U8;
}

static void quant_io_state_name(const char *name, quant_dtype dt, char *out, size_t cap) {
    snprintf(out, cap, "%s.quant_state.%s", name, quant_type_traits_get(dt)->quant_state);
}

/* v as Python's repr() prints the double (float)v, which json.dumps writes for bitsandbytes' nested_offset
 * (QuantState.as_dict stores offset.item()): the shortest digits that read back as the same double, in
 * positional notation with at least one decimal ("2.0", "0.0001", "1234567.0") when the decimal exponent
 * is in [-4, 16), else as d.ddde-XX ("1e-05", "2.5e+16"). */
static void quant_io_format_float(float v, char *out, size_t cap) {
    double d = v;
    char e[64], digits[32];
    for (int prec = 0; prec <= 17; prec++) {
        snprintf(e, sizeof e, "%.*e", prec, d);
        if (strtod(e, NULL) == d) break;
    }
    /* e is [-]D[.DDD]e(+|-)XX: collect the digits and the exponent of the first one */
    const char *p = e, *sign = "";
    if (*p == '-') sign = "-", p++;
    int nd = 0;
    for (; *p && *p != 'e'; p++)
        if (*p != '.') digits[nd++] = *p;
    digits[nd] = 0;
    int exp10 = atoi(p + 1);
    if (exp10 < -4 || exp10 >= 16) {
        snprintf(out, cap, "%s%c%s%.*se%c%02d", sign, digits[0], nd > 1 ? "." : "", nd - 1, digits + 1,
                 exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
    } else if (exp10 < 0) {
        snprintf(out, cap, "%s0.%.*s%s", sign, -exp10 - 1, "0000", digits);
    } else if (exp10 + 1 >= nd) {
        snprintf(out, cap, "%s%s%.*s.0", sign, digits, exp10 + 1 - nd, "0000000000000000");
    } else {
        snprintf(out, cap, "%s%.*s.%s", sign, exp10 + 1, digits, digits + exp10 + 1);
    }
}

static qlab_status quant_io_check(const char *name, const quant_tensor *qt) {
    const quant_type_traits *t = quant_type_traits_get(qt->dtype);
    if (!t) return qlab_fail(QLAB_ERR_ARG, "tensor '%s': invalid quant dtype %d", name, (int)qt->dtype);
    if (quant_check_blocksize(qt->dtype, qt->blocksize) != QLAB_OK)
        return qlab_fail_context(QLAB_ERR_ARG, "tensor '%s'", name);
    if (qt->n < 0 || qt->ndim < 1 || qt->ndim > 4)
        return qlab_fail(QLAB_ERR_ARG, "tensor '%s': n=%" PRId64 ", ndim=%d (need n >= 0 and 1..4 dims)",
                         name, qt->n, qt->ndim);
    int64_t prod = 1;
    for (int i = 0; i < qt->ndim; i++)
        if (qt->shape[i] < 0 || __builtin_mul_overflow(prod, qt->shape[i], &prod))
            return qlab_fail(QLAB_ERR_ARG, "tensor '%s': bad shape", name);
    if (prod != qt->n)
        return qlab_fail(QLAB_ERR_ARG, "tensor '%s': shape holds %" PRId64 " elements but n=%" PRId64, name,
                         prod, qt->n);
    if (qt->nblocks != (qt->n + qt->blocksize - 1) / qt->blocksize)
        return qlab_fail(QLAB_ERR_ARG, "tensor '%s': nblocks=%" PRId64 " does not match n and blocksize",
                         name, qt->nblocks);
    int has_absmax = quant_dtype_has_fp32_absmax(qt->dtype);
    if (!has_absmax && t->scale_bytes != 1 && t->scale_bytes != 2)
        return qlab_fail(QLAB_ERR_UNSUPPORTED,
                         "tensor '%s': no file layout for %s's %d-byte %s scale (quant_io.c)", name, t->name,
                         t->scale_bytes, t->scale_name);
    if (qt->double_quant && !has_absmax)
        return qlab_fail(QLAB_ERR_ARG, "tensor '%s': double quantization set on %s", name,
                         quant_dtype_name(qt->dtype));
    int missing = qt->n > 0 && !qt->codes;
    if (qt->nblocks > 0) {
        if (has_absmax && qt->double_quant)
            missing |= !qt->dq_codes || !qt->dq_absmax ||
                       qt->dq_nblocks != (qt->nblocks + QUANT_DQ_BLOCKSIZE - 1) / QUANT_DQ_BLOCKSIZE;
        else if (has_absmax)
            missing |= !qt->absmax;
        else
            missing |= t->scale_bytes == 2 ? !qt->scale16 : !qt->scale8;
    }
    if (missing) return qlab_fail(QLAB_ERR_ARG, "tensor '%s': codes or block constants missing", name);
    if (qt->double_quant && !isfinite(qt->dq_offset))
        return qlab_fail(QLAB_ERR_NUMERIC, "tensor '%s': double-quantization offset is not finite", name);
    return QLAB_OK;
}

qlab_status quant_io_add(safetensors_writer *w, const char *name, const quant_tensor *qt) {
    QLAB_TRY(quant_io_check(name, qt));
    char key[QUANT_IO_NAME_MAX + 64];
    if (strlen(name) > QUANT_IO_NAME_MAX)
        return qlab_fail(QLAB_ERR_ARG, "tensor name too long: '%.64s...'", name);
    int64_t packed = (qt->n + 1) / 2;
    int64_t shape[2] = {packed, 1};
    QLAB_TRY(safetensors_writer_add(w, name, SAFETENSORS_U8, 2, shape, qt->codes));

    int64_t nb[1] = {qt->nblocks};
    if (quant_dtype_has_fp32_absmax(qt->dtype)) {
        snprintf(key, sizeof key, "%s.absmax", name);
        if (qt->double_quant) {
            QLAB_TRY(safetensors_writer_add(w, key, SAFETENSORS_U8, 1, nb, qt->dq_codes));
            int64_t dq[1] = {qt->dq_nblocks}, map[1] = {256};
            snprintf(key, sizeof key, "%s.nested_absmax", name);
            QLAB_TRY(safetensors_writer_add(w, key, SAFETENSORS_F32, 1, dq, qt->dq_absmax));
            snprintf(key, sizeof key, "%s.nested_quant_map", name);
            QLAB_TRY(safetensors_writer_add_copy(w, key, SAFETENSORS_F32, 1, map, quant_tensor_dq_map(qt)));
        } else {
            QLAB_TRY(safetensors_writer_add(w, key, SAFETENSORS_F32, 1, nb, qt->absmax));
        }
    } else {
        const quant_type_traits *t = quant_type_traits_get(qt->dtype);
        snprintf(key, sizeof key, "%s%s", name, quant_io_scale_suffix(t));
        QLAB_TRY(safetensors_writer_add(w, key, quant_io_scale_dtype(t), 1, nb,
                                        t->scale_bytes == 2 ? (const void *)qt->scale16 : qt->scale8));
        if (t->tensor_scale) {
            int64_t one[1] = {1};
            snprintf(key, sizeof key, "%s.tensor_scale", name);
            QLAB_TRY(safetensors_writer_add_copy(w, key, SAFETENSORS_F32, 1, one, &qt->tensor_scale));
        }
    }
    int64_t sixteen[1] = {16};
    snprintf(key, sizeof key, "%s.quant_map", name);
    QLAB_TRY(safetensors_writer_add_copy(w, key, SAFETENSORS_F32, 1, sixteen, quant_tensor_codebook(qt)));

    /* The JSON text, with Python json.dumps' separators so the bytes match what bitsandbytes writes. */
    char json[512], num[64];
    const char *orig = quant_orig_dtype_name(qt->orig_dtype);
    if (!orig)
        return qlab_fail(QLAB_ERR_ARG, "tensor '%s': invalid original dtype %d", name, (int)qt->orig_dtype);
    int len = snprintf(json, sizeof json,
                       "{\"quant_type\": \"%s\", \"blocksize\": %d, \"dtype\": \"%s\", \"shape\": [",
                       quant_dtype_name(qt->dtype), qt->blocksize, orig);
    for (int i = 0; i < qt->ndim; i++)
        len += snprintf(json + len, sizeof json - (size_t)len, "%s%" PRId64, i ? ", " : "", qt->shape[i]);
    len += snprintf(json + len, sizeof json - (size_t)len, "]");
    if (qt->double_quant) {
        quant_io_format_float(qt->dq_offset, num, sizeof num);
        len += snprintf(json + len, sizeof json - (size_t)len,
                        ", \"nested_blocksize\": %d, \"nested_dtype\": \"float32\", \"nested_offset\": %s",
                        QUANT_DQ_BLOCKSIZE, num);
    }
    len += snprintf(json + len, sizeof json - (size_t)len, "}");
    int64_t jl[1] = {len};
    quant_io_state_name(name, qt->dtype, key, sizeof key);
    return safetensors_writer_add_copy(w, key, SAFETENSORS_U8, 1, jl, json);
}

/* ------------------------------------------------------------------ reading */

static qlab_status quant_io_find_state(const safetensors_file *f, const char *name, quant_dtype *dt,
                                       const safetensors_tensor **state) {
    char key[QUANT_IO_NAME_MAX + 64];
    int found = 0;
    for (int d = 0; d < QUANT_DTYPE_COUNT; d++) {
        quant_io_state_name(name, (quant_dtype)d, key, sizeof key);
        const safetensors_tensor *t = safetensors_find(f, key);
        if (t) {
            if (found++)
                return qlab_fail(QLAB_ERR_FORMAT, "%s: tensor '%s' has two quant_state entries (%s and %s)",
                                 f->path, name, quant_dtype_name(*dt), quant_dtype_name((quant_dtype)d));
            *dt = (quant_dtype)d;
            *state = t;
        }
    }
    if (!found) {
        snprintf(key, sizeof key, "%s.quant_state.", name);
        for (int i = 0; i < f->n_tensors; i++)
            if (!strncmp(f->tensors[i].name, key, strlen(key)))
                return qlab_fail(QLAB_ERR_UNSUPPORTED, "%s: tensor '%s': unknown quant state '%s'", f->path,
                                 name, f->tensors[i].name + strlen(key));
        return qlab_fail(QLAB_ERR_FORMAT, "%s: no quantized tensor named '%s' (no %s.quant_state.* entry)",
                         f->path, name, name);
    }
    return QLAB_OK;
}

int quant_io_has(const safetensors_file *f, const char *name) {
    char key[QUANT_IO_NAME_MAX + 64];
    if (strlen(name) > QUANT_IO_NAME_MAX) return 0;
    snprintf(key, sizeof key, "%s.quant_state.", name);
    size_t kl = strlen(key);
    for (int i = 0; i < f->n_tensors; i++)
        if (!strncmp(f->tensors[i].name, key, kl)) return 1;
    return 0;
}

/* Position of ".quant_state." in a tensor name, or NULL. */
static const char *quant_io_state_suffix(const char *tensor_name) {
    const char *p = strstr(tensor_name, ".quant_state.");
    return p && p != tensor_name ? p : NULL;
}

int quant_io_count(const safetensors_file *f) {
    int n = 0;
    for (int i = 0; i < f->n_tensors; i++)
        n += quant_io_state_suffix(f->tensors[i].name) != NULL;
    return n;
}

qlab_status quant_io_name_at(const safetensors_file *f, int index, char *out, size_t cap) {
    int n = 0;
    for (int i = 0; i < f->n_tensors; i++) {
        const char *s = quant_io_state_suffix(f->tensors[i].name);
        if (!s) continue;
        if (n++ == index) {
            size_t len = (size_t)(s - f->tensors[i].name);
            if (len + 1 > cap) return qlab_fail(QLAB_ERR_ARG, "%s: tensor name too long", f->path);
            memcpy(out, f->tensors[i].name, len);
            out[len] = 0;
            return QLAB_OK;
        }
    }
    return qlab_fail(QLAB_ERR_ARG, "%s: no quantized tensor number %d (file holds %d)", f->path, index, n);
}

static int quant_io_json_int(const cJSON *j, int64_t lo, int64_t hi, int64_t *out) {
    if (!cJSON_IsNumber(j)) return 0;
    double d = j->valuedouble;
    if (!(d >= (double)lo && d <= (double)hi) || floor(d) != d) return 0;
    *out = (int64_t)d;
    return 1;
}

/* Checks tensor "<name><suffix>" exists with dtype dt and count elements and copies it into a fresh
 * aligned buffer (*out). */
static qlab_status quant_io_take(const safetensors_file *f, const char *name, const char *suffix,
                                 safetensors_dtype dt, int64_t count, void **out) {
    char key[QUANT_IO_NAME_MAX + 64];
    snprintf(key, sizeof key, "%s%s", name, suffix);
    const safetensors_tensor *t = safetensors_find(f, key);
    if (!t) return qlab_fail(QLAB_ERR_FORMAT, "%s: quantized tensor '%s' lacks '%s'", f->path, name, key);
    if (t->dtype != dt || t->count != count)
        return qlab_fail(
            QLAB_ERR_FORMAT, "%s: tensor '%s' is %s with %" PRId64 " elements, expected %s with %" PRId64,
            f->path, key, safetensors_dtype_name(t->dtype), t->count, safetensors_dtype_name(dt), count);
    *out = qlab_alloc_aligned(t->nbytes);
    if (!*out) return qlab_fail_context(QLAB_ERR_NOMEM, "%s: tensor '%s'", f->path, key);
    if (t->nbytes) memcpy(*out, t->data, t->nbytes);
    return QLAB_OK;
}

/* The packed codes, tensor "<name>": (n + 1) / 2 bytes. bitsandbytes stores them in its quant_storage dtype
 * (uint8 by default; bfloat16 for FSDP, as transformers' bnb_4bit_quant_storage saves them) as a view of
 * the same bytes, [bytes / element size, 1]: any dtype holding exactly those bytes is read as bytes. */
static qlab_status quant_io_take_codes(const safetensors_file *f, const char *name, int64_t nbytes,
                                       uint8_t **out) {
    const safetensors_tensor *t = safetensors_find(f, name);
    if (t && (t->dtype == SAFETENSORS_BOOL || (int64_t)t->nbytes != nbytes))
        return qlab_fail(QLAB_ERR_FORMAT,
                         "%s: tensor '%s' is %s with %" PRId64 " elements (%zu bytes), expected %" PRId64
                         " bytes of packed 4-bit codes",
                         f->path, name, safetensors_dtype_name(t->dtype), t->count, t->nbytes, nbytes);
    return quant_io_take(f, name, "", t ? t->dtype : SAFETENSORS_U8, t ? t->count : nbytes, (void **)out);
}

/* Reads the stored code book "<name><suffix>" (count fp32 values) and checks it against ours within
 * QUANT_MAP_ULP_TOLERANCE ulp per entry (ascending too for the nested map). bitsandbytes decodes the
 * absmax codes with its stored nested map (a torch without FMA builds one that differs from ours by up to
 * 2 ulp), so a differing one is kept in *kept (owned; NULL when it equals ours bit for bit or kept is
 * NULL). The same for quant_map (e.g. an FP4 map with -0.0 at code 8, as qlab wrote before it took
 * bitsandbytes' +0.0). */
static qlab_status quant_io_check_map(const safetensors_file *f, const char *name, const char *suffix,
                                      const float *expect, int count, int ascending, float **kept) {
    float *map = NULL;
    QLAB_TRY(quant_io_take(f, name, suffix, SAFETENSORS_F32, count, (void **)&map));
    char what[QUANT_IO_NAME_MAX + 96];
    snprintf(what, sizeof what, "%s: tensor '%s%s'", f->path, name, suffix);
    qlab_status st = quant_check_map_close(map, expect, count, ascending, what);
    if (st == QLAB_OK && kept && memcmp(map, expect, sizeof(float) * (size_t)count) != 0) {
        *kept = map;
        return QLAB_OK;
    }
    qlab_free_aligned(map);
    return st;
}

/* quant_type, blocksize, dtype and shape of the quant_state object: fills qt's size fields. */
static qlab_status quant_io_read_shape(const char *path, const char *name, quant_dtype dt, const cJSON *root,
                                       quant_tensor *qt) {
    const cJSON *qtype = cJSON_GetObjectItemCaseSensitive(root, "quant_type");
    const cJSON *bs = cJSON_GetObjectItemCaseSensitive(root, "blocksize");
    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(root, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(root, "shape");
    int64_t v;
    if (!cJSON_IsString(qtype) || strcmp(qtype->valuestring, quant_dtype_name(dt)) != 0)
        return qlab_fail(QLAB_ERR_FORMAT, "%s: tensor '%s': quant_state quant_type is not \"%s\"", path, name,
                         quant_dtype_name(dt));
    if (!quant_io_json_int(bs, 1, QUANT_MAX_BLOCKSIZE * 16, &v))
        return qlab_fail(QLAB_ERR_FORMAT, "%s: tensor '%s': quant_state blocksize missing or not an integer",
                         path, name);
    qt->blocksize = (int)v;
    if (quant_check_blocksize(dt, qt->blocksize) != QLAB_OK)
        return qlab_fail_context(QLAB_ERR_FORMAT, "%s: tensor '%s'", path, name);
    if (!cJSON_IsString(dtype))
        return qlab_fail(QLAB_ERR_FORMAT, "%s: tensor '%s': quant_state dtype missing or not a string", path,
                         name);
    if (quant_orig_dtype_parse(dtype->valuestring, &qt->orig_dtype) != QLAB_OK)
        return qlab_fail_context(QLAB_ERR_FORMAT, "%s: tensor '%s': quant_state", path, name);
    int ndim = cJSON_IsArray(shape) ? cJSON_GetArraySize(shape) : -1;
    if (ndim < 1 || ndim > 4)
        return qlab_fail(QLAB_ERR_FORMAT,
                         "%s: tensor '%s': quant_state shape must be a list of 1 to 4 integers", path, name);
    qt->ndim = ndim;
    qt->n = 1;
    int i = 0;
    const cJSON *d;
    cJSON_ArrayForEach(d, shape) {
        if (!quant_io_json_int(d, 0, INT64_MAX / 2, &v) || __builtin_mul_overflow(qt->n, v, &qt->n))
            return qlab_fail(QLAB_ERR_FORMAT, "%s: tensor '%s': quant_state shape entry %d is invalid", path,
                             name, i);
        qt->shape[i++] = v;
    }
    if (qt->n > INT64_MAX / 4)
        return qlab_fail(QLAB_ERR_FORMAT, "%s: tensor '%s': quant_state shape is too large", path, name);
    qt->nblocks = (qt->n + qt->blocksize - 1) / qt->blocksize;
    return QLAB_OK;
}

/* The nested_* keys of a double-quantized tensor, which must come with its nested_absmax tensor and
 * without it not at all: fills qt's double-quantization fields. */
static qlab_status quant_io_read_nested(const safetensors_file *f, const char *name, quant_dtype dt,
                                        const cJSON *root, quant_tensor *qt) {
    const char *path = f->path;
    const cJSON *nbs = cJSON_GetObjectItemCaseSensitive(root, "nested_blocksize");
    const cJSON *noff = cJSON_GetObjectItemCaseSensitive(root, "nested_offset");
    const cJSON *ndt = cJSON_GetObjectItemCaseSensitive(root, "nested_dtype");
    char key[QUANT_IO_NAME_MAX + 64];
    snprintf(key, sizeof key, "%s.nested_absmax", name);
    int has_nested_tensor = safetensors_find(f, key) != NULL, has_nested_json = nbs || noff || ndt;
    if (has_nested_tensor != has_nested_json)
        return qlab_fail(QLAB_ERR_FORMAT, "%s: tensor '%s': %s", path, name,
                         has_nested_tensor ? "nested_absmax present but quant_state has no nested_* keys"
                                           : "quant_state has nested_* keys but no nested_absmax tensor");
    qt->double_quant = has_nested_tensor;
    if (!qt->double_quant) return QLAB_OK;
    int64_t v;
    if (!quant_dtype_has_fp32_absmax(dt))
        return qlab_fail(QLAB_ERR_FORMAT, "%s: tensor '%s': double quantization is not defined for %s", path,
                         name, quant_dtype_name(dt));
    if (!quant_io_json_int(nbs, 1, INT32_MAX, &v) || v != QUANT_DQ_BLOCKSIZE)
        return qlab_fail(QLAB_ERR_FORMAT, "%s: tensor '%s': nested_blocksize must be %d", path, name,
                         QUANT_DQ_BLOCKSIZE);
    if (!cJSON_IsNumber(noff) || !isfinite(noff->valuedouble) || fabs(noff->valuedouble) > 3.4e38)
        return qlab_fail(QLAB_ERR_FORMAT, "%s: tensor '%s': nested_offset missing or not a finite number",
                         path, name);
    if (!cJSON_IsString(ndt))
        return qlab_fail(QLAB_ERR_FORMAT, "%s: tensor '%s': nested_dtype missing or not a string", path,
                         name);
    qt->dq_offset = (float)noff->valuedouble;
    qt->dq_nblocks = (qt->nblocks + QUANT_DQ_BLOCKSIZE - 1) / QUANT_DQ_BLOCKSIZE;
    return QLAB_OK;
}

static qlab_status quant_io_read_state(const safetensors_file *f, const char *name, quant_dtype dt,
                                       const safetensors_tensor *state, quant_tensor *qt) {
    const char *path = f->path;
    if (state->dtype != SAFETENSORS_U8)
        return qlab_fail(QLAB_ERR_FORMAT, "%s: tensor '%s' quant_state is %s, expected U8 JSON bytes", path,
                         name, safetensors_dtype_name(state->dtype));
    cJSON *root = cJSON_ParseWithLength(state->data, state->nbytes);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return qlab_fail(QLAB_ERR_FORMAT, "%s: tensor '%s': quant_state is not a JSON object", path, name);
    }
    qlab_status st = quant_io_read_shape(path, name, dt, root, qt);
    if (st == QLAB_OK) st = quant_io_read_nested(f, name, dt, root, qt);
    cJSON_Delete(root);
    return st;
}

static qlab_status quant_io_read_tensors(const safetensors_file *f, const char *name, quant_tensor *qt) {
    QLAB_TRY(quant_io_take_codes(f, name, (qt->n + 1) / 2, &qt->codes));
    if (quant_dtype_has_fp32_absmax(qt->dtype)) {
        if (qt->double_quant) {
            QLAB_TRY(quant_io_take(f, name, ".absmax", SAFETENSORS_U8, qt->nblocks, (void **)&qt->dq_codes));
            QLAB_TRY(quant_io_take(f, name, ".nested_absmax", SAFETENSORS_F32, qt->dq_nblocks,
                                   (void **)&qt->dq_absmax));
            QLAB_TRY(quant_io_check_map(f, name, ".nested_quant_map", quant_dynamic_map_signed(), 256, 1,
                                        &qt->dq_map));
        } else {
            QLAB_TRY(quant_io_take(f, name, ".absmax", SAFETENSORS_F32, qt->nblocks, (void **)&qt->absmax));
        }
    } else {
        const quant_type_traits *t = quant_type_traits_get(qt->dtype);
        QLAB_TRY(quant_io_take(f, name, quant_io_scale_suffix(t), quant_io_scale_dtype(t), qt->nblocks,
                               t->scale_bytes == 2 ? (void **)&qt->scale16 : (void **)&qt->scale8));
        if (t->tensor_scale) {
            float *ts = NULL;
            QLAB_TRY(quant_io_take(f, name, ".tensor_scale", SAFETENSORS_F32, 1, (void **)&ts));
            qt->tensor_scale = ts[0];
            qlab_free_aligned(ts);
        }
    }
    return quant_io_check_map(f, name, ".quant_map", quant_codebook(qt->dtype), 16, 0, &qt->code_map);
}

static qlab_status quant_io_read_inner(const safetensors_file *f, const char *name, quant_tensor *qt) {
    memset(qt, 0, sizeof *qt);
    if (strlen(name) > QUANT_IO_NAME_MAX) return qlab_fail(QLAB_ERR_ARG, "%s: tensor name too long", f->path);
    const safetensors_tensor *state = NULL;
    quant_dtype dt = QUANT_NF4;
    QLAB_TRY(quant_io_find_state(f, name, &dt, &state));
    qt->dtype = dt;
    qlab_status st = quant_io_read_state(f, name, dt, state, qt);
    if (st == QLAB_OK) st = quant_io_read_tensors(f, name, qt);
    if (st != QLAB_OK) {
        quant_tensor_free(qt);
        memset(qt, 0, sizeof *qt);
    }
    return st;
}

qlab_status quant_io_read(const safetensors_file *f, const char *name, quant_tensor *qt) {
    return quant_io_read_inner(f, name, qt);
}

qlab_status quant_io_save(const char *path, const char *name, const quant_tensor *qt) {
    safetensors_writer *w = safetensors_writer_new();
    if (!w) return qlab_fail_context(QLAB_ERR_NOMEM, "%s", path);
    qlab_status st = quant_io_add(w, name, qt);
    if (st != QLAB_OK)
        qlab_fail_context(st, "%s", path);
    else
        st = safetensors_writer_write(w, path);
    safetensors_writer_free(w);
    return st;
}

qlab_status quant_io_load(const char *path, const char *name, quant_tensor *qt) {
    safetensors_file f;
    memset(qt, 0, sizeof *qt);
    QLAB_TRY(safetensors_open(&f, path));
    qlab_status st = quant_io_read(&f, name, qt);
    safetensors_close(&f);
    return st;
}
