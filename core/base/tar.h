/* Tar archives, gzip-compressed or not, read whole into memory (the released GPT-4 ratings, MMLU). */
#ifndef QLAB_BASE_TAR_H
#define QLAB_BASE_TAR_H

#include <stddef.h>

#include "core/base/common.h"

typedef struct {
    char *path; /* path inside the archive */
    char *data; /* the member's bytes, NUL-terminated (size excludes the NUL) */
    size_t size;
} tar_archive_entry;

typedef struct {
    int count;
    tar_archive_entry *entries; /* regular files only, in archive order */
} tar_archive;

/* Reads every regular file of a tar archive, gzip-compressed (.tar.gz) or not, into memory. Understands
 * ustar names with prefixes and the pax / GNU long-name records git-archive and GNU tar write. */
qlab_status tar_archive_read(const char *path, tar_archive *out);
void tar_archive_free(tar_archive *a);

#endif
