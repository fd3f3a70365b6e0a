/* The layer ops of ops.h: plain loops for the elementwise, normalisation and attention work (OpenMP over
 * independent rows, static schedules or tasks with fixed operations, so the result does not depend on
 * timing; exp and its sums from
 * core/base/vmath, identical on every CPU) and OpenBLAS sgemm for
 * the matrix products, which dominate the cost of both evaluation and training. */
#include "core/model/ops.h"

#include <math.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef QLAB_HAVE_OPENBLAS
#include <cblas.h>
#endif

#include "core/base/common.h"
#include "core/base/vmath.h"

/* Elementwise loops (SwiGLU) run in chunks of this many elements: one vmath call each, OpenMP over chunks. */
#define OPS_ELEM_CHUNK 1024
/* The forward ops generation calls for every token (normalisation, SwiGLU, residual) run on the calling
 * thread alone below this many elements, entering no OpenMP region (qlab_run_tasks): a one-position row is
 * a few hundred elements, and waking a team for it costs more than the work. Elements are independent (and
 * a row's sums stay in one task), so the split never changes a result's bits. */
#define OPS_SERIAL_ELEMS (1 << 15)
/* The fp32 cached attention's heads run on the calling thread below this many multiply-adds (measured on
 * an Intel Xeon VM when chosen; the bf16 one has its own threshold, GEMM_BF16_SERIAL_MACS). */
#define OPS_CACHED_SERIAL_MACS (double)(1 << 20)

static int elem_threads(size_t n) {
    return n >= OPS_SERIAL_ELEMS ? qlab_num_threads() : 1;
}

/* ---------------------------------------------------------------- matrix products */

/* One sgemm on the calling thread. */
static void ops_gemm_serial(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                            const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
#ifdef QLAB_HAVE_OPENBLAS
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha,
                A, lda, B, ldb, beta, C, ldc);
#else
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float s = 0;
            for (int k = 0; k < K; k++)
                s += (ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k]) *
                     (tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j]);
            float *c = &C[(size_t)i * ldc + j];
            *c = alpha * s + (beta == 0 ? 0 : beta * *c);
        }
#endif
}

/* Whether OpenBLAS was built on OpenMP (openblas_get_parallel() == 2): it then shares libgomp's thread
 * pool, threads a GEMM itself, and runs single-threaded when called inside a parallel region, so nothing
 * needs managing. The pthread build has its own pool, whose workers spin against OpenMP's: there the rows
 * of C are split between OpenMP threads, each calling OpenBLAS single-threaded. */
static int ops_blas_is_openmp(void) {
#ifdef QLAB_HAVE_OPENBLAS
    return openblas_get_parallel() == 2;
#else
    return 0;
#endif
}

/* For the pthread build only: OpenBLAS runs single-threaded between begin and end (the OpenMP build's
 * set_num_threads would change OpenMP's own thread count, so it is left alone). */
static int ops_blas_serial_begin(void) {
#ifdef QLAB_HAVE_OPENBLAS
    if (ops_blas_is_openmp()) return 1;
    int prev = openblas_get_num_threads();
    if (prev != 1) openblas_set_num_threads(1);
    return prev;
#else
    return 1;
#endif
}

static void ops_blas_serial_end(int prev) {
#ifdef QLAB_HAVE_OPENBLAS
    if (prev != 1) openblas_set_num_threads(prev);
#else
    (void)prev;
#endif
}

void ops_gemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
              const float *B, int ldb, float beta, float *C, int ldc) {
    int threads = 1;
#ifdef _OPENMP
    if (omp_in_parallel()) { /* already one of several threads: run here, leave OpenBLAS's setting alone */
        ops_gemm_serial(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    threads = omp_get_max_threads();
#endif
    if (ops_blas_is_openmp()) {
        ops_gemm_serial(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    int prev = ops_blas_serial_begin();
    if (threads <= 1 || M < 32) {
        ops_gemm_serial(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    } else {
        /* Row blocks rounded to 16 rows, the register-block height of the sgemm kernels. */
        int chunk = ((M + threads - 1) / threads + 15) / 16 * 16;
#pragma omp parallel num_threads(threads)
        {
            int id = 0;
#ifdef _OPENMP
            id = omp_get_thread_num();
#endif
            int m0 = id * chunk, m1 = m0 + chunk < M ? m0 + chunk : M;
            if (m0 < m1)
                ops_gemm_serial(trans_a, trans_b, m1 - m0, N, K, alpha,
                                trans_a ? A + m0 : A + (size_t)m0 * lda, lda, B, ldb, beta,
                                C + (size_t)m0 * ldc, ldc);
        }
    }
    ops_blas_serial_end(prev);
}

/* ---------------------------------------------------------------- layer ops */

void embedding_forward(float *out, const int *tokens, const float *table, int N, int C) {
    for (int n = 0; n < N; n++)
        memcpy(out + (size_t)n * C, table + (size_t)tokens[n] * C, sizeof(float) * C);
}

void embedding_backward(float *dtable, const float *dout, const int *tokens, int N, int C) {
    /* Serial: two positions may share a token, and the work is tiny next to the matmuls. */
    for (int n = 0; n < N; n++) {
        float *d = dtable + (size_t)tokens[n] * C;
        const float *g = dout + (size_t)n * C;
        for (int c = 0; c < C; c++)
            d[c] += g[c];
    }
}

void rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, int N, int C,
                     float eps) {
    rmsnorm_forward_order(out, rstd, inp, weight, N, C, eps, 0);
}

float rmsnorm_rstd(const float *x, int C, float eps, int lanes) {
    double ss = 0; /* double: the row sum of squares is then exact enough to be order-insensitive */
    if (lanes)
        ss = vm_dot_f64(x, x, (size_t)C);
    else
        for (int c = 0; c < C; c++)
            ss += (double)x[c] * x[c];
    return (float)(1.0 / sqrt(ss / C + eps));
}

static inline void rmsnorm_scale(float *out, const float *x, float r, const float *weight, int C) {
#pragma omp simd
    for (int c = 0; c < C; c++)
        out[c] = x[c] * r * weight[c];
}

float rmsnorm_row(float *out, const float *x, const float *weight, int C, float eps, int lanes) {
    float r = rmsnorm_rstd(x, C, eps, lanes);
    rmsnorm_scale(out, x, r, weight, C);
    return r;
}

void rmsnorm_apply_rows(float *out, const float *x, const float *weight, const float *rstd, int rows, int C) {
    for (int n = 0; n < rows; n++)
        rmsnorm_scale(out + (size_t)n * C, x + (size_t)n * C, rstd[n], weight, C);
}

typedef struct {
    float *out, *rstd;
    const float *inp, *weight;
    int C, lanes;
    float eps;
} rmsnorm_job;

static void rmsnorm_task(void *job, long n) {
    const rmsnorm_job *j = job;
    j->rstd[n] =
        rmsnorm_row(j->out + (size_t)n * j->C, j->inp + (size_t)n * j->C, j->weight, j->C, j->eps, j->lanes);
}

void rmsnorm_forward_order(float *out, float *rstd, const float *inp, const float *weight, int N, int C,
                           float eps, int lanes) {
    rmsnorm_job j = {out, rstd, inp, weight, C, lanes, eps};
    qlab_run_tasks(N, elem_threads((size_t)N * C), rmsnorm_task, &j);
}

void rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                      const float *rstd, int N, int C) {
    rmsnorm_backward_order(dinp, dweight, dout, inp, weight, rstd, N, C, 0);
}

void rmsnorm_backward_rows(float *dinp, const float *dout, const float *inp, const float *weight,
                           const float *rstd, int rows, int C, int lanes) {
    /* y = w * x * r with r = (mean(x^2)+eps)^-1/2:  dx = r * w*dy - x * r^3/C * sum(w*dy*x). */
    for (int n = 0; n < rows; n++) {
        const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
        float *dx = dinp + (size_t)n * C;
        float r = rstd[n];
        double dot = 0;
        if (lanes)
            dot = vm_dot3_f64(weight, dy, x, (size_t)C);
        else
            for (int c = 0; c < C; c++)
                dot += (double)weight[c] * dy[c] * x[c];
        float k = (float)(dot * r * r * r / C);
#pragma omp simd
        for (int c = 0; c < C; c++)
            dx[c] += r * weight[c] * dy[c] - k * x[c];
    }
}

void rmsnorm_backward_weight(float *dweight, const float *dout, const float *inp, const float *rstd, int N,
                             int C) {
    /* Each thread owns a contiguous range of columns and walks all rows in order: no two threads write the
     * same element and each sum is formed in row order whatever the thread count. */
#pragma omp parallel
    {
        int nt = 1, id = 0;
#ifdef _OPENMP
        nt = omp_get_num_threads();
        id = omp_get_thread_num();
#endif
        int c0 = (int)((long)C * id / nt), c1 = (int)((long)C * (id + 1) / nt);
        for (int n = 0; n < N; n++) {
            const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
            float r = rstd[n];
#pragma omp simd
            for (int c = c0; c < c1; c++)
                dweight[c] += dy[c] * x[c] * r;
        }
    }
}

void rmsnorm_weight_block(float *partial, const float *dout, const float *inp, const float *rstd, int rows,
                          int C) {
    memset(partial, 0, sizeof(float) * (size_t)C);
    for (int n = 0; n < rows; n++) {
        const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
        float r = rstd[n];
#pragma omp simd
        for (int c = 0; c < C; c++)
            partial[c] += dy[c] * x[c] * r;
    }
}

void rmsnorm_weight_add_blocks(float *dweight, const float *partials, int nblocks, int C) {
    for (int b = 0; b < nblocks; b++)
#pragma omp simd
        for (int c = 0; c < C; c++)
            dweight[c] += partials[(size_t)b * C + c];
}

/* The blocked order of rmsnorm_weight_block + rmsnorm_weight_add_blocks over all rows, each thread owning a
 * range of columns (in tiles of 64, a block's partial sums on the stack). */
static void rmsnorm_backward_weight_blocked(float *dweight, const float *dout, const float *inp,
                                            const float *rstd, int N, int C) {
#pragma omp parallel
    {
        int nt = 1, id = 0;
#ifdef _OPENMP
        nt = omp_get_num_threads();
        id = omp_get_thread_num();
#endif
        int c0 = (int)((long)C * id / nt), c1 = (int)((long)C * (id + 1) / nt);
        float p[64];
        for (int t0 = c0; t0 < c1; t0 += 64) {
            int w = c1 - t0 < 64 ? c1 - t0 : 64;
            for (int b0 = 0; b0 < N; b0 += OPS_NORM_BLOCK) {
                int b1 = b0 + OPS_NORM_BLOCK < N ? b0 + OPS_NORM_BLOCK : N;
                memset(p, 0, sizeof p);
                for (int n = b0; n < b1; n++) {
                    const float *x = inp + (size_t)n * C + t0, *dy = dout + (size_t)n * C + t0;
                    float r = rstd[n];
#pragma omp simd
                    for (int j = 0; j < w; j++)
                        p[j] += dy[j] * x[j] * r;
                }
#pragma omp simd
                for (int j = 0; j < w; j++)
                    dweight[t0 + j] += p[j];
            }
        }
    }
}

void rmsnorm_backward_order(float *dinp, float *dweight, const float *dout, const float *inp,
                            const float *weight, const float *rstd, int N, int C, int lanes) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++)
        rmsnorm_backward_rows(dinp + (size_t)n * C, dout + (size_t)n * C, inp + (size_t)n * C, weight,
                              rstd + n, 1, C, lanes);
    if (!dweight) return;
    if (lanes)
        rmsnorm_backward_weight_blocked(dweight, dout, inp, rstd, N, C);
    else
        rmsnorm_backward_weight(dweight, dout, inp, rstd, N, C);
}

void matmul_forward(float *out, const float *inp, const float *weight, int N, int IC, int OC) {
    ops_gemm(0, 1, N, OC, IC, 1.0f, inp, IC, weight, IC, 0.0f, out, OC);
}

void matmul_backward(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                     int N, int IC, int OC) {
    if (dinp) ops_gemm(0, 0, N, IC, OC, 1.0f, dout, OC, weight, IC, 1.0f, dinp, IC);
    if (dweight) ops_gemm(1, 0, OC, IC, N, 1.0f, dout, OC, inp, IC, 1.0f, dweight, IC);
}

void rope_forward_rows(float *out, const float *inp, const float *cos_table, const float *sin_table, int n0,
                       int rows, int T, int NH, int HS) {
    int half = HS / 2;
    for (int i = 0; i < rows; i++) {
        int t = (n0 + i) % T;
        const float *cs = cos_table + (size_t)t * half, *sn = sin_table + (size_t)t * half;
        for (int h = 0; h < NH; h++) {
            size_t at = ((size_t)i * NH + h) * HS;
            vm_rotate_pairs(out + at, inp + at, cs, sn, (size_t)half);
        }
    }
}

void rope_forward(float *out, const float *inp, const float *cos_table, const float *sin_table, int B, int T,
                  int NH, int HS) {
    int N = B * T;
#pragma omp parallel for schedule(static)
    for (int n0 = 0; n0 < N; n0 += 16)
        rope_forward_rows(out + (size_t)n0 * NH * HS, inp + (size_t)n0 * NH * HS, cos_table, sin_table, n0,
                          N - n0 < 16 ? N - n0 : 16, T, NH, HS);
}

void rope_backward_rows(float *dinp, const float *dout, const float *cos_table, const float *sin_table,
                        int n0, int rows, int T, int NH, int HS) {
    int half = HS / 2;
    for (int i = 0; i < rows; i++) {
        int t = (n0 + i) % T;
        const float *cs = cos_table + (size_t)t * half, *sn = sin_table + (size_t)t * half;
        for (int h = 0; h < NH; h++) {
            const float *dy = dout + ((size_t)i * NH + h) * HS;
            float *dx = dinp + ((size_t)i * NH + h) * HS;
#pragma omp simd
            for (int j = 0; j < half; j++) {
                float d0 = dy[2 * j], d1 = dy[2 * j + 1];
                dx[2 * j] = 0.0f + (d0 * cs[j] + d1 * sn[j]);
                dx[2 * j + 1] = 0.0f + (d1 * cs[j] - d0 * sn[j]);
            }
        }
    }
}

void rope_backward(float *dinp, const float *dout, const float *cos_table, const float *sin_table, int B,
                   int T, int NH, int HS) {
    size_t row = (size_t)NH * HS;
#pragma omp parallel for schedule(static)
    for (int bt = 0; bt < B * T; bt++)
        rope_backward_rows(dinp + (size_t)bt * row, dout + (size_t)bt * row, cos_table, sin_table, bt, 1, T,
                           NH, HS);
}

/* Causal products are formed in blocks of query rows: rows [r0, r1) only need keys [0, r1), which saves
 * about 40% of the score and weighted-sum work at T = 256 compared with full T x T products. */
#define OPS_ATT_BLOCK 64

/* One row of the causal softmax: the first valid of its len entries scaled and normalised, the rest zero. */
static void attention_softmax_row(float *row, int valid, int len, float scale) {
    if (scale != 1.0f)
        for (int t2 = 0; t2 < valid; t2++)
            row[t2] *= scale;
    size_t at;
    float maxv = vm_max_index(row, (size_t)valid, &at);
    float inv = 1.0f / vm_exp_shift_sum(row, row, (size_t)valid, maxv);
    for (int t2 = 0; t2 < valid; t2++)
        row[t2] *= inv;
    for (int t2 = valid; t2 < len; t2++)
        row[t2] = 0;
}

void attention_softmax_rows(float *a, int r0, int r1, int T, float scale) {
    for (int t = r0; t < r1; t++)
        attention_softmax_row(a + (size_t)t * T, t + 1, T, scale);
}

typedef struct {
    float *out, *scratch;
    const float *q, *k, *v;
    size_t ld;
    int p0, n, NH, NKV, HS, threads;
} cached_job;

/* Head h of attention_forward_cached, in this thread's part of the scratch. */
static void cached_head(void *job, long h) {
    const cached_job *j = job;
    int group = j->NH / j->NKV, qstride = j->NH * j->HS, L = j->p0 + j->n, n = j->n, HS = j->HS, tid = 0;
#ifdef _OPENMP
    if (j->threads > 1) tid = omp_get_thread_num();
#endif
    float *s = j->scratch + (size_t)tid * n * L, scale = 1.0f / sqrtf((float)HS);
    const float *kh = j->k + (size_t)(h / group) * HS, *vh = j->v + (size_t)(h / group) * HS;
    /* scores = scale * q k^T over every cached key, then each row's causal softmax */
    ops_gemm_serial(0, 1, n, L, HS, scale, j->q + (size_t)h * HS, qstride, kh, (int)j->ld, 0.0f, s, L);
    for (int i = 0; i < n; i++)
        attention_softmax_row(s + (size_t)i * L, j->p0 + i + 1, L, 1.0f);
    ops_gemm_serial(0, 0, n, HS, L, 1.0f, s, L, vh, (int)j->ld, 0.0f, j->out + (size_t)h * HS, qstride);
}

void attention_forward_cached(float *out, const float *q, const float *k, const float *v, size_t ld, int p0,
                              int n, int NH, int NKV, int HS, float *scratch, int n_scratch) {
    /* below OPS_CACHED_SERIAL_MACS (a position over a cache of a few hundred, on a small model) the heads
     * run on this thread: waking a team costs more */
    int threads =
        2.0 * n * (p0 + n) * NH * HS >= OPS_CACHED_SERIAL_MACS && qlab_region_threads() > 1 ? n_scratch : 1;
    cached_job j = {out, scratch, q, k, v, ld, p0, n, NH, NKV, HS, threads};
    int prev = ops_blas_serial_begin();
    qlab_run_tasks(NH, threads, cached_head, &j);
    ops_blas_serial_end(prev);
}

/* ds (T,T) holds d(att) of one head on entry and d(scores) on exit: scale * att * (ds - <att, ds>) on and
 * below the diagonal, zeros above. */
static void attention_softmax_backward(float *ds, const float *att, int T, float scale) {
    for (int t = 0; t < T; t++) {
        const float *ar = att + (size_t)t * T;
        float *dr = ds + (size_t)t * T, total = 0;
        for (int t2 = 0; t2 <= t; t2++)
            total += ar[t2] * dr[t2];
        for (int t2 = 0; t2 <= t; t2++)
            dr[t2] = scale * ar[t2] * (dr[t2] - total);
        for (int t2 = t + 1; t2 < T; t2++)
            dr[t2] = 0;
    }
}

void attention_forward(float *out, float *att, const float *q, const float *k, const float *v, int B, int T,
                       int NH, int NKV, int HS) {
    int group = NH / NKV, qstride = NH * HS, kvstride = NKV * HS;
    float scale = 1.0f / sqrtf((float)HS);
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    /* One task per (batch x head, block of query rows): rows [r0, r1) need keys [0, r1) only, so the tasks
     * differ in size; they are handed out largest first (dynamic schedule) so neither thread waits out
     * the last head. Each task writes only its own rows with the same operations whichever thread runs
     * it, so the result does not depend on the schedule. */
    int nblocks = (T + OPS_ATT_BLOCK - 1) / OPS_ATT_BLOCK, BH = B * NH;
    int prev = ops_blas_serial_begin();
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int task = 0; task < BH * nblocks; task++) {
        int rb = nblocks - 1 - task / BH, bh = task % BH;
        int b = bh / NH, h = bh % NH, kvh = h / group;
        int r0 = rb * OPS_ATT_BLOCK, r1 = r0 + OPS_ATT_BLOCK < T ? r0 + OPS_ATT_BLOCK : T;
        const float *qb = q + (size_t)b * T * qstride + (size_t)h * HS;
        const float *kb = k + (size_t)b * T * kvstride + (size_t)kvh * HS;
        const float *vb = v + (size_t)b * T * kvstride + (size_t)kvh * HS;
        float *ob = out + (size_t)b * T * qstride + (size_t)h * HS;
        float *a = att + (size_t)bh * T * T;
        /* scores = scale * q k^T */
        ops_gemm_serial(0, 1, r1 - r0, r1, HS, scale, qb + (size_t)r0 * qstride, qstride, kb, kvstride, 0.0f,
                        a + (size_t)r0 * T, T);
        attention_softmax_rows(a, r0, r1, T, 1.0f); /* the scale is sgemm's alpha */
        /* out = att v */
        ops_gemm_serial(0, 0, r1 - r0, HS, r1, 1.0f, a + (size_t)r0 * T, T, vb, kvstride, 0.0f,
                        ob + (size_t)r0 * qstride, qstride);
    }
    ops_blas_serial_end(prev);
}

void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *att, const float *q,
                        const float *k, const float *v, int B, int T, int NH, int NKV, int HS, float *scratch,
                        int n_scratch) {
    int group = NH / NKV, qstride = NH * HS, kvstride = NKV * HS;
    float scale = 1.0f / sqrtf((float)HS);
    int prev = ops_blas_serial_begin();
    /* One task per (batch, key/value head): the query heads sharing that key/value head are handled by
     * the same thread, so dk and dv are written without races and always summed in the same order. */
#pragma omp parallel for schedule(static) num_threads(n_scratch)
    for (int bg = 0; bg < B * NKV; bg++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *ds = scratch + (size_t)tid * T * T; /* d(scores) of one head, (T,T) */
        int b = bg / NKV, kvh = bg % NKV;
        const float *kb = k + (size_t)b * T * kvstride + (size_t)kvh * HS;
        const float *vb = v + (size_t)b * T * kvstride + (size_t)kvh * HS;
        float *dkb = dk + (size_t)b * T * kvstride + (size_t)kvh * HS;
        float *dvb = dv + (size_t)b * T * kvstride + (size_t)kvh * HS;
        for (int h = kvh * group; h < (kvh + 1) * group; h++) {
            const float *a = att + ((size_t)b * NH + h) * T * T;
            const float *qb = q + (size_t)b * T * qstride + (size_t)h * HS;
            const float *dob = dout + (size_t)b * T * qstride + (size_t)h * HS;
            float *dqb = dq + (size_t)b * T * qstride + (size_t)h * HS;
            /* d(att) = dout v^T (lower triangle only) */
            for (int r0 = 0; r0 < T; r0 += OPS_ATT_BLOCK) {
                int r1 = r0 + OPS_ATT_BLOCK < T ? r0 + OPS_ATT_BLOCK : T;
                ops_gemm_serial(0, 1, r1 - r0, r1, HS, 1.0f, dob + (size_t)r0 * qstride, qstride, vb,
                                kvstride, 0.0f, ds + (size_t)r0 * T, T);
            }
            /* dv += att^T dout: key rows [c0, c1) receive from query rows [c0, T) */
            for (int c0 = 0; c0 < T; c0 += OPS_ATT_BLOCK) {
                int c1 = c0 + OPS_ATT_BLOCK < T ? c0 + OPS_ATT_BLOCK : T;
                ops_gemm_serial(1, 0, c1 - c0, HS, T - c0, 1.0f, a + (size_t)c0 * T + c0, T,
                                dob + (size_t)c0 * qstride, qstride, 1.0f, dvb + (size_t)c0 * kvstride,
                                kvstride);
            }
            attention_softmax_backward(ds, a, T, scale);
            /* dq += ds k;  dk += ds^T q */
            for (int r0 = 0; r0 < T; r0 += OPS_ATT_BLOCK) {
                int r1 = r0 + OPS_ATT_BLOCK < T ? r0 + OPS_ATT_BLOCK : T;
                ops_gemm_serial(0, 0, r1 - r0, HS, r1, 1.0f, ds + (size_t)r0 * T, T, kb, kvstride, 1.0f,
                                dqb + (size_t)r0 * qstride, qstride);
            }
            for (int c0 = 0; c0 < T; c0 += OPS_ATT_BLOCK) {
                int c1 = c0 + OPS_ATT_BLOCK < T ? c0 + OPS_ATT_BLOCK : T;
                ops_gemm_serial(1, 0, c1 - c0, HS, T - c0, 1.0f, ds + (size_t)c0 * T + c0, T,
                                qb + (size_t)c0 * qstride, qstride, 1.0f, dkb + (size_t)c0 * kvstride,
                                kvstride);
            }
        }
    }
    ops_blas_serial_end(prev);
}

typedef struct {
    float *out;
    const float *a, *b;
    size_t n;
    int add;
} elem_job;

/* Chunk c of an elementwise op: out = a + b (add) or silu(a) * b. */
static void elem_task(void *job, long c) {
    const elem_job *j = job;
    size_t i0 = (size_t)c * OPS_ELEM_CHUNK, len = j->n - i0 < OPS_ELEM_CHUNK ? j->n - i0 : OPS_ELEM_CHUNK;
    if (j->add) {
        float *out = j->out + i0;
        const float *a = j->a + i0, *b = j->b + i0;
#pragma omp simd
        for (size_t i = 0; i < len; i++)
            out[i] = a[i] + b[i];
    } else
        vm_silu_mul(j->out + i0, j->a + i0, j->b + i0, len);
}

static void elem_forward(float *out, const float *a, const float *b, size_t n, int add) {
    elem_job j = {out, a, b, n, add};
    qlab_run_tasks((long)((n + OPS_ELEM_CHUNK - 1) / OPS_ELEM_CHUNK), elem_threads(n), elem_task, &j);
}

void swiglu_forward(float *out, const float *gate, const float *up, size_t n) {
    elem_forward(out, gate, up, n, 0);
}

void swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                     size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i0 = 0; i0 < n; i0 += OPS_ELEM_CHUNK) {
        size_t len = n - i0 < OPS_ELEM_CHUNK ? n - i0 : OPS_ELEM_CHUNK;
        vm_swiglu_backward(dgate + i0, dup + i0, NULL, dout + i0, gate + i0, up + i0, len);
    }
}

void residual_forward(float *out, const float *a, const float *b, size_t n) {
    elem_forward(out, a, b, n, 1);
}

void residual_backward(float *da, float *db, const float *dout, size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        da[i] += dout[i];
        db[i] += dout[i];
    }
}

void softmax_forward(float *probs, const float *logits, int N, int V) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = logits + (size_t)n * V;
        float *p = probs + (size_t)n * V;
        size_t at;
        float maxv = vm_max_index(x, (size_t)V, &at);
        float inv = (float)(1.0 / vm_exp_shift_sum_f64(p, x, (size_t)V, maxv));
        for (int i = 0; i < V; i++)
            p[i] *= inv;
    }
}

void softmax_backward(float *dlogits, const float *dprobs, const float *probs, int N, int V) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *p = probs + (size_t)n * V, *dp = dprobs + (size_t)n * V;
        float *dx = dlogits + (size_t)n * V;
        double dot = 0;
        for (int i = 0; i < V; i++)
            dot += (double)p[i] * dp[i];
        for (int i = 0; i < V; i++)
            dx[i] += p[i] * (dp[i] - (float)dot);
    }
}

float crossentropy_forward(float *losses, const float *probs, const int *targets, int N, int V, int *count) {
    for (int n = 0; n < N; n++) {
        if (targets[n] < 0) {
            losses[n] = 0;
            continue;
        }
        /* A probability that underflowed to 0 would give +inf; clamp to the smallest normal float. A NaN
         * (from NaN logits) stays NaN: clamping it would report a finite loss of 87.3. */
        float p = probs[(size_t)n * V + targets[n]];
        losses[n] = -logf(isnan(p) || p > 1.17549435e-38f ? p : 1.17549435e-38f);
    }
    return crossentropy_mean(losses, targets, N, count);
}

float crossentropy_mean(const float *losses, const int *targets, int N, int *count) {
    double sum = 0;
    int valid = 0;
    for (int n = 0; n < N; n++) {
        if (targets[n] < 0) continue;
        sum += losses[n];
        valid++;
    }
    if (count) *count = valid;
    return valid ? (float)(sum / valid) : 0.0f;
}

void crossentropy_softmax_grad_inplace(float *probs, const int *targets, int N, int V, float dloss) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        int y = targets[n];
        float *p = probs + (size_t)n * V;
        if (y < 0) {
            memset(p, 0, sizeof(float) * (size_t)V);
            continue;
        }
        for (int i = 0; i < V; i++) /* 0 + x: a zero buffer's first addition (-0 becomes +0) */
            p[i] = 0.0f + dloss * (p[i] - (i == y ? 1.0f : 0.0f));
    }
}
