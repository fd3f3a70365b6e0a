/* The AMX kernel (gemm_bf16_amx_body.h) on a software model of the tiles, for tests on CPUs without AMX
 * (gemm_bf16_emulate_amx; compiled with AVX-512F like the real kernel's write-back). Each thread has its
 * own eight tiles and configuration, as each core has. TDPBF16PS follows the Intel SDM's pseudocode: for
 * each row m and k pair, the even element's product then the odd one's is added to the fp32 element,
 * inputs' subnormals read as zero and subnormal results flushed to zero, round to nearest even (the
 * product of two bf16 values is exact in fp32, so each step is one fused multiply-add). Real hardware is
 * held only to gemm_bf16.h's bound; the model's order is fixed, so the tests hold the kernel on it to the
 * bits of that order, which checks every tile's rows, columns, k steps and write-back.
 *
 * Misuse the hardware would fault on (a tile instruction before LDTILECFG or after TILERELEASE, shapes
 * that do not chain, a configuration beyond palette 1's 16 rows x 64 bytes) stops the process with a
 * message: it can only be a kernel bug, and a test must not pass over it. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/base/half.h"

#define AMX_ZERO(t) emu_zero(t)
#define AMX_LOAD(t, base, stride) emu_load(t, base, (size_t)(stride))
#define AMX_DP(c, a, b) emu_dpbf16ps(c, a, b)
#define AMX_STORE(t, base, stride) emu_store(t, base, (size_t)(stride))
#define AMX_RELEASE() emu_release()
#define AMX_CONFIG(cfg) emu_config(&(cfg))
#define AMX_NAME(f) f##_emu

static void emu_zero(int t);
static void emu_load(int t, const void *base, size_t stride);
static void emu_dpbf16ps(int c, int a, int b);
static void emu_store(int t, void *base, size_t stride);
static void emu_release(void);
static void emu_config(const void *cfg);

#include "core/model/gemm_bf16_amx_body.h"

typedef struct {
    int configured;
    int rows[8], colsb[8];
    uint8_t data[8][16][64];
} emu_tiles;

static _Thread_local emu_tiles emu_;

static void emu_fault(const char *what, int t) {
    fprintf(stderr, "qlab: emulated AMX: %s (tile %d): a kernel bug\n", what, t);
    abort();
}

static void emu_check(int t) {
    if (!emu_.configured) emu_fault("tile instruction without a loaded configuration", t);
    if (t < 0 || t > 7) emu_fault("no such tile", t);
}

static void emu_config(const void *cfg) {
    const amx_config *c = cfg;
    if (c->palette_id != 1) emu_fault("palette other than 1", c->palette_id);
    memset(&emu_, 0, sizeof emu_);
    for (int t = 0; t < 8; t++) {
        if (c->rows[t] > 16 || c->colsb[t] > 64 || c->colsb[t] % 4) emu_fault("shape beyond palette 1", t);
        emu_.rows[t] = c->rows[t];
        emu_.colsb[t] = c->colsb[t];
    }
    emu_.configured = 1;
}

static void emu_release(void) {
    memset(&emu_, 0, sizeof emu_);
}

static void emu_zero(int t) {
    emu_check(t);
    memset(emu_.data[t], 0, sizeof emu_.data[t]);
}

static void emu_load(int t, const void *base, size_t stride) {
    emu_check(t);
    memset(emu_.data[t], 0, sizeof emu_.data[t]);
    for (int r = 0; r < emu_.rows[t]; r++)
        memcpy(emu_.data[t][r], (const uint8_t *)base + r * stride, (size_t)emu_.colsb[t]);
}

static void emu_store(int t, void *base, size_t stride) {
    emu_check(t);
    for (int r = 0; r < emu_.rows[t]; r++)
        memcpy((uint8_t *)base + r * stride, emu_.data[t][r], (size_t)emu_.colsb[t]);
}

/* A bf16 input with subnormals read as zero. */
static float emu_in(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    if ((h & 0x7f80u) == 0) h &= 0x8000u;
    return bf16_to_f32(h);
}

static float emu_step(float acc, float a, float b) {
    float r = fmaf(a, b, acc);
    return (r != 0 && fabsf(r) < 0x1p-126f) ? copysignf(0.0f, r) : r;
}

static void emu_dpbf16ps(int c, int a, int b) {
    emu_check(c), emu_check(a), emu_check(b);
    int K = emu_.colsb[a] / 4, N = emu_.colsb[c] / 4;
    if (emu_.rows[c] != emu_.rows[a] || emu_.rows[b] != K || emu_.colsb[b] != emu_.colsb[c])
        emu_fault("TDPBF16PS shapes do not chain", c);
    for (int m = 0; m < emu_.rows[c]; m++)
        for (int n = 0; n < N; n++) {
            float acc;
            memcpy(&acc, &emu_.data[c][m][4 * n], 4);
            for (int k = 0; k < K; k++) {
                acc = emu_step(acc, emu_in(&emu_.data[a][m][4 * k]), emu_in(&emu_.data[b][k][4 * n]));
                acc = emu_step(acc, emu_in(&emu_.data[a][m][4 * k + 2]), emu_in(&emu_.data[b][k][4 * n + 2]));
            }
            memcpy(&emu_.data[c][m][4 * n], &acc, 4);
        }
}
