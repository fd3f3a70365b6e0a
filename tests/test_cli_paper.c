/* Tests of `qlab paper`: verdicts in DIR/REPORT.md from results files written here with known numbers (the
 * double quantization accounting matching and not matching the paper, a finetuning summary where QLoRA
 * NF4+DQ is within or outside its interval of 16-bit LoRA, qlab's generated dataset family with and without
 * the paper's pattern, a memory-footprint file of unknown table names), "not run" for absent files (the
 * measured memory row: "not yet measured"), and one error line for a bad option. Runs $QLAB_BUILD/bin/qlab
 * (default build/bin/qlab); SKIPs without it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/check.h"
#include "core/base/common.h"
#include "core/results/results.h"
#include "tests/test_util.h"

static char qlab[512];

static void write_double_quant(const char *path, double with_dq) {
    results *r = NULL;
    CHECK(results_create(&r, path, "double_quant", NULL, 0, NULL) == QLAB_OK);
    results_table *t = NULL;
    CHECK(results_table_begin(r, &t, "paper", "paper vs measured") == QLAB_OK);
    results_table_column(t, "quantity", RESULTS_STRING, NULL, NULL);
    results_table_column(t, "paper", RESULTS_FLOAT64, NULL, NULL);
    results_table_column(t, "measured", RESULTS_FLOAT64, NULL, NULL);
    const char *q[] = {"constants without DQ (bits/param)", "constants with DQ (bits/param)",
                       "saving from DQ (bits/param)", "NF4 + DQ total (bits/param)"};
    double paper[] = {0.5, 0.127, 0.373, 4.127}, measured[] = {0.5, with_dq, 0.5 - with_dq, 4 + with_dq};
    for (int i = 0; i < 4; i++) {
        results_set_string(t, "quantity", q[i]);
        results_set_double(t, "paper", paper[i]);
        results_set_double(t, "measured", measured[i]);
        CHECK(results_row_end(t) == QLAB_OK);
    }
    CHECK(results_commit(r) == QLAB_OK);
}

static void write_qlora(const char *path, double delta, double ci) {
    results *r = NULL;
    CHECK(results_create(&r, path, "qlora_vs_16bit", NULL, 0, NULL) == QLAB_OK);
    results_table *t = NULL;
    CHECK(results_table_begin(r, &t, "summary", "summary") == QLAB_OK);
    const char *cols[] = {"nll_mean", "delta_vs_ref", "delta_ci95", "total_bytes", "weights_bytes"};
    results_table_column(t, "config", RESULTS_STRING, NULL, NULL);
    for (int c = 0; c < 5; c++)
        results_table_column(t, cols[c], RESULTS_FLOAT64, NULL, NULL);
    const char *names[] = {"full_fp32", "lora_fp32", "qlora_nf4", "qlora_nf4_dq", "qlora_fp4"};
    double nll[] = {3.6, 3.7, 3.7 + delta, 3.7 + delta, 3.9 + delta};
    for (int i = 0; i < 5; i++) {
        results_set_string(t, "config", names[i]);
        results_set_double(t, "nll_mean", nll[i]);
        results_set_double(t, "delta_vs_ref", i == 3 ? delta : 0);
        results_set_double(t, "delta_ci95", i == 3 ? ci : 0);
        results_set_double(t, "total_bytes", i == 0 ? 4000 : 1000);
        results_set_double(t, "weights_bytes", i < 2 ? 1000 : 250);
        CHECK(results_row_end(t) == QLAB_OK);
    }
    CHECK(results_commit(r) == QLAB_OK);
}

/* A dataset_quality summary with the generated family: the small clean chat set at chat_nll, a 50%-swapped
 * chat set ten times larger at 9.0 and a task-style set ten times larger at 10.0 (base 7.5), each ± ci. */
static void write_dataset_quality(const char *path, double chat_nll, double ci) {
    results *r = NULL;
    CHECK(results_create(&r, path, "dataset_quality", NULL, 0, NULL) == QLAB_OK);
    results_table *t = NULL;
    CHECK(results_table_begin(r, &t, "summary", "summary") == QLAB_OK);
    results_table_column(t, "dataset", RESULTS_STRING, NULL, NULL);
    const char *cols[] = {"records", "swapped_pct", "nll", "mmlu", "mmlu_questions", "nll_ci95"};
    for (int c = 0; c < 6; c++)
        results_table_column(t, cols[c], RESULTS_FLOAT64, NULL, NULL);
    const char *names[] = {"base", "qlab_chat@300", "qlab_chat~50", "qlab_task"};
    double records[] = {0, 300, 3000, 3000}, swapped[] = {0, 0, 50, 0}, nll[] = {7.5, chat_nll, 9.0, 10.0};
    for (int i = 0; i < 4; i++) {
        results_set_string(t, "dataset", names[i]);
        results_set_double(t, "records", records[i]);
        results_set_double(t, "swapped_pct", swapped[i]);
        results_set_double(t, "nll", nll[i]);
        results_set_double(t, "mmlu", 0.25);
        results_set_double(t, "mmlu_questions", 57);
        results_set_double(t, "nll_ci95", ci);
        CHECK(results_row_end(t) == QLAB_OK);
    }
    CHECK(results_commit(r) == QLAB_OK);
}

/* A memory-footprint file with table and column names qlab paper does not know in advance. */
static void write_memory_footprint(const char *path) {
    results *r = NULL;
    CHECK(results_create(&r, path, "memory_footprint", NULL, 0, NULL) == QLAB_OK);
    results_table *t = NULL;
    CHECK(results_table_begin(r, &t, "footprint", "peak memory") == QLAB_OK);
    results_table_column(t, "setup", RESULTS_STRING, NULL, NULL);
    results_table_column(t, "peak_rss_bytes", RESULTS_INT64, "bytes", NULL);
    const char *setups[] = {"full_fp32", "qlora_nf4_dq"};
    int64_t rss[] = {123456789, 23456789};
    for (int i = 0; i < 2; i++) {
        results_set_string(t, "setup", setups[i]);
        results_set_int(t, "peak_rss_bytes", rss[i]);
        CHECK(results_row_end(t) == QLAB_OK);
    }
    CHECK(results_commit(r) == QLAB_OK);
}

/* The line of REPORT.md whose first cell is artefact. */
static char *row(const char *md_path, const char *artefact) {
    char *text = NULL;
    size_t len = 0;
    if (qlab_read_file(md_path, &text, &len) != QLAB_OK) return NULL;
    char key[128];
    snprintf(key, sizeof key, "\n| %s |", artefact);
    char *p = strstr(text, key), *out = NULL;
    if (p) {
        p++;
        out = strndup(p, strcspn(p, "\n"));
    }
    free(text);
    return out;
}

static int run_paper(void) {
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "%s paper --results %s > %s 2>&1", qlab, test_tmp_dir(), tmp_path("log"));
    return run_shell(cmd);
}

static void test_verdicts(void) {
    test_tmp_dir_create("cli_paper");
    CHECK(run_paper() == 0); /* nothing there: every claim "not run" */
    char *r = row(tmp_path("REPORT.md"), "Tables 3/4");
    CHECKF(r && strstr(r, "| not run |"), "%s", r ? r : "(no row)");
    free(r);

    write_double_quant(tmp_path("double_quant.h5"), 0.1274);
    write_qlora(tmp_path("qlora_vs_16bit.h5"), 0.01, 0.05);
    CHECK(run_paper() == 0);
    r = row(tmp_path("REPORT.md"), "§3 double quantization");
    CHECKF(r && strstr(r, "**reproduced**") && strstr(r, "0.1274"), "%s", r ? r : "(no row)");
    free(r);
    r = row(tmp_path("REPORT.md"), "Tables 3/4");
    CHECKF(r && strstr(r, "**reproduced**") && strstr(r, "+0.0100 ± 0.0500"), "%s", r ? r : "(no row)");
    free(r);
    r = row(tmp_path("REPORT.md"), "memory");
    CHECKF(r && strstr(r, "not testable at this scale") && strstr(r, "4.0x"), "%s", r ? r : "(no row)");
    free(r);

    /* DQ constants at 0.2 bits: three of four figures off -> partially; NF4+DQ 0.2 above LoRA with an
     * interval of 0.05, FP4 still worse -> partially. */
    write_double_quant(tmp_path("double_quant.h5"), 0.2);
    write_qlora(tmp_path("qlora_vs_16bit.h5"), 0.2, 0.05);
    CHECK(run_paper() == 0);
    r = row(tmp_path("REPORT.md"), "§3 double quantization");
    CHECKF(r && strstr(r, "**partially reproduced**"), "%s", r ? r : "(no row)");
    free(r);
    r = row(tmp_path("REPORT.md"), "Tables 3/4");
    CHECKF(r && strstr(r, "**partially reproduced**"), "%s", r ? r : "(no row)");
    free(r);

    /* Memory measured: "not yet measured" without the file; its byte columns quoted when present. */
    r = row(tmp_path("REPORT.md"), "memory (measured)");
    CHECKF(r && strstr(r, "not testable at this scale") && strstr(r, "not yet measured"), "%s",
           r ? r : "(no row)");
    free(r);
    write_memory_footprint(tmp_path("memory_footprint.h5"));
    /* The generated family: the small clean chat set best -> reproduced; beaten by the task set -> not. */
    write_dataset_quality(tmp_path("dataset_quality.h5"), 8.5, 0.2);
    CHECK(run_paper() == 0);
    r = row(tmp_path("REPORT.md"), "memory (measured)");
    CHECKF(r && strstr(r, "not testable at this scale") &&
               strstr(r, "full_fp32 peak_rss_bytes = 1.23457e+08") &&
               strstr(r, "qlora_nf4_dq peak_rss_bytes = 2.34568e+07"),
           "%s", r ? r : "(no row)");
    free(r);
    r = row(tmp_path("REPORT.md"), "Tables 5/6 (generated)");
    CHECKF(r && strstr(r, "**reproduced**") &&
               strstr(r, "qlab_chat@300 (300 records, 0% swapped) 8.500 ± 0.200"),
           "%s", r ? r : "(no row)");
    free(r);
    /* Intervals of 1.0: the small chat set still best on the means, not beyond the intervals -> partially. */
    write_dataset_quality(tmp_path("dataset_quality.h5"), 8.5, 1.0);
    CHECK(run_paper() == 0);
    r = row(tmp_path("REPORT.md"), "Tables 5/6 (generated)");
    CHECKF(r && strstr(r, "**partially reproduced**") && strstr(r, "not beyond"), "%s", r ? r : "(no row)");
    free(r);
    write_dataset_quality(tmp_path("dataset_quality.h5"), 10.5, 0.2);
    CHECK(run_paper() == 0);
    r = row(tmp_path("REPORT.md"), "Tables 5/6 (generated)");
    CHECKF(r && strstr(r, "**not reproduced**") && strstr(r, "does not beat"), "%s", r ? r : "(no row)");
    free(r);
    r = row(tmp_path("REPORT.md"), "Tables 5/6"); /* the real-data claim ignores the generated sets */
    CHECKF(r && strstr(r, "**not reproduced**") && !strstr(r, "qlab_task"), "%s", r ? r : "(no row)");
    free(r);

    char cmd[1400];
    snprintf(cmd, sizeof cmd, "%s paper --bogus > /dev/null 2> %s", qlab, tmp_path("err"));
    CHECK(run_shell(cmd) == 2);
    char *err = NULL;
    size_t len = 0;
    CHECK(qlab_read_file(tmp_path("err"), &err, &len) == QLAB_OK);
    CHECKF(err && strstr(err, "--bogus") && strchr(err, '\n') == err + len - 1, "%s", err ? err : "");
    free(err);
    test_tmp_dir_remove();
}

int main(void) {
    const char *b = getenv("QLAB_BUILD");
    snprintf(qlab, sizeof qlab, "%s/bin/qlab", b && b[0] ? b : "build");
    if (access(qlab, X_OK) != 0) {
        SKIP("%s not built", qlab);
        return check_summary();
    }
    test_verdicts();
    return check_summary();
}
