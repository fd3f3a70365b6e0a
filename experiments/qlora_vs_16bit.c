/* QLoRA vs 16-bit finetuning (QLoRA Tables 3-4): the same tiny pretrained model, data, budget and seeds,
 * finetuned fully in fp32, with LoRA on a frozen fp32 base (the paper's 16-bit LoRA; fp32 stands in for
 * BF16), and with QLoRA on frozen 4-bit bases (NF4, NF4+DQ, FP4, Int4, ...). Held-out response NLL on
 * Alpaca with its spread over seeds and the paired difference to 16-bit LoRA; the metric is held-out loss,
 * not the paper's RougeL / MMLU. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "config.h"
#include "finetune_grid.h"
#include "progress.h"
#include "quant.h"
#include "results.h"

static const config_key config_keys[] = {
    FINETUNE_GRID_CONFIG_KEYS,
    {"rank", CONFIG_INT, "8", "LoRA r of every LoRA / QLoRA run"},
    {"targets", CONFIG_STRING, "\"all\"", "LoRA targets (all = every linear layer, as QLoRA)"},
    {"bases", CONFIG_STRING_ARRAY, "[\"nf4\", \"nf4+dq\", \"fp4\", \"int4\"]",
     "4-bit bases for QLoRA: a data type, \"+dq\" for double quantization"},
    {"full_finetune", CONFIG_BOOL, "true", "include full fp32 finetuning"},
};
#define N_CONFIG_KEYS ((int)(sizeof config_keys / sizeof config_keys[0]))
#define MAX_CELLS 32

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
    if (rank < 1 || rank > 4096) return qlab_fail(QLAB_ERR_ARG, "%s: key 'rank' must be from 1 to 4096", path);
    unsigned targets;
    if (lora_parse_targets(config_string(cfg, "targets"), &targets) != QLAB_OK)
        return qlab_fail_context(QLAB_ERR_ARG, "%s: key 'targets'", path);
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
                return qlab_fail(QLAB_ERR_ARG, "%s: key 'bases': '%s' (expected a data type, optionally +dq)", path, spec);
            dq = 1;
        }
        size_t len = plus ? (size_t)(plus - spec) : strlen(spec);
        if (len == 0 || len >= sizeof type)
            return qlab_fail(QLAB_ERR_ARG, "%s: key 'bases': '%s' is not a data type", path, spec);
        memcpy(type, spec, len);
        type[len] = '\0';
        quant_dtype dt;
        if (quant_dtype_parse(type, &dt) != QLAB_OK) return qlab_fail_context(QLAB_ERR_ARG, "%s: key 'bases'", path);
        if (dq && !quant_dtype_has_fp32_absmax(dt))
            return qlab_fail(QLAB_ERR_ARG, "%s: key 'bases': %s has no fp32 block constants to double-quantize", path,
                             type);
        int blocksize = quant_dtype_has_fp32_absmax(dt) ? base->blocksize : quant_default_blocksize(dt);
        if (quant_check_blocksize(dt, blocksize) != QLAB_OK)
            return qlab_fail_context(QLAB_ERR_ARG, "%s: key 'blocksize'", path);
        for (int j = 0; j < *n; j++)
            if (cells[j].options.mode == FINETUNE_QLORA && cells[j].options.base_dtype == dt &&
                cells[j].options.double_quant == dq)
                return qlab_fail(QLAB_ERR_ARG, "%s: key 'bases' lists '%s' twice", path, spec);
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

int main(int argc, char **argv) {
    qlab_openmp_prefer_passive(argv);
    experiment_args args;
    int early = experiment_parse_args(&args, "qlora_vs_16bit", argc, argv, usage);
    if (early >= 0) return early;
    const char *out_path = args.out_path;
    config *cfg = NULL;
    if (experiment_load_config(&args, &cfg, config_keys, N_CONFIG_KEYS) != QLAB_OK)
        return qlab_report_error("qlora_vs_16bit");

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
    if (results_create(&r, out_path, "qlora_vs_16bit", cfg, argc, argv) != QLAB_OK) goto done;
    if (results_attr_int(r, "seed", seeds[0]) != QLAB_OK || results_attr_string(r, "model", task.model_path) != QLAB_OK ||
        results_attr_string(r, "tokenizer", task.tokenizer_path) != QLAB_OK)
        goto done;
    fprintf(stderr, "qlora_vs_16bit: %s, %lld training / %lld held-out rows of %d tokens, %d configurations x %d seeds\n",
            task.model_name, (long long)task.train.n_rows, (long long)task.heldout.n_rows, task.train.row_len, n_cells,
            n_seeds);

    progress prog;
    progress_begin(&prog, "qlora_vs_16bit", (int64_t)n_cells * n_seeds * base.steps);
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
                     "paper's RougeL (Table 3) and MMLU (Table 4); fp32 stands in for the paper's BF16 (16-bit) "
                     "baselines.") != QLAB_OK)
        goto done;
    if (finetune_write_tables(r, &task, cells, res, n_cells, seeds, n_seeds, "lora_fp32",
                              "Tables 3-4: QLoRA on 4-bit bases vs 16-bit (fp32 stand-in) LoRA and full finetuning "
                              "(held-out response NLL)") != QLAB_OK)
        goto done;
    if (results_commit(r) != QLAB_OK) {
        r = NULL;
        goto done;
    }
    r = NULL;
    printf("qlora_vs_16bit: wrote %s\n", out_path);
    for (int c = 0; c < n_cells; c++) {
        double s = 0;
        for (int k = 0; k < n_seeds; k++) s += res[c].final_nll[k];
        printf("  %-24s held-out NLL %.4f (mean of %d seeds; base %.4f)\n", cells[c].name, s / n_seeds, n_seeds,
               res[c].initial_nll[0]);
    }
    rc = 0;
done:
    if (rc != 0) qlab_report_error("qlora_vs_16bit");
    results_abort(r);
    for (int c = 0; c < n_done; c++) finetune_cell_result_free(&res[c]);
    finetune_task_free(&task);
    free(seeds);
    config_free(cfg);
    return rc;
}
