/* Causal attention with bf16 products (gemm_bf16.h attention_forward_bf16 / attention_backward_bf16): the
 * blocking, scheduling and fp32 softmax of core/model/ops.c, with every product of two activation matrices
 * formed like bf16_gemm: operands rounded to bf16 (RNE) into the kernels' packed layout, fp32 accumulation
 * on the active path. One task per (batch, head) or (batch, key/value head) runs on one thread and packs
 * its operands once: the keys and values of a head are shared by all its query blocks. */
#include "core/model/gemm_bf16.h"

#include <math.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/base/half.h"
#include "core/base/vmath.h"
#include "core/model/gemm_bf16_kernels.h"
#include "core/model/ops.h"

/* Query rows per block, as ops.c: rows [r0, r1) need keys [0, r1) only. A multiple of 32 (the packed A's
 * row alignment) and of 2 (key blocks start on a k pair). */
#define ATT_BLOCK 64

/* B = X with k over all Kp / 2 pairs of rows, panels 16 * Kp apart. */
static void pack_bn(uint16_t *dst, int Kp, const float *X, size_t ld, int rows, int cols, uint16_t *tmp) {
    gemm_bf16_pack_bn(dst, (size_t)GEMM_BF16_PANEL * Kp, Kp / 2, X, ld, rows, cols, tmp);
}

/* Causal softmax of the score rows of query rows [r0, r1) (S holds row r0, rows T floats apart, keys
 * [0, r1) filled; scratch): row t becomes softmax(scale * S[t][0..t]), rounded to bf16 into Aa (rows of Kr
 * values, zero after the diagonal; rows up to gemm_bf16_mp(r1 - r0) written). With keep (row r0 of the att
 * output, T floats apart), the fp32 probabilities are also written there, with zeros after the diagonal up
 * to T. */
static void softmax_round_rows(float *S, int r0, int r1, int T, float scale, uint16_t *Aa, int Kr,
                               float *keep) {
    int vector = gemm_bf16_vector_packing();
    for (int t = r0; t < r1; t++) {
        float *row = S + (size_t)(t - r0) * T, *dst = keep ? keep + (size_t)(t - r0) * T : NULL;
        uint16_t *out = Aa + (size_t)(t - r0) * Kr;
        int n = t + 1;
        float inv = 1.0f / vm_scale_exp_sum(row, (size_t)n, scale);
        if (vector) {
            gemm_bf16_normalize_round_avx512bf16(row, dst, out, n, inv, keep ? T : 0, Kr);
            continue;
        }
        for (int i = 0; i < n; i++) {
            float pr = row[i] * inv;
            if (keep) dst[i] = pr;
            out[i] = f32_to_bf16(pr);
        }
        for (int i = n; keep && i < T; i++)
            dst[i] = 0;
        memset(out + n, 0, sizeof(uint16_t) * (size_t)(Kr - n));
    }
    for (int r = r1 - r0; r < gemm_bf16_mp(r1 - r0); r++)
        memset(Aa + (size_t)r * Kr, 0, sizeof(uint16_t) * (size_t)Kr);
}

/* Per-thread workspace of one call: four packed matrices of at most T x max(HS, T) values, the staging row
 * and the blas path's fp32 copies. */
typedef struct {
    int Kq, Kt, Tp, Hp;       /* HS and T rounded up to 32; T and HS rounded up to 16 */
    size_t packed, tmp, wide; /* elements of one packed matrix and of tmp (bf16), floats of wide */
    size_t scores;            /* floats of the forward's score block */
    size_t per_thread;        /* bytes */
    bf16_path path;
} att_plan;

static att_plan make_att_plan(int T, int HS, int forward) {
    att_plan p;
    p.path = bf16_active_path();
    p.Kq = gemm_bf16_kp(HS), p.Kt = gemm_bf16_kp(T);
    p.Tp = (T + 15) / 16 * 16, p.Hp = (HS + 15) / 16 * 16;
    size_t a = (size_t)p.Tp * p.Kq, b = (size_t)p.Hp * p.Kt,
           c = (size_t)ATT_BLOCK * (p.Kq > p.Kt ? p.Kq : p.Kt);
    p.packed = a > b ? a : b;
    if (c > p.packed) p.packed = c;
    p.tmp = (size_t)(p.Kq > p.Kt ? p.Kq : p.Kt) + 2 * (size_t)p.Hp;
    size_t w1 = gemm_bf16_block_wide_floats(p.path, ATT_BLOCK, p.Tp, p.Kq),
           w2 = gemm_bf16_block_wide_floats(p.path, ATT_BLOCK, p.Hp, p.Kt);
    p.wide = w1 > w2 ? w1 : w2;
    size_t bytes = (4 * p.packed + p.tmp) * sizeof(uint16_t);
    p.scores = forward ? (size_t)ATT_BLOCK * T : 0; /* the forward's score block */
    p.per_thread = (bytes + 63) / 64 * 64 + (p.wide + p.scores) * sizeof(float);
    p.per_thread = (p.per_thread + 63) / 64 * 64;
    return p;
}

typedef struct {
    uint16_t *m[4], *tmp;
    float *wide, *scores;
} att_ws;

static att_ws thread_ws(char *base, const att_plan *p, int id) {
    att_ws w;
    uint16_t *u = (uint16_t *)(base + p->per_thread * (size_t)id);
    for (int i = 0; i < 4; i++)
        w.m[i] = u + (size_t)i * p->packed;
    w.tmp = u + 4 * p->packed;
    w.wide = (float *)((char *)u + ((4 * p->packed + p->tmp) * sizeof(uint16_t) + 63) / 64 * 64);
    w.scores = w.wide + p->wide;
    return w;
}

/* The per-thread scratch of all threads, in the calling thread's GEMM workspace (kept between calls, so a
 * step allocates nothing once it has run). */
static qlab_status att_alloc(char **base, size_t bytes) {
    *base = gemm_bf16_workspace(bytes);
    return *base ? QLAB_OK : qlab_last_status();
}

static int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* One (batch, head) task of the forward: keys Kb and values Vb packed; queries Q packed (rows Kq values
 * apart) or, when NULL, rounded block by block from qb (row stride qstride) into the workspace. */
static void head_forward(const att_plan *pl, const att_ws *w, const uint16_t *Kb, const uint16_t *Vb,
                         const uint16_t *Q, const float *qb, int qstride, float *ob, float *a, int T, int HS,
                         float scale) {
    uint16_t *Aq = w->m[2], *Aa = w->m[3];
    gemm_bf16_block_begin(pl->path);
    for (int r0 = 0; r0 < T; r0 += ATT_BLOCK) {
        int r1 = r0 + ATT_BLOCK < T ? r0 + ATT_BLOCK : T, rows = r1 - r0, Kr = gemm_bf16_kp(r1);
        const uint16_t *A = Q ? Q + (size_t)r0 * pl->Kq : Aq;
        if (!Q)
            gemm_bf16_pack_rows(Aq, pl->Kq, qb + (size_t)r0 * qstride, (size_t)qstride, rows, HS,
                                gemm_bf16_mp(rows));
        /* the scores in the thread's scratch (in cache); the probabilities written once when kept */
        float *S = w->scores;
        gemm_bf16_block(pl->path, A, (size_t)pl->Kq, Kb, (size_t)GEMM_BF16_PANEL * pl->Kq, rows, r1, pl->Kq,
                        S, T, 0, w->wide);
        softmax_round_rows(S, r0, r1, T, scale, Aa, Kr, a ? a + (size_t)r0 * T : NULL);
        gemm_bf16_block(pl->path, Aa, (size_t)Kr, Vb, (size_t)GEMM_BF16_PANEL * pl->Kt, rows, HS, Kr,
                        ob + (size_t)r0 * qstride, qstride, 0, w->wide);
    }
    gemm_bf16_block_end(pl->path);
}

/* Sizes in the layout of operands packed ahead (bf16_att_operands). */
static size_t att_q_rows(const bf16_att_operands *o) {
    return (size_t)o->B * o->T + GEMM_BF16_MALIGN;
}

static size_t att_k_block(const bf16_att_operands *o) {
    return (size_t)o->T * o->Kq;
}

static size_t att_v_block(const bf16_att_operands *o) {
    return (size_t)(o->HS + 15) / 16 * 16 * o->T;
}

/* The forward's tasks, one per (batch, head): the keys (as k^T panels), values and queries from o when the
 * operands were packed ahead, else the head's keys and values packed here (once per task) and its queries
 * block by block; then per block of query rows: scores = q k^T (in the thread's cache), scale and causal
 * softmax in fp32 (the probabilities written to att when kept), out = att v. */
static qlab_status forward_run(float *out, float *att, const float *q, const float *k, const float *v,
                               const bf16_att_operands *o, int B, int T, int NH, int NKV, int HS) {
    int group = NH / NKV, qstride = NH * HS, kvstride = NKV * HS, threads = 1;
    float scale = 1.0f / sqrtf((float)HS);
#ifdef _OPENMP
    threads = omp_in_parallel() ? 1 : omp_get_max_threads();
#endif
    att_plan pl = make_att_plan(T, HS, 1);
    char *base;
    QLAB_TRY(att_alloc(&base, pl.per_thread * (size_t)threads));
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int bh = 0; bh < B * NH; bh++) {
        att_ws w = thread_ws(base, &pl, thread_id());
        int b = bh / NH, h = bh % NH, kvh = h / group;
        const uint16_t *Kb = w.m[0], *Vb = w.m[1], *Q = NULL;
        if (o) {
            size_t blk = (size_t)b * NKV + kvh;
            Kb = o->k + blk * att_k_block(o), Vb = o->v + blk * att_v_block(o);
            Q = o->q + ((size_t)h * att_q_rows(o) + (size_t)b * T) * o->Kq;
        } else {
            size_t kv = (size_t)b * T * kvstride + (size_t)kvh * HS;
            gemm_bf16_pack_bt(w.m[0], pl.Kq, k + kv, (size_t)kvstride, T, HS, w.tmp);
            pack_bn(w.m[1], pl.Kt, v + kv, (size_t)kvstride, T, HS, w.tmp);
        }
        size_t qo = (size_t)b * T * qstride + (size_t)h * HS;
        head_forward(&pl, &w, Kb, Vb, Q, o ? NULL : q + qo, qstride, out + qo,
                     att ? att + (size_t)bh * T * T : NULL, T, HS, scale);
    }
    return QLAB_OK;
}

qlab_status attention_forward_bf16(float *out, float *att, const float *q, const float *k, const float *v,
                                   int B, int T, int NH, int NKV, int HS) {
    return forward_run(out, att, q, k, v, NULL, B, T, NH, NKV, HS);
}

/* ---------------------------------------------------------------- operands packed ahead */

static size_t att_operand_elems(const bf16_att_operands *o, size_t *qn, size_t *kn) {
    *qn = (size_t)o->NH * att_q_rows(o) * o->Kq;
    *kn = (size_t)o->B * o->NKV * att_k_block(o);
    return *qn + *kn + (size_t)o->B * o->NKV * att_v_block(o);
}

int bf16_att_operands_fit(int T) {
    return gemm_bf16_kp(T) == T; /* no position is padding of the keys and values */
}

size_t bf16_att_operands_bytes(int B, int T, int NH, int NKV, int HS) {
    bf16_att_operands o = {B, T, NH, NKV, HS, gemm_bf16_kp(HS), NULL, NULL, NULL};
    size_t qn, kn;
    return att_operand_elems(&o, &qn, &kn) * sizeof(uint16_t);
}

void bf16_att_operands_layout(bf16_att_operands *o, void *base, int B, int T, int NH, int NKV, int HS) {
    *o = (bf16_att_operands){B, T, NH, NKV, HS, gemm_bf16_kp(HS), NULL, NULL, NULL};
    size_t qn, kn;
    att_operand_elems(o, &qn, &kn);
    o->q = base, o->k = o->q + qn, o->v = o->k + kn;
    for (int h = 0; h < NH; h++) /* the rows past the last position, read by a last partial block */
        memset(o->q + ((size_t)h * att_q_rows(o) + (size_t)B * T) * o->Kq, 0,
               sizeof(uint16_t) * GEMM_BF16_MALIGN * o->Kq);
}

void bf16_att_operands_pack(const bf16_att_operands *o, int n0, int rows, const float *q, const float *k,
                            const float *v, uint16_t *tmp) {
    int HS = o->HS, T = o->T, b = n0 / T, t0 = n0 % T, Kq = o->Kq;
    for (int h = 0; h < o->NH; h++)
        gemm_bf16_pack_rows(o->q + ((size_t)h * att_q_rows(o) + n0) * Kq, Kq, q + (size_t)h * HS,
                            (size_t)o->NH * HS, rows, HS, rows);
    size_t kvstride = (size_t)o->NKV * HS;
    for (int g = 0; g < o->NKV; g++) {
        size_t blk = (size_t)b * o->NKV + g;
        gemm_bf16_pack_bt(o->k + blk * att_k_block(o) + (size_t)t0 * Kq, Kq, k + (size_t)g * HS, kvstride,
                          rows, HS, tmp);
        gemm_bf16_pack_bn(o->v + blk * att_v_block(o) + (size_t)t0 * GEMM_BF16_PANEL,
                          (size_t)GEMM_BF16_PANEL * T, rows / 2, v + (size_t)g * HS, kvstride, rows, HS, tmp);
    }
}

qlab_status attention_forward_bf16_packed(float *out, float *att, const bf16_att_operands *o) {
    return forward_run(out, att, NULL, NULL, NULL, o, o->B, o->T, o->NH, o->NKV, o->HS);
}

/* D = S^T Y (accumulate 0) or D += S^T Y for one head: S (T,T) probabilities or score gradients (zero above
 * the diagonal), Y (T,HS) with row stride ys, D (T,HS) with row stride ds: key rows [c0, c1) from query rows
 * [c0, T) only (c0 is a multiple of 64, so the k range starts on a pair of the packed Y). */
static void key_block_products(const att_plan *pl, const att_ws *w, const float *S, const float *Y, int ys,
                               int T, int HS, float *D, int ds, int accumulate) {
    uint16_t *X = w->m[2], *A = w->m[3];
    pack_bn(X, pl->Kt, Y, (size_t)ys, T, HS, w->tmp);
    for (int c0 = 0; c0 < T; c0 += ATT_BLOCK) {
        int c1 = c0 + ATT_BLOCK < T ? c0 + ATT_BLOCK : T, Kc = gemm_bf16_kp(T - c0);
        gemm_bf16_pack_at(A, Kc, S + (size_t)c0 * T + c0, T, T - c0, c1 - c0, gemm_bf16_mp(c1 - c0));
        gemm_bf16_block(pl->path, A, (size_t)Kc, X + (size_t)c0 * GEMM_BF16_PANEL,
                        (size_t)GEMM_BF16_PANEL * pl->Kt, c1 - c0, HS, Kc, D + (size_t)c0 * ds, ds,
                        accumulate, w->wide);
    }
}

qlab_status attention_backward_bf16(float *dq, float *dk, float *dv, const float *dout, const float *att,
                                    const float *q, const float *k, const float *v, int B, int T, int NH,
                                    int NKV, int HS, float *scratch, int n_scratch) {
    int group = NH / NKV, qstride = NH * HS, kvstride = NKV * HS;
    float scale = 1.0f / sqrtf((float)HS);
    att_plan pl = make_att_plan(T, HS, 0);
    size_t bytes = pl.per_thread * (size_t)n_scratch;
    char *base;
    QLAB_TRY(att_alloc(&base, bytes));
    size_t bs = (size_t)GEMM_BF16_PANEL * pl.Kt; /* panel stride of the k-over-positions operands */
    /* One task per (batch, key/value head), as ops.c: dk and dv are written by one thread, in one order. */
#pragma omp parallel for schedule(static) num_threads(n_scratch)
    for (int bg = 0; bg < B * NKV; bg++) {
        int tid = thread_id();
        att_ws w = thread_ws(base, &pl, tid);
        uint16_t *Kn = w.m[0], *Vt = w.m[1], *A = w.m[3];
        float *ds = scratch + (size_t)tid * T * T;
        int b = bg / NKV, kvh = bg % NKV;
        const float *kb = k + (size_t)b * T * kvstride + (size_t)kvh * HS;
        const float *vb = v + (size_t)b * T * kvstride + (size_t)kvh * HS;
        float *dkb = dk + (size_t)b * T * kvstride + (size_t)kvh * HS;
        float *dvb = dv + (size_t)b * T * kvstride + (size_t)kvh * HS;
        pack_bn(Kn, pl.Kt, kb, (size_t)kvstride, T, HS, w.tmp);           /* for dq = ds k */
        gemm_bf16_pack_bt(Vt, pl.Kq, vb, (size_t)kvstride, T, HS, w.tmp); /* for d(att) = dout v^T */
        gemm_bf16_block_begin(pl.path);
        for (int h = kvh * group; h < (kvh + 1) * group; h++) {
            const float *a = att + ((size_t)b * NH + h) * T * T;
            const float *qb = q + (size_t)b * T * qstride + (size_t)h * HS;
            const float *dob = dout + (size_t)b * T * qstride + (size_t)h * HS;
            float *dqb = dq + (size_t)b * T * qstride + (size_t)h * HS;
            /* d(att) = dout v^T, rows [r0, r1) over keys [0, r1) */
            for (int r0 = 0; r0 < T; r0 += ATT_BLOCK) {
                int r1 = r0 + ATT_BLOCK < T ? r0 + ATT_BLOCK : T, rows = r1 - r0;
                gemm_bf16_pack_rows(A, pl.Kq, dob + (size_t)r0 * qstride, (size_t)qstride, rows, HS,
                                    gemm_bf16_mp(rows));
                gemm_bf16_block(pl.path, A, (size_t)pl.Kq, Vt, (size_t)GEMM_BF16_PANEL * pl.Kq, rows, r1,
                                pl.Kq, ds + (size_t)r0 * T, T, 0, w.wide);
            }
            /* dv += att^T dout (the group's first head stores) */
            int first = h == kvh * group;
            key_block_products(&pl, &w, a, dob, qstride, T, HS, dvb, kvstride, !first);
            /* ds = scale * att * (d(att) - <att, d(att)>) on and below the diagonal; zeros after it up to
             * the end of the row's block, which is as far as the products read */
            for (int t = 0; t < T; t++) {
                int end = (t / ATT_BLOCK + 1) * ATT_BLOCK < T ? (t / ATT_BLOCK + 1) * ATT_BLOCK : T;
                float *dr = ds + (size_t)t * T;
                vm_softmax_grad(dr, a + (size_t)t * T, (size_t)t + 1, scale);
                memset(dr + t + 1, 0, sizeof(float) * (size_t)(end - t - 1));
            }
            /* dq = ds k, rows [r0, r1) over keys [0, r1) */
            for (int r0 = 0; r0 < T; r0 += ATT_BLOCK) {
                int r1 = r0 + ATT_BLOCK < T ? r0 + ATT_BLOCK : T, rows = r1 - r0, Kr = gemm_bf16_kp(r1);
                gemm_bf16_pack_rows(A, Kr, ds + (size_t)r0 * T, (size_t)T, rows, r1, gemm_bf16_mp(rows));
                gemm_bf16_block(pl.path, A, (size_t)Kr, Kn, bs, rows, HS, Kr, dqb + (size_t)r0 * qstride,
                                qstride, 0, w.wide);
            }
            /* dk += ds^T q */
            key_block_products(&pl, &w, ds, qb, qstride, T, HS, dkb, kvstride, !first);
        }
        gemm_bf16_block_end(pl.path);
    }
    return QLAB_OK;
}
