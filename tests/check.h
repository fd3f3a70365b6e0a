/* A minimal test harness: each test program counts checks, prints each failure with file and line, and
 * ends with "N passed, M failed, K skipped"; its exit status is non-zero when M > 0. */
#ifndef QLAB_TEST_CHECK_H
#define QLAB_TEST_CHECK_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "core/base/common.h"

static int check_passed_, check_failed_, check_skipped_;

/* Test programs run OpenBLAS on the kernels qlab's programs choose (qlab_runtime_restart): restarted with
 * OPENBLAS_CORETYPE before main when OpenBLAS did not recognise the CPU, so fp32 sums formed here and in
 * the programs a test runs are the same bits. */
__attribute__((constructor)) static void check_openblas_kernels_(void) {
    qlab_openblas_restart();
}

#define CHECK(cond)                                                                                          \
    do {                                                                                                     \
        if (cond) {                                                                                          \
            check_passed_++;                                                                                 \
        } else {                                                                                             \
            check_failed_++;                                                                                 \
            fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                                  \
        }                                                                                                    \
    } while (0)

/* Like CHECK, with a printf-style explanation printed on failure. */
#define CHECKF(cond, ...)                                                                                    \
    do {                                                                                                     \
        if (cond) {                                                                                          \
            check_passed_++;                                                                                 \
        } else {                                                                                             \
            check_failed_++;                                                                                 \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                                  \
            fprintf(stderr, __VA_ARGS__);                                                                    \
            fputc('\n', stderr);                                                                             \
        }                                                                                                    \
    } while (0)

/* |a - b| <= tol, with both values printed on failure. */
#define CHECK_NEAR(a, b, tol)                                                                                \
    do {                                                                                                     \
        double check_a_ = (double)(a), check_b_ = (double)(b), check_t_ = (double)(tol);                     \
        if (fabs(check_a_ - check_b_) <= check_t_) {                                                         \
            check_passed_++;                                                                                 \
        } else {                                                                                             \
            check_failed_++;                                                                                 \
            fprintf(stderr, "FAIL %s:%d: %s = %.9g vs %s = %.9g (tol %.3g)\n", __FILE__, __LINE__, #a,       \
                    check_a_, #b, check_b_, check_t_);                                                       \
        }                                                                                                    \
    } while (0)

/* Records a skipped group of checks with the reason (e.g. shared data missing). */
#define SKIP(...)                                                                                            \
    do {                                                                                                     \
        check_skipped_++;                                                                                    \
        fprintf(stderr, "SKIP %s:%d: ", __FILE__, __LINE__);                                                 \
        fprintf(stderr, __VA_ARGS__);                                                                        \
        fputc('\n', stderr);                                                                                 \
    } while (0)

/* Path of a file in ../shared/data (relative to the repository root, where make test runs), or NULL
 * when it is absent (a user's clone). Override the folder with QLAB_SHARED_DATA. */
static inline const char *shared_data_path(const char *rel) {
    static char buf[8][1024];
    static int slot;
    const char *root = getenv("QLAB_SHARED_DATA");
    if (!root) root = "../shared/data";
    char *b = buf[slot++ % 8];
    snprintf(b, sizeof buf[0], "%s/%s", root, rel);
    struct stat st;
    return stat(b, &st) == 0 ? b : NULL;
}

/* A file of ../shared/data (rel) or, when absent there, where a `make fetch-*` target puts it (fetched,
 * relative to the repository root); NULL when neither exists. */
static inline const char *shared_or_fetched_path(const char *rel, const char *fetched) {
    const char *p = shared_data_path(rel);
    struct stat st;
    return p ? p : stat(fetched, &st) == 0 ? fetched : NULL;
}

static inline int check_summary(void) {
    printf("%d passed, %d failed, %d skipped\n", check_passed_, check_failed_, check_skipped_);
    return check_failed_ ? 1 : 0;
}

#endif
