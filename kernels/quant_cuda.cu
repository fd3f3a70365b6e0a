/* 4-bit blockwise quantization on the GPU: __global__ wrappers around the bodies of
 * kernels/quant_cuda_body.h (__syncthreads() between phases), the device back end of
 * kernels/quant_cuda_driver.c, device-resident weights and the fused 4-bit gemv of the QLoRA forward. */
#include "kernels/cuda_internal.h"
#include "kernels/quant_cuda_body.h"
#include "kernels/quant_cuda_driver.h"

/* ---------------------------------------------------------------- kernels */

__global__ void quant_cuda_quantize_kernel(const __grid_constant__ quant_cuda_quantize_args a) {
    __shared__ quant_cuda_quantize_shared s;
    cuda_thread t = CUDA_THIS_THREAD();
    quant_cuda_quantize_phase_max(t, &s, &a);
    __syncthreads();
    quant_cuda_quantize_phase_scale(t, &s, &a);
    __syncthreads();
    quant_cuda_quantize_phase_encode(t, &s, &a);
}

__global__ void quant_cuda_double_quantize_kernel(const __grid_constant__ quant_cuda_dq_args a) {
    __shared__ quant_cuda_dq_shared s;
    cuda_thread t = CUDA_THIS_THREAD();
    quant_cuda_dq_phase_center(t, &s, &a);
    __syncthreads();
    quant_cuda_dq_phase_scale(t, &s, &a);
    __syncthreads();
    quant_cuda_dq_phase_encode(t, &s, &a);
}

__global__ void quant_cuda_dequantize_kernel(const __grid_constant__ quant_cuda_dequantize_args a) {
    quant_cuda_dequantize_phase(CUDA_THIS_THREAD(), nullptr, &a);
}

__global__ void quant_cuda_gemv_kernel(const __grid_constant__ quant_cuda_gemv_args a) {
    __shared__ quant_cuda_gemv_shared s;
    cuda_thread t = CUDA_THIS_THREAD();
    quant_cuda_gemv_phase_dot(t, &s, &a);
    __syncthreads();
    quant_cuda_gemv_phase_sum(t, &s, &a);
}

/* ---------------------------------------------------------------- device basics */

extern "C" int qlab_cuda_available(void) {
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return count > 0;
}

extern "C" const char *qlab_cuda_device_name(void) {
    static cudaDeviceProp prop;
    if (!qlab_cuda_available() || cudaGetDeviceProperties(&prop, 0) != cudaSuccess) return "none";
    return prop.name;
}

/* The signed dynamic map in device memory, uploaded once (1 KB, kept for the life of the process). */
static qlab_status quant_cuda_device_map(const float **map) {
    static float *device_map;
    if (!device_map) {
        float *p = nullptr;
        CUDA_TRY(cudaMalloc((void **)&p, 256 * sizeof(float)));
        cudaError_t err =
            cudaMemcpy(p, quant_dynamic_map_signed(), 256 * sizeof(float), cudaMemcpyHostToDevice);
        if (err != cudaSuccess) {
            cudaFree(p);
            CUDA_TRY(err);
        }
        device_map = p;
    }
    *map = device_map;
    return QLAB_OK;
}

/* Device allocations of one host call, freed together on every exit path. */
typedef struct {
    void *ptr[8];
    int count;
} quant_cuda_buffers;

static qlab_status quant_cuda_alloc(quant_cuda_buffers *b, void **out, size_t bytes) {
    *out = nullptr;
    CUDA_TRY(cudaMalloc(out, bytes > 0 ? bytes : 1));
    b->ptr[b->count++] = *out;
    return QLAB_OK;
}

static void quant_cuda_free_all(quant_cuda_buffers *b) {
    for (int i = 0; i < b->count; i++)
        cudaFree(b->ptr[i]);
    b->count = 0;
}

/* ---------------------------------------------------------------- quantize (driver back end) */

static qlab_status quant_cuda_run_quantize(const quant_absmax_spec *spec, const float *x, int64_t n,
                                           int blocksize, uint8_t *codes, float *absmax,
                                           quant_cuda_buffers *buf) {
    int64_t nblocks = (n + blocksize - 1) / blocksize;
    size_t code_bytes = (size_t)(n + 1) / 2;
    quant_cuda_quantize_args a = {};
    a.spec = *spec;
    a.n = n;
    a.blocksize = blocksize;
    QLAB_TRY(quant_cuda_alloc(buf, (void **)&a.x, sizeof(float) * (size_t)n));
    QLAB_TRY(quant_cuda_alloc(buf, (void **)&a.codes, code_bytes));
    QLAB_TRY(quant_cuda_alloc(buf, (void **)&a.absmax, sizeof(float) * (size_t)nblocks));
    CUDA_TRY(cudaMemcpy((void *)a.x, x, sizeof(float) * (size_t)n, cudaMemcpyHostToDevice));
    quant_cuda_quantize_kernel<<<(unsigned)nblocks, quant_cuda_quantize_threads(blocksize)>>>(a);
    CUDA_TRY_LAUNCH("quant_cuda_quantize_kernel");
    CUDA_TRY(cudaMemcpy(codes, a.codes, code_bytes, cudaMemcpyDeviceToHost));
    CUDA_TRY(cudaMemcpy(absmax, a.absmax, sizeof(float) * (size_t)nblocks, cudaMemcpyDeviceToHost));
    return QLAB_OK;
}

static qlab_status quant_cuda_backend_quantize(void *ctx, const quant_absmax_spec *spec, const float *x,
                                               int64_t n, int blocksize, uint8_t *codes, float *absmax) {
    (void)ctx;
    quant_cuda_buffers buf = {};
    qlab_status st = quant_cuda_run_quantize(spec, x, n, blocksize, codes, absmax, &buf);
    quant_cuda_free_all(&buf);
    return st;
}

static qlab_status quant_cuda_run_double_quantize(const float *absmax, int64_t nblocks, float offset,
                                                  uint8_t *dq_codes, float *dq_absmax,
                                                  quant_cuda_buffers *buf) {
    int64_t grid = (nblocks + QUANT_DQ_BLOCKSIZE - 1) / QUANT_DQ_BLOCKSIZE;
    quant_cuda_dq_args a = {};
    a.nblocks = nblocks;
    a.offset = offset;
    a.zero_code = quant_cuda_dynamic_zero_code();
    QLAB_TRY(quant_cuda_device_map(&a.map));
    QLAB_TRY(quant_cuda_alloc(buf, (void **)&a.absmax, sizeof(float) * (size_t)nblocks));
    QLAB_TRY(quant_cuda_alloc(buf, (void **)&a.dq_codes, (size_t)nblocks));
    QLAB_TRY(quant_cuda_alloc(buf, (void **)&a.dq_absmax, sizeof(float) * (size_t)grid));
    CUDA_TRY(cudaMemcpy((void *)a.absmax, absmax, sizeof(float) * (size_t)nblocks, cudaMemcpyHostToDevice));
    quant_cuda_double_quantize_kernel<<<(unsigned)grid, QUANT_DQ_BLOCKSIZE>>>(a);
    CUDA_TRY_LAUNCH("quant_cuda_double_quantize_kernel");
    CUDA_TRY(cudaMemcpy(dq_codes, a.dq_codes, (size_t)nblocks, cudaMemcpyDeviceToHost));
    CUDA_TRY(cudaMemcpy(dq_absmax, a.dq_absmax, sizeof(float) * (size_t)grid, cudaMemcpyDeviceToHost));
    return QLAB_OK;
}

static qlab_status quant_cuda_backend_double_quantize(void *ctx, const float *absmax, int64_t nblocks,
                                                      float offset, uint8_t *dq_codes, float *dq_absmax) {
    (void)ctx;
    quant_cuda_buffers buf = {};
    qlab_status st = quant_cuda_run_double_quantize(absmax, nblocks, offset, dq_codes, dq_absmax, &buf);
    quant_cuda_free_all(&buf);
    return st;
}

extern "C" qlab_status qlab_cuda_quantize(quant_tensor *qt, const float *x, int64_t n, quant_dtype dt,
                                          int blocksize, int double_quant) {
    const quant_cuda_backend backend = {nullptr, quant_cuda_backend_quantize,
                                        quant_cuda_backend_double_quantize};
    return quant_cuda_quantize_with(&backend, qt, x, n, dt, blocksize, double_quant);
}

/* ---------------------------------------------------------------- device-resident weights */

extern "C" void qlab_cuda_weight_free(qlab_cuda_weight *w) {
    cudaFree(w->codes);
    cudaFree(w->absmax);
    cudaFree(w->dq_codes);
    cudaFree(w->dq_absmax);
    cudaFree(w->dq_map);
    *w = qlab_cuda_weight{};
}

static qlab_status quant_cuda_upload(void **dst, const void *src, size_t bytes) {
    CUDA_TRY(cudaMalloc(dst, bytes > 0 ? bytes : 1));
    CUDA_TRY(cudaMemcpy(*dst, src, bytes, cudaMemcpyHostToDevice));
    return QLAB_OK;
}

static qlab_status quant_cuda_weight_upload_parts(qlab_cuda_weight *w, const quant_tensor *qt) {
    QLAB_TRY(quant_cuda_upload((void **)&w->codes, qt->codes, (size_t)(qt->n + 1) / 2));
    if (!qt->double_quant)
        return quant_cuda_upload((void **)&w->absmax, qt->absmax, sizeof(float) * (size_t)qt->nblocks);
    QLAB_TRY(quant_cuda_upload((void **)&w->dq_codes, qt->dq_codes, (size_t)qt->nblocks));
    QLAB_TRY(quant_cuda_upload((void **)&w->dq_map, quant_tensor_dq_map(qt), 256 * sizeof(float)));
    return quant_cuda_upload((void **)&w->dq_absmax, qt->dq_absmax, sizeof(float) * (size_t)qt->dq_nblocks);
}

extern "C" qlab_status qlab_cuda_weight_upload(qlab_cuda_weight *w, const quant_tensor *qt) {
    *w = qlab_cuda_weight{};
    if (!qt || !quant_dtype_has_fp32_absmax(qt->dtype))
        return qlab_fail(QLAB_ERR_UNSUPPORTED, "qlab_cuda_weight_upload: %s is not an absmax type",
                         qt ? quant_dtype_name(qt->dtype) : "(null)");
    QLAB_TRY(quant_check_blocksize(qt->dtype, qt->blocksize)); /* the kernels shift by log2(blocksize) */
    w->dtype = qt->dtype;
    w->blocksize = qt->blocksize;
    w->n = qt->n;
    w->nblocks = qt->nblocks;
    w->double_quant = qt->double_quant;
    w->dq_offset = qt->dq_offset;
    for (int c = 0; c < 16; c++)
        w->table[c] = quant_tensor_codebook(qt)[c];
    qlab_status st = quant_cuda_weight_upload_parts(w, qt);
    if (st != QLAB_OK) qlab_cuda_weight_free(w);
    return st;
}

static qlab_status quant_cuda_weight_scales(const qlab_cuda_weight *w, float table[16],
                                            quant_cuda_scales *s) {
    const quant_absmax_spec *spec = quant_absmax_spec_get(w->dtype);
    if (!spec)
        return qlab_fail(QLAB_ERR_UNSUPPORTED, "cuda: %s is not an absmax type", quant_dtype_name(w->dtype));
    for (int c = 0; c < 16; c++)
        table[c] = w->table[c];
    *s = quant_cuda_scales{};
    s->absmax = w->double_quant ? nullptr : w->absmax;
    s->dq_codes = w->dq_codes;
    s->dq_absmax = w->dq_absmax;
    s->dq_offset = w->dq_offset;
    s->dq_map = w->dq_map; /* the tensor's own map (a file's stored one may differ by a few ulp) */
    return QLAB_OK;
}

/* ---------------------------------------------------------------- dequantize */

static qlab_status quant_cuda_run_dequantize(const quant_tensor *qt, float *out, uint16_t *out_bf16,
                                             qlab_cuda_weight *w, quant_cuda_buffers *buf) {
    QLAB_TRY(qlab_cuda_weight_upload(w, qt));
    quant_cuda_dequantize_args a = {};
    QLAB_TRY(quant_cuda_weight_scales(w, a.table, &a.scales));
    a.codes = w->codes;
    a.n = qt->n;
    a.blocksize_log2 = quant_cuda_log2(qt->blocksize);
    size_t bytes = (size_t)qt->n * (out ? sizeof(float) : sizeof(uint16_t));
    void *device_out = nullptr;
    QLAB_TRY(quant_cuda_alloc(buf, &device_out, bytes));
    if (out)
        a.out = (float *)device_out;
    else
        a.out_bf16 = (uint16_t *)device_out;
    quant_cuda_dequantize_kernel<<<quant_cuda_dequantize_blocks(qt->n), QUANT_CUDA_DEQUANT_THREADS>>>(a);
    CUDA_TRY_LAUNCH("quant_cuda_dequantize_kernel");
    CUDA_TRY(cudaMemcpy(out ? (void *)out : (void *)out_bf16, device_out, bytes, cudaMemcpyDeviceToHost));
    return QLAB_OK;
}

static qlab_status quant_cuda_dequantize_host(const quant_tensor *qt, float *out, uint16_t *out_bf16) {
    if (!qt) return qlab_fail(QLAB_ERR_ARG, "qlab_cuda_dequantize: no tensor");
    if (qt->n == 0) return QLAB_OK;
    qlab_cuda_weight w = {};
    quant_cuda_buffers buf = {};
    qlab_status st = quant_cuda_run_dequantize(qt, out, out_bf16, &w, &buf);
    quant_cuda_free_all(&buf);
    qlab_cuda_weight_free(&w);
    return st;
}

extern "C" qlab_status qlab_cuda_dequantize(const quant_tensor *qt, float *out) {
    return quant_cuda_dequantize_host(qt, out, nullptr);
}

extern "C" qlab_status qlab_cuda_dequantize_bf16(const quant_tensor *qt, uint16_t *out) {
    return quant_cuda_dequantize_host(qt, nullptr, out);
}

/* ---------------------------------------------------------------- fused 4-bit gemv */

extern "C" qlab_status qlab_cuda_gemv_4bit(const qlab_cuda_weight *w, int64_t rows, int64_t cols,
                                           const float *x, int batch, float *y) {
    if (rows < 1 || cols < 1 || rows > INT32_MAX || rows > w->n / cols || rows * cols != w->n)
        return qlab_fail(QLAB_ERR_ARG,
                         "qlab_cuda_gemv_4bit: shape %lld x %lld does not match the weight's %lld elements",
                         (long long)rows, (long long)cols, (long long)w->n);
    if (batch < 1 || batch > QUANT_CUDA_GEMV_MAX_BATCH)
        return qlab_fail(QLAB_ERR_ARG, "qlab_cuda_gemv_4bit: batch %d (1..%d)", batch,
                         QUANT_CUDA_GEMV_MAX_BATCH);
    quant_cuda_gemv_args a = {};
    QLAB_TRY(quant_cuda_weight_scales(w, a.table, &a.scales));
    a.codes = w->codes;
    a.blocksize_log2 = quant_cuda_log2(w->blocksize);
    a.rows = rows;
    a.cols = cols;
    a.batch = batch;
    a.x = x;
    a.y = y;
    quant_cuda_gemv_kernel<<<(unsigned)rows, QUANT_CUDA_GEMV_THREADS>>>(a);
    CUDA_TRY_LAUNCH("quant_cuda_gemv_kernel");
    return QLAB_OK;
}

static_assert(QLAB_CUDA_GEMV_MAX_BATCH == QUANT_CUDA_GEMV_MAX_BATCH, "public and kernel batch limits agree");
