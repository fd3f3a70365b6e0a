/* Collects the provenance of a run (see provenance.h). Everything here is best effort: a fact that
 * cannot be found is recorded as "unknown" rather than failing an experiment that took an hour. */
#include "core/results/provenance.h"

#include "core/base/memacct.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <hdf5.h>
#ifdef QLAB_HAVE_OPENBLAS
#include <cblas.h>
#endif

qlab_status provenance_set(provenance *p, const char *key, const char *value) {
    if (!value) value = "unknown";
    for (int i = 0; i < p->count; i++)
        if (!strcmp(p->entries[i].key, key)) {
            char *v = strdup(value);
            if (!v) return qlab_fail(QLAB_ERR_NOMEM, "out of memory recording provenance '%s'", key);
            free(p->entries[i].value);
            p->entries[i].value = v;
            return QLAB_OK;
        }
    if (p->count == p->capacity) {
        int cap = p->capacity ? 2 * p->capacity : 32;
        provenance_entry *e = realloc(p->entries, (size_t)cap * sizeof *e);
        if (!e) return qlab_fail(QLAB_ERR_NOMEM, "out of memory recording provenance '%s'", key);
        p->entries = e;
        p->capacity = cap;
    }
    char *k = strdup(key), *v = strdup(value);
    if (!k || !v) {
        free(k);
        free(v);
        return qlab_fail(QLAB_ERR_NOMEM, "out of memory recording provenance '%s'", key);
    }
    p->entries[p->count].key = k;
    p->entries[p->count].value = v;
    p->count++;
    return QLAB_OK;
}

const char *provenance_get(const provenance *p, const char *key) {
    for (int i = 0; i < p->count; i++)
        if (!strcmp(p->entries[i].key, key)) return p->entries[i].value;
    return NULL;
}

void provenance_free(provenance *p) {
    for (int i = 0; i < p->count; i++) {
        free(p->entries[i].key);
        free(p->entries[i].value);
    }
    free(p->entries);
    memset(p, 0, sizeof *p);
}

void provenance_utc_now(char *buf, int n) {
    time_t t = time(NULL);
    struct tm tm;
    if (!gmtime_r(&t, &tm) || !strftime(buf, (size_t)n, "%Y-%m-%dT%H:%M:%SZ", &tm))
        snprintf(buf, (size_t)n, "unknown");
}

/* Runs a shell command and returns its whole stdout (malloc'd, trailing newline kept), or NULL when it
 * cannot be started or exits non-zero. */
static char *run_capture(const char *command) {
    FILE *f = popen(command, "r");
    if (!f) return NULL;
    size_t len = 0, cap = 256;
    char *buf = malloc(cap);
    while (buf) {
        if (len + 1 == cap) {
            char *b = cap < (1u << 24) ? realloc(buf, cap * 2) : NULL;
            if (!b) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = b;
            cap *= 2;
        }
        size_t got = fread(buf + len, 1, cap - 1 - len, f);
        if (got == 0) break;
        len += got;
    }
    int rc = pclose(f);
    if (!buf) return NULL;
    buf[len] = 0;
    if (rc != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

/* dir inside single quotes for /bin/sh, with embedded quotes escaped. */
static void shell_quote(const char *s, char *out, size_t n) {
    size_t j = 0;
    if (n < 3) {
        if (n) out[0] = 0;
        return;
    }
    out[j++] = '\'';
    for (; *s && j + 5 < n; s++) {
        if (*s == '\'') {
            memcpy(out + j, "'\\''", 4);
            j += 4;
        } else {
            out[j++] = *s;
        }
    }
    out[j++] = '\'';
    out[j] = 0;
}

void provenance_git(const char *dir, char *commit, int commit_size, char *dirty, int dirty_size,
                    char **status) {
    snprintf(commit, (size_t)commit_size, "unknown");
    snprintf(dirty, (size_t)dirty_size, "unknown");
    if (status) *status = NULL;
    char quoted[PATH_MAX * 2], command[PATH_MAX * 2 + 128];
    shell_quote(dir ? dir : ".", quoted, sizeof quoted);
    snprintf(command, sizeof command, "git -C %s rev-parse HEAD 2>/dev/null", quoted);
    char *out = run_capture(command);
    if (!out) return;
    out[strcspn(out, "\r\n")] = 0;
    if (strlen(out) >= 7) snprintf(commit, (size_t)commit_size, "%s", out);
    free(out);
    snprintf(command, sizeof command, "git -C %s status --porcelain 2>/dev/null", quoted);
    out = run_capture(command);
    if (!out) return;
    snprintf(dirty, (size_t)dirty_size, "%s", out[0] ? "true" : "false");
    if (status)
        *status = out;
    else
        free(out);
}

/* The directory of the running program, so the commit recorded is that of the checkout the binary was
 * built in, whatever the working directory. Falls back to ".". */
static void program_dir(char *buf, size_t n) {
    ssize_t len = readlink("/proc/self/exe", buf, n - 1);
    if (len <= 0) {
        snprintf(buf, n, ".");
        return;
    }
    buf[len] = 0;
    char *slash = strrchr(buf, '/');
    if (slash && slash != buf) *slash = 0;
}

static void cpu_model(char *buf, size_t n) {
    snprintf(buf, n, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) != 0) continue;
        const char *colon = strchr(line, ':');
        if (!colon) continue;
        colon++;
        while (*colon == ' ' || *colon == '\t')
            colon++;
        snprintf(buf, n, "%s", colon);
        buf[strcspn(buf, "\n")] = 0;
        break;
    }
    fclose(f);
}

/* argv joined with spaces; arguments with shell-special characters are single-quoted. */
static char *command_line(int argc, char *const *argv) {
    size_t cap = 1;
    for (int i = 0; i < argc; i++)
        cap += strlen(argv[i]) * 4 + 3;
    char *s = malloc(cap), quoted[4096];
    if (!s) return NULL;
    s[0] = 0;
    size_t len = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        int plain = a[0] != 0;
        for (const char *c = a; *c; c++)
            if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./=,:+@%", *c))
                plain = 0;
        if (!plain) {
            shell_quote(a, quoted, sizeof quoted);
            a = quoted;
        }
        len += (size_t)snprintf(s + len, cap - len, "%s%s", i ? " " : "", a);
    }
    return s;
}

/* The versions of the libraries and the compiler this binary was built with. */
static qlab_status set_library_versions(provenance *p) {
    char buf[1024];
    qlab_status st = QLAB_OK;
#define SET(key, value)                                                                                      \
    do {                                                                                                     \
        if ((st = provenance_set(p, key, value)) != QLAB_OK) return st;                                      \
    } while (0)
    unsigned major = 0, minor = 0, release = 0;
    H5get_libversion(&major, &minor, &release);
    snprintf(buf, sizeof buf, "%u.%u.%u", major, minor, release);
    SET("hdf5_version", buf);
    SET("cjson_version", cJSON_Version());
#ifdef QLAB_HAVE_OPENBLAS
#ifdef OPENBLAS_VERSION
    snprintf(buf, sizeof buf, "%s", OPENBLAS_VERSION);
#else
    snprintf(buf, sizeof buf, "unknown");
#endif
    {
        char *trimmed = buf;
        while (*trimmed == ' ')
            trimmed++;
        if (!strncmp(trimmed, "OpenBLAS ", 9)) trimmed += 9; /* the macro reads " OpenBLAS 0.3.21 " */
        size_t tl = strlen(trimmed);
        while (tl && trimmed[tl - 1] == ' ')
            trimmed[--tl] = 0;
        SET("openblas_version", trimmed);
    }
    SET("openblas_config", openblas_get_config());
    snprintf(buf, sizeof buf, "%d", openblas_get_num_threads());
    SET("openblas_threads", buf);
#else
    SET("openblas_version", "not linked");
#endif
#ifdef __VERSION__
    SET("compiler", "gcc " __VERSION__);
#else
    SET("compiler", "unknown");
#endif
#undef SET
    return QLAB_OK;
}

qlab_status provenance_collect(provenance *p, const char *experiment, const char *config_path,
                               const char *config_text, int argc, char *const *argv) {
    memset(p, 0, sizeof *p);
    char buf[1024], dir[PATH_MAX], commit[128], dirty[16];
    char *status = NULL, *cmdline = NULL;
    qlab_status st = QLAB_OK;
#define SET(key, value)                                                                                      \
    do {                                                                                                     \
        if ((st = provenance_set(p, key, value)) != QLAB_OK) goto fail;                                      \
    } while (0)

    SET("experiment", experiment ? experiment : "unknown");
    SET("config_path", config_path ? config_path : "");
    SET("config", config_text ? config_text : "");
    SET("qlab_version", QLAB_VERSION);

    program_dir(dir, sizeof dir);
    provenance_git(dir, commit, sizeof commit, dirty, sizeof dirty, &status);
    if (!strcmp(commit, "unknown")) { /* a binary installed outside the checkout: try where we run */
        free(status);
        provenance_git(".", commit, sizeof commit, dirty, sizeof dirty, &status);
    }
    SET("git_commit", commit);
    SET("git_dirty", dirty);
    SET("git_status", status ? status : "");

    if ((st = set_library_versions(p)) != QLAB_OK) goto fail;

    cpu_model(buf, sizeof buf);
    SET("cpu_model", buf);
    snprintf(buf, sizeof buf, "%ld", sysconf(_SC_NPROCESSORS_ONLN));
    SET("cpu_count", buf);
    snprintf(buf, sizeof buf, "%d", qlab_num_threads());
    SET("threads", buf);
    if (memacct_get_budget()) {
        char human[32];
        snprintf(buf, sizeof buf, "%zu bytes (%s)", memacct_get_budget(),
                 memacct_format_bytes(memacct_get_budget(), human, sizeof human));
    } else {
        snprintf(buf, sizeof buf, "none");
    }
    SET("memory_budget", buf);
    if (gethostname(buf, sizeof buf - 1) != 0) snprintf(buf, sizeof buf, "unknown");
    buf[sizeof buf - 1] = 0;
    SET("hostname", buf);
    struct utsname un;
    if (uname(&un) == 0)
        snprintf(buf, sizeof buf, "%s %s %s", un.sysname, un.release, un.machine);
    else
        snprintf(buf, sizeof buf, "unknown");
    SET("os", buf);

    cmdline = command_line(argc, argv);
    SET("command_line", cmdline ? cmdline : "unknown");
    provenance_utc_now(buf, sizeof buf);
    SET("start_time_utc", buf);

    /* The compute dtype of the run's matrix products; a run that computes in bf16 replaces both with
     * results_set_compute (the bf16 path it used: avx512bf16, amx, blas or ref). */
    SET("compute", "fp32");
    SET("bf16_path", "none");

    static const char *const env_names[] = {"OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE",
                                            "OMP_PROC_BIND", "QLAB_BF16_PATH"};
    for (size_t i = 0; i < sizeof env_names / sizeof env_names[0]; i++) {
        const char *v = getenv(env_names[i]);
        char key[64];
        snprintf(key, sizeof key, "env_%s", env_names[i]);
        SET(key, v ? v : "(unset)");
    }
#undef SET
    free(status);
    free(cmdline);
    return QLAB_OK;
fail:
    free(status);
    free(cmdline);
    provenance_free(p);
    return st;
}
