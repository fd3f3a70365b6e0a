/* Results files in HDF5 (see results.h): the writer buffers each table in memory and writes it as one
 * dataset per column; the reader loads a whole file into plain C arrays for the report and the tests. */
#include "core/results/results.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <hdf5.h>

#include "core/base/tmpfiles.h"

#include "core/base/memacct.h"
#include "core/results/provenance.h"

#define RESULTS_NAME_MAX 64

typedef struct {
    char name[RESULTS_NAME_MAX];
    results_type type;
    char *unit, *description;
    double *f64;
    int64_t *i64;
    char **str;
    int set_in_row; /* the current row has a value for this column */
} writer_column;

struct results_table {
    results *owner;
    char name[RESULTS_NAME_MAX];
    char *title, *notes;
    int ncols;
    writer_column *columns;
    int64_t nrows, capacity;
    int ended;
    results_table *next;
};

struct results {
    char *path, *tmp_path;
    hid_t file;
    qlab_status first_error; /* sticky: commit refuses to publish a file after any failure */
    char first_message[512];
    results_table *tables;
    int require_rows; /* results_require_rows: an empty table fails the file */
};

/* ---------------------------------------------------------------- HDF5 error handling */

static herr_t innermost_error(unsigned n, const H5E_error2_t *err, void *data) {
    if (n == 0 && err->desc) snprintf(data, 256, "%s", err->desc);
    return 0;
}

/* Records "<what>: <HDF5's innermost message>" and returns QLAB_ERR_IO. */
static qlab_status fail_hdf5(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static qlab_status fail_hdf5(const char *fmt, ...) {
    char what[512], detail[256] = "";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, innermost_error, detail);
    H5Eclear2(H5E_DEFAULT);
    if (detail[0]) return qlab_fail(QLAB_ERR_IO, "%s (HDF5: %s)", what, detail);
    return qlab_fail(QLAB_ERR_IO, "%s", what);
}

static void hdf5_quiet(void) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

/* Remembers the first failure so results_commit refuses to publish. Returns st. */
static qlab_status note_error(results *r, qlab_status st) {
    if (st != QLAB_OK && r && r->first_error == QLAB_OK) {
        r->first_error = st;
        snprintf(r->first_message, sizeof r->first_message, "%s", qlab_last_error());
    }
    return st;
}

static qlab_status check_name(const char *kind, const char *name) {
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n >= RESULTS_NAME_MAX)
        return qlab_fail(QLAB_ERR_ARG, "%s name '%s' must have 1 to %d characters", kind, name ? name : "",
                         RESULTS_NAME_MAX - 1);
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
              c == '-'))
            return qlab_fail(QLAB_ERR_ARG, "%s name '%s' may only hold letters, digits, '_' and '-'", kind,
                             name);
    }
    return QLAB_OK;
}

/* ---------------------------------------------------------------- attribute writing */

static hid_t string_type(void) {
    hid_t t = H5Tcopy(H5T_C_S1);
    if (t < 0) return t;
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    return t;
}

static qlab_status write_attr(hid_t loc, const char *where, const char *key, hid_t memtype,
                              const void *value) {
    if (H5Aexists(loc, key) > 0 && H5Adelete(loc, key) < 0)
        return fail_hdf5("%s: cannot replace attribute '%s'", where, key);
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t attr = space >= 0 ? H5Acreate2(loc, key, memtype, space, H5P_DEFAULT, H5P_DEFAULT) : -1;
    herr_t w = attr >= 0 ? H5Awrite(attr, memtype, value) : -1;
    qlab_status st = w < 0 ? fail_hdf5("%s: cannot write attribute '%s'", where, key) : QLAB_OK;
    if (attr >= 0) H5Aclose(attr);
    if (space >= 0) H5Sclose(space);
    return st;
}

static qlab_status write_string_attr(hid_t loc, const char *where, const char *key, const char *value) {
    hid_t t = string_type();
    if (t < 0) return fail_hdf5("%s: cannot make a string type", where);
    const char *v = value ? value : "";
    qlab_status st = write_attr(loc, where, key, t, &v);
    H5Tclose(t);
    return st;
}

/* Opens /name, creating it (with link creation order tracked, so tables keep the order they were
 * written in) when absent. */
static hid_t open_or_create_group(hid_t file, const char *name) {
    if (H5Lexists(file, name, H5P_DEFAULT) > 0) return H5Gopen2(file, name, H5P_DEFAULT);
    hid_t gcpl = H5Pcreate(H5P_GROUP_CREATE);
    if (gcpl < 0) return -1;
    H5Pset_link_creation_order(gcpl, H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED);
    hid_t g = H5Gcreate2(file, name, H5P_DEFAULT, gcpl, H5P_DEFAULT);
    H5Pclose(gcpl);
    return g;
}

/* ---------------------------------------------------------------- writer */

qlab_status results_create(results **out, const char *path, const char *experiment, const config *cfg,
                           int argc, char *const *argv) {
    *out = NULL;
    hdf5_quiet();
    results *r = qlab_calloc(1, sizeof *r);
    if (!r) return QLAB_ERR_NOMEM;
    r->file = -1;
    size_t tmp_len = strlen(path) + 32;
    r->path = strdup(path);
    r->tmp_path = malloc(tmp_len);
    if (!r->path || !r->tmp_path) {
        results_abort(r);
        return qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", path);
    }
    snprintf(r->tmp_path, tmp_len, "%s.tmp.%ld", path, (long)getpid());
    qlab_tmpfile_sweep_stale(path); /* temporary files of runs that died before their rename */
    qlab_tmpfile_register(r->tmp_path);
    r->file = H5Fcreate(r->tmp_path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (r->file < 0) {
        qlab_status st = fail_hdf5("%s: cannot create", r->tmp_path);
        results_abort(r);
        return st;
    }
    provenance prov;
    qlab_status st = provenance_collect(&prov, experiment, cfg ? config_path(cfg) : "",
                                        cfg ? config_text(cfg) : "", argc, argv);
    for (int i = 0; st == QLAB_OK && i < prov.count; i++)
        st = write_string_attr(r->file, r->tmp_path, prov.entries[i].key, prov.entries[i].value);
    if (st == QLAB_OK && cfg)
        st = write_string_attr(r->file, r->tmp_path, "config_effective", config_effective_json(cfg));
    if (st == QLAB_OK) provenance_free(&prov);
    if (st != QLAB_OK) {
        results_abort(r);
        return st;
    }
    *out = r;
    return QLAB_OK;
}

void results_require_rows(results *r) {
    r->require_rows = 1;
}

const char *results_tmp_path(const results *r) {
    return r->tmp_path;
}

qlab_status results_attr_string(results *r, const char *key, const char *value) {
    return note_error(r, write_string_attr(r->file, r->tmp_path, key, value));
}

qlab_status results_set_compute(results *r, const char *compute, const char *bf16_path) {
    QLAB_TRY(results_attr_string(r, "compute", compute));
    return results_attr_string(r, "bf16_path", bf16_path);
}

qlab_status results_attr_int(results *r, const char *key, int64_t value) {
    return note_error(r, write_attr(r->file, r->tmp_path, key, H5T_NATIVE_INT64, &value));
}

qlab_status results_note(results *r, const char *name, const char *text) {
    qlab_status st = check_name("note", name);
    if (st != QLAB_OK) return note_error(r, st);
    hid_t g = open_or_create_group(r->file, "notes");
    if (g < 0) return note_error(r, fail_hdf5("%s: cannot create /notes", r->tmp_path));
    st = write_string_attr(g, r->tmp_path, name, text);
    H5Gclose(g);
    return note_error(r, st);
}

qlab_status results_table_begin(results *r, results_table **out, const char *name, const char *title) {
    *out = NULL;
    qlab_status st = check_name("table", name);
    if (st != QLAB_OK) return note_error(r, st);
    for (results_table *t = r->tables; t; t = t->next)
        if (!strcmp(t->name, name))
            return note_error(r, qlab_fail(QLAB_ERR_ARG, "%s: table '%s' begun twice", r->path, name));
    results_table *t = qlab_calloc(1, sizeof *t);
    if (!t) return note_error(r, QLAB_ERR_NOMEM);
    t->owner = r;
    snprintf(t->name, sizeof t->name, "%s", name);
    t->title = strdup(title ? title : name);
    t->notes = strdup("");
    if (!t->title || !t->notes) {
        free(t->title);
        free(t->notes);
        free(t);
        return note_error(r, qlab_fail(QLAB_ERR_NOMEM, "out of memory"));
    }
    t->next = r->tables;
    r->tables = t;
    *out = t;
    return QLAB_OK;
}

qlab_status results_table_column(results_table *t, const char *name, results_type type, const char *unit,
                                 const char *description) {
    results *r = t->owner;
    qlab_status st = check_name("column", name);
    if (st != QLAB_OK) return note_error(r, st);
    if (t->nrows > 0)
        return note_error(r, qlab_fail(QLAB_ERR_ARG, "table '%s': column '%s' declared after rows were added",
                                       t->name, name));
    for (int i = 0; i < t->ncols; i++)
        if (!strcmp(t->columns[i].name, name))
            return note_error(
                r, qlab_fail(QLAB_ERR_ARG, "table '%s': column '%s' declared twice", t->name, name));
    writer_column *cols = realloc(t->columns, (size_t)(t->ncols + 1) * sizeof *cols);
    if (!cols) return note_error(r, qlab_fail(QLAB_ERR_NOMEM, "out of memory"));
    t->columns = cols;
    writer_column *c = &cols[t->ncols];
    memset(c, 0, sizeof *c);
    snprintf(c->name, sizeof c->name, "%s", name);
    c->type = type;
    c->unit = strdup(unit ? unit : "");
    c->description = strdup(description ? description : "");
    t->ncols++;
    if (!c->unit || !c->description) return note_error(r, qlab_fail(QLAB_ERR_NOMEM, "out of memory"));
    return QLAB_OK;
}

qlab_status results_table_note(results_table *t, const char *text) {
    size_t old = strlen(t->notes), add = strlen(text);
    char *n = realloc(t->notes, old + add + 2);
    if (!n) return note_error(t->owner, qlab_fail(QLAB_ERR_NOMEM, "out of memory"));
    if (old) n[old++] = '\n';
    memcpy(n + old, text, add + 1);
    t->notes = n;
    return QLAB_OK;
}

/* The column named `name` with room for the current row, checked against the expected type. */
static qlab_status cell(results_table *t, const char *name, results_type type, writer_column **out) {
    static const char *const type_names[] = {"float64", "int64", "string"};
    writer_column *c = NULL;
    for (int i = 0; i < t->ncols; i++)
        if (!strcmp(t->columns[i].name, name)) c = &t->columns[i];
    if (!c) return note_error(t->owner, qlab_fail(QLAB_ERR_ARG, "table '%s': no column '%s'", t->name, name));
    if (c->type != type)
        return note_error(t->owner, qlab_fail(QLAB_ERR_ARG, "table '%s': column '%s' holds %s, not %s",
                                              t->name, name, type_names[c->type], type_names[type]));
    if (t->ended) return note_error(t->owner, qlab_fail(QLAB_ERR_ARG, "table '%s': already ended", t->name));
    if (t->nrows == t->capacity) {
        int64_t cap = t->capacity ? 2 * t->capacity : 64;
        for (int i = 0; i < t->ncols; i++) {
            writer_column *k = &t->columns[i];
            void *p = k->type == RESULTS_FLOAT64 ? realloc(k->f64, (size_t)cap * sizeof(double))
                      : k->type == RESULTS_INT64 ? realloc(k->i64, (size_t)cap * sizeof(int64_t))
                                                 : realloc(k->str, (size_t)cap * sizeof(char *));
            if (!p) return note_error(t->owner, qlab_fail(QLAB_ERR_NOMEM, "out of memory"));
            if (k->type == RESULTS_FLOAT64)
                k->f64 = p;
            else if (k->type == RESULTS_INT64)
                k->i64 = p;
            else {
                k->str = p;
                for (int64_t j = t->capacity; j < cap; j++)
                    k->str[j] = NULL;
            }
        }
        t->capacity = cap;
    }
    *out = c;
    return QLAB_OK;
}

qlab_status results_set_double(results_table *t, const char *column, double value) {
    writer_column *c;
    QLAB_TRY(cell(t, column, RESULTS_FLOAT64, &c));
    c->f64[t->nrows] = value;
    c->set_in_row = 1;
    return QLAB_OK;
}

qlab_status results_set_int(results_table *t, const char *column, int64_t value) {
    writer_column *c;
    QLAB_TRY(cell(t, column, RESULTS_INT64, &c));
    c->i64[t->nrows] = value;
    c->set_in_row = 1;
    return QLAB_OK;
}

qlab_status results_set_string(results_table *t, const char *column, const char *value) {
    writer_column *c;
    QLAB_TRY(cell(t, column, RESULTS_STRING, &c));
    char *s = strdup(value ? value : "");
    if (!s) return note_error(t->owner, qlab_fail(QLAB_ERR_NOMEM, "out of memory"));
    free(c->str[t->nrows]);
    c->str[t->nrows] = s;
    c->set_in_row = 1;
    return QLAB_OK;
}

qlab_status results_row_end(results_table *t) {
    for (int i = 0; i < t->ncols; i++)
        if (!t->columns[i].set_in_row)
            return note_error(t->owner,
                              qlab_fail(QLAB_ERR_ARG, "table '%s' row %" PRId64 ": column '%s' not set",
                                        t->name, t->nrows, t->columns[i].name));
    for (int i = 0; i < t->ncols; i++)
        t->columns[i].set_in_row = 0;
    t->nrows++;
    return QLAB_OK;
}

static qlab_status write_column(hid_t group, const char *where, const writer_column *c, int64_t nrows) {
    hsize_t dims[1] = {(hsize_t)nrows};
    hid_t space = H5Screate_simple(1, dims, NULL);
    hid_t memtype = c->type == RESULTS_FLOAT64 ? H5Tcopy(H5T_NATIVE_DOUBLE)
                    : c->type == RESULTS_INT64 ? H5Tcopy(H5T_NATIVE_INT64)
                                               : string_type();
    hid_t filetype = c->type == RESULTS_FLOAT64 ? H5Tcopy(H5T_IEEE_F64LE)
                     : c->type == RESULTS_INT64 ? H5Tcopy(H5T_STD_I64LE)
                                                : string_type();
    hid_t ds = (space >= 0 && memtype >= 0 && filetype >= 0)
                   ? H5Dcreate2(group, c->name, filetype, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT)
                   : -1;
    const void *buf = c->type == RESULTS_FLOAT64 ? (const void *)c->f64
                      : c->type == RESULTS_INT64 ? (const void *)c->i64
                                                 : (const void *)c->str;
    qlab_status st = QLAB_OK;
    if (ds < 0 || (nrows > 0 && H5Dwrite(ds, memtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0))
        st = fail_hdf5("%s: cannot write column '%s'", where, c->name);
    if (st == QLAB_OK && c->unit[0]) st = write_string_attr(ds, where, "unit", c->unit);
    if (st == QLAB_OK && c->description[0]) st = write_string_attr(ds, where, "description", c->description);
    if (ds >= 0) H5Dclose(ds);
    if (filetype >= 0) H5Tclose(filetype);
    if (memtype >= 0) H5Tclose(memtype);
    if (space >= 0) H5Sclose(space);
    return st;
}

qlab_status results_table_end(results_table *t) {
    results *r = t->owner;
    if (t->ended) return QLAB_OK;
    t->ended = 1;
    for (int i = 0; i < t->ncols; i++)
        if (t->columns[i].set_in_row)
            return note_error(
                r,
                qlab_fail(QLAB_ERR_ARG, "table '%s': last row not finished with results_row_end", t->name));
    if (r->require_rows && t->nrows == 0)
        return note_error(r, qlab_fail(QLAB_ERR_ARG,
                                       "%s: table '%s' has no rows (nothing was measured: check the config's "
                                       "lists); the file was not written",
                                       r->path, t->name));
    char where[600];
    snprintf(where, sizeof where, "%s: table '%s'", r->tmp_path, t->name);
    hid_t tables = open_or_create_group(r->file, "tables");
    if (tables < 0) return note_error(r, fail_hdf5("%s: cannot create /tables", r->tmp_path));
    hid_t gcpl = H5Pcreate(H5P_GROUP_CREATE);
    H5Pset_link_creation_order(gcpl, H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED);
    hid_t g = H5Gcreate2(tables, t->name, H5P_DEFAULT, gcpl, H5P_DEFAULT);
    H5Pclose(gcpl);
    qlab_status st = g < 0 ? fail_hdf5("%s: cannot create group", where) : QLAB_OK;
    if (st == QLAB_OK) st = write_string_attr(g, where, "title", t->title);
    if (st == QLAB_OK && t->notes[0]) st = write_string_attr(g, where, "notes", t->notes);
    for (int i = 0; st == QLAB_OK && i < t->ncols; i++)
        st = write_column(g, where, &t->columns[i], t->nrows);
    if (g >= 0) H5Gclose(g);
    H5Gclose(tables);
    return note_error(r, st);
}

qlab_status results_write_array(results *r, const char *name, const double *data, int ndim,
                                const int64_t *dims, const char *description) {
    qlab_status st = check_name("array", name);
    if (st != QLAB_OK) return note_error(r, st);
    if (ndim < 1 || ndim > 8)
        return note_error(r,
                          qlab_fail(QLAB_ERR_ARG, "array '%s': %d dimensions (1 to 8 allowed)", name, ndim));
    hsize_t hd[8];
    for (int i = 0; i < ndim; i++) {
        if (dims[i] < 0)
            return note_error(r, qlab_fail(QLAB_ERR_ARG, "array '%s': negative dimension", name));
        hd[i] = (hsize_t)dims[i];
    }
    hid_t g = open_or_create_group(r->file, "arrays");
    if (g < 0) return note_error(r, fail_hdf5("%s: cannot create /arrays", r->tmp_path));
    hid_t space = H5Screate_simple(ndim, hd, NULL);
    hid_t ds =
        space >= 0 ? H5Dcreate2(g, name, H5T_IEEE_F64LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT) : -1;
    if (ds < 0 || H5Dwrite(ds, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0)
        st = fail_hdf5("%s: cannot write array '%s'", r->tmp_path, name);
    if (st == QLAB_OK && description && description[0])
        st = write_string_attr(ds, r->tmp_path, "description", description);
    if (ds >= 0) H5Dclose(ds);
    if (space >= 0) H5Sclose(space);
    H5Gclose(g);
    return note_error(r, st);
}

static void free_tables(results *r) {
    results_table *t = r->tables;
    while (t) {
        results_table *next = t->next;
        for (int i = 0; i < t->ncols; i++) {
            writer_column *c = &t->columns[i];
            if (c->str)
                for (int64_t j = 0; j < t->capacity; j++)
                    free(c->str[j]);
            free(c->str);
            free(c->f64);
            free(c->i64);
            free(c->unit);
            free(c->description);
        }
        free(t->columns);
        free(t->title);
        free(t->notes);
        free(t);
        t = next;
    }
    r->tables = NULL;
}

static void results_destroy(results *r) {
    qlab_tmpfile_unregister(r->tmp_path);
    free_tables(r);
    free(r->path);
    free(r->tmp_path);
    free(r);
}

void results_abort(results *r) {
    if (!r) return;
    if (r->file >= 0) H5Fclose(r->file);
    r->file = -1;
    if (r->tmp_path) unlink(r->tmp_path);
    results_destroy(r);
}

qlab_status results_commit(results *r) {
    /* Tables still open are written in the order they were begun. */
    results_table *order[256];
    int n = 0;
    for (results_table *t = r->tables; t && n < 256; t = t->next)
        order[n++] = t;
    for (int i = n - 1; i >= 0; i--)
        if (!order[i]->ended) results_table_end(order[i]);
    char now[32];
    provenance_utc_now(now, sizeof now);
    results_attr_string(r, "end_time_utc", now);
    /* What the memory accounting saw by the end of the run (core/base/memacct.h): the peak of every
     * category and of the total, beside the budget recorded at the start. */
    char peaks[768];
    results_attr_string(r, "memory_peak", memacct_format_process_peaks(peaks, sizeof peaks));
    results_attr_int(r, "memory_peak_total_bytes", (int64_t)memacct_process_peak_total());
    for (int c = 0; c < MEMACCT_COUNT; c++) {
        char key[64];
        snprintf(key, sizeof key, "memory_peak_%s_bytes", memacct_category_key((memacct_category)c));
        results_attr_int(r, key, (int64_t)memacct_process_peak((memacct_category)c));
    }
    if (r->first_error != QLAB_OK) {
        qlab_status st = r->first_error;
        char msg[512];
        snprintf(msg, sizeof msg, "%s", r->first_message);
        results_abort(r);
        return qlab_fail(st, "%s", msg);
    }
    qlab_status st = QLAB_OK;
    if (H5Fclose(r->file) < 0) st = fail_hdf5("%s: cannot close", r->tmp_path);
    r->file = -1;
    if (st == QLAB_OK) { /* make the bytes durable before the name points at them */
        int fd = open(r->tmp_path, O_RDONLY);
        if (fd >= 0) {
            fsync(fd);
            close(fd);
        }
        if (rename(r->tmp_path, r->path) != 0)
            st = qlab_fail(QLAB_ERR_IO, "%s: cannot rename into place: %s", r->path, strerror(errno));
    }
    if (st != QLAB_OK) unlink(r->tmp_path);
    results_destroy(r);
    return st;
}

/* ---------------------------------------------------------------- reader */

typedef struct {
    results_attribute *items;
    int count, capacity;
    const char *path;
    qlab_status st;
} attr_list;

/* Reads a scalar (or 1-element) attribute as text: strings as they are, numbers printed. */
/* While results_read runs: the most elements a column or array of this file can hold. Even deflate, at its
 * best ratio of about 1032:1, cannot store more than 1032 bytes per byte of file, and every element takes at
 * least one byte, so a dataset claiming more rows than that comes from a damaged header and is refused
 * before its buffer is allocated (a column could otherwise claim 2^40 rows). Per thread. */
static _Thread_local hsize_t read_max_elements = (hsize_t)1 << 40;

static char *attr_as_text(hid_t attr) {
    /* Every attribute qlab writes holds one value, and each read below fills one value: an attribute whose
     * dataspace claims more (a damaged file) is refused, as a successful read would overrun the buffer. */
    hid_t attr_space = H5Aget_space(attr);
    hssize_t npoints = attr_space >= 0 ? H5Sget_simple_extent_npoints(attr_space) : -1;
    if (attr_space >= 0) H5Sclose(attr_space);
    if (npoints != 1) return NULL;
    hid_t type = H5Aget_type(attr);
    if (type < 0) return NULL;
    H5T_class_t cls = H5Tget_class(type);
    char *out = NULL, buf[64];
    if (cls == H5T_STRING) {
        if (H5Tis_variable_str(type) > 0) {
            hid_t mem = string_type();
            H5Tset_cset(mem, H5Tget_cset(type));
            char *v = NULL;
            if (H5Aread(attr, mem, &v) >= 0) {
                out = strdup(v ? v : "");
                hid_t space = H5Aget_space(attr);
                H5Dvlen_reclaim(mem, space, H5P_DEFAULT, &v);
                H5Sclose(space);
            }
            H5Tclose(mem);
        } else {
            size_t size = H5Tget_size(type);
            char *v = size < (1u << 26) ? calloc(size + 1, 1) : NULL;
            if (v && H5Aread(attr, type, v) >= 0)
                out = v;
            else
                free(v);
        }
    } else if (cls == H5T_INTEGER) {
        long long v;
        if (H5Aread(attr, H5T_NATIVE_LLONG, &v) >= 0) {
            snprintf(buf, sizeof buf, "%lld", v);
            out = strdup(buf);
        }
    } else if (cls == H5T_FLOAT) {
        double v;
        if (H5Aread(attr, H5T_NATIVE_DOUBLE, &v) >= 0) {
            snprintf(buf, sizeof buf, "%.17g", v);
            out = strdup(buf);
        }
    } else {
        out = strdup("(attribute of an unsupported type)");
    }
    H5Tclose(type);
    return out;
}

static herr_t collect_attr(hid_t loc, const char *name, const H5A_info_t *info, void *data) {
    (void)info;
    attr_list *l = data;
    if (l->count == l->capacity) {
        int cap = l->capacity ? 2 * l->capacity : 32;
        results_attribute *p = realloc(l->items, (size_t)cap * sizeof *p);
        if (!p) {
            l->st = qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", l->path);
            return -1;
        }
        l->items = p;
        l->capacity = cap;
    }
    hid_t attr = H5Aopen(loc, name, H5P_DEFAULT);
    char *value = attr >= 0 ? attr_as_text(attr) : NULL;
    if (attr >= 0) H5Aclose(attr);
    char *key = strdup(name);
    if (!value || !key) {
        free(value);
        free(key);
        l->st = fail_hdf5("%s: cannot read attribute '%s'", l->path, name);
        return -1;
    }
    l->items[l->count].name = key;
    l->items[l->count].value = value;
    l->count++;
    return 0;
}

static qlab_status read_attrs(hid_t loc, const char *path, results_attribute **items, int *count) {
    attr_list l = {NULL, 0, 0, path, QLAB_OK};
    hsize_t idx = 0;
    herr_t rc = H5Aiterate2(loc, H5_INDEX_NAME, H5_ITER_INC, &idx, collect_attr, &l);
    *items = l.items;
    *count = l.count;
    if (l.st != QLAB_OK) return l.st;
    if (rc < 0) return fail_hdf5("%s: cannot list attributes", path);
    return QLAB_OK;
}

/* The value of a string attribute of loc, or "" when absent. */
static char *optional_attr(hid_t loc, const char *name) {
    if (H5Aexists(loc, name) <= 0) return strdup("");
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    char *v = a >= 0 ? attr_as_text(a) : NULL;
    if (a >= 0) H5Aclose(a);
    return v ? v : strdup("");
}

/* Names of the links in group g, in creation order when the file tracks it, else by name. */
static qlab_status list_links(hid_t g, const char *path, char ***names, int *count) {
    *names = NULL;
    *count = 0;
    H5G_info_t info;
    if (H5Gget_info(g, &info) < 0) return fail_hdf5("%s: cannot list a group", path);
    if (info.nlinks > 100000)
        return qlab_fail(QLAB_ERR_FORMAT, "%s: group with %llu entries", path,
                         (unsigned long long)info.nlinks);
    char **list = qlab_calloc(info.nlinks ? info.nlinks : 1, sizeof *list);
    if (!list) return QLAB_ERR_NOMEM;
    H5_index_t index = H5_INDEX_CRT_ORDER;
    for (hsize_t i = 0; i < info.nlinks; i++) {
        char name[256];
        ssize_t len = H5Lget_name_by_idx(g, ".", index, H5_ITER_INC, i, name, sizeof name, H5P_DEFAULT);
        if (len < 0 && index == H5_INDEX_CRT_ORDER && i == 0) {
            H5Eclear2(H5E_DEFAULT);
            index = H5_INDEX_NAME;
            len = H5Lget_name_by_idx(g, ".", index, H5_ITER_INC, i, name, sizeof name, H5P_DEFAULT);
        }
        if (len < 0 || (size_t)len >= sizeof name || !(list[i] = strdup(name))) {
            for (hsize_t j = 0; j < i; j++)
                free(list[j]);
            free(list);
            return fail_hdf5("%s: cannot read a link name", path);
        }
    }
    *names = list;
    *count = (int)info.nlinks;
    return QLAB_OK;
}

static void free_names(char **names, int n) {
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

static qlab_status read_column(hid_t g, const char *where, const char *name, results_column *c,
                               int64_t *nrows) {
    hid_t ds = H5Dopen2(g, name, H5P_DEFAULT);
    if (ds < 0) return fail_hdf5("%s: cannot open column '%s'", where, name);
    hid_t type = H5Dget_type(ds), space = H5Dget_space(ds);
    qlab_status st = QLAB_OK;
    hsize_t dims[1] = {0};
    if (type < 0 || space < 0 || H5Sget_simple_extent_ndims(space) != 1) {
        st = qlab_fail(QLAB_ERR_FORMAT, "%s: column '%s' is not a 1-D dataset", where, name);
        goto done;
    }
    H5Sget_simple_extent_dims(space, dims, NULL);
    if (dims[0] > ((hsize_t)1 << 40) || (hsize_t)dims[0] > read_max_elements) {
        st = qlab_fail(QLAB_ERR_FORMAT, "%s: column '%s' has an implausible %llu rows", where, name,
                       (unsigned long long)dims[0]);
        goto done;
    }
    int64_t n = (int64_t)dims[0];
    if (*nrows >= 0 && n != *nrows) {
        st = qlab_fail(QLAB_ERR_FORMAT, "%s: column '%s' has %" PRId64 " rows, the others %" PRId64, where,
                       name, n, *nrows);
        goto done;
    }
    *nrows = n;
    c->name = strdup(name);
    c->unit = optional_attr(ds, "unit");
    c->description = optional_attr(ds, "description");
    H5T_class_t cls = H5Tget_class(type);
    herr_t rc = 0;
    if (cls == H5T_FLOAT) {
        c->type = RESULTS_FLOAT64;
        c->f64 = qlab_calloc((size_t)(n ? n : 1), sizeof(double));
        if (c->f64 && n) rc = H5Dread(ds, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, c->f64);
    } else if (cls == H5T_INTEGER) {
        c->type = RESULTS_INT64;
        c->i64 = qlab_calloc((size_t)(n ? n : 1), sizeof(int64_t));
        if (c->i64 && n) rc = H5Dread(ds, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, c->i64);
    } else if (cls == H5T_STRING) {
        c->type = RESULTS_STRING;
        c->str = qlab_calloc((size_t)(n ? n : 1), sizeof(char *));
        if (c->str && n) {
            if (H5Tis_variable_str(type) > 0) {
                hid_t mem = string_type();
                H5Tset_cset(mem, H5Tget_cset(type));
                char **raw = qlab_calloc((size_t)n, sizeof *raw);
                rc = raw ? H5Dread(ds, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, raw) : -1;
                if (rc >= 0) {
                    for (int64_t i = 0; i < n; i++)
                        c->str[i] = strdup(raw[i] ? raw[i] : "");
                    H5Dvlen_reclaim(mem, space, H5P_DEFAULT, raw);
                }
                free(raw);
                H5Tclose(mem);
            } else {
                size_t size = H5Tget_size(type);
                char *raw = size < 4096 ? qlab_calloc((size_t)n, size) : NULL;
                rc = raw ? H5Dread(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, raw) : -1;
                if (rc >= 0)
                    for (int64_t i = 0; i < n; i++)
                        c->str[i] = strndup(raw + (size_t)i * size, size);
                free(raw);
            }
            for (int64_t i = 0; rc >= 0 && i < n; i++)
                if (!c->str[i]) rc = -1;
        }
    } else {
        st = qlab_fail(QLAB_ERR_FORMAT, "%s: column '%s' is neither numbers nor strings", where, name);
        goto done;
    }
    if (!c->name || !c->unit || !c->description || (!c->f64 && !c->i64 && !c->str) || rc < 0)
        st = fail_hdf5("%s: cannot read column '%s'", where, name);
done:
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
    H5Dclose(ds);
    return st;
}

static qlab_status read_table(hid_t tables, const char *path, const char *name, results_table_data *t) {
    char where[600];
    snprintf(where, sizeof where, "%s: table '%s'", path, name);
    t->name = strdup(name);
    hid_t g = H5Gopen2(tables, name, H5P_DEFAULT);
    if (g < 0) return fail_hdf5("%s: cannot open", where);
    t->title = optional_attr(g, "title");
    t->notes = optional_attr(g, "notes");
    char **cols = NULL;
    int ncols = 0;
    qlab_status st = list_links(g, where, &cols, &ncols);
    if (st == QLAB_OK && !(t->columns = qlab_calloc((size_t)(ncols ? ncols : 1), sizeof *t->columns)))
        st = QLAB_ERR_NOMEM;
    t->nrows = -1;
    for (int i = 0; st == QLAB_OK && i < ncols; i++) {
        st = read_column(g, where, cols[i], &t->columns[i], &t->nrows);
        t->ncols = i + 1;
    }
    if (t->nrows < 0) t->nrows = 0;
    if (st == QLAB_OK && (!t->name || !t->title || !t->notes))
        st = qlab_fail(QLAB_ERR_NOMEM, "out of memory");
    free_names(cols, ncols);
    H5Gclose(g);
    return st;
}

static qlab_status read_array(hid_t arrays, const char *path, const char *name, results_array *a) {
    a->name = strdup(name);
    hid_t ds = H5Dopen2(arrays, name, H5P_DEFAULT);
    if (ds < 0) return fail_hdf5("%s: cannot open array '%s'", path, name);
    hid_t space = H5Dget_space(ds);
    int ndim = space >= 0 ? H5Sget_simple_extent_ndims(space) : -1;
    qlab_status st = QLAB_OK;
    if (ndim < 0 || ndim > 8) {
        st = qlab_fail(QLAB_ERR_FORMAT, "%s: array '%s' has %d dimensions (at most 8 supported)", path, name,
                       ndim);
    } else {
        hsize_t dims[8];
        H5Sget_simple_extent_dims(space, dims, NULL);
        a->ndim = ndim;
        a->count = 1;
        for (int i = 0; i < ndim; i++) {
            a->dims[i] = (int64_t)dims[i];
            if (dims[i] && ((hsize_t)a->count > ((hsize_t)1 << 36) / dims[i] ||
                            (hsize_t)a->count * dims[i] > read_max_elements)) {
                st = qlab_fail(QLAB_ERR_FORMAT, "%s: array '%s' is implausibly large", path, name);
                break;
            }
            a->count *= (int64_t)dims[i];
        }
        if (st == QLAB_OK) {
            a->data = qlab_calloc((size_t)(a->count ? a->count : 1), sizeof(double));
            if (!a->data)
                st = QLAB_ERR_NOMEM;
            else if (a->count && H5Dread(ds, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, a->data) < 0)
                st = fail_hdf5("%s: cannot read array '%s'", path, name);
        }
    }
    a->description = optional_attr(ds, "description");
    if (space >= 0) H5Sclose(space);
    H5Dclose(ds);
    return st;
}

qlab_status results_read(const char *path, results_file *out) {
    memset(out, 0, sizeof *out);
    hdf5_quiet();
    if (access(path, R_OK) != 0) return qlab_fail(QLAB_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
        return qlab_fail(QLAB_ERR_IO, "%s: not a regular file", path);
    read_max_elements = ((hsize_t)sb.st_size + 1024) * 1032;
    if (H5Fis_hdf5(path) <= 0) {
        H5Eclear2(H5E_DEFAULT);
        return qlab_fail(QLAB_ERR_FORMAT, "%s: not an HDF5 file", path);
    }
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (file < 0) return fail_hdf5("%s: cannot open", path);
    qlab_status st = read_attrs(file, path, &out->attrs, &out->nattrs);
    if (st == QLAB_OK && H5Lexists(file, "notes", H5P_DEFAULT) > 0) {
        hid_t g = H5Gopen2(file, "notes", H5P_DEFAULT);
        st = g < 0 ? fail_hdf5("%s: cannot open /notes", path)
                   : read_attrs(g, path, &out->notes, &out->nnotes);
        if (g >= 0) H5Gclose(g);
    }
    if (st == QLAB_OK && H5Lexists(file, "tables", H5P_DEFAULT) > 0) {
        hid_t g = H5Gopen2(file, "tables", H5P_DEFAULT);
        char **names = NULL;
        int n = 0;
        st = g < 0 ? fail_hdf5("%s: cannot open /tables", path) : list_links(g, path, &names, &n);
        if (st == QLAB_OK && !(out->tables = qlab_calloc((size_t)(n ? n : 1), sizeof *out->tables)))
            st = QLAB_ERR_NOMEM;
        for (int i = 0; st == QLAB_OK && i < n; i++) {
            st = read_table(g, path, names[i], &out->tables[i]);
            out->ntables = i + 1;
        }
        free_names(names, n);
        if (g >= 0) H5Gclose(g);
    }
    if (st == QLAB_OK && H5Lexists(file, "arrays", H5P_DEFAULT) > 0) {
        hid_t g = H5Gopen2(file, "arrays", H5P_DEFAULT);
        char **names = NULL;
        int n = 0;
        st = g < 0 ? fail_hdf5("%s: cannot open /arrays", path) : list_links(g, path, &names, &n);
        if (st == QLAB_OK && !(out->arrays = qlab_calloc((size_t)(n ? n : 1), sizeof *out->arrays)))
            st = QLAB_ERR_NOMEM;
        for (int i = 0; st == QLAB_OK && i < n; i++) {
            st = read_array(g, path, names[i], &out->arrays[i]);
            out->narrays = i + 1;
        }
        free_names(names, n);
        if (g >= 0) H5Gclose(g);
    }
    H5Fclose(file);
    if (st != QLAB_OK) results_file_free(out);
    return st;
}

static void free_attrs(results_attribute *a, int n) {
    for (int i = 0; i < n; i++) {
        free(a[i].name);
        free(a[i].value);
    }
    free(a);
}

void results_file_free(results_file *f) {
    free_attrs(f->attrs, f->nattrs);
    free_attrs(f->notes, f->nnotes);
    for (int i = 0; i < f->ntables; i++) {
        results_table_data *t = &f->tables[i];
        for (int j = 0; j < t->ncols; j++) {
            results_column *c = &t->columns[j];
            if (c->str)
                for (int64_t k = 0; k < t->nrows; k++)
                    free(c->str[k]);
            free(c->str);
            free(c->f64);
            free(c->i64);
            free(c->name);
            free(c->unit);
            free(c->description);
        }
        free(t->columns);
        free(t->name);
        free(t->title);
        free(t->notes);
    }
    free(f->tables);
    for (int i = 0; i < f->narrays; i++) {
        free(f->arrays[i].name);
        free(f->arrays[i].description);
        free(f->arrays[i].data);
    }
    free(f->arrays);
    memset(f, 0, sizeof *f);
}

const char *results_file_attr(const results_file *f, const char *name) {
    for (int i = 0; i < f->nattrs; i++)
        if (!strcmp(f->attrs[i].name, name)) return f->attrs[i].value;
    return NULL;
}

const results_table_data *results_file_table(const results_file *f, const char *name) {
    for (int i = 0; i < f->ntables; i++)
        if (!strcmp(f->tables[i].name, name)) return &f->tables[i];
    return NULL;
}

const results_column *results_table_find_column(const results_table_data *t, const char *name) {
    for (int i = 0; i < t->ncols; i++)
        if (!strcmp(t->columns[i].name, name)) return &t->columns[i];
    return NULL;
}

/* Debian's HDF5 1.10 follows corrupt global-heap addresses of variable-length strings (found by
 * tests/fuzz/fuzz_results): a SEGV in H5HG_read under H5Aread for one file, an endless loop in
 * H5HG__protect for another, and a corrupt string length makes H5T__conv_vlen allocate up to 4 GB per
 * string, which no check on our side can prevent. The read is first tried in a child process with a time
 * limit and a limit on its address space (what it has plus 1 GB and 64 bytes per byte of the file): if that
 * child dies (a signal, a sanitizer's exit code) or runs out of time, the file is reported as corrupt
 * instead of crashing or hanging the caller; if it fails, its error is the caller's, and the caller never
 * repeats a read that failed (or needed more memory than that) in the child. */
static void limit_address_space(off_t file_bytes) {
    long pages = 0, page = sysconf(_SC_PAGESIZE);
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%ld", &pages) != 1) pages = 0;
        fclose(f);
    }
    if (pages <= 0 || page <= 0) return;
    struct rlimit rl;
    rl.rlim_cur = rl.rlim_max = (rlim_t)pages * (rlim_t)page + ((rlim_t)1 << 30) + (rlim_t)file_bytes * 64;
    setrlimit(RLIMIT_AS, &rl);
}

qlab_status results_read_checked(const char *path, results_file *out) {
    memset(out, 0, sizeof *out);
    const char *env = getenv("QLAB_RESULTS_READ_TIMEOUT");
    int limit = env && atoi(env) > 0 ? atoi(env) : RESULTS_READ_TIMEOUT_DEFAULT;
    struct stat sb;
    off_t file_bytes = stat(path, &sb) == 0 ? sb.st_size : 0;
    int fds[2];
    if (pipe(fds) != 0) return results_read(path, out);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        int fd = open("/dev/null", O_WRONLY);
        if (fd >= 0) dup2(fd, 2), dup2(fd, 1);
        signal(SIGALRM, SIG_DFL);
        alarm((unsigned)limit);
        limit_address_space(file_bytes);
        results_file f;
        qlab_status st = results_read(path, &f);
        if (st != QLAB_OK) { /* the status, then the message, for the parent */
            const char *msg = qlab_last_error();
            if (write(fds[1], &st, sizeof st) != (ssize_t)sizeof st || write(fds[1], msg, strlen(msg)) < 0)
                _exit(4);
        }
        _exit(st == QLAB_OK ? 0 : 3); /* _exit: the parent owns every resource */
    }
    close(fds[1]);
    if (pid < 0) {
        close(fds[0]);
        return results_read(path, out); /* no child: the plain read */
    }
    char msg[2048];
    size_t len = 0;
    ssize_t n;
    while (len < sizeof msg - 1 &&
           ((n = read(fds[0], msg + len, sizeof msg - 1 - len)) > 0 || (n < 0 && errno == EINTR)))
        len += n > 0 ? (size_t)n : 0;
    msg[len] = 0;
    close(fds[0]);
    {
        int status = 0;
        pid_t got;
        while ((got = waitpid(pid, &status, 0)) < 0 && errno == EINTR) {
        }
        if (got == pid && WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM)
            return qlab_fail(QLAB_ERR_FORMAT,
                             "%s: corrupt HDF5 file (reading it did not finish in %d s: the HDF5 library "
                             "loops on some damaged files)",
                             path, limit);
        if (got == pid && !(WIFEXITED(status) && (WEXITSTATUS(status) == 0 || WEXITSTATUS(status) == 3)))
            return qlab_fail(QLAB_ERR_FORMAT, "%s: corrupt HDF5 file (the HDF5 library crashed reading it)",
                             path);
        if (got == pid && WEXITSTATUS(status) == 3 && len > sizeof(qlab_status)) {
            qlab_status st;
            memcpy(&st, msg, sizeof st);
            return qlab_fail(st != QLAB_OK ? st : QLAB_ERR_FORMAT, "%s", msg + sizeof st);
        }
    }
    return results_read(path, out);
}
