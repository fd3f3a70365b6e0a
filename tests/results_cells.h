/* Reading single cells of a results table in the experiment tests: a missing table, a missing column, a
 * column of another type or a row out of range gives NAN (or -1 for integers), which every check that reads
 * a cell then fails on, instead of a crash. */
#ifndef QLAB_TESTS_RESULTS_CELLS_H
#define QLAB_TESTS_RESULTS_CELLS_H

#include <math.h>
#include <stdint.h>

#include "core/results/results.h"

static inline double table_f64(const results_table_data *t, const char *column, int64_t row) {
    const results_column *c = t ? results_table_find_column(t, column) : NULL;
    return c && c->type == RESULTS_FLOAT64 && row >= 0 && row < t->nrows ? c->f64[row] : NAN;
}

static inline int64_t table_i64(const results_table_data *t, const char *column, int64_t row) {
    const results_column *c = t ? results_table_find_column(t, column) : NULL;
    return c && c->type == RESULTS_INT64 && row >= 0 && row < t->nrows ? c->i64[row] : -1;
}

#endif
