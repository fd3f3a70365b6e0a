/* The CUDA kernel bodies run on the CPU through the emulation (kernels/cuda_emu.h), against the plain C
 * references: 4-bit quantize/dequantize (with and without double quantization) bit for bit with
 * core/quant/quant.c, the fused 4-bit gemv against dequantize-then-matmul within the fp32 summation bound,
 * AdamW bit for bit with a C loop in the same operation order and with core/model/optim.c. Needs no nvcc. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tests/check.h"
#include "core/base/common.h"
#include "kernels/cuda_emu.h"
#include "core/base/half.h"
#include "core/model/optim.h"
#include "core/quant/quant.h"
#include "core/quant/quant_kernels.h"
#include "core/base/rng.h"

/* ---------------------------------------------------------------- the emulation itself */

typedef struct {
    int *hits;       /* (grid * block) how often each (block, thread) ran phase 1 */
    int *sums;       /* (grid) per-block sum written by thread 0 in phase 2 */
    int *shared_bad; /* set when phase 2 sees a shared slot phase 1 did not write */
} emu_probe_args;

static void emu_probe_phase1(cuda_thread t, void *shared, const void *args) {
    const emu_probe_args *a = args;
    a->hits[t.block * t.block_dim + t.thread]++;
    ((int *)shared)[t.thread] = t.block + t.thread;
}

static void emu_probe_phase2(cuda_thread t, void *shared, const void *args) {
    const emu_probe_args *a = args;
    if (t.thread != 0) return;
    int sum = 0;
    for (int i = 0; i < t.block_dim; i++) {
        int v = ((int *)shared)[i];
        if (v != t.block + i) *a->shared_bad = 1;
        sum += v;
    }
    a->sums[t.block] = sum;
}

static void test_launch(void) {
    const int grid = 37, block = 64;
    int *hits = calloc((size_t)grid * block, sizeof(int)), *sums = calloc(grid, sizeof(int)), bad = 0;
    emu_probe_args a = {hits, sums, &bad};
    const cuda_emu_phase phases[] = {emu_probe_phase1, emu_probe_phase2};
    CHECK(cuda_emu_launch(grid, block, block * sizeof(int), phases, 2, &a) == QLAB_OK);
    int once = 1, sums_ok = 1;
    for (int i = 0; i < grid * block; i++)
        once &= hits[i] == 1;
    for (int b = 0; b < grid; b++)
        sums_ok &= sums[b] == block * b + block * (block - 1) / 2;
    CHECKF(once, "every (block, thread) runs each phase exactly once");
    CHECKF(sums_ok && !bad, "phase 2 sees all of phase 1's shared-memory writes of its own block");
    CHECK(cuda_emu_launch(1, 2048, 0, phases, 2, &a) == QLAB_ERR_ARG); /* more threads than a GPU block */
    CHECK(cuda_emu_launch(1, 32, 1 << 20, phases, 2, &a) == QLAB_ERR_ARG);
    free(hits);
    free(sums);
}

/* ---------------------------------------------------------------- AdamW */

/* The reference: the same formula in the same operation order as optim_cuda_adamw_element, written as
 * the textbook loop (decoupled weight decay, bias-corrected moments). */
static void adamw_reference(float *p, const float *g, float *m, float *v, int64_t n,
                            const optim_cuda_adamw_hyper *h, int64_t step) {
    float one_minus_beta1 = (float)(1.0 - (double)h->beta1),
          one_minus_beta2 = (float)(1.0 - (double)h->beta2);
    float decay = (float)(1.0 - (double)h->lr * (double)h->weight_decay);
    float step_size = (float)((double)h->lr / (1.0 - pow((double)h->beta1, (double)step)));
    float bias2_sqrt = (float)sqrt(1.0 - pow((double)h->beta2, (double)step));
    for (int64_t i = 0; i < n; i++) {
        m[i] = h->beta1 * m[i] + one_minus_beta1 * g[i];
        v[i] = h->beta2 * v[i] + one_minus_beta2 * g[i] * g[i];
        float denom = sqrtf(v[i]) / bias2_sqrt + h->eps;
        p[i] = p[i] * decay - step_size * (m[i] / denom);
    }
}

static void test_adamw(void) {
    /* 1.2M elements: more than OPTIM_CUDA_ADAMW_MAX_BLOCKS * 256, so the grid-stride loop wraps. */
    const int64_t lengths[] = {1, 2, 7, 255, 256, 257, 1000, 100003, 1200001};
    const optim_cuda_adamw_hyper h = {
        .lr = 2e-4f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.01f};
    rng_state r;
    rng_seed(&r, 1234);
    for (size_t li = 0; li < sizeof lengths / sizeof lengths[0]; li++) {
        int64_t n = lengths[li];
        float *p = malloc(n * sizeof(float)), *g = malloc(n * sizeof(float));
        float *m = calloc(n, sizeof(float)), *v = calloc(n, sizeof(float));
        float *p2 = malloc(n * sizeof(float)), *m2 = calloc(n, sizeof(float)), *v2 = calloc(n, sizeof(float));
        float *p3 = malloc(n * sizeof(float)), *m3 = calloc(n, sizeof(float)), *v3 = calloc(n, sizeof(float));
        for (int64_t i = 0; i < n; i++)
            p[i] = (float)rng_normal(&r) * 0.02f;
        memcpy(p2, p, n * sizeof(float));
        memcpy(p3, p, n * sizeof(float));
        const optim_adamw_hyper h3 = {h.lr, h.beta1, h.beta2, h.eps, h.weight_decay};
        int ok = 1, ok3 = 1;
        for (int64_t step = 1; step <= 3; step++) {
            for (int64_t i = 0; i < n; i++)
                g[i] = (i % 17 == 0) ? 0.0f : (float)rng_normal(&r) * 1e-3f;
            ok &= cuda_emu_adamw_step(p, g, m, v, n, &h, step) == QLAB_OK;
            adamw_reference(p2, g, m2, v2, n, &h, step);
            ok3 &= optim_adamw_update(p3, g, m3, v3, (size_t)n, &h3, step) == QLAB_OK;
        }
        /* Bit-exact with core/model/optim.c too: it documents the same fp32 operations in the same order. */
        CHECKF(ok3 && memcmp(p, p3, n * sizeof(float)) == 0 && memcmp(m, m3, n * sizeof(float)) == 0 &&
                   memcmp(v, v3, n * sizeof(float)) == 0,
               "AdamW emulation == optim_adamw_update bit for bit, n=%lld", (long long)n);
        free(p3), free(m3), free(v3);
        /* Bit-exact: same operations in the same order, each rounded once to fp32. */
        CHECKF(ok && memcmp(p, p2, n * sizeof(float)) == 0 && memcmp(m, m2, n * sizeof(float)) == 0 &&
                   memcmp(v, v2, n * sizeof(float)) == 0,
               "AdamW emulation == C reference bit for bit, n=%lld", (long long)n);
        free(p), free(g), free(m), free(v), free(p2), free(m2), free(v2);
    }
    CHECK(cuda_emu_adamw_step(NULL, NULL, NULL, NULL, 0, &h, 1) == QLAB_OK);
    CHECK(cuda_emu_adamw_step(NULL, NULL, NULL, NULL, 4, &h, 0) == QLAB_ERR_ARG);
}

/* ---------------------------------------------------------------- 4-bit quantization */

static const quant_dtype absmax_types[] = {QUANT_NF4,      QUANT_FP4,  QUANT_FP4_E2M1,
                                           QUANT_FP4_E3M0, QUANT_INT4, QUANT_AF4};
#define N_ABSMAX_TYPES (int)(sizeof absmax_types / sizeof absmax_types[0])

/* Random normal input with the blocks that exercise the corner cases: all zeros, absmax so small its
 * reciprocal overflows, values exactly on decision thresholds (ties must go to the lower code), -0.0,
 * one huge outlier. */
static void fill_input(rng_state *r, float *x, int64_t n, int blocksize, const quant_absmax_spec *spec) {
    for (int64_t i = 0; i < n; i++)
        x[i] = (float)rng_normal(r);
    int64_t nblocks = (n + blocksize - 1) / blocksize;
    for (int64_t b = 0; b < nblocks; b++) {
        int64_t s = b * blocksize, len = n - s < blocksize ? n - s : blocksize;
        switch (b % 6) {
        case 1:
            memset(x + s, 0, len * sizeof(float));
            break;
        case 2:
            for (int64_t i = 0; i < len; i++)
                x[s + i] = (float)rng_normal(r) * 1e-40f;
            break;
        case 3:
            /* absmax 1 (first element), the rest on thresholds: x * (1/1) hits them exactly. */
            x[s] = 1.0f;
            for (int64_t i = 1; i < len; i++) {
                float t = spec->thresholds[rng_below(r, spec->nthresholds)];
                x[s + i] = (spec->sign_magnitude && (i & 1)) ? -t : t;
            }
            break;
        case 4:
            x[s + len / 2] = 3e30f;
            if (len > 1) x[s] = -0.0f;
            break;
        default:
            break;
        }
    }
}

static void test_quantize(void) {
    const int blocksizes[] = {32, 64, 128, 256, 4096};
    const int64_t lengths[] = {1, 2, 3, 31, 32, 63, 64, 65, 127, 1000, 4097, 12345, 70001};
    rng_state r;
    rng_seed(&r, 42);
    for (int ti = 0; ti < N_ABSMAX_TYPES; ti++) {
        quant_dtype dt = absmax_types[ti];
        const quant_absmax_spec *spec = quant_absmax_spec_get(dt);
        int all_ok = 1, checked = 0;
        for (size_t bi = 0; bi < sizeof blocksizes / sizeof blocksizes[0]; bi++) {
            for (size_t li = 0; li < sizeof lengths / sizeof lengths[0]; li++) {
                int bs = blocksizes[bi];
                int64_t n = lengths[li], nblocks = (n + bs - 1) / bs;
                float *x = malloc(n * sizeof(float)), *am = malloc(nblocks * sizeof(float));
                float *am_ref = malloc(nblocks * sizeof(float));
                uint8_t *c = malloc((n + 1) / 2), *c_ref = malloc((n + 1) / 2);
                fill_input(&r, x, n, bs, spec);
                memset(c, 0xee, (n + 1) / 2); /* a byte the kernel forgets to write cannot match */
                int ok = cuda_emu_quantize_absmax(dt, x, n, bs, c, am) == QLAB_OK;
                ok &= quant_kernels_scalar.quantize_absmax(spec, x, n, bs, 0, nblocks, c_ref, am_ref) == -1;
                ok &= memcmp(c, c_ref, (n + 1) / 2) == 0 && memcmp(am, am_ref, nblocks * sizeof(float)) == 0;
                if (!ok)
                    fprintf(stderr, "  %s blocksize %d n %lld: codes or absmax differ\n",
                            quant_dtype_name(dt), bs, (long long)n);
                all_ok &= ok;
                checked++;
                free(x), free(am), free(am_ref), free(c), free(c_ref);
            }
        }
        /* Bit-exact: the body performs the reference's operations (reciprocal multiply, 2^64 pre-scale,
         * strict > thresholds) in the same fp32 rounding. */
        CHECKF(all_ok, "emulated quantize == scalar reference for %s over %d shapes", quant_dtype_name(dt),
               checked);
    }
    float x[4] = {1, 2, 3, 4};
    uint8_t c[2];
    float am[1];
    CHECK(cuda_emu_quantize_absmax(QUANT_MXFP4, x, 4, 32, c, am) == QLAB_ERR_ARG);
    CHECK(cuda_emu_quantize_absmax(QUANT_NF4, x, 4, 48, c, am) == QLAB_ERR_ARG);
}

static int same_tensor(const quant_tensor *a, const quant_tensor *b) {
    if (a->dtype != b->dtype || a->blocksize != b->blocksize || a->n != b->n || a->nblocks != b->nblocks ||
        a->double_quant != b->double_quant)
        return 0;
    if (memcmp(a->codes, b->codes, (size_t)(a->n + 1) / 2) != 0) return 0;
    if (!a->double_quant) return memcmp(a->absmax, b->absmax, sizeof(float) * (size_t)a->nblocks) == 0;
    return a->dq_nblocks == b->dq_nblocks && memcmp(&a->dq_offset, &b->dq_offset, sizeof(float)) == 0 &&
           memcmp(a->dq_codes, b->dq_codes, (size_t)a->nblocks) == 0 &&
           memcmp(a->dq_absmax, b->dq_absmax, sizeof(float) * (size_t)a->dq_nblocks) == 0;
}

/* The whole quantize path (driver + both kernel levels) against quant_tensor_quantize_ref. */
static void test_quantize_tensor(void) {
    /* 64 * 256 * 3 + 5 elements: three second-level blocks, the last one partial. */
    const int64_t lengths[] = {1, 3, 64, 1000, 64 * 256 * 3 + 5};
    rng_state r;
    rng_seed(&r, 99);
    for (int ti = 0; ti < N_ABSMAX_TYPES; ti++) {
        quant_dtype dt = absmax_types[ti];
        int ok = 1;
        for (int dq = 0; dq <= 1; dq++)
            for (size_t li = 0; li < sizeof lengths / sizeof lengths[0]; li++) {
                int64_t n = lengths[li];
                int bs = li & 1 ? 32 : 64;
                float *x = malloc(n * sizeof(float));
                fill_input(&r, x, n, bs, quant_absmax_spec_get(dt));
                /* Scale some blocks so the first-level absmax spread, and thus the DQ codes, vary. */
                for (int64_t i = 0; i < n; i++)
                    x[i] *= (float)(1 + (i / bs) % 5);
                quant_tensor a, b;
                int st = cuda_emu_quantize(&a, x, n, dt, bs, dq) == QLAB_OK;
                st &= quant_tensor_quantize_ref(&b, x, n, dt, bs, dq) == QLAB_OK;
                ok &= st && same_tensor(&a, &b);
                quant_tensor_free(&a);
                quant_tensor_free(&b);
                free(x);
            }
        /* Bit-exact: same first-level arithmetic, the offset from the same host code order, and the
         * second level's binary search and midpoint rule transcribed from quant.c. */
        CHECKF(ok, "emulated quantize (with/without DQ) == quant_tensor_quantize_ref for %s",
               quant_dtype_name(dt));
    }
    /* Second-level ties: first-level absmax values a = 0.5 +- m/2 for midpoints m of the dynamic map, plus
     * one 0 and one 1, so that offset = 0.5, the DQ absmax = 0.5 and the scaled value (a - 0.5) * 2 = m
     * exactly. Each block holds its absmax in element 0. Only midpoints for which that is exact are used. */
    const float *map = quant_dynamic_map_signed();
    const int bs = 32;
    float values[256];
    int count = 0;
    values[count++] = 0.0f;
    values[count++] = 1.0f;
    for (int i = 0; i + 1 < 256 && count + 2 <= 256; i++) {
        float m = (map[i] + map[i + 1]) * 0.5f, hi = 0.5f + m * 0.5f, lo = 0.5f - m * 0.5f;
        if (m <= 0.0f || (hi - 0.5f) * 2.0f != m || (lo - 0.5f) * 2.0f != -m) continue;
        values[count++] = hi;
        values[count++] = lo;
    }
    CHECKF(count > 40, "found %d exact dynamic-map ties to test", count - 2);
    float *tie = calloc((size_t)count * bs, sizeof(float));
    for (int b = 0; b < count; b++)
        tie[b * bs] = values[b];
    quant_tensor ta, tb;
    int tie_ok = cuda_emu_quantize(&ta, tie, count * bs, QUANT_NF4, bs, 1) == QLAB_OK;
    tie_ok &= quant_tensor_quantize_ref(&tb, tie, count * bs, QUANT_NF4, bs, 1) == QLAB_OK;
    CHECK(tie_ok && tb.dq_offset == 0.5f && tb.dq_absmax[0] == 0.5f);
    CHECKF(tie_ok && same_tensor(&ta, &tb), "second-level codes on exact dynamic-map midpoints == reference");
    quant_tensor_free(&ta);
    quant_tensor_free(&tb);
    free(tie);

    float bad[5] = {1, 2, NAN, 4, 5};
    quant_tensor q;
    CHECK(cuda_emu_quantize(&q, bad, 5, QUANT_NF4, 64, 1) == QLAB_ERR_NUMERIC);
    CHECK(strstr(qlab_last_error(), "element 2") != NULL);
    CHECK(cuda_emu_quantize(&q, bad, 2, QUANT_MXFP4, 32, 0) == QLAB_ERR_UNSUPPORTED);
}

static void test_dequantize(void) {
    const int64_t lengths[] = {1, 2, 5, 64, 65, 1001, 64 * 256 + 3, 64 * 600 + 1};
    rng_state r;
    rng_seed(&r, 7);
    for (int ti = 0; ti < N_ABSMAX_TYPES; ti++) {
        quant_dtype dt = absmax_types[ti];
        int ok_f32 = 1, ok_bf16 = 1, ok_scale = 1;
        for (int dq = 0; dq <= 1; dq++) {
            for (size_t li = 0; li < sizeof lengths / sizeof lengths[0]; li++) {
                int64_t n = lengths[li];
                int bs = li & 1 ? 64 : 256;
                float *x = malloc(n * sizeof(float)), *out = malloc(n * sizeof(float)),
                      *ref = malloc(n * sizeof(float));
                uint16_t *o16 = malloc(n * 2), *r16 = malloc(n * 2);
                fill_input(&r, x, n, bs, quant_absmax_spec_get(dt));
                quant_tensor qt;
                if (quant_tensor_quantize_ref(&qt, x, n, dt, bs, dq) != QLAB_OK) {
                    CHECKF(0, "reference quantize failed: %s", qlab_last_error());
                    free(x), free(out), free(ref), free(o16), free(r16);
                    continue;
                }
                /* Every code value, including ones the quantizer never writes (Int4's code 0). */
                if (li % 3 == 0)
                    for (int64_t j = 0; j < (n + 1) / 2; j++)
                        qt.codes[j] = (uint8_t)rng_below(&r, 256);
                memset(out, 0xee, n * sizeof(float));
                memset(o16, 0xee, n * 2);
                ok_f32 &= cuda_emu_dequantize(&qt, out, NULL) == QLAB_OK;
                ok_bf16 &= cuda_emu_dequantize(&qt, NULL, o16) == QLAB_OK;
                quant_tensor_dequantize_ref(&qt, ref);
                quant_tensor_dequantize_bf16(&qt, r16);
                ok_f32 &= memcmp(out, ref, n * sizeof(float)) == 0;
                ok_bf16 &= memcmp(o16, r16, n * 2) == 0;
                /* With every code set to the code of 1.0, the output is the block scale itself: the kernel's
                 * absmax (and DQ decode) against quant_tensor_block_scale. */
                int one = 0;
                while (quant_absmax_spec_get(dt)->table[one] != 1.0f)
                    one++;
                memset(qt.codes, (one << 4) | one, (n + 1) / 2);
                ok_scale &= cuda_emu_dequantize(&qt, out, NULL) == QLAB_OK;
                for (int64_t b = 0; b < qt.nblocks; b++)
                    ok_scale &= out[b * bs] == quant_tensor_block_scale(&qt, b);
                quant_tensor_free(&qt);
                free(x), free(out), free(ref), free(o16), free(r16);
            }
        }
        /* Bit-exact: one fp32 multiply per element (and the same two roundings for the DQ absmax). */
        CHECKF(ok_f32, "emulated dequantize fp32 == reference for %s, with and without DQ",
               quant_dtype_name(dt));
        CHECKF(ok_bf16, "emulated dequantize bf16 == reference for %s, with and without DQ",
               quant_dtype_name(dt));
        CHECKF(ok_scale, "emulated block scales == quant_tensor_block_scale for %s", quant_dtype_name(dt));
    }
}

/* ---------------------------------------------------------------- fused 4-bit gemv */

static void test_gemv(void) {
    const int64_t shapes[][2] = {{1, 1}, {3, 5}, {17, 64}, {64, 257}, {5, 4096}, {256, 1024}};
    const int batches[] = {1, 3, 8};
    rng_state r;
    rng_seed(&r, 2024);
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        int64_t rows = shapes[si][0], cols = shapes[si][1], n = rows * cols;
        for (int dq = 0; dq <= 1; dq++) {
            float *w = malloc(n * sizeof(float)), *wd = malloc(n * sizeof(float));
            for (int64_t i = 0; i < n; i++)
                w[i] = (float)rng_normal(&r) * 0.05f;
            quant_tensor qt;
            if (quant_tensor_quantize_ref(&qt, w, n, QUANT_NF4, 64, dq) != QLAB_OK) {
                CHECKF(0, "reference quantize failed: %s", qlab_last_error());
                free(w), free(wd);
                continue;
            }
            quant_tensor_dequantize_ref(&qt, wd);
            for (size_t bi = 0; bi < sizeof batches / sizeof batches[0]; bi++) {
                int batch = batches[bi];
                float *x = malloc(batch * cols * sizeof(float)), *y = malloc(batch * rows * sizeof(float));
                for (int64_t i = 0; i < batch * cols; i++)
                    x[i] = (float)rng_normal(&r);
                CHECK(cuda_emu_gemv_4bit(&qt, rows, cols, x, batch, y) == QLAB_OK);
                double worst = 0;
                int ok = 1;
                for (int bt = 0; bt < batch; bt++)
                    for (int64_t row = 0; row < rows; row++) {
                        double exact = 0, magnitude = 0;
                        for (int64_t k = 0; k < cols; k++) {
                            double term = (double)wd[row * cols + k] * x[bt * cols + k];
                            exact += term;
                            magnitude += fabs(term);
                        }
                        /* The kernel sums in fp32 in a different order from this double-precision dot product
                         * of the same dequantized weights: the standard bound for fp32 summation of cols
                         * terms is cols * 2^-24 * sum|terms| (each term's FMA and each addition err by at
                         * most half an ulp); in practice the error is far smaller. */
                        double tol = (double)cols * 0x1p-24 * magnitude + 1e-30;
                        double err = fabs((double)y[bt * rows + row] - exact);
                        if (err > tol) ok = 0;
                        if (err / tol > worst) worst = err / tol;
                    }
                CHECKF(ok, "gemv %lldx%lld batch %d dq %d within the fp32 summation bound (worst %.3g of it)",
                       (long long)rows, (long long)cols, batch, dq, worst);
                free(x), free(y);
            }
            quant_tensor_free(&qt);
            free(w), free(wd);
        }
    }
    quant_tensor qt;
    float w[6] = {1, 2, 3, 4, 5, 6}, x[3] = {1, 1, 1}, y[2];
    CHECK(quant_tensor_quantize_ref(&qt, w, 6, QUANT_NF4, 64, 0) == QLAB_OK);
    CHECK(cuda_emu_gemv_4bit(&qt, 2, 3, x, 1, y) == QLAB_OK);
    CHECK(cuda_emu_gemv_4bit(&qt, 2, 4, x, 1, y) == QLAB_ERR_ARG); /* shape does not match n */
    CHECK(cuda_emu_gemv_4bit(&qt, 2, 3, x, 9, y) == QLAB_ERR_ARG); /* batch above 8 */
    quant_tensor_free(&qt);
}

int main(void) {
    test_launch();
    test_adamw();
    test_quantize();
    test_quantize_tensor();
    test_dequantize();
    test_gemv();
    return check_summary();
}
