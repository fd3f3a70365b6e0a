/* In-memory gunzip with zlib for gzip'd inputs; see gzip.h. zlib's counters are uInt, so input and output
 * are handed over in chunks of at most 1 GiB. */
#include "core/base/gzip.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

qlab_status gzip_inflate_limit(const char *path, const unsigned char *in, size_t in_len, size_t max_out,
                               char **out, size_t *out_len) {
    *out = NULL;
    *out_len = 0;
    z_stream z;
    memset(&z, 0, sizeof z);
    if (inflateInit2(&z, 15 + 16) != Z_OK) return qlab_fail(QLAB_ERR_NOMEM, "%s: zlib init failed", path);
    /* The buffer never grows past max_out + 1 bytes: filling that last byte proves the stream unpacks to
     * more than max_out, and is refused then, before any further doubling. */
    size_t hard = max_out < SIZE_MAX - 1 ? max_out + 1 : max_out;
    size_t cap = in_len <= (hard - 4096) / 4 && hard > 4096 ? in_len * 4 + 4096 : hard, len = 0, fed = 0;
    char *buf = malloc(cap + 1); /* + 1: room for the closing NUL */
    if (!buf) {
        inflateEnd(&z);
        return qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory (%zu bytes)", path, cap + 1);
    }
    int rc = Z_OK, too_big = 0;
    while (rc != Z_STREAM_END) {
        if (len == cap) {
            if (cap >= hard) {
                too_big = 1;
                break;
            }
            size_t grown = cap <= hard / 2 ? cap * 2 : hard;
            char *bigger = realloc(buf, grown + 1);
            if (!bigger) {
                rc = Z_MEM_ERROR;
                break;
            }
            buf = bigger;
            cap = grown;
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
    char zmsg_copy[128];
    snprintf(zmsg_copy, sizeof zmsg_copy, "%s", zmsg ? zmsg : "unexpected end of input");
    inflateEnd(&z);
    if (too_big || len > max_out) {
        free(buf);
        return qlab_fail(QLAB_ERR_FORMAT, "%s: gzip data unpacks to more than %zu bytes (the reader's limit)",
                         path, max_out);
    }
    if (rc != Z_STREAM_END) {
        free(buf);
        if (rc == Z_MEM_ERROR)
            return qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory unpacking gzip data", path);
        return qlab_fail(QLAB_ERR_FORMAT, "%s: truncated or corrupt gzip data (%s)", path, zmsg_copy);
    }
    buf[len] = 0;
    *out = buf;
    *out_len = len;
    return QLAB_OK;
}

qlab_status gzip_inflate(const char *path, const unsigned char *in, size_t in_len, char **out,
                         size_t *out_len) {
    return gzip_inflate_limit(path, in, in_len, GZIP_MAX_UNPACKED_BYTES, out, out_len);
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
