/* Token streams for evaluation: a text file encoded with a tokenizer, or int32 ids from a .npy file
 * (used exactly as given). Shared by `qlab ppl` and the experiments. */
#ifndef QLAB_EVAL_TOKENS_H
#define QLAB_EVAL_TOKENS_H

#include <stdint.h>

#include "core/base/common.h"

/* Exactly one of text_path / npy_path is non-NULL. With text_path, tokenizer_path is required; the text
 * is encoded with a BOS at the start (as llama2.c and llama.cpp do) unless the tokenizer says otherwise
 * (tokenizer_add_bos: a GGUF with add_bos_token false). *ids is malloc'd. */
qlab_status eval_load_tokens(const char *text_path, const char *npy_path, const char *tokenizer_path,
                             int **ids, int64_t *n);

#endif
