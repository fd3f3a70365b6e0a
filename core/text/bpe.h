/* Trains a SentencePiece-style byte-fallback BPE vocabulary on a text and writes it in llama2.c's
 * tokenizer.bin format, laid out like llama2.c's own tok512.bin so that run.c-style encoding
 * (core/text/tokenizer.h) reproduces the training merges. Deterministic: the same text and vocab size give
 * the same bytes. */
#ifndef QLAB_BPE_H
#define QLAB_BPE_H

#include <stddef.h>
#include <stdint.h>

#include "core/base/common.h"

/* Layout of a trained vocabulary (as in tok512.bin):
 *   id 0 "<unk>", 1 "\n<s>\n", 2 "\n</s>\n"                         score 0
 *   ids 3..258 the byte pieces "<0x00>".."<0xFF>"                    score 0
 *   ids 259..259+M-1 the M merged pieces in merge order              score -rank (0, -1, -2, ...)
 *   then every distinct UTF-8 character of the text (except NUL),    score continuing -(M + i)
 *   most frequent first (ties: smaller UTF-8 bytes first)
 * Spaces are plain ' ' (SentencePiece's U+2581 already mapped back, as in llama2.c's export); a piece has
 * a space only as its first byte. max_token_length in the header is the longest piece in bytes.
 *
 * Pretokenization follows SentencePiece: a space starts a new word (" cat"), a newline is a word by itself
 * and never merged, and letters, digits and punctuation are never merged with each other (a leading space
 * may join any of them: " \"" and " the" are pieces, "e." is not). Bytes that are not valid UTF-8 are never
 * merged and encode through the byte pieces. Merges are chosen by pair count over the whole text; ties go
 * to the pair whose concatenation is bytewise smaller (then the shorter left part), so training is
 * deterministic. Counts are updated incrementally, only in the words a merge touches. */
#define BPE_N_SPECIAL 3
/* No merged piece is longer than this (SentencePiece's max_sentencepiece_length is 16 characters), so a
 * long run such as a line of '=' cannot grow pieces without bound. */
#define BPE_MAX_PIECE_BYTES 64
#define BPE_N_BASE (BPE_N_SPECIAL + 256)

typedef struct {
    int n_pieces;
    char **pieces; /* piece bytes, NUL-terminated for display (pieces never contain NUL) */
    int *lengths;  /* bytes per piece */
    float *scores;
    int n_merges; /* pieces 259 .. 259+n_merges-1 are merges */
    int n_chars;  /* the character pieces that follow them */
    int max_token_length;
    /* Tokens the training text splits into under the learned merges (no BOS, no dummy prefix): run.c-style
     * encoding of that text must give the same count, which is how the tests check that the saved scores
     * reproduce the training merges. */
    int64_t n_train_tokens;
} bpe_vocab;

/* Trains a vocabulary of exactly vocab_size pieces. Fails (QLAB_ERR_ARG) when vocab_size is below the
 * base set (259 + the number of distinct characters in the text) or when the text has fewer mergeable
 * pairs than the merges asked for; the message gives the numbers. */
qlab_status bpe_train(const char *text, size_t len, int vocab_size, bpe_vocab *out);
void bpe_free(bpe_vocab *v);

/* The tokenizer.bin bytes: int32 max_token_length, then per piece float32 score, int32 length, bytes
 * (little-endian, as llama2.c reads them on x86/ARM). *data is malloc'd. */
qlab_status bpe_serialize(const bpe_vocab *v, char **data, size_t *len);
/* Writes the tokenizer.bin atomically (temp file + rename). */
qlab_status bpe_save(const bpe_vocab *v, const char *path);

#endif
