/* bf16 GEMM driver (gemm_bf16.h): packing of fp32 or 4-bit operands into bf16 panels, the scalar reference
 * kernel, the portable path through OpenBLAS, and the run-time choice of the AVX-512 (FMA or BF16) or AMX
 * kernel.
 * A product packs op(A) once, then walks B in chunks of at most GEMM_BF16_CHUNK_BYTES of packed panels:
 * pack a chunk (from fp32, or dequantizing 4-bit codes straight to bf16), multiply it, next chunk. */
#include "core/model/gemm_bf16.h"

#include "core/base/memacct.h"

#include <math.h>
#include <float.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/base/half.h"
#include "core/base/progress.h"
#include "core/model/gemm_bf16_kernels.h"
#include "core/model/ops.h"

/* Packed B chunk size: a few hundred columns at the model's widths, so a chunk stays in L2. */
#define GEMM_BF16_CHUNK_BYTES ((size_t)256 << 10)

/* ---------------------------------------------------------------- paths */

static const char *const path_names[BF16_PATH_COUNT] = {"ref", "blas", "avx512fma", "avx512bf16", "amx"};

const char *bf16_path_name(bf16_path p) {
    return (p >= 0 && p < BF16_PATH_COUNT) ? path_names[p] : "unknown";
}

const char *bf16_path_order(bf16_path p) {
    return (p == BF16_PATH_REF || p == BF16_PATH_AVX512FMA) ? path_names[BF16_PATH_AVX512BF16]
                                                            : bf16_path_name(p);
}

static int amx_emulated_; /* tests: the amx path on emulated tiles (gemm_bf16_emulate_amx) */

int gemm_bf16_emulate_amx(int on) {
    amx_emulated_ = on && qlab_cpu_avx512() && !gemm_bf16_amx_usable();
    return amx_emulated_;
}

int bf16_path_available(bf16_path p) {
    switch (p) {
    case BF16_PATH_REF:
    case BF16_PATH_BLAS:
        return 1;
    case BF16_PATH_AVX512FMA:
        return qlab_cpu_avx512();
    case BF16_PATH_AVX512BF16:
        return qlab_cpu_avx512bf16();
    case BF16_PATH_AMX:
        return amx_emulated_ || gemm_bf16_amx_usable();
    default:
        return 0;
    }
}

static int forced_path_ = -1, auto_path_ = -1;

static void gemm_bf16_block_dispatch(bf16_path path, const uint16_t *A, size_t lda, const uint16_t *B,
                                     size_t bstride, int M, int ncols, int Kp, float *C, int ldc,
                                     int accumulate);

/* Seconds of one single-thread block product (48 x 256 x 512, 12.6 MFLOP) on a path. */
static double time_path(bf16_path path, const uint16_t *A, const uint16_t *B, float *C) {
    double t0 = qlab_now();
    gemm_bf16_block_dispatch(path, A, 512, B, (size_t)GEMM_BF16_PANEL * 512, 48, 256, 512, C, 256, 0);
    return qlab_now() - t0;
}

/* The faster of the two AVX-512 kernels on this CPU: they give the same bits, so only speed decides.
 * avx512bf16 when the operands cannot be allocated. */
static bf16_path faster_avx512_path(void) {
    size_t na = (size_t)48 * 512, nb = (size_t)256 * 512;
    uint16_t *A = qlab_alloc_aligned(sizeof(uint16_t) * (na + nb));
    float *C = qlab_alloc_aligned(sizeof(float) * 48 * 256);
    bf16_path p = BF16_PATH_AVX512BF16;
    if (A && C) {
        for (size_t i = 0; i < na + nb; i++) /* bf16 values in [1, 2) */
            A[i] = (uint16_t)(0x3f80u | (uint16_t)((i * 37u) & 0x7fu));
        /* the best of five of each, taken in turn: a burst of other work slows both, not one */
        double tf = 1e30, tb = 1e30;
        for (int rep = 0; rep < 6; rep++) { /* the first pair touches the memory, untimed */
            double f = time_path(BF16_PATH_AVX512FMA, A, A + na, C);
            double b = time_path(BF16_PATH_AVX512BF16, A, A + na, C);
            if (rep > 0 && f < tf) tf = f;
            if (rep > 0 && b < tb) tb = b;
        }
        if (tf < tb) p = BF16_PATH_AVX512FMA;
    }
    qlab_free_aligned(A);
    qlab_free_aligned(C);
    return p;
}

/* The automatic choice: amx, the faster of the AVX-512 kernels, else blas. */
static bf16_path auto_choice(void) {
    int fma = bf16_path_available(BF16_PATH_AVX512FMA), bf16 = bf16_path_available(BF16_PATH_AVX512BF16);
    if (bf16_path_available(BF16_PATH_AMX)) return BF16_PATH_AMX;
    if (fma && bf16) return faster_avx512_path();
    return bf16 ? BF16_PATH_AVX512BF16 : fma ? BF16_PATH_AVX512FMA : BF16_PATH_BLAS;
}

/* The path with that name (path_names), or -1; PATH_LIST spells them for messages. */
#define PATH_LIST "ref, blas, avx512fma, avx512bf16, amx"
static int path_named(const char *name) {
    for (int i = 0; i < BF16_PATH_COUNT; i++)
        if (strcmp(name, path_names[i]) == 0) return i;
    return -1;
}

static bf16_path best_path(void) {
    if (auto_path_ >= 0) return (bf16_path)auto_path_;
    const char *env = getenv("QLAB_BF16_PATH");
    int asked = env && *env && strcmp(env, "auto") != 0, found = asked ? path_named(env) : -1;
    /* a usable QLAB_BF16_PATH spares the timing of the automatic choice */
    bf16_path p = found >= 0 && bf16_path_available((bf16_path)found) ? (bf16_path)found : auto_choice();
    if (asked && found < 0)
        fprintf(stderr, "qlab: QLAB_BF16_PATH=%s is not one of " PATH_LIST ", auto; using %s\n", env,
                path_names[p]);
    else if (asked && p != (bf16_path)found)
        fprintf(stderr, "qlab: QLAB_BF16_PATH=%s is not available on this CPU; using %s\n", env,
                path_names[p]);
    auto_path_ = (int)p;
    return p;
}

bf16_path bf16_active_path(void) {
    return forced_path_ >= 0 ? (bf16_path)forced_path_ : best_path();
}

qlab_status bf16_force_path(const char *name) {
    if (strcmp(name, "auto") == 0) {
        forced_path_ = -1;
        return QLAB_OK;
    }
    int i = path_named(name);
    if (i < 0)
        return qlab_fail(QLAB_ERR_ARG, "unknown bf16 path '%s' (expected " PATH_LIST " or auto)", name);
    if (!bf16_path_available((bf16_path)i))
        return qlab_fail(QLAB_ERR_UNSUPPORTED, "bf16 path '%s' is not available on this CPU", name);
    forced_path_ = i;
    return QLAB_OK;
}

/* ---------------------------------------------------------------- compute dtype */

const char *qlab_compute_name(qlab_compute c) {
    return c == QLAB_COMPUTE_BF16 ? "bf16" : "fp32";
}

qlab_status qlab_compute_parse(const char *name, qlab_compute *c) {
    if (name && !strcmp(name, "fp32")) {
        *c = QLAB_COMPUTE_FP32;
        return QLAB_OK;
    }
    if (name && !strcmp(name, "bf16")) {
        *c = QLAB_COMPUTE_BF16;
        return QLAB_OK;
    }
    return qlab_fail(QLAB_ERR_ARG, "unknown compute dtype '%s' (expected fp32 or bf16)", name ? name : "");
}

const char *qlab_compute_path_name(qlab_compute c) {
    return c == QLAB_COMPUTE_BF16 ? bf16_path_name(bf16_active_path()) : "none";
}

/* ---------------------------------------------------------------- rounding */

void bf16_round_array(uint16_t *out, const float *in, size_t n) {
    if (qlab_cpu_avx512()) {
        gemm_bf16_round_avx512(out, in, n);
        return;
    }
    for (size_t i = 0; i < n; i++)
        out[i] = f32_to_bf16(in[i]);
}

void bf16_widen_rows(float *dst, size_t ldd, const uint16_t *src, size_t lds, int rows, int cols) {
    if (gemm_bf16_vector_packing()) {
        gemm_bf16_widen_avx512(dst, ldd, src, lds, rows, cols);
        return;
    }
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            dst[(size_t)r * ldd + c] = bf16_to_f32(src[(size_t)r * lds + c]);
}

void bf16_scale_round(uint16_t *out, const float *x, float r, const float *w, int n, int width) {
    if (qlab_cpu_avx512()) {
        gemm_bf16_scale_round_avx512(out, x, r, w, n, width);
        return;
    }
    for (int c = 0; c < n; c++)
        out[c] = f32_to_bf16(x[c] * r * w[c]);
    memset(out + n, 0, sizeof(uint16_t) * (size_t)(width - n));
}

int gemm_bf16_vector_packing(void) {
    bf16_path p = bf16_active_path();
    return p == BF16_PATH_AVX512FMA || p == BF16_PATH_AVX512BF16 || p == BF16_PATH_AMX;
}

/* ---------------------------------------------------------------- workspace */

static _Thread_local void *ws_ptr_;
static _Thread_local size_t ws_bytes_;

qlab_status bf16_workspace_reserve(size_t bytes) {
    if (bytes <= ws_bytes_) return QLAB_OK;
    bf16_workspace_release(); /* the contents are not kept: never hold old and new together */
    QLAB_TRY(memacct_charge(MEMACCT_SCRATCH, bytes));
    void *p = qlab_alloc_aligned(bytes);
    if (!p) {
        memacct_release(MEMACCT_SCRATCH, bytes);
        return qlab_fail_context(QLAB_ERR_NOMEM, "bf16 GEMM workspace (%zu bytes)", bytes);
    }
    ws_ptr_ = p;
    ws_bytes_ = bytes;
    return QLAB_OK;
}

void *gemm_bf16_workspace(size_t bytes) {
    return bf16_workspace_reserve(bytes) == QLAB_OK ? ws_ptr_ : NULL;
}

void bf16_workspace_release(void) {
    qlab_free_aligned(ws_ptr_);
    memacct_release(MEMACCT_SCRATCH, ws_bytes_);
    ws_ptr_ = NULL;
    ws_bytes_ = 0;
}

/* Sizes of one product: all counts in elements. */
typedef struct {
    int M, N, K, Mp, Kp, npanels, chunk_panels, threads;
    size_t a_elems, b_elems, scratch_elems; /* bf16 */
    size_t blas_floats;                     /* fp32 copies for the portable path */
} gemm_plan;

static size_t round_up(size_t x, size_t a) {
    return (x + a - 1) / a * a;
}

static gemm_plan make_plan(int M, int N, int K, bf16_path path) {
    gemm_plan p;
    p.M = M, p.N = N, p.K = K;
    p.Mp = (int)round_up((size_t)(M > 0 ? M : 1), GEMM_BF16_MALIGN);
    p.Kp = (int)round_up((size_t)(K > 0 ? K : 1), GEMM_BF16_KALIGN);
    p.npanels = (N + GEMM_BF16_PANEL - 1) / GEMM_BF16_PANEL;
    size_t panel_bytes = (size_t)GEMM_BF16_PANEL * p.Kp * 2;
    size_t cp = GEMM_BF16_CHUNK_BYTES / panel_bytes;
    if (cp < 2) cp = 2;
    cp &= ~(size_t)1;
    if (cp > (size_t)p.npanels) cp = (size_t)p.npanels;
    p.chunk_panels = (int)cp;
    p.threads = gemm_bf16_parallel(M, N, K) ? qlab_region_threads() : 1;
    p.a_elems = (size_t)p.Mp * p.Kp;
    p.b_elems = (size_t)p.chunk_panels * GEMM_BF16_PANEL * p.Kp;
    size_t per_thread = (size_t)GEMM_BF16_PANEL * p.Kp;
    size_t rows2 = 2 * (size_t)p.chunk_panels * GEMM_BF16_PANEL;
    if (rows2 > per_thread) per_thread = rows2;
    p.scratch_elems = per_thread * (size_t)p.threads;
    p.blas_floats =
        path == BF16_PATH_BLAS ? (size_t)M * p.Kp + (size_t)p.Kp * p.chunk_panels * GEMM_BF16_PANEL : 0;
    return p;
}

/* Bytes of the part of a plan's workspace after its packed A (a_elems * 2 bytes, a multiple of 64): the B
 * chunk, the packing scratch and the portable path's fp32 copies. */
static size_t plan_tail_bytes(const gemm_plan *p) {
    return round_up((p->b_elems + p->scratch_elems) * 2, 64) + p->blas_floats * 4 + 64;
}

static size_t plan_bytes(const gemm_plan *p) {
    return p->a_elems * 2 + plan_tail_bytes(p);
}

size_t bf16_workspace_bytes(int M, int N, int K) {
    gemm_plan p = make_plan(M, N, K, bf16_active_path());
    return plan_bytes(&p);
}

/* ---------------------------------------------------------------- packing */

/* Row r of X (row stride ld) rounded into dst (cols values, zero to width); zero when r >= rows. */
static void round_row(uint16_t *dst, const float *X, size_t ld, int r, int rows, int cols, int width) {
    int n = r < rows ? cols : 0;
    if (n) bf16_round_array(dst, X + (size_t)r * ld, (size_t)n);
    memset(dst + n, 0, sizeof(uint16_t) * (size_t)(width - n));
}

void gemm_bf16_pack_rows(uint16_t *dst, int Kp, const float *X, size_t ld, int rows, int cols, int rows_pad) {
    for (int r = 0; r < rows_pad; r++)
        round_row(dst + (size_t)r * Kp, X, ld, r, rows, cols, Kp);
}

typedef struct {
    uint16_t *Ap;
    const gemm_plan *pl;
    const float *A;
    int lda, trans_a;
} pack_a_job;

/* Rows [16 t, 16 t + 16) of Ap from op(A): rounded rows, or (trans_a: A is (K, M)) 16 m columns transposed.
 */
static void pack_a_rows(void *job, long t) {
    const pack_a_job *j = job;
    const gemm_plan *pl = j->pl;
    uint16_t *Ap = j->Ap;
    const float *A = j->A;
    int M = pl->M, K = pl->K, Kp = pl->Kp, lda = j->lda, m0 = 16 * (int)t;
    if (j->trans_a) {
        gemm_bf16_pack_at(Ap + (size_t)m0 * Kp, Kp, A + (m0 < M ? m0 : 0), lda, K, m0 < M ? M - m0 : 0, 16);
        return;
    }
    for (int m = m0; m < m0 + 16 && m < pl->Mp; m++)
        round_row(Ap + (size_t)m * Kp, A, (size_t)lda, m, M, K, Kp);
}

/* op(A) (M,K) -> Ap (Mp, Kp), zero padded, 16 rows per task. */
static void pack_a(uint16_t *Ap, const gemm_plan *pl, const float *A, int lda, int trans_a) {
    pack_a_job j = {Ap, pl, A, lda, trans_a};
    qlab_run_tasks((pl->Mp + 15) / 16, pl->threads, pack_a_rows, &j);
}

/* Source of B: fp32 (ld) or quantized (row length = its second dimension). */
typedef struct {
    const float *f;
    int ld;
    const quant_tensor *q;
    int trans;
} bsrc;

/* This thread's part of scratch. A one-thread plan runs on the calling thread, which may be any thread of
 * someone else's team (max_threads): its part is the whole. */
static uint16_t *thread_scratch(uint16_t *scratch, const gemm_plan *pl) {
    int id = 0;
#ifdef _OPENMP
    if (pl->threads > 1) id = omp_get_thread_num();
#endif
    size_t per_thread = pl->scratch_elems / (size_t)pl->threads;
    return scratch + per_thread * (size_t)id;
}

/* Packs panels [p0, p0 + pc) of op(B) into Bp. Fails only when a quantized B cannot be dequantized. */
/* A row of Kp bf16 values as column c of a panel: pair p goes to out[16 p + c]. */
static void interleave_row(uint32_t *out, const uint16_t *row, int KP2, int c) {
    for (int p = 0; p < KP2; p++)
        out[(size_t)p * GEMM_BF16_PANEL + c] = (uint32_t)row[2 * p] | ((uint32_t)row[2 * p + 1] << 16);
}

/* Rows 2p (r0) and 2p + 1 (r1) of npan * 16 bf16 values as pair p of npan panels bstride apart. */
static void interleave_pair(uint16_t *dst, size_t bstride, int p, const uint16_t *r0, const uint16_t *r1,
                            int npan) {
    for (int j = 0; j < npan; j++) {
        uint32_t *out = (uint32_t *)(dst + (size_t)j * bstride) + (size_t)p * GEMM_BF16_PANEL;
        for (int c = 0; c < GEMM_BF16_PANEL; c++) {
            int n = j * GEMM_BF16_PANEL + c;
            out[c] = (uint32_t)r0[n] | ((uint32_t)r1[n] << 16);
        }
    }
}

void gemm_bf16_pack_bt(uint16_t *dst, int Kp, const float *X, size_t ld, int rows, int cols, uint16_t *tmp) {
    if (gemm_bf16_vector_packing()) {
        gemm_bf16_pack_bt_avx512(dst, Kp, X, ld, rows, cols);
        return;
    }
    int npan = (rows + GEMM_BF16_PANEL - 1) / GEMM_BF16_PANEL;
    for (int j = 0; j < npan; j++)
        for (int c = 0; c < GEMM_BF16_PANEL; c++) {
            round_row(tmp, X, ld, j * GEMM_BF16_PANEL + c, rows, cols, Kp);
            interleave_row((uint32_t *)(dst + (size_t)j * GEMM_BF16_PANEL * Kp), tmp, Kp / 2, c);
        }
}

void gemm_bf16_pack_bn(uint16_t *dst, size_t bstride, int npairs, const float *X, size_t ld, int rows,
                       int cols, uint16_t *tmp, int stream) {
    if (gemm_bf16_vector_packing()) {
        gemm_bf16_pack_bn_avx512(dst, bstride, npairs, X, ld, rows, cols, stream);
        return;
    }
    int npan = (cols + GEMM_BF16_PANEL - 1) / GEMM_BF16_PANEL, width = npan * GEMM_BF16_PANEL;
    for (int p = 0; p < npairs; p++) {
        round_row(tmp, X, ld, 2 * p, rows, cols, width);
        round_row(tmp + width, X, ld, 2 * p + 1, rows, cols, width);
        interleave_pair(dst, bstride, p, tmp, tmp + width, npan);
    }
}

typedef struct {
    uint16_t *Bp, *scratch;
    const gemm_plan *pl;
    const bsrc *b;
    int p0, pc;
    int bad; /* set (atomically) by a task whose quantized rows could not be dequantized */
} pack_b_job;

/* Task i of packing panels [p0, p0 + pc) of op(B) into Bp: panel p0 + i (trans: from rows of W), else k pairs
 * [16 i, 16 i + 16) of every panel (from pairs of rows of B). fp32 rows are rounded; quantized ones are
 * dequantized straight to bf16 and interleaved. Returns nonzero when a quantized row cannot be dequantized
 * (the message is on this thread). */
static int pack_b_panels(uint16_t *Bp, uint16_t *scratch, const gemm_plan *pl, const bsrc *b, int p0, int pc,
                         int i) {
    int N = pl->N, K = pl->K, Kp = pl->Kp, KP2 = Kp / 2, bad = 0;
    size_t bstride = (size_t)GEMM_BF16_PANEL * Kp;
    int n0 = p0 * GEMM_BF16_PANEL, ncols = pc * GEMM_BF16_PANEL, nvalid = N - n0 < ncols ? N - n0 : ncols;
    uint16_t *tmp = thread_scratch(scratch, pl);
    if (b->trans) {
        int j = p0 + i, n = j * GEMM_BF16_PANEL;
        uint16_t *panel = Bp + (size_t)i * bstride;
        if (!b->q) {
            gemm_bf16_pack_bt(panel, Kp, b->f + (size_t)n * b->ld, (size_t)b->ld,
                              N - n < GEMM_BF16_PANEL ? N - n : GEMM_BF16_PANEL, K, tmp);
            return 0;
        }
        for (int c = 0; c < GEMM_BF16_PANEL; c++) {
            int len = n + c < N ? K : 0;
            if (len) bad |= quant_tensor_dequantize_range_bf16(b->q, (int64_t)(n + c) * K, K, tmp) != QLAB_OK;
            memset(tmp + len, 0, sizeof(uint16_t) * (size_t)(Kp - len));
            interleave_row((uint32_t *)panel, tmp, KP2, c);
        }
        return bad;
    }
    int q = 16 * i, np = KP2 - q < 16 ? KP2 - q : 16;
    if (!b->q) {
        gemm_bf16_pack_bn(Bp + (size_t)q * 32, bstride, np, b->f + (size_t)(2 * q) * b->ld + n0,
                          (size_t)b->ld, K - 2 * q, nvalid, tmp, 0);
        return 0;
    }
    for (int p = q; p < q + np; p++) {
        uint16_t *r[2] = {tmp, tmp + ncols};
        for (int e = 0; e < 2; e++) {
            int k = 2 * p + e, len = k < K ? nvalid : 0;
            if (len)
                bad |= quant_tensor_dequantize_range_bf16(b->q, (int64_t)k * N + n0, nvalid, r[e]) != QLAB_OK;
            memset(r[e] + len, 0, sizeof(uint16_t) * (size_t)(ncols - len));
        }
        interleave_pair(Bp, bstride, p, r[0], r[1], pc);
    }
    return bad;
}

static void pack_b_task(void *job, long i) {
    pack_b_job *j = job;
    if (pack_b_panels(j->Bp, j->scratch, j->pl, j->b, j->p0, j->pc, (int)i))
        __atomic_store_n(&j->bad, 1, __ATOMIC_RELAXED);
}

/* Packs panels [p0, p0 + pc) of op(B) into Bp (a panel per task, or 16 k pairs of every panel). Fails only
 * when a quantized B cannot be dequantized. */
static qlab_status pack_b(uint16_t *Bp, uint16_t *scratch, const gemm_plan *pl, const bsrc *b, int p0,
                          int pc) {
    pack_b_job j = {Bp, scratch, pl, b, p0, pc, 0};
    qlab_run_tasks(b->trans ? pc : (pl->Kp / 2 + 15) / 16, pl->threads, pack_b_task, &j);
    /* the worker's own message is on its thread: give the caller one */
    if (j.bad) return qlab_fail(QLAB_ERR_ARG, "bf16 GEMM: the quantized operand could not be dequantized");
    return QLAB_OK;
}

/* ---------------------------------------------------------------- reference kernel */

/* bf16 -> fp32 with subnormals read as zero (vdpbf16ps's DAZ). */
static float ref_in(uint16_t h) {
    if ((h & 0x7f80u) == 0) h &= 0x8000u;
    return bf16_to_f32(h);
}

/* One accumulation step: fused multiply-add, subnormal results flushed to (signed) zero (FTZ). */
static float ref_step(float acc, uint16_t a, uint16_t b) {
    float r = fmaf(ref_in(a), ref_in(b), acc);
    if (r != 0 && fabsf(r) < FLT_MIN) r = copysignf(0.0f, r);
    return r;
}

typedef struct {
    const uint16_t *A, *B;
    size_t lda, bstride;
    int ncols, Kp, ldc, accumulate;
    float *C;
} ref_job;

/* Row m of C (n < ncols) over k pairs [0, Kp/2) in the documented order. */
static void ref_row(void *job, long m) {
    const ref_job *j = job;
    const uint16_t *a = j->A + (size_t)m * j->lda;
    for (int n = 0; n < j->ncols; n++) {
        const uint16_t *b = j->B + (size_t)(n / GEMM_BF16_PANEL) * j->bstride + 2 * (n % GEMM_BF16_PANEL);
        float acc = 0;
        for (int p = 0; p < j->Kp / 2; p++) {
            const uint16_t *bp = b + (size_t)p * 2 * GEMM_BF16_PANEL;
            acc = ref_step(acc, a[2 * p + 1], bp[1]);
            acc = ref_step(acc, a[2 * p], bp[0]);
        }
        float *c = j->C + (size_t)m * j->ldc + n;
        *c = j->accumulate ? *c + acc : acc;
    }
}

static void gemm_bf16_kernel_ref(const uint16_t *Ap, const uint16_t *Bp, int M, int ncols, int Kp, int K,
                                 float *C, int ldc, int accumulate) {
    (void)K; /* the reference runs every packed k value: the definition the others match */
    ref_job j = {Ap, Bp, (size_t)Kp, (size_t)GEMM_BF16_PANEL * Kp, ncols, Kp, ldc, accumulate, C};
    qlab_run_tasks(M, qlab_region_threads(), ref_row, &j);
}

void gemm_bf16_block_ref(const uint16_t *A, size_t lda, const uint16_t *B, size_t bstride, int M, int ncols,
                         int Kp, float *C, int ldc, int accumulate) {
    ref_job j = {A, B, lda, bstride, ncols, Kp, ldc, accumulate, C};
    qlab_run_tasks(M, 1, ref_row, &j);
}

/* ---------------------------------------------------------------- portable path */

typedef struct {
    const uint16_t *src;
    size_t stride;
    int width, ldb;
    float *dst;
} widen_job;

/* Row m of packed A widened (A row-major, width Kp values). */
static void widen_a_row(void *job, long m) {
    const widen_job *j = job;
    bf16_widen_rows(j->dst + (size_t)m * j->width, (size_t)j->width, j->src + (size_t)m * j->stride,
                    j->stride, 1, j->width);
}

/* Row k of B (ldb columns) widened out of its panels. */
static void widen_b_row(void *job, long k) {
    const widen_job *j = job;
    for (int n = 0; n < j->ldb; n++) {
        int p = n / GEMM_BF16_PANEL, c = n % GEMM_BF16_PANEL;
        j->dst[(size_t)k * j->ldb + n] = bf16_to_f32(
            j->src[(size_t)p * j->stride + ((size_t)(k / 2) * GEMM_BF16_PANEL + c) * 2 + (k & 1)]);
    }
}

/* The packed bf16 operands widened back to fp32 (exactly) and multiplied by sgemm. */
static void gemm_bf16_blas(const uint16_t *Ap, size_t lda, const uint16_t *Bp, size_t bstride, int M,
                           int ncols, int Kp, float *C, int ldc, int accumulate, float *Af, float *Bf,
                           int a_ready, int threads) {
    int npan = (ncols + GEMM_BF16_PANEL - 1) / GEMM_BF16_PANEL, ldb = npan * GEMM_BF16_PANEL;
    widen_job a = {Ap, lda, Kp, 0, Af}, b = {Bp, bstride, 0, ldb, Bf};
    if (!a_ready) qlab_run_tasks(M, threads, widen_a_row, &a);
    qlab_run_tasks(Kp, threads, widen_b_row, &b);
    ops_gemm(0, 0, M, ncols, Kp, 1.0f, Af, Kp, Bf, ldb, accumulate ? 1.0f : 0.0f, C, ldc);
}

/* ---------------------------------------------------------------- single-thread blocks */

size_t gemm_bf16_block_wide_floats(bf16_path path, int M, int ncols, int Kp) {
    if (path != BF16_PATH_BLAS) return 0;
    int npan = (ncols + GEMM_BF16_PANEL - 1) / GEMM_BF16_PANEL;
    return (size_t)M * Kp + (size_t)Kp * npan * GEMM_BF16_PANEL;
}

void gemm_bf16_block_begin(bf16_path path) {
    if (path == BF16_PATH_AMX) amx_emulated_ ? gemm_bf16_amx_begin_emu() : gemm_bf16_amx_begin();
}

void gemm_bf16_block_end(bf16_path path) {
    if (path == BF16_PATH_AMX) amx_emulated_ ? gemm_bf16_amx_end_emu() : gemm_bf16_amx_end();
}

/* The block product of one of the paths that need no fp32 copies (all but blas). */
static void gemm_bf16_block_dispatch(bf16_path path, const uint16_t *A, size_t lda, const uint16_t *B,
                                     size_t bstride, int M, int ncols, int Kp, float *C, int ldc,
                                     int accumulate) {
    if (path == BF16_PATH_AMX && amx_emulated_)
        gemm_bf16_block_amx_emu(A, lda, B, bstride, M, ncols, Kp, C, ldc, accumulate);
    else if (path == BF16_PATH_AMX)
        gemm_bf16_block_amx(A, lda, B, bstride, M, ncols, Kp, C, ldc, accumulate);
    else if (path == BF16_PATH_AVX512BF16)
        gemm_bf16_block_avx512bf16(A, lda, B, bstride, M, ncols, Kp, C, ldc, accumulate);
    else if (path == BF16_PATH_AVX512FMA)
        gemm_bf16_block_avx512fma(A, lda, B, bstride, M, ncols, Kp, C, ldc, accumulate);
    else
        gemm_bf16_block_ref(A, lda, B, bstride, M, ncols, Kp, C, ldc, accumulate);
}

void gemm_bf16_block(bf16_path path, const uint16_t *A, size_t lda, const uint16_t *B, size_t bstride, int M,
                     int ncols, int Kp, float *C, int ldc, int accumulate, float *wide) {
    if (M <= 0 || ncols <= 0) return;
    if (path == BF16_PATH_BLAS)
        gemm_bf16_blas(A, lda, B, bstride, M, ncols, Kp, C, ldc, accumulate, wide, wide + (size_t)M * Kp, 0,
                       1);
    else
        gemm_bf16_block_dispatch(path, A, lda, B, bstride, M, ncols, Kp, C, ldc, accumulate);
}

void gemm_bf16_block_depth(bf16_path path, const uint16_t *A, size_t lda, const uint16_t *B, size_t bstride,
                           int M, int ncols, int Kp, int K, float *C, int ldc, int accumulate) {
    if (path == BF16_PATH_AVX512BF16) Kp = gemm_bf16_depth_run(K, Kp); /* its whole kernel's rule */
    gemm_bf16_block(path, A, lda, B, bstride, M, ncols, Kp, C, ldc, accumulate, NULL);
}

void gemm_bf16_pack_at(uint16_t *Ap, int Kp, const float *A, int lda, int K, int M, int Mp) {
    int vector = gemm_bf16_vector_packing();
    for (int m0 = 0; m0 < Mp; m0 += 16) {
        int mn = M - m0 < 16 ? M - m0 : 16;
        if (mn < 0) mn = 0;
        if (vector) {
            gemm_bf16_pack_at_avx512(Ap + (size_t)m0 * Kp, Kp, A + (mn > 0 ? m0 : 0), lda, K, mn);
            continue;
        }
        for (int i = 0; i < 16; i++)
            for (int k = 0; k < Kp; k++)
                Ap[(size_t)(m0 + i) * Kp + k] =
                    (k < K && i < mn) ? f32_to_bf16(A[(size_t)k * lda + m0 + i]) : (uint16_t)0;
    }
}

/* ---------------------------------------------------------------- driver */

static gemm_bf16_kernel path_kernel(bf16_path path) {
    if (path == BF16_PATH_AVX512BF16) return gemm_bf16_kernel_avx512bf16;
    if (path == BF16_PATH_AVX512FMA) return gemm_bf16_kernel_avx512fma;
    if (path == BF16_PATH_AMX) return amx_emulated_ ? gemm_bf16_kernel_amx_emu : gemm_bf16_kernel_amx;
    return gemm_bf16_kernel_ref;
}

void gemm_bf16_multiply(bf16_path path, const uint16_t *Ap, const uint16_t *Bp, int M, int ncols, int Kp,
                        float *C, int ldc, int accumulate) {
    if (M > 0 && ncols > 0) path_kernel(path)(Ap, Bp, M, ncols, Kp, Kp, C, ldc, accumulate);
}

/* The product of a packed A (pl->M x pl->Kp) with one B: fp32 or quantized (b, packed chunk by chunk into
 * work) or already packed (pw). work holds this plan's B chunk, scratch and fp32 copies. */
static qlab_status multiply_a(bf16_path path, const gemm_plan *plan, const uint16_t *Ap, uint16_t *work,
                              const bsrc *b, const bf16_packed_weight *pw, int accumulate, float *C,
                              int ldc) {
    gemm_plan pl = *plan;
    int M = pl.M, N = pl.N;
    uint16_t *Bp = work, *scratch = Bp + pl.b_elems;
    float *Af = (float *)((char *)work + round_up((pl.b_elems + pl.scratch_elems) * 2, 64));
    float *Bf = Af + (size_t)M * pl.Kp;
    gemm_bf16_kernel kernel = path_kernel(path);
    if (pw && path != BF16_PATH_BLAS) {
        /* every output tile sums over k on its own, so one call over all panels gives the chunked bits */
        kernel(Ap, pw->panels, M, N, pl.Kp, pl.K, C, ldc, accumulate);
        return QLAB_OK;
    }
    for (int p0 = 0; p0 < pl.npanels; p0 += pl.chunk_panels) {
        int pc = pl.npanels - p0 < pl.chunk_panels ? pl.npanels - p0 : pl.chunk_panels;
        int n0 = p0 * GEMM_BF16_PANEL, ncols = N - n0 < pc * GEMM_BF16_PANEL ? N - n0 : pc * GEMM_BF16_PANEL;
        const uint16_t *panels = Bp;
        if (pw)
            panels = pw->panels + (size_t)p0 * GEMM_BF16_PANEL * pl.Kp;
        else
            QLAB_TRY(pack_b(Bp, scratch, &pl, b, p0, pc));
        if (path == BF16_PATH_BLAS)
            gemm_bf16_blas(Ap, (size_t)pl.Kp, panels, (size_t)GEMM_BF16_PANEL * pl.Kp, M, ncols, pl.Kp,
                           C + n0, ldc, accumulate, Af, Bf, p0 > 0, pl.threads);
        else
            kernel(Ap, panels, M, ncols, pl.Kp, pl.K, C + n0, ldc, accumulate);
    }
    return QLAB_OK;
}

/* multiply_a with the packed A at the start of the workspace, which holds at least the plan's bytes. */
static qlab_status multiply_packed_a(bf16_path path, int M, int N, int K, const bsrc *b,
                                     const bf16_packed_weight *pw, int accumulate, float *C, int ldc) {
    gemm_plan pl = make_plan(M, N, K, path);
    uint16_t *Ap = ws_ptr_;
    return multiply_a(path, &pl, Ap, Ap + pl.a_elems, b, pw, accumulate, C, ldc);
}

/* Zero (or leave) C when K is 0: the empty sum. */
static void empty_product(int M, int N, int accumulate, float *C, int ldc) {
    if (!accumulate)
        for (int m = 0; m < M; m++)
            memset(C + (size_t)m * ldc, 0, sizeof(float) * (size_t)N);
}

static qlab_status gemm_run(int trans_a, int M, int N, int K, const float *A, int lda, const bsrc *b,
                            int accumulate, float *C, int ldc) {
    if (M <= 0 || N <= 0) return QLAB_OK;
    if (K <= 0) {
        empty_product(M, N, accumulate, C, ldc);
        return QLAB_OK;
    }
    bf16_path path = bf16_active_path();
    gemm_plan pl = make_plan(M, N, K, path);
    QLAB_TRY(bf16_workspace_reserve(plan_bytes(&pl)));
    pack_a(ws_ptr_, &pl, A, lda, trans_a);
    return multiply_packed_a(path, M, N, K, b, NULL, accumulate, C, ldc);
}

qlab_status bf16_gemm(int trans_a, int trans_b, int M, int N, int K, const float *A, int lda, const float *B,
                      int ldb, int accumulate, float *C, int ldc) {
    bsrc b = {B, ldb, NULL, trans_b};
    return gemm_run(trans_a, M, N, K, A, lda, &b, accumulate, C, ldc);
}

qlab_status bf16_gemm_quant(int trans_a, int trans_b, int M, int N, int K, const float *A, int lda,
                            const quant_tensor *B, int accumulate, float *C, int ldc) {
    if (!B || B->n != (int64_t)N * K)
        return qlab_fail(QLAB_ERR_ARG,
                         "bf16_gemm_quant: quantized matrix of %lld elements for a %d x %d operand",
                         B ? (long long)B->n : 0LL, K, N);
    bsrc b = {NULL, 0, B, trans_b};
    return gemm_run(trans_a, M, N, K, A, lda, &b, accumulate, C, ldc);
}

/* ---------------------------------------------------------------- linear backward */

void gemm_bf16_transpose_rows(uint16_t *At, size_t ldt, int KT, const uint16_t *Ap, int Kp, int MpT,
                              int stream) {
    if (gemm_bf16_vector_packing()) {
        gemm_bf16_transpose_packed_avx512(At, ldt, KT, Ap, Kp, MpT, stream);
        return;
    }
    for (int i = 0; i < MpT; i++)
        for (int k = 0; k < KT; k++)
            At[(size_t)i * ldt + k] = Ap[(size_t)k * Kp + i];
}

/* The transpose of a packed A (KpT x Kp) into At (MpT x KpT), OpenMP over blocks of 16 rows of At. */
static void transpose_packed(uint16_t *At, int KpT, const uint16_t *Ap, int Kp, int MpT, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int m0 = 0; m0 < MpT; m0 += 16)
        gemm_bf16_transpose_rows(At + (size_t)m0 * KpT, (size_t)KpT, KpT, Ap + m0, Kp, 16, 0);
}

size_t bf16_gemm_backward_bytes(int N, int IC, int OC, int weight_grad) {
    bf16_path path = bf16_active_path();
    gemm_plan pd = make_plan(N, IC, OC, path), pw = make_plan(OC, IC, N, path);
    if (!weight_grad) return pd.a_elems * 2 + plan_tail_bytes(&pd);
    size_t tail = plan_tail_bytes(&pd) > plan_tail_bytes(&pw) ? plan_tail_bytes(&pd) : plan_tail_bytes(&pw);
    return (pd.a_elems + pw.a_elems) * 2 + tail;
}

static qlab_status backward_check(int IC, int OC, const float *W, const quant_tensor *q, float *dinp) {
    if (dinp && !W == !q)
        return qlab_fail(QLAB_ERR_ARG, "bf16_gemm_backward: the input gradient needs exactly one weight");
    if (q && q->n != (int64_t)OC * IC)
        return qlab_fail(QLAB_ERR_ARG, "bf16_gemm_backward: quantized matrix of %lld elements for %d x %d",
                         (long long)q->n, OC, IC);
    return QLAB_OK;
}

/* dinp and dW from dout packed in Ap (plan pd), At dW's operand, work the rest of the workspace. */
static qlab_status backward_products(bf16_path path, const gemm_plan *pd, const gemm_plan *pw,
                                     const uint16_t *Ap, uint16_t *At, uint16_t *work, int IC, const float *W,
                                     const quant_tensor *q, const float *X, float *dinp, float *dW) {
    if (dinp) {
        bsrc b = {W, IC, q, 0};
        QLAB_TRY(multiply_a(path, pd, Ap, work, &b, NULL, 1, dinp, IC));
    }
    if (dW) {
        transpose_packed(At, pw->Kp, Ap, pd->Kp, pw->Mp, pd->threads);
        bsrc b = {X, IC, NULL, 0};
        QLAB_TRY(multiply_a(path, pw, At, work, &b, NULL, 1, dW, IC));
    }
    return QLAB_OK;
}

qlab_status bf16_gemm_backward(int N, int IC, int OC, const float *dout, const float *W,
                               const quant_tensor *q, const float *X, float *dinp, float *dW) {
    if (!dinp && !dW) return QLAB_OK;
    QLAB_TRY(backward_check(IC, OC, W, q, dinp));
    if (N <= 0 || IC <= 0 || OC <= 0) return QLAB_OK; /* nothing to add */
    bf16_path path = bf16_active_path();
    gemm_plan pd = make_plan(N, IC, OC, path), pw = make_plan(OC, IC, N, path);
    QLAB_TRY(bf16_workspace_reserve(bf16_gemm_backward_bytes(N, IC, OC, dW != NULL)));
    /* without dW, no room for its operand: dinp's product works right after dout's rows */
    uint16_t *Ap = ws_ptr_, *At = Ap + pd.a_elems, *work = dW ? At + pw.a_elems : At;
    pack_a(Ap, &pd, dout, OC, 0); /* dout rounded once: rows for dinp, transposed for dW */
    return backward_products(path, &pd, &pw, Ap, At, work, IC, W, q, X, dinp, dW);
}

/* Whether dout (N rows of OC, in a buffer of cap floats) can hold its own packed form: Mp rows of Kp bf16
 * values, each row's packed form no longer than twice its fp32 one (so written over what was read). */
static int backward_fits_in_place(const gemm_plan *pd, int OC, size_t cap) {
    return pd->Kp <= 2 * OC && pd->a_elems * 2 <= cap * sizeof(float);
}

size_t bf16_gemm_backward_consume_bytes(int N, int IC, int OC, int weight_grad, size_t cap) {
    gemm_plan pd = make_plan(N, IC, OC, bf16_active_path());
    size_t bytes = bf16_gemm_backward_bytes(N, IC, OC, weight_grad);
    return backward_fits_in_place(&pd, OC, cap) ? bytes - pd.a_elems * 2
                                                : bytes; /* no room for dout's copy */
}

/* Row m's K values rounded into dst (then zeros up to Kp), where dst may lie below src in the same buffer:
 * each chunk is read before its rounded form, at most half as long and no further on, is written. */
static void round_row_over(uint16_t *dst, const float *src, int K, int Kp) {
    float in[64];
    uint16_t out[64];
    for (int i = 0; i < K; i += 64) {
        int n = K - i < 64 ? K - i : 64;
        memcpy(in, src + i, sizeof(float) * (size_t)n);
        bf16_round_array(out, in, (size_t)n);
        memcpy(dst + i, out, sizeof(uint16_t) * (size_t)n);
    }
    memset(dst + K, 0, sizeof(uint16_t) * (size_t)(Kp - K));
}

/* pack_a of A (M rows of K, row stride K) into A's own buffer: the same Ap. Rows go in groups [r0, r1)
 * whose packed forms all end before row r0's fp32 form begins ((m + 1) Kp <= 2 K r0), so a group's rows
 * are rounded in parallel over rows already read; the groups double in length. */
static void pack_a_over(const gemm_plan *pl, float *A) {
    uint16_t *Ap = (uint16_t *)A;
    int M = pl->M, K = pl->K, Kp = pl->Kp;
    for (int r0 = 0; r0 < M;) {
        long r1 = (long)r0 * 2 * K / Kp;
        if (r1 <= r0) r1 = r0 + 1; /* one row: only over its own fp32 form */
        if (r1 > M) r1 = M;
        int threads = r1 - r0 > 1 ? pl->threads : 1;
#pragma omp parallel for schedule(static) num_threads(threads)
        for (long m = r0; m < r1; m++)
            round_row_over(Ap + (size_t)m * Kp, A + (size_t)m * K, K, Kp);
        r0 = (int)r1;
    }
    memset(Ap + (size_t)M * Kp, 0, sizeof(uint16_t) * (size_t)(pl->Mp - M) * Kp);
}

qlab_status bf16_gemm_backward_consume(int N, int IC, int OC, float *dout, size_t cap, const float *W,
                                       const quant_tensor *q, const float *X, float *dinp, float *dW) {
    if (!dinp && !dW) return QLAB_OK;
    QLAB_TRY(backward_check(IC, OC, W, q, dinp));
    if (N <= 0 || IC <= 0 || OC <= 0) return QLAB_OK;
    bf16_path path = bf16_active_path();
    gemm_plan pd = make_plan(N, IC, OC, path), pw = make_plan(OC, IC, N, path);
    if (!backward_fits_in_place(&pd, OC, cap)) return bf16_gemm_backward(N, IC, OC, dout, W, q, X, dinp, dW);
    QLAB_TRY(bf16_workspace_reserve(bf16_gemm_backward_consume_bytes(N, IC, OC, dW != NULL, cap)));
    uint16_t *At = ws_ptr_, *work = dW ? At + pw.a_elems : At;
    pack_a_over(&pd, dout);
    return backward_products(path, &pd, &pw, (const uint16_t *)dout, At, work, IC, W, q, X, dinp, dW);
}

/* ---------------------------------------------------------------- packed weights */

/* Fills panels (plan pl) from W or q (row length ld): op(B) = W^T (trans, a forward's weight) or W (a
 * layer's input gradient). */
static qlab_status fill_panels(uint16_t *panels, gemm_plan pl, const float *W, const quant_tensor *q, int ld,
                               int trans) {
    uint16_t *scratch = qlab_alloc_aligned(pl.scratch_elems * sizeof(uint16_t));
    if (!scratch) return qlab_fail(QLAB_ERR_NOMEM, "bf16 weight packing scratch");
    bsrc b = {W, ld, q, trans};
    qlab_status st = QLAB_OK;
    for (int p0 = 0; st == QLAB_OK && p0 < pl.npanels; p0 += pl.chunk_panels) {
        int pc = pl.npanels - p0 < pl.chunk_panels ? pl.npanels - p0 : pl.chunk_panels;
        st = pack_b(panels + (size_t)p0 * GEMM_BF16_PANEL * pl.Kp, scratch, &pl, &b, p0, pc);
    }
    qlab_free_aligned(scratch);
    return st;
}

static int pack_args_bad(const float *W, const quant_tensor *q, int N, int K) {
    return N <= 0 || K <= 0 || !W == !q || (q && q->n != (int64_t)N * K);
}

/* The plan of a packed weight's product: N output columns, reduction K (W (N,K), or W (K,N) for dinp). */
static gemm_plan packed_plan(int N, int K) {
    return make_plan(1, N, K, bf16_active_path());
}

/* The panels' bytes of a packed plan. */
static size_t packed_bytes(const gemm_plan *pl) {
    return (size_t)pl->npanels * GEMM_BF16_PANEL * pl->Kp * sizeof(uint16_t);
}

size_t bf16_packed_weight_bytes(int N, int K, int dinp) {
    gemm_plan pl = packed_plan(dinp ? K : N, dinp ? N : K);
    return packed_bytes(&pl);
}

static qlab_status pack_weight(const float *W, const quant_tensor *q, int N, int K, int dinp,
                               bf16_packed_weight *out) {
    memset(out, 0, sizeof *out);
    if (pack_args_bad(W, q, N, K))
        return qlab_fail(QLAB_ERR_ARG,
                         "bf16_pack_weight: a %d x %d weight needs exactly one of fp32 or a "
                         "quantized matrix of that many elements",
                         N, K);
    int cols = dinp ? K : N, red = dinp ? N : K; /* the product's output columns and reduction */
    gemm_plan pl = packed_plan(cols, red);
    size_t bytes = packed_bytes(&pl);
    QLAB_TRY(memacct_charge(MEMACCT_SCRATCH, bytes));
    uint16_t *panels = qlab_alloc_aligned(bytes);
    qlab_status st = panels ? fill_panels(panels, pl, W, q, K, !dinp)
                            : qlab_fail(QLAB_ERR_NOMEM, "bf16 packed weight (%zu bytes)", bytes);
    if (st != QLAB_OK) {
        qlab_free_aligned(panels);
        memacct_release(MEMACCT_SCRATCH, bytes);
        return st;
    }
    *out = (bf16_packed_weight){.N = cols,
                                .K = red,
                                .Kp = pl.Kp,
                                .npanels = pl.npanels,
                                .dinp = dinp,
                                .panels = panels,
                                .bytes = bytes};
    return QLAB_OK;
}

qlab_status bf16_pack_weight(const float *W, const quant_tensor *q, int N, int K, bf16_packed_weight *out) {
    return pack_weight(W, q, N, K, 0, out);
}

qlab_status bf16_pack_weight_dinp(const float *W, const quant_tensor *q, int N, int K,
                                  bf16_packed_weight *out) {
    return pack_weight(W, q, N, K, 1, out);
}

qlab_status bf16_repack_weight(const float *W, const quant_tensor *q, bf16_packed_weight *w) {
    int N = w->dinp ? w->K : w->N, K = w->dinp ? w->N : w->K; /* W's shape */
    if (!w->panels || pack_args_bad(W, q, N, K))
        return qlab_fail(QLAB_ERR_ARG, "bf16_repack_weight: no packed %d x %d weight of that shape", N, K);
    return fill_panels(w->panels, packed_plan(w->N, w->K), W, q, K, !w->dinp);
}

void bf16_packed_weight_free(bf16_packed_weight *w) {
    if (w->panels) {
        qlab_free_aligned(w->panels);
        memacct_release(MEMACCT_SCRATCH, w->bytes);
    }
    memset(w, 0, sizeof *w);
}

qlab_status bf16_gemm_packed(int M, const float *A, int lda, const bf16_packed_weight *W, int accumulate,
                             float *C, int ldc) {
    if (!W || !W->panels) return qlab_fail(QLAB_ERR_ARG, "bf16_gemm_packed: no packed weight");
    bf16_weight_product w = {.packed = W, .N = W->N, .C = C, .ldc = ldc, .accumulate = accumulate};
    return bf16_gemm_shared(M, W->K, A, lda, 1, &w);
}

qlab_status bf16_gemm_shared(int M, int K, const float *A, int lda, int n, const bf16_weight_product *w) {
    for (int i = 0; i < n; i++)
        if (!!w[i].w + !!w[i].q + !!w[i].packed != 1 || (w[i].packed && w[i].packed->K != K) ||
            (w[i].q && w[i].q->n != (int64_t)w[i].N * K))
            return qlab_fail(
                QLAB_ERR_ARG,
                "bf16_gemm_shared: product %d needs exactly one weight of %d x %d (fp32, quantized "
                "or packed)",
                i, w[i].N, K);
    if (M <= 0) return QLAB_OK;
    bf16_path path = bf16_active_path();
    size_t most = 0;
    for (int i = 0; i < n; i++) {
        gemm_plan pl = make_plan(M, w[i].N, K, path);
        most = plan_bytes(&pl) > most ? plan_bytes(&pl) : most;
    }
    QLAB_TRY(bf16_workspace_reserve(most));
    gemm_plan pa = make_plan(M, 1, K, path); /* A's packing depends on M and K only */
    pack_a(ws_ptr_, &pa, A, lda, 0);
    for (int i = 0; i < n; i++) {
        if (w[i].N <= 0) continue;
        bsrc b = {w[i].w, K, w[i].q, 1};
        QLAB_TRY(multiply_packed_a(path, M, w[i].N, K, &b, w[i].packed, w[i].accumulate, w[i].C, w[i].ldc));
    }
    return QLAB_OK;
}
