/* In-memory gunzip with zlib for gzip'd inputs; see gzip.h. zlib's counters are uInt, so input and output
 * are handed over in chunks of at most 1 GiB. */
#include "core/base/gzip.h"

#include <stdlib.h>
#include <string.h>
#include <zlib.h>

qlab_status gzip_inflate(const char *path, const unsigned char *in, size_t in_len, char **out,
                         size_t *out_len) {
    z_stream z;
    memset(&z, 0, sizeof z);
    if (inflateInit2(&z, 15 + 16) != Z_OK) return qlab_fail(QLAB_ERR_NOMEM, "%s: zlib init failed", path);
    size_t cap = in_len * 4 + 4096, len = 0, fed = 0;
    char *buf = malloc(cap + 1); /* + 1: room for the closing NUL */
    if (!buf) {
        inflateEnd(&z);
        return qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory (%zu bytes)", path, cap + 1);
    }
    int rc = Z_OK;
    while (rc != Z_STREAM_END) {
        if (len == cap) {
            char *bigger = cap < GZIP_MAX_UNPACKED_BYTES ? realloc(buf, cap * 2 + 1) : NULL;
            if (!bigger) {
                rc = Z_MEM_ERROR;
                break;
            }
            buf = bigger;
            cap *= 2;
        }
        if (z.avail_in == 0 && fed < in_len) {
            size_t chunk = in_len - fed < (1u << 30) ? in_len - fed : (1u << 30);
            z.next_in = (unsigned char *)in + fed;
            z.avail_in = (uInt)chunk;
            fed += chunk;
        }
        size_t room = cap - len < (1u << 30) ? cap - len : (1u << 30);
        z.next_out = (unsigned char *)buf + len;
        z.avail_out = (uInt)room;
        rc = inflate(&z, Z_NO_FLUSH);
        len += room - z.avail_out;
        if (rc == Z_BUF_ERROR && z.avail_in == 0 && fed == in_len) break; /* input ended early */
        if (rc != Z_OK && rc != Z_STREAM_END && rc != Z_BUF_ERROR) break;
    }
    const char *zmsg = z.msg;
    inflateEnd(&z);
    if (rc != Z_STREAM_END) {
        free(buf);
        if (rc == Z_MEM_ERROR)
            return qlab_fail(QLAB_ERR_NOMEM, "%s: unpacks to more than %zu bytes or out of memory", path,
                             GZIP_MAX_UNPACKED_BYTES);
        return qlab_fail(QLAB_ERR_FORMAT, "%s: truncated or corrupt gzip data (%s)", path,
                         zmsg ? zmsg : "unexpected end of input");
    }
    buf[len] = 0;
    *out = buf;
    *out_len = len;
    return QLAB_OK;
}

qlab_status gzip_read_file(const char *path, char **data, size_t *len) {
    char *raw = NULL;
    size_t raw_len = 0;
    QLAB_TRY(qlab_read_file(path, &raw, &raw_len));
    if (raw_len >= 2 && (unsigned char)raw[0] == 0x1f && (unsigned char)raw[1] == 0x8b) {
        qlab_status st = gzip_inflate(path, (const unsigned char *)raw, raw_len, data, len);
        free(raw);
        return st;
    }
    *data = raw;
    *len = raw_len;
    return QLAB_OK;
}
