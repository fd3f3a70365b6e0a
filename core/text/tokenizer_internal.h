/* What the tokenizer files share but callers never see: the tokenizer struct, the piece and merge hash
 * maps, the merge engine common to both formats, and the Unicode classes the byte-level pre-tokenizer
 * needs. Only core/tokenizer*.c include this. */
#ifndef QLAB_TOKENIZER_INTERNAL_H
#define QLAB_TOKENIZER_INTERNAL_H

#include <stdint.h>

#include "core/text/tokenizer.h"

typedef enum {
    TOKENIZER_LLAMA2C,          /* tokenizer.bin: merges by piece score, run.c's rules */
    TOKENIZER_HF_SENTENCEPIECE, /* tokenizer.json, "▁" for spaces, <0xNN> byte fallback */
    TOKENIZER_HF_BYTELEVEL,     /* tokenizer.json, GPT-2 bytes_to_unicode alphabet */
} tokenizer_kind;

/* Open addressing over ids, keyed by the piece bytes themselves (no copy of the keys). */
typedef struct {
    int32_t *slots; /* id, or -1 for empty */
    size_t mask;    /* capacity - 1, capacity a power of two */
} tokenizer_piece_map;

/* (left id, right id) -> (rank, merged id), for tokenizer.json merges. */
typedef struct {
    uint64_t *keys; /* (left << 32 | right) + 1, 0 = empty */
    int32_t *rank;
    int32_t *merged;
    size_t mask;
} tokenizer_pair_map;

/* Normalizer and pre-tokenizer steps of a tokenizer.json, applied in file order. */
typedef enum {
    TOKENIZER_STEP_PREPEND,   /* normalizer Prepend: text = arg + text (non-empty text only) */
    TOKENIZER_STEP_REPLACE,   /* normalizer Replace with a String pattern: every pattern -> arg */
    TOKENIZER_STEP_METASPACE, /* pre-tokenizer Metaspace */
    TOKENIZER_STEP_BYTELEVEL, /* pre-tokenizer ByteLevel (GPT-2 regex split when use_regex, byte map) */
    TOKENIZER_STEP_DIGITS,    /* pre-tokenizer Digits */
} tokenizer_step_kind;

enum { TOKENIZER_PREPEND_ALWAYS, TOKENIZER_PREPEND_FIRST, TOKENIZER_PREPEND_NEVER };

typedef struct {
    tokenizer_step_kind kind;
    char *pattern; /* REPLACE: what to find */
    char *text;    /* PREPEND / REPLACE: what to insert; METASPACE: the replacement character */
    int flag;      /* METASPACE: prepend scheme; BYTELEVEL: add_prefix_space; DIGITS: individual_digits */
    int split;     /* METASPACE: split into words; BYTELEVEL: use_regex */
} tokenizer_step;

typedef struct {
    int id;
    const char *content; /* points into the pieces arena */
    size_t len;
} tokenizer_added;

struct tokenizer {
    tokenizer_kind kind;
    int vocab_size;
    char **pieces; /* vocab_size NUL-terminated pieces (views into arena); "" for ids the file skips */
    int *piece_len;
    char *arena;
    float *scores; /* llama2.c only */
    int max_piece_len;
    int bos_id, eos_id;
    int add_bos;         /* whether text for the model starts with a BOS (0 only for a GGUF that says so) */
    int16_t *piece_byte; /* the byte a <0xNN> piece stands for, else -1 */
    int byte_id[256];    /* id of the <0xNN> piece, -1 if absent (byte fallback) */
    tokenizer_piece_map map;

    /* tokenizer.json only */
    tokenizer_pair_map merges;
    unsigned char *is_added; /* per id: 1 when an added token (decoded as its content, not mapped) */
    tokenizer_added *added;  /* sorted longest content first so matching is leftmost-longest */
    int n_added;
    tokenizer_step *steps;
    int n_steps;
    int unk_id;        /* -1 if none */
    int byte_fallback; /* model.byte_fallback */
    int fuse_unk;
    int ignore_merges;
    int byte_to_codepoint[256];     /* GPT-2 bytes_to_unicode */
    int16_t codepoint_to_byte[512]; /* its inverse (all its code points are below 512), -1 elsewhere */
};

/* Scratch memory of the merge engine, reused across the words of one encode call. */
typedef struct {
    float priority; /* higher merges first */
    int32_t left, right;
    uint32_t left_version, right_version;
    int32_t merged;
} tokenizer_candidate;

typedef struct {
    int32_t *prev, *next;
    uint32_t *version;
    size_t symbol_cap;
    tokenizer_candidate *heap;
    size_t heap_len, heap_cap;
} tokenizer_workspace;

void tokenizer_workspace_free(tokenizer_workspace *w);

/* Piece map: insert keeps the first (lowest) id of duplicate pieces; lookup returns -1 if absent. */
qlab_status tokenizer_map_build(tokenizer *t);
int tokenizer_map_find(const tokenizer *t, const char *s, size_t len);

/* Sets piece_byte / byte_id from pieces spelled exactly "<0xNN>" (two upper-case hex digits). */
void tokenizer_find_byte_pieces(tokenizer *t);

qlab_status tokenizer_load_bin(const char *path, const char *data, size_t size, tokenizer *t);
qlab_status tokenizer_load_json(const char *path, const char *data, size_t size, tokenizer *t);
qlab_status tokenizer_load_gguf(const char *path, const char *data, size_t size, tokenizer *t);
qlab_status tokenizer_encode_hf(const tokenizer *t, tokenizer_workspace *w, const char *text, size_t len,
                                int **ids, size_t *n, size_t *cap);

/* Growable id list used while encoding. */
qlab_status tokenizer_push_id(int **ids, size_t *n, size_t *cap, int id);

/* Merges the symbols ids[0..n) in place (run.c's loop, done with a heap): repeatedly the adjacent pair
 * with the highest priority, leftmost on ties. Priority is the merged piece's score (llama2.c) or minus
 * the merge rank (tokenizer.json). Returns the new count in *n. */
qlab_status tokenizer_merge(const tokenizer *t, tokenizer_workspace *w, int *ids, size_t *n);

/* UTF-8: length of the character at s (1 for an invalid byte, never reading past len) and its code point
 * (-1 when invalid). */
size_t unicode_next(const unsigned char *s, size_t len, int32_t *codepoint);
int unicode_is_letter(int32_t cp); /* \p{L} */
int unicode_is_number(int32_t cp); /* \p{N} */
int unicode_is_space(int32_t cp);  /* White_Space, what \s means in the GPT-2 regex */
size_t unicode_encode(int32_t cp, char out[4]);

#endif
