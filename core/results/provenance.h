/* Where a result came from: the facts a reader needs to trust or redo a run (config text, git commit
 * and dirty flag, library versions, CPU, threads, host, command line, UTC times, the environment
 * variables that change numerics or speed). Collected once per run as key/value strings; results.c
 * stores them as root attributes of the HDF5 file. */
#ifndef QLAB_PROVENANCE_H
#define QLAB_PROVENANCE_H

#include "core/base/common.h"

typedef struct {
    char *key;
    char *value;
} provenance_entry;

typedef struct {
    int count, capacity;
    provenance_entry *entries;
} provenance;

/* Fills p (which it initialises) with: experiment, config_path, config, qlab_version, git_commit,
 * git_dirty, git_status, library versions, compiler, cpu_model, cpu_count, threads, hostname, os,
 * command_line, start_time_utc, compute ("fp32") and bf16_path ("none"), env_* . Facts that cannot be found
 * read "unknown", never fail the run. */
qlab_status provenance_collect(provenance *p, const char *experiment, const char *config_path,
                               const char *config_text, int argc, char *const *argv);
/* Adds or replaces one entry (copies both strings). */
qlab_status provenance_set(provenance *p, const char *key, const char *value);
/* The value of key, or NULL. */
const char *provenance_get(const provenance *p, const char *key);
void provenance_free(provenance *p);

/* The current time as ISO 8601 UTC with seconds, "2026-11-23T13:18:23Z" (buf holds >= 21 bytes). */
void provenance_utc_now(char *buf, int n);

/* Git commit and dirty state of the checkout holding directory dir: commit is the full hash or "unknown",
 * dirty "true"/"false"/"unknown"; status (may be NULL) receives `git status --porcelain` (malloc'd). */
void provenance_git(const char *dir, char *commit, int commit_size, char *dirty, int dirty_size,
                    char **status);

#endif
