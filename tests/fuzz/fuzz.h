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

static void fuzz_cleanup(void) {
    char cmd[300];
    if (!fuzz_dir_path[0]) return;
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", fuzz_dir_path);
    if (system(cmd) != 0) fprintf(stderr, "fuzz: could not remove %s\n", fuzz_dir_path);
}

/* The per-process folder (created on first use). */
static const char *fuzz_dir(const char *target) {
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
static const char *fuzz_write(const char *target, const char *name, const void *data, size_t size, int slot) {
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

static void fuzz_remove(const char *target, const char *name) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", fuzz_dir(target), name);
    unlink(p);
}

/* Splits data at FUZZ_SEP into at most max parts (the last part keeps any further separators). */
static int fuzz_split(const uint8_t *data, size_t size, const uint8_t **parts, size_t *lens, int max) {
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

#endif
