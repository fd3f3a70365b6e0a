/* Quantize / dequantize throughput of every 4-bit type on 64M elements (256 MB of fp32, far beyond the
 * last-level cache), on one thread and on all threads, beside memcpy of the same number of output bytes
 * measured in this run. The figure to watch: NF4 dequantize to fp32 at >= 70% of memcpy. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "tests/bench.h"
#include "core/base/common.h"
#include "core/base/progress.h"
#include "core/quant/quant.h"
#include "core/base/rng.h"

static void set_threads(int t) {
#ifdef _OPENMP
    omp_set_num_threads(t);
#else
    (void)t;
#endif
}

static int max_threads(void) {
#ifdef _OPENMP
    return omp_get_num_procs();
#else
    return 1;
#endif
}

/* One figure as GB/s and as Gelem/s, both against memcpy of the same bytes (the elements/s limit is the
 * memcpy rate in fp32 elements). */
static void emit_pair(const char *what, int64_t n, size_t bytes, double secs, double memcpy_gbps,
                      double target) {
    char name[96];
    snprintf(name, sizeof name, "%s", what);
    bench_emit(name, (double)bytes / secs / 1e9, "GB/s", "memcpy same bytes", memcpy_gbps, target);
    snprintf(name, sizeof name, "%s_elems", what);
    bench_emit(name, (double)n / secs / 1e9, "Gelem/s", "memcpy (fp32 elements)",
               memcpy_gbps * 1e9 / (double)(bytes / n) / 1e9, 0);
}

static double time_dequant(const quant_tensor *qt, float *out, uint16_t *out16, int reps) {
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = qlab_now();
        if (out)
            quant_tensor_dequantize(qt, out);
        else
            quant_tensor_dequantize_bf16(qt, out16);
        double dt = qlab_now() - t0;
        if (dt < best) best = dt;
    }
    return best;
}

int main(int argc, char **argv) {
    int64_t n = (int64_t)64 << 20;
    if (argc > 1) n = atoll(argv[1]); /* smaller runs for a quick look */
    if (n < 1024) n = 1024;
    float *x = qlab_alloc_aligned(sizeof(float) * (size_t)n),
          *out = qlab_alloc_aligned(sizeof(float) * (size_t)n);
    uint16_t *out16 = qlab_alloc_aligned(sizeof(uint16_t) * (size_t)n);
    if (!x || !out || !out16) return qlab_report_error("bench_quant");
    rng_state rng;
    rng_seed(&rng, 1234);
    for (int64_t i = 0; i < n; i++)
        x[i] = (float)rng_normal(&rng) * 0.02f;

    double memcpy_f32 = bench_memcpy_gbps(sizeof(float) * (size_t)n, 5);
    double memcpy_bf16 = bench_memcpy_gbps(sizeof(uint16_t) * (size_t)n, 5);
    printf(
        "bench_quant: n = %lld elements (%.0f MB fp32), kernel %s, memcpy %.2f GB/s (fp32 size), %.2f GB/s "
        "(bf16 size)\n",
        (long long)n, n * 4.0 / 1e6, quant_kernel_name(), memcpy_f32, memcpy_bf16);

    char name[96];
    set_threads(1);
    for (int dt = 0; dt < QUANT_DTYPE_COUNT; dt++) {
        const char *tn = quant_dtype_name((quant_dtype)dt);
        quant_tensor qt;
        double t0 = qlab_now();
        if (quant_tensor_quantize(&qt, x, n, (quant_dtype)dt, quant_default_blocksize((quant_dtype)dt), 0) !=
            QLAB_OK)
            return qlab_report_error("bench_quant");
        double tq = qlab_now() - t0;
        snprintf(name, sizeof name, "quant_%s_quantize_1t", tn);
        emit_pair(name, n, sizeof(float) * (size_t)n, tq, memcpy_f32, 0);
        double td = time_dequant(&qt, out, NULL, 5);
        snprintf(name, sizeof name, "quant_%s_dequantize_fp32_1t", tn);
        emit_pair(name, n, sizeof(float) * (size_t)n, td, memcpy_f32, dt == QUANT_NF4 ? 0.70 : 0);
        if (dt == QUANT_NF4) {
            td = time_dequant(&qt, NULL, out16, 3);
            emit_pair("quant_nf4_dequantize_bf16_1t", n, sizeof(uint16_t) * (size_t)n, td, memcpy_bf16, 0);
        }
        quant_tensor_free(&qt);
    }
    /* NF4 with double quantization: the absmax is rebuilt per block before the lookup */
    quant_tensor qt;
    double t0 = qlab_now();
    if (quant_tensor_quantize(&qt, x, n, QUANT_NF4, 64, 1) != QLAB_OK)
        return qlab_report_error("bench_quant");
    emit_pair("quant_nf4_dq_quantize_1t", n, sizeof(float) * (size_t)n, qlab_now() - t0, memcpy_f32, 0);
    emit_pair("quant_nf4_dq_dequantize_fp32_1t", n, sizeof(float) * (size_t)n,
              time_dequant(&qt, out, NULL, 3), memcpy_f32, 0);
    quant_tensor_free(&qt);

    /* all threads: NF4 only (the others scale the same way); memcpy stays single-threaded glibc */
    int threads = max_threads();
    set_threads(threads);
    t0 = qlab_now();
    if (quant_tensor_quantize(&qt, x, n, QUANT_NF4, 64, 0) != QLAB_OK)
        return qlab_report_error("bench_quant");
    snprintf(name, sizeof name, "quant_nf4_quantize_%dt", threads);
    emit_pair(name, n, sizeof(float) * (size_t)n, qlab_now() - t0, memcpy_f32, 0);
    snprintf(name, sizeof name, "quant_nf4_dequantize_fp32_%dt", threads);
    emit_pair(name, n, sizeof(float) * (size_t)n, time_dequant(&qt, out, NULL, 3), memcpy_f32, 0);
    snprintf(name, sizeof name, "quant_nf4_dequantize_bf16_%dt", threads);
    emit_pair(name, n, sizeof(uint16_t) * (size_t)n, time_dequant(&qt, NULL, out16, 3), memcpy_bf16, 0);
    quant_tensor_free(&qt);

    qlab_free_aligned(x);
    qlab_free_aligned(out);
    qlab_free_aligned(out16);
    return 0;
}
