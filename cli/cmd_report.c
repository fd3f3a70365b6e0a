/* `qlab report RESULTS.h5 --md OUT.md [--plot OUT.png]`: turns one results file into a Markdown report
 * (provenance summary, every table, notes, configuration), one gnuplot-readable .dat file per table, and
 * optionally the experiment's figure by running plots/<experiment>.gp through gnuplot (PNG and SVG). */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/cli.h"
#include "core/base/common.h"
#include "core/base/tmpfiles.h"
#include "core/results/results.h"

/* ---------------------------------------------------------------- a growable text buffer */
typedef struct {
    char *data;
    size_t len, cap;
    int failed;
} text_buffer;

static void tb_printf(text_buffer *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tb_printf(text_buffer *b, const char *fmt, ...) {
    if (b->failed) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->data ? b->data + b->len : NULL, b->data ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = 1;
            return;
        }
        if (b->data && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->len + (size_t)n + 1)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d) {
            b->failed = 1;
            return;
        }
        b->data = d;
        b->cap = cap;
    }
}

/* ---------------------------------------------------------------- formatting */

/* 4 significant digits, plain notation between 1e-3 and 1e6, "n/a" for NaN. */
static void format_number(double v, char *buf, size_t n) {
    if (isnan(v))
        snprintf(buf, n, "n/a");
    else if (isinf(v))
        snprintf(buf, n, "%sinf", v < 0 ? "-" : "");
    else if (v == 0)
        snprintf(buf, n, "0");
    else if (fabs(v) >= 1e-3 && fabs(v) < 1e6) {
        int digits = 4 - 1 - (int)floor(log10(fabs(v)));
        if (digits < 0) digits = 0;
        snprintf(buf, n, "%.*f", digits, v);
    } else
        snprintf(buf, n, "%.3e", v);
}

/* Markdown cell text: '|' escaped, newlines flattened. */
static void md_cell(text_buffer *b, const char *s) {
    for (; *s; s++) {
        if (*s == '|')
            tb_printf(b, "\\|");
        else if (*s == '\n' || *s == '\r')
            tb_printf(b, " ");
        else
            tb_printf(b, "%c", *s);
    }
}

static const char *attr_or(const results_file *f, const char *name, const char *fallback) {
    const char *v = results_file_attr(f, name);
    return v && v[0] ? v : fallback;
}

static void write_provenance(text_buffer *b, const results_file *f) {
    const char *commit = attr_or(f, "git_commit", "unknown"), *dirty = attr_or(f, "git_dirty", "unknown");
    tb_printf(b, "| | |\n|---|---|\n");
    tb_printf(b, "| commit | `%.12s`%s |\n", commit,
              !strcmp(dirty, "true")    ? " (uncommitted changes)"
              : !strcmp(dirty, "false") ? " (clean)"
                                        : "");
    tb_printf(b, "| run | %s → %s (UTC) |\n", attr_or(f, "start_time_utc", "?"),
              attr_or(f, "end_time_utc", "?"));
    tb_printf(b, "| CPU | %s (%s logical CPUs) |\n", attr_or(f, "cpu_model", "unknown"),
              attr_or(f, "cpu_count", "?"));
    tb_printf(b, "| threads | %s (OMP_NUM_THREADS=%s, OPENBLAS_NUM_THREADS=%s) |\n",
              attr_or(f, "threads", "?"), attr_or(f, "env_OMP_NUM_THREADS", "?"),
              attr_or(f, "env_OPENBLAS_NUM_THREADS", "?"));
    if (results_file_attr(f, "compute")) /* absent in files written before the compute dtype existed */
        tb_printf(b, "| compute | %s (bf16 path: %s) |\n", attr_or(f, "compute", "?"),
                  attr_or(f, "bf16_path", "?"));
    tb_printf(b, "| config | `%s` |\n", attr_or(f, "config_path", "(none)"));
    if (results_file_attr(f, "seed")) tb_printf(b, "| seed | %s |\n", results_file_attr(f, "seed"));
    tb_printf(b, "| command | `");
    md_cell(b, attr_or(f, "command_line", "?"));
    tb_printf(b, "` |\n");
    tb_printf(b, "| host | %s, %s |\n", attr_or(f, "hostname", "?"), attr_or(f, "os", "?"));
    if (results_file_attr(f, "memory_peak")) /* files written before the memory accounting lack it */
        tb_printf(b, "| memory | budget %s; accounted %s |\n", attr_or(f, "memory_budget", "none"),
                  results_file_attr(f, "memory_peak"));
    tb_printf(b, "| software | qlab %s, %s, HDF5 %s, cJSON %s, OpenBLAS %s |\n",
              attr_or(f, "qlab_version", "?"), attr_or(f, "compiler", "?"), attr_or(f, "hdf5_version", "?"),
              attr_or(f, "cjson_version", "?"), attr_or(f, "openblas_version", "?"));
}

static void write_table_md(text_buffer *b, const results_table_data *t) {
    tb_printf(b, "\n## %s\n\n", t->title);
    if (t->notes[0]) {
        const char *line = t->notes;
        while (*line) {
            size_t len = strcspn(line, "\n");
            tb_printf(b, "> %.*s\n", (int)len, line);
            line += len + (line[len] == '\n');
        }
        tb_printf(b, "\n");
    }
    tb_printf(b, "Table `%s`, %" PRId64 " rows.\n\n|", t->name, t->nrows);
    for (int j = 0; j < t->ncols; j++) {
        tb_printf(b, " %s", t->columns[j].name);
        if (t->columns[j].unit[0]) tb_printf(b, " (%s)", t->columns[j].unit);
        tb_printf(b, " |");
    }
    tb_printf(b, "\n|");
    for (int j = 0; j < t->ncols; j++)
        tb_printf(b, "%s|", t->columns[j].type == RESULTS_STRING ? "---" : "---:");
    tb_printf(b, "\n");
    for (int64_t i = 0; i < t->nrows; i++) {
        tb_printf(b, "|");
        for (int j = 0; j < t->ncols; j++) {
            const results_column *c = &t->columns[j];
            char num[64];
            tb_printf(b, " ");
            if (c->type == RESULTS_STRING)
                md_cell(b, c->str[i]);
            else if (c->type == RESULTS_INT64)
                tb_printf(b, "%" PRId64, c->i64[i]);
            else {
                format_number(c->f64[i], num, sizeof num);
                tb_printf(b, "%s", num);
            }
            tb_printf(b, " |");
        }
        tb_printf(b, "\n");
    }
    int described = 0;
    for (int j = 0; j < t->ncols; j++)
        if (t->columns[j].description[0]) {
            if (!described++) tb_printf(b, "\n");
            tb_printf(b, "- `%s`: %s\n", t->columns[j].name, t->columns[j].description);
        }
}

/* ---------------------------------------------------------------- files */

/* The run's name: the file name of `path` without its extension (results/nf4_vs_fp4_real.md ->
 * nf4_vs_fp4_real). The .dat files are named after it, so two runs of one experiment never share data. */
static void run_name_of(const char *path, char *out, size_t n) {
    const char *slash = strrchr(path, '/'), *base = slash ? slash + 1 : path, *dot = strrchr(base, '.');
    size_t len = dot && dot != base ? (size_t)(dot - base) : strlen(base);
    snprintf(out, n, "%.*s", (int)len, base);
}

/* Removes <dir>/<run>.*.dat: what an earlier run of the same name left (perhaps for tables this run does
 * not have), so gnuplot can only find this run's data. Returns 0 (after printing why) on failure. */
static int remove_stale_dat(const char *dir, const char *run) {
    DIR *d = opendir(dir);
    if (!d) return 1; /* nothing there yet */
    size_t rl = strlen(run);
    int ok = 1;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        size_t l = strlen(e->d_name);
        if (l <= rl + 5 || strncmp(e->d_name, run, rl) != 0 || e->d_name[rl] != '.' ||
            strcmp(e->d_name + l - 4, ".dat") != 0)
            continue;
        char path[PATH_MAX + 256];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (unlink(path) != 0 && errno != ENOENT) {
            fprintf(stderr, "qlab report: %s: cannot remove stale data file: %s\n", path, strerror(errno));
            ok = 0;
            break;
        }
    }
    closedir(d);
    return ok;
}

/* target relative to the directory holding `from` (both relative to the working directory or absolute),
 * for the image link in the Markdown. Falls back to target itself. */
static void relative_path(const char *from, const char *target, char *out, size_t n) {
    char from_dir[PATH_MAX], target_dir[PATH_MAX], a[PATH_MAX], t[PATH_MAX];
    qlab_path_dir(from, from_dir, sizeof from_dir);
    qlab_path_dir(target, target_dir, sizeof target_dir);
    const char *base = strrchr(target, '/') ? strrchr(target, '/') + 1 : target;
    if (!realpath(from_dir, a) || !realpath(target_dir, t)) {
        snprintf(out, n, "%s", target);
        return;
    }
    size_t common = 0, i = 0;
    for (; a[i] && a[i] == t[i]; i++)
        if (a[i] == '/') common = i;
    if (!a[i] && (t[i] == '/' || !t[i])) common = i; /* a is a prefix of t */
    if (!a[i] && !t[i]) {
        snprintf(out, n, "%s", base);
        return;
    }
    size_t len = 0;
    out[0] = 0;
    for (const char *p = a + common; *p; p++)
        if (*p == '/') len += (size_t)snprintf(out + len, len < n ? n - len : 0, "../");
    const char *rest = t + common;
    if (*rest == '/') rest++;
    if (len < n) snprintf(out + len, n - len, "%s%s%s", rest, *rest ? "/" : "", base);
}

static qlab_status write_dat(const char *path, const results_table_data *t) {
    text_buffer b = {0};
    tb_printf(&b, "#");
    for (int j = 0; j < t->ncols; j++)
        tb_printf(&b, " %s", t->columns[j].name);
    tb_printf(&b, "\n");
    for (int64_t i = 0; i < t->nrows; i++) {
        for (int j = 0; j < t->ncols; j++) {
            const results_column *c = &t->columns[j];
            if (j) tb_printf(&b, " ");
            if (c->type == RESULTS_INT64)
                tb_printf(&b, "%" PRId64, c->i64[i]);
            else if (c->type == RESULTS_FLOAT64)
                tb_printf(&b, isnan(c->f64[i]) ? "NaN" : "%.10g", c->f64[i]);
            else {
                tb_printf(&b, "\"");
                for (const char *s = c->str[i]; *s; s++)
                    tb_printf(&b, "%c", *s == '"' ? '\'' : (*s == '\n' ? ' ' : *s));
                tb_printf(&b, "\"");
            }
        }
        tb_printf(&b, "\n");
    }
    qlab_status st = b.failed ? qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", path)
                              : qlab_write_file_atomic(path, b.data ? b.data : "", b.len);
    free(b.data);
    return st;
}

/* Runs gnuplot on script, writing `out` (format fmt: "png" or "svg") through a temporary name. On
 * failure prints one line naming the cause. */
static int run_gnuplot_to(const char *tmp_out, const char *script, const char *script_dir,
                          const char *data_dir, const char *prefix, const char *out, const char *fmt);
static int run_gnuplot(const char *script, const char *script_dir, const char *data_dir, const char *prefix,
                       const char *out, const char *fmt) {
    char tmp_out[PATH_MAX + 32];
    snprintf(tmp_out, sizeof tmp_out, "%s.tmp.%ld.%s", out, (long)getpid(), fmt);
    qlab_tmpfile_sweep_stale(out);
    qlab_tmpfile_register(tmp_out);
    int ok = run_gnuplot_to(tmp_out, script, script_dir, data_dir, prefix, out, fmt);
    qlab_tmpfile_unregister(tmp_out);
    return ok;
}

static int run_gnuplot_to(const char *tmp_out, const char *script, const char *script_dir,
                          const char *data_dir, const char *prefix, const char *out, const char *fmt) {
    char vars[4 * PATH_MAX], log_path[] = "/tmp/qlab_report_gnuplotXXXXXX";
    /* the per-data-type styles come from the descriptor table (plots/common.gp uses them) */
    snprintf(vars, sizeof vars, "%s; datadir='%s'; prefix='%s'; out='%s'; fmt='%s'; scriptdir='%s'",
             cli_dtype_gnuplot_style(), data_dir, prefix, tmp_out, fmt, script_dir);
    int log_fd = mkstemp(log_path);
    if (log_fd >= 0) qlab_tmpfile_register(log_path);
    if (log_fd < 0) {
        fprintf(stderr, "qlab report: cannot create a log file for gnuplot: %s\n", strerror(errno));
        return 0;
    }
    pid_t pid = fork();
    if (pid == 0) {
        dup2(log_fd, 1);
        dup2(log_fd, 2);
        execlp("gnuplot", "gnuplot", "-e", vars, script, (char *)NULL);
        _exit(127);
    }
    close(log_fd);
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) < 0) {
        fprintf(stderr, "qlab report: cannot start gnuplot: %s\n", strerror(errno));
        unlink(log_path);
        qlab_tmpfile_unregister(log_path);
        return 0;
    }
    char *log = NULL;
    size_t log_len = 0;
    if (qlab_read_file(log_path, &log, &log_len) != QLAB_OK) log = NULL;
    unlink(log_path);
    qlab_tmpfile_unregister(log_path);
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128;
    int ok = code == 0 && access(tmp_out, F_OK) == 0;
    if (!ok) {
        /* gnuplot's message: the first line mentioning an error, else the last non-empty line. */
        char line[512] = "";
        if (log) {
            const char *p = log, *found = NULL;
            for (const char *l = log; *l; l += strcspn(l, "\n") + (l[strcspn(l, "\n")] == '\n')) {
                if (strcspn(l, "\n") > 0) p = l;
                const char *e = strstr(l, "rror");
                if (!found && e && e < l + strcspn(l, "\n")) found = l;
            }
            if (found) p = found;
            snprintf(line, sizeof line, "%.*s", (int)strcspn(p, "\n"), p);
        }
        if (code == 127 && !line[0])
            fprintf(stderr, "qlab report: gnuplot not found (install gnuplot-nox, or drop --plot)\n");
        else
            fprintf(stderr, "qlab report: gnuplot failed on %s (exit %d): %s\n", script, code,
                    line[0] ? line : "no output file written");
        unlink(tmp_out);
        free(log);
        return 0;
    }
    if (log && strstr(log, "arning")) { /* keep warnings visible: they often mean an empty curve */
        for (const char *l = log; *l; l += strcspn(l, "\n") + (l[strcspn(l, "\n")] == '\n'))
            if (strstr(l, "arning") && strstr(l, "arning") < l + strcspn(l, "\n"))
                fprintf(stderr, "qlab report: gnuplot: %.*s\n", (int)strcspn(l, "\n"), l);
    }
    free(log);
    if (rename(tmp_out, out) != 0) {
        fprintf(stderr, "qlab report: %s: cannot rename into place: %s\n", out, strerror(errno));
        unlink(tmp_out);
        return 0;
    }
    return 1;
}

static int safe_for_gnuplot(const char *s) {
    return strchr(s, '\'') == NULL && strchr(s, '"') == NULL;
}

static int file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static void usage(FILE *f) {
    fprintf(
        f,
        "Usage: qlab report RESULTS.h5 --md OUT.md [--plot OUT.png] [--data-dir DIR] [--script FILE.gp]\n\n"
        "Writes a Markdown report of a results file (provenance, every table, notes, config), one\n"
        "whitespace-separated .dat file per table (<data-dir>/<run>.<table>.dat, <run> being the name of\n"
        "OUT.png, else of OUT.md, without extension; older <run>.*.dat files are removed first; default\n"
        "folder: that of --plot, else that of --md), and with --plot runs gnuplot on plots/<experiment>.gp\n"
        "to draw OUT.png and the same name with .svg.\n\n"
        "  --md OUT.md        the report (written atomically)\n"
        "  --plot OUT.png     also draw the figure (needs gnuplot)\n"
        "  --data-dir DIR     where the .dat files go\n"
        "  --script FILE.gp   the gnuplot script (default plots/<experiment>.gp)\n");
}

typedef struct {
    const char *input, *md, *plot, *data_dir, *script;
} report_args;

/* -1 to go on, else the exit status (0 after --help, 2 on a usage error). */
static int parse_report_args(int argc, char **argv, report_args *a) {
    memset(a, 0, sizeof *a);
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
            usage(stdout);
            return 0;
        }
        const char **slot = !strcmp(arg, "--md")         ? &a->md
                            : !strcmp(arg, "--plot")     ? &a->plot
                            : !strcmp(arg, "--data-dir") ? &a->data_dir
                            : !strcmp(arg, "--script")   ? &a->script
                                                         : NULL;
        if (slot) {
            if (i + 1 >= argc) {
                fprintf(stderr, "qlab report: %s needs a value\n", arg);
                return 2;
            }
            *slot = argv[++i];
        } else if (arg[0] == '-') {
            fprintf(stderr, "qlab report: unknown option '%s' (see qlab report --help)\n", arg);
            return 2;
        } else if (!a->input) {
            a->input = arg;
        } else {
            fprintf(stderr, "qlab report: more than one results file ('%s' and '%s')\n", a->input, arg);
            return 2;
        }
    }
    if (!a->input || !a->md) {
        fprintf(stderr, "qlab report: need a results file and --md OUT.md (see qlab report --help)\n");
        return 2;
    }
    return -1;
}

/* The experiment's name, which names the gnuplot script: a plain word, or NULL (with a message). */
static const char *experiment_name(const results_file *f, const char *input) {
    const char *experiment = attr_or(f, "experiment", "");
    if (!experiment[0]) {
        fprintf(stderr, "qlab report: %s: no 'experiment' attribute (not written by a qlab experiment?)\n",
                input);
        return NULL;
    }
    for (const char *c = experiment; *c; c++)
        if (!(*c == '_' || *c == '-' || (*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'z') ||
              (*c >= 'A' && *c <= 'Z'))) {
            fprintf(stderr, "qlab report: %s: experiment name '%s' is not a plain word\n", input, experiment);
            return NULL;
        }
    return experiment;
}

/* .dat files, one per table, named after the run, stale ones removed first. */
static int write_dat_files(const results_file *f, const char *input, const char *data_dir, const char *run) {
    char path[PATH_MAX + 256];
    if (!remove_stale_dat(data_dir, run)) return 0;
    for (int i = 0; i < f->ntables; i++) {
        if (f->tables[i].nrows == 0) {
            fprintf(stderr, "qlab report: %s: table '%s' has no rows: nothing to report or plot\n", input,
                    f->tables[i].name);
            return 0;
        }
        snprintf(path, sizeof path, "%s/%s.%s.dat", data_dir, run, f->tables[i].name);
        if (write_dat(path, &f->tables[i]) != QLAB_OK) {
            qlab_report_error("qlab report");
            return 0;
        }
    }
    return 1;
}

/* The gnuplot script: --script, else plots/<experiment>.gp, else <experiment>.gp beside the figure. */
static int find_script(const report_args *a, const char *experiment, char *script, size_t cap) {
    if (a->script)
        snprintf(script, cap, "%s", a->script);
    else
        snprintf(script, cap, "plots/%s.gp", experiment);
    if (!a->script && !file_exists(script)) { /* run from elsewhere: look beside the output */
        char out_dir[PATH_MAX];
        qlab_path_dir(a->plot, out_dir, sizeof out_dir);
        snprintf(script, cap, "%s/%s.gp", out_dir, experiment);
    }
    if (file_exists(script)) return 1;
    if (a->script)
        fprintf(stderr, "qlab report: %s: no such gnuplot script\n", a->script);
    else
        fprintf(stderr, "qlab report: no gnuplot script for experiment '%s' (looked for plots/%s.gp)\n",
                experiment, experiment);
    return 0;
}

/* The figure as a->plot (PNG) and svg (the same name with .svg). */
static int draw_figure(const report_args *a, const char *experiment, const char *data_dir, const char *run,
                       char *svg, size_t svg_cap) {
    char script[PATH_MAX + 64], script_dir[PATH_MAX];
    if (!find_script(a, experiment, script, sizeof script)) return 0;
    qlab_path_dir(script, script_dir, sizeof script_dir);
    if (!safe_for_gnuplot(a->plot) || !safe_for_gnuplot(data_dir) || !safe_for_gnuplot(script_dir)) {
        fprintf(stderr, "qlab report: paths given to gnuplot may not contain quotes\n");
        return 0;
    }
    size_t len = strlen(a->plot);
    if (len > 4 && !strcmp(a->plot + len - 4, ".png"))
        snprintf(svg, svg_cap, "%.*s.svg", (int)(len - 4), a->plot);
    else
        snprintf(svg, svg_cap, "%s.svg", a->plot);
    return run_gnuplot(script, script_dir, data_dir, run, a->plot, "png") &&
           run_gnuplot(script, script_dir, data_dir, run, svg, "svg");
}

/* The Markdown report: provenance, the figure when there is one, notes, every table, the config. */
static void write_report_md(text_buffer *b, const results_file *f, const report_args *a,
                            const char *experiment, int have_plot) {
    tb_printf(b, "# %s\n\n", experiment);
    tb_printf(b, "Generated by `qlab report` from `%s`.\n\n", a->input);
    write_provenance(b, f);
    if (have_plot) {
        char rel[PATH_MAX * 2];
        relative_path(a->md, a->plot, rel, sizeof rel);
        tb_printf(b, "\n![%s](%s)\n", experiment, rel);
    }
    if (f->nnotes) {
        tb_printf(b, "\n## Notes\n\n");
        for (int i = 0; i < f->nnotes; i++)
            tb_printf(b, "- **%s**: %s\n", f->notes[i].name, f->notes[i].value);
    }
    for (int i = 0; i < f->ntables; i++)
        write_table_md(b, &f->tables[i]);
    const char *cfg = attr_or(f, "config", "");
    if (cfg[0]) {
        tb_printf(b, "\n## Configuration\n\n`%s` as read:\n\n```json\n%s%s```\n",
                  attr_or(f, "config_path", "?"), cfg, cfg[strlen(cfg) - 1] == '\n' ? "" : "\n");
        const char *eff = results_file_attr(f, "config_effective");
        if (eff) tb_printf(b, "\nWith defaults applied: `%s`\n", eff);
    }
}

static int cmd_report(int argc, char **argv) {
    report_args a;
    int early = parse_report_args(argc, argv, &a);
    if (early >= 0) return early;
    results_file f;
    if (results_read_checked(a.input, &f) != QLAB_OK) return qlab_report_error("qlab report");
    int rc = 1;
    text_buffer b = {0};
    const char *experiment = experiment_name(&f, a.input);
    if (!experiment) goto done;

    /* .dat files named after the run (the --plot or --md file) */
    char data_dir[PATH_MAX], run[256];
    const char *named_after = a.plot ? a.plot : a.md;
    if (a.data_dir)
        snprintf(data_dir, sizeof data_dir, "%s", a.data_dir);
    else
        qlab_path_dir(named_after, data_dir, sizeof data_dir);
    run_name_of(named_after, run, sizeof run);
    if (!run[0] || !safe_for_gnuplot(run)) {
        fprintf(stderr, "qlab report: %s: cannot name the run's data files after this file name\n",
                named_after);
        goto done;
    }
    if (!write_dat_files(&f, a.input, data_dir, run)) goto done;

    /* The figure, before the Markdown so the report only links a figure that exists. */
    char svg[PATH_MAX + 8];
    int have_plot = a.plot != NULL;
    if (have_plot && !draw_figure(&a, experiment, data_dir, run, svg, sizeof svg)) goto done;

    write_report_md(&b, &f, &a, experiment, have_plot);
    if (b.failed) {
        fprintf(stderr, "qlab report: out of memory\n");
        goto done;
    }
    if (qlab_write_file_atomic(a.md, b.data, b.len) != QLAB_OK) {
        qlab_report_error("qlab report");
        goto done;
    }
    printf("qlab report: wrote %s", a.md);
    if (have_plot) printf(", %s, %s", a.plot, svg);
    printf(" and %d data file%s in %s/\n", f.ntables, f.ntables == 1 ? "" : "s", data_dir);
    rc = 0;
done:
    free(b.data);
    results_file_free(&f);
    return rc;
}

QLAB_COMMAND(report_command, "report", "render a results file as Markdown, .dat tables and a gnuplot figure",
             cmd_report)
