/* The descriptor table of the 4-bit data types (one row per quant_dtype, as ggml's type traits) and
 * everything derived from it: names, parsing, name lists for messages, help texts and experiment defaults,
 * block-size rules, code books.
 *
 * Adding a data type:
 *   1. a member of quant_dtype in quant.h (before QUANT_DTYPE_COUNT);
 *   2. its code book (and thresholds, if literal) in quant_tables.h;
 *   3. one row below, in the enum's position (the static assertion counts the rows; tests/test_quant_types.c
 *      checks every row's invariants and that every name list, help text and plot style shows it);
 *   4. its kernels: nothing for an fp32-absmax type (the generic absmax kernels, scalar and SIMD, run on
 *      the code book and thresholds, on the CPU and in CUDA); otherwise a per-block quantizer and a block
 *      scale decoder in quant.c (quant_kernels.h declares them), and, for a new scale format, its constant
 *      in quant_tensor and its tensor name in quant_io.c.
 * Nothing else lists the types: the CLI, the experiments, the CUDA self-test and the figures read the
 * table (`qlab dtypes` prints it; `qlab dtypes --gnuplot` the plot styles `qlab report` passes to gnuplot).
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "core/quant/quant.h"
#include "core/quant/quant_kernels.h"
#include "core/quant/quant_tables.h"

static const float cb_nf4[16] = QUANT_TABLE_NF4, th_nf4[15] = QUANT_THRESHOLDS_NF4;
static const float cb_fp4[16] = QUANT_TABLE_FP4, th_fp4[7] = QUANT_THRESHOLDS_FP4;
static const uint8_t rank_fp4[8] = QUANT_RANK_TO_CODE_FP4, rank_identity[8] = QUANT_RANK_TO_CODE_IDENTITY8;
static const float cb_fp4_e2m1[16] = QUANT_TABLE_FP4_E2M1, cb_fp4_e3m0[16] = QUANT_TABLE_FP4_E3M0;
static const float cb_int4[16] = QUANT_TABLE_INT4, cb_af4[16] = QUANT_TABLE_AF4;
static const float cb_e2m1[16] = QUANT_TABLE_E2M1, cb_iq4_nl[16] = QUANT_TABLE_IQ4_NL;

/* fp32-absmax rows: any power-of-two block size from 32 to 4096, default 64; quantized by the generic absmax
 * kernels (quant_kernels.h: scalar reference, AVX2, AVX-512, CUDA) from codebook + thresholds. */
#define ABSMAX_TYPE                                                                                          \
    .blocksize_min = QUANT_MIN_BLOCKSIZE, .blocksize_max = QUANT_MAX_BLOCKSIZE, .blocksize_default = 64,     \
    .scale_format = QUANT_SCALE_FP32_ABSMAX, .scale_name = "fp32 absmax", .scale_bytes = 4,                  \
    .quantize_kernels = "scalar, avx2, avx512"

/* One row per data type, in the enum's order (.dtype repeats the index; tests/test_quant_types.c checks it).
 */
static const quant_type_traits quant_types[] = {
    {
        .dtype = QUANT_NF4,
        .name = "nf4",
        .label = "NF4",
        .description =
            "NormalFloat4: N(0,1) quantiles, bit-exact with bitsandbytes' CUDA kernel (QLoRA default)",
        ABSMAX_TYPE,
        .codebook = cb_nf4,
        .thresholds = th_nf4,
        .rank_to_code = NULL,
        .bnb_compatible = 1,
        .quant_state = "bitsandbytes__nf4",
        .plot_color = "#4e79a7",
        .plot_point = 6,
    },
    {
        .dtype = QUANT_FP4,
        .name = "fp4",
        .label = "FP4",
        .description = "bitsandbytes FP4: sign, 2 exponent, 1 mantissa bits; bit-exact with its CUDA kernel",
        ABSMAX_TYPE,
        .codebook = cb_fp4,
        .thresholds = th_fp4,
        .rank_to_code = rank_fp4,
        .bnb_compatible = 1,
        .quant_state = "bitsandbytes__fp4",
        .plot_color = "#f28e2b",
        .plot_point = 4,
    },
    {
        .dtype = QUANT_FP4_E2M1,
        .name = "fp4_e2m1",
        .label = "FP4 (E2M1)",
        .description = "OCP E2M1 values (0 .. 6) scaled by 1/6",
        ABSMAX_TYPE,
        .codebook = cb_fp4_e2m1,
        .thresholds = NULL,
        .rank_to_code = rank_identity,
        .bnb_compatible = 0,
        .quant_state = "qlab__fp4_e2m1",
        .plot_color = "#e15759",
        .plot_point = 8,
    },
    {
        .dtype = QUANT_FP4_E3M0,
        .name = "fp4_e3m0",
        .label = "FP4 (E3M0)",
        .description = "sign + 3 exponent bits: 0, 2^-6 .. 1",
        ABSMAX_TYPE,
        .codebook = cb_fp4_e3m0,
        .thresholds = NULL,
        .rank_to_code = rank_identity,
        .bnb_compatible = 0,
        .quant_state = "qlab__fp4_e3m0",
        .plot_color = "#76b7b2",
        .plot_point = 10,
    },
    {
        .dtype = QUANT_INT4,
        .name = "int4",
        .label = "Int4",
        .description = "symmetric integers -7..7 scaled by 1/7",
        ABSMAX_TYPE,
        .codebook = cb_int4,
        .thresholds = NULL,
        .rank_to_code = NULL,
        .bnb_compatible = 0,
        .quant_state = "qlab__int4",
        .plot_color = "#59a14f",
        .plot_point = 12,
    },
    {
        .dtype = QUANT_AF4,
        .name = "af4",
        .label = "AF4",
        .description = "AbnormalFloat4 (Yoshida 2023), optimal for block size 64",
        ABSMAX_TYPE,
        .codebook = cb_af4,
        .thresholds = NULL,
        .rank_to_code = NULL,
        .bnb_compatible = 0,
        .quant_state = "qlab__af4",
        .plot_color = "#b07aa1",
        .plot_point = 14,
    },
    {
        .dtype = QUANT_MXFP4,
        .name = "mxfp4",
        .label = "MXFP4",
        .description = "OCP Microscaling FP4: E2M1 elements, an E8M0 power-of-two scale per 32",
        .blocksize_min = QUANT_MXFP4_BLOCKSIZE,
        .blocksize_max = QUANT_MXFP4_BLOCKSIZE,
        .blocksize_default = QUANT_MXFP4_BLOCKSIZE,
        .scale_format = QUANT_SCALE_E8M0,
        .scale_name = "E8M0",
        .scale_bytes = 1,
        .codebook = cb_e2m1,
        .quant_state = "qlab__mxfp4",
        .quantize = quant_quantize_block_mxfp4,
        .block_scale = quant_block_scale_e8m0,
        .quantize_kernels = "scalar",
        .plot_color = "#edc948",
        .plot_point = 8,
    },
    {
        .dtype = QUANT_NVFP4,
        .name = "nvfp4",
        .label = "NVFP4",
        .description = "NVIDIA FP4: E2M1 elements, an E4M3 scale per 16 times an fp32 tensor scale",
        .blocksize_min = QUANT_NVFP4_BLOCKSIZE,
        .blocksize_max = QUANT_NVFP4_BLOCKSIZE,
        .blocksize_default = QUANT_NVFP4_BLOCKSIZE,
        .scale_format = QUANT_SCALE_E4M3,
        .scale_name = "E4M3",
        .scale_bytes = 1,
        .codebook = cb_e2m1,
        .quant_state = "qlab__nvfp4",
        .quantize = quant_quantize_block_nvfp4,
        .block_scale = quant_block_scale_e4m3,
        .tensor_scale = quant_tensor_scale_nvfp4,
        .quantize_kernels = "scalar",
        .plot_color = "#9c755f",
        .plot_point = 12,
    },
    {
        .dtype = QUANT_IQ4_NL,
        .name = "iq4_nl",
        .label = "IQ4_NL",
        .description = "llama.cpp IQ4_NL: a non-linear int8 table, an fp16 scale per 32",
        .blocksize_min = QUANT_IQ4_NL_BLOCKSIZE,
        .blocksize_max = QUANT_IQ4_NL_BLOCKSIZE,
        .blocksize_default = QUANT_IQ4_NL_BLOCKSIZE,
        .scale_format = QUANT_SCALE_FP16,
        .scale_name = "fp16",
        .scale_bytes = 2,
        .codebook = cb_iq4_nl,
        .quant_state = "qlab__iq4_nl",
        .quantize = quant_quantize_block_iq4_nl,
        .block_scale = quant_block_scale_fp16,
        .quantize_kernels = "scalar",
        .plot_color = "#ff9da7",
        .plot_point = 4,
    },
};
_Static_assert(sizeof quant_types / sizeof quant_types[0] == QUANT_DTYPE_COUNT,
               "quant_types[] needs exactly one row per quant_dtype, in the enum's order");

const quant_type_traits *quant_type_traits_get(quant_dtype dt) {
    return (unsigned)dt < QUANT_DTYPE_COUNT ? &quant_types[dt] : NULL;
}

const char *quant_dtype_name(quant_dtype dt) {
    const quant_type_traits *t = quant_type_traits_get(dt);
    return t ? t->name : "unknown";
}

const float *quant_codebook(quant_dtype dt) {
    const quant_type_traits *t = quant_type_traits_get(dt);
    return t ? t->codebook : NULL;
}

int quant_dtype_has_fp32_absmax(quant_dtype dt) {
    const quant_type_traits *t = quant_type_traits_get(dt);
    return t && t->scale_format == QUANT_SCALE_FP32_ABSMAX;
}

int quant_default_blocksize(quant_dtype dt) {
    const quant_type_traits *t = quant_type_traits_get(dt);
    return t ? t->blocksize_default : 0;
}

/* ---------------------------------------------------------------- derived text, built once */

static char list_all[QUANT_DTYPE_COUNT * 32], list_absmax[QUANT_DTYPE_COUNT * 32];
static char list_json[QUANT_DTYPE_COUNT * 36], blocksize_rules[QUANT_DTYPE_COUNT * 96];
static pthread_once_t lists_once = PTHREAD_ONCE_INIT;

static void append(char *buf, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void append(char *buf, size_t cap, const char *fmt, ...) {
    size_t len = strlen(buf);
    va_list ap;
    va_start(ap, fmt);
    if (len < cap) vsnprintf(buf + len, cap - len, fmt, ap);
    va_end(ap);
}

static void lists_build(void) {
    for (int i = 0; i < QUANT_DTYPE_COUNT; i++) {
        const quant_type_traits *t = &quant_types[i];
        append(list_all, sizeof list_all, "%s%s", i ? ", " : "", t->name);
        append(list_json, sizeof list_json, "%s\"%s\"", i ? ", " : "[", t->name);
        if (t->scale_format == QUANT_SCALE_FP32_ABSMAX)
            append(list_absmax, sizeof list_absmax, "%s%s", list_absmax[0] ? ", " : "", t->name);
    }
    append(list_json, sizeof list_json, "]");
    /* block-size rules, types with the same (min, max, default) grouped in table order */
    int done[QUANT_DTYPE_COUNT] = {0};
    for (int i = 0; i < QUANT_DTYPE_COUNT; i++) {
        if (done[i]) continue;
        const quant_type_traits *t = &quant_types[i];
        append(blocksize_rules, sizeof blocksize_rules, "%s", i ? "; " : "");
        for (int j = i; j < QUANT_DTYPE_COUNT; j++) {
            const quant_type_traits *u = &quant_types[j];
            if (done[j] || u->blocksize_min != t->blocksize_min || u->blocksize_max != t->blocksize_max ||
                u->blocksize_default != t->blocksize_default)
                continue;
            append(blocksize_rules, sizeof blocksize_rules, "%s%s", j > i ? ", " : "", u->name);
            done[j] = 1;
        }
        if (t->blocksize_min == t->blocksize_max)
            append(blocksize_rules, sizeof blocksize_rules, ": %d", t->blocksize_min);
        else
            append(blocksize_rules, sizeof blocksize_rules, ": powers of two from %d to %d (default %d)",
                   t->blocksize_min, t->blocksize_max, t->blocksize_default);
    }
}

const char *quant_dtype_list(int fp32_absmax_only) {
    pthread_once(&lists_once, lists_build);
    return fp32_absmax_only ? list_absmax : list_all;
}

const char *quant_dtype_list_json(void) {
    pthread_once(&lists_once, lists_build);
    return list_json;
}

const char *quant_blocksize_summary(void) {
    pthread_once(&lists_once, lists_build);
    return blocksize_rules;
}

/* ---------------------------------------------------------------- parsing and checks */

qlab_status quant_dtype_parse(const char *name, quant_dtype *dt) {
    for (int i = 0; name && i < QUANT_DTYPE_COUNT; i++) {
        if (strcasecmp(name, quant_types[i].name) == 0) {
            *dt = (quant_dtype)i;
            return QLAB_OK;
        }
    }
    return qlab_fail(QLAB_ERR_ARG, "unknown data type '%s' (expected one of %s)", name ? name : "(null)",
                     quant_dtype_list(0));
}

qlab_status quant_check_blocksize(quant_dtype dt, int blocksize) {
    const quant_type_traits *t = quant_type_traits_get(dt);
    if (!t) return qlab_fail(QLAB_ERR_ARG, "unknown data type %d", (int)dt);
    if (blocksize >= t->blocksize_min && blocksize <= t->blocksize_max && !(blocksize & (blocksize - 1)))
        return QLAB_OK;
    if (t->blocksize_min == t->blocksize_max)
        return qlab_fail(QLAB_ERR_ARG, "block size %d is not valid for %s (the format fixes it at %d)",
                         blocksize, t->name, t->blocksize_min);
    return qlab_fail(QLAB_ERR_ARG,
                     "block size %d is not valid for %s (expected a power of two from %d to %d)", blocksize,
                     t->name, t->blocksize_min, t->blocksize_max);
}
