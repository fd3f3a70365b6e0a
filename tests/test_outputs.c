/* No stale or half-written outputs (issue 13): SIGINT/SIGTERM remove the run's temporary files and exit
 * 130/143 (library writers and a real experiment program); a later write removes temporary files of dead
 * runs and leaves those of live ones; an experiment whose table would be empty fails without replacing the
 * earlier results; `qlab report` names its .dat files after the run and removes that run's stale ones, so a
 * figure never draws another run's data; the Makefile's experiment rule writes under the config's name. */
#include <dirent.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/check.h"
#include "tests/cli_run.h"
#include "core/base/atomic_file.h"
#include "core/base/common.h"
#include "core/base/tmpfiles.h"
#include "core/results/config.h"
#include "core/results/results.h"
#include "tests/test_util.h"

static int exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

/* How many files in dir have names starting with prefix; with remove, also unlinks each of them. */
static int prefixed(const char *dir, const char *prefix, int remove) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    char path[1024];
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (strncmp(e->d_name, prefix, strlen(prefix)) != 0) continue;
        n++;
        if (!remove) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    return n;
}

static int count_prefixed(const char *dir, const char *prefix) {
    return prefixed(dir, prefix, 0);
}

/* A child that opens a writer (atomic file: kind 0, results: kind 1), then signals itself. */
static void signal_child(int kind, int sig) {
    const char *path = tmp_path(kind ? "sig.h5" : "sig.bin");
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        if (kind == 0) {
            atomic_file w;
            if (atomic_file_open(&w, path) != QLAB_OK) _exit(3);
            atomic_file_write(&w, "partial", 7);
            fflush(w.f);
        } else {
            results *r;
            if (results_create(&r, path, "signal_test", NULL, 0, NULL) != QLAB_OK) _exit(3);
        }
        char tmp[600];
        snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
        if (!exists(tmp)) _exit(4); /* the temporary file is there until the signal */
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 2);
        raise(sig);
        _exit(5);
    }
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECKF(WIFEXITED(status) && WEXITSTATUS(status) == 128 + sig, "kind %d signal %d: status %d", kind, sig,
           status);
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)pid);
    CHECKF(!exists(tmp), "%s survived signal %d", tmp, sig);
    CHECK(!exists(path));
}

static void test_signals(void) {
    signal_child(0, SIGINT);
    signal_child(0, SIGTERM);
    signal_child(1, SIGINT);
    signal_child(1, SIGTERM);
}

static void test_stale_sweep(void) {
    const char *path = tmp_path("sweep.bin");
    /* a pid that is certainly dead: a reaped child */
    pid_t dead = fork();
    if (dead == 0) _exit(0);
    waitpid(dead, NULL, 0);
    char stale[600], stale_suffixed[620], live[600], other[600];
    snprintf(stale, sizeof stale, "%s.tmp.%ld", path, (long)dead);
    snprintf(stale_suffixed, sizeof stale_suffixed, "%s.tmp.%ld.png", path, (long)dead);
    snprintf(live, sizeof live, "%s.tmp.%ld", path, (long)getppid()); /* a live process (make / the shell) */
    snprintf(other, sizeof other, "%s.tmp.notapid", path);
    write_bytes(stale, "x", 1);
    write_bytes(stale_suffixed, "x", 1);
    write_bytes(live, "x", 1);
    write_bytes(other, "x", 1);
    CHECK(qlab_write_file_atomic(path, "data", 4) == QLAB_OK);
    CHECK(!exists(stale) && !exists(stale_suffixed));
    CHECK(exists(live) && exists(other) && exists(path));
    unlink(live);
    unlink(other);
    /* the results writer sweeps too */
    const char *h5 = tmp_path("sweep.h5");
    snprintf(stale, sizeof stale, "%s.tmp.%ld", h5, (long)dead);
    write_bytes(stale, "x", 1);
    results *r;
    CHECK(results_create(&r, h5, "sweep", NULL, 0, NULL) == QLAB_OK);
    CHECK(!exists(stale));
    results_abort(r);
}

/* A real experiment program: SIGTERM while it runs leaves neither its temporary file nor a result. */
static void test_experiment_signal(const char *build) {
    char program[600];
    snprintf(program, sizeof program, "%s/bin/double_quant", build);
    if (access(program, X_OK) != 0) {
        SKIP("%s not built: experiment signal case not run", program);
        return;
    }
    const char *cfg = tmp_path("long.json"), *out = tmp_path("long.h5");
    /* big enough to run for several seconds */
    const char *text =
        "{\"seed\": 1, \"n_weights\": 16777216, \"dtypes\": [\"nf4\", \"fp4\", \"int4\", \"af4\"], "
        "\"blocksizes\": [32, 64, 128, 256, 512, 1024, 2048, 4096]}";
    write_bytes(cfg, text, strlen(text));
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 1);
        dup2(devnull, 2);
        execl(program, program, "--config", cfg, "--out", out, (char *)NULL);
        _exit(127);
    }
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", out, (long)pid);
    int seen = 0;
    for (int i = 0; i < 2000 && !seen; i++) { /* up to 20 s for the file to appear */
        seen = exists(tmp);
        if (!seen) {
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    CHECKF(seen, "%s never appeared", tmp);
    kill(pid, SIGTERM);
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECKF(WIFEXITED(status) && WEXITSTATUS(status) == 143, "double_quant after SIGTERM: status %d", status);
    CHECKF(!exists(tmp), "%s left behind", tmp);
    CHECK(!exists(out));

    /* an empty list: the earlier results stay as they were */
    write_bytes(out, "earlier results", 15);
    const char *empty = tmp_path("empty.json");
    const char *empty_text = "{\"seed\": 1, \"n_weights\": 1024, \"dtypes\": [], \"blocksizes\": [64]}";
    write_bytes(empty, empty_text, strlen(empty_text));
    const char *argv[] = {program, "--config", empty, "--out", out, NULL};
    cli_expect_error(cli_exec(argv), 1, "no rows", out, "double_quant with no dtypes");
    char *kept = NULL;
    size_t len = 0;
    CHECK(qlab_read_file(out, &kept, &len) == QLAB_OK && len == 15 && !memcmp(kept, "earlier results", 15));
    free(kept);
    CHECK(count_prefixed(test_tmp_dir(), "long.h5.tmp.") == 0);
}

/* Writes a small results file of experiment double_quant with the given tables (row counts). */
static void write_results(const char *path, const char *const *tables, const int *rows, int n) {
    results *r;
    CHECK(results_create(&r, path, "double_quant", NULL, 0, NULL) == QLAB_OK);
    for (int t = 0; t < n; t++) {
        results_table *tb;
        CHECK(results_table_begin(r, &tb, tables[t], "t") == QLAB_OK);
        CHECK(results_table_column(tb, "x", RESULTS_FLOAT64, "", "x") == QLAB_OK);
        for (int i = 0; i < rows[t]; i++) {
            CHECK(results_set_double(tb, "x", i) == QLAB_OK);
            CHECK(results_row_end(tb) == QLAB_OK);
        }
    }
    CHECK(results_commit(r) == QLAB_OK);
}

static void test_report(void) {
    if (!cli_init()) return;
    const char *dir = tmp_path("plots");
    mkdir(dir, 0700);
    const char *h5a = tmp_path("run_a.h5"), *h5b = tmp_path("run_b.h5"), *h5e = tmp_path("run_e.h5");
    const char *two[] = {"gaussian", "stories260k"}, *one[] = {"gaussian"};
    int rows2[] = {3, 2}, rows1[] = {4}, rows0[] = {0};
    write_results(h5a, two, rows2, 2);
    write_results(h5b, one, rows1, 1);
    write_results(h5e, one, rows0, 1);
    char md_a[600], md_b[600], path[700];
    snprintf(md_a, sizeof md_a, "%s/run_a.md", dir);
    snprintf(md_b, sizeof md_b, "%s/run_b.md", dir);
    CHECKF(cli_run("report", h5a, "--md", md_a, NULL) == 0, "%s", cli_err);
    snprintf(path, sizeof path, "%s/run_a.stories260k.dat", dir);
    CHECK(exists(path));
    /* another run of another name: its own files; run_a's are untouched */
    CHECKF(cli_run("report", h5b, "--md", md_b, NULL) == 0, "%s", cli_err);
    snprintf(path, sizeof path, "%s/run_b.gaussian.dat", dir);
    CHECK(exists(path));
    snprintf(path, sizeof path, "%s/run_b.stories260k.dat", dir);
    CHECK(!exists(path));
    snprintf(path, sizeof path, "%s/run_a.stories260k.dat", dir);
    CHECK(exists(path));
    /* the same run name again without the stories260k table: the old file is removed, not drawn */
    CHECKF(cli_run("report", h5b, "--md", md_a, NULL) == 0, "%s", cli_err);
    CHECKF(!exists(path), "%s is stale and still there", path);
    CHECK(count_prefixed(dir, "run_a.") == 2); /* run_a.md and run_a.gaussian.dat */
    /* an empty table is an error naming the file and the table, not a header-only .dat */
    cli_expect_error(cli_run("report", h5e, "--md", tmp_path("plots/run_e.md"), NULL), 1, h5e,
                     "'gaussian' has no rows", "report of an empty table");
    CHECK(count_prefixed(dir, "run_e.") == 0);
}

/* An output that cannot be written is refused before the work, not after it (issue 13): the check itself,
 * an experiment's argument parsing, and qlab mmlu / generate, which write their results only at the end. */
static void test_destination(void) {
    char missing[700], file_dir[700];
    snprintf(missing, sizeof missing, "%s/no_such_folder/r.h5", test_tmp_dir());
    snprintf(file_dir, sizeof file_dir, "%s/plain_file/r.h5", test_tmp_dir());
    write_bytes(tmp_path("plain_file"), "x", 1);
    CHECK(atomic_file_check_destination(tmp_path("r.h5")) == QLAB_OK);
    CHECK(atomic_file_check_destination("r.h5") == QLAB_OK); /* the current folder */
    CHECK(atomic_file_check_destination(missing) == QLAB_ERR_IO);
    CHECKF(strstr(qlab_last_error(), "no_such_folder") && strstr(qlab_last_error(), "r.h5"), "%s",
           qlab_last_error());
    CHECK(atomic_file_check_destination(file_dir) == QLAB_ERR_IO);
    CHECKF(strstr(qlab_last_error(), "is not a folder"), "%s", qlab_last_error());
    CHECK(atomic_file_check_destination(test_tmp_dir()) == QLAB_ERR_IO);
    CHECKF(strstr(qlab_last_error(), "is a folder"), "%s", qlab_last_error());
    CHECK(atomic_file_check_destination("") == QLAB_ERR_IO);
    CHECK(!exists(missing));

    experiment_args a;
    char *ok_argv[] = {"x", "--out", (char *)tmp_path("r.h5"), NULL},
         *bad_argv[] = {"x", "--out", missing, NULL};
    CHECK(experiment_parse_args(&a, "x", 3, ok_argv, NULL) == -1);
    CHECK(experiment_parse_args(&a, "x", 3, bad_argv, NULL) == 2);

    if (!cli_init()) return;
    /* no model at all: the output is what is refused, before anything loads */
    cli_expect_error(cli_run("mmlu", "--model", "no_such_model.gguf", "--out", missing, NULL), 2, missing,
                     "no_such_folder", "qlab mmlu with --out in a missing folder");
    cli_expect_error(
        cli_run("mmlu", "--model", "no_such_model.gguf", "--out", tmp_path("r.h5"), "--md", file_dir, NULL),
        2, file_dir, "is not a folder", "qlab mmlu with --md under a file");
    cli_expect_error(cli_run("generate", "--model", "no_such_model.gguf", "--tokenizer", "t.bin", "--prompts",
                             "p.jsonl", "--out", missing, NULL),
                     2, missing, "no_such_folder", "qlab generate with --out in a missing folder");
}

/* The Makefile's experiment rule, run for real on a tiny config: everything lands under the config's name. */
static void test_makefile_rule(const char *build) {
    if (access("Makefile", R_OK) != 0 || run_shell("command -v gnuplot > /dev/null 2>&1") != 0) {
        SKIP("not run from the repository root, or no gnuplot: the Makefile's experiment rule not run");
        return;
    }
    char name[64], cfg[700], command[2000], h5[128], md[128], png[128], svg[128], dat[160];
    snprintf(name, sizeof name, "qlab_test_outputs_%ld", (long)getpid());
    snprintf(cfg, sizeof cfg, "%s/%s.json", test_tmp_dir(), name);
    const char *text = "{\"seed\": 1, \"n_weights\": 4096, \"dtypes\": [\"nf4\"], \"blocksizes\": [64]}";
    write_bytes(cfg, text, strlen(text));
    snprintf(h5, sizeof h5, "results/%s.h5", name);
    snprintf(md, sizeof md, "results/%s.md", name);
    snprintf(png, sizeof png, "plots/%s.png", name);
    snprintf(svg, sizeof svg, "plots/%s.svg", name);
    snprintf(dat, sizeof dat, "plots/%s.gaussian.dat", name);
    snprintf(command, sizeof command,
             "env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s experiment-double-quant BUILD='%s' CONFIG='%s' "
             "> '%s/make.log' 2>&1",
             build, cfg, test_tmp_dir());
    CHECKF(run_shell(command) == 0, "%s failed (log in %s/make.log)", command, test_tmp_dir());
    CHECK(exists(h5) && exists(md) && exists(png) && exists(svg) && exists(dat));
    /* every file the run wrote under its name: the report also draws the paper's and other tables */
    char prefix[80];
    snprintf(prefix, sizeof prefix, "%s.", name);
    prefixed("results", prefix, 1);
    prefixed("plots", prefix, 1);
    CHECK(count_prefixed("results", prefix) == 0 && count_prefixed("plots", prefix) == 0);
}

int main(void) {
    test_tmp_dir_create("outputs");
    const char *build = getenv("QLAB_BUILD");
    test_signals();
    test_stale_sweep();
    test_experiment_signal(build && build[0] ? build : "build");
    test_report();
    test_destination();
    test_makefile_rule(build && build[0] ? build : "build");
    test_tmp_dir_remove();
    return check_summary();
}
