/* End-to-end test of experiments/qlora_vs_16bit.c: runs $QLAB_BUILD/bin/qlora_vs_16bit (default build/) on
 * experiments/qlora_vs_16bit_small.json with stories260K and checks the grid's rows, the storage of each
 * 4-bit base, the paired-difference reference and the config errors. Skips when the program or the shared
 * data is missing. */
#include <stdint.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/check.h"
#include "core/base/common.h"
#include "core/results/results.h"
#include "tests/results_cells.h"
#include "tests/test_util.h"

#define SMALL_CONFIG "experiments/qlora_vs_16bit_small.json"

static char program[600];

static int64_t find_row(const results_table_data *t, const char *name) {
    const results_column *c = results_table_find_column(t, "config");
    for (int64_t i = 0; c && c->type == RESULTS_STRING && i < t->nrows; i++)
        if (!strcmp(c->str[i], name)) return i;
    return -1;
}

static int run_small(const char *out, const char *log, const char *extra) {
    char command[2400];
    snprintf(command, sizeof command,
             "QLAB_QUIET=1 '%s' --config %s --out '%s' --set 'model_path=\"%s\"' --set 'data_path=\"%s\"' %s "
             "> '%s' 2>&1",
             program, SMALL_CONFIG, out, shared_data_path("models/stories260K.bin"),
             shared_data_path("finetune/alpaca_data_1k.json"), extra, log);
    return run_shell(command);
}

static void test_run(void) {
    char out[128], log[160];
    snprintf(out, sizeof out, "/tmp/qlab_test_qlora_vs_16bit_%ld.h5", (long)getpid());
    snprintf(log, sizeof log, "/tmp/qlab_test_qlora_vs_16bit_%ld.log", (long)getpid());
    int rc = run_small(out, log, "");
    CHECKF(rc == 0, "qlora_vs_16bit exited with %d (log in %s)", rc, log);
    if (rc != 0) return;
    unlink(log);
    results_file f;
    CHECK(results_read(out, &f) == QLAB_OK);
    const results_table_data *s = results_file_table(&f, "summary"), *runs = results_file_table(&f, "runs");
    CHECK(s && runs && s->nrows == 6 && runs->nrows == 12);
    if (s && s->nrows == 6) {
        const char *names[] = {"full_fp32",    "lora_fp32", "qlora_nf4",
                               "qlora_nf4_dq", "qlora_fp4", "qlora_int4"};
        int64_t row[6];
        for (int i = 0; i < 6; i++) {
            row[i] = find_row(s, names[i]);
            CHECKF(row[i] == i, "row of '%s' is %lld", names[i], (long long)row[i]);
            double mean = table_f64(s, "nll_mean", row[i]);
            CHECKF(isfinite(mean) && mean < table_f64(s, "initial_nll", row[i]), "%s: %g", names[i], mean);
        }
        /* The reference is 16-bit (fp32) LoRA: its own paired difference is exactly zero. */
        CHECK(table_f64(s, "delta_vs_ref", row[1]) == 0 && table_f64(s, "delta_ci95", row[1]) == 0);
        /* Same adapters everywhere except full finetuning. */
        for (int i = 2; i < 6; i++)
            CHECK(table_i64(s, "trainable_params", row[i]) == table_i64(s, "trainable_params", row[1]));
        /* Base storage: the 4-bit types at block 64 store the same bytes (codes + fp32 absmax); DQ stores
         * less; all far below the fp32 base. */
        int64_t fp32 = table_i64(s, "weights_bytes", row[1]), nf4 = table_i64(s, "weights_bytes", row[2]),
                dq = table_i64(s, "weights_bytes", row[3]);
        CHECK(nf4 < fp32 / 3 && dq < nf4);
        CHECK(table_i64(s, "weights_bytes", row[4]) == nf4 && table_i64(s, "weights_bytes", row[5]) == nf4);
        /* Every 4-bit base starts worse than the fp32 one (quantization error). */
        for (int i = 2; i < 6; i++)
            CHECK(table_f64(s, "initial_nll", row[i]) > table_f64(s, "initial_nll", row[1]));
    }
    results_file_free(&f);
    unlink(out);

    /* Config errors name the key and leave no output. */
    const char *bad[] = {"--set 'bases=[\"nf4+qq\"]'", "--set 'bases=[\"mxfp4+dq\"]'",
                         "--set 'bases=[\"nf5\"]'", "--set 'bases=[\"nf4\", \"nf4\"]'", "--set targets=mlp"};
    const char *expect[] = {"bases", "bases", "bases", "twice", "targets"};
    for (int i = 0; i < 5; i++) {
        CHECK(run_small(out, log, bad[i]) != 0);
        char *text = NULL;
        size_t len = 0;
        CHECK(qlab_read_file(log, &text, &len) == QLAB_OK);
        CHECKF(text && strstr(text, expect[i]) && strchr(text, '\n') == text + len - 1, "output: %s",
               text ? text : "");
        free(text);
        CHECK(access(out, F_OK) != 0);
    }
    unlink(log);
}

int main(void) {
    const char *b = getenv("QLAB_BUILD");
    snprintf(program, sizeof program, "%s/bin/qlora_vs_16bit", b && b[0] ? b : "build");
    if (access(program, X_OK) != 0) {
        SKIP("%s not built (run make, or set QLAB_BUILD)", program);
        return check_summary();
    }
    if (!shared_data_path("models/stories260K.bin") || !shared_data_path("finetune/alpaca_data_1k.json")) {
        SKIP("../shared/data (stories260K.bin, finetune/alpaca_data_1k.json) absent: not run");
        return check_summary();
    }
    test_run();
    return check_summary();
}
