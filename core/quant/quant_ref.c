/* Scalar reference kernels of 4-bit quantization for the absmax types (the code every SIMD kernel must
 * match bit for bit), the per-type code-book descriptors, and bitsandbytes' signed dynamic 8-bit map.
 * The format-specific quantizers of MXFP4/NVFP4/IQ4_NL and double quantization live in quant.c. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/half.h"
#include "core/quant/quant.h"
#include "core/quant/quant_kernels.h"
#include "core/quant/quant_tables.h"

/* ---------------------------------------------------------------- code-book descriptors */

static quant_absmax_spec spec_table[QUANT_DTYPE_COUNT];
static pthread_once_t spec_once = PTHREAD_ONCE_INIT;

static void spec_ascending(quant_absmax_spec *s, const float *table, const float *literal_thresholds) {
    s->sign_magnitude = 0;
    s->nthresholds = 15;
    memcpy(s->table, table, sizeof s->table);
    for (int k = 0; k < 15; k++)
        s->thresholds[k] =
            literal_thresholds ? literal_thresholds[k] : QUANT_MIDPOINT(table[k], table[k + 1]);
    for (int r = 0; r < 16; r++)
        s->rank_to_code[r] = (uint8_t)r;
    for (int c = 0; c < 16; c++)
        if (table[c] == 0.0f) s->zero_code = (uint8_t)c;
}

static void spec_sign_magnitude(quant_absmax_spec *s, const float *table, const float *literal_thresholds,
                                const uint8_t *rank_to_code) {
    s->sign_magnitude = 1;
    s->nthresholds = 7;
    memcpy(s->table, table, sizeof s->table);
    for (int r = 0; r < 8; r++)
        s->rank_to_code[r] = rank_to_code[r];
    for (int r = 8; r < 16; r++)
        s->rank_to_code[r] = rank_to_code[7]; /* unreachable; keeps lookups in range */
    for (int k = 0; k < 7; k++)
        s->thresholds[k] = literal_thresholds
                               ? literal_thresholds[k]
                               : QUANT_MIDPOINT(table[rank_to_code[k]], table[rank_to_code[k + 1]]);
    for (int k = 7; k < 15; k++)
        s->thresholds[k] = INFINITY;
    s->zero_code = 0;
}

/* One spec per fp32-absmax row of the descriptor table: a row with rank_to_code is sign-magnitude, the
 * others ascending; literal thresholds where the row gives them, fp32 midpoints otherwise. */
static void spec_init(void) {
    for (int d = 0; d < QUANT_DTYPE_COUNT; d++) {
        const quant_type_traits *t = quant_type_traits_get((quant_dtype)d);
        if (t->scale_format != QUANT_SCALE_FP32_ABSMAX) continue;
        if (t->rank_to_code)
            spec_sign_magnitude(&spec_table[d], t->codebook, t->thresholds, t->rank_to_code);
        else
            spec_ascending(&spec_table[d], t->codebook, t->thresholds);
    }
}

const quant_absmax_spec *quant_absmax_spec_get(quant_dtype dt) {
    if (!quant_dtype_has_fp32_absmax(dt)) return NULL;
    pthread_once(&spec_once, spec_init);
    return &spec_table[dt];
}

/* ---------------------------------------------------------------- scalar absmax quantizer */

uint8_t quant_absmax_code_ref(const quant_absmax_spec *spec, float v) {
    if (spec->sign_magnitude) {
        int sign = v < 0.0f ? 8 : 0;
        float m = fabsf(v);
        int r = 0;
        for (int k = 0; k < 7; k++)
            r += m > spec->thresholds[k];
        return (uint8_t)(spec->rank_to_code[r] | sign);
    }
    int r = 0;
    for (int k = 0; k < 15; k++)
        r += v > spec->thresholds[k];
    return (uint8_t)r;
}

void quant_absmax_block_ref(const quant_absmax_spec *spec, const float *x, int len, uint8_t *out,
                            float *absmax) {
    float amax = 0.0f;
    for (int i = 0; i < len; i++) {
        float a = fabsf(x[i]); /* not fmaxf: a libm call here */
        amax = a > amax ? a : amax;
    }
    *absmax = amax;
    if (amax == 0.0f) {
        /* bitsandbytes computes 0 * (1/0) = NaN here, which its NF4 tree maps to code 0 (-1.0, dequantized
         * as -0.0); we write the code of 0 instead so that nothing divides by zero and zeros stay +0. */
        uint8_t z = spec->zero_code;
        memset(out, (z << 4) | z, (size_t)(len + 1) / 2);
        return; /* an odd tail's low nibble is z too: the code of the padding 0.0 */
    }
    float recip = 1.0f / amax;
    float pre = 1.0f;
    if (isinf(recip)) {
        /* absmax below ~2.9e-39: scale block and absmax by 2^64 (exact) so the reciprocal is finite. */
        pre = 0x1p64f;
        recip = 1.0f / (amax * pre);
    }
    for (int i = 0; i + 1 < len; i += 2) {
        uint8_t hi = quant_absmax_code_ref(spec, (x[i] * pre) * recip);
        uint8_t lo = quant_absmax_code_ref(spec, (x[i + 1] * pre) * recip);
        out[i / 2] = (uint8_t)((hi << 4) | lo);
    }
    /* An odd tail is padded with 0.0 and quantized, as bitsandbytes' kernels load the missing element as
     * 0: its low nibble is the code of 0.0 (7 for NF4, 0 for FP4). */
    if (len & 1)
        out[len / 2] = (uint8_t)((quant_absmax_code_ref(spec, (x[len - 1] * pre) * recip) << 4) |
                                 quant_absmax_code_ref(spec, 0.0f));
}

int64_t quant_quantize_absmax_scalar(const quant_absmax_spec *spec, const float *x, int64_t n, int blocksize,
                                     int64_t b0, int64_t b1, uint8_t *codes, float *absmax) {
    for (int64_t b = b0; b < b1; b++) {
        int64_t s = b * blocksize;
        int len = (int)(n - s < blocksize ? n - s : blocksize);
        for (int i = 0; i < len; i++)
            if (!isfinite(x[s + i])) return b;
        quant_absmax_block_ref(spec, x + s, len, codes + s / 2, &absmax[b]);
    }
    return -1;
}

/* ---------------------------------------------------------------- scalar dequantize */

static inline uint8_t code_at(const uint8_t *codes, int64_t i) {
    uint8_t byte = codes[i >> 1];
    return (i & 1) ? (byte & 15) : (byte >> 4);
}

void quant_dequantize_scalar(const float *table, const uint8_t *codes, const float *scales,
                             int64_t first_block, int blocksize, int64_t start, int64_t count, float *out,
                             int streaming) {
    for (int64_t i = 0; i < count; i++) {
        int64_t e = start + i;
        out[i] = table[code_at(codes, e)] * scales[e / blocksize - first_block];
    }
}

void quant_dequantize_bf16_scalar(const float *table, const uint8_t *codes, const float *scales,
                                  int64_t first_block, int blocksize, int64_t start, int64_t count,
                                  uint16_t *out) {
    for (int64_t i = 0; i < count; i++) {
        int64_t e = start + i;
        out[i] = f32_to_bf16(table[code_at(codes, e)] * scales[e / blocksize - first_block]);
    }
}

const quant_kernel_set quant_kernels_scalar = {"scalar", quant_quantize_absmax_scalar,
                                               quant_dequantize_scalar, quant_dequantize_bf16_scalar};

/* ---------------------------------------------------------------- bitsandbytes' dynamic map */

/* torch.linspace(start, end, steps) for float32 as ATen's CPU kernel computes it: step in fp32, the first
 * half counted up from start (start + step * i), the second half down from end (end - step * (steps-1-i)).
 * ATen's x86 builds compile that kernel with FMA contraction (its AVX2 kernels, which AVX-512 machines run
 * too), so each value is rounded once: fmaf. This is the map bitsandbytes creates, stores as
 * nested_quant_map and quantizes with on any x86-64 machine with AVX2 (checked bit for bit against
 * torch 2.15 / bitsandbytes 0.50.2 in tests/interop/check_bnb.py); a torch without FMA (ATen's DEFAULT
 * capability) rounds the product and the sum separately, which moves 42 of the 256 entries by 1-2 ulp. */
static void torch_linspace_f32(float start, float end, int steps, float *out) {
    float step = (end - start) / (float)(steps - 1);
    int halfway = steps / 2;
    for (int i = 0; i < steps; i++)
        out[i] = i < halfway ? fmaf(step, (float)i, start) : fmaf(-step, (float)(steps - i - 1), end);
}

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static float dynamic_map[256];
static pthread_once_t dynamic_once = PTHREAD_ONCE_INIT;

/* create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8): for decade i = 0..6 the 2^i
 * midpoints of linspace(0.1, 1, 2^i + 1), times 10^(i-6) (a float32 tensor times a Python float: the
 * scalar is rounded to fp32 and the product to fp32), both signs; plus 0 and 1; sorted. */
static void dynamic_map_init(void) {
    float data[256];
    int count = 0;
    for (int i = 0; i < 7; i++) {
        int items = (1 << i) + 1;
        float bounds[65];
        torch_linspace_f32(0.1f, 1.0f, items, bounds);
        float scale = (float)pow(10.0, (double)(i - 6));
        for (int k = 0; k + 1 < items; k++) {
            float mean = (bounds[k] + bounds[k + 1]) / 2.0f;
            data[count++] = scale * mean;
            data[count++] = -scale * mean;
        }
    }
    data[count++] = 0.0f;
    data[count++] = 1.0f;
    qsort(data, 256, sizeof(float), cmp_float);
    memcpy(dynamic_map, data, sizeof data);
}

const float *quant_dynamic_map_signed(void) {
    pthread_once(&dynamic_once, dynamic_map_init);
    return dynamic_map;
}
