/* Tests of the LoRA dropout masks (core/model/lora_dropout.h): the stream against its definition written
 * out here, the AVX-512 path bit-identical to the plain C reference (bits, products, and whole LoRA
 * forward/backward ops), p's rounding and torch's keep scale, keep fractions and pair statistics within
 * binomial bounds, independence from the thread count, and finite-difference gradients through a model
 * whose adapters train with dropout (backward reads the forward's stored mask). */
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "tests/check.h"
#include "core/base/common.h"
#include "core/base/rng.h"
#include "core/model/lora.h"
#include "core/model/lora_dropout.h"
#include "core/model/model.h"

static rng_state rng;

/* splitmix64, written out from its published definition (state += golden; then the finaliser). */
static uint64_t splitmix_next(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Keep decision of column c of the row with this key, from the header's description of the stream:
 * columns 2q and 2q+1 are the low and high halves of splitmix64's q-th output from state key. */
static int kept_by_definition(uint64_t key, int c, uint32_t drop_below) {
    uint64_t state = key, z = 0;
    for (int q = 0; q <= c / 2; q++)
        z = splitmix_next(&state);
    uint32_t u = (c & 1) ? (uint32_t)(z >> 32) : (uint32_t)z;
    return u >= drop_below;
}

static void test_spec(void) {
    /* For p >= 2^-9, p * 2^32 is an integer: the drop probability is p exactly. */
    float ps[] = {0.05f, 0.1f, 0.3f, 0.5f, 0.9f, 1.0f / 512, 0.999999940395f /* 1 - 2^-24 */};
    for (size_t i = 0; i < sizeof ps / sizeof *ps; i++) {
        lora_dropout_spec d = lora_dropout_spec_of(ps[i]);
        CHECKF((double)d.drop_below == (double)ps[i] * 4294967296.0, "p %.9g: drop_below %u", ps[i],
               d.drop_below);
        /* torch's native_dropout: scale = 1 / (1 - p) in double, applied to a float tensor as a float */
        CHECK(d.keep_scale == (float)(1.0 / (1.0 - (double)ps[i])));
    }
    /* Smaller p is rounded to the nearest multiple of 2^-32. */
    float tiny[] = {1e-7f, 3e-4f, 1e-9f};
    for (size_t i = 0; i < sizeof tiny / sizeof *tiny; i++) {
        lora_dropout_spec d = lora_dropout_spec_of(tiny[i]);
        CHECK(fabs(d.drop_below / 4294967296.0 - (double)tiny[i]) <= 0x1p-33);
    }
}

/* The reference against the definition, and every path against the reference. */
static void test_bits_paths(void) {
    int mismatches = 0;
    for (int trial = 0; trial < 40; trial++) {
        uint64_t key = rng_u64(&rng);
        uint32_t thr = trial == 0 ? 0 : trial == 1 ? 0xFFFFFFFFu : (uint32_t)rng_u64(&rng);
        uint64_t bits[3];
        int word0 = (int)rng_below(&rng, 5);
        lora_dropout_bits_ref(bits, key, word0, 3, thr);
        for (int c = 0; c < 3 * 64; c++)
            mismatches +=
                (int)((bits[c / 64] >> (c % 64)) & 1) != kept_by_definition(key, 64 * word0 + c, thr);
    }
    CHECKF(mismatches == 0, "%d bits of the reference differ from the stream's definition", mismatches);
    CHECK(lora_dropout_row_key(5, 7) == lora_dropout_mix64(5 ^ lora_dropout_mix64(7)));

    if (!lora_dropout_avx512_usable()) {
        SKIP("this CPU has no AVX-512 F+DQ+BW+VL: the AVX-512 mask path is not compared");
        return;
    }
    printf("  lora dropout path: %s\n", lora_dropout_path());
    int differ = 0;
    uint64_t a[41], b[41];
    for (int trial = 0; trial < 2000; trial++) {
        uint64_t key = rng_u64(&rng);
        uint32_t thr = trial % 4 == 0 ? (uint32_t)rng_below(&rng, 4) : (uint32_t)rng_u64(&rng);
        int word0 = (int)rng_below(&rng, 1000), nwords = 1 + (int)rng_below(&rng, 41);
        lora_dropout_bits_ref(a, key, word0, nwords, thr);
        lora_dropout_bits_avx512(b, key, word0, nwords, thr);
        differ += memcmp(a, b, sizeof(uint64_t) * (size_t)nwords) != 0;
    }
    CHECKF(differ == 0, "avx512 mask bits differ from the reference in %d of 2000 draws", differ);

    /* The products: the same IEEE product (and sum) per element, specials included, for every tail. */
    enum { L = 200 };
    float in[L], out0[L], out1[L], acc0[L], acc1[L];
    unsigned char raw[4 * 8 + 1];
    int prod_differ = 0, value_wrong = 0;
    for (int trial = 0; trial < 300; trial++) {
        int n = 1 + (int)rng_below(&rng, L);
        for (int i = 0; i < L; i++)
            in[i] = (float)rng_normal(&rng), acc0[i] = acc1[i] = (float)rng_normal(&rng);
        in[rng_below(&rng, (uint64_t)n)] = -0.0f;
        in[rng_below(&rng, (uint64_t)n)] = INFINITY;
        in[rng_below(&rng, (uint64_t)n)] = NAN;
        for (size_t i = 0; i < sizeof raw; i++)
            raw[i] = (unsigned char)rng_below(&rng, 256);
        const unsigned char *bits = raw + (trial & 1); /* any alignment */
        float s = lora_dropout_spec_of(0.1f + 0.001f * (float)(trial % 100)).keep_scale;
        lora_dropout_mul_ref(out0, in, bits, n, s);
        lora_dropout_mul_avx512(out1, in, bits, n, s);
        lora_dropout_mul_add_ref(acc0, in, bits, n, s);
        lora_dropout_mul_add_avx512(acc1, in, bits, n, s);
        prod_differ += memcmp(out0, out1, sizeof(float) * (size_t)n) != 0;
        prod_differ += memcmp(acc0, acc1, sizeof(float) * L) != 0; /* nothing past n is written */
        for (int i = 0; i < n; i++) {
            int keep = (bits[i / 8] >> (i % 8)) & 1;
            float want = in[i] * (keep ? s : 0.0f);
            value_wrong += memcmp(&want, &out0[i], sizeof want) != 0;
        }
    }
    CHECKF(prod_differ == 0, "avx512 mask products differ from the reference in %d cases", prod_differ);
    CHECKF(value_wrong == 0, "%d products are not in * (keep ? scale : 0)", value_wrong);
}

/* Keep fraction and pair statistics over a large mask, through lora_forward's dropped plane (input 1, so
 * kept elements read keep_scale exactly). Bounds: 5 standard deviations of the binomial count (a false
 * failure about once in 1.7 million per check). */
static int within_binomial(double count, double n, double prob, const char *what, float p) {
    double mean = n * prob, sd = sqrt(n * prob * (1 - prob));
    int ok = fabs(count - mean) <= 5 * sd;
    CHECKF(ok, "p %g: %s %.0f of %.0f, expected %.1f +- 5 * %.1f", p, what, count, n, mean, sd);
    return ok;
}

static void test_statistics(void) {
    enum { N = 1000, IC = 1500 }; /* 1.5M elements; IC not a multiple of 64 */
    float *x = malloc(sizeof(float) * N * IC), *d = malloc(sizeof(float) * N * IC);
    float A[IC] = {0}, Bm[1] = {0}, h[N], o[N];
    for (int i = 0; i < N * IC; i++)
        x[i] = 1.0f;
    float ps[] = {0.05f, 0.1f, 0.5f, 0.9f};
    for (size_t k = 0; k < sizeof ps / sizeof *ps; k++) {
        float p = ps[k];
        lora_dropout_spec sp = lora_dropout_spec_of(p);
        double q = sp.drop_below / 4294967296.0; /* = p here (p >= 2^-9) */
        lora_forward(o, h, d, x, A, Bm, N, IC, 1, 1, 1.0f, p, 1000 + k);
        double kept = 0, kept_even = 0, both_pair = 0, both_rows = 0, bad = 0;
        for (int n = 0; n < N; n++)
            for (int c = 0; c < IC; c++) {
                float v = d[(size_t)n * IC + c];
                bad += v != 0.0f && v != sp.keep_scale;
                int dropped = v == 0.0f;
                kept += !dropped;
                if (!(c & 1)) {
                    kept_even += !dropped;
                    both_pair += dropped && d[(size_t)n * IC + c + 1] == 0.0f; /* halves of one output */
                }
                if (n & 1) both_rows += dropped && d[(size_t)(n - 1) * IC + c] == 0.0f;
            }
        CHECKF(bad == 0, "p %g: %.0f kept values are not 1 * (float)(1/(1-p))", p, bad);
        within_binomial(kept, (double)N * IC, 1 - q, "kept", p);
        within_binomial(kept_even, (double)N * IC / 2, 1 - q, "kept even columns", p);
        within_binomial(both_pair, (double)N * IC / 2, q * q, "column pairs both dropped", p);
        within_binomial(both_rows, (double)N / 2 * IC, q * q, "row pairs both dropped", p);
        printf("  p %.2f: kept fraction %.5f (1 - p = %.5f) over %d elements\n", p, kept / ((double)N * IC),
               1 - q, N * IC);
    }
    free(x), free(d);
}

/* The LoRA ops with dropout: the same outputs and gradients on 1..3 threads and, where AVX-512 runs, on
 * the reference path, bit for bit; and the dropped plane is the mask the bits describe. */
static void run_ops(float *out, float *dA, float *dB, float *dinp, float *dropped, const float *x,
                    const float *A, const float *Bm, const float *dy, int N, int IC, int OC, int r, float p,
                    int bf16) {
    size_t ns = lora_scratch_floats(N, IC, r, p);
    float *scratch = malloc(sizeof(float) * ns), *hid = malloc(sizeof(float) * (size_t)N * r);
    memset(out, 0, sizeof(float) * (size_t)N * OC);
    memset(dA, 0, sizeof(float) * (size_t)r * IC);
    memset(dB, 0, sizeof(float) * (size_t)OC * r);
    memset(dinp, 0, sizeof(float) * (size_t)N * IC);
    if (bf16) {
        CHECK(lora_forward_bf16(out, hid, scratch, x, A, Bm, N, IC, OC, r, 2.0f, p, 77) == QLAB_OK);
        memcpy(dropped, scratch, sizeof(float) * (size_t)N * IC);
        CHECK(lora_backward_bf16(dA, dB, dinp, dy, x, hid, A, Bm, N, IC, OC, r, 2.0f, p, 77, scratch) ==
              QLAB_OK);
    } else {
        lora_forward(out, hid, dropped, x, A, Bm, N, IC, OC, r, 2.0f, p, 77);
        lora_backward(dA, dB, dinp, dy, x, hid, A, Bm, N, IC, OC, r, 2.0f, p, 77, scratch);
    }
    free(scratch), free(hid);
}

static void test_ops_paths_and_threads(void) {
    enum { N = 37, IC = 100, OC = 24, R = 4 };
    const float p = 0.25f;
    float x[N * IC], A[R * IC], Bm[OC * R], dy[N * OC];
    for (int i = 0; i < N * IC; i++)
        x[i] = (float)rng_normal(&rng);
    for (int i = 0; i < R * IC; i++)
        A[i] = (float)(0.1 * rng_normal(&rng));
    for (int i = 0; i < OC * R; i++)
        Bm[i] = (float)(0.1 * rng_normal(&rng));
    for (int i = 0; i < N * OC; i++)
        dy[i] = (float)rng_normal(&rng);
    static float res[2][5][N * IC]; /* [run][out, dA, dB, dinp, dropped] */
    for (int bf16 = 0; bf16 < 2; bf16++) {
        run_ops(res[0][0], res[0][1], res[0][2], res[0][3], res[0][4], x, A, Bm, dy, N, IC, OC, R, p, bf16);
        /* the dropped plane is x * (float)(1/(1-p)) exactly where the row's bits keep, 0 elsewhere */
        lora_dropout_spec sp = lora_dropout_spec_of(p);
        int wrong = 0;
        for (int n = 0; n < N; n++) {
            uint64_t bits[2];
            lora_dropout_bits_ref(bits, lora_dropout_row_key(77, (uint64_t)n), 0, 2, sp.drop_below);
            for (int c = 0; c < IC; c++) {
                float want = (bits[c / 64] >> (c % 64)) & 1 ? x[n * IC + c] * sp.keep_scale : 0.0f;
                wrong += res[0][4][n * IC + c] != want;
            }
        }
        CHECKF(wrong == 0, "bf16 %d: %d dropped-plane elements disagree with the mask bits", bf16, wrong);
        const size_t sizes[5] = {N * OC, R * IC, OC * R, N * IC, N * IC};
#ifdef _OPENMP
        int threads = omp_get_max_threads();
        for (int t = 1; t <= 3; t++) {
            omp_set_num_threads(t);
            run_ops(res[1][0], res[1][1], res[1][2], res[1][3], res[1][4], x, A, Bm, dy, N, IC, OC, R, p,
                    bf16);
            int same = 1;
            for (int v = 0; v < 5; v++)
                same &= memcmp(res[0][v], res[1][v], sizeof(float) * sizes[v]) == 0;
            CHECKF(same, "bf16 %d: %d threads change the LoRA ops' results", bf16, t);
        }
        omp_set_num_threads(threads);
#endif
        if (lora_dropout_avx512_usable()) {
            lora_dropout_use_reference(1);
            run_ops(res[1][0], res[1][1], res[1][2], res[1][3], res[1][4], x, A, Bm, dy, N, IC, OC, R, p,
                    bf16);
            lora_dropout_use_reference(0);
            int same = 1;
            for (int v = 0; v < 5; v++)
                same &= memcmp(res[0][v], res[1][v], sizeof(float) * sizes[v]) == 0;
            CHECKF(same, "bf16 %d: the reference mask path changes the LoRA ops' results", bf16);
        }
    }
}

/* ---------------------------------------------------------------- through a model, with dropout */

static double loss_at(model *m, lora_set *l, const uint64_t *stream, const int *tokens, const int *targets,
                      int B, int T) {
    lora_set_stream(l, stream); /* every evaluation draws the same masks */
    float loss;
    CHECK(model_forward(m, tokens, targets, B, T, NULL, &loss) == QLAB_OK);
    return loss;
}

/* The hook keeps each forward's mask as bits and backward reads them: the adapters' gradients must be
 * those of the loss with that same mask. The loss (~3.5) carries fp32 noise ~1e-7 relative; with h = 1e-2
 * the central quotient has noise ~2e-5 and truncation ~h^2: tolerance 2e-4 abs + 2% rel per element (as
 * test_lora.c's), and 2e-3 + 1% on the directional derivative (h = 1e-3). */
static void test_model_gradients_with_dropout(int checkpointing) {
    enum { B = 2, T = 8 };
    model_config c = {.dim = 16,
                      .hidden_dim = 40,
                      .n_layers = 2,
                      .n_heads = 4,
                      .n_kv_heads = 2,
                      .vocab_size = 32,
                      .seq_len = 16,
                      .norm_eps = 1e-5f,
                      .rope_theta = 10000.0f,
                      .shared_classifier = 0};
    model *m = NULL;
    lora_set *l = NULL;
    CHECK(model_create(&m, &c) == QLAB_OK);
    size_t count, n;
    float *w = model_get_param_buffer(m, &count);
    for (size_t i = 0; i < count; i++)
        w[i] = (float)(0.25 * rng_normal(&rng));
    for (int i = 0; i < c.n_layers * c.dim; i++)
        model_get_params(m)->rms_att[i] = model_get_params(m)->rms_ffn[i] = 1;
    lora_config lc = {.targets = LORA_TARGETS_ALL, .rank = 4, .alpha = 8, .dropout = 0.3f, .seed = 5};
    CHECK(lora_create(&l, &c, &lc) == QLAB_OK && lora_attach(l, m, 1) == QLAB_OK);
    model_set_checkpointing(m, checkpointing);
    float *params = lora_get_param_buffer(l, &n), *grads = lora_get_grad_buffer(l, NULL);
    for (size_t i = 0; i < n; i++)
        if (params[i] == 0) params[i] = (float)(0.2 * rng_normal(&rng)); /* B = 0 would zero dA */
    int tokens[B * T], targets[B * T];
    for (int i = 0; i < B * T; i++)
        tokens[i] = (int)rng_below(&rng, 32), targets[i] = (int)rng_below(&rng, 32);
    uint64_t *stream = malloc(sizeof(uint64_t) * lora_num_adapters(l));
    lora_get_stream(l, stream);
    lora_zero_grad(l);
    loss_at(m, l, stream, tokens, targets, B, T);
    CHECKF(model_backward(m) == QLAB_OK, "%s", qlab_last_error());

    float *saved = malloc(sizeof(float) * n);
    memcpy(saved, params, sizeof(float) * n);
    double analytic = 0, h = 1e-3;
    float *u = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++)
        u[i] = rng_below(&rng, 2) ? 1.0f : -1.0f, analytic += (double)u[i] * grads[i];
    for (size_t i = 0; i < n; i++)
        params[i] = (float)(saved[i] + h * u[i]);
    double lp = loss_at(m, l, stream, tokens, targets, B, T);
    for (size_t i = 0; i < n; i++)
        params[i] = (float)(saved[i] - h * u[i]);
    double lm = loss_at(m, l, stream, tokens, targets, B, T);
    memcpy(params, saved, sizeof(float) * n);
    double directional = (lp - lm) / (2 * h);
    CHECKF(fabs(directional - analytic) <= 2e-3 + 1e-2 * fabs(directional),
           "checkpointing %d: directional derivative analytic %.7g numeric %.7g", checkpointing, analytic,
           directional);
    double worst = 0;
    h = 1e-2;
    for (int s = 0; s < 40; s++) {
        size_t i = rng_below(&rng, n);
        params[i] = (float)(saved[i] + h);
        lp = loss_at(m, l, stream, tokens, targets, B, T);
        params[i] = (float)(saved[i] - h);
        lm = loss_at(m, l, stream, tokens, targets, B, T);
        params[i] = saved[i];
        double numeric = (lp - lm) / (2 * h);
        worst = fmax(worst, fabs(numeric - grads[i]) / (2e-4 + 2e-2 * fabs(numeric)));
    }
    CHECKF(worst <= 1.0, "checkpointing %d: sampled elements off by up to %.3g tolerances", checkpointing,
           worst);
    /* a mask that differs changes the loss: the check above is not blind to the mask */
    uint64_t *other = malloc(sizeof(uint64_t) * lora_num_adapters(l));
    for (size_t i = 0; i < lora_num_adapters(l); i++)
        other[i] = stream[i] + 1;
    CHECK(loss_at(m, l, other, tokens, targets, B, T) != loss_at(m, l, stream, tokens, targets, B, T));
    printf("  model with dropout 0.3, checkpointing %d: directional analytic %.7g numeric %.7g; 40 elements, "
           "worst %.3g of the tolerance\n",
           checkpointing, analytic, directional, worst);
    free(saved), free(u), free(stream), free(other);
    lora_detach(m);
    lora_free(l);
    model_free(m);
}

int main(void) {
    rng_seed(&rng, 2026);
    test_spec();
    test_bits_paths();
    test_statistics();
    test_ops_paths_and_threads();
    test_model_gradients_with_dropout(0);
    test_model_gradients_with_dropout(1);
    return check_summary();
}
