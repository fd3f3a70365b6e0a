/* Tests of eval/judge: the review parsers, rating files (well-formed and malformed, written to /tmp), the
 * tar.gz reader, the reference-answer detection, Table 6's relative score on a hand-computed example, Elo
 * on hand-computed matches, deterministic orderings, and on the released QLoRA ratings (skipped when
 * ../shared/data is absent) the paper's Table 6 values and Elo order. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "tests/check.h"
#include "core/base/common.h"
#include "core/base/tar.h"
#include "eval/judge.h"
#include "tests/test_util.h"

static void test_review_parsers(void) {
    double a = 0, b = 0;
    CHECK(judge_parse_score_pair("8 7\nBoth assistants...", &a, &b) && a == 8 && b == 7);
    CHECK(judge_parse_score_pair("9 8.5\n", &a, &b) && a == 9 && b == 8.5);
    CHECK(judge_parse_score_pair("10,9", &a, &b) && a == 10 && b == 9); /* ',' read as ' ' */
    CHECK(!judge_parse_score_pair("8, 7\n", &a, &b));                   /* -> "8  7": three tokens */
    CHECK(!judge_parse_score_pair("First, I will solve the problem", &a, &b));
    CHECK(!judge_parse_score_pair("8 7 6", &a, &b));
    CHECK(!judge_parse_score_pair("", &a, &b));
    CHECK(judge_recover_score_pair("...so scores (8, 1) then\n\n(10, 1)", &a, &b) && a == 10 && b == 1);
    CHECK(judge_recover_score_pair("Scores:\nAssistant 1: 4 (wrong)\nAssistant 2: 10 (right)\n", &a, &b) &&
          a == 4 && b == 10);
    CHECK(!judge_recover_score_pair("I would rate both highly.", &a, &b));
    CHECK(judge_parse_verdict("Long review.\n\n2\n") == 2);
    CHECK(judge_parse_verdict("Review\n 3 ") == 3);
    CHECK(judge_parse_verdict("error") == 0);
    CHECK(judge_parse_verdict("I choose 3.") == 0);
    CHECK(judge_parse_verdict("Review\n4") == 0);
    char key[64];
    judge_system_key("30b-guanaco-vicuna-generations-topp0.9-temp0.7", key, sizeof key);
    CHECK(!strcmp(key, "30b-guanaco"));
    judge_system_key("answer-gpt35", key, sizeof key);
    CHECK(!strcmp(key, "gpt35"));
}

/* Writes text to /tmp/<name> and parses it back through the same path a program uses. */
static qlab_status parse_tmp(const char *name, const char *text, judge_kind kind, judge_file *out, char *path,
                             size_t n) {
    char dir[64];
    snprintf(dir, sizeof dir, "/tmp/qlab_test_judge_%ld", (long)getpid());
    mkdir(dir, 0700); /* the file name carries the system names, so the test's id goes in the folder */
    snprintf(path, n, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (!f) return qlab_fail(QLAB_ERR_IO, "%s: cannot write", path);
    fputs(text, f);
    fclose(f);
    char *data = NULL;
    size_t len = 0;
    qlab_status st = qlab_read_file(path, &data, &len);
    if (st == QLAB_OK) st = judge_parse_file(path, data, len, kind, out);
    free(data);
    unlink(path);
    rmdir(dir);
    return st;
}

#define LINE(q, a1, a2, text, score)                                                                         \
    "{\"review_id\": \"r\", \"question_id\": " #q ", \"answer1_id\": \"" a1 "\", \"answer2_id\": \"" a2      \
    "\", \"reviewer_id\": 1, \"metadata\": {}, \"text\": \"" text "\", \"score\": " score "}\n"

static void test_rating_files(void) {
    judge_file f;
    char path[256];
    /* Well-formed relative file, one review with the failure marker and scores in the text. */
    const char *good = LINE(1, "r1", "x1", "8 7\\nGood.", "[8.0, 7.0]") "\n" LINE(
        2, "r2", "x2", "First, I solve it.\\n\\nAssistant 1: 10\\nAssistant 2: 3", "[-1, -1]")
        LINE(3, "r3", "x3", "no numbers here", "[-1, -1]");
    CHECK(parse_tmp("x-vs-gpt-3.5-gpt4-reviewer.jsonl", good, JUDGE_RELATIVE, &f, path, sizeof path) ==
          QLAB_OK);
    CHECK(f.count == 3);
    CHECK(f.system[0] && !strcmp(f.system[0], "x") && f.system[1] && !strcmp(f.system[1], "gpt-3.5"));
    if (f.count == 3) {
        CHECK(f.ratings[0].source == JUDGE_FROM_FIELD && f.ratings[0].score[0] == 8 &&
              f.ratings[0].score[1] == 7 && !strcmp(f.ratings[0].answer_id[1], "x1"));
        CHECK(f.ratings[1].source == JUDGE_FROM_TEXT && f.ratings[1].score[0] == 10 &&
              f.ratings[1].score[1] == 3);
        CHECK(f.ratings[2].source == JUDGE_MISSING);
    }
    judge_file_free(&f);

    /* Pairwise file: verdicts, -1 kept as "no verdict". */
    const char *pairwise = LINE(1, "a", "b", "Review.\\n1", "1") LINE(2, "a", "b", "error", "-1")
        LINE(3, "a", "b", "Review.\\n3", "3");
    CHECK(parse_tmp("answer-a-vs-b-gpt-4-reviewer-threeclass.jsonl", pairwise, JUDGE_PAIRWISE, &f, path,
                    sizeof path) == QLAB_OK);
    CHECK(f.count == 3 && f.ratings[0].verdict == 1 && f.ratings[1].verdict == 0 &&
          f.ratings[2].verdict == 3);
    CHECK(f.system[0] && !strcmp(f.system[0], "a"));
    judge_file_free(&f);

    /* Malformed files: one line naming the file and the line. */
    struct {
        const char *text, *expect;
        judge_kind kind;
    } bad[] = {
        {LINE(1, "r", "x", "8 7", "[8, 7]") "{\"question_id\": 2, oops\n", ":2: not a JSON object",
         JUDGE_RELATIVE},
        {LINE(1, "r", "x", "8 7", "[8, 7, 1]"), ":1: 'score' should be a pair", JUDGE_RELATIVE},
        {LINE(1, "r", "x", "8 7", "[80, 7]"), ":1: score [80, 7] outside 0..10", JUDGE_RELATIVE},
        {"\n" LINE(7, "r", "x", "8 7",
                   "[8, 7]") "{\"question_id\": 3, \"answer2_id\": \"x\", \"text\": \"\", "
                             "\"score\": [1, 2]}\n",
         ":3: 'answer1_id' missing", JUDGE_RELATIVE},
        {LINE(1.5, "r", "x", "8 7", "[8, 7]"), ":1: 'question_id' missing or not a non-negative integer",
         JUDGE_RELATIVE},
        {LINE(1, "r", "x", "5", "5"), ":1: verdict 5 is not 1, 2 or 3", JUDGE_PAIRWISE},
        {LINE(1, "r", "x", "1", "\"1\""), ":1: 'score' should be the integer", JUDGE_PAIRWISE},
        {"\n\n", "no ratings", JUDGE_PAIRWISE},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        qlab_status st =
            parse_tmp("a-vs-b-gpt4-reviewer.jsonl", bad[i].text, bad[i].kind, &f, path, sizeof path);
        const char *msg = qlab_last_error();
        CHECKF(st == QLAB_ERR_FORMAT && strstr(msg, path) && strstr(msg, bad[i].expect),
               "case %zu: status %d, message '%s'", i, (int)st, msg);
        CHECK(f.ratings == NULL && f.count == 0);
    }
    CHECK(parse_tmp("no-versus-here.jsonl", LINE(1, "r", "x", "8 7", "[8, 7]"), JUDGE_RELATIVE, &f, path,
                    sizeof path) == QLAB_ERR_FORMAT &&
          strstr(qlab_last_error(), "-vs-"));
}

/* Two systems x, y against reference r; file names deliberately disagree with the positions for x. */
static void test_relative_score(void) {
    const char *texts[3] = {
        /* Named x-first, but r is assistant 1 (like the released QLoRA-model files). */
        LINE(1, "r1", "x1", "", "[8, 6]") LINE(2, "r2", "x2", "", "[10, 5]"),
        /* x as assistant 1. */
        LINE(1, "x1", "r1", "", "[9, 9]") LINE(2, "x2", "r2", "", "[7, 8]"),
        LINE(1, "r1", "y1", "", "[5, 5]") LINE(2, "y2", "r2", "", "[4, 8]"),
    };
    const char *names[3] = {"x-vs-gpt-3.5-gpt4-reviewer.jsonl", "gpt-3.5-vs-x-gpt4-reviewer.jsonl",
                            "y-vs-gpt-3.5-gpt4-reviewer.jsonl"};
    judge_file files[3];
    char path[256];
    int ok = 1;
    for (int i = 0; i < 3; i++)
        ok &= parse_tmp(names[i], texts[i], JUDGE_RELATIVE, &files[i], path, sizeof path) == QLAB_OK;
    CHECK(ok);
    if (!ok) return;
    /* With only x's two files both answers of a question appear everywhere: ambiguous. */
    CHECK(judge_find_reference(files, 2) == QLAB_ERR_FORMAT && strstr(qlab_last_error(), "both answers"));
    CHECK(judge_find_reference(files, 3) == QLAB_OK);
    CHECK(files[0].ratings[0].reference == 0 && files[1].ratings[0].reference == 1 &&
          files[2].ratings[1].reference == 1);
    const judge_file *x[2] = {&files[0], &files[1]};
    judge_relative_score s;
    CHECK(judge_relative(x, 2, 500, 7, &s) == QLAB_OK);
    /* By hand: reference first, x scores 6 + 5 = 11 over 8 + 10 = 18 -> 61.111%; x first, 9 + 7 = 16 over
     * 9 + 8 = 17 -> 94.118%; mean 77.614%. Exact sums of small integers: 1e-9. */
    CHECK_NEAR(s.percent[0], 1100.0 / 18.0, 1e-9);
    CHECK_NEAR(s.percent[1], 1600.0 / 17.0, 1e-9);
    CHECK_NEAR(s.mean, 0.5 * (1100.0 / 18.0 + 1600.0 / 17.0), 1e-9);
    CHECK(s.n_questions[0] == 2 && s.n_questions[1] == 2);
    /* Two questions: every resample is one of four question multisets; the interval must hold the mean's
     * resampled values, so it lies inside [min, max] of those and contains neither end outside. */
    CHECK(s.ci95_low <= s.mean + 1e-9 && s.ci95_high >= s.mean - 1e-9 && s.ci95_low > 40 &&
          s.ci95_high < 110);
    judge_relative_score again;
    CHECK(judge_relative(x, 2, 500, 7, &again) == QLAB_OK && again.ci95_low == s.ci95_low &&
          again.ci95_high == s.ci95_high);
    for (int i = 0; i < 3; i++)
        judge_file_free(&files[i]);
}

static void test_elo(void) {
    double ra = 1000, rb = 1000;
    judge_elo_update(&ra, &rb, 1.0, 32);
    CHECK(ra == 1016 && rb == 984); /* equal ratings: expected 0.5, so exactly +-K/2 */
    ra = rb = 1000;
    judge_elo_update(&ra, &rb, 0.5, 32);
    CHECK(ra == 1000 && rb == 1000);

    /* A beats B, then B beats A: 1016/984, then E_B = 1/(1 + 10^(32/400)) = 0.4540780 and B gains
     * 32 (1 - E_B) = 17.4695: B 1001.46950, A 998.53050. Reversed order ends with A ahead by the same. */
    judge_match m[2] = {{{0, 1}, 1.0}, {{0, 1}, 0.0}};
    double r[2];
    CHECK(judge_elo_play(m, 2, NULL, 2, 1000, 32, r) == QLAB_OK);
    CHECK_NEAR(r[0], 998.5304984710245, 1e-9); /* double arithmetic, two updates: 1e-9 is generous */
    CHECK_NEAR(r[1], 1001.4695015289755, 1e-9);
    int reversed[2] = {1, 0};
    CHECK(judge_elo_play(m, 2, reversed, 2, 1000, 32, r) == QLAB_OK);
    CHECK_NEAR(r[0], 1001.4695015289755, 1e-9);
    CHECK(judge_elo_play(m, 2, NULL, 1, 1000, 32, r) == QLAB_ERR_ARG); /* player 1 out of range */
    judge_match bad = {{0, 0}, 1.0};
    CHECK(judge_elo_play(&bad, 1, NULL, 2, 1000, 32, r) == QLAB_ERR_ARG);

    /* Orderings: deterministic for a seed, independent of the thread count, different for another seed;
     * with only these two orders possible, every ordering ends at one of the two hand values. */
    enum { N = 64, P = 3 };
    judge_match three[5] = {{{0, 1}, 1}, {{1, 2}, 0.5}, {{2, 0}, 0}, {{0, 2}, 1}, {{1, 0}, 1}};
    double *a = calloc(N * P, sizeof *a), *b = calloc(N * P, sizeof *b), *c = calloc(N * P, sizeof *c);
    CHECK(judge_elo_orderings(three, 5, P, 1000, 32, N, 99, a) == QLAB_OK);
#ifdef _OPENMP
    int threads = omp_get_max_threads();
    omp_set_num_threads(threads > 1 ? 1 : 2);
#endif
    CHECK(judge_elo_orderings(three, 5, P, 1000, 32, N, 99, b) == QLAB_OK);
#ifdef _OPENMP
    omp_set_num_threads(threads);
#endif
    CHECK(memcmp(a, b, sizeof(double) * N * P) == 0);
    CHECK(judge_elo_orderings(three, 5, P, 1000, 32, N, 100, c) == QLAB_OK);
    CHECK(memcmp(a, c, sizeof(double) * N * P) != 0);
    int conserved = 1, varied = 0;
    for (int t = 0; t < N; t++) {
        double sum = a[t * P] + a[t * P + 1] + a[t * P + 2];
        conserved &= fabs(sum - 3000) < 1e-9; /* Elo moves points between players only */
        varied |= a[t * P] != a[0];
    }
    CHECK(conserved && varied);
    free(a);
    free(b);
    free(c);
    CHECK(judge_elo_orderings(three, 5, P, 1000, 32, 0, 1, r) == QLAB_ERR_ARG);

    /* Two orderings only for two matches: the mean over many orderings lies between the two endings. */
    double two[2 * 200];
    CHECK(judge_elo_orderings(m, 2, 2, 1000, 32, 200, 5, two) == QLAB_OK);
    int only_two = 1;
    for (int t = 0; t < 200; t++)
        only_two &=
            fabs(two[2 * t] - 998.5304984710245) < 1e-9 || fabs(two[2 * t] - 1001.4695015289755) < 1e-9;
    CHECK(only_two);
}

static void test_archive(void) {
    char dir[128], command[1024], tgz[160];
    snprintf(dir, sizeof dir, "/tmp/qlab_test_tar_archive_%ld", (long)getpid());
    snprintf(tgz, sizeof tgz, "%s.tar.gz", dir);
    /* A member name over 100 characters exercises the long-name records. */
    const char *long_name =
        "vicuna/pairwise/"
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-vs-"
        "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-gpt-4-reviewer-threeclass.jsonl";
    snprintf(command, sizeof command,
             "mkdir -p %s/vicuna/pairwise && printf 'hello\\n' > %s/small.txt && printf 'abc' > '%s/%s' && "
             "tar -czf %s -C %s . 2>/dev/null",
             dir, dir, dir, long_name, tgz, dir);
    if (run_shell(command) != 0) {
        SKIP("tar -czf unavailable: archive reader not tested");
        return;
    }
    tar_archive a;
    CHECK(tar_archive_read(tgz, &a) == QLAB_OK);
    int found_long = 0, found_small = 0;
    for (int i = 0; i < a.count; i++) {
        found_long |= strstr(a.entries[i].path, long_name) && a.entries[i].size == 3 &&
                      !strcmp(a.entries[i].data, "abc");
        found_small |= strstr(a.entries[i].path, "small.txt") && !strcmp(a.entries[i].data, "hello\n");
    }
    CHECK(a.count == 2 && found_long && found_small);
    tar_archive_free(&a);
    /* Truncated gzip: an error naming the file, no crash. */
    snprintf(command, sizeof command, "head -c 100 %s > %s.cut && printf 'not a tar file at all' > %s.txt",
             tgz, tgz, tgz);
    CHECK(run_shell(command) == 0);
    char cut[200], txt[200];
    snprintf(cut, sizeof cut, "%s.cut", tgz);
    snprintf(txt, sizeof txt, "%s.txt", tgz);
    CHECK(tar_archive_read(cut, &a) == QLAB_ERR_FORMAT && strstr(qlab_last_error(), cut));
    CHECK(tar_archive_read(txt, &a) == QLAB_ERR_FORMAT && strstr(qlab_last_error(), "truncated tar header"));
    CHECK(tar_archive_read("/nonexistent/ratings.tar.gz", &a) != QLAB_OK);
    snprintf(command, sizeof command, "rm -rf %s %s %s %s", dir, tgz, cut, txt);
    run_shell(command);
}

/* ---------------------------------------------------------------- the released ratings */

static const struct {
    const char *key;
    double paper;
} table6[] = {
    {"gpt4", 114.5},
    {"bard", 94.8},
    {"65b-guanaco", 99.3},
    {"65b-alpaca", 70.7},
    {"65b-flan", 48.4},
    {"30b-guanaco", 97.8},
    {"30b-alpaca", 73.6},
    {"30b-flan", 38.0},
    {"vicuna-13b", 94.9},
    {"13b-guanaco", 90.4},
    {"13b-alpaca", 69.4},
    {"13b-hh-rlhf", 62.5},
    {"13b-unnatural-instructions", 60.5},
    {"13b-chip2", 59.5},
    {"13b-longform", 53.6},
    {"13b-self-instruct", 49.1},
    {"13b-flan", 47.0},
    {"7b-guanaco", 87.0},
    {"7b-alpaca", 64.4},
    {"7b-flan", 44.8},
};

static void test_released_ratings(void) {
    const char *path = shared_data_path("finetune/qlora_eval/ratings-gpt4-vicuna.tar.gz");
    if (!path) {
        SKIP("finetune/qlora_eval/ratings-gpt4-vicuna.tar.gz absent: released ratings not checked");
        return;
    }
    tar_archive a;
    CHECK(tar_archive_read(path, &a) == QLAB_OK);
    judge_file *rel = calloc((size_t)a.count, sizeof *rel), *pw = calloc((size_t)a.count, sizeof *pw);
    int nrel = 0, npw = 0, ok = 1;
    for (int i = 0; i < a.count && ok; i++) {
        const tar_archive_entry *e = &a.entries[i];
        if (strstr(e->path, "/relative-gpt-3.5/"))
            ok = judge_parse_file(e->path, e->data, e->size, JUDGE_RELATIVE, &rel[nrel++]) == QLAB_OK;
        else if (strstr(e->path, "/pairwise/"))
            ok = judge_parse_file(e->path, e->data, e->size, JUDGE_PAIRWISE, &pw[npw++]) == QLAB_OK;
    }
    CHECKF(ok, "%s", qlab_last_error());
    CHECK(nrel == 72 && npw == 56);
    tar_archive_free(&a);
    CHECK(ok && judge_find_reference(rel, nrel) == QLAB_OK);

    /* Table 6. Tolerance 0.3 points: the paper rounds to 0.1, and with the failure-marked math reviews
     * read from their text every one of these 20 rows lands within 0.27 of the paper (the largest
     * residuals, Chip2 / Unnatural Instr. 13B, are likely the paper's own rounding or a slightly different
     * file version). Open Assistant 33B is left out: the paper's row copies Vicuna 13B's. */
    for (size_t i = 0; ok && i < sizeof table6 / sizeof table6[0]; i++) {
        const judge_file *files[4];
        int nf = 0;
        for (int f = 0; f < nrel && nf < 4; f++)
            if (!strcmp(rel[f].system[0], table6[i].key) || !strcmp(rel[f].system[1], table6[i].key))
                files[nf++] = &rel[f];
        judge_relative_score s;
        CHECKF(nf == 2 && judge_relative(files, nf, 0, 1, &s) == QLAB_OK, "%s", table6[i].key);
        if (nf == 2)
            CHECKF(fabs(s.mean - table6[i].paper) <= 0.3, "%s: %.3f vs paper %.1f", table6[i].key, s.mean,
                   table6[i].paper);
        if (!strcmp(table6[i].key, "65b-guanaco")) { /* the paper's single-order values: 96.7 / 101.9 */
            CHECK_NEAR(s.percent[0], 96.7, 0.05);
            CHECK_NEAR(s.percent[1], 101.9, 0.05);
        }
    }

    /* Elo: matches from the pairwise files, 2000 orderings (the mean's noise is ~45 / sqrt(2000) = 1 Elo,
     * well below the smallest gap between neighbours in the paper's order, 8 Elo). */
    const char *order[8] = {"gpt4",  "65b-guanaco", "30b-guanaco", "vicuna-13b",
                            "gpt35", "13b-guanaco", "bard",        "7b-guanaco"};
    const double paper_elo[8] = {1348, 1022, 992, 974, 966, 916, 902, 879};
    judge_match *m = calloc((size_t)npw * 80 + 1, sizeof *m);
    int nm = 0, dropped = 0;
    for (int f = 0; ok && f < npw; f++) {
        int p[2] = {-1, -1};
        for (int s = 0; s < 2; s++)
            for (int k = 0; k < 8; k++)
                if (!strcmp(pw[f].system[s], order[k])) p[s] = k;
        CHECKF(p[0] >= 0 && p[1] >= 0, "%s: unexpected systems", pw[f].name);
        if (p[0] < 0 || p[1] < 0) continue;
        for (int i = 0; i < pw[f].count && nm < npw * 80; i++) {
            int v = pw[f].ratings[i].verdict;
            if (!v) {
                dropped++;
                continue;
            }
            m[nm++] = (judge_match){{p[0], p[1]}, v == 1 ? 1.0 : v == 2 ? 0.0 : 0.5};
        }
    }
    CHECK(nm == 4467 && dropped == 13);
    enum { ORDERINGS = 2000 };
    double *r = calloc((size_t)ORDERINGS * 8, sizeof *r);
    CHECK(judge_elo_orderings(m, nm, 8, 1000, 32, ORDERINGS, 1234, r) == QLAB_OK);
    double mean[8] = {0};
    for (int t = 0; t < ORDERINGS; t++)
        for (int k = 0; k < 8; k++)
            mean[k] += r[t * 8 + k] / ORDERINGS;
    for (int k = 1; k < 8; k++)
        CHECKF(mean[k] < mean[k - 1], "Elo order: %s %.1f not below %s %.1f", order[k], mean[k], order[k - 1],
               mean[k - 1]);
    /* Values: every system but GPT-4 within 10 of the paper (we see at most 7); GPT-4 comes out ~27 above
     * its 1348 (unexplained, see the experiment's notes), so it is held to 35. */
    for (int k = 0; k < 8; k++)
        CHECKF(fabs(mean[k] - paper_elo[k]) <= (k == 0 ? 35 : 10), "%s: Elo %.1f vs paper %.0f", order[k],
               mean[k], paper_elo[k]);
    free(r);
    free(m);
    for (int i = 0; i < nrel; i++)
        judge_file_free(&rel[i]);
    for (int i = 0; i < npw; i++)
        judge_file_free(&pw[i]);
    free(rel);
    free(pw);
}

int main(void) {
    test_review_parsers();
    test_rating_files();
    test_relative_score();
    test_elo();
    test_archive();
    test_released_ratings();
    return check_summary();
}
