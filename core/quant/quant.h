/* 4-bit blockwise quantization: the data types of the QLoRA paper (NF4, FP4, Int4) and newer ones
 * (AF4, MXFP4, NVFP4, IQ4_NL), with optional double quantization of the per-block constants.
 * NF4 and FP4 are bitsandbytes' formats bit for bit (files, fp32 absmax, maps, nibble order,
 * dequantization) and quantize as its CUDA kernels do (x times the fp32 reciprocal, its threshold
 * literals, strict >); its CPU backend departs from those kernels in rare ties, the sign code of tiny FP4
 * values and the 8-bit codes of double quantization (tests/interop/check_bnb.py lists and checks each).
 * The exact definitions are in ../shared/docs/PAPER.md §1-3. Every operation has a scalar reference (`_ref`)
 * and the default entry points pick the fastest kernel for this CPU, which is tested to match the reference.
 */
#ifndef QLAB_QUANT_H
#define QLAB_QUANT_H

#include <stdint.h>
#include <stddef.h>

#include "core/base/common.h"

/* The 4-bit data types. The enum is only an index into the descriptor table (quant_types.c): nothing may
 * depend on the order of its members; ask quant_type_traits_get() instead. */
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
#define QUANT_MIN_BLOCKSIZE 32 /* the range any type's block sizes must lie in */
#define QUANT_MAX_BLOCKSIZE 4096

/* How a type stores its first-level per-block constant. */
typedef enum {
    QUANT_SCALE_FP32_ABSMAX, /* fp32 absmax (quant_tensor.absmax); double quantization applies */
    QUANT_SCALE_E8M0,        /* 1 byte, a power of two 2^(c-127) (quant_tensor.scale8) */
    QUANT_SCALE_E4M3,        /* 1 byte, FP8 E4M3, times the fp32 tensor_scale (quant_tensor.scale8) */
    QUANT_SCALE_FP16,        /* 2 bytes, fp16 (quant_tensor.scale16) */
} quant_scale_format;

struct quant_tensor;
/* Quantizes one block of len <= blocksize elements (all finite) of a type with its own scale format:
 * writes ceil(len/2) code bytes and the block's constant (scale_bytes bytes at *scale). */
typedef void (*quant_block_quantizer)(const float *x, int len, float tensor_scale, uint8_t *codes,
                                      void *scale);
/* The fp32 scale of block b (decoded constant): the dequantized value is codebook[code] * scale. */
typedef float (*quant_block_scale_fn)(const struct quant_tensor *qt, int64_t b);
/* The fp32 per-tensor scale from the largest |x| of the tensor (types with a tensor scale only). */
typedef float (*quant_tensor_scale_fn)(float tensor_amax);

/* One row of the descriptor table: everything the rest of qlab may know about a data type. Every name
 * list, help text, switch, experiment default and plot style is derived from these rows. */
typedef struct {
    quant_dtype dtype;                /* its own index in the table */
    const char *name;                 /* CLI / config / file spelling, lower case: "nf4" */
    const char *label;                /* short display label: "NF4" */
    const char *description;          /* one line for `qlab dtypes` */
    int blocksize_min, blocksize_max; /* allowed block sizes: the powers of two in [min, max] */
    int blocksize_default;
    quant_scale_format scale_format;
    const char *scale_name; /* how the constant is stored, for messages: "fp32 absmax", "E8M0", ... */
    int scale_bytes;        /* bytes of one block constant: 4, 1 or 2 (without double quantization) */
    const float *codebook;  /* the 16 values, index = 4-bit code (quant_tables.h) */
    /* fp32-absmax types: how a scaled value becomes a code (quant_kernels.h quant_absmax_spec). */
    const float *thresholds;     /* 15 ascending or 7 magnitude thresholds; NULL = fp32 midpoints */
    const uint8_t *rank_to_code; /* sign-magnitude: magnitude rank -> code (8 entries); NULL = ascending */
    /* File layout (quant_io.h): bitsandbytes-compatible types write quant_state.bitsandbytes__<name>, the
     * others the qlab__<name> extension. */
    int bnb_compatible;
    const char *quant_state; /* the quant_state suffix: "bitsandbytes__nf4", "qlab__af4" */
    /* Entry points. fp32-absmax types: quantize == NULL, the generic absmax kernels (scalar reference in
     * quant_ref.c, AVX2, AVX-512) run on codebook + thresholds, and block_scale == NULL (absmax or double
     * quantization). The others: a scalar per-block quantizer and the decoder of their constant. All types
     * dequantize with the generic kernels (scalar, AVX2, AVX-512): codebook[code] * block scale. */
    quant_block_quantizer quantize;
    quant_block_scale_fn block_scale;
    quant_tensor_scale_fn tensor_scale; /* NULL: no per-tensor scale */
    const char *quantize_kernels;       /* for display: "scalar, avx2, avx512" or "scalar" */
    /* Plot style, the same in every figure (plots/common.gp gets it from `qlab report`). */
    const char *plot_color; /* "#rrggbb" */
    int plot_point;         /* gnuplot point type of the open marker; the filled one is plot_point + 1 */
} quant_type_traits;

/* The row of dt, or NULL when dt is not a data type. */
const quant_type_traits *quant_type_traits_get(quant_dtype dt);

/* "nf4", "fp4", ... (the row's name; "unknown" when dt is not a data type). */
const char *quant_dtype_name(quant_dtype dt);
/* Parses a name (case-insensitive); on failure records "unknown data type 'x' (expected one of ...)". */
qlab_status quant_dtype_parse(const char *name, quant_dtype *dt);
/* Every name in table order, ", "-separated ("nf4, fp4, ..."); with fp32_absmax_only, those of the types
 * double quantization applies to. Static storage, built once. */
const char *quant_dtype_list(int fp32_absmax_only);
/* Every name as a JSON array ("[\"nf4\", \"fp4\", ...]"): the experiments' default "dtypes". */
const char *quant_dtype_list_json(void);
/* The block-size rules of every type in one line, types with equal rules grouped, e.g.
 * "<names>: powers of two from 32 to 4096 (default 64); <name>: 32; ...". Static storage. */
const char *quant_blocksize_summary(void);

/* The 16 values of a code-book type, index = 4-bit code (NULL when dt is not a data type). For the absmax
 * types they lie in [-1, 1]; for MXFP4/NVFP4 they are the raw E2M1 values (+-{0,0.5,1,1.5,2,3,4,6}); for
 * IQ4_NL the int8 table values. */
const float *quant_codebook(quant_dtype dt);
/* Whether the per-block constant is an fp32 absmax (scale_format QUANT_SCALE_FP32_ABSMAX): the types
 * double quantization applies to (quant_dtype_list(1) names them). */
int quant_dtype_has_fp32_absmax(quant_dtype dt);
/* Checks a block size for a type (the row's powers of two from blocksize_min to blocksize_max). Records a
 * message naming the type and the allowed values on failure. */
qlab_status quant_check_blocksize(quant_dtype dt, int blocksize);
/* The block size a type uses when none is given (the row's blocksize_default; 0 for a non-type). */
int quant_default_blocksize(quant_dtype dt);

/* The dtype a weight had before quantization: bitsandbytes' quant_state "dtype" ("float32", "float16",
 * "bfloat16"), the dtype its dequantization returns by default. */
typedef enum { QUANT_ORIG_F32 = 0, QUANT_ORIG_F16, QUANT_ORIG_BF16 } quant_orig_dtype;
/* "float32" / "float16" / "bfloat16" (NULL for a non-member), and the reverse (QLAB_ERR_FORMAT naming
 * the accepted spellings on an unknown one). */
const char *quant_orig_dtype_name(quant_orig_dtype d);
qlab_status quant_orig_dtype_parse(const char *name, quant_orig_dtype *d);

/* A quantized tensor: owns its codes and constants. */
typedef struct quant_tensor {
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
    /* The 256-entry nested map double quantization decodes with: NULL = quant_dynamic_map_signed(); an
     * owned copy of the map a file stored when it differs from ours (bitsandbytes dequantizes with its
     * stored map, which a torch without FMA builds a few ulp away; quant_check_map_close accepted it). */
    float *dq_map;
    /* The 16 code values dequantization uses: NULL = quant_codebook(dtype); an owned copy of a file's
     * stored quant_map when it differs from ours (within 4 ulp or by the sign of a zero). */
    float *code_map;

    quant_orig_dtype orig_dtype; /* of the weight before quantization (quantize leaves QUANT_ORIG_F32) */
} quant_tensor;

/* Quantizes n fp32 values into qt (which it initialises; free with quant_tensor_free). Fails with
 * QLAB_ERR_NUMERIC naming the first non-finite element, QLAB_ERR_ARG for a bad block size or a double
 * quantization request on a type without fp32 absmax. The shape is set to 1-D {n}; callers may reshape. */
qlab_status quant_tensor_quantize(quant_tensor *qt, const float *x, int64_t n, quant_dtype dt, int blocksize,
                                  int double_quant);
qlab_status quant_tensor_quantize_ref(quant_tensor *qt, const float *x, int64_t n, quant_dtype dt,
                                      int blocksize, int double_quant);

/* Dequantizes all n elements to fp32 / bf16 (bf16 = round-to-nearest-even of the fp32 value). A NULL or
 * inconsistent tensor (unknown type, no codes or constants) or a NULL output fails with QLAB_ERR_ARG. */
qlab_status quant_tensor_dequantize(const quant_tensor *qt, float *out);
qlab_status quant_tensor_dequantize_ref(const quant_tensor *qt, float *out);
qlab_status quant_tensor_dequantize_bf16(const quant_tensor *qt, uint16_t *out);
/* Dequantizes elements [start, start+count) to fp32 (any start; an even one is fastest). Used by linear
 * layers to dequantize a few rows at a time without materialising the whole fp32 weight. A request outside
 * [0, n) fails with QLAB_ERR_ARG naming the range, and fills out[0, count) with NaN (when count > 0) so
 * that a caller that cannot propagate the status still sees the misuse in its results. */
qlab_status quant_tensor_dequantize_range(const quant_tensor *qt, int64_t start, int64_t count, float *out);
/* The same range to bf16 (round-to-nearest-even of the fp32 value), always on the calling thread (never
 * opens a parallel region), so a bf16 GEMM can dequantize weight panels from inside its own OpenMP loop.
 * Fails as quant_tensor_dequantize_range does. */
qlab_status quant_tensor_dequantize_range_bf16(const quant_tensor *qt, int64_t start, int64_t count,
                                               uint16_t *out);

/* The fp32 absmax of block b, after undoing double quantization if it was applied (absmax types only);
 * for the other types, the effective fp32 scale of the block. */
float quant_tensor_block_scale(const quant_tensor *qt, int64_t b);

/* Exact storage in bytes of codes + all constants (what a file must hold to reconstruct the tensor),
 * and the same as bits per parameter. */
size_t quant_tensor_bytes(const quant_tensor *qt);
/* The bytes quant_tensor_bytes will report for n elements quantized with these settings, known before
 * quantizing (memory accounting charges them before the allocation). 0 for a non-type. */
size_t quant_bytes_for(quant_dtype dt, int64_t n, int blocksize, int double_quant);
double quant_tensor_bits_per_param(const quant_tensor *qt);
/* The analytic bits per parameter: 4 + constant bits / blocksize (with DQ: 8/bs + 32/(bs*256)). */
double quant_bits_per_param_analytic(quant_dtype dt, int blocksize, int double_quant);

void quant_tensor_free(quant_tensor *qt);

/* bitsandbytes' signed 8-bit dynamic map (create_dynamic_map(signed=True)), 256 ascending values. */
const float *quant_dynamic_map_signed(void);
/* The 16 code values qt decodes with (its stored code_map, else quant_codebook(dtype)). */
const float *quant_tensor_codebook(const quant_tensor *qt);
/* The nested map qt decodes with (its stored dq_map, else quant_dynamic_map_signed()). */
const float *quant_tensor_dq_map(const quant_tensor *qt);
/* Whether map (count values) is `expect` up to QUANT_MAP_ULP_TOLERANCE ulp per entry (and, with
 * ascending, strictly ascending). On failure records "<what> entry i is v, <reason>" and returns
 * QLAB_ERR_FORMAT; the caller adds the file and tensor. */
#define QUANT_MAP_ULP_TOLERANCE 4
qlab_status quant_check_map_close(const float *map, const float *expect, int count, int ascending,
                                  const char *what);

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
