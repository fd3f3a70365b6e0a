/* Kernel bodies of 4-bit blockwise quantization for the absmax types (quantize, dequantize to fp32/bf16,
 * fused dequantize + matrix-vector product), shared by kernels/quant_cuda.cu and the CPU emulation.
 * The arithmetic is core/quant/quant_ref.c's, step for step (reciprocal multiply, 2^64 pre-scale for tiny
 * absmax, strict > thresholds, element 2j in the high nibble), so the codes match it bit for bit. */
#ifndef QLAB_QUANT_CUDA_BODY_H
#define QLAB_QUANT_CUDA_BODY_H

#include <stdint.h>

#include "kernels/cuda_compat.h"
#ifdef __cplusplus
extern "C" {
#endif
#include "core/quant/quant_kernels.h" /* quant_absmax_spec: the code book and thresholds, built from quant_tables.h */
#ifdef __cplusplus
}
#endif

#define QUANT_CUDA_MAX_THREADS 256 /* threads per block of the quantize kernel */
#define QUANT_CUDA_DEQUANT_THREADS 256
#define QUANT_CUDA_DEQUANT_MAX_BLOCKS 65535
#define QUANT_CUDA_GEMV_THREADS 128
#define QUANT_CUDA_GEMV_MAX_BATCH 8

static inline int quant_cuda_log2(int power_of_two) {
    int k = 0;
    while ((1 << k) < power_of_two)
        k++;
    return k;
}

/* The 4-bit code of element i of a packed array. */
CUDA_DEVICE uint8_t quant_cuda_code_at(const uint8_t *codes, int64_t i) {
    uint8_t byte = codes[i >> 1];
    return (i & 1) ? (uint8_t)(byte & 15) : (uint8_t)(byte >> 4);
}

/* Same as quant_absmax_code_ref. */
CUDA_DEVICE uint8_t quant_cuda_encode(const quant_absmax_spec *spec, float v) {
    int r = 0;
    if (spec->sign_magnitude) {
        int sign = v < 0.0f ? 8 : 0;
        float m = CUDA_FABS(v);
        for (int k = 0; k < 7; k++)
            r += m > spec->thresholds[k];
        return (uint8_t)(spec->rank_to_code[r] | sign);
    }
    for (int k = 0; k < 15; k++)
        r += v > spec->thresholds[k];
    return (uint8_t)r;
}

/* ---------------------------------------------------------------- quantize (one thread block per block)
 * Launch: grid = nblocks, block = quant_cuda_quantize_threads(blocksize). Thread t handles the element
 * pairs t, t + blockDim, ... of its block, so each output byte is written by exactly one thread. */

typedef struct {
    quant_absmax_spec spec;
    const float *x; /* (n) finite values (the host checks before launching) */
    int64_t n;
    int blocksize;
    uint8_t *codes; /* (ceil(n/2)) */
    float *absmax;  /* (nblocks) */
} quant_cuda_quantize_args;

typedef struct {
    float partial[QUANT_CUDA_MAX_THREADS]; /* per-thread max |x| */
    float amax, recip, pre;
} quant_cuda_quantize_shared;

static inline int quant_cuda_quantize_threads(int blocksize) {
    int t = blocksize / 2;
    return t > QUANT_CUDA_MAX_THREADS ? QUANT_CUDA_MAX_THREADS : t;
}

CUDA_DEVICE int quant_cuda_block_len(const quant_cuda_quantize_args *a, int block) {
    int64_t rest = a->n - (int64_t)block * a->blocksize;
    return rest < a->blocksize ? (int)rest : a->blocksize;
}

/* Phase 1: each thread's max |x| over its elements. */
CUDA_DEVICE void quant_cuda_quantize_phase_max(cuda_thread t, quant_cuda_quantize_shared *s,
                                               const quant_cuda_quantize_args *a) {
    const float *x = a->x + (int64_t)t.block * a->blocksize;
    int len = quant_cuda_block_len(a, t.block);
    float amax = 0.0f;
    for (int i = 2 * t.thread; i < len; i += 2 * t.block_dim) {
        amax = CUDA_FMAX(amax, CUDA_FABS(x[i]));
        if (i + 1 < len) amax = CUDA_FMAX(amax, CUDA_FABS(x[i + 1]));
    }
    s->partial[t.thread] = amax;
}

/* Phase 2: thread 0 combines the partial maxima (max is exact in any order) and fixes the scaling. */
CUDA_DEVICE void quant_cuda_quantize_phase_scale(cuda_thread t, quant_cuda_quantize_shared *s,
                                                 const quant_cuda_quantize_args *a) {
    if (t.thread != 0) return;
    float amax = 0.0f;
    for (int i = 0; i < t.block_dim; i++)
        amax = CUDA_FMAX(amax, s->partial[i]);
    float recip = 0.0f, pre = 1.0f;
    if (amax != 0.0f) {
        recip = CUDA_DIV_RN(1.0f, amax);
        if (isinf(recip)) {
            /* absmax below ~2.9e-39: pre-scale block and absmax by 2^64 (exact), as the reference does. */
            pre = 0x1p64f;
            recip = CUDA_DIV_RN(1.0f, CUDA_MUL_RN(amax, pre));
        }
    }
    s->amax = amax;
    s->recip = recip;
    s->pre = pre;
    a->absmax[t.block] = amax;
}

/* Phase 3: encode. An all-zero block gets the code of 0 (low nibble 0 past an odd end), as the
 * reference writes it. */
CUDA_DEVICE void quant_cuda_quantize_phase_encode(cuda_thread t, quant_cuda_quantize_shared *s,
                                                  const quant_cuda_quantize_args *a) {
    const float *x = a->x + (int64_t)t.block * a->blocksize;
    uint8_t *out = a->codes + (int64_t)t.block * (a->blocksize / 2);
    int len = quant_cuda_block_len(a, t.block);
    float recip = s->recip, pre = s->pre;
    int zero = s->amax == 0.0f;
    uint8_t z = a->spec.zero_code;
    for (int i = 2 * t.thread; i < len; i += 2 * t.block_dim) {
        uint8_t hi, lo = quant_cuda_encode(&a->spec, 0.0f); /* an odd tail: the code of the padding 0.0 */
        if (zero) {
            hi = z;
            if (i + 1 < len) lo = z;
        } else {
            hi = quant_cuda_encode(&a->spec, CUDA_MUL_RN(CUDA_MUL_RN(x[i], pre), recip));
            if (i + 1 < len) lo = quant_cuda_encode(&a->spec, CUDA_MUL_RN(CUDA_MUL_RN(x[i + 1], pre), recip));
        }
        out[i / 2] = (uint8_t)((hi << 4) | lo);
    }
}

/* ---------------------------------------------------------------- per-block scale (with or without DQ) */

typedef struct {
    const float *absmax;     /* (nblocks) or NULL with double quantization */
    const uint8_t *dq_codes; /* (nblocks) */
    const float *dq_absmax;  /* (ceil(nblocks / QUANT_DQ_BLOCKSIZE)) */
    const float *dq_map;     /* (256) the signed dynamic map */
    float dq_offset;
} quant_cuda_scales;

/* The fp32 absmax of block b: absmax = map[code] * dq_absmax + offset, rounded after the multiply and
 * after the add, as quant_tensor_block_scale computes it. */
CUDA_DEVICE float quant_cuda_block_scale(const quant_cuda_scales *s, int64_t b) {
    if (s->absmax) return s->absmax[b];
    float v = CUDA_MUL_RN(s->dq_map[s->dq_codes[b]], s->dq_absmax[b / QUANT_DQ_BLOCKSIZE]);
    return CUDA_ADD_RN(v, s->dq_offset);
}

/* ---------------------------------------------------------------- double quantization (second level)
 * Launch: grid = ceil(nblocks / 256), block = 256: one thread per first-level absmax, one thread block per
 * second-level block. The offset (the mean of all absmax) is computed by the host in quant.c's order. */

typedef struct {
    const float *absmax; /* (nblocks) first-level constants */
    int64_t nblocks;
    float offset;
    const float *map;  /* (256) the signed dynamic map */
    uint8_t zero_code; /* index of 0.0 in the map */
    uint8_t *dq_codes; /* (nblocks) */
    float *dq_absmax;  /* (ceil(nblocks / 256)) */
} quant_cuda_dq_args;

typedef struct {
    float centered[QUANT_DQ_BLOCKSIZE]; /* |absmax - offset| */
    float amax, recip, pre;
} quant_cuda_dq_shared;

/* bitsandbytes' dQuantize<0> as core/quant/quant.c's dynamic_quantize: 7-step binary search over the sorted
 * map, then a midpoint test against the neighbour on x's side; an exact midpoint stays with the pivot. */
CUDA_DEVICE uint8_t quant_cuda_dynamic_encode(const float *code, float x) {
    int pivot = 127, upper_pivot = 255, lower_pivot = 0;
    float lower = -1.0f, upper = 1.0f, val = code[pivot];
    for (int i = 64; i > 0; i >>= 1) {
        if (x > val) {
            lower_pivot = pivot;
            lower = val;
            pivot += i;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= i;
        }
        val = code[pivot];
    }
    if (upper_pivot == 255) upper = code[upper_pivot];
    if (lower_pivot == 0) lower = code[lower_pivot];
    if (x > val) {
        float midpoint = CUDA_MUL_RN(CUDA_ADD_RN(upper, val), 0.5f);
        return (uint8_t)(x > midpoint ? upper_pivot : pivot);
    }
    float midpoint = CUDA_MUL_RN(CUDA_ADD_RN(lower, val), 0.5f);
    return (uint8_t)(x < midpoint ? lower_pivot : pivot);
}

CUDA_DEVICE void quant_cuda_dq_phase_center(cuda_thread t, quant_cuda_dq_shared *s,
                                            const quant_cuda_dq_args *a) {
    int64_t b = (int64_t)t.block * QUANT_DQ_BLOCKSIZE + t.thread;
    s->centered[t.thread] = b < a->nblocks ? CUDA_FABS(CUDA_SUB_RN(a->absmax[b], a->offset)) : 0.0f;
}

CUDA_DEVICE void quant_cuda_dq_phase_scale(cuda_thread t, quant_cuda_dq_shared *s,
                                           const quant_cuda_dq_args *a) {
    if (t.thread != 0) return;
    float amax = 0.0f;
    for (int i = 0; i < QUANT_DQ_BLOCKSIZE; i++)
        amax = CUDA_FMAX(amax, s->centered[i]);
    float recip = 0.0f, pre = 1.0f;
    if (amax != 0.0f) {
        recip = CUDA_DIV_RN(1.0f, amax);
        if (isinf(recip)) {
            pre = 0x1p64f;
            recip = CUDA_DIV_RN(1.0f, CUDA_MUL_RN(amax, pre));
        }
    }
    s->amax = amax;
    s->recip = recip;
    s->pre = pre;
    a->dq_absmax[t.block] = amax;
}

CUDA_DEVICE void quant_cuda_dq_phase_encode(cuda_thread t, quant_cuda_dq_shared *s,
                                            const quant_cuda_dq_args *a) {
    int64_t b = (int64_t)t.block * QUANT_DQ_BLOCKSIZE + t.thread;
    if (b >= a->nblocks) return;
    if (s->amax == 0.0f) {
        a->dq_codes[b] = a->zero_code;
        return;
    }
    float v = CUDA_MUL_RN(CUDA_MUL_RN(CUDA_SUB_RN(a->absmax[b], a->offset), s->pre), s->recip);
    a->dq_codes[b] = quant_cuda_dynamic_encode(a->map, v);
}

/* ---------------------------------------------------------------- dequantize (grid-stride over bytes)
 * Both elements of a byte share a block (block sizes are even), so each thread looks up one scale. */

typedef struct {
    float table[16];
    const uint8_t *codes;
    quant_cuda_scales scales;
    int64_t n;
    int blocksize_log2; /* absmax block sizes are powers of two: a shift instead of a 64-bit division */
    float *out;         /* (n) fp32 output, or NULL */
    uint16_t *out_bf16; /* (n) bf16 output, or NULL */
} quant_cuda_dequantize_args;

static inline int quant_cuda_dequantize_blocks(int64_t n) {
    int64_t bytes = (n + 1) / 2, b = (bytes + QUANT_CUDA_DEQUANT_THREADS - 1) / QUANT_CUDA_DEQUANT_THREADS;
    if (b > QUANT_CUDA_DEQUANT_MAX_BLOCKS) b = QUANT_CUDA_DEQUANT_MAX_BLOCKS;
    return b < 1 ? 1 : (int)b;
}

CUDA_DEVICE void quant_cuda_dequantize_phase(cuda_thread t, void *shared,
                                             const quant_cuda_dequantize_args *a) {
    (void)shared;
    int64_t bytes = (a->n + 1) / 2, stride = (int64_t)t.grid_dim * t.block_dim;
    for (int64_t j = (int64_t)t.block * t.block_dim + t.thread; j < bytes; j += stride) {
        int64_t e = 2 * j;
        uint8_t byte = a->codes[j];
        float scale = quant_cuda_block_scale(&a->scales, e >> a->blocksize_log2);
        float v0 = CUDA_MUL_RN(a->table[byte >> 4], scale), v1 = CUDA_MUL_RN(a->table[byte & 15], scale);
        int both = e + 1 < a->n;
        if (a->out) {
            a->out[e] = v0;
            if (both) a->out[e + 1] = v1;
        }
        if (a->out_bf16) {
            a->out_bf16[e] = cuda_f32_to_bf16(v0);
            if (both) a->out_bf16[e + 1] = cuda_f32_to_bf16(v1);
        }
    }
}

/* ---------------------------------------------------------------- fused dequantize + gemv
 * y (batch, rows) = x (batch, cols) W^T, W (rows, cols) row-major in the packed array. One thread block
 * per output row (grid = rows, at most INT32_MAX); each thread dequantizes element pairs of the row once and
 * accumulates them into all batch rows with FMA in fp32; thread 0..batch-1 then add the per-thread sums in
 * thread order, so the result does not depend on scheduling. */

typedef struct {
    float table[16];
    const uint8_t *codes;
    quant_cuda_scales scales;
    int blocksize_log2;
    int64_t rows, cols;
    int batch;      /* 1..QUANT_CUDA_GEMV_MAX_BATCH */
    const float *x; /* (batch, cols) */
    float *y;       /* (batch, rows) */
} quant_cuda_gemv_args;

typedef struct {
    float partial[QUANT_CUDA_GEMV_MAX_BATCH][QUANT_CUDA_GEMV_THREADS];
} quant_cuda_gemv_shared;

CUDA_DEVICE void quant_cuda_gemv_phase_dot(cuda_thread t, quant_cuda_gemv_shared *s,
                                           const quant_cuda_gemv_args *a) {
    int64_t row = t.block;
    float acc[QUANT_CUDA_GEMV_MAX_BATCH];
    for (int bt = 0; bt < QUANT_CUDA_GEMV_MAX_BATCH; bt++)
        acc[bt] = 0.0f;
    int64_t base = row * a->cols;
    for (int64_t k = 2 * (int64_t)t.thread; k < a->cols; k += 2 * (int64_t)t.block_dim) {
        int64_t e = base + k, b0 = e >> a->blocksize_log2, b1 = (e + 1) >> a->blocksize_log2;
        float scale0 = quant_cuda_block_scale(&a->scales, b0);
        float w0 = CUDA_MUL_RN(a->table[quant_cuda_code_at(a->codes, e)], scale0);
        int pair = k + 1 < a->cols;
        float w1 = 0.0f;
        if (pair) {
            /* With an odd row start the pair can straddle a block boundary. */
            float scale1 = b1 == b0 ? scale0 : quant_cuda_block_scale(&a->scales, b1);
            w1 = CUDA_MUL_RN(a->table[quant_cuda_code_at(a->codes, e + 1)], scale1);
        }
        /* Constant trip count + guard: acc[] stays in registers on the GPU. */
        CUDA_UNROLL
        for (int bt = 0; bt < QUANT_CUDA_GEMV_MAX_BATCH; bt++) {
            if (bt >= a->batch) break;
            const float *xb = a->x + (int64_t)bt * a->cols;
            acc[bt] = CUDA_FMA_RN(w0, xb[k], acc[bt]);
            if (pair) acc[bt] = CUDA_FMA_RN(w1, xb[k + 1], acc[bt]);
        }
    }
    CUDA_UNROLL
    for (int bt = 0; bt < QUANT_CUDA_GEMV_MAX_BATCH; bt++)
        if (bt < a->batch) s->partial[bt][t.thread] = acc[bt];
}

CUDA_DEVICE void quant_cuda_gemv_phase_sum(cuda_thread t, quant_cuda_gemv_shared *s,
                                           const quant_cuda_gemv_args *a) {
    int64_t row = t.block;
    if (t.thread >= a->batch) return;
    float sum = 0.0f;
    for (int i = 0; i < t.block_dim; i++)
        sum = CUDA_ADD_RN(sum, s->partial[t.thread][i]);
    a->y[(int64_t)t.thread * a->rows + row] = sum;
}

#endif
