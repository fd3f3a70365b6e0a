/* qlab's generated instruction family (the dataset-quality ablation, QLoRA Tables 5/6): instruction records
 * built from the stories of the built-in corpus (datasets/corpus.h), offline and byte-reproducible, in two
 * styles that differ the way OASST1 and FLAN v2 do:
 *   chat — "### Human: <a request about the story's opening paragraph> ### Assistant:" answered with the
 *          story's next paragraph: a conversational request with a long prose reply, the format of the
 *          OASST1 items the chat target is scored on;
 *   task — FLAN-style zero-shot templates over the opening paragraph ("Text: … Question: … Answer:") whose
 *          answers are short facts read off the text (the main character's name, the number of sentences,
 *          the first sentence): a different instruction style and a different kind of response.
 * Corrupted responses and subsamples are made by the caller (experiments/dataset_quality.c swaps responses
 * between records and subsamples with a seed), so size, style and quality vary independently. */
#ifndef QLAB_CORPUS_INSTRUCT_H
#define QLAB_CORPUS_INSTRUCT_H

#include <stdint.h>

#include "core/base/common.h"
#include "datasets/instruct.h"

typedef enum {
    CORPUS_INSTRUCT_CHAT = 0,
    CORPUS_INSTRUCT_TASK,
    CORPUS_INSTRUCT_STYLE_COUNT
} corpus_instruct_style;

const char *corpus_instruct_style_name(corpus_instruct_style style); /* "chat", "task" */

/* n records (1 to 10^6) of the style from the first n stories of the corpus's train split for this seed
 * (record i from story i, so a smaller n gives a prefix of a larger one). Records have source OASST1 (the
 * prompt is used verbatim) and position i + 1. */
qlab_status corpus_instruct_build(uint64_t seed, corpus_instruct_style style, int n, instruct_set *out);

#endif
