/* qlab-cuda-selftest: on a machine with a CUDA device, runs every CUDA kernel against the C reference
 * (core/quant/quant.c: bit for bit) and against the CPU emulation of the same body (bit for bit, including
 * gemv and AdamW), printing one PASS/FAIL line per check. Without a device: "no CUDA device: skipped", exit
 * 0. */
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cmath>

#include "kernels/cuda_emu.h"
#include "kernels/cuda_internal.h"
extern "C" {
#include "core/base/rng.h"
}

static int selftest_failed, selftest_passed;

static void selftest_report(bool ok, const char *what) {
    printf("%s %s\n", ok ? "PASS" : "FAIL", what);
    if (!ok && qlab_last_error()[0]) printf("     last error: %s\n", qlab_last_error());
    (ok ? selftest_passed : selftest_failed)++;
}

static bool same_tensor(const quant_tensor *a, const quant_tensor *b) {
    if (a->n != b->n || a->nblocks != b->nblocks || a->double_quant != b->double_quant) return false;
    if (memcmp(a->codes, b->codes, (size_t)(a->n + 1) / 2) != 0) return false;
    if (!a->double_quant) return memcmp(a->absmax, b->absmax, sizeof(float) * (size_t)a->nblocks) == 0;
    return memcmp(&a->dq_offset, &b->dq_offset, sizeof(float)) == 0 &&
           memcmp(a->dq_codes, b->dq_codes, (size_t)a->nblocks) == 0 &&
           memcmp(a->dq_absmax, b->dq_absmax, sizeof(float) * (size_t)a->dq_nblocks) == 0;
}

static void fill(rng_state *r, float *x, int64_t n, int blocksize) {
    for (int64_t i = 0; i < n; i++)
        x[i] = (float)rng_normal(r) * (float)(1 + (i / blocksize) % 5);
    for (int64_t i = blocksize; i < 2 * blocksize && i < n; i++)
        x[i] = 0.0f; /* an all-zero block */
    for (int64_t i = 3 * blocksize; i < 4 * blocksize && i < n; i++)
        x[i] *= 1e-40f; /* tiny absmax */
}

static void selftest_quant(void) {
    quant_dtype types[QUANT_DTYPE_COUNT]; /* every type the CUDA kernels cover: those with an fp32 absmax */
    int ntypes = 0;
    for (int d = 0; d < QUANT_DTYPE_COUNT; d++)
        if (quant_dtype_has_fp32_absmax((quant_dtype)d)) types[ntypes++] = (quant_dtype)d;
    const int64_t lengths[] = {1, 63, 4097, 64 * 256 * 3 + 5, 1 << 22};
    rng_state r;
    rng_seed(&r, 11);
    for (int ti = 0; ti < ntypes; ti++) {
        quant_dtype dt = types[ti];
        for (int dq = 0; dq <= 1; dq++) {
            bool q_ok = true, f32_ok = true, bf16_ok = true;
            for (int64_t n : lengths) {
                for (int bs : {64, 4096}) {
                    float *x = (float *)malloc(sizeof(float) * n), *a = (float *)malloc(sizeof(float) * n),
                          *b = (float *)malloc(sizeof(float) * n);
                    uint16_t *a16 = (uint16_t *)malloc(2 * n), *b16 = (uint16_t *)malloc(2 * n);
                    fill(&r, x, n, bs);
                    quant_tensor gpu, ref;
                    bool ok = qlab_cuda_quantize(&gpu, x, n, dt, bs, dq) == QLAB_OK;
                    ok = quant_tensor_quantize_ref(&ref, x, n, dt, bs, dq) == QLAB_OK && ok;
                    q_ok &= ok && same_tensor(&gpu, &ref);
                    if (ok) {
                        f32_ok &= qlab_cuda_dequantize(&ref, a) == QLAB_OK;
                        f32_ok &= quant_tensor_dequantize_ref(&ref, b) == QLAB_OK;
                        f32_ok &= memcmp(a, b, sizeof(float) * n) == 0;
                        bf16_ok &= qlab_cuda_dequantize_bf16(&ref, a16) == QLAB_OK;
                        bf16_ok &= quant_tensor_dequantize_bf16(&ref, b16) == QLAB_OK;
                        bf16_ok &= memcmp(a16, b16, 2 * n) == 0;
                        quant_tensor_free(&gpu);
                        quant_tensor_free(&ref);
                    }
                    free(x), free(a), free(b), free(a16), free(b16);
                }
            }
            char what[128];
            snprintf(what, sizeof what, "quantize %s%s == quant_tensor_quantize_ref (bit-exact)",
                     quant_dtype_name(dt), dq ? "+dq" : "");
            selftest_report(q_ok, what);
            snprintf(what, sizeof what, "dequantize fp32 %s%s == reference (bit-exact)", quant_dtype_name(dt),
                     dq ? "+dq" : "");
            selftest_report(f32_ok, what);
            snprintf(what, sizeof what, "dequantize bf16 %s%s == reference (bit-exact)", quant_dtype_name(dt),
                     dq ? "+dq" : "");
            selftest_report(bf16_ok, what);
        }
    }
}

static void selftest_gemv(void) {
    const int64_t shapes[][2] = {{1, 1}, {3, 5}, {64, 257}, {1000, 4097}, {4096, 4096}};
    rng_state r;
    rng_seed(&r, 12);
    for (auto &shape : shapes) {
        int64_t rows = shape[0], cols = shape[1], n = rows * cols;
        for (int dq = 0; dq <= 1; dq++) {
            for (int batch : {1, 4, 8}) {
                float *w = (float *)malloc(sizeof(float) * n), *wd = (float *)malloc(sizeof(float) * n);
                float *x = (float *)malloc(sizeof(float) * batch * cols),
                      *y = (float *)malloc(sizeof(float) * batch * rows);
                float *y_emu = (float *)malloc(sizeof(float) * batch * rows);
                for (int64_t i = 0; i < n; i++)
                    w[i] = (float)rng_normal(&r) * 0.05f;
                for (int64_t i = 0; i < batch * cols; i++)
                    x[i] = (float)rng_normal(&r);
                quant_tensor qt;
                qlab_cuda_weight dw = {};
                float *dx = nullptr, *dy = nullptr;
                bool ok = quant_tensor_quantize_ref(&qt, w, n, QUANT_NF4, 64, dq) == QLAB_OK;
                ok = ok && qlab_cuda_weight_upload(&dw, &qt) == QLAB_OK;
                ok = ok && cudaMalloc((void **)&dx, sizeof(float) * batch * cols) == cudaSuccess;
                ok = ok && cudaMalloc((void **)&dy, sizeof(float) * batch * rows) == cudaSuccess;
                ok = ok &&
                     cudaMemcpy(dx, x, sizeof(float) * batch * cols, cudaMemcpyHostToDevice) == cudaSuccess;
                ok = ok && qlab_cuda_gemv_4bit(&dw, rows, cols, dx, batch, dy) == QLAB_OK;
                ok = ok &&
                     cudaMemcpy(y, dy, sizeof(float) * batch * rows, cudaMemcpyDeviceToHost) == cudaSuccess;
                ok = ok && cuda_emu_gemv_4bit(&qt, rows, cols, x, batch, y_emu) == QLAB_OK;
                bool same = ok && memcmp(y, y_emu, sizeof(float) * batch * rows) == 0;
                bool within = ok;
                if (ok) {
                    within = quant_tensor_dequantize_ref(&qt, wd) == QLAB_OK;
                    for (int bt = 0; bt < batch; bt++)
                        for (int64_t row = 0; row < rows; row++) {
                            double exact = 0, mag = 0;
                            for (int64_t k = 0; k < cols; k++) {
                                double term = (double)wd[row * cols + k] * x[bt * cols + k];
                                exact += term;
                                mag += fabs(term);
                            }
                            /* fp32 summation bound, as in tests/test_cuda_emu.c */
                            within &= fabs((double)y[bt * rows + row] - exact) <=
                                      (double)cols * 0x1p-24 * mag + 1e-30;
                        }
                    quant_tensor_free(&qt);
                }
                char what[160];
                snprintf(what, sizeof what, "gemv nf4%s %lldx%lld batch %d: GPU == emulation (bit-exact)",
                         dq ? "+dq" : "", (long long)rows, (long long)cols, batch);
                selftest_report(same, what);
                snprintf(what, sizeof what,
                         "gemv nf4%s %lldx%lld batch %d: within fp32 bound of dequantize+matmul",
                         dq ? "+dq" : "", (long long)rows, (long long)cols, batch);
                selftest_report(within, what);
                qlab_cuda_weight_free(&dw);
                cudaFree(dx), cudaFree(dy);
                free(w), free(wd), free(x), free(y), free(y_emu);
            }
        }
    }
}

static void selftest_adamw(void) {
    const optim_cuda_adamw_hyper h = {2e-4f, 0.9f, 0.999f, 1e-8f, 0.01f};
    rng_state r;
    rng_seed(&r, 13);
    for (int64_t n : {(int64_t)1, (int64_t)1000, (int64_t)99999, (int64_t)100000, (int64_t)3000017}) {
        qlab_cuda_adamw_state s;
        float *p = nullptr, *g = nullptr; /* managed, so the host can fill and read them directly */
        float *p_emu = (float *)malloc(sizeof(float) * n), *g_emu = (float *)malloc(sizeof(float) * n);
        float *m_emu = (float *)calloc(n, sizeof(float)), *v_emu = (float *)calloc(n, sizeof(float));
        bool ok = qlab_cuda_adamw_state_init(&s, n) == QLAB_OK;
        ok = ok && cudaMallocManaged((void **)&p, sizeof(float) * n) == cudaSuccess;
        ok = ok && cudaMallocManaged((void **)&g, sizeof(float) * n) == cudaSuccess;
        if (ok) {
            for (int64_t i = 0; i < n; i++)
                p[i] = p_emu[i] = (float)rng_normal(&r) * 0.02f;
            for (int64_t step = 1; step <= 3 && ok; step++) {
                for (int64_t i = 0; i < n; i++)
                    g[i] = g_emu[i] = (float)rng_normal(&r) * 1e-3f;
                ok = qlab_cuda_adamw_step(&s, p, g, &h, step) == QLAB_OK &&
                     cudaDeviceSynchronize() == cudaSuccess;
                ok = ok && cuda_emu_adamw_step(p_emu, g_emu, m_emu, v_emu, n, &h, step) == QLAB_OK;
            }
        }
        bool same = ok;
        if (ok) {
            float *m = (float *)malloc(sizeof(float) * n), *v = (float *)malloc(sizeof(float) * n);
            same = cudaMemcpy(m, s.m, sizeof(float) * n, cudaMemcpyDefault) == cudaSuccess &&
                   cudaMemcpy(v, s.v, sizeof(float) * n, cudaMemcpyDefault) == cudaSuccess &&
                   memcmp(p, p_emu, sizeof(float) * n) == 0 && memcmp(m, m_emu, sizeof(float) * n) == 0 &&
                   memcmp(v, v_emu, sizeof(float) * n) == 0;
            free(m), free(v);
        }
        char what[128];
        snprintf(what, sizeof what, "adamw n=%lld (%s): 3 steps, GPU == emulation (bit-exact)", (long long)n,
                 s.paged ? "paged" : "device memory");
        selftest_report(same, what);
        qlab_cuda_adamw_state_free(&s);
        cudaFree(p), cudaFree(g);
        free(p_emu), free(g_emu), free(m_emu), free(v_emu);
    }
}

int main(void) {
    if (!qlab_cuda_available()) {
        printf("no CUDA device: skipped\n");
        return 0;
    }
    printf("qlab-cuda-selftest on %s\n", qlab_cuda_device_name());
    selftest_quant();
    selftest_gemv();
    selftest_adamw();
    printf("%d passed, %d failed\n", selftest_passed, selftest_failed);
    return selftest_failed ? 1 : 0;
}
