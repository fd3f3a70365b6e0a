/* Text <-> token ids for the models qlab trains and evaluates: llama2.c's tokenizer.bin (SentencePiece-style
 * BPE with byte fallback, encoded exactly as llama2.c's run.c does) and Hugging Face tokenizer.json files
 * with a BPE model (SentencePiece-style as LLaMA, or byte-level as GPT-2 / SmolLM). The format is detected
 * from the file's content, and every format gives the same small API. */
#ifndef QLAB_TOKENIZER_H
#define QLAB_TOKENIZER_H

#include <stddef.h>

#include "core/base/common.h"

typedef struct tokenizer tokenizer;

/* Loads a llama2.c tokenizer.bin, a Hugging Face tokenizer.json, or the tokenizer embedded in a GGUF model
 * file (tokenizer.ggml.*: "gpt2" byte-level BPE with pre-tokenizer smollm or gpt-2, "llama"
 * SentencePiece-style; core/text/tokenizer_gguf.c). A file starting with "GGUF" is a GGUF; JSON when the
 * first non-blank byte is
 * '{' or '[' and the first four bytes hold no NUL, which a .bin's int32 header always has). Every size and
 * key is checked; errors name the file and the offset or key. */
qlab_status tokenizer_load(const char *path, tokenizer **out);
void tokenizer_free(tokenizer *t);

int tokenizer_vocab_size(const tokenizer *t);
/* -1 when the tokenizer has none. tokenizer.bin: 1 and 2 (llama2.c's convention). tokenizer.json: from the
 * post_processor template if it has one, else by name (<s>, <|begin_of_text|>, <bos>, <|endoftext|>, ...). */
int tokenizer_bos_id(const tokenizer *t);
int tokenizer_eos_id(const tokenizer *t);
/* Whether text for the model is encoded with a BOS: 1, except for a GGUF whose tokenizer.ggml.add_bos_token
 * is false (SmolLM2). */
int tokenizer_add_bos(const tokenizer *t);

/* Encodes len bytes of text (any bytes: NUL and invalid UTF-8 go through byte fallback or the byte-level
 * map) into *ids (malloc'd, free() it). add_bos prepends the BOS id (an error when there is none).
 * tokenizer.bin follows run.c's encode(): the dummy-prefix " " token when the text is non-empty, then
 * highest-score merges, leftmost first on ties ("▁", U+2581, in the text is a space, as in SentencePiece).
 * tokenizer.json follows the Hugging Face pipeline: added tokens matched in the text, normalizer,
 * pre-tokenizer, merges by rank; a character with no piece, no byte fallback and no unk_token is dropped, as
 * Hugging Face's BPE does. */
qlab_status tokenizer_encode(const tokenizer *t, const char *text, size_t len, int add_bos, int **ids,
                             size_t *n_ids);

/* Decodes ids into *text (malloc'd, NUL-terminated, *len excludes the NUL; free() it). <0xNN> pieces give
 * the raw byte; the piece right after a BOS loses one leading space (the dummy prefix), as in run.c.
 * tokenizer.bin: BOS and EOS decode to nothing (run.c never prints them). tokenizer.json: a BOS as the
 * first id decodes to nothing when the tokenizer adds one (tokenizer_add_bos; SmolLM2's <|im_start|> is
 * not added, so a leading one is text), every other token (special ones included) to its text, because
 * special tokens spelled in the text are encoded as themselves. So decode(encode(x, tokenizer_add_bos()))
 * == x byte for byte, except characters a tokenizer.json vocabulary cannot spell (encoding drops them)
 * and a tokenizer.bin's "▁" (encoded as a space); without the BOS the dummy-prefix space of
 * SentencePiece-style tokenizers stays in the output. An id outside the vocabulary is an error. */
qlab_status tokenizer_decode(const tokenizer *t, const int *ids, size_t n, char **text, size_t *len);

/* The raw piece of id as stored in the file (e.g. " the", "<0x0A>", "Ġthe", "▁the"), NUL-terminated, for
 * display; NULL when id is outside the vocabulary. */
const char *tokenizer_piece(const tokenizer *t, int id);

/* Writes a llama2.c tokenizer.bin: int32 max_len, then per piece float32 score, int32 length, bytes.
 * max_len <= 0 means "the longest piece"; otherwise no piece may be longer. Atomic (temp file + rename). */
qlab_status tokenizer_save_bin(const char *path, int n, const char *const *pieces, const float *scores,
                               int max_len);

#endif
