/* bf16 GEMM (core/model/gemm_bf16.h): the rounding against f32_to_bf16; the scalar reference against an
 * independent in-test implementation of the documented order (bit-exact) and against double precision
 * (the fp32 summation bound); every path this CPU has against the reference (AVX-512 BF16 and the
 * AVX-512 FMA kernel bit-exact, the portable OpenBLAS path within the bound, AMX within the bound when
 * present, else its kernel on emulated tiles bit-exact with the SDM's order); tails, transposes,
 * accumulation, subnormals, 4-bit weights dequantized to bf16 panels, and independence of the thread count.
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "tests/check.h"
#include "tests/bf16_ref.h"
#include "core/base/half.h"
#include "core/base/rng.h"
#include "core/model/gemm_bf16.h"
#include "core/model/gemm_bf16_kernels.h"

static float round_bf16(float x) {
    return bf16_to_f32(f32_to_bf16(x));
}

static void test_rounding(void) {
    enum { n = 1000 };
    float in[n];
    uint16_t out[n];
    rng_state r;
    rng_seed(&r, 3);
    for (int i = 0; i < n; i++)
        in[i] = (float)(rng_normal(&r) * pow(10.0, (double)(i % 40) - 20));
    /* ties both ways, subnormals, infinities, NaNs, the largest finite value (rounds to inf) */
    uint32_t specials[] = {0x3f808000u, 0x3f818000u, 0x00000001u, 0x80400000u, 0x7f800000u, 0xff800000u,
                           0x7fc00001u, 0x7f800001u, 0x7f7fffffu, 0x00000000u, 0x80000000u};
    for (size_t i = 0; i < sizeof specials / sizeof *specials; i++)
        memcpy(&in[i * 7], &specials[i], 4);
    for (int len = 0; len <= n; len += (len < 40 ? 1 : 97)) {
        memset(out, 0xab, sizeof out);
        bf16_round_array(out, in, (size_t)len);
        int bad = 0;
        for (int i = 0; i < len; i++)
            bad += out[i] != f32_to_bf16(in[i]);
        for (int i = len; i < n; i++)
            bad += out[i] != 0xabab;
        CHECKF(bad == 0, "len %d: %d elements differ from f32_to_bf16 or were overwritten", len, bad);
    }
    /* a norm's output rounded: bf16(x * r * w), zero to the width, nothing written after it */
    float w[n];
    for (int i = 0; i < n; i++)
        w[i] = (float)(0.5 + 0.01 * (i % 50));
    for (int len = 0; len <= 300; len += (len < 40 ? 1 : 37)) {
        int width = (len + 31) / 32 * 32;
        memset(out, 0xab, sizeof out);
        bf16_scale_round(out, in, 0.37f, w, len, width);
        int bad = 0;
        for (int i = 0; i < width; i++)
            bad += out[i] != (i < len ? f32_to_bf16(in[i] * 0.37f * w[i]) : 0);
        for (int i = width; i < n; i++)
            bad += out[i] != 0xabab;
        CHECKF(bad == 0, "bf16_scale_round len %d: %d elements differ", len, bad);
    }
}

/* The documented order (tests/bf16_ref.h) on unpacked operands, including the zero padding of K to a
 * multiple of 32, which is visible: it turns a flushed -0 sum into +0. */

typedef struct {
    int M, N, K, ta, tb;
    float *A, *B;
    int lda, ldb;
} problem;

static float elem_a(const problem *p, int m, int k) {
    return p->ta ? p->A[(size_t)k * p->lda + m] : p->A[(size_t)m * p->lda + k];
}
static float elem_b(const problem *p, int k, int n) {
    return p->tb ? p->B[(size_t)n * p->ldb + k] : p->B[(size_t)k * p->ldb + n];
}

/* even_first: the Intel SDM's TDPBF16PS order (even element of each pair first), which the emulated AMX
 * tiles follow (core/model/gemm_bf16_amx_emu_avx512.c); else the reference's (odd first). */
static void def_gemm_order(const problem *p, int accumulate, float *C, int ldc, int even_first) {
    for (int m = 0; m < p->M; m++)
        for (int n = 0; n < p->N; n++) {
            float acc = 0;
            int Kp = (p->K + 31) / 32 * 32;
            for (int k = 0; k < Kp; k += 2) {
                float a1 = k + 1 < p->K ? elem_a(p, m, k + 1) : 0,
                      b1 = k + 1 < p->K ? elem_b(p, k + 1, n) : 0;
                float a0 = k < p->K ? elem_a(p, m, k) : 0, b0 = k < p->K ? elem_b(p, k, n) : 0;
                if (even_first) {
                    acc = def_step(acc, a0, b0);
                    acc = def_step(acc, a1, b1);
                } else {
                    acc = def_step(acc, a1, b1);
                    acc = def_step(acc, a0, b0);
                }
            }
            float *c = C + (size_t)m * ldc + n;
            *c = accumulate ? *c + acc : acc;
        }
}

static void def_gemm(const problem *p, int accumulate, float *C, int ldc) {
    def_gemm_order(p, accumulate, C, ldc, 0);
}

static void make_problem(problem *p, int M, int N, int K, int ta, int tb, rng_state *r, double scale) {
    p->M = M, p->N = N, p->K = K, p->ta = ta, p->tb = tb;
    p->lda = (ta ? M : K) + 3;
    p->ldb = (tb ? K : N) + 5;
    size_t na = (size_t)(ta ? K : M) * p->lda, nb = (size_t)(tb ? N : K) * p->ldb;
    p->A = malloc(sizeof(float) * na);
    p->B = malloc(sizeof(float) * nb);
    for (size_t i = 0; i < na; i++)
        p->A[i] = (float)(rng_normal(r) * scale);
    for (size_t i = 0; i < nb; i++)
        p->B[i] = (float)(rng_normal(r) * scale);
}

static void free_problem(problem *p) {
    free(p->A);
    free(p->B);
}

/* max over elements of |x - y| / (2 K' 2^-24 sum |a b| + tiny), with K' = K rounded up to 32; <= 1 passes. */
static double bound_ratio(const problem *p, const float *X, const float *Y, int ldc, const float *C0) {
    double worst = 0;
    int Kp = (p->K + 31) / 32 * 32;
    for (int m = 0; m < p->M; m++)
        for (int n = 0; n < p->N; n++) {
            double s = 0;
            for (int k = 0; k < p->K; k++)
                s += fabs((double)round_bf16(elem_a(p, m, k)) * round_bf16(elem_b(p, k, n)));
            if (C0) s += fabs(C0[(size_t)m * ldc + n]);
            double tol = 2.0 * (Kp + 1) * 0x1p-24 * s + 1e-37;
            double d = fabs((double)X[(size_t)m * ldc + n] - Y[(size_t)m * ldc + n]) / tol;
            if (!(d <= worst)) worst = d; /* NaN propagates as a failure */
        }
    return worst;
}

/* Exact double result of the bf16-rounded inputs. */
static void exact_gemm(const problem *p, int accumulate, float *C, int ldc) {
    for (int m = 0; m < p->M; m++)
        for (int n = 0; n < p->N; n++) {
            double s = 0;
            for (int k = 0; k < p->K; k++)
                s += (double)round_bf16(elem_a(p, m, k)) * round_bf16(elem_b(p, k, n));
            float *c = C + (size_t)m * ldc + n;
            *c = (float)(accumulate ? *c + s : s);
        }
}

static qlab_status run(const char *path, const problem *p, int accumulate, float *C, int ldc) {
    if (bf16_force_path(path) != QLAB_OK) return QLAB_ERR_UNSUPPORTED;
    qlab_status st =
        bf16_gemm(p->ta, p->tb, p->M, p->N, p->K, p->A, p->lda, p->B, p->ldb, accumulate, C, ldc);
    bf16_force_path("auto");
    return st;
}

/* The paths that keep the reference's order (the others are held to the summation bound). */
static int bit_exact_path(bf16_path p) {
    return p == BF16_PATH_AVX512BF16 || p == BF16_PATH_AVX512FMA;
}

/* Whether the amx path runs on emulated tiles here (no AMX): then its order is the SDM's, known exactly. */
static int amx_emulated;

static void test_shape(int M, int N, int K, rng_state *r, double scale) {
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
            for (int acc = 0; acc < 2; acc++) {
                problem p;
                make_problem(&p, M, N, K, ta, tb, r, scale);
                int ldc = N + 2;
                size_t nc = (size_t)M * ldc;
                float *C0 = malloc(sizeof(float) * nc), *ref = malloc(sizeof(float) * nc);
                float *def = malloc(sizeof(float) * nc), *got = malloc(sizeof(float) * nc);
                for (size_t i = 0; i < nc; i++)
                    C0[i] = (float)rng_normal(r);
                memcpy(ref, C0, sizeof(float) * nc);
                memcpy(def, C0, sizeof(float) * nc);
                CHECK(run("ref", &p, acc, ref, ldc) == QLAB_OK);
                def_gemm(&p, acc, def, ldc);
                CHECKF(memcmp(ref, def, sizeof(float) * nc) == 0,
                       "ref path vs the documented order: %dx%dx%d ta %d tb %d acc %d", M, N, K, ta, tb, acc);
                memcpy(got, C0, sizeof(float) * nc);
                exact_gemm(&p, acc, got, ldc);
                double rr = bound_ratio(&p, ref, got, ldc, acc ? C0 : NULL);
                CHECKF(rr <= 1, "ref vs exact: %.3g of the bound (%dx%dx%d)", rr, M, N, K);

                for (int path = BF16_PATH_BLAS; path < BF16_PATH_COUNT; path++) {
                    if (!bf16_path_available((bf16_path)path)) continue;
                    const char *name = bf16_path_name((bf16_path)path);
                    memcpy(got, C0, sizeof(float) * nc);
                    CHECK(run(name, &p, acc, got, ldc) == QLAB_OK);
                    if (!bit_exact_path((bf16_path)path)) {
                        double q = bound_ratio(&p, got, ref, ldc, acc ? C0 : NULL);
                        CHECKF(q <= 1, "%s vs ref: %.3g of the bound (%dx%dx%d ta %d tb %d acc %d)", name, q,
                               M, N, K, ta, tb, acc);
                        if (!(path == BF16_PATH_AMX && amx_emulated)) continue;
                    }
                    /* emulated AMX: bit-exact with the SDM's order, which checks every tile's placement */
                    const float *want = ref;
                    if (path == BF16_PATH_AMX) {
                        memcpy(def, C0, sizeof(float) * nc);
                        def_gemm_order(&p, acc, def, ldc, 1);
                        want = def;
                    }
                    int bad = 0;
                    for (int m = 0; m < M; m++)
                        bad += memcmp(got + (size_t)m * ldc, want + (size_t)m * ldc, sizeof(float) * N) != 0;
                    /* the padding columns of C must be left alone */
                    for (int m = 0; m < M; m++)
                        for (int n = N; n < ldc; n++)
                            bad += got[(size_t)m * ldc + n] != C0[(size_t)m * ldc + n];
                    CHECKF(bad == 0, "%s vs ref not bit-exact: %dx%dx%d ta %d tb %d acc %d (%d rows)", name,
                           M, N, K, ta, tb, acc, bad);
                }
                free(C0), free(ref), free(def), free(got);
                free_problem(&p);
            }
}

/* Products and sums in the subnormal range: the reference's DAZ/FTZ must be what the hardware does. */
static void test_subnormal(void) {
    rng_state r;
    rng_seed(&r, 11);
    test_shape(9, 20, 40, &r, 1e-19); /* products ~1e-38: around FLT_MIN */
    test_shape(5, 17, 33, &r, 3e-20);
}

/* NaNs (quiet, signalling, negative; with payloads), infinities, zeros and products that overflow: the
 * bit-exact paths give the reference's bits, NaN payloads included. */
static void test_special(void) {
    enum { M = 13, N = 37, K = 70 };
    static float A[M * K], B[K * N], C0[M * N], C1[M * N];
    for (int i = 0; i < M * K; i++)
        A[i] = (float)((i * 7) % 11) - 5.0f;
    for (int i = 0; i < K * N; i++)
        B[i] = (float)((i * 5) % 13) - 6.0f;
    const uint32_t qnan = 0x7fc12345u, snan = 0x7f812345u, nneg = 0xffc00001u;
    memcpy(&A[3], &qnan, 4), memcpy(&A[K + 5], &qnan, 4), memcpy(&B[4 * N + 2], &snan, 4);
    memcpy(&A[2 * K + 9], &nneg, 4), memcpy(&B[9 * N + 7], &nneg, 4);
    A[5 * K + 1] = INFINITY, B[1 * N + 3] = -INFINITY, B[2 * N + 8] = INFINITY, A[6 * K + 2] = 0.0f;
    B[10 * N + 11] = 3e38f, A[7 * K + 10] = 3e38f, A[7 * K + 11] = -3e38f, B[11 * N + 11] = 3e38f;
    CHECK(bf16_force_path("ref") == QLAB_OK);
    CHECK(bf16_gemm(0, 0, M, N, K, A, K, B, N, 0, C0, N) == QLAB_OK);
    int nans = 0, infs = 0;
    for (int i = 0; i < M * N; i++)
        nans += isnan(C0[i]) != 0, infs += isinf(C0[i]) != 0;
    CHECKF(nans > 50 && infs > 0, "special values: %d NaN and %d infinite outputs", nans, infs);
    for (int path = BF16_PATH_BLAS; path < BF16_PATH_COUNT; path++) {
        if (!bit_exact_path((bf16_path)path) || !bf16_path_available((bf16_path)path)) continue;
        CHECK(bf16_force_path(bf16_path_name((bf16_path)path)) == QLAB_OK);
        CHECK(bf16_gemm(0, 0, M, N, K, A, K, B, N, 0, C1, N) == QLAB_OK);
        CHECKF(memcmp(C0, C1, sizeof C0) == 0, "%s vs ref with NaN/Inf/overflow inputs: not bit-exact",
               bf16_path_name((bf16_path)path));
    }
    bf16_force_path("auto");
}

static void test_quantized(void) {
    rng_state r;
    rng_seed(&r, 5);
    int M = 23, N = 80, K = 192; /* weight (N,K) for trans_b, (K,N) otherwise: 64-element blocks */
    for (int tb = 0; tb < 2; tb++)
        for (int dq = 0; dq < 2; dq++) {
            int rows = tb ? N : K, cols = tb ? K : N;
            float *w = malloc(sizeof(float) * rows * cols), *wd = malloc(sizeof(float) * rows * cols);
            float *A = malloc(sizeof(float) * M * K);
            for (int i = 0; i < rows * cols; i++)
                w[i] = (float)rng_normal(&r);
            for (int i = 0; i < M * K; i++)
                A[i] = (float)rng_normal(&r);
            quant_tensor q;
            CHECK(quant_tensor_quantize(&q, w, (int64_t)rows * cols, QUANT_NF4, 64, dq) == QLAB_OK);
            quant_tensor_dequantize(&q, wd);
            float *c1 = calloc((size_t)M * N, sizeof(float)), *c2 = calloc((size_t)M * N, sizeof(float));
            for (int path = 0; path < BF16_PATH_COUNT; path++) {
                if (!bf16_path_available((bf16_path)path)) continue;
                bf16_force_path(bf16_path_name((bf16_path)path));
                CHECK(bf16_gemm_quant(0, tb, M, N, K, A, K, &q, 0, c1, N) == QLAB_OK);
                CHECK(bf16_gemm(0, tb, M, N, K, A, K, wd, cols, 0, c2, N) == QLAB_OK);
                bf16_force_path("auto");
                CHECKF(memcmp(c1, c2, sizeof(float) * M * N) == 0,
                       "%s: 4-bit weight dequantized to bf16 panels differs from the fp32 dequantized weight "
                       "(tb %d)",
                       bf16_path_name((bf16_path)path), tb);
            }
            CHECK(bf16_gemm_quant(0, tb, M, N + 1, K, A, K, &q, 0, c1, N) == QLAB_ERR_ARG);
            quant_tensor_free(&q);
            free(w), free(wd), free(A), free(c1), free(c2);
        }
}

/* Packed weights (bf16_pack_weight + bf16_gemm_packed) give bf16_gemm's / bf16_gemm_quant's bits (trans_b)
 * on every path: fp32 and NF4+DQ weights, N across several chunks (and not a multiple of the panel
 * pair), K not a multiple of 32, stored and accumulated; bad arguments are refused. */
static void test_packed(void) {
    rng_state r;
    rng_seed(&r, 11);
    int shapes[][3] = {{1, 1, 1},       {23, 80, 192}, {37, 1001, 70},
                       {64, 3000, 576}, {9, 33, 1536}, {100, 256, 96}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
        float *w = malloc(sizeof(float) * N * K), *A = malloc(sizeof(float) * M * K);
        float *c0 = malloc(sizeof(float) * M * N), *c1 = malloc(sizeof(float) * M * N),
              *c2 = malloc(sizeof(float) * M * N);
        for (int i = 0; i < N * K; i++)
            w[i] = (float)rng_normal(&r);
        for (int i = 0; i < M * K; i++)
            A[i] = (float)rng_normal(&r);
        for (int i = 0; i < M * N; i++)
            c0[i] = (float)rng_normal(&r);
        quant_tensor q;
        int quantizable = (N * K) % 64 == 0;
        CHECK(!quantizable || quant_tensor_quantize(&q, w, (int64_t)N * K, QUANT_NF4, 64, 1) == QLAB_OK);
        for (int path = 0; path < BF16_PATH_COUNT; path++) {
            if (!bf16_path_available((bf16_path)path)) continue;
            bf16_force_path(bf16_path_name((bf16_path)path));
            for (int src = 0; src < 1 + quantizable; src++) {
                bf16_packed_weight pw;
                CHECK(bf16_pack_weight(src ? NULL : w, src ? &q : NULL, N, K, &pw) == QLAB_OK);
                for (int acc = 0; acc < 2; acc++) {
                    memcpy(c1, c0, sizeof(float) * M * N);
                    memcpy(c2, c0, sizeof(float) * M * N);
                    CHECK(bf16_gemm_packed(M, A, K, &pw, acc, c1, N) == QLAB_OK);
                    if (src)
                        CHECK(bf16_gemm_quant(0, 1, M, N, K, A, K, &q, acc, c2, N) == QLAB_OK);
                    else
                        CHECK(bf16_gemm(0, 1, M, N, K, A, K, w, K, acc, c2, N) == QLAB_OK);
                    CHECKF(
                        memcmp(c1, c2, sizeof(float) * M * N) == 0,
                        "%s: packed %s weight %dx%d (M %d, accumulate %d) differs from the unpacked product",
                        bf16_path_name((bf16_path)path), src ? "NF4+DQ" : "fp32", N, K, M, acc);
                }
                bf16_packed_weight_free(&pw);
                CHECK(pw.panels == NULL);
            }
            /* one shared A for an fp32, a quantized and a packed weight: the bits of separate calls */
            bf16_packed_weight pw;
            CHECK(bf16_pack_weight(w, NULL, N, K, &pw) == QLAB_OK);
            float *s1 = malloc(sizeof(float) * M * N), *s2 = malloc(sizeof(float) * M * N);
            memcpy(s1, c0, sizeof(float) * M * N);
            bf16_weight_product prods[3] = {
                {.w = w, .N = N, .C = c1, .ldc = N},
                {.q = quantizable ? &q : NULL, .w = quantizable ? NULL : w, .N = N, .C = c2, .ldc = N},
                {.packed = &pw, .N = N, .C = s1, .ldc = N, .accumulate = 1}};
            CHECK(bf16_gemm_shared(M, K, A, K, 3, prods) == QLAB_OK);
            float *want = malloc(sizeof(float) * M * N);
            CHECK(bf16_gemm(0, 1, M, N, K, A, K, w, K, 0, want, N) == QLAB_OK);
            int same = memcmp(c1, want, sizeof(float) * M * N) == 0;
            if (quantizable) CHECK(bf16_gemm_quant(0, 1, M, N, K, A, K, &q, 0, want, N) == QLAB_OK);
            same &= memcmp(c2, want, sizeof(float) * M * N) == 0;
            memcpy(s2, c0, sizeof(float) * M * N);
            CHECK(bf16_gemm(0, 1, M, N, K, A, K, w, K, 1, s2, N) == QLAB_OK);
            same &= memcmp(s1, s2, sizeof(float) * M * N) == 0;
            CHECKF(same, "%s: bf16_gemm_shared %dx%dx%d differs from separate products",
                   bf16_path_name((bf16_path)path), M, N, K);
            prods[0].packed = &pw; /* two weights for one product */
            /* the linear backward (dout rounded once) against its two separate products: weight w (N,K)
             * (out features N, in features K), input X = A (M,K), dout = c0 (M,N) */
            float *dinp1 = calloc((size_t)M * K, sizeof(float)),
                  *dinp2 = calloc((size_t)M * K, sizeof(float));
            float *dw1 = calloc((size_t)N * K, sizeof(float)), *dw2 = calloc((size_t)N * K, sizeof(float));
            for (int src = 0; src < 1 + quantizable; src++) {
                memset(dinp1, 0, sizeof(float) * M * K), memset(dinp2, 0, sizeof(float) * M * K);
                memset(dw1, 0, sizeof(float) * N * K), memset(dw2, 0, sizeof(float) * N * K);
                CHECK(bf16_gemm_backward(M, K, N, c0, src ? NULL : w, src ? &q : NULL, A, dinp1, dw1) ==
                      QLAB_OK);
                if (src)
                    CHECK(bf16_gemm_quant(0, 0, M, K, N, c0, N, &q, 1, dinp2, K) == QLAB_OK);
                else
                    CHECK(bf16_gemm(0, 0, M, K, N, c0, N, w, K, 1, dinp2, K) == QLAB_OK);
                CHECK(bf16_gemm(1, 0, N, K, M, c0, N, A, K, 1, dw2, K) == QLAB_OK);
                CHECKF(memcmp(dinp1, dinp2, sizeof(float) * M * K) == 0 &&
                           memcmp(dw1, dw2, sizeof(float) * N * K) == 0,
                       "%s: bf16_gemm_backward %dx%dx%d (%s weight) differs from the two products",
                       bf16_path_name((bf16_path)path), M, N, K, src ? "NF4+DQ" : "fp32");
                /* consuming dout (rounded into its own buffer where that fits, else as above): the same
                 * bits, with and without dW */
                for (int with_dw = 0; with_dw < 2; with_dw++) {
                    float *dc = malloc(sizeof(float) * M * N);
                    memcpy(dc, c0, sizeof(float) * M * N);
                    memset(dinp2, 0, sizeof(float) * M * K), memset(dw2, 0, sizeof(float) * N * K);
                    CHECK(bf16_gemm_backward_consume(M, K, N, dc, (size_t)M * N, src ? NULL : w,
                                                     src ? &q : NULL, A, dinp2,
                                                     with_dw ? dw2 : NULL) == QLAB_OK);
                    CHECKF(memcmp(dinp1, dinp2, sizeof(float) * M * K) == 0 &&
                               (!with_dw || memcmp(dw1, dw2, sizeof(float) * N * K) == 0),
                           "%s: bf16_gemm_backward_consume %dx%dx%d (%s weight, dW %d) differs",
                           bf16_path_name((bf16_path)path), M, N, K, src ? "NF4+DQ" : "fp32", with_dw);
                    free(dc);
                }
            }
            free(dinp1), free(dinp2), free(dw1), free(dw2);
            CHECK(bf16_gemm_shared(M, K, A, K, 3, prods) == QLAB_ERR_ARG);
            free(s1), free(s2), free(want);
            bf16_packed_weight_free(&pw);
            bf16_force_path("auto");
        }
        bf16_packed_weight pw;
        CHECK(bf16_pack_weight(w, NULL, N, 0, &pw) == QLAB_ERR_ARG);
        CHECK(bf16_pack_weight(NULL, NULL, N, K, &pw) == QLAB_ERR_ARG);
        if (quantizable) {
            CHECK(bf16_pack_weight(w, &q, N, K, &pw) == QLAB_ERR_ARG);
            CHECK(bf16_pack_weight(NULL, &q, N + 1, K, &pw) == QLAB_ERR_ARG);
            quant_tensor_free(&q);
        }
        CHECK(bf16_gemm_packed(M, A, K, &pw, 0, c1, N) == QLAB_ERR_ARG); /* zeroed by the failed pack */
        free(w), free(A), free(c0), free(c1), free(c2);
    }
}

static void test_threads(void) {
#ifdef _OPENMP
    rng_state r;
    rng_seed(&r, 9);
    problem p;
    make_problem(&p, 70, 300, 260, 0, 1, &r, 1.0);
    float *c1 = malloc(sizeof(float) * 70 * 300), *c2 = malloc(sizeof(float) * 70 * 300);
    int prev = omp_get_max_threads();
    for (int path = 0; path < BF16_PATH_COUNT; path++) {
        if (!bf16_path_available((bf16_path)path)) continue;
        /* qlab's kernels give the same bits with any thread count. The blas path is OpenBLAS's sgemm, whose
         * kernels on some CPUs sum in an order that depends on how the rows are split between threads
         * (measured with OpenBLAS 0.3.21's Cooperlake kernels): there the promise is the same bits at the
         * same thread count. */
        int blas = path == BF16_PATH_BLAS;
        omp_set_num_threads(blas ? (prev > 1 ? prev : 2) : 1);
        run(bf16_path_name((bf16_path)path), &p, 0, c1, 300);
        omp_set_num_threads(prev > 1 ? prev : 2);
        run(bf16_path_name((bf16_path)path), &p, 0, c2, 300);
        CHECKF(memcmp(c1, c2, sizeof(float) * 70 * 300) == 0, "%s: result depends on the thread count%s",
               bf16_path_name((bf16_path)path), blas ? " (or differs between two runs)" : "");
    }
    omp_set_num_threads(prev);
    free(c1), free(c2);
    free_problem(&p);
#endif
}

/* The path a fresh process takes with QLAB_BF16_PATH=value (NULL: unset): its bf16_active_path, or -1. The
 * choice is made once per process, so each value runs in a child forked before this process made it. */
static int path_with_env(const char *value) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        if (value)
            setenv("QLAB_BF16_PATH", value, 1);
        else
            unsetenv("QLAB_BF16_PATH");
        if (!freopen("/dev/null", "w", stderr)) _exit(100); /* the warnings of the bad values */
        _exit((int)bf16_active_path());
    }
    int status;
    if (pid < 0 || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status)) return -1;
    return WEXITSTATUS(status);
}

/* QLAB_BF16_PATH: a usable value is taken; an unknown or unavailable one, "auto" and none give the automatic
 * choice, which is amx when present, else one of the AVX-512 kernels (timed against each other), else
 * blas. */
static void test_env_choice(void) {
    int auto_path = path_with_env(NULL);
    int avx512 = bf16_path_available(BF16_PATH_AVX512FMA) || bf16_path_available(BF16_PATH_AVX512BF16);
    if (bf16_path_available(BF16_PATH_AMX))
        CHECK(auto_path == BF16_PATH_AMX);
    else if (avx512)
        CHECKF((auto_path == BF16_PATH_AVX512FMA || auto_path == BF16_PATH_AVX512BF16) &&
                   bf16_path_available((bf16_path)auto_path),
               "automatic choice %d", auto_path);
    else
        CHECK(auto_path == BF16_PATH_BLAS);
    for (int p = 0; p < BF16_PATH_COUNT; p++) {
        int got = path_with_env(bf16_path_name((bf16_path)p));
        if (bf16_path_available((bf16_path)p))
            CHECKF(got == p, "QLAB_BF16_PATH=%s gave path %d", bf16_path_name((bf16_path)p), got);
        else /* the automatic choice's candidates (its timing may differ between processes) */
            CHECKF(got >= 0 && got != p && bf16_path_available((bf16_path)got) &&
                       (avx512 ? got >= BF16_PATH_AVX512FMA : got == BF16_PATH_BLAS),
                   "QLAB_BF16_PATH=%s (unavailable) gave path %d", bf16_path_name((bf16_path)p), got);
    }
    const char *bad[] = {"auto", "bogus", ""};
    for (int i = 0; i < 3; i++) {
        int got = path_with_env(bad[i]);
        CHECKF(got >= 0 && bf16_path_available((bf16_path)got) && got != BF16_PATH_REF &&
                   (avx512 || got == BF16_PATH_BLAS) && (!avx512 || got >= BF16_PATH_AVX512FMA),
               "QLAB_BF16_PATH='%s' gave path %d", bad[i], got);
    }
}

/* The emulated tiles refuse what the hardware would fault on, so a kernel bug cannot pass as a result: a
 * block product without the tile configuration (no gemm_bf16_block_begin) stops the process. */
static void test_amx_emulation_faults(void) {
    _Alignas(64) uint16_t A[32 * 32] = {0}, B[16 * 32] = {0};
    float C[32 * 16];
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        struct rlimit no_core = {0, 0}; /* the abort is expected: no core file */
        setrlimit(RLIMIT_CORE, &no_core);
        if (!freopen("/dev/null", "w", stderr)) _exit(100);
        gemm_bf16_block(BF16_PATH_AMX, A, 32, B, 16 * 32, 32, 16, 32, C, 16, 0, NULL);
        _exit(0);
    }
    int status;
    CHECKF(pid > 0 && waitpid(pid, &status, 0) == pid && WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT,
           "emulated AMX: a block product without the tile configuration was not refused");
    gemm_bf16_block_begin(BF16_PATH_AMX); /* and with it, the product of zeros */
    gemm_bf16_block(BF16_PATH_AMX, A, 32, B, 16 * 32, 32, 16, 32, C, 16, 0, NULL);
    gemm_bf16_block_end(BF16_PATH_AMX);
    int zeros = 1;
    for (int i = 0; i < 32 * 16; i++)
        zeros &= C[i] == 0;
    CHECK(zeros);
}

/* gemm_bf16_block_depth: a block product of depth K (the packed values past it zero) gives the bits of the
 * whole Kp loop on every path with block kernels, accumulating or not, for K odd and even, one and two
 * pairs short of 32, and products flushed to -0 (a negative subnormal under FTZ), which one zero pair past
 * K must turn into +0 as the rest of the padding does. */
static void test_block_depth(void) {
    rng_state r;
    rng_seed(&r, 23);
    const int M = 13, ncols = 37, Ks[] = {1, 2, 7, 8, 20, 30};
    for (size_t ki = 0; ki < sizeof Ks / sizeof *Ks; ki++)
        for (int tiny = 0; tiny < 2; tiny++) {
            int K = Ks[ki], Kp = gemm_bf16_kp(K);
            float *a = malloc(sizeof(float) * M * K), *w = malloc(sizeof(float) * ncols * K);
            for (int i = 0; i < M * K; i++)
                a[i] = (float)(rng_normal(&r) * (tiny ? 1e-20 : 1.0));
            for (int i = 0; i < ncols * K; i++)
                w[i] = (float)(rng_normal(&r) * (tiny ? 1e-20 : 1.0));
            if (tiny) { /* row 0 x column 0: one product of -1e-40 and zeros */
                for (int k = 0; k < K; k++)
                    a[k] = 0.0f, w[k] = 0.0f;
                a[0] = -1e-20f, w[0] = 1e-20f;
            }
            bf16_packed_weight pw;
            CHECK(bf16_pack_weight(w, NULL, ncols, K, &pw) == QLAB_OK);
            uint16_t *ap = calloc((size_t)gemm_bf16_mp(M) * Kp, sizeof(uint16_t));
            gemm_bf16_pack_rows(ap, Kp, a, (size_t)K, M, K, gemm_bf16_mp(M));
            float *full = malloc(sizeof(float) * M * ncols), *part = malloc(sizeof(float) * M * ncols);
            for (int path = 0; path < BF16_PATH_COUNT; path++) {
                if (path == BF16_PATH_BLAS || !bf16_path_available((bf16_path)path)) continue;
                for (int acc = 0; acc < 2; acc++) {
                    for (int i = 0; i < M * ncols; i++)
                        full[i] = part[i] = acc ? 0.0f : NAN;
                    gemm_bf16_block_begin((bf16_path)path);
                    gemm_bf16_block((bf16_path)path, ap, (size_t)Kp, pw.panels, (size_t)GEMM_BF16_PANEL * Kp,
                                    M, ncols, Kp, full, ncols, acc, NULL);
                    gemm_bf16_block_depth((bf16_path)path, ap, (size_t)Kp, pw.panels,
                                          (size_t)GEMM_BF16_PANEL * Kp, M, ncols, Kp, K, part, ncols, acc);
                    gemm_bf16_block_end((bf16_path)path);
                    CHECKF(memcmp(full, part, sizeof(float) * M * ncols) == 0,
                           "%s: gemm_bf16_block_depth K %d (%s) acc %d differs from the whole Kp loop",
                           bf16_path_name((bf16_path)path), K, tiny ? "subnormal" : "normal", acc);
                    if (tiny) CHECK(full[0] == 0.0f && !signbit(full[0])); /* +0, not the flushed -0 */
                }
            }
            bf16_packed_weight_free(&pw);
            free(a), free(w), free(ap), free(full), free(part);
        }
}

int main(void) {
    test_env_choice(); /* first: before this process makes its own choice */
    printf("bf16 paths on this CPU:");
    for (int p = 0; p < BF16_PATH_COUNT; p++)
        printf(" %s%s", bf16_path_name((bf16_path)p), bf16_path_available((bf16_path)p) ? "" : "(absent)");
    printf("; active %s\n", bf16_path_name(bf16_active_path()));
    if (!bf16_path_available(BF16_PATH_AVX512FMA))
        SKIP("no AVX-512 on this CPU: the avx512fma kernel is compiled but not tested");
    if (!bf16_path_available(BF16_PATH_AVX512BF16))
        SKIP("no AVX-512 BF16 on this CPU: its kernel is not tested");
    if (!bf16_path_available(BF16_PATH_AMX)) {
        amx_emulated = gemm_bf16_emulate_amx(1);
        if (amx_emulated) {
            printf(
                "no AMX on this CPU: the AMX kernel runs on emulated tiles (the SDM's order, bit for bit)\n");
            test_amx_emulation_faults();
        } else
            SKIP("neither AMX nor AVX-512 on this CPU: the AMX kernel is compiled but not tested");
    }
    test_rounding();
    rng_state r;
    rng_seed(&r, 1);
    /* K = 8 and 16: LoRA's rank-r products, where the AVX-512 kernels stop at K instead of K's 32-padding
     * (the same bits); K 300 and 600: the avx512fma kernel's several slices of 128 k pairs; N 530 and 700:
     * several of its tiles of 16 panels, one row (the split of the columns between threads); M 1, 3 and 40
     * (12 + 12 + 12 + 4): its 1-row and 4-row blocks */
    int shapes[][3] = {{1, 1, 1},      {1, 16, 32},   {8, 32, 64}, {37, 45, 70}, {33, 17, 3},
                       {64, 100, 300}, {5, 200, 31},  {40, 88, 8}, {19, 40, 16}, {30, 530, 600},
                       {1, 700, 40},   {13, 33, 257}, {3, 70, 300}};
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++)
        test_shape(shapes[i][0], shapes[i][1], shapes[i][2], &r, 1.0);
    test_subnormal();
    test_special();
    test_quantized();
    test_packed();
    test_block_depth();
    test_threads();
    return check_summary();
}
