/* End-to-end test of experiments/lora_placement.c: runs $QLAB_BUILD/bin/lora_placement (default build/) on
 * experiments/lora_placement_small.json with stories260K, checks the tables, rows, columns, memory
 * accounting and provenance, that a second run gives bit-identical numbers, that a bad config fails with one
 * line, and `qlab report` on the file. Skips when the program or the shared data is missing. */
#include <stdint.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/check.h"
#include "core/base/common.h"
#include "core/results/results.h"
#include "tests/results_cells.h"
#include "tests/test_util.h"
#include "tests/report_check.h"

#define SMALL_CONFIG "experiments/lora_placement_small.json"

static char build_dir[512];

static int64_t find_row(const results_table_data *t, const char *name, int64_t seed) {
    const results_column *c = results_table_find_column(t, "config"),
                         *s = results_table_find_column(t, "seed");
    if (!c || c->type != RESULTS_STRING) return -1;
    for (int64_t i = 0; i < t->nrows; i++)
        if (!strcmp(c->str[i], name) && (seed < 0 || (s && s->i64[i] == seed))) return i;
    return -1;
}

static int run_small(const char *model, const char *out, const char *log) {
    char program[600], command[2400];
    snprintf(program, sizeof program, "%s/bin/lora_placement", build_dir);
    snprintf(command, sizeof command,
             "QLAB_QUIET=1 '%s' --config %s --out '%s' --set 'model_path=\"%s\"' --set 'data_path=\"%s\"' > "
             "'%s' 2>&1",
             program, SMALL_CONFIG, out, model, shared_data_path("finetune/alpaca_data_1k.json"), log);
    return run_shell(command);
}

static const char *cells[] = {"full",        "lora_qv_r8",  "lora_attention_r8",
                              "lora_all_r8", "lora_all_r2", "qlora_nf4dq_all_r8"};
#define N_CELLS 6

static void check_file(const results_file *f) {
    const results_table_data *s = results_file_table(f, "summary"), *runs = results_file_table(f, "runs"),
                             *curves = results_file_table(f, "curves");
    CHECK(f->ntables == 3 && s && runs && curves);
    if (!s || !runs || !curves) return;
    /* The small grid: full, LoRA qv/attention/all at r 8, all at r 2, QLoRA; 2 seeds; evaluations at steps
     * 0, 3 and 6. */
    CHECKF(s->nrows == N_CELLS, "summary has %lld rows", (long long)s->nrows);
    CHECK(runs->nrows == N_CELLS * 2);
    CHECK(curves->nrows == N_CELLS * 3);
    const char *summary_columns[] = {"config",
                                     "label",
                                     "mode",
                                     "base",
                                     "targets",
                                     "rank",
                                     "lr",
                                     "seeds",
                                     "initial_nll",
                                     "nll_mean",
                                     "nll_sd",
                                     "nll_min",
                                     "nll_max",
                                     "nll_ci95",
                                     "ppl",
                                     "delta_vs_ref",
                                     "delta_ci95",
                                     "trainable_params",
                                     "weights_bytes",
                                     "adapter_bytes",
                                     "gradient_bytes",
                                     "optimizer_bytes",
                                     "total_bytes",
                                     "seconds_mean",
                                     "steps_clipped"};
    int nsc = (int)(sizeof summary_columns / sizeof summary_columns[0]);
    CHECK(s->ncols == nsc);
    for (int j = 0; j < nsc && j < s->ncols; j++)
        CHECKF(!strcmp(s->columns[j].name, summary_columns[j]), "summary column %d is '%s'", j,
               s->columns[j].name);
    CHECK(s->title && strstr(s->title, "Figure 2"));
    CHECK(s->notes && strstr(s->notes, "not the paper's RougeL"));

    int64_t row[N_CELLS];
    for (int c = 0; c < N_CELLS; c++) {
        row[c] = find_row(s, cells[c], -1);
        CHECKF(row[c] >= 0, "summary row '%s' missing", cells[c]);
        if (row[c] < 0) return;
        double mean = table_f64(s, "nll_mean", row[c]), init = table_f64(s, "initial_nll", row[c]);
        /* 6 steps at these learning rates move stories260K's Alpaca response NLL (about 4.5 nats) down by
         * 0.5-0.9 nats; require a finite value below the start. */
        CHECKF(isfinite(mean) && mean > 0 && mean < init, "%s: NLL %g from %g", cells[c], mean, init);
        CHECK_NEAR(table_f64(s, "ppl", row[c]), exp(mean), 1e-9 * exp(mean));
        CHECK(table_f64(s, "nll_min", row[c]) <= mean && mean <= table_f64(s, "nll_max", row[c]));
        int64_t trainable = table_i64(s, "trainable_params", row[c]);
        /* Exact accounting: fp32 gradient and two fp32 moments per trainable parameter. */
        CHECK(table_i64(s, "gradient_bytes", row[c]) == 4 * trainable);
        CHECK(table_i64(s, "optimizer_bytes", row[c]) == 8 * trainable);
        CHECK(table_i64(s, "total_bytes", row[c]) ==
              table_i64(s, "weights_bytes", row[c]) + table_i64(s, "adapter_bytes", row[c]) +
                  table_i64(s, "gradient_bytes", row[c]) + table_i64(s, "optimizer_bytes", row[c]));
        /* Each seed's row in runs matches the summary's min/max. */
        double a = table_f64(runs, "final_nll", find_row(runs, cells[c], 1)),
               b = table_f64(runs, "final_nll", find_row(runs, cells[c], 2));
        CHECK(fmin(a, b) == table_f64(s, "nll_min", row[c]) && fmax(a, b) == table_f64(s, "nll_max", row[c]));
    }
    /* stories260K: 260,032 parameters (shared classifier); all of them train in full finetuning. */
    CHECK(table_i64(s, "trainable_params", row[0]) == 260032);
    CHECK(table_i64(s, "weights_bytes", row[0]) == 260032 * 4);
    CHECK(table_i64(s, "adapter_bytes", row[0]) == 0);
    /* LoRA parameters per layer (dim 64, kv 32, hidden 172) at r: q,o r(64+64); k,v r(64+32); gate, up, down
     * r(64+172); 5 layers. qv: 5*8*(128+96) = 8960; attention: 5*8*(2*128+2*96) = 17920;
     * all: 5*8*(448+3*236) = 46240; all r2: 11560. */
    CHECK(table_i64(s, "trainable_params", row[1]) == 8960);
    CHECK(table_i64(s, "trainable_params", row[2]) == 17920);
    CHECK(table_i64(s, "trainable_params", row[3]) == 46240);
    CHECK(table_i64(s, "trainable_params", row[4]) == 11560);
    CHECK(table_i64(s, "trainable_params", row[5]) == 46240);
    CHECK(table_i64(s, "adapter_bytes", row[3]) == 46240 * 4);
    /* The frozen fp32 base is stored in full; the NF4+DQ base holds its projections at ~4.13 bits. */
    CHECK(table_i64(s, "weights_bytes", row[3]) == 260032 * 4);
    CHECK(table_i64(s, "weights_bytes", row[5]) < 260032 * 4 / 2);
    /* The reference is full finetuning: its paired difference is exactly 0. */
    CHECK(table_f64(s, "delta_vs_ref", row[0]) == 0);
    /* QLoRA starts from the quantized base, slightly worse than fp32 (NF4 error). */
    CHECK(table_f64(s, "initial_nll", row[5]) > table_f64(s, "initial_nll", row[3]));
    CHECK(table_f64(s, "initial_nll", row[3]) == table_f64(s, "initial_nll", row[0]));
    /* Curves start at step 0 from the base. */
    CHECK(table_i64(curves, "step", 0) == 0 &&
          table_f64(curves, "nll_mean", 0) == table_f64(s, "initial_nll", row[0]));
}

static void test_full_run(void) {
    const char *model = shared_data_path("models/stories260K.bin");
    char out[128], out2[128], log[160];
    snprintf(out, sizeof out, "/tmp/qlab_test_lora_placement_%ld.h5", (long)getpid());
    snprintf(out2, sizeof out2, "/tmp/qlab_test_lora_placement_%ld_b.h5", (long)getpid());
    snprintf(log, sizeof log, "/tmp/qlab_test_lora_placement_%ld.log", (long)getpid());
    int rc = run_small(model, out, log);
    CHECKF(rc == 0, "lora_placement exited with %d (log in %s)", rc, log);
    if (rc != 0) return;
    unlink(log);
    results_file f;
    CHECK(results_read(out, &f) == QLAB_OK);
    if (f.ntables == 0) {
        fprintf(stderr, "  %s\n", qlab_last_error());
        return;
    }
    check_file(&f);

    /* Provenance. */
    char *text = NULL;
    size_t len = 0;
    CHECK(qlab_read_file(SMALL_CONFIG, &text, &len) == QLAB_OK);
    const char *cfg = results_file_attr(&f, "config");
    CHECK(cfg && text && strcmp(cfg, text) == 0);
    free(text);
    const char *commit = results_file_attr(&f, "git_commit");
    CHECKF(commit && strlen(commit) == 40, "git_commit '%s'", commit ? commit : "(missing)");
    CHECK(results_file_attr(&f, "experiment") &&
          !strcmp(results_file_attr(&f, "experiment"), "lora_placement"));
    CHECK(results_file_attr(&f, "seed") && !strcmp(results_file_attr(&f, "seed"), "1"));
    CHECK(results_file_attr(&f, "model") && strstr(results_file_attr(&f, "model"), "stories260K.bin"));
    CHECK(results_file_attr(&f, "tokenizer") && strstr(results_file_attr(&f, "tokenizer"), "tok512.bin"));
    const char *nonempty[] = {"cpu_model",    "threads",        "hostname",    "compiler",
                              "command_line", "start_time_utc", "end_time_utc"};
    for (size_t i = 0; i < sizeof nonempty / sizeof nonempty[0]; i++) {
        const char *v = results_file_attr(&f, nonempty[i]);
        CHECKF(v && v[0], "provenance '%s' empty", nonempty[i]);
    }
    int have_state_note = 0;
    for (int i = 0; i < f.nnotes; i++)
        if (!strcmp(f.notes[i].name, "optimizer_state") &&
            (strstr(f.notes[i].value, "host memory") || strstr(f.notes[i].value, "paged (")))
            have_state_note = 1;
    CHECKF(have_state_note, "the optimizer_state note should say where the moments lived");

    /* Same config, seed and threads: bit-identical numbers. */
    rc = run_small(model, out2, log);
    CHECK(rc == 0);
    results_file g;
    if (rc == 0 && results_read(out2, &g) == QLAB_OK) {
        const results_table_data *a = results_file_table(&f, "runs"), *b = results_file_table(&g, "runs");
        const results_column *ca = a ? results_table_find_column(a, "final_nll") : NULL,
                             *cb = b ? results_table_find_column(b, "final_nll") : NULL;
        CHECK(ca && cb && a->nrows == b->nrows &&
              memcmp(ca->f64, cb->f64, sizeof(double) * (size_t)a->nrows) == 0);
        results_file_free(&g);
    }
    unlink(out2);
    unlink(log);
    results_file_free(&f);

    /* qlab report renders it (Markdown, .dat files, the figure when gnuplot exists). */
    const char *tables[] = {"summary", "runs", "curves"};
    char *report = report_check(build_dir, out, "lora_placement", tables, 3);
    CHECK(!report || (strstr(report, "Figure 2") && strstr(report, "lora_attention_r8")));
    free(report);
    unlink(out);
}

static void test_bad_config(void) {
    char program[600], out[128], log[160], command[2048];
    snprintf(program, sizeof program, "%s/bin/lora_placement", build_dir);
    snprintf(out, sizeof out, "/tmp/qlab_test_lora_placement_bad_%ld.h5", (long)getpid());
    snprintf(log, sizeof log, "/tmp/qlab_test_lora_placement_bad_%ld.log", (long)getpid());
    const char *bad[] = {"--set 'placements=[\"qv\", \"mlp\"]'", "--set rank=0", "--set 'seeds=[1, 1]'",
                         "--set 'model_path=\"/nonexistent/model.bin\"'", "--set no_such_key=1"};
    const char *expect[] = {"placements", "rank", "seeds", "/nonexistent/model.bin", "no_such_key"};
    for (int i = 0; i < 5; i++) {
        snprintf(command, sizeof command, "QLAB_QUIET=1 '%s' --config %s --out '%s' %s > '%s' 2>&1", program,
                 SMALL_CONFIG, out, bad[i], log);
        CHECK(run_shell(command) != 0);
        char *text = NULL;
        size_t len = 0;
        CHECK(qlab_read_file(log, &text, &len) == QLAB_OK);
        /* One line naming the culprit, and no output file. */
        CHECKF(text && strstr(text, expect[i]) && strchr(text, '\n') == text + len - 1, "output: %s",
               text ? text : "");
        free(text);
        CHECK(access(out, F_OK) != 0);
    }
    unlink(log);
}

int main(void) {
    const char *b = getenv("QLAB_BUILD");
    snprintf(build_dir, sizeof build_dir, "%s", b && b[0] ? b : "build");
    char program[600];
    snprintf(program, sizeof program, "%s/bin/lora_placement", build_dir);
    if (access(program, X_OK) != 0) {
        SKIP("%s not built (run make, or set QLAB_BUILD)", program);
        return check_summary();
    }
    if (!shared_data_path("models/stories260K.bin") || !shared_data_path("models/tok512.bin") ||
        !shared_data_path("finetune/alpaca_data_1k.json")) {
        SKIP("../shared/data (stories260K.bin, tok512.bin, finetune/alpaca_data_1k.json) absent: not run");
        return check_summary();
    }
    test_full_run();
    test_bad_config();
    return check_summary();
}
