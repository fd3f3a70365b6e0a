/* Finite-difference checks of every layer op's backward (core/model/ops.h, core/model/linear.h): each op's
 * output is reduced to the scalar sum(out * w) with fixed random w, whose input gradients must match central
 * differences; also checks that backward accumulates and that ignored targets contribute nothing. */
#include <math.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "tests/check.h"
#include "core/base/common.h"
#include "core/base/vmath.h"
#include "core/model/linear.h"
#include "core/model/ops.h"
#include "core/base/rng.h"

/* Central differences with step H on fp32 inputs of size ~1; the scalar loss is summed in double, so
 * rounding of the outputs that do not depend on the perturbed input cancels exactly between the two
 * evaluations. What remains: fp32 rounding of the few dependent outputs (~1e-7 relative each, divided
 * by 2H = 2e-2 gives ~1e-5 per output) and truncation error H^2/6 f''' ~ 2e-5 for these smooth functions.
 * ATOL 1e-3 + RTOL 1e-2 is ~20x above both, while a wrong gradient (wrong sign, missing term, wrong
 * index) is off by O(1) relative. */
#define H 1e-2
#define ATOL 1e-3
#define RTOL 1e-2
#define SAMPLES 24 /* inputs checked per tensor, chosen at random */

static rng_state rng;

static float *rand_buf(size_t n, double scale) {
    float *x = malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(rng_normal(&rng) * scale);
    return x;
}

static float *zero_buf(size_t n) {
    return calloc(n ? n : 1, sizeof(float));
}

/* The op under test: its forward writes out from the current inputs; loss = sum(out * w) in double. */
typedef struct op_case op_case;
struct op_case {
    void (*forward)(op_case *c);
    float *out, *w;
    size_t nout;
    /* inputs and sizes, used as each op needs */
    float *x[3];
    int *ints;
    int N, C, OC, B, T, NH, NKV, HS, V;
    float eps;
    float *cos_table, *sin_table, *att;
    linear_weight lw;
    float *tile;
    size_t tile_floats;
};

static double op_loss(op_case *c) {
    c->forward(c);
    double s = 0;
    for (size_t i = 0; i < c->nout; i++)
        s += (double)c->out[i] * c->w[i];
    return s;
}

/* Compares analytic (n) against central differences of op_loss w.r.t. x at SAMPLES random indices. */
static void check_grad(const char *what, op_case *c, float *x, const float *analytic, size_t n) {
    int bad = 0;
    double worst = 0;
    for (int s = 0; s < SAMPLES && s < (int)n * 4; s++) {
        size_t i = (size_t)rng_below(&rng, n);
        float orig = x[i];
        x[i] = (float)(orig + H);
        double lp = op_loss(c);
        x[i] = (float)(orig - H);
        double lm = op_loss(c);
        x[i] = orig;
        double numeric = (lp - lm) / (2 * H);
        double err = fabs(numeric - analytic[i]), tol = ATOL + RTOL * fabs(numeric);
        if (err / tol > worst) worst = err / tol;
        if (err > tol && bad++ < 3)
            fprintf(stderr, "  %s[%zu]: analytic %.7g numeric %.7g\n", what, i, analytic[i], numeric);
    }
    CHECKF(bad == 0, "%s: %d of %d sampled gradients off (worst err/tol %.2f)", what, bad, SAMPLES, worst);
}

/* ---------------------------------------------------------------- op forwards used by the checks */

static void fwd_embedding(op_case *c) {
    embedding_forward(c->out, c->ints, c->x[0], c->N, c->C);
}
static void fwd_rmsnorm(op_case *c) {
    float *rstd = malloc(sizeof(float) * c->N);
    rmsnorm_forward(c->out, rstd, c->x[0], c->x[1], c->N, c->C, c->eps);
    free(rstd);
}
static void fwd_matmul(op_case *c) {
    matmul_forward(c->out, c->x[0], c->x[1], c->N, c->C, c->OC);
}
static void fwd_linear(op_case *c) {
    linear_forward(c->out, c->x[0], &c->lw, c->N, c->tile, c->tile_floats);
}
static void fwd_rope(op_case *c) {
    rope_forward(c->out, c->x[0], c->cos_table, c->sin_table, c->B, c->T, c->NH, c->HS);
}
static void fwd_attention(op_case *c) {
    attention_forward(c->out, c->att, c->x[0], c->x[1], c->x[2], c->B, c->T, c->NH, c->NKV, c->HS);
}
static void fwd_swiglu(op_case *c) {
    swiglu_forward(c->out, c->x[0], c->x[1], c->nout);
}
static void fwd_residual(op_case *c) {
    residual_forward(c->out, c->x[0], c->x[1], c->nout);
}
static void fwd_softmax(op_case *c) {
    softmax_forward(c->out, c->x[0], c->N, c->V);
}
/* Mean cross-entropy after softmax, as a one-element output (w = 1). */
static void fwd_crossentropy(op_case *c) {
    float *probs = malloc(sizeof(float) * (size_t)c->N * c->V), *losses = malloc(sizeof(float) * c->N);
    softmax_forward(probs, c->x[0], c->N, c->V);
    c->out[0] = crossentropy_forward(losses, probs, c->ints, c->N, c->V, NULL);
    free(probs);
    free(losses);
}

/* ---------------------------------------------------------------- the checks */

static void test_embedding(void) {
    op_case c = {0};
    c.N = 12, c.C = 8, c.V = 5;
    int tokens[12] = {0, 1, 2, 3, 4, 0, 0, 2, 4, 4, 1, 3}; /* repeats: gradients of a row add up */
    c.ints = tokens;
    c.x[0] = rand_buf((size_t)c.V * c.C, 1);
    c.nout = (size_t)c.N * c.C, c.out = zero_buf(c.nout), c.w = rand_buf(c.nout, 1);
    c.forward = fwd_embedding;
    float *g = zero_buf((size_t)c.V * c.C);
    embedding_backward(g, c.w, tokens, c.N, c.C);
    check_grad("embedding dtable", &c, c.x[0], g, (size_t)c.V * c.C);
    /* exact: row 0 appears 3 times */
    CHECK_NEAR(g[0], c.w[0] + c.w[5 * 8] + c.w[6 * 8], 1e-6); /* three fp32 adds of O(1) values */
    free(c.x[0]), free(c.out), free(c.w), free(g);
}

static void test_rmsnorm(void) {
    op_case c = {0};
    c.N = 6, c.C = 16, c.eps = 1e-5f;
    c.x[0] = rand_buf((size_t)c.N * c.C, 1), c.x[1] = rand_buf(c.C, 1);
    c.nout = (size_t)c.N * c.C, c.out = zero_buf(c.nout), c.w = rand_buf(c.nout, 1);
    c.forward = fwd_rmsnorm;
    float *rstd = zero_buf(c.N), *dx = zero_buf(c.nout), *dw = zero_buf(c.C);
    rmsnorm_forward(c.out, rstd, c.x[0], c.x[1], c.N, c.C, c.eps);
    rmsnorm_backward(dx, dw, c.w, c.x[0], c.x[1], rstd, c.N, c.C);
    check_grad("rmsnorm dinp", &c, c.x[0], dx, c.nout);
    check_grad("rmsnorm dweight", &c, c.x[1], dw, c.C);
    /* Backward accumulates: starting from gradients of 1 gives 1 + the fresh gradient (up to the
     * rounding of a different summation start, ~1e-7 relative on O(1) sums). */
    float *dx1 = malloc(sizeof(float) * c.nout), *dw1 = malloc(sizeof(float) * c.C);
    for (size_t i = 0; i < c.nout; i++)
        dx1[i] = 1;
    for (int i = 0; i < c.C; i++)
        dw1[i] = 1;
    rmsnorm_backward(dx1, dw1, c.w, c.x[0], c.x[1], rstd, c.N, c.C);
    CHECK_NEAR(dx1[5], 1 + dx[5], 1e-5);
    CHECK_NEAR(dw1[3], 1 + dw[3], 1e-5);
    free(dx1), free(dw1);
    free(c.x[0]), free(c.x[1]), free(c.out), free(c.w), free(rstd), free(dx), free(dw);
}

/* bf16 compute's order of the norm weight gradient (lanes): blocks of OPS_NORM_BLOCK rows summed from zero,
 * then added in block order. rmsnorm_backward_order's form (OpenMP over columns, in tiles of 64) gives the
 * bits of rmsnorm_weight_block + rmsnorm_weight_add_blocks (what the bf16 backward in row chunks forms) for
 * any thread count, and stays within fp32 rounding of the row-order sum. */
static void test_rmsnorm_blocks(void) {
    const int N = 75, C = 100; /* a partial last block; a partial column tile on each thread */
    float *x = rand_buf((size_t)N * C, 1), *w = rand_buf(C, 1), *dy = rand_buf((size_t)N * C, 1);
    float *rstd = rand_buf(N, 1), *dx = zero_buf((size_t)N * C), *row = zero_buf(C), *lane = zero_buf(C);
    int nb = (N + OPS_NORM_BLOCK - 1) / OPS_NORM_BLOCK;
    float *part = zero_buf((size_t)nb * C), *blk = zero_buf(C);
    for (int b = 0; b < nb; b++) {
        int b0 = b * OPS_NORM_BLOCK, rows = N - b0 < OPS_NORM_BLOCK ? N - b0 : OPS_NORM_BLOCK;
        rmsnorm_weight_block(part + (size_t)b * C, dy + (size_t)b0 * C, x + (size_t)b0 * C, rstd + b0, rows,
                             C);
    }
    for (int i = 0; i < C; i++)
        blk[i] = 0.25f;
    rmsnorm_weight_add_blocks(blk, part, nb, C);
    rmsnorm_backward_order(dx, row, dy, x, w, rstd, N, C, 0);
#ifdef _OPENMP
    int max_threads = omp_get_max_threads();
#endif
    for (int threads = 1; threads <= 2; threads++) {
#ifdef _OPENMP
        omp_set_num_threads(threads);
#endif
        for (int i = 0; i < C; i++)
            lane[i] = 0.25f;
        rmsnorm_backward_order(dx, lane, dy, x, w, rstd, N, C, 1);
        CHECKF(!memcmp(lane, blk, sizeof(float) * C), "%d threads: blocked norm weight gradient differs",
               threads);
    }
#ifdef _OPENMP
    omp_set_num_threads(max_threads);
#endif
    double err = 0, ref = 0;
    for (int i = 0; i < C; i++)
        err += (lane[i] - 0.25 - row[i]) * (lane[i] - 0.25 - row[i]), ref += (double)row[i] * row[i];
    CHECKF(sqrt(err / ref) < 1e-5, "blocked vs row-order norm weight gradient: rel L2 %.2e", sqrt(err / ref));
    free(x), free(w), free(dy), free(rstd), free(dx), free(row), free(lane), free(part), free(blk);
}

static void test_matmul_and_linear(void) {
    op_case c = {0};
    c.N = 7, c.C = 12, c.OC = 10;
    c.x[0] = rand_buf((size_t)c.N * c.C, 1), c.x[1] = rand_buf((size_t)c.OC * c.C, 1);
    c.nout = (size_t)c.N * c.OC, c.out = zero_buf(c.nout), c.w = rand_buf(c.nout, 1);
    c.forward = fwd_matmul;
    float *dx = zero_buf((size_t)c.N * c.C), *dw = zero_buf((size_t)c.OC * c.C);
    matmul_backward(dx, dw, c.w, c.x[0], c.x[1], c.N, c.C, c.OC);
    check_grad("matmul dinp", &c, c.x[0], dx, (size_t)c.N * c.C);
    check_grad("matmul dweight", &c, c.x[1], dw, (size_t)c.OC * c.C);

    /* The fp32 linear layer is the same op. */
    c.lw = (linear_weight){c.OC, c.C, c.x[1], NULL};
    c.forward = fwd_linear;
    float *dx2 = zero_buf((size_t)c.N * c.C), *dw2 = zero_buf((size_t)c.OC * c.C);
    CHECK(linear_backward(dx2, dw2, c.w, c.x[0], &c.lw, c.N, NULL, 0) == QLAB_OK);
    check_grad("linear dinp", &c, c.x[0], dx2, (size_t)c.N * c.C);
    check_grad("linear dweight", &c, c.x[1], dw2, (size_t)c.OC * c.C);
    CHECK(memcmp(dx, dx2, sizeof(float) * c.N * c.C) == 0);

    /* Tile arithmetic for quantized weights: even row counts, at least 2, never past the matrix. */
    linear_weight big = {1000, 300, NULL, NULL};
    CHECK(linear_tile_rows(&big, 1 << 18) == 872);
    CHECK(linear_tile_rows(&big, 100) == 2);
    CHECK(linear_tile_floats_needed(&big, 100) == 600);
    linear_weight odd = {5, 3, NULL, NULL};
    CHECK(linear_tile_rows(&odd, 1 << 18) == 6);
    free(c.x[0]), free(c.x[1]), free(c.out), free(c.w), free(dx), free(dw), free(dx2), free(dw2);
}

static void make_rope_tables(op_case *c, float theta) {
    int half = c->HS / 2;
    c->cos_table = zero_buf((size_t)c->T * half), c->sin_table = zero_buf((size_t)c->T * half);
    for (int t = 0; t < c->T; t++)
        for (int i = 0; i < half; i++) {
            double a = t * pow(theta, -2.0 * i / c->HS);
            c->cos_table[t * half + i] = (float)cos(a), c->sin_table[t * half + i] = (float)sin(a);
        }
}

static void test_rope(void) {
    op_case c = {0};
    c.B = 2, c.T = 5, c.NH = 3, c.HS = 8;
    make_rope_tables(&c, 10000.0f);
    size_t n = (size_t)c.B * c.T * c.NH * c.HS;
    c.x[0] = rand_buf(n, 1), c.nout = n, c.out = zero_buf(n), c.w = rand_buf(n, 1);
    c.forward = fwd_rope;
    float *dx = rand_buf(n, 1); /* stored over, not added to */
    rope_backward(dx, c.w, c.cos_table, c.sin_table, c.B, c.T, c.NH, c.HS);
    check_grad("rope dinp", &c, c.x[0], dx, n);
    /* the bits of the rotation added to zeros: a zero gradient (dout zero on a whole pair) is +0, and the
     * row form gives what the whole form does */
    float *dz = rand_buf(n, 1), *dr = zero_buf(n);
    for (size_t i = 0; i < 4 * (size_t)c.HS; i++)
        dz[i] = -0.0f;
    rope_backward(dx, dz, c.cos_table, c.sin_table, c.B, c.T, c.NH, c.HS);
    int bad = 0;
    for (int bt = 0; bt < c.B * c.T; bt++) {
        int t = bt % c.T, half = c.HS / 2;
        for (int h = 0; h < c.NH; h++)
            for (int j = 0; j < half; j++) {
                size_t i = ((size_t)bt * c.NH + h) * c.HS + 2 * (size_t)j;
                float cs = c.cos_table[t * half + j], sn = c.sin_table[t * half + j], z0 = 0.0f, z1 = 0.0f;
                z0 += dz[i] * cs + dz[i + 1] * sn;
                z1 += dz[i + 1] * cs - dz[i] * sn;
                bad += memcmp(&z0, dx + i, 4) != 0 || memcmp(&z1, dx + i + 1, 4) != 0;
            }
    }
    CHECKF(bad == 0, "rope_backward: %d values differ from the rotation added to zeros", bad);
    CHECK(!signbit(dx[0]) && !signbit(dx[1]) && dx[0] == 0.0f);
    rope_backward_rows(dr + 3 * (size_t)c.NH * c.HS, dz + 3 * (size_t)c.NH * c.HS, c.cos_table, c.sin_table,
                       3, c.B * c.T - 3, c.T, c.NH, c.HS);
    CHECK(memcmp(dr + 3 * (size_t)c.NH * c.HS, dx + 3 * (size_t)c.NH * c.HS,
                 sizeof(float) * (n - 3 * (size_t)c.NH * c.HS)) == 0);
    free(dz), free(dr);
    /* Position 0 is the identity; a rotation keeps each pair's length. */
    rope_forward(c.out, c.x[0], c.cos_table, c.sin_table, c.B, c.T, c.NH, c.HS);
    CHECK(memcmp(c.out, c.x[0], sizeof(float) * c.NH * c.HS) == 0);
    size_t j = ((size_t)(1 * c.T + 4) * c.NH + 2) * c.HS + 6; /* b=1, t=4, head 2, pair 3 */
    double r_in = hypot(c.x[0][j], c.x[0][j + 1]), r_out = hypot(c.out[j], c.out[j + 1]);
    CHECK_NEAR(r_out, r_in, 1e-5 * r_in); /* a few fp32 roundings */
    /* In place gives the same result. */
    float *copy = malloc(sizeof(float) * n);
    memcpy(copy, c.x[0], sizeof(float) * n);
    rope_forward(copy, copy, c.cos_table, c.sin_table, c.B, c.T, c.NH, c.HS);
    CHECK(memcmp(copy, c.out, sizeof(float) * n) == 0);
    free(copy), free(c.x[0]), free(c.out), free(c.w), free(dx), free(c.cos_table), free(c.sin_table);
}

static void test_attention(int NKV, int T) {
    op_case c = {0};
    c.B = 2, c.T = T, c.NH = 4, c.NKV = NKV, c.HS = 8;
    size_t nq = (size_t)c.B * c.T * c.NH * c.HS, nkv = (size_t)c.B * c.T * c.NKV * c.HS;
    c.x[0] = rand_buf(nq, 1), c.x[1] = rand_buf(nkv, 1), c.x[2] = rand_buf(nkv, 1);
    c.att = zero_buf((size_t)c.B * c.NH * c.T * c.T);
    c.nout = nq, c.out = zero_buf(nq), c.w = rand_buf(nq, 1);
    c.forward = fwd_attention;
    float *dq = zero_buf(nq), *dk = zero_buf(nkv), *dv = zero_buf(nkv);
    float *scratch = zero_buf((size_t)qlab_num_threads() * c.T * c.T);
    attention_forward(c.out, c.att, c.x[0], c.x[1], c.x[2], c.B, c.T, c.NH, c.NKV, c.HS);
    attention_backward(dq, dk, dv, c.w, c.att, c.x[0], c.x[1], c.x[2], c.B, c.T, c.NH, c.NKV, c.HS, scratch,
                       qlab_num_threads());
    char name[64];
    snprintf(name, sizeof name, "attention(NKV=%d,T=%d) dq", NKV, T);
    check_grad(name, &c, c.x[0], dq, nq);
    snprintf(name, sizeof name, "attention(NKV=%d,T=%d) dk", NKV, T);
    check_grad(name, &c, c.x[1], dk, nkv);
    snprintf(name, sizeof name, "attention(NKV=%d,T=%d) dv", NKV, T);
    check_grad(name, &c, c.x[2], dv, nkv);
    /* Causality: the first position attends only to itself, so its output is v at position 0. */
    attention_forward(c.out, c.att, c.x[0], c.x[1], c.x[2], c.B, c.T, c.NH, c.NKV, c.HS);
    int kvh = 3 / (c.NH / c.NKV);
    CHECK(memcmp(c.out + 3 * c.HS, c.x[2] + kvh * c.HS, sizeof(float) * c.HS) == 0);
    /* Probability rows sum to one and are zero above the diagonal. */
    double row = 0;
    for (int t2 = 0; t2 < c.T; t2++)
        row += c.att[(size_t)4 * c.T + t2];
    CHECK_NEAR(row, 1.0, 1e-6); /* six fp32 probabilities */
    CHECK(c.att[(size_t)4 * c.T + 5] == 0);
    free(c.x[0]), free(c.x[1]), free(c.x[2]), free(c.att), free(c.out), free(c.w);
    free(dq), free(dk), free(dv), free(scratch);
}

/* SwiGLU's gradients as the textbook writes them (s = sigmoid(g) as vm_sigmoid forms it, silu'(g) =
 * s + g s (1 - s)), added to zeroed dgate and dup: the reference for swiglu_backward's bits. */
static void swiglu_backward_ref(float *dgate, float *dup, const float *dout, const float *gate,
                                const float *up, size_t n) {
    float *sig = malloc(sizeof(float) * n);
    vm_sigmoid(sig, gate, n);
    for (size_t i = 0; i < n; i++) {
        float g = gate[i], s = sig[i], zg = 0.0f, zu = 0.0f;
        zg += dout[i] * up[i] * (s + g * s * (1.0f - s));
        zu += dout[i] * (g * s);
        dgate[i] = zg, dup[i] = zu;
    }
    free(sig);
}

static void test_swiglu_residual(void) {
    op_case c = {0};
    size_t n = 40;
    c.x[0] = rand_buf(n, 2), c.x[1] = rand_buf(n, 1);
    c.nout = n, c.out = zero_buf(n), c.w = rand_buf(n, 1);
    c.forward = fwd_swiglu;
    float *dg = rand_buf(n, 1), *du = rand_buf(n, 1); /* stored over, not added to */
    swiglu_backward(dg, du, c.w, c.x[0], c.x[1], n);
    check_grad("swiglu dgate", &c, c.x[0], dg, n);
    check_grad("swiglu dup", &c, c.x[1], du, n);
    free(dg), free(du);
    /* swiglu_backward and vm_swiglu_backward (the bf16 row backward's form): the textbook gradients added to
     * zeroed buffers and vm_silu_mul, bit for bit, on both vmath paths, over several of swiglu_backward's
     * chunks; dout zero where u < 0 makes signed zeros, which must come out +0 as the additions give */
    size_t nb = 2500;
    float *gx = rand_buf(nb, 2), *gu = rand_buf(nb, 1);
    dg = zero_buf(nb), du = zero_buf(nb);
    float *dout = rand_buf(nb, 1), *hs = zero_buf(nb), *fg = zero_buf(nb), *fu = zero_buf(nb);
    float *fo = zero_buf(nb), *sg = zero_buf(nb), *su = zero_buf(nb);
    for (size_t i = 0; i < nb; i += 3)
        dout[i] = 0.0f;
    for (int path = 0; path < 2; path++) {
        vm_force_c(path);
        swiglu_backward_ref(dg, du, dout, gx, gu, nb);
        vm_silu_mul(hs, gx, gu, nb);
        memcpy(fo, dout, sizeof(float) * nb);
        vm_swiglu_backward(fg, fu, fo, fo, gx, gu, nb); /* the output over dout */
        CHECKF(memcmp(dg, fg, sizeof(float) * nb) == 0 && memcmp(du, fu, sizeof(float) * nb) == 0 &&
                   memcmp(hs, fo, sizeof(float) * nb) == 0,
               "vm_swiglu_backward differs from the gradients added to zeros + vm_silu_mul (%s path)",
               vm_path_name());
        swiglu_backward(sg, su, dout, gx, gu, nb);
        CHECKF(memcmp(dg, sg, sizeof(float) * nb) == 0 && memcmp(du, su, sizeof(float) * nb) == 0,
               "swiglu_backward differs from the gradients added to zeros (%s path)", vm_path_name());
    }
    vm_force_c(0);
    free(dout), free(hs), free(fg), free(fu), free(fo), free(sg), free(su), free(gx), free(gu);
    c.forward = fwd_residual;
    float *da = zero_buf(n), *db = zero_buf(n);
    residual_backward(da, db, c.w, n);
    check_grad("residual da", &c, c.x[0], da, n);
    check_grad("residual db", &c, c.x[1], db, n);
    free(c.x[0]), free(c.x[1]), free(c.out), free(c.w), free(dg), free(du), free(da), free(db);
}

/* The fused softmax + cross-entropy backward as the textbook writes it: dlogits += dloss * (probs -
 * onehot(target)) for each non-ignored row (the reference crossentropy_softmax_grad_inplace is held to). */
static void crossentropy_backward_ref(float *dlogits, const float *probs, const int *targets, int N, int V,
                                      float dloss) {
    for (int n = 0; n < N; n++) {
        if (targets[n] < 0) continue;
        for (int i = 0; i < V; i++)
            dlogits[(size_t)n * V + i] +=
                dloss * (probs[(size_t)n * V + i] - (i == targets[n] ? 1.0f : 0.0f));
    }
}

static void test_softmax_crossentropy(void) {
    op_case c = {0};
    c.N = 6, c.V = 9;
    size_t n = (size_t)c.N * c.V;
    c.x[0] = rand_buf(n, 2);
    c.nout = n, c.out = zero_buf(n), c.w = rand_buf(n, 1);
    c.forward = fwd_softmax;
    float *probs = zero_buf(n), *dx = zero_buf(n);
    softmax_forward(probs, c.x[0], c.N, c.V);
    softmax_backward(dx, c.w, probs, c.N, c.V);
    check_grad("softmax dlogits", &c, c.x[0], dx, n);

    /* Fused softmax + mean cross-entropy with two ignored positions. */
    int targets[6] = {3, -1, 0, 8, -100, 5};
    c.ints = targets;
    float one = 1.0f, loss_out = 0;
    free(c.out), free(c.w);
    c.out = &loss_out, c.w = &one, c.nout = 1;
    c.forward = fwd_crossentropy;
    float losses[6];
    int count = 0;
    float mean = crossentropy_forward(losses, probs, targets, c.N, c.V, &count);
    CHECK(count == 4);
    CHECK(losses[1] == 0 && losses[4] == 0);
    CHECK_NEAR(mean, (losses[0] + losses[2] + losses[3] + losses[5]) / 4.0, 1e-6); /* fp32 sums of ~2 */
    float *dl = zero_buf(n);
    crossentropy_backward_ref(dl, probs, targets, c.N, c.V, 1.0f / count);
    check_grad("crossentropy dlogits", &c, c.x[0], dl, n);
    int zero_rows = 1;
    for (int i = 0; i < c.V; i++)
        zero_rows &= dl[1 * c.V + i] == 0 && dl[4 * c.V + i] == 0;
    CHECK(zero_rows);
    /* the library's form, in place of the probabilities: the reference's bits (accumulated into zeros), the
     * ignored rows zero, and the finite differences */
    float *inplace = malloc(sizeof(float) * n);
    memcpy(inplace, probs, sizeof(float) * n);
    crossentropy_softmax_grad_inplace(inplace, targets, c.N, c.V, 1.0f / count);
    CHECK(memcmp(inplace, dl, sizeof(float) * n) == 0);
    check_grad("crossentropy dlogits in place", &c, c.x[0], inplace, n);
    free(inplace);
    /* Changing the logits of an ignored position leaves the loss unchanged. */
    c.x[0][1 * c.V + 2] += 5.0f;
    double before = mean, after = op_loss(&c);
    CHECK(before == after);
    int all_ignored[6] = {-1, -1, -1, -1, -1, -1};
    CHECK(crossentropy_forward(losses, probs, all_ignored, c.N, c.V, &count) == 0.0f && count == 0);
    free(c.x[0]), free(probs), free(dx), free(dl);
}

/* A quantized linear layer with a tile of only 2 rows (so many tiles, and a partial last one for an
 * odd row count) against matmul over the fully dequantized weight. */
static void test_quantized_linear(int OC) {
    int N = 5, IC = 64;
    float *w = rand_buf((size_t)OC * IC, 1), *x = rand_buf((size_t)N * IC, 1),
          *dout = rand_buf((size_t)N * OC, 1);
    quant_tensor qt;
    qlab_status st = quant_tensor_quantize(&qt, w, (int64_t)OC * IC, QUANT_NF4, 64, 0);
    CHECKF(st == QLAB_OK, "quantize: %s", qlab_last_error());
    if (st != QLAB_OK) return;
    quant_tensor_dequantize(&qt, w);
    linear_weight lw = {OC, IC, NULL, &qt};
    size_t tile_floats = 2 * (size_t)IC;
    float *tile = zero_buf(tile_floats);
    CHECK(linear_tile_rows(&lw, tile_floats) == 2);
    float *yq = zero_buf((size_t)N * OC), *yr = zero_buf((size_t)N * OC);
    float *dq = zero_buf((size_t)N * IC), *dr = zero_buf((size_t)N * IC);
    CHECK(linear_forward(yq, x, &lw, N, tile, tile_floats) == QLAB_OK);
    matmul_forward(yr, x, w, N, IC, OC);
    CHECK(linear_backward(dq, NULL, dout, x, &lw, N, tile, tile_floats) == QLAB_OK);
    matmul_backward(dr, NULL, dout, x, w, N, IC, OC);
    double ey = 0, ed = 0;
    for (int i = 0; i < N * OC; i++)
        ey = fmax(ey, fabs(yq[i] - yr[i]));
    for (int i = 0; i < N * IC; i++)
        ed = fmax(ed, fabs(dq[i] - dr[i]));
    /* Same products; the tiled sgemm calls may associate the sums differently from one big call:
     * fp32 reassociation of 64 (forward) or OC (input gradient) O(1) terms, ~1e-6. */
    CHECKF(ey < 1e-4 && ed < 1e-4, "OC %d: tiled quantized linear differs: out %.3g, dinp %.3g", OC, ey, ed);
    /* Misuses are refused before anything is written: a tile too small for two rows, no tile, a weight
     * gradient of the frozen quantized weight, a weight with neither or both representations. */
    float *before = zero_buf((size_t)N * OC);
    memcpy(before, yq, sizeof(float) * N * OC);
    CHECK(linear_forward(yq, x, &lw, N, tile, tile_floats - 1) == QLAB_ERR_ARG);
    CHECK(strstr(qlab_last_error(), "linear_forward: tile") != NULL);
    CHECK(linear_forward(yq, x, &lw, N, NULL, tile_floats) == QLAB_ERR_ARG);
    CHECK(linear_backward(dq, w, dout, x, &lw, N, tile, tile_floats) == QLAB_ERR_ARG);
    CHECK(strstr(qlab_last_error(), "quantized (frozen)") != NULL);
    linear_weight none = {OC, IC, NULL, NULL}, both = {OC, IC, w, &qt};
    CHECK(linear_forward(yq, x, &none, N, tile, tile_floats) == QLAB_ERR_ARG);
    CHECK(strstr(qlab_last_error(), "neither") != NULL);
    CHECK(linear_backward(dq, NULL, dout, x, &both, N, tile, tile_floats) == QLAB_ERR_ARG);
    CHECK(strstr(qlab_last_error(), "both") != NULL);
    CHECK(memcmp(before, yq, sizeof(float) * N * OC) == 0);
    quant_tensor_free(&qt);
    free(w), free(x), free(dout), free(tile), free(yq), free(yr), free(dq), free(dr), free(before);
}

int main(void) {
    rng_seed(&rng, 1234);
    test_embedding();
    test_rmsnorm();
    test_rmsnorm_blocks();
    test_matmul_and_linear();
    test_rope();
    test_attention(4, 6);   /* multi-head */
    test_attention(2, 6);   /* grouped-query */
    test_attention(1, 6);   /* multi-query */
    test_attention(2, 150); /* three blocks of query rows (64, 64, 22): the causal blocking */
    test_swiglu_residual();
    test_softmax_crossentropy();
    test_quantized_linear(10);
    test_quantized_linear(9);
    return check_summary();
}
