/* The grid machinery of the finetuning experiments; see finetune_grid.h. */
#include "experiments/harness/finetune_grid.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/model/checkpoint.h"
#include "core/model/lora_peft.h"

#define ZOO_MODEL "models/zoo/zoo-0.3M.bin"
#define ZOO_TOKENIZER "models/zoo/tokenizer.bin"
#define SHARED_MODEL "../shared/data/models/stories260K.bin"

static int readable(const char *path) {
    return path && access(path, R_OK) == 0;
}

static qlab_status copy_path(char *dst, size_t cap, const char *src) {
    if (snprintf(dst, cap, "%s", src) >= (int)cap) return qlab_fail(QLAB_ERR_ARG, "path too long: %s", src);
    return QLAB_OK;
}

qlab_status finetune_resolve_model(const char *model_spec, const char *tokenizer_spec, char *model_path,
                                   size_t model_cap, char *tokenizer_path, size_t tokenizer_cap) {
    if (!model_spec || !strcmp(model_spec, "auto")) {
        /* stories260K first: pretrained on real TinyStories, it starts at 4.5 nats/token on Alpaca
         * responses, while zoo-0.3M, trained on the embedded synthetic corpus, starts at 9.4 (worse than
         * uniform over its 512 pieces): a finetuning comparison wants the base that already knows English. */
        if (readable(SHARED_MODEL))
            QLAB_TRY(copy_path(model_path, model_cap, SHARED_MODEL));
        else if (readable(ZOO_MODEL))
            QLAB_TRY(copy_path(model_path, model_cap, ZOO_MODEL));
        else
            return qlab_fail(QLAB_ERR_IO,
                             "no base model: neither %s nor %s exists; run `make zoo` to build the "
                             "embedded model family (offline), or set model_path",
                             SHARED_MODEL, ZOO_MODEL);
    } else {
        if (!readable(model_spec))
            return qlab_fail(QLAB_ERR_IO, "%s: cannot read the base model", model_spec);
        QLAB_TRY(copy_path(model_path, model_cap, model_spec));
    }
    if (tokenizer_spec && strcmp(tokenizer_spec, "auto")) {
        if (!readable(tokenizer_spec))
            return qlab_fail(QLAB_ERR_IO, "%s: cannot read the tokenizer", tokenizer_spec);
        return copy_path(tokenizer_path, tokenizer_cap, tokenizer_spec);
    }
    /* The model's own tokenizer sits beside it. In ../shared/data/models, tokenizer.bin is Llama 2's 32k
     * one and tok512.bin belongs to stories260K, so the 512-piece file is tried first; the vocabulary
     * sizes are compared after loading. */
    char dir[512];
    QLAB_TRY(copy_path(dir, sizeof dir, model_path));
    char *slash = strrchr(dir, '/');
    if (slash)
        slash[1] = '\0';
    else
        dir[0] = '\0';
    const char *candidates[] = {"tok512.bin", "tokenizer.bin"};
    for (int i = 0; i < 2; i++) {
        char p[600];
        snprintf(p, sizeof p, "%s%s", dir, candidates[i]);
        if (readable(p)) return copy_path(tokenizer_path, tokenizer_cap, p);
    }
    return qlab_fail(QLAB_ERR_IO,
                     "%s: no tokenizer beside it (looked for tok512.bin and tokenizer.bin); set "
                     "tokenizer_path",
                     model_path);
}

void finetune_task_free(finetune_task *t) {
    if (!t) return;
    model_free(t->base);
    tokenizer_free(t->tok);
    instruct_examples_free(&t->train_ex);
    instruct_examples_free(&t->heldout_ex);
    memset(t, 0, sizeof *t);
}

qlab_status finetune_task_load(finetune_task *t, const char *model_spec, const char *tokenizer_spec,
                               const char *data_path, int max_records, int n_heldout, uint64_t split_seed,
                               int row_len) {
    memset(t, 0, sizeof *t);
    QLAB_TRY(finetune_resolve_model(model_spec, tokenizer_spec, t->model_path, sizeof t->model_path,
                                    t->tokenizer_path, sizeof t->tokenizer_path));
    const char *base = strrchr(t->model_path, '/');
    snprintf(t->model_name, sizeof t->model_name, "%.63s", base ? base + 1 : t->model_path);
    char *dot = strrchr(t->model_name, '.');
    if (dot && !strcmp(dot, ".bin")) *dot = '\0';

    instruct_set all = {0}, train_set = {0}, heldout_set = {0};
    int *train_index = NULL, *heldout_index = NULL, n_train = 0, n_heldout_out = 0;
    qlab_status st = checkpoint_load(t->model_path, &t->base);
    if (st == QLAB_OK) st = tokenizer_load(t->tokenizer_path, &t->tok);
    const model_config *mc = st == QLAB_OK ? model_get_config(t->base) : NULL;
    if (st == QLAB_OK && tokenizer_vocab_size(t->tok) != mc->vocab_size)
        st = qlab_fail(QLAB_ERR_ARG, "%s has %d pieces but the model %s has a vocabulary of %d",
                       t->tokenizer_path, tokenizer_vocab_size(t->tok), t->model_path, mc->vocab_size);
    if (st == QLAB_OK && (row_len < 8 || row_len > mc->seq_len))
        st = qlab_fail(QLAB_ERR_ARG, "row length %d must be from 8 to the model's seq_len %d", row_len,
                       mc->seq_len);
    if (st == QLAB_OK) st = instruct_load(data_path, &all);
    if (st == QLAB_OK) {
        int n = max_records > 0 && max_records < all.count ? max_records : all.count;
        t->n_records = n;
        if (n_heldout < 1 || n_heldout >= n)
            st = qlab_fail(QLAB_ERR_ARG, "%s: %d held-out records requested from %d (need 1 to %d)",
                           data_path, n_heldout, n, n - 1);
        if (st == QLAB_OK)
            st = instruct_split(n, n_heldout, split_seed, &train_index, &n_train, &heldout_index,
                                &n_heldout_out);
    }
    if (st == QLAB_OK) st = instruct_set_select(&all, train_index, n_train, &train_set);
    if (st == QLAB_OK) st = instruct_set_select(&all, heldout_index, n_heldout_out, &heldout_set);
    instruct_encode_options eo = {.max_len = row_len};
    if (st == QLAB_OK) st = instruct_encode(t->tok, train_set.records, train_set.count, &eo, &t->train_ex);
    if (st == QLAB_OK)
        st = instruct_encode(t->tok, heldout_set.records, heldout_set.count, &eo, &t->heldout_ex);
    if (st == QLAB_OK) {
        t->train = (finetune_rows){t->train_ex.tokens, t->train_ex.targets, t->train_ex.n, t->train_ex.T};
        t->heldout =
            (finetune_rows){t->heldout_ex.tokens, t->heldout_ex.targets, t->heldout_ex.n, t->heldout_ex.T};
    }
    instruct_set_free(&all);
    instruct_set_free(&train_set);
    instruct_set_free(&heldout_set);
    free(train_index);
    free(heldout_index);
    if (st != QLAB_OK) finetune_task_free(t);
    return st;
}

void finetune_cell_result_free(finetune_cell_result *r) {
    if (!r) return;
    free(r->final_nll);
    free(r->initial_nll);
    free(r->seconds);
    finetune_result_free(&r->first);
    if (r->curves)
        for (int i = 0; i < r->n_seeds; i++)
            free(r->curves[i]);
    free(r->curves);
    free(r->curve_lengths);
    memset(r, 0, sizeof *r);
}

typedef struct {
    progress *prog;
    int64_t base;
    const char *cell;
    int64_t seed;
} step_report;

static void on_step(void *ctx, int64_t step, int64_t total, double loss) {
    step_report *s = ctx;
    if (!s->prog) return;
    char extra[128];
    snprintf(extra, sizeof extra, "%s seed %lld step %lld/%lld loss %.3f", s->cell, (long long)s->seed,
             (long long)step, (long long)total, loss);
    progress_update(s->prog, s->base + step, extra);
}

qlab_status finetune_save_run(const char *dir, const char *name, int64_t seed, const model *m,
                              const lora_set *adapters, const char *base_model) {
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return qlab_fail(QLAB_ERR_IO, "%s: cannot create directory: %s", dir, strerror(errno));
    char path[4096];
    if (snprintf(path, sizeof path, "%s/%s_seed%lld", dir, name, (long long)seed) >= (int)sizeof path)
        return qlab_fail(QLAB_ERR_ARG, "save directory name too long: %s", dir);
    for (char *c = path + strlen(dir) + 1; *c; c++)
        if (*c == '/') *c = '_'; /* a run name never opens a sub-folder */
    return adapters ? lora_save_peft(adapters, path, base_model) : checkpoint_save_hf(m, path);
}

qlab_status finetune_run_cell(const finetune_task *task, const finetune_cell *cell, const int64_t *seeds,
                              int n_seeds, const char *save_dir, progress *prog, int64_t *steps_done,
                              finetune_cell_result *out) {
    memset(out, 0, sizeof *out);
    if (n_seeds < 1) return qlab_fail(QLAB_ERR_ARG, "%s: no seeds", cell->name);
    out->final_nll = qlab_calloc((size_t)n_seeds, sizeof(double));
    out->initial_nll = qlab_calloc((size_t)n_seeds, sizeof(double));
    out->seconds = qlab_calloc((size_t)n_seeds, sizeof(double));
    out->curves = qlab_calloc((size_t)n_seeds, sizeof *out->curves);
    out->curve_lengths = qlab_calloc((size_t)n_seeds, sizeof(int64_t));
    out->n_seeds = n_seeds;
    if (!out->final_nll || !out->initial_nll || !out->seconds || !out->curves || !out->curve_lengths) {
        finetune_cell_result_free(out);
        return QLAB_ERR_NOMEM;
    }
    qlab_status st = QLAB_OK;
    for (int i = 0; i < n_seeds && st == QLAB_OK; i++) {
        model *m = NULL;
        st = model_clone(task->base, &m);
        if (st != QLAB_OK) break;
        finetune_options o = cell->options;
        o.lora.seed = (uint64_t)seeds[i];
        o.seed = (uint64_t)seeds[i];
        step_report rep = {prog, steps_done ? *steps_done : 0, cell->name, seeds[i]};
        finetune_result res;
        int keep = save_dir && save_dir[0];
        lora_set *adapters = NULL;
        st = finetune_run(m, &task->train, &task->heldout, &o, on_step, &rep, keep ? &adapters : NULL, &res);
        if (st == QLAB_OK && keep) {
            st = finetune_save_run(save_dir, cell->name, seeds[i], m, adapters, task->model_path);
            if (st != QLAB_OK) finetune_result_free(&res);
        }
        if (adapters) lora_detach(m);
        lora_free(adapters);
        model_free(m);
        if (st != QLAB_OK) {
            qlab_fail_context(st, "%s seed %lld", cell->name, (long long)seeds[i]);
            break;
        }
        if (steps_done) *steps_done += o.steps;
        out->final_nll[i] = res.final_heldout_nll;
        out->initial_nll[i] = res.initial_heldout_nll;
        out->seconds[i] = res.seconds;
        out->curves[i] = res.heldout, out->curve_lengths[i] = res.n_heldout;
        res.heldout = NULL; /* now owned by out->curves */
        if (i == 0) {
            out->first = res;
        } else {
            finetune_result_free(&res);
        }
    }
    if (st == QLAB_OK) {
        /* The first result's curve pointer moved to curves[0]; keep a length for readers of .first. */
        out->first.n_heldout = 0;
    } else {
        finetune_cell_result_free(out);
    }
    return st;
}

double finetune_t95(int df) {
    static const double table[31] = {NAN,   12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365,
                                     2.306, 2.262,  2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
                                     2.120, 2.110,  2.101, 2.093, 2.086, 2.080, 2.074, 2.069,
                                     2.064, 2.060,  2.056, 2.052, 2.048, 2.045, 2.042};
    if (df < 1) return NAN;
    return df <= 30 ? table[df] : 1.96;
}

/* Mean, sample standard deviation, min and max of x[0..n). */
static void describe(const double *x, int n, double *mean, double *sd, double *lo, double *hi) {
    double s = 0, mn = INFINITY, mx = -INFINITY;
    for (int i = 0; i < n; i++)
        s += x[i], mn = fmin(mn, x[i]), mx = fmax(mx, x[i]);
    *mean = s / n;
    double ss = 0;
    for (int i = 0; i < n; i++)
        ss += (x[i] - *mean) * (x[i] - *mean);
    *sd = n > 1 ? sqrt(ss / (n - 1)) : NAN;
    *lo = mn, *hi = mx;
}

static const char *mode_label(const finetune_options *o) {
    return finetune_mode_name(o->mode);
}

static void targets_text(unsigned targets, char *buf, size_t cap) {
    if (targets == LORA_TARGETS_ALL)
        snprintf(buf, cap, "all");
    else if (targets == LORA_TARGETS_ATTENTION)
        snprintf(buf, cap, "attention");
    else if (targets == LORA_TARGETS_QV)
        snprintf(buf, cap, "qv");
    else {
        buf[0] = '\0';
        for (int p = 0; p < PROJ_COUNT; p++)
            if (targets & LORA_TARGET(p)) {
                size_t len = strlen(buf);
                snprintf(buf + len, cap - len, "%s%s", len ? "," : "", model_proj_name((model_proj)p));
            }
    }
}

static void base_text(const finetune_options *o, char *buf, size_t cap) {
    if (o->mode == FINETUNE_QLORA)
        snprintf(buf, cap, "%s%s b%d", quant_dtype_name(o->base_dtype), o->double_quant ? "+dq" : "",
                 o->blocksize);
    else
        snprintf(buf, cap, "fp32");
}

/* Columns shared by the runs and summary tables that describe a configuration. */
static qlab_status declare_config_columns(results_table *t) {
    QLAB_TRY(results_table_column(t, "config", RESULTS_STRING, NULL, "configuration name"));
    QLAB_TRY(results_table_column(t, "label", RESULTS_STRING, NULL, "configuration, for figures"));
    QLAB_TRY(results_table_column(
        t, "mode", RESULTS_STRING, NULL,
        "full (fp32 full finetuning), lora (frozen fp32 base), qlora (frozen 4-bit base)"));
    QLAB_TRY(results_table_column(t, "base", RESULTS_STRING, NULL, "storage of the frozen base"));
    QLAB_TRY(results_table_column(t, "targets", RESULTS_STRING, NULL, "adapted projections (LoRA modes)"));
    QLAB_TRY(results_table_column(t, "rank", RESULTS_INT64, NULL, "LoRA r (0 for full finetuning)"));
    QLAB_TRY(results_table_column(t, "lr", RESULTS_FLOAT64, NULL, "peak learning rate"));
    return QLAB_OK;
}

static qlab_status set_config_columns(results_table *t, const finetune_cell *c) {
    char targets[128] = "-", base[64];
    if (c->options.mode != FINETUNE_FULL) targets_text(c->options.lora.targets, targets, sizeof targets);
    base_text(&c->options, base, sizeof base);
    QLAB_TRY(results_set_string(t, "config", c->name));
    QLAB_TRY(results_set_string(t, "label", c->label));
    QLAB_TRY(results_set_string(t, "mode", mode_label(&c->options)));
    QLAB_TRY(results_set_string(t, "base", base));
    QLAB_TRY(results_set_string(t, "targets", targets));
    QLAB_TRY(results_set_int(t, "rank", c->options.mode == FINETUNE_FULL ? 0 : c->options.lora.rank));
    QLAB_TRY(results_set_double(t, "lr", c->options.max_lr));
    return QLAB_OK;
}

static qlab_status declare_memory_columns(results_table *t) {
    QLAB_TRY(
        results_table_column(t, "trainable_params", RESULTS_INT64, NULL, "parameters the optimizer updates"));
    QLAB_TRY(results_table_column(t, "weights_bytes", RESULTS_INT64, "bytes",
                                  "base model: fp32 tensors + quantized projections at their stored size"));
    QLAB_TRY(results_table_column(t, "adapter_bytes", RESULTS_INT64, "bytes", "LoRA A and B, fp32"));
    QLAB_TRY(results_table_column(t, "gradient_bytes", RESULTS_INT64, "bytes",
                                  "fp32 gradient of the trainable "
                                  "parameters"));
    QLAB_TRY(results_table_column(t, "optimizer_bytes", RESULTS_INT64, "bytes", "AdamW moments, 2 x fp32"));
    QLAB_TRY(results_table_column(t, "total_bytes", RESULTS_INT64, "bytes",
                                  "weights + adapters + gradients + optimizer (activations excluded)"));
    return QLAB_OK;
}

static qlab_status set_memory_columns(results_table *t, const finetune_result *r) {
    QLAB_TRY(results_set_int(t, "trainable_params", (int64_t)r->trainable_params));
    QLAB_TRY(results_set_int(t, "weights_bytes", (int64_t)r->memory.weights));
    QLAB_TRY(results_set_int(t, "adapter_bytes", (int64_t)r->memory.adapters));
    QLAB_TRY(results_set_int(t, "gradient_bytes", (int64_t)r->memory.gradients));
    QLAB_TRY(results_set_int(t, "optimizer_bytes", (int64_t)r->memory.optimizer));
    QLAB_TRY(results_set_int(t, "total_bytes", (int64_t)r->memory.total));
    return QLAB_OK;
}

static qlab_status write_runs(results *r, const finetune_cell *cells, const finetune_cell_result *res,
                              int n_cells, const int64_t *seeds, int n_seeds) {
    results_table *t;
    QLAB_TRY(
        results_table_begin(r, &t, "runs", "Every run: held-out response NLL after finetuning, per seed"));
    QLAB_TRY(declare_config_columns(t));
    QLAB_TRY(results_table_column(t, "seed", RESULTS_INT64, NULL,
                                  "adapter initialisation, dropout and batch order"));
    QLAB_TRY(results_table_column(t, "initial_nll", RESULTS_FLOAT64, "nats/token",
                                  "held-out response NLL before training (after quantization for qlora)"));
    QLAB_TRY(
        results_table_column(t, "final_nll", RESULTS_FLOAT64, "nats/token", "held-out response NLL after"));
    QLAB_TRY(results_table_column(t, "final_ppl", RESULTS_FLOAT64, NULL, "exp(final_nll)"));
    QLAB_TRY(results_table_column(t, "seconds", RESULTS_FLOAT64, "s", "wall time of the run"));
    for (int c = 0; c < n_cells; c++)
        for (int s = 0; s < n_seeds; s++) {
            QLAB_TRY(set_config_columns(t, &cells[c]));
            QLAB_TRY(results_set_int(t, "seed", seeds[s]));
            QLAB_TRY(results_set_double(t, "initial_nll", res[c].initial_nll[s]));
            QLAB_TRY(results_set_double(t, "final_nll", res[c].final_nll[s]));
            QLAB_TRY(results_set_double(t, "final_ppl", exp(res[c].final_nll[s])));
            QLAB_TRY(results_set_double(t, "seconds", res[c].seconds[s]));
            QLAB_TRY(results_row_end(t));
        }
    return results_table_end(t);
}

static qlab_status write_summary(results *r, const finetune_task *task, const finetune_cell *cells,
                                 const finetune_cell_result *res, int n_cells, int n_seeds,
                                 const char *reference, const char *title) {
    int ref = -1;
    for (int c = 0; reference && c < n_cells; c++)
        if (!strcmp(cells[c].name, reference)) ref = c;
    results_table *t;
    QLAB_TRY(results_table_begin(r, &t, "summary", title));
    QLAB_TRY(declare_config_columns(t));
    QLAB_TRY(results_table_column(t, "seeds", RESULTS_INT64, NULL, "runs averaged"));
    QLAB_TRY(results_table_column(t, "initial_nll", RESULTS_FLOAT64, "nats/token",
                                  "held-out response NLL of the base before finetuning (mean over seeds)"));
    QLAB_TRY(results_table_column(t, "nll_mean", RESULTS_FLOAT64, "nats/token",
                                  "held-out response NLL after finetuning, mean over seeds"));
    QLAB_TRY(
        results_table_column(t, "nll_sd", RESULTS_FLOAT64, "nats/token", "standard deviation over seeds"));
    QLAB_TRY(results_table_column(t, "nll_min", RESULTS_FLOAT64, "nats/token", "best seed"));
    QLAB_TRY(results_table_column(t, "nll_max", RESULTS_FLOAT64, "nats/token", "worst seed"));
    QLAB_TRY(results_table_column(t, "nll_ci95", RESULTS_FLOAT64, "nats/token",
                                  "half-width of the 95% Student-t interval of the mean over seeds"));
    QLAB_TRY(results_table_column(t, "ppl", RESULTS_FLOAT64, NULL, "exp(nll_mean)"));
    QLAB_TRY(results_table_column(t, "delta_vs_ref", RESULTS_FLOAT64, "nats/token",
                                  "mean over seeds of (this - reference) with the same seed (paired)"));
    QLAB_TRY(results_table_column(t, "delta_ci95", RESULTS_FLOAT64, "nats/token",
                                  "half-width of the 95% t interval of the paired difference"));
    QLAB_TRY(declare_memory_columns(t));
    QLAB_TRY(
        results_table_column(t, "seconds_mean", RESULTS_FLOAT64, "s", "wall time per run, mean over seeds"));
    QLAB_TRY(results_table_column(t, "steps_clipped", RESULTS_INT64, NULL,
                                  "steps whose gradient norm exceeded the limit (first seed)"));
    char note[1024];
    snprintf(note, sizeof note,
             "Metric: mean NLL (nats/token) of the response tokens of %lld held-out Alpaca examples (%lld "
             "scored tokens), prompts and padding masked. The base is %s, a tiny model: this is held-out "
             "loss/perplexity on the finetuning task's responses, not the paper's RougeL or MMLU.",
             (long long)task->heldout.n_rows, (long long)res[0].first.heldout_scored, task->model_name);
    QLAB_TRY(results_table_note(t, note));
    if (ref >= 0) {
        snprintf(note, sizeof note,
                 "delta_vs_ref: paired difference to '%s' over the same seeds (negative = "
                 "lower loss than the reference).",
                 cells[ref].name);
        QLAB_TRY(results_table_note(t, note));
    }
    double *diff = qlab_calloc((size_t)n_seeds, sizeof(double));
    if (!diff) return QLAB_ERR_NOMEM;
    qlab_status st = QLAB_OK;
    for (int c = 0; c < n_cells && st == QLAB_OK; c++) {
        const finetune_cell_result *cr = &res[c];
        double mean, sd, lo, hi, imean, isd, ilo, ihi;
        describe(cr->final_nll, n_seeds, &mean, &sd, &lo, &hi);
        describe(cr->initial_nll, n_seeds, &imean, &isd, &ilo, &ihi);
        double dmean = NAN, dci = NAN;
        if (ref >= 0) {
            for (int s = 0; s < n_seeds; s++)
                diff[s] = cr->final_nll[s] - res[ref].final_nll[s];
            double dsd, dlo, dhi;
            describe(diff, n_seeds, &dmean, &dsd, &dlo, &dhi);
            dci = n_seeds > 1 ? finetune_t95(n_seeds - 1) * dsd / sqrt(n_seeds) : NAN;
        }
        double secs = 0;
        for (int s = 0; s < n_seeds; s++)
            secs += cr->seconds[s];
#define TRY_SET(expr)                                                                                        \
    if (st == QLAB_OK) st = (expr)
        TRY_SET(set_config_columns(t, &cells[c]));
        TRY_SET(results_set_int(t, "seeds", n_seeds));
        TRY_SET(results_set_double(t, "initial_nll", imean));
        TRY_SET(results_set_double(t, "nll_mean", mean));
        TRY_SET(results_set_double(t, "nll_sd", sd));
        TRY_SET(results_set_double(t, "nll_min", lo));
        TRY_SET(results_set_double(t, "nll_max", hi));
        TRY_SET(results_set_double(t, "nll_ci95",
                                   n_seeds > 1 ? finetune_t95(n_seeds - 1) * sd / sqrt(n_seeds) : NAN));
        TRY_SET(results_set_double(t, "ppl", exp(mean)));
        TRY_SET(results_set_double(t, "delta_vs_ref", dmean));
        TRY_SET(results_set_double(t, "delta_ci95", dci));
        TRY_SET(set_memory_columns(t, &cr->first));
        TRY_SET(results_set_double(t, "seconds_mean", secs / n_seeds));
        TRY_SET(results_set_int(t, "steps_clipped", cr->first.steps_clipped));
        TRY_SET(results_row_end(t));
#undef TRY_SET
    }
    free(diff);
    QLAB_TRY(st);
    return results_table_end(t);
}

static qlab_status write_curves(results *r, const finetune_cell *cells, const finetune_cell_result *res,
                                int n_cells, int n_seeds) {
    results_table *t;
    QLAB_TRY(results_table_begin(r, &t, "curves", "Held-out response NLL during finetuning (over seeds)"));
    QLAB_TRY(results_table_column(t, "config", RESULTS_STRING, NULL, "configuration name"));
    QLAB_TRY(results_table_column(t, "step", RESULTS_INT64, NULL, "optimizer steps taken"));
    QLAB_TRY(results_table_column(t, "nll_mean", RESULTS_FLOAT64, "nats/token", "mean over seeds"));
    QLAB_TRY(results_table_column(t, "nll_min", RESULTS_FLOAT64, "nats/token", "lowest seed"));
    QLAB_TRY(results_table_column(t, "nll_max", RESULTS_FLOAT64, "nats/token", "highest seed"));
    QLAB_TRY(results_table_column(t, "seconds", RESULTS_FLOAT64, "s", "wall time into the first seed's run"));
    double *x = qlab_calloc((size_t)n_seeds, sizeof(double));
    if (!x) return QLAB_ERR_NOMEM;
    qlab_status st = QLAB_OK;
    for (int c = 0; c < n_cells && st == QLAB_OK; c++) {
        /* Every seed evaluates at the same steps (same options), so the points line up. */
        int64_t n = res[c].curve_lengths[0];
        for (int s = 1; s < n_seeds; s++)
            if (res[c].curve_lengths[s] < n) n = res[c].curve_lengths[s];
        for (int64_t k = 0; k < n && st == QLAB_OK; k++) {
            for (int s = 0; s < n_seeds; s++)
                x[s] = res[c].curves[s][k].loss;
            double mean, sd, lo, hi;
            describe(x, n_seeds, &mean, &sd, &lo, &hi);
            st = results_set_string(t, "config", cells[c].name);
            if (st == QLAB_OK) st = results_set_int(t, "step", res[c].curves[0][k].step);
            if (st == QLAB_OK) st = results_set_double(t, "nll_mean", mean);
            if (st == QLAB_OK) st = results_set_double(t, "nll_min", lo);
            if (st == QLAB_OK) st = results_set_double(t, "nll_max", hi);
            if (st == QLAB_OK) st = results_set_double(t, "seconds", res[c].curves[0][k].seconds);
            if (st == QLAB_OK) st = results_row_end(t);
        }
    }
    free(x);
    QLAB_TRY(st);
    return results_table_end(t);
}

qlab_status finetune_write_tables(results *r, const finetune_task *task, const finetune_cell *cells,
                                  const finetune_cell_result *res, int n_cells, const int64_t *seeds,
                                  int n_seeds, const char *reference, const char *summary_title) {
    QLAB_TRY(write_summary(r, task, cells, res, n_cells, n_seeds, reference, summary_title));
    QLAB_TRY(write_runs(r, cells, res, n_cells, seeds, n_seeds));
    return write_curves(r, cells, res, n_cells, n_seeds);
}

qlab_status finetune_grid_options(const config *cfg, finetune_options *o) {
    const char *path = config_path(cfg);
    finetune_options_default(o);
    o->mode = FINETUNE_LORA;
    int64_t steps = config_int(cfg, "steps"), batch = config_int(cfg, "batch"),
            every = config_int(cfg, "eval_every"), eval_batch = config_int(cfg, "eval_batch"),
            warmup = config_int(cfg, "warmup_steps"), blocksize = config_int(cfg, "blocksize");
    if (steps < 1 || steps > 1000000)
        return qlab_fail(QLAB_ERR_ARG, "%s: key 'steps' must be from 1 to 1e6",
                         config_key_origin(cfg, "steps"));
    if (batch < 1 || batch > 4096 || eval_batch < 1 || eval_batch > 4096)
        return qlab_fail(QLAB_ERR_ARG, "%s: keys 'batch' and 'eval_batch' must be from 1 to 4096", path);
    if (every < 0 || every > steps || warmup < 0 || warmup > steps)
        return qlab_fail(QLAB_ERR_ARG, "%s: keys 'eval_every' and 'warmup_steps' must be from 0 to steps",
                         path);
    if (blocksize < 1 || blocksize > 1 << 20)
        return qlab_fail(QLAB_ERR_ARG, "%s: key 'blocksize' out of range",
                         config_key_origin(cfg, "blocksize"));
    o->steps = steps, o->batch = (int)batch, o->eval_every = (int)every, o->eval_batch = (int)eval_batch;
    o->warmup_steps = warmup, o->blocksize = (int)blocksize;
    o->log_every = steps < 10 ? 1 : 10;
    const char *schedule = config_string(cfg, "schedule");
    if (!strcmp(schedule, "constant"))
        o->schedule = OPTIM_LR_CONSTANT;
    else if (!strcmp(schedule, "cosine"))
        o->schedule = OPTIM_LR_COSINE;
    else
        return qlab_fail(QLAB_ERR_ARG, "%s: key 'schedule' is '%s' (expected constant or cosine)",
                         config_key_origin(cfg, "schedule"), schedule);
    o->max_lr = config_double(cfg, "lr_lora");
    o->min_lr = 0;
    o->grad_clip = config_double(cfg, "grad_clip");
    o->weight_decay = config_double(cfg, "weight_decay");
    o->lora.alpha = (float)config_double(cfg, "lora_alpha");
    o->lora.dropout = (float)config_double(cfg, "lora_dropout");
    if (!(o->max_lr > 0) || !(config_double(cfg, "lr_full") > 0) || !(o->grad_clip >= 0) ||
        !(o->weight_decay >= 0) || !(o->lora.alpha > 0) || !(o->lora.dropout >= 0 && o->lora.dropout < 1))
        return qlab_fail(QLAB_ERR_ARG,
                         "%s: a learning rate, grad_clip, weight_decay, lora_alpha or lora_dropout is "
                         "out of range",
                         path);
    int64_t resident = config_int(cfg, "optimizer_resident_bytes");
    if (resident < 0)
        return qlab_fail(QLAB_ERR_ARG, "%s: key 'optimizer_resident_bytes' must be >= 0",
                         config_key_origin(cfg, "optimizer_resident_bytes"));
    o->optimizer_resident_bytes = (size_t)resident;
    o->checkpointing = config_bool(cfg, "gradient_checkpointing");
    QLAB_TRY(experiment_config_compute(cfg, &o->compute));
    const char *state = config_string(cfg, "optimizer_state");
    if (!strcmp(state, "paged"))
        o->state_kind = OPTIM_STATE_PAGED;
    else if (!strcmp(state, "host"))
        o->state_kind = OPTIM_STATE_HOST;
    else
        return qlab_fail(QLAB_ERR_ARG, "%s: key 'optimizer_state' is '%s' (expected paged or host)",
                         config_key_origin(cfg, "optimizer_state"), state);
    return QLAB_OK;
}

qlab_status finetune_grid_load_task(const config *cfg, finetune_task *t) {
    int64_t max_records = config_int(cfg, "max_records"), heldout = config_int(cfg, "heldout_records"),
            row_len = config_int(cfg, "row_len");
    if (max_records < 0 || max_records > 100000000 || heldout < 1 || heldout > 100000000 || row_len < 8 ||
        row_len > 1 << 20)
        return qlab_fail(QLAB_ERR_ARG, "%s: keys 'max_records', 'heldout_records' or 'row_len' out of range",
                         config_path(cfg));
    return finetune_task_load(t, config_string(cfg, "model_path"), config_string(cfg, "tokenizer_path"),
                              config_string(cfg, "data_path"), (int)max_records, (int)heldout,
                              (uint64_t)config_int(cfg, "split_seed"), (int)row_len);
}

qlab_status finetune_grid_seeds(const config *cfg, int64_t **seeds, int *n) {
    int count = config_array_length(cfg, "seeds");
    if (count < 1 || count > 64)
        return qlab_fail(QLAB_ERR_ARG, "%s: key 'seeds' needs 1 to 64 seeds",
                         config_key_origin(cfg, "seeds"));
    int64_t *s = qlab_calloc((size_t)count, sizeof *s);
    if (!s) return QLAB_ERR_NOMEM;
    for (int i = 0; i < count; i++) {
        s[i] = config_int_at(cfg, "seeds", i);
        for (int j = 0; j < i; j++)
            if (s[j] == s[i]) {
                long long twice = (long long)s[i];
                free(s);
                return qlab_fail(QLAB_ERR_ARG, "%s: key 'seeds' lists %lld twice",
                                 config_key_origin(cfg, "seeds"), twice);
            }
    }
    *seeds = s, *n = count;
    return QLAB_OK;
}

qlab_status finetune_grid_run_experiment(const finetune_experiment *e, const config *cfg,
                                         const char *out_path, int argc, char *const *argv) {
    finetune_options base;
    finetune_cell cells[FINETUNE_GRID_MAX_CELLS];
    int n_cells = 0;
    QLAB_TRY(finetune_grid_options(cfg, &base));
    QLAB_TRY(e->build_grid(cfg, &base, cells, &n_cells));
    qlab_status st;
    int n_seeds = 0, n_done = 0;
    int64_t *seeds = NULL;
    finetune_cell_result res[FINETUNE_GRID_MAX_CELLS];
    memset(res, 0, sizeof res);
    finetune_task task;
    memset(&task, 0, sizeof task);
    results *r = NULL;
    if ((st = finetune_grid_seeds(cfg, &seeds, &n_seeds)) != QLAB_OK) goto done;
    if ((st = finetune_grid_load_task(cfg, &task)) != QLAB_OK) goto done;
    if ((st = results_create(&r, out_path, e->program, cfg, argc, argv)) != QLAB_OK) goto done;
    results_require_rows(r);
    if ((st = experiment_results_compute(r, base.compute)) != QLAB_OK ||
        (st = results_attr_int(r, "seed", seeds[0])) != QLAB_OK ||
        (st = results_attr_string(r, "model", task.model_path)) != QLAB_OK ||
        (st = results_attr_string(r, "tokenizer", task.tokenizer_path)) != QLAB_OK)
        goto done;
    fprintf(stderr, "%s: %s, %lld training / %lld held-out rows of %d tokens, %d configurations x %d seeds\n",
            e->program, task.model_name, (long long)task.train.n_rows, (long long)task.heldout.n_rows,
            task.train.row_len, n_cells, n_seeds);

    progress prog;
    progress_begin(&prog, e->program, (int64_t)n_cells * n_seeds * base.steps);
    int64_t steps_done = 0;
    for (int c = 0; c < n_cells; c++, n_done++)
        if ((st = finetune_run_cell(&task, &cells[c], seeds, n_seeds, config_string(cfg, "save_adapters"),
                                    &prog, &steps_done, &res[c])) != QLAB_OK)
            goto done;
    progress_end(&prog, NULL);

    char note[512];
    snprintf(note, sizeof note, "AdamW moments: %s", res[0].first.state_note);
    if ((st = results_note(r, "optimizer_state", note)) != QLAB_OK) goto done;
    if ((st = results_note(r, "metric", e->metric_note)) != QLAB_OK) goto done;
    if ((st = finetune_write_tables(r, &task, cells, res, n_cells, seeds, n_seeds, e->reference,
                                    e->summary_title)) != QLAB_OK)
        goto done;
    st = results_commit(r);
    r = NULL; /* commit frees the handle, whether or not it succeeded */
    if (st != QLAB_OK) goto done;
    printf("%s: wrote %s\n", e->program, out_path);
    if (config_string(cfg, "save_adapters")[0])
        printf("%s: kept every run in %s/NAME_seedS\n", e->program, config_string(cfg, "save_adapters"));
    for (int c = 0; c < n_cells; c++) {
        double s = 0;
        for (int k = 0; k < n_seeds; k++)
            s += res[c].final_nll[k];
        printf("  %-24s held-out NLL %.4f (mean of %d seeds; base %.4f)\n", cells[c].name, s / n_seeds,
               n_seeds, res[c].initial_nll[0]);
    }
done:
    results_abort(r);
    for (int c = 0; c < n_done; c++)
        finetune_cell_result_free(&res[c]);
    finetune_task_free(&task);
    free(seeds);
    return st;
}
