/* A small tar reader for release archives (GPT-4 ratings, MMLU): gunzip in memory with zlib, then walk the
 * 512-byte tar headers. Only what release archives use is supported (regular files, folders, ustar prefixes,
 * pax and GNU long names); every size and offset is checked against the buffer before use. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/gzip.h"
#include "core/base/tar.h"

/* An octal tar number field (NUL/space padded). Returns 0 when it is not one. */
static int parse_octal(const char *field, size_t n, uint64_t *value) {
    uint64_t v = 0;
    size_t i = 0;
    while (i < n && field[i] == ' ')
        i++;
    size_t digits = 0;
    for (; i < n && field[i] >= '0' && field[i] <= '7'; i++, digits++) {
        if (v >> 60) return 0;
        v = v * 8 + (uint64_t)(field[i] - '0');
    }
    for (; i < n; i++)
        if (field[i] != ' ' && field[i] != '\0') return 0;
    *value = v;
    return digits > 0;
}

static int header_checksum_ok(const unsigned char *h) {
    uint64_t stored;
    if (!parse_octal((const char *)h + 148, 8, &stored)) return 0;
    uint64_t sum = 0;
    for (int i = 0; i < 512; i++)
        sum += (i >= 148 && i < 156) ? (unsigned char)' ' : h[i];
    return sum == stored;
}

/* The "path=" record of a pax extended header ("LEN path=VALUE\n" records), malloc'd, or NULL. */
static char *pax_path(const char *data, size_t size) {
    size_t off = 0;
    while (off < size) {
        size_t rec_len = 0, i = off;
        while (i < size && data[i] >= '0' && data[i] <= '9' && rec_len < size)
            rec_len = rec_len * 10 + (size_t)(data[i++] - '0');
        if (i >= size || data[i] != ' ' || rec_len == 0 || rec_len > size - off) return NULL;
        const char *kv = data + i + 1, *end = data + off + rec_len;
        if (end - kv > 5 && !strncmp(kv, "path=", 5)) {
            size_t vlen = (size_t)(end - kv - 5);
            if (vlen > 0 && kv[5 + vlen - 1] == '\n') vlen--;
            char *p = malloc(vlen + 1);
            if (p) {
                memcpy(p, kv + 5, vlen);
                p[vlen] = 0;
            }
            return p;
        }
        off += rec_len;
    }
    return NULL;
}

static qlab_status add_entry(tar_archive *a, int *cap, char *name, const char *data, size_t size,
                             const char *path) {
    if (a->count == *cap) {
        int n = *cap ? *cap * 2 : 64;
        tar_archive_entry *e = realloc(a->entries, (size_t)n * sizeof *e);
        if (!e) return qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", path);
        a->entries = e;
        *cap = n;
    }
    char *copy = malloc(size + 1);
    if (!copy) return qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory (%zu bytes)", path, size + 1);
    memcpy(copy, data, size);
    copy[size] = 0;
    a->entries[a->count++] = (tar_archive_entry){name, copy, size};
    return QLAB_OK;
}

static qlab_status walk_tar(const char *path, const char *tar, size_t len, tar_archive *out) {
    int cap = 0;
    char *long_name = NULL;
    size_t off = 0;
    qlab_status st = QLAB_OK;
    while (st == QLAB_OK) {
        if (len - off < 512) {
            st = off == len ? QLAB_OK /* no end-of-archive blocks: accept, as GNU tar does */
                            : qlab_fail(QLAB_ERR_FORMAT, "%s: truncated tar header at byte %zu", path, off);
            break;
        }
        const unsigned char *h = (const unsigned char *)tar + off;
        int zero = 1;
        for (int i = 0; i < 512 && zero; i++)
            zero = h[i] == 0;
        if (zero) break; /* end of archive */
        uint64_t size;
        if (!header_checksum_ok(h) || !parse_octal((const char *)h + 124, 12, &size)) {
            st = qlab_fail(QLAB_ERR_FORMAT, "%s: not a tar archive (bad header checksum at byte %zu)", path,
                           off);
            break;
        }
        size_t data_off = off + 512;
        if (size > len - data_off) {
            st = qlab_fail(QLAB_ERR_FORMAT, "%s: tar member at byte %zu says %llu bytes but only %zu remain",
                           path, off, (unsigned long long)size, len - data_off);
            break;
        }
        char type = (char)h[156];
        const char *data = tar + data_off;
        if (type == 'x' || type == 'L') { /* the next header's long name */
            free(long_name);
            if (type == 'x') {
                long_name = pax_path(data, (size_t)size);
            } else {
                long_name = malloc((size_t)size + 1);
                if (long_name) {
                    memcpy(long_name, data, (size_t)size);
                    long_name[size] = 0;
                }
            }
        } else if (type == '0' || type == '\0' || type == '7') {
            char *name = long_name;
            long_name = NULL;
            if (!name) {
                char prefix[156] = "", base[101];
                if (!memcmp(h + 257, "ustar", 5)) memcpy(prefix, h + 345, 155);
                memcpy(base, h, 100);
                base[100] = 0;
                prefix[155] = 0;
                size_t n = strlen(prefix) + strlen(base) + 2;
                name = malloc(n);
                if (name) snprintf(name, n, "%s%s%s", prefix, prefix[0] ? "/" : "", base);
            }
            if (!name) {
                st = qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", path);
                break;
            }
            st = add_entry(out, &cap, name, data, (size_t)size, path);
            if (st != QLAB_OK) free(name);
        } else {
            free(long_name); /* folders, links, global pax headers: nothing to keep */
            long_name = NULL;
        }
        off = data_off + (size_t)((size + 511) / 512 * 512);
        if (off > len) off = len;
    }
    free(long_name);
    return st;
}

qlab_status tar_archive_read(const char *path, tar_archive *out) {
    memset(out, 0, sizeof *out);
    char *tar = NULL;
    size_t tar_len = 0;
    QLAB_TRY(gzip_read_file(path, &tar, &tar_len));
    qlab_status st = walk_tar(path, tar, tar_len, out);
    free(tar);
    if (st == QLAB_OK && out->count == 0) st = qlab_fail(QLAB_ERR_FORMAT, "%s: archive holds no files", path);
    if (st != QLAB_OK) tar_archive_free(out);
    return st;
}

void tar_archive_free(tar_archive *a) {
    if (!a) return;
    for (int i = 0; i < a->count; i++) {
        free(a->entries[i].path);
        free(a->entries[i].data);
    }
    free(a->entries);
    memset(a, 0, sizeof *a);
}
