/* Host API of the CUDA kernels: 4-bit blockwise (de)quantization, the fused 4-bit matrix-vector product
 * of the QLoRA forward, and paged 32-bit AdamW. Implemented in the .cu files of kernels/; these symbols exist
 * only in programs linked with the CUDA objects (`make cuda`), never in libqlab.a.
 *
 * Design: one body, two compilers.
 *   kernels/cuda_compat.h      macros that make a body valid __device__ code under nvcc and plain C under
 *                              gcc (explicitly rounded fp32 ops, so nvcc's FMA contraction cannot change
 *                              a result; a cuda_thread struct instead of threadIdx/blockIdx).
 *   kernels/<name>_cuda_body.h the kernel bodies. A kernel that needs __syncthreads() is written as a list
 *                              of "phases" (the code between two barriers) that talk only through shared
 *                              memory. The __global__ wrapper in the .cu file calls the phases with
 *                              __syncthreads() between them.
 *   kernels/quant_cuda_driver.c  the host side of quantize (checks, allocation, the double-quantization
 *                              offset), written once for both back ends: the GPU and the emulation.
 *   kernels/cuda_emu.[ch]      runs the same phases on the CPU for every (block, thread) of the grid,
 *                              phase by phase, with per-block shared memory (poisoned with 0xff). The
 *                              emulated launchers (<name>_cuda_emu.c) use the GPU's launch shapes.
 *   tests/test_cuda_emu.c      part of `make test`, needs no nvcc: the emulated kernels against the C
 *                              reference (core/quant/quant.c: bit-exact; gemv and AdamW: see the test).
 *   kernels/cuda_selftest.cu   build/bin/qlab-cuda-selftest: on a machine with a GPU runs every kernel
 *                              against the C reference AND against the emulation (which must agree bit
 *                              for bit, the strongest check that the emulation tests what the GPU runs).
 *
 * Running the self-test on a GPU machine:
 *   make cuda            builds SASS for sm_75 (T4), sm_80 (A100, and by binary compatibility A10/3090/
 *                        4090/L4), sm_90 (H100) plus compute_90 PTX that newer GPUs JIT-compile; for a
 *                        native build pass NVCC_FLAGS with your -gencode (keep -Icore -Ikernels).
 *   build/bin/qlab-cuda-selftest        prints one pass/fail line per kernel, exits 1 on any failure;
 *                                        without a device it prints "no CUDA device: skipped", exits 0.
 *
 * Conventions: functions return qlab_status and record one message (qlab_fail) naming the CUDA call and
 * its error string. Pointers documented as "device" may also be managed memory. */
#ifndef QLAB_CUDA_H
#define QLAB_CUDA_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "core/base/common.h"
#include "core/quant/quant.h"
#ifdef __cplusplus
}
#endif
#include "kernels/optim_cuda_body.h"

#ifdef __cplusplus
extern "C" {
#endif

/* 1 when a CUDA device can be used, 0 otherwise (no driver, no device). Never records an error. */
int qlab_cuda_available(void);
/* Name of device 0, or "none". */
const char *qlab_cuda_device_name(void);

/* ---------------------------------------------------------------- 4-bit blockwise quantization */

/* Same contract and the same bits as quant_tensor_quantize_ref, for every type with an fp32 absmax
 * (quant_dtype_has_fp32_absmax; quant_dtype_list(1) names them): the kernels run on the type's code book and
 * thresholds (quant_absmax_spec_get), so a new absmax row of the descriptor table needs no CUDA change. The
 * codes and first-level absmax are computed on the device. x is host memory. */
qlab_status qlab_cuda_quantize(quant_tensor *qt, const float *x, int64_t n, quant_dtype dt, int blocksize,
                               int double_quant);
/* Same bits as quant_tensor_dequantize_ref / quant_tensor_dequantize_bf16; host in, host out. */
qlab_status qlab_cuda_dequantize(const quant_tensor *qt, float *out);
qlab_status qlab_cuda_dequantize_bf16(const quant_tensor *qt, uint16_t *out);

/* A 4-bit weight resident on the device (absmax types only), as the forward pass keeps it. */
typedef struct {
    quant_dtype dtype;
    int blocksize;
    int64_t n, nblocks;
    uint8_t *codes;    /* device, ceil(n/2) bytes */
    float *absmax;     /* device, nblocks; NULL when double quantized */
    uint8_t *dq_codes; /* device, nblocks; double quantization only */
    float *dq_absmax;  /* device, ceil(nblocks/256) */
    float *dq_map;     /* device, 256: the nested map the tensor decodes with (quant_tensor_dq_map) */
    float dq_offset;
    int double_quant;
    float table[16]; /* host: the code values the tensor decodes with (quant_tensor_codebook) */
} qlab_cuda_weight;

qlab_status qlab_cuda_weight_upload(qlab_cuda_weight *w, const quant_tensor *qt);
void qlab_cuda_weight_free(qlab_cuda_weight *w);

/* y (batch, rows) = x (batch, cols) W^T with W (rows, cols) = the weight's n elements in row-major order,
 * dequantized on the fly, fp32 accumulation. x and y are device pointers. batch is small (1..8 is the
 * intended use: one thread block per output row reads the row's codes once for the whole batch). */
#define QLAB_CUDA_GEMV_MAX_BATCH 8
qlab_status qlab_cuda_gemv_4bit(const qlab_cuda_weight *w, int64_t rows, int64_t cols, const float *x,
                                int batch, float *y);

/* ---------------------------------------------------------------- paged AdamW 32-bit */

/* The two moment tensors of one parameter tensor. Like bitsandbytes, tensors with at least
 * OPTIM_CUDA_PAGE_MIN_ELEMENTS elements go to unified (managed) memory, which the driver can evict to CPU
 * RAM under memory pressure, and are prefetched to the device before each update; smaller ones live in
 * plain device memory. */
typedef struct {
    float *m, *v; /* zero-initialised */
    int64_t n;
    int paged;
} qlab_cuda_adamw_state;

qlab_status qlab_cuda_adamw_state_init(qlab_cuda_adamw_state *s, int64_t n);
void qlab_cuda_adamw_state_free(qlab_cuda_adamw_state *s);
/* One step (step counts from 1) over param and grad (device or managed, n elements). Asynchronous on the
 * default stream; a later synchronising call (or cudaDeviceSynchronize) observes the result. */
qlab_status qlab_cuda_adamw_step(qlab_cuda_adamw_state *s, float *param, const float *grad,
                                 const optim_cuda_adamw_hyper *hyper, int64_t step);

/* Makes core/model/optim.h's OPTIM_STATE_PAGED allocate CUDA unified memory (cudaMallocManaged) for the CPU
 * AdamW as well. Returns 1 when registered, 0 without a device (the CPU then keeps host memory). */
int qlab_cuda_register_paged_backend(void);

#ifdef __cplusplus
}
#endif

#endif
