/* Finetuning logs in HDF5 (finetune_log.h). */
#include "train/finetune_log.h"

#include <stdio.h>
#include <sys/resource.h>

#include "core/base/memacct.h"
#include "core/results/results.h"

double finetune_peak_rss_bytes(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
    return (double)ru.ru_maxrss * 1024.0; /* Linux reports kilobytes */
}

static qlab_status curve_table(results *res, const char *name, const char *title, const char *loss_name,
                               const char *loss_desc, const train_point *c, int64_t n) {
    results_table *t;
    QLAB_TRY(results_table_begin(res, &t, name, title));
    QLAB_TRY(results_table_column(t, "step", RESULTS_INT64, "", "optimizer steps done"));
    QLAB_TRY(results_table_column(t, "tokens", RESULTS_INT64, "", "rows x row length processed by training"));
    QLAB_TRY(results_table_column(t, loss_name, RESULTS_FLOAT64, "nats/token", loss_desc));
    QLAB_TRY(results_table_column(t, "lr", RESULTS_FLOAT64, "", "learning rate of the last update"));
    QLAB_TRY(
        results_table_column(t, "grad_norm", RESULTS_FLOAT64, "", "global gradient norm before clipping"));
    QLAB_TRY(
        results_table_column(t, "seconds", RESULTS_FLOAT64, "s", "wall time since the start of the run"));
    for (int64_t i = 0; i < n; i++) {
        QLAB_TRY(results_set_int(t, "step", c[i].step));
        QLAB_TRY(results_set_int(t, "tokens", c[i].tokens));
        QLAB_TRY(results_set_double(t, loss_name, c[i].loss));
        QLAB_TRY(results_set_double(t, "lr", c[i].lr));
        QLAB_TRY(results_set_double(t, "grad_norm", c[i].grad_norm));
        QLAB_TRY(results_set_double(t, "seconds", c[i].seconds));
        QLAB_TRY(results_row_end(t));
    }
    return results_table_end(t);
}

static qlab_status write_all(results *res, const finetune_result *r, const finetune_options *o,
                             const finetune_log_info *info) {
    QLAB_TRY(curve_table(res, "train", "Training loss (response tokens)", "loss",
                         "mean training loss over the log interval", r->train, r->n_train));
    QLAB_TRY(curve_table(res, "heldout", "Held-out response NLL", "nll",
                         "mean NLL of the held-out response tokens (step 0: the base)", r->heldout,
                         r->n_heldout));
    results_table *t;
    QLAB_TRY(results_table_begin(res, &t, "summary", "Finetuning run"));
    static const struct {
        const char *name;
        results_type type;
        const char *unit, *desc;
    } cols[] = {
        {"mode", RESULTS_STRING, "", "full, lora or qlora"},
        {"model", RESULTS_STRING, "", "base checkpoint"},
        {"data", RESULTS_STRING, "", "training data"},
        {"eval_data", RESULTS_STRING, "", "held-out data (or the split of the training data)"},
        {"base_dtype", RESULTS_STRING, "", "4-bit type of the frozen base (qlora)"},
        {"lora_rank", RESULTS_INT64, "", "r"},
        {"lora_alpha", RESULTS_FLOAT64, "", "alpha"},
        {"lora_dropout", RESULTS_FLOAT64, "", "dropout"},
        {"steps", RESULTS_INT64, "", "optimizer steps"},
        {"batch", RESULTS_INT64, "", "rows per micro-batch"},
        {"grad_accum", RESULTS_INT64, "", "micro-batches per step"},
        {"lr", RESULTS_FLOAT64, "", "peak learning rate"},
        {"trainable_params", RESULTS_INT64, "", "trained values"},
        {"initial_heldout_nll", RESULTS_FLOAT64, "nats/token", "held-out NLL of the base"},
        {"final_heldout_nll", RESULTS_FLOAT64, "nats/token", "held-out NLL after training"},
        {"final_train_loss", RESULTS_FLOAT64, "nats/token", "last logged training loss"},
        {"heldout_tokens", RESULTS_INT64, "", "response tokens scored per evaluation"},
        {"steps_clipped", RESULTS_INT64, "", "steps whose gradient norm was clipped"},
        {"steps_skipped", RESULTS_INT64, "", "steps skipped (non-finite or nothing scored)"},
        {"tokens_per_second", RESULTS_FLOAT64, "tokens/s", "training throughput"},
        {"peak_rss_mb", RESULTS_FLOAT64, "MB", "peak resident memory of the process"},
        {"train_state_mb", RESULTS_FLOAT64, "MB", "weights + adapters + gradients + AdamW moments (exact)"},
        {"seconds", RESULTS_FLOAT64, "s", "wall time"},
        {"checkpointing", RESULTS_INT64, "", "1: gradient checkpointing (blocks recomputed in backward)"},
        {"optimizer_backend", RESULTS_STRING, "",
         "where the AdamW moments really lived: plain (host memory), cpu-paged or cuda-unified"},
        {"optimizer_note", RESULTS_STRING, "", "the optimizer state's own description"},
        {"optimizer_pages", RESULTS_INT64, "", "cpu-paged: pages of the state (0 otherwise)"},
        {"optimizer_resident_pages", RESULTS_INT64, "", "cpu-paged: pages held in memory"},
        {"optimizer_pages_in", RESULTS_INT64, "", "cpu-paged: pages read back from the page file"},
        {"optimizer_pages_out", RESULTS_INT64, "", "cpu-paged: pages written to the page file"},
        {"optimizer_bytes_moved", RESULTS_INT64, "bytes", "cpu-paged: bytes read + written"},
        {"optimizer_paging_seconds", RESULTS_FLOAT64, "s", "cpu-paged: time in page-file reads and writes"},
        {"memory_budget_bytes", RESULTS_INT64, "bytes", "memory budget of the run (0 = none)"},
        {"accounted_peak_mb", RESULTS_FLOAT64, "MB", "peak of the memory accounting (all categories)"},
    };
    for (size_t i = 0; i < sizeof cols / sizeof cols[0]; i++)
        QLAB_TRY(results_table_column(t, cols[i].name, cols[i].type, cols[i].unit, cols[i].desc));
    int lora = o->mode != FINETUNE_FULL;
    QLAB_TRY(results_set_string(t, "mode", finetune_mode_name(o->mode)));
    QLAB_TRY(results_set_string(t, "model", info->model_path ? info->model_path : ""));
    QLAB_TRY(results_set_string(t, "data", info->data_path ? info->data_path : ""));
    QLAB_TRY(results_set_string(t, "eval_data", info->eval_path ? info->eval_path : "(split of data)"));
    QLAB_TRY(results_set_string(t, "base_dtype",
                                o->mode == FINETUNE_QLORA ? quant_dtype_name(o->base_dtype) : "fp32"));
    QLAB_TRY(results_set_int(t, "lora_rank", lora ? o->lora.rank : 0));
    QLAB_TRY(results_set_double(t, "lora_alpha", lora ? o->lora.alpha : 0));
    QLAB_TRY(results_set_double(t, "lora_dropout", lora ? o->lora.dropout : 0));
    QLAB_TRY(results_set_int(t, "steps", o->steps));
    QLAB_TRY(results_set_int(t, "batch", o->batch));
    QLAB_TRY(results_set_int(t, "grad_accum", o->grad_accum > 1 ? o->grad_accum : 1));
    QLAB_TRY(results_set_double(t, "lr", o->max_lr));
    QLAB_TRY(results_set_int(t, "trainable_params", (int64_t)r->trainable_params));
    QLAB_TRY(results_set_double(t, "initial_heldout_nll", r->initial_heldout_nll));
    QLAB_TRY(results_set_double(t, "final_heldout_nll", r->final_heldout_nll));
    QLAB_TRY(results_set_double(t, "final_train_loss", r->final_train_loss));
    QLAB_TRY(results_set_int(t, "heldout_tokens", r->heldout_scored));
    QLAB_TRY(results_set_int(t, "steps_clipped", r->steps_clipped));
    QLAB_TRY(results_set_int(t, "steps_skipped", r->steps_skipped));
    QLAB_TRY(results_set_double(t, "tokens_per_second", info->tokens_per_second));
    QLAB_TRY(results_set_double(t, "peak_rss_mb", info->peak_rss_bytes / 1e6));
    QLAB_TRY(results_set_double(t, "train_state_mb", (double)r->memory.total / 1e6));
    QLAB_TRY(results_set_double(t, "seconds", r->seconds));
    QLAB_TRY(results_set_int(t, "checkpointing", o->checkpointing ? 1 : 0));
    QLAB_TRY(
        results_set_string(t, "optimizer_backend", r->optimizer_backend[0] ? r->optimizer_backend : "plain"));
    QLAB_TRY(results_set_string(t, "optimizer_note", r->state_note));
    QLAB_TRY(results_set_int(t, "optimizer_pages", r->paging.pages));
    QLAB_TRY(results_set_int(t, "optimizer_resident_pages", r->paging.resident_slots));
    QLAB_TRY(results_set_int(t, "optimizer_pages_in", r->paging.pages_in));
    QLAB_TRY(results_set_int(t, "optimizer_pages_out", r->paging.pages_out));
    QLAB_TRY(
        results_set_int(t, "optimizer_bytes_moved", (int64_t)(r->paging.bytes_in + r->paging.bytes_out)));
    QLAB_TRY(results_set_double(t, "optimizer_paging_seconds", r->paging.seconds));
    QLAB_TRY(results_set_int(t, "memory_budget_bytes", (int64_t)memacct_get_budget()));
    QLAB_TRY(results_set_double(t, "accounted_peak_mb", (double)memacct_process_peak_total() / 1e6));
    QLAB_TRY(results_row_end(t));
    return results_table_end(t);
}

qlab_status finetune_write_log(const char *path, const finetune_result *r, const finetune_options *o,
                               const finetune_log_info *info, int argc, char *const *argv) {
    results *res;
    QLAB_TRY(results_create(&res, path, "finetune", NULL, argc, argv));
    qlab_status st =
        results_set_compute(res, qlab_compute_name(o->compute), qlab_compute_path_name(o->compute));
    if (st == QLAB_OK) st = write_all(res, r, o, info);
    if (st == QLAB_OK) return results_commit(res);
    results_abort(res);
    return st;
}
