/* Tests of the HDF5 results files: a write/read round trip of tables, arrays, notes and provenance;
 * the atomic publication (nothing under the real name until commit, no temporary left after a failure);
 * and one-line errors for bad input. */
#include <string.h>
#include <unistd.h>

#include "tests/check.h"
#include "core/results/config.h"
#include "core/results/results.h"
#include "tests/test_util.h"

static int exists(const char *path) {
    return access(path, F_OK) == 0;
}

static void test_round_trip(void) {
    static const config_key keys[] = {{"seed", CONFIG_INT, "1", "seed"}};
    const char *text = "{ \"seed\": 42 }\n";
    config *cfg;
    CHECK(config_parse(&cfg, text, "experiments/roundtrip.json", keys, 1, NULL, 0) == QLAB_OK);
    if (!cfg) return;

    char path[256];
    snprintf(path, sizeof path, "/tmp/qlab_test_results_%ld.h5", (long)getpid());
    unlink(path);
    char *argv[] = {"test_results", "--config", "experiments/roundtrip.json", "a b"};
    results *r;
    CHECK(results_create(&r, path, "roundtrip", cfg, 4, argv) == QLAB_OK);
    if (!r) return;
    CHECK(exists(results_tmp_path(r)));
    CHECK(!exists(path)); /* published only by commit */
    CHECK(results_attr_int(r, "seed", 42) == QLAB_OK);
    CHECK(results_note(r, "model_skipped", "model file absent; rows skipped") == QLAB_OK);

    results_table *t;
    CHECK(results_table_begin(r, &t, "errors", "Quantization error") == QLAB_OK);
    CHECK(results_table_column(t, "dtype", RESULTS_STRING, NULL, "data type") == QLAB_OK);
    CHECK(results_table_column(t, "blocksize", RESULTS_INT64, "elements", NULL) == QLAB_OK);
    CHECK(results_table_column(t, "mse", RESULTS_FLOAT64, "", "mean squared error") == QLAB_OK);
    CHECK(results_table_note(t, "first note") == QLAB_OK);
    CHECK(results_table_note(t, "second note") == QLAB_OK);
    const char *names[] = {"nf4", "fp4", "int4 with a long name"};
    for (int i = 0; i < 3; i++) {
        CHECK(results_set_string(t, "dtype", names[i]) == QLAB_OK);
        CHECK(results_set_int(t, "blocksize", 32 << i) == QLAB_OK);
        CHECK(results_set_double(t, "mse", 0.125 * i) == QLAB_OK);
        CHECK(results_row_end(t) == QLAB_OK);
    }
    CHECK(results_table_end(t) == QLAB_OK);

    /* A second table left open: commit must write it. Also an empty table. */
    results_table *t2, *t3;
    CHECK(results_table_begin(r, &t2, "paper", "Paper numbers") == QLAB_OK);
    CHECK(results_table_column(t2, "value", RESULTS_FLOAT64, "bits/param", NULL) == QLAB_OK);
    CHECK(results_set_double(t2, "value", 4.127) == QLAB_OK);
    CHECK(results_row_end(t2) == QLAB_OK);
    CHECK(results_table_begin(r, &t3, "empty", "No rows") == QLAB_OK);
    CHECK(results_table_column(t3, "x", RESULTS_FLOAT64, NULL, NULL) == QLAB_OK);

    double curve[6] = {1, 2, 3, 4, 5, 6};
    int64_t dims[2] = {2, 3};
    CHECK(results_write_array(r, "curve", curve, 2, dims, "a 2x3 array") == QLAB_OK);
    CHECK(results_commit(r) == QLAB_OK);
    CHECK(exists(path));
    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    CHECK(!exists(tmp));

    results_file f;
    CHECK(results_read(path, &f) == QLAB_OK);
    CHECK(f.ntables == 3);
    if (f.ntables == 3) {
        /* Tables come back in the order they were begun. */
        CHECK(strcmp(f.tables[0].name, "errors") == 0);
        CHECK(strcmp(f.tables[1].name, "paper") == 0);
        CHECK(strcmp(f.tables[2].name, "empty") == 0);
    }
    const results_table_data *e = results_file_table(&f, "errors");
    CHECK(e != NULL);
    if (e) {
        CHECK(e->nrows == 3 && e->ncols == 3);
        CHECK(strcmp(e->title, "Quantization error") == 0);
        CHECK(strcmp(e->notes, "first note\nsecond note") == 0);
        CHECK(strcmp(e->columns[0].name, "dtype") == 0 && strcmp(e->columns[2].name, "mse") == 0);
        const results_column *d = results_table_find_column(e, "dtype");
        const results_column *b = results_table_find_column(e, "blocksize");
        const results_column *m = results_table_find_column(e, "mse");
        CHECK(d && d->type == RESULTS_STRING && strcmp(d->str[2], "int4 with a long name") == 0);
        CHECK(d && strcmp(d->description, "data type") == 0 && strcmp(d->unit, "") == 0);
        CHECK(b && b->type == RESULTS_INT64 && b->i64[2] == 128 && strcmp(b->unit, "elements") == 0);
        CHECK(m && m->type == RESULTS_FLOAT64 && m->f64[1] == 0.125);
    }
    const results_table_data *p = results_file_table(&f, "paper");
    CHECK(p && p->nrows == 1 && p->columns[0].f64[0] == 4.127);
    const results_table_data *em = results_file_table(&f, "empty");
    CHECK(em && em->nrows == 0 && em->ncols == 1);
    CHECK(f.narrays == 1 && f.arrays[0].ndim == 2 && f.arrays[0].dims[1] == 3 && f.arrays[0].data[5] == 6.0);
    CHECK(f.nnotes == 1 && strcmp(f.notes[0].name, "model_skipped") == 0);

    /* Provenance: every attribute present and non-empty. */
    const char *required[] = {"experiment",
                              "config",
                              "config_path",
                              "qlab_version",
                              "git_commit",
                              "git_dirty",
                              "hdf5_version",
                              "cjson_version",
                              "openblas_version",
                              "compiler",
                              "cpu_model",
                              "threads",
                              "hostname",
                              "command_line",
                              "start_time_utc",
                              "end_time_utc",
                              "env_OMP_NUM_THREADS",
                              "env_OPENBLAS_NUM_THREADS",
                              "env_OPENBLAS_CORETYPE",
                              "seed",
                              "config_effective"};
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++) {
        const char *v = results_file_attr(&f, required[i]);
        CHECKF(v && v[0], "provenance attribute '%s' missing or empty", required[i]);
    }
    const char *cfg_text = results_file_attr(&f, "config");
    CHECK(cfg_text && strcmp(cfg_text, text) == 0);
    CHECK(strcmp(results_file_attr(&f, "experiment") ? results_file_attr(&f, "experiment") : "",
                 "roundtrip") == 0);
    CHECK(strcmp(results_file_attr(&f, "seed") ? results_file_attr(&f, "seed") : "", "42") == 0);
    CHECK(is_iso8601_utc(results_file_attr(&f, "start_time_utc")));
    CHECK(is_iso8601_utc(results_file_attr(&f, "end_time_utc")));
    const char *cmd = results_file_attr(&f, "command_line");
    CHECK(cmd && strcmp(cmd, "test_results --config experiments/roundtrip.json 'a b'") == 0);
    /* The tests run inside the checkout, so the commit is a 40-digit hash (or "unknown" in a tarball). */
    const char *commit = results_file_attr(&f, "git_commit");
    CHECK(commit && (strlen(commit) == 40 || strcmp(commit, "unknown") == 0));
    results_file_free(&f);
    unlink(path);
    config_free(cfg);
}

static void test_atomic_abort(void) {
    char path[256];
    snprintf(path, sizeof path, "/tmp/qlab_test_results_abort_%ld.h5", (long)getpid());
    unlink(path);
    results *r;
    CHECK(results_create(&r, path, "abort", NULL, 0, NULL) == QLAB_OK);
    if (!r) return;
    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s", results_tmp_path(r));
    results_table *t;
    CHECK(results_table_begin(r, &t, "x", "X") == QLAB_OK);
    CHECK(results_table_column(t, "v", RESULTS_FLOAT64, NULL, NULL) == QLAB_OK);
    CHECK(results_set_double(t, "v", 1.0) == QLAB_OK);
    CHECK(exists(tmp));
    results_abort(r); /* a run that failed half way */
    CHECK(!exists(path));
    CHECK(!exists(tmp));

    /* A failure the driver ignored still keeps commit from publishing. */
    CHECK(results_create(&r, path, "sticky", NULL, 0, NULL) == QLAB_OK);
    if (!r) return;
    snprintf(tmp, sizeof tmp, "%s", results_tmp_path(r));
    CHECK(results_table_begin(r, &t, "x", "X") == QLAB_OK);
    CHECK(results_table_column(t, "v", RESULTS_FLOAT64, NULL, NULL) == QLAB_OK);
    CHECK(results_set_int(t, "v", 3) == QLAB_ERR_ARG); /* wrong type */
    CHECK(strstr(qlab_last_error(), "column 'v' holds float64, not int64") != NULL);
    CHECK(results_row_end(t) == QLAB_ERR_ARG); /* v was never set */
    CHECK(results_commit(r) == QLAB_ERR_ARG);
    CHECK(strstr(qlab_last_error(), "column 'v' holds float64") != NULL); /* the first failure is reported */
    CHECK(!exists(path));
    CHECK(!exists(tmp));
}

static void test_errors(void) {
    results *r;
    CHECK(results_create(&r, "/nonexistent/qlab/dir/out.h5", "x", NULL, 0, NULL) == QLAB_ERR_IO);
    CHECK(r == NULL);
    CHECK(strstr(qlab_last_error(), "/nonexistent/qlab/dir/out.h5.tmp.") != NULL);
    CHECK(strchr(qlab_last_error(), '\n') == NULL); /* one line */

    results_file f;
    CHECK(results_read("/nonexistent/qlab/x.h5", &f) == QLAB_ERR_IO);
    char path[256];
    snprintf(path, sizeof path, "/tmp/qlab_test_results_garbage_%ld.h5", (long)getpid());
    FILE *g = fopen(path, "wb");
    CHECK(g != NULL);
    if (g) {
        fputs("this is not HDF5\n", g);
        fclose(g);
    }
    CHECK(results_read(path, &f) == QLAB_ERR_FORMAT);
    CHECK(strstr(qlab_last_error(), "not an HDF5 file") != NULL);
    unlink(path);

    snprintf(path, sizeof path, "/tmp/qlab_test_results_names_%ld.h5", (long)getpid());
    CHECK(results_create(&r, path, "x", NULL, 0, NULL) == QLAB_OK);
    if (!r) return;
    results_table *t;
    CHECK(results_table_begin(r, &t, "bad/name", "X") == QLAB_ERR_ARG);
    CHECK(strstr(qlab_last_error(), "table name 'bad/name'") != NULL);
    results_abort(r);
    CHECK(!exists(path));
}

int main(void) {
    test_round_trip();
    test_atomic_abort();
    test_errors();
    return check_summary();
}
