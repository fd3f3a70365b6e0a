/* MMLU accuracy of a model (with or without adapters attached), as the QLoRA repository's MMLUEvalCallback
 * measures it: BOS + the prompt, one forward, and the answer is the letter whose token has the largest
 * logit at the last prompt position. The letter tokens are qlora's abcd_idx:
 * tokenizer("A", add_special_tokens=False).input_ids[0], i.e. the first token of the letter encoded on its
 * own (" A" for a SentencePiece tokenizer with a dummy prefix, "A" for GPT-2-style byte-level BPE).
 * Two prompt sources: Hendrycks' k-shot format over the test split with the subject's dev questions as
 * shots (datasets/mmlu.h), and qlora's zero-shot validation prompts (qlora_zero_shot_mmlu_val.json). */
#ifndef QLAB_EVAL_MMLU_EVAL_H
#define QLAB_EVAL_MMLU_EVAL_H

#include "core/base/common.h"
#include "core/base/progress.h"
#include "core/model/model.h"
#include "core/text/tokenizer.h"
#include "datasets/mmlu.h"

/* How the four answers are compared. When each letter encodes to one token of its own (LLaMA's
 * SentencePiece: " A".." D"; GPT-2-style BPE: "A".."D") this is exactly qlora's rule: the largest of the four
 * logits at the last prompt position (one forward). When a tokenizer splits some letters (stories260K's
 * tok512 encodes "A" as " " + "A" but "B" as " B"), qlora's rule would compare the shared " " token with
 * itself; instead the answer is the letter whose whole encoding is most likely after the prompt, the sum of
 * its tokens' log-probabilities (lm-evaluation-harness's loglikelihood). That reduces to qlora's rule for
 * single tokens, and one forward over prompt + the longest shared continuation serves every letter whose
 * tokens it contains. */
#define MMLU_MAX_LETTER_TOKENS 4
typedef struct {
    int tokens[4][MMLU_MAX_LETTER_TOKENS];
    int n_tokens[4];
    int single_token; /* every letter is one distinct token: qlora's abcd_idx rule */
    int spaced;       /* the letters were encoded as " A".." D" (mmlu_scoring_init_spaced) */
} mmlu_scoring;

qlab_status mmlu_scoring_init(const tokenizer *tok, mmlu_scoring *out);
/* The same for the letters preceded by a space (" A".." D"), the form the letters take after "Answer:" in
 * the few-shot text for byte-level BPE tokenizers (SmolLM2, GPT-2), where qlora's rule compares the
 * no-space tokens "A".."D" instead. */
qlab_status mmlu_scoring_init_spaced(const tokenizer *tok, mmlu_scoring *out);
/* One line saying which ids are compared and how. */
void mmlu_scoring_describe(const tokenizer *tok, const mmlu_scoring *s, char *buf, size_t cap);
/* The predicted letter 0..3 for prompt ids[0..n) (BOS included); ids must have room for
 * n + MMLU_MAX_LETTER_TOKENS entries, and logits for MMLU_MAX_LETTER_TOKENS x vocab floats (the logits of
 * the positions that predict the letters, the only rows the classifier runs over). score, if
 * non-NULL, receives the four log-likelihoods (for single tokens: the logits). Ties go to the earlier
 * letter. */
qlab_status mmlu_scoring_pick(model *m, const mmlu_scoring *s, int *ids, int n, float *logits, int *pick,
                              double score[4]);

typedef enum {
    MMLU_EVAL_KSHOT = 0,     /* Hendrycks' prompt, test split, dev questions as shots */
    MMLU_EVAL_QLORA_ZEROSHOT /* qlora's zero-shot validation prompts */
} mmlu_eval_mode;

typedef struct {
    mmlu_eval_mode mode;
    const char *data_path; /* the MMLU archive (KSHOT) or qlora's JSON lines (QLORA_ZEROSHOT) */
    int shots;             /* KSHOT: 0..5 (lowered per question until the prompt fits) */
    const char *subjects;  /* comma-separated subject names; NULL or "" = all */
    int limit;             /* first N questions of each subject; 0 = all */
    int max_len;           /* prompt tokens at most (<= 0: the model's seq_len) */
    int letter_space;      /* 1: compare " A".." D" (mmlu_scoring_init_spaced) instead of qlora's "A".."D" */
    progress *prog;        /* optional: updated once per question (done += 1) */
} mmlu_eval_options;

typedef struct {
    char name[96];
    int n, correct;
} mmlu_subject_result;

typedef struct {
    mmlu_subject_result *subjects;
    int n_subjects;
    int n, correct;
    int n_truncated;   /* prompts whose start was cut to fit max_len (even with zero shots) */
    double mean_shots; /* KSHOT: shots actually used per question */
    int predicted[4];  /* how often each letter was chosen (a model stuck on one letter shows here) */
    double seconds;
} mmlu_eval_result;

/* Counts the questions an evaluation with these options would score (for a progress total). */
qlab_status mmlu_eval_count(const mmlu_eval_options *opt, int *n);
qlab_status mmlu_evaluate(model *m, const tokenizer *tok, const mmlu_eval_options *opt,
                          mmlu_eval_result *out);
void mmlu_eval_result_free(mmlu_eval_result *r);

/* 95% intervals. Wilson score interval for k of n; for the macro average (qlora's figure: the mean of the
 * per-subject accuracies) the normal interval with variance sum_s p_s(1-p_s)/n_s / S^2. */
void mmlu_wilson95(int k, int n, double *lo, double *hi);
double mmlu_macro_accuracy(const mmlu_eval_result *r, double *lo, double *hi);

#endif
