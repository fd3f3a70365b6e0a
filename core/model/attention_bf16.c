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
    gemm_bf16_pack_bn(dst, (size_t)GEMM_BF16_PANEL * Kp, Kp / 2, X, ld, rows, cols, tmp, 0);
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
        if (vector) {
            gemm_bf16_softmax_round_avx512(row, dst, out, n, scale, keep ? T : 0, Kr);
            continue;
        }
        float inv = 1.0f / vm_scale_exp_sum(row, (size_t)n, scale);
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
    int group = NH / NKV, qstride = NH * HS, kvstride = NKV * HS, threads = qlab_region_threads();
    float scale = 1.0f / sqrtf((float)HS);
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
                          (size_t)GEMM_BF16_PANEL * T, rows / 2, v + (size_t)g * HS, kvstride, rows, HS, tmp,
                          0);
    }
}

qlab_status attention_forward_bf16_packed(float *out, float *att, const bf16_att_operands *o) {
    return forward_run(out, att, NULL, NULL, NULL, o, o->B, o->T, o->NH, o->NKV, o->HS);
}

/* ---------------------------------------------------------------- backward */

/* The backward's per-thread workspace (elements of bf16, then floats). Per (batch, key/value head) task: the
 * keys as pairs over positions (for dq = ds k) and the values as v^T panels (for d(att) = dout v^T); per
 * head, dout^T and q^T as packed A (HS rows over positions), the probabilities and the score gradients as B
 * panels over pairs of query positions (written pair by pair as the softmax backward forms them), so that
 * dv^T = dout^T att and dk^T = q^T ds are products with the keys as output columns (no transposition of a
 * T x T matrix), accumulated over the group's heads in dvT and dkT and transposed into dv and dk at the end
 * of the task. */
typedef struct {
    bf16_path path;
    int Kq, Kt, Tp, Hm;       /* HS and T rounded up to 32, T to 16 (key panels), HS rows to 32 */
    size_t kn, vt, a, ht, pp; /* bf16 elements: Kn, Vt and Kt, A (a block's rows), one of DoT/QT, AttP/DsP */
    size_t tmp, wide, ct, pf; /* bf16 staging; floats: the blas path's copies, one of dvT/dkT, a block of P */
    size_t rows;              /* floats: one head's q, k or v widened from bf16 (T x HS) */
    size_t per_thread;        /* bytes */
} att_bwd_plan;

typedef struct {
    uint16_t *kn, *vt, *kt, *a, *pb, *dot, *qt, *attp, *dsp, *tmp;
    float *wide, *dvt, *dkt, *pf, *qw, *kw, *vw;
} att_bwd_ws;

static size_t att_max(size_t a, size_t b) {
    return a > b ? a : b;
}

static att_bwd_plan make_bwd_plan(int T, int HS) {
    att_bwd_plan p;
    p.path = bf16_active_path();
    p.Kq = gemm_bf16_kp(HS), p.Kt = gemm_bf16_kp(T), p.Tp = (T + 15) / 16 * 16, p.Hm = gemm_bf16_mp(HS);
    size_t Hp = (size_t)(HS + 15) / 16 * 16;
    p.kn = Hp * p.Kt, p.vt = (size_t)p.Tp * p.Kq, p.a = (size_t)ATT_BLOCK * att_max(p.Kq, p.Kt);
    p.ht = (size_t)p.Hm * p.Kt, p.pp = (size_t)p.Tp * p.Kt;
    p.tmp = 2 * att_max((size_t)p.Tp, Hp) + att_max(p.Kq, p.Kt);
    size_t w1 = gemm_bf16_block_wide_floats(p.path, ATT_BLOCK, p.Tp, p.Kq),
           w2 = gemm_bf16_block_wide_floats(p.path, ATT_BLOCK, (int)Hp, p.Kt),
           w3 = gemm_bf16_block_wide_floats(p.path, p.Hm, 32, p.Kt);
    p.wide = att_max(att_max(w1, w2), w3);
    p.ct = (size_t)p.Hm * p.Tp, p.pf = (size_t)ATT_BLOCK * T, p.rows = (size_t)T * HS;
    size_t bf16 = p.kn + 2 * p.vt + 2 * p.a + 2 * p.ht + 2 * p.pp + p.tmp;
    p.per_thread =
        (bf16 * sizeof(uint16_t) + 63) / 64 * 64 + (p.wide + 2 * p.ct + p.pf + 3 * p.rows) * sizeof(float);
    p.per_thread = (p.per_thread + 63) / 64 * 64;
    return p;
}

static att_bwd_ws bwd_thread_ws(char *base, const att_bwd_plan *p, int id) {
    att_bwd_ws w;
    uint16_t *u = (uint16_t *)(base + p->per_thread * (size_t)id);
    w.kn = u, w.vt = w.kn + p->kn, w.kt = w.vt + p->vt, w.a = w.kt + p->vt, w.pb = w.a + p->a;
    w.dot = w.pb + p->a, w.qt = w.dot + p->ht, w.attp = w.qt + p->ht, w.dsp = w.attp + p->pp;
    w.tmp = w.dsp + p->pp;
    size_t bf16 = p->kn + 2 * p->vt + 2 * p->a + 2 * p->ht + 2 * p->pp + p->tmp;
    w.wide = (float *)((char *)u + (bf16 * sizeof(uint16_t) + 63) / 64 * 64);
    w.dvt = w.wide + p->wide, w.dkt = w.dvt + p->ct, w.pf = w.dkt + p->ct;
    w.qw = w.pf + p->pf, w.kw = w.qw + p->rows, w.vw = w.kw + p->rows;
    return w;
}

/* Query rows [r0, r1) of one head: the probabilities again as the forward forms them (scores q k^T over
 * keys [0, r1), the causal softmax: the same bits) into P, d(att) = dout v^T into ds (rows T floats apart),
 * the softmax backward row by row (zeros after the diagonal up to the block's end), the probabilities and
 * score gradients of each pair of rows into their pair panels, then dq = ds k (stored). */
static void head_backward_block(const att_bwd_plan *pl, const att_bwd_ws *w, const float *qb, size_t qld,
                                const float *dob, float *dqb, int qstride, float *ds, int r0, int r1, int T,
                                int HS, float scale) {
    int rows = r1 - r0, Kr = gemm_bf16_kp(r1);
    size_t bs = (size_t)GEMM_BF16_PANEL * pl->Kt, bq = (size_t)GEMM_BF16_PANEL * pl->Kq;
    float *P = w->pf; /* row t at P + (t - r0) T */
    gemm_bf16_pack_rows(w->a, pl->Kq, qb + (size_t)r0 * qld, qld, rows, HS, gemm_bf16_mp(rows));
    gemm_bf16_block(pl->path, w->a, (size_t)pl->Kq, w->kt, bq, rows, r1, pl->Kq, P, T, 0, w->wide);
    softmax_round_rows(P, r0, r1, T, scale, w->pb, Kr, P);
    gemm_bf16_pack_rows(w->a, pl->Kq, dob + (size_t)r0 * qstride, (size_t)qstride, rows, HS,
                        gemm_bf16_mp(rows));
    gemm_bf16_block(pl->path, w->a, (size_t)pl->Kq, w->vt, bq, rows, r1, pl->Kq, ds + (size_t)r0 * T, T, 0,
                    w->wide);
    if (gemm_bf16_vector_packing()) { /* the loops below fused: ds rounded straight from registers */
        for (int t = r0; t < r1; t += 2)
            gemm_bf16_att_grad_pair_avx512(
                ds + (size_t)t * T, P + (size_t)(t - r0) * T, (size_t)T, t, r1 - t < 2 ? r1 - t : 2,
                t + 2 < T ? t + 2 : T, scale, w->dsp + (size_t)t * GEMM_BF16_PANEL,
                w->attp + (size_t)t * GEMM_BF16_PANEL, bs, w->a + (size_t)(t - r0) * Kr, Kr);
        memset(w->a + (size_t)rows * Kr, 0, sizeof(uint16_t) * (size_t)(gemm_bf16_mp(rows) - rows) * Kr);
    } else {
        for (int t = r0; t < r1; t++) {
            float *dr = ds + (size_t)t * T;
            vm_softmax_grad(dr, P + (size_t)(t - r0) * T, (size_t)t + 1, scale);
            memset(dr + t + 1, 0, sizeof(float) * (size_t)(r1 - t - 1));
        }
        for (int t = r0; t < r1; t += 2) { /* pair t/2: rows t and t + 1, keys up to t + 1 */
            int valid = r1 - t < 2 ? r1 - t : 2, cols = t + 2 < T ? t + 2 : T;
            size_t at = (size_t)(t / 2) * 2 * GEMM_BF16_PANEL;
            gemm_bf16_pack_bn(w->dsp + at, bs, 1, ds + (size_t)t * T, (size_t)T, valid, cols, w->tmp, 0);
            gemm_bf16_pack_bn(w->attp + at, bs, 1, P + (size_t)(t - r0) * T, (size_t)T, valid, cols, w->tmp,
                              0);
        }
        gemm_bf16_pack_rows(w->a, Kr, ds + (size_t)r0 * T, (size_t)T, rows, r1, gemm_bf16_mp(rows));
    }
    gemm_bf16_block(pl->path, w->a, (size_t)Kr, w->kn, bs, rows, HS, Kr, dqb + (size_t)r0 * qstride, qstride,
                    0, w->wide);
}

/* C (HS x T, rows Tp apart) = / += X^T P for one head: X^T (DoT or QT) over the query positions, P (AttP or
 * DsP) pair panels; key columns [c0, c0 + 32) from queries [c0, T) only (P is zero above the diagonal). */
static void key_products(const att_bwd_plan *pl, const att_bwd_ws *w, const uint16_t *XT, const uint16_t *P,
                         float *C, int T, int HS, int accumulate) {
    size_t bs = (size_t)GEMM_BF16_PANEL * pl->Kt;
    for (int c0 = 0; c0 < T; c0 += 32)
        gemm_bf16_block(pl->path, XT + c0, (size_t)pl->Kt,
                        P + (size_t)(c0 / GEMM_BF16_PANEL) * bs + (size_t)c0 * GEMM_BF16_PANEL, bs, HS,
                        T - c0 < 32 ? T - c0 : 32, pl->Kt - c0, C + c0, pl->Tp, accumulate, w->wide);
}

/* dst[c][r] = src[r][c] for r < rows, c < cols. */
static void transpose_f32(float *dst, size_t ldd, const float *src, size_t lds, int rows, int cols) {
    if (gemm_bf16_vector_packing()) {
        gemm_bf16_transpose_f32_avx512(dst, ldd, src, lds, rows, cols);
        return;
    }
    for (int c = 0; c < cols; c++)
        for (int r = 0; r < rows; r++)
            dst[(size_t)c * ldd + r] = src[(size_t)r * lds + c];
}

size_t attention_bf16_workspace_bytes(int T, int HS, int threads) {
    return att_max(make_att_plan(T, HS, 1).per_thread, make_bwd_plan(T, HS).per_thread) * (size_t)threads;
}

/* q, k or v as the backward reads them: fp32 activations, or bf16 ones (h) widened into a workspace. */
typedef struct {
    const float *f;
    const uint16_t *h;
} att_src;

/* T rows of HS values of src at offset off (rows ld apart): the fp32 rows themselves, or the bf16 rows
 * widened into the buffer `into` (rows HS apart); *out_ld their row stride. */
static const float *att_rows(att_src src, size_t off, int ld, int T, int HS, float *into, size_t *out_ld) {
    if (!src.h) {
        *out_ld = (size_t)ld;
        return src.f + off;
    }
    bf16_widen_rows(into, (size_t)HS, src.h + off, (size_t)ld, T, HS);
    *out_ld = (size_t)HS;
    return into;
}

static qlab_status backward_run(float *dq, float *dk, float *dv, const float *dout, att_src q, att_src k,
                                att_src v, int B, int T, int NH, int NKV, int HS, float *scratch,
                                int n_scratch) {
    int group = NH / NKV, qstride = NH * HS, kvstride = NKV * HS;
    float scale = 1.0f / sqrtf((float)HS);
    att_bwd_plan pl = make_bwd_plan(T, HS);
    char *base;
    QLAB_TRY(att_alloc(&base, pl.per_thread * (size_t)n_scratch));
    /* the pair panels past the diagonal and past T are never written: zero once */
    for (int id = 0; id < n_scratch; id++) {
        att_bwd_ws w = bwd_thread_ws(base, &pl, id);
        memset(w.attp, 0, sizeof(uint16_t) * 2 * pl.pp);
    }
    /* One task per (batch, key/value head): dk and dv are written by one thread, in one order. */
#pragma omp parallel for schedule(static) num_threads(n_scratch)
    for (int bg = 0; bg < B * NKV; bg++) {
        int tid = thread_id();
        att_bwd_ws w = bwd_thread_ws(base, &pl, tid);
        float *ds = scratch + (size_t)tid * T * T;
        int b = bg / NKV, kvh = bg % NKV;
        size_t kvo = (size_t)b * T * kvstride + (size_t)kvh * HS, kld, vld, qld;
        const float *kb = att_rows(k, kvo, kvstride, T, HS, w.kw, &kld);
        const float *vb = att_rows(v, kvo, kvstride, T, HS, w.vw, &vld);
        pack_bn(w.kn, pl.Kt, kb, kld, T, HS, w.tmp);           /* for dq = ds k */
        gemm_bf16_pack_bt(w.vt, pl.Kq, vb, vld, T, HS, w.tmp); /* for d(att) = dout v^T */
        gemm_bf16_pack_bt(w.kt, pl.Kq, kb, kld, T, HS, w.tmp); /* for the scores q k^T */
        gemm_bf16_block_begin(pl.path);
        for (int h = kvh * group; h < (kvh + 1) * group; h++) {
            size_t qo = (size_t)b * T * qstride + (size_t)h * HS;
            const float *qb = att_rows(q, qo, qstride, T, HS, w.qw, &qld);
            gemm_bf16_pack_at(w.dot, pl.Kt, dout + qo, qstride, T, HS, pl.Hm);
            gemm_bf16_pack_at(w.qt, pl.Kt, qb, (int)qld, T, HS, pl.Hm);
            for (int r0 = 0; r0 < T; r0 += ATT_BLOCK)
                head_backward_block(&pl, &w, qb, qld, dout + qo, dq + qo, qstride, ds, r0,
                                    r0 + ATT_BLOCK < T ? r0 + ATT_BLOCK : T, T, HS, scale);
            int first = h == kvh * group; /* the group's first head stores, the others add */
            key_products(&pl, &w, w.dot, w.attp, w.dvt, T, HS, !first); /* dv^T = dout^T att */
            key_products(&pl, &w, w.qt, w.dsp, w.dkt, T, HS, !first);   /* dk^T = q^T ds */
        }
        gemm_bf16_block_end(pl.path);
        transpose_f32(dv + kvo, (size_t)kvstride, w.dvt, (size_t)pl.Tp, HS, T);
        transpose_f32(dk + kvo, (size_t)kvstride, w.dkt, (size_t)pl.Tp, HS, T);
    }
    return QLAB_OK;
}

qlab_status attention_backward_bf16(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                    const float *k, const float *v, int B, int T, int NH, int NKV, int HS,
                                    float *scratch, int n_scratch) {
    return backward_run(dq, dk, dv, dout, (att_src){q, NULL}, (att_src){k, NULL}, (att_src){v, NULL}, B, T,
                        NH, NKV, HS, scratch, n_scratch);
}

qlab_status attention_backward_bf16_rounded(float *dq, float *dk, float *dv, const float *dout,
                                            const uint16_t *q, const uint16_t *k, const uint16_t *v, int B,
                                            int T, int NH, int NKV, int HS, float *scratch, int n_scratch) {
    return backward_run(dq, dk, dv, dout, (att_src){NULL, q}, (att_src){NULL, k}, (att_src){NULL, v}, B, T,
                        NH, NKV, HS, scratch, n_scratch);
}

/* ---------------------------------------------------------------- generation's cache, packed */

/* Query rows per task of the cached attention (one packed A of them). */
#define CACHED_ROWS 32

static int round_up_panels(int n) { /* panels of 16 over n columns, rounded up to an even count */
    return (n + 2 * GEMM_BF16_PANEL - 1) / (2 * GEMM_BF16_PANEL) * 2;
}

void bf16_kv_cache_layout(bf16_kv_cache *c, void *base, int layers, int NKV, int HS, int cap) {
    c->base = base;
    c->layers = layers, c->NKV = NKV, c->HS = HS, c->cap = cap;
    c->Kh = gemm_bf16_kp(HS), c->Kc = gemm_bf16_kp(cap);
    c->keys = (size_t)round_up_panels(cap) * GEMM_BF16_PANEL * c->Kh;
    c->values = (size_t)round_up_panels(HS) * GEMM_BF16_PANEL * c->Kc;
}

size_t bf16_kv_cache_bytes(int layers, int NKV, int HS, int cap) {
    bf16_kv_cache c;
    bf16_kv_cache_layout(&c, NULL, layers, NKV, HS, cap);
    return (size_t)layers * NKV * (c.keys + c.values) * sizeof(uint16_t);
}

static uint16_t *cache_keys(const bf16_kv_cache *c, int l, int g) {
    return c->base + ((size_t)l * c->NKV + g) * (c->keys + c->values);
}

static uint16_t *cache_values(const bf16_kv_cache *c, int l, int g) {
    return cache_keys(c, l, g) + c->keys;
}

/* Value of position t (vt, or zeros when NULL): half t % 2 of pair t / 2 in every head dimension's column. */
static void put_value(const bf16_kv_cache *c, uint16_t *V, int t, const float *vt) {
    int P = GEMM_BF16_PANEL;
    uint16_t *vd = V + (size_t)(t / 2) * 2 * P + (t % 2);
    for (int d = 0; d < c->HS; d++)
        vd[(size_t)(d / P) * P * c->Kc + 2 * (d % P)] = vt ? f32_to_bf16(vt[d]) : 0;
}

void bf16_kv_cache_put(const bf16_kv_cache *c, int l, const float *k, const float *v, size_t ld, int p0,
                       int n) {
    int HS = c->HS, P = GEMM_BF16_PANEL, end = p0 + n,
        pad = gemm_bf16_kp(end) < c->Kc ? gemm_bf16_kp(end) : c->Kc;
    for (int g = 0; g < c->NKV; g++) {
        uint16_t *K = cache_keys(c, l, g), *V = cache_values(c, l, g);
        for (int t = p0; t < end; t++) {
            const float *kt = k + (size_t)t * ld + (size_t)g * HS;
            /* key t: column t % 16 of panel t / 16, one pair per two head dimensions (zero past HS) */
            uint16_t *kd = K + (size_t)(t / P) * P * c->Kh + 2 * (t % P);
            for (int i = 0; i < c->Kh / 2; i++) {
                kd[(size_t)i * 2 * P] = 2 * i < HS ? f32_to_bf16(kt[2 * i]) : 0;
                kd[(size_t)i * 2 * P + 1] = 2 * i + 1 < HS ? f32_to_bf16(kt[2 * i + 1]) : 0;
            }
            put_value(c, V, t, v + (size_t)t * ld + (size_t)g * HS);
        }
        /* positions after the last one written, up to the products' padding: zero (a longer sequence may
         * have left values there, and a zero probability times a non-finite one is not zero) */
        for (int t = end; t < pad; t++)
            put_value(c, V, t, NULL);
    }
}

typedef struct {
    const bf16_kv_cache *c;
    const float *q;
    float *out;
    char *scratch;
    size_t per_thread, wide; /* bytes of a thread's scratch; floats of its blas copies */
    int l, p0, n, NH, threads;
    float scale;
    bf16_path path;
} cached_job;

/* Size of one thread's scratch: the block's scores, its queries and probabilities packed, the blas
 * path's fp32 copies. */
static size_t cached_scratch(const bf16_kv_cache *c, bf16_path path, size_t *wide) {
    size_t w1 = gemm_bf16_block_wide_floats(path, CACHED_ROWS, c->Kc, c->Kh),
           w2 = gemm_bf16_block_wide_floats(path, CACHED_ROWS, c->HS, c->Kc);
    *wide = w1 > w2 ? w1 : w2;
    size_t bytes = (size_t)CACHED_ROWS * c->Kc * sizeof(float) + *wide * sizeof(float) +
                   (size_t)CACHED_ROWS * (c->Kh + c->Kc) * sizeof(uint16_t);
    return (bytes + 63) / 64 * 64;
}

/* Task t: head t % NH over query rows [CACHED_ROWS (t / NH), +CACHED_ROWS) of the n new ones, whose keys
 * are positions [0, p0 + last row + 1). */
static void cached_task(void *ctx, long t) {
    const cached_job *j = ctx;
    const bf16_kv_cache *c = j->c;
    int h = (int)(t % j->NH), i0 = (int)(t / j->NH) * CACHED_ROWS;
    int rows = j->n - i0 < CACHED_ROWS ? j->n - i0 : CACHED_ROWS, L = j->p0 + i0 + rows, Kr = gemm_bf16_kp(L);
    int g = h / (j->NH / c->NKV), qstride = j->NH * c->HS;
    char *u = j->scratch + j->per_thread * (size_t)(j->threads > 1 ? thread_id() : 0);
    float *S = (float *)u, *wide = S + (size_t)CACHED_ROWS * c->Kc;
    uint16_t *qa = (uint16_t *)(wide + j->wide), *pa = qa + (size_t)CACHED_ROWS * c->Kh;
    const float *q = j->q + (size_t)i0 * qstride + (size_t)h * c->HS;
    gemm_bf16_block_begin(j->path);
    gemm_bf16_pack_rows(qa, c->Kh, q, (size_t)qstride, rows, c->HS, gemm_bf16_mp(rows));
    gemm_bf16_block(j->path, qa, (size_t)c->Kh, cache_keys(c, j->l, g), (size_t)GEMM_BF16_PANEL * c->Kh, rows,
                    L, c->Kh, S, L, 0, wide);
    softmax_round_rows(S, j->p0 + i0, j->p0 + i0 + rows, L, j->scale, pa, Kr, NULL);
    gemm_bf16_block(j->path, pa, (size_t)Kr, cache_values(c, j->l, g), (size_t)GEMM_BF16_PANEL * c->Kc, rows,
                    c->HS, Kr, j->out + (size_t)i0 * qstride + (size_t)h * c->HS, qstride, 0, wide);
    gemm_bf16_block_end(j->path);
}

qlab_status attention_forward_cached_bf16(float *out, const float *q, const bf16_kv_cache *c, int l, int p0,
                                          int n, int NH) {
    cached_job j = {c, q, out, NULL, 0, 0, l, p0, n, NH, 1, 1.0f / sqrtf((float)c->HS), bf16_active_path()};
    long blocks = (n + CACHED_ROWS - 1) / CACHED_ROWS, tasks = blocks * NH;
    /* both products' multiply-adds: one thread below GEMM_BF16_SERIAL_MACS (a generated token's call
     * until 128 positions are cached, on the bench model), where a region costs more than it saves */
    if ((double)n * (p0 + n) * c->HS * NH * 2 >= GEMM_BF16_SERIAL_MACS) j.threads = qlab_region_threads();
    if (j.threads > tasks) j.threads = (int)tasks;
    j.per_thread = cached_scratch(c, j.path, &j.wide);
    QLAB_TRY(att_alloc(&j.scratch, j.per_thread * (size_t)j.threads));
    qlab_run_tasks(tasks, j.threads, cached_task, &j);
    return QLAB_OK;
}
