/* A progress line with rate and ETA on stderr for anything that runs longer than a few seconds.
 * Redrawn in place on a terminal (at most ~4 times a second); on a pipe or log file, one line every
 * ~10 s so CI logs stay short. Quiet when QLAB_QUIET is set in the environment. */
#ifndef QLAB_PROGRESS_H
#define QLAB_PROGRESS_H

#include <stdint.h>

typedef struct {
    char label[64];
    int64_t total, done;
    double t_start, t_last_print;
    int is_tty, quiet, printed;
} progress;

void progress_begin(progress *p, const char *label, int64_t total);
/* Sets the count done so far; extra is an optional short status ("loss 2.31"), may be NULL. */
void progress_update(progress *p, int64_t done, const char *extra);
/* Prints the final line with the total elapsed time. */
void progress_end(progress *p, const char *extra);

/* Wall-clock seconds from a monotonic clock. */
double qlab_now(void);

#endif
