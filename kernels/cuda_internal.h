/* Helpers shared by the .cu files only (never by C code): checked CUDA calls that record one qlab_fail
 * message naming the call, and the __global__ wrapper glue. */
#ifndef QLAB_CUDA_INTERNAL_H
#define QLAB_CUDA_INTERNAL_H

#include <cuda_runtime.h>

#include "kernels/qlab_cuda.h"

/* Evaluates a CUDA runtime call; on error records "<call>: <CUDA error string>" and returns it as
 * QLAB_ERR_UNSUPPORTED (no device, launch failure) or QLAB_ERR_NOMEM (allocation). */
#define CUDA_TRY(call)                                                                                       \
    do {                                                                                                     \
        cudaError_t cuda_try_err_ = (call);                                                                  \
        if (cuda_try_err_ != cudaSuccess) {                                                                  \
            (void)cudaGetLastError(); /* clear the sticky-free error so later calls can proceed */           \
            return qlab_fail(cuda_try_err_ == cudaErrorMemoryAllocation ? QLAB_ERR_NOMEM                     \
                                                                        : QLAB_ERR_UNSUPPORTED,              \
                             "%s: %s", #call, cudaGetErrorString(cuda_try_err_));                            \
        }                                                                                                    \
    } while (0)

/* After a <<<>>> launch: reports a bad launch configuration immediately (execution errors surface at
 * the next synchronising call). */
#define CUDA_TRY_LAUNCH(name) CUDA_TRY(cudaGetLastError())

#endif
