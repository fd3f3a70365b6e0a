/* Shared conventions of the qlab library: status codes, the per-thread error message, checked allocation.
 * The library never calls exit(): a function that can fail returns a qlab_status and leaves one line in
 * qlab_last_error() naming the file (or argument) and what is wrong; programs print it and exit non-zero. */
#ifndef QLAB_COMMON_H
#define QLAB_COMMON_H

#include <stddef.h>
#include <stdint.h>

#define QLAB_VERSION "0.1.0"

typedef enum {
    QLAB_OK = 0,
    QLAB_ERR_IO,          /* open/read/write failed, truncated file */
    QLAB_ERR_FORMAT,      /* the bytes are not what the format says */
    QLAB_ERR_ARG,         /* bad argument, flag or config value */
    QLAB_ERR_NOMEM,       /* allocation failed */
    QLAB_ERR_NUMERIC,     /* NaN/Inf where a finite number is required */
    QLAB_ERR_UNSUPPORTED, /* valid input that this build cannot handle */
    QLAB_ERR_BUDGET,      /* an allocation would exceed the memory budget (core/base/memacct.h) */
} qlab_status;

/* Exit code of a program stopped by the memory budget (qlab_report_error returns it when the last error
 * was QLAB_ERR_BUDGET); other failures exit 1, bad options 2. */
#define QLAB_EXIT_BUDGET 3

/* Records a printf-style message as the current thread's last error and returns st, so a failing
 * function can `return qlab_fail(QLAB_ERR_FORMAT, "%s: header too short", path);`. */
qlab_status qlab_fail(qlab_status st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prefixes the current message with more context ("while loading X: "). Returns st; except that a
 * memory-budget refusal (QLAB_ERR_BUDGET) passed on as QLAB_ERR_NOMEM or QLAB_ERR_BUDGET keeps its message
 * unprefixed and returns QLAB_ERR_BUDGET. */
qlab_status qlab_fail_context(qlab_status st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *qlab_last_error(void);
/* The status the last qlab_fail / qlab_fail_context on this thread recorded (QLAB_OK when none). */
qlab_status qlab_last_status(void);
const char *qlab_status_name(qlab_status st);

/* Allocation that records "out of memory (N bytes)" on failure and returns NULL. Zeroed. */
void *qlab_calloc(size_t count, size_t size);
/* 64-byte aligned, zeroed; free with qlab_free_aligned. */
void *qlab_alloc_aligned(size_t bytes);
/* Sets n floats to +0, split across the OpenMP threads when n is large (gradient buffers between steps). */
void qlab_zero_floats(float *p, size_t n);
void qlab_free_aligned(void *p);

/* Reads a whole file into a malloc'd buffer (NUL-terminated for convenience; *len excludes the NUL). */
qlab_status qlab_read_file(const char *path, char **data, size_t *len);
/* Writes bytes to path through path.tmp.<pid> and rename(), so a reader never sees a partial file. */
qlab_status qlab_write_file_atomic(const char *path, const void *data, size_t len);
/* Creates the folder dir and any missing parents (mkdir -p; existing ones are fine). */
qlab_status qlab_make_dirs(const char *dir);
/* The folder of path into out (n bytes): the part before its last '/', "/" for a file at the root, "." for
 * a bare name. 1 when it fits, else 0 (out then holds a truncated prefix). */
int qlab_path_dir(const char *path, char *out, size_t n);

/* Program-side helper: prints "prog: <last error>" to stderr and returns the exit code: QLAB_EXIT_BUDGET
 * when the last error was a memory-budget refusal, else 1. */
int qlab_report_error(const char *prog);

/* Called first thing in main(): restarts the program (execv of /proc/self/exe) with what libgomp and
 * OpenBLAS read only at start-up, each unless the user set it:
 *  - OpenMP's wait policy: OMP_WAIT_POLICY=PASSIVE, plus GOMP_SPINCOUNT=QLAB_OMP_SHORT_SPIN when the machine
 *    has a free core for every thread at start-up (runnable tasks in /proc/loadavg, less this process's own
 *    runnable threads). With OpenBLAS and OpenMP sharing few cores, spinning workers starve the BLAS threads
 *    (measured 13-37x slower with libgomp's default spin on a loaded 2-core machine), so a loaded machine
 *    gets no spinning; on an idle one a short spin before sleeping saves the futex wake-up of every parallel
 *    region (a bf16 training step of the bench model: 225 ms passive, 154 ms with the short spin, Xeon, 2
 *    threads).
 *  - OPENBLAS_CORETYPE when OpenBLAS did not recognise the CPU (qlab_openblas_better_core).
 * Does nothing when nothing is to be set or the restart fails. The wait policy changes speed only; the
 * OpenBLAS kernels change fp32 sums in their last bits (as between machines), the same on every run of
 * the machine. */
#define QLAB_OMP_SHORT_SPIN "3000"
void qlab_runtime_restart(char **argv);
/* The OPENBLAS_CORETYPE this CPU should run with when the OpenBLAS loaded did not recognise it, else NULL:
 * Debian 12's OpenBLAS 0.3.21 takes the Xeons and Zen 5 this project runs on for a "Prescott" (SSE3)
 * and its sgemm runs at a fifth of the machine's speed (measured: 74 GFLOP/s vs 367 with Cooperlake's
 * kernels at the bench model's shapes, 2 threads). Cooperlake with AVX-512 BF16, SkylakeX with AVX-512,
 * Haswell with AVX2 + FMA, when the detected core is none of those families. */
const char *qlab_openblas_better_core(void);
/* Restarts this process (its /proc/self/cmdline) with OPENBLAS_CORETYPE set as qlab_runtime_restart sets
 * it, when it would set it; for the test programs (tests/check.h), whose fp32 sums must match those of the
 * qlab programs they run. */
void qlab_openblas_restart(void);
/* Its rule: the core for a CPU with the given instruction sets when OpenBLAS detected `detected`, or NULL
 * when that one is already of the best family (or nothing better applies). */
const char *qlab_openblas_core_for(const char *detected, int avx512, int avx512bf16, int avx2);
/* Whether this CPU runs the code the Makefile compiles for an instruction set, asked once: qlab_cpu_avx2 for
 * *_avx2.c (AVX2_FLAGS: AVX2, FMA, F16C), qlab_cpu_avx512 for *_avx512.c (AVX512_FLAGS: those and AVX-512
 * F, BW, VL, DQ), qlab_cpu_avx512bf16 for *_avx512bf16.c (those and AVX-512 BF16). Every run-time kernel
 * choice asks these, so a kernel is never taken on a CPU that lacks an instruction its file may use. */
int qlab_cpu_avx2(void);
int qlab_cpu_avx512(void);
int qlab_cpu_avx512bf16(void);
/* The wait policy this process runs with, for logs: "PASSIVE, spin 3000", "PASSIVE", "default". */
const char *qlab_openmp_wait_policy(void);

/* Number of OpenMP threads in use (1 without OpenMP). */
int qlab_num_threads(void);
/* Threads a parallel region opened here would run on: 1 inside one already (nested regions get one
 * thread), else qlab_num_threads(). */
int qlab_region_threads(void);

/* task(ctx, i) for every i in [0, n): on a team of `threads` (static schedule) when threads > 1 and not
 * inside a parallel region already (a nested one gets one thread), else in a plain loop that never enters
 * the OpenMP runtime (even a one-thread or if (0) parallel region sets up a
 * team, ~0.3-0.5 us and a malloc: measurable for the ~10^4 small requests of a bf16 step). */
void qlab_run_tasks(long n, int threads, void (*task)(void *ctx, long i), void *ctx);

#define QLAB_TRY(expr)                                                                                       \
    do {                                                                                                     \
        qlab_status qlab_try_st_ = (expr);                                                                   \
        if (qlab_try_st_ != QLAB_OK) return qlab_try_st_;                                                    \
    } while (0)

#endif
