/* LoRA placement and rank (QLoRA Figure 2): a tiny pretrained model finetuned on Alpaca by full fp32
 * finetuning, LoRA on q/v, on all attention projections and on all linear layers (r 8, and r 2..32 for all
 * layers), and QLoRA NF4+DQ on all layers; held-out response NLL over seeds, trainable parameters, exact
 * training-state memory and wall time. The metric is held-out loss, not the paper's RougeL. */
#include <stdio.h>
#include <string.h>

#include "core/base/common.h"
#include "core/results/config.h"
#include "experiments/harness/finetune_grid.h"

static const config_key config_keys[] = {
    FINETUNE_GRID_CONFIG_KEYS,
    {"rank", CONFIG_INT, "8", "LoRA r of the placement comparison (qv, attention, all) and of QLoRA"},
    {"placements", CONFIG_STRING_ARRAY, "[\"qv\", \"attention\", \"all\"]", "LoRA target sets at rank r"},
    {"all_ranks", CONFIG_INT_ARRAY, "[2, 8, 32]", "extra ranks for LoRA on all linear layers"},
    {"full_finetune", CONFIG_BOOL, "true", "include full fp32 finetuning (the reference)"},
    {"qlora", CONFIG_BOOL, "true", "include QLoRA (NF4 + DQ base, all layers, rank r)"},
};
#define N_CONFIG_KEYS ((int)(sizeof config_keys / sizeof config_keys[0]))
#define MAX_CELLS FINETUNE_GRID_MAX_CELLS

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
    if (rank < 1 || rank > 4096)
        return qlab_fail(QLAB_ERR_ARG, "%s: key 'rank' must be from 1 to 4096",
                         config_key_origin(cfg, "rank"));
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
        if (lora_parse_targets(name, &targets) != QLAB_OK)
            return qlab_fail_context(QLAB_ERR_ARG, "%s: key 'placements'",
                                     config_key_origin(cfg, "placements"));
        if (!add_cell(cells, n, base, FINETUNE_LORA, targets, name, (int)rank))
            return qlab_fail(QLAB_ERR_ARG, "%s: more than %d configurations", path, MAX_CELLS);
    }
    for (int i = 0; i < config_array_length(cfg, "all_ranks"); i++) {
        int64_t r = config_int_at(cfg, "all_ranks", i);
        if (r < 1 || r > 4096)
            return qlab_fail(QLAB_ERR_ARG, "%s: key 'all_ranks' holds %lld (need 1 to 4096)",
                             config_key_origin(cfg, "all_ranks"), (long long)r);
        int duplicate = 0;
        for (int j = 0; j < *n; j++)
            if (cells[j].options.mode == FINETUNE_LORA && cells[j].options.lora.targets == LORA_TARGETS_ALL &&
                cells[j].options.lora.rank == r)
                duplicate = 1;
        if (!duplicate && !add_cell(cells, n, base, FINETUNE_LORA, LORA_TARGETS_ALL, "all", (int)r))
            return qlab_fail(QLAB_ERR_ARG, "%s: more than %d configurations", path, MAX_CELLS);
    }
    if (config_bool(cfg, "qlora") &&
        !add_cell(cells, n, base, FINETUNE_QLORA, LORA_TARGETS_ALL, "all", (int)rank))
        return qlab_fail(QLAB_ERR_ARG, "%s: more than %d configurations", path, MAX_CELLS);
    if (*n == 0) return qlab_fail(QLAB_ERR_ARG, "%s: the grid is empty", path);
    return QLAB_OK;
}

static const finetune_experiment experiment = {
    .program = "lora_placement",
    .reference = "full",
    .metric_note =
        "Held-out mean NLL of the response tokens (prompt and padding masked) on Alpaca records split off "
        "before training. The models are tiny TinyStories-style LLaMAs, so this stands in for the "
        "paper's RougeL / MMLU; fp32 stands in for the paper's 16-bit (BF16) baselines.",
    .summary_title = "Figure 2: LoRA placement and rank vs full finetuning (held-out response NLL)",
    .build_grid = build_grid,
};

int main(int argc, char **argv) {
    qlab_runtime_restart(argv);
    experiment_args args;
    int early = experiment_parse_args(&args, "lora_placement", argc, argv, usage);
    if (early >= 0) return early;
    config *cfg = NULL;
    qlab_status st = experiment_load_config(&args, &cfg, config_keys, N_CONFIG_KEYS);
    if (st == QLAB_OK) st = finetune_grid_run_experiment(&experiment, cfg, args.out_path, argc, argv);
    config_free(cfg);
    return st == QLAB_OK ? 0 : qlab_report_error("lora_placement");
}
