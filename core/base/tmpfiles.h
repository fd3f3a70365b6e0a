/* The run's temporary files ("<path>.tmp.<pid>", written before a rename into place): registered while
 * they exist so SIGINT and SIGTERM remove them before the program exits with 130 / 143, and swept when a
 * later run writes the same path and finds a temporary file whose process is gone. */
#ifndef QLAB_TMPFILES_H
#define QLAB_TMPFILES_H

/* How many temporary files may be registered at once (a run writes one or two at a time). */
#define QLAB_TMPFILES_MAX 64

/* Records tmp_path for removal on SIGINT/SIGTERM; installs the handlers on first use. A path that does not
 * fit (more than QLAB_TMPFILES_MAX at once, or longer than 4095 bytes) is simply not covered. */
void qlab_tmpfile_register(const char *tmp_path);
/* Forgets tmp_path (after it was renamed into place or removed). */
void qlab_tmpfile_unregister(const char *tmp_path);

/* Removes "<path>.tmp.<pid>" (and "<path>.tmp.<pid>.<anything>") files left in path's folder by processes
 * that no longer exist; returns how many were removed. Files of live processes are left alone. */
int qlab_tmpfile_sweep_stale(const char *path);

/* The exit code of a run ended by signal sig: 128 + sig (130 for SIGINT, 143 for SIGTERM). */
#define QLAB_EXIT_SIGNAL(sig) (128 + (sig))

#endif
