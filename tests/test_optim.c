/* Tests of core/model/optim.h: AdamW against a double-precision reference of the same formula, the exact
 * "no weight decay when 0" rule, global-norm clipping, the learning-rate schedules at their key steps and
 * the state-memory interface (paged falls back to host memory without a backend). */
#include <math.h>
#include <string.h>

#include "tests/check.h"
#include "kernels/cuda_emu.h"
#include "core/model/optim.h"
#include "core/base/rng.h"

/* PyTorch AdamW in double: the reference the fp32 update must follow. */
static void adamw_reference(double *p, const double *g, double *m, double *v, int n, double lr, double b1,
                            double b2, double eps, double wd, int t) {
    for (int i = 0; i < n; i++) {
        p[i] *= 1.0 - lr * wd;
        m[i] = b1 * m[i] + (1 - b1) * g[i];
        v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
        double mhat = m[i] / (1 - pow(b1, t)), vhat = v[i] / (1 - pow(b2, t));
        p[i] -= lr * mhat / (sqrt(vhat) + eps);
    }
}

static void test_adamw_reference(void) {
    enum { N = 257, STEPS = 5 };
    float p[N], g[N];
    double pd[N], gd[N], md[N] = {0}, vd[N] = {0};
    optim_adamw o;
    CHECK(optim_adamw_init(&o, N, OPTIM_STATE_HOST) == QLAB_OK);
    rng_state r;
    rng_seed(&r, 3);
    for (int i = 0; i < N; i++)
        pd[i] = p[i] = (float)rng_normal(&r);
    optim_adamw_hyper h = {1e-2f, 0.9f, 0.999f, 1e-8f, 0.1f};
    double max_err = 0;
    for (int t = 1; t <= STEPS; t++) {
        /* Gradients of mixed scale, including exact zeros and tiny values where eps matters. */
        for (int i = 0; i < N; i++) {
            g[i] = i % 17 == 0 ? 0.0f : (float)(rng_normal(&r) * pow(10.0, (double)(i % 7) - 4));
            gd[i] = g[i];
        }
        CHECK(optim_adamw_step(&o, p, g, &h) == QLAB_OK);
        adamw_reference(pd, gd, md, vd, N, h.lr, h.beta1, h.beta2, h.eps, h.weight_decay, t);
        for (int i = 0; i < N; i++)
            max_err = fmax(max_err, fabs(p[i] - pd[i]));
    }
    CHECK(o.step == STEPS);
    /* |p| is O(1) and each step moves it by <= ~lr; fp32 rounding of ~10 operations per step over 5 steps
     * stays below 1e-6, while a wrong formula (no bias correction, coupled decay) errs by >= 1e-4. */
    CHECKF(max_err < 2e-6, "max |p - reference| = %g", max_err);
    /* First step exactly: m = 0.1 g, v = 0.001 g^2, so the update is lr * sign(g) up to eps. */
    float p1[1] = {1.0f}, g1[1] = {0.5f}, m1[1] = {0}, v1[1] = {0};
    optim_adamw_hyper h1 = {1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f};
    CHECK(optim_adamw_update(p1, g1, m1, v1, 1, &h1, 1) == QLAB_OK);
    CHECK_NEAR(p1[0], 1.0 - 1e-3, 1e-7); /* fp32 spacing at 1.0 is 6e-8 */
    optim_adamw_free(&o);
}

/* The CPU update and the CUDA kernel body (run through kernels/cuda_emu) must agree bit for bit: both
 * round every operation to fp32 in the same order, with the same double-precision per-step scalars. */
static void test_matches_cuda_body(void) {
    enum { N = 1000 };
    static float p1[N], p2[N], g[N], m1[N], v1[N], m2[N], v2[N];
    rng_state r;
    rng_seed(&r, 11);
    for (int i = 0; i < N; i++)
        p1[i] = p2[i] = (float)rng_normal(&r);
    optim_adamw_hyper h = {3e-3f, 0.9f, 0.95f, 1e-8f, 0.1f};
    optim_cuda_adamw_hyper hc = {h.lr, h.beta1, h.beta2, h.eps, h.weight_decay};
    int same = 1;
    for (int t = 1; t <= 4; t++) {
        for (int i = 0; i < N; i++)
            g[i] = (float)(rng_normal(&r) * 0.01);
        CHECK(optim_adamw_update(p1, g, m1, v1, N, &h, t) == QLAB_OK);
        CHECK(cuda_emu_adamw_step(p2, g, m2, v2, N, &hc, t) == QLAB_OK);
        same &= !memcmp(p1, p2, sizeof p1) && !memcmp(m1, m2, sizeof m1) && !memcmp(v1, v2, sizeof v1);
    }
    CHECK(same);
}

static void test_no_decay_when_zero(void) {
    /* With weight_decay 0 and zero gradients the parameters must not move by a single bit. */
    float p[4] = {1.5f, -3.25f, 1e-30f, 7e20f}, g[4] = {0}, m[4] = {0}, v[4] = {0};
    float before[4];
    memcpy(before, p, sizeof p);
    optim_adamw_hyper h = {0.1f, 0.9f, 0.95f, 1e-8f, 0.0f};
    for (int t = 1; t <= 3; t++)
        CHECK(optim_adamw_update(p, g, m, v, 4, &h, t) == QLAB_OK);
    CHECK(memcmp(p, before, sizeof p) == 0);
    /* With decay 0.5 and lr 0.1 (zero gradient) each step multiplies by exactly 0.95. */
    h.weight_decay = 0.5f;
    CHECK(optim_adamw_update(p, g, m, v, 4, &h, 4) == QLAB_OK);
    CHECK(p[0] == (float)(1.0 - 0.1f * 0.5) * 1.5f);
    /* Bad hyper-parameters are errors, not NaNs. */
    h.beta1 = 1.0f;
    CHECK(optim_adamw_update(p, g, m, v, 4, &h, 1) == QLAB_ERR_ARG);
    h.beta1 = 0.9f;
    CHECK(optim_adamw_update(p, g, m, v, 4, &h, 0) == QLAB_ERR_ARG);
}

static void test_clipping(void) {
    float g[3] = {3.0f, 4.0f, 0.0f};
    double norm = optim_clip_grad_norm(g, 3, 10.0);
    CHECK_NEAR(norm, 5.0, 0.0);          /* 9 + 16 is exact in double */
    CHECK(g[0] == 3.0f && g[1] == 4.0f); /* below the limit: untouched */
    norm = optim_clip_grad_norm(g, 3, 1.0);
    CHECK_NEAR(norm, 5.0, 0.0);
    /* Scaled by 1 / (5 + 1e-6): the new norm is 1 within fp32 rounding (1e-6 relative). */
    CHECK_NEAR(sqrt((double)g[0] * g[0] + (double)g[1] * g[1]), 1.0, 1e-6);
    CHECK_NEAR(g[0], 0.6, 1e-6);
    /* Large buffer (several chunks): the norm matches a plain double sum; twice gives the same bits. */
    enum { N = 300001 };
    static float big[N];
    double ref = 0;
    for (int i = 0; i < N; i++) {
        big[i] = (float)((i % 13) - 6) * 0.01f;
        ref += (double)big[i] * big[i];
    }
    double a = optim_clip_grad_norm(big, N, 0), b = optim_clip_grad_norm(big, N, 0);
    CHECK(a == b);
    CHECK_NEAR(a, sqrt(ref), 1e-12 * sqrt(ref)); /* only summation order differs */
    float bad[2] = {NAN, 1.0f};
    CHECK(isnan(optim_clip_grad_norm(bad, 2, 1.0)) && bad[1] == 1.0f);
}

static void test_schedule(void) {
    optim_lr_schedule s = {OPTIM_LR_COSINE, 1e-3, 1e-4, 100, 1100};
    CHECK(optim_lr_check(&s) == QLAB_OK);
    CHECK_NEAR(optim_lr_at(&s, 0), 1e-5, 1e-18); /* (0+1)/100 of max */
    CHECK_NEAR(optim_lr_at(&s, 49), 5e-4, 1e-18);
    CHECK_NEAR(optim_lr_at(&s, 99), 1e-3, 1e-18);    /* end of warmup */
    CHECK_NEAR(optim_lr_at(&s, 100), 1e-3, 1e-18);   /* start of decay: cos(0) */
    CHECK_NEAR(optim_lr_at(&s, 600), 5.5e-4, 1e-15); /* half way: (max + min) / 2 */
    CHECK_NEAR(optim_lr_at(&s, 1100), 1e-4, 1e-18);  /* end: the floor */
    CHECK_NEAR(optim_lr_at(&s, 5000), 1e-4, 1e-18);
    int monotone = 1;
    for (int64_t t = 100; t < 1100; t++)
        monotone &= optim_lr_at(&s, t + 1) <= optim_lr_at(&s, t);
    CHECK(monotone);
    optim_lr_schedule c = {OPTIM_LR_CONSTANT, 2e-4, 0, 10, 0};
    CHECK(optim_lr_check(&c) == QLAB_OK);
    CHECK_NEAR(optim_lr_at(&c, 4), 1e-4, 1e-18);
    CHECK_NEAR(optim_lr_at(&c, 9), 2e-4, 1e-18);
    CHECK_NEAR(optim_lr_at(&c, 100000), 2e-4, 0);
    optim_lr_schedule none = {OPTIM_LR_CONSTANT, 2e-4, 0, 0, 0};
    CHECK_NEAR(optim_lr_at(&none, 0), 2e-4, 0);
    /* Linear (transformers' get_linear_schedule_with_warmup when min_lr is 0): warmup 10, total 110. */
    optim_lr_schedule lin = {OPTIM_LR_LINEAR, 1e-3, 0, 10, 110};
    CHECK(optim_lr_check(&lin) == QLAB_OK);
    CHECK_NEAR(optim_lr_at(&lin, 9), 1e-3, 1e-18);
    CHECK_NEAR(optim_lr_at(&lin, 10), 1e-3, 1e-18);
    CHECK_NEAR(optim_lr_at(&lin, 35), 7.5e-4, 1e-15);
    CHECK_NEAR(optim_lr_at(&lin, 60), 5e-4, 1e-15);
    CHECK_NEAR(optim_lr_at(&lin, 110), 0, 0);
    optim_lr_kind kind;
    CHECK(optim_lr_kind_parse("linear", &kind) == QLAB_OK && kind == OPTIM_LR_LINEAR &&
          !strcmp(optim_lr_kind_name(kind), "linear"));
    CHECK(optim_lr_kind_parse("cos", &kind) == QLAB_ERR_ARG && strstr(qlab_last_error(), "'cos'"));
    optim_lr_schedule bad = {OPTIM_LR_COSINE, 1e-3, 1e-2, 10, 100};
    CHECK(optim_lr_check(&bad) == QLAB_ERR_ARG);
    bad = (optim_lr_schedule){OPTIM_LR_COSINE, 1e-3, 0, 200, 100};
    CHECK(optim_lr_check(&bad) == QLAB_ERR_ARG);
}

static int fake_allocs;
static void *fake_alloc(size_t bytes) {
    fake_allocs++;
    return qlab_calloc(1, bytes);
}
static size_t fake_prefetched;
static void fake_prefetch(const void *p, size_t bytes) {
    (void)p;
    fake_prefetched += bytes;
}
static void fake_release(void *p) {
    fake_allocs--;
    free(p);
}

static void test_state_memory(void) {
    optim_state_buffer b;
    CHECK(optim_state_alloc(OPTIM_STATE_PAGED, 1000, &b) == QLAB_OK);
    CHECK(b.actual == OPTIM_STATE_HOST && b.requested == OPTIM_STATE_PAGED);
    CHECK(strstr(b.note, "no paged backend") != NULL);
    CHECK(b.data && b.data[0] == 0.0f && b.data[999] == 0.0f);
    optim_state_free(&b);
    CHECK(b.data == NULL);
    static const optim_state_backend fake = {"fake-paged", fake_alloc, fake_release, fake_prefetch};
    optim_set_paged_backend(&fake);
    optim_adamw o;
    CHECK(optim_adamw_init(&o, 10, OPTIM_STATE_PAGED) == QLAB_OK);
    CHECK(fake_allocs == 2 && o.m.actual == OPTIM_STATE_PAGED);
    /* The update asks the backend to bring both moments to the host first, range by range. */
    float p[10] = {1, 2, 3}, g[10] = {1, 1, 1};
    optim_adamw_hyper h = {1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f};
    CHECK(optim_adamw_update_range(&o, p + 2, g + 2, 2, 5, &h, 1) == QLAB_OK);
    CHECK(fake_prefetched == 2 * 5 * sizeof(float));
    optim_adamw_free(&o);
    CHECK(fake_allocs == 0);
    optim_set_paged_backend(NULL);
    CHECK(optim_state_alloc((optim_state_kind)7, 10, &b) == QLAB_ERR_ARG);
}

int main(void) {
    test_adamw_reference();
    test_matches_cuda_body();
    test_no_decay_when_zero();
    test_clipping();
    test_schedule();
    test_state_memory();
    return check_summary();
}
