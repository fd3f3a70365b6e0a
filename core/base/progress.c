/* Progress line with ETA; see progress.h. */

#include "core/base/progress.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

double qlab_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void format_duration(char *buf, size_t n, double s) {
    if (s < 0 || s > 1e7) {
        snprintf(buf, n, "?");
    } else if (s < 60) {
        snprintf(buf, n, "%.0fs", s);
    } else if (s < 3600) {
        snprintf(buf, n, "%dm%02ds", (int)s / 60, (int)s % 60);
    } else {
        snprintf(buf, n, "%dh%02dm", (int)s / 3600, ((int)s % 3600) / 60);
    }
}

void progress_begin(progress *p, const char *label, int64_t total) {
    memset(p, 0, sizeof *p);
    snprintf(p->label, sizeof p->label, "%s", label);
    p->total = total;
    p->t_start = p->t_last_print = qlab_now();
    p->is_tty = isatty(STDERR_FILENO);
    p->quiet = getenv("QLAB_QUIET") != NULL;
}

static void print_line(progress *p, const char *extra, int final) {
    double now = qlab_now(), elapsed = now - p->t_start;
    char el[32], eta[32];
    format_duration(el, sizeof el, elapsed);
    double frac = p->total > 0 ? (double)p->done / (double)p->total : 0.0;
    if (frac > 0 && !final)
        format_duration(eta, sizeof eta, elapsed * (1.0 - frac) / frac);
    else
        snprintf(eta, sizeof eta, final ? "done" : "?");
    fprintf(stderr, "%s%s %lld/%lld (%5.1f%%) elapsed %s %s%s%s%s", p->is_tty ? "\r\033[K" : "", p->label,
            (long long)p->done, (long long)p->total, 100.0 * frac, el, final ? "" : "ETA ", eta,
            extra ? "  " : "", extra ? extra : "");
    if (!p->is_tty || final) fputc('\n', stderr);
    fflush(stderr);
    p->t_last_print = now;
    p->printed = 1;
}

void progress_update(progress *p, int64_t done, const char *extra) {
    p->done = done;
    if (p->quiet) return;
    double now = qlab_now(), interval = p->is_tty ? 0.25 : 10.0;
    /* The first line waits 2 s so that quick operations print nothing at all. */
    if (!p->printed ? now - p->t_start >= 2.0 : now - p->t_last_print >= interval) print_line(p, extra, 0);
}

void progress_end(progress *p, const char *extra) {
    if (p->quiet || !p->printed) return;
    p->done = p->total;
    print_line(p, extra, 1);
}
