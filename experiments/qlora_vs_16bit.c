/* QLoRA vs 16-bit finetuning (QLoRA Tables 3-4): the same tiny pretrained model, data, budget and seeds,
 * finetuned fully in fp32, with LoRA on a frozen fp32 base (the paper's 16-bit LoRA; fp32 stands in for
 * BF16), and with QLoRA on frozen 4-bit bases (NF4, NF4+DQ, FP4, Int4, ...). Held-out response NLL on
 * Alpaca with its spread over seeds and the paired difference to 16-bit LoRA; the metric is held-out loss,
 * not the paper's RougeL / MMLU. */
#include <stdio.h>
#include <string.h>

#include "core/base/common.h"
#include "core/results/config.h"
#include "experiments/harness/finetune_grid.h"
#include "core/quant/quant.h"

static const config_key config_keys[] = {
    FINETUNE_GRID_CONFIG_KEYS,
    {"rank", CONFIG_INT, "8", "LoRA r of every LoRA / QLoRA run"},
    {"targets", CONFIG_STRING, "\"all\"", "LoRA targets (all = every linear layer, as QLoRA)"},
    /* the paper's QLoRA bases: a deliberate subset of the data types (dtype-subset) */
    {"bases", CONFIG_STRING_ARRAY, "[\"nf4\", \"nf4+dq\", \"fp4\", \"int4\"]",
     "4-bit bases for QLoRA: a data type, \"+dq\" for double quantization"},
    {"full_finetune", CONFIG_BOOL, "true", "include full fp32 finetuning"},
};
#define N_CONFIG_KEYS ((int)(sizeof config_keys / sizeof config_keys[0]))
#define MAX_CELLS FINETUNE_GRID_MAX_CELLS

static void usage(FILE *f) {
    fprintf(f, "Usage: qlora_vs_16bit [--config FILE.json] [--out RESULTS.h5] [--set key=value ...]\n\n"
               "QLoRA Tables 3-4 on a tiny model: full fp32 finetuning, LoRA on an fp32 base and QLoRA on\n"
               "4-bit bases, same data, budget and seeds, by held-out response NLL on Alpaca. Defaults:\n"
               "--config experiments/qlora_vs_16bit.json --out results/qlora_vs_16bit.h5. Config keys:\n");
    config_print_keys(config_keys, N_CONFIG_KEYS, f);
}

static qlab_status build_grid(const config *cfg, const finetune_options *base, finetune_cell *cells, int *n) {
    const char *path = config_path(cfg);
    int64_t rank = config_int(cfg, "rank");
    if (rank < 1 || rank > 4096)
        return qlab_fail(QLAB_ERR_ARG, "%s: key 'rank' must be from 1 to 4096",
                         config_key_origin(cfg, "rank"));
    unsigned targets;
    if (lora_parse_targets(config_string(cfg, "targets"), &targets) != QLAB_OK)
        return qlab_fail_context(QLAB_ERR_ARG, "%s: key 'targets'", config_key_origin(cfg, "targets"));
    int nb = config_array_length(cfg, "bases");
    if (nb + 2 > MAX_CELLS) return qlab_fail(QLAB_ERR_ARG, "%s: more than %d bases", path, MAX_CELLS - 2);
    *n = 0;
    finetune_cell *c;
    if (config_bool(cfg, "full_finetune")) {
        c = &cells[(*n)++];
        memset(c, 0, sizeof *c);
        c->options = *base;
        c->options.mode = FINETUNE_FULL;
        c->options.max_lr = config_double(cfg, "lr_full");
        snprintf(c->name, sizeof c->name, "full_fp32");
        snprintf(c->label, sizeof c->label, "full finetune fp32");
    }
    c = &cells[(*n)++];
    memset(c, 0, sizeof *c);
    c->options = *base;
    c->options.mode = FINETUNE_LORA;
    c->options.lora.targets = targets;
    c->options.lora.rank = (int)rank;
    snprintf(c->name, sizeof c->name, "lora_fp32");
    snprintf(c->label, sizeof c->label, "LoRA fp32 base");
    for (int i = 0; i < nb; i++) {
        const char *spec = config_string_at(cfg, "bases", i);
        char type[32];
        const char *plus = strchr(spec, '+');
        int dq = 0;
        if (plus) {
            if (strcmp(plus, "+dq"))
                return qlab_fail(QLAB_ERR_ARG, "%s: key 'bases': '%s' (expected a data type, optionally +dq)",
                                 config_key_origin(cfg, "bases"), spec);
            dq = 1;
        }
        size_t len = plus ? (size_t)(plus - spec) : strlen(spec);
        if (len == 0 || len >= sizeof type)
            return qlab_fail(QLAB_ERR_ARG, "%s: key 'bases': '%s' is not a data type",
                             config_key_origin(cfg, "bases"), spec);
        memcpy(type, spec, len);
        type[len] = '\0';
        quant_dtype dt;
        if (quant_dtype_parse(type, &dt) != QLAB_OK)
            return qlab_fail_context(QLAB_ERR_ARG, "%s: key 'bases'", config_key_origin(cfg, "bases"));
        if (dq && !quant_dtype_has_fp32_absmax(dt))
            return qlab_fail(QLAB_ERR_ARG,
                             "%s: key 'bases': %s has no fp32 block constants to double-quantize",
                             config_key_origin(cfg, "bases"), type);
        int blocksize = quant_dtype_has_fp32_absmax(dt) ? base->blocksize : quant_default_blocksize(dt);
        if (quant_check_blocksize(dt, blocksize) != QLAB_OK)
            return qlab_fail_context(QLAB_ERR_ARG, "%s: key 'blocksize'",
                                     config_key_origin(cfg, "blocksize"));
        for (int j = 0; j < *n; j++)
            if (cells[j].options.mode == FINETUNE_QLORA && cells[j].options.base_dtype == dt &&
                cells[j].options.double_quant == dq)
                return qlab_fail(QLAB_ERR_ARG, "%s: key 'bases' lists '%s' twice",
                                 config_key_origin(cfg, "bases"), spec);
        c = &cells[(*n)++];
        memset(c, 0, sizeof *c);
        c->options = *base;
        c->options.mode = FINETUNE_QLORA;
        c->options.lora.targets = targets;
        c->options.lora.rank = (int)rank;
        c->options.base_dtype = dt;
        c->options.double_quant = dq;
        c->options.blocksize = blocksize;
        snprintf(c->name, sizeof c->name, "qlora_%s%s", type, dq ? "_dq" : "");
        snprintf(c->label, sizeof c->label, "QLoRA %s%s", type, dq ? "+DQ" : "");
    }
    return QLAB_OK;
}

static const finetune_experiment experiment = {
    .program = "qlora_vs_16bit",
    .reference = "lora_fp32",
    .metric_note =
        "Held-out mean NLL of the response tokens (prompt and padding masked) on Alpaca records split off "
        "before training. The models are tiny TinyStories-style LLaMAs, so this stands in for the "
        "paper's RougeL (Table 3) and MMLU (Table 4); fp32 stands in for the paper's BF16 (16-bit) "
        "baselines.",
    .summary_title = "Tables 3-4: QLoRA on 4-bit bases vs 16-bit (fp32 stand-in) LoRA and full finetuning "
                     "(held-out response NLL)",
    .build_grid = build_grid,
};

int main(int argc, char **argv) {
    qlab_runtime_restart(argv);
    experiment_args args;
    int early = experiment_parse_args(&args, "qlora_vs_16bit", argc, argv, usage);
    if (early >= 0) return early;
    config *cfg = NULL;
    qlab_status st = experiment_load_config(&args, &cfg, config_keys, N_CONFIG_KEYS);
    if (st == QLAB_OK) st = finetune_grid_run_experiment(&experiment, cfg, args.out_path, argc, argv);
    config_free(cfg);
    return st == QLAB_OK ? 0 : qlab_report_error("qlora_vs_16bit");
}
