/* Perplexity and distance-from-reference evaluation; see ppl.h for the two window protocols.
 * Per-position numbers are computed in parallel into arrays and reduced in a fixed order, so results are
 * bit-identical for a given thread count (and, for the reduction itself, for any). */
#include "eval/ppl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/progress.h"

int64_t ppl_plan_windows(int64_t n, const ppl_options *opt, ppl_window *windows, int64_t cap) {
    int64_t count = 0;
    if (opt->ctx < 2 || n < 2) return 0;
    if (opt->protocol == PPL_NONOVERLAP) {
        for (int64_t start = 0; start + opt->ctx <= n; start += opt->ctx) {
            if (count < cap) windows[count] = (ppl_window){start, opt->ctx, opt->ctx / 2};
            count++;
        }
        return count;
    }
    if (opt->stride < 1 || opt->stride > opt->ctx) return 0;
    /* The first window scores all its predictions; each later window is the ctx tokens ending `step`
     * tokens further on and scores only the targets no earlier window scored, so each has at least
     * ctx - step tokens of context. A window of ctx tokens makes only ctx-1 predictions, so a stride of
     * ctx advances by ctx-1: unlike Hugging Face's loop, no window's first token goes unscored. */
    int64_t prev_end = opt->ctx < n ? opt->ctx : n;
    if (count < cap) windows[count] = (ppl_window){0, (int)prev_end, 0};
    count++;
    int step = opt->stride < opt->ctx ? opt->stride : opt->ctx - 1;
    while (prev_end < n) {
        int64_t end = prev_end + step < n ? prev_end + step : n;
        int64_t start = end - opt->ctx;
        if (count < cap) windows[count] = (ppl_window){start, opt->ctx, (int)(prev_end - start - 1)};
        count++;
        prev_end = end;
    }
    return count;
}

static int compare_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double percentile_sorted(const double *v, int64_t n, double q) {
    if (n == 0) return NAN;
    double pos = q * (double)(n - 1);
    int64_t i = (int64_t)pos;
    double frac = pos - (double)i;
    return i + 1 < n ? v[i] * (1 - frac) + v[i + 1] * frac : v[n - 1];
}

/* log-softmax of one row of logits into out (double), returning the argmax. */
static int log_softmax_row(const float *logits, int V, double *out) {
    double mx = logits[0];
    int arg = 0;
    for (int i = 1; i < V; i++)
        if (logits[i] > mx) mx = logits[i], arg = i;
    double sum = 0;
    for (int i = 0; i < V; i++)
        sum += exp((double)logits[i] - mx);
    double lse = mx + log(sum);
    for (int i = 0; i < V; i++)
        out[i] = (double)logits[i] - lse;
    return arg;
}

/* NaN/Inf logits stop the evaluation naming the token position (in the input) where they appear. */
static qlab_status ppl_check_logits(const float *logits, int B, int T, int V, const ppl_window *win,
                                    const char *who) {
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            const float *row = logits + ((size_t)b * T + (size_t)t) * (size_t)V;
            for (int v = 0; v < V; v++)
                if (!isfinite(row[v]))
                    return qlab_fail(QLAB_ERR_NUMERIC,
                                     "%s logits are %s at token position %lld (vocabulary entry %d)", who,
                                     isnan(row[v]) ? "nan" : "infinite", (long long)(win[b].start + t), v);
        }
    return QLAB_OK;
}

typedef struct {
    double nll, ref_nll, kl, dprob;
    int agree;
} position_score;

/* The one evaluation loop behind the public entry points. The reference distribution of each scored
 * position comes from running `ref` on the same batch, or from `ref_cache` (row i = the i-th scored
 * position); `paired` says a reference is involved, which sets the batch size exactly as a live reference
 * would, so m's logits (and a captured reference's) are bit-identical either way. `capture`, if non-NULL,
 * receives m's logits at every scored position. */
static qlab_status evaluate(model *m, model *ref, const ppl_reference *ref_cache, float *capture, int paired,
                            const int *tokens, int64_t n, const ppl_options *opt, ppl_result *out) {
    memset(out, 0, sizeof *out);
    const model_config *cfg = model_get_config(m);
    int V = cfg->vocab_size;
    if (ref && model_get_config(ref)->vocab_size != V)
        return qlab_fail(QLAB_ERR_ARG, "reference model has vocabulary %d, model has %d",
                         model_get_config(ref)->vocab_size, V);
    if (opt->ctx < 2 || opt->ctx > cfg->seq_len)
        return qlab_fail(QLAB_ERR_ARG, "--ctx %d must be between 2 and the model's context %d", opt->ctx,
                         cfg->seq_len);
    if (opt->protocol == PPL_SLIDING && (opt->stride < 1 || opt->stride > opt->ctx))
        return qlab_fail(QLAB_ERR_ARG, "--stride %d must be between 1 and --ctx %d", opt->stride, opt->ctx);
    if (opt->max_tokens > 0 && n > opt->max_tokens) n = opt->max_tokens;
    for (int64_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= V)
            return qlab_fail(QLAB_ERR_ARG, "token %lld at position %lld is outside the vocabulary (0..%d)",
                             (long long)tokens[i], (long long)i, V - 1);

    int64_t n_windows = ppl_plan_windows(n, opt, NULL, 0);
    if (n_windows == 0)
        return qlab_fail(QLAB_ERR_ARG, "%lld tokens are too few for one window of --ctx %d", (long long)n,
                         opt->ctx);
    ppl_window *windows = qlab_calloc((size_t)n_windows, sizeof *windows);
    if (!windows) return QLAB_ERR_NOMEM;
    ppl_plan_windows(n, opt, windows, n_windows);
    int64_t n_scored = 0;
    for (int64_t w = 0; w < n_windows; w++)
        n_scored += windows[w].len - 1 - windows[w].score_from;
    if (n_scored == 0) {
        free(windows);
        return qlab_fail(QLAB_ERR_ARG,
                         "--ctx %d scores no tokens (each window scores its positions after the first %s); "
                         "use a larger --ctx",
                         opt->ctx, opt->protocol == PPL_SLIDING ? "ctx - stride" : "half");
    }
    if (ref_cache && (ref_cache->vocab != V || ref_cache->n_scored != n_scored)) {
        free(windows);
        return qlab_fail(
            QLAB_ERR_ARG,
            "cached reference holds %lld positions of vocabulary %d; this evaluation scores %lld of %d",
            (long long)ref_cache->n_scored, ref_cache->vocab, (long long)n_scored, V);
    }
    int has_ref = ref || ref_cache;

    /* Enough windows per pass to keep the GEMMs wide, bounded so the logits stay under ~256 MB. */
    int batch = opt->batch > 0 ? opt->batch : 16;
    while (batch > 1 && (size_t)batch * opt->ctx * V * sizeof(float) * (paired ? 2 : 1) > ((size_t)256 << 20))
        batch /= 2;

    qlab_status st = QLAB_OK;
    float *logits = qlab_calloc((size_t)batch * opt->ctx * V, sizeof(float));
    float *ref_logits = ref ? qlab_calloc((size_t)batch * opt->ctx * V, sizeof(float)) : NULL;
    int *batch_tokens = qlab_calloc((size_t)batch * opt->ctx, sizeof(int));
    position_score *scores = qlab_calloc((size_t)n_scored, sizeof *scores);
    if (!logits || (ref && !ref_logits) || !batch_tokens || !scores) {
        st = QLAB_ERR_NOMEM;
        goto done;
    }

    progress prog;
    progress_begin(&prog, "perplexity", n_windows);
    prog.quiet |= opt->quiet;
    int64_t scored_so_far = 0;
    for (int64_t w0 = 0; w0 < n_windows;) {
        /* A batch is a run of consecutive windows of equal length (all but a sliding protocol's last). */
        int B = 0, T = windows[w0].len;
        while (B < batch && w0 + B < n_windows && windows[w0 + B].len == T)
            B++;
        for (int b = 0; b < B; b++)
            memcpy(batch_tokens + (size_t)b * T, tokens + windows[w0 + b].start, sizeof(int) * (size_t)T);
        st = model_forward(m, batch_tokens, NULL, B, T, logits, NULL);
        if (st == QLAB_OK) st = ppl_check_logits(logits, B, T, V, windows + w0, "model");
        if (st == QLAB_OK && ref) st = model_forward(ref, batch_tokens, NULL, B, T, ref_logits, NULL);
        if (st == QLAB_OK && ref) st = ppl_check_logits(ref_logits, B, T, V, windows + w0, "fp32 reference");
        if (st != QLAB_OK) goto done;

        for (int b = 0; b < B; b++) {
            const ppl_window *win = &windows[w0 + b];
            int count = win->len - 1 - win->score_from;
            int failed = 0;
#pragma omp parallel
            {
                double *lp = malloc(sizeof(double) * (size_t)V);
                double *lp_ref = has_ref ? malloc(sizeof(double) * (size_t)V) : NULL;
                if (!lp || (has_ref && !lp_ref)) {
#pragma omp atomic write
                    failed = 1;
                }
#pragma omp for schedule(static)
                for (int k = 0; k < count; k++) {
                    if (!lp || (has_ref && !lp_ref)) continue;
                    int j = win->score_from + k;
                    int target = tokens[win->start + j + 1];
                    size_t row = ((size_t)b * T + (size_t)j) * (size_t)V;
                    position_score *s = &scores[scored_so_far + k];
                    int arg = log_softmax_row(logits + row, V, lp);
                    s->nll = -lp[target];
                    if (capture)
                        memcpy(capture + (size_t)(scored_so_far + k) * (size_t)V, logits + row,
                               sizeof(float) * (size_t)V);
                    if (has_ref) {
                        const float *ref_row =
                            ref_cache ? ref_cache->logits + (size_t)(scored_so_far + k) * (size_t)V
                                      : ref_logits + row;
                        int arg_ref = log_softmax_row(ref_row, V, lp_ref);
                        double kl = 0;
                        for (int v = 0; v < V; v++)
                            kl += exp(lp_ref[v]) * (lp_ref[v] - lp[v]);
                        s->kl = kl > 0 ? kl : 0; /* rounding can give -1e-17 for identical models */
                        s->ref_nll = -lp_ref[target];
                        s->agree = arg == arg_ref;
                        s->dprob = exp(lp[target]) - exp(lp_ref[target]);
                    }
                }
                free(lp);
                free(lp_ref);
            }
            if (failed) {
                st = qlab_fail(QLAB_ERR_NOMEM, "out of memory for log-probabilities (vocab %d)", V);
                goto done;
            }
            scored_so_far += count;
        }
        w0 += B;
        progress_update(&prog, w0, NULL);
    }
    progress_end(&prog, NULL);

    /* Fixed-order reductions. */
    double sum = 0, sum2 = 0, ref_sum = 0, agree = 0, dprob = 0;
    for (int64_t i = 0; i < n_scored; i++) {
        sum += scores[i].nll;
        sum2 += scores[i].nll * scores[i].nll;
        ref_sum += scores[i].ref_nll;
        agree += scores[i].agree;
        dprob += scores[i].dprob;
    }
    out->protocol_name = opt->protocol == PPL_NONOVERLAP ? "nonoverlap" : "sliding";
    out->ctx = opt->ctx;
    out->stride = opt->protocol == PPL_NONOVERLAP ? opt->ctx : opt->stride;
    out->n_tokens_used = windows[n_windows - 1].start + windows[n_windows - 1].len;
    out->n_scored = n_scored;
    out->mean_nll = sum / (double)n_scored;
    double var = n_scored > 1 ? (sum2 - sum * sum / (double)n_scored) / (double)(n_scored - 1) : 0;
    out->nll_stderr = sqrt(var > 0 ? var : 0) / sqrt((double)n_scored);
    out->ppl = exp(out->mean_nll);
    out->ppl_lo = exp(out->mean_nll - 1.96 * out->nll_stderr);
    out->ppl_hi = exp(out->mean_nll + 1.96 * out->nll_stderr);
    if (has_ref) {
        double *kl = qlab_calloc((size_t)n_scored, sizeof(double));
        if (!kl) {
            st = QLAB_ERR_NOMEM;
            goto done;
        }
        double kl_sum = 0;
        for (int64_t i = 0; i < n_scored; i++)
            kl_sum += (kl[i] = scores[i].kl);
        qsort(kl, (size_t)n_scored, sizeof(double), compare_double);
        out->has_reference = 1;
        out->kl_mean = kl_sum / (double)n_scored;
        out->kl_p50 = percentile_sorted(kl, n_scored, 0.50);
        out->kl_p90 = percentile_sorted(kl, n_scored, 0.90);
        out->kl_p99 = percentile_sorted(kl, n_scored, 0.99);
        out->kl_max = kl[n_scored - 1];
        out->top1_agree = agree / (double)n_scored;
        out->dprob_correct = dprob / (double)n_scored;
        out->ref_mean_nll = ref_sum / (double)n_scored;
        out->ref_ppl = exp(out->ref_mean_nll);
        free(kl);
    }
done:
    free(windows);
    free(logits);
    free(ref_logits);
    free(batch_tokens);
    free(scores);
    return st;
}

qlab_status ppl_evaluate(model *m, model *ref, const int *tokens, int64_t n, const ppl_options *opt,
                         ppl_result *out) {
    return evaluate(m, ref, NULL, NULL, ref != NULL, tokens, n, opt, out);
}

size_t ppl_reference_bytes(model *ref, int64_t n, const ppl_options *opt) {
    if (opt->max_tokens > 0 && n > opt->max_tokens) n = opt->max_tokens;
    int64_t n_windows = ppl_plan_windows(n, opt, NULL, 0);
    ppl_window *windows = n_windows > 0 ? calloc((size_t)n_windows, sizeof *windows) : NULL;
    if (!windows) return 0;
    ppl_plan_windows(n, opt, windows, n_windows);
    int64_t n_scored = 0;
    for (int64_t w = 0; w < n_windows; w++)
        n_scored += windows[w].len - 1 - windows[w].score_from;
    free(windows);
    return (size_t)n_scored * (size_t)model_get_config(ref)->vocab_size * sizeof(float);
}

qlab_status ppl_reference_compute(model *ref, const int *tokens, int64_t n, const ppl_options *opt,
                                  ppl_reference *out) {
    memset(out, 0, sizeof *out);
    size_t bytes = ppl_reference_bytes(ref, n, opt);
    if (bytes == 0)
        return qlab_fail(QLAB_ERR_ARG, "%lld tokens are too few for one window of --ctx %d", (long long)n,
                         opt->ctx);
    float *logits = qlab_alloc_aligned(bytes);
    if (!logits) return QLAB_ERR_NOMEM;
    ppl_result res;
    qlab_status st = evaluate(ref, NULL, NULL, logits, 1, tokens, n, opt, &res);
    if (st != QLAB_OK) {
        qlab_free_aligned(logits);
        return st;
    }
    out->n_scored = res.n_scored;
    out->vocab = model_get_config(ref)->vocab_size;
    out->logits = logits;
    return QLAB_OK;
}

void ppl_reference_free(ppl_reference *r) {
    qlab_free_aligned(r->logits);
    memset(r, 0, sizeof *r);
}

qlab_status ppl_evaluate_cached(model *m, const ppl_reference *ref, const int *tokens, int64_t n,
                                const ppl_options *opt, ppl_result *out) {
    return evaluate(m, NULL, ref, NULL, 1, tokens, n, opt, out);
}
