/* NumPy .npy reader and writer. The header is a Python dict literal; we parse the small subset numpy
 * writes ({'descr': str, 'fortran_order': bool, 'shape': tuple}) and refuse everything else rather than
 * guess, because a silently misread shape corrupts every experiment downstream. */
#include "core/formats/npy.h"

#include "core/base/atomic_file.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/base/half.h"

static const char npy_magic[6] = {'\x93', 'N', 'U', 'M', 'P', 'Y'};

/* Canonical descrs and their sizes; "<u1"/"<i1" are mapped to the '|' spelling numpy uses. */
static const struct {
    const char *descr;
    size_t size;
} npy_dtypes[] = {
    {"<f4", 4}, {"<f2", 2}, {"<f8", 8}, {"<i4", 4}, {"<i8", 8}, {"|u1", 1}, {"|i1", 1}, {"<u2", 2},
};

static const char *npy_canonical(const char *dtype) {
    if (!strcmp(dtype, "<u1")) return "|u1";
    if (!strcmp(dtype, "<i1")) return "|i1";
    for (size_t i = 0; i < sizeof npy_dtypes / sizeof npy_dtypes[0]; i++)
        if (!strcmp(dtype, npy_dtypes[i].descr)) return npy_dtypes[i].descr;
    return NULL;
}

size_t npy_dtype_size(const char *dtype) {
    const char *c = dtype ? npy_canonical(dtype) : NULL;
    if (!c) return 0;
    for (size_t i = 0; i < sizeof npy_dtypes / sizeof npy_dtypes[0]; i++)
        if (!strcmp(c, npy_dtypes[i].descr)) return npy_dtypes[i].size;
    return 0;
}

void npy_free(npy_array *arr) {
    if (!arr) return;
    qlab_free_aligned(arr->data);
    memset(arr, 0, sizeof *arr);
}

/* ------------------------------------------------------------------ header dict parser */

typedef struct {
    const char *p, *end;
    const char *path;
} npy_parser;

static void npy_skip_space(npy_parser *ps) {
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

static int npy_accept(npy_parser *ps, char c) {
    npy_skip_space(ps);
    if (ps->p < ps->end && *ps->p == c) {
        ps->p++;
        return 1;
    }
    return 0;
}

/* A quoted Python string without escapes (numpy never writes any in these fields). */
static qlab_status npy_parse_string(npy_parser *ps, char *out, size_t cap, const char *what) {
    npy_skip_space(ps);
    if (ps->p >= ps->end || (*ps->p != '\'' && *ps->p != '"'))
        return qlab_fail(QLAB_ERR_FORMAT, "%s: malformed header: expected a quoted %s", ps->path, what);
    char q = *ps->p++;
    size_t n = 0;
    while (ps->p < ps->end && *ps->p != q) {
        if (*ps->p == '\\' || n + 1 >= cap)
            return qlab_fail(QLAB_ERR_FORMAT, "%s: malformed header: unsupported %s", ps->path, what);
        out[n++] = *ps->p++;
    }
    if (ps->p >= ps->end)
        return qlab_fail(QLAB_ERR_FORMAT, "%s: malformed header: unterminated %s", ps->path, what);
    ps->p++;
    out[n] = 0;
    return QLAB_OK;
}

static int npy_is_ident_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

static qlab_status npy_parse_bool(npy_parser *ps, int *out) {
    npy_skip_space(ps);
    size_t left = (size_t)(ps->end - ps->p);
    if (left >= 4 && !memcmp(ps->p, "True", 4) && (left == 4 || !npy_is_ident_char(ps->p[4]))) {
        ps->p += 4;
        *out = 1;
        return QLAB_OK;
    }
    if (left >= 5 && !memcmp(ps->p, "False", 5) && (left == 5 || !npy_is_ident_char(ps->p[5]))) {
        ps->p += 5;
        *out = 0;
        return QLAB_OK;
    }
    return qlab_fail(QLAB_ERR_FORMAT, "%s: malformed header: fortran_order must be True or False", ps->path);
}

static qlab_status npy_parse_shape(npy_parser *ps, int *ndim, int64_t *shape) {
    if (!npy_accept(ps, '('))
        return qlab_fail(QLAB_ERR_FORMAT, "%s: malformed header: shape must be a tuple", ps->path);
    *ndim = 0;
    for (;;) {
        if (npy_accept(ps, ')')) break;
        npy_skip_space(ps);
        if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9')
            return qlab_fail(QLAB_ERR_FORMAT,
                             "%s: malformed header: shape entries must be non-negative integers", ps->path);
        int64_t v = 0;
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') {
            int d = *ps->p++ - '0';
            if (v > (INT64_MAX - d) / 10)
                return qlab_fail(QLAB_ERR_FORMAT, "%s: shape entry does not fit in 64 bits", ps->path);
            v = v * 10 + d;
        }
        if (ps->p < ps->end && *ps->p == 'L') ps->p++; /* Python 2 longs, written by old numpy */
        if (*ndim >= NPY_MAX_DIMS)
            return qlab_fail(QLAB_ERR_UNSUPPORTED, "%s: shape has more than %d dimensions", ps->path,
                             NPY_MAX_DIMS);
        shape[(*ndim)++] = v;
        if (npy_accept(ps, ',')) continue;
        if (npy_accept(ps, ')')) break;
        return qlab_fail(QLAB_ERR_FORMAT, "%s: malformed header: bad shape tuple", ps->path);
    }
    /* Python writes a 1-tuple as (n,); "(n)" is just an integer, but accepting it is harmless. */
    return QLAB_OK;
}

/* Parses the header dict text [p, end) into arr's dtype/ndim/shape. */
static qlab_status npy_parse_header(const char *path, const char *p, const char *end, npy_array *arr) {
    npy_parser ps = {p, end, path};
    char descr[64] = {0};
    int fortran = 0, have_descr = 0, have_fortran = 0, have_shape = 0;
    if (!npy_accept(&ps, '{'))
        return qlab_fail(QLAB_ERR_FORMAT, "%s: malformed header: expected a dict starting with '{'", path);
    for (;;) {
        if (npy_accept(&ps, '}')) break;
        char key[32];
        QLAB_TRY(npy_parse_string(&ps, key, sizeof key, "key"));
        if (!npy_accept(&ps, ':'))
            return qlab_fail(QLAB_ERR_FORMAT, "%s: malformed header: expected ':' after '%s'", path, key);
        if (!strcmp(key, "descr")) {
            if (have_descr++)
                return qlab_fail(QLAB_ERR_FORMAT, "%s: malformed header: 'descr' repeated", path);
            npy_skip_space(&ps);
            if (ps.p < ps.end && *ps.p == '[')
                return qlab_fail(QLAB_ERR_UNSUPPORTED, "%s: structured dtypes are not supported", path);
            QLAB_TRY(npy_parse_string(&ps, descr, sizeof descr, "descr"));
        } else if (!strcmp(key, "fortran_order")) {
            if (have_fortran++)
                return qlab_fail(QLAB_ERR_FORMAT, "%s: malformed header: 'fortran_order' repeated", path);
            QLAB_TRY(npy_parse_bool(&ps, &fortran));
        } else if (!strcmp(key, "shape")) {
            if (have_shape++)
                return qlab_fail(QLAB_ERR_FORMAT, "%s: malformed header: 'shape' repeated", path);
            QLAB_TRY(npy_parse_shape(&ps, &arr->ndim, arr->shape));
        } else {
            return qlab_fail(QLAB_ERR_FORMAT, "%s: malformed header: unexpected key '%s'", path, key);
        }
        if (npy_accept(&ps, ',')) continue;
        if (npy_accept(&ps, '}')) break;
        return qlab_fail(QLAB_ERR_FORMAT, "%s: malformed header: expected ',' or '}'", path);
    }
    npy_skip_space(&ps);
    if (ps.p != ps.end) return qlab_fail(QLAB_ERR_FORMAT, "%s: malformed header: text after the dict", path);
    if (!have_descr || !have_fortran || !have_shape)
        return qlab_fail(QLAB_ERR_FORMAT, "%s: malformed header: missing '%s'", path,
                         !have_descr     ? "descr"
                         : !have_fortran ? "fortran_order"
                                         : "shape");
    const char *canon = npy_canonical(descr);
    /* A 1-byte type has no byte order, whatever prefix it was written with. */
    if (!canon && (descr[0] == '>' || descr[0] == '=') && !strcmp(descr + 1, "u1")) canon = "|u1";
    if (!canon && (descr[0] == '>' || descr[0] == '=') && !strcmp(descr + 1, "i1")) canon = "|i1";
    if (!canon && descr[0] == '>')
        return qlab_fail(QLAB_ERR_UNSUPPORTED,
                         "%s: big-endian dtype '%s' is not supported (save little-endian)", path, descr);
    if (!canon)
        return qlab_fail(QLAB_ERR_UNSUPPORTED,
                         "%s: unsupported dtype '%s' (expected <f4, <f2, <f8, <i4, <i8, |u1, |i1 or <u2)",
                         path, descr);
    if (fortran)
        return qlab_fail(QLAB_ERR_UNSUPPORTED,
                         "%s: fortran_order True is not supported (save a C-ordered array)", path);
    snprintf(arr->dtype, sizeof arr->dtype, "%s", canon);
    arr->itemsize = npy_dtype_size(canon);
    int64_t count = 1;
    for (int i = 0; i < arr->ndim; i++)
        if (__builtin_mul_overflow(count, arr->shape[i], &count))
            return qlab_fail(QLAB_ERR_FORMAT, "%s: shape product overflows 64 bits", path);
    size_t bytes;
    if (count < 0 || (uint64_t)count > SIZE_MAX ||
        __builtin_mul_overflow((size_t)count, arr->itemsize, &bytes))
        return qlab_fail(QLAB_ERR_FORMAT, "%s: shape needs more bytes than this machine can address", path);
    arr->count = count;
    return QLAB_OK;
}

static void npy_shape_text(const npy_array *arr, char *buf, size_t cap) {
    size_t n = 0;
    n += (size_t)snprintf(buf + n, cap - n, "(");
    for (int i = 0; i < arr->ndim && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%" PRId64, i ? ", " : "", arr->shape[i]);
    if (n < cap) snprintf(buf + n, cap - n, ")");
}

static qlab_status npy_read_inner(const char *path, npy_array *arr) {
    memset(arr, 0, sizeof *arr);
    FILE *f = fopen(path, "rb");
    if (!f) return qlab_fail(QLAB_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        int dir = S_ISDIR(sb.st_mode);
        fclose(f);
        return qlab_fail(QLAB_ERR_IO, "%s: %s", path, dir ? "is a directory" : "not a regular file");
    }
    uint64_t file_size = (uint64_t)sb.st_size;
    unsigned char pre[12];
    size_t got = fread(pre, 1, 10, f);
    if (got < 8 || memcmp(pre, npy_magic, 6) != 0) {
        fclose(f);
        if (got >= 6 && memcmp(pre, npy_magic, 6) == 0)
            return qlab_fail(QLAB_ERR_FORMAT, "%s: truncated header (file is %" PRIu64 " bytes)", path,
                             file_size);
        return qlab_fail(QLAB_ERR_FORMAT, "%s: bad magic (not a .npy file)", path);
    }
    int major = pre[6], minor = pre[7];
    if ((major != 1 && major != 2 && major != 3) || minor != 0) {
        fclose(f);
        return qlab_fail(QLAB_ERR_UNSUPPORTED, "%s: unsupported .npy format version %d.%d", path, major,
                         minor);
    }
    size_t prefix = major == 1 ? 10 : 12;
    if (major != 1) got += fread(pre + 10, 1, 2, f);
    if (got < prefix) {
        fclose(f);
        return qlab_fail(QLAB_ERR_FORMAT, "%s: truncated header (file is %" PRIu64 " bytes)", path,
                         file_size);
    }
    uint64_t header_len = major == 1 ? (uint64_t)pre[8] | (uint64_t)pre[9] << 8
                                     : (uint64_t)pre[8] | (uint64_t)pre[9] << 8 | (uint64_t)pre[10] << 16 |
                                           (uint64_t)pre[11] << 24;
    if (header_len > file_size - prefix) {
        fclose(f);
        return qlab_fail(QLAB_ERR_FORMAT,
                         "%s: header length %" PRIu64 " goes beyond the file (%" PRIu64 " bytes)", path,
                         header_len, file_size);
    }
    if (header_len > NPY_MAX_HEADER_BYTES) {
        fclose(f);
        return qlab_fail(QLAB_ERR_FORMAT, "%s: header length %" PRIu64 " exceeds the limit of %u bytes", path,
                         header_len, NPY_MAX_HEADER_BYTES);
    }
    char *header = malloc(header_len + 1);
    if (!header) {
        fclose(f);
        return qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory for a %" PRIu64 "-byte header", path, header_len);
    }
    if (fread(header, 1, header_len, f) != header_len) {
        free(header);
        fclose(f);
        return qlab_fail(QLAB_ERR_IO, "%s: truncated header", path);
    }
    header[header_len] = 0;
    if (memchr(header, 0, header_len)) {
        free(header);
        fclose(f);
        return qlab_fail(QLAB_ERR_FORMAT, "%s: malformed header: contains a NUL byte", path);
    }
    qlab_status st = npy_parse_header(path, header, header + header_len, arr);
    free(header);
    if (st != QLAB_OK) {
        fclose(f);
        memset(arr, 0, sizeof *arr);
        return st;
    }
    uint64_t need = (uint64_t)arr->count * arr->itemsize, have = file_size - prefix - header_len;
    if (have != need) {
        char shp[256];
        npy_shape_text(arr, shp, sizeof shp);
        fclose(f);
        qlab_fail(QLAB_ERR_FORMAT, "%s: data is %" PRIu64 " bytes but shape %s of %s needs %" PRIu64 "%s",
                  path, have, shp, arr->dtype, need, have > need ? " (trailing bytes)" : " (truncated)");
        memset(arr, 0, sizeof *arr);
        return QLAB_ERR_FORMAT;
    }
    arr->data = qlab_alloc_aligned((size_t)need);
    if (!arr->data) {
        fclose(f);
        memset(arr, 0, sizeof *arr);
        return qlab_fail_context(QLAB_ERR_NOMEM, "%s", path);
    }
    if (need && fread(arr->data, 1, (size_t)need, f) != need) {
        fclose(f);
        npy_free(arr);
        return qlab_fail(QLAB_ERR_IO, "%s: short read of the data", path);
    }
    fclose(f);
    return QLAB_OK;
}

qlab_status npy_read(const char *path, npy_array *arr) {
    return npy_read_inner(path, arr);
}

qlab_status npy_read_f32(const char *path, int u2_is_bf16, npy_array *arr) {
    npy_array raw;
    QLAB_TRY(npy_read(path, &raw));
    snprintf(raw.source_dtype, sizeof raw.source_dtype, "%s", raw.dtype);
    if (!strcmp(raw.dtype, "<f4")) {
        *arr = raw;
        return QLAB_OK;
    }
    int is_f2 = !strcmp(raw.dtype, "<f2"), is_f8 = !strcmp(raw.dtype, "<f8");
    int is_bf16 = !strcmp(raw.dtype, "<u2") && u2_is_bf16;
    if (!is_f2 && !is_f8 && !is_bf16) {
        qlab_fail(QLAB_ERR_UNSUPPORTED, "%s: dtype '%s' cannot be read as fp32 (expected <f4, <f2, <f8%s)",
                  path, raw.dtype,
                  !strcmp(raw.dtype, "<u2") ? "; <u2 only when declared bf16" : " or bf16 as <u2");
        npy_free(&raw);
        return QLAB_ERR_UNSUPPORTED;
    }
    float *out = qlab_alloc_aligned((size_t)raw.count * sizeof(float));
    if (!out) {
        npy_free(&raw);
        return qlab_fail_context(QLAB_ERR_NOMEM, "%s", path);
    }
    for (int64_t i = 0; i < raw.count; i++) {
        if (is_f8) {
            double d;
            memcpy(&d, (const char *)raw.data + 8 * i, 8);
            out[i] = (float)d;
        } else {
            uint16_t h;
            memcpy(&h, (const char *)raw.data + 2 * i, 2);
            out[i] = is_f2 ? fp16_to_f32(h) : bf16_to_f32(h);
        }
    }
    qlab_free_aligned(raw.data);
    raw.data = out;
    snprintf(raw.dtype, sizeof raw.dtype, "<f4");
    raw.itemsize = 4;
    *arr = raw;
    return QLAB_OK;
}

/* ------------------------------------------------------------------ writer */

qlab_status npy_format_header(const char *dtype, int ndim, const int64_t *shape, char *buf, size_t cap,
                              size_t *len) {
    const char *canon = dtype ? npy_canonical(dtype) : NULL;
    if (!canon) return qlab_fail(QLAB_ERR_ARG, "npy: unsupported dtype '%s'", dtype ? dtype : "(null)");
    if (ndim < 0 || ndim > NPY_MAX_DIMS)
        return qlab_fail(QLAB_ERR_ARG, "npy: ndim %d outside 0..%d", ndim, NPY_MAX_DIMS);
    char dict[1024];
    size_t n =
        (size_t)snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (", canon);
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return qlab_fail(QLAB_ERR_ARG, "npy: negative dimension %" PRId64, shape[i]);
        n += (size_t)snprintf(dict + n, sizeof dict - n, "%s%" PRId64, i ? ", " : "", shape[i]);
    }
    n += (size_t)snprintf(dict + n, sizeof dict - n, "%s), }", ndim == 1 ? "," : "");
    /* numpy >= 1.24 leaves room for the first axis to grow to 21 digits, so files can be appended in place.
     */
    if (ndim > 0) {
        char first[32];
        int digits = snprintf(first, sizeof first, "%" PRId64, shape[0]);
        for (int i = digits; i < 21; i++)
            dict[n++] = ' ';
    }
    /* numpy pads with 1..64 spaces (a full 64 when already aligned) so the total is a multiple of 64 ending
     * in '\n'; version 1.0 holds header lengths up to 65535, beyond that 2.0. */
    size_t prefix = 10, total = prefix + n + 1;
    total += 64 - total % 64;
    if (total - prefix > 65535) {
        prefix = 12;
        total = prefix + n + 1;
        total += 64 - total % 64;
    }
    if (total > cap)
        return qlab_fail(QLAB_ERR_ARG, "npy: header needs %zu bytes, buffer holds %zu", total, cap);
    size_t hlen = total - prefix;
    memcpy(buf, npy_magic, 6);
    buf[6] = prefix == 10 ? 1 : 2;
    buf[7] = 0;
    buf[8] = (char)(hlen & 0xff);
    buf[9] = (char)((hlen >> 8) & 0xff);
    if (prefix == 12) {
        buf[10] = (char)((hlen >> 16) & 0xff);
        buf[11] = (char)((hlen >> 24) & 0xff);
    }
    memcpy(buf + prefix, dict, n);
    memset(buf + prefix + n, ' ', total - prefix - n - 1);
    buf[total - 1] = '\n';
    *len = total;
    return QLAB_OK;
}

qlab_status npy_write(const char *path, const char *dtype, int ndim, const int64_t *shape, const void *data) {
    char header[2048];
    size_t hlen;
    qlab_status st = npy_format_header(dtype, ndim, shape, header, sizeof header, &hlen);
    if (st != QLAB_OK) return qlab_fail_context(st, "%s", path);
    int64_t count = 1;
    for (int i = 0; i < ndim; i++)
        if (__builtin_mul_overflow(count, shape[i], &count))
            return qlab_fail(QLAB_ERR_ARG, "%s: shape product overflows 64 bits", path);
    size_t bytes;
    if ((uint64_t)count > SIZE_MAX || __builtin_mul_overflow((size_t)count, npy_dtype_size(dtype), &bytes))
        return qlab_fail(QLAB_ERR_ARG, "%s: array too large", path);
    if (bytes && !data) return qlab_fail(QLAB_ERR_ARG, "%s: no data to write", path);

    atomic_file w;
    QLAB_TRY(atomic_file_open(&w, path));
    atomic_file_write(&w, header, hlen);
    atomic_file_write(&w, data, bytes);
    return atomic_file_commit(&w);
}
