/* AVX-512 (F+BW+VL+DQ) kernels of 4-bit quantization: the absmax quantizer (threshold counting, 16 lanes)
 * and dequantization to fp32/bf16 by a 16-entry vpermps table lookup. Bit-identical to the scalar
 * reference in core/quant/quant_ref.c: same fp32 reciprocal, same products, same strict comparisons. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "core/base/half.h"
#include "core/quant/quant_kernels.h"

/* The 16 codes of 16 consecutive elements (8 bytes at codes + i/2) packed into the tensor layout. */
static inline void store_codes16(uint8_t *dst, __m512i code) {
    __m512i pair = _mm512_or_si512(_mm512_slli_epi64(code, 4), _mm512_srli_epi64(code, 32));
    _mm_storel_epi64((__m128i *)dst, _mm512_cvtepi64_epi8(pair));
}

static int64_t quantize_absmax_avx512(const quant_absmax_spec *spec, const float *x, int64_t n, int blocksize,
                                      int64_t b0, int64_t b1, uint8_t *codes, float *absmax) {
    __m512 t[15];
    for (int k = 0; k < 15; k++)
        t[k] = _mm512_set1_ps(spec->thresholds[k]);
    const __m512i map = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)spec->rank_to_code));
    const __m512i one = _mm512_set1_epi32(1), eight = _mm512_set1_epi32(8);
    const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff);
    for (int64_t b = b0; b < b1; b++) {
        int64_t s = b * blocksize;
        if (n - s < blocksize) { /* the partial last block */
            int64_t r = quant_quantize_absmax_scalar(spec, x, n, blocksize, b, b + 1, codes, absmax);
            if (r >= 0) return r;
            continue;
        }
        const float *xb = x + s;
        /* max |x| as integer max of the sign-cleared bits: exact for finite floats, and any NaN/Inf shows
         * up as bits >= 0x7f800000 */
        __m512i m = _mm512_setzero_si512();
        for (int i = 0; i < blocksize; i += 16)
            m = _mm512_max_epu32(m, _mm512_and_si512(_mm512_castps_si512(_mm512_loadu_ps(xb + i)), abs_mask));
        uint32_t bits = _mm512_reduce_max_epu32(m);
        if (bits >= 0x7f800000u) return b;
        float amax;
        memcpy(&amax, &bits, 4);
        float recip = 1.0f / amax;
        if (amax == 0.0f || isinf(recip)) {
            quant_absmax_block_ref(spec, xb, blocksize, codes + s / 2, &absmax[b]);
            continue;
        }
        absmax[b] = amax;
        const __m512 vr = _mm512_set1_ps(recip);
        uint8_t *out = codes + s / 2;
        if (spec->sign_magnitude) {
            for (int i = 0; i < blocksize; i += 16) {
                __m512 v = _mm512_mul_ps(_mm512_loadu_ps(xb + i), vr);
                __mmask16 neg = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ);
                __m512 a = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), abs_mask));
                __m512i r = _mm512_setzero_si512();
                for (int k = 0; k < 7; k++)
                    r = _mm512_mask_add_epi32(r, _mm512_cmp_ps_mask(a, t[k], _CMP_GT_OQ), r, one);
                __m512i code = _mm512_permutexvar_epi32(r, map);
                code = _mm512_mask_or_epi32(code, neg, code, eight);
                store_codes16(out + i / 2, code);
            }
        } else {
            for (int i = 0; i < blocksize; i += 16) {
                __m512 v = _mm512_mul_ps(_mm512_loadu_ps(xb + i), vr);
                __m512i r = _mm512_setzero_si512();
                for (int k = 0; k < 15; k++)
                    r = _mm512_mask_add_epi32(r, _mm512_cmp_ps_mask(v, t[k], _CMP_GT_OQ), r, one);
                store_codes16(out + i / 2, r);
            }
        }
    }
    return -1;
}

/* Element-order nibble indices of 32 elements (16 code bytes) as two 16 x int32 vectors. The bits above
 * the nibble are garbage (a neighbour's nibble); vpermps reads only the low 4 bits of each index. */
static inline void nibble_indices32(const uint8_t *src, __m512i *first, __m512i *second) {
    __m128i b = _mm_loadu_si128((const __m128i *)src);
    __m128i hi = _mm_srli_epi16(b, 4);
    *first = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(hi, b));
    *second = _mm512_cvtepu8_epi32(_mm_unpackhi_epi8(hi, b));
}

static inline __m512i nibble_indices16(const uint8_t *src) {
    __m128i b = _mm_loadl_epi64((const __m128i *)src);
    return _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(_mm_srli_epi16(b, 4), b));
}

static inline float scalar_value(const float *table, const uint8_t *codes, int64_t i, float scale) {
    uint8_t byte = codes[i >> 1];
    return table[(i & 1) ? (byte & 15) : (byte >> 4)] * scale;
}

static void dequantize_avx512(const float *table, const uint8_t *codes, const float *scales,
                              int64_t first_block, int blocksize, int64_t start, int64_t count, float *out,
                              int streaming) {
    const __m512 tab = _mm512_loadu_ps(table);
    /* Streaming stores need 64-byte aligned addresses, which every 16-element step keeps when out is
     * aligned and start is a multiple of 16. */
    int stream = streaming && ((uintptr_t)out & 63) == 0 && start % 16 == 0;
    int64_t i = start, end = start + count;
    float *o = out;
    for (int64_t b = start / blocksize; i < end; b++) { /* no division per block: nvfp4 blocks are 16 */
        int64_t bend = (b + 1) * blocksize < end ? (b + 1) * blocksize : end;
        float sc = scales[b - first_block];
        const __m512 vs = _mm512_set1_ps(sc);
        if (stream) {
            for (; i + 64 <= bend; i += 64, o += 64) {
                __m512i i0, i1, i2, i3;
                nibble_indices32(codes + i / 2, &i0, &i1);
                nibble_indices32(codes + i / 2 + 16, &i2, &i3);
                _mm512_stream_ps(o, _mm512_mul_ps(_mm512_permutexvar_ps(i0, tab), vs));
                _mm512_stream_ps(o + 16, _mm512_mul_ps(_mm512_permutexvar_ps(i1, tab), vs));
                _mm512_stream_ps(o + 32, _mm512_mul_ps(_mm512_permutexvar_ps(i2, tab), vs));
                _mm512_stream_ps(o + 48, _mm512_mul_ps(_mm512_permutexvar_ps(i3, tab), vs));
            }
            for (; i + 16 <= bend; i += 16, o += 16)
                _mm512_stream_ps(
                    o, _mm512_mul_ps(_mm512_permutexvar_ps(nibble_indices16(codes + i / 2), tab), vs));
        } else {
            for (; i + 32 <= bend; i += 32, o += 32) {
                __m512i i0, i1;
                nibble_indices32(codes + i / 2, &i0, &i1);
                _mm512_storeu_ps(o, _mm512_mul_ps(_mm512_permutexvar_ps(i0, tab), vs));
                _mm512_storeu_ps(o + 16, _mm512_mul_ps(_mm512_permutexvar_ps(i1, tab), vs));
            }
            for (; i + 16 <= bend; i += 16, o += 16)
                _mm512_storeu_ps(
                    o, _mm512_mul_ps(_mm512_permutexvar_ps(nibble_indices16(codes + i / 2), tab), vs));
        }
        for (; i < bend; i++)
            *o++ = scalar_value(table, codes, i, sc);
    }
    if (stream) _mm_sfence();
}

/* Round-to-nearest-even fp32 -> bf16 of 16 values, NaN made quiet as half.h's f32_to_bf16 does. */
static inline __m256i to_bf16(__m512 v) {
    __m512i u = _mm512_castps_si512(v);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    return _mm512_cvtepi32_epi16(r);
}

static void dequantize_bf16_avx512(const float *table, const uint8_t *codes, const float *scales,
                                   int64_t first_block, int blocksize, int64_t start, int64_t count,
                                   uint16_t *out) {
    const __m512 tab = _mm512_loadu_ps(table);
    int64_t i = start, end = start + count;
    uint16_t *o = out;
    for (int64_t b = start / blocksize; i < end; b++) { /* no division per block: nvfp4 blocks are 16 */
        int64_t bend = (b + 1) * blocksize < end ? (b + 1) * blocksize : end;
        float sc = scales[b - first_block];
        const __m512 vs = _mm512_set1_ps(sc);
        for (; i + 32 <= bend; i += 32, o += 32) {
            __m512i i0, i1;
            nibble_indices32(codes + i / 2, &i0, &i1);
            _mm256_storeu_si256((__m256i *)o, to_bf16(_mm512_mul_ps(_mm512_permutexvar_ps(i0, tab), vs)));
            _mm256_storeu_si256((__m256i *)(o + 16),
                                to_bf16(_mm512_mul_ps(_mm512_permutexvar_ps(i1, tab), vs)));
        }
        for (; i + 16 <= bend; i += 16, o += 16)
            _mm256_storeu_si256(
                (__m256i *)o,
                to_bf16(_mm512_mul_ps(_mm512_permutexvar_ps(nibble_indices16(codes + i / 2), tab), vs)));
        for (; i < bend; i++)
            *o++ = f32_to_bf16(scalar_value(table, codes, i, sc));
    }
}

const quant_kernel_set quant_kernels_avx512 = {"avx512", quantize_absmax_avx512, dequantize_avx512,
                                               dequantize_bf16_avx512};
