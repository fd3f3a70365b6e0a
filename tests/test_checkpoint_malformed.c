/* Malformed checkpoints must be refused, never crash: truncated or inconsistent llama2.c headers, GGUF
 * files with a bad magic, truncated metadata, out-of-range offsets, missing keys/tensors and wrong
 * shapes, and Hugging Face directories with a bad config.json or incomplete safetensors. Each case checks
 * the status and that the one-line message names the file and the field. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/check.h"
#include "core/model/checkpoint.h"
#include "core/base/common.h"
#include "core/base/rng.h"
#include "core/formats/safetensors.h"
#include "tests/test_util.h"

/* Loads path with loader, expecting status want and a message containing the path and every given word. */
#define EXPECT_REFUSED(loader, path, want, ...)                                                              \
    do {                                                                                                     \
        model *m_ = NULL;                                                                                    \
        qlab_status st_ = loader(path, &m_);                                                                 \
        CHECKF(st_ == (want) && m_ == NULL, "status %s (%s)", qlab_status_name(st_), qlab_last_error());     \
        if (getenv("QLAB_TEST_VERBOSE")) fprintf(stderr, "refused: %s\n", qlab_last_error());                \
        CHECKF(strstr(qlab_last_error(), path) != NULL, "message does not name %s: %s", path,                \
               qlab_last_error());                                                                           \
        const char *words_[] = {__VA_ARGS__};                                                                \
        for (size_t i_ = 0; i_ < sizeof words_ / sizeof words_[0]; i_++)                                     \
            CHECKF(strstr(qlab_last_error(), words_[i_]) != NULL, "message lacks \"%s\": %s", words_[i_],    \
                   qlab_last_error());                                                                       \
        model_free(m_);                                                                                      \
    } while (0)

static void test_llama2c(const char *bin) {
    char *raw;
    size_t len;
    if (qlab_read_file(bin, &raw, &len) != QLAB_OK) {
        CHECK(0);
        return;
    }
    const char *p = tmp_path("bad.bin");
    int32_t h[7];

    write_bytes(p, raw, len - 4); /* truncated */
    EXPECT_REFUSED(checkpoint_load_llama2c, p, QLAB_ERR_FORMAT, "file holds 1056536 bytes",
                   "header implies 1056540");
    write_bytes(p, raw, 10); /* shorter than the header */
    EXPECT_REFUSED(checkpoint_load_llama2c, p, QLAB_ERR_FORMAT, "header");
    write_bytes(p, raw, 0); /* empty */
    EXPECT_REFUSED(checkpoint_load_llama2c, p, QLAB_ERR_FORMAT, "header");

    memcpy(h, raw, sizeof h);
    h[4] = 3; /* 3 kv heads cannot serve 8 query heads */
    memcpy(raw, h, sizeof h);
    write_bytes(p, raw, len);
    EXPECT_REFUSED(checkpoint_load_llama2c, p, QLAB_ERR_FORMAT, "n_kv_heads");

    h[4] = 4, h[0] = -64;
    memcpy(raw, h, sizeof h);
    write_bytes(p, raw, len);
    EXPECT_REFUSED(checkpoint_load_llama2c, p, QLAB_ERR_FORMAT, "dim");

    h[0] = 64, h[6] = 0;
    memcpy(raw, h, sizeof h);
    write_bytes(p, raw, len);
    EXPECT_REFUSED(checkpoint_load_llama2c, p, QLAB_ERR_FORMAT, "seq_len");

    /* sizes whose products overflow 64 bits must be caught before any allocation */
    int32_t huge[7] = {1 << 30, INT32_MAX, INT32_MAX, 2, 2, INT32_MAX, INT32_MAX};
    memcpy(raw, huge, sizeof huge);
    write_bytes(p, raw, len);
    EXPECT_REFUSED(checkpoint_load_llama2c, p, QLAB_ERR_FORMAT, "overflow");
    /* large but not overflowing: a size mismatch, not a 100 GB allocation */
    int32_t big[7] = {65536, 65536, 64, 64, 64, 32000, 4096};
    memcpy(raw, big, sizeof big);
    write_bytes(p, raw, len);
    EXPECT_REFUSED(checkpoint_load_llama2c, p, QLAB_ERR_FORMAT, "header implies");

    /* a .bin without the RoPE tables is accepted (the header decides the layout), with the same weights */
    memcpy(raw, h, sizeof h);
    h[6] = 512;
    memcpy(raw, h, sizeof h);
    write_bytes(p, raw, 28 + 4 * 260032);
    model *a = NULL, *b = NULL;
    CHECK(checkpoint_load_llama2c(p, &a) == QLAB_OK);
    CHECK(checkpoint_load_llama2c(bin, &b) == QLAB_OK);
    if (a && b)
        CHECK(memcmp(model_get_param_buffer(a, NULL), model_get_param_buffer(b, NULL), 260032 * 4) == 0);
    model_free(a);
    model_free(b);
    EXPECT_REFUSED(checkpoint_load, "/nonexistent/qlab/model.bin", QLAB_ERR_IO, "cannot open");
    free(raw);
}

/* Byte position just after the name of tensor info `name` in a GGUF image (the n_dims field). */
static size_t gguf_after_name(const char *raw, size_t len, const char *name) {
    size_t n = strlen(name);
    for (size_t i = 8; i + n <= len; i++)
        if (memcmp(raw + i, name, n) == 0) {
            uint64_t stored;
            memcpy(&stored, raw + i - 8, 8);
            if (stored == n) return i + n;
        }
    return 0;
}

static void test_gguf(const char *gguf) {
    char *raw, *work;
    size_t len;
    if (qlab_read_file(gguf, &raw, &len) != QLAB_OK) {
        CHECK(0);
        return;
    }
    work = malloc(len);
    const char *p = tmp_path("bad.gguf");
#define RESET() memcpy(work, raw, len)

    RESET();
    memcpy(work, "GGUX", 4);
    write_bytes(p, work, len);
    EXPECT_REFUSED(checkpoint_load_gguf, p, QLAB_ERR_FORMAT, "magic");

    RESET();
    uint32_t v1 = 1;
    memcpy(work + 4, &v1, 4);
    write_bytes(p, work, len);
    EXPECT_REFUSED(checkpoint_load_gguf, p, QLAB_ERR_UNSUPPORTED, "version 1");

    /* cut inside the vocabulary array of the metadata, and inside the tensor infos */
    RESET();
    write_bytes(p, work, 5000);
    EXPECT_REFUSED(checkpoint_load_gguf, p, QLAB_ERR_FORMAT, "metadata");
    write_bytes(p, work, 14000);
    EXPECT_REFUSED(checkpoint_load_gguf, p, QLAB_ERR_FORMAT, "truncated");
    write_bytes(p, work, 20);
    EXPECT_REFUSED(checkpoint_load_gguf, p, QLAB_ERR_FORMAT, "truncated");
    /* the tensor data cut short: the last tensors no longer fit */
    write_bytes(p, work, len - 100);
    EXPECT_REFUSED(checkpoint_load_gguf, p, QLAB_ERR_FORMAT, "blk.4.ffn_norm.weight", "beyond");

    /* an absurd tensor count is refused before allocating for it */
    RESET();
    uint64_t many = (uint64_t)1 << 60;
    memcpy(work + 8, &many, 8);
    write_bytes(p, work, len);
    EXPECT_REFUSED(checkpoint_load_gguf, p, QLAB_ERR_FORMAT, "tensors");

    /* a string length running past the end of the file (first key's length) */
    RESET();
    uint64_t long_key = (uint64_t)1 << 40;
    memcpy(work + 24, &long_key, 8);
    write_bytes(p, work, len);
    EXPECT_REFUSED(checkpoint_load_gguf, p, QLAB_ERR_FORMAT, "metadata key", "length");

    /* blk.4.ffn_norm.weight: n_dims (4) + ne[0] (8) + type (4), then its offset */
    size_t at = gguf_after_name(raw, len, "blk.4.ffn_norm.weight");
    CHECK(at != 0);
    if (at) {
        RESET();
        uint64_t off = (uint64_t)1 << 40; /* aligned, far beyond the data */
        memcpy(work + at + 16, &off, 8);
        write_bytes(p, work, len);
        EXPECT_REFUSED(checkpoint_load_gguf, p, QLAB_ERR_FORMAT, "blk.4.ffn_norm.weight", "offset");
        off = 1170944 + 4; /* not a multiple of the 32-byte alignment */
        memcpy(work + at + 16, &off, 8);
        write_bytes(p, work, len);
        EXPECT_REFUSED(checkpoint_load_gguf, p, QLAB_ERR_FORMAT, "blk.4.ffn_norm.weight", "alignment");
        RESET();
        uint32_t iq2 = 16; /* ggml IQ2_XXS: a real type, but not one this reader handles */
        memcpy(work + at + 12, &iq2, 4);
        write_bytes(p, work, len);
        EXPECT_REFUSED(checkpoint_load_gguf, p, QLAB_ERR_UNSUPPORTED, "blk.4.ffn_norm.weight", "type 16");
        RESET();
        uint32_t q4k = 12; /* Q4_K: a row of 64 values is not a whole 256-value super-block */
        memcpy(work + at + 12, &q4k, 4);
        write_bytes(p, work, len);
        EXPECT_REFUSED(checkpoint_load_gguf, p, QLAB_ERR_FORMAT, "blk.4.ffn_norm.weight", "multiple of 256");
        RESET();
        uint32_t dims = 9;
        memcpy(work + at, &dims, 4);
        write_bytes(p, work, len);
        EXPECT_REFUSED(checkpoint_load_gguf, p, QLAB_ERR_FORMAT, "blk.4.ffn_norm.weight", "dimensions");
    }
    /* wrong shape: blk.0.attn_q.weight claims 32 output rows */
    at = gguf_after_name(raw, len, "blk.0.attn_q.weight");
    CHECK(at != 0);
    if (at) {
        RESET();
        uint64_t rows = 32;
        memcpy(work + at + 12, &rows, 8);
        write_bytes(p, work, len);
        EXPECT_REFUSED(checkpoint_load_gguf, p, QLAB_ERR_FORMAT, "blk.0.attn_q.weight", "shape [64, 32]",
                       "expected [64, 64]");
    }
    /* a missing tensor (renamed in place) and a missing key */
    at = gguf_after_name(raw, len, "blk.2.ffn_up.weight");
    CHECK(at != 0);
    if (at) {
        RESET();
        work[at - strlen(".weight") - 1] = 'q'; /* blk.2.ffn_uq.weight */
        write_bytes(p, work, len);
        EXPECT_REFUSED(checkpoint_load_gguf, p, QLAB_ERR_FORMAT, "blk.2.ffn_up.weight", "missing");
    }
    RESET();
    char *key = memmem(work, len, "llama.block_count", 17);
    CHECK(key != NULL);
    if (key) {
        memcpy(key, "llama.block_cnt__", 17);
        write_bytes(p, work, len);
        EXPECT_REFUSED(checkpoint_load_gguf, p, QLAB_ERR_FORMAT, "llama.block_count", "missing");
    }
    /* a required key of the wrong type: embedding_length stored as a float32 */
    RESET();
    key = memmem(work, len, "llama.embedding_length", 22);
    if (key) {
        uint32_t f32 = 6;
        memcpy(key + 22, &f32, 4);
        write_bytes(p, work, len);
        EXPECT_REFUSED(checkpoint_load_gguf, p, QLAB_ERR_FORMAT, "llama.embedding_length", "integer");
    }
    RESET();
    key = memmem(work, len, "llama.embedding_length", 22);
    if (key) { /* metadata claiming a gigantic model: refused by shape before any allocation */
        uint32_t giant = 1u << 20;
        memcpy(key + 22 + 4, &giant, 4);
        write_bytes(p, work, len);
        EXPECT_REFUSED(checkpoint_load_gguf, p, QLAB_ERR_FORMAT, "token_embd.weight",
                       "llama.embedding_length = 1048576");
    }
    RESET();
    key = memmem(work, len, "llama.attention.head_count_kv", 29);
    if (key) {
        uint32_t three = 3;
        memcpy(key + 29 + 4, &three, 4);
        write_bytes(p, work, len);
        EXPECT_REFUSED(checkpoint_load_gguf, p, QLAB_ERR_FORMAT, "head_count_kv");
    }
    /* a different architecture */
    RESET();
    key = memmem(work, len, "general.architecture", 20);
    if (key) {
        memcpy(key + 20 + 4 + 8, "gpt2!", 5);
        write_bytes(p, work, len);
        EXPECT_REFUSED(checkpoint_load_gguf, p, QLAB_ERR_UNSUPPORTED, "general.architecture");
    }
#undef RESET
    free(work);
    free(raw);
}

/* Random byte corruption of the GGUF header region and of the .bin header: every load must either refuse
 * with a message naming the file or give a model; none may crash (run under ASan during development). */
static void test_fuzz(const char *bin, const char *gguf) {
    rng_state r;
    rng_seed(&r, 2023);
    const char *src[2] = {gguf, bin};
    size_t region[2] = {14152, 28}; /* the GGUF's metadata + tensor infos; the .bin's header */
    int crashed_message = 0, refused = 0;
    for (int which = 0; which < 2; which++) {
        if (!src[which]) continue;
        char *raw;
        size_t len;
        if (qlab_read_file(src[which], &raw, &len) != QLAB_OK) continue;
        char *work = malloc(len);
        const char *p = tmp_path(which ? "fuzz.bin" : "fuzz.gguf");
        for (int iter = 0; iter < 150; iter++) {
            memcpy(work, raw, len);
            int flips = 1 + (int)rng_below(&r, 4);
            for (int k = 0; k < flips; k++)
                work[rng_below(&r, region[which])] = (char)rng_below(&r, 256);
            size_t cut = rng_below(&r, 8) == 0 ? rng_below(&r, len) : len; /* sometimes truncated too */
            write_bytes(p, work, cut);
            model *m = NULL;
            qlab_status st = which ? checkpoint_load_llama2c(p, &m) : checkpoint_load_gguf(p, &m);
            if (st != QLAB_OK) {
                refused++;
                crashed_message += strstr(qlab_last_error(), p) == NULL;
            }
            model_free(m);
        }
        free(work);
        free(raw);
    }
    CHECK(refused > 0);
    CHECKF(crashed_message == 0, "%d refusals did not name the file", crashed_message);
}

/* Rewrites dir/model.safetensors from the one there, leaving out `drop` and giving `reshape` a wrong
 * shape (either may be NULL). */
static void rewrite_safetensors(const char *dir, const char *drop, const char *reshape) {
    char path[300], out[300];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    snprintf(out, sizeof out, "%s/model.safetensors.new", dir);
    safetensors_file f;
    if (safetensors_open(&f, path) != QLAB_OK) {
        CHECKF(0, "%s", qlab_last_error());
        return;
    }
    safetensors_writer *w = safetensors_writer_new();
    for (int i = 0; i < f.n_tensors; i++) {
        const safetensors_tensor *t = &f.tensors[i];
        if (drop && strcmp(t->name, drop) == 0) continue;
        int64_t shape[SAFETENSORS_MAX_DIMS];
        memcpy(shape, t->shape, sizeof shape);
        int ndim = t->ndim;
        if (reshape && strcmp(t->name, reshape) == 0 && ndim == 2) shape[0] /= 2, shape[1] *= 2;
        CHECK(safetensors_writer_add_copy(w, t->name, t->dtype, ndim, shape, t->data) == QLAB_OK);
    }
    CHECKF(safetensors_writer_write(w, out) == QLAB_OK, "%s", qlab_last_error());
    safetensors_writer_free(w);
    safetensors_close(&f);
    CHECK(rename(out, path) == 0);
}

static void test_hf(const char *bin) {
    model *m = NULL;
    CHECK(checkpoint_load(bin, &m) == QLAB_OK);
    if (!m) return;
    const char *dir = tmp_path("hf");
    const char *config = tmp_path("hf/config.json");
    CHECK(checkpoint_save_hf(m, dir) == QLAB_OK);
    char *good;
    size_t good_len;
    CHECK(qlab_read_file(config, &good, &good_len) == QLAB_OK);

    /* config.json: missing key, wrong type, inconsistent heads, not JSON */
    const char *missing =
        "{\"intermediate_size\": 172, \"num_hidden_layers\": 5, \"num_attention_heads\": 8, "
        "\"vocab_size\": 512, \"max_position_embeddings\": 512}";
    write_bytes(config, missing, strlen(missing));
    EXPECT_REFUSED(checkpoint_load_hf, dir, QLAB_ERR_FORMAT, "config.json", "hidden_size", "missing");
    const char *wrong = "{\"hidden_size\": 64, \"intermediate_size\": 172, \"num_hidden_layers\": \"5\", "
                        "\"num_attention_heads\": 8, \"vocab_size\": 512, \"max_position_embeddings\": 512}";
    write_bytes(config, wrong, strlen(wrong));
    EXPECT_REFUSED(checkpoint_load_hf, dir, QLAB_ERR_FORMAT, "config.json", "num_hidden_layers", "integer");
    const char *heads = "{\"hidden_size\": 64, \"intermediate_size\": 172, \"num_hidden_layers\": 5, "
                        "\"num_attention_heads\": 8, \"num_key_value_heads\": 3, \"vocab_size\": 512, "
                        "\"max_position_embeddings\": 512}";
    write_bytes(config, heads, strlen(heads));
    EXPECT_REFUSED(checkpoint_load_hf, dir, QLAB_ERR_FORMAT, "config.json", "num_key_value_heads");
    write_bytes(config, "{\"hidden_size\": 64,", 19);
    EXPECT_REFUSED(checkpoint_load_hf, dir, QLAB_ERR_FORMAT, "config.json", "JSON");
    /* a valid config for a larger model than the weights hold: the first tensor's shape is wrong */
    const char *larger = "{\"hidden_size\": 128, \"intermediate_size\": 172, \"num_hidden_layers\": 5, "
                         "\"num_attention_heads\": 8, \"num_key_value_heads\": 4, \"vocab_size\": 512, "
                         "\"max_position_embeddings\": 512, \"tie_word_embeddings\": true}";
    write_bytes(config, larger, strlen(larger));
    EXPECT_REFUSED(checkpoint_load_hf, dir, QLAB_ERR_FORMAT, "model.embed_tokens.weight",
                   "expected [512, 128]");
    /* a config for a gigantic model over these small weights: refused by shape before any allocation */
    const char *giant =
        "{\"hidden_size\": 1048576, \"intermediate_size\": 4194304, \"num_hidden_layers\": 5, "
        "\"num_attention_heads\": 8, \"num_key_value_heads\": 4, \"vocab_size\": 512, "
        "\"max_position_embeddings\": 512, \"tie_word_embeddings\": true}";
    write_bytes(config, giant, strlen(giant));
    EXPECT_REFUSED(checkpoint_load_hf, dir, QLAB_ERR_FORMAT, "model.embed_tokens.weight",
                   "expected [512, 1048576]");
    write_bytes(config, good, good_len);
    model *ok = NULL;
    CHECK(checkpoint_load_hf(dir, &ok) == QLAB_OK);
    model_free(ok);

    /* safetensors missing a tensor, and one with the wrong shape (same element count) */
    rewrite_safetensors(dir, "model.layers.3.mlp.up_proj.weight", NULL);
    EXPECT_REFUSED(checkpoint_load_hf, dir, QLAB_ERR_FORMAT, "model.safetensors",
                   "model.layers.3.mlp.up_proj.weight", "missing");
    CHECK(checkpoint_save_hf(m, dir) == QLAB_OK);
    rewrite_safetensors(dir, NULL, "model.layers.1.self_attn.k_proj.weight");
    EXPECT_REFUSED(checkpoint_load_hf, dir, QLAB_ERR_FORMAT, "model.safetensors",
                   "model.layers.1.self_attn.k_proj.weight", "shape [16, 128]", "expected [32, 64]");
    /* no weights at all */
    unlink(tmp_path("hf/model.safetensors"));
    model *none = NULL;
    CHECK(checkpoint_load_hf(dir, &none) != QLAB_OK && none == NULL);
    CHECKF(strstr(qlab_last_error(), dir) != NULL, "%s", qlab_last_error());
    /* no config */
    unlink(config);
    EXPECT_REFUSED(checkpoint_load_hf, dir, QLAB_ERR_IO, "config.json");
    /* writers refuse unwritable destinations and leave no temp file behind */
    CHECK(checkpoint_save_llama2c(m, "/nonexistent/qlab/x.bin") == QLAB_ERR_IO);
    CHECK(strstr(qlab_last_error(), "/nonexistent/qlab/x.bin") != NULL);
    CHECK(checkpoint_save_gguf(m, "/nonexistent/qlab/x.gguf", CHECKPOINT_F32) == QLAB_ERR_IO);
    CHECK(checkpoint_save_hf(m, "/nonexistent/qlab/hf") == QLAB_ERR_IO);
    CHECK(strstr(qlab_last_error(), "/nonexistent/qlab/hf") != NULL);
    free(good);
    model_free(m);
}

int main(void) {
    test_tmp_dir_create("ckpt_bad");
    const char *bin = shared_data_path("models/stories260K.bin");
    const char *gguf = shared_data_path("models/stories260K.gguf");
    if (!bin)
        SKIP("../shared/data/models/stories260K.bin is absent: llama2.c and Hugging Face cases not run");
    else {
        test_llama2c(bin);
        test_hf(bin);
    }
    if (bin || gguf) test_fuzz(bin, gguf);
    if (!gguf)
        SKIP("../shared/data/models/stories260K.gguf is absent: GGUF cases not run");
    else
        test_gguf(gguf);
    test_tmp_dir_remove();
    return check_summary();
}
