/* Answers for judging (QLoRA §5): a model's answers to a prompt file — the 80 Vicuna questions
 * ({question_id, text, category}) or the OASST1 items ({input: "### Human: … ### Assistant:", output, …},
 * gzip'd or not) — written as JSON lines in the format of the QLoRA repository's released generations
 * (eval/generations/vicuna and eval/generations/oa): every field of the prompt record kept as it was, then
 *   "prompt"               the text the model continued: qlora's system sentence, one space, and
 *                          "### Human: <text> ### Assistant:" (Vicuna) or the record's "input" (OASST1);
 *   "generation"           the decoded continuation, leading white space dropped (as a Hugging Face decode
 *                          of the new tokens reads);
 *   "generation_truncated" the generation cut before the first "### Human:" (the model starting the next
 *                          turn), trailing spaces dropped — what the released files sent to the judge;
 *   "answer_id"            an id for judgement files to refer to (answer1_id / answer2_id), derived from
 *                          model_id and the record so that it is stable across runs;
 *   "model_id"             the system name given by the caller.
 * So the file can go to any judge, and judgements written back in the released rating format (answer ids
 * from this file) are read by experiments/vicuna_tables. */
#ifndef QLAB_EVAL_ANSWERS_H
#define QLAB_EVAL_ANSWERS_H

#include <stdint.h>

#include "core/base/common.h"
#include "core/model/model.h"
#include "core/text/tokenizer.h"

typedef struct {
    const char *model_id; /* system name recorded in every line and hashed into the answer ids */
    float temperature;    /* qlora's generations: 0.7 with top-p 0.9; 0 = greedy */
    float top_p;
    uint64_t seed; /* record i samples with seed + i, so any subset reproduces the same answers */
    int max_new_tokens;
    int limit; /* answer the first `limit` records only (0 = all) */
} answers_options;

/* Called after each answered record (may be NULL). */
typedef void (*answers_progress)(void *ctx, int done, int total);

/* Reads prompts_path, answers every record (prompt cut at its start when it leaves fewer than
 * max_new_tokens of the model's context) and writes out_path atomically (nothing under that name on
 * failure). A record that is not an object with a string "text" or "input" fails naming the file and line.
 * *n_answered (may be NULL) receives the number of lines written. */
qlab_status answers_generate(model *m, const tokenizer *tok, const char *prompts_path, const char *out_path,
                             const answers_options *o, answers_progress progress, void *ctx, int *n_answered);

/* The part of a generation the judge sees: up to the first "### Human:", trailing white space dropped
 * (malloc'd). */
char *answers_truncate(const char *generation);

#endif
