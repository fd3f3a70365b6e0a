/* What the finetuning experiments (lora_placement, qlora_vs_16bit) share: resolving the base model
 * (the embedded zoo, else stories260K), turning an Alpaca file into response-masked training and held-out
 * rows (datasets/instruct.h), running a grid of configurations over seeds from the same base, and writing
 * the per-run, per-configuration (mean and spread over seeds, paired difference to a reference
 * configuration) and curve tables into a results file. */
#ifndef QLAB_EVAL_FINETUNE_GRID_H
#define QLAB_EVAL_FINETUNE_GRID_H

#include <stdint.h>

#include "core/base/common.h"
#include "experiments/harness/experiment_compute.h"
#include "core/results/config.h"
#include "train/finetune.h"
#include "datasets/instruct.h"
#include "core/model/model.h"
#include "core/base/progress.h"
#include "core/results/results.h"
#include "core/text/tokenizer.h"

/* ---------------------------------------------------------------- the task */

typedef struct {
    char model_path[512], tokenizer_path[512];
    char model_name[64]; /* "zoo-0.3M", "stories260K", or the file's base name */
    model *base;         /* fp32, never trained: every run starts from a copy */
    tokenizer *tok;
    instruct_examples train_ex, heldout_ex;
    finetune_rows train, heldout;
    int n_records;
} finetune_task;

/* Resolves model_path / tokenizer_path. "auto" for the model means ../shared/data/models/stories260K.bin
 * (with tok512.bin beside it) when present, else models/zoo/zoo-0.3M.bin (with models/zoo/tokenizer.bin),
 * which `make zoo` builds offline; with neither present it fails saying to run `make zoo`. "auto" for the
 * tokenizer means the one that belongs to the model chosen (tokenizer.bin, else tok512.bin, in the
 * model's folder). */
qlab_status finetune_resolve_model(const char *model_spec, const char *tokenizer_spec, char *model_path,
                                   size_t model_cap, char *tokenizer_path, size_t tokenizer_cap);

/* Loads the base and tokenizer, loads the Alpaca (or OASST1) file, keeps its first max_records records
 * (0 = all), splits n_heldout of them off with split_seed, and encodes both parts into rows of row_len
 * (response-only targets). */
qlab_status finetune_task_load(finetune_task *t, const char *model_spec, const char *tokenizer_spec,
                               const char *data_path, int max_records, int n_heldout, uint64_t split_seed,
                               int row_len);
void finetune_task_free(finetune_task *t);

/* ---------------------------------------------------------------- a grid of configurations */

typedef struct {
    char name[48];            /* identifier in the tables: "lora_all_r8" */
    char label[96];           /* for figures and Markdown: "LoRA all r=8" */
    finetune_options options; /* seed fields are set per run */
} finetune_cell;

/* Results of one configuration over its seeds. */
typedef struct {
    int n_seeds;
    double *final_nll;     /* (n_seeds) held-out response NLL at the end */
    double *initial_nll;   /* (n_seeds) before training (the quantized base for QLoRA) */
    double *seconds;       /* (n_seeds) wall time of the run */
    finetune_result first; /* the first seed's full result (curves, memory, counts) */
    train_point **curves;  /* (n_seeds) held-out curves */
    int64_t *curve_lengths;
} finetune_cell_result;

void finetune_cell_result_free(finetune_cell_result *r);

/* Writes one finished run under dir/NAME_seedSEED (dir created if missing): a PEFT adapter directory
 * (lora_save_peft, base_model recorded) when adapters is non-NULL, else the whole finetuned fp32 model
 * (checkpoint_save_hf: config.json + model.safetensors), as `qlab finetune` and `qlab finetune --full` do. */
qlab_status finetune_save_run(const char *dir, const char *name, int64_t seed, const model *m,
                              const lora_set *adapters, const char *base_model);

/* Runs one configuration for each seed: a fresh copy of the base, lora.seed = seed and seed = seed
 * (batch order) for each. Updates the progress line (done counts optimizer steps over the whole grid).
 * With save_dir non-NULL and non-empty every run is kept there (finetune_save_run). */
qlab_status finetune_run_cell(const finetune_task *task, const finetune_cell *cell, const int64_t *seeds,
                              int n_seeds, const char *save_dir, progress *prog, int64_t *steps_done,
                              finetune_cell_result *out);

/* Writes the tables:
 *   runs    — one row per (configuration, seed): final and initial NLL, perplexity, trainable parameters,
 *             memory, seconds, steps clipped;
 *   summary — one row per configuration: mean NLL over seeds, standard deviation, min, max, 95% t
 *             interval of the mean, perplexity of the mean NLL, and the paired difference (same seeds) to
 *             the configuration named reference with its 95% t interval;
 *   curves  — mean, min and max held-out NLL over seeds at every evaluation step, per configuration.
 * reference may be NULL (no difference columns are filled: NaN). */
qlab_status finetune_write_tables(results *r, const finetune_task *task, const finetune_cell *cells,
                                  const finetune_cell_result *res, int n_cells, const int64_t *seeds,
                                  int n_seeds, const char *reference, const char *summary_title);

/* Two-sided 95% Student-t quantile for df degrees of freedom (df >= 1; exact table to 30, then normal). */
double finetune_t95(int df);

/* ---------------------------------------------------------------- the experiment driver */

/* Most configurations one experiment's grid may hold. */
#define FINETUNE_GRID_MAX_CELLS 32

/* What differs between the finetuning experiments. */
typedef struct {
    const char *program;       /* "lora_placement": results experiment name and prefix of printed lines */
    const char *reference;     /* configuration the summary's paired differences are taken to (or NULL) */
    const char *metric_note;   /* the results note "metric": what the NLL stands in for */
    const char *summary_title; /* title of the summary table */
    /* Fills cells[0..*n) (at most FINETUNE_GRID_MAX_CELLS) from the experiment's own keys, each starting
     * from the common options base; one line naming the key on a bad value. */
    qlab_status (*build_grid)(const config *cfg, const finetune_options *base, finetune_cell *cells, int *n);
} finetune_experiment;

/* The whole experiment from its loaded config: the common options (finetune_grid_options), the grid, seeds
 * and task from the keys below, every cell over every seed with one progress line (stderr), the tables and
 * notes into out_path (committed only when everything succeeded), then "wrote" and one mean held-out NLL
 * line per configuration on stdout. The program prints the error line on failure. */
qlab_status finetune_grid_run_experiment(const finetune_experiment *e, const config *cfg,
                                         const char *out_path, int argc, char *const *argv);

/* ---------------------------------------------------------------- config keys both experiments share */

/* Entries of a config_key array (core/results/config.h) for the task, the training budget and the recipe; an
 * experiment lists them first and adds its own grid keys. */
#define FINETUNE_GRID_CONFIG_KEYS                                                                            \
    {"model_path", CONFIG_STRING, "\"auto\"",                                                                \
     "base model; auto = ../shared/data/models/stories260K.bin, else models/zoo/zoo-0.3M.bin (make zoo)"},   \
        {"tokenizer_path", CONFIG_STRING, "\"auto\"", "tokenizer; auto = the one beside the model"},         \
        {"data_path", CONFIG_STRING, "\"../shared/data/finetune/alpaca_data_1k.json\"",                      \
         "instruction data (Alpaca JSON or OASST1 JSON lines)"},                                             \
        {"max_records", CONFIG_INT, "0", "use the first N records (0 = all)"},                               \
        {"heldout_records", CONFIG_INT, "100", "records split off for the held-out NLL"},                    \
        {"split_seed", CONFIG_INT, "1234", "seed of the train/held-out split (fixed across runs)"},          \
        {"row_len", CONFIG_INT, "256", "tokens per example row (prompt + response, padded or cut)"},         \
        {"seeds", CONFIG_INT_ARRAY, "[1, 2, 3]", "run seeds: adapter init, dropout masks, batch order"},     \
        {"steps", CONFIG_INT, "300", "optimizer steps per run"},                                             \
        {"batch", CONFIG_INT, "8", "rows per step"},                                                         \
        {"eval_every", CONFIG_INT, "50", "held-out NLL every N steps (and at 0 and the end)"},               \
        {"eval_batch", CONFIG_INT, "25", "rows per held-out forward"},                                       \
        {"schedule", CONFIG_STRING, "\"constant\"",                                                          \
         "constant (Guanaco) or cosine (warmup then cosine to 0)"},                                          \
        {"warmup_steps", CONFIG_INT, "0", "linear warmup steps"},                                            \
        {"lr_lora", CONFIG_DOUBLE, "3e-3", "peak learning rate of the LoRA and QLoRA runs"},                 \
        {"lr_full", CONFIG_DOUBLE, "1e-3", "peak learning rate of full finetuning"},                         \
        {"grad_clip", CONFIG_DOUBLE, "0.3", "max global gradient norm (Guanaco: 0.3)"},                      \
        {"weight_decay", CONFIG_DOUBLE, "0", "AdamW decoupled weight decay"},                                \
        {"lora_alpha", CONFIG_DOUBLE, "16", "LoRA alpha (scale alpha / r)"},                                 \
        {"lora_dropout", CONFIG_DOUBLE, "0.05", "LoRA dropout on the adapter input"},                        \
        {"blocksize", CONFIG_INT, "64", "block size of the 4-bit bases"},                                    \
        {"optimizer_state", CONFIG_STRING, "\"paged\"",                                                      \
         "paged (CUDA unified memory when available, else host) or host"},                                   \
        {"optimizer_resident_bytes", CONFIG_INT, "0",                                                        \
         "with optimizer_state paged: page the moments on the CPU, this many bytes resident (0 = off)"},     \
        {"save_adapters", CONFIG_STRING, "\"\"",                                                             \
         "keep every run in this directory: DIR/NAME_seedS, a PEFT adapter (full finetuning: the model); "   \
         "empty = none"},                                                                                    \
        EXPERIMENT_COMPUTE_KEY, {                                                                            \
        "gradient_checkpointing", CONFIG_BOOL, "false",                                                      \
            "keep only block inputs and recompute each block in backward (same gradients, less memory)"      \
    }

/* The common options from those keys (mode FINETUNE_LORA, all targets, rank 8, NF4+DQ); one line naming
 * the key on a bad value. */
qlab_status finetune_grid_options(const config *cfg, finetune_options *o);
/* Loads the task from those keys. */
qlab_status finetune_grid_load_task(const config *cfg, finetune_task *t);
/* The seeds array from the "seeds" key (malloc'd); fails on an empty list or duplicates. */
qlab_status finetune_grid_seeds(const config *cfg, int64_t **seeds, int *n);

#endif
