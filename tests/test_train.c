/* Tests of the pretraining loop (train/train.h) and SHA-256 (core/base/sha256.h): the FIPS 180-4 test
 * vectors; two trainings of a tiny model with the same seed give bit-identical parameters and a different
 * seed does not; the held-out loss falls on qlab's story corpus; gradient clipping is active when the limit
 * is below the gradient norm and never when it is off; bad options are refused. */
#include <string.h>
#include <unistd.h>

#include "core/text/bpe.h"
#include "tests/check.h"
#include "core/base/common.h"
#include "datasets/corpus.h"
#include "core/model/model.h"
#include "core/base/sha256.h"
#include "core/text/tokenizer.h"
#include "train/train.h"

static void test_sha256(void) {
    char hex[65];
    sha256_hex("abc", 3, hex);
    CHECK(!strcmp(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
    sha256_hex("", 0, hex);
    CHECK(!strcmp(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
    const char *two_blocks = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    sha256_hex(two_blocks, strlen(two_blocks), hex);
    CHECK(!strcmp(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"));
    /* Streaming in odd pieces must equal one call (block boundaries inside updates). */
    static char million[1000000];
    memset(million, 'a', sizeof million);
    sha256_context c;
    sha256_begin(&c);
    for (size_t off = 0; off < sizeof million; off += 999)
        sha256_update(&c, million + off, sizeof million - off < 999 ? sizeof million - off : 999);
    uint8_t digest[32];
    sha256_end(&c, digest);
    CHECK(digest[0] == 0xcd && digest[1] == 0xc7 && digest[31] == 0xd0); /* cdc76e5c...c7112cd0 (FIPS) */
    CHECK(sha256_file_hex("/nonexistent/qlab", hex) == QLAB_ERR_IO);
}

static const model_config tiny = {.dim = 32,
                                  .hidden_dim = 64,
                                  .n_layers = 2,
                                  .n_heads = 4,
                                  .n_kv_heads = 2,
                                  .vocab_size = 512,
                                  .seq_len = 32,
                                  .norm_eps = 1e-5f,
                                  .rope_theta = 10000.0f,
                                  .shared_classifier = 1};

static train_options tiny_options(void) {
    train_options o;
    train_options_default(&o);
    o.batch = 4;
    o.seq_len = 32;
    o.steps = 40;
    o.warmup_steps = 5;
    o.max_lr = 1e-2;
    o.min_lr = 1e-3;
    o.log_every = 5;
    o.eval_every = 20;
    o.eval_windows = 8;
    o.seed = 5;
    return o;
}

/* Trains a fresh tiny model; returns its parameters (malloc'd) and history. */
static float *train_tiny(const int *ids, int64_t n_train, const int *held, int64_t n_held, uint64_t init_seed,
                         const train_options *o, train_history *h) {
    model *m;
    if (model_create(&m, &tiny) != QLAB_OK) return NULL;
    train_init_params(m, init_seed);
    qlab_status st = train_run(m, ids, n_train, held, n_held, o, NULL, NULL, h);
    CHECKF(st == QLAB_OK, "train_run: %s", qlab_last_error());
    size_t count;
    float *p = model_get_param_buffer(m, &count), *copy = malloc(sizeof(float) * count);
    if (copy) memcpy(copy, p, sizeof(float) * count);
    model_free(m);
    return st == QLAB_OK ? copy : (free(copy), NULL);
}

static void test_training(void) {
    /* A small corpus and tokenizer, made here (deterministic, well under a second). */
    char *train_text = NULL, *held_text = NULL;
    size_t train_len, held_len;
    CHECK(corpus_generate(3, CORPUS_TRAIN, 150000, 0, &train_text, &train_len) == QLAB_OK);
    CHECK(corpus_generate(3, CORPUS_HELDOUT, 8000, 0, &held_text, &held_len) == QLAB_OK);
    bpe_vocab v;
    char tok_path[96];
    snprintf(tok_path, sizeof tok_path, "/tmp/qlab_test_train_%ld.bin", (long)getpid());
    CHECK(bpe_train(train_text, train_len, 512, &v) == QLAB_OK);
    CHECK(bpe_save(&v, tok_path) == QLAB_OK);
    bpe_free(&v);
    tokenizer *tok = NULL;
    int *ids = NULL, *held = NULL;
    size_t n_ids = 0, n_held = 0;
    CHECK(tokenizer_load(tok_path, &tok) == QLAB_OK);
    unlink(tok_path);
    if (!tok) return;
    CHECK(tokenizer_encode(tok, train_text, train_len, 1, &ids, &n_ids) == QLAB_OK);
    CHECK(tokenizer_encode(tok, held_text, held_len, 1, &held, &n_held) == QLAB_OK);
    tokenizer_free(tok);
    free(train_text), free(held_text);
    if (!ids || !held) return;

    train_options o = tiny_options();
    train_history a, b, c;
    float *pa = train_tiny(ids, (int64_t)n_ids, held, (int64_t)n_held, 9, &o, &a);
    float *pb = train_tiny(ids, (int64_t)n_ids, held, (int64_t)n_held, 9, &o, &b);
    size_t count = model_num_params(&tiny);
    CHECK(pa && pb);
    if (pa && pb) CHECKF(memcmp(pa, pb, sizeof(float) * count) == 0, "same seed, different parameters");
    /* Exact, not near: the same seed and thread count must reproduce every bit (the zoo cache relies on it).
     */
    CHECK(a.final_heldout_loss == b.final_heldout_loss && a.n_train == b.n_train);
    o.seed = 6; /* another batch order */
    float *pc = train_tiny(ids, (int64_t)n_ids, held, (int64_t)n_held, 9, &o, &c);
    if (pa && pc) CHECK(memcmp(pa, pc, sizeof(float) * count) != 0);

    /* Learning: the first held-out point is the untrained model (about ln 512 = 6.24 nats); 40 steps at
     * lr 1e-2 on this highly regular corpus reach well under 5 (measured about 4.2), so 1 nat is a safe
     * margin. */
    CHECK(a.n_heldout == 3 && a.heldout[0].step == 0 && a.heldout[2].step == 40);
    if (a.n_heldout == 3) {
        CHECK_NEAR(a.heldout[0].loss, 6.238, 0.3); /* near uniform: small init, tied embeddings */
        CHECKF(a.heldout[2].loss < a.heldout[0].loss - 1.0, "held-out loss %g -> %g", a.heldout[0].loss,
               a.heldout[2].loss);
    }
    CHECK(a.n_train == 8 && a.train[7].step == 40 && a.train[7].tokens == 40 * 4 * 32);
    CHECK(a.train[0].lr > 0 && a.train[7].lr < a.train[3].lr); /* cosine decay after warmup */
    /* The default limit of 1.0 sits below the early gradient norms of a fresh model: clipping happened. */
    CHECKF(a.steps_clipped > 0, "clipped %lld steps", (long long)a.steps_clipped);
    CHECK(a.steps_skipped == 0);
    train_history_free(&a), train_history_free(&b), train_history_free(&c);
    free(pa), free(pb), free(pc);

    /* Clipping off: never counted. A tiny limit: every step clipped. */
    o = tiny_options();
    o.steps = 6;
    o.grad_clip = 0;
    float *pd = train_tiny(ids, (int64_t)n_ids, held, (int64_t)n_held, 9, &o, &a);
    CHECK(a.steps_clipped == 0);
    o.grad_clip = 1e-4;
    float *pe = train_tiny(ids, (int64_t)n_ids, held, (int64_t)n_held, 9, &o, &b);
    CHECK(b.steps_clipped == 6);
    train_history_free(&a), train_history_free(&b);
    free(pd), free(pe);

    /* Options are checked. */
    o = tiny_options();
    o.seq_len = 64; /* longer than the model's context */
    CHECK(train_options_check(&o, &tiny) == QLAB_ERR_ARG);
    o = tiny_options();
    o.warmup_steps = o.steps + 1;
    CHECK(train_options_check(&o, &tiny) == QLAB_ERR_ARG);
    o = tiny_options();
    model *m;
    CHECK(model_create(&m, &tiny) == QLAB_OK);
    train_history h;
    int bad[40] = {0};
    bad[3] = 600; /* outside the vocabulary */
    CHECK(train_run(m, bad, 40, held, (int64_t)n_held, &o, NULL, NULL, &h) == QLAB_ERR_ARG);
    CHECK(train_run(m, ids, 10, held, (int64_t)n_held, &o, NULL, NULL, &h) == QLAB_ERR_ARG); /* too short */
    model_free(m);
    free(ids), free(held);
}

int main(void) {
    test_sha256();
    test_training();
    return check_summary();
}
