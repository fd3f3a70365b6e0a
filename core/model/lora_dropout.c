/* LoRA dropout masks (lora_dropout.h): the plain C reference of the counter-based mask stream, the
 * products with a mask held as bits, the run-time choice of the AVX-512 path, and the row-parallel drivers
 * lora.c calls. */
#include "core/model/lora_dropout.h"

#include "core/base/common.h"

#include <math.h>
#include <string.h>

/* Words of mask bits drawn at a time per row: 1024 columns, so the bits of a chunk stay on the stack. */
#define LORA_DROPOUT_CHUNK_WORDS 16

lora_dropout_spec lora_dropout_spec_of(float p) {
    lora_dropout_spec d;
    /* p * 2^32 is exact in double; p < 1 (a float at most 1 - 2^-24) keeps the rounded value below 2^32. */
    d.drop_below = (uint32_t)llround((double)p * 4294967296.0);
    d.keep_scale = (float)(1.0 / (1.0 - (double)p));
    return d;
}

void lora_dropout_bits_ref(uint64_t *bits, uint64_t key, int word0, int nwords, uint32_t drop_below) {
    for (int w = 0; w < nwords; w++) {
        uint64_t q0 = (uint64_t)(word0 + w) * 32, word = 0;
        for (int j = 0; j < 32; j++) {
            uint64_t z = lora_dropout_mix64(key + (q0 + (uint64_t)j) * LORA_DROPOUT_GOLDEN);
            word |= (uint64_t)((uint32_t)z >= drop_below) << (2 * j);
            word |= (uint64_t)((uint32_t)(z >> 32) >= drop_below) << (2 * j + 1);
        }
        bits[w] = word;
    }
}

/* out[i] = in[i] * m_i, or out[i] += in[i] * m_i (a product, then a sum) when accumulate. */
static void mul_ref(float *out, const float *in, const void *bits, int n, float keep_scale, int accumulate) {
    const unsigned char *b = bits;
    for (int c0 = 0; c0 < n; c0 += 64) {
        uint64_t w;
        memcpy(&w, b + c0 / 8, sizeof w);
        int len = n - c0 < 64 ? n - c0 : 64;
        for (int j = 0; j < len; j++) {
            float v = in[c0 + j] * ((w >> j) & 1 ? keep_scale : 0.0f);
            out[c0 + j] = accumulate ? out[c0 + j] + v : v;
        }
    }
}

void lora_dropout_mul_ref(float *out, const float *in, const void *bits, int n, float keep_scale) {
    mul_ref(out, in, bits, n, keep_scale, 0);
}

void lora_dropout_mul_add_ref(float *out, const float *in, const void *bits, int n, float keep_scale) {
    mul_ref(out, in, bits, n, keep_scale, 1);
}

/* ---------------------------------------------------------------- paths */

static int use_reference_;

int lora_dropout_avx512_usable(void) {
    return qlab_cpu_avx512();
}

static int use_avx512(void) {
    return !__atomic_load_n(&use_reference_, __ATOMIC_ACQUIRE) && lora_dropout_avx512_usable();
}

const char *lora_dropout_path(void) {
    return use_avx512() ? "avx512" : "ref";
}

void lora_dropout_use_reference(int on) {
    __atomic_store_n(&use_reference_, on ? 1 : 0, __ATOMIC_RELEASE);
}

void lora_dropout_bits(uint64_t *bits, uint64_t key, int word0, int nwords, uint32_t drop_below) {
    if (use_avx512())
        lora_dropout_bits_avx512(bits, key, word0, nwords, drop_below);
    else
        lora_dropout_bits_ref(bits, key, word0, nwords, drop_below);
}

void lora_dropout_mul(float *out, const float *in, const void *bits, int n, float keep_scale) {
    if (use_avx512())
        lora_dropout_mul_avx512(out, in, bits, n, keep_scale);
    else
        lora_dropout_mul_ref(out, in, bits, n, keep_scale);
}

void lora_dropout_mul_add(float *out, const float *in, const void *bits, int n, float keep_scale) {
    if (use_avx512())
        lora_dropout_mul_add_avx512(out, in, bits, n, keep_scale);
    else
        lora_dropout_mul_add_ref(out, in, bits, n, keep_scale);
}

/* ---------------------------------------------------------------- the row-parallel drivers */

void lora_dropout_apply_rows(float *out, const float *in, int n0, int rows, int IC, lora_dropout_spec d,
                             uint64_t seed, void *row_bits) {
    int words = lora_dropout_row_words(IC);
    size_t row_bytes = (size_t)words * sizeof(uint64_t);
    for (int i = 0; i < rows; i++) {
        uint64_t key = lora_dropout_row_key(seed, (uint64_t)(n0 + i)), chunk[LORA_DROPOUT_CHUNK_WORDS];
        for (int w0 = 0; w0 < words; w0 += LORA_DROPOUT_CHUNK_WORDS) {
            int nw = words - w0 < LORA_DROPOUT_CHUNK_WORDS ? words - w0 : LORA_DROPOUT_CHUNK_WORDS;
            int c0 = 64 * w0, len = IC - c0 < 64 * nw ? IC - c0 : 64 * nw;
            size_t at = (size_t)i * IC + (size_t)c0;
            lora_dropout_bits(chunk, key, w0, nw, d.drop_below);
            lora_dropout_mul(out + at, in + at, chunk, len, d.keep_scale);
            if (row_bits)
                memcpy((unsigned char *)row_bits + (size_t)i * row_bytes + (size_t)w0 * sizeof(uint64_t),
                       chunk, (size_t)nw * sizeof(uint64_t));
        }
    }
}

void lora_dropout_apply(float *out, const float *in, int N, int IC, lora_dropout_spec d, uint64_t seed,
                        void *row_bits) {
    size_t row_bytes = (size_t)lora_dropout_row_words(IC) * sizeof(uint64_t);
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++)
        lora_dropout_apply_rows(out + (size_t)n * IC, in + (size_t)n * IC, n, 1, IC, d, seed,
                                row_bits ? (unsigned char *)row_bits + (size_t)n * row_bytes : NULL);
}

void lora_dropout_apply_bits(float *out, const float *in, int N, int IC, float keep_scale,
                             const void *row_bits) {
    size_t row_bytes = (size_t)lora_dropout_row_words(IC) * sizeof(uint64_t);
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++)
        lora_dropout_mul(out + (size_t)n * IC, in + (size_t)n * IC,
                         (const unsigned char *)row_bits + (size_t)n * row_bytes, IC, keep_scale);
}

void lora_dropout_accumulate_bits(float *out, const float *in, int N, int IC, float keep_scale,
                                  const void *row_bits) {
    size_t row_bytes = (size_t)lora_dropout_row_words(IC) * sizeof(uint64_t);
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++)
        lora_dropout_mul_add(out + (size_t)n * IC, in + (size_t)n * IC,
                             (const unsigned char *)row_bits + (size_t)n * row_bytes, IC, keep_scale);
}
