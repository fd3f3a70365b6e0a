/* Exercises a loaded tokenizer: encodes a fixed text and the input's own bytes, decodes the ids back. */
#ifndef QLAB_FUZZ_COMMON_TOK_H
#define QLAB_FUZZ_COMMON_TOK_H

#include "core/text/tokenizer.h"

static inline void fuzz_exercise_tokenizer(const tokenizer *t, const uint8_t *data, size_t size) {
    static const char text[] = "Once upon a time, a caf\xc3\xa9 <s> \t\n  123 \xe2\x96\x81x \xf0\x9f\x99\x82";
    const char *texts[2] = {text, (const char *)data};
    size_t lens[2] = {sizeof text - 1, size < 256 ? size : 256};
    for (int k = 0; k < 2; k++) {
        int *ids = NULL;
        size_t n = 0;
        if (tokenizer_encode(t, texts[k], lens[k], 1, &ids, &n) == QLAB_OK) {
            char *back = NULL;
            size_t blen = 0;
            if (tokenizer_decode(t, ids, n, &back, &blen) == QLAB_OK) free(back);
            for (size_t i = 0; i < n; i++)
                (void)tokenizer_piece(t, ids[i]);
        }
        free(ids);
    }
    (void)tokenizer_piece(t, -1);
    (void)tokenizer_piece(t, tokenizer_vocab_size(t));
}

#endif
