/* Tests of quantized tensors in safetensors: every dtype, with and without double quantization, must
 * round-trip every field of quant_tensor bit for bit; NF4/FP4 must use bitsandbytes' exact tensor names
 * and JSON; malformed quantized entries must fail with the file and tensor named. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/check.h"
#include "core/base/common.h"
#include "core/quant/quant.h"
#include "core/quant/quant_io.h"
#include "core/base/rng.h"
#include "core/formats/safetensors.h"
#include "tests/test_util.h"

static int same_bits(const void *a, const void *b, size_t n) {
    return n == 0 || memcmp(a, b, n) == 0;
}

/* Every field of two quantized tensors, bit for bit. */
static void check_same(const quant_tensor *a, const quant_tensor *b, const char *what) {
    CHECKF(a->dtype == b->dtype && a->blocksize == b->blocksize && a->n == b->n && a->nblocks == b->nblocks,
           "%s", what);
    CHECKF(a->ndim == b->ndim && same_bits(a->shape, b->shape, sizeof(int64_t) * (size_t)a->ndim), "%s shape",
           what);
    CHECKF(same_bits(a->codes, b->codes, (size_t)(a->n + 1) / 2), "%s codes", what);
    CHECKF((a->absmax == NULL) == (b->absmax == NULL), "%s absmax presence", what);
    CHECKF((a->scale8 == NULL) == (b->scale8 == NULL), "%s scale8 presence", what);
    CHECKF((a->scale16 == NULL) == (b->scale16 == NULL), "%s scale16 presence", what);
    CHECKF((a->dq_codes == NULL) == (b->dq_codes == NULL), "%s dq_codes presence", what);
    CHECKF((a->dq_absmax == NULL) == (b->dq_absmax == NULL), "%s dq_absmax presence", what);
    if (a->absmax && b->absmax)
        CHECKF(same_bits(a->absmax, b->absmax, sizeof(float) * (size_t)a->nblocks), "%s absmax", what);
    if (a->scale8 && b->scale8)
        CHECKF(same_bits(a->scale8, b->scale8, (size_t)a->nblocks), "%s scale8", what);
    if (a->scale16 && b->scale16)
        CHECKF(same_bits(a->scale16, b->scale16, sizeof(uint16_t) * (size_t)a->nblocks), "%s scale16", what);
    CHECKF(same_bits(&a->tensor_scale, &b->tensor_scale, sizeof(float)), "%s tensor_scale", what);
    CHECKF(a->double_quant == b->double_quant && a->dq_nblocks == b->dq_nblocks, "%s dq", what);
    if (a->dq_codes && b->dq_codes)
        CHECKF(same_bits(a->dq_codes, b->dq_codes, (size_t)a->nblocks), "%s dq_codes", what);
    if (a->dq_absmax && b->dq_absmax)
        CHECKF(same_bits(a->dq_absmax, b->dq_absmax, sizeof(float) * (size_t)a->dq_nblocks), "%s dq_absmax",
               what);
    CHECKF(same_bits(&a->dq_offset, &b->dq_offset, sizeof(float)), "%s dq_offset %.9g vs %.9g", what,
           (double)a->dq_offset, (double)b->dq_offset);
    CHECKF(a->orig_dtype == b->orig_dtype, "%s orig_dtype %d vs %d", what, (int)a->orig_dtype,
           (int)b->orig_dtype);
    CHECKF(same_bits(quant_tensor_dq_map(a), quant_tensor_dq_map(b), 256 * sizeof(float)), "%s nested map",
           what);
    CHECKF(same_bits(quant_tensor_codebook(a), quant_tensor_codebook(b), 16 * sizeof(float)), "%s code map",
           what);
}

static void test_round_trips(void) {
    rng_state r;
    rng_seed(&r, 1234);
    /* 37 x 65 = 2405 elements: odd (a half-filled last byte) and not a multiple of any block size. */
    enum { ROWS = 37, COLS = 65, N = ROWS * COLS };
    static float x[N], y1[N], y2[N];
    for (int i = 0; i < N; i++)
        x[i] = (float)rng_normal(&r) * (i % 97 == 0 ? 8.0f : 0.05f);
    for (int d = 0; d < QUANT_DTYPE_COUNT; d++) {
        quant_dtype dt = (quant_dtype)d;
        int bs_list[2] = {quant_default_blocksize(dt), quant_dtype_has_fp32_absmax(dt) ? 128 : 0};
        for (int bi = 0; bi < 2; bi++) {
            int bs = bs_list[bi];
            if (!bs) continue;
            for (int dq = 0; dq <= 1; dq++) {
                if (dq && !quant_dtype_has_fp32_absmax(dt)) continue;
                char what[96];
                snprintf(what, sizeof what, "%s bs=%d dq=%d", quant_dtype_name(dt), bs, dq);
                quant_tensor q, back;
                qlab_status st = quant_tensor_quantize_ref(&q, x, N, dt, bs, dq);
                CHECKF(st == QLAB_OK, "%s: %s", what, qlab_last_error());
                if (st != QLAB_OK) continue;
                q.ndim = 2;
                q.shape[0] = ROWS;
                q.shape[1] = COLS;
                const char *path = tmp_path("q.safetensors");
                st = quant_io_save(path, "model.layers.0.mlp.down_proj.weight", &q);
                CHECKF(st == QLAB_OK, "%s: %s", what, qlab_last_error());
                st = quant_io_load(path, "model.layers.0.mlp.down_proj.weight", &back);
                CHECKF(st == QLAB_OK, "%s: %s", what, qlab_last_error());
                if (st == QLAB_OK) {
                    check_same(&q, &back, what);
                    quant_tensor_dequantize_ref(&q, y1);
                    quant_tensor_dequantize_ref(&back, y2);
                    CHECKF(memcmp(y1, y2, sizeof y1) == 0, "%s dequantized values differ", what);
                    quant_tensor_free(&back);
                }
                quant_tensor_free(&q);
            }
        }
    }
    /* A 4-D shape and an empty tensor survive too. */
    quant_tensor q, back;
    CHECK(quant_tensor_quantize_ref(&q, x, 2 * 3 * 4 * 5, QUANT_NF4, 64, 1) == QLAB_OK);
    q.ndim = 4;
    q.shape[0] = 2, q.shape[1] = 3, q.shape[2] = 4, q.shape[3] = 5;
    CHECK(quant_io_save(tmp_path("q4d.safetensors"), "w", &q) == QLAB_OK);
    CHECKF(quant_io_load(tmp_path("q4d.safetensors"), "w", &back) == QLAB_OK, "%s", qlab_last_error());
    check_same(&q, &back, "4-D");
    quant_tensor_free(&back);
    quant_tensor_free(&q);
    if (quant_tensor_quantize_ref(&q, x, 0, QUANT_FP4, 64, 0) == QLAB_OK) {
        CHECKF(quant_io_save(tmp_path("q0.safetensors"), "w", &q) == QLAB_OK, "%s", qlab_last_error());
        CHECKF(quant_io_load(tmp_path("q0.safetensors"), "w", &back) == QLAB_OK, "%s", qlab_last_error());
        check_same(&q, &back, "empty");
        quant_tensor_free(&back);
        quant_tensor_free(&q);
    }
}

/* NF4 + DQ must be stored exactly as transformers stores a bitsandbytes Linear4bit weight. */
static void test_bitsandbytes_layout(void) {
    float x[300];
    for (int i = 0; i < 300; i++)
        x[i] = (float)((i * 37) % 101 - 50) / 50.0f;
    quant_tensor q;
    CHECK(quant_tensor_quantize_ref(&q, x, 300, QUANT_NF4, 64, 1) == QLAB_OK);
    q.ndim = 2, q.shape[0] = 10, q.shape[1] = 30;
    const char *path = tmp_path("bnb.safetensors");
    CHECK(quant_io_save(path, "weight", &q) == QLAB_OK);
    safetensors_file f;
    CHECK(safetensors_open(&f, path) == QLAB_OK);
    CHECK(f.n_tensors == 6);
    const safetensors_tensor *t = safetensors_find(&f, "weight");
    CHECK(t && t->dtype == SAFETENSORS_U8 && t->ndim == 2 && t->shape[0] == 150 && t->shape[1] == 1);
    t = safetensors_find(&f, "weight.absmax");
    CHECK(t && t->dtype == SAFETENSORS_U8 && t->ndim == 1 && t->shape[0] == 5);
    t = safetensors_find(&f, "weight.quant_map");
    CHECK(t && t->dtype == SAFETENSORS_F32 && t->count == 16 &&
          !memcmp(t->data, quant_codebook(QUANT_NF4), 64));
    t = safetensors_find(&f, "weight.nested_absmax");
    CHECK(t && t->dtype == SAFETENSORS_F32 && t->count == 1);
    t = safetensors_find(&f, "weight.nested_quant_map");
    CHECK(t && t->dtype == SAFETENSORS_F32 && t->count == 256 &&
          !memcmp(t->data, quant_dynamic_map_signed(), 1024));
    t = safetensors_find(&f, "weight.quant_state.bitsandbytes__nf4");
    CHECK(t && t->dtype == SAFETENSORS_U8 && t->ndim == 1);
    if (t) {
        char expect[512], off[64];
        for (int prec = 1; prec <= 17; prec++) { /* shortest round-trip decimal, like Python's repr */
            snprintf(off, sizeof off, "%.*g", prec, (double)q.dq_offset);
            if (strtod(off, NULL) == (double)q.dq_offset) break;
        }
        snprintf(expect, sizeof expect,
                 "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [10, 30], "
                 "\"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": %s}",
                 off);
        CHECKF(t->nbytes == strlen(expect) && !memcmp(t->data, expect, t->nbytes), "got %.*s", (int)t->nbytes,
               (const char *)t->data);
    }
    CHECK(quant_io_has(&f, "weight") && !quant_io_has(&f, "weigh") && !quant_io_has(&f, "weight.absmax"));
    CHECK(quant_io_count(&f) == 1);
    char name[64];
    CHECK(quant_io_name_at(&f, 0, name, sizeof name) == QLAB_OK && !strcmp(name, "weight"));
    CHECK(quant_io_name_at(&f, 1, name, sizeof name) == QLAB_ERR_ARG);
    safetensors_close(&f);
    quant_tensor_free(&q);

    /* FP4 without DQ: fp32 absmax and the bitsandbytes__fp4 key; an extension type uses qlab__. */
    CHECK(quant_tensor_quantize_ref(&q, x, 300, QUANT_FP4, 64, 0) == QLAB_OK);
    quant_tensor q2;
    CHECK(quant_tensor_quantize_ref(&q2, x, 300, QUANT_NVFP4, 16, 0) == QLAB_OK);
    safetensors_writer *w = safetensors_writer_new();
    CHECK(quant_io_add(w, "a.weight", &q) == QLAB_OK);
    CHECK(quant_io_add(w, "b.weight", &q2) == QLAB_OK);
    CHECK(safetensors_writer_write(w, path) == QLAB_OK);
    safetensors_writer_free(w);
    CHECK(safetensors_open(&f, path) == QLAB_OK);
    t = safetensors_find(&f, "a.weight.absmax");
    CHECK(t && t->dtype == SAFETENSORS_F32 && t->count == 5);
    CHECK(safetensors_find(&f, "a.weight.quant_state.bitsandbytes__fp4") != NULL);
    CHECK(safetensors_find(&f, "b.weight.quant_state.qlab__nvfp4") != NULL);
    CHECK(safetensors_find(&f, "b.weight.scale8") && safetensors_find(&f, "b.weight.tensor_scale"));
    CHECK(quant_io_count(&f) == 2);
    CHECK(quant_io_name_at(&f, 1, name, sizeof name) == QLAB_OK && !strcmp(name, "b.weight"));
    quant_tensor back;
    CHECK(quant_io_read(&f, "b.weight", &back) == QLAB_OK);
    check_same(&q2, &back, "nvfp4 in a two-tensor file");
    quant_tensor_free(&back);
    safetensors_close(&f);
    quant_tensor_free(&q);
    quant_tensor_free(&q2);
}

/* Writes a file holding the NF4+DQ tensor "w" from quant_io_add, then replaces/adds entries. */
typedef struct {
    const char *name;
    safetensors_dtype dt;
    int64_t count;
    const void *data;
} override;

static void write_tampered(const char *path, const quant_tensor *q, const override *ov, int n_ov,
                           const char *drop) {
    /* Build the honest file, re-read it, then rewrite with changes. */
    const char *honest = tmp_path("honest.safetensors");
    CHECK(quant_io_save(honest, "w", q) == QLAB_OK);
    safetensors_file f;
    CHECK(safetensors_open(&f, honest) == QLAB_OK);
    safetensors_writer *w = safetensors_writer_new();
    for (int i = 0; i < f.n_tensors; i++) {
        const safetensors_tensor *t = &f.tensors[i];
        int replaced = drop && !strcmp(t->name, drop);
        for (int k = 0; k < n_ov; k++)
            replaced |= !strcmp(t->name, ov[k].name);
        if (!replaced) safetensors_writer_add_copy(w, t->name, t->dtype, t->ndim, t->shape, t->data);
    }
    for (int k = 0; k < n_ov; k++)
        safetensors_writer_add_copy(w, ov[k].name, ov[k].dt, 1, &ov[k].count, ov[k].data);
    CHECK(safetensors_writer_write(w, path) == QLAB_OK);
    safetensors_writer_free(w);
    safetensors_close(&f);
}

static void expect_fail(const char *path, const char *keyword) {
    quant_tensor q;
    qlab_status st = quant_io_load(path, "w", &q);
    CHECKF(st != QLAB_OK, "%s: loaded", keyword);
    if (getenv("QLAB_TEST_VERBOSE")) fprintf(stderr, "  %s\n", qlab_last_error());
    CHECKF(strstr(qlab_last_error(), path) != NULL, "message lacks the file: %s", qlab_last_error());
    CHECKF(strstr(qlab_last_error(), "'w") != NULL, "message lacks the tensor: %s", qlab_last_error());
    CHECKF(strstr(qlab_last_error(), keyword) != NULL, "message lacks '%s': %s", keyword, qlab_last_error());
    CHECK(q.codes == NULL && q.absmax == NULL && q.dq_codes == NULL);
    if (st == QLAB_OK) quant_tensor_free(&q);
}

static void json_override(override *o, char *buf, const char *json) {
    snprintf(buf, 512, "%s", json);
    o->name = "w.quant_state.bitsandbytes__nf4";
    o->dt = SAFETENSORS_U8;
    o->count = (int64_t)strlen(buf);
    o->data = buf;
}

/* nested_offset is written as Python's repr() of the double, as json.dumps in bitsandbytes'
 * QuantState.as_dict writes offset.item(): "2.0" for an integral value (not "2"), exponent notation below
 * 1e-4 and from 1e16. Every block's absmax is v here, so the offset (their mean) is v exactly. */
static void test_nested_offset_repr(void) {
    static const struct {
        float v;
        const char *text;
    } cases[] = {{2.0f, "2.0"},
                 {0.5f, "0.5"},
                 {1234567.0f, "1234567.0"},
                 {65504.0f, "65504.0"},
                 {3e-4f, "0.0003000000142492354"},
                 {1e-4f, "9.999999747378752e-05"},
                 {1e-5f, "9.999999747378752e-06"},
                 {1e16f, "1.0000000272564224e+16"}};
    enum { N = 64 * 3 };
    float x[N];
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        for (int i = 0; i < N; i++)
            x[i] = i % 64 == 5 ? (i % 128 == 5 ? cases[k].v : -cases[k].v) : cases[k].v * 0.25f;
        quant_tensor q;
        CHECK(quant_tensor_quantize_ref(&q, x, N, QUANT_NF4, 64, 1) == QLAB_OK);
        CHECK(q.dq_offset == cases[k].v);
        const char *path = tmp_path("offset.safetensors");
        CHECK(quant_io_save(path, "w", &q) == QLAB_OK);
        safetensors_file f;
        CHECK(safetensors_open(&f, path) == QLAB_OK);
        const safetensors_tensor *t = safetensors_find(&f, "w.quant_state.bitsandbytes__nf4");
        char expect[512];
        snprintf(expect, sizeof expect,
                 "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [192], "
                 "\"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": %s}",
                 cases[k].text);
        CHECKF(t && t->nbytes == strlen(expect) && !memcmp(t->data, expect, t->nbytes), "offset %s: got %.*s",
               cases[k].text, t ? (int)t->nbytes : 0, t ? (const char *)t->data : "");
        safetensors_close(&f);
        quant_tensor back;
        CHECK(quant_io_load(path, "w", &back) == QLAB_OK && back.dq_offset == cases[k].v);
        quant_tensor_free(&back);
        quant_tensor_free(&q);
    }
}

/* bitsandbytes' quant_storage (transformers' bnb_4bit_quant_storage, bfloat16 for FSDP): the packed codes
 * are saved as a view of the same bytes in that dtype, e.g. BF16 [n/4, 1]. They load as the bytes they
 * are; a codes tensor of the wrong byte size is refused. */
static void test_quant_storage(void) {
    enum { N = 64 * 3 + 8 };
    float x[N], want[N], got[N];
    rng_state r;
    rng_seed(&r, 5);
    for (int i = 0; i < N; i++)
        x[i] = (float)rng_normal(&r);
    quant_tensor q, back;
    CHECK(quant_tensor_quantize_ref(&q, x, N, QUANT_NF4, 64, 1) == QLAB_OK);
    CHECK(quant_tensor_dequantize_ref(&q, want) == QLAB_OK);
    const char *p = tmp_path("storage.safetensors");
    static const struct {
        safetensors_dtype dt;
        int64_t count;
    } storage[] = {{SAFETENSORS_BF16, N / 4},
                   {SAFETENSORS_F16, N / 4},
                   {SAFETENSORS_I8, N / 2},
                   {SAFETENSORS_F32, N / 8}};
    for (size_t k = 0; k < sizeof storage / sizeof *storage; k++) {
        override o[1] = {{"w", storage[k].dt, storage[k].count, q.codes}};
        write_tampered(p, &q, o, 1, NULL);
        CHECKF(quant_io_load(p, "w", &back) == QLAB_OK, "%s storage: %s",
               safetensors_dtype_name(storage[k].dt), qlab_last_error());
        CHECK(quant_tensor_dequantize(&back, got) == QLAB_OK && same_bits(got, want, sizeof want));
        quant_tensor_free(&back);
    }
    override o[1] = {{"w", SAFETENSORS_BF16, N / 4 - 1, q.codes}};
    write_tampered(p, &q, o, 1, NULL);
    expect_fail(p, "expected 100 bytes");
    quant_tensor_free(&q);
}

static void test_malformed(void) {
    float x[300];
    for (int i = 0; i < 300; i++)
        x[i] = (float)(i % 17) - 8.0f;
    quant_tensor q;
    CHECK(quant_tensor_quantize_ref(&q, x, 300, QUANT_NF4, 64, 1) == QLAB_OK);
    char p[512];
    snprintf(p, sizeof p, "%s", tmp_path("bad.safetensors"));
    char json[512];
    override o[2];

    write_tampered(p, &q, NULL, 0, "w.absmax");
    expect_fail(p, "lacks 'w.absmax'");
    write_tampered(p, &q, NULL, 0, "w.quant_state.bitsandbytes__nf4");
    expect_fail(p, "no quantized tensor");
    write_tampered(p, &q, NULL, 0, "w.nested_absmax");
    expect_fail(p, "nested_* keys");
    float map[16];
    memcpy(map, quant_codebook(QUANT_NF4), sizeof map);
    map[3] += 1e-6f;
    o[0] = (override){"w.quant_map", SAFETENSORS_F32, 16, map};
    write_tampered(p, &q, o, 1, NULL);
    expect_fail(p, "entry 3");
    float dyn[256];
    memcpy(dyn, quant_dynamic_map_signed(), sizeof dyn);
    dyn[200] = 0;
    o[0] = (override){"w.nested_quant_map", SAFETENSORS_F32, 256, dyn};
    write_tampered(p, &q, o, 1, NULL);
    expect_fail(p, "entry 200");
    expect_fail(p, "not ascending");
    uint8_t codes[151] = {0};
    o[0] = (override){"w", SAFETENSORS_U8, 151, codes};
    write_tampered(p, &q, o, 1, NULL);
    expect_fail(p, "151 elements");
    float absmax[5] = {1, 1, 1, 1, 1};
    o[0] = (override){"w.absmax", SAFETENSORS_F32, 5, absmax};
    write_tampered(p, &q, o, 1, NULL);
    expect_fail(p, "expected U8");
    json_override(&o[0], json,
                  "{\"quant_type\": \"fp4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [300]}");
    write_tampered(p, &q, o, 1, NULL);
    expect_fail(p, "quant_type");
    json_override(&o[0], json,
                  "{\"quant_type\": \"nf4\", \"blocksize\": 48, \"dtype\": \"float32\", \"shape\": [300], "
                  "\"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": 0.5}");
    write_tampered(p, &q, o, 1, NULL);
    expect_fail(p, "48");
    json_override(&o[0], json,
                  "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [301], "
                  "\"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": 0.5}");
    write_tampered(p, &q, o, 1, NULL);
    expect_fail(p, "expected 151 bytes");
    json_override(&o[0], json,
                  "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [-300], "
                  "\"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": 0.5}");
    write_tampered(p, &q, o, 1, NULL);
    expect_fail(p, "shape entry 0");
    json_override(&o[0], json,
                  "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [300], "
                  "\"nested_blocksize\": 128, \"nested_dtype\": \"float32\", \"nested_offset\": 0.5}");
    write_tampered(p, &q, o, 1, NULL);
    expect_fail(p, "nested_blocksize must be 256");
    json_override(&o[0], json, "not json at all");
    write_tampered(p, &q, o, 1, NULL);
    expect_fail(p, "not a JSON object");
    json_override(&o[0], json, "{}");
    o[0].name = "w.quant_state.bitsandbytes__int8";
    write_tampered(p, &q, o, 1, "w.quant_state.bitsandbytes__nf4");
    expect_fail(p, "unknown quant state 'bitsandbytes__int8'");
    json_override(&o[0], json,
                  "{\"quant_type\": \"fp4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [300]}");
    o[0].name = "w.quant_state.bitsandbytes__fp4";
    write_tampered(p, &q, o, 1, NULL);
    expect_fail(p, "two quant_state entries");
    quant_tensor_free(&q);

    /* Saving an inconsistent tensor is refused. */
    CHECK(quant_tensor_quantize_ref(&q, x, 300, QUANT_INT4, 64, 0) == QLAB_OK);
    q.ndim = 2, q.shape[0] = 7, q.shape[1] = 7;
    CHECK(quant_io_save(p, "w", &q) == QLAB_ERR_ARG);
    CHECK(strstr(qlab_last_error(), p) && strstr(qlab_last_error(), "'w'"));
    quant_tensor_free(&q);
}

/* fp32 x moved by k representable steps (k > 0: away from zero for positive x). */
static float ulp_step(float x, int k) {
    uint32_t u;
    memcpy(&u, &x, 4);
    u += (uint32_t)k;
    memcpy(&x, &u, 4);
    return x;
}

/* bitsandbytes' own files: its nested map comes from torch's vectorised linspace and differs from the
 * scalar one by up to 2 ulp in 42 entries on x86; bitsandbytes decodes with the stored map, so must we.
 * Its FP4 quant_map has +0.0 at code 8. The quant_state dtype is the input's. */
static void test_bitsandbytes_maps(void) {
    enum { N = 64 * 1024 + 5 };
    float *x = malloc(sizeof(float) * N), *got = malloc(sizeof(float) * N), *own = malloc(sizeof(float) * N);
    rng_state r;
    rng_seed(&r, 11);
    for (int i = 0; i < N; i++)
        x[i] = (float)rng_normal(&r) * (1.0f + (float)(i % 977) / 100.0f);
    quant_tensor q, back;
    CHECK(quant_tensor_quantize_ref(&q, x, N, QUANT_NF4, 64, 1) == QLAB_OK);
    CHECK(quant_tensor_dequantize_ref(&q, own) == QLAB_OK);
    char p[512];
    snprintf(p, sizeof p, "%s", tmp_path("bnb_map.safetensors"));

    /* Entries used by the tensor's absmax codes moved by +-1..2 ulp (the size torch's linspace gives). */
    float dyn[256];
    memcpy(dyn, quant_dynamic_map_signed(), sizeof dyn);
    int used[256] = {0}, moved = 0;
    for (int64_t b = 0; b < q.nblocks; b++)
        used[q.dq_codes[b]] = 1;
    for (int i = 1; i < 255; i++)
        if (used[i] && dyn[i] != 0.0f && i % 3 == 0) {
            dyn[i] = ulp_step(dyn[i], i % 2 ? 2 : -2);
            moved++;
        }
    CHECKF(moved >= 5, "only %d used map entries to move", moved);
    override o[2] = {{"w.nested_quant_map", SAFETENSORS_F32, 256, dyn}};
    write_tampered(p, &q, o, 1, NULL);
    CHECK(quant_io_load(p, "w", &back) == QLAB_OK);
    CHECK(back.dq_map != NULL && same_bits(back.dq_map, dyn, sizeof dyn));
    CHECK(quant_tensor_dequantize(&back, got) == QLAB_OK);
    /* Expected by hand: code value x (stored map[code] x nested absmax + offset), in fp32. */
    int exact = 1, differs = 0;
    const float *cb = quant_codebook(QUANT_NF4);
    for (int64_t i = 0; i < N; i++) {
        int64_t b = i / 64;
        float amax = dyn[q.dq_codes[b]] * q.dq_absmax[b / 256] + q.dq_offset;
        int code = (q.codes[i / 2] >> (i % 2 ? 0 : 4)) & 15;
        float want = cb[code] * amax;
        exact &= same_bits(&want, &got[i], 4);
        differs |= !same_bits(&own[i], &got[i], 4);
    }
    CHECK(exact);
    CHECKF(differs, "the moved map entries changed no value: the test cannot tell which map decodes");
    /* Written back, the stored map is kept. */
    const char *p2 = tmp_path("bnb_map2.safetensors");
    CHECK(quant_io_save(p2, "w", &back) == QLAB_OK);
    quant_tensor again;
    CHECK(quant_io_load(p2, "w", &again) == QLAB_OK);
    check_same(&back, &again, "stored nested map round trip");
    quant_tensor_free(&again);
    quant_tensor_free(&back);

    /* Not a dynamic map: an entry 1e-3 off, two entries swapped (not ascending), 5 ulp off. */
    memcpy(dyn, quant_dynamic_map_signed(), sizeof dyn);
    dyn[18] += 1e-3f;
    write_tampered(p, &q, o, 1, NULL);
    expect_fail(p, "w.nested_quant_map' entry 18");
    memcpy(dyn, quant_dynamic_map_signed(), sizeof dyn);
    float t = dyn[40];
    dyn[40] = dyn[41], dyn[41] = t;
    write_tampered(p, &q, o, 1, NULL);
    expect_fail(p, "w.nested_quant_map' entry 40"); /* the first entry off (ascending is checked below) */
    memcpy(dyn, quant_dynamic_map_signed(), sizeof dyn);
    dyn[100] = ulp_step(dyn[100], QUANT_MAP_ULP_TOLERANCE + 1);
    write_tampered(p, &q, o, 1, NULL);
    expect_fail(p, "entry 100");
    memcpy(dyn, quant_dynamic_map_signed(), sizeof dyn);
    dyn[100] = ulp_step(dyn[100], QUANT_MAP_ULP_TOLERANCE);
    write_tampered(p, &q, o, 1, NULL);
    CHECK(quant_io_load(p, "w", &back) == QLAB_OK);
    quant_tensor_free(&back);

    /* The quant_state dtype: float16 / bfloat16 round-trip and default the dequantization; others fail. */
    static const char *names[] = {"float32", "float16", "bfloat16"};
    for (int d = 0; d < 3; d++) {
        q.orig_dtype = (quant_orig_dtype)d;
        CHECK(quant_io_save(p, "w", &q) == QLAB_OK);
        safetensors_file f;
        CHECK(safetensors_open(&f, p) == QLAB_OK);
        const safetensors_tensor *st = safetensors_find(&f, "w.quant_state.bitsandbytes__nf4");
        char want[64];
        snprintf(want, sizeof want, "\"dtype\": \"%s\"", names[d]);
        char text[512] = "";
        if (st && st->nbytes < sizeof text) memcpy(text, st->data, st->nbytes);
        CHECKF(strstr(text, want) != NULL, "JSON lacks %s: %s", want, text);
        safetensors_close(&f);
        CHECK(quant_io_load(p, "w", &back) == QLAB_OK);
        check_same(&q, &back, names[d]);
        quant_tensor_free(&back);
    }
    q.orig_dtype = QUANT_ORIG_F32;
    char json[512];
    json_override(&o[0], json,
                  "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float64\", \"shape\": [65541], "
                  "\"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": 0.5}");
    write_tampered(p, &q, o, 1, NULL);
    expect_fail(p, "float64");
    quant_tensor_free(&q);

    /* FP4 as bitsandbytes stores it (get_4bit_type("fp4") as float32, bit for bit): quant_map[8] = +0.0,
     * and code 8 decodes to +0.0 as in its CPU path, from our own file too. */
    static const uint32_t bnb_fp4_map[16] = {
        0x00000000, 0x3baaaaab, 0x3f2aaaab, 0x3f800000, 0x3eaaaaab, 0x3f000000, 0x3e2aaaab, 0x3e800000,
        0x00000000, 0xbbaaaaab, 0xbf2aaaab, 0xbf800000, 0xbeaaaaab, 0xbf000000, 0xbe2aaaab, 0xbe800000};
    float small[4] = {-1e-9f, 1.0f, -2e-9f, -1.0f};
    CHECK(quant_tensor_quantize_ref(&q, small, 4, QUANT_FP4, 64, 0) == QLAB_OK);
    CHECK((q.codes[0] >> 4) == 8); /* -1e-9 -> -0: sign bit, magnitude 0, as bitsandbytes' CUDA kernel */
    float fp4map[16], out4[4];
    memcpy(fp4map, quant_codebook(QUANT_FP4), sizeof fp4map);
    CHECK(same_bits(fp4map, bnb_fp4_map, sizeof fp4map));
    CHECK(quant_io_save(p, "w", &q) == QLAB_OK);
    safetensors_file ownf;
    CHECK(safetensors_open(&ownf, p) == QLAB_OK);
    const safetensors_tensor *m = safetensors_find(&ownf, "w.quant_map");
    CHECK(m && m->nbytes == sizeof bnb_fp4_map && same_bits(m->data, bnb_fp4_map, sizeof bnb_fp4_map));
    safetensors_close(&ownf);
    CHECK(quant_io_load(p, "w", &back) == QLAB_OK && back.code_map == NULL);
    CHECK(quant_tensor_dequantize(&back, out4) == QLAB_OK && out4[0] == 0.0f && !signbit(out4[0]));
    quant_tensor_free(&back);
    /* A map with -0.0 at code 8 (bitsandbytes' CUDA value; qlab's files before) loads and decodes so. */
    fp4map[8] = -0.0f;
    o[0] = (override){"w.quant_map", SAFETENSORS_F32, 16, fp4map};
    safetensors_file f;
    CHECK(safetensors_open(&f, p) == QLAB_OK);
    safetensors_writer *w = safetensors_writer_new();
    for (int i = 0; i < f.n_tensors; i++)
        if (strcmp(f.tensors[i].name, "w.quant_map"))
            safetensors_writer_add_copy(w, f.tensors[i].name, f.tensors[i].dtype, f.tensors[i].ndim,
                                        f.tensors[i].shape, f.tensors[i].data);
    safetensors_writer_add_copy(w, "w.quant_map", SAFETENSORS_F32, 1, &o[0].count, fp4map);
    const char *p3 = tmp_path("bnb_fp4.safetensors");
    CHECK(safetensors_writer_write(w, p3) == QLAB_OK);
    safetensors_writer_free(w);
    safetensors_close(&f);
    CHECK(quant_io_load(p3, "w", &back) == QLAB_OK && back.code_map != NULL);
    CHECK(quant_tensor_dequantize(&back, out4) == QLAB_OK);
    CHECK(out4[0] == 0.0f && signbit(out4[0]) && out4[1] == 1.0f && out4[3] == -1.0f);
    quant_tensor_free(&back);
    quant_tensor_free(&q);
    free(x);
    free(got);
    free(own);
}

int main(void) {
    test_tmp_dir_create("quant_io");
    test_bitsandbytes_maps();
    test_round_trips();
    test_bitsandbytes_layout();
    test_nested_offset_repr();
    test_quant_storage();
    test_malformed();
    test_tmp_dir_remove();
    return check_summary();
}
