/* The macro layer that lets one kernel body compile twice: under nvcc as __device__ code called from a
 * __global__ wrapper, and under gcc as plain C called by the CPU emulation (cuda_emu.h). Bodies use only
 * what is defined here, never CUDA built-ins (threadIdx, __syncthreads, __shared__) directly.
 * Never compile the .cu files with --use_fast_math or -ftz=true: bit-exactness with the C reference
 * needs IEEE division, square root and subnormals (tiny absmax blocks go through them). */
#ifndef QLAB_CUDA_COMPAT_H
#define QLAB_CUDA_COMPAT_H

#include <stdint.h>

#ifdef __CUDACC__
#define CUDA_DEVICE __device__ __forceinline__
/* Explicitly rounded fp32 operations: nvcc would otherwise contract a*b+c into one FMA while gcc
 * (-std=c11, no -mfma) rounds twice, and the two builds must give the same bits. */
#define CUDA_MUL_RN(a, b) __fmul_rn((a), (b))
#define CUDA_ADD_RN(a, b) __fadd_rn((a), (b))
#define CUDA_SUB_RN(a, b) __fsub_rn((a), (b))
#define CUDA_DIV_RN(a, b) __fdiv_rn((a), (b))
#define CUDA_SQRT_RN(a) __fsqrt_rn((a))
#define CUDA_FMA_RN(a, b, c) __fmaf_rn((a), (b), (c))
#define CUDA_FABS(a) fabsf((a))
#define CUDA_FMAX(a, b) fmaxf((a), (b))
/* Fully unroll the next loop (constant trip count), so small per-thread arrays stay in registers. */
#define CUDA_UNROLL _Pragma("unroll")
#else
#include <math.h>
#include <string.h>
#define CUDA_DEVICE static inline
#define CUDA_MUL_RN(a, b) ((a) * (b))
#define CUDA_ADD_RN(a, b) ((a) + (b))
#define CUDA_SUB_RN(a, b) ((a) - (b))
#define CUDA_DIV_RN(a, b) ((a) / (b))
#define CUDA_SQRT_RN(a) sqrtf((a))
#define CUDA_FMA_RN(a, b, c) fmaf((a), (b), (c)) /* glibc computes it exactly rounded, like the GPU */
#define CUDA_FABS(a) fabsf((a))
#define CUDA_FMAX(a, b) fmaxf((a), (b))
#define CUDA_UNROLL
#endif

/* Where a thread sits in its launch. Only 1-D grids and blocks are used, which keeps the emulation a
 * double loop. Under nvcc it is filled from blockIdx.x/threadIdx.x; the emulation fills it itself. */
typedef struct {
    int block;     /* blockIdx.x */
    int thread;    /* threadIdx.x */
    int block_dim; /* blockDim.x */
    int grid_dim;  /* gridDim.x */
} cuda_thread;

#ifdef __CUDACC__
#define CUDA_THIS_THREAD()                                                                                   \
    cuda_thread {                                                                                            \
        (int)blockIdx.x, (int)threadIdx.x, (int)blockDim.x, (int)gridDim.x                                   \
    }
#endif

/* bf16 round-to-nearest-even from an fp32 value (same rule as core/base/half.h, usable on the device). */
CUDA_DEVICE uint16_t cuda_f32_to_bf16(float f) {
#ifdef __CUDACC__
    uint32_t u = __float_as_uint(f);
#else
    uint32_t u;
    memcpy(&u, &f, 4);
#endif
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

#endif
