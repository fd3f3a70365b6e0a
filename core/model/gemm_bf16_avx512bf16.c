/* AVX-512 BF16 kernel of the bf16 GEMM (compiled with -mavx512bf16, called only after the CPU check in
 * gemm_bf16.c). Register block: 8 rows x 32 columns = 16 zmm accumulators; per k pair, two 64-byte loads
 * of B (two packed panels), eight 32-bit broadcasts of A and sixteen vdpbf16ps. Every output element is
 * accumulated over k pairs in order in one accumulator lane, with the instruction's own two-step rounding
 * (odd element first, then even, each an FMA with DAZ/FTZ), so the result equals the scalar reference's
 * bit for bit. The packing and rounding around it are in gemm_bf16_pack_avx512.c. */
#include <immintrin.h>
#include <string.h>

#include "core/model/gemm_bf16_avx512_inline.h"
#include "core/model/gemm_bf16_kernels.h"

#define MR 8

/* Rows [m0, m0 + rows) x panels j0, j0 + npan - 1 of C over k pairs [0, Kp/2): A rows lda elements apart,
 * B panels bstride elements apart. */
static inline __attribute__((always_inline)) void tile(const uint16_t *Ap, size_t lda, const uint16_t *Bp,
                                                       size_t bstride, int Kp, int m0, int rows, int j0,
                                                       int npan, int ncols, float *C, int ldc,
                                                       int accumulate) {
    __m512 acc[MR][2];
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++)
        acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    const uint16_t *b0 = Bp + (size_t)j0 * bstride;
    const uint16_t *b1 = b0 + bstride;
    const uint16_t *a = Ap + (size_t)m0 * lda;
    int KP2 = Kp / 2;
    for (int p = 0; p < KP2; p++) {
        __m512bh vb0 = (__m512bh)_mm512_loadu_si512(b0 + (size_t)p * 32);
        __m512bh vb1 = vb0;
        if (npan == 2) vb1 = (__m512bh)_mm512_loadu_si512(b1 + (size_t)p * 32);
#pragma GCC unroll 8
        for (int r = 0; r < MR; r++) {
            int32_t pair;
            memcpy(&pair, a + (size_t)r * lda + 2 * p, 4);
            __m512bh va = (__m512bh)_mm512_set1_epi32(pair);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], va, vb0);
            if (npan == 2) acc[r][1] = _mm512_dpbf16_ps(acc[r][1], va, vb1);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++) {
        if (r >= rows) break;
        float *c = C + (size_t)(m0 + r) * ldc + (size_t)j0 * GEMM_BF16_PANEL;
#pragma GCC unroll 2
        for (int q = 0; q < npan; q++) {
            int valid = ncols - (j0 + q) * GEMM_BF16_PANEL;
            if (valid <= 0) break;
            __mmask16 mask = lanes(valid);
            __m512 v = acc[r][q];
            if (accumulate) v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, c + q * 16), v);
            _mm512_mask_storeu_ps(c + q * 16, mask, v);
        }
    }
}

/* The tiles of one kernel call: tile t covers row block t % mt and panels 2 (t / mt), + 1. */
typedef struct {
    const uint16_t *Ap, *Bp;
    int M, ncols, Kp, Ku, npanels, mt, ldc, accumulate;
    float *C;
} tiling;

static void tile_task(void *tiles, long t) {
    const tiling *g = tiles;
    int jt = (int)(t / g->mt), it = (int)(t % g->mt);
    int m0 = it * MR, rows = g->M - m0 < MR ? g->M - m0 : MR, j0 = 2 * jt;
    size_t bstride = (size_t)GEMM_BF16_PANEL * g->Kp;
    if (j0 + 1 < g->npanels) /* two panels or one: each its own inlined tile */
        tile(g->Ap, (size_t)g->Kp, g->Bp, bstride, g->Ku, m0, rows, j0, 2, g->ncols, g->C, g->ldc,
             g->accumulate);
    else
        tile(g->Ap, (size_t)g->Kp, g->Bp, bstride, g->Ku, m0, rows, j0, 1, g->ncols, g->C, g->ldc,
             g->accumulate);
}

void gemm_bf16_kernel_avx512bf16(const uint16_t *Ap, const uint16_t *Bp, int M, int ncols, int Kp, int K,
                                 float *C, int ldc, int accumulate) {
    int npanels = (ncols + GEMM_BF16_PANEL - 1) / GEMM_BF16_PANEL;
    int Ku = gemm_bf16_depth_run(K, Kp);
    int mt = (M + MR - 1) / MR, nt = (npanels + 1) / 2;
    long tiles = (long)mt * nt;
    tiling g = {Ap, Bp, M, ncols, Kp, Ku, npanels, mt, ldc, accumulate, C};
    qlab_run_tasks(tiles, gemm_bf16_kernel_threads(M, ncols, K), tile_task, &g);
}

void gemm_bf16_block_avx512bf16(const uint16_t *A, size_t lda, const uint16_t *B, size_t bstride, int M,
                                int ncols, int Kp, float *C, int ldc, int accumulate) {
    int npanels = (ncols + GEMM_BF16_PANEL - 1) / GEMM_BF16_PANEL;
    for (int j0 = 0; j0 < npanels; j0 += 2)
        for (int m0 = 0; m0 < M; m0 += MR) {
            int rows = M - m0 < MR ? M - m0 : MR;
            if (j0 + 1 < npanels)
                tile(A, lda, B, bstride, Kp, m0, rows, j0, 2, ncols, C, ldc, accumulate);
            else
                tile(A, lda, B, bstride, Kp, m0, rows, j0, 1, ncols, C, ldc, accumulate);
        }
}
