/* What an experiment comparing quantized models with their fp32 selves (nf4_vs_fp4) needs around
 * eval/compare.h: the grid read from its config (the models of the embedded zoo and/or listed checkpoints,
 * the benchmarks whose text is present, the data type x double-quantization variants), and the tables
 * written from the results: every run, the means per data type beside a paper's table, the series of a
 * figure over model size, and one compact table per model. Absent models and benchmarks are skipped with
 * a note in the results file. */
#ifndef QLAB_EXPERIMENTS_HARNESS_COMPARE_GRID_H
#define QLAB_EXPERIMENTS_HARNESS_COMPARE_GRID_H

#include <stdio.h>

#include "core/base/common.h"
#include "core/results/config.h"
#include "core/results/results.h"
#include "eval/compare.h"

/* The config keys the grid reads; the experiment declares them in its own key table:
 *   zoo (string: folder of the cached family, "" = none), models (object: {name: {path, tokenizer}}),
 *   benchmarks (object: {name: {text, protocol, ctx, stride, max_tokens}}), dtypes (string array),
 *   blocksize (int), double_quant (int array of 0 / 1). */
typedef struct {
    compare_model *models;
    int n_models;
    compare_benchmark *benchmarks; /* only those with a text present */
    int n_benchmarks, n_benchmarks_listed;
    compare_variant *variants;
    int n_variants;
    char **strings; /* owned: every name and path above */
    int n_strings, cap_strings;
} compare_grid;

/* Reads the grid from cfg; notes every skipped model or benchmark in r (and on stderr, prefixed with
 * `program`). Fails when no benchmark text or no model is present. */
qlab_status compare_grid_load(compare_grid *g, const config *cfg, results *r, const char *program);
void compare_grid_free(compare_grid *g);
/* The keys of each 'models' and 'benchmarks' entry, for --help. */
void compare_grid_print_entry_keys(FILE *f);

/* "runs": one row per evaluation with every metric. */
qlab_status compare_grid_write_runs(results *r, const compare_grid *g, const compare_results *res);

/* A paper's mean perplexity of one data type over its models. */
typedef struct {
    const char *dtype;
    int double_quant;
    double ppl;
} compare_paper_row;
#define COMPARE_MAX_PAPER_ROWS 32
typedef struct {
    const char *name, *title; /* of the table */
    const compare_paper_row *paper;
    int n_paper;              /* at most COMPARE_MAX_PAPER_ROWS */
    const char *const *notes; /* NULL-terminated, one table note each */
    const char *heading;      /* printed above each benchmark's summary on stdout */
} compare_means_table;
/* Per benchmark and variant: the mean over models of perplexity, KL and bits per parameter, its rank, and
 * the paper's value and rank where it has one (only models evaluated on every variant count). */
qlab_status compare_grid_write_means(results *r, const compare_grid *g, const compare_results *res,
                                     const compare_means_table *spec);

/* Rows of one (benchmark, variant) series contiguous and ordered by model size, so a plot draws each
 * data type as one line across the family. */
qlab_status compare_grid_write_series(results *r, const compare_grid *g, const compare_results *res,
                                      const char *name, const char *title);

/* "model_<name>" per model: every benchmark and variant. */
qlab_status compare_grid_write_model_tables(results *r, const compare_grid *g, const compare_results *res);

#endif
