/* Tests of eval/mmlu_eval: which tokens are compared (qlora's single-token letters with the Llama 2
 * tokenizer; tok512's split letters), the multi-token log-likelihood against a plain reference that scores
 * each letter with its own forward, an end-to-end evaluation of stories260K on a few subjects in both prompt
 * modes (counts, determinism, the picks against a manual loop), the Wilson interval against published
 * values, and bad subject names. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/check.h"
#include "core/base/common.h"
#include "core/model/checkpoint.h"
#include "core/model/gemm_bf16.h"
#include "core/model/model.h"
#include "core/text/tokenizer.h"
#include "core/model/lora.h"
#include "core/model/lora_peft.h"
#include "core/results/results.h"
#include "eval/mmlu_eval.h"
#include "tests/test_util.h"

#define MMLU_ARCHIVE "mmlu/mmlu_dev_test_csv.tar.gz"
#define QLORA_ZERO_SHOT "mmlu/qlora_zero_shot_mmlu_val.json"

static void test_wilson(void) {
    double lo, hi;
    /* Wilson score 95% intervals, the worked examples of Newcombe (1998): 5/10 -> 0.2366..0.7634,
     * 0/10 -> 0..0.2775, 81/263 -> 0.2553..0.3662. */
    mmlu_wilson95(5, 10, &lo, &hi);
    CHECK_NEAR(lo, 0.2366, 5e-5);
    CHECK_NEAR(hi, 0.7634, 5e-5);
    mmlu_wilson95(0, 10, &lo, &hi);
    CHECK_NEAR(lo, 0.0, 1e-12);
    CHECK_NEAR(hi, 0.2775, 5e-5);
    mmlu_wilson95(81, 263, &lo, &hi);
    CHECK_NEAR(lo, 0.2553, 5e-5);
    CHECK_NEAR(hi, 0.3662, 5e-5);
    mmlu_subject_result subs[2] = {{"a", 10, 5}, {"b", 20, 20}};
    mmlu_eval_result r = {.subjects = subs, .n_subjects = 2, .n = 30, .correct = 25};
    double macro = mmlu_macro_accuracy(&r, &lo, &hi);
    /* (0.5 + 1) / 2; variance (0.25/10 + 0) / 4. */
    CHECK_NEAR(macro, 0.75, 1e-12);
    CHECK_NEAR(hi - macro, 1.959963984540054 * sqrt(0.025) / 2, 1e-12);
}

/* Llama 2's SentencePiece: "A" -> "▁A" (id 319), "B" -> 350, "C" -> 315, "D" -> 360, the ids qlora's
 * abcd_idx holds for LLaMA; scoring is then the plain logit comparison at the last position. */
static void test_llama_letters(void) {
    const char *path = shared_data_path("models/tokenizer.bin");
    if (!path) {
        SKIP("models/tokenizer.bin absent (shared data not available)");
        return;
    }
    tokenizer *tok = NULL;
    CHECK(tokenizer_load(path, &tok) == QLAB_OK);
    mmlu_scoring s;
    CHECK(mmlu_scoring_init(tok, &s) == QLAB_OK);
    CHECK(s.single_token);
    CHECK(s.tokens[0][0] == 319 && s.tokens[1][0] == 350 && s.tokens[2][0] == 315 && s.tokens[3][0] == 360);
    /* " A" with SentencePiece's dummy prefix is "▁▁A" or "▁" + "▁A": not qlora's tokens, and not one token.
     */
    mmlu_scoring spaced;
    CHECK(mmlu_scoring_init_spaced(tok, &spaced) == QLAB_OK);
    CHECK(!spaced.single_token && spaced.tokens[0][spaced.n_tokens[0] - 1] == 319);
    /* A random model with that vocabulary: the pick is the argmax of the four logits at the last position. */
    model_config c = {.dim = 32,
                      .hidden_dim = 64,
                      .n_layers = 1,
                      .n_heads = 4,
                      .n_kv_heads = 2,
                      .vocab_size = 32000,
                      .seq_len = 64,
                      .norm_eps = 1e-5f,
                      .rope_theta = 10000.0f,
                      .shared_classifier = 1};
    model *m = NULL;
    CHECK(model_create(&m, &c) == QLAB_OK);
    size_t count;
    float *w = model_get_param_buffer(m, &count);
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i < count; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        w[i] = (float)((double)(x >> 11) / 9007199254740992.0 - 0.5);
    }
    int ids[16 + MMLU_MAX_LETTER_TOKENS] = {1, 450, 1234, 29901, 319, 29889, 22550, 29901};
    float *logits = malloc(sizeof(float) * MMLU_MAX_LETTER_TOKENS * 32000);
    float *ref = malloc(sizeof(float) * 8 * 32000);
    /* The scores are the logits model_forward gives at the last position: exactly with bf16 compute (qlab's
     * kernels give a row the same bits whatever the other rows), within 1e-5 of the row's largest logit in
     * fp32 (OpenBLAS's sums over the one scored row instead of all eight). */
    for (int bf16 = 0; bf16 < 2; bf16++) {
        model_set_compute(m, bf16 ? QLAB_COMPUTE_BF16 : QLAB_COMPUTE_FP32);
        if (bf16) CHECK(bf16_force_path("ref") == QLAB_OK);
        int pick = -1;
        double score[4], top = 0;
        CHECK(mmlu_scoring_pick(m, &s, ids, 8, logits, &pick, score) == QLAB_OK);
        CHECK(model_forward(m, ids, NULL, 1, 8, ref, NULL) == QLAB_OK);
        const float *last = ref + 7 * 32000;
        int want = 0;
        for (int j = 1; j < 4; j++)
            if (last[s.tokens[j][0]] > last[s.tokens[want][0]]) want = j;
        CHECK(pick == want);
        for (int v = 0; v < 32000; v++)
            top = fabs(last[v]) > top ? fabs(last[v]) : top;
        for (int j = 0; j < 4; j++)
            CHECKF(bf16 ? score[j] == last[s.tokens[j][0]]
                        : fabs(score[j] - last[s.tokens[j][0]]) <= 1e-5 * top,
                   "%s: letter %d scored %.9g, the forward's logit is %.9g", bf16 ? "bf16" : "fp32", j,
                   score[j], (double)last[s.tokens[j][0]]);
    }
    bf16_force_path("auto");
    model_set_compute(m, QLAB_COMPUTE_FP32);
    free(ref);
    free(logits);
    model_free(m);
    tokenizer_free(tok);
}

/* SmolLM2's byte-level BPE (embedded in its GGUF): qlora's rule compares "A".."D" = 49..52, while in
 * "Answer: A" the letter is the token "ĠA" = 330; --letter-space compares 330/389/340/422. */
static void test_smollm2_letters(void) {
    const char *path = shared_or_fetched_path("models/SmolLM2-135M-Instruct.Q4_1.gguf",
                                              "models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if (!path) {
        SKIP("SmolLM2 GGUF absent (shared data not available)");
        return;
    }
    tokenizer *tok = NULL;
    if (tokenizer_load(path, &tok) != QLAB_OK) {
        CHECKF(0, "%s", qlab_last_error());
        return;
    }
    mmlu_scoring s, spaced;
    CHECK(mmlu_scoring_init(tok, &s) == QLAB_OK && s.single_token);
    CHECK(s.tokens[0][0] == 49 && s.tokens[1][0] == 50 && s.tokens[2][0] == 51 && s.tokens[3][0] == 52);
    CHECK(mmlu_scoring_init_spaced(tok, &spaced) == QLAB_OK && spaced.single_token);
    CHECK(spaced.tokens[0][0] == 330 && spaced.tokens[1][0] == 389 && spaced.tokens[2][0] == 340 &&
          spaced.tokens[3][0] == 422);
    int *ids = NULL;
    size_t n = 0;
    CHECK(tokenizer_encode(tok, "Answer: A", 9, 0, &ids, &n) == QLAB_OK && n == 3 && ids[2] == 330);
    free(ids);
    tokenizer_free(tok);
}

/* tok512 splits A, C, D into " " + letter but has " B": the log-likelihood path, checked against one
 * forward per letter over prompt + all of that letter's tokens. The two forwards run over sequences of
 * different lengths, so the prefix's logits agree bit for bit only where every row's arithmetic is
 * independent of the number of rows: qlab's own bf16 kernels (checked with tol 1e-9 on the scalar reference
 * path), not OpenBLAS's sgemm, whose kernels on some CPUs sum a row in an order that depends on the row
 * count (measured on a Xeon with OpenBLAS 0.3.21's Cooperlake kernels: ~1e-6 relative; fp32 checked within
 * rel_tol). */
static void check_tok512_letters(const tokenizer *tok, model *m, double rel_tol) {
    mmlu_scoring s;
    CHECK(mmlu_scoring_init(tok, &s) == QLAB_OK);
    CHECK(!s.single_token);
    CHECK(s.n_tokens[0] == 2 && s.n_tokens[1] == 1 && s.n_tokens[2] == 2 && s.n_tokens[3] == 2);
    const char *prompt =
        "Tom had a red ball. What color was the ball?\nA. red\nB. blue\nC. green\nD. pink\nAnswer:";
    int *enc = NULL;
    size_t n = 0;
    CHECK(tokenizer_encode(tok, prompt, strlen(prompt), 1, &enc, &n) == QLAB_OK);
    int vocab = model_get_config(m)->vocab_size;
    int *ids = malloc((n + MMLU_MAX_LETTER_TOKENS) * sizeof(int));
    memcpy(ids, enc, n * sizeof(int));
    float *logits = malloc(sizeof(float) * (n + MMLU_MAX_LETTER_TOKENS) * vocab);
    int pick = -1;
    double score[4];
    CHECK(mmlu_scoring_pick(m, &s, ids, (int)n, logits, &pick, score) == QLAB_OK);
    int want = 0;
    double ref[4];
    for (int j = 0; j < 4; j++) {
        int len = (int)n + s.n_tokens[j];
        int *seq = malloc(len * sizeof(int));
        memcpy(seq, enc, n * sizeof(int));
        memcpy(seq + n, s.tokens[j], s.n_tokens[j] * sizeof(int));
        float *lg = malloc(sizeof(float) * len * vocab);
        CHECK(model_forward(m, seq, NULL, 1, len, lg, NULL) == QLAB_OK);
        ref[j] = 0;
        for (int i = 0; i < s.n_tokens[j]; i++) {
            const float *row = lg + (size_t)(n - 1 + i) * vocab;
            double mx = row[0], sum = 0;
            for (int v = 1; v < vocab; v++)
                mx = row[v] > mx ? row[v] : mx;
            for (int v = 0; v < vocab; v++)
                sum += exp(row[v] - mx);
            ref[j] += row[s.tokens[j][i]] - mx - log(sum);
        }
        if (ref[j] > ref[want]) want = j;
        free(lg);
        free(seq);
    }
    for (int j = 0; j < 4; j++)
        CHECK_NEAR(score[j], ref[j], rel_tol > 0 ? rel_tol * fabs(ref[j]) : 1e-9);
    CHECK(pick == want);
    free(logits);
    free(ids);
    free(enc);
}

static void test_end_to_end(const tokenizer *tok, model *m) {
    const char *archive = shared_data_path(MMLU_ARCHIVE), *zs = shared_data_path(QLORA_ZERO_SHOT);
    if (!archive || !zs) {
        SKIP("MMLU files absent (shared data not available)");
        return;
    }
    mmlu_eval_options opt = {.mode = MMLU_EVAL_KSHOT,
                             .data_path = archive,
                             .shots = 5,
                             .subjects = "anatomy,abstract_algebra",
                             .limit = 3,
                             .max_len = 160};
    int count = 0;
    CHECK(mmlu_eval_count(&opt, &count) == QLAB_OK && count == 6);
    mmlu_eval_result a, b;
    CHECK(mmlu_evaluate(m, tok, &opt, &a) == QLAB_OK);
    CHECK(mmlu_evaluate(m, tok, &opt, &b) == QLAB_OK);
    CHECK(a.n == 6 && a.n_subjects == 2 && !strcmp(a.subjects[0].name, "abstract_algebra"));
    CHECK(a.subjects[0].n == 3 && a.subjects[1].n == 3);
    CHECK(a.correct == b.correct && !memcmp(a.predicted, b.predicted, sizeof a.predicted));
    CHECK(a.predicted[0] + a.predicted[1] + a.predicted[2] + a.predicted[3] == 6);
    /* 160 tokens of tok512 hold no 5-shot prompt: every question falls back to fewer shots. */
    CHECK(a.mean_shots < 5);
    mmlu_eval_result_free(&a);
    mmlu_eval_result_free(&b);

    opt = (mmlu_eval_options){
        .mode = MMLU_EVAL_QLORA_ZEROSHOT, .data_path = zs, .subjects = "astronomy", .limit = 4};
    CHECK(mmlu_evaluate(m, tok, &opt, &a) == QLAB_OK);
    CHECK(a.n == 4 && a.n_subjects == 1 && !strcmp(a.subjects[0].name, "astronomy"));
    mmlu_eval_result_free(&a);

    opt.subjects = "astronomy,astrology";
    CHECK(mmlu_evaluate(m, tok, &opt, &a) == QLAB_ERR_ARG);
    CHECKF(strstr(qlab_last_error(), "astrology") && strstr(qlab_last_error(), zs), "%s", qlab_last_error());
    opt = (mmlu_eval_options){.mode = MMLU_EVAL_KSHOT, .data_path = archive, .shots = 7};
    CHECK(mmlu_evaluate(m, tok, &opt, &a) == QLAB_ERR_ARG);
}

/* The command: results file with both tables, a report, a PEFT adapter directory (B = 0 at creation, so
 * the same answers as the base), and one error line for an unknown subject. */
static void test_cli(const char *model_path, const char *tok_path, const model *m) {
    const char *zs = shared_data_path(QLORA_ZERO_SHOT), *build = getenv("QLAB_BUILD");
    char qlab[512], cmd[4096];
    snprintf(qlab, sizeof qlab, "%s/bin/qlab", build ? build : "build");
    if (!zs || access(qlab, X_OK) != 0) {
        SKIP("qlab binary or qlora prompts absent");
        return;
    }
    test_tmp_dir_create("mmlu_eval");
    lora_config lc = {.targets = LORA_TARGETS_ALL, .rank = 4, .alpha = 8, .seed = 3};
    lora_set *l = NULL;
    CHECK(lora_create(&l, model_get_config(m), &lc) == QLAB_OK);
    CHECK(lora_save_peft(l, tmp_path("adapter"), NULL) == QLAB_OK);
    lora_free(l);
    for (int with_adapter = 0; with_adapter < 2; with_adapter++) {
        snprintf(cmd, sizeof cmd,
                 "QLAB_QUIET=1 %s mmlu --model %s --tokenizer %s --qlora-zero-shot --data %s --subjects "
                 "astronomy,virology --limit 2 --dtype nf4 --double-quant %s%s --out %s >/dev/null 2>&1",
                 qlab, model_path, tok_path, zs, with_adapter ? "--adapter " : "",
                 with_adapter ? tmp_path("adapter") : "", tmp_path(with_adapter ? "b.h5" : "a.h5"));
        CHECKF(run_shell(cmd) == 0, "%s", cmd);
    }
    results_file a, b;
    CHECK(results_read(tmp_path("a.h5"), &a) == QLAB_OK);
    CHECK(results_read(tmp_path("b.h5"), &b) == QLAB_OK);
    const results_table_data *ta = results_file_table(&a, "summary"), *tb = results_file_table(&b, "summary");
    CHECK(ta && tb && ta->nrows == 2 && results_file_table(&a, "subjects")->nrows == 2);
    if (ta && tb) {
        const results_column *ca = results_table_find_column(ta, "accuracy"),
                             *cb = results_table_find_column(tb, "accuracy");
        CHECK(ca && cb && ca->f64[0] == cb->f64[0]);
    }
    results_file_free(&a);
    results_file_free(&b);
    CHECK(access(tmp_path("a.md"), R_OK) == 0);
    snprintf(cmd, sizeof cmd,
             "%s mmlu --model %s --tokenizer %s --qlora-zero-shot --data %s --subjects astrology --out %s "
             "2>%s >/dev/null",
             qlab, model_path, tok_path, zs, tmp_path("c.h5"), tmp_path("err.txt"));
    CHECK(run_shell(cmd) == 1);
    char *err = NULL;
    size_t len = 0;
    CHECK(qlab_read_file(tmp_path("err.txt"), &err, &len) == QLAB_OK);
    CHECKF(err && strstr(err, "astrology") && strchr(err, '\n') == err + len - 1, "%s", err ? err : "");
    CHECK(access(tmp_path("c.h5"), F_OK) != 0);
    free(err);
    test_tmp_dir_remove();
}

int main(void) {
    test_wilson();
    test_llama_letters();
    test_smollm2_letters();
    const char *mp = shared_data_path("models/stories260K.bin"), *tp = shared_data_path("models/tok512.bin");
    if (!mp || !tp) {
        SKIP("stories260K absent (shared data not available)");
        return check_summary();
    }
    tokenizer *tok = NULL;
    model *m = NULL;
    CHECK(tokenizer_load(tp, &tok) == QLAB_OK);
    CHECK(checkpoint_load(mp, &m) == QLAB_OK);
    check_tok512_letters(tok, m, 1e-5); /* fp32 compute: OpenBLAS */
    if (bf16_force_path("ref") == QLAB_OK) {
        model_set_compute(m, QLAB_COMPUTE_BF16);
        check_tok512_letters(tok, m, 0); /* bit for bit: only the log-sum-exp order could differ */
        model_set_compute(m, QLAB_COMPUTE_FP32);
        bf16_force_path("auto");
    }
    test_end_to_end(tok, m);
    test_cli(mp, tp, m);
    model_free(m);
    tokenizer_free(tok);
    return check_summary();
}
