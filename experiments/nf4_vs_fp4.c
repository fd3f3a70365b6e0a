/* 4-bit data types on perplexity benchmarks (QLoRA Table 2 and Figure 3; ../shared/docs/PAPER.md): every
 * model of a family (the embedded zoo by default, or real checkpoints) is quantized to every 4-bit data
 * type, with and without double quantization, and evaluated against its own fp32 reference on each text
 * benchmark: perplexity with a confidence interval, KL divergence from fp32, top-1 agreement, and the
 * total bits the model is stored in. One HDF5 file; `qlab report` makes the Markdown and the figure. */
#include <stdio.h>

#include "core/base/common.h"
#include "core/quant/quant.h"
#include "core/results/config.h"
#include "core/results/results.h"
#include "eval/compare.h"
#include "experiments/harness/experiment_compute.h"
#include "experiments/harness/compare_grid.h"

/* Not const: the default of "dtypes" is every type of the descriptor table, set at the start of main. */
static config_key config_keys[] = {
    {"zoo", CONFIG_STRING, "\"models/zoo\"",
     "folder of the cached embedded family (`make zoo`); \"\" = none"},
    {"models", CONFIG_OBJECT, "{}",
     "more models: {name: {\"path\": checkpoint (llama2.c .bin, GGUF or HF folder), \"tokenizer\": file}}; "
     "absent files are skipped with a note"},
    {"benchmarks", CONFIG_OBJECT, NULL,
     "{name: {\"text\": [candidate paths, first present wins; \"zoo-heldout\" = the zoo's held-out text], "
     "\"protocol\": \"nonoverlap\"|\"sliding\", \"ctx\", \"stride\", \"max_tokens\"}}"},
    {
        "dtypes",
        CONFIG_STRING_ARRAY,
        NULL,
        "4-bit data types (default: all, as `qlab dtypes` lists them; types without an fp32 absmax run at "
        "their own block size, without DQ)",
    },
    {"blocksize", CONFIG_INT, "64", "block size of the absmax data types"},
    {"double_quant", CONFIG_INT_ARRAY, "[0, 1]", "0: fp32 block constants, 1: double-quantized constants"},
    {"reference_budget_mb", CONFIG_INT, "1024",
     "MiB of fp32 reference logits kept at once (scored tokens x vocabulary x 4 bytes per benchmark); "
     "benchmarks beyond it run the fp32 model beside each variant (same numbers, about twice the time)"},
    {"seed", CONFIG_INT, "1234", "recorded for provenance (quantization and evaluation are deterministic)"},
    EXPERIMENT_COMPUTE_KEY,
};
#define N_CONFIG_KEYS ((int)(sizeof config_keys / sizeof config_keys[0]))

/* The paper's Table 2: mean Pile Common Crawl perplexity over 125M-13B OPT, BLOOM, LLaMA and Pythia
 * models, block size 64. Its "FP4 (E2M1)" row is bitsandbytes' FP4 (our "fp4"). */
static const compare_paper_row paper_table2[] = {
    {"int4", 0, 34.34},     /* Int4 */
    {"fp4", 0, 31.07},      /* Float4 (E2M1) */
    {"fp4_e3m0", 0, 29.48}, /* Float4 (E3M0) */
    {"nf4", 1, 27.41},      /* NFloat4 + DQ */
};
static const char *const table2_notes[] = {
    "The paper's numbers are mean Pile Common Crawl perplexities of OPT, BLOOM, LLaMA and Pythia models "
    "(125M to 13B parameters); ours are means over much smaller models on other text, so only the ranks "
    "are comparable, not the absolute values.",
    "The paper's 'Float4 (E2M1)' row is bitsandbytes' FP4 (our fp4, values up to 12 with its own "
    "bias); our fp4_e2m1 is the OCP E2M1 value set (up to 6). The paper's Int4, FP4 and FP4 (E3M0) "
    "rows are compared with our rows without DQ, its NFloat4 + DQ with nf4+dq.",
    NULL};
static const compare_means_table table2 = {
    .name = "table2",
    .title =
        "Mean perplexity per data type over the models (QLoRA Table 2 style), beside the paper's Table 2",
    .paper = paper_table2,
    .n_paper = (int)(sizeof paper_table2 / sizeof paper_table2[0]),
    .notes = table2_notes,
    .heading = "paper Table 2: mean Pile CC ppl of 125M-13B models; compare ranks only",
};

static void usage(FILE *f) {
    fprintf(f,
            "Usage: nf4_vs_fp4 [--config FILE.json] [--out RESULTS.h5] [--set key=value ...]\n\n"
            "QLoRA Table 2 / Figure 3: perplexity, KL from fp32 and total bits of every model quantized to\n"
            "every 4-bit data type (with and without DQ) on each benchmark. Defaults: --config\n"
            "experiments/nf4_vs_fp4.json --out results/nf4_vs_fp4.h5. Config keys:\n");
    config_print_keys(config_keys, N_CONFIG_KEYS, f);
    compare_grid_print_entry_keys(f);
}

static qlab_status write_tables(results *r, const compare_grid *g, const compare_results *res) {
    QLAB_TRY(compare_grid_write_runs(r, g, res));
    QLAB_TRY(compare_grid_write_means(r, g, res, &table2));
    QLAB_TRY(compare_grid_write_series(r, g, res, "figure3",
                                       "Perplexity and KL from fp32 against total model bits, one series per "
                                       "data type across the models (QLoRA Figure 3 style)"));
    return compare_grid_write_model_tables(r, g, res);
}

int main(int argc, char **argv) {
    qlab_runtime_restart(argv);
    if (config_key_set_default(config_keys, N_CONFIG_KEYS, "dtypes", quant_dtype_list_json()) != QLAB_OK)
        return qlab_report_error("nf4_vs_fp4");
    experiment_args args;
    int early = experiment_parse_args(&args, "nf4_vs_fp4", argc, argv, usage);
    if (early >= 0) return early;
    config *cfg = NULL;
    if (experiment_load_config(&args, &cfg, config_keys, N_CONFIG_KEYS) != QLAB_OK)
        return qlab_report_error("nf4_vs_fp4");
    results *r = NULL;
    compare_grid grid = {0};
    compare_results res = {0};
    int64_t budget_mb = config_int(cfg, "reference_budget_mb");
    if (budget_mb < 1 || budget_mb > (int64_t)1 << 30) {
        fprintf(stderr, "nf4_vs_fp4: %s: key 'reference_budget_mb' must be 1 .. 2^30, got %lld\n",
                config_key_origin(cfg, "reference_budget_mb"), (long long)budget_mb);
        config_free(cfg);
        return 1;
    }
    compare_options opt = {.label = "nf4_vs_fp4", .reference_budget = (size_t)budget_mb << 20};
    qlab_status st = experiment_config_compute(cfg, &opt.compute);
    if (st == QLAB_OK) st = results_create(&r, args.out_path, "nf4_vs_fp4", cfg, argc, argv);
    if (st == QLAB_OK) results_require_rows(r);
    if (st == QLAB_OK) st = experiment_results_compute(r, opt.compute);
    if (st == QLAB_OK) st = results_attr_int(r, "seed", config_int(cfg, "seed"));
    if (st == QLAB_OK) st = results_attr_string(r, "quant_kernel", quant_kernel_name());
    if (st == QLAB_OK) st = results_attr_string(r, "zoo_dir", config_string(cfg, "zoo"));
    if (st == QLAB_OK) st = compare_grid_load(&grid, cfg, r, "nf4_vs_fp4");
    if (st == QLAB_OK)
        st = compare_run(grid.models, grid.n_models, grid.variants, grid.n_variants, grid.benchmarks,
                         grid.n_benchmarks, &opt, &res);
    if (st == QLAB_OK) st = write_tables(r, &grid, &res);
    if (st == QLAB_OK) {
        st = results_commit(r); /* frees r either way */
        r = NULL;
    }
    if (st == QLAB_OK)
        printf("nf4_vs_fp4: wrote %s (%d models x %d data types x %d benchmarks, %d rows)\n", args.out_path,
               grid.n_models, grid.n_variants + 1, grid.n_benchmarks, res.n_rows);
    else
        qlab_report_error("nf4_vs_fp4");
    results_abort(r);
    compare_results_free(&res);
    compare_grid_free(&grid);
    config_free(cfg);
    return st == QLAB_OK ? 0 : 1;
}
