/* Perplexity evaluation of a language model on a token stream, and the distance of a (quantized) model
 * from a reference (fp32) model on the same tokens: KL divergence, top-1 agreement, change in the
 * probability of the correct token. Windows are batched so the matrix products run as GEMMs. */
#ifndef QLAB_EVAL_PPL_H
#define QLAB_EVAL_PPL_H

#include <stdint.h>

#include "core/base/common.h"
#include "core/model/model.h"

typedef enum {
    /* llama.cpp's convention: non-overlapping windows of ctx tokens, scoring only the predictions in the
     * second half of each window (positions ctx/2 .. ctx-2 predict tokens ctx/2+1 .. ctx-1), so every
     * scored token has at least ctx/2 tokens of context. */
    PPL_NONOVERLAP = 0,
    /* Hugging Face's sliding window: windows of ctx tokens advancing by stride tokens; each window scores
     * only the targets no earlier window scored, so every token after the first is scored exactly once
     * with at least ctx - stride tokens of context (a stride of ctx advances by ctx-1, since a window of
     * ctx tokens makes ctx-1 predictions). */
    PPL_SLIDING = 1,
} ppl_protocol;

typedef struct {
    ppl_protocol protocol;
    int ctx;            /* window length in tokens (<= the model's seq_len) */
    int stride;         /* PPL_SLIDING only: 1 <= stride <= ctx */
    int64_t max_tokens; /* evaluate at most this many tokens of the stream (0 = all) */
    int batch;          /* windows per forward pass (0 = choose from memory) */
    int quiet;          /* no progress line (the caller shows its own) */
} ppl_options;

typedef struct {
    const char *protocol_name; /* "nonoverlap" or "sliding" */
    int ctx, stride;
    int64_t n_tokens_used;      /* tokens of the stream covered */
    int64_t n_scored;           /* predictions scored */
    double mean_nll;            /* nats per scored token */
    double nll_stderr;          /* standard error of the mean NLL (tokens treated as independent) */
    double ppl, ppl_lo, ppl_hi; /* exp(mean_nll) and its 95% interval exp(mean +- 1.96 se) */
    /* Distance from the reference model; valid when has_reference. */
    int has_reference;
    double kl_mean, kl_p50, kl_p90, kl_p99, kl_max; /* KL(p_ref || p_model) per token, nats */
    double top1_agree;                              /* share of scored positions where both argmaxes agree */
    double dprob_correct;                           /* mean of p_model(correct) - p_ref(correct) */
    double ref_mean_nll, ref_ppl;
} ppl_result;

/* Evaluates m on tokens[0..n). If ref is non-NULL, it is run on the same windows and the distance of m
 * from ref is reported. Shows a progress line with ETA on long runs. */
qlab_status ppl_evaluate(model *m, model *ref, const int *tokens, int64_t n, const ppl_options *opt,
                         ppl_result *out);

/* The reference model's logits at every scored position of one (tokens, options) evaluation, computed
 * once so that many quantized variants can be compared with it without re-running the reference. */
typedef struct {
    int64_t n_scored;
    int vocab;
    float *logits; /* (n_scored, vocab) */
} ppl_reference;
/* Bytes a ppl_reference for these tokens and options would take (0 if there is not one window). */
size_t ppl_reference_bytes(model *ref, int64_t n, const ppl_options *opt);
qlab_status ppl_reference_compute(model *ref, const int *tokens, int64_t n, const ppl_options *opt,
                                  ppl_reference *out);
void ppl_reference_free(ppl_reference *r);
/* ppl_evaluate(m, ref_model, ...) with the reference taken from the cache: the same numbers, bit for bit,
 * at half the forward passes. tokens and opt must be those the cache was computed with. */
qlab_status ppl_evaluate_cached(model *m, const ppl_reference *ref, const int *tokens, int64_t n,
                                const ppl_options *opt, ppl_result *out);

/* The reference model's own evaluation (ppl_evaluate(ref_model, NULL, ...)'s NLL and perplexity) scored
 * from the cache, without a forward pass: the same windows, the logits the cache holds. cfg is the
 * reference model's. */
qlab_status ppl_evaluate_reference(const ppl_reference *ref, const model_config *cfg, const int *tokens,
                                   int64_t n, const ppl_options *opt, ppl_result *out);

/* The windows a protocol produces, for tests and for describing a run: window w covers tokens
 * [start, start+len) and scores the predictions of positions [score_from, len-1) within it
 * (position j predicts token start+j+1). Returns the number of windows (fills at most cap entries). */
typedef struct {
    int64_t start;
    int len, score_from;
} ppl_window;
int64_t ppl_plan_windows(int64_t n, const ppl_options *opt, ppl_window *windows, int64_t cap);

#endif
