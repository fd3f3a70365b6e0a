/* Tests of core/tokenizer: llama2.c tokenizer.bin encoding against a direct port of run.c's quadratic
 * encode() (the independent reference), pinned Llama 2 ids, byte-exact round trips on real text including
 * byte fallback, tokenizer.json (SentencePiece-style converted from the .bin must give identical ids;
 * a hand-built byte-level one with hand-derived ids), the .bin writer, malformed files, and the
 * `qlab tokenize` / `qlab detokenize` commands ($QLAB_BUILD/bin/qlab, default build/bin/qlab). */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/check.h"
#include "core/base/common.h"
#include "core/formats/npy.h"
#include "core/text/tokenizer.h"

/* A per-process path under /tmp, so two runs of this test (two worktrees, make -j) never share files.
 * Each call site keeps its own buffer. */
#define TMP_PATH(buf, name)                                                                                  \
    (snprintf(buf, sizeof buf, "/tmp/qlab_test_tokenizer_%ld_%s", (long)getpid(), name), buf)

/* ------------------------------------------------------------------------------------------ helpers */

typedef struct {
    int n, max_len;
    char **pieces;
    float *scores;
} raw_vocab;

/* Reads a tokenizer.bin independently of the library (the test's own reader). */
static int raw_vocab_read(const char *path, raw_vocab *v) {
    char *data;
    size_t size;
    memset(v, 0, sizeof *v);
    if (qlab_read_file(path, &data, &size) != QLAB_OK) return 0;
    memcpy(&v->max_len, data, 4);
    size_t off = 4;
    int cap = 0;
    while (off + 8 <= size) {
        int len;
        if (v->n == cap) {
            cap = cap ? cap * 2 : 1024;
            v->pieces = realloc(v->pieces, (size_t)cap * sizeof *v->pieces);
            v->scores = realloc(v->scores, (size_t)cap * sizeof *v->scores);
        }
        memcpy(&v->scores[v->n], data + off, 4);
        memcpy(&len, data + off + 4, 4);
        v->pieces[v->n] = calloc((size_t)len + 1, 1);
        memcpy(v->pieces[v->n], data + off + 8, (size_t)len);
        v->n++;
        off += 8 + (size_t)len;
    }
    free(data);
    return 1;
}

static void raw_vocab_free(raw_vocab *v) {
    for (int i = 0; i < v->n; i++)
        free(v->pieces[i]);
    free(v->pieces);
    free(v->scores);
}

/* run.c's encode(), kept as close to the original as a port allows: sorted vocabulary + bsearch + strcmp,
 * and the O(n^2) "scan every pair, merge the best" loop. Slow, so only for a few kilobytes of text. */
typedef struct {
    const char *str;
    int id;
} sorted_piece;

static int compare_pieces(const void *a, const void *b) {
    return strcmp(((const sorted_piece *)a)->str, ((const sorted_piece *)b)->str);
}

static int str_lookup(const char *str, const sorted_piece *sorted, int n) {
    sorted_piece key = {str, 0};
    const sorted_piece *found = bsearch(&key, sorted, (size_t)n, sizeof key, compare_pieces);
    return found ? found->id : -1;
}

static int *reference_encode(const raw_vocab *v, const char *text, int bos, size_t *n_out) {
    sorted_piece *sorted = malloc((size_t)v->n * sizeof *sorted);
    for (int i = 0; i < v->n; i++)
        sorted[i] = (sorted_piece){v->pieces[i], i};
    qsort(sorted, (size_t)v->n, sizeof *sorted, compare_pieces);
    char *buf = malloc((size_t)v->max_len * 2 + 3);
    size_t str_len = 0;
    int *tokens = malloc((strlen(text) + 3) * sizeof *tokens);
    int n = 0;
    if (bos) tokens[n++] = 1;
    if (text[0] != '\0') tokens[n++] = str_lookup(" ", sorted, v->n);
    for (const char *c = text; *c != '\0'; c++) {
        if ((*c & 0xC0) != 0x80) str_len = 0;
        buf[str_len++] = *c;
        buf[str_len] = '\0';
        if ((*(c + 1) & 0xC0) == 0x80 && str_len < 4) continue;
        int id = str_lookup(buf, sorted, v->n);
        if (id != -1) {
            tokens[n++] = id;
        } else {
            for (size_t i = 0; i < str_len; i++)
                tokens[n++] = (unsigned char)buf[i] + 3;
        }
        str_len = 0;
    }
    for (;;) {
        float best_score = -1e10f;
        int best_id = -1, best_idx = -1;
        for (int i = 0; i < n - 1; i++) {
            if (strlen(v->pieces[tokens[i]]) + strlen(v->pieces[tokens[i + 1]]) > (size_t)v->max_len * 2)
                continue;
            sprintf(buf, "%s%s", v->pieces[tokens[i]], v->pieces[tokens[i + 1]]);
            int id = str_lookup(buf, sorted, v->n);
            if (id != -1 && v->scores[id] > best_score) {
                best_score = v->scores[id];
                best_id = id;
                best_idx = i;
            }
        }
        if (best_idx == -1) break;
        tokens[best_idx] = best_id;
        for (int i = best_idx + 1; i < n - 1; i++)
            tokens[i] = tokens[i + 1];
        n--;
    }
    free(buf);
    free(sorted);
    *n_out = (size_t)n;
    return tokens;
}

static int same_ids(const int *a, size_t na, const int *b, size_t nb, size_t *first_diff) {
    size_t i = 0;
    while (i < na && i < nb && a[i] == b[i])
        i++;
    *first_diff = i;
    return na == nb && i == na;
}

/* decode(encode(text, bos)) == text, byte for byte. */
static int round_trips(const tokenizer *t, const char *text, size_t len, size_t *n_ids) {
    int *ids;
    char *out;
    size_t n, out_len;
    if (tokenizer_encode(t, text, len, 1, &ids, &n) != QLAB_OK) return 0;
    qlab_status st = tokenizer_decode(t, ids, n, &out, &out_len);
    free(ids);
    if (st != QLAB_OK) return 0;
    int ok = out_len == len && !memcmp(out, text, len);
    if (!ok) {
        size_t i = 0;
        while (i < len && i < out_len && out[i] == text[i])
            i++;
        fprintf(stderr, "round trip differs at byte %zu of %zu (decoded %zu bytes)\n", i, len, out_len);
    }
    free(out);
    if (n_ids) *n_ids = n;
    return ok;
}

static char *read_prefix(const char *path, size_t max, size_t *len) {
    char *data;
    if (qlab_read_file(path, &data, len) != QLAB_OK) return NULL;
    if (*len > max) {
        /* cut at a line start so the excerpt is ordinary text */
        size_t cut = max;
        while (cut > 0 && data[cut - 1] != '\n')
            cut--;
        *len = cut ? cut : max;
        data[*len] = '\0';
    }
    return data;
}

static int write_bytes(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    int ok = fwrite(data, 1, len, f) == len;
    return (fclose(f) == 0) && ok;
}

/* Loading must fail with a message that contains `expect`. */
static void check_load_fails(const char *path, const char *expect) {
    tokenizer *t = (tokenizer *)1;
    qlab_status st = tokenizer_load(path, &t);
    CHECKF(st != QLAB_OK && t == NULL, "%s loaded although malformed (expected '%s')", path, expect);
    CHECKF(strstr(qlab_last_error(), expect) != NULL, "error for %s is '%s', expected to mention '%s'", path,
           qlab_last_error(), expect);
    CHECKF(strchr(qlab_last_error(), '\n') == NULL, "error message is not one line: '%s'", qlab_last_error());
}

/* Text that exercises byte fallback: emoji, Chinese, a raw 0xFF, control characters, a stray continuation
 * byte, a truncated UTF-8 sequence, NUL, tabs and runs of spaces. */
static const char tricky[] = "Hi 😀 emoji, 中文字符 and caf\xC3\xA9 \xFF raw\x01\x02\x7F ctl \x80\x80 stray "
                             "\xE4\xB8 cut\ttab   spaces\n\nend ";
static const size_t tricky_len = sizeof tricky - 1;
/* The same kinds of bytes, but valid UTF-8 (NUL included): run.c groups a character with the stray
 * continuation bytes after it ("a\x80" is looked up as one piece), which Hugging Face's pipeline, working
 * on valid Unicode strings, never sees. */
static const char tricky_utf8[] =
    "Hi 😀 emoji, 中文字符 and caf\xC3\xA9 \x01\x02\x7F ctl \x00 nul\ttab   spaces\n\nend ";
static const size_t tricky_utf8_len = sizeof tricky_utf8 - 1;

/* ------------------------------------------------------------------------------------------ tokenizer.bin */

static void test_bin_against_reference(const char *rel, const char *const *texts, int n_texts) {
    const char *path = shared_data_path(rel);
    if (!path) {
        SKIP("%s not found (shared data absent)", rel);
        return;
    }
    tokenizer *t;
    raw_vocab v;
    CHECKF(tokenizer_load(path, &t) == QLAB_OK, "%s", qlab_last_error());
    CHECK(raw_vocab_read(path, &v));
    if (!t || v.n == 0) return;
    CHECK(tokenizer_vocab_size(t) == v.n);
    CHECK(tokenizer_bos_id(t) == 1 && tokenizer_eos_id(t) == 2);
    CHECK(strcmp(tokenizer_piece(t, 3), "<0x00>") == 0);
    CHECK(tokenizer_piece(t, v.n) == NULL && tokenizer_piece(t, -1) == NULL);
    for (int k = 0; k < n_texts; k++) {
        for (int bos = 0; bos <= 1; bos++) {
            size_t n_ref, n;
            int *ref = reference_encode(&v, texts[k], bos, &n_ref), *ids = NULL;
            CHECK(tokenizer_encode(t, texts[k], strlen(texts[k]), bos, &ids, &n) == QLAB_OK);
            size_t diff;
            CHECKF(same_ids(ref, n_ref, ids, n, &diff),
                   "%s text %d bos %d: %zu vs %zu ids, first difference at %zu", rel, k, bos, n_ref, n, diff);
            free(ref);
            free(ids);
        }
    }
    tokenizer_free(t);
    raw_vocab_free(&v);
}

static void test_bin_reference_agreement(void) {
    /* Excerpts of real text, small enough for the quadratic reference (well under a second each). */
    static char excerpts[4][2001];
    const char *files[] = {"eval/tinystories_sample.txt", "eval/wiki.test.raw",
                           "eval/tinyshakespeare_input.txt", "eval/wiki.valid.raw"};
    const size_t offsets[] = {0, 100000, 500000, 0};
    const char *texts[12];
    int n = 0;
    for (int i = 0; i < 4; i++) {
        const char *p = shared_data_path(files[i]);
        char *data;
        size_t len;
        if (!p || qlab_read_file(p, &data, &len) != QLAB_OK) continue;
        size_t off = offsets[i] < len ? offsets[i] : 0, take = len - off < 2000 ? len - off : 2000;
        memcpy(excerpts[i], data + off, take);
        excerpts[i][take] = '\0';
        texts[n++] = excerpts[i];
        free(data);
    }
    /* run.c stops at NUL, so the reference sees the tricky text up to its first NUL byte (it has none). */
    texts[n++] = tricky;
    texts[n++] = "Hello world";
    texts[n++] = "   leading and trailing spaces   ";
    texts[n++] = "x";
    /* Equal scores compete here (the same piece at overlapping places, and Llama 2's space-run pieces,
     * which all score -1e9), so the leftmost-first rule decides the result. */
    texts[n++] = "aaaaaaa eeeeeee ooooooo lllllll sssssss ttttttt ....... ------- ======= 1111111 0000000";
    texts[n++] = "a          b \n\n\n\n   c                   d\t\t\t\t e";
    test_bin_against_reference("models/tok512.bin", texts, n);
    test_bin_against_reference("models/tokenizer.bin", texts, n);
}

static void test_llama2_pinned(void) {
    const char *path = shared_data_path("models/tokenizer.bin");
    if (!path) {
        SKIP("models/tokenizer.bin not found (shared data absent)");
        return;
    }
    tokenizer *t;
    CHECK(tokenizer_load(path, &t) == QLAB_OK);
    if (!t) return;
    CHECK(tokenizer_vocab_size(t) == 32000);
    int *ids;
    size_t n;
    /* Llama 2 / SentencePiece: "Hello" after the dummy prefix is "▁Hello" = 15043, "▁world" = 3186. */
    CHECK(tokenizer_encode(t, "Hello world", 11, 1, &ids, &n) == QLAB_OK);
    CHECKF(n == 3 && ids[0] == 1 && ids[1] == 15043 && ids[2] == 3186, "got %zu ids: %d %d %d", n,
           n > 0 ? ids[0] : -1, n > 1 ? ids[1] : -1, n > 2 ? ids[2] : -1);
    free(ids);
    CHECK(strcmp(tokenizer_piece(t, 15043), " Hello") == 0);
    /* Without BOS the dummy prefix space survives decoding (run.c strips it only after BOS). */
    int plain[] = {15043, 3186};
    char *text;
    size_t len;
    CHECK(tokenizer_decode(t, plain, 2, &text, &len) == QLAB_OK);
    CHECK(len == 12 && strcmp(text, " Hello world") == 0);
    free(text);
    /* "▁" (U+2581) in the text is a space, as SentencePiece encodes it (sentencepiece 0.2.3 on Llama 2's
     * model: "▁x ▁▁y" -> ▁ ▁x ▁▁ ▁y = 29871 921 259 343); run.c would spell it as byte pieces. */
    static const char meta[] = "\xE2\x96\x81x \xE2\x96\x81\xE2\x96\x81y";
    CHECK(tokenizer_encode(t, meta, strlen(meta), 1, &ids, &n) == QLAB_OK);
    CHECKF(n == 5 && ids[0] == 1 && ids[1] == 29871 && ids[2] == 921 && ids[3] == 259 && ids[4] == 343,
           "\"\\u2581x \\u2581\\u2581y\": %zu ids, first %d %d %d", n, n > 1 ? ids[1] : -1,
           n > 2 ? ids[2] : -1, n > 3 ? ids[3] : -1);
    free(ids);
    /* A newline is not a Llama 2 piece: byte fallback <0x0A> = 10 + 3. */
    CHECK(tokenizer_encode(t, "\n", 1, 0, &ids, &n) == QLAB_OK);
    CHECK(n == 2 && ids[0] == 29871 && ids[1] == 13);
    free(ids);
    /* Empty text: BOS only, or nothing (no dummy prefix). */
    CHECK(tokenizer_encode(t, "", 0, 1, &ids, &n) == QLAB_OK && n == 1 && ids[0] == 1);
    free(ids);
    CHECK(tokenizer_encode(t, "", 0, 0, &ids, &n) == QLAB_OK && n == 0 && ids != NULL);
    free(ids);
    int bad[] = {1, 32000};
    CHECK(tokenizer_decode(t, bad, 2, &text, &len) == QLAB_ERR_ARG);
    CHECK(strstr(qlab_last_error(), "32000") != NULL);
    tokenizer_free(t);
}

static void test_round_trips(const char *rel) {
    const char *path = shared_data_path(rel);
    if (!path) {
        SKIP("%s not found (shared data absent)", rel);
        return;
    }
    tokenizer *t;
    CHECK(tokenizer_load(path, &t) == QLAB_OK);
    if (!t) return;
    const char *files[] = {"eval/wiki.test.raw", "eval/tinyshakespeare_input.txt",
                           "eval/tinystories_sample.txt"};
    for (int i = 0; i < 3; i++) {
        const char *p = shared_data_path(files[i]);
        size_t len, n_ids = 0;
        char *data = p ? read_prefix(p, 200000, &len) : NULL;
        if (!data) {
            SKIP("%s not found", files[i]);
            continue;
        }
        CHECKF(round_trips(t, data, len, &n_ids), "%s on %s", rel, files[i]);
        CHECK(n_ids > 1 && n_ids < len);
        free(data);
    }
    CHECKF(round_trips(t, tricky, tricky_len, NULL), "%s on bytes outside the vocabulary", rel);
    /* The emoji is not a piece in either vocabulary, so it must come out as its four byte pieces. */
    int *ids;
    size_t n;
    CHECK(tokenizer_encode(t, "\xF0\x9F\x98\x80", 4, 0, &ids, &n) == QLAB_OK);
    CHECK(n == 5 && ids[1] == 0xF0 + 3 && ids[2] == 0x9F + 3 && ids[3] == 0x98 + 3 && ids[4] == 0x80 + 3);
    free(ids);
    char all_bytes[256];
    for (int b = 0; b < 256; b++)
        all_bytes[b] = (char)b;
    CHECKF(round_trips(t, all_bytes, 256, NULL), "%s on all 256 byte values", rel);
    tokenizer_free(t);
}

static void test_save_bin(void) {
    const char *path = shared_data_path("models/tok512.bin");
    if (!path) {
        SKIP("models/tok512.bin not found (shared data absent)");
        return;
    }
    raw_vocab v;
    CHECK(raw_vocab_read(path, &v));
    char out_buf[128];
    const char *out = TMP_PATH(out_buf, "saved.bin");
    CHECK(tokenizer_save_bin(out, v.n, (const char *const *)v.pieces, v.scores, v.max_len) == QLAB_OK);
    char *a, *b;
    size_t la, lb;
    CHECK(qlab_read_file(path, &a, &la) == QLAB_OK && qlab_read_file(out, &b, &lb) == QLAB_OK);
    CHECK(la == lb && !memcmp(a, b, la)); /* the writer reproduces the original byte for byte */
    free(a);
    free(b);
    CHECK(tokenizer_save_bin(out, v.n, (const char *const *)v.pieces, v.scores, 3) == QLAB_ERR_ARG);
    CHECK(tokenizer_save_bin(out, v.n, (const char *const *)v.pieces, v.scores, 0) == QLAB_OK); /* computed */
    tokenizer *t;
    CHECK(tokenizer_load(out, &t) == QLAB_OK);
    CHECK(t && tokenizer_vocab_size(t) == v.n);
    tokenizer_free(t);
    unlink(out);
    raw_vocab_free(&v);
}

static void test_bin_malformed(void) {
    char p_buf[128];
    const char *p = TMP_PATH(p_buf, "bad.bin");
    unsigned char buf[64];
    int32_t i32;
    float f = 0;
    /* header, then one good piece "ab" */
    size_t n = 0;
#define PUT(x) (memcpy(buf + n, &(x), 4), n += 4)
    i32 = 4, PUT(i32), PUT(f), i32 = 2, PUT(i32);
    buf[n++] = 'a', buf[n++] = 'b';
    size_t good = n;
    CHECK(write_bytes(p, buf, 2));
    check_load_fails(p, "too short");
    CHECK(write_bytes(p, buf, 4));
    check_load_fails(p, "no pieces");
    CHECK(write_bytes(p, buf, good - 1)); /* length says 2, one byte there */
    check_load_fails(p, "only 1 bytes remain");
    CHECK(write_bytes(p, buf, good + 3)); /* 3 stray bytes after the last piece */
    check_load_fails(p, "truncated at piece 1");
    i32 = -5, memcpy(buf + 8, &i32, 4);
    CHECK(write_bytes(p, buf, good));
    check_load_fails(p, "negative length -5");
    i32 = 1000, memcpy(buf + 8, &i32, 4);
    CHECK(write_bytes(p, buf, good));
    check_load_fails(p, "length 1000");
    i32 = 2, memcpy(buf + 8, &i32, 4);
    i32 = 1, memcpy(buf, &i32, 4); /* a 2-byte piece under max_token_length 1 */
    CHECK(write_bytes(p, buf, good));
    check_load_fails(p, "max_token_length 1");
    int32_t nonsense[] = {0, -7, 1 << 30};
    for (int k = 0; k < 3; k++) {
        memcpy(buf, &nonsense[k], 4);
        CHECK(write_bytes(p, buf, good));
        check_load_fails(p, "max_token_length is");
    }
    i32 = 4, memcpy(buf, &i32, 4);
    f = 0.0f / 0.0f, memcpy(buf + 4, &f, 4);
    CHECK(write_bytes(p, buf, good));
    check_load_fails(p, "NaN");
    CHECK(write_bytes(p, "", 0));
    check_load_fails(p, "too short");
    check_load_fails("/nonexistent/tok.bin", "/nonexistent/tok.bin");
    /* A valid tiny vocabulary without byte pieces: encoding a byte it cannot spell is an error, not a crash.
     */
    const char *pieces[] = {"<unk>", "<s>", "</s>", " ", "a"};
    float scores[] = {0, 0, 0, -1, -2};
    CHECK(tokenizer_save_bin(p, 5, pieces, scores, 0) == QLAB_OK);
    tokenizer *t;
    CHECK(tokenizer_load(p, &t) == QLAB_OK);
    int *ids;
    size_t n_ids;
    if (t) {
        CHECK(tokenizer_encode(t, "a", 1, 1, &ids, &n_ids) == QLAB_OK && n_ids == 3);
        free(ids);
        CHECK(tokenizer_encode(t, "b", 1, 1, &ids, &n_ids) == QLAB_ERR_FORMAT);
        tokenizer_free(t);
    }
    unlink(p);
#undef PUT
}

/* ------------------------------------------------------------------------------------------ tokenizer.json
 */

static char *sentencepiece_name(const char *piece) {
    /* " " -> "▁" */
    size_t len = strlen(piece), spaces = 0;
    for (size_t i = 0; i < len; i++)
        spaces += piece[i] == ' ';
    char *out = malloc(len + 2 * spaces + 1), *o = out;
    for (size_t i = 0; i < len; i++) {
        if (piece[i] == ' ')
            memcpy(o, "\xE2\x96\x81", 3), o += 3;
        else
            *o++ = piece[i];
    }
    *o = '\0';
    return out;
}

typedef struct {
    float score;
    int id;
} scored_id;

static int higher_score_first(const void *a, const void *b) {
    const scored_id *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    return x->id - y->id;
}

static int is_byte_piece(const char *p) {
    return strlen(p) == 6 && !strncmp(p, "<0x", 3) && p[5] == '>';
}

/* Converts a tokenizer.bin into the equivalent Hugging Face tokenizer.json: pieces with "▁" for spaces,
 * every split of every piece into two pieces as a merge, ranked by the merged piece's score. pre is the
 * pre_tokenizer JSON, or NULL for LLaMA's normalizer (Prepend "▁", Replace " " -> "▁"). */
static int write_sentencepiece_json(const raw_vocab *v, const char *out, int merges_as_arrays,
                                    const char *pre) {
    cJSON *root = cJSON_CreateObject(), *model = cJSON_CreateObject(), *vocab = cJSON_CreateObject();
    cJSON *merges = cJSON_CreateArray(), *added = cJSON_CreateArray();
    char **names = malloc((size_t)v->n * sizeof *names);
    sorted_piece *sorted = malloc((size_t)v->n * sizeof *sorted);
    const char *specials[] = {"<unk>", "<s>", "</s>"};
    for (int i = 0; i < v->n; i++) {
        names[i] = i < 3 ? strdup(specials[i]) : sentencepiece_name(v->pieces[i]);
        cJSON_AddNumberToObject(vocab, names[i], i);
        sorted[i] = (sorted_piece){names[i], i};
    }
    qsort(sorted, (size_t)v->n, sizeof *sorted, compare_pieces);
    scored_id *order = malloc((size_t)v->n * sizeof *order);
    int n_order = 0;
    for (int i = 3; i < v->n; i++)
        if (!is_byte_piece(names[i])) order[n_order++] = (scored_id){v->scores[i], i};
    qsort(order, (size_t)n_order, sizeof *order, higher_score_first);
    char left[256];
    for (int k = 0; k < n_order; k++) {
        const char *p = names[order[k].id];
        size_t len = strlen(p);
        for (size_t cut = 1; cut < len && len < sizeof left; cut++) {
            if (((unsigned char)p[cut] & 0xC0) == 0x80) continue; /* pieces split between characters only */
            memcpy(left, p, cut);
            left[cut] = '\0';
            if (str_lookup(left, sorted, v->n) < 3 || str_lookup(p + cut, sorted, v->n) < 3) continue;
            if (merges_as_arrays) {
                cJSON *pair = cJSON_CreateArray();
                cJSON_AddItemToArray(pair, cJSON_CreateString(left));
                cJSON_AddItemToArray(pair, cJSON_CreateString(p + cut));
                cJSON_AddItemToArray(merges, pair);
            } else {
                char joined[512];
                snprintf(joined, sizeof joined, "%s %s", left, p + cut);
                cJSON_AddItemToArray(merges, cJSON_CreateString(joined));
            }
        }
    }
    for (int i = 1; i < 3; i++) { /* <unk> stays a plain piece: WikiText spells "<unk>" in its text */
        cJSON *a = cJSON_CreateObject();
        cJSON_AddNumberToObject(a, "id", i);
        cJSON_AddStringToObject(a, "content", specials[i]);
        cJSON_AddBoolToObject(a, "special", 1);
        cJSON_AddItemToArray(added, a);
    }
    cJSON_AddStringToObject(root, "version", "1.0");
    cJSON_AddItemToObject(root, "added_tokens", added);
    if (pre) {
        cJSON_AddNullToObject(root, "normalizer");
        cJSON_AddItemToObject(root, "pre_tokenizer", cJSON_Parse(pre));
    } else {
        cJSON_AddItemToObject(
            root, "normalizer",
            cJSON_Parse("{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Prepend\",\"prepend\":"
                        "\"\xE2\x96\x81\"},{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},"
                        "\"content\":\"\xE2\x96\x81\"}]}"));
        cJSON_AddNullToObject(root, "pre_tokenizer");
    }
    cJSON_AddItemToObject(
        root, "post_processor",
        cJSON_Parse("{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<s>\","
                    "\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}]}"));
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddNullToObject(model, "dropout");
    cJSON_AddStringToObject(model, "unk_token", "<unk>");
    cJSON_AddNullToObject(model, "continuing_subword_prefix");
    cJSON_AddBoolToObject(model, "fuse_unk", 1);
    cJSON_AddBoolToObject(model, "byte_fallback", 1);
    cJSON_AddItemToObject(model, "vocab", vocab);
    cJSON_AddItemToObject(model, "merges", merges);
    cJSON_AddItemToObject(root, "model", model);
    char *text = cJSON_PrintUnformatted(root);
    int ok = text && write_bytes(out, text, strlen(text));
    free(text);
    cJSON_Delete(root);
    for (int i = 0; i < v->n; i++)
        free(names[i]);
    free(names);
    free(sorted);
    free(order);
    return ok;
}

static void compare_encoders(const tokenizer *a, const tokenizer *b, const char *what, const char *text,
                             size_t len, int bos) {
    int *ia, *ib;
    size_t na, nb, diff;
    CHECK(tokenizer_encode(a, text, len, bos, &ia, &na) == QLAB_OK);
    CHECK(tokenizer_encode(b, text, len, bos, &ib, &nb) == QLAB_OK);
    CHECKF(same_ids(ia, na, ib, nb, &diff), "%s: %zu vs %zu ids, first difference at %zu (%d vs %d)", what,
           na, nb, diff, diff < na ? ia[diff] : -1, diff < nb ? ib[diff] : -1);
    free(ia);
    free(ib);
}

static void test_json_sentencepiece(const char *rel, int merges_as_arrays, size_t excerpt) {
    const char *path = shared_data_path(rel);
    if (!path) {
        SKIP("%s not found (shared data absent)", rel);
        return;
    }
    raw_vocab v;
    CHECK(raw_vocab_read(path, &v));
    char json_buf[128];
    const char *json = TMP_PATH(json_buf, "sp.json");
    CHECK(write_sentencepiece_json(&v, json, merges_as_arrays, NULL));
    tokenizer *bin, *hf;
    CHECK(tokenizer_load(path, &bin) == QLAB_OK);
    CHECKF(tokenizer_load(json, &hf) == QLAB_OK, "%s", qlab_last_error());
    if (!bin || !hf) return;
    CHECK(tokenizer_vocab_size(hf) == v.n);
    CHECK(tokenizer_bos_id(hf) == 1 && tokenizer_eos_id(hf) == 2);
    const char *files[] = {"eval/tinyshakespeare_input.txt", "eval/wiki.test.raw",
                           "eval/tinystories_sample.txt"};
    for (int i = 0; i < 3; i++) {
        const char *p = shared_data_path(files[i]);
        size_t len;
        char *data = p ? read_prefix(p, excerpt, &len) : NULL;
        if (!data) continue;
        char what[256];
        snprintf(what, sizeof what, "%s as tokenizer.json vs .bin on %s", rel, files[i]);
        compare_encoders(bin, hf, what, data, len, 1);
        CHECKF(round_trips(hf, data, len, NULL), "%s", what);
        free(data);
    }
    compare_encoders(bin, hf, "tricky bytes", tricky_utf8, tricky_utf8_len, 1);
    compare_encoders(bin, hf, "tricky bytes, no BOS", tricky_utf8, tricky_utf8_len, 0);
    CHECK(round_trips(bin, tricky_utf8, tricky_utf8_len, NULL));
    CHECK(round_trips(hf, tricky, tricky_len, NULL));
    compare_encoders(bin, hf, "empty", "", 0, 1);
    const char *ties[] = {
        "aaaaaaa eeeeeee ooooooo lllllll sssssss ttttttt ....... ------- ======= 1111111 0000000",
        "a          b \n\n\n\n   c                   d\t\t\t\t e"};
    for (int k = 0; k < 2; k++)
        compare_encoders(bin, hf, ties[k], ties[k], strlen(ties[k]), 1);
    tokenizer_free(hf);

    /* The newer LLaMA layout: no normalizer, a Metaspace pre-tokenizer ("first": prepend at the start only).
     * Same ids as long as the text does not start with a space (Metaspace then adds no "▁", run.c does).
     * With split=true the words are cut before every "▁"; tok512 has no piece with an inner space, so the
     * ids are still the same there. */
    const char *metaspace[] = {"{\"type\":\"Metaspace\",\"replacement\":\"\xE2\x96\x81\",\"prepend_scheme\":"
                               "\"first\",\"split\":false}",
                               "{\"type\":\"Metaspace\",\"replacement\":\"\xE2\x96\x81\",\"prepend_scheme\":"
                               "\"always\",\"split\":true}"};
    const char *story = shared_data_path("eval/tinystories_sample.txt");
    size_t len;
    char *data = story ? read_prefix(story, 4000, &len) : NULL;
    for (int k = 0; k < 2 && data; k++) {
        if (k == 1 && strcmp(rel, "models/tok512.bin")) break;
        CHECK(write_sentencepiece_json(&v, json, merges_as_arrays, metaspace[k]));
        CHECKF(tokenizer_load(json, &hf) == QLAB_OK, "%s", qlab_last_error());
        if (!hf) continue;
        compare_encoders(bin, hf, metaspace[k], data, len, 1);
        CHECK(round_trips(hf, data, len, NULL));
        int *ids;
        size_t n;
        CHECK(tokenizer_encode(hf, " x", 2, 0, &ids, &n) == QLAB_OK); /* one "▁", not two */
        int *ref;
        size_t n_ref;
        CHECK(tokenizer_encode(bin, "x", 1, 0, &ref, &n_ref) == QLAB_OK);
        CHECK(n == n_ref && !memcmp(ids, ref, n * sizeof *ids));
        free(ids);
        free(ref);
        tokenizer_free(hf);
    }
    free(data);
    tokenizer_free(bin);
    raw_vocab_free(&v);
    unlink(json);
}

/* A hand-built GPT-2-style byte-level tokenizer: id b is the character of byte b, then nine merges. */
static char *byte_level_json(const char *pre_tokenizer) {
    cJSON *root = cJSON_CreateObject(), *model = cJSON_CreateObject(), *vocab = cJSON_CreateObject();
    int next = 256;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        int cp = printable ? b : next++;
        char s[4] = {0};
        if (cp < 0x80)
            s[0] = (char)cp;
        else
            s[0] = (char)(0xC0 | (cp >> 6)), s[1] = (char)(0x80 | (cp & 0x3F));
        cJSON_AddNumberToObject(vocab, s, b);
    }
    /* Ġ is U+0120, the character of byte 0x20 */
    const char *merged[] = {"\xC4\xA0t",
                            "he",
                            "\xC4\xA0the",
                            "ll",
                            "llo",
                            "He",
                            "Hello",
                            "'s",
                            "\xC4\xA0\xC4\xA0",
                            "\xC4\xA0"
                            "1"};
    const char *merges[] = {"\xC4\xA0 t", "h e", "\xC4\xA0t he",      "l l",       "ll o", "H e",
                            "He llo",     "' s", "\xC4\xA0 \xC4\xA0", "\xC4\xA0 1"};
    for (int i = 0; i < 10; i++)
        cJSON_AddNumberToObject(vocab, merged[i], 256 + i);
    cJSON *list = cJSON_CreateArray();
    for (int i = 0; i < 10; i++)
        cJSON_AddItemToArray(list, cJSON_CreateString(merges[i]));
    cJSON *added = cJSON_Parse("[{\"id\":266,\"content\":\"<|endoftext|>\",\"special\":true}]");
    cJSON_AddItemToObject(root, "added_tokens", added);
    cJSON_AddNullToObject(root, "normalizer");
    cJSON_AddItemToObject(root, "pre_tokenizer", cJSON_Parse(pre_tokenizer));
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddItemToObject(model, "vocab", vocab);
    cJSON_AddItemToObject(model, "merges", list);
    cJSON_AddItemToObject(root, "model", model);
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return text;
}

static void check_ids(const tokenizer *t, const char *text, size_t len, int bos, const int *expect,
                      size_t n_expect) {
    int *ids;
    size_t n;
    CHECK(tokenizer_encode(t, text, len, bos, &ids, &n) == QLAB_OK);
    int same = n == n_expect && !memcmp(ids, expect, n * sizeof *ids);
    CHECKF(same, "encoding \"%s\" gave %zu ids, expected %zu", text, n, n_expect);
    if (!same)
        for (size_t i = 0; i < n; i++)
            fprintf(stderr, "  id[%zu] = %d (%s)\n", i, ids[i], tokenizer_piece(t, ids[i]));
    free(ids);
}

static void test_json_byte_level(void) {
    char path_buf[128];
    const char *path = TMP_PATH(path_buf, "bl.json");
    char *json = byte_level_json("{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,"
                                 "\"use_regex\":true}");
    CHECK(write_bytes(path, json, strlen(json)));
    free(json);
    tokenizer *t;
    CHECKF(tokenizer_load(path, &t) == QLAB_OK, "%s", qlab_last_error());
    if (!t) return;
    CHECK(tokenizer_vocab_size(t) == 267);
    CHECK(tokenizer_bos_id(t) == 266 && tokenizer_eos_id(t) == 266);
    /* The GPT-2 regex splits "Hello the world's  the 123\n<|endoftext|>x  " into
     * "Hello" " the" " world" "'s" " " " the" " 123" "\n" | added token | "x" "  " (a whitespace run keeps
     * its last space for the next word unless it ends the text). Merges by rank inside each word: Hello: l l
     * (3) -> ll o (4) -> H e (5) -> He llo (6) = 262;  Ġthe: Ġ t (0), h e (1), Ġt he (2) = 258; Ġworld: no
     * merge, bytes 32 119 111 114 108 100;  's = 263;  Ġ = 32;  Ġ123: Ġ 1 (9) = 265, 50, 51; Ċ = 10;
     * <|endoftext|> = 266;  x = 120;  ĠĠ = 264. */
    const char text[] = "Hello the world's  the 123\n<|endoftext|>x  ";
    const int expect[] = {262, 258, 32,  119, 111, 114, 108, 100, 263,
                          32,  258, 265, 50,  51,  10,  266, 120, 264};
    check_ids(t, text, sizeof text - 1, 0, expect, sizeof expect / sizeof expect[0]);
    const int with_bos[] = {266, 262};
    check_ids(t, "Hello", 5, 1, with_bos, 2);
    /* Contractions bind only as 's 't 're 've 'm 'll 'd; other punctuation runs stay together. */
    const int quote[] = {39, 120, 263, 33, 39, 115}; /* "'x" -> ' x ; "'s" ; "!'s" -> !' s */
    check_ids(t, "'x's!'s", 7, 0, quote, 6);
    /* Every byte has a character, so any bytes (invalid UTF-8 included) round-trip. */
    char all_bytes[256];
    for (int b = 0; b < 256; b++)
        all_bytes[b] = (char)b;
    CHECK(round_trips(t, all_bytes, 256, NULL));
    CHECK(round_trips(t, tricky, tricky_len, NULL));
    const char *story = shared_data_path("eval/tinystories_sample.txt");
    size_t len;
    char *data = story ? read_prefix(story, 4000, &len) : NULL;
    if (data) CHECK(round_trips(t, data, len, NULL));
    free(data);
    int ids[] = {262, 266, 258};
    char *out;
    CHECK(tokenizer_decode(t, ids, 3, &out, &len) == QLAB_OK);
    CHECK(len == 22 && !strcmp(out, "Hello<|endoftext|> the")); /* special tokens in text come back */
    free(out);
    int with_bos_ids[] = {266, 262, 266};
    CHECK(tokenizer_decode(t, with_bos_ids, 3, &out, &len) == QLAB_OK);
    CHECK(len == 18 && !strcmp(out, "Hello<|endoftext|>")); /* only the leading BOS is dropped */
    free(out);
    tokenizer_free(t);

    /* SmolLM's pre-tokenizer: digits split off one by one before the byte-level regex, so " 1" never forms.
     */
    json = byte_level_json(
        "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Digits\",\"individual_digits\":true},"
        "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":true}]}");
    CHECK(write_bytes(path, json, strlen(json)));
    free(json);
    CHECKF(tokenizer_load(path, &t) == QLAB_OK, "%s", qlab_last_error());
    if (t) {
        const int digits[] = {97, 98, 32, 49, 50, 51};
        check_ids(t, "ab 123", 6, 0, digits, 6);
        tokenizer_free(t);
    }
    /* add_prefix_space: a space goes in front, so "the" encodes as "Ġthe". */
    json = byte_level_json("{\"type\":\"ByteLevel\",\"add_prefix_space\":true,\"use_regex\":true}");
    CHECK(write_bytes(path, json, strlen(json)));
    free(json);
    CHECKF(tokenizer_load(path, &t) == QLAB_OK, "%s", qlab_last_error());
    if (t) {
        const int the[] = {258};
        check_ids(t, "the", 3, 0, the, 1);
        tokenizer_free(t);
    }
    unlink(path);
}

static void test_json_malformed(void) {
    char p_buf[128];
    const char *p = TMP_PATH(p_buf, "bad.json");
    struct {
        const char *json, *expect;
    } cases[] = {
        {"{\"model\": ", "not valid JSON"},
        {"{}", "missing key 'model'"},
        {"[1, 2]", "top level"},
        {"{\"model\": 3}", "'model' must be an object"},
        {"{\"model\": {\"vocab\": {}, \"merges\": []}}", "model.type"},
        {"{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}", "only BPE"},
        {"{\"model\": {\"type\": \"BPE\", \"merges\": []}}", "model.vocab"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": [], \"merges\": []}}",
         "'model.vocab' must be an object"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}}}", "model.merges"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": {}}}",
         "'model.merges' must be an array"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -1}, \"merges\": []}}", "model.vocab[\"a\"]"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 1.5}, \"merges\": []}}", "integer id"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": \"0\"}, \"merges\": []}}", "integer id"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 0}, \"merges\": []}}", "both"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []}}", "empty"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a b\"]}}",
         "model.merges[0]: \"ab\" is not in model.vocab"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"ab\": 1}, \"merges\": [\"a c\"]}}",
         "model.merges[0]: \"c\""},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"aa\": 1}, \"merges\": [\"aa\"]}}",
         "one space"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"aa\": 1}, \"merges\": [[\"a\"]]}}",
         "two strings"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"aa\": 1}, \"merges\": [7]}}",
         "model.merges[0]"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [], \"byte_fallback\": 1}}",
         "model.byte_fallback"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [], \"unk_token\": \"<unk>\"}}",
         "model.unk_token"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [], \"dropout\": 0.1}}",
         "dropout"},
        {"{\"added_tokens\": {}, \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}",
         "'added_tokens' must be an array"},
        {"{\"added_tokens\": [{\"content\": \"<s>\"}], \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, "
         "\"merges\": []}}",
         "added_tokens[0].id"},
        {"{\"added_tokens\": [{\"id\": 1, \"content\": 5}], \"model\": {\"type\": \"BPE\", \"vocab\": "
         "{\"a\": 0}, "
         "\"merges\": []}}",
         "added_tokens[0].content"},
        {"{\"pre_tokenizer\": {\"type\": \"Split\"}, \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, "
         "\"merges\": []}}",
         "pre_tokenizer.type"},
        {"{\"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Whitespace\"}]}, "
         "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}",
         "pre_tokenizer.pretokenizers[0].type"},
        {"{\"pre_tokenizer\": {\"type\": \"Metaspace\", \"replacement\": \"ab\"}, \"model\": {\"type\": "
         "\"BPE\", "
         "\"vocab\": {\"a\": 0}, \"merges\": []}}",
         "replacement"},
        {"{\"normalizer\": {\"type\": \"NFKC\"}, \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, "
         "\"merges\": []}}",
         "normalizer.type"},
        {"{\"normalizer\": {\"type\": \"Replace\", \"pattern\": {\"Regex\": \" +\"}, \"content\": \"x\"}, "
         "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}",
         "Regex"},
        {"{\"normalizer\": {\"type\": \"Prepend\"}, \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, "
         "\"merges\": []}}",
         "normalizer.prepend"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        CHECK(write_bytes(p, cases[i].json, strlen(cases[i].json)));
        check_load_fails(p, cases[i].expect);
        CHECKF(strstr(qlab_last_error(), p) != NULL, "error does not name the file: %s", qlab_last_error());
    }
    /* A valid minimal file: no byte fallback, no unk, so an unknown character is dropped, as Hugging
     * Face's BPE does (tokenizers 0.23: "abc" and "acb" give [2], "c" gives []). */
    const char *ok =
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": "
        "[[\"a\", \"b\"]]}}";
    CHECK(write_bytes(p, ok, strlen(ok)));
    tokenizer *t;
    CHECKF(tokenizer_load(p, &t) == QLAB_OK, "%s", qlab_last_error());
    if (t) {
        const int ab[] = {2, 0};
        check_ids(t, "aba", 3, 0, ab, 2);
        int *ids;
        size_t n;
        const int merged[] = {2};
        check_ids(t, "abc", 3, 0, merged, 1);
        check_ids(t, "acb", 3, 0, merged, 1); /* the dropped "c" leaves "a" and "b" next to each other */
        CHECK(tokenizer_encode(t, "c", 1, 0, &ids, &n) == QLAB_OK && n == 0);
        free(ids);
        CHECK(tokenizer_bos_id(t) == -1);
        CHECK(tokenizer_encode(t, "ab", 2, 1, &ids, &n) == QLAB_ERR_ARG); /* no BOS to add */
        tokenizer_free(t);
    }
    unlink(p);
}

/* ------------------------------------------------------------------------------------------ CLI */

static char err_text[4096];

/* Runs argv (NULL-terminated) with stdout discarded and stderr captured; returns the exit code. */
static int run_command(char *const argv[]) {
    char err_path_buf[128];
    const char *err_path = TMP_PATH(err_path_buf, "cli.err");
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen("/dev/null", "w", stdout) || !freopen(err_path, "w", stderr)) _exit(126);
        execv(argv[0], argv);
        _exit(127);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) < 0) return -1;
    FILE *f = fopen(err_path, "r");
    size_t n = f ? fread(err_text, 1, sizeof err_text - 1, f) : 0;
    err_text[n] = '\0';
    if (f) fclose(f);
    unlink(err_path);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static int one_line(const char *s) {
    const char *nl = strchr(s, '\n');
    return s[0] && nl && nl[1] == '\0';
}

static void test_cli(void) {
    const char *tok = shared_data_path("models/tok512.bin"),
               *story = shared_data_path("eval/tinystories_sample.txt");
    char qlab[1024];
    const char *build = getenv("QLAB_BUILD");
    snprintf(qlab, sizeof qlab, "%s/bin/qlab", build ? build : "build");
    if (access(qlab, X_OK) != 0) {
        SKIP("%s not found (build it with make, or set QLAB_BUILD)", qlab);
        return;
    }
    if (!tok || !story) {
        SKIP("tok512.bin / tinystories_sample.txt not found (shared data absent)");
        return;
    }
    char *help[] = {qlab, "tokenize", "--help", NULL};
    if (run_command(help) != 0) {
        SKIP("%s has no tokenize command (a stale build? set QLAB_BUILD)", qlab);
        return;
    }
    char npy_buf[128], txt_buf[128];
    char *t_ = (char *)tok, *in = (char *)story, *npy = TMP_PATH(npy_buf, "cli.npy"),
         *txt = TMP_PATH(txt_buf, "cli.txt");
    char *encode[] = {qlab, "tokenize", "--tokenizer", t_, "--bos", in, npy, NULL};
    CHECKF(run_command(encode) == 0, "qlab tokenize failed: %s", err_text);
    /* The file holds exactly the library's ids, as int32. */
    npy_array arr;
    tokenizer *t;
    char *text, *back;
    size_t len, back_len, n;
    int *ids;
    CHECK(npy_read(npy, &arr) == QLAB_OK);
    CHECK(tokenizer_load(tok, &t) == QLAB_OK);
    CHECK(qlab_read_file(story, &text, &len) == QLAB_OK);
    CHECK(tokenizer_encode(t, text, len, 1, &ids, &n) == QLAB_OK);
    CHECK(!strcmp(arr.dtype, "<i4") && arr.ndim == 1 && arr.count == (int64_t)n);
    CHECK(arr.count == (int64_t)n && !memcmp(arr.data, ids, n * sizeof *ids)); /* int is int32 here */
    npy_free(&arr);
    free(ids);
    tokenizer_free(t);
    char *decode[] = {qlab, "detokenize", "--tokenizer", t_, npy, txt, NULL};
    CHECKF(run_command(decode) == 0, "qlab detokenize failed: %s", err_text);
    CHECK(qlab_read_file(txt, &back, &back_len) == QLAB_OK);
    CHECK(back_len == len && !memcmp(back, text, len));
    free(back);
    free(text);
    /* Usage errors exit 2, bad data 1, each with one line on stderr. */
    char *no_files[] = {qlab, "tokenize", "--tokenizer", t_, NULL};
    CHECK(run_command(no_files) == 2 && one_line(err_text));
    char *bad_flag[] = {qlab, "detokenize", "--frobnicate", NULL};
    CHECK(run_command(bad_flag) == 2 && one_line(err_text) && strstr(err_text, "--frobnicate"));
    char *missing_tok[] = {qlab, "tokenize", "--tokenizer", "/nonexistent/tok.bin", in, npy, NULL};
    CHECK(run_command(missing_tok) == 1 && one_line(err_text) && strstr(err_text, "/nonexistent/tok.bin"));
    char *not_npy[] = {qlab, "detokenize", "--tokenizer", t_, in, txt, NULL};
    CHECK(run_command(not_npy) == 1 && one_line(err_text) && strstr(err_text, in));
    int32_t out_of_range[] = {1, 600};
    int64_t shape[1] = {2};
    CHECK(npy_write(npy, "<i4", 1, shape, out_of_range) == QLAB_OK);
    CHECK(run_command(decode) == 1 && one_line(err_text) && strstr(err_text, "600"));
    unlink(npy);
    unlink(txt);
}

int main(void) {
    test_llama2_pinned();
    test_bin_reference_agreement();
    test_round_trips("models/tok512.bin");
    test_round_trips("models/tokenizer.bin");
    test_save_bin();
    test_bin_malformed();
    test_json_sentencepiece("models/tok512.bin", 0, 400000);
    test_json_sentencepiece("models/tokenizer.bin", 1, 200000);
    test_json_byte_level();
    test_json_malformed();
    test_cli();
    return check_summary();
}
