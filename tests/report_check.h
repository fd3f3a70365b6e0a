/* `qlab report` on an experiment's results file, as the experiment tests check it: the exit code, the
 * Markdown, the .dat file of every named table, and the figure (.png and its .svg) when gnuplot is
 * installed. Header-only like tests/test_util.h; needs tests/check.h included first. */
#ifndef QLAB_TESTS_REPORT_CHECK_H
#define QLAB_TESTS_REPORT_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "core/base/common.h"
#include "tests/test_util.h"

/* Runs build_dir/bin/qlab report on h5 into a fresh folder (files named <tag>.md, <tag>.png, <tag>.svg,
 * <tag>.<table>.dat), checks what it wrote, removes the folder, and returns the Markdown (the caller frees
 * it). NULL when qlab is not built (recorded as skipped) or the report failed (recorded as failed). */
static inline char *report_check(const char *build_dir, const char *h5, const char *tag,
                                 const char *const *tables, int n_tables) {
    char qlab[600], dir[200], command[2400], path[400];
    snprintf(qlab, sizeof qlab, "%s/bin/qlab", build_dir);
    if (access(qlab, X_OK) != 0) {
        SKIP("%s not built: report not checked", qlab);
        return NULL;
    }
    snprintf(dir, sizeof dir, "/tmp/qlab_report_%s_XXXXXX", tag);
    if (!mkdtemp(dir)) {
        perror(dir);
        exit(2);
    }
    int have_gnuplot = run_shell("command -v gnuplot > /dev/null 2>&1") == 0;
    char plot[300] = "";
    if (have_gnuplot) snprintf(plot, sizeof plot, "--plot '%s/%s.png'", dir, tag);
    snprintf(command, sizeof command, "'%s' report '%s' --md '%s/%s.md' --data-dir '%s' %s > /dev/null", qlab,
             h5, dir, tag, dir, plot);
    int rc = run_shell(command);
    CHECKF(rc == 0, "qlab report %s exited %d", h5, rc);
    char *md = NULL;
    size_t len = 0;
    snprintf(path, sizeof path, "%s/%s.md", dir, tag);
    if (rc == 0) CHECK(qlab_read_file(path, &md, &len) == QLAB_OK);
    for (int i = 0; i < n_tables; i++) {
        snprintf(path, sizeof path, "%s/%s.%s.dat", dir, tag, tables[i]);
        CHECKF(access(path, F_OK) == 0, "qlab report wrote no %s", path);
    }
    if (have_gnuplot) {
        const char *ext[] = {"png", "svg"};
        for (int i = 0; i < 2; i++) {
            snprintf(path, sizeof path, "%s/%s.%s", dir, tag, ext[i]);
            CHECKF(access(path, F_OK) == 0, "qlab report drew no %s", path);
        }
    } else {
        SKIP("gnuplot not installed: figure not checked");
    }
    snprintf(command, sizeof command, "rm -rf '%s'", dir);
    if (run_shell(command) != 0) fprintf(stderr, "warning: could not remove %s\n", dir);
    return md;
}

#endif
