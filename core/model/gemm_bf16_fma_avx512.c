/* The bf16 GEMM on fp32 FMAs (path "avx512fma"; compiled with AVX-512F, called only after the CPU check in
 * gemm_bf16.c). Where vdpbf16ps issues at half the rate of fp32 FMAs (the Xeons this project has run on:
 * ~95 against ~200 GFLOP/s per core, measured), widening the bf16 operands to fp32 and multiplying with
 * vfmadd231ps is the faster bf16 product, and it gives the reference's bits: a product of two bf16 values
 * is exact in fp32, so each of vdpbf16ps's two steps (odd element, then even) is one FMA; the kernel runs
 * them in that order in one accumulator lane, under MXCSR's DAZ and FTZ (the instruction's fixed subnormal
 * handling), and restores MXCSR before C is stored or added to.
 *
 * Register block: 12 rows x 32 columns = 24 zmm accumulators. The 12 rows of A are widened to fp32 once
 * per slice of k pairs (transposed, so one k step reads the 12 rows' values from one 64-byte line, as
 * broadcasts); B stays in the packed bf16 panels every path shares and is widened in registers (one AND
 * for the odd elements, one shift for the even). Tiles of 12 rows by up to 16 panels; the accumulators of
 * each 32-column pair live in a small buffer between slices, stored and loaded as fp32 (exact), so the
 * summation order of every output element is the reference's whatever the slicing. */
#include <immintrin.h>
#include <string.h>

#include "core/model/gemm_bf16_avx512_inline.h"
#include "core/model/gemm_bf16_kernels.h"

#define MR 12
#define SLICE 128     /* k pairs widened at a time: 16 KB of fp32 A */
#define MAX_PANELS 16 /* panels per tile: 256 columns */
#define MXCSR_DAZ_FTZ 0x8040u

/* Widens pairs [0, np) (np a multiple of 16) of rows [0, rows) of A (rows lda apart; rows up to MR) to
 * aw: pair p as 32 floats, the odd elements of the rows at [32p, 32p + 16) and the even ones at [32p + 16,
 * 32p + 32), row r in lane r (lanes past rows zero). */
static void widen_a(float *aw, const uint16_t *A, size_t lda, int rows, int np) {
    const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
    for (int g = 0; g < np; g += 16) {
        __m512i r[16];
        for (int i = 0; i < 16; i++)
            r[i] =
                i < rows ? _mm512_loadu_si512(A + (size_t)i * lda + 2 * (size_t)g) : _mm512_setzero_si512();
        transpose16(r); /* r[q] lane i: pair g + q of row i */
        for (int q = 0; q < 16; q++) {
            float *o = aw + (size_t)(g + q) * 32;
            _mm512_store_si512(o, _mm512_and_si512(r[q], hi));
            _mm512_store_si512(o + 16, _mm512_slli_epi32(r[q], 16));
        }
    }
}

/* R rows (MR, or 4 or 1 for the short blocks of few-row products: generation's one position) x (one or two
 * panels) over np widened pairs: the accumulators start at zero (first) or at part and end in part (rows of
 * 32 floats). The same sums per element whatever R. */
static inline __attribute__((always_inline)) void pair_tile(const float *aw, const uint16_t *b0,
                                                            const uint16_t *b1, int np, float *part,
                                                            int first, int npan, int R) {
    const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
    __m512 acc[MR][2];
#pragma GCC unroll 12
    for (int r = 0; r < R; r++) {
        acc[r][0] = first ? _mm512_setzero_ps() : _mm512_load_ps(part + r * 32);
        acc[r][1] = (first || npan == 1) ? _mm512_setzero_ps() : _mm512_load_ps(part + r * 32 + 16);
    }
    for (int p = 0; p < np; p++) {
        const float *a = aw + (size_t)p * 32;
        __m512i w0 = _mm512_loadu_si512(b0 + (size_t)p * 32);
        __m512i w1 = npan == 2 ? _mm512_loadu_si512(b1 + (size_t)p * 32) : w0;
        __m512 o0 = _mm512_castsi512_ps(_mm512_and_si512(w0, hi));
        __m512 o1 = _mm512_castsi512_ps(_mm512_and_si512(w1, hi));
#pragma GCC unroll 12
        for (int r = 0; r < R; r++) {
            __m512 va = _mm512_set1_ps(a[r]);
            acc[r][0] = _mm512_fmadd_ps(va, o0, acc[r][0]);
            if (npan == 2) acc[r][1] = _mm512_fmadd_ps(va, o1, acc[r][1]);
        }
        __m512 e0 = _mm512_castsi512_ps(_mm512_slli_epi32(w0, 16));
        __m512 e1 = _mm512_castsi512_ps(_mm512_slli_epi32(w1, 16));
#pragma GCC unroll 12
        for (int r = 0; r < R; r++) {
            __m512 va = _mm512_set1_ps(a[16 + r]);
            acc[r][0] = _mm512_fmadd_ps(va, e0, acc[r][0]);
            if (npan == 2) acc[r][1] = _mm512_fmadd_ps(va, e1, acc[r][1]);
        }
    }
#pragma GCC unroll 12
    for (int r = 0; r < R; r++) {
        _mm512_store_ps(part + r * 32, acc[r][0]);
        if (npan == 2) _mm512_store_ps(part + r * 32 + 16, acc[r][1]);
    }
}

/* pair_tile with the block height for rows (MR, 4 or 1), each shape its own instantiation. */
static inline __attribute__((always_inline)) void pair_tile_rows(const float *aw, const uint16_t *b0,
                                                                 const uint16_t *b1, int np, float *part,
                                                                 int first, int npan, int rows) {
    if (rows > 4)
        pair_tile(aw, b0, b1, np, part, first, npan, MR);
    else if (rows > 1)
        pair_tile(aw, b0, b1, np, part, first, npan, 4);
    else
        pair_tile(aw, b0, b1, np, part, first, npan, 1);
}

/* Rows [m0, m0 + rows) x panels [j0, j0 + npan) of C over k pairs [0, KP2): A rows lda apart, B panels
 * bstride apart (pair p at 32 p), C's columns past ncols untouched. */
static void tile(const uint16_t *A, size_t lda, const uint16_t *B, size_t bstride, int KP2, int m0, int rows,
                 int j0, int npan, int ncols, float *C, int ldc, int accumulate) {
    _Alignas(64) float aw[SLICE * 32];
    _Alignas(64) float part[MAX_PANELS / 2][MR * 32];
    const uint16_t *a = A + (size_t)m0 * lda;
    unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | MXCSR_DAZ_FTZ);
    __asm__ volatile("" ::: "memory");
    for (int p0 = 0; p0 < KP2; p0 += SLICE) {
        int np = KP2 - p0 < SLICE ? KP2 - p0 : SLICE;
        widen_a(aw, a + 2 * (size_t)p0, lda, rows, (np + 15) / 16 * 16);
        for (int q = 0; q < npan; q += 2) {
            const uint16_t *b0 = B + (size_t)(j0 + q) * bstride + (size_t)p0 * 32;
            if (q + 1 < npan)
                pair_tile_rows(aw, b0, b0 + bstride, np, part[q / 2], p0 == 0, 2, rows);
            else
                pair_tile_rows(aw, b0, b0, np, part[q / 2], p0 == 0, 1, rows);
        }
    }
    __asm__ volatile("" ::: "memory");
    _mm_setcsr(csr); /* C's own addition is a plain fp32 one */
    for (int r = 0; r < rows; r++) {
        float *c = C + (size_t)(m0 + r) * ldc;
        for (int q = 0; q < npan; q++) {
            int col = (j0 + q) * GEMM_BF16_PANEL;
            __mmask16 mask = lanes(ncols - col);
            if (!mask) break;
            __m512 v = _mm512_load_ps(&part[q / 2][r * 32 + (q & 1) * 16]);
            if (accumulate) v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, c + col), v);
            _mm512_mask_storeu_ps(c + col, mask, v);
        }
    }
}

/* The tiles of one kernel call: tile t covers row block t % mt and panel chunk t / mt. */
typedef struct {
    const uint16_t *Ap, *Bp;
    int M, ncols, Kp, KP2, npanels, mt, chunk, ldc, accumulate;
    float *C;
} tiling;

static void tile_task(void *tiles, long t) {
    const tiling *g = tiles;
    int jc = (int)(t / g->mt), it = (int)(t % g->mt);
    int m0 = it * MR, rows = g->M - m0 < MR ? g->M - m0 : MR, j0 = jc * g->chunk;
    int npan = g->npanels - j0 < g->chunk ? g->npanels - j0 : g->chunk;
    tile(g->Ap, (size_t)g->Kp, g->Bp, (size_t)GEMM_BF16_PANEL * g->Kp, g->KP2, m0, rows, j0, npan, g->ncols,
         g->C, g->ldc, g->accumulate);
}

void gemm_bf16_kernel_avx512fma(const uint16_t *Ap, const uint16_t *Bp, int M, int ncols, int Kp, int K,
                                float *C, int ldc, int accumulate) {
    int npanels = (ncols + GEMM_BF16_PANEL - 1) / GEMM_BF16_PANEL;
    int Ku = gemm_bf16_depth_run(K, Kp);
    int mt = (M + MR - 1) / MR, threads = gemm_bf16_kernel_threads(M, ncols, K);
    /* panels per tile: up to MAX_PANELS, fewer when the rows alone give the threads too few tiles (the split
     * does not change any output's sums) */
    int want = (4 * threads + mt - 1) / mt, chunk = (npanels + want - 1) / want;
    chunk = (chunk + 1) / 2 * 2;
    if (chunk > MAX_PANELS) chunk = MAX_PANELS;
    if (chunk < 2) chunk = 2;
    int nc = (npanels + chunk - 1) / chunk;
    long tiles = (long)mt * nc;
    tiling g = {Ap, Bp, M, ncols, Kp, Ku / 2, npanels, mt, chunk, ldc, accumulate, C};
    qlab_run_tasks(tiles, threads, tile_task, &g);
}

void gemm_bf16_block_avx512fma(const uint16_t *A, size_t lda, const uint16_t *B, size_t bstride, int M,
                               int ncols, int Kp, float *C, int ldc, int accumulate) {
    int npanels = (ncols + GEMM_BF16_PANEL - 1) / GEMM_BF16_PANEL;
    for (int j0 = 0; j0 < npanels; j0 += MAX_PANELS)
        for (int m0 = 0; m0 < M; m0 += MR) {
            int rows = M - m0 < MR ? M - m0 : MR;
            int npan = npanels - j0 < MAX_PANELS ? npanels - j0 : MAX_PANELS;
            tile(A, lda, B, bstride, Kp / 2, m0, rows, j0, npan, ncols, C, ldc, accumulate);
        }
}
