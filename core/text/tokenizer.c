/* The format-independent half of the tokenizer: loading by content, the piece hash map, the BPE merge
 * engine, llama2.c-style encoding, and decoding. The merge engine reproduces run.c's quadratic loop
 * ("merge the best-scoring adjacent pair, leftmost on ties, until none is left") with a heap over a linked
 * list of symbols, so a 1.3 MB text encodes in about a second instead of hours, with identical ids and no
 * chunking of the text (chunking at whitespace would change the result: pieces such as "  " span it). */
#include <stdlib.h>
#include <string.h>

#include "core/text/tokenizer_internal.h"

/* ------------------------------------------------------------------------------------------ loading */

static int looks_like_json(const char *data, size_t size) {
    /* A tokenizer.bin starts with a little-endian int32 far below 2^24, so one of its first four bytes is
     * NUL; JSON text never holds a NUL. */
    if (size >= 4 && memchr(data, 0, 4)) return 0;
    size_t i = 0;
    if (size >= 3 && (unsigned char)data[0] == 0xEF && (unsigned char)data[1] == 0xBB &&
        (unsigned char)data[2] == 0xBF)
        i = 3;
    while (i < size && (data[i] == ' ' || data[i] == '\t' || data[i] == '\n' || data[i] == '\r'))
        i++;
    return i < size && (data[i] == '{' || data[i] == '[');
}

qlab_status tokenizer_load(const char *path, tokenizer **out) {
    *out = NULL;
    char *data;
    size_t size;
    QLAB_TRY(qlab_read_file(path, &data, &size));
    tokenizer *t = qlab_calloc(1, sizeof *t);
    if (!t) {
        free(data);
        return qlab_fail_context(QLAB_ERR_NOMEM, "%s", path);
    }
    t->bos_id = t->eos_id = t->unk_id = -1;
    t->add_bos = 1;
    qlab_status st = size >= 4 && memcmp(data, "GGUF", 4) == 0 ? tokenizer_load_gguf(path, data, size, t)
                     : looks_like_json(data, size)             ? tokenizer_load_json(path, data, size, t)
                                                               : tokenizer_load_bin(path, data, size, t);
    free(data);
    if (st != QLAB_OK) {
        tokenizer_free(t);
        return st;
    }
    *out = t;
    return QLAB_OK;
}

void tokenizer_free(tokenizer *t) {
    if (!t) return;
    free(t->pieces);
    free(t->piece_len);
    free(t->arena);
    free(t->scores);
    free(t->piece_byte);
    free(t->map.slots);
    free(t->merges.keys);
    free(t->merges.rank);
    free(t->merges.merged);
    free(t->is_added);
    free(t->added);
    for (int i = 0; i < t->n_steps; i++) {
        free(t->steps[i].pattern);
        free(t->steps[i].text);
    }
    free(t->steps);
    free(t);
}

int tokenizer_vocab_size(const tokenizer *t) {
    return t->vocab_size;
}
int tokenizer_bos_id(const tokenizer *t) {
    return t->bos_id;
}
int tokenizer_eos_id(const tokenizer *t) {
    return t->eos_id;
}
int tokenizer_add_bos(const tokenizer *t) {
    return t->add_bos;
}

const char *tokenizer_piece(const tokenizer *t, int id) {
    return (id >= 0 && id < t->vocab_size) ? t->pieces[id] : NULL;
}

/* ------------------------------------------------------------------------------------------ piece map */

static uint64_t hash_bytes(const char *s, size_t len) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

qlab_status tokenizer_map_build(tokenizer *t) {
    size_t cap = 16;
    while (cap < (size_t)t->vocab_size * 2)
        cap *= 2;
    t->map.slots = malloc(cap * sizeof *t->map.slots);
    if (!t->map.slots) return qlab_fail(QLAB_ERR_NOMEM, "out of memory for a %zu-slot piece map", cap);
    memset(t->map.slots, 0xFF, cap * sizeof *t->map.slots);
    t->map.mask = cap - 1;
    for (int id = 0; id < t->vocab_size; id++) {
        size_t slot = hash_bytes(t->pieces[id], (size_t)t->piece_len[id]) & t->map.mask;
        int duplicate = 0;
        while (t->map.slots[slot] >= 0) {
            int other = t->map.slots[slot];
            if (t->piece_len[other] == t->piece_len[id] &&
                !memcmp(t->pieces[other], t->pieces[id], (size_t)t->piece_len[id])) {
                duplicate = 1;
                break;
            }
            slot = (slot + 1) & t->map.mask;
        }
        if (!duplicate) t->map.slots[slot] = id;
    }
    return QLAB_OK;
}

/* Lookup of the concatenation a + b without building it (b may be empty). */
static int map_find_pair(const tokenizer *t, const char *a, size_t la, const char *b, size_t lb) {
    if (la + lb > (size_t)t->max_piece_len) return -1;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < la; i++)
        h = (h ^ (unsigned char)a[i]) * 1099511628211ull;
    for (size_t i = 0; i < lb; i++)
        h = (h ^ (unsigned char)b[i]) * 1099511628211ull;
    size_t slot = (h ^ (h >> 29)) & t->map.mask;
    for (;;) {
        int id = t->map.slots[slot];
        if (id < 0) return -1;
        const char *p = t->pieces[id];
        if ((size_t)t->piece_len[id] == la + lb && !memcmp(p, a, la) && !memcmp(p + la, b, lb)) return id;
        slot = (slot + 1) & t->map.mask;
    }
}

int tokenizer_map_find(const tokenizer *t, const char *s, size_t len) {
    return map_find_pair(t, s, len, "", 0);
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

void tokenizer_find_byte_pieces(tokenizer *t) {
    for (int b = 0; b < 256; b++)
        t->byte_id[b] = -1;
    for (int id = 0; id < t->vocab_size; id++) {
        const char *p = t->pieces[id];
        t->piece_byte[id] = -1;
        if (t->piece_len[id] != 6 || memcmp(p, "<0x", 3) != 0 || p[5] != '>') continue;
        int hi = hex_digit(p[3]), lo = hex_digit(p[4]);
        if (hi < 0 || lo < 0) continue;
        t->piece_byte[id] = (int16_t)(hi * 16 + lo);
        if (t->byte_id[hi * 16 + lo] < 0) t->byte_id[hi * 16 + lo] = id;
    }
}

qlab_status tokenizer_push_id(int **ids, size_t *n, size_t *cap, int id) {
    if (*n == *cap) {
        size_t grown = *cap ? *cap * 2 : 256;
        int *p = realloc(*ids, grown * sizeof *p);
        if (!p) return qlab_fail(QLAB_ERR_NOMEM, "out of memory for %zu token ids", grown);
        *ids = p;
        *cap = grown;
    }
    (*ids)[(*n)++] = id;
    return QLAB_OK;
}

/* ------------------------------------------------------------------------------------------ merging */

void tokenizer_workspace_free(tokenizer_workspace *w) {
    free(w->prev);
    free(w->next);
    free(w->version);
    free(w->heap);
    memset(w, 0, sizeof *w);
}

/* The merged id of the pair (a, b) and its priority, or -1 when the pair does not merge. */
static int pair_merge(const tokenizer *t, int a, int b, float *priority) {
    if (t->kind == TOKENIZER_LLAMA2C) {
        int id =
            map_find_pair(t, t->pieces[a], (size_t)t->piece_len[a], t->pieces[b], (size_t)t->piece_len[b]);
        /* run.c starts its search at best_score = -1e10 and takes a pair only when score > best, so a
         * piece scored at or below -1e10 (or NaN) is never produced by a merge. */
        if (id < 0 || !(t->scores[id] > -1e10f)) return -1;
        *priority = t->scores[id];
        return id;
    }
    const tokenizer_pair_map *m = &t->merges;
    if (!m->keys) return -1;
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    size_t slot = (size_t)((key * 0x9E3779B97F4A7C15ull) >> 20) & m->mask;
    for (;;) {
        if (m->keys[slot] == 0) return -1;
        if (m->keys[slot] == key) {
            *priority = -(float)m->rank[slot]; /* ranks < 2^24, exact in a float */
            return m->merged[slot];
        }
        slot = (slot + 1) & m->mask;
    }
}

/* Heap order: higher priority first; on equal priority the pair further left (lower symbol index; a merged
 * symbol keeps its left part's index, so index order is text order). */
static int candidate_before(const tokenizer_candidate *x, const tokenizer_candidate *y) {
    return x->priority > y->priority || (x->priority == y->priority && x->left < y->left);
}

static qlab_status heap_push(tokenizer_workspace *w, tokenizer_candidate c) {
    if (w->heap_len == w->heap_cap) {
        size_t grown = w->heap_cap ? w->heap_cap * 2 : 1024;
        tokenizer_candidate *h = realloc(w->heap, grown * sizeof *h);
        if (!h) return qlab_fail(QLAB_ERR_NOMEM, "out of memory for %zu merge candidates", grown);
        w->heap = h;
        w->heap_cap = grown;
    }
    size_t i = w->heap_len++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!candidate_before(&c, &w->heap[parent])) break;
        w->heap[i] = w->heap[parent];
        i = parent;
    }
    w->heap[i] = c;
    return QLAB_OK;
}

static tokenizer_candidate heap_pop(tokenizer_workspace *w) {
    tokenizer_candidate top = w->heap[0], last = w->heap[--w->heap_len];
    size_t i = 0, n = w->heap_len;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= n) break;
        if (child + 1 < n && candidate_before(&w->heap[child + 1], &w->heap[child])) child++;
        if (!candidate_before(&w->heap[child], &last)) break;
        w->heap[i] = w->heap[child];
        i = child;
    }
    if (n > 0) w->heap[i] = last;
    return top;
}

static qlab_status push_pair(const tokenizer *t, tokenizer_workspace *w, const int *ids, int left,
                             int right) {
    if (left < 0 || right < 0) return QLAB_OK;
    float priority;
    int merged = pair_merge(t, ids[left], ids[right], &priority);
    if (merged < 0) return QLAB_OK;
    tokenizer_candidate c = {priority, left, right, w->version[left], w->version[right], merged};
    return heap_push(w, c);
}

qlab_status tokenizer_merge(const tokenizer *t, tokenizer_workspace *w, int *ids, size_t *n) {
    size_t count = *n;
    if (count < 2) return QLAB_OK;
    if (count > INT32_MAX) return qlab_fail(QLAB_ERR_ARG, "text too long to tokenize (%zu symbols)", count);
    if (count > w->symbol_cap) {
        free(w->prev);
        free(w->next);
        free(w->version);
        w->prev = malloc(count * sizeof *w->prev);
        w->next = malloc(count * sizeof *w->next);
        w->version = malloc(count * sizeof *w->version);
        if (!w->prev || !w->next || !w->version) {
            tokenizer_workspace_free(w);
            return qlab_fail(QLAB_ERR_NOMEM, "out of memory for %zu symbols", count);
        }
        w->symbol_cap = count;
    }
    for (size_t i = 0; i < count; i++) {
        w->prev[i] = (int32_t)i - 1;
        w->next[i] = i + 1 < count ? (int32_t)i + 1 : -1;
        w->version[i] = 0;
    }
    w->heap_len = 0;
    for (size_t i = 0; i + 1 < count; i++)
        QLAB_TRY(push_pair(t, w, ids, (int)i, (int)i + 1));
    while (w->heap_len > 0) {
        tokenizer_candidate c = heap_pop(w);
        /* Any change to either symbol (a merge into it, or its removal) bumps its version, so a stale
         * candidate is recognised here and dropped. */
        if (w->version[c.left] != c.left_version || w->version[c.right] != c.right_version) continue;
        ids[c.left] = c.merged;
        w->version[c.left]++;
        w->version[c.right]++;
        int after = w->next[c.right];
        w->next[c.left] = after;
        if (after >= 0) w->prev[after] = c.left;
        QLAB_TRY(push_pair(t, w, ids, w->prev[c.left], c.left));
        QLAB_TRY(push_pair(t, w, ids, c.left, after));
    }
    size_t out = 0; /* symbol 0 is never removed: only right halves of pairs are */
    for (int i = 0; i >= 0; i = w->next[i])
        ids[out++] = ids[i];
    *n = out;
    return QLAB_OK;
}

/* ------------------------------------------------------------------------------------------ encoding */

static qlab_status push_byte_fallback(const tokenizer *t, unsigned char byte, int **ids, size_t *n,
                                      size_t *cap) {
    int id = byte + 3; /* run.c: <0x00> is id 3 */
    if (id >= t->vocab_size)
        return qlab_fail(QLAB_ERR_FORMAT,
                         "tokenizer has %d pieces, too few for the byte fallback piece of 0x%02X",
                         t->vocab_size, byte);
    return tokenizer_push_id(ids, n, cap, id);
}

/* run.c's encode(): the dummy prefix, then the text split into UTF-8 characters (up to 4 bytes, stray
 * continuation bytes grouped the same way), each looked up whole or else spelled as byte pieces. One
 * departure from run.c: "▁" (U+2581) in the text is a space, because SentencePiece, which made these
 * vocabularies and the models' training ids, writes spaces as U+2581 before encoding (so do Hugging
 * Face's Llama tokenizers and llama.cpp); run.c would spell it as three byte pieces. */
static qlab_status encode_llama2c(const tokenizer *t, const char *text, size_t len, int **ids, size_t *n,
                                  size_t *cap) {
    if (len > 0) {
        /* run.c assumes " " is a piece; a vocabulary without it gets the byte piece instead. */
        int dummy = tokenizer_map_find(t, " ", 1);
        if (dummy >= 0)
            QLAB_TRY(tokenizer_push_id(ids, n, cap, dummy));
        else
            QLAB_TRY(push_byte_fallback(t, ' ', ids, n, cap));
    }
    const unsigned char *s = (const unsigned char *)text;
    char buf[4];
    size_t buf_len = 0;
    for (size_t i = 0; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) buf_len = 0;
        buf[buf_len++] = (char)s[i];
        if (i + 1 < len && (s[i + 1] & 0xC0) == 0x80 && buf_len < 4) continue;
        if (buf_len == 3 && !memcmp(buf, "\xE2\x96\x81", 3)) buf[0] = ' ', buf_len = 1;
        int id = tokenizer_map_find(t, buf, buf_len);
        if (id >= 0) {
            QLAB_TRY(tokenizer_push_id(ids, n, cap, id));
        } else {
            for (size_t k = 0; k < buf_len; k++)
                QLAB_TRY(push_byte_fallback(t, (unsigned char)buf[k], ids, n, cap));
        }
        buf_len = 0;
    }
    return QLAB_OK;
}

qlab_status tokenizer_encode(const tokenizer *t, const char *text, size_t len, int add_bos, int **ids,
                             size_t *n_ids) {
    *ids = NULL;
    *n_ids = 0;
    if (!text && len > 0) return qlab_fail(QLAB_ERR_ARG, "tokenizer_encode: NULL text");
    if (add_bos && t->bos_id < 0) return qlab_fail(QLAB_ERR_ARG, "tokenizer has no BOS token to add");
    int *out = NULL;
    size_t n = 0, cap = 0;
    tokenizer_workspace w = {0};
    qlab_status st = QLAB_OK;
    if (add_bos) st = tokenizer_push_id(&out, &n, &cap, t->bos_id);
    if (st == QLAB_OK && t->kind == TOKENIZER_LLAMA2C) {
        st = encode_llama2c(t, text, len, &out, &n, &cap);
        /* run.c merges over the whole list, BOS included. */
        if (st == QLAB_OK) st = tokenizer_merge(t, &w, out, &n);
    } else if (st == QLAB_OK) {
        st = tokenizer_encode_hf(t, &w, text, len, &out, &n, &cap);
    }
    tokenizer_workspace_free(&w);
    if (st == QLAB_OK && !out && !(out = malloc(sizeof *out))) /* *ids is malloc'd even when empty */
        st = qlab_fail(QLAB_ERR_NOMEM, "out of memory");
    if (st != QLAB_OK) {
        free(out);
        return st;
    }
    *ids = out;
    *n_ids = n;
    return QLAB_OK;
}

/* ------------------------------------------------------------------------------------------ decoding */

typedef struct {
    char *data;
    size_t len, cap;
} byte_buffer;

static qlab_status append(byte_buffer *b, const void *src, size_t len) {
    if (b->len + len + 1 > b->cap) {
        size_t grown = b->cap ? b->cap : 256;
        while (grown < b->len + len + 1)
            grown *= 2;
        char *p = realloc(b->data, grown);
        if (!p) return qlab_fail(QLAB_ERR_NOMEM, "out of memory for %zu bytes of decoded text", grown);
        b->data = p;
        b->cap = grown;
    }
    memcpy(b->data + b->len, src, len);
    b->len += len;
    return QLAB_OK;
}

static qlab_status decode_piece(const tokenizer *t, int id, int after_bos, byte_buffer *b) {
    const char *p = t->pieces[id];
    size_t len = (size_t)t->piece_len[id];
    if (t->is_added && t->is_added[id]) return append(b, p, len);
    if (t->kind != TOKENIZER_HF_BYTELEVEL && t->piece_byte[id] >= 0) {
        char byte = (char)t->piece_byte[id];
        return append(b, &byte, 1);
    }
    if (t->kind == TOKENIZER_LLAMA2C) {
        if (after_bos && len > 0 && p[0] == ' ') p++, len--;
        return append(b, p, len);
    }
    if (t->kind == TOKENIZER_HF_SENTENCEPIECE) {
        int first = 1;
        for (size_t i = 0; i < len;) {
            if (i + 3 <= len && !memcmp(p + i, "\xE2\x96\x81", 3)) { /* "▁" */
                if (!(first && after_bos)) QLAB_TRY(append(b, " ", 1));
                i += 3;
            } else {
                QLAB_TRY(append(b, p + i, 1));
                i++;
            }
            first = 0;
        }
        return QLAB_OK;
    }
    /* Byte level: every character of the piece stands for one byte. */
    for (size_t i = 0; i < len;) {
        int32_t cp;
        size_t step = unicode_next((const unsigned char *)p + i, len - i, &cp);
        if (cp >= 0 && cp < 512 && t->codepoint_to_byte[cp] >= 0) {
            char byte = (char)t->codepoint_to_byte[cp];
            QLAB_TRY(append(b, &byte, 1));
        } else {
            QLAB_TRY(append(b, p + i, step));
        }
        i += step;
    }
    return QLAB_OK;
}

qlab_status tokenizer_decode(const tokenizer *t, const int *ids, size_t n, char **text, size_t *len) {
    *text = NULL;
    *len = 0;
    byte_buffer b = {0};
    qlab_status st = append(&b, "", 0);
    int prev = -1;
    for (size_t i = 0; i < n && st == QLAB_OK; i++) {
        int id = ids[i];
        if (id < 0 || id >= t->vocab_size) {
            st = qlab_fail(QLAB_ERR_ARG, "token %zu is id %d, outside the vocabulary of %d", i, id,
                           t->vocab_size);
            break;
        }
        /* llama2.c's <s> and </s> ("\n<s>\n") are markers that never come from text. In a tokenizer.json
         * special tokens do come from text (they are matched in it), so only the BOS that add_bos puts
         * first is dropped, and only for a tokenizer that adds one: SmolLM2's BOS <|im_start|> is never
         * added, so a leading one came from the text and stays (as transformers' decode keeps it). */
        int marker = t->kind == TOKENIZER_LLAMA2C ? (id == t->bos_id || id == t->eos_id)
                                                  : (i == 0 && id == t->bos_id && t->add_bos);
        if (!marker) st = decode_piece(t, id, prev >= 0 && prev == t->bos_id, &b);
        prev = id;
    }
    if (st != QLAB_OK) {
        free(b.data);
        return st;
    }
    b.data[b.len] = '\0';
    *text = b.data;
    *len = b.len;
    return QLAB_OK;
}
