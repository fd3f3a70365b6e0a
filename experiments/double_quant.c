/* Double quantization accounting (QLoRA §3; ../shared/docs/PAPER.md §3): for every 4-bit data type,
 * block sizes 32..4096, with and without DQ, the bits per parameter actually stored beside the analytic
 * formula, and the quantization error it buys, on Gaussian, heavy-tailed Student-t and real (stories260K)
 * weights. One HDF5 results file; `qlab report` turns it into Markdown and plots/double_quant.png. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/model/checkpoint.h"
#include "core/base/common.h"
#include "core/results/config.h"
#include "core/model/model.h"
#include "core/base/progress.h"
#include "core/quant/quant.h"
#include "core/results/results.h"
#include "core/base/rng.h"

/* Not const: the default of "dtypes" is every type of the descriptor table, set at the start of main. */
static config_key config_keys[] = {
    {"seed", CONFIG_INT, "1234", "seed of the synthetic weights (Gaussian: seed, Student-t: seed+1)"},
    {"n_weights", CONFIG_INT, "4194304", "length of each synthetic weight tensor"},
    {
        "dtypes",
        CONFIG_STRING_ARRAY,
        NULL,
        "data types (default: all, as `qlab dtypes` lists them; types without an fp32 absmax run once, at "
        "their "
        "own block size, without DQ)",
    },
    {"blocksizes", CONFIG_INT_ARRAY, "[32, 64, 128, 256, 512, 1024, 2048, 4096]",
     "block sizes of the absmax types"},
    {"student_t_nu", CONFIG_DOUBLE, "3.0", "degrees of freedom of the heavy-tailed weights"},
    {"model_path", CONFIG_STRING, "\"../shared/data/models/stories260K.bin\"",
     "real model whose 7 projections per block are quantized (skipped when absent)"},
};
#define N_CONFIG_KEYS ((int)(sizeof config_keys / sizeof config_keys[0]))

/* One point of the grid. */
typedef struct {
    quant_dtype dtype;
    int blocksize, double_quant;
} grid_point;

/* A set of weight matrices quantized one by one, errors aggregated over all of them. */
typedef struct {
    const char *name, *title;
    int count;
    const float **matrices;
    int64_t *sizes;
    int64_t total;
} weight_set;

/* Measured storage and error of one grid point over a weight set. */
typedef struct {
    double bits_per_param, mse, sqnr_db, max_abs_err;
} measurement;

static qlab_status measure(const weight_set *ws, grid_point g, float *scratch, measurement *out) {
    double stored_bytes = 0, squared_error = 0, signal = 0, max_err = 0;
    for (int i = 0; i < ws->count; i++) {
        quant_tensor qt;
        qlab_status st =
            quant_tensor_quantize(&qt, ws->matrices[i], ws->sizes[i], g.dtype, g.blocksize, g.double_quant);
        if (st != QLAB_OK)
            return qlab_fail_context(st, "%s matrix %d, %s block %d%s", ws->name, i,
                                     quant_dtype_name(g.dtype), g.blocksize, g.double_quant ? " DQ" : "");
        st = quant_tensor_dequantize(&qt, scratch);
        if (st != QLAB_OK) {
            quant_tensor_free(&qt);
            return st;
        }
        quant_error_stats es;
        quant_error(ws->matrices[i], scratch, ws->sizes[i], &es);
        stored_bytes += (double)quant_tensor_bytes(&qt);
        squared_error += es.mse * (double)ws->sizes[i];
        for (int64_t j = 0; j < ws->sizes[i]; j++)
            signal += (double)ws->matrices[i][j] * ws->matrices[i][j];
        if (es.max_abs_err > max_err) max_err = es.max_abs_err;
        quant_tensor_free(&qt);
    }
    out->bits_per_param = 8.0 * stored_bytes / (double)ws->total;
    out->mse = squared_error / (double)ws->total;
    out->sqnr_db = squared_error > 0 ? 10.0 * log10(signal / squared_error) : INFINITY;
    out->max_abs_err = max_err;
    return QLAB_OK;
}

static qlab_status declare_error_table(results *r, results_table **t, const weight_set *ws,
                                       const char *note) {
    QLAB_TRY(results_table_begin(r, t, ws->name, ws->title));
    QLAB_TRY(results_table_column(*t, "dtype", RESULTS_STRING, NULL, "4-bit data type"));
    QLAB_TRY(results_table_column(*t, "blocksize", RESULTS_INT64, "weights", "first-level block size"));
    QLAB_TRY(results_table_column(*t, "double_quant", RESULTS_INT64, NULL,
                                  "1: constants double-quantized (8-bit, block 256)"));
    QLAB_TRY(results_table_column(*t, "bits_per_param", RESULTS_FLOAT64, "bits",
                                  "bytes actually stored x 8 / weights"));
    QLAB_TRY(
        results_table_column(*t, "bits_analytic", RESULTS_FLOAT64, "bits", "4 + constant bits / block size"));
    QLAB_TRY(results_table_column(*t, "mse", RESULTS_FLOAT64, NULL, "mean squared error"));
    QLAB_TRY(
        results_table_column(*t, "sqnr_db", RESULTS_FLOAT64, "dB", "10 log10(sum x^2 / sum (x - q(x))^2)"));
    QLAB_TRY(results_table_column(*t, "max_abs_err", RESULTS_FLOAT64, NULL, "largest |x - q(x)|"));
    return note ? results_table_note(*t, note) : QLAB_OK;
}

static qlab_status add_error_row(results_table *t, grid_point g, const measurement *m) {
    QLAB_TRY(results_set_string(t, "dtype", quant_dtype_name(g.dtype)));
    QLAB_TRY(results_set_int(t, "blocksize", g.blocksize));
    QLAB_TRY(results_set_int(t, "double_quant", g.double_quant));
    QLAB_TRY(results_set_double(t, "bits_per_param", m->bits_per_param));
    QLAB_TRY(results_set_double(t, "bits_analytic",
                                quant_bits_per_param_analytic(g.dtype, g.blocksize, g.double_quant)));
    QLAB_TRY(results_set_double(t, "mse", m->mse));
    QLAB_TRY(results_set_double(t, "sqnr_db", m->sqnr_db));
    QLAB_TRY(results_set_double(t, "max_abs_err", m->max_abs_err));
    return results_row_end(t);
}

static qlab_status paper_row(results_table *t, const char *quantity, double paper, double measured,
                             double analytic) {
    QLAB_TRY(results_set_string(t, "quantity", quantity));
    QLAB_TRY(results_set_double(t, "paper", paper));
    QLAB_TRY(results_set_double(t, "measured", measured));
    QLAB_TRY(results_set_double(t, "analytic", analytic));
    return results_row_end(t);
}

/* The paper's DQ numbers at block 64 beside NF4 measured on the Gaussian tensor. */
static qlab_status write_paper_table(results *r, const weight_set *gaussian, float *scratch) {
    measurement plain, dq;
    QLAB_TRY(measure(gaussian, (grid_point){QUANT_NF4, 64, 0}, scratch, &plain));
    QLAB_TRY(measure(gaussian, (grid_point){QUANT_NF4, 64, 1}, scratch, &dq));
    double a_plain = quant_bits_per_param_analytic(QUANT_NF4, 64, 0),
           a_dq = quant_bits_per_param_analytic(QUANT_NF4, 64, 1);
    /* 65e9 parameters, bits -> GB (1e9 bytes). */
    const double gb_per_bit_65b = 65e9 / 8.0 / 1e9;
    results_table *t;
    QLAB_TRY(results_table_begin(r, &t, "paper",
                                 "QLoRA §3 double quantization at block size 64: paper vs measured (NF4)"));
    QLAB_TRY(results_table_column(t, "quantity", RESULTS_STRING, NULL, NULL));
    QLAB_TRY(results_table_column(t, "paper", RESULTS_FLOAT64, NULL, "as stated in the paper"));
    QLAB_TRY(results_table_column(t, "measured", RESULTS_FLOAT64, NULL,
                                  "from the bytes qlab stores for the Gaussian tensor"));
    QLAB_TRY(results_table_column(t, "analytic", RESULTS_FLOAT64, NULL, "quant_bits_per_param_analytic"));
    QLAB_TRY(results_table_note(t,
                                "Measured includes the per-tensor fp32 DQ offset and any partial last block, "
                                "so it exceeds the analytic value by about 32 bits / tensor size."));
    QLAB_TRY(paper_row(t, "constants without DQ (bits/param)", 0.5, plain.bits_per_param - 4, a_plain - 4));
    QLAB_TRY(paper_row(t, "constants with DQ (bits/param)", 0.127, dq.bits_per_param - 4, a_dq - 4));
    QLAB_TRY(paper_row(t, "saving from DQ (bits/param)", 0.373, plain.bits_per_param - dq.bits_per_param,
                       a_plain - a_dq));
    QLAB_TRY(paper_row(t, "NF4 total (bits/param)", 4.5, plain.bits_per_param, a_plain));
    QLAB_TRY(paper_row(t, "NF4 + DQ total (bits/param)", 4.127, dq.bits_per_param, a_dq));
    QLAB_TRY(paper_row(t, "saving on a 65B model (GB)", 3.0,
                       (plain.bits_per_param - dq.bits_per_param) * gb_per_bit_65b,
                       (a_plain - a_dq) * gb_per_bit_65b));
    QLAB_TRY(paper_row(t, "NF4 SQNR cost of DQ (dB)", NAN, plain.sqnr_db - dq.sqnr_db, NAN));
    return results_table_end(t);
}

/* The grid from the config: absmax types at every block size with and without DQ; the fixed-format types
 * once at their own block size. */
static qlab_status build_grid(const config *cfg, grid_point **out, int *count) {
    int ntypes = config_array_length(cfg, "dtypes"), nbs = config_array_length(cfg, "blocksizes");
    grid_point *grid = qlab_calloc((size_t)(ntypes * (2 * nbs + 1) + 1), sizeof *grid);
    if (!grid) return QLAB_ERR_NOMEM;
    int n = 0;
    for (int i = 0; i < ntypes; i++) {
        quant_dtype dt;
        qlab_status st = quant_dtype_parse(config_string_at(cfg, "dtypes", i), &dt);
        if (st != QLAB_OK) {
            free(grid);
            return qlab_fail_context(st, "%s: key 'dtypes'", config_key_origin(cfg, "dtypes"));
        }
        if (!quant_dtype_has_fp32_absmax(dt)) {
            grid[n++] = (grid_point){dt, quant_default_blocksize(dt), 0};
            continue;
        }
        /* Rows of one (type, DQ) series stay contiguous so a plot can draw each series as one line. */
        for (int dq = 0; dq <= 1; dq++)
            for (int b = 0; b < nbs; b++) {
                int64_t bs = config_int_at(cfg, "blocksizes", b);
                st = bs < 1 || bs > (1 << 20)
                         ? qlab_fail(QLAB_ERR_ARG, "block size %lld out of range", (long long)bs)
                         : quant_check_blocksize(dt, (int)bs);
                if (st != QLAB_OK) {
                    free(grid);
                    return qlab_fail_context(st, "%s: key 'blocksizes'",
                                             config_key_origin(cfg, "blocksizes"));
                }
                grid[n++] = (grid_point){dt, (int)bs, dq};
            }
    }
    *out = grid;
    *count = n;
    return QLAB_OK;
}

static void usage(FILE *f) {
    fprintf(
        f,
        "Usage: double_quant [--config FILE.json] [--out RESULTS.h5] [--set key=value ...]\n\n"
        "QLoRA double-quantization accounting: stored bits/param and quantization error of every\n"
        "4-bit type over block sizes, with and without DQ. Defaults: --config experiments/double_quant.json\n"
        "--out results/double_quant.h5. Config keys:\n");
    config_print_keys(config_keys, N_CONFIG_KEYS, f);
}

/* The weight sets of the run: Gaussian and Student-t tensors, and the real model's projections when its
 * file is present. */
typedef struct {
    float *gaussian, *heavy;
    const float *gaussian_ptr, *heavy_ptr;
    int64_t n_weights, largest;
    model *m;
    const float *model_matrices[PROJ_COUNT * 64];
    int64_t model_sizes[PROJ_COUNT * 64];
    char gaussian_title[128], heavy_title[128], model_title[256];
    weight_set sets[3];
    int nsets;
} weight_sources;

static void sources_free(weight_sources *w) {
    qlab_free_aligned(w->gaussian);
    qlab_free_aligned(w->heavy);
    model_free(w->m);
}

/* Synthetic weights: independent streams so changing one distribution never moves the other. */
static qlab_status make_synthetic(weight_sources *w, int64_t n_weights, int64_t seed, double nu) {
    w->n_weights = w->largest = n_weights;
    w->gaussian = qlab_alloc_aligned(sizeof(float) * (size_t)n_weights);
    w->heavy = qlab_alloc_aligned(sizeof(float) * (size_t)n_weights);
    if (!w->gaussian || !w->heavy) return QLAB_ERR_NOMEM;
    rng_state rng;
    rng_seed(&rng, (uint64_t)seed);
    for (int64_t i = 0; i < n_weights; i++)
        w->gaussian[i] = (float)rng_normal(&rng);
    rng_seed(&rng, (uint64_t)seed + 1);
    for (int64_t i = 0; i < n_weights; i++)
        w->heavy[i] = (float)rng_student_t(&rng, nu);
    snprintf(w->gaussian_title, sizeof w->gaussian_title, "Gaussian weights N(0, 1), %lld values",
             (long long)n_weights);
    snprintf(w->heavy_title, sizeof w->heavy_title, "Heavy-tailed weights: Student-t (nu = %g), %lld values",
             nu, (long long)n_weights);
    w->gaussian_ptr = w->gaussian, w->heavy_ptr = w->heavy;
    w->sets[0] = (weight_set){"gaussian", w->gaussian_title, 1, &w->gaussian_ptr, &w->n_weights, n_weights};
    w->sets[1] = (weight_set){"student_t", w->heavy_title, 1, &w->heavy_ptr, &w->n_weights, n_weights};
    w->nsets = 2;
    return QLAB_OK;
}

/* The 7 projections of every block of the model at model_path as the third set; when the file is absent
 * the set is skipped with a note. */
static qlab_status add_model_set(weight_sources *w, const char *model_path, results *r) {
    FILE *probe = model_path ? fopen(model_path, "rb") : NULL;
    if (!probe) {
        char note[1200];
        snprintf(note, sizeof note, "%s: not found; the real-weight rows (stories260k) are skipped",
                 model_path ? model_path : "(none)");
        fprintf(stderr, "double_quant: %s\n", note);
        return results_note(r, "model_skipped", note);
    }
    fclose(probe);
    QLAB_TRY(checkpoint_load(model_path, &w->m));
    const model_config *mc = model_get_config(w->m);
    if (mc->n_layers > 64)
        return qlab_fail(QLAB_ERR_UNSUPPORTED, "%s: %d layers (this experiment handles up to 64)", model_path,
                         mc->n_layers);
    weight_set *ms = &w->sets[2];
    *ms = (weight_set){"stories260k", w->model_title, 0, w->model_matrices, w->model_sizes, 0};
    for (int l = 0; l < mc->n_layers; l++)
        for (int p = 0; p < PROJ_COUNT; p++) {
            linear_weight lw = model_get_linear(w->m, l, (model_proj)p);
            if (!lw.w)
                return qlab_fail(QLAB_ERR_FORMAT, "%s: layer %d %s has no fp32 weight", model_path, l,
                                 model_proj_name((model_proj)p));
            w->model_matrices[ms->count] = lw.w;
            w->model_sizes[ms->count] = (int64_t)lw.out_features * lw.in_features;
            if (w->model_sizes[ms->count] > w->largest) w->largest = w->model_sizes[ms->count];
            ms->total += w->model_sizes[ms->count++];
        }
    snprintf(w->model_title, sizeof w->model_title,
             "stories260K real weights: %d projection matrices (q, k, v, o, gate, up, down x %d layers), "
             "%lld weights",
             ms->count, mc->n_layers, (long long)ms->total);
    w->nsets = 3;
    return QLAB_OK;
}

/* One table per weight set (every grid point), then the paper comparison; one progress line. */
static qlab_status run_grid(results *r, const weight_sources *w, const grid_point *grid, int ngrid,
                            float *scratch) {
    progress prog;
    progress_begin(&prog, "double_quant", (int64_t)w->nsets * ngrid + 1);
    int64_t done = 0;
    for (int s = 0; s < w->nsets; s++) {
        results_table *t;
        const char *note =
            s == 2 ? "Each matrix is quantized on its own; bits and errors are totals over all of them. "
                     "Small matrices pay the per-tensor DQ overhead (one fp32 absmax per 256 blocks and "
                     "an fp32 offset) in full, so measured bits exceed the analytic value."
                   : NULL;
        QLAB_TRY(declare_error_table(r, &t, &w->sets[s], note));
        for (int g = 0; g < ngrid; g++) {
            measurement mm;
            QLAB_TRY(measure(&w->sets[s], grid[g], scratch, &mm));
            QLAB_TRY(add_error_row(t, grid[g], &mm));
            char extra[96];
            snprintf(extra, sizeof extra, "%s %s bs %d%s", w->sets[s].name, quant_dtype_name(grid[g].dtype),
                     grid[g].blocksize, grid[g].double_quant ? " DQ" : "");
            progress_update(&prog, ++done, extra);
        }
        QLAB_TRY(results_table_end(t));
    }
    QLAB_TRY(write_paper_table(r, &w->sets[0], scratch));
    progress_update(&prog, ++done, NULL);
    progress_end(&prog, NULL);
    return QLAB_OK;
}

static qlab_status check_settings(const config *cfg) {
    int64_t n_weights = config_int(cfg, "n_weights");
    double nu = config_double(cfg, "student_t_nu");
    if (n_weights < 1 || n_weights > ((int64_t)1 << 28))
        return qlab_fail(QLAB_ERR_ARG, "%s: key 'n_weights' must be from 1 to 2^28, got %lld",
                         config_key_origin(cfg, "n_weights"), (long long)n_weights);
    if (!(nu > 0))
        return qlab_fail(QLAB_ERR_ARG, "%s: key 'student_t_nu' must be positive, got %g",
                         config_key_origin(cfg, "student_t_nu"), nu);
    return QLAB_OK;
}

int main(int argc, char **argv) {
    qlab_runtime_restart(argv);
    if (config_key_set_default(config_keys, N_CONFIG_KEYS, "dtypes", quant_dtype_list_json()) != QLAB_OK)
        return qlab_report_error("double_quant");
    experiment_args args;
    int early = experiment_parse_args(&args, "double_quant", argc, argv, usage);
    if (early >= 0) return early;
    config *cfg = NULL;
    if (experiment_load_config(&args, &cfg, config_keys, N_CONFIG_KEYS) != QLAB_OK)
        return qlab_report_error("double_quant");
    int64_t seed = config_int(cfg, "seed");
    int ngrid = 0;
    grid_point *grid = NULL;
    results *r = NULL;
    float *scratch = NULL;
    weight_sources *w = qlab_calloc(1, sizeof *w);
    qlab_status st = w ? check_settings(cfg) : QLAB_ERR_NOMEM;
    if (st == QLAB_OK) st = build_grid(cfg, &grid, &ngrid);
    if (st == QLAB_OK) st = results_create(&r, args.out_path, "double_quant", cfg, argc, argv);
    if (st == QLAB_OK) results_require_rows(r);
    if (st == QLAB_OK) st = results_attr_int(r, "seed", seed);
    if (st == QLAB_OK) st = results_attr_string(r, "quant_kernel", quant_kernel_name());
    if (st == QLAB_OK)
        st = make_synthetic(w, config_int(cfg, "n_weights"), seed, config_double(cfg, "student_t_nu"));
    if (st == QLAB_OK) st = add_model_set(w, config_string(cfg, "model_path"), r);
    if (st == QLAB_OK && !(scratch = qlab_alloc_aligned(sizeof(float) * (size_t)w->largest)))
        st = QLAB_ERR_NOMEM;
    if (st == QLAB_OK) st = run_grid(r, w, grid, ngrid, scratch);
    if (st == QLAB_OK) {
        st = results_commit(r); /* frees r either way */
        r = NULL;
    }
    if (st == QLAB_OK)
        printf("double_quant: wrote %s (%d grid points x %d weight sets)\n", args.out_path, ngrid, w->nsets);
    else
        qlab_report_error("double_quant");
    results_abort(r);
    if (w) sources_free(w);
    free(w);
    qlab_free_aligned(scratch);
    free(grid);
    config_free(cfg);
    return st == QLAB_OK ? 0 : 1;
}
