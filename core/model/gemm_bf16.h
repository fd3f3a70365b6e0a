/* bf16 matrix products with fp32 accumulation (QLoRA's compute dtype), on the best path this CPU has.
 *
 * Numerics, identical on every path: each fp32 input element is rounded to bf16 round-to-nearest-even
 * (core/base/half.h f32_to_bf16; NaN stays NaN); products of two bf16 values are exact in fp32 and are
 * accumulated in fp32. The scalar reference fixes one order, the one AVX-512 BF16 (vdpbf16ps) uses: for
 * every output element, acc = 0; for each k pair p = 0, 1, ...: acc = fma(a[2p+1], b[2p+1], acc); acc =
 * fma(a[2p], b[2p], acc), with bf16 subnormal inputs read as zero and subnormal results flushed to zero
 * (the instruction's fixed DAZ/FTZ); K is padded with zeros to a multiple of 32. The result is then
 * stored (C = acc) or added (C = C + acc, one fp32 addition). The AVX-512 BF16 kernel is bit-exact with
 * the reference (tests/test_gemm_bf16.c), and so is the "avx512fma" kernel, which forms the same FMAs from
 * operands widened to fp32 under MXCSR's DAZ/FTZ (faster where vdpbf16ps issues at half the FMA rate). The
 * AMX kernel (TDPBF16PS) and the portable path (the same bf16-rounded inputs through OpenBLAS sgemm) sum in
 * another order: they differ from the reference by at most the fp32 summation bound
 * 2 * K * 2^-24 * sum_k |a_k b_k| per element (tested on every path the CPU has; the AMX tests skip on CPUs
 * without AMX).
 *
 * Paths: "ref" (scalar, slow), "blas" (portable), "avx512fma", "avx512bf16", "amx". The best available one
 * is picked at first use: amx, else the faster of avx512bf16 and avx512fma in a short timing of the two
 * kernels (they give the same bits, so the choice changes speed only), else blas; QLAB_BF16_PATH=name in
 * the environment or bf16_force_path overrides it (for tests and benchmarks). Every path runs each output
 * tile on one thread, so results do not depend on the thread count. */
#ifndef QLAB_GEMM_BF16_H
#define QLAB_GEMM_BF16_H

#include <stddef.h>
#include <stdint.h>

#include "core/base/common.h"
#include "core/quant/quant.h"

/* Compute dtype of a model: fp32 (the reference) or bf16 matrix products with fp32 accumulation (QLoRA's
 * recipe: fp32 master weights, bf16-rounded inputs to every matrix product, the projections' and the
 * attention's; norms, RoPE, softmax and loss in fp32). */
typedef enum { QLAB_COMPUTE_FP32 = 0, QLAB_COMPUTE_BF16 } qlab_compute;
/* Revision of what bf16 compute rounds, for cache keys of bf16-trained results: 1, the projections, the
 * classifier and the adapters; 2, also the attention's products (scores and weighted sums); 3, the norm
 * weights' gradients summed in blocks of rows (core/model/ops.h OPS_NORM_BLOCK). */
#define QLAB_BF16_NUMERICS 3
const char *qlab_compute_name(qlab_compute c); /* "fp32", "bf16" */
/* Parses "fp32" or "bf16"; otherwise records "unknown compute dtype 'x' (expected fp32 or bf16)". */
qlab_status qlab_compute_parse(const char *name, qlab_compute *c);
/* What the products of a model with compute dtype c actually run on, for provenance: "none" for fp32 (no
 * bf16 product is formed), else the active bf16 path's name (bf16_active_path). */
const char *qlab_compute_path_name(qlab_compute c);

typedef enum {
    BF16_PATH_REF = 0,
    BF16_PATH_BLAS,
    BF16_PATH_AVX512FMA,
    BF16_PATH_AVX512BF16,
    BF16_PATH_AMX,
    BF16_PATH_COUNT
} bf16_path;

const char *bf16_path_name(bf16_path p); /* "ref", "blas", "avx512fma", "avx512bf16", "amx" */
/* The summation order a path keeps, for cache keys of results that depend on bits: "avx512bf16" for the
 * paths that keep the reference's order (ref, avx512fma, avx512bf16: the name keys had before avx512fma
 * existed), else the path's own name. */
const char *bf16_path_order(bf16_path p);
/* Whether this CPU (and, for AMX, the kernel's permission request) allows the path. */
int bf16_path_available(bf16_path p);
/* The path in use: QLAB_BF16_PATH if set and valid (an unknown or unavailable name is reported once on
 * stderr and the automatic choice is used), else the best available one. */
bf16_path bf16_active_path(void);
/* Forces a path by name ("auto" restores the automatic choice); QLAB_ERR_UNSUPPORTED if the CPU lacks it,
 * QLAB_ERR_ARG for an unknown name. Not thread-safe: call it before running products. */
qlab_status bf16_force_path(const char *name);

/* C (M,N) = op(A) op(B) (accumulate 0) or C += op(A) op(B) (accumulate 1), row-major; op(A) is (M,K): A is
 * (M,K) with leading dimension lda, or (K,M) when trans_a; op(B) is (K,N): B is (K,N), or (N,K) when
 * trans_b. Inputs are fp32 and rounded to bf16 as described above. Fails only on allocation failure (use
 * bf16_workspace_reserve first to rule that out). */
qlab_status bf16_gemm(int trans_a, int trans_b, int M, int N, int K, const float *A, int lda, const float *B,
                      int ldb, int accumulate, float *C, int ldc);
/* The same with B a quantized row-major matrix: (N,K) when trans_b (a linear layer's weight, y = x W^T),
 * else (K,N). Its 4-bit codes are dequantized straight to bf16 panels of at most a few hundred columns
 * that feed the product; no fp32 (or full bf16) copy of the matrix is formed. */
qlab_status bf16_gemm_quant(int trans_a, int trans_b, int M, int N, int K, const float *A, int lda,
                            const quant_tensor *B, int accumulate, float *C, int ldc);

/* A weight W (N,K) of a linear layer (y = x W^T), fp32 or quantized, rounded or dequantized to bf16 once
 * and kept in the kernels' panel layout (N x K bf16 values plus padding, charged to memory accounting as
 * scratch): for evaluation, where the weights stay fixed over many products, which then skip the packing
 * of B. The products give the same bits as bf16_gemm / bf16_gemm_quant with trans_b on every path. */
typedef struct {
    int N, K, Kp, npanels; /* the product's output columns and reduction (K rounded up: Kp) */
    int dinp;              /* packed by bf16_pack_weight_dinp */
    uint16_t *panels;      /* npanels panels of GEMM_BF16_PANEL rows x Kp, 32-bit pairs interleaved */
    size_t bytes;
} bf16_packed_weight;
/* Exactly one of W (row-major (N,K)) and q (N*K elements) is given. */
qlab_status bf16_pack_weight(const float *W, const quant_tensor *q, int N, int K, bf16_packed_weight *out);
/* The same weight W (N,K) packed as the right operand of its layer's input gradient, dinp (M,K) += dout (M,N)
 * W, for a backward that multiplies chunks of rows by it (gemm_bf16_block): out->N = K output columns,
 * out->K = N the reduction. Its products give the same bits as bf16_gemm_backward's dinp. */
qlab_status bf16_pack_weight_dinp(const float *W, const quant_tensor *q, int N, int K,
                                  bf16_packed_weight *out);
/* The panels' bytes of an N x K weight packed by bf16_pack_weight (dinp 0) or bf16_pack_weight_dinp. */
size_t bf16_packed_weight_bytes(int N, int K, int dinp);
void bf16_packed_weight_free(bf16_packed_weight *w);
/* Packs W or q (the shape of w) again into w's panels: for weights that changed (a training step), without
 * allocating them again. */
qlab_status bf16_repack_weight(const float *W, const quant_tensor *q, bf16_packed_weight *w);
/* C (M,N) = A W^T (accumulate 0) or C += A W^T, A (M,K) with leading dimension lda. */
qlab_status bf16_gemm_packed(int M, const float *A, int lda, const bf16_packed_weight *W, int accumulate,
                             float *C, int ldc);

/* One of several products C = A W^T sharing the left operand A (M,K): the weight W (N,K) is exactly one of
 * w (fp32, row-major), q (quantized, N*K elements) and packed; C (M,N) with leading dimension ldc is
 * stored or accumulated. */
typedef struct {
    const float *w;
    const quant_tensor *q;
    const bf16_packed_weight *packed;
    int N;
    float *C;
    int ldc, accumulate;
} bf16_weight_product;
/* The n products in order, with A rounded and packed once (the query, key and value projections share
 * their input, as do the gate and up projections): the same bits as one bf16_gemm / bf16_gemm_quant
 * (trans_b) / bf16_gemm_packed call each. */
qlab_status bf16_gemm_shared(int M, int K, const float *A, int lda, int n, const bf16_weight_product *w);

/* The backward of a linear layer y = x W^T over N rows: dinp (N,IC) += dout (N,OC) W and dW (OC,IC) +=
 * dout^T X (X (N,IC) the layer's input), either may be NULL; W is fp32 (OC,IC) or q quantized (OC*IC
 * elements), needed only for dinp. dout is rounded once for both products: the same bits as
 * bf16_gemm(0, 0, ...) / bf16_gemm_quant for dinp and bf16_gemm(1, 0, ...) for dW. */
qlab_status bf16_gemm_backward(int N, int IC, int OC, const float *dout, const float *W,
                               const quant_tensor *q, const float *X, float *dinp, float *dW);
/* Its workspace, with (weight_grad) or without room for dW's operand (dout transposed). */
size_t bf16_gemm_backward_bytes(int N, int IC, int OC, int weight_grad);
/* bf16_gemm_backward that consumes dout (its buffer holds cap floats): dout is rounded into its own buffer
 * as the packed operand, where that fits (so the workspace holds no copy of it), and is left holding that.
 * The same dinp and dW bits. */
qlab_status bf16_gemm_backward_consume(int N, int IC, int OC, float *dout, size_t cap, const float *W,
                                       const quant_tensor *q, const float *X, float *dinp, float *dW);
size_t bf16_gemm_backward_consume_bytes(int N, int IC, int OC, int weight_grad, size_t cap);

/* Bytes of workspace a product of these sizes needs on the active path, and a reservation of that much
 * for the calling thread (kept and reused; products on that thread then never allocate). */
size_t bf16_workspace_bytes(int M, int N, int K);
qlab_status bf16_workspace_reserve(size_t bytes);
/* Frees the calling thread's workspace (charged to memory accounting as scratch while held); the next
 * reservation allocates again. */
void bf16_workspace_release(void);

/* Causal attention with bf16 products, for models computing in bf16: the arguments, layouts and results
 * of attention_forward / attention_backward (core/model/ops.h), with each product of two activation
 * matrices (scores = q k^T, out = att v; in backward d(att) = dout v^T, dv = att^T dout, dq = ds k,
 * dk = ds^T q) formed as bf16_gemm forms it: both operands rounded to bf16, fp32 accumulation on the
 * active path. The score scale multiplies the accumulated score in fp32; softmax and its backward run in
 * fp32 (core/base/vmath: vm_scale_exp_sum, vm_softmax_grad). The forward writes the probabilities to att
 * unless it is NULL; the backward needs none: it forms them again from q and k block by block, as the
 * forward does (the same bits), instead of reading B NH T^2 stored floats. Unlike attention_backward, the
 * backward stores dq, dk and dv (their contents on entry are never read). Fail only when the per-thread
 * packing workspace cannot be allocated. */
qlab_status attention_forward_bf16(float *out, float *att, const float *q, const float *k, const float *v,
                                   int B, int T, int NH, int NKV, int HS);
qlab_status attention_backward_bf16(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                    const float *k, const float *v, int B, int T, int NH, int NKV, int HS,
                                    float *scratch, int n_scratch);
/* attention_backward_bf16 with q, k and v stored already rounded (bf16_round_array), as a training forward
 * that keeps them at 2 bytes each hands them over: the same bits, since the backward rounds them to bf16
 * before every product and rounding a bf16 value again leaves it unchanged. Each task widens the rows it
 * packs into its workspace first. */
qlab_status attention_backward_bf16_rounded(float *dq, float *dk, float *dv, const float *dout,
                                            const uint16_t *q, const uint16_t *k, const uint16_t *v, int B,
                                            int T, int NH, int NKV, int HS, float *scratch, int n_scratch);
/* The per-thread packing workspace the forward (threads threads) and the backward (n_scratch = threads)
 * take from the calling thread's bf16 workspace, the larger of the two. */
size_t attention_bf16_workspace_bytes(int T, int HS, int threads);

/* Generation's keys and values for bf16 compute, rounded (RNE) and packed as the cached attention's
 * products read them: per (layer, key/value head), the keys as k^T panels over positions (Kh values per
 * position) and the values as panels over head dimensions, position pairs interleaved (Kc positions per
 * panel), for up to cap positions. base is 64-byte aligned and zeroed before first use. */
typedef struct {
    uint16_t *base;
    int layers, NKV, HS, cap;
    int Kh, Kc;          /* HS and cap rounded up to 32 */
    size_t keys, values; /* elements of one (layer, head)'s keys and values */
} bf16_kv_cache;
size_t bf16_kv_cache_bytes(int layers, int NKV, int HS, int cap);
void bf16_kv_cache_layout(bf16_kv_cache *c, void *base, int layers, int NKV, int HS, int cap);
/* Positions [p0, p0 + n) of layer l from the fp32 cache (position t's keys at k + t ld, its values at
 * v + t ld, head g at g HS), and zero values after them up to the products' padding. */
void bf16_kv_cache_put(const bf16_kv_cache *c, int l, const float *k, const float *v, size_t ld, int p0,
                       int n);

/* attention_forward_cached (core/model/ops.h) with attention_forward_bf16's numerics, over layer l of the
 * packed cache c (positions [0, p0 + n) put there): bf16 operands, fp32 accumulation, the scale and
 * softmax in fp32 (softmax_round_rows), each query row's products over the keys up to the last row of its
 * block of 32. One task per (head, block of rows), on the calling thread for products below
 * GEMM_BF16_SERIAL_MACS. Fails only when its per-thread scratch cannot be allocated. */
qlab_status attention_forward_cached_bf16(float *out, const float *q, const bf16_kv_cache *c, int l, int p0,
                                          int n, int NH);

/* The operands of attention_forward_bf16 rounded and packed ahead, for a caller that forms q, k and v in
 * chunks of positions and packs each chunk while it is in cache (evaluation in row chunks): q as NH blocks
 * of B*T + 32 rows of Kq (HS rounded up to 32) values, zero padded; per (batch, key/value head) the keys as
 * k^T panels and the values as panels over position pairs, as attention_forward_bf16 packs them. Only for
 * T a multiple of 32 (bf16_att_operands_fit), so no padding of positions is needed. */
typedef struct {
    int B, T, NH, NKV, HS, Kq;
    uint16_t *q, *k, *v;
} bf16_att_operands;
int bf16_att_operands_fit(int T);
size_t bf16_att_operands_bytes(int B, int T, int NH, int NKV, int HS);
/* Points o into base (bf16_att_operands_bytes, 64-byte aligned) and zeroes the padding rows of q. */
void bf16_att_operands_layout(bf16_att_operands *o, void *base, int B, int T, int NH, int NKV, int HS);
/* Packs positions [n0, n0 + rows) of the B*T, all in one batch row, rows even: q (rows, NH*HS), k and v
 * (rows, NKV*HS), after RoPE; tmp holds 2 * (round32(HS) + 32) values (the scalar packers' staging). */
void bf16_att_operands_pack(const bf16_att_operands *o, int n0, int rows, const float *q, const float *k,
                            const float *v, uint16_t *tmp);
/* attention_forward_bf16 from operands packed ahead: the same bits (att, the probabilities, may be NULL). */
qlab_status attention_forward_bf16_packed(float *out, float *att, const bf16_att_operands *o);
/* out[c] = bf16(x[c] * r * w[c]) for c < n (the products in fp32, left to right: a norm's output rounded
 * for a product), zero for n <= c < width; on the fastest path, the same bits everywhere. */
void bf16_scale_round(uint16_t *out, const float *x, float r, const float *w, int n, int width);
/* Rounds n fp32 values to bf16 (RNE) on the fastest path, bit-identical to f32_to_bf16. */
void bf16_round_array(uint16_t *out, const float *in, size_t n);
/* dst rows (ldd apart) = src's bf16 rows (lds apart) widened exactly to fp32, rows x cols, on the calling
 * thread. */
void bf16_widen_rows(float *dst, size_t ldd, const uint16_t *src, size_t lds, int rows, int cols);

#endif
