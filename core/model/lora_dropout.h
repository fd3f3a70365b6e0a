/* LoRA dropout masks as bits (used by lora.c). The mask is counter-based: element (row, column) of the
 * mask for a given seed is a pure function of (seed, row, column), so a row can be drawn in any order, on
 * any thread, by any code path, and backward redraws exactly the forward's mask without storing it.
 *
 * The stream: row n has the key lora_dropout_mix64(seed ^ lora_dropout_mix64(n)); columns 2q and 2q+1 take
 * the low and high 32 bits of z_q = lora_dropout_mix64(key + q * golden), which is splitmix64's q-th output
 * from the state key. A column is dropped when its 32-bit value is below drop_below = round(p * 2^32), so
 * the drop probability is drop_below / 2^32: exactly p for every float p >= 2^-9 (p * 2^32 is then an
 * integer), and within 2^-33 of p below that. Kept elements are multiplied by keep_scale =
 * (float)(1 / (1 - p)) with 1 - p and the quotient in double, and dropped ones by 0, which is what torch's
 * native_dropout does (input * mask * scale, a double scale applied to a float tensor). */
#ifndef QLAB_LORA_DROPOUT_H
#define QLAB_LORA_DROPOUT_H

#include <stdint.h>

#define LORA_DROPOUT_GOLDEN 0x9E3779B97F4A7C15ull

/* splitmix64's step and finaliser: turns structured inputs (counters, indices) into independent-looking
 * 64-bit values. */
static inline uint64_t lora_dropout_mix64(uint64_t x) {
    x += LORA_DROPOUT_GOLDEN;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

typedef struct {
    uint32_t drop_below; /* a column is dropped when its 32-bit value is < drop_below */
    float keep_scale;    /* kept elements are multiplied by this */
} lora_dropout_spec;

/* The spec of dropout probability p in (0, 1). */
lora_dropout_spec lora_dropout_spec_of(float p);

/* The key of row n of the mask drawn from seed. */
static inline uint64_t lora_dropout_row_key(uint64_t seed, uint64_t row) {
    return lora_dropout_mix64(seed ^ lora_dropout_mix64(row));
}

/* bits[w] for w in [0, nwords): the keep bits of columns 64 (word0 + w) .. 64 (word0 + w) + 63 of the row
 * with this key, column 64 (word0 + w) + j in bit j (1 = kept). Columns past the row's end are drawn too;
 * callers ignore them. lora_dropout_bits runs the fastest path of this CPU; every path gives the same
 * bits as the plain C reference (tests/test_lora_dropout.c checks). */
void lora_dropout_bits(uint64_t *bits, uint64_t key, int word0, int nwords, uint32_t drop_below);
void lora_dropout_bits_ref(uint64_t *bits, uint64_t key, int word0, int nwords, uint32_t drop_below);
/* AVX-512 F+DQ (8 lanes of 64-bit products); call only when lora_dropout_avx512_usable(). */
void lora_dropout_bits_avx512(uint64_t *bits, uint64_t key, int word0, int nwords, uint32_t drop_below);
int lora_dropout_avx512_usable(void);
/* The path lora_dropout_bits, _mul and _mul_add run: "avx512" when the CPU has it, else "ref".
 * lora_dropout_use_reference(1) makes them run the plain C reference (for tests; not thread-safe against
 * a running mask). */
const char *lora_dropout_path(void);
void lora_dropout_use_reference(int on);

/* out[i] = in[i] * m_i for i in [0, n), m_i = keep_scale where bit i of bits is set, else 0 (bits are read
 * from any alignment). lora_dropout_mul_add accumulates out[i] += in[i] * m_i instead. */
void lora_dropout_mul(float *out, const float *in, const void *bits, int n, float keep_scale);
void lora_dropout_mul_add(float *out, const float *in, const void *bits, int n, float keep_scale);
void lora_dropout_mul_ref(float *out, const float *in, const void *bits, int n, float keep_scale);
void lora_dropout_mul_add_ref(float *out, const float *in, const void *bits, int n, float keep_scale);
void lora_dropout_mul_avx512(float *out, const float *in, const void *bits, int n, float keep_scale);
void lora_dropout_mul_add_avx512(float *out, const float *in, const void *bits, int n, float keep_scale);

/* The three ways lora.c applies a mask to (N, IC) row-major planes, parallel over rows (the same result on
 * any thread count). row_bits (may be NULL) receives the mask's keep bits, rows of lora_dropout_row_words(IC)
 * 64-bit words, stored at any alignment (a float scratch buffer serves). */
static inline int lora_dropout_row_words(int IC) {
    return (IC + 63) / 64;
}
/* out = in ⊙ mask(seed); out may be in. */
void lora_dropout_apply(float *out, const float *in, int N, int IC, lora_dropout_spec d, uint64_t seed,
                        void *row_bits);
/* lora_dropout_apply of rows [n0, n0 + rows) of the mask on the calling thread: out, in and row_bits (if
 * not NULL) point at row n0. */
void lora_dropout_apply_rows(float *out, const float *in, int n0, int rows, int IC, lora_dropout_spec d,
                             uint64_t seed, void *row_bits);
/* out = in ⊙ mask, the mask read back from row_bits (as lora_dropout_apply stored it); out may be in. */
void lora_dropout_apply_bits(float *out, const float *in, int N, int IC, float keep_scale,
                             const void *row_bits);
/* out += in ⊙ mask, the mask read back from row_bits (as lora_dropout_apply stored it). */
void lora_dropout_accumulate_bits(float *out, const float *in, int N, int IC, float keep_scale,
                                  const void *row_bits);

#endif
