/* Error messages, checked allocation and whole-file I/O shared by every module. */
#include "core/base/common.h"

#include "core/base/atomic_file.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include <pthread.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef QLAB_HAVE_OPENBLAS
#include <cblas.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

static _Thread_local char last_error[1024];
static _Thread_local qlab_status last_status;

/* A message is one line: names taken from files (JSON keys, tensor names) may hold control
 * characters, which are shown as '?'. */
static void keep_one_line(void) {
    for (char *c = last_error; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f) *c = '?';
}

qlab_status qlab_fail(qlab_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    keep_one_line();
    last_status = st;
    return st;
}

qlab_status qlab_fail_context(qlab_status st, const char *fmt, ...) {
    /* A memory-budget refusal already names the category, the request and the breakdown: it stays the one
     * line the budget wrote, and stays a budget refusal when a caller passes it on as out of memory. */
    if (last_status == QLAB_ERR_BUDGET && (st == QLAB_ERR_NOMEM || st == QLAB_ERR_BUDGET))
        return QLAB_ERR_BUDGET;
    char prefix[512], old[sizeof last_error];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, last_error, sizeof old);
    snprintf(last_error, sizeof last_error, "%.500s: %.500s", prefix, old);
    keep_one_line();
    last_status = st;
    return st;
}

const char *qlab_last_error(void) {
    return last_error[0] ? last_error : "unknown error";
}

qlab_status qlab_last_status(void) {
    return last_status;
}

const char *qlab_status_name(qlab_status st) {
    switch (st) {
    case QLAB_OK:
        return "ok";
    case QLAB_ERR_IO:
        return "I/O error";
    case QLAB_ERR_FORMAT:
        return "format error";
    case QLAB_ERR_ARG:
        return "bad argument";
    case QLAB_ERR_NOMEM:
        return "out of memory";
    case QLAB_ERR_NUMERIC:
        return "non-finite value";
    case QLAB_ERR_UNSUPPORTED:
        return "unsupported";
    case QLAB_ERR_BUDGET:
        return "memory budget exceeded";
    }
    return "unknown status";
}

void *qlab_calloc(size_t count, size_t size) {
    if (count && size > SIZE_MAX / count) {
        qlab_fail(QLAB_ERR_NOMEM, "allocation size overflows (%zu x %zu bytes)", count, size);
        return NULL;
    }
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) qlab_fail(QLAB_ERR_NOMEM, "out of memory (%zu bytes)", count * size);
    return p;
}

/* Buffers of HUGE_MIN bytes and more are advised onto transparent huge pages (MADV_HUGEPAGE: taken when the
 * system's THP mode is madvise or always) unless QLAB_HUGEPAGES=0: the passes over large weights with a
 * stride (a weight packed panel by panel, columns of its rows at a time) then miss the TLB far less. The
 * resident size is the same: every buffer is zeroed at allocation, so all its pages are touched anyway. */
#define HUGE_MIN ((size_t)4 << 20)
#define HUGE_PAGE ((uintptr_t)2 << 20)
static int huge_pages = 1;
static pthread_once_t malloc_once = PTHREAD_ONCE_INIT;

/* Once, at the first aligned allocation: QLAB_HUGEPAGES, and glibc's mmap threshold. glibc raises that
 * threshold to the size of each mmapped block freed, after which blocks up to that size come from the heap
 * and, once freed, can stay resident between live ones. qlab's large buffers are few and long-lived
 * (reserved, then grown), so a fixed threshold, which also turns the raising off, keeps each of them mmapped:
 * freeing one returns its pages, and peak RSS follows the memory accounting. */
static void malloc_setup(void) {
#ifdef __GLIBC__
    mallopt(M_MMAP_THRESHOLD, 128 * 1024);
#endif
    const char *e = getenv("QLAB_HUGEPAGES");
    huge_pages = !(e && strcmp(e, "0") == 0);
}

/* The whole huge pages inside [p, p + bytes) advised as such (see HUGE_MIN). */
static void advise_huge(void *p, size_t bytes) {
#ifdef MADV_HUGEPAGE
    if (!huge_pages || bytes < HUGE_MIN) return;
    uintptr_t lo = ((uintptr_t)p + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1),
              hi = ((uintptr_t)p + bytes) & ~(HUGE_PAGE - 1);
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_HUGEPAGE); /* advice only: a refusal changes nothing */
#else
    (void)p, (void)bytes;
#endif
}

void *qlab_alloc_aligned(size_t bytes) {
    pthread_once(&malloc_once, malloc_setup);
    void *p = NULL;
    size_t rounded = (bytes + 63) & ~(size_t)63;
    if (rounded < bytes || posix_memalign(&p, 64, rounded ? rounded : 64) != 0) {
        qlab_fail(QLAB_ERR_NOMEM, "out of memory (%zu bytes)", bytes);
        return NULL;
    }
    advise_huge(p, rounded);
    memset(p, 0, rounded ? rounded : 64);
    return p;
}

void qlab_free_aligned(void *p) {
    free(p);
}

int qlab_path_dir(const char *path, char *out, size_t n) {
    const char *slash = strrchr(path, '/');
    int len = !slash          ? snprintf(out, n, ".")
              : slash == path ? snprintf(out, n, "/")
                              : snprintf(out, n, "%.*s", (int)(slash - path), path);
    return len >= 0 && (size_t)len < n;
}

qlab_status qlab_make_dirs(const char *dir) {
    char buf[4096];
    if (strlen(dir) >= sizeof buf) return qlab_fail(QLAB_ERR_ARG, "%s: path too long", dir);
    strcpy(buf, dir);
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == 0) {
            char c = *p;
            *p = 0;
            if (mkdir(buf, 0777) != 0 && errno != EEXIST)
                return qlab_fail(QLAB_ERR_IO, "%s: cannot create folder: %s", buf, strerror(errno));
            *p = c;
            if (!c) break;
        }
    }
    return QLAB_OK;
}

qlab_status qlab_read_file(const char *path, char **data, size_t *len) {
    *data = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return qlab_fail(QLAB_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    /* A directory opens (and seeks to LONG_MAX) on Linux: refuse it by name, not as a huge allocation. */
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        int dir = S_ISDIR(sb.st_mode);
        fclose(f);
        return qlab_fail(QLAB_ERR_IO, "%s: %s", path, dir ? "is a directory" : "not a regular file");
    }
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        return qlab_fail(QLAB_ERR_IO, "%s: cannot seek: %s", path, strerror(errno));
    }
    long size = ftell(f);
    if (size < 0) {
        fclose(f);
        return qlab_fail(QLAB_ERR_IO, "%s: cannot tell size: %s", path, strerror(errno));
    }
    rewind(f);
    char *buf = qlab_calloc((size_t)size + 1, 1);
    if (!buf) {
        fclose(f);
        return qlab_fail_context(QLAB_ERR_NOMEM, "%s", path);
    }
    if (size > 0 && fread(buf, 1, (size_t)size, f) != (size_t)size) {
        free(buf);
        fclose(f);
        return qlab_fail(QLAB_ERR_IO, "%s: short read", path);
    }
    fclose(f);
    *data = buf;
    *len = (size_t)size;
    return QLAB_OK;
}

qlab_status qlab_write_file_atomic(const char *path, const void *data, size_t len) {
    atomic_file w;
    QLAB_TRY(atomic_file_open(&w, path));
    atomic_file_write(&w, data, len);
    return atomic_file_commit(&w);
}

int qlab_report_error(const char *prog) {
    fprintf(stderr, "%s: %s\n", prog, qlab_last_error());
    return qlab_last_status() == QLAB_ERR_BUDGET ? QLAB_EXIT_BUDGET : 1;
}

/* Runnable threads of this process (state R in /proc/self/task/<tid>/stat): OpenBLAS's pthread workers,
 * started before main(), spin for a while after start-up and show as runnable in /proc/loadavg. */
static int own_runnable(void) {
    DIR *d = opendir("/proc/self/task");
    if (!d) return 1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[64], buf[256];
        snprintf(path, sizeof path, "/proc/self/task/%.20s/stat", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        size_t len = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[len] = 0;
        const char *close = strrchr(buf, ')'); /* the command name may hold spaces or parentheses */
        if (close && close[1] == ' ' && close[2] == 'R') n++;
    }
    closedir(d);
    return n;
}

/* Runnable tasks on the machine besides this process's own: the 4th field of /proc/loadavg ("running/
 * total") minus this process's runnable threads. The least of three reads 2 ms apart, so a kernel thread or
 * a process that is just exiting does not count as load while a busy process (runnable in every read)
 * does; -1 when unreadable. */
static int other_runnable(void) {
    int least = -1;
    for (int i = 0; i < 3; i++) {
        FILE *f = fopen("/proc/loadavg", "r");
        int running = 0;
        if (f && fscanf(f, "%*f %*f %*f %d/", &running) == 1) {
            int others = running - own_runnable();
            if (others < 0) others = 0;
            if (least < 0 || others < least) least = others;
        }
        if (f) fclose(f);
        if (i < 2) usleep(2000);
    }
    return least;
}

/* The three answers of the qlab_cpu_* checks as bits (1 avx2, 2 avx512, 4 avx512bf16), -1 until asked; the
 * answer is the same in every thread. */
static int cpu_isa_ = -1;

static int cpu_isa(void) {
    int isa = __atomic_load_n(&cpu_isa_, __ATOMIC_RELAXED);
    if (isa >= 0) return isa;
    isa = 0;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    /* F16C from CPUID leaf 1 (ECX bit 29): clang 14's __builtin_cpu_supports does not know "f16c" */
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    int f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C);
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
    int avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    isa = avx2 | avx512 << 1 | (avx512 && __builtin_cpu_supports("avx512bf16")) << 2;
#endif
    __atomic_store_n(&cpu_isa_, isa, __ATOMIC_RELAXED);
    return isa;
}

int qlab_cpu_avx2(void) {
    return cpu_isa() & 1;
}

int qlab_cpu_avx512(void) {
    return (cpu_isa() >> 1) & 1;
}

int qlab_cpu_avx512bf16(void) {
    return (cpu_isa() >> 2) & 1;
}

/* Whether name (OpenBLAS's core, any case) is one of the n in list. */
static int core_in(const char *name, const char *const *list, int n) {
    for (int i = 0; i < n; i++)
        if (!strcasecmp(name, list[i])) return 1;
    return 0;
}

const char *qlab_openblas_core_for(const char *detected, int avx512, int avx512bf16, int avx2) {
    static const char *const with_avx512[] = {"skylakex", "cooperlake", "sapphirerapids"};
    static const char *const with_avx2[] = {"haswell",        "zen",      "skylakex", "cooperlake",
                                            "sapphirerapids", "excavator"};
    if (!detected) return NULL;
    if (avx512) return core_in(detected, with_avx512, 3) ? NULL : avx512bf16 ? "Cooperlake" : "SkylakeX";
    if (avx2) return core_in(detected, with_avx2, 6) ? NULL : "Haswell";
    return NULL;
}

const char *qlab_openblas_better_core(void) {
#ifdef QLAB_HAVE_OPENBLAS
    /* OpenBLAS's SkylakeX kernels also use AVX-512 CD */
    int avx512 = qlab_cpu_avx512() && __builtin_cpu_supports("avx512cd");
    return qlab_openblas_core_for(openblas_get_corename(), avx512, avx512 && qlab_cpu_avx512bf16(),
                                  qlab_cpu_avx2());
#else
    return NULL;
#endif
}

/* The OPENBLAS_CORETYPE a restart should set: qlab_openblas_better_core() unless the user set one. */
static const char *openblas_core_to_set(void) {
    return getenv("OPENBLAS_CORETYPE") ? NULL : qlab_openblas_better_core();
}

void qlab_openblas_restart(void) {
    const char *core = openblas_core_to_set();
    if (!core) return;
    static char cmdline[1 << 16];
    FILE *f = fopen("/proc/self/cmdline", "rb");
    if (!f) return;
    size_t len = fread(cmdline, 1, sizeof cmdline - 1, f);
    int whole = feof(f);
    fclose(f);
    if (!whole || len == 0) return;
    cmdline[len] = 0;
    char *argv[256];
    int argc = 0;
    for (size_t at = 0; at < len && argc < 255; at += strlen(cmdline + at) + 1)
        argv[argc++] = cmdline + at;
    argv[argc] = NULL;
    if (setenv("OPENBLAS_CORETYPE", core, 1) == 0) execv("/proc/self/exe", argv);
}

void qlab_runtime_restart(char **argv) {
    int restart = 0;
    if (!getenv("OMP_WAIT_POLICY") && !getenv("GOMP_SPINCOUNT") &&
        setenv("OMP_WAIT_POLICY", "PASSIVE", 1) == 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        int others = other_runnable();
        if (others >= 0 && others + qlab_num_threads() <= cores)
            setenv("GOMP_SPINCOUNT", QLAB_OMP_SHORT_SPIN, 1);
        restart = 1;
    }
    const char *core = openblas_core_to_set();
    if (core && setenv("OPENBLAS_CORETYPE", core, 1) == 0) restart = 1;
    if (restart) execv("/proc/self/exe", argv);
}

const char *qlab_openmp_wait_policy(void) {
    static char buf[96];
    const char *pol = getenv("OMP_WAIT_POLICY"), *spin = getenv("GOMP_SPINCOUNT");
    snprintf(buf, sizeof buf, "%s%s%s", pol ? pol : "default", spin ? ", spin " : "", spin ? spin : "");
    return buf;
}

void qlab_zero_floats(float *p, size_t n) {
    const size_t chunk = (size_t)1 << 16; /* 256 KB: below a few of these one thread is quicker */
    if (n < 4 * chunk) {
        memset(p, 0, n * sizeof(float));
        return;
    }
    long blocks = (long)((n + chunk - 1) / chunk);
#pragma omp parallel for schedule(static)
    for (long b = 0; b < blocks; b++) {
        size_t at = (size_t)b * chunk;
        memset(p + at, 0, (n - at < chunk ? n - at : chunk) * sizeof(float));
    }
}

int qlab_num_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

int qlab_region_threads(void) {
#ifdef _OPENMP
    return omp_in_parallel() ? 1 : omp_get_max_threads();
#else
    return 1;
#endif
}

void qlab_run_tasks(long n, int threads, void (*task)(void *ctx, long i), void *ctx) {
#ifdef _OPENMP
    if (threads > 1 && !omp_in_parallel()) {
#pragma omp parallel for schedule(static) num_threads(threads)
        for (long i = 0; i < n; i++)
            task(ctx, i);
        return;
    }
#else
    (void)threads;
#endif
    for (long i = 0; i < n; i++)
        task(ctx, i);
}
