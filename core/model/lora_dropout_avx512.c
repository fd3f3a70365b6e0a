/* AVX-512 (F+DQ+BW+VL) path of the LoRA dropout masks (lora_dropout.h): splitmix64 over 8 counters at a
 * time (vpmullq), the 16 32-bit halves compared with the threshold in one unsigned compare, and the mask
 * products as a blend of keep_scale and 0 times the input. Integer hashing and one IEEE product per element,
 * as in the reference: bit-identical to lora_dropout_bits_ref and lora_dropout_mul_ref. */
#include <immintrin.h>
#include <string.h>

#include "core/model/lora_dropout.h"

static inline __m512i mix64x8(__m512i x) {
    const __m512i c1 = _mm512_set1_epi64((long long)0xBF58476D1CE4E5B9ull);
    const __m512i c2 = _mm512_set1_epi64((long long)0x94D049BB133111EBull);
    x = _mm512_add_epi64(x, _mm512_set1_epi64((long long)LORA_DROPOUT_GOLDEN));
    x = _mm512_mullo_epi64(_mm512_xor_si512(x, _mm512_srli_epi64(x, 30)), c1);
    x = _mm512_mullo_epi64(_mm512_xor_si512(x, _mm512_srli_epi64(x, 27)), c2);
    return _mm512_xor_si512(x, _mm512_srli_epi64(x, 31));
}

void lora_dropout_bits_avx512(uint64_t *bits, uint64_t key, int word0, int nwords, uint32_t drop_below) {
    const __m512i lanes = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i golden = _mm512_set1_epi64((long long)LORA_DROPOUT_GOLDEN);
    const __m512i step = _mm512_set1_epi64((long long)(8 * LORA_DROPOUT_GOLDEN));
    const __m512i threshold = _mm512_set1_epi32((int)drop_below);
    /* Lane i of x holds key + (q0 + i) golden, q0 = 32 word0: the counters of pairs q0 .. q0 + 7. */
    __m512i x =
        _mm512_add_epi64(_mm512_set1_epi64((long long)(key + (uint64_t)word0 * 32 * LORA_DROPOUT_GOLDEN)),
                         _mm512_mullo_epi64(lanes, golden));
    /* Two words (8 independent products chains) per iteration: vpmullq's latency is hidden. */
    int w = 0;
    for (; w + 2 <= nwords; w += 2) {
        __m512i x1 = _mm512_add_epi64(x, _mm512_slli_epi64(step, 2));
        uint64_t even = 0, odd = 0;
        for (int v = 0; v < 4; v++) {
            __mmask16 keep0 = _mm512_cmpge_epu32_mask(mix64x8(x), threshold);
            __mmask16 keep1 = _mm512_cmpge_epu32_mask(mix64x8(x1), threshold);
            even |= (uint64_t)keep0 << (16 * v);
            odd |= (uint64_t)keep1 << (16 * v);
            x = _mm512_add_epi64(x, step);
            x1 = _mm512_add_epi64(x1, step);
        }
        bits[w] = even;
        bits[w + 1] = odd;
        x = x1;
    }
    for (; w < nwords; w++) {
        uint64_t word = 0;
        for (int v = 0; v < 4; v++) {
            /* As 16 32-bit lanes, lane 2i is the low half of pair q0 + i (an even column) and 2i + 1 its high
             * half: lane k is column 16 v + k of the word. */
            __mmask16 keep = _mm512_cmpge_epu32_mask(mix64x8(x), threshold);
            word |= (uint64_t)keep << (16 * v);
            x = _mm512_add_epi64(x, step);
        }
        bits[w] = word;
    }
}

static inline __m512 mask_factor(uint64_t word, int v, __m512 keep_scale) {
    return _mm512_mask_blend_ps((__mmask16)(word >> (16 * v)), _mm512_setzero_ps(), keep_scale);
}

/* out = in * m, or out = out + in * m when accumulate: a separate product and sum, as the reference (no
 * fused multiply-add). */
static inline __attribute__((always_inline)) void mul(float *out, const float *in, const void *bits, int n,
                                                      float keep_scale, int accumulate) {
    const unsigned char *b = bits;
    const __m512 s = _mm512_set1_ps(keep_scale);
    for (int c0 = 0; c0 < n; c0 += 64) {
        uint64_t word;
        memcpy(&word, b + c0 / 8, sizeof word);
        for (int v = 0; v < 4 && c0 + 16 * v < n; v++) {
            int c = c0 + 16 * v, len = n - c < 16 ? n - c : 16;
            __mmask16 live = (__mmask16)((1u << len) - 1u);
            __m512 x = _mm512_mul_ps(_mm512_maskz_loadu_ps(live, in + c), mask_factor(word, v, s));
            if (accumulate) x = _mm512_add_ps(_mm512_maskz_loadu_ps(live, out + c), x);
            _mm512_mask_storeu_ps(out + c, live, x);
        }
    }
}

void lora_dropout_mul_avx512(float *out, const float *in, const void *bits, int n, float keep_scale) {
    mul(out, in, bits, n, keep_scale, 0);
}

void lora_dropout_mul_add_avx512(float *out, const float *in, const void *bits, int n, float keep_scale) {
    mul(out, in, bits, n, keep_scale, 1);
}
