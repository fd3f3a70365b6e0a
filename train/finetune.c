/* The finetuning loop behind experiments/lora_placement and experiments/qlora_vs_16bit; see finetune.h.
 * One step: B rows from an epoch-wise shuffle, forward with response-only targets, backward, global-norm
 * clipping over the trainable buffer, AdamW at the scheduled learning rate. It is a second loop beside
 * train/train.c because the data (masked rows instead of random windows of a stream) and the parameter set
 * (a LoRA buffer instead of the model's groups) both differ; the curve points reuse train_point. */
#include "train/finetune.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/progress.h"
#include "core/base/rng.h"
#include "kernels/accel.h"

static const char *const mode_names[FINETUNE_MODE_COUNT] = {"full", "lora", "qlora"};

const char *finetune_mode_name(finetune_mode mode) {
    return mode >= 0 && mode < FINETUNE_MODE_COUNT ? mode_names[mode] : "unknown";
}

qlab_status finetune_mode_parse(const char *name, finetune_mode *mode) {
    for (int i = 0; i < FINETUNE_MODE_COUNT; i++)
        if (name && !strcmp(name, mode_names[i])) {
            *mode = (finetune_mode)i;
            return QLAB_OK;
        }
    return qlab_fail(QLAB_ERR_ARG, "unknown finetuning mode '%s' (expected full, lora or qlora)",
                     name ? name : "(null)");
}

void finetune_options_default(finetune_options *o) {
    memset(o, 0, sizeof *o);
    o->mode = FINETUNE_QLORA;
    o->base_dtype = QUANT_NF4;
    o->blocksize = 64;
    o->double_quant = 1;
    o->lora = (lora_config){LORA_TARGETS_ALL, 8, 16.0f, 0.05f, 1};
    o->batch = 16;
    o->steps = 100;
    o->schedule = OPTIM_LR_CONSTANT;
    o->warmup_steps = 0;
    o->max_lr = 2e-4;
    o->min_lr = 0;
    o->weight_decay = 0;
    o->beta1 = 0.9;
    o->beta2 = 0.999;
    o->eps = 1e-8;
    o->grad_clip = 0.3;
    o->log_every = 10;
    o->eval_every = 50;
    o->eval_batch = 32;
    o->state_kind = OPTIM_STATE_PAGED;
    o->seed = 1;
}

qlab_status finetune_options_check(const finetune_options *o, const model_config *cfg, int row_len) {
    if (o->mode < 0 || o->mode >= FINETUNE_MODE_COUNT)
        return qlab_fail(QLAB_ERR_ARG, "finetune: mode %d out of range", (int)o->mode);
    if (row_len < 1 || row_len > cfg->seq_len)
        return qlab_fail(QLAB_ERR_ARG, "finetune: row length %d must be from 1 to the model's seq_len %d",
                         row_len, cfg->seq_len);
    if (o->batch < 1 || o->batch > 4096 || o->eval_batch < 1 || o->eval_batch > 4096)
        return qlab_fail(QLAB_ERR_ARG, "finetune: batch %d and eval_batch %d must be from 1 to 4096",
                         o->batch, o->eval_batch);
    if (o->steps < 1 || o->steps > ((int64_t)1 << 40))
        return qlab_fail(QLAB_ERR_ARG, "finetune: steps %lld out of range", (long long)o->steps);
    if (!(o->weight_decay >= 0) || !(o->beta1 >= 0 && o->beta1 < 1) || !(o->beta2 >= 0 && o->beta2 < 1) ||
        !(o->eps > 0) || !(o->grad_clip >= 0))
        return qlab_fail(QLAB_ERR_ARG,
                         "finetune: AdamW hyper-parameters out of range (weight_decay %g, betas "
                         "%g %g, eps %g, grad_clip %g)",
                         o->weight_decay, o->beta1, o->beta2, o->eps, o->grad_clip);
    if (o->log_every < 1 || o->eval_every < 0)
        return qlab_fail(QLAB_ERR_ARG, "finetune: log_every (%d) must be >= 1 and eval_every (%d) >= 0",
                         o->log_every, o->eval_every);
    if (o->mode != FINETUNE_FULL) {
        if (o->lora.targets == 0 || (o->lora.targets & ~LORA_TARGETS_ALL))
            return qlab_fail(QLAB_ERR_ARG, "finetune: LoRA target mask 0x%x is empty or names no projection",
                             o->lora.targets);
        if (o->lora.rank < 1 || o->lora.rank > 65536 || !(o->lora.alpha > 0) ||
            !(o->lora.dropout >= 0 && o->lora.dropout < 1))
            return qlab_fail(QLAB_ERR_ARG, "finetune: LoRA rank %d, alpha %g, dropout %g out of range",
                             o->lora.rank, o->lora.alpha, o->lora.dropout);
    }
    if (o->mode == FINETUNE_QLORA) QLAB_TRY(quant_check_blocksize(o->base_dtype, o->blocksize));
    optim_lr_schedule s = {o->schedule, o->max_lr, o->min_lr, o->warmup_steps, o->steps};
    return optim_lr_check(&s);
}

void finetune_result_free(finetune_result *r) {
    if (!r) return;
    free(r->train);
    free(r->heldout);
    memset(r, 0, sizeof *r);
}

/* Checks that every token is in the vocabulary and every target is -1 or in the vocabulary. */
static qlab_status check_rows(const finetune_rows *rows, const char *which, int vocab) {
    if (!rows || !rows->tokens || !rows->targets || rows->n_rows < 1 || rows->row_len < 1)
        return qlab_fail(QLAB_ERR_ARG, "finetune: the %s set is empty", which);
    int64_t n = rows->n_rows * rows->row_len;
    for (int64_t i = 0; i < n; i++) {
        if (rows->tokens[i] < 0 || rows->tokens[i] >= vocab)
            return qlab_fail(QLAB_ERR_ARG,
                             "finetune: %s row %lld position %lld has token %d outside the "
                             "vocabulary (%d)",
                             which, (long long)(i / rows->row_len), (long long)(i % rows->row_len),
                             rows->tokens[i], vocab);
        if (rows->targets[i] < -1 || rows->targets[i] >= vocab)
            return qlab_fail(QLAB_ERR_ARG,
                             "finetune: %s row %lld position %lld has target %d (expected -1 or "
                             "a token below %d)",
                             which, (long long)(i / rows->row_len), (long long)(i % rows->row_len),
                             rows->targets[i], vocab);
    }
    return QLAB_OK;
}

qlab_status finetune_heldout_nll(model *m, const finetune_rows *rows, int eval_batch, double *mean_nll,
                                 int64_t *scored_out) {
    if (!rows || rows->n_rows < 1 || eval_batch < 1)
        return qlab_fail(QLAB_ERR_ARG, "finetune: held-out set empty or eval_batch < 1");
    double sum = 0;
    int64_t scored = 0;
    int T = rows->row_len;
    for (int64_t r0 = 0; r0 < rows->n_rows; r0 += eval_batch) {
        int n = rows->n_rows - r0 < eval_batch ? (int)(rows->n_rows - r0) : eval_batch;
        size_t at = (size_t)r0 * (size_t)T;
        float loss = 0;
        QLAB_TRY(model_forward(m, rows->tokens + at, rows->targets + at, n, T, NULL, &loss));
        int count = model_last_target_count(m);
        if (count > 0 && !isfinite(loss))
            return qlab_fail(QLAB_ERR_NUMERIC, "finetune: held-out NLL is %s on rows %lld..%lld",
                             isnan(loss) ? "nan" : "infinite", (long long)r0, (long long)(r0 + n - 1));
        /* A batch of all-padding rows scores nothing; its loss is not a number to add. */
        if (count > 0) sum += (double)loss * count, scored += count;
    }
    if (scored == 0) return qlab_fail(QLAB_ERR_ARG, "finetune: the held-out rows have no scored target");
    *mean_nll = sum / (double)scored;
    if (scored_out) *scored_out = scored;
    return QLAB_OK;
}

/* Fisher-Yates shuffle of 0..n-1. */
static void shuffle(int64_t *order, int64_t n, rng_state *rng) {
    for (int64_t i = 0; i < n; i++)
        order[i] = i;
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)rng_below(rng, (uint64_t)(i + 1));
        int64_t t = order[i];
        order[i] = order[j], order[j] = t;
    }
}

/* Appends a held-out point (step, tokens and lr given in at) to h->heldout. Evaluation runs without
 * dropout, and lora_set_training leaves the adapters' mask sequence where it was, so evaluating does not
 * change the training trajectory. */
static qlab_status evaluate(model *m, lora_set *lora, const finetune_rows *heldout, int eval_batch,
                            train_point at, double t0, finetune_result *h, int64_t *cap) {
    if (lora) lora_set_training(lora, 0);
    qlab_status st = finetune_heldout_nll(m, heldout, eval_batch, &at.loss, &h->heldout_scored);
    if (lora) lora_set_training(lora, 1);
    QLAB_TRY(st);
    h->final_heldout_nll = at.loss;
    at.seconds = qlab_now() - t0;
    return train_curve_push("finetune", &h->heldout, &h->n_heldout, cap, at);
}

qlab_status finetune_run(model *m, const finetune_rows *train, const finetune_rows *heldout,
                         const finetune_options *o, finetune_step_callback callback, void *ctx,
                         lora_set **adapters_out, finetune_result *h) {
    memset(h, 0, sizeof *h);
    if (adapters_out) *adapters_out = NULL;
    const model_config *cfg = model_get_config(m);
    if (!train || !heldout) return qlab_fail(QLAB_ERR_ARG, "finetune: training or held-out rows missing");
    if (train->row_len != heldout->row_len)
        return qlab_fail(QLAB_ERR_ARG, "finetune: training rows have %d positions, held-out rows %d",
                         train->row_len, heldout->row_len);
    QLAB_TRY(finetune_options_check(o, cfg, train->row_len));
    QLAB_TRY(check_rows(train, "training", cfg->vocab_size));
    QLAB_TRY(check_rows(heldout, "held-out", cfg->vocab_size));
    if (model_get_param_group(m, MODEL_GROUP_WQ).quantized)
        return qlab_fail(QLAB_ERR_ARG, "finetune: the model is already quantized (pass the fp32 base; "
                                       "FINETUNE_QLORA quantizes it)");

    if (o->mode == FINETUNE_QLORA) QLAB_TRY(model_quantize(m, o->base_dtype, o->blocksize, o->double_quant));

    int B = o->batch, T = train->row_len;
    size_t n_model;
    float *model_params_buf = model_get_param_buffer(m, &n_model);
    lora_set *lora = NULL;
    float *params, *grads;
    size_t n_trainable;
    if (o->mode == FINETUNE_FULL) {
        model_set_all_trainable(m, 1);
        grads = model_get_grad_buffer(m, NULL);
        if (!grads) return QLAB_ERR_NOMEM;
        params = model_params_buf;
        n_trainable = n_model;
        h->memory.weights = n_model * sizeof(float);
    } else {
        QLAB_TRY(lora_create(&lora, cfg, &o->lora));
        qlab_status st = lora_attach(lora, m, 1);
        if (st != QLAB_OK) {
            lora_free(lora);
            return st;
        }
        params = lora_get_param_buffer(lora, &n_trainable);
        grads = lora_get_grad_buffer(lora, NULL);
        h->memory.adapters = lora_param_bytes(lora);
        /* model_total_bits counts fp32 tensors at 32 bits and quantized ones at their stored size. */
        h->memory.weights = (size_t)llround(model_total_bits(m) / 8.0);
    }
    h->trainable_params = n_trainable;
    h->memory.gradients = n_trainable * sizeof(float);
    h->memory.optimizer = 2 * n_trainable * sizeof(float);
    h->memory.total = h->memory.weights + h->memory.adapters + h->memory.gradients + h->memory.optimizer;

    optim_adamw adam;
    memset(&adam, 0, sizeof adam);
    optim_paging paging = {o->optimizer_resident_bytes, o->optimizer_page_bytes, NULL};
    if (o->state_kind == OPTIM_STATE_PAGED && o->optimizer_resident_bytes == 0)
        qlab_accel_init(); /* a CUDA build with a device pages the moments in unified memory */
    qlab_status st = o->state_kind == OPTIM_STATE_PAGED && o->optimizer_resident_bytes > 0
                         ? optim_adamw_init_paged(&adam, n_trainable, &paging)
                         : optim_adamw_init(&adam, n_trainable, o->state_kind);
    if (st == QLAB_OK) {
        h->state_actual = adam.m.actual;
        snprintf(h->state_note, sizeof h->state_note, "%s", adam.m.note ? adam.m.note : "");
    }
    int *inputs = malloc(sizeof(int) * (size_t)B * T), *targets = malloc(sizeof(int) * (size_t)B * T);
    int64_t *order = malloc(sizeof(int64_t) * (size_t)train->n_rows);
    if (st == QLAB_OK && (!inputs || !targets || !order))
        st = qlab_fail(QLAB_ERR_NOMEM, "finetune: out of memory");

    optim_lr_schedule schedule = {o->schedule, o->max_lr, o->min_lr, o->warmup_steps, o->steps};
    rng_state rng;
    rng_seed(&rng, o->seed);
    int64_t cap_train = 0, cap_heldout = 0, cursor = train->n_rows; /* forces a shuffle at the first step */
    double t0 = qlab_now(), window_loss = 0, lr = 0;
    int window_count = 0;
    int64_t tokens_seen = 0;

    if (st == QLAB_OK)
        st =
            evaluate(m, lora, heldout, o->eval_batch, (train_point){0, 0, 0, 0, NAN, 0}, t0, h, &cap_heldout);
    if (st == QLAB_OK) h->initial_heldout_nll = h->final_heldout_nll;
    for (int64_t s = 0; st == QLAB_OK && s < o->steps; s++) {
        for (int b = 0; b < B; b++) {
            if (cursor == train->n_rows) shuffle(order, train->n_rows, &rng), cursor = 0;
            size_t from = (size_t)order[cursor++] * (size_t)T;
            memcpy(inputs + (size_t)b * T, train->tokens + from, sizeof(int) * (size_t)T);
            memcpy(targets + (size_t)b * T, train->targets + from, sizeof(int) * (size_t)T);
        }
        float loss = 0;
        st = model_forward(m, inputs, targets, B, T, NULL, &loss);
        if (st != QLAB_OK) break;
        tokens_seen += (int64_t)B * T;
        double norm = NAN;
        if (model_last_target_count(m) > 0) { /* a batch of prompts only has no gradient to follow */
            if (lora)
                lora_zero_grad(lora);
            else
                model_zero_grad(m);
            st = model_backward(m);
            if (st != QLAB_OK) break;
            norm = optim_clip_grad_norm(grads, n_trainable, o->grad_clip);
        }
        if (model_last_target_count(m) > 0 && (!isfinite(loss) || !isfinite(norm))) {
            /* a blown-up step is an error to report, not a number to average or an update to apply */
            st = train_nonfinite_step("finetune", lora ? NULL : m, s + 1, loss, norm);
            break;
        } else if (!isfinite(loss) || !isfinite(norm)) {
            h->steps_skipped++; /* a batch of prompts only: nothing to learn from */
        } else {
            if (o->grad_clip > 0 && norm > o->grad_clip) h->steps_clipped++;
            lr = optim_lr_at(&schedule, s);
            int64_t t = adam.step + 1;
            optim_adamw_hyper hyper = {(float)lr, (float)o->beta1, (float)o->beta2, (float)o->eps,
                                       (float)o->weight_decay};
            if (lora)
                st = optim_adamw_update_range(&adam, params, grads, 0, n_trainable, &hyper, t);
            else /* as in pretraining: decoupled weight decay on the matrices and embeddings, not the gains */
                st = train_adamw_update_groups(m, params, grads, &adam, &hyper, t);
            adam.step = t;
            window_loss += loss;
            window_count++;
        }
        int64_t done = s + 1;
        if (st == QLAB_OK && (done % o->log_every == 0 || done == o->steps) && window_count > 0) {
            h->final_train_loss = window_loss / window_count;
            st = train_curve_push(
                "finetune", &h->train, &h->n_train, &cap_train,
                (train_point){done, tokens_seen, h->final_train_loss, lr, norm, qlab_now() - t0});
            window_loss = 0, window_count = 0;
        }
        if (st == QLAB_OK && ((o->eval_every > 0 && done % o->eval_every == 0) || done == o->steps))
            st = evaluate(m, lora, heldout, o->eval_batch, (train_point){done, tokens_seen, 0, lr, NAN, 0},
                          t0, h, &cap_heldout);
        if (st == QLAB_OK && callback) callback(ctx, done, o->steps, loss);
    }
    if (st == QLAB_OK && h->steps_skipped == o->steps)
        st = qlab_fail(QLAB_ERR_NUMERIC,
                       "finetune: every one of the %lld steps had a non-finite loss or "
                       "gradient, or no scored target",
                       (long long)o->steps);
    h->seconds = qlab_now() - t0;
    h->tokens_per_second = h->seconds > 0 ? (double)tokens_seen / h->seconds : 0;
    if (adam.pager) h->paging = optim_pager_stats(adam.pager);
    optim_adamw_free(&adam);
    free(inputs), free(targets), free(order);
    if (st != QLAB_OK) finetune_result_free(h);
    if (lora) {
        if (st == QLAB_OK && adapters_out) {
            *adapters_out = lora;
        } else {
            lora_detach(m);
            lora_free(lora);
        }
    }
    return st;
}
