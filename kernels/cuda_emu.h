/* CPU emulation of the CUDA kernels: runs the same kernel bodies (the files named *_cuda_body.h in
 * kernels/) for every (block, thread) of a 1-D grid, so the CUDA code paths are tested bit for bit on
 * machines without a GPU.
 * Needs no CUDA toolkit: this half is plain C and lives in libqlab.a. */
#ifndef QLAB_CUDA_EMU_H
#define QLAB_CUDA_EMU_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/cuda_compat.h"
#include "kernels/optim_cuda_body.h"

#ifdef __cplusplus
extern "C" { /* the GPU self-test (C++) calls the emulation to compare bit for bit */
#endif
#include "core/base/common.h"
#include "core/quant/quant.h"

/* One barrier-free stretch of a kernel: what a thread does between two __syncthreads(). `shared` is the
 * block's shared memory; a phase must keep nothing in locals that a later phase needs (pass it through
 * shared memory), because the emulation runs phase k for every thread of a block before phase k+1. */
typedef void (*cuda_emu_phase)(cuda_thread t, void *shared, const void *args);

/* Runs grid_dim blocks of block_dim threads through the phases in order. Each block gets shared_bytes of
 * shared memory filled with 0xff (NaN floats), so a body that reads shared memory it never wrote fails
 * its test instead of reading zeros. Within a phase the threads of odd blocks run in reverse order, which
 * exposes a phase that depends on another thread of the same phase having run first (a race on the GPU).
 * Blocks run in parallel with OpenMP; they must be independent, as on the GPU. */
qlab_status cuda_emu_launch(int grid_dim, int block_dim, size_t shared_bytes, const cuda_emu_phase *phases,
                            int nphases, const void *args);

/* The emulated kernels, each launched with the grid and block the GPU launcher uses. */

/* One AdamW step over n elements (kernels/optim_cuda_body.h); step counts from 1. */
qlab_status cuda_emu_adamw_step(float *param, const float *grad, float *m, float *v, int64_t n,
                                const optim_cuda_adamw_hyper *hyper, int64_t step);

/* First-level 4-bit quantization of an absmax type: codes (ceil(n/2) bytes) and absmax (ceil(n/blocksize))
 * as quant_kernels_scalar.quantize_absmax writes them. x must be finite (the callers check). */
qlab_status cuda_emu_quantize_absmax(quant_dtype dt, const float *x, int64_t n, int blocksize, uint8_t *codes,
                                     float *absmax);
/* The whole of qlab_cuda_quantize (kernels/quant_cuda_driver.c with emulated kernels): same contract and
 * bits as quant_tensor_quantize_ref for the absmax types, double quantization included. */
qlab_status cuda_emu_quantize(quant_tensor *qt, const float *x, int64_t n, quant_dtype dt, int blocksize,
                              int double_quant);
/* Dequantizes an absmax-type tensor (with or without double quantization) into out (fp32) and/or
 * out_bf16 (either may be NULL). */
qlab_status cuda_emu_dequantize(const quant_tensor *qt, float *out, uint16_t *out_bf16);
/* y (batch, rows) = x (batch, cols) W^T, W = w's n = rows * cols elements row-major; batch 1..8. */
qlab_status cuda_emu_gemv_4bit(const quant_tensor *w, int64_t rows, int64_t cols, const float *x, int batch,
                               float *y);

#ifdef __cplusplus
}
#endif

#endif
