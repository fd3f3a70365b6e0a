/* Internal interface between core/quant/quant.c (the drivers) and the per-ISA kernels (scalar reference in
 * core/quant/quant_ref.c, core/quant/quant_avx2.c, core/quant/quant_avx512.c). Not part of the public API.
 * Every kernel family must give bit-identical results to the scalar one (tests/test_quant.c checks it). */
#ifndef QLAB_QUANT_KERNELS_H
#define QLAB_QUANT_KERNELS_H

#include <stdint.h>

#include "core/quant/quant.h"

/* How an absmax type maps a scaled value v = x * (1/absmax) to a code:
 *  ascending tables:   rank = #{k : v > thresholds[k]} over 15 thresholds, code = rank;
 *  sign-magnitude:     sign = (v < 0) ? 8 : 0, rank = #{k : |v| > thresholds[k]} over 7 thresholds,
 *                      code = rank_to_code[rank] | sign. */
typedef struct {
    int sign_magnitude;
    int nthresholds; /* 15 or 7 */
    float thresholds[15];
    uint8_t rank_to_code[16];
    float table[16];
    uint8_t zero_code; /* code written for an all-zero block */
} quant_absmax_spec;

/* NULL for types without fp32 absmax. */
const quant_absmax_spec *quant_absmax_spec_get(quant_dtype dt);

/* Quantizes blocks [b0, b1) of x (n elements in all) into codes (the tensor's packed array) and absmax.
 * Returns -1, or the first block in [b0, b1) that holds a NaN or Inf (its contents are then unspecified). */
typedef int64_t (*quant_absmax_kernel)(const quant_absmax_spec *spec, const float *x, int64_t n,
                                       int blocksize, int64_t b0, int64_t b1, uint8_t *codes, float *absmax);

/* out[i - start] = table[code(i)] * scales[i / blocksize - first_block] for i in [start, start + count);
 * start is even. codes is the tensor's full packed array. streaming != 0 allows non-temporal stores (the
 * caller's whole output is far larger than the cache, so keeping it there is pointless). */
typedef void (*quant_dequant_kernel)(const float *table, const uint8_t *codes, const float *scales,
                                     int64_t first_block, int blocksize, int64_t start, int64_t count,
                                     float *out, int streaming);
typedef void (*quant_dequant_bf16_kernel)(const float *table, const uint8_t *codes, const float *scales,
                                          int64_t first_block, int blocksize, int64_t start, int64_t count,
                                          uint16_t *out);

typedef struct {
    const char *name;
    quant_absmax_kernel quantize_absmax;
    quant_dequant_kernel dequantize;
    quant_dequant_bf16_kernel dequantize_bf16;
} quant_kernel_set;

extern const quant_kernel_set quant_kernels_scalar;
/* Selected only when __builtin_cpu_supports says the CPU has the instructions. */
extern const quant_kernel_set quant_kernels_avx2;
extern const quant_kernel_set quant_kernels_avx512;

/* The scalar per-block quantizer, also used by the SIMD kernels for blocks they do not handle (all-zero
 * blocks, absmax so small that 1/absmax overflows). len <= blocksize, out gets ceil(len/2) bytes. */
void quant_absmax_block_ref(const quant_absmax_spec *spec, const float *x, int len, uint8_t *out,
                            float *absmax);
/* Scalar code of one scaled value. */
uint8_t quant_absmax_code_ref(const quant_absmax_spec *spec, float v);

/* The scalar kernels, for the SIMD kernels' tails. */
int64_t quant_quantize_absmax_scalar(const quant_absmax_spec *spec, const float *x, int64_t n, int blocksize,
                                     int64_t b0, int64_t b1, uint8_t *codes, float *absmax);
void quant_dequantize_scalar(const float *table, const uint8_t *codes, const float *scales,
                             int64_t first_block, int blocksize, int64_t start, int64_t count, float *out,
                             int streaming);
void quant_dequantize_bf16_scalar(const float *table, const uint8_t *codes, const float *scales,
                                  int64_t first_block, int blocksize, int64_t start, int64_t count,
                                  uint16_t *out);

/* The per-type entry points of the descriptor table (quant_types.c) for the types with their own scale
 * format, implemented in quant.c (signatures: quant.h). The block-scale decoders need the E4M3/E8M0 byte
 * tables built (quant.c does it before calling them; others call quant_tensor_block_scale). */
void quant_quantize_block_mxfp4(const float *x, int len, float tensor_scale, uint8_t *codes, void *scale);
void quant_quantize_block_nvfp4(const float *x, int len, float tensor_scale, uint8_t *codes, void *scale);
void quant_quantize_block_iq4_nl(const float *x, int len, float tensor_scale, uint8_t *codes, void *scale);
float quant_block_scale_e8m0(const struct quant_tensor *qt, int64_t b);
float quant_block_scale_e4m3(const struct quant_tensor *qt, int64_t b);
float quant_block_scale_fp16(const struct quant_tensor *qt, int64_t b);
float quant_tensor_scale_nvfp4(float tensor_amax);

/* Total output size from which the drivers allow streaming (non-temporal) stores: a quarter of a typical
 * server last-level cache; smaller outputs are likely to be read again soon (dequantize_range in a
 * linear layer) and should stay cached. */
#define QUANT_STREAM_MIN_BYTES ((size_t)8 << 20)

#endif
