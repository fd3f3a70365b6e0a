/* Reading files that may be gzip'd (OASST1 JSON lines, the released rating archives): the whole file is
 * inflated in memory with zlib when it starts with the gzip magic, and returned as it is otherwise. */
#ifndef QLAB_CORE_GZIP_H
#define QLAB_CORE_GZIP_H

#include <stddef.h>

#include "core/base/common.h"

/* Inflates one gzip stream in[0..in_len) into a malloc'd, NUL-terminated buffer (*out_len excludes the
 * NUL). path only names the data in the error line; a truncated or corrupt stream is QLAB_ERR_FORMAT, more
 * than GZIP_MAX_UNPACKED_BYTES unpacked is QLAB_ERR_FORMAT. */
qlab_status gzip_inflate(const char *path, const unsigned char *in, size_t in_len, char **out,
                         size_t *out_len);

/* As gzip_inflate with another bound on the unpacked size (gzip_inflate uses GZIP_MAX_UNPACKED_BYTES): a
 * stream unpacking to more than max_out bytes is refused (QLAB_ERR_FORMAT) as soon as byte max_out + 1
 * appears, with at most max_out + 2 bytes ever allocated. */
qlab_status gzip_inflate_limit(const char *path, const unsigned char *in, size_t in_len, size_t max_out,
                               char **out, size_t *out_len);

/* The whole file (as qlab_read_file: malloc'd, NUL-terminated), inflated when it starts with the gzip
 * magic bytes 1f 8b. */
qlab_status gzip_read_file(const char *path, char **data, size_t *len);

/* The inputs are a few MB (datasets) to ~11 MB (rating archives) unpacked, and the largest public ones qlab
 * reads (full MMLU, OASST1) a few hundred MB; the bound (1 GiB) stops a corrupt or hostile stream (a 14 MB
 * gzip of 3 GiB of zeros) from exhausting memory: it is refused once byte 2^30 + 1 appears. */
#define GZIP_MAX_UNPACKED_BYTES ((size_t)1 << 30)

#endif
