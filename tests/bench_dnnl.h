/* oneDNN's bf16 matmul for the benchmarks (compiled in where make found libdnnl-dev: QLAB_HAVE_DNNL). */
#ifndef QLAB_TESTS_BENCH_DNNL_H
#define QLAB_TESTS_BENCH_DNNL_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tests/bench.h"
#include "core/base/half.h"

#ifdef QLAB_HAVE_DNNL
/* oneDNN's bf16 matmul (what PyTorch's CPU bf16 products run on), measured to decide between it and
 * qlab's own kernels: bf16 inputs already rounded and laid out (its best case: qlab's figure
 * includes rounding and packing fp32 operands), fp32 output, the primitive created once and executed reps
 * times. Written against the oneDNN 2.x C API (Debian 12's libdnnl-dev 2.6); other majors are not measured.
 */
#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_version.h>
#if DNNL_VERSION_MAJOR == 2
#define QLAB_DNNL_MEASURED 1
typedef struct {
    dnnl_engine_t eng;
    dnnl_stream_t st;
    dnnl_primitive_desc_t pd;
    dnnl_primitive_t prim;
    dnnl_memory_t mem[3];
} dnnl_run;

static inline void dnnl_run_free(dnnl_run *r) {
    for (int i = 0; i < 3; i++)
        if (r->mem[i]) dnnl_memory_destroy(r->mem[i]);
    if (r->prim) dnnl_primitive_destroy(r->prim);
    if (r->pd) dnnl_primitive_desc_destroy(r->pd);
    if (r->st) dnnl_stream_destroy(r->st);
    if (r->eng) dnnl_engine_destroy(r->eng);
}

/* Builds the matmul C[M,N] = A[M,K] B[K,N] (A stored transposed when ta, B when tb) and fills A and B. */
static inline int dnnl_run_init(dnnl_run *r, int ta, int tb, int M, int N, int K) {
    dnnl_dims_t ad = {M, K}, bd = {K, N}, cd = {M, N};
    dnnl_memory_desc_t md[3];
    if (dnnl_engine_create(&r->eng, dnnl_cpu, 0) != dnnl_success ||
        dnnl_stream_create(&r->st, r->eng, dnnl_stream_default_flags) != dnnl_success ||
        dnnl_memory_desc_init_by_tag(&md[0], 2, ad, dnnl_bf16, ta ? dnnl_ba : dnnl_ab) != dnnl_success ||
        dnnl_memory_desc_init_by_tag(&md[1], 2, bd, dnnl_bf16, tb ? dnnl_ba : dnnl_ab) != dnnl_success ||
        dnnl_memory_desc_init_by_tag(&md[2], 2, cd, dnnl_f32, dnnl_ab) != dnnl_success)
        return 0;
    dnnl_matmul_desc_t mm;
    if (dnnl_matmul_desc_init(&mm, &md[0], &md[1], NULL, &md[2]) != dnnl_success ||
        dnnl_primitive_desc_create(&r->pd, &mm, NULL, r->eng, NULL) != dnnl_success ||
        dnnl_primitive_create(&r->prim, r->pd) != dnnl_success)
        return 0;
    for (int i = 0; i < 3; i++)
        if (dnnl_memory_create(&r->mem[i], &md[i], r->eng, DNNL_MEMORY_ALLOCATE) != dnnl_success) return 0;
    for (int i = 0; i < 2; i++) {
        void *h = NULL;
        if (dnnl_memory_get_data_handle(r->mem[i], &h) != dnnl_success || !h) return 0;
        size_t n = i == 0 ? (size_t)M * K : (size_t)K * N;
        for (size_t j = 0; j < n; j++) /* the values bench_bf16_gflops multiplies, rounded to bf16 */
            ((uint16_t *)h)[j] = f32_to_bf16(bench_gemm_value(i, j));
    }
    return 1;
}

/* Whether oneDNN's product (in r's destination) is qlab's bf16 product of the same bf16 operands: both sum
 * exact bf16 products in fp32, in their own orders, so they agree to the fp32 summation bound (relative L2
 * 1e-4 is far above it and far below any layout mistake). A rate is only reported for a product that is
 * right. */
static inline int dnnl_run_agrees(const dnnl_run *r, int ta, int tb, int M, int N, int K) {
    void *h[3] = {NULL, NULL, NULL};
    for (int i = 0; i < 3; i++)
        if (dnnl_memory_get_data_handle(r->mem[i], &h[i]) != dnnl_success || !h[i]) return 0;
    float *A = malloc(sizeof(float) * (size_t)M * K), *B = malloc(sizeof(float) * (size_t)K * N);
    float *C = malloc(sizeof(float) * (size_t)M * N);
    int ok = A && B && C;
    if (ok) {
        for (size_t j = 0; j < (size_t)M * K; j++)
            A[j] = bf16_to_f32(((const uint16_t *)h[0])[j]);
        for (size_t j = 0; j < (size_t)K * N; j++)
            B[j] = bf16_to_f32(((const uint16_t *)h[1])[j]);
        ok = bf16_gemm(ta, tb, M, N, K, A, ta ? M : K, B, tb ? K : N, 0, C, N) == QLAB_OK;
    }
    if (ok) {
        const float *D = h[2];
        double diff = 0, norm = 0;
        for (size_t j = 0; j < (size_t)M * N; j++)
            diff += ((double)D[j] - C[j]) * ((double)D[j] - C[j]), norm += (double)C[j] * C[j];
        ok = diff <= 1e-8 * norm;
    }
    free(A), free(B), free(C);
    return ok;
}

/* GFLOP/s of the best of reps executions (after one warm-up), 0 if oneDNN cannot build the matmul, has
 * only its reference implementation for it, or computes something else than qlab's product; impl
 * receives oneDNN's name for the implementation it chose (e.g. brg:avx512_core_amx). */
static inline double dnnl_bf16_gflops(int ta, int tb, int M, int N, int K, int reps, char *impl,
                                      size_t impl_size) {
    dnnl_run r = {0};
    double best = 1e30;
    snprintf(impl, impl_size, "-");
    if (dnnl_run_init(&r, ta, tb, M, N, K)) {
        const char *name = NULL;
        if (dnnl_primitive_desc_query(r.pd, dnnl_query_impl_info_str, 0, &name) == dnnl_success && name)
            snprintf(impl, impl_size, "%s", name);
        /* oneDNN's reference implementation (a CPU without bf16 instructions) is no kernel a user would
         * run, and takes minutes at these shapes: not timed */
        if (strncmp(impl, "ref", 3) == 0) reps = -1;
        dnnl_exec_arg_t args[3] = {
            {DNNL_ARG_SRC, r.mem[0]}, {DNNL_ARG_WEIGHTS, r.mem[1]}, {DNNL_ARG_DST, r.mem[2]}};
        for (int i = 0; i < reps + 1; i++) {
            double t0 = qlab_now();
            if (dnnl_primitive_execute(r.prim, r.st, 3, args) != dnnl_success ||
                dnnl_stream_wait(r.st) != dnnl_success)
                break;
            double dt = qlab_now() - t0;
            if (i > 0 && dt < best) best = dt;
        }
        if (best < 1e30 && !dnnl_run_agrees(&r, ta, tb, M, N, K)) {
            printf("oneDNN's %s product %dx%dx%d differs from qlab's: not compared\n", impl, M, N, K);
            best = 1e30;
        }
    }
    dnnl_run_free(&r);
    return best < 1e30 ? 2.0 * M * N * (double)K / best / 1e9 : 0;
}
#endif
#endif

#ifdef QLAB_HAVE_DNNL
static inline int bench_dnnl_sgemm_call(int ta, int tb, int M, int N, int K, const float *A, int lda,
                                        const float *B, int ldb, float *C, int ldc) {
    return dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, 1.0f, A, lda, B, ldb, 0.0f, C, ldc) !=
           dnnl_success;
}

/* Best-of-reps oneDNN sgemm (dnnl_sgemm: strict fp32, row-major) GFLOP/s for the same product as
 * bench_sgemm_gflops, on the same values: the machine's other fp32 GEMM, for the fp32 limit. 0 on failure. */
static inline double bench_dnnl_sgemm_gflops(int M, int N, int K, int reps) {
    return bench_gemm_gflops(bench_dnnl_sgemm_call, 0, 0, M, N, K, reps);
}
#endif

#endif
