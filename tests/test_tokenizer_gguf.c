/* The tokenizer embedded in GGUF files (core/text/tokenizer_gguf.c): hand-made files for the rules and
 * every refusal, stories260K.gguf's "llama" vocabulary against the tok512.bin it was made from, and
 * SmolLM2-135M's "gpt2"/"smollm" vocabulary against the Hugging Face tokenizers library.
 *
 * SmolLM2 golden ids were produced once with /work/pyenv (tokenizers 0.23, gguf-py 0.x): a
 * tokenizers.Tokenizer built from the GGUF's own tokens and merges (models.BPE; pre_tokenizer
 * Sequence([Digits(individual_digits=True), ByteLevel(add_prefix_space=False, use_regex=True)]); the 17
 * control tokens, token_type 3, added as special tokens), tk.encode(text).ids. The same comparison over
 * the whole of wiki.test.raw (303,415 ids) and tinyshakespeare_input.txt (341,094 ids) was identical. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tests/check.h"
#include "core/base/sha256.h"
#include "core/text/tokenizer.h"
#include "tests/test_util.h"

/* ---- a minimal GGUF writer (metadata only) ---- */
typedef struct {
    unsigned char *b;
    size_t n, cap;
    uint64_t n_kv;
} gbuf;

static void put(gbuf *g, const void *p, size_t n) {
    if (g->n + n > g->cap) {
        g->cap = (g->n + n) * 2;
        g->b = realloc(g->b, g->cap);
        if (!g->b) exit(2);
    }
    memcpy(g->b + g->n, p, n);
    g->n += n;
}
static void put_u32(gbuf *g, uint32_t v) {
    put(g, &v, 4);
}
static void put_u64(gbuf *g, uint64_t v) {
    put(g, &v, 8);
}
static void put_s(gbuf *g, const char *s) {
    put_u64(g, strlen(s));
    put(g, s, strlen(s));
}
static void kv_str(gbuf *g, const char *k, const char *v) {
    put_s(g, k), put_u32(g, 8), put_s(g, v), g->n_kv++;
}
static void kv_u32(gbuf *g, const char *k, uint32_t v) {
    put_s(g, k), put_u32(g, 4), put_u32(g, v), g->n_kv++;
}
static void kv_bool(gbuf *g, const char *k, int v) {
    unsigned char c = (unsigned char)v;
    put_s(g, k), put_u32(g, 7), put(g, &c, 1), g->n_kv++;
}
static void kv_strs(gbuf *g, const char *k, const char *const *v, int n) {
    put_s(g, k), put_u32(g, 9), put_u32(g, 8), put_u64(g, (uint64_t)n);
    for (int i = 0; i < n; i++)
        put_s(g, v[i]);
    g->n_kv++;
}
static void kv_i32s(gbuf *g, const char *k, const int32_t *v, int n) {
    put_s(g, k), put_u32(g, 9), put_u32(g, 5), put_u64(g, (uint64_t)n), put(g, v, 4 * (size_t)n), g->n_kv++;
}

/* Writes the file: header (v3, no tensors) + the pairs collected in body. */
static void save(const char *path, gbuf *body) {
    gbuf f = {0};
    put(&f, "GGUF", 4);
    put_u32(&f, 3);
    put_u64(&f, 0);
    put_u64(&f, body->n_kv);
    put(&f, body->b, body->n);
    write_bytes(path, f.b, f.n);
    free(f.b);
    free(body->b);
    memset(body, 0, sizeof *body);
}

static const char *const toks[] = {"a",
                                   "b",
                                   "ab",
                                   "\xC4\xA0",
                                   "\xC4\xA0"
                                   "ab",
                                   "<|x|>"};
static const int32_t types[] = {1, 1, 1, 1, 1, 3};
static const char *const merges[] = {"a b", "\xC4\xA0 ab"};

/* A tiny byte-level vocabulary; what = which key to spoil (0: none). */
static void tiny(gbuf *g, int what) {
    kv_str(g, "general.architecture", "llama");
    if (what != 1) kv_str(g, "tokenizer.ggml.model", what == 2 ? "bert" : "gpt2");
    kv_str(g, "tokenizer.ggml.pre", what == 3 ? "llama-bpe" : "smollm");
    kv_strs(g, "tokenizer.ggml.tokens", toks, 6);
    kv_i32s(g, "tokenizer.ggml.token_type", types, what == 4 ? 5 : 6);
    if (what != 5) kv_strs(g, "tokenizer.ggml.merges", merges, 2);
    kv_u32(g, "tokenizer.ggml.bos_token_id", what == 6 ? 99 : 5);
    kv_u32(g, "tokenizer.ggml.eos_token_id", 5);
    kv_bool(g, "tokenizer.ggml.add_bos_token", 0);
}

static void test_tiny(void) {
    gbuf g = {0};
    const char *p = tmp_path("tiny.gguf");
    tiny(&g, 0);
    save(p, &g);
    tokenizer *t = NULL;
    qlab_status st = tokenizer_load(p, &t);
    CHECKF(st == QLAB_OK, "%s", qlab_last_error());
    if (st != QLAB_OK) return;
    CHECK(tokenizer_vocab_size(t) == 6 && tokenizer_bos_id(t) == 5 && tokenizer_eos_id(t) == 5);
    CHECK(tokenizer_add_bos(t) == 0);
    int *ids = NULL;
    size_t n = 0;
    /* " ab" -> Ġ a b -> Ġ ab -> Ġab; the control token is matched in the text; "ab" -> ab */
    CHECK(tokenizer_encode(t, " ab<|x|>ab", 10, 0, &ids, &n) == QLAB_OK);
    CHECK(n == 3 && ids[0] == 4 && ids[1] == 5 && ids[2] == 2);
    char *text = NULL;
    size_t len = 0;
    CHECK(tokenizer_decode(t, ids, n, &text, &len) == QLAB_OK && len == 10 &&
          !memcmp(text, " ab<|x|>ab", 10));
    free(text);
    free(ids);
    tokenizer_free(t);

    /* refusals: one line naming the file and the key */
    static const struct {
        int what;
        qlab_status st;
        const char *word;
    } bad[] = {
        {1, QLAB_ERR_FORMAT, "tokenizer.ggml.model is missing"},
        {2, QLAB_ERR_UNSUPPORTED, "\"bert\""},
        {3, QLAB_ERR_UNSUPPORTED, "tokenizer.ggml.pre is \"llama-bpe\""},
        {4, QLAB_ERR_FORMAT, "token_type has 5 entries"},
        {5, QLAB_ERR_FORMAT, "tokenizer.ggml.merges is missing"},
        {6, QLAB_ERR_FORMAT, "bos_token_id = 99"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tiny(&g, bad[i].what);
        save(p, &g);
        t = NULL;
        st = tokenizer_load(p, &t);
        CHECKF(st == bad[i].st && t == NULL, "case %d: status %d", bad[i].what, (int)st);
        CHECKF(strstr(qlab_last_error(), bad[i].word) && strstr(qlab_last_error(), p), "case %d: %s",
               bad[i].what, qlab_last_error());
        tokenizer_free(t);
    }
    /* truncated inside the token list */
    tiny(&g, 0);
    gbuf f = {0};
    put(&f, "GGUF", 4);
    put_u32(&f, 3);
    put_u64(&f, 0);
    put_u64(&f, g.n_kv);
    put(&f, g.b, g.n / 2);
    write_bytes(p, f.b, f.n);
    free(f.b);
    free(g.b);
    t = NULL;
    CHECK(tokenizer_load(p, &t) == QLAB_ERR_FORMAT && t == NULL);
    CHECKF(strstr(qlab_last_error(), "truncated") || strstr(qlab_last_error(), "beyond the end"), "%s",
           qlab_last_error());
}

static int *encode_file(tokenizer *t, const char *path, size_t max, size_t *n) {
    char *text = NULL;
    size_t len = 0;
    int *ids = NULL;
    *n = 0;
    if (qlab_read_file(path, &text, &len) != QLAB_OK) return NULL;
    if (len > max) len = max;
    if (tokenizer_encode(t, text, len, 0, &ids, n) != QLAB_OK) ids = NULL;
    free(text);
    return ids;
}

static void test_stories260k(void) {
    const char *gguf = shared_data_path("models/stories260K.gguf"),
               *bin = shared_data_path("models/tok512.bin");
    const char *txt = shared_data_path("eval/tinystories_sample.txt"),
               *wiki = shared_data_path("eval/wiki.test.raw");
    if (!gguf || !bin || !txt || !wiki) {
        SKIP("../shared/data stories260K.gguf / tok512.bin / eval texts absent: llama-vocabulary GGUF test "
             "not run");
        return;
    }
    tokenizer *a = NULL, *b = NULL;
    CHECKF(tokenizer_load(gguf, &a) == QLAB_OK, "%s", qlab_last_error());
    CHECKF(tokenizer_load(bin, &b) == QLAB_OK, "%s", qlab_last_error());
    if (!a || !b) goto out;
    CHECK(tokenizer_vocab_size(a) == 512 && tokenizer_bos_id(a) == 1 && tokenizer_eos_id(a) == 2 &&
          tokenizer_add_bos(a) == 1);
    const char *files[] = {txt, wiki};
    for (int f = 0; f < 2; f++) {
        size_t na, nb;
        int *ia = encode_file(a, files[f], 200000, &na), *ib = encode_file(b, files[f], 200000, &nb);
        CHECKF(ia && ib && na == nb && na > 0 && !memcmp(ia, ib, na * sizeof(int)),
               "%s: the GGUF's vocabulary gives %zu ids, tok512.bin %zu", files[f], na, nb);
        free(ia);
        free(ib);
    }
out:
    tokenizer_free(a);
    tokenizer_free(b);
}

static void test_smollm2(void) {
    const char *gguf = shared_or_fetched_path("models/SmolLM2-135M-Instruct.Q4_1.gguf",
                                              "models/SmolLM2-135M-Instruct.Q4_1.gguf");
    const char *wiki = shared_data_path("eval/wiki.test.raw");
    if (!gguf || !wiki) {
        SKIP("../shared/data SmolLM2-135M-Instruct.Q4_1.gguf or wiki.test.raw absent: SmolLM2 tokenizer test "
             "not run");
        return;
    }
    tokenizer *t = NULL;
    CHECKF(tokenizer_load(gguf, &t) == QLAB_OK, "%s", qlab_last_error());
    if (!t) return;
    CHECK(tokenizer_vocab_size(t) == 49152 && tokenizer_bos_id(t) == 1 && tokenizer_eos_id(t) == 2 &&
          tokenizer_add_bos(t) == 0);
    CHECK(!strcmp(tokenizer_piece(t, 1), "<|im_start|>") && !strcmp(tokenizer_piece(t, 2), "<|im_end|>"));
    /* chat markup, digits one by one, non-ASCII, tabs, runs of spaces, special tokens in the text */
    static const char chat[] = "<|im_start|>user\nWhat is 12345 + 0.5? \xC3\x9cn\xC3\xAF"
                               "c\xC3\xB6"
                               "d\xC3\xA9  "
                               "\xE2\x80\x94  \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E tabs\t\tand   spaces\n\n"
                               "<|im_end|>\n<|im_start|>assistant\n It's 12,345.5!<|endoftext|>";
    static const int want[] = {1,    4093, 198,   1780, 314,  216,   33,  34,    35,  36,    37,  1232, 216,
                               32,   30,   37,    47,   5549, 246,   94,  25972, 83,  7466,  84,  2756, 216,
                               1841, 216,  17097, 241,  115,  40993, 179, 120,   248, 29416, 197, 197,  397,
                               256,  5600, 1116,  2,    198,  1,     520, 9531,  198, 657,   506, 216,  33,
                               34,   28,   35,    36,   37,   30,    37,  17,    0};
    int *ids = NULL;
    size_t n = 0;
    CHECK(tokenizer_encode(t, chat, strlen(chat), 0, &ids, &n) == QLAB_OK);
    int same = n == sizeof want / sizeof want[0];
    for (size_t i = 0; same && i < n; i++)
        same = ids[i] == want[i];
    CHECKF(same, "chat string: %zu ids, tokenizers gives %zu", n, sizeof want / sizeof want[0]);
    char *text = NULL;
    size_t len = 0;
    /* SmolLM2 adds no BOS, so its leading <|im_start|> (the BOS id) came from the text and decodes back
     * to it, as transformers' decode keeps it: the chat text comes back whole. */
    CHECKF(tokenizer_decode(t, ids, n, &text, &len) == QLAB_OK && len == strlen(chat) &&
               !memcmp(text, chat, len),
           "chat string decodes to %zu bytes, expected %zu", len, strlen(chat));
    free(text);
    free(ids);
    /* Bytes of the byte-level alphabet that have no piece (0x04, 0x06, 0x13, ..., 0xC0, 0xF5-0xFF) are
     * dropped, as Hugging Face's BPE drops them (no unk_token, no byte fallback): tokenizers 0.23 gives
     * "a\x04b" -> [81, 82]. The old code failed the whole encode instead. */
    static const int ab[] = {81, 82};
    CHECK(tokenizer_encode(t,
                           "a\x04"
                           "b",
                           3, 0, &ids, &n) == QLAB_OK &&
          n == 2 && !memcmp(ids, ab, sizeof ab));
    free(ids);
    CHECK(tokenizer_encode(t, "\xFF\xFE", 2, 0, &ids, &n) == QLAB_OK && n == 0);
    free(ids);
    /* all of wiki.test.raw: count and sha256 of the int32 ids */
    ids = encode_file(t, wiki, SIZE_MAX, &n);
    int32_t *i32 = malloc(n * sizeof *i32 + 1);
    for (size_t i = 0; ids && i32 && i < n; i++)
        i32[i] = ids[i];
    char hex[65] = "";
    if (ids && i32) sha256_hex(i32, n * sizeof *i32, hex);
    CHECKF(n == 303415 && !strcmp(hex, "18e663b61dd00f49796c8a6ae498b7dbe009cac4a2eaf3c67fa7d81baf47d945"),
           "wiki.test.raw: %zu ids, sha256 %s (tokenizers: 303415 ids, 18e663b6...)", n, hex);
    free(i32);
    free(ids);
    tokenizer_free(t);
}

int main(void) {
    test_tmp_dir_create("tok_gguf");
    test_tiny();
    test_stories260k();
    test_smollm2();
    test_tmp_dir_remove();
    return check_summary();
}
