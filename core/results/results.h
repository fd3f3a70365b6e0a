/* One HDF5 file per experiment run: named tables of equal-length columns (/tables/<name>/<column>, each
 * column a 1-D float64, int64 or string dataset), free-form float64 arrays (/arrays/<name>), notes
 * (string attributes of /notes), and the run's provenance as root attributes (see provenance.h).
 * The file is written as "<path>.tmp.<pid>" and renamed to <path> only by a successful results_commit,
 * so a failed or killed run never leaves a half-written file under the real name.
 * HDF5's own error printing is switched off: failures come back as one qlab_fail line. */
#ifndef QLAB_RESULTS_H
#define QLAB_RESULTS_H

#include <stdint.h>

#include "core/base/common.h"
#include "core/results/config.h"

typedef enum { RESULTS_FLOAT64 = 0, RESULTS_INT64, RESULTS_STRING } results_type;

/* ---------------------------------------------------------------- writing */
typedef struct results results;             /* an open results file being written */
typedef struct results_table results_table; /* a table being filled row by row */

/* Starts a results file for experiment `experiment`, recording the provenance (cfg may be NULL when the
 * program has no config; argv is the command line). */
qlab_status results_create(results **out, const char *path, const char *experiment, const config *cfg,
                           int argc, char *const *argv);
/* Extra root attributes, e.g. results_attr_int(r, "seed", 1234). Replaces an existing one. */
qlab_status results_attr_string(results *r, const char *key, const char *value);
qlab_status results_attr_int(results *r, const char *key, int64_t value);
/* Records the run's compute dtype ("fp32" or "bf16") and the bf16 path its products ran on ("none" for
 * fp32; "avx512bf16", "amx", "blas" or "ref") as the provenance attributes compute and bf16_path, which
 * results_create sets to fp32 / none. */
qlab_status results_set_compute(results *r, const char *compute, const char *bf16_path);
/* A named free-text note about the whole run ("model_skipped": "file not found, rows skipped"). */
qlab_status results_note(results *r, const char *name, const char *text);

/* Tables: declare the columns, then per row set every column and call results_row_end. The table is
 * written to the file by results_table_end (or by results_commit if still open). unit and description
 * may be NULL or "". */
qlab_status results_table_begin(results *r, results_table **out, const char *name, const char *title);
qlab_status results_table_column(results_table *t, const char *name, results_type type, const char *unit,
                                 const char *description);
qlab_status results_table_note(results_table *t, const char *text); /* appended, one line per call */
qlab_status results_set_double(results_table *t, const char *column, double value);
qlab_status results_set_int(results_table *t, const char *column, int64_t value);
qlab_status results_set_string(results_table *t, const char *column, const char *value);
qlab_status results_row_end(results_table *t); /* fails naming any column left unset */
qlab_status results_table_end(results_table *t);

/* A free-form float64 array of up to 8 dimensions (curves, histograms). */
qlab_status results_write_array(results *r, const char *name, const double *data, int ndim,
                                const int64_t *dims, const char *description);

/* Records end_time_utc, closes the file and renames it into place. Fails (and removes the temporary
 * file) if any earlier call on r failed. Frees r in every case. */
qlab_status results_commit(results *r);
/* From now on a table ended with no rows fails the file (commit refuses it, naming the table), so a run
 * that measured nothing (a config with an empty list) cannot replace an earlier run's results. Experiments
 * call it right after results_create. */
void results_require_rows(results *r);
/* Abandons the run: closes and removes the temporary file. Frees r. Safe with NULL. */
void results_abort(results *r);
/* The temporary path being written (for tests and messages). */
const char *results_tmp_path(const results *r);

/* ---------------------------------------------------------------- reading (whole file into memory) */
typedef struct {
    char *name;
    results_type type;
    char *unit, *description; /* "" when absent */
    double *f64;              /* RESULTS_FLOAT64 */
    int64_t *i64;             /* RESULTS_INT64 */
    char **str;               /* RESULTS_STRING */
} results_column;

typedef struct {
    char *name, *title, *notes; /* notes "" when absent; lines separated by '\n' */
    int64_t nrows;
    int ncols;
    results_column *columns; /* in creation order */
} results_table_data;

typedef struct {
    char *name, *value; /* numeric attributes are rendered as text */
} results_attribute;

typedef struct {
    char *name, *description;
    int ndim;
    int64_t dims[8];
    int64_t count;
    double *data;
} results_array;

typedef struct {
    int nattrs;
    results_attribute *attrs; /* root attributes (provenance), by name */
    int nnotes;
    results_attribute *notes;
    int ntables;
    results_table_data *tables; /* in creation order */
    int narrays;
    results_array *arrays;
} results_file;

qlab_status results_read(const char *path, results_file *out);
/* results_read after a trial read in a child process, so a corrupt file that crashes the HDF5 library
 * itself, or sends it into an endless loop, is an error ("corrupt HDF5 file") rather than a crash or a
 * hang. The trial has QLAB_RESULTS_READ_TIMEOUT seconds (default below; results files read in
 * milliseconds). Programs reading files they did not just write (qlab report, qlab paper) use this. */
#define RESULTS_READ_TIMEOUT_DEFAULT 30
qlab_status results_read_checked(const char *path, results_file *out);
void results_file_free(results_file *f);
/* Lookups returning NULL when absent. */
const char *results_file_attr(const results_file *f, const char *name);
const results_table_data *results_file_table(const results_file *f, const char *name);
const results_column *results_table_find_column(const results_table_data *t, const char *name);

#endif
