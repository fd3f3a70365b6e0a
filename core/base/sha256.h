/* SHA-256 (FIPS 180-4) of byte strings and files, so caches and manifests can name exactly the bytes they
 * hold (the model zoo's manifest records the sha256 of every checkpoint and reuses a file only when it
 * still matches). Streaming interface plus one-call helpers that give the lowercase hex digest. */
#ifndef QLAB_SHA256_H
#define QLAB_SHA256_H

#include <stddef.h>
#include <stdint.h>

#include "core/base/common.h"

typedef struct {
    uint32_t state[8];
    uint64_t total_bytes;
    uint8_t block[64];
    size_t block_len;
} sha256_context;

void sha256_begin(sha256_context *c);
void sha256_update(sha256_context *c, const void *data, size_t len);
void sha256_end(sha256_context *c, uint8_t digest[32]);

/* hex receives 64 lowercase hex digits and a NUL. */
void sha256_hex(const void *data, size_t len, char hex[65]);
/* Hashes a whole file; fails (one line naming the file) when it cannot be read. */
qlab_status sha256_file_hex(const char *path, char hex[65]);

#endif
