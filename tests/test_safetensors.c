/* Tests of the safetensors reader/writer: round trips for every dtype, the reference implementation's
 * exact bytes for a small file, fp32 conversion, sharded checkpoints, and one hand-made malformed file per
 * validation rule (status, file name and tensor name in a one-line message). */
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "tests/check.h"
#include "core/base/common.h"
#include "core/base/half.h"
#include "core/formats/safetensors.h"
#include "tests/test_util.h"

/* A file with the given header text (length as given, no padding) followed by data_len bytes. */
static void make_st(const char *path, const char *json, size_t data_len) {
    size_t n = strlen(json);
    unsigned char *buf = calloc(8 + n + data_len + 1, 1);
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)((uint64_t)n >> (8 * i));
    memcpy(buf + 8, json, n);
    for (size_t i = 0; i < data_len; i++)
        buf[8 + n + i] = (unsigned char)i;
    write_bytes(path, buf, 8 + n + data_len);
    free(buf);
}

static void test_round_trip(void) {
    unsigned char data[512];
    for (int i = 0; i < 512; i++)
        data[i] = (unsigned char)(i * 91 + 7);
    safetensors_writer *w = safetensors_writer_new();
    char name[64];
    int64_t shape[3] = {2, 3, 5};
    for (int d = 0; d < SAFETENSORS_DTYPE_COUNT; d++) {
        snprintf(name, sizeof name, "t.%s", safetensors_dtype_name((safetensors_dtype)d));
        CHECK(safetensors_writer_add(w, name, (safetensors_dtype)d, 3, shape, data) == QLAB_OK);
    }
    int64_t empty[2] = {0, 4};
    CHECK(safetensors_writer_add(w, "empty", SAFETENSORS_F32, 2, empty, NULL) == QLAB_OK);
    float scalar = 2.5f;
    CHECK(safetensors_writer_add_copy(w, "scalar", SAFETENSORS_F32, 0, NULL, &scalar) == QLAB_OK);
    scalar = -1; /* the copy must not see this */
    CHECK(safetensors_writer_add(w, "odd \"name\"\\\n\xc3\xa9", SAFETENSORS_U8, 1, (int64_t[]){3}, data) ==
          QLAB_OK);
    CHECK(safetensors_writer_set_metadata(w, "format", "pt") == QLAB_OK);
    CHECK(safetensors_writer_set_metadata(w, "note", "quote \" and \\ and\ttab") == QLAB_OK);
    CHECK(safetensors_writer_set_metadata(w, "format", "qlab") == QLAB_OK); /* replaces */
    const char *path = tmp_path("rt.safetensors");
    CHECKF(safetensors_writer_write(w, path) == QLAB_OK, "%s", qlab_last_error());
    safetensors_writer_free(w);

    safetensors_file f;
    qlab_status st = safetensors_open(&f, path);
    CHECKF(st == QLAB_OK, "%s", qlab_last_error());
    if (st != QLAB_OK) return;
    CHECK(f.n_tensors == SAFETENSORS_DTYPE_COUNT + 3);
    CHECK(f.n_metadata == 2);
    CHECK(safetensors_metadata(&f, "format") && !strcmp(safetensors_metadata(&f, "format"), "qlab"));
    CHECK(safetensors_metadata(&f, "note") &&
          !strcmp(safetensors_metadata(&f, "note"), "quote \" and \\ and\ttab"));
    CHECK(safetensors_metadata(&f, "missing") == NULL);
    for (int d = 0; d < SAFETENSORS_DTYPE_COUNT; d++) {
        snprintf(name, sizeof name, "t.%s", safetensors_dtype_name((safetensors_dtype)d));
        const safetensors_tensor *t = safetensors_find(&f, name);
        CHECKF(t != NULL, "%s", name);
        if (!t) continue;
        CHECK(t->dtype == (safetensors_dtype)d && t->ndim == 3 && t->count == 30);
        CHECK(t->shape[0] == 2 && t->shape[1] == 3 && t->shape[2] == 5);
        CHECK(t->nbytes == 30 * safetensors_dtype_size((safetensors_dtype)d));
        CHECK(memcmp(t->data, data, t->nbytes) == 0);
        /* The reference layout aligns every tensor to its item size. */
        CHECK(t->offset % safetensors_dtype_size((safetensors_dtype)d) == 0);
    }
    const safetensors_tensor *t = safetensors_find(&f, "scalar");
    CHECK(t && t->ndim == 0 && t->count == 1 && t->nbytes == 4);
    float back = 0;
    CHECK(safetensors_read_f32(&f, "scalar", &back, 1) == QLAB_OK && back == 2.5f);
    t = safetensors_find(&f, "empty");
    CHECK(t && t->count == 0 && t->nbytes == 0);
    t = safetensors_find(&f, "odd \"name\"\\\n\xc3\xa9");
    CHECK(t && t->count == 3 && memcmp(t->data, data, 3) == 0);
    CHECK(safetensors_find(&f, "nope") == NULL);
    const safetensors_tensor *req;
    CHECK(safetensors_require(&f, "nope", &req) == QLAB_ERR_FORMAT);
    CHECK(strstr(qlab_last_error(), path) && strstr(qlab_last_error(), "'nope'"));
    /* Header length is a multiple of 8 (spaces), so data starts 8-aligned. */
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | ((const unsigned char *)f.map_base)[i];
    CHECK(n % 8 == 0);

    float out[30];
    CHECK(safetensors_read_f32(&f, "t.F32", out, 29) == QLAB_ERR_FORMAT);
    CHECK(strstr(qlab_last_error(), path) && strstr(qlab_last_error(), "'t.F32'"));
    CHECK(safetensors_read_f32(&f, "t.F8_E4M3", out, 30) == QLAB_ERR_UNSUPPORTED);
    CHECK(strstr(qlab_last_error(), path) && strstr(qlab_last_error(), "F8_E4M3"));
    uint8_t raw[30];
    CHECK(safetensors_read_raw(&f, "t.U8", SAFETENSORS_U8, raw, 30) == QLAB_OK && !memcmp(raw, data, 30));
    CHECK(safetensors_read_raw(&f, "t.U8", SAFETENSORS_I8, raw, 30) == QLAB_ERR_FORMAT);
    CHECK(strstr(qlab_last_error(), "is U8, expected I8"));
    safetensors_close(&f);
}

/* The bytes the reference implementation writes for {"a": F32 [1.0, 2.0]} with metadata {"k": "v"}:
 * compact JSON, metadata first, padded with spaces to a multiple of 8. */
static void test_exact_bytes(void) {
    const char *json =
        "{\"__metadata__\":{\"k\":\"v\"},\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    size_t n = strlen(json), padded = (n + 7) / 8 * 8;
    unsigned char expect[256];
    memset(expect, ' ', sizeof expect);
    for (int i = 0; i < 8; i++)
        expect[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    memcpy(expect + 8, json, n);
    float v[2] = {1.0f, 2.0f};
    memcpy(expect + 8 + padded, v, 8);
    safetensors_writer *w = safetensors_writer_new();
    CHECK(safetensors_writer_add(w, "a", SAFETENSORS_F32, 1, (int64_t[]){2}, v) == QLAB_OK);
    CHECK(safetensors_writer_set_metadata(w, "k", "v") == QLAB_OK);
    const char *path = tmp_path("exact.safetensors");
    CHECK(safetensors_writer_write(w, path) == QLAB_OK);
    safetensors_writer_free(w);
    char *file;
    size_t len;
    CHECK(qlab_read_file(path, &file, &len) == QLAB_OK);
    CHECKF(len == 8 + padded + 8 && memcmp(file, expect, len) == 0, "got %zu bytes: %.*s", len, (int)len - 8,
           file + 8);
    free(file);
}

/* Byte vectors from the reference implementation's own serialization tests. */
static void check_file_bytes(const char *path, const unsigned char *expect, size_t n, const char *what) {
    char *file;
    size_t len;
    CHECK(qlab_read_file(path, &file, &len) == QLAB_OK);
    CHECKF(len == n && memcmp(file, expect, n) == 0, "%s: %zu bytes differ from the reference", what, len);
    free(file);
}

static void test_reference_vectors(void) {
    float v[6] = {0, 1, 2, 3, 4, 5};
    const char *path = tmp_path("ref.safetensors");
    /* {"attn.0": F32 [1,2,3]}: the JSON is exactly 64 bytes, so no padding. */
    static const unsigned char attn_0[] = {
        64,  0,   0,   0,   0,   0,  0,  0,  123, 34, 97,  116, 116, 110, 46,  48,  34,  58,  123, 34,
        100, 116, 121, 112, 101, 34, 58, 34, 70,  51, 50,  34,  44,  34,  115, 104, 97,  112, 101, 34,
        58,  91,  49,  44,  50,  44, 51, 93, 44,  34, 100, 97,  116, 97,  95,  111, 102, 102, 115, 101,
        116, 115, 34,  58,  91,  48, 44, 50, 52,  93, 125, 125, 0,   0,   0,   0,   0,   0,   128, 63,
        0,   0,   0,   64,  0,   0,  64, 64, 0,   0,  128, 64,  0,   0,   160, 64};
    safetensors_writer *w = safetensors_writer_new();
    CHECK(safetensors_writer_add(w, "attn.0", SAFETENSORS_F32, 3, (int64_t[]){1, 2, 3}, v) == QLAB_OK);
    CHECK(safetensors_writer_write(w, path) == QLAB_OK);
    safetensors_writer_free(w);
    check_file_bytes(path, attn_0, sizeof attn_0, "attn.0");
    /* {"attn0": F32 [1,1,2,3]}: 65 bytes of JSON padded with 7 spaces to 72. */
    static const unsigned char attn0[] = {
        72,  0,   0,   0,  0,  0,  0,  0,  123, 34,  97, 116, 116, 110, 48,  34,  58,  123, 34,  100, 116,
        121, 112, 101, 34, 58, 34, 70, 51, 50,  34,  44, 34,  115, 104, 97,  112, 101, 34,  58,  91,  49,
        44,  49,  44,  50, 44, 51, 93, 44, 34,  100, 97, 116, 97,  95,  111, 102, 102, 115, 101, 116, 115,
        34,  58,  91,  48, 44, 50, 52, 93, 125, 125, 32, 32,  32,  32,  32,  32,  32,  0,   0,   0,   0,
        0,   0,   128, 63, 0,  0,  0,  64, 0,   0,   64, 64,  0,   0,   128, 64,  0,   0,   160, 64};
    w = safetensors_writer_new();
    CHECK(safetensors_writer_add(w, "attn0", SAFETENSORS_F32, 4, (int64_t[]){1, 1, 2, 3}, v) == QLAB_OK);
    CHECK(safetensors_writer_write(w, path) == QLAB_OK);
    safetensors_writer_free(w);
    check_file_bytes(path, attn0, sizeof attn0, "attn0");
    /* No tensors: "{}" and six spaces; with metadata {"framework": "pt"}: 35 bytes + 5 spaces. */
    static const unsigned char empty[] = {8, 0, 0, 0, 0, 0, 0, 0, 123, 125, 32, 32, 32, 32, 32, 32};
    w = safetensors_writer_new();
    CHECK(safetensors_writer_write(w, path) == QLAB_OK);
    check_file_bytes(path, empty, sizeof empty, "empty");
    static const unsigned char meta[] = {40,  0,   0,   0,   0,   0,   0,   0,   123, 34,  95,  95,
                                         109, 101, 116, 97,  100, 97,  116, 97,  95,  95,  34,  58,
                                         123, 34,  102, 114, 97,  109, 101, 119, 111, 114, 107, 34,
                                         58,  34,  112, 116, 34,  125, 125, 32,  32,  32,  32,  32};
    CHECK(safetensors_writer_set_metadata(w, "framework", "pt") == QLAB_OK);
    CHECK(safetensors_writer_write(w, path) == QLAB_OK);
    safetensors_writer_free(w);
    check_file_bytes(path, meta, sizeof meta, "metadata only");

    /* Layout order: the reference's dtype ranking (U64, I64, F64, F32, U32, I32, BF16, F16, ...). */
    w = safetensors_writer_new();
    const safetensors_dtype order[] = {
        SAFETENSORS_U64,     SAFETENSORS_I64,     SAFETENSORS_F64, SAFETENSORS_F32, SAFETENSORS_U32,
        SAFETENSORS_I32,     SAFETENSORS_BF16,    SAFETENSORS_F16, SAFETENSORS_U16, SAFETENSORS_I16,
        SAFETENSORS_F8_E4M3, SAFETENSORS_F8_E5M2, SAFETENSORS_I8,  SAFETENSORS_U8,  SAFETENSORS_BOOL};
    char name[8];
    for (int i = SAFETENSORS_DTYPE_COUNT - 1; i >= 0; i--) { /* added in reverse, names sort the other way */
        snprintf(name, sizeof name, "%c", 'o' - i);
        safetensors_writer_add(w, name, order[i], 1, (int64_t[]){1}, v);
    }
    CHECK(safetensors_writer_write(w, path) == QLAB_OK);
    safetensors_writer_free(w);
    safetensors_file f;
    CHECK(safetensors_open(&f, path) == QLAB_OK);
    size_t prev = 0;
    for (int i = 0; i < SAFETENSORS_DTYPE_COUNT; i++) {
        snprintf(name, sizeof name, "%c", 'o' - i);
        const safetensors_tensor *t = safetensors_find(&f, name);
        CHECKF(t && t->dtype == order[i] && (i == 0 || t->offset > prev), "position %d", i);
        if (t) prev = t->offset;
    }
    safetensors_close(&f);
}

static void test_to_f32(void) {
    uint16_t h[3] = {f32_to_fp16(0.5f), f32_to_fp16(-3.0f), f32_to_fp16(1e-5f)};
    uint16_t b[3] = {f32_to_bf16(0.5f), f32_to_bf16(-3.0f), f32_to_bf16(1e20f)};
    double d[3] = {0.5, -3.0, 1e-40};
    int32_t i32[3] = {-7, 0, 123456};
    int64_t i64[3] = {-1, 1LL << 40, 5};
    safetensors_writer *w = safetensors_writer_new();
    int64_t three[1] = {3};
    safetensors_writer_add(w, "h", SAFETENSORS_F16, 1, three, h);
    safetensors_writer_add(w, "b", SAFETENSORS_BF16, 1, three, b);
    safetensors_writer_add(w, "d", SAFETENSORS_F64, 1, three, d);
    safetensors_writer_add(w, "i32", SAFETENSORS_I32, 1, three, i32);
    safetensors_writer_add(w, "i64", SAFETENSORS_I64, 1, three, i64);
    const char *path = tmp_path("conv.safetensors");
    CHECK(safetensors_writer_write(w, path) == QLAB_OK);
    safetensors_writer_free(w);
    safetensors_file f;
    CHECK(safetensors_open(&f, path) == QLAB_OK);
    float out[3];
    CHECK(safetensors_read_f32(&f, "h", out, 3) == QLAB_OK);
    CHECK(out[0] == 0.5f && out[1] == -3.0f && out[2] == fp16_to_f32(h[2]));
    CHECK(safetensors_read_f32(&f, "b", out, 3) == QLAB_OK);
    CHECK(out[0] == 0.5f && out[1] == -3.0f && out[2] == bf16_to_f32(b[2]));
    CHECK(safetensors_read_f32(&f, "d", out, 3) == QLAB_OK);
    CHECK(out[0] == 0.5f && out[1] == -3.0f && out[2] == (float)1e-40);
    CHECK(safetensors_read_f32(&f, "i32", out, 3) == QLAB_OK);
    CHECK(out[0] == -7.0f && out[1] == 0.0f && out[2] == 123456.0f);
    float *all;
    int64_t count;
    CHECK(safetensors_read_f32_alloc(&f, "i64", &all, &count) == QLAB_OK);
    CHECK(count == 3 && all[0] == -1.0f && all[1] == 1099511627776.0f && all[2] == 5.0f);
    qlab_free_aligned(all);
    safetensors_close(&f);
}

static void expect_fail(const char *path, qlab_status want, const char *keyword, const char *tensor) {
    safetensors_file f;
    qlab_status st = safetensors_open(&f, path);
    CHECKF(st == want, "%s: got status %d (%s), want %d", keyword, (int)st, qlab_last_error(), (int)want);
    CHECKF(strstr(qlab_last_error(), path) != NULL, "message lacks the file name: %s", qlab_last_error());
    CHECKF(strstr(qlab_last_error(), keyword) != NULL, "message lacks '%s': %s", keyword, qlab_last_error());
    if (tensor)
        CHECKF(strstr(qlab_last_error(), tensor) != NULL, "message lacks tensor %s: %s", tensor,
               qlab_last_error());
    CHECK(strchr(qlab_last_error(), '\n') == NULL);
    CHECK(f.map_base == NULL && f.tensors == NULL);
    if (st == QLAB_OK) safetensors_close(&f);
}

#define T(name, dtype, shape, b, e)                                                                          \
    "\"" name "\":{\"dtype\":\"" dtype "\",\"shape\":" shape ",\"data_offsets\":[" #b "," #e "]}"

static void test_malformed(void) {
    const char *p = tmp_path("bad.safetensors");
    write_bytes(p, "\x10\0\0", 3);
    expect_fail(p, QLAB_ERR_FORMAT, "too short", NULL);
    write_bytes(p, "\xff\xff\0\0\0\0\0\0{}", 10);
    expect_fail(p, QLAB_ERR_FORMAT, "beyond the file", NULL);
    write_bytes(p, "\xff\xff\xff\xff\xff\xff\xff\xff{}", 10);
    expect_fail(p, QLAB_ERR_FORMAT, "beyond the file", NULL);
    make_st(p, "[1, 2, 3]", 0);
    expect_fail(p, QLAB_ERR_FORMAT, "not a JSON object", NULL);
    make_st(p, "{\"a\":{\"dtype\":\"F32\",", 0);
    expect_fail(p, QLAB_ERR_FORMAT, "not valid JSON", NULL);
    make_st(p, "{\"\xc3\x28\":{}}", 0);
    expect_fail(p, QLAB_ERR_FORMAT, "UTF-8 (byte 2)", NULL);
    make_st(p, "{\"\xed\xa0\x80\":{}}", 0); /* an encoded surrogate */
    expect_fail(p, QLAB_ERR_FORMAT, "UTF-8", NULL);
    make_st(p, "{} xyz", 0);
    expect_fail(p, QLAB_ERR_FORMAT, "after the JSON", NULL);
    make_st(p, "{\"w\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8);
    expect_fail(p, QLAB_ERR_FORMAT, "missing 'dtype'", "'w'");
    make_st(p, "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8);
    expect_fail(p, QLAB_ERR_FORMAT, "missing 'shape'", "'w'");
    make_st(p, "{\"w\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8);
    expect_fail(p, QLAB_ERR_FORMAT, "missing 'data_offsets'", "'w'");
    make_st(p, "{\"w\":[1]}", 0);
    expect_fail(p, QLAB_ERR_FORMAT, "not a JSON object", "'w'");
    make_st(p, "{" T("w", "Q4", "[2]", 0, 8) "}", 8);
    expect_fail(p, QLAB_ERR_UNSUPPORTED, "unknown dtype 'Q4'", "'w'");
    make_st(p, "{" T("w", "F32", "[2]", 8, 0) "}", 8);
    expect_fail(p, QLAB_ERR_FORMAT, "reversed", "'w'");
    make_st(p, "{" T("w", "F32", "[3]", 0, 8) "}", 8);
    expect_fail(p, QLAB_ERR_FORMAT, "needs 12", "'w'");
    make_st(p, "{" T("w", "F32", "[2]", 0, 8) "," T("v", "F32", "[2]", 4, 12) "}", 12);
    expect_fail(p, QLAB_ERR_FORMAT, "overlaps", "'v'");
    make_st(p, "{" T("w", "F32", "[1]", 0, 4) "," T("v", "F32", "[1]", 8, 12) "}", 12);
    expect_fail(p, QLAB_ERR_FORMAT, "gap of 4", "'v'");
    make_st(p, "{" T("w", "F32", "[4]", 0, 16) "}", 8);
    expect_fail(p, QLAB_ERR_FORMAT, "outside the data", "'w'");
    make_st(p, "{" T("w", "F32", "[2]", 0, 8) "}", 12);
    expect_fail(p, QLAB_ERR_FORMAT, "trailing bytes", NULL);
    make_st(p, "{" T("w", "F32", "[1]", 0, 4) "," T("w", "F32", "[1]", 4, 8) "}", 8);
    expect_fail(p, QLAB_ERR_FORMAT, "appears twice", "'w'");
    /* A name with a newline must not break the one-line message. */
    make_st(p, "{" T("x\\ny", "F32", "[1]", 0, 4) "," T("x\\ny", "F32", "[1]", 4, 8) "}", 8);
    expect_fail(p, QLAB_ERR_FORMAT, "appears twice", "'x?y'");
    make_st(p, "{\"__metadata__\":{\"k\":3}," T("w", "F32", "[1]", 0, 4) "}", 4);
    expect_fail(p, QLAB_ERR_FORMAT, "not a string", "'k'");
    make_st(p, "{\"__metadata__\":[]}", 0);
    expect_fail(p, QLAB_ERR_FORMAT, "__metadata__ is not a JSON object", NULL);
    make_st(p, "{" T("w", "F32", "[-1]", 0, 4) "}", 4);
    expect_fail(p, QLAB_ERR_FORMAT, "non-negative integer", "'w'");
    make_st(p, "{" T("w", "F32", "[1.5]", 0, 4) "}", 4);
    expect_fail(p, QLAB_ERR_FORMAT, "non-negative integer", "'w'");
    make_st(p, "{" T("w", "F32", "[4294967296,4294967296]", 0, 4) "}", 4);
    expect_fail(p, QLAB_ERR_FORMAT, "overflow", "'w'");
    make_st(p, "{" T("w", "F32", "[1,1,1,1,1,1,1,1,1]", 0, 4) "}", 4);
    expect_fail(p, QLAB_ERR_UNSUPPORTED, "dimensions", "'w'");
    make_st(p, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4);
    expect_fail(p, QLAB_ERR_FORMAT, "two non-negative integers", "'w'");
    expect_fail(tmp_path("missing.safetensors"), QLAB_ERR_IO, "cannot open", NULL);
    /* A valid but empty file: header "{}" and no data. */
    make_st(p, "{}      ", 0);
    safetensors_file f;
    CHECKF(safetensors_open(&f, p) == QLAB_OK, "%s", qlab_last_error());
    CHECK(f.n_tensors == 0);
    safetensors_close(&f);

    /* Writer errors. */
    safetensors_writer *w = safetensors_writer_new();
    float v = 1;
    CHECK(safetensors_writer_add(w, "__metadata__", SAFETENSORS_F32, 0, NULL, &v) == QLAB_ERR_ARG);
    CHECK(safetensors_writer_add(w, "", SAFETENSORS_F32, 0, NULL, &v) == QLAB_ERR_ARG);
    CHECK(safetensors_writer_add(w, "x", SAFETENSORS_F32, 9, (int64_t[9]){1}, &v) == QLAB_ERR_ARG);
    CHECK(safetensors_writer_add(w, "x", SAFETENSORS_F32, 1, (int64_t[]){-2}, &v) == QLAB_ERR_ARG);
    CHECK(safetensors_writer_add(w, "x", SAFETENSORS_F32, 0, NULL, &v) == QLAB_OK);
    CHECK(safetensors_writer_add(w, "x", SAFETENSORS_F32, 0, NULL, &v) == QLAB_OK);
    CHECK(safetensors_writer_write(w, p) == QLAB_ERR_ARG);
    CHECK(strstr(qlab_last_error(), p) && strstr(qlab_last_error(), "'x' added twice"));
    safetensors_writer_free(w);
}

static void write_shard(const char *path, const char *a, const char *b, float base) {
    float v[4] = {base, base + 1, base + 2, base + 3};
    safetensors_writer *w = safetensors_writer_new();
    safetensors_writer_add(w, a, SAFETENSORS_F32, 2, (int64_t[]){2, 2}, v);
    if (b) safetensors_writer_add(w, b, SAFETENSORS_F32, 1, (int64_t[]){4}, v);
    CHECK(safetensors_writer_write(w, path) == QLAB_OK);
    safetensors_writer_free(w);
}

static void test_checkpoint(void) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/ckpt", test_tmp_dir());
    mkdir(dir, 0700);
    char p1[600], p2[600], idx[600];
    snprintf(p1, sizeof p1, "%s/model-00001-of-00002.safetensors", dir);
    snprintf(p2, sizeof p2, "%s/model-00002-of-00002.safetensors", dir);
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", dir);
    write_shard(p1, "model.embed_tokens.weight", "model.norm.weight", 10);
    write_shard(p2, "lm_head.weight", NULL, 20);
    const char *index = "{\"metadata\": {\"total_size\": 48}, \"weight_map\": {\"lm_head.weight\": "
                        "\"model-00002-of-00002.safetensors\", \"model.embed_tokens.weight\": "
                        "\"model-00001-of-00002.safetensors\", "
                        "\"model.norm.weight\": \"model-00001-of-00002.safetensors\"}}";
    write_bytes(idx, index, strlen(index));
    safetensors_checkpoint ck;
    for (int via = 0; via < 2; via++) {
        qlab_status st = safetensors_checkpoint_open(&ck, via ? idx : dir);
        CHECKF(st == QLAB_OK, "%s", qlab_last_error());
        if (st != QLAB_OK) continue;
        CHECK(ck.n_files == 2);
        const safetensors_file *f = NULL;
        const safetensors_tensor *t = safetensors_checkpoint_find(&ck, "lm_head.weight", &f);
        CHECK(t && f && strstr(f->path, "00002") && t->count == 4);
        float out[4];
        CHECK(safetensors_checkpoint_read_f32(&ck, "model.norm.weight", out, 4) == QLAB_OK &&
              out[3] == 13.0f);
        CHECK(safetensors_checkpoint_read_f32(&ck, "missing.weight", out, 4) == QLAB_ERR_FORMAT);
        CHECK(strstr(qlab_last_error(), "'missing.weight'"));
        safetensors_checkpoint_close(&ck);
    }
    /* A single file opens as a one-shard checkpoint. */
    CHECK(safetensors_checkpoint_open(&ck, p2) == QLAB_OK && ck.n_files == 1);
    safetensors_checkpoint_close(&ck);

    /* The index names a tensor its shard lacks. */
    const char *bad = "{\"weight_map\": {\"ghost.weight\": \"model-00002-of-00002.safetensors\"}}";
    write_bytes(idx, bad, strlen(bad));
    CHECK(safetensors_checkpoint_open(&ck, dir) == QLAB_ERR_FORMAT);
    CHECK(strstr(qlab_last_error(), idx) && strstr(qlab_last_error(), "'ghost.weight'"));
    /* A shard path that escapes the folder. */
    bad = "{\"weight_map\": {\"lm_head.weight\": \"../model-00002-of-00002.safetensors\"}}";
    write_bytes(idx, bad, strlen(bad));
    CHECK(safetensors_checkpoint_open(&ck, idx) == QLAB_ERR_FORMAT);
    CHECK(strstr(qlab_last_error(), "plain file name"));
    /* A missing shard. */
    bad = "{\"weight_map\": {\"lm_head.weight\": \"model-00009.safetensors\"}}";
    write_bytes(idx, bad, strlen(bad));
    CHECK(safetensors_checkpoint_open(&ck, idx) == QLAB_ERR_IO);
    CHECK(strstr(qlab_last_error(), "model-00009.safetensors"));
    /* The same tensor in two shards. */
    write_shard(p2, "model.norm.weight", NULL, 20);
    bad = "{\"weight_map\": {\"model.norm.weight\": \"model-00002-of-00002.safetensors\", "
          "\"model.embed_tokens.weight\": "
          "\"model-00001-of-00002.safetensors\"}}";
    write_bytes(idx, bad, strlen(bad));
    CHECK(safetensors_checkpoint_open(&ck, idx) == QLAB_ERR_FORMAT);
    CHECK(strstr(qlab_last_error(), "'model.norm.weight' is in both"));
    write_bytes(idx, "{\"weight_map\": 3}", 17);
    CHECK(safetensors_checkpoint_open(&ck, idx) == QLAB_ERR_FORMAT);
    CHECK(strstr(qlab_last_error(), "weight_map"));
    CHECK(safetensors_checkpoint_open(&ck, tmp_path("nothing_here")) == QLAB_ERR_IO);
}

int main(void) {
    test_tmp_dir_create("safetensors");
    test_round_trip();
    test_exact_bytes();
    test_reference_vectors();
    test_to_f32();
    test_malformed();
    test_checkpoint();
    test_tmp_dir_remove();
    return check_summary();
}
