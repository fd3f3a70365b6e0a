/* A built-in corpus of simple English children's stories (in the spirit of TinyStories), generated from a
 * seeded grammar, so that qlab can pretrain and evaluate small language models on a machine without
 * internet. The same seed and split always give the same bytes, on every machine and thread count. */
#ifndef QLAB_CORPUS_H
#define QLAB_CORPUS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "core/base/common.h"

/* Text format: each story is a few lines ("paragraphs") ending in '\n' and never contains an empty line;
 * stories are separated by one empty line, i.e. the separator between two stories is exactly "\n\n".
 * Output is plain ASCII.
 *
 * Splits: story candidates are drawn from a stream per split (candidate k of split s is generated from an
 * RNG seeded with a hash of (seed, s, k)), and every candidate is then assigned to a split by a 64-bit
 * FNV-1a hash of its text: hash % CORPUS_HELDOUT_MODULUS == 0 means held-out, anything else train. Each
 * split keeps only the candidates that hash to it. Because the split is a function of the text itself, a
 * story can never appear in both splits, even if two different seeds happen to produce the same text; and
 * because the hash is unrelated to the grammar, both splits follow the same distribution. Held-out
 * generation discards (MODULUS-1)/MODULUS of its candidates, so it runs about 16x slower than train. */
#define CORPUS_HELDOUT_MODULUS 16

typedef enum { CORPUS_TRAIN = 0, CORPUS_HELDOUT = 1 } corpus_split;

/* Sequential generator of one split's stories. */
typedef struct {
    uint64_t seed;
    corpus_split split;
    uint64_t next_candidate; /* index of the next candidate story in this split's stream */
    uint64_t stories_emitted;
} corpus_generator;

void corpus_begin(corpus_generator *g, uint64_t seed, corpus_split split);
/* Writes the next story of the split (lines ending in '\n', no blank line, NUL-terminated) into buf.
 * Returns its length, or 0 with a message in qlab_last_error() if cap is too small (4096 always suffices). */
size_t corpus_next_story(corpus_generator *g, char *buf, size_t cap);
#define CORPUS_MAX_STORY_BYTES 4096

/* Generates whole stories of the split, joined by one empty line (an extra "\n" between two stories, none
 * after the last), until at least n_bytes bytes have been written or n_stories stories (0 = no limit on that
 * count; at least one limit must be non-zero). The output therefore ends with a story's final '\n' and is at
 * most one story longer than n_bytes. corpus_generate returns a malloc'd NUL-terminated buffer; corpus_write
 * streams to f (name is used in error messages). */
qlab_status corpus_generate(uint64_t seed, corpus_split split, size_t n_bytes, size_t n_stories, char **text,
                            size_t *len);
qlab_status corpus_write(uint64_t seed, corpus_split split, size_t n_bytes, size_t n_stories, FILE *f,
                         const char *name);

/* 64-bit FNV-1a of a byte string: the hash that assigns a story to its split. */
uint64_t corpus_text_hash(const char *text, size_t len);
const char *corpus_split_name(corpus_split split);

#endif
