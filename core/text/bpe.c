/* BPE training for bpe.h: count distinct words, then repeatedly merge the most frequent adjacent pair.
 * Pair counts live in a hash map and are updated only in the words that contain the merged pair; the best
 * pair comes from a max-heap whose stale entries are re-pushed lazily (a pair's count only ever falls,
 * except for pairs with the newly made symbol, which are pushed after each merge). */
#include "core/text/bpe.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --------------------------------------------------------------------------------- small containers */

typedef struct {
    uint32_t *data;
    size_t len, cap;
} u32_list;

static int u32_list_push(u32_list *l, uint32_t v) {
    if (l->len == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4;
        uint32_t *p = realloc(l->data, cap * sizeof *p);
        if (!p) return 0;
        l->data = p;
        l->cap = cap;
    }
    l->data[l->len++] = v;
    return 1;
}

static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Open-addressing map from a 64-bit key to a non-negative int; -1 = absent. */
typedef struct {
    uint64_t *keys;
    int32_t *values;
    size_t cap, count;
} key_map;

static int key_map_init(key_map *m, size_t cap) {
    m->cap = cap;
    m->count = 0;
    m->keys = malloc(cap * sizeof *m->keys);
    m->values = malloc(cap * sizeof *m->values);
    if (!m->keys || !m->values) return 0;
    for (size_t i = 0; i < cap; i++)
        m->values[i] = -1;
    return 1;
}

static void key_map_free(key_map *m) {
    free(m->keys);
    free(m->values);
}

static size_t key_map_slot(const key_map *m, uint64_t key) {
    size_t i = mix64(key) & (m->cap - 1);
    while (m->values[i] >= 0 && m->keys[i] != key)
        i = (i + 1) & (m->cap - 1);
    return i;
}

static int32_t key_map_get(const key_map *m, uint64_t key) {
    return m->values[key_map_slot(m, key)];
}

static int key_map_put(key_map *m, uint64_t key, int32_t value) {
    if (2 * (m->count + 1) > m->cap) {
        key_map bigger;
        if (!key_map_init(&bigger, m->cap * 2)) {
            key_map_free(&bigger);
            return 0;
        }
        for (size_t i = 0; i < m->cap; i++)
            if (m->values[i] >= 0) {
                size_t j = key_map_slot(&bigger, m->keys[i]);
                bigger.keys[j] = m->keys[i];
                bigger.values[j] = m->values[i];
                bigger.count++;
            }
        key_map_free(m);
        *m = bigger;
    }
    size_t i = key_map_slot(m, key);
    if (m->values[i] < 0) m->count++;
    m->keys[i] = key;
    m->values[i] = value;
    return 1;
}

/* -------------------------------------------------------------------------------------- characters */

/* Length of the valid UTF-8 character at s (1..4), or 0 when the bytes are not valid UTF-8 (or NUL). */
static int utf8_length(const unsigned char *s, size_t avail) {
    unsigned c = s[0];
    if (c == 0) return 0;
    if (c < 0x80) return 1;
    int n;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)
        n = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0) lo = 0xA0; /* overlong */
        if (c == 0xED) hi = 0x9F; /* surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else
        return 0;
    if ((size_t)n > avail) return 0;
    if (s[1] < lo || s[1] > hi) return 0;
    for (int i = 2; i < n; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    return n;
}

/* Classes that SentencePiece keeps apart (Unicode script / number splitting, simplified). */
enum { CLASS_SPACE, CLASS_LETTER, CLASS_DIGIT, CLASS_PUNCT, CLASS_NEWLINE };

static int char_class(const unsigned char *s, int n) {
    if (n == 1) {
        unsigned c = s[0];
        if (c == ' ') return CLASS_SPACE;
        if (c == '\n') return CLASS_NEWLINE;
        if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return CLASS_LETTER;
        if (c >= '0' && c <= '9') return CLASS_DIGIT;
        return CLASS_PUNCT;
    }
    /* U+0080..U+00BF (Latin-1 punctuation and symbols) and U+2000..U+206F (general punctuation: curly
     * quotes, dashes, ellipsis) are punctuation; every other non-ASCII character counts as a letter. */
    if (n == 2 && s[0] == 0xC2) return CLASS_PUNCT;
    if (n == 3 && s[0] == 0xE2 && s[1] >= 0x80 && s[1] <= 0x81) return CLASS_PUNCT;
    return CLASS_LETTER;
}

/* ------------------------------------------------------------------------------------------ trainer */

typedef struct {
    char *bytes;
    int len;
    int cls; /* class of the piece without its leading space; CLASS_SPACE for " " itself */
} symbol;

typedef struct {
    uint32_t *symbols;
    int len;
    int64_t count;
    uint32_t stamp; /* last merge step that rewrote this word */
} word;

typedef struct {
    uint32_t left, right;
    int64_t count;
    uint32_t stamp; /* last merge step that queued this pair */
    u32_list words; /* words that contain (or once contained) the pair */
} pair;

typedef struct {
    int64_t count;
    int32_t pair;
} heap_entry;

typedef struct {
    symbol *symbols;
    size_t n_symbols, cap_symbols;
    word *words;
    size_t n_words, cap_words;
    pair *pairs;
    size_t n_pairs, cap_pairs;
    key_map pair_index;
    key_map symbol_index; /* hash of a symbol's bytes (probed upward on collision) -> symbol */
    heap_entry *heap;
    size_t n_heap, cap_heap;
} trainer;

static int can_merge(const trainer *t, uint32_t a, uint32_t b) {
    int ca = t->symbols[a].cls, cb = t->symbols[b].cls;
    if (ca == CLASS_NEWLINE || cb == CLASS_NEWLINE || cb == CLASS_SPACE) return 0;
    if (t->symbols[a].len + t->symbols[b].len > BPE_MAX_PIECE_BYTES) return 0;
    return ca == CLASS_SPACE || ca == cb;
}

/* Byte order of the concatenations a1+b1 and a2+b2, then the shorter left part: the merge tie-break. */
static int compare_pairs(const trainer *t, const pair *x, const pair *y) {
    const symbol *xa = &t->symbols[x->left], *xb = &t->symbols[x->right];
    const symbol *ya = &t->symbols[y->left], *yb = &t->symbols[y->right];
    int xn = xa->len + xb->len, yn = ya->len + yb->len;
    for (int i = 0; i < xn && i < yn; i++) {
        unsigned char cx = (unsigned char)(i < xa->len ? xa->bytes[i] : xb->bytes[i - xa->len]);
        unsigned char cy = (unsigned char)(i < ya->len ? ya->bytes[i] : yb->bytes[i - ya->len]);
        if (cx != cy) return cx < cy ? -1 : 1;
    }
    if (xn != yn) return xn < yn ? -1 : 1;
    return (xa->len > ya->len) - (xa->len < ya->len);
}

/* Does entry x come out of the heap before y? */
static int heap_before(const trainer *t, const heap_entry *x, const heap_entry *y) {
    if (x->count != y->count) return x->count > y->count;
    return compare_pairs(t, &t->pairs[x->pair], &t->pairs[y->pair]) < 0;
}

static int heap_push(trainer *t, int64_t count, int32_t p) {
    if (t->n_heap == t->cap_heap) {
        size_t cap = t->cap_heap ? t->cap_heap * 2 : 1024;
        heap_entry *h = realloc(t->heap, cap * sizeof *h);
        if (!h) return 0;
        t->heap = h;
        t->cap_heap = cap;
    }
    size_t i = t->n_heap++;
    t->heap[i] = (heap_entry){count, p};
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!heap_before(t, &t->heap[i], &t->heap[parent])) break;
        heap_entry tmp = t->heap[i];
        t->heap[i] = t->heap[parent];
        t->heap[parent] = tmp;
        i = parent;
    }
    return 1;
}

static heap_entry heap_pop(trainer *t) {
    heap_entry top = t->heap[0];
    t->heap[0] = t->heap[--t->n_heap];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, best = i;
        if (l < t->n_heap && heap_before(t, &t->heap[l], &t->heap[best])) best = l;
        if (r < t->n_heap && heap_before(t, &t->heap[r], &t->heap[best])) best = r;
        if (best == i) break;
        heap_entry tmp = t->heap[i];
        t->heap[i] = t->heap[best];
        t->heap[best] = tmp;
        i = best;
    }
    return top;
}

static uint64_t bytes_hash(const char *bytes, int len) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (int i = 0; i < len; i++)
        h = (h ^ (unsigned char)bytes[i]) * 0x100000001b3ULL;
    return h;
}

/* The symbol with these bytes, or -1. */
static int find_symbol(const trainer *t, const char *bytes, int len) {
    for (uint64_t h = bytes_hash(bytes, len);; h++) {
        int32_t s = key_map_get(&t->symbol_index, h);
        if (s < 0) return -1;
        if (t->symbols[s].len == len && !memcmp(t->symbols[s].bytes, bytes, (size_t)len)) return s;
    }
}

/* Adds a symbol that does not exist yet; -1 when out of memory. */
static int add_symbol(trainer *t, const char *bytes, int len, int cls) {
    uint64_t h = bytes_hash(bytes, len);
    while (key_map_get(&t->symbol_index, h) >= 0)
        h++;
    if (t->n_symbols >= INT32_MAX - 1) return -1;
    if (t->n_symbols == t->cap_symbols) {
        size_t cap = t->cap_symbols ? t->cap_symbols * 2 : 256;
        symbol *s = realloc(t->symbols, cap * sizeof *s);
        if (!s) return -1;
        t->symbols = s;
        t->cap_symbols = cap;
    }
    char *copy = malloc((size_t)len + 1);
    if (!copy) return -1;
    memcpy(copy, bytes, (size_t)len);
    copy[len] = 0;
    t->symbols[t->n_symbols] = (symbol){copy, len, cls};
    if (!key_map_put(&t->symbol_index, h, (int32_t)t->n_symbols)) return -1;
    return (int)t->n_symbols++;
}

/* Index of pair (a, b), created with count 0 when new; -1 when out of memory. */
static int32_t pair_lookup(trainer *t, uint32_t a, uint32_t b) {
    uint64_t key = (uint64_t)a << 32 | b;
    int32_t p = key_map_get(&t->pair_index, key);
    if (p >= 0) return p;
    if (t->n_pairs == t->cap_pairs) {
        size_t cap = t->cap_pairs ? t->cap_pairs * 2 : 1024;
        pair *q = realloc(t->pairs, cap * sizeof *q);
        if (!q) return -1;
        t->pairs = q;
        t->cap_pairs = cap;
    }
    if (t->n_pairs >= INT32_MAX) return -1;
    p = (int32_t)t->n_pairs++;
    t->pairs[p] = (pair){a, b, 0, 0, {NULL, 0, 0}};
    if (!key_map_put(&t->pair_index, key, p)) return -1;
    return p;
}

static void trainer_free(trainer *t) {
    for (size_t i = 0; i < t->n_symbols; i++)
        free(t->symbols[i].bytes);
    for (size_t i = 0; i < t->n_words; i++)
        free(t->words[i].symbols);
    for (size_t i = 0; i < t->n_pairs; i++)
        free(t->pairs[i].words.data);
    free(t->symbols);
    free(t->words);
    free(t->pairs);
    free(t->heap);
    key_map_free(&t->pair_index);
    key_map_free(&t->symbol_index);
}

#define OOM() qlab_fail(QLAB_ERR_NOMEM, "bpe: out of memory")

/* Adds (sign=+1) or removes (sign=-1) the pairs of word w to the counts. When adding, pairs that hold the
 * symbol just made (fresh) are recorded in the word's pair lists and queued for the heap. */
static qlab_status count_word_pairs(trainer *t, uint32_t w, int sign, int64_t fresh, uint32_t stamp,
                                    u32_list *queued) {
    word *wd = &t->words[w];
    for (int i = 0; i + 1 < wd->len; i++) {
        uint32_t a = wd->symbols[i], b = wd->symbols[i + 1];
        if (!can_merge(t, a, b)) continue;
        int32_t p = pair_lookup(t, a, b);
        if (p < 0) return OOM();
        t->pairs[p].count += sign * wd->count;
        if (sign > 0 && (fresh < 0 || (int64_t)a == fresh || (int64_t)b == fresh)) {
            if (!u32_list_push(&t->pairs[p].words, w)) return OOM();
            if (t->pairs[p].stamp != stamp) {
                t->pairs[p].stamp = stamp;
                if (!u32_list_push(queued, (uint32_t)p)) return OOM();
            }
        }
    }
    return QLAB_OK;
}

/* The distinct words seen so far, found by a hash of their bytes; word w is text[start[w], start[w]+len[w]).
 */
typedef struct {
    key_map by_hash;
    size_t *start, *len;
} word_table;

/* Counts one occurrence of the word s[ws, we), adding it to t->words when it is new. */
static qlab_status count_word(trainer *t, word_table *wt, const unsigned char *s, size_t ws, size_t we) {
    /* Look the word up by a hash of its bytes, comparing bytes to rule out collisions. */
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t k = ws; k < we; k++)
        h = (h ^ s[k]) * 0x100000001b3ULL;
    for (;; h++) {
        int32_t w = key_map_get(&wt->by_hash, h);
        if (w < 0) {
            if (t->n_words == t->cap_words) {
                size_t cap = t->cap_words ? t->cap_words * 2 : 4096;
                word *nw = realloc(t->words, cap * sizeof *nw);
                size_t *a = realloc(wt->start, cap * sizeof *a);
                if (a) wt->start = a;
                size_t *b = realloc(wt->len, cap * sizeof *b);
                if (b) wt->len = b;
                if (nw) t->words = nw;
                if (!nw || !a || !b || t->n_words >= INT32_MAX - 1) return OOM();
                t->cap_words = cap;
            }
            w = (int32_t)t->n_words++;
            t->words[w] = (word){NULL, 0, 0, 0};
            wt->start[w] = ws;
            wt->len[w] = we - ws;
            if (!key_map_put(&wt->by_hash, h, w)) return OOM();
        }
        if (wt->len[w] == we - ws && !memcmp(s + wt->start[w], s + ws, we - ws)) {
            t->words[w].count++;
            return QLAB_OK;
        }
    }
}

/* Counts one occurrence of the n-byte character at text, making it a symbol (and growing *counts) when it
 * is new. */
static qlab_status count_char(trainer *t, key_map *chars, int64_t **counts, size_t *cap_counts,
                              const char *text, int n) {
    uint32_t key = 0;
    memcpy(&key, text, (size_t)n);
    int32_t c = key_map_get(chars, key);
    if (c < 0) {
        c = add_symbol(t, text, n, char_class((const unsigned char *)text, n));
        if (c < 0 || !key_map_put(chars, key, c)) return OOM();
        if ((size_t)c >= *cap_counts) {
            size_t cap = *cap_counts ? *cap_counts * 2 : 256;
            int64_t *p = realloc(*counts, cap * sizeof *p);
            if (!p) return OOM();
            memset(p + *cap_counts, 0, (cap - *cap_counts) * sizeof *p);
            *counts = p;
            *cap_counts = cap;
        }
    }
    (*counts)[c]++;
    return QLAB_OK;
}

/* Turns each distinct word into its character symbols. */
static qlab_status spell_words(trainer *t, const word_table *wt, const key_map *chars, const unsigned char *s,
                               size_t len) {
    for (size_t w = 0; w < t->n_words; w++) {
        word *wd = &t->words[w];
        wd->symbols = malloc(wt->len[w] * sizeof *wd->symbols);
        if (!wd->symbols) return OOM();
        for (size_t k = wt->start[w]; k < wt->start[w] + wt->len[w];) {
            int n = utf8_length(s + k, len - k);
            uint32_t key = 0;
            memcpy(&key, s + k, (size_t)n);
            wd->symbols[wd->len++] = (uint32_t)key_map_get(chars, key);
            k += (size_t)n;
        }
    }
    return QLAB_OK;
}

/* Splits the text into distinct words (a space starts a word; a newline or an invalid byte ends one) and
 * counts them and the characters. Characters become symbols 0..n-1 in order of first appearance. */
static qlab_status collect_words(trainer *t, const char *text, size_t len, int64_t **char_counts,
                                 int64_t *loose_units) {
    key_map chars = {0};
    word_table wt = {{0}, NULL, NULL};
    int64_t *counts = NULL;
    size_t cap_counts = 0;
    qlab_status st = QLAB_OK;
    if (!key_map_init(&chars, 1024) || !key_map_init(&wt.by_hash, 1 << 16)) {
        key_map_free(&chars);
        key_map_free(&wt.by_hash);
        return OOM();
    }
    const unsigned char *s = (const unsigned char *)text;
    size_t ws = 0, we = 0; /* current word [ws, we) */
    for (size_t i = 0; i <= len && st == QLAB_OK;) {
        int n = i < len ? utf8_length(s + i, len - i) : 0;
        int ends_word = i == len || n == 0 || s[i] == '\n' || s[i] == ' ';
        if (ends_word && we > ws) {
            st = count_word(t, &wt, s, ws, we);
            ws = we = i;
        }
        if (i == len || st != QLAB_OK) break;
        if (n == 0) { /* an invalid byte: byte fallback, never part of a word */
            (*loose_units)++;
            i++;
            ws = we = i;
            continue;
        }
        st = count_char(t, &chars, &counts, &cap_counts, text + i, n);
        if (st != QLAB_OK) break;
        if (s[i] == '\n') {
            (*loose_units)++;
            i++;
            ws = we = i;
        } else {
            if (we == ws) ws = i;
            i += (size_t)n;
            we = i;
        }
    }
    if (st == QLAB_OK) st = spell_words(t, &wt, &chars, s, len);
    key_map_free(&chars);
    key_map_free(&wt.by_hash);
    free(wt.start);
    free(wt.len);
    if (st != QLAB_OK) {
        free(counts);
        return st;
    }
    *char_counts = counts;
    return QLAB_OK;
}

/* Merges pair p everywhere into the symbol with the joined bytes, made now unless an earlier merge of
 * other parts made it already (then *is_new = 0: "abc" from "a"+"bc" after "ab"+"c" is not a new piece).
 * Queues the pairs that hold the merged symbol, whose counts grew. */
static qlab_status apply_merge(trainer *t, int32_t p, uint32_t stamp, uint32_t *made, int *is_new) {
    uint32_t a = t->pairs[p].left, b = t->pairs[p].right;
    const symbol *sa = &t->symbols[a], *sb = &t->symbols[b];
    char joined[BPE_MAX_PIECE_BYTES]; /* can_merge never pairs symbols longer than this together */
    memcpy(joined, sa->bytes, (size_t)sa->len);
    memcpy(joined + sa->len, sb->bytes, (size_t)sb->len);
    int cls = sa->cls == CLASS_SPACE ? sb->cls : sa->cls;
    int c = find_symbol(t, joined, sa->len + sb->len);
    *is_new = c < 0;
    if (c < 0) c = add_symbol(t, joined, sa->len + sb->len, cls);
    if (c < 0) return OOM();
    *made = (uint32_t)c;
    /* The pair's word list can grow while we walk it (never for this pair, which is not re-added), but the
     * pairs array may move: take a copy of the list header first. */
    u32_list list = t->pairs[p].words;
    u32_list queued = {NULL, 0, 0};
    qlab_status st = QLAB_OK;
    for (size_t i = 0; i < list.len && st == QLAB_OK; i++) {
        uint32_t w = list.data[i];
        word *wd = &t->words[w];
        if (wd->stamp == stamp) continue;
        int found = 0;
        for (int k = 0; k + 1 < wd->len && !found; k++)
            found = wd->symbols[k] == a && wd->symbols[k + 1] == b;
        if (!found) continue;
        wd->stamp = stamp;
        st = count_word_pairs(t, w, -1, -1, stamp, &queued);
        if (st != QLAB_OK) break;
        int out = 0;
        for (int k = 0; k < wd->len;) {
            if (k + 1 < wd->len && wd->symbols[k] == a && wd->symbols[k + 1] == b) {
                wd->symbols[out++] = (uint32_t)c;
                k += 2;
            } else {
                wd->symbols[out++] = wd->symbols[k++];
            }
        }
        wd->len = out;
        st = count_word_pairs(t, w, +1, c, stamp, &queued);
    }
    for (size_t i = 0; i < queued.len && st == QLAB_OK; i++) {
        int32_t q = (int32_t)queued.data[i];
        if (t->pairs[q].count > 0 && !heap_push(t, t->pairs[q].count, q)) st = OOM();
    }
    free(queued.data);
    return st;
}

typedef struct {
    const trainer *t;
    const int64_t *counts;
} char_order_ctx;

static char_order_ctx sort_ctx; /* qsort has no context argument; set just before the sort */

static int by_count_then_bytes(const void *x, const void *y) {
    uint32_t a = *(const uint32_t *)x, b = *(const uint32_t *)y;
    int64_t ca = sort_ctx.counts[a], cb = sort_ctx.counts[b];
    if (ca != cb) return ca > cb ? -1 : 1;
    const symbol *sa = &sort_ctx.t->symbols[a], *sb = &sort_ctx.t->symbols[b];
    int n = sa->len < sb->len ? sa->len : sb->len;
    int c = memcmp(sa->bytes, sb->bytes, (size_t)n);
    if (c) return c;
    return (sa->len > sb->len) - (sa->len < sb->len);
}

static qlab_status set_piece(bpe_vocab *v, int id, const char *bytes, int len, float score) {
    v->pieces[id] = malloc((size_t)len + 1);
    if (!v->pieces[id]) return OOM();
    memcpy(v->pieces[id], bytes, (size_t)len);
    v->pieces[id][len] = 0;
    v->lengths[id] = len;
    v->scores[id] = score;
    if (len > v->max_token_length) v->max_token_length = len;
    return QLAB_OK;
}

/* Initial pair counts, then the heap with one entry per pair. */
static qlab_status count_initial_pairs(trainer *t) {
    u32_list queued = {NULL, 0, 0};
    qlab_status st = QLAB_OK;
    for (size_t w = 0; w < t->n_words && st == QLAB_OK; w++)
        st = count_word_pairs(t, (uint32_t)w, +1, -1, 0, &queued);
    free(queued.data);
    for (size_t p = 0; p < t->n_pairs && st == QLAB_OK; p++)
        if (t->pairs[p].count > 0 && !heap_push(t, t->pairs[p].count, (int32_t)p)) st = OOM();
    return st;
}

/* The most frequent pair, skipping stale heap entries, or -1 when no pair is left. */
static qlab_status pop_best_pair(trainer *t, int32_t *best) {
    *best = -1;
    while (t->n_heap > 0) {
        heap_entry e = heap_pop(t);
        int64_t now = t->pairs[e.pair].count;
        if (now == e.count) {
            *best = e.pair;
            return QLAB_OK;
        }
        /* Stale: the count fell since this entry was pushed. */
        if (now > 0 && !heap_push(t, now, e.pair)) return OOM();
    }
    return QLAB_OK;
}

/* Makes n_merges new pieces, most frequent pair first; merged[m] is the symbol of piece m. */
static qlab_status run_merges(trainer *t, int n_merges, int vocab_size, int n_chars, uint32_t *merged) {
    for (int m = 0, step = 1; m < n_merges; step++) {
        int32_t best = -1;
        QLAB_TRY(pop_best_pair(t, &best));
        if (best < 0)
            return qlab_fail(QLAB_ERR_ARG,
                             "bpe: the text has only enough pairs for %d merges, vocab size %d needs %d (at "
                             "most %d for this text)",
                             m, vocab_size, n_merges, BPE_N_BASE + n_chars + m);
        int is_new = 0;
        QLAB_TRY(apply_merge(t, best, (uint32_t)step, &merged[m], &is_new));
        m += is_new;
    }
    return QLAB_OK;
}

/* Lays the vocabulary out as tok512.bin does: specials, the 256 bytes, the merges in order, then the
 * characters by falling count. */
static qlab_status lay_out_vocab(bpe_vocab *out, const trainer *t, const uint32_t *merged,
                                 const int64_t *char_counts, int vocab_size, int n_merges, int n_chars) {
    out->n_pieces = vocab_size;
    out->n_merges = n_merges;
    out->n_chars = n_chars;
    out->pieces = calloc((size_t)vocab_size, sizeof *out->pieces);
    out->lengths = calloc((size_t)vocab_size, sizeof *out->lengths);
    out->scores = calloc((size_t)vocab_size, sizeof *out->scores);
    uint32_t *char_order = malloc(((size_t)n_chars + 1) * sizeof *char_order);
    if (!out->pieces || !out->lengths || !out->scores || !char_order) {
        free(char_order);
        return OOM();
    }
    qlab_status st = QLAB_OK;
    static const char *const specials[BPE_N_SPECIAL] = {"<unk>", "\n<s>\n", "\n</s>\n"};
    for (int i = 0; i < BPE_N_SPECIAL && st == QLAB_OK; i++)
        st = set_piece(out, i, specials[i], (int)strlen(specials[i]), 0.0f);
    for (int b = 0; b < 256 && st == QLAB_OK; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        st = set_piece(out, BPE_N_SPECIAL + b, name, 6, 0.0f);
    }
    for (int m = 0; m < n_merges && st == QLAB_OK; m++) {
        const symbol *s = &t->symbols[merged[m]];
        st = set_piece(out, BPE_N_BASE + m, s->bytes, s->len, -(float)m);
    }
    for (int c = 0; c < n_chars; c++)
        char_order[c] = (uint32_t)c;
    sort_ctx = (char_order_ctx){t, char_counts};
    qsort(char_order, (size_t)n_chars, sizeof *char_order, by_count_then_bytes);
    for (int c = 0; c < n_chars && st == QLAB_OK; c++) {
        const symbol *s = &t->symbols[char_order[c]];
        st = set_piece(out, BPE_N_BASE + n_merges + c, s->bytes, s->len, -(float)(n_merges + c));
    }
    free(char_order);
    return st;
}

qlab_status bpe_train(const char *text, size_t len, int vocab_size, bpe_vocab *out) {
    memset(out, 0, sizeof *out);
    if (!text && len) return qlab_fail(QLAB_ERR_ARG, "bpe: no text");
    if (vocab_size <= 0 || vocab_size > (1 << 22))
        return qlab_fail(QLAB_ERR_ARG, "bpe: vocab size %d is out of range (259 .. %d)", vocab_size, 1 << 22);
    trainer t;
    memset(&t, 0, sizeof t);
    int64_t *char_counts = NULL;
    uint32_t *merged = NULL;
    qlab_status st = QLAB_OK;
    if (!key_map_init(&t.pair_index, 1 << 12) || !key_map_init(&t.symbol_index, 1 << 12)) {
        st = OOM();
        goto done;
    }
    int64_t loose_units = 0; /* newlines and invalid bytes: one token each, outside every word */
    st = collect_words(&t, text, len, &char_counts, &loose_units);
    if (st != QLAB_OK) goto done;
    int n_chars = (int)t.n_symbols;
    if (vocab_size < BPE_N_BASE + n_chars) {
        st = qlab_fail(QLAB_ERR_ARG,
                       "bpe: vocab size %d is below the base set: %d special and byte pieces + %d distinct "
                       "characters in the text = %d",
                       vocab_size, BPE_N_BASE, n_chars, BPE_N_BASE + n_chars);
        goto done;
    }
    int n_merges = vocab_size - BPE_N_BASE - n_chars;
    st = count_initial_pairs(&t);
    if (st != QLAB_OK) goto done;
    merged = malloc(((size_t)n_merges + 1) * sizeof *merged);
    if (!merged) {
        st = OOM();
        goto done;
    }
    st = run_merges(&t, n_merges, vocab_size, n_chars, merged);
    if (st != QLAB_OK) goto done;
    out->n_train_tokens = loose_units;
    for (size_t w = 0; w < t.n_words; w++)
        out->n_train_tokens += t.words[w].len * t.words[w].count;
    st = lay_out_vocab(out, &t, merged, char_counts, vocab_size, n_merges, n_chars);
done:
    free(merged);
    free(char_counts);
    trainer_free(&t);
    if (st != QLAB_OK) bpe_free(out);
    return st;
}

void bpe_free(bpe_vocab *v) {
    if (v->pieces)
        for (int i = 0; i < v->n_pieces; i++)
            free(v->pieces[i]);
    free(v->pieces);
    free(v->lengths);
    free(v->scores);
    memset(v, 0, sizeof *v);
}

qlab_status bpe_serialize(const bpe_vocab *v, char **data, size_t *len) {
    *data = NULL;
    *len = 0;
    size_t total = 4;
    for (int i = 0; i < v->n_pieces; i++)
        total += 8 + (size_t)v->lengths[i];
    char *buf = malloc(total);
    if (!buf) return OOM();
    size_t off = 0;
    int32_t max_len = v->max_token_length;
    memcpy(buf + off, &max_len, 4);
    off += 4;
    for (int i = 0; i < v->n_pieces; i++) {
        float score = v->scores[i];
        int32_t n = v->lengths[i];
        memcpy(buf + off, &score, 4);
        memcpy(buf + off + 4, &n, 4);
        memcpy(buf + off + 8, v->pieces[i], (size_t)n);
        off += 8 + (size_t)n;
    }
    *data = buf;
    *len = total;
    return QLAB_OK;
}

qlab_status bpe_save(const bpe_vocab *v, const char *path) {
    char *data;
    size_t len;
    QLAB_TRY(bpe_serialize(v, &data, &len));
    qlab_status st = qlab_write_file_atomic(path, data, len);
    free(data);
    return st;
}
