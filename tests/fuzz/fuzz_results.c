/* libFuzzer target: HDF5 results files as `qlab report` reads them (results_read, then every table's
 * columns, arrays and the provenance attributes). The HDF5 library is Debian's, not instrumented, and
 * crashes or loops on some corrupt files by itself (H5HG_read/H5HG__protect: tests/malformed/results_hdf5_*),
 * which qlab report turns into an error with results_read_checked (a trial read in a child process). This
 * target does the same trial read here, with the sanitizer's death callback (libFuzzer's crash-file
 * writer) cleared in the child, so only inputs that crash or hang inside HDF5, or make it ask for an absurd
 * amount of memory (a corrupt variable-length string length makes H5T__conv_vlen allocate up to 4 GB per
 * string: more than the fuzzer's RSS limit), are skipped and counted; everything else goes through
 * results_read in this process, where a finding in qlab's own code is reported as usual. HDF5's own leaks on
 * a failed H5Fopen are suppressed by tests/fuzz/lsan.supp. */
#include <errno.h>
#include <fcntl.h>
#include <sanitizer/allocator_interface.h>
#include <sanitizer/common_interface_defs.h>
#include <signal.h>
#include <sys/wait.h>

#include "core/results/results.h"
#include "tests/fuzz/fuzz.h"

static long hdf5_crashes;

static void report_crashes(void) {
    fprintf(stderr,
            "fuzz_results: %ld inputs crashed, hung or over-allocated in the HDF5 library itself (skipped)\n",
            hdf5_crashes);
}

/* In the trial child: one allocation of 512 MB or more (no results file of a fuzz input's size needs it)
 * ends the child at once with status 5. */
static void on_malloc(const volatile void *p, size_t size) {
    (void)p;
    if (size >= ((size_t)512 << 20)) _exit(5);
}

static void on_free(const volatile void *p) {
    (void)p;
}

/* 1 when reading path crashes the process, does not finish in 1 s (inside HDF5; a fuzz input reads in
 * milliseconds, and each hang costs the run this long) or allocates 512 MB at once,
 * tried in a child. */
static int crashes_hdf5(const char *path) {
    pid_t pid = fork();
    if (pid == 0) {
        __sanitizer_set_death_callback(NULL);
        __sanitizer_install_malloc_and_free_hooks(on_malloc, on_free);
        signal(SIGALRM, SIG_DFL); /* not libFuzzer's timeout handler: a hang inside HDF5 is skipped too */
        alarm(1);
        int fd = open("/dev/null", O_WRONLY);
        if (fd >= 0) dup2(fd, 2), dup2(fd, 1);
        results_file f;
        _exit(results_read(path, &f) == QLAB_OK ? 0 : 3);
    }
    int status = 0;
    if (pid < 0) abort();
    pid_t got;
    while ((got = waitpid(pid, &status, 0)) < 0 && errno == EINTR) {
    }
    if (got != pid) abort();
    return !(WIFEXITED(status) && (WEXITSTATUS(status) == 0 || WEXITSTATUS(status) == 3));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int registered;
    if (!registered) registered = 1, atexit(report_crashes);
    const char *path = fuzz_write("results", "run.h5", data, size, 0);
    if (crashes_hdf5(path)) {
        hdf5_crashes++;
        return 0;
    }
    results_file f;
    if (results_read(path, &f) == QLAB_OK) {
        (void)results_file_attr(&f, "experiment");
        (void)results_file_attr(&f, "config");
        double sum = 0;
        size_t chars = 0;
        for (int t = 0; t < f.ntables; t++) {
            const results_table_data *td = &f.tables[t];
            for (int c = 0; c < td->ncols; c++)
                for (int64_t r = 0; r < td->nrows; r++) {
                    const results_column *col = &td->columns[c];
                    if (col->type == RESULTS_FLOAT64) sum += col->f64[r];
                    if (col->type == RESULTS_INT64) sum += (double)col->i64[r];
                    if (col->type == RESULTS_STRING) chars += strlen(col->str[r]);
                }
        }
        for (int a = 0; a < f.narrays; a++)
            for (int64_t i = 0; i < f.arrays[a].count; i++)
                sum += f.arrays[a].data[i];
        if (sum == 0.123456789 && chars == 7) fprintf(stderr, "unlikely\n"); /* keeps the reads */
        results_file_free(&f);
    }
    return 0;
}
