/* Layer ops of the transformer, llm.c style: each op is a pair <op>_forward / <op>_backward over raw
 * float arrays with explicit sizes (N = B*T rows). Backward ACCUMULATES (+=) into every gradient array it
 * is given, so callers zero them first. Parallel loops use static schedules over independent rows or
 * column ranges, so results are bit-identical for the same inputs and thread count. */
#ifndef QLAB_OPS_H
#define QLAB_OPS_H

#include <stddef.h>

/* C (M,N) = alpha op(A) op(B) + beta C, row-major; op transposes when trans_* is non-zero (A is then
 * (K,M), B (N,K)). OpenMP is the only thread pool: with OpenBLAS built on OpenMP this is one threaded
 * sgemm; with the pthread build the rows of C are split statically between the OpenMP threads, each
 * running a single-threaded sgemm (OpenBLAS's own workers would spin on the cores the elementwise loops
 * need). Inside a parallel region it runs on the calling thread. */
void ops_gemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
              const float *B, int ldb, float beta, float *C, int ldc);

/* out (N,C) = table[tokens[n]]; tokens (N) must lie in [0, V), checked by the caller; table (V,C). */
void embedding_forward(float *out, const int *tokens, const float *table, int N, int C);
/* dtable (V,C) += scatter of dout (N,C) by tokens (N). */
void embedding_backward(float *dtable, const float *dout, const int *tokens, int N, int C);

/* out (N,C) = inp * rstd * weight with rstd (N) = 1/sqrt(mean(inp^2) + eps), saved for backward. */
void rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, int N, int C, float eps);
/* The same with the row sum of squares in double either in element order (lanes 0: rmsnorm_forward, the
 * fp32 reference) or in vmath's 16-lane order (vm_dot_f64, vectorized: bf16 compute). */
/* One row of rmsnorm_forward_order on the calling thread: out (C) from x (C); returns the row's rstd, which
 * rmsnorm_rstd computes alone (out[c] is then x[c] * rstd * weight[c]). */
float rmsnorm_rstd(const float *x, int C, float eps, int lanes);
float rmsnorm_row(float *out, const float *x, const float *weight, int C, float eps, int lanes);
/* The norm's output again from its input and kept rstd, rows [0, rows) on the calling thread: the values
 * rmsnorm_row wrote. */
void rmsnorm_apply_rows(float *out, const float *x, const float *weight, const float *rstd, int rows, int C);
void rmsnorm_forward_order(float *out, float *rstd, const float *inp, const float *weight, int N, int C,
                           float eps, int lanes);
/* dinp (N,C), dweight (C, may be NULL) from dout (N,C), inp (N,C), weight (C), rstd (N). */
void rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                      const float *rstd, int N, int C);
/* The same with the row sum sum(w * dy * x) in double either in element order (lanes 0: rmsnorm_backward,
 * the fp32 reference) or in vmath's 16-lane order (vm_dot3_f64, vectorized: bf16 compute). */
void rmsnorm_backward_order(float *dinp, float *dweight, const float *dout, const float *inp,
                            const float *weight, const float *rstd, int N, int C, int lanes);
/* Its parts: the input gradient of rows [0, rows) on the calling thread (dinp, dout, inp and rstd point at
 * the first row), and the weight gradient over all N rows. With lanes 0 (fp32) that sum runs in row order
 * (rmsnorm_backward_weight, OpenMP over columns); with lanes (bf16 compute) in blocks of OPS_NORM_BLOCK rows:
 * each block's partial sums from zero in row order (rmsnorm_weight_block, on the calling thread: a backward
 * in row chunks forms them while the rows are in cache), then added to dweight in block order
 * (rmsnorm_weight_add_blocks). */
#define OPS_NORM_BLOCK 32
void rmsnorm_backward_rows(float *dinp, const float *dout, const float *inp, const float *weight,
                           const float *rstd, int rows, int C, int lanes);
void rmsnorm_backward_weight(float *dweight, const float *dout, const float *inp, const float *rstd, int N,
                             int C);
void rmsnorm_weight_block(float *partial, const float *dout, const float *inp, const float *rstd, int rows,
                          int C);
void rmsnorm_weight_add_blocks(float *dweight, const float *partials, int nblocks, int C);

/* out (N,OC) = inp (N,IC) @ weight (OC,IC)^T, through sgemm. */
void matmul_forward(float *out, const float *inp, const float *weight, int N, int IC, int OC);
/* dinp (N,IC, may be NULL) += dout (N,OC) @ weight (OC,IC); dweight (OC,IC, may be NULL) += dout^T @ inp. */
void matmul_backward(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                     int N, int IC, int OC);

/* RoPE, llama2.c convention: the pair (2i, 2i+1) of every head at position t is rotated by the angle
 * t * theta^(-2i/HS), whose cos/sin are read from tables (maxT, HS/2). inp/out (B,T,NH,HS); out may
 * equal inp. */
void rope_forward(float *out, const float *inp, const float *cos_table, const float *sin_table, int B, int T,
                  int NH, int HS);
/* rope_forward of rows [n0, n0 + rows) of the (B*T) positions on the calling thread: out and inp point at
 * row n0 (row i is at position (n0 + i) % T). */
void rope_forward_rows(float *out, const float *inp, const float *cos_table, const float *sin_table, int n0,
                       int rows, int T, int NH, int HS);
/* dinp (B,T,NH,HS) = 0 + rotation^T dout (B,T,NH,HS): stored, not accumulated, with the bits an addition to a
 * zeroed buffer gives (a signed zero comes out +0); dinp must not alias dout. */
void rope_backward(float *dinp, const float *dout, const float *cos_table, const float *sin_table, int B,
                   int T, int NH, int HS);
/* rope_backward of rows [n0, n0 + rows) on the calling thread: dinp and dout point at row n0. */
void rope_backward_rows(float *dinp, const float *dout, const float *cos_table, const float *sin_table,
                        int n0, int rows, int T, int NH, int HS);

/* Causal scaled dot-product attention with grouped-query heads: query head h reads key/value head
 * h / (NH/NKV). q (B,T,NH,HS), k and v (B,T,NKV,HS), out (B,T,NH,HS); att (B,NH,T,T) receives the
 * softmax probabilities (zero above the diagonal) for backward. */
void attention_forward(float *out, float *att, const float *q, const float *k, const float *v, int B, int T,
                       int NH, int NKV, int HS);
/* dq (B,T,NH,HS), dk and dv (B,T,NKV,HS) += gradients from dout (B,T,NH,HS). scratch is (n_scratch, T, T);
 * at most n_scratch threads are used. */
void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *att, const float *q,
                        const float *k, const float *v, int B, int T, int NH, int NKV, int HS, float *scratch,
                        int n_scratch);

/* The fp32 attention's causal softmax (also the tests' reference for the bf16 one). Rows [r0, r1) of a (T
 * columns) hold scores: row t becomes softmax(scale * row[0..t]) (scale 1: the row as is), zeros after t. */
void attention_softmax_rows(float *a, int r0, int r1, int T, float scale);
/* attention_forward for generation with a cache: n new query rows q (n, NH*HS) at positions p0 .. p0+n-1
 * over the keys and values of positions [0, p0+n), row p of k and v at k + p*ld and v + p*ld (the new rows
 * included); out (n, NH*HS). The same operations as attention_forward for a row (OpenBLAS's sums over a
 * different block of rows: not always the same bits). scratch holds n_scratch * n * (p0+n) floats. */
void attention_forward_cached(float *out, const float *q, const float *k, const float *v, size_t ld, int p0,
                              int n, int NH, int NKV, int HS, float *scratch, int n_scratch);

/* out (N,H) = silu(gate) * up, gate and up (N,H); silu(x) = x / (1 + e^-x). */
void swiglu_forward(float *out, const float *gate, const float *up, size_t n);
/* dgate, dup (n) = 0 + the gradients from dout (n): stored, not accumulated, as vm_swiglu_backward forms them
 * (one exponential per element; the bits of additions to zeroed buffers), on chunks of the n values. */
void swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                     size_t n);

/* out (n) = a + b; backward: da += dout, db += dout. */
void residual_forward(float *out, const float *a, const float *b, size_t n);
void residual_backward(float *da, float *db, const float *dout, size_t n);

/* probs (N,V) = softmax over each row of logits (N,V); probs may equal logits. */
void softmax_forward(float *probs, const float *logits, int N, int V);
/* dlogits (N,V) += Jacobian^T dprobs (N,V) given probs (N,V). */
void softmax_backward(float *dlogits, const float *dprobs, const float *probs, int N, int V);

/* Cross-entropy of probs (N,V) against targets (N); targets < 0 are ignored (loss 0). losses (N).
 * Returns the mean over non-ignored positions (0 when all are ignored) and their count in *count. */
float crossentropy_forward(float *losses, const float *probs, const int *targets, int N, int V, int *count);
/* The mean of the non-ignored losses (N) and their count in *count, summed as crossentropy_forward sums:
 * over rows whose losses were formed in pieces, the same bits. */
float crossentropy_mean(const float *losses, const int *targets, int N, int *count);
/* The fused backward of softmax + cross-entropy in place of probs (N,V): each non-ignored row becomes
 * dloss * (probs - onehot(target)), where dloss is d(result)/d(loss of one position) (1/count for the
 * mean), as 0 + that (the bits of accumulating into a zeroed buffer); ignored rows become zero. */
void crossentropy_softmax_grad_inplace(float *probs, const int *targets, int N, int V, float dloss);

#endif
