/* The AMX kernel of the bf16 GEMM, written once over tile operations named as macros and included twice:
 * by gemm_bf16_amx.c with the AMX instructions, and by gemm_bf16_amx_emu_avx512.c with a software model of
 * the tiles (so the blocking, edges and accumulation are tested on CPUs without AMX). The includer defines
 * AMX_ZERO(t), AMX_LOAD(t, base, stride), AMX_DP(c, a, b) (TDPBF16PS), AMX_STORE(t, base, stride),
 * AMX_RELEASE(), AMX_CONFIG(cfg) (LDTILECFG of an amx_config) and AMX_NAME(f) (the exported names), and
 * compiles with AVX-512F for the masked write-back of partial tiles.
 *
 * Block: 32 rows x 32 columns in four 16x16 fp32 tiles, A in two 16x32 bf16 tiles, B in two 16-pair x
 * 16-column tiles read straight from the packed panels; K advances 32 values per TDPBF16PS. The tiles start
 * at zero and are added to C at the end, as the reference does. */
#ifndef QLAB_GEMM_BF16_AMX_BODY_H
#define QLAB_GEMM_BF16_AMX_BODY_H

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "core/model/gemm_bf16_kernels.h"

typedef struct {
    uint8_t palette_id, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_config;

static void amx_configure(void) {
    amx_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette_id = 1;
    for (int i = 0; i < 8; i++) {
        cfg.colsb[i] = 64;
        cfg.rows[i] = 16;
    }
    AMX_CONFIG(cfg);
}

/* Writes (or adds) the top-left rows x cols of a 16x16 fp32 tile t into C (row stride ldc), AVX-512. */
static inline void add_tile(const float *t, float *C, int ldc, int rows, int cols, int accumulate) {
    if (rows <= 0 || cols <= 0) return;
    if (rows > 16) rows = 16;
    __mmask16 mask = cols >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << cols) - 1);
    for (int r = 0; r < rows; r++) {
        float *dst = C + (size_t)r * ldc;
        __m512 v = _mm512_load_ps(t + r * 16);
        if (accumulate) v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, dst), v);
        _mm512_mask_storeu_ps(dst, mask, v);
    }
}

/* The 32 x 32 block of C at rows m0, panels j0 and j0 + 1 (when two): A rows lda elements apart (rows m0 to
 * m0 + 31 readable), B panels bstride elements apart; out is a 4 x 16 x 16 fp32 bounce buffer for partial
 * blocks and accumulation. Needs the tile configuration loaded on this thread. */
static inline __attribute__((always_inline)) void block32(const uint16_t *Ap, size_t lda, const uint16_t *Bp,
                                                          size_t bstride, int M, int ncols, int Kp, float *C,
                                                          int ldc, int accumulate, int m0, int j0, int two,
                                                          float out[4][256]) {
    const uint16_t *b0 = Bp + (size_t)j0 * bstride;
    const uint16_t *b1 = two ? b0 + bstride : b0;
    size_t lda_bytes = lda * 2;
    AMX_ZERO(0);
    AMX_ZERO(1);
    AMX_ZERO(2);
    AMX_ZERO(3);
    for (int k0 = 0; k0 < Kp; k0 += 32) {
        AMX_LOAD(4, Ap + (size_t)m0 * lda + k0, lda_bytes);
        AMX_LOAD(5, Ap + (size_t)(m0 + 16) * lda + k0, lda_bytes);
        AMX_LOAD(6, b0 + (size_t)k0 * GEMM_BF16_PANEL, 64);
        AMX_LOAD(7, b1 + (size_t)k0 * GEMM_BF16_PANEL, 64);
        AMX_DP(0, 4, 6);
        AMX_DP(1, 4, 7);
        AMX_DP(2, 5, 6);
        AMX_DP(3, 5, 7);
    }
    int n0 = j0 * GEMM_BF16_PANEL;
    float *c = C + (size_t)m0 * ldc + n0;
    if (!accumulate && two && m0 + 32 <= M && n0 + 32 <= ncols) {
        /* a whole 32 x 32 block of C: the tiles go straight to it */
        AMX_STORE(0, c, ldc * 4);
        AMX_STORE(1, c + 16, ldc * 4);
        AMX_STORE(2, c + (size_t)16 * ldc, ldc * 4);
        AMX_STORE(3, c + (size_t)16 * ldc + 16, ldc * 4);
        return;
    }
    AMX_STORE(0, out[0], 64);
    AMX_STORE(1, out[1], 64);
    AMX_STORE(2, out[2], 64);
    AMX_STORE(3, out[3], 64);
    add_tile(out[0], c, ldc, M - m0, ncols - n0, accumulate);
    add_tile(out[2], c + (size_t)16 * ldc, ldc, M - m0 - 16, ncols - n0, accumulate);
    if (two) {
        add_tile(out[1], c + 16, ldc, M - m0, ncols - n0 - 16, accumulate);
        add_tile(out[3], c + (size_t)16 * ldc + 16, ldc, M - m0 - 16, ncols - n0 - 16, accumulate);
    }
}

void AMX_NAME(gemm_bf16_kernel_amx)(const uint16_t *Ap, const uint16_t *Bp, int M, int ncols, int Kp, int K,
                                    float *C, int ldc, int accumulate) {
    (void)K; /* tiles of 32 k values: the padding is at most one tile step */
    int npanels = (ncols + GEMM_BF16_PANEL - 1) / GEMM_BF16_PANEL;
    int mt = (M + 31) / 32, nt = (npanels + 1) / 2;
    long tiles = (long)mt * nt;
    if (gemm_bf16_kernel_threads(M, ncols, Kp) == 1) { /* no OpenMP region at all (gemm_bf16_kernels.h) */
        amx_configure();
        AMX_NAME(gemm_bf16_block_amx)
        (Ap, (size_t)Kp, Bp, (size_t)GEMM_BF16_PANEL * Kp, M, ncols, Kp, C, ldc, accumulate);
        AMX_RELEASE();
        return;
    }
#pragma omp parallel
    {
        amx_configure();
        float out[4][256] __attribute__((aligned(64)));
#pragma omp for schedule(static)
        for (long t = 0; t < tiles; t++) {
            int jt = (int)(t / mt), it = (int)(t % mt);
            block32(Ap, (size_t)Kp, Bp, (size_t)GEMM_BF16_PANEL * Kp, M, ncols, Kp, C, ldc, accumulate,
                    it * 32, 2 * jt, 2 * jt + 1 < npanels, out);
        }
        AMX_RELEASE();
    }
}

void AMX_NAME(gemm_bf16_block_amx)(const uint16_t *A, size_t lda, const uint16_t *B, size_t bstride, int M,
                                   int ncols, int Kp, float *C, int ldc, int accumulate) {
    int npanels = (ncols + GEMM_BF16_PANEL - 1) / GEMM_BF16_PANEL;
    float out[4][256] __attribute__((aligned(64)));
    for (int j0 = 0; j0 < npanels; j0 += 2)
        for (int m0 = 0; m0 < M; m0 += 32)
            block32(A, lda, B, bstride, M, ncols, Kp, C, ldc, accumulate, m0, j0, j0 + 1 < npanels, out);
}

void AMX_NAME(gemm_bf16_amx_begin)(void) {
    amx_configure();
}

void AMX_NAME(gemm_bf16_amx_end)(void) {
    AMX_RELEASE();
}

#endif
