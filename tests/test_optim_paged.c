/* Tests of the CPU paged optimizer (core/model/optim_paged.h): AdamW with its moments paged to a file under
 * a resident budget is bit-identical to AdamW in plain memory (parameters and moments, over several steps,
 * for budgets of one page, a few pages and everything), the page traffic of a sweep is exactly what the
 * eviction rule implies, range updates and state copies work across page boundaries, a
 * budget below one page is refused, and a finetuning run with a paged optimizer ends with the same bits as
 * one without. */
#include <stdint.h>
#include <string.h>

#include "tests/check.h"
#include "core/base/common.h"
#include "core/base/rng.h"
#include "core/model/model.h"
#include "core/model/optim.h"
#include "core/model/optim_paged.h"
#include "train/finetune.h"
#include "train/train.h"

#define N 100003  /* not a multiple of the page */
#define PAGE 4096 /* bytes of m + v per page: 512 elements */
#define PAGE_ELEMS (PAGE / 8)
#define N_PAGES ((N + PAGE_ELEMS - 1) / PAGE_ELEMS)

static void fill(float *x, size_t n, uint64_t seed, float scale) {
    rng_state r;
    rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++)
        x[i] = scale * (float)rng_normal(&r);
}

/* Runs `steps` AdamW steps with a fresh gradient each step; plain memory when resident_pages == 0. */
static int run(int resident_pages, int steps, float *params, float *m_out, float *v_out,
               optim_paging_stats *stats) {
    static float grads[N];
    optim_adamw o;
    qlab_status st;
    if (resident_pages == 0) {
        st = optim_adamw_init(&o, N, OPTIM_STATE_HOST);
    } else {
        optim_paging paging = {(size_t)resident_pages * PAGE, PAGE, NULL};
        st = optim_adamw_init_paged(&o, N, &paging);
    }
    if (st != QLAB_OK) {
        fprintf(stderr, "%s\n", qlab_last_error());
        return 0;
    }
    fill(params, N, 1, 0.5f);
    optim_adamw_hyper h = {1e-2f, 0.9f, 0.999f, 1e-8f, 0.1f};
    int ok = 1;
    for (int s = 0; s < steps && ok; s++) {
        fill(grads, N, 100 + (uint64_t)s, 1.0f);
        ok = optim_adamw_step(&o, params, grads, &h) == QLAB_OK;
    }
    ok = ok && optim_adamw_state_copy(&o, 0, N, m_out, v_out, 0) == QLAB_OK;
    if (stats) *stats = o.pager ? optim_pager_stats(o.pager) : (optim_paging_stats){0};
    optim_adamw_free(&o);
    return ok;
}

static float p_ref[N], m_ref[N], v_ref[N], p_pg[N], m_pg[N], v_pg[N];

static void test_bit_identical(void) {
    const int steps = 4;
    CHECK(run(0, steps, p_ref, m_ref, v_ref, NULL));
    const int budgets[4] = {1, 3, 50, N_PAGES + 5};
    for (int b = 0; b < 4; b++) {
        optim_paging_stats s;
        CHECK(run(budgets[b], steps, p_pg, m_pg, v_pg, &s));
        CHECKF(!memcmp(p_ref, p_pg, sizeof p_ref) && !memcmp(m_ref, m_pg, sizeof m_ref) &&
                   !memcmp(v_ref, v_pg, sizeof v_ref),
               "%d resident pages: paged AdamW differs from plain AdamW", budgets[b]);
        int k = budgets[b] < N_PAGES ? budgets[b] : N_PAGES;
        CHECK(s.pages == N_PAGES && s.resident_slots == k);
        if (k < N_PAGES) {
            /* The first sweep zero-fills every page (no reads) and writes out all but the k that end
             * resident; each later sweep keeps the first k - 1 pages and moves the other N_PAGES - (k - 1)
             * through the last slot, each read in and written out once. The final state copy is one more
             * sweep. */
            int64_t sweeps = steps + 1, moved = N_PAGES - (k - 1);
            CHECKF(s.faults == N_PAGES + (sweeps - 1) * moved, "faults %lld", (long long)s.faults);
            CHECKF(s.pages_in == (sweeps - 1) * moved, "pages in %lld", (long long)s.pages_in);
            CHECKF(s.pages_out == (N_PAGES - k) + (sweeps - 1) * moved, "pages out %lld",
                   (long long)s.pages_out);
            CHECK(s.bytes_in == (uint64_t)s.pages_in * PAGE && s.bytes_out == (uint64_t)s.pages_out * PAGE);
        } else {
            CHECK(s.pages_in == 0 && s.pages_out == 0 && s.faults == N_PAGES);
        }
    }
}

static void test_ranges_and_copies(void) {
    /* Updates on uneven groups spanning page boundaries equal one whole update. */
    static float g[N], p1[N], p2[N], m1[N], v1[N], m2[N], v2[N];
    fill(g, N, 5, 1.0f);
    fill(p1, N, 6, 1.0f);
    memcpy(p2, p1, sizeof p1);
    optim_adamw a, b;
    optim_paging paging = {2 * PAGE, PAGE, NULL};
    CHECK(optim_adamw_init(&a, N, OPTIM_STATE_HOST) == QLAB_OK);
    CHECK(optim_adamw_init_paged(&b, N, &paging) == QLAB_OK);
    optim_adamw_hyper h = {3e-3f, 0.9f, 0.95f, 1e-8f, 0.0f};
    CHECK(optim_adamw_update_range(&a, p1, g, 0, N, &h, 1) == QLAB_OK);
    const size_t cuts[] = {0, 7, 511, 513, 4000, 77777, N};
    for (int i = 0; i + 1 < (int)(sizeof cuts / sizeof cuts[0]); i++)
        CHECK(optim_adamw_update_range(&b, p2 + cuts[i], g + cuts[i], cuts[i], cuts[i + 1] - cuts[i], &h,
                                       1) == QLAB_OK);
    CHECK(!memcmp(p1, p2, sizeof p1));
    CHECK(optim_adamw_state_copy(&a, 0, N, m1, v1, 0) == QLAB_OK);
    CHECK(optim_adamw_state_copy(&b, 0, N, m2, v2, 0) == QLAB_OK);
    CHECK(!memcmp(m1, m2, sizeof m1) && !memcmp(v1, v2, sizeof v1));
    /* Writing moments into the paged state (a resumed run) and reading them back. */
    fill(m1, N, 8, 1.0f);
    fill(v1, N, 9, 1.0f);
    CHECK(optim_adamw_state_copy(&b, 0, N, m1, v1, 1) == QLAB_OK);
    CHECK(optim_adamw_state_copy(&b, 0, N, m2, v2, 0) == QLAB_OK);
    CHECK(!memcmp(m1, m2, sizeof m1) && !memcmp(v1, v2, sizeof v1));
    /* Out-of-range requests are refused, not clipped. */
    CHECK(optim_adamw_update_range(&b, p2, g, N - 3, 4, &h, 1) == QLAB_ERR_ARG);
    CHECK(optim_adamw_state_copy(&a, N, 1, m1, v1, 0) == QLAB_ERR_ARG);
    optim_adamw_free(&a);
    optim_adamw_free(&b);
    /* A budget below one page, or a page that is not a multiple of 64 bytes. */
    optim_paging tiny_budget = {PAGE - 1, PAGE, NULL}, odd_page = {PAGE * 4, 100, NULL};
    CHECK(optim_adamw_init_paged(&a, N, &tiny_budget) == QLAB_ERR_ARG &&
          strstr(qlab_last_error(), "below one page"));
    CHECK(optim_adamw_init_paged(&a, N, &odd_page) == QLAB_ERR_ARG);
    optim_paging bad_dir = {PAGE, PAGE, "/nonexistent/dir"};
    CHECK(optim_adamw_init_paged(&a, N, &bad_dir) == QLAB_ERR_IO &&
          strstr(qlab_last_error(), "/nonexistent"));
}

/* Full finetuning of a tiny model: paged moments (one 4 KiB page resident) end in the same bits. */
static void test_finetune_paged(void) {
    static const model_config cfg = {.dim = 32,
                                     .hidden_dim = 64,
                                     .n_layers = 2,
                                     .n_heads = 4,
                                     .n_kv_heads = 2,
                                     .vocab_size = 32,
                                     .seq_len = 16,
                                     .norm_eps = 1e-5f,
                                     .rope_theta = 10000.0f,
                                     .shared_classifier = 1};
    enum { ROWS = 16, LEN = 16 };
    static int tokens[ROWS * LEN], targets[ROWS * LEN];
    rng_state r;
    rng_seed(&r, 3);
    for (int i = 0; i < ROWS * LEN; i++)
        tokens[i] = (int)rng_below(&r, 32);
    for (int i = 0; i < ROWS * LEN; i++)
        targets[i] = (i % LEN) >= 4 ? (tokens[i] + 1) % 32 : -1;
    finetune_rows rows = {tokens, targets, ROWS, LEN};
    float *final[2] = {NULL, NULL};
    size_t n = 0;
    for (int paged = 0; paged < 2; paged++) {
        model *m = NULL;
        if (model_create(&m, &cfg) != QLAB_OK) {
            CHECKF(0, "%s", qlab_last_error());
            return;
        }
        train_init_params(m, 11);
        finetune_options o;
        finetune_options_default(&o);
        o.mode = FINETUNE_FULL;
        o.batch = 4;
        o.steps = 6;
        o.max_lr = 1e-3;
        o.eval_every = 0;
        o.eval_batch = 8;
        o.state_kind = paged ? OPTIM_STATE_PAGED : OPTIM_STATE_HOST;
        o.optimizer_resident_bytes = paged ? PAGE : 0;
        o.optimizer_page_bytes = PAGE;
        finetune_result res;
        qlab_status st = finetune_run(m, &rows, &rows, &o, NULL, NULL, NULL, &res);
        CHECKF(st == QLAB_OK, "%s", qlab_last_error());
        if (st == QLAB_OK) {
            if (paged) {
                CHECKF(res.paging.pages_out > 0 && res.paging.pages_in > 0 && strstr(res.state_note, "paged"),
                       "no paging happened: %s", res.state_note);
            } else {
                CHECK(res.paging.pages == 0);
            }
            finetune_result_free(&res);
        }
        const float *p = model_get_param_buffer(m, &n);
        final[paged] = malloc(n * sizeof(float));
        if (final[paged]) memcpy(final[paged], p, n * sizeof(float));
        model_free(m);
    }
    CHECK(final[0] && final[1] && !memcmp(final[0], final[1], n * sizeof(float)));
    free(final[0]), free(final[1]);
}

int main(void) {
    test_bit_identical();
    test_ranges_and_copies();
    test_finetune_paged();
    return check_summary();
}
