/* Tests of the .npy reader/writer: round trips for every dtype, numpy's exact header bytes, fp32
 * conversion, and one hand-made malformed file per error the reader promises to catch. */
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "tests/check.h"
#include "core/base/common.h"
#include "core/base/half.h"
#include "core/formats/npy.h"
#include "tests/test_util.h"

/* Builds a .npy file from a header dict text (padded like numpy) and data bytes. */
static void make_npy(const char *path, int major, const char *dict, const void *data, size_t data_len) {
    unsigned char buf[4096];
    size_t prefix = major == 1 ? 10 : 12, n = strlen(dict);
    size_t total = (prefix + n + 1 + 63) / 64 * 64, hlen = total - prefix;
    memcpy(buf, "\x93NUMPY", 6);
    buf[6] = (unsigned char)major;
    buf[7] = 0;
    buf[8] = (unsigned char)(hlen & 0xff);
    buf[9] = (unsigned char)(hlen >> 8);
    if (major != 1) buf[10] = buf[11] = 0;
    memcpy(buf + prefix, dict, n);
    memset(buf + prefix + n, ' ', hlen - n - 1);
    buf[total - 1] = '\n';
    if (data_len) memcpy(buf + total, data, data_len);
    write_bytes(path, buf, total + data_len);
}

static void test_round_trips(void) {
    const char *dtypes[] = {"<f4", "<f2", "<f8", "<i4", "<i8", "|u1", "|i1", "<u2"};
    int64_t shapes[][8] = {{0}, {7}, {2, 3, 4}, {1, 2, 1, 2, 1, 2, 1, 3}, {0, 5}};
    int ndims[] = {0, 1, 3, 8, 2};
    unsigned char data[256];
    for (int i = 0; i < 256; i++)
        data[i] = (unsigned char)(i * 37 + 11);
    for (size_t d = 0; d < sizeof dtypes / sizeof dtypes[0]; d++)
        for (int s = 0; s < 5; s++) {
            const char *path = tmp_path("rt.npy");
            CHECKF(npy_write(path, dtypes[d], ndims[s], shapes[s], data) == QLAB_OK, "%s", qlab_last_error());
            npy_array a;
            qlab_status st = npy_read(path, &a);
            CHECKF(st == QLAB_OK, "%s %d: %s", dtypes[d], s, qlab_last_error());
            if (st != QLAB_OK) continue;
            int64_t count = 1;
            for (int i = 0; i < ndims[s]; i++)
                count *= shapes[s][i];
            CHECK(!strcmp(a.dtype, dtypes[d]));
            CHECK(a.ndim == ndims[s]);
            CHECK(a.count == count);
            CHECK(a.itemsize == npy_dtype_size(dtypes[d]));
            CHECK(memcmp(a.shape, shapes[s], sizeof(int64_t) * (size_t)ndims[s]) == 0);
            CHECK(memcmp(a.data, data, (size_t)count * a.itemsize) == 0);
            npy_free(&a);
        }
    CHECK(npy_dtype_size("<u1") == 1 && npy_dtype_size("<c8") == 0 && npy_dtype_size(">f4") == 0);
}

/* The bytes numpy.save writes for np.zeros((2, 3), np.float32) (header) and np.zeros(5, '<f2'). */
static void test_numpy_header_bytes(void) {
    char expect[128], got[256];
    const char *dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
    memcpy(expect, "\x93NUMPY\x01\x00\x76\x00", 10);
    memset(expect + 10, ' ', 118);
    memcpy(expect + 10, dict, strlen(dict));
    expect[127] = '\n';
    size_t len = 0;
    int64_t shape[2] = {2, 3};
    CHECK(npy_format_header("<f4", 2, shape, got, sizeof got, &len) == QLAB_OK);
    CHECK(len == 128);
    CHECK(memcmp(got, expect, 128) == 0);

    float zeros[6] = {0};
    const char *path = tmp_path("hdr.npy");
    CHECK(npy_write(path, "<f4", 2, shape, zeros) == QLAB_OK);
    char *file;
    size_t flen;
    CHECK(qlab_read_file(path, &file, &flen) == QLAB_OK);
    CHECK(flen == 128 + 24 && memcmp(file, expect, 128) == 0);
    free(file);

    /* 1-D shapes print as "(5,)"; numpy >= 1.24 adds 20 growth spaces before padding, still 128 total. */
    int64_t five = 5;
    CHECK(npy_format_header("<f2", 1, &five, got, sizeof got, &len) == QLAB_OK);
    CHECK(len == 128 && got[127] == '\n');
    CHECK(strncmp(got + 10, "{'descr': '<f2', 'fortran_order': False, 'shape': (5,), }", 57) == 0);
    /* A scalar: "()" and no growth padding: 10 + 55 + 1 -> 128. */
    CHECK(npy_format_header("<i8", 0, NULL, got, sizeof got, &len) == QLAB_OK);
    CHECK(len == 128 &&
          strncmp(got + 10, "{'descr': '<i8', 'fortran_order': False, 'shape': (), }   ", 58) == 0);
    /* When dict + growth space + '\n' already fill a multiple of 64, numpy still adds 64 spaces. */
    int64_t aligned[3] = {1, 1000000000000000000LL, 100000000000000000LL};
    CHECK(npy_format_header("<f4", 3, aligned, got, sizeof got, &len) == QLAB_OK);
    CHECK(len == 192 && got[8] == (char)182 && got[191] == '\n' && got[127] == ' ' && got[126] == ' ');
    /* |u1 keeps numpy's spelling even when asked for <u1. */
    CHECK(npy_format_header("<u1", 1, &five, got, sizeof got, &len) == QLAB_OK);
    CHECK(strncmp(got + 10, "{'descr': '|u1'", 15) == 0);
}

static void test_read_f32(void) {
    const char *path = tmp_path("f32.npy");
    int64_t n = 4;
    uint16_t h[4] = {f32_to_fp16(1.5f), f32_to_fp16(-2.0f), f32_to_fp16(0.0f), f32_to_fp16(65504.0f)};
    npy_array a;
    CHECK(npy_write(path, "<f2", 1, &n, h) == QLAB_OK);
    CHECK(npy_read_f32(path, 0, &a) == QLAB_OK);
    CHECK(!strcmp(a.dtype, "<f4") && a.itemsize == 4 && a.count == 4);
    const float *f = a.data;
    CHECK(f[0] == 1.5f && f[1] == -2.0f && f[2] == 0.0f && f[3] == 65504.0f); /* exact in fp16 */
    npy_free(&a);

    uint16_t b[4] = {f32_to_bf16(3.0f), f32_to_bf16(-0.5f), f32_to_bf16(1e30f), f32_to_bf16(0.1f)};
    CHECK(npy_write(path, "<u2", 1, &n, b) == QLAB_OK);
    CHECK(npy_read_f32(path, 0, &a) == QLAB_ERR_UNSUPPORTED); /* <u2 is bf16 only when declared */
    CHECK(strstr(qlab_last_error(), path) != NULL);
    CHECK(npy_read_f32(path, 1, &a) == QLAB_OK);
    f = a.data;
    CHECK(f[0] == 3.0f && f[1] == -0.5f && f[2] == bf16_to_f32(b[2]) && f[3] == bf16_to_f32(b[3]));
    npy_free(&a);

    double dd[4] = {1.0, -1e-3, 3.25, 1e300};
    CHECK(npy_write(path, "<f8", 1, &n, dd) == QLAB_OK);
    CHECK(npy_read_f32(path, 0, &a) == QLAB_OK);
    f = a.data;
    CHECK(f[0] == 1.0f && f[1] == (float)-1e-3 && f[2] == 3.25f && isinf(f[3]));
    npy_free(&a);

    int32_t ints[4] = {1, 2, 3, 4};
    CHECK(npy_write(path, "<i4", 1, &n, ints) == QLAB_OK);
    CHECK(npy_read_f32(path, 1, &a) == QLAB_ERR_UNSUPPORTED);
    CHECK(strstr(qlab_last_error(), path) && strstr(qlab_last_error(), "<i4"));
}

static void test_versions(void) {
    float v[3] = {1, 2, 3};
    const char *path = tmp_path("v2.npy");
    make_npy(path, 2, "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", v, sizeof v);
    npy_array a;
    CHECKF(npy_read(path, &a) == QLAB_OK, "%s", qlab_last_error());
    CHECK(a.count == 3 && memcmp(a.data, v, 12) == 0);
    npy_free(&a);
    make_npy(path, 3, "{\"shape\": (3,), \"fortran_order\": False, \"descr\": \"<f4\"}", v, sizeof v);
    CHECKF(npy_read(path, &a) == QLAB_OK, "%s", qlab_last_error());
    CHECK(a.count == 3 && a.ndim == 1);
    npy_free(&a);
    /* Python 2 numpy wrote longs. */
    make_npy(path, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1L, 3L), }", v, sizeof v);
    CHECKF(npy_read(path, &a) == QLAB_OK, "%s", qlab_last_error());
    CHECK(a.ndim == 2 && a.shape[0] == 1 && a.shape[1] == 3);
    npy_free(&a);
}

/* Each malformed file must fail with the given status and a message naming the file and the problem. */
static void expect_fail(const char *path, qlab_status want, const char *keyword) {
    npy_array a;
    memset(&a, 0x5a, sizeof a);
    qlab_status st = npy_read(path, &a);
    CHECKF(st == want, "%s: got status %d (%s), want %d", keyword, (int)st, qlab_last_error(), (int)want);
    CHECKF(strstr(qlab_last_error(), path) != NULL, "message lacks the file name: %s", qlab_last_error());
    CHECKF(strstr(qlab_last_error(), keyword) != NULL, "message lacks '%s': %s", keyword, qlab_last_error());
    CHECK(strchr(qlab_last_error(), '\n') == NULL);
    CHECK(a.data == NULL);
}

static void test_malformed(void) {
    float v[16] = {0}; /* large enough for every data length below */
    const char *p = tmp_path("bad.npy");
    write_bytes(p, "PK\x03\x04 this is a zip", strlen("PK\x03\x04 this is a zip"));
    expect_fail(p, QLAB_ERR_FORMAT, "bad magic");
    write_bytes(p, "", 0);
    expect_fail(p, QLAB_ERR_FORMAT, "bad magic");
    write_bytes(p, "\x93NUMPY\x01\x00\x76", 9);
    expect_fail(p, QLAB_ERR_FORMAT, "truncated header");
    write_bytes(p, "\x93NUMPY\x01\x00\x76\x00{'descr'", 17);
    expect_fail(p, QLAB_ERR_FORMAT, "beyond the file");
    write_bytes(p, "\x93NUMPY\x04\x00\x10\x00{}             \n", 26);
    expect_fail(p, QLAB_ERR_UNSUPPORTED, "version 4.0");
    make_npy(p, 1, "{'descr': '<c8', 'fortran_order': False, 'shape': (2, 3), }", v, 48);
    expect_fail(p, QLAB_ERR_UNSUPPORTED, "unsupported dtype '<c8'");
    make_npy(p, 1, "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }", v, 24);
    expect_fail(p, QLAB_ERR_UNSUPPORTED, "big-endian");
    make_npy(p, 1, "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", v, 8);
    expect_fail(p, QLAB_ERR_UNSUPPORTED, "structured");
    make_npy(p, 1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", v, 24);
    expect_fail(p, QLAB_ERR_UNSUPPORTED, "fortran_order");
    make_npy(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }", v, 24);
    expect_fail(p, QLAB_ERR_FORMAT, "overflow");
    make_npy(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }", v, 24);
    expect_fail(p, QLAB_ERR_FORMAT, "64 bits");
    make_npy(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", v, 20);
    expect_fail(p, QLAB_ERR_FORMAT, "truncated");
    make_npy(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }", v, 20);
    expect_fail(p, QLAB_ERR_FORMAT, "trailing bytes");
    make_npy(p, 1, "{'descr': '<f4', 'shape': (2, 3), }", v, 24);
    expect_fail(p, QLAB_ERR_FORMAT, "missing 'fortran_order'");
    make_npy(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'extra': 1, }", v, 24);
    expect_fail(p, QLAB_ERR_FORMAT, "unexpected key 'extra'");
    make_npy(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3) 'x'}", v, 24);
    expect_fail(p, QLAB_ERR_FORMAT, "malformed header");
    make_npy(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, -3), }", v, 24);
    expect_fail(p, QLAB_ERR_FORMAT, "non-negative");
    make_npy(p, 1, "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2, 3), }", v, 24);
    expect_fail(p, QLAB_ERR_FORMAT, "True or False");
    make_npy(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), } junk", v, 24);
    expect_fail(p, QLAB_ERR_FORMAT, "text after the dict");
    make_npy(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,1), }", v, 4);
    expect_fail(p, QLAB_ERR_UNSUPPORTED, "more than 8 dimensions");
    make_npy(p, 1, "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", v, 24);
    expect_fail(p, QLAB_ERR_FORMAT, "repeated");
    expect_fail(tmp_path("does_not_exist.npy"), QLAB_ERR_IO, "cannot open");

    /* Writing: bad dtype and an unwritable folder. */
    int64_t two = 2;
    CHECK(npy_write(p, "<c8", 1, &two, v) == QLAB_ERR_ARG);
    CHECK(strstr(qlab_last_error(), p) != NULL);
    CHECK(npy_write("/nonexistent/qlab/x.npy", "<f4", 1, &two, v) == QLAB_ERR_IO);
    CHECK(strstr(qlab_last_error(), "/nonexistent/qlab/x.npy") != NULL);
}

int main(void) {
    test_tmp_dir_create("npy");
    test_round_trips();
    test_numpy_header_bytes();
    test_read_f32();
    test_versions();
    test_malformed();
    test_tmp_dir_remove();
    return check_summary();
}
