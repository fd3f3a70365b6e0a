/* Tests of the batched LLaMA model (core/model/model.h): logits against an independent single-token double-
 * precision reference written here in llama2.c's style, gradients of every parameter tensor against
 * finite differences (multi-head, grouped-query and multi-query attention; shared and separate
 * classifier; ignored targets; an adapter hook), determinism, the quantized path against a model holding
 * the dequantized weights, and the real stories260K model when the shared data is present. */
#include <stdint.h>
#include <string.h>

#include "tests/check.h"
#include "core/base/common.h"
#include "core/model/model.h"
#include "core/base/rng.h"

static rng_state rng;

static model_config tiny_config(int n_kv_heads, int shared) {
    model_config c = {.dim = 16,
                      .hidden_dim = 40,
                      .n_layers = 2,
                      .n_heads = 4,
                      .n_kv_heads = n_kv_heads,
                      .vocab_size = 32,
                      .seq_len = 8,
                      .norm_eps = 1e-5f,
                      .rope_theta = 10000.0f,
                      .shared_classifier = shared};
    return c;
}

/* Random weights of a plausible scale: matrices N(0, 1/in), embeddings N(0,1), norm weights near 1. */
static void randomize(model *m) {
    const model_config *c = model_get_config(m);
    for (int g = 0; g < MODEL_GROUP_COUNT; g++) {
        model_param_group pg = model_get_param_group(m, (model_group)g);
        float *p = model_get_param_buffer(m, NULL) + pg.offset;
        int is_norm = g == MODEL_GROUP_RMS_ATT || g == MODEL_GROUP_RMS_FFN || g == MODEL_GROUP_RMS_FINAL;
        double in = (g == MODEL_GROUP_W2) ? c->hidden_dim : c->dim;
        double sd = (g == MODEL_GROUP_TOKEN_EMBEDDING) ? 1.0 : 1.0 / sqrt(in);
        for (size_t i = 0; i < pg.count; i++)
            p[i] = is_norm ? (float)(1.0 + 0.1 * rng_normal(&rng)) : (float)(sd * rng_normal(&rng));
    }
}

static model *make_model(model_config c) {
    model *m = NULL;
    qlab_status st = model_create(&m, &c);
    CHECKF(st == QLAB_OK, "model_create: %s", qlab_last_error());
    if (st != QLAB_OK) exit(check_summary());
    randomize(m);
    return m;
}

/* ---------------------------------------------------------------- the independent reference */

/* One sequence, one token at a time with a key/value cache, in double: the llama2.c run.c loop. */
static void reference_forward(model *m, const int *tokens, int T, double *logits /* (T,V) */) {
    const model_config *c = model_get_config(m);
    const model_params *p = model_get_params(m);
    int D = c->dim, Hd = c->hidden_dim, hs = D / c->n_heads, kvd = c->n_kv_heads * hs;
    int kv_mul = c->n_heads / c->n_kv_heads;
    double *x = calloc(D, sizeof(double)), *xb = calloc(D, sizeof(double)), *q = calloc(D, sizeof(double));
    double *att_out = calloc(D, sizeof(double)), *h1 = calloc(Hd, sizeof(double));
    double *h3 = calloc(Hd, sizeof(double)), *att = calloc(T, sizeof(double));
    double *kc = calloc((size_t)c->n_layers * T * kvd, sizeof(double));
    double *vc = calloc((size_t)c->n_layers * T * kvd, sizeof(double));
    for (int pos = 0; pos < T; pos++) {
        for (int i = 0; i < D; i++)
            x[i] = p->token_embedding[(size_t)tokens[pos] * D + i];
        for (int l = 0; l < c->n_layers; l++) {
            double ss = 0;
            for (int i = 0; i < D; i++)
                ss += x[i] * x[i];
            ss = 1.0 / sqrt(ss / D + c->norm_eps);
            for (int i = 0; i < D; i++)
                xb[i] = x[i] * ss * p->rms_att[l * D + i];
            double *kr = kc + ((size_t)l * T + pos) * kvd, *vr = vc + ((size_t)l * T + pos) * kvd;
            for (int o = 0; o < D; o++) {
                double s = 0;
                for (int i = 0; i < D; i++)
                    s += p->wq[((size_t)l * D + o) * D + i] * xb[i];
                q[o] = s;
            }
            for (int o = 0; o < kvd; o++) {
                double sk = 0, sv = 0;
                for (int i = 0; i < D; i++) {
                    sk += p->wk[((size_t)l * kvd + o) * D + i] * xb[i];
                    sv += p->wv[((size_t)l * kvd + o) * D + i] * xb[i];
                }
                kr[o] = sk, vr[o] = sv;
            }
            /* RoPE: rotate pairs (i, i+1) of each head by pos * theta^(-(i mod hs)/hs) */
            for (int i = 0; i < D; i += 2) {
                double freq = pow(c->rope_theta, -(double)(i % hs) / hs), a = pos * freq;
                double cr = cos(a), ci = sin(a);
                double q0 = q[i], q1 = q[i + 1];
                q[i] = q0 * cr - q1 * ci, q[i + 1] = q0 * ci + q1 * cr;
                if (i < kvd) {
                    double k0 = kr[i], k1 = kr[i + 1];
                    kr[i] = k0 * cr - k1 * ci, kr[i + 1] = k0 * ci + k1 * cr;
                }
            }
            for (int h = 0; h < c->n_heads; h++) {
                const double *qh = q + h * hs;
                double maxv = -1e300, sum = 0;
                for (int t = 0; t <= pos; t++) {
                    const double *kt = kc + ((size_t)l * T + t) * kvd + (h / kv_mul) * hs;
                    double s = 0;
                    for (int i = 0; i < hs; i++)
                        s += qh[i] * kt[i];
                    att[t] = s / sqrt((double)hs);
                    if (att[t] > maxv) maxv = att[t];
                }
                for (int t = 0; t <= pos; t++)
                    sum += att[t] = exp(att[t] - maxv);
                for (int i = 0; i < hs; i++)
                    att_out[h * hs + i] = 0;
                for (int t = 0; t <= pos; t++) {
                    const double *vt = vc + ((size_t)l * T + t) * kvd + (h / kv_mul) * hs;
                    for (int i = 0; i < hs; i++)
                        att_out[h * hs + i] += att[t] / sum * vt[i];
                }
            }
            for (int o = 0; o < D; o++) {
                double s = 0;
                for (int i = 0; i < D; i++)
                    s += p->wo[((size_t)l * D + o) * D + i] * att_out[i];
                x[o] += s;
            }
            ss = 0;
            for (int i = 0; i < D; i++)
                ss += x[i] * x[i];
            ss = 1.0 / sqrt(ss / D + c->norm_eps);
            for (int i = 0; i < D; i++)
                xb[i] = x[i] * ss * p->rms_ffn[l * D + i];
            for (int o = 0; o < Hd; o++) {
                double s1 = 0, s3 = 0;
                for (int i = 0; i < D; i++) {
                    s1 += p->w1[((size_t)l * Hd + o) * D + i] * xb[i];
                    s3 += p->w3[((size_t)l * Hd + o) * D + i] * xb[i];
                }
                h1[o] = s1 / (1 + exp(-s1)) * s3;
            }
            for (int o = 0; o < D; o++) {
                double s = 0;
                for (int i = 0; i < Hd; i++)
                    s += p->w2[((size_t)l * D + o) * Hd + i] * h1[i];
                x[o] += s;
            }
        }
        double ss = 0;
        for (int i = 0; i < D; i++)
            ss += x[i] * x[i];
        ss = 1.0 / sqrt(ss / D + c->norm_eps);
        for (int i = 0; i < D; i++)
            xb[i] = x[i] * ss * p->rms_final[i];
        for (int o = 0; o < c->vocab_size; o++) {
            double s = 0;
            for (int i = 0; i < D; i++)
                s += p->wcls[(size_t)o * D + i] * xb[i];
            logits[(size_t)pos * c->vocab_size + o] = s;
        }
    }
    free(x), free(xb), free(q), free(att_out), free(h1), free(h3), free(att), free(kc), free(vc);
}

/* max |a - b| / max |b| over (B*T*V) logits, the batched model against the reference per sequence. */
static double logits_rel_error(model *m, const int *tokens, int B, int T) {
    int V = model_get_config(m)->vocab_size;
    float *logits = malloc(sizeof(float) * (size_t)B * T * V);
    double *ref = malloc(sizeof(double) * (size_t)T * V), max_err = 0, max_ref = 0;
    qlab_status st = model_forward(m, tokens, NULL, B, T, logits, NULL);
    CHECKF(st == QLAB_OK, "model_forward: %s", qlab_last_error());
    for (int b = 0; b < B; b++) {
        reference_forward(m, tokens + b * T, T, ref);
        for (int i = 0; i < T * V; i++) {
            double e = fabs(logits[(size_t)b * T * V + i] - ref[i]);
            if (e > max_err) max_err = e;
            if (fabs(ref[i]) > max_ref) max_ref = fabs(ref[i]);
        }
    }
    free(logits), free(ref);
    return max_err / max_ref;
}

static void random_tokens(int *tokens, int n, int V) {
    for (int i = 0; i < n; i++)
        tokens[i] = (int)rng_below(&rng, (uint64_t)V);
}

static void test_forward_reference(void) {
    enum { B = 2, T = 8 };
    int tokens[B * T];
    int kv_options[3] = {4, 2, 1};
    for (int s = 0; s < 2; s++)
        for (int i = 0; i < 3; i++) {
            model *m = make_model(tiny_config(kv_options[i], s));
            random_tokens(tokens, B * T, 32);
            double err = logits_rel_error(m, tokens, B, T);
            /* fp32 through 2 layers of width <= 40: each dot product carries ~sqrt(40) * 6e-8 relative
             * rounding, a few layers deep, so ~1e-6; 1e-5 leaves 10x margin and catches any wrong index
             * or formula (those give errors of order 1). */
            CHECKF(err < 1e-5, "n_kv_heads %d shared %d: logits relative error %.3g", kv_options[i], s, err);
            model_free(m);
        }
    /* A shorter T gives the first T positions of the longer run (causality, per-position RoPE). */
    model *m = make_model(tiny_config(2, 0));
    random_tokens(tokens, B * T, 32);
    float *full = malloc(sizeof(float) * B * T * 32), *part = malloc(sizeof(float) * 1 * 5 * 32);
    model_forward(m, tokens, NULL, B, T, full, NULL);
    model_forward(m, tokens, NULL, 1, 5, part, NULL);
    double worst = 0;
    for (int i = 0; i < 5 * 32; i++)
        worst = fmax(worst, fabs(full[i] - part[i]));
    /* Different GEMM shapes may block the sums differently: fp32 rounding only. */
    CHECKF(worst < 1e-5, "prefix logits differ by %.3g", worst);
    free(full), free(part);
    model_free(m);
}

/* ---------------------------------------------------------------- gradients */

/* The mean cross-entropy of the model's fp32 logits, formed in double so the loss itself adds no
 * rounding beyond that of the logits. */
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

/* Checks the gradient buffer of every trainable group against central differences:
 *  - a directional derivative along a random +-1 direction over the whole tensor (g . u is a sum over
 *    the tensor, large against the fp32 noise of the loss, so the tolerance can be tight), and
 *  - a sample of single elements, with a looser tolerance for their smaller derivatives. */
static void check_model_gradients(model *m, const int *tokens, const int *targets, int B, int T,
                                  const char *tag) {
    float loss = 0;
    model_zero_grad(m);
    CHECK(model_forward(m, tokens, targets, B, T, NULL, &loss) == QLAB_OK);
    CHECKF(model_backward(m) == QLAB_OK, "%s", qlab_last_error());
    CHECK_NEAR(loss, loss_double(m, tokens, targets, B, T), 1e-5); /* fp32 softmax over 32 logits */
    size_t count;
    float *params = model_get_param_buffer(m, &count), *grads = model_get_grad_buffer(m, NULL);
    float *saved = malloc(sizeof(float) * count), *u = malloc(sizeof(float) * count);
    memcpy(saved, params, sizeof(float) * count);
    for (int g = 0; g < MODEL_GROUP_COUNT; g++) {
        model_param_group pg = model_get_param_group(m, (model_group)g);
        if (pg.quantized) { /* no fp32 storage at all, so no gradient can be formed for it */
            CHECKF(!model_get_params_const(m)->group[g], "%s: quantized group %s has an fp32 view", tag,
                   pg.name);
            continue;
        }
        if (!pg.trainable) {
            int zero = 1;
            for (size_t i = 0; i < pg.count; i++)
                zero &= grads[pg.offset + i] == 0;
            CHECKF(zero, "%s: frozen group %s has gradients", tag, pg.name);
            continue;
        }
        /* Directional: step 1e-3 per element. The loss (~3.5) differs between the two evaluations only
         * through fp32 rounding of the logits (~1e-7 relative), so the difference quotient has noise of
         * ~1e-7*3.5/2e-3 ~ 2e-4; the truncation error is ~h^2 |u|^3 |f'''| ~ 1e-6 * n^1.5 * small.
         * Tolerance: 2e-3 absolute + 1% relative. */
        double h = 1e-3, analytic = 0;
        for (size_t i = 0; i < pg.count; i++) {
            u[i] = rng_below(&rng, 2) ? 1.0f : -1.0f;
            analytic += (double)u[i] * grads[pg.offset + i];
        }
        for (size_t i = 0; i < pg.count; i++)
            params[pg.offset + i] = (float)(saved[pg.offset + i] + h * u[i]);
        double lp = loss_double(m, tokens, targets, B, T);
        for (size_t i = 0; i < pg.count; i++)
            params[pg.offset + i] = (float)(saved[pg.offset + i] - h * u[i]);
        double lm = loss_double(m, tokens, targets, B, T);
        memcpy(params + pg.offset, saved + pg.offset, sizeof(float) * pg.count);
        double numeric = (lp - lm) / (2 * h);
        CHECKF(fabs(numeric - analytic) <= 2e-3 + 1e-2 * fabs(numeric),
               "%s %s: directional derivative analytic %.7g numeric %.7g", tag, pg.name, analytic, numeric);

        /* Single elements: step 1e-2 (the fp32 noise above divided by 2e-2 is ~2e-5); tolerance 2e-4
         * absolute + 2% relative covers noise and the h^2 truncation term. */
        int bad = 0;
        h = 1e-2;
        for (int s = 0; s < 6; s++) {
            size_t i = pg.offset + (size_t)rng_below(&rng, pg.count);
            params[i] = (float)(saved[i] + h);
            lp = loss_double(m, tokens, targets, B, T);
            params[i] = (float)(saved[i] - h);
            lm = loss_double(m, tokens, targets, B, T);
            params[i] = saved[i];
            numeric = (lp - lm) / (2 * h);
            if (fabs(numeric - grads[i]) > 2e-4 + 2e-2 * fabs(numeric) && bad++ < 2)
                fprintf(stderr, "  %s %s[%zu]: analytic %.7g numeric %.7g\n", tag, pg.name, i - pg.offset,
                        grads[i], numeric);
        }
        CHECKF(bad == 0, "%s %s: %d sampled elements off", tag, pg.name, bad);
    }
    free(saved), free(u);
}

static void test_gradients(void) {
    enum { B = 2, T = 8 };
    int tokens[B * T], targets[B * T];
    int kv_options[3] = {4, 2, 1};
    for (int i = 0; i < 3; i++)
        for (int s = 0; s < 2; s++) {
            model *m = make_model(tiny_config(kv_options[i], s));
            random_tokens(tokens, B * T, 32);
            random_tokens(targets, B * T, 32);
            targets[3] = -1, targets[11] = -100; /* ignored positions */
            char tag[64];
            snprintf(tag, sizeof tag, "kv=%d shared=%d", kv_options[i], s);
            check_model_gradients(m, tokens, targets, B, T, tag);
            model_free(m);
        }
}

/* Ignored targets contribute nothing: the loss equals the mean over the others, and is unchanged by
 * what the ignored targets' positions would have predicted. */
static void test_ignore_mask(void) {
    enum { B = 2, T = 8 };
    model *m = make_model(tiny_config(2, 1));
    int tokens[B * T], targets[B * T], one[B * T];
    random_tokens(tokens, B * T, 32);
    random_tokens(targets, B * T, 32);
    for (int n = 0; n < B * T; n++)
        targets[n] = n % 3 == 0 ? -1 : targets[n];
    float loss_masked, loss_single;
    model_forward(m, tokens, targets, B, T, NULL, &loss_masked);
    CHECK(model_last_target_count(m) == 10);
    double sum = 0;
    for (int k = 0; k < B * T; k++) {
        if (targets[k] < 0) continue;
        for (int n = 0; n < B * T; n++)
            one[n] = n == k ? targets[k] : -1;
        model_forward(m, tokens, one, B, T, NULL, &loss_single);
        sum += loss_single;
    }
    CHECK_NEAR(loss_masked, sum / 10, 1e-5); /* ten fp32 losses of ~3.5 */
    /* All ignored: loss 0, backward succeeds and leaves zero gradients. */
    for (int n = 0; n < B * T; n++)
        one[n] = -1;
    float loss = 1;
    model_zero_grad(m);
    CHECK(model_forward(m, tokens, one, B, T, NULL, &loss) == QLAB_OK && loss == 0);
    CHECK(model_backward(m) == QLAB_OK);
    size_t count;
    float *g = model_get_grad_buffer(m, &count);
    int zero = 1;
    for (size_t i = 0; i < count; i++)
        zero &= g[i] == 0;
    CHECK(zero);
    model_free(m);
}

/* ---------------------------------------------------------------- freezing and adapters */

/* A fixed low-rank adapter out += (inp A^T) B^T on every projection, enough to test the hook: the
 * gradients of the model parameters must include the adapter's path to the input. */
typedef struct {
    float a[2 * 40], b[40 * 2]; /* (2, in) and (out, 2), reused for every projection */
    int forward_calls, backward_calls, begin_calls;
    /* The call (1-based) of that callback which fails as an allocation failure would; 0: none fails. */
    int fail_begin, fail_forward, fail_backward;
} test_adapter;

static qlab_status adapter_begin(void *ctx, int B, int T) {
    test_adapter *ad = ctx;
    if (++ad->begin_calls == ad->fail_begin)
        return qlab_fail(QLAB_ERR_NOMEM, "test adapter: no memory for %d x %d positions", B, T);
    return QLAB_OK;
}

static qlab_status adapter_forward(void *ctx, int layer, model_proj p, const float *inp, float *out, int N) {
    test_adapter *ad = ctx;
    if (ad->forward_calls + 1 == ad->fail_forward)
        return qlab_fail(QLAB_ERR_NOMEM, "test adapter: no memory for layer %d %s", layer,
                         model_proj_name(p));
    static const int dims[PROJ_COUNT][2] = {{16, 16}, {16, 8},  {16, 8}, {16, 16},
                                            {16, 40}, {16, 40}, {40, 16}};
    int in = dims[p][0], outf = dims[p][1];
    for (int n = 0; n < N; n++) {
        float z[2] = {0, 0};
        for (int r = 0; r < 2; r++)
            for (int i = 0; i < in; i++)
                z[r] += ad->a[r * in + i] * inp[(size_t)n * in + i];
        for (int o = 0; o < outf; o++)
            out[(size_t)n * outf + o] += ad->b[o * 2] * z[0] + ad->b[o * 2 + 1] * z[1];
    }
    ad->forward_calls++;
    return QLAB_OK;
}

static qlab_status adapter_backward(void *ctx, int layer, model_proj p, const float *inp, const float *dout,
                                    float *dinp, int N) {
    (void)inp;
    test_adapter *ad = ctx;
    if (ad->backward_calls + 1 == ad->fail_backward)
        return qlab_fail(QLAB_ERR_NOMEM, "test adapter: no memory for layer %d %s", layer,
                         model_proj_name(p));
    static const int dims[PROJ_COUNT][2] = {{16, 16}, {16, 8},  {16, 8}, {16, 16},
                                            {16, 40}, {16, 40}, {40, 16}};
    int in = dims[p][0], outf = dims[p][1];
    for (int n = 0; n < N; n++) {
        float dz[2] = {0, 0};
        for (int o = 0; o < outf; o++)
            for (int r = 0; r < 2; r++)
                dz[r] += ad->b[o * 2 + r] * dout[(size_t)n * outf + o];
        for (int r = 0; r < 2; r++)
            for (int i = 0; i < in; i++)
                dinp[(size_t)n * in + i] += ad->a[r * in + i] * dz[r];
    }
    ad->backward_calls++;
    return QLAB_OK;
}

static void test_freeze_and_adapter(void) {
    enum { B = 2, T = 8 };
    model *m = make_model(tiny_config(2, 0)); /* kv_dim 8: the adapter's dims table above */
    int tokens[B * T], targets[B * T];
    random_tokens(tokens, B * T, 32);
    random_tokens(targets, B * T, 32);
    test_adapter ad = {0};
    for (int i = 0; i < 80; i++)
        ad.a[i] = (float)(0.3 * rng_normal(&rng)), ad.b[i] = (float)(0.3 * rng_normal(&rng));
    model_adapter hook = {
        .ctx = &ad, .begin = adapter_begin, .forward = adapter_forward, .backward = adapter_backward};
    /* Freeze everything but the embedding and the norms: the gradients reaching them pass through every
     * projection's input gradient, adapter included. */
    model_set_all_trainable(m, 0);
    model_set_trainable(m, MODEL_GROUP_TOKEN_EMBEDDING, 1);
    model_set_trainable(m, MODEL_GROUP_RMS_ATT, 1);
    model_set_trainable(m, MODEL_GROUP_RMS_FFN, 1);
    model_set_adapter(m, &hook);
    check_model_gradients(m, tokens, targets, B, T, "adapter+frozen");
    CHECK(ad.forward_calls > 0 && ad.backward_calls == 2 * PROJ_COUNT);
    model_param_group wq = model_get_param_group(m, MODEL_GROUP_WQ);
    CHECK(!wq.trainable && wq.count == 2 * 16 * 16 && strcmp(wq.name, "wq") == 0);
    model_param_group cls = model_get_param_group(m, MODEL_GROUP_WCLS);
    CHECK(cls.count == 32 * 16 && cls.offset + cls.count == model_num_params(model_get_config(m)));
    model_set_adapter(m, NULL);
    model_free(m);
}

/* An adapter callback that fails (as an allocation failure would) fails the pass that ran it, with its own
 * message and the projection it served; no adapter is skipped silently. */
static void test_adapter_failure(void) {
    enum { B = 2, T = 8 };
    model *m = make_model(tiny_config(2, 0));
    int tokens[B * T], targets[B * T];
    random_tokens(tokens, B * T, 32);
    random_tokens(targets, B * T, 32);
    test_adapter ad = {0};
    for (int i = 0; i < 80; i++)
        ad.a[i] = (float)(0.3 * rng_normal(&rng)), ad.b[i] = (float)(0.3 * rng_normal(&rng));
    model_adapter hook = {
        .ctx = &ad, .begin = adapter_begin, .forward = adapter_forward, .backward = adapter_backward};
    model_set_adapter(m, &hook);
    float loss = 0;

    ad.fail_begin = 1;
    CHECK(model_forward(m, tokens, targets, B, T, NULL, &loss) == QLAB_ERR_NOMEM);
    CHECK(strstr(qlab_last_error(), "no memory for 2 x 8 positions") != NULL);
    CHECK(ad.forward_calls == 0); /* it stopped before the first projection */
    CHECK(model_backward(m) == QLAB_ERR_ARG);

    /* The 8th projection of the forward is layer 1's q_proj. */
    ad.fail_forward = 8;
    CHECK(model_forward(m, tokens, targets, B, T, NULL, &loss) == QLAB_ERR_NOMEM);
    CHECKF(strstr(qlab_last_error(), "adapter of layer 1 q_proj") != NULL &&
               strstr(qlab_last_error(), "test adapter: no memory for layer 1 q_proj") != NULL,
           "%s", qlab_last_error());
    CHECK(ad.forward_calls == 7);
    CHECK(model_backward(m) == QLAB_ERR_ARG); /* the failed forward left nothing to differentiate */

    /* Backward runs layer 1 first, down_proj first: its 8th call is layer 0's down_proj. */
    ad.fail_forward = 0, ad.forward_calls = 0;
    CHECK(model_forward(m, tokens, targets, B, T, NULL, &loss) == QLAB_OK && ad.forward_calls == 14);
    ad.fail_backward = 8;
    CHECK(model_backward(m) == QLAB_ERR_NOMEM);
    CHECKF(strstr(qlab_last_error(), "layer 0 down_proj") != NULL, "%s", qlab_last_error());
    CHECK(ad.backward_calls == 7);

    /* With nothing failing the same model runs through. */
    ad.fail_backward = 0, ad.backward_calls = 0;
    CHECK(model_forward(m, tokens, targets, B, T, NULL, &loss) == QLAB_OK);
    CHECK(model_backward(m) == QLAB_OK && ad.backward_calls == 14);
    model_set_adapter(m, NULL);
    model_free(m);
}

/* ---------------------------------------------------------------- layout, vocabulary and clone */

/* The parameter layout written out by hand for one configuration with grouped-query attention and a
 * separate classifier, against the sizes table, the group table, the views and the linear weights. */
static void test_layout(void) {
    model_config c = tiny_config(2, 0); /* D 16, H 40, L 2, 4 heads of 4, 2 kv heads: KV 8, V 32 */
    model *m = make_model(c);
    size_t L = 2, D = 16, H = 40, KV = 8, V = 32;
    size_t expect[MODEL_GROUP_COUNT] = {V * D, L * D,     L * D * D, L * KV * D, L * KV * D, L * D * D,
                                        L * D, L * H * D, L * D * H, L * H * D,  D,          V * D};
    size_t sizes[MODEL_GROUP_COUNT];
    model_param_sizes(&c, sizes);
    size_t count, offset = 0;
    float *buffer = model_get_param_buffer(m, &count);
    const model_params *views = model_get_params_const(m);
    CHECK(model_get_params(m) == views && model_get_param_buffer_const(m, NULL) == buffer);
    for (int g = 0; g < MODEL_GROUP_COUNT; g++) {
        model_param_group pg = model_get_param_group(m, (model_group)g);
        CHECKF(sizes[g] == expect[g] && pg.count == expect[g] && pg.offset == offset, "group %d (%s)", g,
               pg.name);
        CHECKF(views->group[g] == buffer + offset, "group %d (%s)", g, pg.name);
        CHECK(!strcmp(pg.name, model_group_name((model_group)g)));
        offset += pg.count;
    }
    CHECK(offset == count && count == model_num_params(&c));
    CHECK(views->wq == views->group[MODEL_GROUP_WQ] && views->w2 == views->group[MODEL_GROUP_W2] &&
          views->wcls == views->group[MODEL_GROUP_WCLS]);
    CHECK(!strcmp(model_group_name(MODEL_GROUP_W3), "w3") &&
          !strcmp(model_group_name(MODEL_GROUP_COUNT), "unknown"));

    /* The projection vocabulary: names, shapes and groups, and the inverse map from groups. */
    static const char *names[PROJ_COUNT] = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                            "gate_proj", "up_proj", "down_proj"};
    static const char *blocks[PROJ_COUNT] = {"self_attn", "self_attn", "self_attn", "self_attn",
                                             "mlp",       "mlp",       "mlp"};
    static const model_group groups[PROJ_COUNT] = {MODEL_GROUP_WQ, MODEL_GROUP_WK, MODEL_GROUP_WV,
                                                   MODEL_GROUP_WO, MODEL_GROUP_W1, MODEL_GROUP_W3,
                                                   MODEL_GROUP_W2};
    static const int shapes[PROJ_COUNT][2] = {{16, 16}, {8, 16},  {8, 16}, {16, 16},
                                              {40, 16}, {40, 16}, {16, 40}};
    int groups_seen = 0;
    for (int p = 0; p < PROJ_COUNT; p++) {
        const model_proj_info *info = model_proj_get((model_proj)p);
        int o, i;
        model_proj_shape(&c, (model_proj)p, &o, &i);
        CHECKF(info && !strcmp(info->name, names[p]) && !strcmp(info->block, blocks[p]) &&
                   info->group == groups[p] && !strcmp(model_proj_name((model_proj)p), names[p]),
               "projection %d", p);
        CHECKF(o == shapes[p][0] && i == shapes[p][1], "projection %s: %d x %d", names[p], o, i);
        CHECK(model_group_projection(groups[p]) == p && sizes[groups[p]] == L * (size_t)o * i);
        groups_seen |= 1 << groups[p];
        model_proj parsed = PROJ_COUNT;
        CHECK(model_proj_parse(names[p], &parsed) == QLAB_OK && parsed == (model_proj)p);
        parsed = PROJ_COUNT;
        CHECK(model_proj_parse(info->short_name, &parsed) == QLAB_OK && parsed == (model_proj)p);
        for (int l = 0; l < 2; l++) {
            linear_weight lw = model_get_linear(m, l, (model_proj)p);
            CHECK(lw.out_features == o && lw.in_features == i && !lw.q &&
                  lw.w == views->group[groups[p]] + (size_t)l * o * i);
        }
    }
    for (int g = 0; g < MODEL_GROUP_COUNT; g++)
        if (!(groups_seen & (1 << g))) CHECKF(model_group_projection((model_group)g) == -1, "group %d", g);
    model_proj parsed = PROJ_Q;
    CHECK(model_proj_parse("w1", &parsed) == QLAB_ERR_ARG && strstr(qlab_last_error(), "'w1'") != NULL);
    CHECK(model_proj_get(PROJ_COUNT) == NULL && !strcmp(model_proj_name(PROJ_COUNT), "unknown_proj"));
    linear_weight none = model_get_linear(m, 2, PROJ_Q);
    CHECK(!none.w && !none.q && none.out_features == 0);
    CHECK(model_set_trainable(m, MODEL_GROUP_COUNT, 0) == QLAB_ERR_ARG);
    CHECK(model_set_trainable(m, (model_group)-1, 0) == QLAB_ERR_ARG);
    CHECK(model_set_trainable(m, MODEL_GROUP_WK, 0) == QLAB_OK &&
          !model_get_param_group(m, MODEL_GROUP_WK).trainable);
    model_free(m);

    /* A shared classifier takes no room: its view is the embedding. */
    c = tiny_config(4, 1);
    m = make_model(c);
    model_param_sizes(&c, sizes);
    views = model_get_params_const(m);
    CHECK(sizes[MODEL_GROUP_WCLS] == 0 && views->wcls == views->token_embedding &&
          model_num_params(&c) == model_get_param_group(m, MODEL_GROUP_RMS_FINAL).offset + D);
    model_free(m);
}

/* A clone computes what its source computes and shares nothing with it. */
static void test_clone(void) {
    enum { B = 2, T = 8 };
    model *src = make_model(tiny_config(2, 0)), *copy = NULL;
    CHECK(model_set_trainable(src, MODEL_GROUP_WK, 0) == QLAB_OK);
    CHECK(model_clone(src, &copy) == QLAB_OK && copy != NULL);
    size_t n_src, n_copy;
    const float *ps = model_get_param_buffer_const(src, &n_src);
    float *pc = model_get_param_buffer(copy, &n_copy);
    CHECK(n_src == n_copy && pc != ps && memcmp(ps, pc, n_src * sizeof(float)) == 0);
    CHECK(memcmp(model_get_config(src), model_get_config(copy), sizeof(model_config)) == 0);
    for (int g = 0; g < MODEL_GROUP_COUNT; g++)
        CHECKF(model_get_param_group(src, (model_group)g).trainable ==
                   model_get_param_group(copy, (model_group)g).trainable,
               "group %d", g);
    int tokens[B * T], targets[B * T];
    random_tokens(tokens, B * T, 32);
    random_tokens(targets, B * T, 32);
    float *la = malloc(sizeof(float) * B * T * 32), *lb = malloc(sizeof(float) * B * T * 32);
    float loss_a = 0, loss_b = 0;
    CHECK(model_forward(src, tokens, targets, B, T, la, &loss_a) == QLAB_OK);
    CHECK(model_forward(copy, tokens, targets, B, T, lb, &loss_b) == QLAB_OK);
    CHECK(memcmp(la, lb, sizeof(float) * B * T * 32) == 0 && loss_a == loss_b);
    /* Independent: training or changing the copy leaves the source as it was, and the copy outlives it. */
    CHECK(model_backward(copy) == QLAB_OK);
    float *saved = malloc(sizeof(float) * n_src);
    memcpy(saved, ps, sizeof(float) * n_src);
    for (size_t i = 0; i < n_copy; i++)
        pc[i] *= 0.5f;
    CHECK(model_set_trainable(copy, MODEL_GROUP_WK, 1) == QLAB_OK &&
          !model_get_param_group(src, MODEL_GROUP_WK).trainable);
    CHECK(memcmp(saved, ps, sizeof(float) * n_src) == 0);
    CHECK(model_forward(src, tokens, targets, B, T, lb, &loss_b) == QLAB_OK);
    CHECK(memcmp(la, lb, sizeof(float) * B * T * 32) == 0 && loss_a == loss_b);
    model_free(src);
    CHECK(model_forward(copy, tokens, targets, B, T, lb, &loss_b) == QLAB_OK && loss_b != loss_a);
    /* A quantized model is refused: its fp32 projections are not the weights it computes with. */
    CHECK(model_quantize(copy, QUANT_NF4, 64, 0) == QLAB_OK && model_is_quantized(copy));
    model *again = (model *)1;
    CHECK(model_clone(copy, &again) == QLAB_ERR_ARG && again == NULL);
    CHECK(strstr(qlab_last_error(), "quantized") != NULL);
    model_free(copy);
    free(la), free(lb), free(saved);
}

/* ---------------------------------------------------------------- determinism and arguments */

static void test_determinism_and_errors(void) {
    enum { B = 2, T = 8 };
    model *m = make_model(tiny_config(2, 0));
    int tokens[B * T], targets[B * T];
    random_tokens(tokens, B * T, 32);
    random_tokens(targets, B * T, 32);
    size_t nl = (size_t)B * T * 32, count;
    float *l1 = malloc(sizeof(float) * nl), *l2 = malloc(sizeof(float) * nl), loss1, loss2;
    model_forward(m, tokens, targets, B, T, l1, &loss1);
    model_zero_grad(m);
    model_backward(m);
    float *g = model_get_grad_buffer(m, &count), *g1 = malloc(sizeof(float) * count);
    memcpy(g1, g, sizeof(float) * count);
    model_forward(m, tokens, targets, B, T, l2, &loss2);
    model_zero_grad(m);
    model_backward(m);
    CHECK(memcmp(l1, l2, sizeof(float) * nl) == 0 && loss1 == loss2);
    CHECK(memcmp(g1, g, sizeof(float) * count) == 0);
    /* Backward accumulates: a second backward without zeroing doubles every gradient. Not bit-exactly:
     * sgemm with beta = 1 and the row loops add partial sums onto the existing value, a different
     * association; 1e-5 relative (+1e-9 for zeros) is ~100 fp32 roundings. */
    model_backward(m);
    int doubled = 1;
    for (size_t i = 0; i < count; i++)
        doubled &= fabs(g[i] - 2 * g1[i]) <= 1e-5 * fabs(g1[i]) + 1e-9;
    CHECK(doubled);

    /* Bad arguments fail with a message instead of crashing. */
    tokens[5] = 32;
    CHECK(model_forward(m, tokens, targets, B, T, NULL, NULL) == QLAB_ERR_ARG);
    CHECK(strstr(qlab_last_error(), "token 32") != NULL);
    CHECK(model_backward(m) == QLAB_ERR_ARG); /* the failed forward left nothing to differentiate */
    tokens[5] = 1;
    CHECK(model_forward(m, tokens, targets, B, 9, NULL, NULL) == QLAB_ERR_ARG); /* T > seq_len */
    CHECK(model_forward(m, tokens, NULL, B, T, NULL, NULL) == QLAB_OK);
    CHECK(model_backward(m) == QLAB_ERR_ARG); /* no targets */
    model_config bad = tiny_config(3, 0);
    model *mb = NULL;
    CHECK(model_create(&mb, &bad) == QLAB_ERR_ARG && mb == NULL);
    CHECK(strstr(qlab_last_error(), "n_kv_heads 3") != NULL);
    bad = tiny_config(2, 0);
    bad.dim = 12; /* head size 3 is odd */
    CHECK(model_create(&mb, &bad) == QLAB_ERR_ARG);
    CHECK(strcmp(model_proj_name(PROJ_GATE), "gate_proj") == 0 &&
          strcmp(model_proj_name(PROJ_DOWN), "down_proj") == 0);
    linear_weight lw = model_get_linear(m, 1, PROJ_DOWN);
    CHECK(lw.out_features == 16 && lw.in_features == 40 && lw.w == model_get_params(m)->w2 + 16 * 40 &&
          !lw.q);
    free(l1), free(l2), free(g1);
    model_free(m);
}

/* ---------------------------------------------------------------- quantized projections */

static void test_quantized(void) {
    enum { B = 2, T = 8 };
    model_config c = tiny_config(2, 0);
    c.dim = 64, c.hidden_dim = 96; /* whole 64-element blocks per row, and rows of two sizes */
    model *mq = make_model(c), *mref = NULL;
    CHECK(model_create(&mref, &c) == QLAB_OK);
    size_t count;
    const float *source = model_get_param_buffer(mq, &count);
    memcpy(model_get_param_buffer(mref, NULL), source, sizeof(float) * count);
    double bits32 = model_total_bits(mq);
    CHECK(bits32 == 32.0 * count);
    qlab_status st = model_quantize(mq, QUANT_NF4, 64, 1);
    CHECKF(st == QLAB_OK, "model_quantize: %s", qlab_last_error());
    if (st != QLAB_OK) {
        model_free(mq), model_free(mref);
        return;
    }
    /* The reference holds quant_tensor_dequantize of each projection as plain fp32 weights. */
    size_t proj_elems = 0;
    double qbits = 0;
    for (int l = 0; l < c.n_layers; l++)
        for (int p = 0; p < PROJ_COUNT; p++) {
            linear_weight q = model_get_linear(mq, l, (model_proj)p),
                          r = model_get_linear(mref, l, (model_proj)p);
            CHECK(q.q && !q.w && q.q->ndim == 2 && q.q->shape[0] == q.out_features &&
                  q.q->shape[1] == q.in_features);
            quant_tensor_dequantize(q.q, (float *)r.w);
            proj_elems += (size_t)q.out_features * q.in_features;
            qbits += 8.0 * quant_tensor_bytes(q.q);
        }
    CHECK(model_total_bits(mq) == 32.0 * (count - proj_elems) + qbits);
    int tokens[B * T], targets[B * T];
    random_tokens(tokens, B * T, 32);
    random_tokens(targets, B * T, 32);
    size_t nl = (size_t)B * T * 32;
    float *lq = malloc(sizeof(float) * nl), *lr = malloc(sizeof(float) * nl);
    model_forward(mq, tokens, NULL, B, T, lq, NULL);
    model_forward(mref, tokens, NULL, B, T, lr, NULL);
    double worst = 0;
    for (size_t i = 0; i < nl; i++)
        worst = fmax(worst, fabs(lq[i] - lr[i]));
    /* Same weights, same sgemm per output column block; only the blocking of the GEMM over output
     * columns can differ (tiles vs one call), i.e. fp32 reassociation: ~1e-6 on O(1) logits. */
    CHECKF(worst < 1e-5, "quantized vs dequantized-fp32 logits differ by %.3g", worst);
    /* Gradients of the fp32 parameters of the quantized model; the projections are frozen. */
    check_model_gradients(mq, tokens, targets, B, T, "nf4");
    for (int g = MODEL_GROUP_WQ; g <= MODEL_GROUP_W3; g++) {
        model_param_group pg = model_get_param_group(mq, (model_group)g);
        if (g == MODEL_GROUP_RMS_FFN) continue;
        CHECK(pg.quantized && !pg.trainable);
    }
    free(lq), free(lr);
    model_free(mq), model_free(mref);
}

/* ---------------------------------------------------------------- the real stories260K model */

/* A minimal reader of llama2.c's legacy checkpoint for this test only (the official loaders live in
 * core/checkpoint*.c): 7 int32 header fields, then the weights in model_params order. */
static model *load_stories(const char *path) {
    char *data;
    size_t len;
    if (qlab_read_file(path, &data, &len) != QLAB_OK || len < 28) return NULL;
    int32_t h[7];
    memcpy(h, data, sizeof h);
    model_config c = {.dim = h[0],
                      .hidden_dim = h[1],
                      .n_layers = h[2],
                      .n_heads = h[3],
                      .n_kv_heads = h[4],
                      .vocab_size = h[5] < 0 ? -h[5] : h[5],
                      .seq_len = h[6],
                      .norm_eps = 1e-5f,
                      .rope_theta = 10000.0f,
                      .shared_classifier = h[5] > 0};
    model *m = NULL;
    if (model_create(&m, &c) != QLAB_OK) {
        free(data);
        return NULL;
    }
    size_t count;
    float *p = model_get_param_buffer(m, &count);
    size_t before_final = count - (size_t)c.dim - (c.shared_classifier ? 0 : (size_t)c.vocab_size * c.dim);
    size_t rope_floats = (size_t)c.seq_len * (c.dim / c.n_heads); /* freq_cis real + imag */
    size_t need = 28 + 4 * (count + rope_floats);
    if (len < need) {
        free(data), model_free(m);
        return NULL;
    }
    memcpy(p, data + 28, 4 * (before_final + c.dim));
    if (!c.shared_classifier)
        memcpy(p + before_final + c.dim, data + 28 + 4 * (before_final + c.dim + rope_floats),
               4 * (size_t)c.vocab_size * c.dim);
    free(data);
    return m;
}

static void test_stories260k(void) {
    const char *path = shared_data_path("models/stories260K.bin");
    if (!path) {
        SKIP("models/stories260K.bin not found in the shared data folder");
        return;
    }
    model *m = load_stories(path);
    CHECKF(m != NULL, "could not read %s", path);
    if (!m) return;
    enum { B = 2, T = 24 };
    int tokens[B * T], targets[B * T];
    /* A token sequence the model itself produces greedily from BOS: its loss must be low (a real model),
     * and the batched logits must match the reference. */
    tokens[0] = 1;
    float *logits = malloc(sizeof(float) * B * T * 512);
    for (int t = 1; t < T; t++) {
        model_forward(m, tokens, NULL, 1, t, logits, NULL);
        const float *z = logits + (size_t)(t - 1) * 512;
        int best = 0;
        for (int i = 1; i < 512; i++)
            if (z[i] > z[best]) best = i;
        tokens[t] = best;
    }
    for (int t = 0; t < T; t++)
        tokens[T + t] = (int)rng_below(&rng, 512);
    double err = logits_rel_error(m, tokens, B, T);
    CHECKF(err < 1e-5, "stories260K logits relative error %.3g", err); /* as for the random model */
    for (int t = 0; t < T; t++)
        targets[t] = t + 1 < T ? tokens[t + 1] : -1;
    for (int t = 0; t < T; t++)
        targets[T + t] = -1;
    float loss;
    CHECK(model_forward(m, tokens, targets, B, T, NULL, &loss) == QLAB_OK);
    /* Greedy continuations are the model's top choice at every step: their mean loss is far below
     * log(512) = 6.2 (uniform); 1.5 is a loose bound that a scrambled layout would not meet. */
    CHECKF(loss < 1.5f, "loss on the model's own greedy text %.3f", loss);
    free(logits);
    model_free(m);
}

int main(void) {
    rng_seed(&rng, 20231123);
    test_forward_reference();
    test_gradients();
    test_ignore_mask();
    test_freeze_and_adapter();
    test_adapter_failure();
    test_layout();
    test_clone();
    test_determinism_and_errors();
    test_quantized();
    test_stories260k();
    return check_summary();
}
