/* Writing a file so that its real name only ever holds a complete file: bytes stream to
 * "<path>.tmp.<pid>", and commit flushes, syncs and renames it onto path; abort (or any failed write)
 * removes the temporary file. Writes after a failure are ignored and the first error is reported by
 * commit, so callers can stream without checking every call. */
#ifndef QLAB_ATOMIC_FILE_H
#define QLAB_ATOMIC_FILE_H

#include <stdint.h>
#include <stdio.h>

#include "core/base/common.h"

typedef struct {
    FILE *f;
    char *path;
    char *tmp_path;
    int failed;
    int saved_errno;
    uint64_t written; /* bytes written so far (for alignment padding) */
} atomic_file;

qlab_status atomic_file_open(atomic_file *w, const char *path);
/* Whether a file can later be written at path this way, checked before a long computation whose results go
 * there: its folder (the part before the last '/', else ".") exists, is a folder and can be written, and
 * path itself is not a folder. QLAB_ERR_IO with one line naming path and what is wrong otherwise. Creates
 * nothing. */
qlab_status atomic_file_check_destination(const char *path);
void atomic_file_write(atomic_file *w, const void *data, size_t bytes);
/* Writes `bytes` zero bytes. */
void atomic_file_pad(atomic_file *w, size_t bytes);
qlab_status atomic_file_commit(atomic_file *w);
void atomic_file_abort(atomic_file *w);

#endif
