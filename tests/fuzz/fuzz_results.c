/* libFuzzer target: HDF5 results files as `qlab report` reads them (results_read, then every table's
 * columns and the provenance attributes). The HDF5 library itself is Debian's, not instrumented: a crash
 * inside it is turned into an error by results_read_checked (a trial read in a child), as qlab report does.
 */
#include "core/results/results.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_write("results", "run.h5", data, size, 0);
    results_file f;
    if (results_read_checked(path, &f) == QLAB_OK) {
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
