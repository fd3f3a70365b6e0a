/* Internal interface between core/model/gemm_bf16.c (packing, dispatch, reference) and the per-ISA kernels
 * (gemm_bf16_fma_avx512.c, gemm_bf16_avx512bf16.c, gemm_bf16_amx.c) and their AVX-512 packing
 * (gemm_bf16_pack_avx512.c). Not part of the public API.
 *
 * Packed operands (bf16 bits, zero padded): Kp = K rounded up to GEMM_BF16_KALIGN.
 *  A: Mp rows (M rounded up to GEMM_BF16_MALIGN) of Kp values, row-major.
 *  B: panels of 16 columns; panel j holds, for each k pair p, the 16 pairs (b[2p][16j+c], b[2p+1][16j+c])
 *     (c = 0..15): 16 * Kp values per panel (the VNNI layout vdpbf16ps and AMX's B tiles read). */
#ifndef QLAB_GEMM_BF16_KERNELS_H
#define QLAB_GEMM_BF16_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "core/base/common.h"
#include "core/model/gemm_bf16.h"

#define GEMM_BF16_KALIGN 32
#define GEMM_BF16_MALIGN 32
#define GEMM_BF16_PANEL 16
/* Products of fewer multiply-adds than this run on the calling thread alone (packing and kernel): a
 * parallel region costs more than it saves there (the cached attention's per-head products early in a
 * sequence, stories260K's one-position ones). They enter no OpenMP construct at all: even a one-thread
 * region (an if clause that is false, num_threads(1)) sets up a team, ~0.3-0.5 us. Generation's
 * one-position weight products of the bench model (65K-176K multiply-adds) and of SmolLM2 (110K-885K) run
 * on every thread: measured on the bench model (Zen 4, 2 threads), 2^20 -> 2^18 / 2^17 / 2^16 / 2^15 gave
 * 1,315-1,509 -> 1,564-1,613 / 2,017-2,051 / 2,162-2,373 / 2,352-2,415 tok/s. The split never changes a
 * result's bits. */
#define GEMM_BF16_SERIAL_MACS (1 << 16)
static inline int gemm_bf16_parallel(int M, int N, int K) {
    return (double)M * N * K >= GEMM_BF16_SERIAL_MACS;
}
/* Threads a kernel call runs its output tiles on (qlab_run_tasks): all of them for a product large enough
 * and not already inside a region (attention calls the kernels from its per-head tasks, where a nested
 * region would get one thread and only cost its set-up), else 1, which enters no OpenMP region at all. */
static inline int gemm_bf16_kernel_threads(int M, int N, int K) {
    return gemm_bf16_parallel(M, N, K) ? qlab_region_threads() : 1;
}
/* K rounded up to GEMM_BF16_KALIGN (a packed operand's Kp) and rows rounded up to GEMM_BF16_MALIGN (the rows
 * of a packed A that the kernels read). */
static inline int gemm_bf16_kp(int k) {
    return (k + GEMM_BF16_KALIGN - 1) / GEMM_BF16_KALIGN * GEMM_BF16_KALIGN;
}
static inline int gemm_bf16_mp(int m) {
    return (m + GEMM_BF16_MALIGN - 1) / GEMM_BF16_MALIGN * GEMM_BF16_MALIGN;
}
/* The packed depth the AVX-512 kernels run of a product of depth K (<= Kp): the whole pairs up to K (a pair
 * with one padding zero still runs), then one pair of padding zeros, which turns an accumulator flushed to
 * -0 into +0 as the rest of the padding would; the pairs after it change nothing, so the bits are those of
 * all Kp. */
static inline int gemm_bf16_depth_run(int K, int Kp) {
    int Ku = (K + 1) / 2 * 2 + 2;
    return Ku < Kp ? Ku : Kp;
}

/* C[m][n] (m < M, n < ncols) = / += A_m . B_n over the packed operands; B holds ceil(ncols/16) panels.
 * Runs an OpenMP loop over output tiles (each tile on one thread). K (<= Kp) is the product's own depth:
 * the packed k values past it are zeros, which a kernel may skip when that keeps its bits (the AVX-512 BF16
 * kernel does; the others run all Kp). */
typedef void (*gemm_bf16_kernel)(const uint16_t *Ap, const uint16_t *Bp, int M, int ncols, int Kp, int K,
                                 float *C, int ldc, int accumulate);

/* One product on the calling thread (no OpenMP), for callers that already run one task per thread: C (M x
 * ncols) = / += A . B over k pairs [0, Kp/2), A rows lda elements apart (rows up to M rounded up to 32
 * readable), B panels bstride elements apart (a panel's pair p at offset 32p), each output element summed
 * in the same order as the corresponding kernel. */
void gemm_bf16_block_ref(const uint16_t *A, size_t lda, const uint16_t *B, size_t bstride, int M, int ncols,
                         int Kp, float *C, int ldc, int accumulate);
void gemm_bf16_block_avx512bf16(const uint16_t *A, size_t lda, const uint16_t *B, size_t bstride, int M,
                                int ncols, int Kp, float *C, int ldc, int accumulate);
void gemm_bf16_block_avx512fma(const uint16_t *A, size_t lda, const uint16_t *B, size_t bstride, int M,
                               int ncols, int Kp, float *C, int ldc, int accumulate);
void gemm_bf16_block_amx(const uint16_t *A, size_t lda, const uint16_t *B, size_t bstride, int M, int ncols,
                         int Kp, float *C, int ldc, int accumulate);

/* Whether packing (and attention's softmax rounding) uses the AVX-512 forms below (gemm_bf16_pack_avx512.c):
 * on the avx512fma, avx512bf16 and amx paths. The ref and blas paths keep the scalar loops, which give the
 * same bits, so the tests' ref-vs-avx512 comparisons cover both. */
int gemm_bf16_vector_packing(void);
/* The calling thread's GEMM workspace, reserved to at least bytes (bf16_workspace_reserve), for callers
 * whose scratch lives between products (attention): NULL when it cannot be allocated (the error recorded).
 * The next product on this thread may overwrite it. */
void *gemm_bf16_workspace(size_t bytes);
/* A thread's block products on a path lie between begin and end (AMX loads and releases its tile
 * configuration there). */
void gemm_bf16_block_begin(bf16_path path);
void gemm_bf16_block_end(bf16_path path);
/* The block product on the given path (ref, blas, avx512bf16 or amx; the path must be available). The
 * blas path widens the operands to fp32 in wide (gemm_bf16_block_wide_floats(path, M, ncols, Kp) floats;
 * 0 and unused on the other paths) and calls sgemm. */
size_t gemm_bf16_block_wide_floats(bf16_path path, int M, int ncols, int Kp);
void gemm_bf16_block(bf16_path path, const uint16_t *A, size_t lda, const uint16_t *B, size_t bstride, int M,
                     int ncols, int Kp, float *C, int ldc, int accumulate, float *wide);
/* gemm_bf16_block on a path other than blas for a product of depth K <= Kp (the packed k values past it
 * zero), which the AVX-512 BF16 kernel stops one pair past, as its whole product does: the same bits (the
 * LoRA products, K = r padded to 32). */
void gemm_bf16_block_depth(bf16_path path, const uint16_t *A, size_t lda, const uint16_t *B, size_t bstride,
                           int M, int ncols, int Kp, int K, float *C, int ldc, int accumulate);
/* Packed A (Mp rows of Kp) of a transposed source on the calling thread: Ap[i][k] = bf16(A[k][i]) for
 * i < M, k < K; zero elsewhere. Mp is a multiple of 16. */
void gemm_bf16_pack_at(uint16_t *Ap, int Kp, const float *A, int lda, int K, int M, int Mp);

/* Runs the k pairs up to K and one pair of the zero padding past them, not all of it (the LoRA products have
 * K = r, e.g. 8, padded to 32). Zero products leave an accumulator unchanged except one flushed to -0 (a
 * negative result under the instruction's flush to zero), which the first zero pair turns into +0; so the
 * bits are those of the whole Kp loop (tests/test_gemm_bf16.c: K 8 and 16, and the subnormal shapes). */
void gemm_bf16_kernel_avx512bf16(const uint16_t *Ap, const uint16_t *Bp, int M, int ncols, int Kp, int K,
                                 float *C, int ldc, int accumulate);
/* The same order and bits on fp32 FMAs over widened operands (gemm_bf16_fma_avx512.c). */
void gemm_bf16_kernel_avx512fma(const uint16_t *Ap, const uint16_t *Bp, int M, int ncols, int Kp, int K,
                                float *C, int ldc, int accumulate);
void gemm_bf16_round_avx512(uint16_t *out, const float *in, size_t n);
/* dst rows (ldd apart) = the bf16 values of src rows (lds apart) widened exactly to fp32, rows x cols. */
void gemm_bf16_widen_avx512(float *dst, size_t ldd, const uint16_t *src, size_t lds, int rows, int cols);
void gemm_bf16_scale_round_avx512(uint16_t *out, const float *x, float r, const float *w, int n, int width);
/* 16 rows of a packed A from a transposed source: Ap[i][k] = bf16(A[k][i]) for i < mn, k < K, zero for
 * the rest of the 16 x Kp block (A points at the block's first column, row stride lda). */
void gemm_bf16_pack_at_avx512(uint16_t *Ap, int Kp, const float *A, int lda, int K, int mn);
/* Rows [0, rows) of X (row stride ld), columns [0, cols), rounded into dst rows of Kp values (zero beyond
 * cols), rows [rows, rows_pad) zero: a packed A on the calling thread. */
void gemm_bf16_pack_rows(uint16_t *dst, int Kp, const float *X, size_t ld, int rows, int cols, int rows_pad);
/* Serial packing of an fp32 matrix X (row stride ld) as B panels, on the calling thread (AVX-512 forms on the
 * vector paths, else scalar loops with tmp as staging). pack_bt: B = X^T, rows s < rows of X as columns (16
 * per panel), k = columns < cols <= Kp, panels 16 * Kp apart, tmp Kp values. pack_bn: B = X, rows of X as
 * k (pairs [0, npairs), zero from row rows on), columns < cols as 16 per panel, panels bstride apart, tmp
 * 2 * round16(cols) values. With stream, the AVX-512 forms write whole aligned 64-byte lines past the caches
 * (non-temporal stores; for operands read back long after, from a buffer larger than the caches); the same
 * bits either way. */
void gemm_bf16_pack_bt(uint16_t *dst, int Kp, const float *X, size_t ld, int rows, int cols, uint16_t *tmp);
void gemm_bf16_pack_bn(uint16_t *dst, size_t bstride, int npairs, const float *X, size_t ld, int rows,
                       int cols, uint16_t *tmp, int stream);
/* AVX-512 forms, bit-identical with the scalar code they stand in for: gemm_bf16_pack_bt / pack_bn above. */
void gemm_bf16_pack_bt_avx512(uint16_t *dst, int Kp, const float *X, size_t ld, int rows, int cols);
/* pack_bn: pairs [0, npairs) (rows 2p, 2p + 1 of X; zero from row rows on) of panels bstride apart. */
void gemm_bf16_pack_bn_avx512(uint16_t *dst, size_t bstride, int npairs, const float *X, size_t ld, int rows,
                              int cols, int stream);
/* attention_bf16.c's softmax row rounded for the next product: with inv = 1 / vm_scale_exp_sum(row, n,
 * scale), dst[i] = p = e[i] * inv and out[i] = bf16(p) for i < n (dst, which may be row, written only when
 * len > 0), dst[i] = 0 for n <= i < len, out[i] = 0 for n <= i < Kr. A row of up to 256 values stays in
 * registers (one pass, row not written); a longer one gets its exponentials written over it first. */
void gemm_bf16_softmax_round_avx512(float *row, float *dst, uint16_t *out, int n, float scale, int len,
                                    int Kr);
/* Rows t and t + 1 (valid of them, 1 or 2) of attention's backward, from d(att) (dp, the rows ld floats
 * apart) and the probabilities p (as the forward formed them, ld apart): the score gradients ds = the
 * softmax backward (vm_softmax_grad over keys [0, t] of row t, [0, t + 1] of row t + 1; zero past them), and
 * p, rounded to bf16 into pair t / 2 of the B panels dsp and attp (the pointers at that pair, panels bstride
 * apart, keys [0, cols) as gemm_bf16_pack_bn_avx512 writes them), and ds as rows of a packed A (a, rows
 * Ka apart; zero from key cols on). ds itself is not stored. */
void gemm_bf16_att_grad_pair_avx512(const float *dp, const float *p, size_t ld, int t, int valid, int cols,
                                    float scale, uint16_t *dsp, uint16_t *attp, size_t bstride, uint16_t *a,
                                    int Ka);
/* At (MpT rows, ldt apart) = the transpose of a packed A (KT rows of Kp, zero padded): At[m][k] = Ap[k][m]
 * for m < MpT, k < KT. MpT <= Kp, both multiples of 16; KT a multiple of 32. */
void gemm_bf16_transpose_packed_avx512(uint16_t *At, size_t ldt, int KT, const uint16_t *Ap, int Kp, int MpT,
                                       int stream);
/* dst[c][r] = src[r][c] for r < rows, c < cols (fp32 matrices, rows ldd / lds apart). */
void gemm_bf16_transpose_f32_avx512(float *dst, size_t ldd, const float *src, size_t lds, int rows, int cols);
/* The same on the calling thread on any path (the AVX-512 form on the vector paths, else a scalar loop): for
 * callers that transpose a chunk of rows into columns [k0, k0 + KT) of a larger At (At pointing at column
 * k0); stream as for gemm_bf16_pack_bn. */
void gemm_bf16_transpose_rows(uint16_t *At, size_t ldt, int KT, const uint16_t *Ap, int Kp, int MpT,
                              int stream);
/* The whole product of packed operands on the given path's kernel (OpenMP over output tiles; ref, avx512bf16
 * or amx): C (M x ncols) = / += A . B, A Mp rows of Kp, B ceil(ncols/16) panels of 16 x Kp. The same bits as
 * the products bf16_gemm forms from these operands. */
void gemm_bf16_multiply(bf16_path path, const uint16_t *Ap, const uint16_t *Bp, int M, int ncols, int Kp,
                        float *C, int ldc, int accumulate);
/* The AMX block product needs the tile configuration loaded on the calling thread: begin before the first
 * gemm_bf16_block_amx, end after the last. */
void gemm_bf16_amx_begin(void);
void gemm_bf16_amx_end(void);
void gemm_bf16_kernel_amx(const uint16_t *Ap, const uint16_t *Bp, int M, int ncols, int Kp, int K, float *C,
                          int ldc, int accumulate);
/* Whether the CPU has AMX-TILE and AMX-BF16 and Linux granted this process the tile data state
 * (arch_prctl(ARCH_REQ_XCOMP_PERM)); asks once. */
int gemm_bf16_amx_usable(void);
/* The same kernel on emulated tiles (gemm_bf16_amx_emu_avx512.c; needs AVX-512F), and the switch that puts
 * it behind the amx path for tests on CPUs without AMX: on (when the CPU has AVX-512F and no usable AMX),
 * bf16_path_available(BF16_PATH_AMX) is true and every amx product runs on the emulation (slowly: scalar);
 * off restores the CPU's own answer. Returns whether the emulation is now in use. Not for the programs. */
void gemm_bf16_amx_begin_emu(void);
void gemm_bf16_amx_end_emu(void);
void gemm_bf16_kernel_amx_emu(const uint16_t *Ap, const uint16_t *Bp, int M, int ncols, int Kp, int K,
                              float *C, int ldc, int accumulate);
void gemm_bf16_block_amx_emu(const uint16_t *A, size_t lda, const uint16_t *B, size_t bstride, int M,
                             int ncols, int Kp, float *C, int ldc, int accumulate);
int gemm_bf16_emulate_amx(int on);

#endif
