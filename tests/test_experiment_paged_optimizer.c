/* End-to-end test of experiments/paged_optimizer.c on experiments/paged_optimizer_small.json: the plain
 * optimizer under the budget stops at the first long step with the activations request that did not fit,
 * the paged one completes with adapters identical (sha256 and max difference 0) to the unbudgeted run, its
 * optimizer memory is the resident pages only and its page traffic is real; a second run gives the same
 * bits; the provenance holds the budget and the peaks; a malformed memory_budget key and an outside budget
 * are refused in one line; qlab report renders it. Skips without a base model (stories260K or the zoo). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/check.h"
#include "core/base/common.h"
#include "core/results/results.h"
#include "tests/results_cells.h"
#include "tests/test_util.h"
#include "tests/report_check.h"

#define SMALL_CONFIG "experiments/paged_optimizer_small.json"

static char build_dir[512];

static int run_small(const char *out, const char *log, const char *extra) {
    char command[2400];
    snprintf(command, sizeof command,
             "QLAB_QUIET=1 '%s/bin/paged_optimizer' --config %s --out '%s' %s > '%s' 2>&1", build_dir,
             SMALL_CONFIG, out, extra, log);
    return run_shell(command);
}

static int64_t find_run(const results_table_data *t, const char *name) {
    const results_column *c = results_table_find_column(t, "run");
    for (int64_t i = 0; c && i < t->nrows; i++)
        if (!strcmp(c->str[i], name)) return i;
    return -1;
}

static const char *cell_str(const results_table_data *t, const char *column, int64_t row) {
    const results_column *c = results_table_find_column(t, column);
    return c && c->type == RESULTS_STRING && row >= 0 && row < t->nrows ? c->str[row] : "";
}

static void check_file(const results_file *f) {
    const results_table_data *runs = results_file_table(f, "runs"), *steps = results_file_table(f, "steps"),
                             *timing = results_file_table(f, "timing");
    CHECK(f->ntables == 3 && runs && steps && timing);
    if (!runs || !steps || !timing) return;
    CHECK(runs->nrows == 4 && timing->nrows == 3);
    int64_t a = find_run(runs, "unbudgeted"), pu = find_run(runs, "paged_unbudgeted"),
            bp = find_run(runs, "budget_plain"), bg = find_run(runs, "budget_paged");
    CHECK(a >= 0 && pu >= 0 && bp >= 0 && bg >= 0);
    if (a < 0 || pu < 0 || bp < 0 || bg < 0) return;
    /* the small config: 6 steps, the length jumps from 32 to 64 after step 3 */
    CHECK(!strcmp(cell_str(runs, "outcome", a), "completed") && table_i64(runs, "steps_done", a) == 6);
    CHECK(!strcmp(cell_str(runs, "optimizer_backend", a), "plain"));
    CHECK(!strcmp(cell_str(runs, "optimizer_backend", bg), "cpu-paged"));
    int64_t budget = table_i64(runs, "budget_bytes", bp);
    CHECK(budget == table_i64(runs, "budget_bytes", bg) && budget > 0 &&
          table_i64(runs, "budget_bytes", a) == 0);
    /* the budget lies between the two unbudgeted peaks */
    CHECKF(table_i64(runs, "peak_bytes", pu) < budget && budget < table_i64(runs, "peak_bytes", a),
           "budget %lld, peaks %lld and %lld", (long long)budget,
           (long long)table_i64(runs, "peak_bytes", pu), (long long)table_i64(runs, "peak_bytes", a));
    /* without paging: stopped at the spike, by the activations request, never counted above the budget */
    CHECK(!strcmp(cell_str(runs, "outcome", bp), "stopped by the budget"));
    CHECKF(table_i64(runs, "steps_done", bp) == 3 && table_i64(runs, "stopped_at_step", bp) == 4,
           "stopped after %lld steps", (long long)table_i64(runs, "steps_done", bp));
    CHECK(!strcmp(cell_str(runs, "refused_category", bp), "activations") &&
          table_i64(runs, "refused_bytes", bp) > 0);
    CHECK(table_i64(runs, "peak_bytes", bp) <= budget);
    /* with paging: completed, identical to the run without any budget */
    CHECK(!strcmp(cell_str(runs, "outcome", bg), "completed") && table_i64(runs, "steps_done", bg) == 6);
    CHECK(table_i64(runs, "peak_bytes", bg) <= budget);
    CHECKF(strlen(cell_str(runs, "adapter_sha256", a)) == 16 &&
               !strcmp(cell_str(runs, "adapter_sha256", a), cell_str(runs, "adapter_sha256", bg)),
           "adapters %s vs %s", cell_str(runs, "adapter_sha256", a), cell_str(runs, "adapter_sha256", bg));
    CHECK(table_f64(runs, "max_abs_diff", bg) == 0 &&
          table_f64(runs, "final_train_loss", bg) == table_f64(runs, "final_train_loss", a));
    CHECK(table_f64(runs, "final_heldout_nll", bg) == table_f64(runs, "final_heldout_nll", a));
    /* the paged state is the resident pages only (32 KiB of 16 KiB pages), and it really pages */
    CHECK(table_i64(runs, "peak_optimizer", bg) == 32768 && table_i64(runs, "peak_optimizer", a) > 32768);
    CHECK(table_i64(runs, "pages_in", bg) > 0 && table_i64(runs, "pages_out", bg) > 0 &&
          table_i64(runs, "bytes_moved", bg) ==
              16384 * (table_i64(runs, "pages_in", bg) + table_i64(runs, "pages_out", bg)));
    CHECK(table_i64(runs, "pages_in", a) == 0 && table_i64(runs, "bytes_moved", a) == 0);
    /* per-step memory: 6 + 6 + 3 + 6 rows; the long steps need more */
    CHECK(steps->nrows == 21);
    CHECK(table_i64(steps, "row_len", 0) == 32 && table_i64(steps, "row_len", 5) == 64);
    CHECK(table_i64(steps, "peak_bytes", 5) > table_i64(steps, "peak_bytes", 2));
    /* timing rows: plain is the reference */
    CHECK(!strcmp(cell_str(timing, "optimizer", 0), "plain") && table_f64(timing, "overhead_pct", 0) == 0);
    CHECK(table_f64(timing, "pages_moved_per_step", 2) == 0 &&
          table_f64(timing, "pages_moved_per_step", 1) > 0);
    for (int64_t i = 0; i < 3; i++)
        CHECK(isfinite(table_f64(timing, "median_step_seconds", i)) &&
              table_f64(timing, "median_step_seconds", i) > 0);
    /* provenance: the budget of the program (none: it sets its own per run) and the accounted peaks */
    const char *b = results_file_attr(f, "memory_budget"), *p = results_file_attr(f, "memory_peak");
    CHECK(b && !strcmp(b, "none"));
    CHECKF(p && strstr(p, "peak ") == p && strstr(p, "optimizer"), "%s", p ? p : "(missing)");
    CHECK(results_file_attr(f, "memory_peak_activations_bytes") != NULL);
    /* the process's peak covers every run (the per-run peaks are measurement windows) */
    const char *total = results_file_attr(f, "memory_peak_total_bytes");
    CHECK(total && atoll(total) >= table_i64(runs, "peak_bytes", a));
}

int main(void) {
    test_tmp_dir_create("experiment_paged_optimizer");
    const char *build = getenv("QLAB_BUILD");
    snprintf(build_dir, sizeof build_dir, "%s", build && build[0] ? build : "build");
    char program[600];
    snprintf(program, sizeof program, "%s/bin/paged_optimizer", build_dir);
    if (access(program, X_OK) != 0) {
        SKIP("%s not built", program);
        return check_summary();
    }
    if (!shared_data_path("models/stories260K.bin") && access("models/zoo/zoo-0.3M.bin", R_OK) != 0) {
        SKIP("no base model (../shared/data/models/stories260K.bin or make zoo)");
        return check_summary();
    }
    char out[600], out2[600], log[600];
    snprintf(out, sizeof out, "%s", tmp_path("paged_optimizer_small.h5"));
    snprintf(out2, sizeof out2, "%s", tmp_path("second.h5"));
    snprintf(log, sizeof log, "%s", tmp_path("log.txt"));
    int rc = run_small(out, log, "");
    CHECKF(rc == 0, "paged_optimizer exited with %d (log %s)", rc, log);
    if (rc != 0) return check_summary();
    results_file f;
    CHECK(results_read(out, &f) == QLAB_OK);
    check_file(&f);

    /* the same config, seed and threads: the same bits */
    CHECK(run_small(out2, log, "") == 0);
    results_file g;
    if (results_read(out2, &g) == QLAB_OK) {
        const results_table_data *x = results_file_table(&f, "runs"), *y = results_file_table(&g, "runs");
        for (int64_t i = 0; x && y && i < x->nrows && i < y->nrows; i++) {
            CHECK(!strcmp(cell_str(x, "adapter_sha256", i), cell_str(y, "adapter_sha256", i)));
            CHECK(table_i64(x, "peak_bytes", i) == table_i64(y, "peak_bytes", i));
        }
        results_file_free(&g);
    }
    results_file_free(&f);

    /* malformed memory_budget key, and a budget from outside (the program sets its own) */
    rc = run_small(out2, log, "--set 'memory_budget=\"12X\"'");
    char text[4096] = "";
    FILE *lf = fopen(log, "r");
    size_t n = lf ? fread(text, 1, sizeof text - 1, lf) : 0;
    text[n] = 0;
    if (lf) fclose(lf);
    CHECKF(rc != 0 && strstr(text, "key 'memory_budget'") && strstr(text, "'12X'"), "exit %d: %s", rc, text);
    rc = run_small(out2, log, "--memory-budget 1G");
    lf = fopen(log, "r");
    n = lf ? fread(text, 1, sizeof text - 1, lf) : 0;
    text[n] = 0;
    if (lf) fclose(lf);
    CHECKF(rc != 0 && strstr(text, "sets its own budgets"), "exit %d: %s", rc, text);

    /* qlab report renders it */
    free(report_check(build_dir, out, "paged_optimizer", NULL, 0));
    return check_summary();
}
