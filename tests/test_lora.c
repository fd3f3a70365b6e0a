/* Tests of the LoRA adapters (core/model/lora.h): finite-difference gradients of the op alone and through the
 * whole tiny model (fp32 frozen base and NF4 base), B = 0 leaving the logits bit-identical, merged
 * weights matching the adapter path, no gradient reaching a frozen base, a few AdamW steps lowering the
 * loss, save/load round trips and malformed files, and determinism. */
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "tests/check.h"
#include "core/model/checkpoint.h"
#include "core/base/common.h"
#include "core/model/lora.h"
#include "core/model/model.h"
#include "core/model/optim.h"
#include "core/base/rng.h"
#include "core/formats/safetensors.h"
#include "core/text/tokenizer.h"

static rng_state rng;

static model_config tiny_config(int dim, int hidden_dim) {
    model_config c = {.dim = dim,
                      .hidden_dim = hidden_dim,
                      .n_layers = 2,
                      .n_heads = 4,
                      .n_kv_heads = 2,
                      .vocab_size = 32,
                      .seq_len = 16,
                      .norm_eps = 1e-5f,
                      .rope_theta = 10000.0f,
                      .shared_classifier = 0};
    return c;
}

/* Random weights of a plausible scale: matrices N(0, 1/in), embeddings N(0,1), norm weights near 1. */
static model *make_model(model_config c, int quantize) {
    model *m = NULL;
    qlab_status st = model_create(&m, &c);
    CHECKF(st == QLAB_OK, "model_create: %s", qlab_last_error());
    if (st != QLAB_OK) exit(check_summary());
    for (int g = 0; g < MODEL_GROUP_COUNT; g++) {
        model_param_group pg = model_get_param_group(m, (model_group)g);
        float *p = model_get_param_buffer(m, NULL) + pg.offset;
        int is_norm = g == MODEL_GROUP_RMS_ATT || g == MODEL_GROUP_RMS_FFN || g == MODEL_GROUP_RMS_FINAL;
        double sd =
            g == MODEL_GROUP_TOKEN_EMBEDDING ? 1.0 : 1.0 / sqrt(g == MODEL_GROUP_W2 ? c.hidden_dim : c.dim);
        for (size_t i = 0; i < pg.count; i++)
            p[i] = is_norm ? (float)(1.0 + 0.1 * rng_normal(&rng)) : (float)(sd * rng_normal(&rng));
    }
    if (quantize) {
        st = model_quantize(m, QUANT_NF4, 64, 1);
        CHECKF(st == QLAB_OK, "model_quantize: %s", qlab_last_error());
        if (st != QLAB_OK) exit(check_summary());
    }
    return m;
}

static lora_set *make_lora(const model_config *mc, unsigned targets, int rank, float alpha, float dropout,
                           uint64_t seed) {
    lora_config lc = {.targets = targets, .rank = rank, .alpha = alpha, .dropout = dropout, .seed = seed};
    lora_set *l = NULL;
    qlab_status st = lora_create(&l, mc, &lc);
    CHECKF(st == QLAB_OK, "lora_create: %s", qlab_last_error());
    if (st != QLAB_OK) exit(check_summary());
    return l;
}

/* B is zero after init, which would make dA vanish; gradient tests need a generic point. */
static void randomize_b(lora_set *l, const model_config *mc, double sd) {
    for (int layer = 0; layer < mc->n_layers; layer++)
        for (int p = 0; p < PROJ_COUNT; p++) {
            lora_adapter a;
            if (!lora_get_adapter(l, layer, (model_proj)p, &a)) continue;
            for (size_t i = 0; i < (size_t)a.out_features * a.rank; i++)
                a.B[i] = (float)(sd * rng_normal(&rng));
        }
}

static void random_tokens(int *tokens, int n, int V) {
    for (int i = 0; i < n; i++)
        tokens[i] = (int)rng_below(&rng, (uint64_t)V);
}

/* ---------------------------------------------------------------- configuration and initialisation */

static void test_config_and_init(void) {
    unsigned t;
    CHECK(lora_parse_targets("all", &t) == QLAB_OK && t == LORA_TARGETS_ALL && t == 0x7f);
    CHECK(lora_parse_targets("attention", &t) == QLAB_OK && t == 0x0f);
    CHECK(lora_parse_targets("qv", &t) == QLAB_OK && t == (LORA_TARGET(PROJ_Q) | LORA_TARGET(PROJ_V)));
    CHECK(lora_parse_targets("q_proj,down_proj,up", &t) == QLAB_OK &&
          t == (LORA_TARGET(PROJ_Q) | LORA_TARGET(PROJ_DOWN) | LORA_TARGET(PROJ_UP)));
    CHECK(lora_parse_targets("q_proj,lm_head", &t) == QLAB_ERR_ARG && strstr(qlab_last_error(), "'lm_head'"));
    CHECK(lora_parse_targets("", &t) == QLAB_ERR_ARG);

    model_config mc = tiny_config(16, 40); /* kv_dim = 2 * 4 = 8 */
    lora_config bad = {.targets = LORA_TARGETS_ALL, .rank = 0, .alpha = 16, .dropout = 0, .seed = 1};
    lora_set *l = NULL;
    CHECK(lora_create(&l, &mc, &bad) == QLAB_ERR_ARG && l == NULL && strstr(qlab_last_error(), "rank 0"));
    bad.rank = 4, bad.dropout = 1.0f;
    CHECK(lora_create(&l, &mc, &bad) == QLAB_ERR_ARG && strstr(qlab_last_error(), "dropout"));
    bad.dropout = 0, bad.targets = 0;
    CHECK(lora_create(&l, &mc, &bad) == QLAB_ERR_ARG);

    int r = 4;
    l = make_lora(&mc, LORA_TARGETS_ALL, r, 16.0f, 0.1f, 7);
    /* per layer: q (16+16), k (16+8), v (16+8), o (16+16), gate (16+40), up (16+40), down (40+16) */
    size_t per_layer = (size_t)r * (32 + 24 + 24 + 32 + 56 + 56 + 56);
    CHECK(lora_num_params(l) == 2 * per_layer && lora_param_bytes(l) == 4 * 2 * per_layer);
    CHECK(lora_scale(l) == 4.0f);
    lora_adapter a;
    CHECK(lora_get_adapter(l, 1, PROJ_DOWN, &a) && a.in_features == 40 && a.out_features == 16 &&
          a.rank == r);
    CHECK(!lora_get_adapter(l, 2, PROJ_Q, &a) && a.A == NULL);
    /* PEFT's init: B = 0 exactly; A uniform in (-1/sqrt(in), 1/sqrt(in)) and filling it (the largest of
     * r*in >= 64 uniform draws reaches 0.9 of the bound with probability > 0.998). */
    int b_zero = 1, a_inside = 1, a_spread = 1;
    for (int layer = 0; layer < 2; layer++)
        for (int p = 0; p < PROJ_COUNT; p++) {
            CHECK(lora_get_adapter(l, layer, (model_proj)p, &a));
            double bound = 1.0 / sqrt(a.in_features), largest = 0;
            for (int i = 0; i < a.rank * a.in_features; i++) {
                a_inside &= fabs(a.A[i]) < bound;
                largest = fmax(largest, fabs(a.A[i]));
            }
            a_spread &= largest > 0.9 * bound;
            for (int i = 0; i < a.out_features * a.rank; i++)
                b_zero &= a.B[i] == 0.0f;
            CHECK(a.B == a.A + (size_t)a.rank * a.in_features &&
                  a.dA == lora_get_grad_buffer(l, NULL) + a.offset);
        }
    CHECK(b_zero && a_inside && a_spread);
    lora_free(l);

    l = make_lora(&mc, LORA_TARGETS_QV, 8, 16.0f, 0, 7);
    CHECK(lora_num_params(l) == 2 * (size_t)8 * (32 + 24));
    CHECK(lora_get_adapter(l, 0, PROJ_V, &a) && !lora_get_adapter(l, 0, PROJ_K, &a));
    lora_free(l);
}

/* ---------------------------------------------------------------- the op alone */

/* f = sum(out .* w) is linear in each of A, B and inp separately (the dropout mask is fixed by its seed),
 * so a central difference has no truncation error at any step: a large step h = 0.5 leaves only the fp32
 * rounding of out (~1e-7 relative on ~40 O(1) terms, divided by 2h = 1). Tolerance 1e-4 abs + 1e-4 rel. */
static double op_objective(const float *base, const float *inp, const float *A, const float *B,
                           const float *w, float *out, float *hidden, float *dropped, int N, int IC, int OC,
                           int r, float scale, float dropout, uint64_t seed) {
    memcpy(out, base, sizeof(float) * (size_t)N * OC);
    lora_forward(out, hidden, dropped, inp, A, B, N, IC, OC, r, scale, dropout, seed);
    double f = 0;
    for (int i = 0; i < N * OC; i++)
        f += (double)out[i] * w[i];
    return f;
}

static void test_op_gradients(void) {
    enum { N = 6, IC = 10, OC = 7, R = 3 };
    const float scale = 2.5f;
    float inp[N * IC], A[R * IC], B[OC * R], w[N * OC], base[N * OC], out[N * OC], hidden[N * R],
        dropped[N * IC];
    for (int i = 0; i < N * IC; i++)
        inp[i] = (float)rng_normal(&rng);
    for (int i = 0; i < R * IC; i++)
        A[i] = (float)(0.3 * rng_normal(&rng));
    for (int i = 0; i < OC * R; i++)
        B[i] = (float)(0.3 * rng_normal(&rng));
    for (int i = 0; i < N * OC; i++)
        w[i] = (float)rng_normal(&rng), base[i] = (float)rng_normal(&rng);
    float dropouts[2] = {0.0f, 0.4f};
    for (int di = 0; di < 2; di++) {
        float p = dropouts[di];
        uint64_t seed = 1234;
        float dA[R * IC] = {0}, dB[OC * R] = {0}, dinp[N * IC] = {0};
        float scratch[N * R + 2 * N * IC];
        CHECK(lora_scratch_floats(N, IC, R, p) <= sizeof scratch / sizeof scratch[0]);
        op_objective(base, inp, A, B, w, out, hidden, dropped, N, IC, OC, R, scale, p, seed);
        /* The reference output in double, with the mask read back from the dropped plane. */
        double worst_out = 0;
        int dropped_count = 0, mask_ok = 1;
        for (int n = 0; n < N; n++)
            for (int o = 0; o < OC; o++) {
                double y = base[n * OC + o];
                for (int k = 0; k < R; k++) {
                    double h = 0;
                    for (int i = 0; i < IC; i++) {
                        double x = p > 0 ? dropped[n * IC + i] : inp[n * IC + i];
                        h += x * A[k * IC + i];
                    }
                    y += scale * h * B[o * R + k];
                }
                worst_out = fmax(worst_out, fabs(y - out[n * OC + o]));
            }
        if (p > 0)
            for (int i = 0; i < N * IC; i++) {
                dropped_count += dropped[i] == 0.0f;
                mask_ok &= dropped[i] == 0.0f || dropped[i] == inp[i] * (1.0f / (1.0f - p));
            }
        CHECKF(worst_out < 1e-5, "dropout %g: lora_forward vs double reference %.3g", p,
               worst_out); /* fp32 sums of ~30 O(1) terms */
        /* 60 elements at p = 0.4: 24 expected, sd 3.8; [8, 40] is beyond 4 sd either side. */
        if (p > 0)
            CHECKF(mask_ok && dropped_count >= 8 && dropped_count <= 40, "mask: %d of 60 dropped",
                   dropped_count);

        lora_backward(dA, dB, dinp, w, inp, hidden, A, B, N, IC, OC, R, scale, p, seed, scratch);
        float *vars[3] = {A, B, inp}, *grads[3] = {dA, dB, dinp};
        int sizes[3] = {R * IC, OC * R, N * IC};
        const char *names[3] = {"dA", "dB", "dinp"};
        for (int v = 0; v < 3; v++) {
            double worst = 0;
            for (int i = 0; i < sizes[v]; i++) {
                float saved = vars[v][i];
                const double h = 0.5;
                vars[v][i] = (float)(saved + h);
                double fp =
                    op_objective(base, inp, A, B, w, out, hidden, dropped, N, IC, OC, R, scale, p, seed);
                vars[v][i] = (float)(saved - h);
                double fm =
                    op_objective(base, inp, A, B, w, out, hidden, dropped, N, IC, OC, R, scale, p, seed);
                vars[v][i] = saved;
                double numeric = (fp - fm) / (2 * h);
                worst = fmax(worst, fabs(numeric - grads[v][i]) / (1e-4 + 1e-4 * fabs(numeric)));
            }
            CHECKF(worst <= 1.0, "dropout %g: %s off by %.3g tolerances", p, names[v], worst);
            printf("  op dropout %.1f %-4s: worst |numeric - analytic| = %.3g of the tolerance\n", p,
                   names[v], worst);
        }
        /* Backward accumulates; dinp may be NULL. */
        float dA2[R * IC];
        memcpy(dA2, dA, sizeof dA);
        lora_backward(dA, dB, NULL, w, inp, hidden, A, B, N, IC, OC, R, scale, p, seed, scratch);
        int doubled = 1;
        for (int i = 0; i < R * IC; i++)
            doubled &= fabs(dA[i] - 2 * dA2[i]) <= 1e-5 * fabs(dA2[i]) + 1e-7;
        CHECK(doubled);
    }
#ifdef _OPENMP
    /* The mask depends on the seed only, not on the split of rows between threads. */
    enum { NB = 64, ICB = 96 };
    float *x = malloc(sizeof(float) * NB * ICB), *d1 = malloc(sizeof(float) * NB * ICB),
          *d2 = malloc(sizeof(float) * NB * ICB);
    float Ab[ICB] = {0}, Bb[1] = {0}, hb[NB], ob[NB];
    for (int i = 0; i < NB * ICB; i++)
        x[i] = (float)rng_normal(&rng);
    int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    lora_forward(ob, hb, d1, x, Ab, Bb, NB, ICB, 1, 1, 1.0f, 0.3f, 99);
    omp_set_num_threads(threads > 1 ? threads : 2);
    lora_forward(ob, hb, d2, x, Ab, Bb, NB, ICB, 1, 1, 1.0f, 0.3f, 99);
    omp_set_num_threads(threads);
    CHECK(memcmp(d1, d2, sizeof(float) * NB * ICB) == 0);
    lora_forward(ob, hb, d2, x, Ab, Bb, NB, ICB, 1, 1, 1.0f, 0.3f, 100);
    CHECK(memcmp(d1, d2, sizeof(float) * NB * ICB) != 0); /* another seed, another mask */
    free(x), free(d1), free(d2);
#endif
}

/* ---------------------------------------------------------------- through the model */

/* Mean cross-entropy of the model's fp32 logits, formed in double. */
static double loss_double(model *m, const int *tokens, const int *targets, int B, int T) {
    int V = model_get_config(m)->vocab_size;
    float *logits = malloc(sizeof(float) * (size_t)B * T * V);
    model_forward(m, tokens, NULL, B, T, logits, NULL);
    double sum = 0;
    int count = 0;
    for (int n = 0; n < B * T; n++) {
        if (targets[n] < 0) continue;
        const float *z = logits + (size_t)n * V;
        double maxv = z[0], s = 0;
        for (int i = 1; i < V; i++)
            maxv = fmax(maxv, z[i]);
        for (int i = 0; i < V; i++)
            s += exp(z[i] - maxv);
        sum += log(s) + maxv - z[targets[n]];
        count++;
    }
    free(logits);
    return count ? sum / count : 0;
}

/* Checks a gradient array against central differences of the loss: a directional derivative along a
 * random +-1 direction over the whole array and, per adapter, sampled elements of A and B. The loss (~3.5)
 * carries fp32 noise of ~1e-7 relative, so with h = 1e-3 the directional quotient has noise ~2e-4:
 * tolerance 2e-3 abs + 1% rel; single elements use h = 1e-2 (noise ~2e-5, truncation ~h^2): 2e-4 abs +
 * 2% rel. Returns the worst single-element error in units of its tolerance. */
static double check_gradient(model *m, float *params, const float *grads, size_t count, const int *tokens,
                             const int *targets, int B, int T, const size_t *samples, int n_samples,
                             const char *tag) {
    float *saved = malloc(sizeof(float) * count), *u = malloc(sizeof(float) * count);
    memcpy(saved, params, sizeof(float) * count);
    double h = 1e-3, analytic = 0;
    for (size_t i = 0; i < count; i++) {
        u[i] = rng_below(&rng, 2) ? 1.0f : -1.0f;
        analytic += (double)u[i] * grads[i];
    }
    for (size_t i = 0; i < count; i++)
        params[i] = (float)(saved[i] + h * u[i]);
    double lp = loss_double(m, tokens, targets, B, T);
    for (size_t i = 0; i < count; i++)
        params[i] = (float)(saved[i] - h * u[i]);
    double lm = loss_double(m, tokens, targets, B, T);
    memcpy(params, saved, sizeof(float) * count);
    double directional = (lp - lm) / (2 * h), numeric;
    CHECKF(fabs(directional - analytic) <= 2e-3 + 1e-2 * fabs(directional),
           "%s: directional derivative analytic %.7g numeric %.7g", tag, analytic, directional);
    double worst = 0;
    h = 1e-2;
    for (int s = 0; s < n_samples; s++) {
        size_t i = samples[s];
        params[i] = (float)(saved[i] + h);
        lp = loss_double(m, tokens, targets, B, T);
        params[i] = (float)(saved[i] - h);
        lm = loss_double(m, tokens, targets, B, T);
        params[i] = saved[i];
        numeric = (lp - lm) / (2 * h);
        double err = fabs(numeric - grads[i]) / (2e-4 + 2e-2 * fabs(numeric));
        if (err > 1.0) fprintf(stderr, "  %s[%zu]: analytic %.7g numeric %.7g\n", tag, i, grads[i], numeric);
        worst = fmax(worst, err);
    }
    CHECKF(worst <= 1.0, "%s: sampled elements off by up to %.3g tolerances", tag, worst);
    printf("  %s: directional analytic %.7g numeric %.7g; %d elements, worst %.3g of the tolerance\n", tag,
           analytic, directional, n_samples, worst);
    free(saved), free(u);
    return worst;
}

static void test_model_gradients(int quantized) {
    enum { B = 2, T = 8 };
    const char *tag = quantized ? "nf4 base" : "fp32 frozen base";
    model_config mc =
        quantized ? tiny_config(64, 96) : tiny_config(16, 40); /* NF4: whole 64-blocks per row */
    model *m = make_model(mc, quantized);
    lora_set *l = make_lora(&mc, LORA_TARGETS_ALL, 4, 8.0f, 0.0f, 11);
    randomize_b(l, &mc, 0.2);
    qlab_status st = lora_attach(l, m, 1);
    CHECKF(st == QLAB_OK, "lora_attach: %s", qlab_last_error());
    /* The embedding trains too here: its gradient reaches it only through every projection's input
     * gradient (frozen weight + adapter), so it checks dx of the LoRA path inside the model. */
    model_set_trainable(m, MODEL_GROUP_TOKEN_EMBEDDING, 1);
    int tokens[B * T], targets[B * T];
    random_tokens(tokens, B * T, 32);
    random_tokens(targets, B * T, 32);
    targets[5] = -1;
    size_t base_count, n;
    float *base_grads = model_get_grad_buffer(m, &base_count);
    for (size_t i = 0; i < base_count; i++)
        base_grads[i] = 0.25f; /* a sentinel frozen groups must keep */
    model_param_group emb = model_get_param_group(m, MODEL_GROUP_TOKEN_EMBEDDING);
    memset(base_grads + emb.offset, 0, sizeof(float) * emb.count);
    lora_zero_grad(l);
    float loss;
    CHECK(model_forward(m, tokens, targets, B, T, NULL, &loss) == QLAB_OK);
    CHECKF(model_backward(m) == QLAB_OK, "%s", qlab_last_error());
    int sentinel = 1;
    for (size_t i = 0; i < base_count; i++)
        if (i < emb.offset || i >= emb.offset + emb.count) sentinel &= base_grads[i] == 0.25f;
    CHECKF(sentinel, "%s: a frozen base group received a gradient", tag);

    float *params = lora_get_param_buffer(l, &n), *grads = lora_get_grad_buffer(l, NULL);
    /* Samples: two elements of A and two of B of every adapter. */
    size_t samples[2 * PROJ_COUNT * 4];
    int ns = 0;
    for (int layer = 0; layer < 2; layer++)
        for (int p = 0; p < PROJ_COUNT; p++) {
            lora_adapter a;
            lora_get_adapter(l, layer, (model_proj)p, &a);
            size_t na = (size_t)a.rank * a.in_features, nb = (size_t)a.out_features * a.rank;
            for (int k = 0; k < 2; k++)
                samples[ns++] = a.offset + rng_below(&rng, na);
            for (int k = 0; k < 2; k++)
                samples[ns++] = a.offset + na + rng_below(&rng, nb);
        }
    char name[96];
    snprintf(name, sizeof name, "%s: lora dA/dB", tag);
    check_gradient(m, params, grads, n, tokens, targets, B, T, samples, ns, name);
    size_t emb_samples[8];
    for (int k = 0; k < 8; k++)
        emb_samples[k] = (size_t)tokens[k] * mc.dim + rng_below(&rng, (uint64_t)mc.dim);
    snprintf(name, sizeof name, "%s: embedding (dx through W and LoRA)", tag);
    check_gradient(m, model_get_param_buffer(m, NULL) + emb.offset, base_grads + emb.offset, emb.count,
                   tokens, targets, B, T, emb_samples, 8, name);
    lora_detach(m);
    lora_free(l);
    model_free(m);
}

/* ---------------------------------------------------------------- identities */

static void test_identity_and_merge(void) {
    enum { B = 2, T = 8 };
    int tokens[B * T];
    random_tokens(tokens, B * T, 32);
    size_t nl = (size_t)B * T * 32;
    float *base = malloc(sizeof(float) * nl), *adapted = malloc(sizeof(float) * nl),
          *merged = malloc(sizeof(float) * nl);
    for (int quantized = 0; quantized < 2; quantized++) {
        model_config mc = tiny_config(64, 96);
        model *m = make_model(mc, quantized);
        model_forward(m, tokens, NULL, B, T, base, NULL);
        /* B = 0: the adapter adds exact zeros, in training mode with dropout as well. */
        lora_set *l = make_lora(&mc, LORA_TARGETS_ALL, 8, 16.0f, 0.1f, 3);
        CHECK(lora_attach(l, m, 1) == QLAB_OK);
        CHECK(model_forward(m, tokens, NULL, B, T, adapted, NULL) == QLAB_OK);
        CHECKF(memcmp(base, adapted, sizeof(float) * nl) == 0, "%s: B = 0 changed the logits",
               quantized ? "nf4" : "fp32");
        /* Non-zero B changes them (the adapter is really in the path). */
        randomize_b(l, &mc, 0.1);
        lora_set_training(l, 0);
        model_forward(m, tokens, NULL, B, T, adapted, NULL);
        double moved = 0;
        for (size_t i = 0; i < nl; i++)
            moved = fmax(moved, fabs(adapted[i] - base[i]));
        CHECKF(moved > 1e-2, "random B moved the logits by only %.3g", moved);
        if (quantized) {
            CHECK(lora_merge(l, m) == QLAB_ERR_UNSUPPORTED && strstr(qlab_last_error(), "quantized"));
        } else {
            /* Merged fp32 weights W + s B A against the adapter path, dropout off (evaluation mode). The
             * two differ by fp32 reassociation only: ~1e-7 relative per sum, amplified by two layers and
             * the O(1-3) logits to ~1e-6; tolerance 1e-4. */
            model *mm = NULL;
            CHECK(model_create(&mm, &mc) == QLAB_OK);
            memcpy(model_get_param_buffer(mm, NULL), model_get_param_buffer(m, NULL),
                   sizeof(float) * model_num_params(&mc));
            CHECK(lora_merge(l, mm) == QLAB_OK);
            model_forward(mm, tokens, NULL, B, T, merged, NULL);
            double worst = 0;
            for (size_t i = 0; i < nl; i++)
                worst = fmax(worst, fabs(merged[i] - adapted[i]));
            CHECKF(worst < 1e-4, "merged vs adapter logits differ by %.3g", worst);
            printf("  merge: |merged - adapted| logits max %.3g (adapter moved them by %.3g)\n", worst,
                   moved);
            model_free(mm);
        }
        /* Detached: the base model again, bit for bit. */
        lora_detach(m);
        model_forward(m, tokens, NULL, B, T, adapted, NULL);
        CHECK(memcmp(base, adapted, sizeof(float) * nl) == 0);
        lora_free(l);
        model_free(m);
    }
    free(base), free(adapted), free(merged);
}

/* ---------------------------------------------------------------- training */

/* Steps of AdamW on the adapters only (global norm clipped at 1). Returns the last step's loss. */
static float train(model *m, lora_set *l, optim_adamw *o, const int *tokens, const int *targets, int B, int T,
                   int steps, float lr, float *first_loss) {
    size_t n;
    float *params = lora_get_param_buffer(l, &n), *grads = lora_get_grad_buffer(l, NULL), loss = 0;
    optim_adamw_hyper hyper = {.lr = lr, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.0f};
    for (int s = 0; s < steps; s++) {
        lora_zero_grad(l);
        if (model_forward(m, tokens, targets, B, T, NULL, &loss) != QLAB_OK || model_backward(m) != QLAB_OK) {
            CHECKF(0, "training step %d: %s", s, qlab_last_error());
            return NAN;
        }
        if (s == 0 && first_loss) *first_loss = loss;
        optim_clip_grad_norm(grads, n, 1.0);
        optim_adamw_step(o, params, grads, &hyper);
    }
    return loss;
}

/* A period-5 token cycle: next-token prediction is learnable only by reading the context, which the
 * frozen random base cannot do; the adapters must learn it. */
static void cycle_batch(int *tokens, int *targets, int B, int T) {
    static const int cycle[5] = {3, 17, 9, 25, 4};
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            tokens[b * T + t] = cycle[(b + t) % 5];
            targets[b * T + t] = cycle[(b + t + 1) % 5];
        }
}

static void test_training_save_load_determinism(void) {
    enum { B = 4, T = 16, STEPS = 30 };
    model_config mc = tiny_config(64, 96);
    model *m = make_model(mc, 1);
    int tokens[B * T], targets[B * T];
    cycle_batch(tokens, targets, B, T);
    size_t base_count;
    float *base_params = model_get_param_buffer(m, &base_count);
    float *base_copy = malloc(sizeof(float) * base_count);
    memcpy(base_copy, base_params, sizeof(float) * base_count);
    float *base_grads = model_get_grad_buffer(m, NULL);
    memset(base_grads, 0, sizeof(float) * base_count);

    float first[2], last[2];
    float *trained[2];
    size_t n = 0;
    for (int run = 0; run < 2; run++) {
        lora_set *l = make_lora(&mc, LORA_TARGETS_ALL, 8, 16.0f, 0.05f, 2024);
        CHECK(lora_attach(l, m, 1) == QLAB_OK);
        optim_adamw o;
        CHECK(optim_adamw_init(&o, lora_num_params(l), OPTIM_STATE_HOST) == QLAB_OK);
        last[run] = train(m, l, &o, tokens, targets, B, T, STEPS, 1e-2f, &first[run]);
        float *p = lora_get_param_buffer(l, &n);
        trained[run] = malloc(sizeof(float) * n);
        memcpy(trained[run], p, sizeof(float) * n);
        optim_adamw_free(&o);
        if (run == 1) {
            /* Save -> load into adapters with another seed: bit-exact, and the same logits. */
            char path[64];
            snprintf(path, sizeof path, "/tmp/qlab_test_lora_%d.safetensors", (int)getpid());
            qlab_status st = lora_save(l, path);
            CHECKF(st == QLAB_OK, "lora_save: %s", qlab_last_error());
            lora_set *l2 = make_lora(&mc, LORA_TARGETS_ALL, 8, 16.0f, 0.05f, 1);
            CHECK(memcmp(lora_get_param_buffer(l2, NULL), p, sizeof(float) * n) != 0);
            st = lora_load(l2, path);
            CHECKF(st == QLAB_OK, "lora_load: %s", qlab_last_error());
            CHECK(memcmp(lora_get_param_buffer(l2, NULL), p, sizeof(float) * n) == 0);
            size_t nl = (size_t)B * T * 32;
            float *z1 = malloc(sizeof(float) * nl), *z2 = malloc(sizeof(float) * nl);
            lora_set_training(l, 0);
            model_forward(m, tokens, NULL, B, T, z1, NULL);
            lora_set_training(l2, 0);
            CHECK(lora_attach(l2, m, 1) == QLAB_OK);
            model_forward(m, tokens, NULL, B, T, z2, NULL);
            CHECK(memcmp(z1, z2, sizeof(float) * nl) == 0);
            free(z1), free(z2);

            /* The file carries PEFT's names and shapes. */
            safetensors_file f;
            if (safetensors_open(&f, path) == QLAB_OK) {
                const safetensors_tensor *t =
                    safetensors_find(&f, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
                CHECK(t && t->ndim == 2 && t->shape[0] == 8 && t->shape[1] == 64 &&
                      t->dtype == SAFETENSORS_F32);
                t = safetensors_find(&f, "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight");
                CHECK(t && t->ndim == 2 && t->shape[0] == 64 && t->shape[1] == 8);
                CHECK(f.n_tensors == 2 * 2 * PROJ_COUNT);
                const char *tm = safetensors_metadata(&f, "target_modules");
                CHECK(tm && !strcmp(tm, "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"));
                safetensors_close(&f);
            } else {
                CHECKF(0, "%s", qlab_last_error());
            }
            /* Mismatched adapters fail with a message and leave the set unchanged. */
            lora_set *other = make_lora(&mc, LORA_TARGETS_ALL, 4, 16.0f, 0, 1);
            float *before = malloc(sizeof(float) * lora_num_params(other));
            memcpy(before, lora_get_param_buffer(other, NULL), sizeof(float) * lora_num_params(other));
            CHECK(lora_load(other, path) == QLAB_ERR_FORMAT && strstr(qlab_last_error(), "expected (4, 64)"));
            CHECK(memcmp(before, lora_get_param_buffer(other, NULL),
                         sizeof(float) * lora_num_params(other)) == 0);
            free(before);
            lora_free(other);
            other = make_lora(&mc, LORA_TARGETS_QV, 8, 16.0f, 0, 1);
            CHECK(lora_load(other, path) == QLAB_ERR_FORMAT &&
                  strstr(qlab_last_error(), "adapters do not have"));
            lora_free(other);
            other = make_lora(&mc, LORA_TARGETS_ALL, 8, 32.0f, 0, 1);
            CHECK(lora_load(other, path) == QLAB_ERR_FORMAT && strstr(qlab_last_error(), "lora_alpha"));
            lora_free(other);
            /* A truncated file is refused by the safetensors reader, not read past its end. */
            char *bytes;
            size_t len;
            if (qlab_read_file(path, &bytes, &len) == QLAB_OK) {
                CHECK(qlab_write_file_atomic(path, bytes, len - 100) == QLAB_OK);
                CHECK(lora_load(l2, path) != QLAB_OK);
                free(bytes);
            }
            unlink(path);
            lora_detach(m);
            lora_free(l2);
        }
        lora_detach(m);
        lora_free(l);
    }
    printf(
        "  training (NF4 base, LoRA r=8 on all projections, dropout 0.05, AdamW lr 1e-2): loss %.4f -> %.4f "
        "after %d steps\n",
        first[0], last[0], STEPS);
    /* A period-5 cycle is fully predictable after the first token of each row; 30 steps must at least
     * halve the loss from its ~ln(32) start (a stub or a broken gradient leaves it near 3.5). */
    CHECKF(last[0] < 0.5f * first[0], "loss %.4f -> %.4f", first[0], last[0]);
    /* Same seed, same data, same thread count: bit-identical losses and adapters (dropout included). */
    CHECK(first[0] == first[1] && last[0] == last[1]);
    CHECK(memcmp(trained[0], trained[1], sizeof(float) * n) == 0);
    /* The frozen base was neither changed nor given a gradient. */
    CHECK(memcmp(base_copy, base_params, sizeof(float) * base_count) == 0);
    int zero = 1;
    for (size_t i = 0; i < base_count; i++)
        zero &= base_grads[i] == 0.0f;
    CHECKF(zero, "the quantized base's gradient buffer was written");
    free(trained[0]), free(trained[1]), free(base_copy);
    model_free(m);
}

/* Different seeds give different adapters; evaluation mode does not advance the dropout masks. */
static void test_seeds_and_modes(void) {
    enum { B = 2, T = 8 };
    model_config mc = tiny_config(16, 40);
    lora_set *a = make_lora(&mc, LORA_TARGETS_ALL, 4, 8.0f, 0.3f, 5),
             *b = make_lora(&mc, LORA_TARGETS_ALL, 4, 8.0f, 0.3f, 5);
    lora_set *c = make_lora(&mc, LORA_TARGETS_ALL, 4, 8.0f, 0.3f, 6);
    size_t n;
    float *pa = lora_get_param_buffer(a, &n);
    CHECK(memcmp(pa, lora_get_param_buffer(b, NULL), sizeof(float) * n) == 0);
    CHECK(memcmp(pa, lora_get_param_buffer(c, NULL), sizeof(float) * n) != 0);
    model *m = make_model(mc, 0);
    randomize_b(a, &mc, 0.3);
    int tokens[B * T];
    random_tokens(tokens, B * T, 32);
    size_t nl = (size_t)B * T * 32;
    float *z[4];
    for (int i = 0; i < 4; i++)
        z[i] = malloc(sizeof(float) * nl);
    CHECK(lora_attach(a, m, 1) == QLAB_OK);
    lora_set_training(a, 0);
    model_forward(m, tokens, NULL, B, T, z[0], NULL);
    model_forward(m, tokens, NULL, B, T, z[1], NULL);
    CHECK(memcmp(z[0], z[1], sizeof(float) * nl) == 0); /* eval: no dropout, same logits */
    lora_set_training(a, 1);
    model_forward(m, tokens, NULL, B, T, z[2], NULL);
    model_forward(m, tokens, NULL, B, T, z[3], NULL);
    CHECK(memcmp(z[2], z[0], sizeof(float) * nl) != 0); /* dropout is applied in training */
    CHECK(memcmp(z[2], z[3], sizeof(float) * nl) != 0); /* and a new mask is drawn at every forward */
    /* A fully frozen base trains the adapters without the model's gradient buffer ever being needed. */
    int targets[B * T];
    random_tokens(targets, B * T, 32);
    lora_zero_grad(a);
    CHECK(model_forward(m, tokens, targets, B, T, NULL, NULL) == QLAB_OK);
    CHECKF(model_backward(m) == QLAB_OK, "%s", qlab_last_error());
    double norm = 0;
    for (size_t i = 0; i < n; i++)
        norm += (double)lora_get_grad_buffer(a, NULL)[i] * lora_get_grad_buffer(a, NULL)[i];
    CHECK(norm > 0);
    /* Adapters resized between a forward and its backward no longer hold that forward's hidden states:
     * the backward refuses, naming the adapter, instead of skipping it. */
    CHECK(model_forward(m, tokens, targets, B, T, NULL, NULL) == QLAB_OK);
    CHECK(lora_reserve(a, 4 * B * T) == QLAB_OK);
    CHECK(model_backward(m) == QLAB_ERR_ARG);
    CHECKF(strstr(qlab_last_error(), "layer 1 down_proj has no saved forward over 16 positions") != NULL,
           "%s", qlab_last_error());
    CHECK(model_forward(m, tokens, targets, B, T, NULL, NULL) == QLAB_OK && model_backward(m) == QLAB_OK);
    lora_detach(m);
    model_free(m);
    /* Adapters made for another shape are refused. */
    model_config other = tiny_config(32, 40);
    m = make_model(other, 0);
    CHECK(lora_attach(a, m, 1) == QLAB_ERR_ARG && strstr(qlab_last_error(), "dim 16"));
    model_free(m);
    for (int i = 0; i < 4; i++)
        free(z[i]);
    lora_free(a), lora_free(b), lora_free(c);
}

/* ---------------------------------------------------------------- a small QLoRA run on real data */

/* Mean loss over fixed held-out windows, evaluation mode (no dropout). */
static double heldout_loss(model *m, const int *ids, const int *starts, int n_windows, int T) {
    double sum = 0;
    for (int w = 0; w < n_windows; w++) {
        float loss = 0;
        model_forward(m, ids + starts[w], ids + starts[w] + 1, 1, T, NULL, &loss);
        sum += loss;
    }
    return sum / n_windows;
}

/* QLoRA in miniature: the pretrained stories260K (TinyStories) with its projections in NF4 + double
 * quantization, LoRA on every projection, finetuned on Tiny Shakespeare (out of domain); the loss on
 * held-out Shakespeare must fall, and the base must get no gradient. */
static void test_stories_qlora(void) {
    const char *model_path = shared_data_path("models/stories260K.bin");
    const char *tok_path = shared_data_path("models/tok512.bin");
    const char *text_path = shared_data_path("eval/tinyshakespeare_input.txt");
    if (!model_path || !tok_path || !text_path) {
        SKIP("stories260K.bin, tok512.bin or tinyshakespeare_input.txt not in ../shared/data");
        return;
    }
    model *m = NULL;
    tokenizer *tok = NULL;
    char *text = NULL;
    size_t len = 0, n_ids = 0;
    int *ids = NULL;
    qlab_status st = checkpoint_load_llama2c(model_path, &m);
    if (st == QLAB_OK) st = tokenizer_load(tok_path, &tok);
    if (st == QLAB_OK) st = qlab_read_file(text_path, &text, &len);
    /* The first 40 KB: about 15k tokens, the last 20% held out. */
    if (st == QLAB_OK) st = tokenizer_encode(tok, text, len < 40000 ? len : 40000, 0, &ids, &n_ids);
    if (st == QLAB_OK) st = model_quantize(m, QUANT_NF4, 64, 1);
    CHECKF(st == QLAB_OK, "stories260K setup: %s", qlab_last_error());
    if (st != QLAB_OK) goto done;
    enum { B = 8, T = 64, STEPS = 60, WINDOWS = 16 };
    size_t split = n_ids * 4 / 5;
    CHECK(split > 2 * T && n_ids - split > (size_t)T + 1);
    int starts[WINDOWS];
    for (int w = 0; w < WINDOWS; w++)
        starts[w] = (int)(split + (size_t)w * (n_ids - split - T - 1) / WINDOWS);
    const model_config *mc = model_get_config(m);
    lora_set *l = make_lora(mc, LORA_TARGETS_ALL, 8, 16.0f, 0.1f, 42);
    CHECK(lora_attach(l, m, 1) == QLAB_OK);
    lora_set_training(l, 0);
    size_t base_count;
    float *base_grads = model_get_grad_buffer(m, &base_count);
    for (size_t i = 0; i < base_count; i++)
        base_grads[i] = 0.25f; /* a sentinel backward must not touch */
    double before = heldout_loss(m, ids, starts, WINDOWS, T);
    optim_adamw o;
    CHECK(optim_adamw_init(&o, lora_num_params(l), OPTIM_STATE_PAGED) == QLAB_OK);
    optim_adamw_hyper hyper = {
        .lr = 3e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.0f};
    int tokens[B * T], targets[B * T];
    rng_state data_rng;
    rng_seed(&data_rng, 7);
    size_t n;
    float *params = lora_get_param_buffer(l, &n), *grads = lora_get_grad_buffer(l, NULL), loss = 0, first = 0;
    lora_set_training(l, 1);
    for (int s = 0; s < STEPS; s++) {
        for (int b = 0; b < B; b++) {
            size_t at = (size_t)rng_below(&data_rng, split - T - 1);
            for (int t = 0; t < T; t++)
                tokens[b * T + t] = ids[at + t], targets[b * T + t] = ids[at + t + 1];
        }
        lora_zero_grad(l);
        if (model_forward(m, tokens, targets, B, T, NULL, &loss) != QLAB_OK || model_backward(m) != QLAB_OK) {
            CHECKF(0, "step %d: %s", s, qlab_last_error());
            break;
        }
        if (s == 0) first = loss;
        optim_clip_grad_norm(grads, n, 0.3); /* the Guanaco recipe's max grad norm */
        optim_adamw_step(&o, params, grads, &hyper);
    }
    lora_set_training(l, 0);
    double after = heldout_loss(m, ids, starts, WINDOWS, T);
    printf("  stories260K NF4+DQ + LoRA r=8 (%zu trainable of %zu params) on Tiny Shakespeare: train loss "
           "%.3f -> "
           "%.3f, held-out %.3f -> %.3f after %d steps of %dx%d tokens\n",
           n, model_num_params(mc), first, loss, before, after, STEPS, B, T);
    /* Out-of-domain text starts far from the model (~5 nats); 60 steps of real adaptation move the
     * held-out loss by much more than the 0.1-nat noise of 16 windows. */
    CHECKF(after < before - 0.2, "held-out loss %.3f -> %.3f", before, after);
    int untouched = 1;
    for (size_t i = 0; i < base_count; i++)
        untouched &= base_grads[i] == 0.25f;
    CHECKF(untouched, "the quantized base's gradient buffer was written");
    optim_adamw_free(&o);
    lora_detach(m);
    lora_free(l);
done:
    free(ids);
    free(text);
    tokenizer_free(tok);
    model_free(m);
}

int main(void) {
    rng_seed(&rng, 20230523);
    test_config_and_init();
    test_op_gradients();
    test_model_gradients(0);
    test_model_gradients(1);
    test_identity_and_merge();
    test_training_save_load_determinism();
    test_seeds_and_modes();
    test_stories_qlora();
    return check_summary();
}
