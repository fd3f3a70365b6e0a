/* llama2.c's tokenizer.bin: int32 max_token_length, then per piece float32 score, int32 length and the
 * bytes. The file does not store the piece count (llama2.c passes it separately), so the reader takes
 * pieces until the end of the file and checks every length against the bytes that remain. */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/text/tokenizer_internal.h"

/* Longer than any real piece (Llama 2: 27 bytes) by far; a larger header is corruption, not a tokenizer. */
#define TOKENIZER_BIN_MAX_PIECE_BYTES 65536

static int32_t read_i32(const char *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

qlab_status tokenizer_load_bin(const char *path, const char *data, size_t size, tokenizer *t) {
    t->kind = TOKENIZER_LLAMA2C;
    if (size < 4)
        return qlab_fail(QLAB_ERR_FORMAT, "%s: %zu bytes, too short for the 4-byte max_token_length header",
                         path, size);
    int32_t max_len = read_i32(data);
    if (max_len < 1 || max_len > TOKENIZER_BIN_MAX_PIECE_BYTES)
        return qlab_fail(QLAB_ERR_FORMAT, "%s: max_token_length is %d, expected 1..%d (not a tokenizer.bin?)",
                         path, max_len, TOKENIZER_BIN_MAX_PIECE_BYTES);
    /* First pass: count and validate, so the second can fill exact-size arrays. */
    size_t offset = 4, count = 0, text_bytes = 0;
    while (offset < size) {
        if (size - offset < 8)
            return qlab_fail(
                QLAB_ERR_FORMAT,
                "%s: truncated at piece %zu (offset %zu): %zu bytes left, need 8 for score and length", path,
                count, offset, size - offset);
        float score;
        memcpy(&score, data + offset, 4);
        int32_t len = read_i32(data + offset + 4);
        if (isnan(score))
            return qlab_fail(QLAB_ERR_FORMAT, "%s: piece %zu (offset %zu) has a NaN score", path, count,
                             offset);
        if (len < 0)
            return qlab_fail(QLAB_ERR_FORMAT, "%s: piece %zu (offset %zu) has negative length %d", path,
                             count, offset, len);
        if (len > max_len)
            return qlab_fail(QLAB_ERR_FORMAT,
                             "%s: piece %zu (offset %zu) has length %d > max_token_length %d", path, count,
                             offset, len, max_len);
        if ((size_t)len > size - offset - 8)
            return qlab_fail(QLAB_ERR_FORMAT,
                             "%s: piece %zu (offset %zu) has length %d but only %zu bytes remain", path,
                             count, offset, len, size - offset - 8);
        offset += 8 + (size_t)len;
        text_bytes += (size_t)len + 1;
        count++;
    }
    if (count == 0) return qlab_fail(QLAB_ERR_FORMAT, "%s: no pieces after the header", path);
    if (count > INT_MAX) return qlab_fail(QLAB_ERR_FORMAT, "%s: %zu pieces, too many", path, count);

    t->vocab_size = (int)count;
    t->pieces = qlab_calloc(count, sizeof *t->pieces);
    t->piece_len = qlab_calloc(count, sizeof *t->piece_len);
    t->scores = qlab_calloc(count, sizeof *t->scores);
    t->piece_byte = qlab_calloc(count, sizeof *t->piece_byte);
    t->arena = qlab_calloc(text_bytes, 1);
    if (!t->pieces || !t->piece_len || !t->scores || !t->piece_byte || !t->arena)
        return qlab_fail_context(QLAB_ERR_NOMEM, "%s", path);
    char *dst = t->arena;
    offset = 4;
    for (size_t i = 0; i < count; i++) {
        memcpy(&t->scores[i], data + offset, 4);
        int32_t len = read_i32(data + offset + 4);
        memcpy(dst, data + offset + 8, (size_t)len);
        dst[len] = '\0';
        t->pieces[i] = dst;
        t->piece_len[i] = len;
        if (len > t->max_piece_len) t->max_piece_len = len;
        dst += len + 1;
        offset += 8 + (size_t)len;
    }
    /* llama2.c's fixed ids: <unk> 0, <s> 1, </s> 2, byte pieces from 3. */
    t->bos_id = count > 1 ? 1 : -1;
    t->eos_id = count > 2 ? 2 : -1;
    tokenizer_find_byte_pieces(t);
    return tokenizer_map_build(t);
}

qlab_status tokenizer_save_bin(const char *path, int n, const char *const *pieces, const float *scores,
                               int max_len) {
    if (n < 1 || !pieces || !scores)
        return qlab_fail(QLAB_ERR_ARG, "%s: need at least one piece with a score (got n=%d)", path, n);
    size_t longest = 0, total = 4;
    for (int i = 0; i < n; i++) {
        if (!pieces[i]) return qlab_fail(QLAB_ERR_ARG, "%s: piece %d is NULL", path, i);
        if (isnan(scores[i])) return qlab_fail(QLAB_ERR_ARG, "%s: piece %d has a NaN score", path, i);
        size_t len = strlen(pieces[i]);
        if (len > TOKENIZER_BIN_MAX_PIECE_BYTES)
            return qlab_fail(QLAB_ERR_ARG, "%s: piece %d is %zu bytes, above the format's limit of %d", path,
                             i, len, TOKENIZER_BIN_MAX_PIECE_BYTES);
        if (len > longest) longest = len;
        total += 8 + len;
    }
    if (max_len <= 0) max_len = longest > 0 ? (int)longest : 1;
    if (max_len > TOKENIZER_BIN_MAX_PIECE_BYTES || longest > (size_t)max_len)
        return qlab_fail(QLAB_ERR_ARG, "%s: max_len %d but the longest piece is %zu bytes", path, max_len,
                         longest);
    char *buf = malloc(total);
    if (!buf) return qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory (%zu bytes)", path, total);
    size_t offset = 0;
    int32_t v = max_len;
    memcpy(buf, &v, 4);
    offset = 4;
    for (int i = 0; i < n; i++) {
        int32_t len = (int32_t)strlen(pieces[i]);
        memcpy(buf + offset, &scores[i], 4);
        memcpy(buf + offset + 4, &len, 4);
        memcpy(buf + offset + 8, pieces[i], (size_t)len);
        offset += 8 + (size_t)len;
    }
    qlab_status st = qlab_write_file_atomic(path, buf, total);
    free(buf);
    return st;
}
