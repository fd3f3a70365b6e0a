/* LoRA placement and rank (QLoRA Figure 2): a tiny pretrained model finetuned on Alpaca by full fp32
 * finetuning, LoRA on q/v, on all attention projections and on all linear layers (r 8, and r 2..32 for all
 * layers), and QLoRA NF4+DQ on all layers; held-out response NLL over seeds, trainable parameters, exact
 * training-state memory and wall time. The metric is held-out loss, not the paper's RougeL. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "config.h"
#include "finetune_grid.h"
#include "progress.h"
#include "results.h"

static const config_key config_keys[] = {
    FINETUNE_GRID_CONFIG_KEYS,
    {"rank", CONFIG_INT, "8", "LoRA r of the placement comparison (qv, attention, all) and of QLoRA"},
    {"placements", CONFIG_STRING_ARRAY, "[\"qv\", \"attention\", \"all\"]", "LoRA target sets at rank r"},
    {"all_ranks", CONFIG_INT_ARRAY, "[2, 8, 32]", "extra ranks for LoRA on all linear layers"},
    {"full_finetune", CONFIG_BOOL, "true", "include full fp32 finetuning (the reference)"},
    {"qlora", CONFIG_BOOL, "true", "include QLoRA (NF4 + DQ base, all layers, rank r)"},
};
#define N_CONFIG_KEYS ((int)(sizeof config_keys / sizeof config_keys[0]))
#define MAX_CELLS 32

static void usage(FILE *f) {
    fprintf(f, "Usage: lora_placement [--config FILE.json] [--out RESULTS.h5] [--set key=value ...]\n\n"
               "QLoRA Figure 2 on a tiny model: where LoRA goes (q/v, attention, all linear layers) and its\n"
               "rank, against full fp32 finetuning, measured by held-out response NLL on Alpaca. Defaults:\n"
               "--config experiments/lora_placement.json --out results/lora_placement.h5. Config keys:\n");
    config_print_keys(config_keys, N_CONFIG_KEYS, f);
}

/* Appends a LoRA / QLoRA cell; returns 0 when the grid is full. */
static int add_cell(finetune_cell *cells, int *n, const finetune_options *base, finetune_mode mode,
                    unsigned targets, const char *targets_name, int rank) {
    if (*n >= MAX_CELLS) return 0;
    finetune_cell *c = &cells[(*n)++];
    memset(c, 0, sizeof *c);
    c->options = *base;
    c->options.mode = mode;
    c->options.lora.targets = targets;
    c->options.lora.rank = rank;
    if (mode == FINETUNE_QLORA) {
        c->options.base_dtype = QUANT_NF4;
        c->options.double_quant = 1;
        snprintf(c->name, sizeof c->name, "qlora_nf4dq_%s_r%d", targets_name, rank);
        snprintf(c->label, sizeof c->label, "QLoRA NF4+DQ %s r=%d", targets_name, rank);
    } else {
        snprintf(c->name, sizeof c->name, "lora_%s_r%d", targets_name, rank);
        snprintf(c->label, sizeof c->label, "LoRA %s r=%d", targets_name, rank);
    }
    return 1;
}

static qlab_status build_grid(const config *cfg, const finetune_options *base, finetune_cell *cells, int *n) {
    const char *path = config_path(cfg);
    int64_t rank = config_int(cfg, "rank");
    if (rank < 1 || rank > 4096) return qlab_fail(QLAB_ERR_ARG, "%s: key 'rank' must be from 1 to 4096", path);
    *n = 0;
    if (config_bool(cfg, "full_finetune")) {
        finetune_cell *c = &cells[(*n)++];
        memset(c, 0, sizeof *c);
        c->options = *base;
        c->options.mode = FINETUNE_FULL;
        c->options.max_lr = config_double(cfg, "lr_full");
        snprintf(c->name, sizeof c->name, "full");
        snprintf(c->label, sizeof c->label, "full finetune fp32");
    }
    for (int i = 0; i < config_array_length(cfg, "placements"); i++) {
        const char *name = config_string_at(cfg, "placements", i);
        unsigned targets;
        if (lora_parse_targets(name, &targets) != QLAB_OK) return qlab_fail_context(QLAB_ERR_ARG, "%s: key 'placements'", path);
        if (!add_cell(cells, n, base, FINETUNE_LORA, targets, name, (int)rank))
            return qlab_fail(QLAB_ERR_ARG, "%s: more than %d configurations", path, MAX_CELLS);
    }
    for (int i = 0; i < config_array_length(cfg, "all_ranks"); i++) {
        int64_t r = config_int_at(cfg, "all_ranks", i);
        if (r < 1 || r > 4096) return qlab_fail(QLAB_ERR_ARG, "%s: key 'all_ranks' holds %lld (need 1 to 4096)", path, (long long)r);
        int duplicate = 0;
        for (int j = 0; j < *n; j++)
            if (cells[j].options.mode == FINETUNE_LORA && cells[j].options.lora.targets == LORA_TARGETS_ALL &&
                cells[j].options.lora.rank == r)
                duplicate = 1;
        if (!duplicate && !add_cell(cells, n, base, FINETUNE_LORA, LORA_TARGETS_ALL, "all", (int)r))
            return qlab_fail(QLAB_ERR_ARG, "%s: more than %d configurations", path, MAX_CELLS);
    }
    if (config_bool(cfg, "qlora") && !add_cell(cells, n, base, FINETUNE_QLORA, LORA_TARGETS_ALL, "all", (int)rank))
        return qlab_fail(QLAB_ERR_ARG, "%s: more than %d configurations", path, MAX_CELLS);
    if (*n == 0) return qlab_fail(QLAB_ERR_ARG, "%s: the grid is empty", path);
    return QLAB_OK;
}

int main(int argc, char **argv) {
    qlab_openmp_prefer_passive(argv);
    experiment_args args;
    int early = experiment_parse_args(&args, "lora_placement", argc, argv, usage);
    if (early >= 0) return early;
    const char *out_path = args.out_path;
    config *cfg = NULL;
    if (experiment_load_config(&args, &cfg, config_keys, N_CONFIG_KEYS) != QLAB_OK)
        return qlab_report_error("lora_placement");

    int rc = 1, n_cells = 0, n_seeds = 0, n_done = 0;
    int64_t *seeds = NULL;
    finetune_cell cells[MAX_CELLS];
    finetune_cell_result res[MAX_CELLS];
    memset(res, 0, sizeof res);
    finetune_task task;
    memset(&task, 0, sizeof task);
    results *r = NULL;
    finetune_options base;
    if (finetune_grid_options(cfg, &base) != QLAB_OK || build_grid(cfg, &base, cells, &n_cells) != QLAB_OK ||
        finetune_grid_seeds(cfg, &seeds, &n_seeds) != QLAB_OK)
        goto done;
    if (finetune_grid_load_task(cfg, &task) != QLAB_OK) goto done;
    if (results_create(&r, out_path, "lora_placement", cfg, argc, argv) != QLAB_OK) goto done;
    if (results_attr_int(r, "seed", seeds[0]) != QLAB_OK || results_attr_string(r, "model", task.model_path) != QLAB_OK ||
        results_attr_string(r, "tokenizer", task.tokenizer_path) != QLAB_OK)
        goto done;
    fprintf(stderr, "lora_placement: %s, %lld training / %lld held-out rows of %d tokens, %d configurations x %d seeds\n",
            task.model_name, (long long)task.train.n_rows, (long long)task.heldout.n_rows, task.train.row_len, n_cells,
            n_seeds);

    progress prog;
    progress_begin(&prog, "lora_placement", (int64_t)n_cells * n_seeds * base.steps);
    int64_t steps_done = 0;
    for (int c = 0; c < n_cells; c++, n_done++)
        if (finetune_run_cell(&task, &cells[c], seeds, n_seeds, &prog, &steps_done, &res[c]) != QLAB_OK) goto done;
    progress_end(&prog, NULL);

    char note[512];
    snprintf(note, sizeof note, "AdamW moments: %s", res[0].first.state_note);
    if (results_note(r, "optimizer_state", note) != QLAB_OK) goto done;
    if (results_note(r, "metric",
                     "Held-out mean NLL of the response tokens (prompt and padding masked) on Alpaca records split off "
                     "before training. The models are tiny TinyStories-style LLaMAs, so this stands in for the "
                     "paper's RougeL / MMLU; fp32 stands in for the paper's 16-bit (BF16) baselines.") != QLAB_OK)
        goto done;
    if (finetune_write_tables(r, &task, cells, res, n_cells, seeds, n_seeds, "full",
                              "Figure 2: LoRA placement and rank vs full finetuning (held-out response NLL)") != QLAB_OK)
        goto done;
    if (results_commit(r) != QLAB_OK) {
        r = NULL;
        goto done;
    }
    r = NULL;
    printf("lora_placement: wrote %s\n", out_path);
    for (int c = 0; c < n_cells; c++) {
        double s = 0;
        for (int k = 0; k < n_seeds; k++) s += res[c].final_nll[k];
        printf("  %-24s held-out NLL %.4f (mean of %d seeds; base %.4f)\n", cells[c].name, s / n_seeds, n_seeds,
               res[c].initial_nll[0]);
    }
    rc = 0;
done:
    if (rc != 0) qlab_report_error("lora_placement");
    results_abort(r);
    for (int c = 0; c < n_done; c++) finetune_cell_result_free(&res[c]);
    finetune_task_free(&task);
    free(seeds);
    config_free(cfg);
    return rc;
}
