/* AMX kernel of the bf16 GEMM (compiled with -mamx-tile -mamx-bf16; used only when CPUID reports AMX-TILE
 * and AMX-BF16, the OS enables the tile state in XCR0 and Linux grants the process the tile data through
 * arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)). Block: 32 rows x 32 columns in four 16x16 fp32
 * tiles, A in two 16x32 bf16 tiles, B in two 16-pair x 16-column tiles read straight from the packed
 * panels; K advances 32 values per TDPBF16PS. The tiles start at zero and are added to C at the end, as
 * the reference does, but TDPBF16PS's internal summation order within a step is not the reference's, so
 * this path is held to the bound of gemm_bf16.h, not bit-exactness.
 * Also compiled with AVX-512F (every CPU with AMX has it; the usability check asks for both) for the
 * masked write-back of partial tiles. Tested against the reference on machines with AMX (skipped elsewhere).
 */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif

#include "core/model/gemm_bf16_kernels.h"

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

static int amx_state_ = -1;

int gemm_bf16_amx_usable(void) {
    if (amx_state_ >= 0) return amx_state_;
    int ok = 0;
#if defined(__x86_64__) && defined(__linux__)
    unsigned a, b, c, d;
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d) && (d & (1u << 24)) && (d & (1u << 22)) &&
        qlab_cpu_avx512()) {
        unsigned lo, hi;
        __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        (void)hi;
        int os_tiles = (lo & (1u << 17)) && (lo & (1u << 18));
        if (os_tiles && syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0) ok = 1;
    }
#endif
    amx_state_ = ok;
    return ok;
}

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
    /* GCC 12's _tile_loadconfig declares an 8-byte memory operand, so stores to the rest of cfg may be
     * dropped as dead (they were, once inlined here); this operand is the whole 64-byte struct. */
    __asm__ volatile("ldtilecfg %0" ::"m"(cfg));
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
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int k0 = 0; k0 < Kp; k0 += 32) {
        _tile_loadd(4, Ap + (size_t)m0 * lda + k0, lda_bytes);
        _tile_loadd(5, Ap + (size_t)(m0 + 16) * lda + k0, lda_bytes);
        _tile_loadd(6, b0 + (size_t)k0 * GEMM_BF16_PANEL, 64);
        _tile_loadd(7, b1 + (size_t)k0 * GEMM_BF16_PANEL, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    int n0 = j0 * GEMM_BF16_PANEL;
    float *c = C + (size_t)m0 * ldc + n0;
    if (!accumulate && two && m0 + 32 <= M && n0 + 32 <= ncols) {
        /* a whole 32 x 32 block of C: the tiles go straight to it */
        _tile_stored(0, c, ldc * 4);
        _tile_stored(1, c + 16, ldc * 4);
        _tile_stored(2, c + (size_t)16 * ldc, ldc * 4);
        _tile_stored(3, c + (size_t)16 * ldc + 16, ldc * 4);
        return;
    }
    _tile_stored(0, out[0], 64);
    _tile_stored(1, out[1], 64);
    _tile_stored(2, out[2], 64);
    _tile_stored(3, out[3], 64);
    add_tile(out[0], c, ldc, M - m0, ncols - n0, accumulate);
    add_tile(out[2], c + (size_t)16 * ldc, ldc, M - m0 - 16, ncols - n0, accumulate);
    if (two) {
        add_tile(out[1], c + 16, ldc, M - m0, ncols - n0 - 16, accumulate);
        add_tile(out[3], c + (size_t)16 * ldc + 16, ldc, M - m0 - 16, ncols - n0 - 16, accumulate);
    }
}

void gemm_bf16_kernel_amx(const uint16_t *Ap, const uint16_t *Bp, int M, int ncols, int Kp, int K, float *C,
                          int ldc, int accumulate) {
    (void)K; /* tiles of 32 k values: the padding is at most one tile step */
    int npanels = (ncols + GEMM_BF16_PANEL - 1) / GEMM_BF16_PANEL;
    int mt = (M + 31) / 32, nt = (npanels + 1) / 2;
    long tiles = (long)mt * nt;
#pragma omp parallel if (gemm_bf16_parallel(M, ncols, Kp))
    {
        amx_configure();
        float out[4][256] __attribute__((aligned(64)));
#pragma omp for schedule(static)
        for (long t = 0; t < tiles; t++) {
            int jt = (int)(t / mt), it = (int)(t % mt);
            block32(Ap, (size_t)Kp, Bp, (size_t)GEMM_BF16_PANEL * Kp, M, ncols, Kp, C, ldc, accumulate,
                    it * 32, 2 * jt, 2 * jt + 1 < npanels, out);
        }
        _tile_release();
    }
}

void gemm_bf16_block_amx(const uint16_t *A, size_t lda, const uint16_t *B, size_t bstride, int M, int ncols,
                         int Kp, float *C, int ldc, int accumulate) {
    int npanels = (ncols + GEMM_BF16_PANEL - 1) / GEMM_BF16_PANEL;
    float out[4][256] __attribute__((aligned(64)));
    for (int j0 = 0; j0 < npanels; j0 += 2)
        for (int m0 = 0; m0 < M; m0 += 32)
            block32(A, lda, B, bstride, M, ncols, Kp, C, ldc, accumulate, m0, j0, j0 + 1 < npanels, out);
}

void gemm_bf16_amx_begin(void) {
    amx_configure();
}

void gemm_bf16_amx_end(void) {
    _tile_release();
}
