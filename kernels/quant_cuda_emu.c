/* The 4-bit kernel bodies of kernels/quant_cuda.cu run on the CPU through the emulation, with the GPU's
 * launch shapes; tests/test_cuda_emu.c checks them against core/quant/quant.c's reference. */
#include <limits.h>
#include <math.h>

#include "kernels/cuda_emu.h"
#include "kernels/quant_cuda_body.h"
#include "kernels/quant_cuda_driver.h"

static void quantize_phase_max(cuda_thread t, void *shared, const void *args) {
    quant_cuda_quantize_phase_max(t, shared, args);
}
static void quantize_phase_scale(cuda_thread t, void *shared, const void *args) {
    quant_cuda_quantize_phase_scale(t, shared, args);
}
static void quantize_phase_encode(cuda_thread t, void *shared, const void *args) {
    quant_cuda_quantize_phase_encode(t, shared, args);
}
static void dq_phase_center(cuda_thread t, void *shared, const void *args) {
    quant_cuda_dq_phase_center(t, shared, args);
}
static void dq_phase_scale(cuda_thread t, void *shared, const void *args) {
    quant_cuda_dq_phase_scale(t, shared, args);
}
static void dq_phase_encode(cuda_thread t, void *shared, const void *args) {
    quant_cuda_dq_phase_encode(t, shared, args);
}
static void dequantize_phase(cuda_thread t, void *shared, const void *args) {
    quant_cuda_dequantize_phase(t, shared, args);
}
static void gemv_phase_dot(cuda_thread t, void *shared, const void *args) {
    quant_cuda_gemv_phase_dot(t, shared, args);
}
static void gemv_phase_sum(cuda_thread t, void *shared, const void *args) {
    quant_cuda_gemv_phase_sum(t, shared, args);
}

static qlab_status emu_backend_quantize(void *ctx, const quant_absmax_spec *spec, const float *x, int64_t n,
                                        int blocksize, uint8_t *codes, float *absmax) {
    (void)ctx;
    quant_cuda_quantize_args a = {
        .spec = *spec, .x = x, .n = n, .blocksize = blocksize, .codes = codes, .absmax = absmax};
    const cuda_emu_phase phases[] = {quantize_phase_max, quantize_phase_scale, quantize_phase_encode};
    int64_t nblocks = (n + blocksize - 1) / blocksize;
    return cuda_emu_launch((int)nblocks, quant_cuda_quantize_threads(blocksize),
                           sizeof(quant_cuda_quantize_shared), phases, 3, &a);
}

static qlab_status emu_backend_double_quantize(void *ctx, const float *absmax, int64_t nblocks, float offset,
                                               uint8_t *dq_codes, float *dq_absmax) {
    (void)ctx;
    quant_cuda_dq_args a = {.absmax = absmax,
                            .nblocks = nblocks,
                            .offset = offset,
                            .map = quant_dynamic_map_signed(),
                            .zero_code = quant_cuda_dynamic_zero_code(),
                            .dq_codes = dq_codes,
                            .dq_absmax = dq_absmax};
    const cuda_emu_phase phases[] = {dq_phase_center, dq_phase_scale, dq_phase_encode};
    int64_t grid = (nblocks + QUANT_DQ_BLOCKSIZE - 1) / QUANT_DQ_BLOCKSIZE;
    return cuda_emu_launch((int)grid, QUANT_DQ_BLOCKSIZE, sizeof(quant_cuda_dq_shared), phases, 3, &a);
}

qlab_status cuda_emu_quantize_absmax(quant_dtype dt, const float *x, int64_t n, int blocksize, uint8_t *codes,
                                     float *absmax) {
    const quant_absmax_spec *spec = quant_absmax_spec_get(dt);
    if (!spec)
        return qlab_fail(QLAB_ERR_ARG, "cuda_emu_quantize_absmax: %s has no fp32 absmax",
                         quant_dtype_name(dt));
    QLAB_TRY(quant_check_blocksize(dt, blocksize));
    if (n < 0 || (n + blocksize - 1) / blocksize > INT_MAX)
        return qlab_fail(QLAB_ERR_ARG, "cuda_emu_quantize_absmax: n=%lld out of range", (long long)n);
    return n > 0 ? emu_backend_quantize(NULL, spec, x, n, blocksize, codes, absmax) : QLAB_OK;
}

qlab_status cuda_emu_quantize(quant_tensor *qt, const float *x, int64_t n, quant_dtype dt, int blocksize,
                              int double_quant) {
    const quant_cuda_backend backend = {NULL, emu_backend_quantize, emu_backend_double_quantize};
    return quant_cuda_quantize_with(&backend, qt, x, n, dt, blocksize, double_quant);
}

static qlab_status emu_scales(const quant_tensor *qt, float table[16], quant_cuda_scales *s) {
    const quant_absmax_spec *spec = quant_absmax_spec_get(qt->dtype);
    if (!spec)
        return qlab_fail(QLAB_ERR_UNSUPPORTED,
                         "cuda_emu: %s has no fp32 absmax (CUDA kernels cover the absmax types)",
                         quant_dtype_name(qt->dtype));
    QLAB_TRY(quant_check_blocksize(qt->dtype, qt->blocksize)); /* the kernels shift by log2(blocksize) */
    for (int c = 0; c < 16; c++)
        table[c] = quant_tensor_codebook(qt)[c];
    *s = (quant_cuda_scales){.absmax = qt->double_quant ? NULL : qt->absmax,
                             .dq_codes = qt->dq_codes,
                             .dq_absmax = qt->dq_absmax,
                             .dq_map = quant_tensor_dq_map(qt),
                             .dq_offset = qt->dq_offset};
    return QLAB_OK;
}

qlab_status cuda_emu_dequantize(const quant_tensor *qt, float *out, uint16_t *out_bf16) {
    quant_cuda_dequantize_args a = {.codes = qt->codes,
                                    .n = qt->n,
                                    .blocksize_log2 = quant_cuda_log2(qt->blocksize),
                                    .out = out,
                                    .out_bf16 = out_bf16};
    QLAB_TRY(emu_scales(qt, a.table, &a.scales));
    if (qt->n == 0) return QLAB_OK;
    const cuda_emu_phase phases[] = {dequantize_phase};
    return cuda_emu_launch(quant_cuda_dequantize_blocks(qt->n), QUANT_CUDA_DEQUANT_THREADS, 0, phases, 1, &a);
}

qlab_status cuda_emu_gemv_4bit(const quant_tensor *w, int64_t rows, int64_t cols, const float *x, int batch,
                               float *y) {
    if (rows < 1 || cols < 1 || rows > INT_MAX || rows > w->n / cols || rows * cols != w->n)
        return qlab_fail(QLAB_ERR_ARG,
                         "cuda_emu_gemv_4bit: shape %lld x %lld does not match the weight's %lld elements",
                         (long long)rows, (long long)cols, (long long)w->n);
    if (batch < 1 || batch > QUANT_CUDA_GEMV_MAX_BATCH)
        return qlab_fail(QLAB_ERR_ARG, "cuda_emu_gemv_4bit: batch %d (1..%d)", batch,
                         QUANT_CUDA_GEMV_MAX_BATCH);
    quant_cuda_gemv_args a = {.codes = w->codes,
                              .blocksize_log2 = quant_cuda_log2(w->blocksize),
                              .rows = rows,
                              .cols = cols,
                              .batch = batch,
                              .x = x,
                              .y = y};
    QLAB_TRY(emu_scales(w, a.table, &a.scales));
    const cuda_emu_phase phases[] = {gemv_phase_dot, gemv_phase_sum};
    return cuda_emu_launch((int)rows, QUANT_CUDA_GEMV_THREADS, sizeof(quant_cuda_gemv_shared), phases, 2, &a);
}
