/* Shared helpers of the libFuzzer targets (tests/fuzz/fuzz_*.c, built by `make fuzz` with clang
 * -fsanitize=fuzzer,address,undefined against the library compiled with the same sanitizers). The loaders
 * take paths, so each input is written to files in a per-process folder /tmp/qlab-fuzz-<target>-<pid>/,
 * removed at exit. Inputs that stand for several files (a Hugging Face folder, a PEFT adapter, a sharded
 * checkpoint) are split at FUZZ_SEP, which the seed corpora use between the files they join. */
#ifndef QLAB_FUZZ_H
#define QLAB_FUZZ_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FUZZ_SEP "\n--qlab-fuzz-next-file--\n"
#define FUZZ_MAX_PARTS 8

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char fuzz_dir_path[256];

static inline void fuzz_cleanup(void) {
    char cmd[300];
    if (!fuzz_dir_path[0]) return;
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", fuzz_dir_path);
    if (system(cmd) != 0) fprintf(stderr, "fuzz: could not remove %s\n", fuzz_dir_path);
}

/* The per-process folder (created on first use). */
static inline const char *fuzz_dir(const char *target) {
    if (!fuzz_dir_path[0]) {
        snprintf(fuzz_dir_path, sizeof fuzz_dir_path, "/tmp/qlab-fuzz-%s-%ld", target, (long)getpid());
        if (mkdir(fuzz_dir_path, 0700) != 0) {
            perror(fuzz_dir_path);
            abort();
        }
        atexit(fuzz_cleanup);
    }
    return fuzz_dir_path;
}

/* Writes bytes to <dir>/<name> (replacing it) and returns the path in a static buffer of the given slot. */
static inline const char *fuzz_write(const char *target, const char *name, const void *data, size_t size,
                                     int slot) {
    static char paths[FUZZ_MAX_PARTS + 2][512];
    char *p = paths[slot];
    snprintf(p, sizeof paths[0], "%s/%s", fuzz_dir(target), name);
    FILE *f = fopen(p, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0) {
        perror(p);
        abort();
    }
    return p;
}

static inline void fuzz_remove(const char *target, const char *name) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", fuzz_dir(target), name);
    unlink(p);
}

/* Splits data at FUZZ_SEP into at most max parts (the last part keeps any further separators). */
static inline int fuzz_split(const uint8_t *data, size_t size, const uint8_t **parts, size_t *lens, int max) {
    const size_t seplen = sizeof FUZZ_SEP - 1;
    int n = 0;
    size_t start = 0;
    for (size_t i = 0; n < max - 1 && i + seplen <= size;) {
        if (memcmp(data + i, FUZZ_SEP, seplen) == 0) {
            parts[n] = data + start;
            lens[n++] = i - start;
            i += seplen;
            start = i;
        } else {
            i++;
        }
    }
    parts[n] = data + start;
    lens[n++] = size - start;
    return n;
}

/* One ustar header + the data + padding + the two zero end blocks. */
static inline unsigned char *fuzz_tar_wrap(const char *member, const uint8_t *data, size_t size,
                                           size_t *out_len) {
    size_t padded = (size + 511) / 512 * 512;
    size_t total = 512 + padded + 1024;
    unsigned char *t = calloc(total, 1);
    if (!t) abort();
    snprintf((char *)t, 100, "%s", member);
    memcpy(t + 100, "0000644", 8);
    memcpy(t + 108, "0000000", 8);
    memcpy(t + 116, "0000000", 8);
    snprintf((char *)t + 124, 12, "%011lo", (unsigned long)size);
    memcpy(t + 136, "00000000000", 12);
    t[156] = '0';
    memcpy(t + 257, "ustar", 6);
    memcpy(t + 263, "00", 2);
    memset(t + 148, ' ', 8);
    unsigned sum = 0;
    for (int i = 0; i < 512; i++)
        sum += t[i];
    snprintf((char *)t + 148, 8, "%06o", sum);
    memcpy(t + 512, data, size);
    *out_len = total;
    return t;
}

#endif
