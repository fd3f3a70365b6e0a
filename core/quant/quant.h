/* 4-bit blockwise quantization: the data types of the QLoRA paper (NF4, FP4, Int4) and newer ones
 * (AF4, MXFP4, NVFP4, IQ4_NL), with optional double quantization of the per-block constants.
 * NF4 and FP4 are bit-exact with bitsandbytes (codes, fp32 absmax, nibble order, tie rule); the exact
 * definitions are in ../shared/docs/PAPER.md §1-3. Every operation has a scalar reference (`_ref`) and the
 * default entry points pick the fastest kernel for this CPU, which is tested to match the reference. */
#ifndef QLAB_QUANT_H
#define QLAB_QUANT_H

#include <stdint.h>
#include <stddef.h>

#include "core/base/common.h"

typedef enum {
    QUANT_NF4 = 0,  /* bitsandbytes NF4 (the QLoRA default) */
    QUANT_FP4,      /* bitsandbytes FP4 (sign, 2 exponent, 1 mantissa; smallest subnormal 1/192) */
    QUANT_FP4_E2M1, /* OCP E2M1 values scaled by 1/6 */
    QUANT_FP4_E3M0, /* sign + 3 exponent bits: 0, 2^-6 .. 1 */
    QUANT_INT4,     /* symmetric integers -7..7, scaled by 1/7 */
    QUANT_AF4,      /* Yoshida's AbnormalFloat4 for block size 64 */
    QUANT_MXFP4,    /* OCP Microscaling: block 32, E8M0 shared scale, E2M1 elements */
    QUANT_NVFP4,    /* block 16, E4M3 block scale + fp32 tensor scale, E2M1 elements */
    QUANT_IQ4_NL,   /* llama.cpp: block 32, fp16 scale, non-linear int8 table */
    QUANT_DTYPE_COUNT
} quant_dtype;

#define QUANT_DQ_BLOCKSIZE 256 /* second-level block size of double quantization */
#define QUANT_MIN_BLOCKSIZE 32
#define QUANT_MAX_BLOCKSIZE 4096

/* "nf4", "fp4", "fp4_e2m1", "fp4_e3m0", "int4", "af4", "mxfp4", "nvfp4", "iq4_nl". */
const char *quant_dtype_name(quant_dtype dt);
/* Parses a name as above; on failure records "unknown data type 'x' (expected one of ...)". */
qlab_status quant_dtype_parse(const char *name, quant_dtype *dt);

/* The 16 values of a code-book type, index = 4-bit code. For the absmax types they lie in [-1, 1]; for
 * MXFP4/NVFP4 they are the raw E2M1 values (+-{0,0.5,1,1.5,2,3,4,6}); for IQ4_NL the int8 table values. */
const float *quant_codebook(quant_dtype dt);
/* Whether the per-block constant is an fp32 absmax (nf4, fp4, fp4_e2m1, fp4_e3m0, int4, af4): those are
 * the types double quantization applies to. */
int quant_dtype_has_fp32_absmax(quant_dtype dt);
/* Checks a block size for a type (absmax types: powers of two from 32 to 4096; mxfp4 32; nvfp4 16;
 * iq4_nl 32). Records a message naming the type and the allowed values on failure. */
qlab_status quant_check_blocksize(quant_dtype dt, int blocksize);
/* The block size a type uses when none is given (64 for absmax types). */
int quant_default_blocksize(quant_dtype dt);

/* A quantized tensor: owns its codes and constants. */
typedef struct {
    quant_dtype dtype;
    int blocksize;
    int64_t n;       /* number of elements */
    int64_t nblocks; /* ceil(n / blocksize); the last block may be partial */
    int ndim;        /* logical shape, for files; product == n */
    int64_t shape[4];

    uint8_t *codes; /* ceil(n/2) bytes: element 2j in the high nibble, 2j+1 in the low nibble */

    /* First-level constants, exactly one of these is used:
     *  absmax  (nblocks fp32) for the absmax types when double_quant == 0,
     *  scale8  (nblocks bytes) for mxfp4 (E8M0) and nvfp4 (E4M3),
     *  scale16 (nblocks fp16 bits) for iq4_nl. */
    float *absmax;
    uint8_t *scale8;
    uint16_t *scale16;
    float tensor_scale; /* nvfp4 only: fp32 per-tensor scale */

    /* Double quantization (absmax types only): absmax[b] = dequant8(dq_codes[b]) * dq_absmax[b/256]
     * + dq_offset, with the signed 8-bit dynamic map. When set, `absmax` is NULL. */
    int double_quant;
    uint8_t *dq_codes;  /* nblocks bytes */
    int64_t dq_nblocks; /* ceil(nblocks / 256) */
    float *dq_absmax;   /* dq_nblocks fp32 */
    float dq_offset;    /* mean of the first-level absmax values */
} quant_tensor;

/* Quantizes n fp32 values into qt (which it initialises; free with quant_tensor_free). Fails with
 * QLAB_ERR_NUMERIC naming the first non-finite element, QLAB_ERR_ARG for a bad block size or a double
 * quantization request on a type without fp32 absmax. The shape is set to 1-D {n}; callers may reshape. */
qlab_status quant_tensor_quantize(quant_tensor *qt, const float *x, int64_t n, quant_dtype dt, int blocksize,
                                  int double_quant);
qlab_status quant_tensor_quantize_ref(quant_tensor *qt, const float *x, int64_t n, quant_dtype dt,
                                      int blocksize, int double_quant);

/* Dequantizes all n elements to fp32 / bf16 (bf16 = round-to-nearest-even of the fp32 value). */
void quant_tensor_dequantize(const quant_tensor *qt, float *out);
void quant_tensor_dequantize_ref(const quant_tensor *qt, float *out);
void quant_tensor_dequantize_bf16(const quant_tensor *qt, uint16_t *out);
/* Dequantizes elements [start, start+count) to fp32 (any start; an even one is fastest; an out-of-range
 * request writes nothing). Used by linear layers to dequantize a few rows at a time without
 * materialising the whole fp32 weight. */
void quant_tensor_dequantize_range(const quant_tensor *qt, int64_t start, int64_t count, float *out);

/* The fp32 absmax of block b, after undoing double quantization if it was applied (absmax types only);
 * for the other types, the effective fp32 scale of the block. */
float quant_tensor_block_scale(const quant_tensor *qt, int64_t b);

/* Exact storage in bytes of codes + all constants (what a file must hold to reconstruct the tensor),
 * and the same as bits per parameter. */
size_t quant_tensor_bytes(const quant_tensor *qt);
double quant_tensor_bits_per_param(const quant_tensor *qt);
/* The analytic bits per parameter: 4 + constant bits / blocksize (with DQ: 8/bs + 32/(bs*256)). */
double quant_bits_per_param_analytic(quant_dtype dt, int blocksize, int double_quant);

void quant_tensor_free(quant_tensor *qt);

/* bitsandbytes' signed 8-bit dynamic map (create_dynamic_map(signed=True)), 256 ascending values. */
const float *quant_dynamic_map_signed(void);

/* Error statistics of a reconstruction, used by the CLI's --stats and the experiments. */
typedef struct {
    double mse, max_abs_err, sqnr_db, bits_per_param;
} quant_error_stats;
void quant_error(const float *orig, const float *recon, int64_t n, quant_error_stats *st);
/* Dequantizes qt and fills all of st against the original values (bits_per_param from the stored bytes).
 * quant_error alone leaves bits_per_param 0. */
qlab_status quant_tensor_error(const quant_tensor *qt, const float *orig, quant_error_stats *st);

/* The kernel family chosen at run time ("avx512", "avx2", "scalar"), and a way to force one for tests and
 * benchmarks (returns QLAB_ERR_UNSUPPORTED when the CPU lacks it). */
const char *quant_kernel_name(void);
qlab_status quant_force_kernel(const char *name);

#endif
