/* AVX2 (+FMA, F16C) kernels of 4-bit quantization: the absmax quantizer (threshold counting, 8 lanes) and
 * dequantization to fp32/bf16 by a 16-entry table lookup built from two 8-entry vpermps and a blend.
 * Bit-identical to the scalar reference in core/quant/quant_ref.c (no FMA contraction: each product is
 * rounded exactly where the reference rounds it). */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "core/base/half.h"
#include "core/quant/quant_kernels.h"

/* 8 codes (int32 lanes, element order) -> 4 packed bytes, element 2j in the high nibble. */
static inline uint32_t pack_codes8(__m256i code) {
    __m256i pair = _mm256_or_si256(_mm256_slli_epi64(code, 4), _mm256_srli_epi64(code, 32));
    /* the packed byte is byte 0 of each 64-bit lane: gather bytes 0 and 8 of each 128-bit half */
    __m256i sel = _mm256_shuffle_epi8(pair, _mm256_setr_epi8(0, 8, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                                             -1, -1, -1, 0, 8, -1, -1, -1, -1, -1, -1, -1, -1,
                                                             -1, -1, -1, -1, -1, -1));
    uint32_t lo = (uint32_t)_mm256_extract_epi16(sel, 0), hi = (uint32_t)_mm256_extract_epi16(sel, 8);
    return lo | (hi << 16);
}

static inline uint32_t hmax_epu32(__m256i v) {
    __m128i m = _mm_max_epu32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    m = _mm_max_epu32(m, _mm_shuffle_epi32(m, _MM_SHUFFLE(1, 0, 3, 2)));
    m = _mm_max_epu32(m, _mm_shuffle_epi32(m, _MM_SHUFFLE(2, 3, 0, 1)));
    return (uint32_t)_mm_cvtsi128_si32(m);
}

static int64_t quantize_absmax_avx2(const quant_absmax_spec *spec, const float *x, int64_t n, int blocksize,
                                    int64_t b0, int64_t b1, uint8_t *codes, float *absmax) {
    __m256 t[15];
    for (int k = 0; k < 15; k++)
        t[k] = _mm256_set1_ps(spec->thresholds[k]);
    const __m256i map = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)spec->rank_to_code));
    const __m256i eight = _mm256_set1_epi32(8), abs_mask = _mm256_set1_epi32(0x7fffffff);
    for (int64_t b = b0; b < b1; b++) {
        int64_t s = b * blocksize;
        if (n - s < blocksize) { /* the partial last block */
            int64_t r = quant_quantize_absmax_scalar(spec, x, n, blocksize, b, b + 1, codes, absmax);
            if (r >= 0) return r;
            continue;
        }
        const float *xb = x + s;
        /* integer max of the sign-cleared bits: exact for finite values; NaN/Inf give >= 0x7f800000 */
        __m256i m = _mm256_setzero_si256();
        for (int i = 0; i < blocksize; i += 8)
            m = _mm256_max_epu32(m, _mm256_and_si256(_mm256_castps_si256(_mm256_loadu_ps(xb + i)), abs_mask));
        uint32_t bits = hmax_epu32(m);
        if (bits >= 0x7f800000u) return b;
        float amax;
        memcpy(&amax, &bits, 4);
        float recip = 1.0f / amax;
        if (amax == 0.0f || isinf(recip)) {
            quant_absmax_block_ref(spec, xb, blocksize, codes + s / 2, &absmax[b]);
            continue;
        }
        absmax[b] = amax;
        const __m256 vr = _mm256_set1_ps(recip);
        uint8_t *out = codes + s / 2;
        for (int i = 0; i < blocksize; i += 8) {
            __m256 v = _mm256_mul_ps(_mm256_loadu_ps(xb + i), vr);
            __m256i code;
            if (spec->sign_magnitude) {
                __m256i neg = _mm256_castps_si256(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_LT_OQ));
                __m256 a = _mm256_castsi256_ps(_mm256_and_si256(_mm256_castps_si256(v), abs_mask));
                __m256i r = _mm256_setzero_si256();
                for (int k = 0; k < 7; k++)
                    r = _mm256_sub_epi32(r, _mm256_castps_si256(_mm256_cmp_ps(a, t[k], _CMP_GT_OQ)));
                code = _mm256_or_si256(_mm256_permutevar8x32_epi32(map, r), _mm256_and_si256(neg, eight));
            } else {
                __m256i r = _mm256_setzero_si256();
                for (int k = 0; k < 15; k++)
                    r = _mm256_sub_epi32(r, _mm256_castps_si256(_mm256_cmp_ps(v, t[k], _CMP_GT_OQ)));
                code = r;
            }
            uint32_t packed = pack_codes8(code);
            memcpy(out + i / 2, &packed, 4);
        }
    }
    return -1;
}

/* 16-entry lookup: vpermps reads the low 3 bits of each index; bit 3 (moved to the sign bit) picks the
 * upper half. Bits above the nibble are a neighbour's nibble and ignored by both. */
static inline __m256 lookup16(__m256 lo, __m256 hi, __m256i idx) {
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, idx), _mm256_permutevar8x32_ps(hi, idx),
                            _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

/* Element-order nibble indices of 16 elements (8 code bytes) as two 8 x int32 vectors. */
static inline void nibble_indices16(const uint8_t *src, __m256i *first, __m256i *second) {
    __m128i b = _mm_loadl_epi64((const __m128i *)src);
    __m128i il = _mm_unpacklo_epi8(_mm_srli_epi16(b, 4), b);
    *first = _mm256_cvtepu8_epi32(il);
    *second = _mm256_cvtepu8_epi32(_mm_srli_si128(il, 8));
}

static inline float scalar_value(const float *table, const uint8_t *codes, int64_t i, float scale) {
    uint8_t byte = codes[i >> 1];
    return table[(i & 1) ? (byte & 15) : (byte >> 4)] * scale;
}

static void dequantize_avx2(const float *table, const uint8_t *codes, const float *scales,
                            int64_t first_block, int blocksize, int64_t start, int64_t count, float *out,
                            int streaming) {
    const __m256 lo = _mm256_loadu_ps(table), hi = _mm256_loadu_ps(table + 8);
    /* streaming stores need 32-byte alignment, kept by 16-element steps from an aligned start */
    int stream = streaming && ((uintptr_t)out & 31) == 0 && start % 16 == 0;
    int64_t i = start, end = start + count;
    float *o = out;
    for (int64_t b = start / blocksize; i < end; b++) { /* no division per block: nvfp4 blocks are 16 */
        int64_t bend = (b + 1) * blocksize < end ? (b + 1) * blocksize : end;
        float sc = scales[b - first_block];
        const __m256 vs = _mm256_set1_ps(sc);
        if (stream) {
            for (; i + 32 <= bend; i += 32, o += 32) {
                __m256i i0, i1, i2, i3;
                nibble_indices16(codes + i / 2, &i0, &i1);
                nibble_indices16(codes + i / 2 + 8, &i2, &i3);
                _mm256_stream_ps(o, _mm256_mul_ps(lookup16(lo, hi, i0), vs));
                _mm256_stream_ps(o + 8, _mm256_mul_ps(lookup16(lo, hi, i1), vs));
                _mm256_stream_ps(o + 16, _mm256_mul_ps(lookup16(lo, hi, i2), vs));
                _mm256_stream_ps(o + 24, _mm256_mul_ps(lookup16(lo, hi, i3), vs));
            }
            for (; i + 16 <= bend; i += 16, o += 16) {
                __m256i i0, i1;
                nibble_indices16(codes + i / 2, &i0, &i1);
                _mm256_stream_ps(o, _mm256_mul_ps(lookup16(lo, hi, i0), vs));
                _mm256_stream_ps(o + 8, _mm256_mul_ps(lookup16(lo, hi, i1), vs));
            }
        } else {
            for (; i + 16 <= bend; i += 16, o += 16) {
                __m256i i0, i1;
                nibble_indices16(codes + i / 2, &i0, &i1);
                _mm256_storeu_ps(o, _mm256_mul_ps(lookup16(lo, hi, i0), vs));
                _mm256_storeu_ps(o + 8, _mm256_mul_ps(lookup16(lo, hi, i1), vs));
            }
        }
        for (; i < bend; i++)
            *o++ = scalar_value(table, codes, i, sc);
    }
    if (stream) _mm_sfence();
}

/* Round-to-nearest-even fp32 -> bf16 of 16 values (two vectors), NaN made quiet as f32_to_bf16 does. */
static inline __m256i bf16_bits(__m256 v) {
    __m256i u = _mm256_castps_si256(v);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
    __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
    return _mm256_blendv_epi8(r, quiet, nan);
}

static inline __m256i to_bf16_16(__m256 a, __m256 b) {
    /* packus works per 128-bit half: (a0-3, b0-3, a4-7, b4-7) -> reorder the 64-bit quarters */
    __m256i p = _mm256_packus_epi32(bf16_bits(a), bf16_bits(b));
    return _mm256_permute4x64_epi64(p, _MM_SHUFFLE(3, 1, 2, 0));
}

static void dequantize_bf16_avx2(const float *table, const uint8_t *codes, const float *scales,
                                 int64_t first_block, int blocksize, int64_t start, int64_t count,
                                 uint16_t *out) {
    const __m256 lo = _mm256_loadu_ps(table), hi = _mm256_loadu_ps(table + 8);
    int64_t i = start, end = start + count;
    uint16_t *o = out;
    for (int64_t b = start / blocksize; i < end; b++) { /* no division per block: nvfp4 blocks are 16 */
        int64_t bend = (b + 1) * blocksize < end ? (b + 1) * blocksize : end;
        float sc = scales[b - first_block];
        const __m256 vs = _mm256_set1_ps(sc);
        for (; i + 16 <= bend; i += 16, o += 16) {
            __m256i i0, i1;
            nibble_indices16(codes + i / 2, &i0, &i1);
            __m256i h =
                to_bf16_16(_mm256_mul_ps(lookup16(lo, hi, i0), vs), _mm256_mul_ps(lookup16(lo, hi, i1), vs));
            _mm256_storeu_si256((__m256i *)o, h);
        }
        for (; i < bend; i++)
            *o++ = f32_to_bf16(scalar_value(table, codes, i, sc));
    }
}

const quant_kernel_set quant_kernels_avx2 = {"avx2", quantize_absmax_avx2, dequantize_avx2,
                                             dequantize_bf16_avx2};
