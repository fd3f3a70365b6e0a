/* Internal interface between core/model/gemm_bf16.c (packing, dispatch, reference) and the per-ISA kernels
 * (gemm_bf16_avx512bf16.c, gemm_bf16_amx.c). Not part of the public API.
 *
 * Packed operands (bf16 bits, zero padded): Kp = K rounded up to GEMM_BF16_KALIGN.
 *  A: Mp rows (M rounded up to GEMM_BF16_MALIGN) of Kp values, row-major.
 *  B: panels of 16 columns; panel j holds, for each k pair p, the 16 pairs (b[2p][16j+c], b[2p+1][16j+c])
 *     (c = 0..15): 16 * Kp values per panel (the VNNI layout vdpbf16ps and AMX's B tiles read). */
#ifndef QLAB_GEMM_BF16_KERNELS_H
#define QLAB_GEMM_BF16_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#define GEMM_BF16_KALIGN 32
#define GEMM_BF16_MALIGN 32
#define GEMM_BF16_PANEL 16

/* C[m][n] (m < M, n < ncols) = / += A_m . B_n over the packed operands; B holds ceil(ncols/16) panels.
 * Runs an OpenMP loop over output tiles (each tile on one thread). */
typedef void (*gemm_bf16_kernel)(const uint16_t *Ap, const uint16_t *Bp, int M, int ncols, int Kp, float *C,
                                 int ldc, int accumulate);

void gemm_bf16_kernel_avx512bf16(const uint16_t *Ap, const uint16_t *Bp, int M, int ncols, int Kp, float *C,
                                 int ldc, int accumulate);
void gemm_bf16_round_avx512bf16(uint16_t *out, const float *in, size_t n);
/* 16 rows of a packed A from a transposed source: Ap[i][k] = bf16(A[k][i]) for i < mn, k < K, zero for
 * the rest of the 16 x Kp block (A points at the block's first column, row stride lda). */
void gemm_bf16_pack_at_avx512bf16(uint16_t *Ap, int Kp, const float *A, int lda, int K, int mn);
void gemm_bf16_kernel_amx(const uint16_t *Ap, const uint16_t *Bp, int M, int ncols, int Kp, float *C, int ldc,
                          int accumulate);
/* Whether the CPU has AMX-TILE and AMX-BF16 and Linux granted this process the tile data state
 * (arch_prctl(ARCH_REQ_XCOMP_PERM)); asks once. */
int gemm_bf16_amx_usable(void);

#endif
