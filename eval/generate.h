/* Text generation from a language model: greedy, temperature and nucleus (top-p) sampling with a seeded
 * RNG, in the manner of llama2.c's run.c (stops at max_tokens or when the model emits BOS/EOS). */
#ifndef QLAB_EVAL_GENERATE_H
#define QLAB_EVAL_GENERATE_H

#include <stdint.h>

#include "core/base/common.h"
#include "core/model/model.h"
#include "core/base/rng.h"

typedef struct {
    float temperature; /* 0 = greedy argmax */
    float top_p;       /* nucleus sampling threshold in (0,1); >= 1 samples the full distribution */
    uint64_t seed;
    int max_tokens;           /* total sequence length including the prompt (<= the model's seq_len) */
    int stop_id_a, stop_id_b; /* token ids that end generation (e.g. BOS and EOS); -1 for none */
} generate_options;

/* Picks the next token from one row of logits (modified in place). */
int generate_sample(float *logits, int vocab, const generate_options *opt, rng_state *rng);

/* Extends prompt[0..n_prompt) to at most opt->max_tokens tokens; out receives the whole sequence
 * (capacity opt->max_tokens) and *n_out its length. on_token, if non-NULL, is called for each new token. */
qlab_status generate(model *m, const int *prompt, int n_prompt, const generate_options *opt, int *out,
                     int *n_out, void (*on_token)(int token, void *ctx), void *ctx);

#endif
