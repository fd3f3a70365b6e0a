/* The host side of 4-bit quantization on a CUDA-style device, written once for both back ends: the GPU
 * (kernels/quant_cuda.cu) and the CPU emulation (kernels/quant_cuda_emu.c) supply the two kernel launches,
 * this driver does the checks, the allocation, and the double-quantization offset, exactly as
 * quant_tensor_quantize_ref does, so the two back ends can only differ in the kernels. */
#ifndef QLAB_QUANT_CUDA_DRIVER_H
#define QLAB_QUANT_CUDA_DRIVER_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "core/base/common.h"
#include "core/quant/quant.h"
#include "core/quant/quant_kernels.h"

/* Host pointers in and out; a back end copies to and from its device as it needs. */
typedef struct {
    void *ctx;
    /* First level: codes (ceil(n/2) bytes) and absmax (nblocks) of finite x. */
    qlab_status (*quantize_absmax)(void *ctx, const quant_absmax_spec *spec, const float *x, int64_t n,
                                   int blocksize, uint8_t *codes, float *absmax);
    /* Second level: dq_codes (nblocks) and dq_absmax (ceil(nblocks/256)) of absmax - offset. */
    qlab_status (*double_quantize)(void *ctx, const float *absmax, int64_t nblocks, float offset,
                                   uint8_t *dq_codes, float *dq_absmax);
} quant_cuda_backend;

/* Same contract as quant_tensor_quantize_ref, restricted to the absmax types (QLAB_ERR_UNSUPPORTED for
 * the others). */
qlab_status quant_cuda_quantize_with(const quant_cuda_backend *backend, quant_tensor *qt, const float *x,
                                     int64_t n, quant_dtype dt, int blocksize, int double_quant);

/* Index of 0.0 in the signed dynamic map (the code of an all-zero second-level block). */
uint8_t quant_cuda_dynamic_zero_code(void);

#ifdef __cplusplus
}
#endif

#endif
