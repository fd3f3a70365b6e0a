/* Drivers of 4-bit blockwise quantization: argument checks, tensor allocation, the per-format quantizers
 * of MXFP4, NVFP4 and IQ4_NL, double quantization of the absmax constants, sizes and error statistics.
 * The per-block absmax quantizer and the dequantize loops are kernels (quant_kernels.h) picked at run
 * time; OpenMP splits work over whole blocks only, so results never depend on the thread count. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/base/half.h"
#include "core/quant/quant.h"
#include "core/quant/quant_kernels.h"
#include "core/quant/quant_tables.h"

/* ---------------------------------------------------------------- kernel selection */

static const quant_kernel_set *kernels_for_name(const char *name, qlab_status *st) {
    *st = QLAB_OK;
    if (strcmp(name, "scalar") == 0) return &quant_kernels_scalar;
#if defined(__x86_64__) || defined(__i386__)
    int has_avx2 = qlab_cpu_avx2(), has_avx512 = qlab_cpu_avx512();
    if (strcmp(name, "auto") == 0)
        return has_avx512 ? &quant_kernels_avx512 : has_avx2 ? &quant_kernels_avx2 : &quant_kernels_scalar;
    if (strcmp(name, "avx2") == 0 || strcmp(name, "avx512") == 0) {
        int ok = name[3] == '2' ? has_avx2 : has_avx512;
        if (!ok) {
            *st = qlab_fail(QLAB_ERR_UNSUPPORTED, "quantization kernel '%s' is not supported by this CPU",
                            name);
            return NULL;
        }
        return name[3] == '2' ? &quant_kernels_avx2 : &quant_kernels_avx512;
    }
#else
    if (strcmp(name, "auto") == 0) return &quant_kernels_scalar;
    if (strcmp(name, "avx2") == 0 || strcmp(name, "avx512") == 0) {
        *st = qlab_fail(QLAB_ERR_UNSUPPORTED, "quantization kernel '%s' needs an x86-64 CPU", name);
        return NULL;
    }
#endif
    *st = qlab_fail(QLAB_ERR_ARG, "unknown quantization kernel '%s' (expected auto, avx512, avx2 or scalar)",
                    name);
    return NULL;
}

static const quant_kernel_set *active_kernels_;

/* The default kernels: the best this CPU supports, or $QLAB_QUANT_KERNEL when it names a supported one. */
static const quant_kernel_set *active_kernels(void) {
    const quant_kernel_set *k = __atomic_load_n(&active_kernels_, __ATOMIC_ACQUIRE);
    if (k) return k;
    qlab_status st;
    const char *env = getenv("QLAB_QUANT_KERNEL");
    k = env ? kernels_for_name(env, &st) : NULL;
    if (!k) k = kernels_for_name("auto", &st);
    __atomic_store_n(&active_kernels_, k, __ATOMIC_RELEASE);
    return k;
}

const char *quant_kernel_name(void) {
    return active_kernels()->name;
}

qlab_status quant_force_kernel(const char *name) {
    qlab_status st;
    const quant_kernel_set *k = kernels_for_name(name ? name : "(null)", &st);
    if (!k) return st;
    __atomic_store_n(&active_kernels_, k, __ATOMIC_RELEASE);
    return QLAB_OK;
}

/* ---------------------------------------------------------------- small format helpers */

/* E2M1 code of a scaled value: nearest, ties to the even code, saturating at 6 (quant_tables.h). */
static uint8_t e2m1_code(float v) {
    static const float t[7] = QUANT_THRESHOLDS_E2M1;
    int sign = v < 0.0f ? 8 : 0;
    float m = fabsf(v);
    int r = 0;
    /* a tie at an odd threshold goes up to the even code: >= there, > elsewhere (branch-free) */
    for (int k = 0; k < 7; k += 2)
        r += m > t[k];
    for (int k = 1; k < 7; k += 2)
        r += m >= t[k];
    return (uint8_t)(r | sign);
}

static float e4m3_to_f32_compute(uint8_t b) {
    int e = (b >> 3) & 15, m = b & 7;
    if (e == 15 && m == 7) return NAN;
    float v = e ? ldexpf(1.0f + (float)m / 8.0f, e - 7) : ldexpf((float)m, -9);
    return (b & 0x80) ? -v : v;
}

/* The 256 E4M3 values and the 256 E8M0 scales 2^(c-127) (255 = NaN), built once: the dequantize
 * drivers look a scale up per block, and ldexpf per block would cost as much as the block itself. */
static float e4m3_values[256], e8m0_values[256];
static pthread_once_t byte_tables_once = PTHREAD_ONCE_INIT;

static void byte_tables_build(void) {
    for (int b = 0; b < 256; b++) {
        e4m3_values[b] = e4m3_to_f32_compute((uint8_t)b);
        e8m0_values[b] = b == 255 ? NAN : ldexpf(1.0f, b - QUANT_MXFP4_E8M0_BIAS);
    }
}

static void byte_tables_init(void) {
    pthread_once(&byte_tables_once, byte_tables_build);
}

static float e4m3_to_f32(uint8_t b) {
    byte_tables_init();
    return e4m3_values[b];
}

/* Nearest E4M3 (ties to even) of a non-negative finite value, saturating at 448. */
static uint8_t e4m3_from_f32(float v) {
    if (!(v > 0.0f)) return 0;
    if (v >= QUANT_NVFP4_E4M3_MAX) return 0x7E;
    int exp2;
    frexpf(v, &exp2);
    int E = exp2 - 1;                                /* v in [2^E, 2^(E+1)) */
    if (E < -6) return (uint8_t)rintf(ldexpf(v, 9)); /* subnormal: m * 2^-9; m = 8 is the smallest normal */
    int q = (int)rintf(ldexpf(v, 3 - E));            /* 8..16 */
    int m = q - 8, e = E + 7;
    if (m == 8) {
        m = 0;
        e++;
    }
    int code = (e << 3) | m;
    return (uint8_t)(code > 0x7E ? 0x7E : code);
}

static int zero_index_of_dynamic_map(void) {
    const float *map = quant_dynamic_map_signed();
    for (int i = 0; i < 256; i++)
        if (map[i] == 0.0f) return i;
    return 127;
}

/* bitsandbytes' dQuantize<0>: a 7-step binary search over the 256 sorted map values, then a midpoint test
 * against the neighbour on the side x lies; an exact midpoint stays with the last pivot. */
static uint8_t dynamic_quantize(const float *code, float x) {
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
        float midpoint = (upper + val) * 0.5f;
        return (uint8_t)(x > midpoint ? upper_pivot : pivot);
    }
    float midpoint = (lower + val) * 0.5f;
    return (uint8_t)(x < midpoint ? lower_pivot : pivot);
}

/* ---------------------------------------------------------------- scales */

float quant_block_scale_e8m0(const quant_tensor *qt, int64_t b) {
    return e8m0_values[qt->scale8[b]];
}

float quant_block_scale_e4m3(const quant_tensor *qt, int64_t b) {
    return e4m3_values[qt->scale8[b]] * qt->tensor_scale;
}

float quant_block_scale_fp16(const quant_tensor *qt, int64_t b) {
    return fp16_to_f32(qt->scale16[b]);
}

/* The fp32 scale of block b of a tensor of a known type (checked by the callers). */
static float block_scale_unchecked(const quant_tensor *qt, int64_t b) {
    const quant_type_traits *t = quant_type_traits_get(qt->dtype);
    if (t->block_scale) return t->block_scale(qt, b);
    if (qt->double_quant)
        return quant_tensor_dq_map(qt)[qt->dq_codes[b]] * qt->dq_absmax[b / QUANT_DQ_BLOCKSIZE] +
               qt->dq_offset;
    return qt->absmax[b];
}

/* Scales of blocks [b0, b1), with the per-type dispatch outside the loop. */
static void fill_block_scales(const quant_tensor *qt, int64_t b0, int64_t b1, float *out) {
    quant_block_scale_fn own = quant_type_traits_get(qt->dtype)->block_scale;
    if (own) {
        for (int64_t b = b0; b < b1; b++)
            out[b - b0] = own(qt, b);
    } else if (qt->double_quant) {
        const float *map = quant_tensor_dq_map(qt);
        for (int64_t b = b0; b < b1; b++)
            out[b - b0] = map[qt->dq_codes[b]] * qt->dq_absmax[b / QUANT_DQ_BLOCKSIZE] + qt->dq_offset;
    } else {
        memcpy(out, qt->absmax + b0, sizeof(float) * (size_t)(b1 - b0));
    }
}

float quant_tensor_block_scale(const quant_tensor *qt, int64_t b) {
    if (!qt || !quant_type_traits_get(qt->dtype) || b < 0 || b >= qt->nblocks) return NAN;
    byte_tables_init();
    return block_scale_unchecked(qt, b);
}

/* ---------------------------------------------------------------- quantize */

void quant_tensor_free(quant_tensor *qt) {
    if (!qt) return;
    qlab_free_aligned(qt->codes);
    qlab_free_aligned(qt->absmax);
    qlab_free_aligned(qt->scale8);
    qlab_free_aligned(qt->scale16);
    qlab_free_aligned(qt->dq_codes);
    qlab_free_aligned(qt->dq_absmax);
    qlab_free_aligned(qt->dq_map);
    qlab_free_aligned(qt->code_map);
    memset(qt, 0, sizeof *qt);
}

const float *quant_tensor_codebook(const quant_tensor *qt) {
    return qt->code_map ? qt->code_map : quant_codebook(qt->dtype);
}

const float *quant_tensor_dq_map(const quant_tensor *qt) {
    return qt->dq_map ? qt->dq_map : quant_dynamic_map_signed();
}

static const char *const orig_dtype_names[] = {"float32", "float16", "bfloat16"};

const char *quant_orig_dtype_name(quant_orig_dtype d) {
    return (unsigned)d < sizeof orig_dtype_names / sizeof *orig_dtype_names ? orig_dtype_names[d] : NULL;
}

qlab_status quant_orig_dtype_parse(const char *name, quant_orig_dtype *d) {
    for (int i = 0; i < (int)(sizeof orig_dtype_names / sizeof *orig_dtype_names); i++)
        if (!strcmp(name, orig_dtype_names[i])) {
            *d = (quant_orig_dtype)i;
            return QLAB_OK;
        }
    return qlab_fail(QLAB_ERR_FORMAT, "dtype \"%.40s\" is not float32, float16 or bfloat16", name);
}

/* Distance in representable fp32 values (ulp steps) between two finite floats. */
static int64_t float_ulp_distance(float a, float b) {
    int32_t ia, ib;
    memcpy(&ia, &a, 4);
    memcpy(&ib, &b, 4);
    int64_t la = ia < 0 ? -(int64_t)(ia & 0x7fffffff) : ia, lb = ib < 0 ? -(int64_t)(ib & 0x7fffffff) : ib;
    return la > lb ? la - lb : lb - la;
}

qlab_status quant_check_map_close(const float *map, const float *expect, int count, int ascending,
                                  const char *what) {
    for (int i = 0; i < count; i++) {
        if (!isfinite(map[i]))
            return qlab_fail(QLAB_ERR_FORMAT, "%s entry %d is %g, not a finite number", what, i,
                             (double)map[i]);
        if (ascending && i > 0 && !(map[i] > map[i - 1]))
            return qlab_fail(QLAB_ERR_FORMAT, "%s entry %d is %.9g, not above entry %d (%.9g): not ascending",
                             what, i, (double)map[i], i - 1, (double)map[i - 1]);
        int64_t d = float_ulp_distance(map[i], expect[i]);
        if (d > QUANT_MAP_ULP_TOLERANCE)
            return qlab_fail(QLAB_ERR_FORMAT,
                             "%s entry %d is %.9g, %lld ulp from the expected %.9g (tolerance %d ulp)", what,
                             i, (double)map[i], (long long)d, (double)expect[i], QUANT_MAP_ULP_TOLERANCE);
    }
    return QLAB_OK;
}

static qlab_status fail_nonfinite(const float *x, int64_t n, int64_t from) {
    int64_t i = from;
    while (i < n && isfinite(x[i]))
        i++;
    if (i >= n) i = from; /* cannot happen: the caller saw a non-finite value at or after `from` */
    return qlab_fail(QLAB_ERR_NUMERIC, "cannot quantize: element %lld of %lld is %s", (long long)i,
                     (long long)n, isnan(x[i]) ? "NaN" : (x[i] > 0 ? "+Inf" : "-Inf"));
}

/* Compresses the first-level absmax (nblocks fp32) into qt's dq fields, as bitsandbytes' quantize_4bit
 * with compress_statistics: offset = mean, then 8-bit blockwise (256) quantization of absmax - offset
 * with the signed dynamic map. The mean is summed in double in index order and rounded once to fp32 (the
 * correctly rounded mean in practice; torch's fp32 reduction may differ from it in the last bit). */
static qlab_status double_quantize(quant_tensor *qt, const float *absmax) {
    int64_t nb = qt->nblocks;
    qt->dq_nblocks = (nb + QUANT_DQ_BLOCKSIZE - 1) / QUANT_DQ_BLOCKSIZE;
    qt->dq_codes = qlab_alloc_aligned((size_t)(nb > 0 ? nb : 1));
    qt->dq_absmax = qlab_alloc_aligned(sizeof(float) * (size_t)(qt->dq_nblocks > 0 ? qt->dq_nblocks : 1));
    if (!qt->dq_codes || !qt->dq_absmax) return QLAB_ERR_NOMEM;
    double sum = 0;
    for (int64_t b = 0; b < nb; b++)
        sum += absmax[b];
    float offset = nb > 0 ? (float)(sum / (double)nb) : 0.0f;
    qt->dq_offset = offset;
    qt->double_quant = 1;
    const float *map = quant_dynamic_map_signed();
    uint8_t zero_code = (uint8_t)zero_index_of_dynamic_map();
    for (int64_t d = 0; d < qt->dq_nblocks; d++) {
        int64_t b0 = d * QUANT_DQ_BLOCKSIZE, b1 = b0 + QUANT_DQ_BLOCKSIZE < nb ? b0 + QUANT_DQ_BLOCKSIZE : nb;
        float amax = 0.0f;
        for (int64_t b = b0; b < b1; b++) {
            float a = fabsf(absmax[b] - offset); /* not fmaxf: a libm call here */
            amax = a > amax ? a : amax;
        }
        qt->dq_absmax[d] = amax;
        if (amax == 0.0f) {
            for (int64_t b = b0; b < b1; b++)
                qt->dq_codes[b] = zero_code;
            continue;
        }
        float recip = 1.0f / amax, pre = 1.0f;
        if (isinf(recip)) {
            pre = 0x1p64f;
            recip = 1.0f / (amax * pre);
        }
        for (int64_t b = b0; b < b1; b++)
            qt->dq_codes[b] = dynamic_quantize(map, ((absmax[b] - offset) * pre) * recip);
    }
    return QLAB_OK;
}

void quant_quantize_block_mxfp4(const float *x, int len, float tensor_scale, uint8_t *codes, void *scale) {
    float amax = 0.0f;
    for (int i = 0; i < len; i++) {
        float a = fabsf(x[i]); /* not fmaxf: a libm call here */
        amax = a > amax ? a : amax;
    }
    int code = 0;
    if (amax > 0.0f) {
        int exp2;
        frexpf(amax, &exp2);
        int e = (exp2 - 1) - 2; /* floor(log2(amax)) - emax(E2M1) */
        code = e + QUANT_MXFP4_E8M0_BIAS;
        code = code < 0 ? 0 : code > 254 ? 254 : code;
    }
    *(uint8_t *)scale = (uint8_t)code;
    /* x / 2^(code-127) as a product with 2^(127-code) (representable for every code): exact, or correctly
     * rounded when the result is subnormal, like ldexpf */
    float inverse = ldexpf(1.0f, QUANT_MXFP4_E8M0_BIAS - code);
    for (int i = 0; i < len; i++) {
        uint8_t c = amax > 0.0f ? e2m1_code(x[i] * inverse) : 0;
        if (i & 1)
            codes[i / 2] |= c;
        else
            codes[i / 2] = (uint8_t)(c << 4);
    }
}

void quant_quantize_block_nvfp4(const float *x, int len, float tensor_scale, uint8_t *codes, void *scale) {
    float amax = 0.0f;
    for (int i = 0; i < len; i++) {
        float a = fabsf(x[i]); /* not fmaxf: a libm call here */
        amax = a > amax ? a : amax;
    }
    uint8_t s8 = tensor_scale > 0.0f ? e4m3_from_f32(amax / (QUANT_E2M1_MAX * tensor_scale)) : 0;
    float eff = e4m3_to_f32(s8) * tensor_scale;
    *(uint8_t *)scale = s8;
    for (int i = 0; i < len; i++) {
        uint8_t c = eff > 0.0f ? e2m1_code(x[i] / eff) : 0;
        if (i & 1)
            codes[i / 2] |= c;
        else
            codes[i / 2] = (uint8_t)(c << 4);
    }
}

float quant_tensor_scale_nvfp4(float tensor_amax) {
    return tensor_amax / (QUANT_NVFP4_E4M3_MAX * QUANT_E2M1_MAX);
}

/* llama.cpp's kvalues_iq4nl search (best_index_int8): nearest value, an exact tie goes to the upper one.
 * Its bisection ends at lo = the largest k with values[k] <= x; counting gives the same lo without
 * data-dependent branches, then the same float comparison of the two distances. */
static int iq4_nl_best_index(const float *values, float x) {
    if (x <= values[0]) return 0;
    if (x >= values[15]) return 15;
    int lo = 0;
    for (int k = 1; k < 15; k++)
        lo += values[k] <= x;
    return x - values[lo] < values[lo + 1] - x ? lo : lo + 1;
}

/* llama.cpp's IQ4_NL scale without the refinement/search: d = (signed element of largest magnitude) / -127,
 * stored as fp16; elements are scaled by 1/fp16(d) (the stored scale, so codes and dequantization agree)
 * and mapped to the nearest table value. */
void quant_quantize_block_iq4_nl(const float *x, int len, float tensor_scale, uint8_t *codes, void *scale) {
    static const float values[16] = QUANT_TABLE_IQ4_NL;
    float amax = 0.0f, max = 0.0f;
    for (int i = 0; i < len; i++) {
        float ax = fabsf(x[i]);
        if (ax > amax) {
            amax = ax;
            max = x[i];
        }
    }
    float d = max / -127.0f;
    if (d > 65504.0f) d = 65504.0f; /* largest finite fp16: beyond it, elements saturate */
    if (d < -65504.0f) d = -65504.0f;
    uint16_t d16 = amax < 1e-15f ? 0 : f32_to_fp16(d); /* llama.cpp's GROUP_MAX_EPS */
    float df = fp16_to_f32(d16);
    if (df == 0.0f) d16 = 0;
    memcpy(scale, &d16, sizeof d16);
    float id = df != 0.0f ? 1.0f / df : 0.0f;
    for (int i = 0; i < len; i++) {
        uint8_t c = df != 0.0f ? (uint8_t)iq4_nl_best_index(values, id * x[i]) : 8; /* 8: value 1, times 0 */
        if (i & 1)
            codes[i / 2] |= c;
        else
            codes[i / 2] = (uint8_t)(c << 4);
    }
}

#define QUANT_CHUNK_BLOCKS 1024 /* blocks per OpenMP work item */

static qlab_status quantize_impl(quant_tensor *qt, const float *x, int64_t n, quant_dtype dt, int blocksize,
                                 int double_quant, const quant_kernel_set *ks) {
    if (!qt) return qlab_fail(QLAB_ERR_ARG, "quantize: no output tensor");
    memset(qt, 0, sizeof *qt);
    QLAB_TRY(quant_check_blocksize(dt, blocksize));
    if (n < 0 || n > ((int64_t)1 << 50))
        return qlab_fail(QLAB_ERR_ARG, "quantize: bad element count %lld", (long long)n);
    if (n > 0 && !x)
        return qlab_fail(QLAB_ERR_ARG, "quantize: input is NULL for %lld elements", (long long)n);
    const quant_type_traits *t = quant_type_traits_get(dt);
    if (double_quant && t->scale_format != QUANT_SCALE_FP32_ABSMAX)
        return qlab_fail(QLAB_ERR_ARG,
                         "double quantization applies only to types with an fp32 absmax (%s); %s stores its "
                         "own %s scale",
                         quant_dtype_list(1), t->name, t->scale_name);
    qt->dtype = dt;
    qt->blocksize = blocksize;
    qt->n = n;
    qt->nblocks = (n + blocksize - 1) / blocksize;
    qt->ndim = 1;
    qt->shape[0] = n;
    int64_t nb = qt->nblocks;
    size_t nb_alloc = (size_t)(nb > 0 ? nb : 1);
    qt->codes = qlab_alloc_aligned((size_t)(n + 1) / 2 + 1);
    if (!qt->codes) goto nomem;

    int64_t nchunks = (nb + QUANT_CHUNK_BLOCKS - 1) / QUANT_CHUNK_BLOCKS;
    int64_t bad = INT64_MAX;
    if (t->scale_format == QUANT_SCALE_FP32_ABSMAX) {
        const quant_absmax_spec *spec = quant_absmax_spec_get(dt);
        float *absmax = qlab_alloc_aligned(sizeof(float) * nb_alloc);
        if (!absmax) goto nomem;
#pragma omp parallel for schedule(static) reduction(min : bad)
        for (int64_t c = 0; c < nchunks; c++) {
            int64_t b0 = c * QUANT_CHUNK_BLOCKS,
                    b1 = b0 + QUANT_CHUNK_BLOCKS < nb ? b0 + QUANT_CHUNK_BLOCKS : nb;
            int64_t r = ks->quantize_absmax(spec, x, n, blocksize, b0, b1, qt->codes, absmax);
            if (r >= 0 && r < bad) bad = r;
        }
        if (bad != INT64_MAX) {
            qlab_free_aligned(absmax);
            quant_tensor_free(qt);
            return fail_nonfinite(x, n, bad * blocksize);
        }
        if (!double_quant) {
            qt->absmax = absmax;
            return QLAB_OK;
        }
        qlab_status st = double_quantize(qt, absmax);
        qlab_free_aligned(absmax);
        if (st != QLAB_OK) goto nomem;
        return QLAB_OK;
    }

    /* Types with their own scale format (MXFP4, NVFP4, IQ4_NL): the row's scalar per-block quantizer, after
     * one pass to check finiteness (and find the tensor amax for a tensor scale). */
    float tensor_amax = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(x[i])) {
            quant_tensor_free(qt);
            return fail_nonfinite(x, n, i);
        }
        tensor_amax = fabsf(x[i]) > tensor_amax ? fabsf(x[i]) : tensor_amax;
    }
    uint8_t *scales = qlab_alloc_aligned((size_t)t->scale_bytes * nb_alloc);
    if (!scales) goto nomem;
    if (t->scale_bytes == 2)
        qt->scale16 = (uint16_t *)scales;
    else
        qt->scale8 = scales;
    if (t->tensor_scale) qt->tensor_scale = t->tensor_scale(tensor_amax);
    quant_block_quantizer quantize_block = t->quantize;
    int scale_bytes = t->scale_bytes;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < nb; b++) {
        int64_t s = b * blocksize;
        int len = (int)(n - s < blocksize ? n - s : blocksize);
        quantize_block(x + s, len, qt->tensor_scale, qt->codes + s / 2, scales + (size_t)b * scale_bytes);
    }
    return QLAB_OK;

nomem:
    quant_tensor_free(qt);
    return qlab_fail(QLAB_ERR_NOMEM, "quantize: out of memory for %lld elements", (long long)n);
}

qlab_status quant_tensor_quantize(quant_tensor *qt, const float *x, int64_t n, quant_dtype dt, int blocksize,
                                  int double_quant) {
    return quantize_impl(qt, x, n, dt, blocksize, double_quant, active_kernels());
}

qlab_status quant_tensor_quantize_ref(quant_tensor *qt, const float *x, int64_t n, quant_dtype dt,
                                      int blocksize, int double_quant) {
    return quantize_impl(qt, x, n, dt, blocksize, double_quant, &quant_kernels_scalar);
}

/* ---------------------------------------------------------------- dequantize */

/* Why qt cannot be dequantized (a message naming the problem), or NULL when it can. */
static const char *dequant_unusable(const quant_tensor *qt) {
    if (!qt) return "no tensor (NULL)";
    const quant_type_traits *t = quant_type_traits_get(qt->dtype);
    if (!t) return "unknown data type";
    if (qt->blocksize <= 0 || qt->n < 0 || qt->nblocks != (qt->n + qt->blocksize - 1) / qt->blocksize)
        return "inconsistent n, blocksize and nblocks";
    if (qt->n > 0 && !qt->codes) return "no codes";
    if (qt->nblocks == 0) return NULL;
    int missing = t->scale_format != QUANT_SCALE_FP32_ABSMAX
                      ? (t->scale_bytes == 2 ? !qt->scale16 : !qt->scale8)
                  : qt->double_quant ? !qt->dq_codes || !qt->dq_absmax
                                     : !qt->absmax;
    return missing ? "block constants missing" : NULL;
}

/* One dequantization request split into work items of QUANT_CHUNK_BLOCKS blocks. */
typedef struct {
    const quant_tensor *qt;
    const quant_kernel_set *ks;
    const float *table;
    int64_t start, count;
    float *out_f32;
    uint16_t *out_bf16;
    int64_t b_first, b_end;
    int streaming;
} dequant_job;

/* Work item c of job: its blocks' scales into a small stack buffer, then the kernel over its elements. */
static void dequant_chunk(void *job, long c) {
    const dequant_job *j = job;
    float scales[QUANT_CHUNK_BLOCKS];
    int bs = j->qt->blocksize;
    int64_t b0 = j->b_first + c * QUANT_CHUNK_BLOCKS,
            b1 = b0 + QUANT_CHUNK_BLOCKS < j->b_end ? b0 + QUANT_CHUNK_BLOCKS : j->b_end;
    fill_block_scales(j->qt, b0, b1, scales);
    int64_t e0 = b0 * bs > j->start ? b0 * bs : j->start;
    int64_t e1 = b1 * bs < j->start + j->count ? b1 * bs : j->start + j->count;
    if (j->out_f32)
        j->ks->dequantize(j->table, j->qt->codes, scales, b0, bs, e0, e1 - e0, j->out_f32 + (e0 - j->start),
                          j->streaming);
    else
        j->ks->dequantize_bf16(j->table, j->qt->codes, scales, b0, bs, e0, e1 - e0,
                               j->out_bf16 + (e0 - j->start));
}

/* Elements [start, start + count) through kernel set ks, split into work items of whole blocks (so each
 * computes its block scales into a small stack buffer and no allocation can fail). Refuses a bad tensor
 * or range with a message; an out-of-range request also fills the output with NaN. */
static qlab_status dequant_impl(const quant_tensor *qt, int64_t start, int64_t count, float *out_f32,
                                uint16_t *out_bf16, const quant_kernel_set *ks, int parallel) {
    if (!out_f32 && !out_bf16 && count != 0) return qlab_fail(QLAB_ERR_ARG, "dequantize: output is NULL");
    const char *why = dequant_unusable(qt);
    if (why) return qlab_fail(QLAB_ERR_ARG, "dequantize: %s", why);
    if (start < 0 || count < 0 || start > qt->n || count > qt->n - start) {
        for (int64_t i = 0; i < count; i++) {
            if (out_f32)
                out_f32[i] = NAN;
            else
                out_bf16[i] = 0x7FC0; /* bf16 NaN */
        }
        return qlab_fail(QLAB_ERR_ARG,
                         "dequantize: elements [%lld, %lld) requested from a %s tensor of %lld elements",
                         (long long)start, (long long)start + (long long)count, quant_dtype_name(qt->dtype),
                         (long long)qt->n);
    }
    if (count == 0) return QLAB_OK;
    const float *table = quant_tensor_codebook(qt);
    int bs = qt->blocksize;
    byte_tables_init();
    if (start & 1) { /* the kernels start on a byte boundary: do the odd first element here */
        float v = table[qt->codes[start >> 1] & 15] * block_scale_unchecked(qt, start / bs);
        if (out_f32)
            *out_f32++ = v;
        else
            *out_bf16++ = f32_to_bf16(v);
        start++;
        if (--count == 0) return QLAB_OK;
    }
    dequant_job job = {qt,
                       ks,
                       table,
                       start,
                       count,
                       out_f32,
                       out_bf16,
                       start / bs,
                       (start + count - 1) / bs + 1,
                       (size_t)count * (out_f32 ? 4 : 2) >= QUANT_STREAM_MIN_BYTES};
    int64_t nchunks = (job.b_end - job.b_first + QUANT_CHUNK_BLOCKS - 1) / QUANT_CHUNK_BLOCKS;
    /* a serial request never enters the OpenMP runtime (qlab_run_tasks): gemm_bf16.c packs a quantized
     * operand a row at a time, ~5 * 10^4 requests in a bf16 QLoRA step of the bench model */
    qlab_run_tasks((long)nchunks, parallel && count >= (1 << 18) ? qlab_num_threads() : 1, dequant_chunk,
                   &job);
    return QLAB_OK;
}

qlab_status quant_tensor_dequantize(const quant_tensor *qt, float *out) {
    if (!out) return qlab_fail(QLAB_ERR_ARG, "dequantize: output is NULL");
    return dequant_impl(qt, 0, qt ? qt->n : 0, out, NULL, active_kernels(), 1);
}

qlab_status quant_tensor_dequantize_ref(const quant_tensor *qt, float *out) {
    if (!out) return qlab_fail(QLAB_ERR_ARG, "dequantize: output is NULL");
    return dequant_impl(qt, 0, qt ? qt->n : 0, out, NULL, &quant_kernels_scalar, 0);
}

qlab_status quant_tensor_dequantize_bf16(const quant_tensor *qt, uint16_t *out) {
    if (!out) return qlab_fail(QLAB_ERR_ARG, "dequantize: output is NULL");
    return dequant_impl(qt, 0, qt ? qt->n : 0, NULL, out, active_kernels(), 1);
}

qlab_status quant_tensor_dequantize_range(const quant_tensor *qt, int64_t start, int64_t count, float *out) {
    if (!out && count != 0) return qlab_fail(QLAB_ERR_ARG, "dequantize: output is NULL");
    return dequant_impl(qt, start, count, out, NULL, active_kernels(), 1);
}

qlab_status quant_tensor_dequantize_range_bf16(const quant_tensor *qt, int64_t start, int64_t count,
                                               uint16_t *out) {
    if (!out && count != 0) return qlab_fail(QLAB_ERR_ARG, "dequantize: output is NULL");
    return dequant_impl(qt, start, count, NULL, out, active_kernels(), 0);
}

/* ---------------------------------------------------------------- sizes and errors */

size_t quant_bytes_for(quant_dtype dt, int64_t n, int blocksize, int double_quant) {
    const quant_type_traits *t = quant_type_traits_get(dt);
    if (!t || n < 0 || blocksize <= 0) return 0;
    size_t nb = (size_t)((n + blocksize - 1) / blocksize), bytes = (size_t)(n + 1) / 2;
    if (double_quant && t->scale_format == QUANT_SCALE_FP32_ABSMAX)
        return bytes + nb + sizeof(float) * ((nb + QUANT_DQ_BLOCKSIZE - 1) / QUANT_DQ_BLOCKSIZE) +
               sizeof(float);
    return bytes + (size_t)t->scale_bytes * nb + (t->tensor_scale ? sizeof(float) : 0);
}

size_t quant_tensor_bytes(const quant_tensor *qt) {
    const quant_type_traits *t = qt ? quant_type_traits_get(qt->dtype) : NULL;
    if (!t) return 0;
    size_t nb = (size_t)qt->nblocks, bytes = (size_t)(qt->n + 1) / 2;
    if (qt->double_quant) return bytes + nb + sizeof(float) * (size_t)qt->dq_nblocks + sizeof(float);
    return bytes + (size_t)t->scale_bytes * nb + (t->tensor_scale ? sizeof(float) : 0);
}

double quant_tensor_bits_per_param(const quant_tensor *qt) {
    if (!qt || qt->n <= 0) return 0;
    return 8.0 * (double)quant_tensor_bytes(qt) / (double)qt->n;
}

double quant_bits_per_param_analytic(quant_dtype dt, int blocksize, int double_quant) {
    const quant_type_traits *t = quant_type_traits_get(dt);
    if (!t || blocksize <= 0) return 0;
    if (double_quant && t->scale_format == QUANT_SCALE_FP32_ABSMAX)
        return 4.0 + 8.0 / blocksize + 32.0 / (blocksize * (double)QUANT_DQ_BLOCKSIZE);
    return 4.0 + 8.0 * t->scale_bytes / blocksize; /* a tensor scale (nvfp4) adds a negligible 32 bits */
}

void quant_error(const float *orig, const float *recon, int64_t n, quant_error_stats *st) {
    double se = 0, sx = 0, mx = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = (double)orig[i] - (double)recon[i];
        se += e * e;
        sx += (double)orig[i] * orig[i];
        if (fabs(e) > mx) mx = fabs(e);
    }
    st->mse = n > 0 ? se / (double)n : 0;
    st->max_abs_err = mx;
    st->sqnr_db = se > 0 ? 10.0 * log10(sx / se) : INFINITY;
    st->bits_per_param = 0; /* unknown from two arrays; quant_tensor_error fills it */
}

qlab_status quant_tensor_error(const quant_tensor *qt, const float *orig, quant_error_stats *st) {
    if (!qt || !orig || !st) return qlab_fail(QLAB_ERR_ARG, "quant_tensor_error: NULL argument");
    float *recon = qlab_alloc_aligned(sizeof(float) * (size_t)(qt->n > 0 ? qt->n : 1));
    if (!recon) return QLAB_ERR_NOMEM;
    qlab_status ds = quant_tensor_dequantize(qt, recon);
    if (ds != QLAB_OK) {
        qlab_free_aligned(recon);
        return ds;
    }
    quant_error(orig, recon, qt->n, st);
    st->bits_per_param = quant_tensor_bits_per_param(qt);
    qlab_free_aligned(recon);
    return QLAB_OK;
}
