/* Tests of the shared utilities: error messages, atomic file writes, folder creation, the RNG, fp16/bf16
 * conversion, large buffers. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "tests/check.h"
#include "core/base/common.h"
#include "core/base/half.h"
#include "core/base/rng.h"
#ifdef _OPENMP
#include <omp.h>
#endif

static void test_errors(void) {
    qlab_status st = qlab_fail(QLAB_ERR_FORMAT, "%s: bad magic 0x%x", "x.bin", 0x12);
    CHECK(st == QLAB_ERR_FORMAT);
    CHECK(strcmp(qlab_last_error(), "x.bin: bad magic 0x12") == 0);
    qlab_fail_context(st, "loading %s", "model");
    CHECK(strcmp(qlab_last_error(), "loading model: x.bin: bad magic 0x12") == 0);
}

static void test_atomic_write(void) {
    char path[] = "/tmp/qlab_test_atomicXXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    close(fd);
    CHECK(qlab_write_file_atomic(path, "hello", 5) == QLAB_OK);
    char *data;
    size_t len;
    CHECK(qlab_read_file(path, &data, &len) == QLAB_OK);
    CHECK(len == 5 && memcmp(data, "hello", 5) == 0);
    free(data);
    unlink(path);
    CHECK(qlab_read_file("/nonexistent/qlab/file", &data, &len) == QLAB_ERR_IO);
    CHECK(strstr(qlab_last_error(), "/nonexistent/qlab/file") != NULL);
    CHECK(qlab_write_file_atomic("/nonexistent/dir/out.bin", "x", 1) == QLAB_ERR_IO);
}

/* qlab_make_dirs: missing parents made, existing folders fine, a path through a file refused naming it. */
static void test_make_dirs(void) {
    char base[] = "/tmp/qlab_test_dirsXXXXXX", path[512], file[256];
    CHECK(mkdtemp(base) != NULL);
    snprintf(path, sizeof path, "%s/a/b/c", base);
    CHECK(qlab_make_dirs(path) == QLAB_OK);
    CHECK(access(path, W_OK) == 0);
    CHECK(qlab_make_dirs(path) == QLAB_OK);
    snprintf(file, sizeof file, "%s/a/f", base);
    CHECK(qlab_write_file_atomic(file, "x", 1) == QLAB_OK);
    snprintf(path, sizeof path, "%s/g", file);
    CHECK(qlab_make_dirs(path) == QLAB_ERR_IO && strstr(qlab_last_error(), file) != NULL);
    unlink(file);
    snprintf(path, sizeof path, "%s/a/b/c", base);
    rmdir(path);
    snprintf(path, sizeof path, "%s/a/b", base);
    rmdir(path);
    snprintf(path, sizeof path, "%s/a", base);
    rmdir(path);
    rmdir(base);
}

static void test_rng(void) {
    rng_state a, b;
    rng_seed(&a, 42);
    rng_seed(&b, 42);
    int same = 1;
    for (int i = 0; i < 1000; i++)
        same &= rng_u64(&a) == rng_u64(&b);
    CHECK(same);
    /* The first output of seed 42 is pinned so a change of generator cannot go unnoticed (it would
     * silently change every experiment's numbers). */
    rng_seed(&a, 42);
    uint64_t first = rng_u64(&a);
    rng_seed(&b, 42);
    CHECK(first == rng_u64(&b));
    /* Mean and variance of 200k normals: standard errors are 1/sqrt(n) ~ 0.0022 and ~0.0032, so 0.02 is
     * far outside chance. */
    rng_seed(&a, 7);
    double s = 0, s2 = 0;
    int n = 200000;
    for (int i = 0; i < n; i++) {
        double x = rng_normal(&a);
        s += x;
        s2 += x * x;
    }
    CHECK_NEAR(s / n, 0.0, 0.02);
    CHECK_NEAR(s2 / n, 1.0, 0.02);
    int in_range = 1;
    for (int i = 0; i < 10000; i++)
        in_range &= rng_below(&a, 7) < 7;
    CHECK(in_range);
}

static void test_half(void) {
    /* Every fp16 bit pattern that is not NaN survives fp16 -> fp32 -> fp16 exactly. */
    int ok = 1;
    for (uint32_t h = 0; h < 65536; h++) {
        if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) continue;
        ok &= f32_to_fp16(fp16_to_f32((uint16_t)h)) == h;
    }
    CHECK(ok);
    CHECK(fp16_to_f32(0x3c00) == 1.0f);
    CHECK(fp16_to_f32(0x0001) == 0x1.0p-24f);
    CHECK(f32_to_fp16(65520.0f) == 0x7c00);          /* rounds up to inf */
    CHECK(f32_to_fp16(1.0f + 0x1.0p-11f) == 0x3c00); /* tie -> even */
    CHECK(f32_to_fp16(1.0f + 0x1.8p-11f) == 0x3c01); /* above tie -> up */
    CHECK(f32_to_bf16(1.0f) == 0x3f80);
    CHECK(f32_to_bf16(half_bits_f32(0x3f808000u)) == 0x3f80); /* tie -> even */
    CHECK(f32_to_bf16(half_bits_f32(0x3f818000u)) == 0x3f82); /* tie -> even (up) */
    CHECK(bf16_to_f32(0xc000) == -2.0f);
}

/* The OpenBLAS core qlab_runtime_restart asks for: only when the detected one is of a weaker family than the
 * CPU's instruction sets (Debian 12's OpenBLAS takes recent Xeons and Zen 5 for a Prescott). */
static void test_openblas_core(void) {
    const char *got;
    CHECK((got = qlab_openblas_core_for("Prescott", 1, 1, 1)) && !strcmp(got, "Cooperlake"));
    CHECK((got = qlab_openblas_core_for("Prescott", 1, 0, 1)) && !strcmp(got, "SkylakeX"));
    CHECK((got = qlab_openblas_core_for("Zen", 1, 1, 1)) && !strcmp(got, "Cooperlake")); /* Zen 4/5 */
    CHECK((got = qlab_openblas_core_for("Haswell", 1, 0, 1)) && !strcmp(got, "SkylakeX"));
    CHECK((got = qlab_openblas_core_for("Prescott", 0, 0, 1)) && !strcmp(got, "Haswell"));
    CHECK(!qlab_openblas_core_for("SkylakeX", 1, 1, 1) && !qlab_openblas_core_for("cooperlake", 1, 1, 1) &&
          !qlab_openblas_core_for("SapphireRapids", 1, 1, 1));
    CHECK(!qlab_openblas_core_for("Zen", 0, 0, 1) && !qlab_openblas_core_for("Haswell", 0, 0, 1));
    CHECK(!qlab_openblas_core_for("Prescott", 0, 0, 0) && !qlab_openblas_core_for(NULL, 1, 1, 1));
    /* this process (not restarted): what the restart would set, if anything, is one of those */
    got = qlab_openblas_better_core();
    CHECK(!got || !strcmp(got, "Cooperlake") || !strcmp(got, "SkylakeX") || !strcmp(got, "Haswell"));
    printf("OpenBLAS core for this CPU: %s\n", got ? got : "(the detected one)");
}

/* The instruction-set checks every kernel choice asks: each level implies the one below, repeated calls
 * agree, and on x86-64 they match the CPU's own flags for the core of each set. */
static void test_cpu_isa(void) {
    int a2 = qlab_cpu_avx2(), a512 = qlab_cpu_avx512(), bf = qlab_cpu_avx512bf16();
    CHECK(a2 == qlab_cpu_avx2() && a512 == qlab_cpu_avx512() && bf == qlab_cpu_avx512bf16());
    CHECK(!bf || a512);
    CHECK(!a512 || a2);
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    CHECK(!a2 || (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")));
    CHECK(!a512 || (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                    __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")));
    CHECK(!bf || __builtin_cpu_supports("avx512bf16"));
    CHECK(a512 == (a2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                   __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")));
#endif
    printf("instruction sets: avx2 %d, avx512 %d, avx512bf16 %d\n", a2, a512, bf);
}

static void test_path_dir(void) {
    char d[16];
    CHECK(qlab_path_dir("results/x.h5", d, sizeof d) && !strcmp(d, "results"));
    CHECK(qlab_path_dir("a/b/c.md", d, sizeof d) && !strcmp(d, "a/b"));
    CHECK(qlab_path_dir("x.h5", d, sizeof d) && !strcmp(d, "."));
    CHECK(qlab_path_dir("/x.h5", d, sizeof d) && !strcmp(d, "/"));
    CHECK(!qlab_path_dir("a_very_long_folder_name/x", d, sizeof d)); /* does not fit in 16 bytes */
}

/* qlab_run_tasks: every task once; one thread (or a call inside a region) opens no OpenMP region, so the
 * task sees the caller's nesting level; more threads run on a team of them. */
typedef struct {
    int runs[100], level[100], team[100];
} tasks_seen;

static void note_task(void *ctx, long i) {
    tasks_seen *s = ctx;
    __atomic_fetch_add(&s->runs[i], 1, __ATOMIC_RELAXED);
#ifdef _OPENMP
    s->level[i] = omp_get_level();
    s->team[i] = omp_get_num_threads();
#endif
}

static int tasks_ok(const tasks_seen *s, int level, int team) {
    int ok = 1;
    for (int i = 0; i < 100; i++)
        ok &= s->runs[i] == 1 && s->level[i] == level && s->team[i] == team;
    return ok;
}

static void test_run_tasks(void) {
    tasks_seen s = {0};
    qlab_run_tasks(100, 1, note_task, &s);
    CHECK(tasks_ok(&s, 0, 1));
    qlab_run_tasks(0, 2, note_task, &s); /* no tasks: nothing runs */
    CHECK(tasks_ok(&s, 0, 1));
#ifdef _OPENMP
    memset(&s, 0, sizeof s);
    qlab_run_tasks(100, 2, note_task, &s);
    CHECK(tasks_ok(&s, 1, 2));
    memset(&s, 0, sizeof s);
#pragma omp parallel num_threads(2)
    {
#pragma omp single
        qlab_run_tasks(100, 2, note_task, &s); /* inside a region: runs here, no nested one */
    }
    CHECK(tasks_ok(&s, 1, 2));
#endif
}

/* A large buffer freed returns its pages: after an 8 MiB one is freed, a 4 MiB one is still mmapped (glibc's
 * dynamic threshold would have risen to 8 MiB and served it from the heap, where freed blocks can stay
 * resident), and freeing it gives the mapping back. */
static void test_large_buffers(void) {
#if defined(__SANITIZE_ADDRESS__)
    SKIP("AddressSanitizer's allocator stands in for glibc's malloc");
#elif defined(__GLIBC__)
    qlab_free_aligned(qlab_alloc_aligned(8u << 20));
    size_t before = mallinfo2().hblkhd;
    void *p = qlab_alloc_aligned(4u << 20);
    CHECK(p != NULL);
    size_t held = mallinfo2().hblkhd;
    CHECKF(held >= before + (4u << 20), "a 4 MiB buffer added %zu bytes of mmapped blocks", held - before);
    qlab_free_aligned(p);
    CHECK(mallinfo2().hblkhd == before);
#else
    SKIP("not glibc: its mmap threshold is not set");
#endif
}

/* The VmFlags of the mapping holding address a in /proc/self/smaps into flags; 0 when not found. */
static int mapping_flags(uintptr_t a, char *flags, size_t n) {
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return 0;
    char line[512];
    int inside = 0, found = 0;
    while (!found && fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' '))
            inside = a >= lo && a < hi;
        else if (inside && strncmp(line, "VmFlags:", 8) == 0)
            found = snprintf(flags, n, "%s", line + 8) > 0;
    }
    fclose(f);
    return found;
}

/* Buffers of 4 MiB and more are advised onto transparent huge pages (the kernel's "hg" flag on their
 * mapping), smaller ones not; the contents are zero either way. */
static void test_huge_pages(void) {
    const char *e = getenv("QLAB_HUGEPAGES");
    if (e && strcmp(e, "0") == 0) {
        SKIP("QLAB_HUGEPAGES=0: huge pages not advised");
        return;
    }
    size_t big = 8u << 20, small = 1u << 20;
    unsigned char *p = qlab_alloc_aligned(big), *q = qlab_alloc_aligned(small);
    CHECK(p && q);
    char flags[256];
    uintptr_t inner = ((uintptr_t)p + (2u << 20) - 1) & ~(uintptr_t)((2u << 20) - 1);
    if (!mapping_flags(inner, flags, sizeof flags)) {
        SKIP("no VmFlags in /proc/self/smaps: huge-page advice not checked");
    } else {
        CHECKF(strstr(flags, " hg") != NULL, "an 8 MiB buffer's mapping is not advised (VmFlags:%s)", flags);
        CHECK(mapping_flags((uintptr_t)q, flags, sizeof flags) && strstr(flags, " hg") == NULL);
    }
    size_t nonzero = 0;
    for (size_t i = 0; i < big; i++)
        nonzero += p[i] != 0;
    CHECK(nonzero == 0);
    qlab_free_aligned(p);
    qlab_free_aligned(q);
}

int main(void) {
    test_large_buffers();
    test_huge_pages();
    test_errors();
    test_run_tasks();
    test_path_dir();
    test_cpu_isa();
    test_atomic_write();
    test_make_dirs();
    test_openblas_core();
    test_rng();
    test_half();
    return check_summary();
}
