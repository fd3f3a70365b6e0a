/* Tests of eval/rouge: ROUGE-L against values produced by Google's rouge-score package (0.1.2,
 * rouge_scorer.RougeScorer(["rougeL"]) with its defaults) on hand-picked strings and on every OASST1 reply
 * of the QLoRA evaluation file, and the two-row LCS against a full-table reference on random sequences. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/check.h"
#include "core/base/common.h"
#include "core/base/rng.h"
#include "datasets/instruct.h"
#include "eval/rouge.h"

#define OASST_FILE "finetune/qlora_eval/prompts/oa_questions.jsonl.gz"

/* Strings and rouge-score's (precision, recall, F) for them, from
 *   RougeScorer(["rougeL"]).score(target, prediction)["rougeL"] and its tokenizer's token count. */
static const struct {
    const char *target, *prediction;
    int n_target, n_prediction;
    double p, r, f;
} cases[] = {
    {"The quick brown fox", "the QUICK fox jumps", 4, 4, 0.75, 0.75, 0.75},
    {"Hello, world!!", "hello world", 2, 2, 1.0, 1.0, 1.0},
    {"", "abc", 0, 1, 0, 0, 0},
    {"...", "!!!", 0, 0, 0, 0, 0},
    /* Python lowercases U+212A KELVIN SIGN to "k" and U+0130 to "i" + a combining dot. */
    {"K\xe2\x84\xaa"
     "elvin \xc4\xb0stanbul",
     "kkelvin i stanbul", 3, 3, 1.0, 1.0, 1.0},
    {"caf\xc3\xa9 na\xc3\xafve \xc3\xbc"
     "ber",
     "caf na ve ber", 4, 4, 1.0, 1.0, 1.0},
    {"a1b2 c3_d4", "a1b2 c3 d4", 3, 3, 1.0, 1.0, 1.0},
    {"the cat sat on the mat", "the mat sat on the cat", 6, 6, 0.6666666666666666, 0.6666666666666666,
     0.6666666666666666},
};

static void test_cases(void) {
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        rouge_score s;
        CHECK(rouge_l(cases[i].target, cases[i].prediction, &s) == QLAB_OK);
        CHECKF(s.n_target == cases[i].n_target && s.n_prediction == cases[i].n_prediction, "case %zu: %d %d",
               i, s.n_target, s.n_prediction);
        /* Same arithmetic as Python on the same integers: equal to the last bit. */
        CHECKF(s.precision == cases[i].p && s.recall == cases[i].r && s.fmeasure == cases[i].f,
               "case %zu: %.17g %.17g %.17g", i, s.precision, s.recall, s.fmeasure);
    }
    rouge_tokens t;
    CHECK(rouge_tokenize("Don't STOP--me\xff"
                         "now 42x",
                         &t) == QLAB_OK);
    const char *want[] = {"don", "t", "stop", "me", "now", "42x"};
    CHECK(t.n == 6);
    for (int i = 0; i < t.n && i < 6; i++)
        CHECK(strcmp(t.text + t.start[i], want[i]) == 0);
    rouge_tokens_free(&t);
}

/* Full (n+1)x(m+1) table, the textbook recurrence, as rouge_scorer._lcs_table. */
static int lcs_reference(const int *a, int n, const int *b, int m) {
    int *tab = calloc((size_t)(n + 1) * (m + 1), sizeof(int));
    for (int i = 1; i <= n; i++)
        for (int j = 1; j <= m; j++) {
            int *c = &tab[i * (m + 1) + j];
            if (a[i - 1] == b[j - 1])
                *c = tab[(i - 1) * (m + 1) + j - 1] + 1;
            else
                *c = tab[(i - 1) * (m + 1) + j] > tab[i * (m + 1) + j - 1] ? tab[(i - 1) * (m + 1) + j]
                                                                           : tab[i * (m + 1) + j - 1];
        }
    int r = tab[n * (m + 1) + m];
    free(tab);
    return r;
}

static void test_lcs_random(void) {
    rng_state r;
    rng_seed(&r, 11);
    char ta[400], tb[400];
    int a[100], b[100];
    for (int trial = 0; trial < 300; trial++) {
        int n = (int)(rng_u64(&r) % 60), m = (int)(rng_u64(&r) % 60), k = 1 + (int)(rng_u64(&r) % 5);
        size_t wa = 0, wb = 0;
        for (int i = 0; i < n; i++)
            a[i] = (int)(rng_u64(&r) % k), wa += sprintf(ta + wa, "w%d ", a[i]);
        for (int j = 0; j < m; j++)
            b[j] = (int)(rng_u64(&r) % k), wb += sprintf(tb + wb, "W%d,", b[j]);
        ta[wa] = tb[wb] = 0;
        rouge_score s;
        CHECK(rouge_l(ta, tb, &s) == QLAB_OK);
        int want = (n && m) ? lcs_reference(a, n, b, m) : 0;
        CHECKF(s.lcs == want, "trial %d: lcs %d, reference %d", trial, s.lcs, want);
    }
}

/* Every OASST1 reply against the next one, and against its own prompt: aggregates over all pairs as
 * rouge-score computed them (sum of F to 1e-12: summing 952 doubles in the same order as Python; the LCS
 * sums and the token counts are integers and must match exactly). */
static void test_oasst1(void) {
    const char *path = shared_data_path(OASST_FILE);
    if (!path) {
        SKIP("%s absent (shared data not available)", OASST_FILE);
        return;
    }
    instruct_set s;
    if (instruct_load_oasst1(path, &s) != QLAB_OK) {
        CHECKF(0, "%s", qlab_last_error());
        return;
    }
    CHECK(s.count == 953);
    for (int mode = 0; mode < 2; mode++) {
        int n = mode == 0 ? s.count - 1 : s.count;
        double sum_f = 0;
        long long sum_lcs = 0, weighted_lcs = 0, sum_tokens = 0;
        for (int i = 0; i < n; i++) {
            const char *target = s.records[i].response;
            const char *prediction = mode == 0 ? s.records[i + 1].response : s.records[i].prompt;
            rouge_score sc;
            CHECK(rouge_l(target, prediction, &sc) == QLAB_OK);
            sum_f += sc.fmeasure;
            sum_lcs += sc.lcs;
            weighted_lcs += (long long)(i + 1) * sc.lcs;
            sum_tokens += sc.n_target + sc.n_prediction;
            if (mode == 0 && i == 1) CHECK(sc.precision == 0.21875 && sc.fmeasure == 0.048442906574394456);
            if (mode == 0 && i == 2) CHECK(sc.recall == 0.09375 && sc.fmeasure == 0.1111111111111111);
            if (mode == 0 && i == 7)
                CHECK(sc.precision == 0.07894736842105263 && sc.recall == 0.03488372093023256);
        }
        /* rouge-score: consecutive replies (952, 85.37945275561958, 12102, 5775465, 250805);
         * reply vs its prompt (953, 125.17965066389577, 15152, 7314926, 207503). */
        double want_f = mode == 0 ? 85.37945275561958 : 125.17965066389577;
        long long want_lcs = mode == 0 ? 12102 : 15152, want_w = mode == 0 ? 5775465 : 7314926,
                  want_tokens = mode == 0 ? 250805 : 207503;
        CHECK_NEAR(sum_f, want_f, 1e-12);
        CHECKF(sum_lcs == want_lcs && weighted_lcs == want_w && sum_tokens == want_tokens,
               "mode %d: lcs %lld weighted %lld tokens %lld", mode, sum_lcs, weighted_lcs, sum_tokens);
    }
    instruct_set_free(&s);
}

int main(void) {
    test_cases();
    test_lcs_random();
    test_oasst1();
    return check_summary();
}
