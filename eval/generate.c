/* Sampling loop for `qlab generate`; see generate.h. Each step runs the model over the whole sequence so
 * far (no KV cache): quadratic, but the models qlab generates from are small and the code stays simple. */
#include "eval/generate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    float prob;
    int index;
} prob_index;

static int by_prob_desc(const void *a, const void *b) {
    const prob_index *x = a, *y = b;
    if (x->prob != y->prob) return x->prob < y->prob ? 1 : -1;
    return x->index - y->index; /* stable for equal probabilities: determinism across qsort versions */
}

int generate_sample(float *logits, int vocab, const generate_options *opt, rng_state *rng) {
    if (opt->temperature <= 0.0f) {
        int best = 0;
        for (int i = 1; i < vocab; i++)
            if (logits[i] > logits[best]) best = i;
        return best;
    }
    float mx = -INFINITY;
    for (int i = 0; i < vocab; i++) {
        logits[i] /= opt->temperature;
        if (logits[i] > mx) mx = logits[i];
    }
    double sum = 0;
    for (int i = 0; i < vocab; i++)
        sum += (logits[i] = expf(logits[i] - mx));
    for (int i = 0; i < vocab; i++)
        logits[i] = (float)(logits[i] / sum);
    double coin = rng_uniform(rng);
    if (opt->top_p <= 0.0f || opt->top_p >= 1.0f) {
        double cdf = 0;
        for (int i = 0; i < vocab; i++) {
            cdf += logits[i];
            if (coin < cdf) return i;
        }
        return vocab - 1;
    }
    prob_index *pi = malloc(sizeof *pi * (size_t)vocab);
    if (!pi) return 0;
    for (int i = 0; i < vocab; i++)
        pi[i] = (prob_index){logits[i], i};
    qsort(pi, (size_t)vocab, sizeof *pi, by_prob_desc);
    double cumulative = 0;
    int last = vocab - 1;
    for (int i = 0; i < vocab; i++) {
        cumulative += pi[i].prob;
        if (cumulative > opt->top_p) {
            last = i;
            break;
        }
    }
    double r = coin * cumulative, cdf = 0;
    int chosen = pi[last].index;
    for (int i = 0; i <= last; i++) {
        cdf += pi[i].prob;
        if (r < cdf) {
            chosen = pi[i].index;
            break;
        }
    }
    free(pi);
    return chosen;
}

qlab_status generate(model *m, const int *prompt, int n_prompt, const generate_options *opt, int *out,
                     int *n_out, void (*on_token)(int token, void *ctx), void *ctx) {
    const model_config *cfg = model_get_config(m);
    if (n_prompt < 1) return qlab_fail(QLAB_ERR_ARG, "generation needs at least one prompt token (BOS)");
    if (opt->max_tokens > cfg->seq_len || opt->max_tokens < n_prompt)
        return qlab_fail(QLAB_ERR_ARG,
                         "max_tokens %d must be between the prompt length %d and the model's context %d",
                         opt->max_tokens, n_prompt, cfg->seq_len);
    float *logits = qlab_calloc((size_t)cfg->vocab_size, sizeof(float)); /* the last position's */
    if (!logits) return QLAB_ERR_NOMEM;
    rng_state rng;
    rng_seed(&rng, opt->seed);
    memcpy(out, prompt, sizeof(int) * (size_t)n_prompt);
    int n = n_prompt;
    qlab_status st = QLAB_OK;
    /* bf16 weights rounded (4-bit ones dequantized) once for the whole generation, not per token; packing
     * only saves work, so a failure (memory) leaves them unpacked, with the same bits */
    int packed = model_get_compute(m) == QLAB_COMPUTE_BF16 && !model_weights_packed(m) &&
                 model_pack_weights(m) == QLAB_OK;
    model_cache_clear(m); /* the prompt's keys and values are formed once, then one position per token */
    while (n < opt->max_tokens) {
        st = model_forward_next(m, out, n, logits);
        if (st != QLAB_OK) break;
        for (int v = 0; v < cfg->vocab_size && st == QLAB_OK; v++)
            if (!isfinite(logits[v]))
                st = qlab_fail(QLAB_ERR_NUMERIC, "generate: the model's logits are %s at position %d",
                               isnan(logits[v]) ? "nan" : "infinite", n - 1);
        if (st != QLAB_OK) break;
        int next = generate_sample(logits, cfg->vocab_size, opt, &rng);
        if (next == opt->stop_id_a || next == opt->stop_id_b) break;
        out[n++] = next;
        if (on_token) on_token(next, ctx);
    }
    if (packed) model_unpack_weights(m);
    model_cache_clear(m);
    free(logits);
    *n_out = n;
    return st;
}
