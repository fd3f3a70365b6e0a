/* The real SmolLM2-135M-Instruct GGUF (Q8_0 embedding, Q4_1 projections, F32 norms; see
 * ../shared/data/README.md): it loads with the hyperparameters of its metadata, its quantized tensors
 * dequantize bit for bit as gguf-py (the numpy port of ggml's reference) does, and its loss on the start of
 * WikiText-2 matches an independent float64 numpy forward pass. Kept short (256 tokens) for 2 cores.
 *
 * Golden values, produced once with /work/pyenv (gguf-py 0.x, tokenizers 0.23) and pinned here:
 * - sha256 of the little-endian fp32 values of gguf.quants.dequantize(tensor.data, tensor.tensor_type);
 * - wiki_ids: BOS (1) + the ids the Hugging Face tokenizers library gives for the first 1,000 characters
 *   of wiki.test.raw (first 255 kept), with a tokenizers.Tokenizer built from the GGUF's own vocabulary
 *   and merges: models.BPE(vocab, merges), pre_tokenizer Sequence([Digits(individual_digits=True),
 *   ByteLevel(add_prefix_space=False, use_regex=True)]) (what llama.cpp's "smollm" pre-tokenizer and
 *   SmolLM2's tokenizer.json do), the 17 control tokens (token_type 3) added as special tokens;
 * - the mean next-token NLL of those 256 tokens as one window: 3.4936688931, from a float64 numpy LLaMA
 *   forward (RMSNorm eps = float32(1e-5), interleaved RoPE base 100,000, GQA 9/3, SwiGLU, tied
 *   classifier) over the gguf-py-dequantized weights. */
#include <math.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "tests/check.h"
#include "core/base/sha256.h"
#include "core/model/checkpoint.h"
#include "eval/tokens.h"

static const int wiki_ids[256] = {
    1,     3717,  446,   6356,  389,   9226,  352,   446,   3717,  3717, 6356,  389,   9226,  352,   314,
    354,   2321,  4771,  3297,  8552,  284,   16984, 17523, 1673,  909,  761,   253,   16204, 3394,  29,
    48,    45608, 1791,  335,   260,   8552,  3086,  378,   8593,  281,  216,   34,    32,    32,    32,
    1673,  669,   436,   3922,  411,   253,   45608, 1791,  281,   260,  1238,  3488,  707,   2855,  411,
    15399, 5970,  3139,  3297,  527,   436,   4940,  281,   216,   34,   32,    32,    33,    418,   260,
    7598,  5620,  22660, 1673,  909,   761,   253,   16204, 1791,  281,  260,   8552,  3086,  22083, 2322,
    1413,  277,   281,   216,   34,    32,    32,    34,    1673,  533,  216,   34,    32,    32,    36,
    389,   9226,  352,   16176, 253,   1791,  347,   476,   26984, 476,  281,   260,   12592, 476,   25617,
    13285, 637,   99,    10124, 476,   282,   260,   8552,  3086,  378,  6880,  37648, 8544,  384,   4870,
    455,   6719,  11064, 5068,  17444, 284,   41446, 91,    12469, 89,   1673,  909,   436,   5044,  281,
    260,   216,   34,    32,    32,    37,    16984, 24374, 282,   260,  14953, 32821, 2292,  1238,  18593,
    33817, 3297,  527,   436,   4940,  418,   260,   37011, 22660, 281,  31150, 284,   260,   8386,  1153,
    31313, 32909, 281,   4528,  1673,  909,   436,   9067,  411,   2322, 312,   627,   1111,  284,   4870,
    455,   6719,  5465,  1316,  621,   912,   3297,  1541,  1674,  1777, 15540, 3297,  15688, 11360, 3297,
    31426, 14969, 375,   3297,  45223, 37583, 284,   17290, 286,   8501, 1673,  3717,  533,   216,   34,
    32,    32,    38,    3297,  389,   9226,  352,   4870,  455,   6719, 1316,  621,   912,   281,   260,
    1238,  35492, 2855,  411,   5068,  43967, 17925, 1673,  909,   6254, 335,   253,   216,   34,    32,
    32,
};

static int sha_is(const float *x, size_t n, const char *want) {
    char hex[65];
    sha256_hex(x, n * sizeof(float), hex);
    if (strcmp(hex, want) != 0) fprintf(stderr, "  sha256 %s, gguf-py gives %s\n", hex, want);
    return strcmp(hex, want) == 0;
}

int main(void) {
    const char *path = shared_or_fetched_path("models/SmolLM2-135M-Instruct.Q4_1.gguf",
                                              "models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if (!path) {
        SKIP("../shared/data/models/SmolLM2-135M-Instruct.Q4_1.gguf is absent (make fetch-smollm2 gets it): "
             "SmolLM2 tests not run");
        return check_summary();
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    model *m = NULL;
    qlab_status st = checkpoint_load(path, &m);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    CHECKF(st == QLAB_OK, "%s", qlab_last_error());
    if (st != QLAB_OK) return check_summary();
    printf("SmolLM2-135M loaded in %.2f s\n",
           (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec));
    const model_config *c = model_get_config(m);
    CHECK(c->dim == 576 && c->hidden_dim == 1536 && c->n_layers == 30 && c->n_heads == 9 &&
          c->n_kv_heads == 3 && c->vocab_size == 49152 && c->seq_len == 8192);
    CHECK(c->rope_theta == 100000.0f && c->norm_eps == 9.999999747378752e-06f && c->shared_classifier);
    CHECK(model_num_params(c) == 134515008);
    model_params *p = model_get_params(m);
    size_t D = 576, H = 1536;
    /* Q8_0, Q4_1 (first and last layer) and F32 tensors, bit for bit */
    CHECK(sha_is(p->token_embedding, 49152 * D,
                 "3fd491c8066dd9dc1a2bf6796701526c82817d95c0ecabacdef3013c2b8bbbaa"));
    CHECK(sha_is(p->wq, D * D, "aa74111ad24c3624a20374d2026fd1f50bfe2520252e3c9aef4a666a28593cc8"));
    CHECK(sha_is(p->w2 + 29 * H * D, H * D,
                 "c19605745425a11e704e305ce3d27b632c406195d39eb3377e9cfb140ac643d1"));
    CHECK(sha_is(p->rms_final, D, "3b87f8e27335e67fc08f159cabfd2d18f205d6c5b225a6f978153552bf01d559"));
    CHECK(p->wcls == p->token_embedding);

    /* one 256-token window against the float64 numpy forward */
    int targets[256];
    for (int i = 0; i < 256; i++)
        targets[i] = i + 1 < 256 ? wiki_ids[i + 1] : -1;
    float loss = 0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    st = model_forward(m, wiki_ids, targets, 1, 256, NULL, &loss);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    CHECKF(st == QLAB_OK, "%s", qlab_last_error());
    printf("256-token forward in %.2f s: mean NLL %.7f (numpy float64: 3.4936688931)\n",
           (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec), loss);
    CHECK_NEAR(loss, 3.4936688931, 1e-4 * 3.4936688931);
    model_free(m);

    /* what qlab ppl --data wiki.test.raw encodes without --tokenizer: the GGUF's own tokenizer, no BOS
     * (tokenizer.ggml.add_bos_token is false), the ids of Hugging Face's tokenizers */
    const char *wiki = shared_data_path("eval/wiki.test.raw");
    if (wiki) {
        int *ids = NULL;
        int64_t n = 0;
        CHECKF(eval_load_tokens(wiki, NULL, path, &ids, &n) == QLAB_OK, "%s", qlab_last_error());
        CHECK(n == 303415 && ids && !memcmp(ids, wiki_ids + 1, 200 * sizeof(int)));
        free(ids);
    } else {
        SKIP("../shared/data/eval/wiki.test.raw is absent: embedded-tokenizer check not run");
    }
    return check_summary();
}
