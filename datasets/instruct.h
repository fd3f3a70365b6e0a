/* Instruction-tuning data for the finetuning ablations: loaders for Alpaca JSON, OASST1-style JSON lines
 * (plain or gzip'd) and the Vicuna prompts into one record type, the prompt formats of the QLoRA repository
 * (artidoro/qlora, qlora.py), and tokenization into fixed-length (tokens, targets) rows where only the
 * response is learned, plus a seeded train/eval split and a seeded per-epoch batch order. */
#ifndef QLAB_INSTRUCT_H
#define QLAB_INSTRUCT_H

#include <stddef.h>
#include <stdint.h>

#include "core/base/common.h"
#include "core/text/tokenizer.h"

typedef enum {
    INSTRUCT_SOURCE_ALPACA = 0, /* {instruction, input, output}, prompt from the Alpaca template */
    INSTRUCT_SOURCE_OASST1,     /* {input: "### Human: ... ### Assistant:", output: reply} */
    INSTRUCT_SOURCE_VICUNA,     /* {question_id, text, category}: prompts only, no response */
    INSTRUCT_SOURCE_CHAT,       /* {text: "### Human: ... ### Assistant: reply"} (openassistant-guanaco) */
} instruct_source;

const char *instruct_source_name(instruct_source s); /* "alpaca", "oasst1", "vicuna" */

typedef struct {
    char *prompt;   /* formatted context before the response: what qlora's collator calls `input` */
    char *response; /* the text to learn (qlora's `output`); NULL for prompt-only sets (Vicuna) */
    instruct_source source;
    int position; /* where it came from: array index (Alpaca, from 0) or line number (JSON lines, from 1) */
} instruct_record;

typedef struct {
    instruct_record *records;
    int count;
} instruct_set;

/* Loaders. Validation is strict: every record must be an object whose required keys are strings holding
 * valid UTF-8; anything else fails with one line naming the file, the record ("record 12" for an array
 * index, "line 13" for JSON lines) and the problem. An empty set is an error. Unknown keys are ignored.
 *   Alpaca: a JSON array of {instruction, input, output}; a missing "input" counts as "" (qlora reads it
 *     with example.get("input", "")), instruction and output are required. The prompt is formatted with
 *     instruct_format_alpaca.
 *   OASST1: JSON lines (gzip'd when the file starts with the gzip magic) with "input" (the conversation up
 *     to "### Assistant:") and "output"; the prompt is "input" verbatim. Blank lines are skipped.
 *   Vicuna: JSON lines with "text"; the prompt is "### Human: <text> ### Assistant:", the format of the
 *     OASST1 items, and the response is NULL.
 * instruct_load picks the loader from the content: a top-level array is Alpaca; JSON lines whose first
 * record has "output" are OASST1, otherwise Vicuna. */
qlab_status instruct_load_alpaca(const char *path, instruct_set *out);
qlab_status instruct_load_oasst1(const char *path, instruct_set *out);
qlab_status instruct_load_vicuna(const char *path, instruct_set *out);
qlab_status instruct_load(const char *path, instruct_set *out);
/* Chat text: JSON lines (gzip'd or not) whose "text" holds a whole conversation in the Guanaco format,
 * "### Human: ... ### Assistant: ... ### Human: ... ### Assistant: reply". The prompt is everything up to
 * and including the last "### Assistant:", the response the final reply after it (one leading space
 * dropped); a text without "### Assistant:" is refused with its line. */
qlab_status instruct_load_chat(const char *path, instruct_set *out);
void instruct_set_free(instruct_set *s);

/* qlora.py's ALPACA_PROMPT_DICT: "prompt_input" when input is non-empty, "prompt_no_input" otherwise. Both
 * end in "### Response: " with a trailing space, as in qlora. malloc'd; NULL (with a message) when out of
 * memory. */
char *instruct_format_alpaca(const char *instruction, const char *input);
/* The chat format of the OASST1 items and of qlora's Vicuna generations:
 * "### Human: <text> ### Assistant:". */
char *instruct_format_chat(const char *human_text);
/* The prompt qlora's evaluation generated from: the system sentence below, one space, then the record's
 * prompt (this reproduces the "prompt" field of every item in oa_questions.jsonl). malloc'd. */
#define INSTRUCT_CHAT_SYSTEM                                                                                 \
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives "          \
    "helpful, detailed, and polite answers to the user's questions."
char *instruct_generation_prompt(const instruct_record *r);

/* ---- Tokenization into training rows ----
 * Each record becomes source = BOS + encode(prompt) and target = encode(response) + EOS, tokenized
 * separately as qlora's DataCollatorForCausalLM does (so a SentencePiece-style tokenizer puts its
 * dummy-prefix space at the start of both). Then, in qlora's order:
 *   1. source keeps its first source_max_len tokens, target its first target_max_len (a cut target loses
 *      its EOS, as in qlora);
 *   2. the row is source followed by target, cut to max_len (the end of the target goes first);
 *   3. targets[t] = tokens[t+1] when that token belongs to the target (the response), else -1: prompt
 *      positions are ignored as with qlora's train_on_source=False, the last real position has no next
 *      token, and padding positions are ignored. train_on_source=1 also learns the prompt (never the BOS).
 * source_max_len is clamped to max_len-1, so every row learns at least one response token; a record with
 * nothing to learn at all (empty response and no EOS) is dropped and counted in n_dropped.
 * Defaults (option <= 0): source_max_len = 3*(max_len/4), target_max_len = max_len. qlora's defaults are
 * 1024 and 256 for LLaMA's 2048-token context; here the row is the model's (short) context, so the source
 * cap only guarantees that every row keeps at least max_len/4 response positions while the response may
 * use the rest of the row. pad_id < 0 means 0; padding is right-padding, as qlora (padding_side="right").
 * Packing (pack=1): instead of one record per row, consecutive records (in the given order) are appended
 * to the current row while they fit whole, each starting with its BOS; a record that does not fit starts a
 * new row. Rows then hold several conversations that attend to each other (no block-diagonal mask), which
 * qlora never does (it pads to the batch's longest, with group_by_length): use it only to save compute.
 * Without an EOS in the tokenizer (tokenizer_eos_id < 0) the target has none, has_eos is 0, and a model
 * trained on the rows never learns to stop; without a BOS the source has none (has_bos is 0). */
typedef struct {
    int max_len;         /* T, the row length: required, >= 2 */
    int source_max_len;  /* <= 0: 3*(max_len/4) */
    int target_max_len;  /* <= 0: max_len */
    int train_on_source; /* 1: prompt tokens are targets too */
    int pad_id;          /* token id at padding positions (< 0: 0); its targets are always -1 */
    int pack;            /* 1: several records per row (see above) */
} instruct_encode_options;

typedef struct {
    int n, T;          /* rows and row length */
    int *tokens;       /* (n, T) token ids, ready for model_forward */
    int *targets;      /* (n, T) next-token targets, -1 where ignored */
    int *lengths;      /* (n) real (non-padding) tokens in each row */
    int *first_record; /* (n) index into the input records of the row's (first) record */
    int n_dropped;     /* records with nothing to learn (empty response, no EOS) */
    int n_source_cut;  /* records whose source was cut to source_max_len (or to the row) */
    int n_target_cut;  /* records whose target lost tokens (EOS included) to target_max_len or the row */
    long long n_target_tokens; /* non-ignored targets over all rows */
    int has_bos, has_eos;
} instruct_examples;

qlab_status instruct_encode(const tokenizer *tok, const instruct_record *records, int n,
                            const instruct_encode_options *opt, instruct_examples *out);
void instruct_examples_free(instruct_examples *e);

/* ---- Split and batches ---- */
/* Deterministic split of n items: a seeded Fisher-Yates shuffle (core/base/rng.h) of 0..n-1 puts its first
 * n_eval entries in eval, the rest in train; each list is then sorted ascending so it reads as a set (the
 * batch order comes from the batcher). 0 <= n_eval <= n. Arrays malloc'd (free() them; NULL when empty). */
qlab_status instruct_split(int n, int n_eval, uint64_t seed, int **train_index, int *n_train,
                           int **eval_index, int *n_eval_out);
/* Copies the records listed in index into a new set (deep copy). */
qlab_status instruct_set_select(const instruct_set *s, const int *index, int n, instruct_set *out);

/* Visits the rows of an instruct_examples in a seeded order that changes every epoch: epoch e uses a
 * Fisher-Yates permutation drawn from an rng seeded with a hash of (seed, e), so an epoch's order does
 * not depend on how many batches were drawn before it. Batches never span two epochs; the last batch of an
 * epoch is smaller unless drop_last is set (then its rows are skipped). */
typedef struct {
    int n_rows, batch_size, drop_last;
    uint64_t seed;
    int epoch;    /* epoch of the next batch, from 0 */
    int position; /* next index into order */
    int *order;   /* (n_rows) this epoch's permutation */
} instruct_batcher;

qlab_status instruct_batcher_init(instruct_batcher *b, int n_rows, int batch_size, int drop_last,
                                  uint64_t seed);
/* Copies the next batch into tokens (B,T) and targets (B,T) (B = batch_size capacity) and, if row_index is
 * non-NULL, the chosen row numbers into row_index (B). Returns the number of rows written (>= 1), or 0 when
 * e holds fewer rows than the batcher was made for. */
int instruct_batcher_next(instruct_batcher *b, const instruct_examples *e, int *tokens, int *targets,
                          int *row_index);
void instruct_batcher_free(instruct_batcher *b);

#endif
