/* Tests of `qlab quant` / `qlab dequant` as a user runs them: good inputs round-trip bit-exactly against
 * the library, and every bad input gives the documented exit code (2 usage, 1 data) with exactly one line
 * on stderr naming the flag or file. Runs $QLAB_BUILD/bin/qlab (default build/bin/qlab); SKIPs without it. */
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/check.h"
#include "core/base/common.h"
#include "core/base/half.h"
#include "core/formats/npy.h"
#include "core/quant/quant.h"
#include "core/quant/quant_io.h"
#include "core/base/rng.h"
#include "tests/test_util.h"

static char qlab_bin[1024];
static char out_text[65536], err_text[65536];

static void slurp(const char *path, char *buf, size_t cap) {
    buf[0] = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return;
    size_t n = fread(buf, 1, cap - 1, f);
    buf[n] = 0;
    fclose(f);
}

/* Runs qlab with the given arguments (NULL-terminated); returns the exit code (128 + signal on a crash)
 * and leaves stdout/stderr in out_text/err_text. */
static int run(const char *first, ...) {
    const char *argv[32];
    int argc = 0;
    argv[argc++] = qlab_bin;
    va_list ap;
    va_start(ap, first);
    for (const char *a = first; a && argc < 31; a = va_arg(ap, const char *))
        argv[argc++] = a;
    va_end(ap);
    argv[argc] = NULL;
    const char *out_path = tmp_path("stdout.txt"), *err_path = tmp_path("stderr.txt");
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        int o = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600),
            e = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (o < 0 || e < 0) _exit(126);
        dup2(o, 1);
        dup2(e, 2);
        execv(qlab_bin, (char *const *)argv);
        _exit(127);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) < 0) return -1;
    slurp(out_path, out_text, sizeof out_text);
    slurp(err_path, err_text, sizeof err_text);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return WEXITSTATUS(status);
}

static int count_lines(const char *s) {
    int n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

/* A failing run: exit code, one stderr line ending in '\n', naming `mention`. */
static void expect_error(int rc, int want, const char *mention, const char *what) {
    CHECKF(rc == want, "%s: exit %d, want %d (stderr: %s)", what, rc, want, err_text);
    size_t len = strlen(err_text);
    CHECKF(count_lines(err_text) == 1 && len > 0 && err_text[len - 1] == '\n',
           "%s: stderr is not one line: '%s'", what, err_text);
    CHECKF(strstr(err_text, mention) != NULL, "%s: stderr lacks '%s': %s", what, mention, err_text);
}

enum { ROWS = 6, COLS = 70, N = ROWS * COLS };
static float x[N];

static void test_round_trips(void) {
    const char *in = tmp_path("in.npy");
    int64_t shape[2] = {ROWS, COLS};
    CHECK(npy_write(in, "<f4", 2, shape, x) == QLAB_OK);
    static float expect[N];
    for (int d = 0; d < QUANT_DTYPE_COUNT; d++) {
        quant_dtype dt = (quant_dtype)d;
        for (int dq = 0; dq <= quant_dtype_has_fp32_absmax(dt); dq++) {
            char what[64];
            snprintf(what, sizeof what, "%s dq=%d", quant_dtype_name(dt), dq);
            const char *st = tmp_path("q.safetensors"), *back = tmp_path("back.npy");
            int rc = dq ? run("quant", "--dtype", quant_dtype_name(dt), "--double-quant", in, st, NULL)
                        : run("quant", "--dtype", quant_dtype_name(dt), in, st, NULL);
            CHECKF(rc == 0 && err_text[0] == 0, "%s: quant exit %d: %s", what, rc, err_text);
            rc = run("dequant", st, back, NULL);
            CHECKF(rc == 0 && err_text[0] == 0, "%s: dequant exit %d: %s", what, rc, err_text);
            /* The CLI must give exactly what the library gives for the same input. */
            quant_tensor q;
            CHECK(quant_tensor_quantize(&q, x, N, dt, quant_default_blocksize(dt), dq) == QLAB_OK);
            quant_tensor_dequantize(&q, expect);
            quant_tensor_free(&q);
            npy_array a;
            if (npy_read(back, &a) != QLAB_OK) {
                CHECKF(0, "%s: %s", what, qlab_last_error());
                continue;
            }
            CHECK(!strcmp(a.dtype, "<f4") && a.ndim == 2 && a.shape[0] == ROWS && a.shape[1] == COLS);
            CHECKF(a.count == N && memcmp(a.data, expect, sizeof expect) == 0, "%s: values differ", what);
            npy_free(&a);
        }
    }
    /* --bf16, --name, --blocksize=, --stats, an fp16 input and a 3-D shape. */
    int64_t shape3[3] = {2, 3, 70};
    uint16_t h[N];
    for (int i = 0; i < N; i++)
        h[i] = (uint16_t)(0x3c00 + (i % 64) * 3); /* fp16 values in [1, 1.2) */
    const char *in16 = tmp_path("in16.npy"), *st = tmp_path("named.safetensors"),
               *back = tmp_path("back16.npy");
    CHECK(npy_write(in16, "<f2", 3, shape3, h) == QLAB_OK);
    int rc = run("quant", "--blocksize=128", "--name", "layer.weight", "--stats", in16, st, NULL);
    CHECKF(rc == 0, "quant fp16: %d %s", rc, err_text);
    CHECK(strstr(out_text, "mse") && strstr(out_text, "max_abs_err") && strstr(out_text, "sqnr_db") &&
          strstr(out_text, "bits_per_param") && strstr(out_text, "storage_bytes"));
    quant_tensor q;
    CHECKF(quant_io_load(st, "layer.weight", &q) == QLAB_OK, "%s", qlab_last_error());
    CHECK(q.blocksize == 128 && q.ndim == 3 && q.shape[2] == 70);
    quant_tensor_free(&q);
    rc = run("dequant", "--bf16", "--name", "layer.weight", st, back, NULL);
    CHECKF(rc == 0, "dequant --bf16: %d %s", rc, err_text);
    npy_array a;
    CHECK(npy_read(back, &a) == QLAB_OK && !strcmp(a.dtype, "<u2") && a.ndim == 3 && a.shape[1] == 3);
    npy_free(&a);
    rc = run("dequant", "--name", "other.weight", st, back, NULL);
    expect_error(rc, 1, "other.weight", "dequant of a missing tensor");

    /* The input's dtype is recorded (float16 here) and is the default output; each --out-dtype is the
     * fp32 dequantization rounded to nearest even (values chosen so that ties and subnormals occur). */
    CHECKF(quant_io_load(st, "layer.weight", &q) == QLAB_OK && q.orig_dtype == QUANT_ORIG_F16, "%s",
           qlab_last_error());
    static float f32[N];
    CHECK(quant_tensor_dequantize(&q, f32) == QLAB_OK);
    quant_tensor_free(&q);
    const char *kinds[] = {NULL, "fp32", "fp16", "bf16"}, *descr[] = {"<f2", "<f4", "<f2", "<u2"};
    for (int k = 0; k < 4; k++) {
        rc = kinds[k] ? run("dequant", "--out-dtype", kinds[k], "--name", "layer.weight", st, back, NULL)
                      : run("dequant", "--name", "layer.weight", st, back, NULL);
        CHECKF(rc == 0, "dequant --out-dtype %s: %d %s", kinds[k] ? kinds[k] : "(default)", rc, err_text);
        if (npy_read(back, &a) != QLAB_OK) {
            CHECKF(0, "%s", qlab_last_error());
            continue;
        }
        CHECKF(!strcmp(a.dtype, descr[k]), "--out-dtype %s wrote %s", kinds[k] ? kinds[k] : "(default)",
               a.dtype);
        int same = a.count == N;
        for (int i = 0; same && i < N; i++) {
            if (a.itemsize == 4)
                same = memcmp((const float *)a.data + i, &f32[i], 4) == 0;
            else
                same = ((const uint16_t *)a.data)[i] ==
                       (!strcmp(descr[k], "<f2") ? f32_to_fp16(f32[i]) : f32_to_bf16(f32[i]));
        }
        CHECKF(same, "--out-dtype %s: values are not the rounded fp32 dequantization",
               kinds[k] ? kinds[k] : "(default)");
        npy_free(&a);
    }
    /* fp16 rounding at the edges: a half-way value rounds to even, overflow to inf, a subnormal. */
    CHECK(f32_to_fp16(1.0f + 0x1p-11f) == 0x3c00 && f32_to_fp16(1.0f + 3 * 0x1p-11f) == 0x3c02);
    CHECK(f32_to_fp16(65520.0f) == 0x7c00 && f32_to_fp16(65519.0f) == 0x7bff &&
          f32_to_fp16(0x1p-24f) == 0x0001);
    CHECK(f32_to_bf16(1.0f + 0x1p-8f) == 0x3f80 && f32_to_bf16(1.0f + 3 * 0x1p-8f) == 0x3f82);
    rc = run("dequant", "--out-dtype", "fp8", st, back, NULL);
    expect_error(rc, 2, "--out-dtype", "an unknown --out-dtype");

    rc = run("quant", "--help", NULL);
    CHECK(rc == 0);
    const char *opts[] = {"--dtype", "--blocksize",  "--double-quant", "--stats",
                          "--name",  "--input-bf16", "--help"};
    for (int i = 0; i < 7; i++)
        CHECKF(strstr(out_text, opts[i]) != NULL, "quant --help lacks %s", opts[i]);
    rc = run("dequant", "--help", NULL);
    CHECK(rc == 0 && strstr(out_text, "--bf16") && strstr(out_text, "--name") && strstr(out_text, "--help"));
}

static void test_errors(void) {
    const char *in = tmp_path("in.npy"), *out = tmp_path("err.safetensors");
    int64_t shape[2] = {ROWS, COLS};
    CHECK(npy_write(in, "<f4", 2, shape, x) == QLAB_OK);

    expect_error(run("quant", "--bogus", in, out, NULL), 2, "--bogus", "unknown flag");
    expect_error(run("quant", in, out, "--dtype", NULL), 2, "--dtype", "missing value");
    expect_error(run("quant", "--dtype", "nf5", in, out, NULL), 2, "nf5", "unknown dtype");
    expect_error(run("quant", "--blocksize", "8192", in, out, NULL), 2, "--blocksize",
                 "block size too large");
    expect_error(run("quant", "--blocksize", "48", in, out, NULL), 2, "--blocksize",
                 "block size not a power of 2");
    expect_error(run("quant", "--blocksize", "sixty", in, out, NULL), 2, "--blocksize",
                 "block size not a number");
    expect_error(run("quant", "--dtype", "nvfp4", "--blocksize", "32", in, out, NULL), 2, "nvfp4",
                 "nvfp4 block 32");
    expect_error(run("quant", "--dtype", "mxfp4", "--double-quant", in, out, NULL), 2, "--double-quant",
                 "dq on mxfp4");
    expect_error(run("quant", in, NULL), 2, "OUT.safetensors", "one file argument");
    expect_error(run("quant", in, out, "extra", NULL), 2, "3 file arguments", "three file arguments");
    expect_error(run("dequant", "--bogus", out, in, NULL), 2, "--bogus", "dequant unknown flag");
    expect_error(run("dequant", "--name", NULL), 2, "--name", "dequant missing value");
    expect_error(run("dequant", NULL), 2, "IN.safetensors", "dequant no files");

    /* Data errors name the file. */
    const char *ints = tmp_path("ints.npy");
    int32_t iv[4] = {1, 2, 3, 4};
    int64_t four = 4;
    CHECK(npy_write(ints, "<i4", 1, &four, iv) == QLAB_OK);
    expect_error(run("quant", ints, out, NULL), 1, ints, "int32 input");
    const char *junk = tmp_path("junk.npy");
    write_bytes(junk, "\x93NUMPY\x01\x00\xff\x00{'descr'", 17);
    expect_error(run("quant", junk, out, NULL), 1, junk, "truncated npy");
    write_bytes(junk, "hello world", 11);
    expect_error(run("quant", junk, out, NULL), 1, junk, "not an npy");
    expect_error(run("quant", tmp_path("absent.npy"), out, NULL), 1, "absent.npy", "missing input");
    float nan_data[4] = {1, NAN, 2, 3};
    const char *nan_path = tmp_path("nan.npy");
    CHECK(npy_write(nan_path, "<f4", 1, &four, nan_data) == QLAB_OK);
    expect_error(run("quant", nan_path, out, NULL), 1, nan_path, "NaN input");
    expect_error(run("quant", in, "/nonexistent/qlab/out.safetensors", NULL), 1,
                 "/nonexistent/qlab/out.safetensors", "unwritable output");
    int64_t shape5[5] = {1, 1, 1, 2, 2};
    CHECK(npy_write(junk, "<f4", 5, shape5, x) == QLAB_OK);
    expect_error(run("quant", junk, out, NULL), 1, junk, "5-D input");

    const char *bad_st = tmp_path("bad.safetensors");
    write_bytes(bad_st, "\x20\0\0\0\0\0\0\0{\"w\":{\"dtype\":\"F32\"}}          ", 40);
    expect_error(run("dequant", bad_st, tmp_path("o.npy"), NULL), 1, bad_st, "malformed safetensors");
    expect_error(run("dequant", in, tmp_path("o.npy"), NULL), 1, in, "npy given to dequant");
    /* A valid safetensors file holding no quantized tensor. */
    write_bytes(bad_st, "\x08\0\0\0\0\0\0\0{}      ", 16);
    expect_error(run("dequant", bad_st, tmp_path("o.npy"), NULL), 1, bad_st, "no quantized tensor");
    /* A file with two quantized tensors needs --name. */
    quant_tensor q;
    CHECK(quant_tensor_quantize(&q, x, N, QUANT_NF4, 64, 0) == QLAB_OK);
    safetensors_writer *w = safetensors_writer_new();
    CHECK(quant_io_add(w, "a", &q) == QLAB_OK && quant_io_add(w, "b", &q) == QLAB_OK);
    CHECK(safetensors_writer_write(w, bad_st) == QLAB_OK);
    safetensors_writer_free(w);
    quant_tensor_free(&q);
    expect_error(run("dequant", bad_st, tmp_path("o.npy"), NULL), 1, "--name", "two tensors");
    CHECK(run("dequant", "--name", "b", bad_st, tmp_path("o.npy"), NULL) == 0);
}

int main(void) {
    const char *build = getenv("QLAB_BUILD");
    snprintf(qlab_bin, sizeof qlab_bin, "%s/bin/qlab", build && build[0] ? build : "build");
    if (access(qlab_bin, X_OK) != 0) {
        SKIP("%s not found (build it with make, or set QLAB_BUILD)", qlab_bin);
        return check_summary();
    }
    test_tmp_dir_create("cli_quant");
    rng_state r;
    rng_seed(&r, 7);
    for (int i = 0; i < N; i++)
        x[i] = (float)rng_normal(&r) * 0.02f;
    test_round_trips();
    test_errors();
    test_tmp_dir_remove();
    return check_summary();
}
