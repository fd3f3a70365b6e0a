/* Helpers the test programs share: a private temporary folder and paths in it, writing a small file, running
 * a shell command for its exit code, and the provenance timestamp format. Header-only (static inline), since
 * every tests/test_*.c is its own program; a helper that cannot do its job exits 2, which fails the test. */
#ifndef QLAB_TESTS_TEST_UTIL_H
#define QLAB_TESTS_TEST_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

/* The folder made by test_tmp_dir_create ("" before). */
static inline char *test_tmp_dir(void) {
    static char dir[256];
    return dir;
}

/* Makes a fresh private folder /tmp/qlab_test_<name>_XXXXXX for this program's files. */
static inline void test_tmp_dir_create(const char *name) {
    char *dir = test_tmp_dir();
    snprintf(dir, 256, "/tmp/qlab_test_%s_XXXXXX", name);
    if (!mkdtemp(dir)) {
        perror(dir);
        exit(2);
    }
}

/* Removes the folder and everything in it (a warning, not a failure, when that does not work). */
static inline void test_tmp_dir_remove(void) {
    char command[320];
    snprintf(command, sizeof command, "rm -rf '%s'", test_tmp_dir());
    if (system(command) != 0) fprintf(stderr, "warning: could not remove %s\n", test_tmp_dir());
}

/* name inside the folder, as a fresh string per call, so earlier paths stay valid. The strings live until
 * the program ends, kept in a list a static pointer reaches (so LeakSanitizer, in make test-asan, does not
 * count them as leaks). */
static inline const char *tmp_path(const char *name) {
    static char **kept;
    static size_t n_kept, cap_kept;
    char buf[512];
    snprintf(buf, sizeof buf, "%s/%s", test_tmp_dir(), name);
    char *s = strdup(buf);
    if (n_kept == cap_kept) {
        size_t cap = cap_kept ? 2 * cap_kept : 64;
        char **grown = realloc(kept, cap * sizeof *grown);
        if (!grown) exit(2);
        kept = grown, cap_kept = cap;
    }
    if (!s) exit(2);
    kept[n_kept++] = s;
    return s;
}

static inline void write_bytes(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f || (len && fwrite(data, 1, len, f) != len)) {
        perror(path);
        exit(2);
    }
    fclose(f);
}

/* Runs command with /bin/sh; its exit code, or -1 when it could not be started. */
static inline int run_shell(const char *command) {
    int rc = system(command);
    return rc == -1 ? -1 : WEXITSTATUS(rc);
}

/* A UTC timestamp as provenance records it: 2026-11-23T13:18:23Z. */
static inline int is_iso8601_utc(const char *s) {
    if (!s || strlen(s) != 20) return 0;
    for (int i = 0; i < 20; i++) {
        char c = s[i];
        int ok = (i == 4 || i == 7)     ? c == '-'
                 : i == 10              ? c == 'T'
                 : (i == 13 || i == 16) ? c == ':'
                 : i == 19              ? c == 'Z'
                                        : (c >= '0' && c <= '9');
        if (!ok) return 0;
    }
    return 1;
}

#endif
