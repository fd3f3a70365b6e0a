/* ROUGE-L as Google's rouge-score package computes it (rouge_scorer.RougeScorer(["rougeL"]) with its
 * defaults, which is also what Hugging Face `evaluate`'s "rouge" metric calls): the default tokenizer
 * (Python str.lower(), every run of characters outside [a-z0-9] becomes a separator, no stemming), then
 * the longest common subsequence of the two token lists; precision = LCS / prediction tokens, recall =
 * LCS / target tokens, F = 2PR / (P + R) (0 when P + R = 0, and all three 0 when either side has no
 * tokens). Used to score chatbot-style answers against reference replies. */
#ifndef QLAB_EVAL_ROUGE_H
#define QLAB_EVAL_ROUGE_H

#include "core/base/common.h"

typedef struct {
    char *text; /* the tokens, each NUL-terminated, one after the other */
    int *start; /* (n) offset of token i in text */
    int n;
} rouge_tokens;

/* rouge-score's DefaultTokenizer(use_stemmer=False) on UTF-8 text. Python lowercases with the full
 * Unicode table before the ASCII filter, so the two non-ASCII characters whose lowercase contains an ASCII
 * letter count as letters: U+212A KELVIN SIGN -> "k" and U+0130 (I with dot above) -> "i" followed by a
 * combining dot (a separator). Every other non-ASCII character, and any byte that is not valid UTF-8,
 * separates tokens. */
qlab_status rouge_tokenize(const char *text, rouge_tokens *out);
void rouge_tokens_free(rouge_tokens *t);

/* Length of the longest common subsequence of two token lists (O(n*m) time, O(min) memory). -1 when out
 * of memory (message set). */
int rouge_lcs_length(const rouge_tokens *a, const rouge_tokens *b);

typedef struct {
    double precision, recall, fmeasure;
    int lcs, n_target, n_prediction;
} rouge_score;

/* rouge_scorer.score(target, prediction)["rougeL"]: note the order, reference first. */
qlab_status rouge_l(const char *target, const char *prediction, rouge_score *out);

#endif
