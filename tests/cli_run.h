/* Running build/bin/qlab (or $QLAB_BUILD/bin/qlab) from a test with stdout and stderr captured, and the
 * checks an error run must pass: the exit code, exactly one stderr line, naming the file or flag. Needs
 * test_tmp_dir_create first (the captured output goes there). Header-only, as test_util.h. */
#ifndef QLAB_TESTS_CLI_RUN_H
#define QLAB_TESTS_CLI_RUN_H

#include <fcntl.h>
#include <stdarg.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/check.h"
#include "tests/test_util.h"

static char cli_bin[1024];
static char cli_out[65536], cli_err[65536];

/* Sets the qlab path; 0 (after a SKIP) when it is not built. */
static inline int cli_init(void) {
    const char *build = getenv("QLAB_BUILD");
    snprintf(cli_bin, sizeof cli_bin, "%s/bin/qlab", build && build[0] ? build : "build");
    if (access(cli_bin, X_OK) == 0) return 1;
    SKIP("%s not found (build it with make, or set QLAB_BUILD)", cli_bin);
    return 0;
}

static inline void cli_slurp(const char *path, char *buf, size_t cap) {
    buf[0] = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return;
    size_t n = fread(buf, 1, cap - 1, f);
    buf[n] = 0;
    fclose(f);
}

/* Runs argv (NULL-terminated; argv[0] is the program) with stdin from /dev/null; returns the exit code
 * (128 + signal on a crash) and leaves stdout/stderr in cli_out/cli_err. */
static inline int cli_exec(const char *const *argv) {
    const char *out_path = tmp_path("cli_stdout.txt"), *err_path = tmp_path("cli_stderr.txt");
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        int o = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600),
            e = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0600), i = open("/dev/null", O_RDONLY);
        if (o < 0 || e < 0 || i < 0) _exit(126);
        dup2(i, 0);
        dup2(o, 1);
        dup2(e, 2);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) < 0) return -1;
    cli_slurp(out_path, cli_out, sizeof cli_out);
    cli_slurp(err_path, cli_err, sizeof cli_err);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return WEXITSTATUS(status);
}

/* Runs qlab with the given arguments (NULL-terminated). */
static inline int cli_run(const char *first, ...) {
    const char *argv[48];
    int argc = 0;
    argv[argc++] = cli_bin;
    va_list ap;
    va_start(ap, first);
    for (const char *a = first; a && argc < 47; a = va_arg(ap, const char *))
        argv[argc++] = a;
    va_end(ap);
    argv[argc] = NULL;
    return cli_exec(argv);
}

static inline int cli_count_lines(const char *s) {
    int n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

/* A failing run: exit code want, one stderr line, naming mention (and mention2 unless NULL), nothing on
 * stdout that looks like a number being reported as a result ("nan"). */
static inline void cli_expect_error(int rc, int want, const char *mention, const char *mention2,
                                    const char *what) {
    CHECKF(rc == want, "%s: exit %d, want %d (stderr: %s)", what, rc, want, cli_err);
    size_t len = strlen(cli_err);
    CHECKF(cli_count_lines(cli_err) == 1 && len > 0 && cli_err[len - 1] == '\n',
           "%s: stderr is not one line: '%s'", what, cli_err);
    CHECKF(strstr(cli_err, mention) != NULL, "%s: stderr lacks '%s': %s", what, mention, cli_err);
    if (mention2)
        CHECKF(strstr(cli_err, mention2) != NULL, "%s: stderr lacks '%s': %s", what, mention2, cli_err);
    CHECKF(strstr(cli_out, "nan") == NULL, "%s: stdout reports nan: %s", what, cli_out);
}

#endif
