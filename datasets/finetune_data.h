/* Finetuning data for `qlab finetune`: the file formats a user brings (Alpaca JSON, OASST/Guanaco chat JSON
 * lines, generic {"input","output"} JSON lines, each plain or gzip'd, and plain text), tokenized into
 * fixed-length (tokens, targets) rows (instruct.h's encoding: loss on the response only unless
 * train_on_source), and a seeded held-out split. */
#ifndef QLAB_FINETUNE_DATA_H
#define QLAB_FINETUNE_DATA_H

#include <stdint.h>

#include "core/base/common.h"
#include "core/text/tokenizer.h"
#include "datasets/instruct.h"

typedef enum {
    FINETUNE_DATA_AUTO = 0, /* decided from the content (finetune_data_detect) */
    FINETUNE_DATA_ALPACA,   /* a JSON array of {instruction, input, output}: qlora's Alpaca prompt */
    FINETUNE_DATA_OASST,    /* JSON lines {text: "### Human: ... ### Assistant: ..."} or {input, output} */
    FINETUNE_DATA_JSONL,    /* JSON lines {input, output}: the prompt is input verbatim */
    FINETUNE_DATA_TEXT,     /* plain text: cut into rows, every token learned */
    FINETUNE_DATA_FORMAT_COUNT
} finetune_data_format;

const char *
finetune_data_format_name(finetune_data_format f); /* "auto", "alpaca", "oasst", "jsonl", "text" */
qlab_status finetune_data_format_parse(const char *name, finetune_data_format *f);
/* From the (possibly gzip'd) content: a JSON array -> alpaca; JSON lines whose first record has "text" ->
 * oasst, "output" -> jsonl; anything not starting with '[' or '{' -> text. */
qlab_status finetune_data_detect(const char *path, finetune_data_format *out);

typedef struct {
    int max_len;         /* the row length (>= 2): longer examples are cut (instruct_encode's rules) */
    int train_on_source; /* 1: the prompt is learned too (default 0: the response only, as the paper) */
} finetune_data_options;

/* Loads path in format fmt (AUTO: detected; *resolved, if non-NULL, receives the format used) and
 * tokenizes it. Records: one per row (instruct_encode). Text: the whole file with BOS, cut into
 * consecutive rows of max_len tokens whose targets are the next tokens (the last row padded). A malformed
 * record fails with the file and the record or line number. */
qlab_status finetune_data_load(const char *path, finetune_data_format fmt, const tokenizer *tok,
                               const finetune_data_options *o, instruct_examples *out,
                               finetune_data_format *resolved);

/* Moves round(fraction * n) rows (at least 1, and at least 1 left for training) chosen by a seeded shuffle
 * (instruct_split) into *eval and the rest into *train, each in the original order. 0 < fraction < 1,
 * n >= 2. */
qlab_status finetune_data_split(const instruct_examples *all, double fraction, uint64_t seed,
                                instruct_examples *train, instruct_examples *eval);

#endif
