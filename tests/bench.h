/* Shared pieces of the benchmark programs (tests/bench_*.c): the limits every figure is compared with,
 * measured in the same run (memcpy bandwidth, OpenBLAS sgemm), and one record per figure appended as a
 * JSON line to $QLAB_BENCH_OUT (tests/run_bench.sh gathers them into results/bench.json). */
#ifndef QLAB_BENCH_H
#define QLAB_BENCH_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/common.h"
#include "core/base/progress.h"
#include "core/model/gemm_bf16.h"
#include "core/model/model.h"
#ifdef QLAB_HAVE_OPENBLAS
#include <cblas.h>
#endif

/* The bench model every model-level benchmark uses: 6.5M parameters, dim 256, 8 layers, T 256 (run at
 * batch 4). */
static inline model_config bench_model_config(void) {
    model_config c = {.dim = 256,
                      .hidden_dim = 688,
                      .n_layers = 8,
                      .n_heads = 8,
                      .n_kv_heads = 8,
                      .vocab_size = 512,
                      .seq_len = 256,
                      .norm_eps = 1e-5f,
                      .rope_theta = 10000.0f,
                      .shared_classifier = 1};
    return c;
}

/* Benchmarks time their figures in this many windows taken in turn and keep each figure's best: a burst of
 * other work on a shared machine (seconds to tens of seconds on the VMs this runs on) then slows one window
 * of every figure rather than the whole of one. */
#define BENCH_ROUNDS 3

/* Best single step (forward, plus backward when asked) over at least min_seconds and 3 calls, after one
 * warm-up step; -1 on failure. */
static inline double bench_time_steps(model *m, const int *tokens, const int *targets, int B, int T,
                                      int backward, double min_seconds) {
    float loss;
    if (model_forward(m, tokens, targets, B, T, NULL, &loss) != QLAB_OK) return -1;
    if (backward && model_backward(m) != QLAB_OK) return -1;
    int calls = 0;
    double start = qlab_now(), best = 1e30;
    do {
        double t0 = qlab_now();
        if (model_forward(m, tokens, targets, B, T, NULL, &loss) != QLAB_OK) return -1;
        if (backward) {
            model_zero_grad(m);
            if (model_backward(m) != QLAB_OK) return -1;
        }
        double dt = qlab_now() - t0;
        if (dt < best) best = dt;
        calls++;
    } while (qlab_now() - start < min_seconds || calls < 3);
    /* a step timed on overflowing values measures nothing a user runs */
    if (!(loss == loss && loss < 1e30f && loss > -1e30f)) {
        qlab_fail(QLAB_ERR_NUMERIC, "bench: the timed step's loss is %g, not finite", (double)loss);
        return -1;
    }
    return best;
}

/* Cached generation (model_forward_next): the best of 3 runs of a 32-token prompt then one token per call
 * up to T, in generated tokens per second; -1 on failure. */
static inline double bench_time_generation(model *m, const int *tokens, int T, float *logits) {
    double best = 1e30;
    for (int run = 0; run < 3; run++) {
        model_cache_clear(m);
        if (model_forward_next(m, tokens, 32, logits) != QLAB_OK) return -1;
        double t0 = qlab_now();
        for (int n = 33; n <= T; n++)
            if (model_forward_next(m, tokens, n, logits) != QLAB_OK) return -1;
        double dt = qlab_now() - t0;
        if (dt < best) best = dt;
    }
    model_cache_clear(m);
    return (T - 32) / best;
}

/* Element i (in storage order) of the A (b = 0) or B (b = 1) operand every GEMM benchmark multiplies:
 * sgemm, qlab's bf16 paths and oneDNN see the same values. */
static inline float bench_gemm_value(int b, size_t i) {
    return b ? (float)((i * 53) % 97) / 97.0f - 0.5f : (float)((i * 37) % 101) / 101.0f - 0.5f;
}

/* One GEMM implementation under test: C (M,N) = op(A) op(B), row-major as bf16_gemm takes them; 0 on
 * success. */
typedef int (*bench_gemm_fn)(int ta, int tb, int M, int N, int K, const float *A, int lda, const float *B,
                             int ldb, float *C, int ldc);

/* GFLOP/s of the best of reps calls of f (after one warm-up) on bench_gemm_value's operands; 0 on failure. */
static inline double bench_gemm_gflops(bench_gemm_fn f, int ta, int tb, int M, int N, int K, int reps) {
    int lda = ta ? M : K, ldb = tb ? K : N;
    float *A = qlab_alloc_aligned(sizeof(float) * (size_t)M * K);
    float *B = qlab_alloc_aligned(sizeof(float) * (size_t)K * N);
    float *C = qlab_alloc_aligned(sizeof(float) * (size_t)M * N);
    double best = 1e30;
    if (A && B && C) {
        for (size_t i = 0; i < (size_t)M * K; i++)
            A[i] = bench_gemm_value(0, i);
        for (size_t i = 0; i < (size_t)K * N; i++)
            B[i] = bench_gemm_value(1, i);
        for (int r = 0; r < reps + 1; r++) {
            double t0 = qlab_now();
            if (f(ta, tb, M, N, K, A, lda, B, ldb, C, N) != 0) break;
            double dt = qlab_now() - t0;
            if (r > 0 && dt < best) best = dt; /* the first call warms up threads and caches */
        }
    }
    qlab_free_aligned(A);
    qlab_free_aligned(B);
    qlab_free_aligned(C);
    return best < 1e30 ? 2.0 * M * N * (double)K / best / 1e9 : 0;
}

static inline int bench_bf16_call(int ta, int tb, int M, int N, int K, const float *A, int lda,
                                  const float *B, int ldb, float *C, int ldc) {
    return bf16_gemm(ta, tb, M, N, K, A, lda, B, ldb, 0, C, ldc) != QLAB_OK;
}

/* GFLOP/s of the best of reps bf16_gemm calls (after one warm-up) on the active path; 0 on failure. */
static inline double bench_bf16_gflops(int ta, int tb, int M, int N, int K, int reps) {
    return bench_gemm_gflops(bench_bf16_call, ta, tb, M, N, K, reps);
}

/* Best-of-reps memcpy rate in GB/s of bytes written, for a buffer of `bytes` (make it >> last-level
 * cache to measure DRAM bandwidth). */
static inline double bench_memcpy_gbps(size_t bytes, int reps) {
    char *a = qlab_alloc_aligned(bytes), *b = qlab_alloc_aligned(bytes);
    if (!a || !b) return 0;
    memset(a, 1, bytes);
    memset(b, 2, bytes); /* fault the pages in before timing */
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = qlab_now();
        memcpy(b, a, bytes);
        double dt = qlab_now() - t0;
        if (dt < best) best = dt;
        a[r % bytes] ^= b[(r * 7) % bytes]; /* keep the copies observable */
    }
    qlab_free_aligned(a);
    qlab_free_aligned(b);
    return (double)bytes / best / 1e9;
}

#ifdef QLAB_HAVE_OPENBLAS
static inline int bench_sgemm_call(int ta, int tb, int M, int N, int K, const float *A, int lda,
                                   const float *B, int ldb, float *C, int ldc) {
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, 1.0f,
                A, lda, B, ldb, 0.0f, C, ldc);
    return 0;
}

/* Best-of-reps OpenBLAS sgemm GFLOP/s for C(M,N) = A(M,K) B(K,N), with the thread count OpenBLAS uses. */
static inline double bench_sgemm_gflops(int M, int N, int K, int reps) {
    return bench_gemm_gflops(bench_sgemm_call, 0, 0, M, N, K, reps);
}
#endif

/* Prints one table row and appends one JSON record. ratio = value / limit_value; target is the ratio the
 * figure should reach (0 when there is none); met is reported for convenience. */
static inline void bench_emit(const char *name, double value, const char *unit, const char *limit_name,
                              double limit_value, double target) {
    double ratio = limit_value > 0 ? value / limit_value : 0;
    int met = target <= 0 || ratio >= target;
    printf("%-44s %10.3f %-8s %-26s %10.3f  ratio %6.3f  target %5.2f  %s\n", name, value, unit, limit_name,
           limit_value, ratio, target, target > 0 ? (met ? "MET" : "MISSED") : "-");
    fflush(stdout);
    const char *out = getenv("QLAB_BENCH_OUT");
    if (!out) return;
    FILE *f = fopen(out, "a");
    if (!f) return;
    fprintf(f,
            "{\"name\":\"%s\",\"value\":%.6g,\"unit\":\"%s\",\"limit\":{\"name\":\"%s\",\"value\":%.6g},"
            "\"ratio\":%.6g,\"target\":%.6g,\"met\":%s,\"threads\":%d}\n",
            name, value, unit, limit_name, limit_value, ratio, target, met ? "true" : "false",
            qlab_num_threads());
    fclose(f);
}

#endif
