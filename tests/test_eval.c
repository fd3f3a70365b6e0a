/* Tests of eval/: the two perplexity window protocols, perplexity and KL on a real model, batching
 * invariance, the model x variant x benchmark grid of compare.h against direct evaluations, and greedy
 * generation reproducing llama2.c's published stories260K story. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tests/check.h"
#include "core/model/checkpoint.h"
#include "eval/compare.h"
#include "eval/generate.h"
#include "core/model/model.h"
#include "eval/ppl.h"
#include "core/base/rng.h"
#include "core/text/tokenizer.h"
#include "eval/tokens.h"

/* Every prediction target must be scored exactly once (sliding) and with the promised context. */
static void test_windows(void) {
    int64_t sizes[] = {2, 3, 10, 100, 257, 1000};
    int ctxs[] = {2, 4, 16, 64}, strides_frac[] = {1, 2, 4};
    for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++)
        for (size_t ci = 0; ci < 4; ci++)
            for (size_t fi = 0; fi < 3; fi++) {
                int64_t n = sizes[si];
                ppl_options opt = {
                    .protocol = PPL_SLIDING, .ctx = ctxs[ci], .stride = ctxs[ci] / strides_frac[fi]};
                if (opt.stride < 1) opt.stride = 1;
                int64_t nw = ppl_plan_windows(n, &opt, NULL, 0);
                ppl_window *w = calloc((size_t)nw, sizeof *w);
                ppl_plan_windows(n, &opt, w, nw);
                int *hits = calloc((size_t)n, sizeof(int));
                int context_ok = 1;
                for (int64_t k = 0; k < nw; k++)
                    for (int j = w[k].score_from; j < w[k].len - 1; j++) {
                        hits[w[k].start + j + 1]++;
                        /* at least ctx - stride tokens of context, unless the target is that early */
                        int64_t target = w[k].start + j + 1;
                        if (j + 1 < opt.ctx - opt.stride && target >= opt.ctx - opt.stride) context_ok = 0;
                    }
                int once = hits[0] == 0;
                for (int64_t t = 1; t < n; t++)
                    once &= hits[t] == 1;
                CHECKF(once, "sliding n=%lld ctx=%d stride=%d: a target scored %s", (long long)n, opt.ctx,
                       opt.stride, "not exactly once");
                CHECKF(context_ok, "sliding n=%lld ctx=%d stride=%d: too little context", (long long)n,
                       opt.ctx, opt.stride);
                free(hits);
                free(w);
            }
    /* --ctx N --stride N over N tokens scores all N-1 predictions in one window. */
    ppl_options same = {.protocol = PPL_SLIDING, .ctx = 64, .stride = 64};
    ppl_window w1[2];
    CHECK(ppl_plan_windows(64, &same, w1, 2) == 1);
    CHECK(w1[0].start == 0 && w1[0].len == 64 && w1[0].score_from == 0);
    /* Non-overlapping: floor(n/ctx) windows, each scoring ctx/2 - 1 predictions of its second half. */
    ppl_options non = {.protocol = PPL_NONOVERLAP, .ctx = 16};
    ppl_window w2[8];
    CHECK(ppl_plan_windows(100, &non, w2, 8) == 6);
    CHECK(w2[5].start == 80 && w2[5].score_from == 8 && w2[5].len == 16);
}

static const char *expected_story =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, "
    "she saw a big, red ball. She wanted to play with it, but it was too high.\n"
    "Lily's mom said, \"Lily, let's go to the park.\" Lily was sad and didn't know what to do. She said, \"I "
    "want to play with your ball, but I can't find it.\"\n"
    "Lily was sad and didn't know what to do. She said, \"I'm sorry, Lily. I didn't know what to do.\"\n"
    "Lily didn't want to help her mom, so she said, \"I'm sorry, mom. I didn't know what to do.\" Her mom "
    "said, \"Don't worry, Lily. We can help you.";

static void test_real_model(void) {
    const char *bin = shared_data_path("models/stories260K.bin");
    const char *tok_path = shared_data_path("models/tok512.bin");
    const char *text = shared_data_path("eval/tinystories_sample.txt");
    if (!bin || !tok_path || !text) {
        SKIP("../shared/data (stories260K.bin, tok512.bin, tinystories_sample.txt) not present");
        return;
    }
    model *m = NULL, *q = NULL;
    tokenizer *tok = NULL;
    CHECK(checkpoint_load(bin, &m) == QLAB_OK);
    CHECK(checkpoint_load(bin, &q) == QLAB_OK);
    CHECK(tokenizer_load(tok_path, &tok) == QLAB_OK);
    if (!m || !q || !tok) return;

    /* Greedy generation from BOS for 256 steps, as `run stories260K.bin -z tok512.bin -t 0` in
     * llama2.c's doc/stories260K.md, must give exactly the published story. */
    int prompt = tokenizer_bos_id(tok), seq[257], n_out = 0;
    generate_options g = {.temperature = 0,
                          .top_p = 0.9f,
                          .seed = 1,
                          .max_tokens = 257,
                          .stop_id_a = tokenizer_bos_id(tok),
                          .stop_id_b = tokenizer_eos_id(tok)};
    CHECK(generate(m, &prompt, 1, &g, seq, &n_out, NULL, NULL) == QLAB_OK);
    char *story = NULL;
    size_t story_len = 0;
    CHECK(tokenizer_decode(tok, seq, (size_t)n_out, &story, &story_len) == QLAB_OK);
    CHECKF(story && strcmp(story, expected_story) == 0, "greedy story differs:\n%s",
           story ? story : "(null)");
    free(story);

    int *ids = NULL;
    int64_t n = 0;
    CHECK(eval_load_tokens(text, NULL, tok_path, &ids, &n) == QLAB_OK);
    CHECK(n > 1000);
    /* fp32 against itself: KL exactly 0, full agreement. Batch 1 and batch 8 agree closely but not
     * bit for bit: OpenBLAS blocks the GEMM differently for different row counts, so sums round
     * differently (~1e-7 relative per logit). The same batch size is bit-identical (checked below). */
    ppl_options opt = {.protocol = PPL_NONOVERLAP, .ctx = 128, .batch = 1};
    ppl_result r1, r8, rq, rs;
    CHECK(ppl_evaluate(m, m, ids, n, &opt, &r1) == QLAB_OK);
    opt.batch = 8;
    CHECK(ppl_evaluate(m, NULL, ids, n, &opt, &r8) == QLAB_OK);
    CHECK_NEAR(r1.mean_nll, r8.mean_nll, 1e-5);
    CHECK(r1.kl_mean == 0 && r1.top1_agree == 1.0);
    CHECK(r1.n_scored == (n / 128) * 63);
    /* stories260K reaches validation loss ~1.30 nats on TinyStories (doc/stories260K.md); on this short
     * in-domain sample the NLL must be in the same region. A broken model gives ~6.2 (= ln 512). */
    CHECKF(r1.mean_nll > 0.8 && r1.mean_nll < 2.5, "fp32 mean NLL %.4f", r1.mean_nll);
    CHECK(r1.ppl_lo < r1.ppl && r1.ppl < r1.ppl_hi);
    /* NF4: worse than fp32 but close, with a positive KL. */
    CHECK(model_quantize(q, QUANT_NF4, 64, 1) == QLAB_OK);
    CHECK(ppl_evaluate(q, m, ids, n, &opt, &rq) == QLAB_OK);
    CHECK(rq.kl_mean > 0 && rq.kl_mean < 1.0);
    CHECK(rq.top1_agree > 0.5 && rq.top1_agree < 1.0);
    CHECK(rq.ref_mean_nll == r8.mean_nll);
    CHECK(model_total_bits(q) < model_total_bits(m));
    /* A cached reference gives the live-reference numbers bit for bit, for both protocols. */
    ppl_options protocols[2] = {opt, {.protocol = PPL_SLIDING, .ctx = 128, .stride = 48}};
    for (int p = 0; p < 2; p++) {
        ppl_reference cache;
        ppl_result live, cached;
        CHECK(ppl_evaluate(q, m, ids, n, &protocols[p], &live) == QLAB_OK);
        CHECK(ppl_reference_compute(m, ids, n, &protocols[p], &cache) == QLAB_OK);
        CHECK(ppl_reference_bytes(m, n, &protocols[p]) == (size_t)cache.n_scored * 512 * sizeof(float));
        CHECK(ppl_evaluate_cached(q, &cache, ids, n, &protocols[p], &cached) == QLAB_OK);
        CHECK(cached.has_reference && cached.n_scored == live.n_scored);
        CHECK(memcmp(&cached.mean_nll, &live.mean_nll, sizeof(double)) == 0);
        CHECK(memcmp(&cached.kl_mean, &live.kl_mean, sizeof(double)) == 0);
        CHECK(memcmp(&cached.kl_p99, &live.kl_p99, sizeof(double)) == 0);
        CHECK(memcmp(&cached.top1_agree, &live.top1_agree, sizeof(double)) == 0);
        CHECK(memcmp(&cached.dprob_correct, &live.dprob_correct, sizeof(double)) == 0);
        CHECK(memcmp(&cached.ref_mean_nll, &live.ref_mean_nll, sizeof(double)) == 0);
        /* The reference's own row from the cache: its NLL is the one the cached comparison reports for the
         * reference (the same logits, the same scoring), and the plain evaluation's up to rounding. */
        ppl_result self, plain;
        CHECK(ppl_evaluate_reference(&cache, model_get_config(m), ids, n, &protocols[p], &self) == QLAB_OK);
        CHECK(ppl_evaluate(m, NULL, ids, n, &protocols[p], &plain) == QLAB_OK);
        CHECK(self.n_scored == live.n_scored && !self.has_reference);
        CHECK(memcmp(&self.mean_nll, &cached.ref_mean_nll, sizeof(double)) == 0);
        CHECK_NEAR(self.mean_nll, plain.mean_nll, 1e-6 * plain.mean_nll);
        CHECK_NEAR(self.ppl, exp(self.mean_nll), 1e-12 * self.ppl);
        /* A cache made for other options is refused, not misread. */
        CHECK(ppl_evaluate_cached(q, &cache, ids, n, &protocols[1 - p], &cached) == QLAB_ERR_ARG);
        CHECK(ppl_evaluate_reference(&cache, model_get_config(m), ids, n, &protocols[1 - p], &self) ==
              QLAB_ERR_ARG);
        ppl_reference_free(&cache);
    }
    /* The sliding protocol with ctx == stride == n scores n-1 predictions. */
    ppl_options s = {.protocol = PPL_SLIDING, .ctx = 256, .stride = 256, .max_tokens = 256};
    CHECK(ppl_evaluate(m, NULL, ids, n, &s, &rs) == QLAB_OK);
    CHECK(rs.n_scored == 255);
    /* Determinism: the same evaluation twice gives the same bits. */
    ppl_result again;
    CHECK(ppl_evaluate(q, m, ids, n, &opt, &again) == QLAB_OK);
    CHECK(memcmp(&again.mean_nll, &rq.mean_nll, sizeof(double)) == 0 && again.kl_mean == rq.kl_mean);
    /* Bad options are refused with a message. */
    ppl_options bad = {.protocol = PPL_SLIDING, .ctx = 100000, .stride = 1};
    CHECK(ppl_evaluate(m, NULL, ids, n, &bad, &rs) == QLAB_ERR_ARG);
    bad.ctx = 64;
    bad.stride = 65;
    CHECK(ppl_evaluate(m, NULL, ids, n, &bad, &rs) == QLAB_ERR_ARG);
    int oov[4] = {1, 2, 600, 3};
    ppl_options tiny = {.protocol = PPL_SLIDING, .ctx = 4, .stride = 4};
    CHECK(ppl_evaluate(m, NULL, oov, 4, &tiny, &rs) == QLAB_ERR_ARG);
    CHECK(strstr(qlab_last_error(), "600") != NULL);
    free(ids);
    tokenizer_free(tok);
    model_free(m);
    model_free(q);
}

static int same_double(double a, double b) {
    return memcmp(&a, &b, sizeof a) == 0;
}

/* compare_run against evaluating each quantized model by hand with a live fp32 reference: the same
 * numbers bit for bit, in the documented row order, with or without the cached reference. */
static void test_compare(void) {
    const char *bin = shared_data_path("models/stories260K.bin");
    const char *tok_path = shared_data_path("models/tok512.bin");
    const char *text = shared_data_path("eval/tinystories_sample.txt");
    if (!bin || !tok_path || !text) {
        SKIP("../shared/data (stories260K.bin, tok512.bin, tinystories_sample.txt) not present");
        return;
    }
    compare_model models[1] = {{"stories260K", bin, tok_path}};
    compare_variant variants[2] = {{QUANT_NF4, 64, 1}, {QUANT_INT4, 64, 0}};
    compare_benchmark benchmarks[2] = {
        {"nonoverlap", text, PPL_NONOVERLAP, 100000, 0, 1024,
         NULL},                                           /* ctx above seq_len 512: refused below */
        {"sliding", text, PPL_SLIDING, 64, 0, 512, NULL}, /* stride 0 = ctx / 2 */
    };
    ppl_options o0 = compare_benchmark_options(&benchmarks[0], 512),
                o1 = compare_benchmark_options(&benchmarks[1], 512);
    CHECK(o0.ctx == 512 && o0.max_tokens == 1024 && o0.quiet);
    /* A ctx above the model's context is refused (as qlab ppl --ctx is), naming the benchmark and key. */
    compare_results refused = {0};
    compare_options refuse_opt = {.label = "test_compare"};
    CHECK(compare_run(models, 1, variants, 2, benchmarks, 2, &refuse_opt, &refused) == QLAB_ERR_ARG);
    CHECKF(strstr(qlab_last_error(), "benchmarks.nonoverlap: key 'ctx' is 100000") &&
               strstr(qlab_last_error(), "context of 512"),
           "%s", qlab_last_error());
    compare_results_free(&refused);
    benchmarks[0].ctx = 512;
    CHECK(o1.ctx == 64 && o1.stride == 32 && o1.protocol == PPL_SLIDING);
    char label[32];
    compare_variant_label(&variants[0], label, sizeof label);
    CHECK(!strcmp(label, "nf4+dq"));
    compare_variant_label(NULL, label, sizeof label);
    CHECK(!strcmp(label, "fp32"));

    compare_results cached = {0}, live = {0};
    compare_options with_cache = {.label = "test_compare"}, no_cache = {.reference_budget = 1};
    CHECK(compare_run(models, 1, variants, 2, benchmarks, 2, &with_cache, &cached) == QLAB_OK);
    CHECK(compare_run(models, 1, variants, 2, benchmarks, 2, &no_cache, &live) == QLAB_OK);
    CHECK(cached.n_rows == 6 && live.n_rows == 6);
    int *ids = NULL;
    int64_t n = 0;
    model *ref = NULL, *q = NULL;
    CHECK(eval_load_tokens(text, NULL, tok_path, &ids, &n) == QLAB_OK);
    CHECK(checkpoint_load(bin, &ref) == QLAB_OK);
    if (cached.n_rows != 6 || live.n_rows != 6 || !ids || !ref) goto done;
    CHECK(cached.params[0] == (int64_t)model_num_params(model_get_config(ref)));
    for (int i = 0; i < 6; i++) {
        const compare_row *c = &cached.rows[i], *l = &live.rows[i];
        int v = i / 2 - 1, b = i % 2; /* fp32 first, then each variant over the benchmarks */
        CHECKF(c->model == 0 && c->variant == v && c->benchmark == b, "row %d is (%d, %d, %d)", i, c->model,
               c->variant, c->benchmark);
        ppl_options opt = b ? o1 : o0;
        ppl_result direct;
        if (v >= 0) {
            CHECK(checkpoint_load(bin, &q) == QLAB_OK);
            CHECK(q && model_quantize(q, variants[v].dtype, 64, variants[v].double_quant) == QLAB_OK);
            CHECK(q && ppl_evaluate(q, ref, ids, n, &opt, &direct) == QLAB_OK);
            CHECK(q && same_double(c->total_bits, model_total_bits(q)));
            model_free(q);
            q = NULL;
        } else {
            CHECK(ppl_evaluate(ref, NULL, ids, n, &opt, &direct) == QLAB_OK);
            CHECK(c->bits_projections == 32.0 && same_double(c->total_bits, model_total_bits(ref)));
            CHECK(c->res.has_reference && c->res.kl_mean == 0 && c->res.kl_max == 0 &&
                  c->res.top1_agree == 1 && c->res.dprob_correct == 0);
        }
        CHECKF(same_double(c->res.mean_nll, direct.mean_nll) && same_double(l->res.mean_nll, direct.mean_nll),
               "row %d: mean NLL %.17g / %.17g, direct %.17g", i, c->res.mean_nll, l->res.mean_nll,
               direct.mean_nll);
        CHECK(c->res.n_scored == direct.n_scored && c->res.ctx == direct.ctx &&
              c->res.stride == direct.stride);
        if (v >= 0) {
            CHECK(same_double(c->res.kl_mean, direct.kl_mean) && same_double(l->res.kl_mean, direct.kl_mean));
            CHECK(same_double(c->res.kl_p99, direct.kl_p99) &&
                  same_double(c->res.top1_agree, direct.top1_agree));
            CHECK(same_double(c->res.dprob_correct, direct.dprob_correct));
            CHECK(c->res.kl_mean > 0 && c->res.top1_agree < 1);
        }
    }
    /* NF4 + DQ stores ~4.127 bits per projection weight, Int4 at block 64 4.5 (fp32 absmax per block). */
    CHECKF(cached.rows[2].bits_projections > 4.1 && cached.rows[2].bits_projections < 4.2,
           "nf4+dq: %.4f bits", cached.rows[2].bits_projections);
    CHECKF(fabs(cached.rows[4].bits_projections - 4.5) < 0.01, "int4: %.4f bits",
           cached.rows[4].bits_projections);
    /* A missing benchmark text fails naming the model and the benchmark, and leaves no rows. */
    compare_benchmark absent = {"absent", "/nonexistent/qlab_text.txt", PPL_NONOVERLAP, 64, 0, 0, NULL};
    compare_results none;
    CHECK(compare_run(models, 1, variants, 1, &absent, 1, NULL, &none) != QLAB_OK);
    CHECK(none.rows == NULL && none.n_rows == 0);
    CHECK(strstr(qlab_last_error(), "stories260K") && strstr(qlab_last_error(), "absent"));
done:
    free(ids);
    model_free(ref);
    compare_results_free(&cached);
    compare_results_free(&live);
}

static void test_sampling(void) {
    /* Top-p keeps only the smallest set of tokens whose probability exceeds p. */
    rng_state r;
    rng_seed(&r, 3);
    generate_options o = {.temperature = 1.0f, .top_p = 0.5f};
    int counts[4] = {0};
    for (int i = 0; i < 2000; i++) {
        float logits[4] = {logf(0.6f), logf(0.3f), logf(0.05f), logf(0.05f)};
        counts[generate_sample(logits, 4, &o, &r)]++;
    }
    CHECK(counts[0] == 2000); /* 0.6 > 0.5: only the top token survives */
    o.top_p = 1.0f;
    memset(counts, 0, sizeof counts);
    for (int i = 0; i < 20000; i++) {
        float logits[4] = {logf(0.6f), logf(0.3f), logf(0.05f), logf(0.05f)};
        counts[generate_sample(logits, 4, &o, &r)]++;
    }
    /* Binomial standard deviation for p=0.6, n=20000 is ~69 draws; 400 is > 5 sigma. */
    CHECK(abs(counts[0] - 12000) < 400 && counts[2] > 0 && counts[3] > 0);
    float greedy[3] = {0.1f, 2.0f, 1.9f};
    o.temperature = 0;
    CHECK(generate_sample(greedy, 3, &o, &r) == 1);
}

int main(void) {
    test_windows();
    test_sampling();
    test_real_model();
    test_compare();
    return check_summary();
}
