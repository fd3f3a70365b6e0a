/* MMLU (Hendrycks et al.) for the finetuning ablations' 5-shot evaluation: the per-subject CSVs read straight
 * from the release .tar.gz, the prompt format of Hendrycks' evaluate.py that qlora's five-shot MMLU files
 * use, tokenization with the few-shot count reduced until the prompt fits, and the answer tokens whose
 * logits are compared at the last prompt position (as qlora's MMLUEvalCallback does). */
#ifndef QLAB_MMLU_H
#define QLAB_MMLU_H

#include "core/base/common.h"
#include "core/text/tokenizer.h"

typedef struct {
    char *question;
    char *choices[4];
    int answer; /* 0..3 for A..D */
} mmlu_question;

typedef struct {
    char *name; /* file-name form, e.g. "high_school_physics" */
    mmlu_question *dev, *val, *test;
    int n_dev, n_val, n_test;
} mmlu_subject;

typedef struct {
    mmlu_subject *subjects; /* sorted by name */
    int n_subjects;
} mmlu_data;

/* Reads every "<subject>_dev.csv", "<subject>_val.csv" and "<subject>_test.csv" member of a tar archive
 * (gzip'd or not). A CSV row is question,choice0,choice1,choice2,choice3,answer (RFC 4180 quoting, quoted
 * fields may span lines); an optional first row "question,choice0,...,answer" is a header; the answer is
 * an index 0-3 or a letter A-D (the original release's form). Errors name the archive, the member and the
 * row (from 1, counting the header). Text is kept as bytes, not checked as UTF-8. */
qlab_status mmlu_load(const char *archive_path, mmlu_data *out);
void mmlu_free(mmlu_data *d);
/* The subject's index in d, or -1. */
int mmlu_find_subject(const mmlu_data *d, const char *name);

/* Hendrycks' format_example: the question, "\nA. <choice>" for each choice, "\nAnswer:", and with the
 * answer " <letter>\n\n". malloc'd. */
char *mmlu_format_question(const mmlu_question *q, int include_answer);
/* Hendrycks' gen_prompt + the question: "The following are multiple choice questions (with answers) about
 * <title>.\n\n", the first k_shot dev questions with answers, then q without its answer (ending "Answer:").
 * The title is the subject's words each preceded by a space, so the header reads "about  high school
 * physics." with two spaces, exactly as evaluate.py and qlora's MMLU files have it. k_shot is capped at
 * n_dev. malloc'd. */
char *mmlu_format_prompt(const mmlu_subject *s, int k_shot, const mmlu_question *q);

/* BOS + the k-shot prompt tokens, with k lowered (evaluate.py's rule) until the ids fit in max_len; if even
 * the zero-shot prompt is too long its end is kept (the question and "Answer:" matter most) and
 * *truncated is set. *k_used gets the shots used. *ids malloc'd. */
qlab_status mmlu_encode_prompt(const tokenizer *tok, const mmlu_subject *s, int k_shot,
                               const mmlu_question *q, int max_len, int **ids, int *n_ids, int *k_used,
                               int *truncated);

/* The ids whose logits are compared at the last prompt position: the first token of each letter encoded
 * as a response is (qlora: tokenizer("A", add_special_tokens=False).input_ids[0]), i.e. " A".." D" for a
 * SentencePiece tokenizer. Fails (QLAB_ERR_UNSUPPORTED) when a letter is not a single token of its own or
 * two letters share their first token, because the four logits would then not tell the answers apart
 * (tok512 encodes "A" as " " + "A"). */
qlab_status mmlu_answer_tokens(const tokenizer *tok, int ids[4]);
/* The predicted answer 0..3: argmax of logits (vocab) over the four ids, the lowest letter on ties. */
int mmlu_pick_answer(const float *logits, const int ids[4]);

/* qlora's MMLU JSON files (e.g. zero_shot_mmlu_val.json): one {subject, input, output} object per line,
 * output a letter A-D. */
typedef struct {
    char *subject;
    char *prompt;
    int answer; /* 0..3 */
} mmlu_prompt;

qlab_status mmlu_load_qlora_json(const char *path, mmlu_prompt **out, int *n);
void mmlu_prompts_free(mmlu_prompt *p, int n);

#endif
