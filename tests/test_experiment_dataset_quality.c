/* End-to-end test of experiments/dataset_quality.c: runs $QLAB_BUILD/bin/dataset_quality (default build/) on
 * experiments/dataset_quality_small.json with stories260K twice (bit-identical scores), checks the tables
 * (the base row first, one summary row per training set, sizes and swapped shares as configured, every
 * finetune below the base's held-out NLL, scores in range; qlab's generated chat and task sets among them)
 * and that config errors name the problem and leave no output. Skips when the program or the shared data is
 * missing. */
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "tests/check.h"
#include "core/base/common.h"
#include "core/results/results.h"
#include "tests/results_cells.h"
#include "tests/test_util.h"

#define SMALL_CONFIG "experiments/dataset_quality_small.json"

static char program[600];

static int run_small(const char *out, const char *log, const char *extra) {
    char command[2400];
    snprintf(command, sizeof command, "QLAB_QUIET=1 '%s' --config %s --out '%s' %s > '%s' 2>&1", program,
             SMALL_CONFIG, out, extra, log);
    return run_shell(command);
}

static void test_run(void) {
    test_tmp_dir_create("dataset_quality");
    const char *out[2] = {tmp_path("a.h5"), tmp_path("b.h5")}, *log = tmp_path("log.txt");
    results_file f[2];
    for (int k = 0; k < 2; k++) {
        int rc = run_small(out[k], log, "");
        CHECKF(rc == 0, "dataset_quality exited with %d (log in %s)", rc, log);
        if (rc != 0) return;
        CHECK(results_read(out[k], &f[k]) == QLAB_OK);
    }
    const results_table_data *s = results_file_table(&f[0], "summary"),
                             *runs = results_file_table(&f[0], "runs"),
                             *runs_b = results_file_table(&f[1], "runs");
    CHECK(s && runs && runs_b && s->nrows == 6 && runs->nrows == 10 && runs_b->nrows == 10);
    if (s && runs && runs_b && s->nrows == 6 && runs->nrows == 10 && runs_b->nrows == 10) {
        const results_column *name = results_table_find_column(s, "dataset");
        CHECK(!strcmp(name->str[0], "base") && !strcmp(name->str[1], "oasst1@60") &&
              !strcmp(name->str[3], "oasst1@60~50") && !strcmp(name->str[4], "qlab_chat@60") &&
              !strcmp(name->str[5], "qlab_task@60~50"));
        double base_nll = table_f64(s, "nll", 0);
        for (int i = 1; i < 6; i++) {
            CHECK(table_i64(s, "records", i) == 60 && table_i64(s, "mmlu_questions", i) == 57);
            CHECK(table_i64(s, "swapped_pct", i) == (i == 3 || i == 5 ? 50 : 0));
            CHECKF(table_f64(s, "nll", i) < base_nll, "row %d: %g vs base %g", i, table_f64(s, "nll", i),
                   base_nll);
            double rouge = table_f64(s, "rougeL", i), mmlu = table_f64(s, "mmlu", i);
            CHECK(rouge >= 0 && rouge <= 1 && mmlu >= 0 && mmlu <= 1);
            double r = table_f64(s, "rank_rougeL", i);
            CHECK(r >= 1 && r <= 5);
        }
        /* Same config, seeds and threads: the same numbers to the last bit (timings aside). */
        const char *cols[] = {"heldout_nll", "rougeL", "mmlu"};
        for (int c = 0; c < 3; c++)
            for (int i = 0; i < 10; i++)
                CHECKF(table_f64(runs, cols[c], i) == table_f64(runs_b, cols[c], i), "%s row %d", cols[c], i);
    }
    results_file_free(&f[0]);
    results_file_free(&f[1]);

    const char *bad[] = {"--set 'datasets=[\"wiki@10\", \"alpaca@10\"]'",
                         "--set 'datasets=[\"alpaca@999999\", \"alpaca@10\"]'",
                         "--set 'datasets=[\"alpaca~150\", \"alpaca@10\"]'", "--set rouge_items=500",
                         "--set qlab_records=0"};
    const char *expect[] = {"wiki", "999999", "percentage", "rouge_items", "qlab_records"};
    for (int i = 0; i < 5; i++) {
        const char *o = tmp_path("bad.h5");
        CHECK(run_small(o, log, bad[i]) != 0);
        char *text = NULL;
        size_t len = 0;
        CHECK(qlab_read_file(log, &text, &len) == QLAB_OK);
        CHECKF(text && strstr(text, expect[i]) && strchr(text, '\n') == text + len - 1, "output: %s",
               text ? text : "");
        free(text);
        CHECK(access(o, F_OK) != 0);
    }
    test_tmp_dir_remove();
}

int main(void) {
    const char *b = getenv("QLAB_BUILD");
    snprintf(program, sizeof program, "%s/bin/dataset_quality", b && b[0] ? b : "build");
    if (access(program, X_OK) != 0) {
        SKIP("%s not built (run make, or set QLAB_BUILD)", program);
        return check_summary();
    }
    const char *need[] = {"models/stories260K.bin", "finetune/qlora_eval/prompts/oa_questions.jsonl.gz",
                          "finetune/paper_datasets/alpaca_5k.jsonl.gz", "mmlu/qlora_zero_shot_mmlu_val.json"};
    for (int i = 0; i < 4; i++)
        if (!shared_data_path(need[i])) {
            SKIP("../shared/data/%s absent: not run", need[i]);
            return check_summary();
        }
    test_run();
    return check_summary();
}
