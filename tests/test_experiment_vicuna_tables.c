/* End-to-end test of experiments/vicuna_tables.c: runs $QLAB_BUILD/bin/vicuna_tables (default build/)
 * with few Elo orderings and bootstrap resamples into /tmp, checks the results file's two tables against
 * the paper, the provenance, and the missing-archive path (one-line error, non-zero exit, no file).
 * Skips when the program has not been built or the released ratings are absent. */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/check.h"
#include "core/base/common.h"
#include "core/results/results.h"
#include "tests/results_cells.h"
#include "tests/test_util.h"

#define CONFIG "experiments/vicuna_tables.json"

static int64_t row_of(const results_table_data *t, const char *key) {
    const results_column *c = results_table_find_column(t, "key");
    if (!c || c->type != RESULTS_STRING) return -1;
    for (int64_t i = 0; i < t->nrows; i++)
        if (!strcmp(c->str[i], key)) return i;
    return -1;
}

static void check_table6(const results_table_data *t) {
    CHECK(t != NULL);
    if (!t) return;
    CHECKF(t->nrows == 36, "table6 has %lld rows (36 systems rated against ChatGPT)", (long long)t->nrows);
    const char *columns[] = {"system",     "key",       "chatgpt_first", "system_first", "mean",
                             "ci95_low",   "ci95_high", "ci95_half",     "paper",        "paper_ci95",
                             "difference", "n_reviews", "n_recovered"};
    CHECK(t->ncols == 13);
    for (int j = 0; j < 13 && j < t->ncols; j++)
        CHECKF(!strcmp(t->columns[j].name, columns[j]), "column %d is '%s'", j, t->columns[j].name);
    /* Paper rows: within 0.3 of the paper (see tests/test_judge.c for why), except Open Assistant 33B, whose
     * paper row copies Vicuna 13B's (94.9); the released ratings put it near 79. */
    int paper_rows = 0;
    for (int64_t i = 0; i < t->nrows; i++) {
        double paper = table_f64(t, "paper", i), mean = table_f64(t, "mean", i);
        CHECK(mean > 20 && mean < 130);
        CHECK(table_f64(t, "ci95_low", i) <= mean && table_f64(t, "ci95_high", i) >= mean);
        if (isnan(paper)) continue;
        paper_rows++;
        const char *key = results_table_find_column(t, "key")->str[i];
        if (!strcmp(key, "30b-huggingchat"))
            CHECKF(fabs(mean - 79.0) < 1.0, "Open Assistant 33B: %.2f", mean);
        else
            CHECKF(fabs(table_f64(t, "difference", i)) <= 0.3, "%s: %.2f vs paper %.1f", key, mean, paper);
    }
    CHECK(paper_rows == 21);
    int64_t g = row_of(t, "65b-guanaco");
    CHECK(g >= 0 && table_i64(t, "n_reviews", g) == 160);
    CHECK_NEAR(table_f64(t, "chatgpt_first", g), 96.7, 0.05); /* the paper's single-order values */
    CHECK_NEAR(table_f64(t, "system_first", g), 101.9, 0.05);
    CHECK(t->notes && strstr(t->notes, "copy error"));
}

static void check_elo(const results_table_data *t) {
    CHECK(t != NULL);
    if (!t) return;
    CHECK(t->nrows == 8);
    const char *order[8] = {"gpt4",    "65b-guanaco", "30b-guanaco", "vicuna-13b",
                            "gpt-3.5", "13b-guanaco", "bard",        "7b-guanaco"};
    for (int k = 0; k < 8; k++) {
        int64_t r = row_of(t, order[k]);
        CHECKF(r == k, "%s is row %lld, expected %d (rows follow our rank)", order[k], (long long)r, k);
        CHECK(table_i64(t, "rank", r) == k + 1 && table_i64(t, "paper_rank", r) == k + 1);
        /* 300 orderings: the mean's noise is ~45 / sqrt(300) = 2.6 Elo; the paper gap is at most 7 except
         * GPT-4 (~27 above 1348, unexplained; see the notes). */
        CHECKF(fabs(table_f64(t, "difference", r)) <= (k == 0 ? 40 : 15), "%s: %+.1f", order[k],
               table_f64(t, "difference", r));
        CHECK(table_f64(t, "elo_low", r) < table_f64(t, "elo_mean", r) &&
              table_f64(t, "elo_mean", r) < table_f64(t, "elo_high", r));
        CHECK(table_i64(t, "wins", r) + table_i64(t, "ties", r) + table_i64(t, "losses", r) > 1000);
    }
    double sum = 0;
    for (int64_t i = 0; i < t->nrows; i++)
        sum += table_f64(t, "elo_mean", i);
    CHECK_NEAR(sum, 8000, 1e-6); /* Elo only moves points between players */
    CHECK(t->notes && strstr(t->notes, "ranking matches"));
}

int main(void) {
    const char *b = getenv("QLAB_BUILD");
    char build_dir[512], program[600], out[128], log[160], command[2048];
    snprintf(build_dir, sizeof build_dir, "%s", b && b[0] ? b : "build");
    snprintf(program, sizeof program, "%s/bin/vicuna_tables", build_dir);
    if (access(program, X_OK) != 0) {
        SKIP("%s not built (run make, or set QLAB_BUILD)", program);
        return check_summary();
    }
    snprintf(out, sizeof out, "/tmp/qlab_test_vicuna_tables_%ld.h5", (long)getpid());
    snprintf(log, sizeof log, "/tmp/qlab_test_vicuna_tables_%ld.log", (long)getpid());

    /* A missing archive: one line naming the path and where to get it, exit 1, no results file. */
    snprintf(command, sizeof command,
             "'%s' --config %s --out '%s' --set ratings_archive=/nonexistent/ratings.tar.gz > '%s' 2>&1",
             program, CONFIG, out, log);
    CHECK(run_shell(command) == 1);
    char *text = NULL;
    size_t len = 0;
    CHECK(qlab_read_file(log, &text, &len) == QLAB_OK);
    CHECKF(text && strstr(text, "/nonexistent/ratings.tar.gz: not found") &&
               strstr(text, "eval/ratings-gpt4") && strchr(text, '\n') == text + len - 1,
           "output: %s", text ? text : "");
    free(text);
    CHECK(access(out, F_OK) != 0);
    unlink(log);

    if (!shared_data_path("finetune/qlora_eval/ratings-gpt4-vicuna.tar.gz")) {
        SKIP("finetune/qlora_eval/ratings-gpt4-vicuna.tar.gz absent: full run not checked");
        return check_summary();
    }
    snprintf(
        command, sizeof command,
        "QLAB_QUIET=1 '%s' --config %s --out '%s' --set n_orderings=300 --set n_bootstrap=300 > '%s' 2>&1",
        program, CONFIG, out, log);
    int rc = run_shell(command);
    CHECKF(rc == 0, "%s exited with %d (log in %s)", program, rc, log);
    if (rc != 0) return check_summary();
    unlink(log);

    results_file f;
    CHECK(results_read(out, &f) == QLAB_OK);
    CHECK(f.ntables == 2);
    check_table6(results_file_table(&f, "table6"));
    check_elo(results_file_table(&f, "elo"));

    /* Provenance. */
    CHECK(qlab_read_file(CONFIG, &text, &len) == QLAB_OK);
    const char *cfg = results_file_attr(&f, "config");
    CHECK(cfg && text && strcmp(cfg, text) == 0);
    free(text);
    const char *effective = results_file_attr(&f, "config_effective");
    if (effective) CHECK(strstr(effective, "\"n_orderings\":300") != NULL);
    CHECK(results_file_attr(&f, "experiment") &&
          !strcmp(results_file_attr(&f, "experiment"), "vicuna_tables"));
    CHECK(results_file_attr(&f, "seed") && !strcmp(results_file_attr(&f, "seed"), "1234"));
    CHECK(results_file_attr(&f, "ratings_archive") &&
          strstr(results_file_attr(&f, "ratings_archive"), ".tar.gz"));
    const char *commit = results_file_attr(&f, "git_commit");
    CHECKF(commit && strlen(commit) == 40, "git_commit '%s'", commit ? commit : "(missing)");
    const char *nonempty[] = {"start_time_utc", "end_time_utc", "hostname", "hdf5_version", "command_line"};
    for (size_t i = 0; i < sizeof nonempty / sizeof nonempty[0]; i++) {
        const char *v = results_file_attr(&f, nonempty[i]);
        CHECKF(v && v[0], "provenance '%s' empty", nonempty[i]);
    }
    results_file_free(&f);

    /* Same seed, same file contents (tables): run again and compare the Elo means bit for bit. */
    char out2[140];
    snprintf(out2, sizeof out2, "%s.again.h5", out);
    snprintf(command, sizeof command,
             "QLAB_QUIET=1 OMP_NUM_THREADS=1 '%s' --config %s --out '%s' --set n_orderings=300 --set "
             "n_bootstrap=300 "
             "> /dev/null 2>&1",
             program, CONFIG, out2);
    CHECK(run_shell(command) == 0);
    results_file a, c;
    if (results_read(out, &a) == QLAB_OK) {
        if (results_read(out2, &c) == QLAB_OK) {
            const results_table_data *ea = results_file_table(&a, "elo"), *ec = results_file_table(&c, "elo");
            const results_table_data *ta = results_file_table(&a, "table6"),
                                     *tc = results_file_table(&c, "table6");
            CHECK(ea && ec && ea->nrows == ec->nrows &&
                  !memcmp(results_table_find_column(ea, "elo_mean")->f64,
                          results_table_find_column(ec, "elo_mean")->f64,
                          sizeof(double) * (size_t)ea->nrows));
            CHECK(ta && tc && ta->nrows == tc->nrows &&
                  !memcmp(results_table_find_column(ta, "ci95_low")->f64,
                          results_table_find_column(tc, "ci95_low")->f64,
                          sizeof(double) * (size_t)ta->nrows));
            results_file_free(&c);
        }
        results_file_free(&a);
    }
    unlink(out2);
    unlink(out);
    return check_summary();
}
