/* GPT-4-as-judge ratings of chatbot answers (QLoRA §5, Tables 1, 6 and 7): reading the authors' released
 * rating files (JSON lines, straight from their .tar.gz), turning each GPT-4 review into scores, the
 * "score as % of ChatGPT" of Table 6 with a bootstrap interval, and Elo ratings averaged over many
 * random orderings of the pairwise matches. */
#ifndef QLAB_EVAL_JUDGE_H
#define QLAB_EVAL_JUDGE_H

#include <stddef.h>
#include <stdint.h>

#include "core/base/common.h"

/* ---------------------------------------------------------------- rating files */
typedef enum {
    JUDGE_RELATIVE = 0, /* two 10-point scores per review ("relative-gpt-3.5/" files) */
    JUDGE_PAIRWISE = 1, /* a three-class verdict per review: 1 or 2 wins, 3 tie ("pairwise/" files) */
} judge_kind;

typedef enum {
    JUDGE_FROM_FIELD = 0, /* the file's "score" field (the authors' parse, with their manual fixes) */
    JUDGE_FROM_TEXT = 1,  /* "score" held the failure marker -1; recovered from the review text */
    JUDGE_MISSING = 2,    /* no usable judgement: the review is ignored */
} judge_source;

#define JUDGE_ID_MAX 64

typedef struct {
    int question_id;
    char answer_id[2][JUDGE_ID_MAX]; /* ids of the answers shown as assistant 1 and assistant 2 */
    double score[2];                 /* JUDGE_RELATIVE: scores of assistant 1 and 2 (0..10) */
    int verdict;                     /* JUDGE_PAIRWISE: 1, 2, 3 (tie), 0 when missing */
    judge_source source;
    int text_disagrees; /* the review's text parses cleanly to something other than "score" */
    int reference;      /* JUDGE_RELATIVE: which assistant (0 or 1) is the reference system; -1 unknown */
} judge_rating;

typedef struct {
    char *name;      /* file name without folders */
    char *system[2]; /* the two systems named in the file name, in the name's order (see judge_system_key) */
    judge_kind kind;
    int count;
    judge_rating *ratings;
} judge_file;

/* Parses one JSON-lines rating file held in memory. name (used in messages and for the system names) may
 * include folders. A line that is not a JSON object with question_id, answer1_id, answer2_id, text and
 * score of the right kinds fails with "name:LINE: what is wrong". Empty lines are skipped. */
qlab_status judge_parse_file(const char *name, const char *text, size_t len, judge_kind kind,
                             judge_file *out);
void judge_file_free(judge_file *f);

/* The system name of one side of a file name: "answer-" prefix and "-vicuna-generations..." suffix
 * dropped, e.g. "30b-guanaco-vicuna-generations-topp0.9-temp0.7" -> "30b-guanaco". Writes at most n bytes. */
void judge_system_key(const char *side, char *out, size_t n);

/* The review parsers. judge_parse_score_pair applies the authors' rule: the first line of the review,
 * commas read as spaces, must be exactly two numbers separated by one space ("8 7", "9 8.5").
 * judge_recover_score_pair reads reviews that put the scores elsewhere (the math reviews end with
 * "(10, 1)" or "Assistant 1: 10 ... Assistant 2: 1"), standing in for the authors' manual fixes.
 * judge_parse_verdict: the last non-empty line must be the integer 1, 2 or 3. Each returns 1 on success,
 * 0 when the text does not have that form. */
int judge_parse_score_pair(const char *review, double *a, double *b);
int judge_recover_score_pair(const char *review, double *a, double *b);
int judge_parse_verdict(const char *review);

/* Which answer in each relative rating belongs to the reference system (ChatGPT): per question, the one
 * answer id present in every file. Sets ratings[].reference. The released file names do not give the
 * positions reliably (for the QLoRA models "X-vs-gpt-3.5" shows ChatGPT as assistant 1), which is why
 * the ids decide. Fails naming the question when no single id is shared by all files. */
qlab_status judge_find_reference(judge_file *files, int nfiles);

/* ---------------------------------------------------------------- Table 6: score relative to ChatGPT */
typedef struct {
    double percent[2]; /* 100 * sum(system) / sum(reference) with the reference as assistant 1 ([0]) or 2 */
    double mean;       /* (percent[0] + percent[1]) / 2 */
    double ci95_low, ci95_high; /* percentile bootstrap over questions of `mean` */
    int n_questions[2];         /* reviews used per order */
    int n_recovered;            /* reviews whose scores came from the text */
    int n_missing;              /* reviews without usable scores (ignored) */
} judge_relative_score;

/* The relative score of one system from all its reviews against the reference (typically two files, one
 * per answer order; judge_find_reference must have run). Bootstrap: n_bootstrap resamplings of the
 * question ids (both orders of a question move together), seeded. Fails if an order has no reviews. */
qlab_status judge_relative(const judge_file *const *files, int nfiles, int n_bootstrap, uint64_t seed,
                           judge_relative_score *out);

/* ---------------------------------------------------------------- Elo */
typedef struct {
    int player[2];
    double score; /* of player[0]: 1 win, 0 loss, 0.5 tie */
} judge_match;

/* One Elo update: expected = 1 / (1 + 10^((rb - ra) / 400)); ra += k (score - expected), rb -= the same. */
void judge_elo_update(double *rating_a, double *rating_b, double score_a, double k);

/* Plays the matches in the given order (order[i] indexes matches; NULL = as listed) from `initial`,
 * writing the final rating of each of the nplayers players. */
qlab_status judge_elo_play(const judge_match *matches, int nmatches, const int *order, int nplayers,
                           double initial, double k, double *ratings);

/* The final ratings after each of n_orderings random orderings (uniform shuffles): ratings is
 * n_orderings x nplayers, row-major. Ordering i shuffles with its own stream seeded from (seed, i), so
 * the result does not depend on the thread count. */
qlab_status judge_elo_orderings(const judge_match *matches, int nmatches, int nplayers, double initial,
                                double k, int n_orderings, uint64_t seed, double *ratings);

#endif
