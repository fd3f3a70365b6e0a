/* Attention with bf16 products (core/model/gemm_bf16.h attention_forward_bf16 / attention_backward_bf16):
 * the forward on the scalar reference path bit-exact against an in-test implementation of the documented
 * numerics (bf16 products in the order of tests/bf16_ref.h, blocks of 64 query rows, fp32 scale and
 * softmax); every path this CPU has against the reference (AVX-512 BF16 bit-exact, forward and backward;
 * the portable and AMX paths within a stated tolerance); both passes against the fp32 attention of
 * core/model/ops.c (whose backward the layer tests check by finite differences) within bf16's tolerance;
 * independence of the thread count. Shapes cover grouped-query heads, several and partial row blocks and
 * head sizes that are not a multiple of 32. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "tests/check.h"
#include "tests/bf16_ref.h"
#include "core/base/rng.h"
#include "core/model/gemm_bf16.h"
#include "core/model/gemm_bf16_kernels.h"
#include "core/model/ops.h"

typedef struct {
    int B, T, NH, NKV, HS;
} shape;

static int round32(int x) {
    return (x + 31) / 32 * 32;
}

/* sum over i < npad (n values, zero padded) of x[i xs] y[i ys] in the documented order. */
static float def_dot(const float *x, int xs, const float *y, int ys, int n, int npad) {
    float acc = 0;
    for (int i = 0; i < npad; i += 2) {
        float x0 = i < n ? x[(size_t)i * xs] : 0, x1 = i + 1 < n ? x[(size_t)(i + 1) * xs] : 0;
        float y0 = i < n ? y[(size_t)i * ys] : 0, y1 = i + 1 < n ? y[(size_t)(i + 1) * ys] : 0;
        acc = def_step(def_step(acc, x1, y1), x0, y0);
    }
    return acc;
}

/* The documented forward, straight from the header: per query row t (in block [r0, r1) of 64 rows),
 * scores over keys [0, r1) summed over HS padded to 32, times the scale; the fp32 causal softmax; then
 * out[t][d] summed over keys padded to a multiple of 32 past r1. */
static void def_forward(const shape *s, const float *q, const float *k, const float *v, float *out,
                        float *att) {
    int group = s->NH / s->NKV, qs = s->NH * s->HS, ks = s->NKV * s->HS, T = s->T, HS = s->HS;
    float scale = 1.0f / sqrtf((float)HS);
    for (int b = 0; b < s->B; b++)
        for (int h = 0; h < s->NH; h++) {
            float *a = att + ((size_t)b * s->NH + h) * T * T;
            const float *qb = q + (size_t)b * T * qs + h * HS,
                        *kb = k + (size_t)b * T * ks + (h / group) * HS;
            const float *vb = v + (size_t)b * T * ks + (h / group) * HS;
            for (int t = 0; t < T; t++) {
                int r1 = (t / 64 + 1) * 64 < T ? (t / 64 + 1) * 64 : T;
                for (int j = 0; j < r1; j++)
                    a[(size_t)t * T + j] =
                        def_dot(qb + (size_t)t * qs, 1, kb + (size_t)j * ks, 1, HS, round32(HS));
                attention_softmax_rows(a, t, t + 1, T, scale);
                for (int d = 0; d < HS; d++) {
                    float acc = def_dot(a + (size_t)t * T, 1, vb + d, ks, T, round32(r1));
                    out[(size_t)b * T * qs + (size_t)t * qs + h * HS + d] = acc;
                }
            }
        }
}

typedef struct {
    float *q, *k, *v, *dout;         /* inputs */
    float *out, *att, *dq, *dk, *dv; /* results of one run */
    size_t nq, nkv, natt;
} run;

static void run_alloc(run *r, const shape *s) {
    r->nq = (size_t)s->B * s->T * s->NH * s->HS;
    r->nkv = (size_t)s->B * s->T * s->NKV * s->HS;
    r->natt = (size_t)s->B * s->NH * s->T * s->T;
    r->out = calloc(r->nq, sizeof(float)), r->dq = calloc(r->nq, sizeof(float));
    r->att = calloc(r->natt, sizeof(float));
    r->dk = calloc(r->nkv, sizeof(float)), r->dv = calloc(r->nkv, sizeof(float));
}

static void run_free(run *r) {
    free(r->out), free(r->att), free(r->dq), free(r->dk), free(r->dv);
}

/* The forward without the probabilities kept (evaluation) gives r's output bit for bit; so does the forward
 * from operands packed ahead (bf16_att_operands, T a multiple of 32), packed in chunks of 32 positions. */
static void check_without_att(const shape *s, const run *in, const run *r) {
    float *out = malloc(sizeof(float) * r->nq);
    memset(out, 0xff, sizeof(float) * r->nq);
    CHECK(attention_forward_bf16(out, NULL, in->q, in->k, in->v, s->B, s->T, s->NH, s->NKV, s->HS) ==
          QLAB_OK);
    CHECKF(!memcmp(out, r->out, sizeof(float) * r->nq), "T %d HS %d: forward without probabilities differs",
           s->T, s->HS);
    if (bf16_att_operands_fit(s->T)) {
        void *base = qlab_alloc_aligned(bf16_att_operands_bytes(s->B, s->T, s->NH, s->NKV, s->HS));
        memset(base, 0xff, bf16_att_operands_bytes(s->B, s->T, s->NH, s->NKV, s->HS)); /* NaN bf16 */
        bf16_att_operands ops;
        bf16_att_operands_layout(&ops, base, s->B, s->T, s->NH, s->NKV, s->HS);
        uint16_t tmp[2 * (64 + 32) + 64];
        size_t qs = (size_t)s->NH * s->HS, kvs = (size_t)s->NKV * s->HS;
        for (int n0 = 0; n0 < s->B * s->T; n0 += 32)
            bf16_att_operands_pack(&ops, n0, 32, in->q + n0 * qs, in->k + n0 * kvs, in->v + n0 * kvs, tmp);
        memset(out, 0xff, sizeof(float) * r->nq);
        CHECK(attention_forward_bf16_packed(out, NULL, &ops) == QLAB_OK);
        CHECKF(!memcmp(out, r->out, sizeof(float) * r->nq),
               "T %d HS %d NH %d NKV %d: forward from operands packed ahead differs", s->T, s->HS, s->NH,
               s->NKV);
        qlab_free_aligned(base);
    }
    free(out);
}

/* Equal as numbers (a zero's sign aside: the cached attention adds the zero probabilities of other keys). */
static int equal_values(const float *a, const float *b, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!(a[i] == b[i])) return 0;
    return 1;
}

/* Generation's cached attention (one sequence): the keys and values put into a packed bf16_kv_cache in
 * three calls (a prompt, one position, the rest), each call's new rows attending over the cache, give the
 * whole-sequence forward's outputs; on the blas path (sgemm sums in its own order) within 1e-6. A shorter
 * sequence put over a longer one clears the values after it up to the products' padding: a non-finite
 * value left there would reach the output through a zero probability. */
static void check_cached(const shape *s, const run *in, const run *r, const char *path) {
    if (s->B != 1) return;
    int T = s->T, qs = s->NH * s->HS, ks = s->NKV * s->HS;
    bf16_kv_cache c;
    size_t bytes = bf16_kv_cache_bytes(1, s->NKV, s->HS, T);
    void *base = qlab_alloc_aligned(bytes);
    memset(base, 0, bytes);
    bf16_kv_cache_layout(&c, base, 1, s->NKV, s->HS, T);
    float *out = malloc(sizeof(float) * r->nq);
    memset(out, 0xff, sizeof(float) * r->nq);
    int cuts[] = {0, T / 3, T / 3 + 1, T};
    for (int i = 0; i < 3; i++) {
        int p0 = cuts[i], n = cuts[i + 1] - cuts[i];
        if (n <= 0) continue;
        bf16_kv_cache_put(&c, 0, in->k, in->v, (size_t)ks, p0, n);
        CHECK(attention_forward_cached_bf16(out + (size_t)p0 * qs, in->q + (size_t)p0 * qs, &c, 0, p0, n,
                                            s->NH) == QLAB_OK);
    }
    int blas = !strcmp(path, "blas");
    CHECKF(blas ? rel_l2(out, r->out, r->nq) <= 1e-6 : equal_values(out, r->out, r->nq),
           "%s, T %d HS %d NH %d NKV %d: the cached attention differs from the whole-sequence forward", path,
           T, s->HS, s->NH, s->NKV);
    if (T >= 32) { /* a NaN value at position 25 from a sequence of 30, then a sequence of 20 */
        float *bad = malloc(sizeof(float) * r->nkv);
        memcpy(bad, in->v, sizeof(float) * r->nkv);
        bad[(size_t)25 * ks] = NAN;
        bf16_kv_cache_put(&c, 0, in->k, bad, (size_t)ks, 0, 30);
        bf16_kv_cache_put(&c, 0, in->k, in->v, (size_t)ks, 0, 20);
        CHECK(attention_forward_cached_bf16(out, in->q, &c, 0, 0, 20, s->NH) == QLAB_OK);
        CHECKF(blas ? rel_l2(out, r->out, (size_t)20 * qs) <= 1e-6
                    : equal_values(out, r->out, (size_t)20 * qs),
               "%s, T %d HS %d: a value left after a shorter sequence reaches the cached attention", path, T,
               s->HS);
        free(bad);
    }
    free(out);
    qlab_free_aligned(base);
}

/* The backward from q, k and v rounded to bf16 first (attention_backward_bf16_rounded, as a training forward
 * keeping them at 2 bytes hands them over) gives r's gradients bit for bit. */
static void check_rounded(const shape *s, const run *in, const run *r, float *scratch, int threads) {
    uint16_t *h[3];
    const float *src[3] = {in->q, in->k, in->v};
    size_t n[3] = {r->nq, r->nkv, r->nkv};
    for (int i = 0; i < 3; i++) {
        h[i] = malloc(sizeof(uint16_t) * n[i]);
        bf16_round_array(h[i], src[i], n[i]);
    }
    run x;
    run_alloc(&x, s);
    memset(x.dk, 0x7f, sizeof(float) * x.nkv); /* stored, not added */
    CHECK(attention_backward_bf16_rounded(x.dq, x.dk, x.dv, in->dout, h[0], h[1], h[2], s->B, s->T, s->NH,
                                          s->NKV, s->HS, scratch, threads) == QLAB_OK);
    CHECKF(!memcmp(x.dq, r->dq, sizeof(float) * x.nq) && !memcmp(x.dk, r->dk, sizeof(float) * x.nkv) &&
               !memcmp(x.dv, r->dv, sizeof(float) * x.nkv),
           "%s, T %d HS %d NH %d NKV %d: the backward from bf16 q, k, v differs",
           bf16_path_name(bf16_active_path()), s->T, s->HS, s->NH, s->NKV);
    run_free(&x);
    for (int i = 0; i < 3; i++)
        free(h[i]);
}

/* Forward and backward of one path ("fp32" for ops.c) with the given thread count. */
static void run_path(const char *path, const shape *s, const run *in, run *r, int threads) {
#ifdef _OPENMP
    omp_set_num_threads(threads);
#endif
    run_alloc(r, s);
    float *scratch = malloc(sizeof(float) * (size_t)threads * s->T * s->T);
    if (!strcmp(path, "fp32")) {
        attention_forward(r->out, r->att, in->q, in->k, in->v, s->B, s->T, s->NH, s->NKV, s->HS);
        attention_backward(r->dq, r->dk, r->dv, in->dout, r->att, in->q, in->k, in->v, s->B, s->T, s->NH,
                           s->NKV, s->HS, scratch, threads);
    } else {
        CHECK(bf16_force_path(path) == QLAB_OK);
        CHECK(attention_forward_bf16(r->out, r->att, in->q, in->k, in->v, s->B, s->T, s->NH, s->NKV, s->HS) ==
              QLAB_OK);
        /* the bf16 backward stores its gradients: what the buffers held must not matter */
        memset(r->dq, 0xff, sizeof(float) * r->nq);
        memset(r->dk, 0x7f, sizeof(float) * r->nkv);
        memset(r->dv, 0xff, sizeof(float) * r->nkv);
        CHECK(attention_backward_bf16(r->dq, r->dk, r->dv, in->dout, in->q, in->k, in->v, s->B, s->T, s->NH,
                                      s->NKV, s->HS, scratch, threads) == QLAB_OK);
        check_without_att(s, in, r);
        check_rounded(s, in, r, scratch, threads);
        check_cached(s, in, r, path);
        CHECK(bf16_force_path("auto") == QLAB_OK);
    }
    free(scratch);
}

static int same(const float *a, const float *b, size_t n) {
    return memcmp(a, b, n * sizeof(float)) == 0;
}

static int same_run(const run *a, const run *b) {
    return same(a->out, b->out, a->nq) && same(a->att, b->att, a->natt) && same(a->dq, b->dq, a->nq) &&
           same(a->dk, b->dk, a->nkv) && same(a->dv, b->dv, a->nkv);
}

/* The largest relative L2 distance of out, dq, dk, dv from ref's. */
static double run_distance(const run *x, const run *ref) {
    double e[4] = {rel_l2(x->out, ref->out, x->nq), rel_l2(x->dq, ref->dq, x->nq),
                   rel_l2(x->dk, ref->dk, x->nkv), rel_l2(x->dv, ref->dv, x->nkv)};
    double m = 0;
    for (int i = 0; i < 4; i++)
        m = e[i] > m ? e[i] : m;
    return m;
}

static void test_shape(const shape *s) {
    run in;
    memset(&in, 0, sizeof in);
    run_alloc(&in, s);
    rng_state rng;
    rng_seed(&rng, (uint64_t)(s->T * 131 + s->HS));
    in.q = malloc(sizeof(float) * in.nq), in.dout = malloc(sizeof(float) * in.nq);
    in.k = malloc(sizeof(float) * in.nkv), in.v = malloc(sizeof(float) * in.nkv);
    for (size_t i = 0; i < in.nq; i++)
        in.q[i] = (float)(1.5 * rng_normal(&rng)), in.dout[i] = (float)rng_normal(&rng);
    for (size_t i = 0; i < in.nkv; i++)
        in.k[i] = (float)(1.5 * rng_normal(&rng)), in.v[i] = (float)rng_normal(&rng);

    /* the reference path against the documented numerics */
    run ref, fp32;
    run_path("ref", s, &in, &ref, 2);
    def_forward(s, in.q, in.k, in.v, in.out, in.att);
    CHECKF(same(ref.out, in.out, in.nq) && same(ref.att, in.att, in.natt),
           "B %d T %d NH %d NKV %d HS %d: ref path vs the documented forward", s->B, s->T, s->NH, s->NKV,
           s->HS);

    /* against fp32 attention: bf16 products, so about 2^-9 relative per rounded operand */
    run_path("fp32", s, &in, &fp32, 2);
    double e32 = run_distance(&ref, &fp32);
    printf("T %3d HS %2d NH %d NKV %d: bf16 vs fp32 attention rel L2 %.2e (out, dq, dk, dv; largest)\n", s->T,
           s->HS, s->NH, s->NKV, e32);
    CHECKF(e32 < 2e-2, "bf16 attention vs fp32: rel L2 %.3g", e32);

    /* thread count: one thread gives the same bits */
    run one;
    run_path("ref", s, &in, &one, 1);
    CHECKF(same_run(&one, &ref), "ref path: 1 and 2 threads differ");
    run_free(&one);

    for (bf16_path p = BF16_PATH_BLAS; p < BF16_PATH_COUNT; p++) {
        const char *name = bf16_path_name(p);
        if (!bf16_path_available(p)) {
            SKIP("bf16 path %s is not available on this CPU", name);
            continue;
        }
        run x;
        run_path(name, s, &in, &x, 2);
        if (p == BF16_PATH_AVX512BF16 || p == BF16_PATH_AVX512FMA) {
            CHECKF(same_run(&x, &ref), "%s path vs ref: not bit-identical", name);
        } else {
            /* another summation order: within the fp32 bound per product, which a bf16 rounding of a
             * probability or score can turn into one bf16 ulp (2^-8 relative) for a few elements */
            double e = run_distance(&x, &ref);
            printf("  %s path vs ref: rel L2 %.2e\n", name, e);
            CHECKF(e < 1e-3, "%s path vs ref: rel L2 %.3g", name, e);
        }
        run_free(&x);
    }
    run_free(&ref), run_free(&fp32), run_free(&in);
    free(in.q), free(in.k), free(in.v), free(in.dout);
}

int main(void) {
    /* the automatic choice made first, from the CPU's own paths; then, without AMX, the amx path's kernel on
     * emulated tiles (scalar: slow, but every product the tests form) */
    bf16_active_path();
    if (!bf16_path_available(BF16_PATH_AMX) && gemm_bf16_emulate_amx(1))
        printf("no AMX on this CPU: the amx path runs on emulated tiles\n");
    const shape shapes[] = {{2, 150, 4, 2, 40}, {1, 64, 2, 2, 32}, {1, 5, 3, 1, 8},  {2, 200, 2, 2, 64},
                            {3, 96, 4, 2, 40},  {2, 32, 2, 1, 8},  {1, 300, 2, 1, 8}};
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++)
        test_shape(&shapes[i]);
    return check_summary();
}
