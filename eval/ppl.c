/* Perplexity and distance-from-reference evaluation; see ppl.h for the two window protocols.
 * Per-position numbers are computed in parallel into arrays and reduced in a fixed order, so results are
 * bit-identical for a given thread count (and, for the reduction itself, for any). */
#include "eval/ppl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/vmath.h"
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

/* NaN/Inf logits stop the evaluation naming the token position (in the input) where they appear: the rows
 * (those of positions at[0..rows) of the batch's windows of T tokens) are checked in parallel and the first
 * bad one in order is reported. */
static qlab_status ppl_check_logits(const float *logits, int rows, const int *at, int T, int V,
                                    const ppl_window *win, const char *who) {
    int first = rows;
#pragma omp parallel for schedule(static) reduction(min : first)
    for (int r = 0; r < rows; r++)
        if (r < first && vm_first_nonfinite(logits + (size_t)r * V, (size_t)V) < (size_t)V) first = r;
    if (first == rows) return QLAB_OK;
    const float *row = logits + (size_t)first * V;
    size_t v = vm_first_nonfinite(row, (size_t)V);
    return qlab_fail(QLAB_ERR_NUMERIC, "%s logits are %s at token position %lld (vocabulary entry %zu)", who,
                     isnan(row[v]) ? "nan" : "infinite",
                     (long long)(win[at[first] / T].start + at[first] % T), v);
}

typedef struct {
    double nll, ref_nll, kl, dprob;
    int agree;
} position_score;

/* ---------------------------------------------------------------- step 1: the plan */

/* What one evaluation of a token stream does: its windows (in order), the predictions they score, and
 * how many windows go through the model per forward pass. */
typedef struct {
    const int *tokens;
    int64_t n; /* tokens used: at most opt->max_tokens */
    int vocab;
    ppl_window *windows;
    int64_t n_windows, n_scored;
    int batch;
} eval_plan;

static void plan_free(eval_plan *p) {
    free(p->windows);
    memset(p, 0, sizeof *p);
}

/* Checks the options against a model of this config and the tokens against its vocabulary, and plans
 * the windows. The batch holds enough windows to keep the GEMMs wide, bounded so the logits of the
 * `models_per_pass` models run on each batch (1, or 2 with a live reference) stay under ~256 MB; a
 * cached reference is planned with 2 so that its logits, and the model's, are bit-identical to a live
 * run. */
static qlab_status plan_evaluation(const model_config *cfg, const int *tokens, int64_t n,
                                   const ppl_options *opt, int models_per_pass, eval_plan *p) {
    memset(p, 0, sizeof *p);
    int V = cfg->vocab_size;
    if (opt->ctx < 2 || opt->ctx > cfg->seq_len)
        return qlab_fail(QLAB_ERR_ARG, "ctx %d (window length) must be between 2 and the model's context %d",
                         opt->ctx, cfg->seq_len);
    if (opt->protocol == PPL_SLIDING && (opt->stride < 1 || opt->stride > opt->ctx))
        return qlab_fail(QLAB_ERR_ARG, "stride %d (window advance) must be between 1 and ctx %d", opt->stride,
                         opt->ctx);
    if (opt->max_tokens > 0 && n > opt->max_tokens) n = opt->max_tokens;
    for (int64_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= V)
            return qlab_fail(QLAB_ERR_ARG, "token %lld at position %lld is outside the vocabulary (0..%d)",
                             (long long)tokens[i], (long long)i, V - 1);
    int64_t n_windows = ppl_plan_windows(n, opt, NULL, 0);
    if (n_windows == 0)
        return qlab_fail(QLAB_ERR_ARG, "%lld tokens are too few for one window of ctx %d", (long long)n,
                         opt->ctx);
    p->windows = qlab_calloc((size_t)n_windows, sizeof *p->windows);
    if (!p->windows) return QLAB_ERR_NOMEM;
    ppl_plan_windows(n, opt, p->windows, n_windows);
    p->tokens = tokens, p->n = n, p->vocab = V, p->n_windows = n_windows;
    for (int64_t w = 0; w < n_windows; w++)
        p->n_scored += p->windows[w].len - 1 - p->windows[w].score_from;
    if (p->n_scored == 0) {
        plan_free(p);
        return qlab_fail(QLAB_ERR_ARG,
                         "ctx %d scores no tokens (each window scores its positions after the first %s); "
                         "use a larger ctx",
                         opt->ctx, opt->protocol == PPL_SLIDING ? "ctx - stride" : "half");
    }
    int batch = opt->batch > 0 ? opt->batch : 16;
    while (batch > 1 &&
           (size_t)batch * opt->ctx * V * sizeof(float) * (size_t)models_per_pass > ((size_t)256 << 20))
        batch /= 2;
    p->batch = batch;
    return QLAB_OK;
}

/* ---------------------------------------------------------------- step 2: batched forward passes */

/* Buffers of one batch: its tokens, the positions it scores and their logits from the model (and from a
 * live reference). */
typedef struct {
    int *tokens;
    int *at, n_at; /* the scored positions (window i's at i T + score_from ..), in order */
    int *first;    /* per window, its first row of logits */
    float *logits, *ref_logits;
    int64_t w0; /* first window of the batch */
    int B, T;   /* windows in the batch, tokens per window */
} eval_batch;

static qlab_status batch_alloc(const eval_plan *p, int with_ref, int ctx, eval_batch *b) {
    memset(b, 0, sizeof *b);
    size_t positions = (size_t)p->batch * (size_t)ctx, logits = positions * (size_t)p->vocab;
    b->tokens = qlab_calloc(positions, sizeof(int));
    b->at = qlab_calloc(positions, sizeof(int));
    b->first = qlab_calloc((size_t)p->batch, sizeof(int));
    b->logits = qlab_calloc(logits, sizeof(float));
    b->ref_logits = with_ref ? qlab_calloc(logits, sizeof(float)) : NULL;
    return b->tokens && b->at && b->first && b->logits && (!with_ref || b->ref_logits) ? QLAB_OK
                                                                                       : QLAB_ERR_NOMEM;
}

static void batch_free(eval_batch *b) {
    free(b->tokens), free(b->at), free(b->first), free(b->logits), free(b->ref_logits);
    memset(b, 0, sizeof *b);
}

/* Runs the run of consecutive equal-length windows from w0 (all but a sliding protocol's last window have
 * the same length) through m, and through ref when non-NULL; non-finite logits are an error naming
 * m_name (or the fp32 reference) and the token position. */
static qlab_status forward_batch(const eval_plan *p, int64_t w0, model *m, const char *m_name, model *ref,
                                 eval_batch *b) {
    b->w0 = w0;
    b->B = 0;
    b->T = p->windows[w0].len;
    while (b->B < p->batch && w0 + b->B < p->n_windows && p->windows[w0 + b->B].len == b->T)
        b->B++;
    const ppl_window *win = p->windows + w0;
    b->n_at = 0;
    for (int i = 0; i < b->B; i++) {
        memcpy(b->tokens + (size_t)i * b->T, p->tokens + win[i].start, sizeof(int) * (size_t)b->T);
        b->first[i] = b->n_at;
        for (int t = win[i].score_from; t < win[i].len - 1; t++) /* the last token predicts nothing here */
            b->at[b->n_at++] = i * b->T + t;
    }
    if (b->n_at == 0) return QLAB_OK;
    /* the classifier over the scored positions only */
    QLAB_TRY(model_forward_at(m, b->tokens, b->B, b->T, b->at, b->n_at, b->logits));
    QLAB_TRY(ppl_check_logits(b->logits, b->n_at, b->at, b->T, p->vocab, win, m_name));
    if (!ref) return QLAB_OK;
    QLAB_TRY(model_forward_at(ref, b->tokens, b->B, b->T, b->at, b->n_at, b->ref_logits));
    return ppl_check_logits(b->ref_logits, b->n_at, b->at, b->T, p->vocab, win, "fp32 reference");
}

/* Logits of the first scored position of window i of the batch; the others follow, one row of V each. */
static const float *scored_rows(const eval_plan *p, const eval_batch *b, const float *logits, int i) {
    return logits + (size_t)b->first[i] * (size_t)p->vocab;
}

/* ---------------------------------------------------------------- step 3: scoring */

/* Scores `count` positions whose logits are rows of `logits` and whose targets are targets[0..count):
 * NLL; with ref_rows (the reference's logits of the same positions), also KL, agreement and dprob. Each
 * row's log-sum-exp is max + log(sum of exp(x - max)), the exps in fp32 and the sum in double
 * (core/base/vmath); KL(ref || model) = sum p_ref (x_ref - x) - lse_ref + lse in one pass over both rows,
 * exactly 0 when the rows are equal. */
static void score_positions(const float *logits, const float *ref_rows, const int *targets, int count, int V,
                            position_score *scores) {
#pragma omp parallel for schedule(static)
    for (int k = 0; k < count; k++) {
        int target = targets[k];
        position_score *s = &scores[k];
        const float *x = logits + (size_t)k * V;
        size_t arg;
        float mx = vm_max_index(x, (size_t)V, &arg);
        double lse = (double)mx + log(vm_sum_exp_shift(x, (size_t)V, mx));
        s->nll = lse - (double)x[target];
        if (!ref_rows) continue;
        const float *r = ref_rows + (size_t)k * V;
        size_t arg_ref;
        float mr = vm_max_index(r, (size_t)V, &arg_ref);
        double sum, cross;
        vm_sum_exp_cross(r, x, (size_t)V, mr, &sum, &cross);
        double lse_ref = (double)mr + log(sum);
        double kl = cross / sum - lse_ref + lse;
        s->kl = kl > 0 ? kl : 0; /* rounding can give -1e-17 for nearly identical models */
        s->ref_nll = lse_ref - (double)r[target];
        s->agree = arg == arg_ref;
        s->dprob = exp(-s->nll) - exp(-s->ref_nll);
    }
}

/* The reference's logits for the positions of window i of batch b: the live reference's, or the cache's
 * rows from `scored_before` (positions scored by earlier windows) on; NULL without a reference. */
typedef struct {
    int live;                   /* a reference model runs beside m on every batch */
    const ppl_reference *cache; /* else its logits are read from here (or there is no reference) */
} reference_source;

static const float *reference_rows(reference_source src, const eval_plan *p, const eval_batch *b, int i,
                                   int64_t scored_before) {
    if (src.live) return scored_rows(p, b, b->ref_logits, i);
    return src.cache ? src.cache->logits + (size_t)scored_before * (size_t)p->vocab : NULL;
}

/* Forward passes of m (and a live ref) over the plan, scoring every position into scores[n_scored]. */
static qlab_status score_stream(const eval_plan *p, model *m, model *ref, reference_source src, int ctx,
                                int quiet, position_score *scores) {
    eval_batch b = {0};
    int *targets = qlab_calloc((size_t)ctx, sizeof(int));
    qlab_status st = targets ? batch_alloc(p, ref != NULL, ctx, &b) : QLAB_ERR_NOMEM;
    progress prog;
    progress_begin(&prog, "perplexity", p->n_windows);
    prog.quiet |= quiet;
    int64_t scored = 0;
    for (int64_t w0 = 0; st == QLAB_OK && w0 < p->n_windows; w0 += b.B) {
        st = forward_batch(p, w0, m, "model", ref, &b);
        for (int i = 0; st == QLAB_OK && i < b.B; i++) {
            const ppl_window *win = &p->windows[w0 + i];
            int count = win->len - 1 - win->score_from;
            memcpy(targets, p->tokens + win->start + win->score_from + 1, sizeof(int) * (size_t)count);
            score_positions(scored_rows(p, &b, b.logits, i), reference_rows(src, p, &b, i, scored), targets,
                            count, p->vocab, scores + scored);
            scored += count;
        }
        if (st == QLAB_OK) progress_update(&prog, w0 + b.B, NULL);
    }
    if (st == QLAB_OK) progress_end(&prog, NULL);
    batch_free(&b);
    free(targets);
    return st;
}

/* Packs m's weights for this evaluation unless they are already (returns whether it did, so the caller
 * unpacks what it packed). Packing only saves work: when it fails (memory) the evaluation runs unpacked,
 * with the same bits. */
static int pack_for_evaluation(model *m) {
    if (!m || model_weights_packed(m) || model_get_compute(m) != QLAB_COMPUTE_BF16) return 0;
    return model_pack_weights(m) == QLAB_OK;
}

/* ---------------------------------------------------------------- step 4: fixed-order reductions */

static void summarize_nll(const eval_plan *p, const ppl_options *opt, const position_score *scores,
                          ppl_result *out) {
    int64_t n_scored = p->n_scored;
    double sum = 0, sum2 = 0;
    for (int64_t i = 0; i < n_scored; i++) {
        sum += scores[i].nll;
        sum2 += scores[i].nll * scores[i].nll;
    }
    out->protocol_name = opt->protocol == PPL_NONOVERLAP ? "nonoverlap" : "sliding";
    out->ctx = opt->ctx;
    out->stride = opt->protocol == PPL_NONOVERLAP ? opt->ctx : opt->stride;
    out->n_tokens_used = p->windows[p->n_windows - 1].start + p->windows[p->n_windows - 1].len;
    out->n_scored = n_scored;
    out->mean_nll = sum / (double)n_scored;
    double var = n_scored > 1 ? (sum2 - sum * sum / (double)n_scored) / (double)(n_scored - 1) : 0;
    out->nll_stderr = sqrt(var > 0 ? var : 0) / sqrt((double)n_scored);
    out->ppl = exp(out->mean_nll);
    out->ppl_lo = exp(out->mean_nll - 1.96 * out->nll_stderr);
    out->ppl_hi = exp(out->mean_nll + 1.96 * out->nll_stderr);
}

static qlab_status summarize_distance(int64_t n_scored, const position_score *scores, ppl_result *out) {
    double *kl = qlab_calloc((size_t)n_scored, sizeof(double));
    if (!kl) return QLAB_ERR_NOMEM;
    double kl_sum = 0, ref_sum = 0, agree = 0, dprob = 0;
    for (int64_t i = 0; i < n_scored; i++) {
        ref_sum += scores[i].ref_nll;
        agree += scores[i].agree;
        dprob += scores[i].dprob;
        kl_sum += (kl[i] = scores[i].kl);
    }
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
    return QLAB_OK;
}

/* ---------------------------------------------------------------- the entry points */

/* Plans, scores and reduces one evaluation of m against the reference source (live model ref, or the
 * cache, or none). */
static qlab_status evaluate(model *m, model *ref, const ppl_reference *cache, const int *tokens, int64_t n,
                            const ppl_options *opt, ppl_result *out) {
    memset(out, 0, sizeof *out);
    const model_config *cfg = model_get_config(m);
    if (ref && model_get_config(ref)->vocab_size != cfg->vocab_size)
        return qlab_fail(QLAB_ERR_ARG, "reference model has vocabulary %d, model has %d",
                         model_get_config(ref)->vocab_size, cfg->vocab_size);
    eval_plan p;
    QLAB_TRY(plan_evaluation(cfg, tokens, n, opt, ref || cache ? 2 : 1, &p));
    if (cache && (cache->vocab != p.vocab || cache->n_scored != p.n_scored)) {
        qlab_status st = qlab_fail(
            QLAB_ERR_ARG,
            "cached reference holds %lld positions of vocabulary %d; this evaluation scores %lld of %d",
            (long long)cache->n_scored, cache->vocab, (long long)p.n_scored, p.vocab);
        plan_free(&p);
        return st;
    }
    position_score *scores = qlab_calloc((size_t)p.n_scored, sizeof *scores);
    reference_source src = {.live = ref != NULL, .cache = cache};
    int packed_m = pack_for_evaluation(m), packed_ref = pack_for_evaluation(ref);
    qlab_status st = scores ? score_stream(&p, m, ref, src, opt->ctx, opt->quiet, scores) : QLAB_ERR_NOMEM;
    if (packed_m) model_unpack_weights(m);
    if (packed_ref) model_unpack_weights(ref);
    if (st == QLAB_OK) summarize_nll(&p, opt, scores, out);
    if (st == QLAB_OK && (ref || cache)) st = summarize_distance(p.n_scored, scores, out);
    free(scores);
    plan_free(&p);
    return st;
}

qlab_status ppl_evaluate(model *m, model *ref, const int *tokens, int64_t n, const ppl_options *opt,
                         ppl_result *out) {
    return evaluate(m, ref, NULL, tokens, n, opt, out);
}

qlab_status ppl_evaluate_cached(model *m, const ppl_reference *ref, const int *tokens, int64_t n,
                                const ppl_options *opt, ppl_result *out) {
    return evaluate(m, NULL, ref, tokens, n, opt, out);
}

qlab_status ppl_evaluate_reference(const ppl_reference *ref, const model_config *cfg, const int *tokens,
                                   int64_t n, const ppl_options *opt, ppl_result *out) {
    memset(out, 0, sizeof *out);
    eval_plan p;
    QLAB_TRY(plan_evaluation(cfg, tokens, n, opt, 2, &p));
    qlab_status st = QLAB_OK;
    if (ref->vocab != p.vocab || ref->n_scored != p.n_scored || !ref->logits)
        st = qlab_fail(
            QLAB_ERR_ARG,
            "cached reference holds %lld positions of vocabulary %d; this evaluation scores %lld of %d",
            (long long)ref->n_scored, ref->vocab, (long long)p.n_scored, p.vocab);
    position_score *scores = st == QLAB_OK ? qlab_calloc((size_t)p.n_scored, sizeof *scores) : NULL;
    int *targets = st == QLAB_OK ? qlab_calloc((size_t)opt->ctx + 1, sizeof(int)) : NULL;
    if (st == QLAB_OK && (!scores || !targets)) st = QLAB_ERR_NOMEM;
    int64_t scored = 0;
    for (int64_t w = 0; st == QLAB_OK && w < p.n_windows; w++) {
        const ppl_window *win = &p.windows[w];
        int count = win->len - 1 - win->score_from;
        memcpy(targets, p.tokens + win->start + win->score_from + 1, sizeof(int) * (size_t)count);
        score_positions(ref->logits + (size_t)scored * (size_t)p.vocab, NULL, targets, count, p.vocab,
                        scores + scored);
        scored += count;
    }
    if (st == QLAB_OK) summarize_nll(&p, opt, scores, out);
    free(targets);
    free(scores);
    plan_free(&p);
    return st;
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

/* The reference's logits at every scored position, from forward passes batched exactly as when it runs
 * beside a model (so they are the bits a live reference would give). */
qlab_status ppl_reference_compute(model *ref, const int *tokens, int64_t n, const ppl_options *opt,
                                  ppl_reference *out) {
    memset(out, 0, sizeof *out);
    eval_plan p;
    QLAB_TRY(plan_evaluation(model_get_config(ref), tokens, n, opt, 2, &p));
    size_t V = (size_t)p.vocab;
    float *logits = qlab_alloc_aligned((size_t)p.n_scored * V * sizeof(float));
    eval_batch b = {0};
    qlab_status st = logits ? batch_alloc(&p, 0, opt->ctx, &b) : QLAB_ERR_NOMEM;
    progress prog;
    progress_begin(&prog, "perplexity", p.n_windows);
    prog.quiet |= opt->quiet;
    int64_t scored = 0;
    int packed = pack_for_evaluation(ref);
    for (int64_t w0 = 0; st == QLAB_OK && w0 < p.n_windows; w0 += b.B) {
        st = forward_batch(&p, w0, ref, "fp32 reference", NULL, &b);
        for (int i = 0; st == QLAB_OK && i < b.B; i++) {
            const ppl_window *win = &p.windows[w0 + i];
            size_t count = (size_t)(win->len - 1 - win->score_from);
            memcpy(logits + (size_t)scored * V, scored_rows(&p, &b, b.logits, i), sizeof(float) * count * V);
            scored += (int64_t)count;
        }
        if (st == QLAB_OK) progress_update(&prog, w0 + b.B, NULL);
    }
    if (st == QLAB_OK) progress_end(&prog, NULL);
    if (packed) model_unpack_weights(ref);
    batch_free(&b);
    if (st == QLAB_OK) {
        out->n_scored = p.n_scored;
        out->vocab = p.vocab;
        out->logits = logits;
    } else {
        qlab_free_aligned(logits);
    }
    plan_free(&p);
    return st;
}

void ppl_reference_free(ppl_reference *r) {
    qlab_free_aligned(r->logits);
    memset(r, 0, sizeof *r);
}
