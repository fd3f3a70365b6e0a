/* Sizes a header implies are bounded before anything is allocated (issue 13, found by fuzzing): a context
 * length above MODEL_MAX_SEQ_LEN is refused by each checkpoint loader naming the field (llama2.c seq_len,
 * GGUF llama.context_length, Hugging Face max_position_embeddings); a model declaring the largest allowed
 * context costs no memory for it until a forward pass runs that long (RoPE tables are lazy); a tokenizer.json
 * cannot declare millions of ids it never names; the gzip reader refuses a stream unpacking past its limit
 * without ever growing past it; an empty Prepend normalizer string tokenizes (UBSan: memcpy from NULL).
 * Every file is crafted here from a tiny model written by the library's own writers. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <zlib.h>

#include <cjson/cJSON.h>

#include "tests/check.h"
#include "core/base/common.h"
#include "core/base/gzip.h"
#include "core/model/checkpoint.h"
#include "core/model/model.h"
#include "core/text/tokenizer.h"
#include "tests/test_util.h"

static long max_rss_kb(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

/* A tiny model (dim 8, 2 heads of 4) with the given context, weights from a fixed pattern. */
static model *tiny_model(int seq_len, int head_size) {
    model_config c = {.dim = 2 * head_size,
                      .hidden_dim = 16,
                      .n_layers = 1,
                      .n_heads = 2,
                      .n_kv_heads = 2,
                      .vocab_size = 32,
                      .seq_len = seq_len,
                      .norm_eps = 1e-5f,
                      .rope_theta = 10000.0f,
                      .shared_classifier = 1};
    model *m = NULL;
    if (model_create(&m, &c) != QLAB_OK) {
        fprintf(stderr, "model_create: %s\n", qlab_last_error());
        exit(2);
    }
    size_t n;
    float *w = model_get_param_buffer(m, &n);
    for (size_t i = 0; i < n; i++)
        w[i] = (float)((int)(i * 37 % 101) - 50) / 200.0f;
    return m;
}

/* Loads path (format detected), expecting a refusal whose one line names the path and every given word. */
static void expect_refused(const char *path, const char *word1, const char *word2) {
    model *m = NULL;
    qlab_status st = checkpoint_load(path, &m);
    CHECKF(st != QLAB_OK && m == NULL, "%s loaded", path);
    CHECKF(strstr(qlab_last_error(), path) != NULL, "message does not name %s: %s", path, qlab_last_error());
    CHECKF(strstr(qlab_last_error(), word1) != NULL, "message lacks %s: %s", word1, qlab_last_error());
    if (word2)
        CHECKF(strstr(qlab_last_error(), word2) != NULL, "message lacks %s: %s", word2, qlab_last_error());
    model_free(m);
}

/* The model's context length cap and lazy RoPE tables. */
static void test_model_context(void) {
    model *t = tiny_model(16, 4);
    model_config c = *model_get_config(t);
    model_free(t);
    c.seq_len = MODEL_MAX_SEQ_LEN + 1;
    model *m = NULL;
    CHECK(model_create(&m, &c) == QLAB_ERR_ARG && m == NULL);
    CHECKF(strstr(qlab_last_error(), "seq_len") != NULL, "%s", qlab_last_error());

    /* Head size 64 at the largest context: eager tables were 2 x 2^20 x 32 floats = 256 MB written. */
    long before = max_rss_kb();
    m = tiny_model(MODEL_MAX_SEQ_LEN, 64);
    long after = max_rss_kb();
    CHECKF(after - before < 32 * 1024, "a model declaring context %d grew the peak RSS by %ld kB",
           MODEL_MAX_SEQ_LEN, after - before);
    /* and it still runs (tables made on demand): same logits as a model declaring a short context */
    model *s = tiny_model(8, 64);
    int tokens[8] = {1, 5, 9, 3, 30, 2, 7, 7};
    float la[8 * 32], lb[8 * 32], loss;
    CHECK(model_forward(m, tokens, NULL, 1, 8, la, &loss) == QLAB_OK);
    CHECK(model_forward(s, tokens, NULL, 1, 8, lb, &loss) == QLAB_OK);
    CHECK(memcmp(la, lb, sizeof la) == 0);
    /* a shorter pass after a longer one reuses the tables; a longer one grows them identically */
    CHECK(model_forward(m, tokens, NULL, 1, 4, la, &loss) == QLAB_OK);
    CHECK(memcmp(la, lb, 4 * 32 * sizeof(float)) == 0);
    model_free(m);
    model_free(s);
}

/* Overwrites the int32 llama2.c header field i. */
static void patch_i32(const char *path, long offset, int32_t v) {
    FILE *f = fopen(path, "r+b");
    if (!f || fseek(f, offset, SEEK_SET) != 0 || fwrite(&v, 4, 1, f) != 1) {
        perror(path);
        exit(2);
    }
    fclose(f);
}

static void test_llama2c(void) {
    const char *p = tmp_path("ctx.bin");
    model *m = tiny_model(16, 4);
    CHECK(checkpoint_save_llama2c(m, p) == QLAB_OK);
    model_free(m);
    /* The saved file has RoPE tables (16 positions); drop them: a file without them does not bound seq_len
     * by its size, so a 3 KB file could claim 2^31-1 positions. */
    char *raw;
    size_t len;
    CHECK(qlab_read_file(p, &raw, &len) == QLAB_OK);
    size_t rope = 2 * 16 * 2 * sizeof(float), tail = 0; /* shared classifier: the tables end the file */
    write_bytes(p, raw, len - rope - tail);
    free(raw);
    model *ok = NULL;
    CHECKF(checkpoint_load(p, &ok) == QLAB_OK, "%s", qlab_last_error()); /* the no-RoPE layout loads */
    model_free(ok);
    patch_i32(p, 6 * 4, MODEL_MAX_SEQ_LEN + 1);
    expect_refused(p, "seq_len", "limit");
    patch_i32(p, 6 * 4, INT32_MAX);
    expect_refused(p, "seq_len", "2147483647");
    /* the largest allowed context loads without allocating for it */
    patch_i32(p, 6 * 4, MODEL_MAX_SEQ_LEN);
    long before = max_rss_kb();
    CHECKF(checkpoint_load(p, &ok) == QLAB_OK, "%s", qlab_last_error());
    CHECKF(max_rss_kb() - before < 32 * 1024, "peak RSS grew by %ld kB", max_rss_kb() - before);
    model_free(ok);
}

/* Offset of the u32 value of GGUF metadata key (after its name and the u32 type), or 0. */
static size_t gguf_value_offset(const char *raw, size_t len, const char *key) {
    size_t k = strlen(key);
    for (size_t i = 8; i + k + 8 <= len; i++)
        if (memcmp(raw + i, key, k) == 0) {
            uint64_t n;
            memcpy(&n, raw + i - 8, 8);
            if (n == k) return i + k + 4;
        }
    return 0;
}

static void test_gguf(void) {
    const char *p = tmp_path("ctx.gguf");
    model *m = tiny_model(16, 4);
    CHECK(checkpoint_save_gguf(m, p, CHECKPOINT_F32) == QLAB_OK);
    model_free(m);
    char *raw;
    size_t len;
    CHECK(qlab_read_file(p, &raw, &len) == QLAB_OK);
    size_t off = gguf_value_offset(raw, len, "llama.context_length");
    CHECK(off != 0);
    free(raw);
    if (!off) return;
    patch_i32(p, (long)off, MODEL_MAX_SEQ_LEN + 1);
    expect_refused(p, "llama.context_length", "limit");
    /* INT32_MAX passed the old check and sized two zeroed tables in model_create */
    patch_i32(p, (long)off, INT32_MAX);
    expect_refused(p, "llama.context_length", "2147483647");
    patch_i32(p, (long)off, MODEL_MAX_SEQ_LEN);
    model *ok = NULL;
    CHECKF(checkpoint_load(p, &ok) == QLAB_OK, "%s", qlab_last_error());
    CHECK(ok && model_get_config(ok)->seq_len == MODEL_MAX_SEQ_LEN);
    model_free(ok);
}

static void test_hf(void) {
    const char *dir = tmp_path("hf");
    model *m = tiny_model(16, 4);
    CHECK(checkpoint_save_hf(m, dir) == QLAB_OK);
    model_free(m);
    char cfg_path[600];
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", dir);
    char *text;
    size_t len;
    CHECK(qlab_read_file(cfg_path, &text, &len) == QLAB_OK);
    cJSON *root = cJSON_Parse(text);
    free(text);
    cJSON_ReplaceItemInObject(root, "max_position_embeddings", cJSON_CreateNumber(2147483647.0));
    char *out = cJSON_Print(root);
    write_bytes(cfg_path, out, strlen(out));
    free(out);
    cJSON_Delete(root);
    model *bad = NULL;
    CHECK(checkpoint_load(dir, &bad) != QLAB_OK && bad == NULL);
    CHECKF(strstr(qlab_last_error(), cfg_path) && strstr(qlab_last_error(), "max_position_embeddings"), "%s",
           qlab_last_error());
}

static void test_tokenizer_json(void) {
    const char *p = tmp_path("tokenizer.json");
    /* a few named tokens, one of them at id 16,000,000: 16M pointer-sized slots for a 150-byte file */
    const char *sparse = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 16000000}, "
                         "\"merges\": [[\"a\", \"b\"]]}}";
    write_bytes(p, sparse, strlen(sparse));
    tokenizer *t = NULL;
    long before = max_rss_kb();
    CHECK(tokenizer_load(p, &t) == QLAB_ERR_FORMAT && t == NULL);
    CHECKF(max_rss_kb() - before < 32 * 1024, "peak RSS grew by %ld kB", max_rss_kb() - before);
    CHECKF(strstr(qlab_last_error(), p) && strstr(qlab_last_error(), "16000000"), "%s", qlab_last_error());
    /* an added token past a dense vocabulary (as in LLaMA 3) is fine */
    const char *dense =
        "{\"added_tokens\": [{\"id\": 300, \"content\": \"<s>\"}], \"model\": {\"type\": \"BPE\", "
        "\"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [[\"a\", \"b\"]]}}";
    write_bytes(p, dense, strlen(dense));
    CHECKF(tokenizer_load(p, &t) == QLAB_OK, "%s", qlab_last_error());
    tokenizer_free(t);
    t = NULL;
    /* an empty Prepend string: nothing to prepend (UBSan flagged memcpy(NULL, ..., 0) here) */
    const char *prepend =
        "{\"normalizer\": {\"type\": \"Prepend\", \"prepend\": \"\"}, \"model\": {\"type\": "
        "\"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [[\"a\", \"b\"]]}}";
    write_bytes(p, prepend, strlen(prepend));
    CHECKF(tokenizer_load(p, &t) == QLAB_OK, "%s", qlab_last_error());
    if (t) {
        int *ids = NULL;
        size_t n = 0;
        CHECKF(tokenizer_encode(t, "aba", 3, 0, &ids, &n) == QLAB_OK, "%s", qlab_last_error());
        CHECK(n == 2 && ids && ids[0] == 2 && ids[1] == 0);
        free(ids);
        tokenizer_free(t);
    }
}

/* gzip of n zero bytes, made with zlib directly. */
static unsigned char *gzip_zeros(size_t n, size_t *out_len) {
    z_stream z;
    memset(&z, 0, sizeof z);
    if (deflateInit2(&z, 9, Z_DEFLATED, 15 + 16, 9, Z_DEFAULT_STRATEGY) != Z_OK) exit(2);
    size_t cap = deflateBound(&z, n) + 64;
    unsigned char *zeros = calloc(n ? n : 1, 1), *out = malloc(cap);
    z.next_in = zeros, z.avail_in = (uInt)n, z.next_out = out, z.avail_out = (uInt)cap;
    if (deflate(&z, Z_FINISH) != Z_STREAM_END) exit(2);
    *out_len = cap - z.avail_out;
    deflateEnd(&z);
    free(zeros);
    return out;
}

static void test_gzip(void) {
    size_t zlen;
    unsigned char *gz = gzip_zeros(1 << 20, &zlen); /* 1 MiB of zeros in ~1 kB */
    char *out = NULL;
    size_t out_len = 0;
    CHECK(gzip_inflate_limit("zeros.gz", gz, zlen, 1 << 20, &out, &out_len) == QLAB_OK);
    CHECK(out_len == (size_t)1 << 20 && out && out[0] == 0 && out[out_len] == 0);
    free(out);
    out = NULL;
    /* one byte over the limit: refused, naming the file and the limit */
    CHECK(gzip_inflate_limit("zeros.gz", gz, zlen, (1 << 20) - 1, &out, &out_len) == QLAB_ERR_FORMAT);
    CHECK(out == NULL);
    CHECKF(strstr(qlab_last_error(), "zeros.gz") && strstr(qlab_last_error(), "1048575"), "%s",
           qlab_last_error());
    free(gz);
    /* 16 MiB of zeros against a 1 MiB limit: refused before the buffer outgrows the limit (the old check
     * ran before the doubling, so the buffer kept doubling to the whole output) */
    gz = gzip_zeros(16 << 20, &zlen);
    long before = max_rss_kb();
    CHECK(gzip_inflate_limit("zeros.gz", gz, zlen, 1 << 20, &out, &out_len) == QLAB_ERR_FORMAT);
    CHECKF(max_rss_kb() - before < 4 * 1024, "peak RSS grew by %ld kB", max_rss_kb() - before);
    free(gz);
    /* the documented cap of the plain reader */
    CHECK(GZIP_MAX_UNPACKED_BYTES == (size_t)1 << 30);
}

int main(void) {
    test_tmp_dir_create("bounds");
    test_model_context();
    test_llama2c();
    test_gguf();
    test_hf();
    test_tokenizer_json();
    test_gzip();
    test_tmp_dir_remove();
    return check_summary();
}
