/* The finetuning loop behind experiments/lora_placement and experiments/qlora_vs_16bit; see finetune.h.
 * One step: B rows from an epoch-wise shuffle, forward with response-only targets, backward, global-norm
 * clipping over the trainable buffer, AdamW at the scheduled learning rate. It is a second loop beside
 * train/train.c because the data (masked rows instead of random windows of a stream) and the parameter set
 * (a LoRA buffer instead of the model's groups) both differ; the curve points reuse train_point. */
#include "train/finetune.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/progress.h"
#include "core/base/rng.h"
#include "core/formats/safetensors.h"
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
    o->lora =
        (lora_config){.targets = LORA_TARGETS_ALL, .rank = 8, .alpha = 16.0f, .dropout = 0.05f, .seed = 1};
    o->batch = 16;
    o->grad_accum = 1;
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
    if (o->grad_accum < 0 || o->grad_accum > 65536)
        return qlab_fail(QLAB_ERR_ARG, "finetune: grad_accum %d must be from 1 to 65536", o->grad_accum);
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
        QLAB_TRY(model_forward_loss(m, rows->tokens + at, rows->targets + at, n, T, &loss));
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

/* ---------------------------------------------------------------- the step-wise job */

struct finetune_job {
    model *m;
    finetune_rows train, heldout; /* views: the caller owns the arrays */
    finetune_options o;
    int accum;
    lora_set *lora;
    float *params, *grads;
    size_t n_trainable;
    optim_adamw adam;
    optim_lr_schedule schedule;
    int *inputs, *targets;
    int64_t *order, cursor; /* this epoch's row order and the next index into it */
    rng_state rng;          /* draws the epoch shuffles */
    int64_t done;           /* optimizer steps taken */
    int64_t cap_train, cap_heldout, tokens_seen;
    double t0, window_loss, lr, last_loss;
    int64_t window_count;
    finetune_result h;
};

static qlab_status job_check(const model *m, const finetune_rows *train, const finetune_rows *heldout,
                             const finetune_options *o) {
    const model_config *cfg = model_get_config(m);
    if (!train || !heldout) return qlab_fail(QLAB_ERR_ARG, "finetune: training or held-out rows missing");
    if (train->row_len != heldout->row_len)
        return qlab_fail(QLAB_ERR_ARG, "finetune: training rows have %d positions, held-out rows %d",
                         train->row_len, heldout->row_len);
    QLAB_TRY(finetune_options_check(o, cfg, train->row_len));
    QLAB_TRY(check_rows(train, "training", cfg->vocab_size));
    QLAB_TRY(check_rows(heldout, "held-out", cfg->vocab_size));
    quant_dtype dt;
    int blocksize, double_quant;
    if (model_get_quantization(m, &dt, &blocksize, &double_quant) && o->mode != FINETUNE_QLORA)
        return qlab_fail(QLAB_ERR_ARG,
                         "finetune: the model is quantized, which only FINETUNE_QLORA can train "
                         "(pass the fp32 base)");
    if (model_is_quantized(m) &&
        (dt != o->base_dtype || blocksize != o->blocksize || !double_quant != !o->double_quant))
        return qlab_fail(QLAB_ERR_ARG,
                         "finetune: the model is already quantized as %s block %d%s, not as the options' "
                         "%s block %d%s",
                         quant_dtype_name(dt), blocksize, double_quant ? " +DQ" : "",
                         quant_dtype_name(o->base_dtype), o->blocksize, o->double_quant ? " +DQ" : "");
    return QLAB_OK;
}

qlab_status finetune_job_create(finetune_job **out, model *m, const finetune_rows *train,
                                const finetune_rows *heldout, const finetune_options *o) {
    *out = NULL;
    QLAB_TRY(job_check(m, train, heldout, o));
    finetune_job *j = qlab_calloc(1, sizeof *j);
    if (!j) return qlab_fail(QLAB_ERR_NOMEM, "finetune: out of memory");
    j->m = m;
    j->train = *train;
    j->heldout = *heldout;
    j->o = *o;
    j->accum = o->grad_accum > 1 ? o->grad_accum : 1;
    finetune_result *h = &j->h;
    const model_config *cfg = model_get_config(m);
    qlab_status st = QLAB_OK;
    if (o->mode == FINETUNE_QLORA && !model_is_quantized(m))
        st = model_quantize(m, o->base_dtype, o->blocksize, o->double_quant);
    size_t n_model;
    float *model_params_buf = model_get_param_buffer(m, &n_model);
    if (st == QLAB_OK && o->mode == FINETUNE_FULL) {
        model_set_all_trainable(m, 1);
        j->grads = model_get_grad_buffer(m, NULL);
        if (!j->grads) st = qlab_fail(QLAB_ERR_NOMEM, "finetune: out of memory for the gradients");
        j->params = model_params_buf;
        j->n_trainable = n_model;
        h->memory.weights = n_model * sizeof(float);
    } else if (st == QLAB_OK) {
        st = lora_create(&j->lora, cfg, &o->lora);
        if (st == QLAB_OK) st = lora_attach(j->lora, m, 1);
        if (st == QLAB_OK) {
            j->params = lora_get_param_buffer(j->lora, &j->n_trainable);
            j->grads = lora_get_grad_buffer(j->lora, NULL);
            h->memory.adapters = lora_param_bytes(j->lora);
            /* model_total_bits counts fp32 tensors at 32 bits and quantized ones at their stored size. */
            h->memory.weights = (size_t)llround(model_total_bits(m) / 8.0);
        }
    }
    h->trainable_params = j->n_trainable;
    h->memory.gradients = j->n_trainable * sizeof(float);
    h->memory.optimizer = 2 * j->n_trainable * sizeof(float);
    h->memory.total = h->memory.weights + h->memory.adapters + h->memory.gradients + h->memory.optimizer;
    model_set_checkpointing(m, o->checkpointing);
    model_set_compute(m, o->compute);
    optim_paging paging = {o->optimizer_resident_bytes, o->optimizer_page_bytes, NULL};
    if (o->state_kind == OPTIM_STATE_PAGED && o->optimizer_resident_bytes == 0)
        qlab_accel_init(); /* a CUDA build with a device pages the moments in unified memory */
    if (st == QLAB_OK)
        st = o->state_kind == OPTIM_STATE_PAGED && o->optimizer_resident_bytes > 0
                 ? optim_adamw_init_paged(&j->adam, j->n_trainable, &paging)
                 : optim_adamw_init(&j->adam, j->n_trainable, o->state_kind);
    if (st == QLAB_OK) {
        h->state_actual = j->adam.m.actual;
        snprintf(h->state_note, sizeof h->state_note, "%s", j->adam.m.note ? j->adam.m.note : "");
        snprintf(h->optimizer_backend, sizeof h->optimizer_backend, "%s",
                 j->adam.pager                           ? "cpu-paged"
                 : j->adam.m.actual == OPTIM_STATE_PAGED ? "cuda-unified"
                                                         : "plain");
    }
    int B = o->batch, T = train->row_len;
    j->inputs = malloc(sizeof(int) * (size_t)B * T);
    j->targets = malloc(sizeof(int) * (size_t)B * T);
    j->order = malloc(sizeof(int64_t) * (size_t)train->n_rows);
    if (st == QLAB_OK && (!j->inputs || !j->targets || !j->order))
        st = qlab_fail(QLAB_ERR_NOMEM, "finetune: out of memory");
    j->schedule = (optim_lr_schedule){o->schedule, o->max_lr, o->min_lr, o->warmup_steps, o->steps};
    rng_seed(&j->rng, o->seed);
    j->cursor = train->n_rows; /* forces a shuffle at the first step */
    j->t0 = qlab_now();
    if (st != QLAB_OK) {
        finetune_job_free(j);
        return st;
    }
    *out = j;
    return QLAB_OK;
}

void finetune_job_free(finetune_job *j) {
    if (!j) return;
    optim_adamw_free(&j->adam);
    free(j->inputs), free(j->targets), free(j->order);
    finetune_result_free(&j->h);
    if (j->lora) {
        lora_detach(j->m);
        lora_free(j->lora);
    }
    free(j);
}

qlab_status finetune_job_set_train_rows(finetune_job *j, const finetune_rows *train) {
    const model_config *cfg = model_get_config(j->m);
    QLAB_TRY(check_rows(train, "training", cfg->vocab_size));
    if (train->row_len > cfg->seq_len)
        return qlab_fail(QLAB_ERR_ARG, "finetune: new training rows of %d positions exceed seq_len %d",
                         train->row_len, cfg->seq_len);
    size_t positions = (size_t)j->o.batch * (size_t)train->row_len;
    int *inputs = malloc(sizeof(int) * positions), *targets = malloc(sizeof(int) * positions);
    int64_t *order = malloc(sizeof(int64_t) * (size_t)train->n_rows);
    if (!inputs || !targets || !order) {
        free(inputs), free(targets), free(order);
        return qlab_fail(QLAB_ERR_NOMEM, "finetune: out of memory for %lld new training rows",
                         (long long)train->n_rows);
    }
    free(j->inputs), free(j->targets), free(j->order);
    j->inputs = inputs, j->targets = targets, j->order = order;
    j->train = *train;
    j->cursor = train->n_rows; /* a fresh shuffle at the next step */
    return QLAB_OK;
}

int64_t finetune_job_steps_done(const finetune_job *j) {
    return j->done;
}
lora_set *finetune_job_adapters(finetune_job *j) {
    return j->lora;
}
const finetune_result *finetune_job_result(const finetune_job *j) {
    return &j->h;
}
double finetune_job_last_loss(const finetune_job *j) {
    return j->last_loss;
}
double finetune_job_lr(const finetune_job *j) {
    return j->lr;
}
int64_t finetune_job_tokens(const finetune_job *j) {
    return j->tokens_seen;
}

/* The held-out evaluation at step 0 (the base before any update): once, unless a saved state brought the
 * curve along. */
static qlab_status job_initial_eval(finetune_job *j) {
    if (j->done > 0 || j->h.n_heldout > 0) return QLAB_OK;
    QLAB_TRY(evaluate(j->m, j->lora, &j->heldout, j->o.eval_batch, (train_point){0, 0, 0, 0, NAN, 0}, j->t0,
                      &j->h, &j->cap_heldout));
    j->h.initial_heldout_nll = j->h.final_heldout_nll;
    return QLAB_OK;
}

qlab_status finetune_job_step(finetune_job *j) {
    const finetune_options *o = &j->o;
    finetune_result *h = &j->h;
    if (j->done >= o->steps)
        return qlab_fail(QLAB_ERR_ARG, "finetune: all %lld steps are done", (long long)o->steps);
    QLAB_TRY(job_initial_eval(j));
    int B = o->batch, T = j->train.row_len;
    double loss_sum = 0;
    int backwards = 0, finite = 1;
    /* grad_accum micro-batches, each forward followed by its own backward (the adapters keep one forward's
     * hidden states), gradients summed and then divided by the number of micro-batches that had one. */
    for (int a = 0; a < j->accum; a++) {
        for (int b = 0; b < B; b++) {
            if (j->cursor == j->train.n_rows) shuffle(j->order, j->train.n_rows, &j->rng), j->cursor = 0;
            size_t from = (size_t)j->order[j->cursor++] * (size_t)T;
            memcpy(j->inputs + (size_t)b * T, j->train.tokens + from, sizeof(int) * (size_t)T);
            memcpy(j->targets + (size_t)b * T, j->train.targets + from, sizeof(int) * (size_t)T);
        }
        float loss = 0;
        QLAB_TRY(model_forward(j->m, j->inputs, j->targets, B, T, NULL, &loss));
        j->tokens_seen += (int64_t)B * T;
        if (model_last_target_count(j->m) == 0) continue; /* prompts only: no gradient to follow */
        if (backwards == 0) {
            if (j->lora)
                lora_zero_grad(j->lora);
            else
                model_zero_grad(j->m);
        }
        QLAB_TRY(model_backward(j->m));
        backwards++;
        loss_sum += loss;
        finite &= isfinite(loss) != 0;
    }
    double loss = backwards ? loss_sum / backwards : NAN, norm = NAN;
    if (backwards > 1) {
        float inv = 1.0f / (float)backwards;
        for (size_t i = 0; i < j->n_trainable; i++)
            j->grads[i] *= inv;
    }
    if (backwards > 0 && finite) norm = optim_clip_grad_norm(j->grads, j->n_trainable, o->grad_clip);
    int64_t s = j->done;
    if (backwards > 0 && (!finite || !isfinite(loss) || !isfinite(norm))) {
        /* a blown-up step is an error to report, not a number to average or an update to apply */
        return train_nonfinite_step("finetune", j->lora ? NULL : j->m, s + 1, finite ? loss : NAN, norm);
    } else if (backwards == 0) {
        h->steps_skipped++; /* batches of prompts only: nothing to learn from */
    } else {
        if (o->grad_clip > 0 && norm > o->grad_clip) h->steps_clipped++;
        j->lr = optim_lr_at(&j->schedule, s);
        int64_t t = j->adam.step + 1;
        optim_adamw_hyper hyper = {(float)j->lr, (float)o->beta1, (float)o->beta2, (float)o->eps,
                                   (float)o->weight_decay};
        double t_update = qlab_now();
        if (j->lora)
            QLAB_TRY(optim_adamw_update_range(&j->adam, j->params, j->grads, 0, j->n_trainable, &hyper, t));
        else /* as in pretraining: decoupled weight decay on the matrices and embeddings, not the gains */
            QLAB_TRY(train_adamw_update_groups(j->m, j->params, j->grads, &j->adam, &hyper, t));
        h->optimizer_seconds += qlab_now() - t_update;
        j->adam.step = t;
        j->window_loss += loss;
        j->window_count++;
    }
    j->last_loss = loss;
    int64_t done = ++j->done;
    if ((done % o->log_every == 0 || done == o->steps) && j->window_count > 0) {
        h->final_train_loss = j->window_loss / (double)j->window_count;
        QLAB_TRY(train_curve_push(
            "finetune", &h->train, &h->n_train, &j->cap_train,
            (train_point){done, j->tokens_seen, h->final_train_loss, j->lr, norm, qlab_now() - j->t0}));
        j->window_loss = 0, j->window_count = 0;
    }
    if ((o->eval_every > 0 && done % o->eval_every == 0) || done == o->steps)
        QLAB_TRY(evaluate(j->m, j->lora, &j->heldout, o->eval_batch,
                          (train_point){done, j->tokens_seen, 0, j->lr, NAN, 0}, j->t0, h, &j->cap_heldout));
    return QLAB_OK;
}

qlab_status finetune_job_finish(finetune_job *j, lora_set **adapters_out, finetune_result *out) {
    finetune_result *h = &j->h;
    qlab_status st = QLAB_OK;
    if (j->done < j->o.steps)
        st = qlab_fail(QLAB_ERR_ARG, "finetune: %lld of %lld steps done", (long long)j->done,
                       (long long)j->o.steps);
    if (st == QLAB_OK && h->steps_skipped == j->o.steps)
        st = qlab_fail(QLAB_ERR_NUMERIC,
                       "finetune: every one of the %lld steps had a non-finite loss or "
                       "gradient, or no scored target",
                       (long long)j->o.steps);
    h->seconds = qlab_now() - j->t0;
    h->tokens_per_second = h->seconds > 0 ? (double)j->tokens_seen / h->seconds : 0;
    if (j->adam.pager) h->paging = optim_pager_stats(j->adam.pager);
    if (st == QLAB_OK) {
        *out = *h;
        memset(h, 0, sizeof *h); /* the curves now belong to out */
        if (adapters_out && j->lora) {
            *adapters_out = j->lora;
            j->lora = NULL; /* stays attached to the model */
        }
    }
    finetune_job_free(j);
    return st;
}

qlab_status finetune_run(model *m, const finetune_rows *train, const finetune_rows *heldout,
                         const finetune_options *o, finetune_step_callback callback, void *ctx,
                         lora_set **adapters_out, finetune_result *h) {
    memset(h, 0, sizeof *h);
    if (adapters_out) *adapters_out = NULL;
    finetune_job *j;
    QLAB_TRY(finetune_job_create(&j, m, train, heldout, o));
    qlab_status st = job_initial_eval(j);
    while (st == QLAB_OK && j->done < o->steps) {
        st = finetune_job_step(j);
        if (st == QLAB_OK && callback) callback(ctx, j->done, o->steps, j->last_loss);
    }
    if (st != QLAB_OK) {
        finetune_job_free(j);
        return st;
    }
    return finetune_job_finish(j, adapters_out, h);
}

/* ---------------------------------------------------------------- resumable state */

/* Everything a run needs to continue exactly where it stopped, in one safetensors file written atomically:
 * the trainable values, AdamW's moments and step, the batch-order rng, this epoch's order and the cursor,
 * the adapters' dropout stream, the curves so far and the counters, plus a fingerprint of the options and
 * data so that a state is never continued under another configuration. Doubles in the metadata are written
 * in C's exact hexadecimal form. */
static void job_fingerprint(const finetune_job *j, char *buf, size_t size) {
    const finetune_options *o = &j->o;
    snprintf(buf, size,
             "mode=%s dtype=%d block=%d dq=%d targets=%u r=%d alpha=%a dropout=%a lora_seed=%llu batch=%d "
             "accum=%d steps=%lld schedule=%d warmup=%lld lr=%a min_lr=%a wd=%a betas=%a,%a eps=%a clip=%a "
             "seed=%llu rows=%lld row_len=%d heldout=%lld trainable=%zu",
             finetune_mode_name(o->mode), (int)o->base_dtype, o->blocksize, o->double_quant, o->lora.targets,
             o->lora.rank, (double)o->lora.alpha, (double)o->lora.dropout, (unsigned long long)o->lora.seed,
             o->batch, j->accum, (long long)o->steps, (int)o->schedule, (long long)o->warmup_steps, o->max_lr,
             o->min_lr, o->weight_decay, o->beta1, o->beta2, o->eps, o->grad_clip,
             (unsigned long long)o->seed, (long long)j->train.n_rows, j->train.row_len,
             (long long)j->heldout.n_rows, j->n_trainable);
}

static qlab_status meta_put(safetensors_writer *w, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static qlab_status meta_put(safetensors_writer *w, const char *key, const char *fmt, ...) {
    char buf[64];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return safetensors_writer_set_metadata(w, key, buf);
}

/* train_point as 6 doubles: step, tokens, loss, lr, grad_norm, seconds. */
static double *curve_pack(const train_point *c, int64_t n) {
    double *d = malloc(sizeof(double) * 6 * (size_t)(n ? n : 1));
    for (int64_t i = 0; d && i < n; i++) {
        double *r = d + 6 * i;
        r[0] = (double)c[i].step, r[1] = (double)c[i].tokens, r[2] = c[i].loss, r[3] = c[i].lr;
        r[4] = c[i].grad_norm, r[5] = c[i].seconds;
    }
    return d;
}

qlab_status finetune_job_save_state(const finetune_job *j, const char *path) {
    safetensors_writer *w = safetensors_writer_new();
    size_t n_streams = j->lora ? lora_num_adapters(j->lora) : 0;
    uint64_t *stream = malloc(sizeof(uint64_t) * (n_streams ? n_streams : 1));
    double *train = curve_pack(j->h.train, j->h.n_train), *held = curve_pack(j->h.heldout, j->h.n_heldout);
    qlab_status st = QLAB_OK;
    if (!w || !stream || !train || !held) st = qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", path);
    char fp[768];
    job_fingerprint(j, fp, sizeof fp);
    int64_t n = (int64_t)j->n_trainable, rows = j->train.n_rows;
    int64_t rng_shape[1] = {4}, s_shape[1] = {(int64_t)n_streams};
    int64_t ct[2] = {j->h.n_train, 6}, ch[2] = {j->h.n_heldout, 6};
    if (j->lora) lora_get_stream(j->lora, stream);
    if (st == QLAB_OK) st = safetensors_writer_add(w, "params", SAFETENSORS_F32, 1, &n, j->params);
    /* The moments through optim_adamw_state_copy: they may be paged out of memory. */
    float *mm = malloc(sizeof(float) * (size_t)(n ? n : 1)),
          *vv = malloc(sizeof(float) * (size_t)(n ? n : 1));
    if (st == QLAB_OK && (!mm || !vv)) st = qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", path);
    if (st == QLAB_OK) st = optim_adamw_state_copy((optim_adamw *)&j->adam, 0, j->n_trainable, mm, vv, 0);
    if (st == QLAB_OK) st = safetensors_writer_add(w, "adam.m", SAFETENSORS_F32, 1, &n, mm);
    if (st == QLAB_OK) st = safetensors_writer_add(w, "adam.v", SAFETENSORS_F32, 1, &n, vv);
    if (st == QLAB_OK) st = safetensors_writer_add(w, "order", SAFETENSORS_I64, 1, &rows, j->order);
    if (st == QLAB_OK) st = safetensors_writer_add(w, "rng", SAFETENSORS_U64, 1, rng_shape, j->rng.s);
    if (st == QLAB_OK) st = safetensors_writer_add(w, "lora_stream", SAFETENSORS_U64, 1, s_shape, stream);
    if (st == QLAB_OK) st = safetensors_writer_add(w, "curve_train", SAFETENSORS_F64, 2, ct, train);
    if (st == QLAB_OK) st = safetensors_writer_add(w, "curve_heldout", SAFETENSORS_F64, 2, ch, held);
    if (st == QLAB_OK) st = safetensors_writer_set_metadata(w, "qlab_finetune_state", fp);
    if (st == QLAB_OK) st = meta_put(w, "done", "%lld", (long long)j->done);
    if (st == QLAB_OK) st = meta_put(w, "cursor", "%lld", (long long)j->cursor);
    if (st == QLAB_OK) st = meta_put(w, "adam_step", "%lld", (long long)j->adam.step);
    if (st == QLAB_OK) st = meta_put(w, "tokens_seen", "%lld", (long long)j->tokens_seen);
    if (st == QLAB_OK) st = meta_put(w, "window_loss", "%a", j->window_loss);
    if (st == QLAB_OK) st = meta_put(w, "window_count", "%lld", (long long)j->window_count);
    if (st == QLAB_OK) st = meta_put(w, "lr", "%a", j->lr);
    if (st == QLAB_OK) st = meta_put(w, "last_loss", "%a", j->last_loss);
    if (st == QLAB_OK) st = meta_put(w, "steps_clipped", "%lld", (long long)j->h.steps_clipped);
    if (st == QLAB_OK) st = meta_put(w, "steps_skipped", "%lld", (long long)j->h.steps_skipped);
    if (st == QLAB_OK) st = meta_put(w, "initial_heldout_nll", "%a", j->h.initial_heldout_nll);
    if (st == QLAB_OK) st = meta_put(w, "final_heldout_nll", "%a", j->h.final_heldout_nll);
    if (st == QLAB_OK) st = meta_put(w, "final_train_loss", "%a", j->h.final_train_loss);
    if (st == QLAB_OK) st = meta_put(w, "heldout_scored", "%lld", (long long)j->h.heldout_scored);
    if (st == QLAB_OK) st = meta_put(w, "seconds", "%a", qlab_now() - j->t0);
    if (st == QLAB_OK) st = safetensors_writer_write(w, path);
    safetensors_writer_free(w);
    free(stream), free(train), free(held), free(mm), free(vv);
    return st == QLAB_OK ? QLAB_OK : qlab_fail_context(st, "saving the finetuning state to %s", path);
}

static qlab_status meta_get(const safetensors_file *f, const char *key, int is_double, double *d,
                            int64_t *i) {
    const char *v = safetensors_metadata(f, key);
    char *end = NULL;
    if (v && is_double) *d = strtod(v, &end);
    if (v && !is_double) *i = strtoll(v, &end, 10);
    if (!v || end == v || *end)
        return qlab_fail(QLAB_ERR_FORMAT, "%s: metadata \"%s\" is missing or malformed", f->path, key);
    return QLAB_OK;
}

static qlab_status curve_unpack(const safetensors_file *f, const char *name, train_point **out, int64_t *n,
                                int64_t *cap) {
    const safetensors_tensor *t;
    QLAB_TRY(safetensors_require(f, name, &t));
    if (t->dtype != SAFETENSORS_F64 || t->ndim != 2 || t->shape[1] != 6)
        return qlab_fail(QLAB_ERR_FORMAT, "%s: tensor %s is not an (n, 6) F64 curve", f->path, name);
    double *d = malloc(t->nbytes ? t->nbytes : 1);
    if (!d) return QLAB_ERR_NOMEM;
    memcpy(d, t->data, t->nbytes);
    qlab_status st = QLAB_OK;
    for (int64_t k = 0; k < t->shape[0] && st == QLAB_OK; k++) {
        const double *r = d + 6 * k;
        st = train_curve_push("finetune", out, n, cap,
                              (train_point){(int64_t)r[0], (int64_t)r[1], r[2], r[3], r[4], r[5]});
    }
    free(d);
    return st;
}

qlab_status finetune_job_load_state(finetune_job *j, const char *path) {
    safetensors_file f;
    QLAB_TRY(safetensors_open(&f, path));
    char fp[768];
    job_fingerprint(j, fp, sizeof fp);
    qlab_status st = QLAB_OK;
    const char *saved = safetensors_metadata(&f, "qlab_finetune_state");
    if (!saved)
        st = qlab_fail(QLAB_ERR_FORMAT, "%s: not a qlab finetuning state (no qlab_finetune_state metadata)",
                       path);
    else if (strcmp(saved, fp) != 0)
        st = qlab_fail(
            QLAB_ERR_ARG,
            "%s: the saved run used other options or data (saved: %s; now: %s); resume with the same "
            "command",
            path, saved, fp);
    int64_t n = (int64_t)j->n_trainable, done = 0, cursor = 0, adam_step = 0, tokens = 0, wc = 0, clipped = 0,
            skipped = 0, scored = 0;
    double wl = 0, lr = 0, last = 0, init = 0, fin = 0, ftl = 0, secs = 0;
    size_t n_streams = j->lora ? lora_num_adapters(j->lora) : 0;
    uint64_t *stream = malloc(sizeof(uint64_t) * (n_streams ? n_streams : 1));
    float *params = malloc(sizeof(float) * (size_t)n), *mm = malloc(sizeof(float) * (size_t)n),
          *vv = malloc(sizeof(float) * (size_t)n);
    int64_t *order = malloc(sizeof(int64_t) * (size_t)j->train.n_rows);
    uint64_t rng[4];
    if (st == QLAB_OK && (!stream || !params || !mm || !vv || !order))
        st = qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", path);
    if (st == QLAB_OK) st = safetensors_read_raw(&f, "params", SAFETENSORS_F32, params, n);
    if (st == QLAB_OK) st = safetensors_read_raw(&f, "adam.m", SAFETENSORS_F32, mm, n);
    if (st == QLAB_OK) st = safetensors_read_raw(&f, "adam.v", SAFETENSORS_F32, vv, n);
    if (st == QLAB_OK) st = safetensors_read_raw(&f, "order", SAFETENSORS_I64, order, j->train.n_rows);
    if (st == QLAB_OK) st = safetensors_read_raw(&f, "rng", SAFETENSORS_U64, rng, 4);
    if (st == QLAB_OK)
        st = safetensors_read_raw(&f, "lora_stream", SAFETENSORS_U64, stream, (int64_t)n_streams);
    if (st == QLAB_OK) st = meta_get(&f, "done", 0, NULL, &done);
    if (st == QLAB_OK) st = meta_get(&f, "cursor", 0, NULL, &cursor);
    if (st == QLAB_OK) st = meta_get(&f, "adam_step", 0, NULL, &adam_step);
    if (st == QLAB_OK) st = meta_get(&f, "tokens_seen", 0, NULL, &tokens);
    if (st == QLAB_OK) st = meta_get(&f, "window_loss", 1, &wl, NULL);
    if (st == QLAB_OK) st = meta_get(&f, "window_count", 0, NULL, &wc);
    if (st == QLAB_OK) st = meta_get(&f, "lr", 1, &lr, NULL);
    if (st == QLAB_OK) st = meta_get(&f, "last_loss", 1, &last, NULL);
    if (st == QLAB_OK) st = meta_get(&f, "steps_clipped", 0, NULL, &clipped);
    if (st == QLAB_OK) st = meta_get(&f, "steps_skipped", 0, NULL, &skipped);
    if (st == QLAB_OK) st = meta_get(&f, "initial_heldout_nll", 1, &init, NULL);
    if (st == QLAB_OK) st = meta_get(&f, "final_heldout_nll", 1, &fin, NULL);
    if (st == QLAB_OK) st = meta_get(&f, "final_train_loss", 1, &ftl, NULL);
    if (st == QLAB_OK) st = meta_get(&f, "heldout_scored", 0, NULL, &scored);
    if (st == QLAB_OK) st = meta_get(&f, "seconds", 1, &secs, NULL);
    if (st == QLAB_OK && (done < 0 || done > j->o.steps || cursor < 0 || cursor > j->train.n_rows))
        st = qlab_fail(QLAB_ERR_FORMAT, "%s: step %lld or data position %lld out of range", path,
                       (long long)done, (long long)cursor);
    for (int64_t i = 0; st == QLAB_OK && i < j->train.n_rows; i++)
        if (order[i] < 0 || order[i] >= j->train.n_rows)
            st = qlab_fail(QLAB_ERR_FORMAT, "%s: the saved row order holds %lld", path, (long long)order[i]);
    train_point *ct = NULL, *ch = NULL;
    int64_t nt = 0, nh = 0, capt = 0, caph = 0;
    if (st == QLAB_OK) st = curve_unpack(&f, "curve_train", &ct, &nt, &capt);
    if (st == QLAB_OK) st = curve_unpack(&f, "curve_heldout", &ch, &nh, &caph);
    if (st == QLAB_OK) st = optim_adamw_state_copy(&j->adam, 0, j->n_trainable, mm, vv, 1);
    if (st == QLAB_OK) {
        /* All checked (the moments, written first, are the only part that can fail): the job changes now. */
        memcpy(j->params, params, sizeof(float) * (size_t)n);
        memcpy(j->order, order, sizeof(int64_t) * (size_t)j->train.n_rows);
        memcpy(j->rng.s, rng, sizeof rng);
        if (j->lora) lora_set_stream(j->lora, stream);
        j->done = done, j->cursor = cursor, j->adam.step = adam_step, j->tokens_seen = tokens;
        j->window_loss = wl, j->window_count = wc, j->lr = lr, j->last_loss = last;
        j->h.steps_clipped = clipped, j->h.steps_skipped = skipped, j->h.initial_heldout_nll = init;
        j->h.final_heldout_nll = fin, j->h.final_train_loss = ftl, j->h.heldout_scored = scored;
        free(j->h.train), free(j->h.heldout);
        j->h.train = ct, j->h.n_train = nt, j->cap_train = capt;
        j->h.heldout = ch, j->h.n_heldout = nh, j->cap_heldout = caph;
        ct = ch = NULL;
        j->t0 = qlab_now() - secs;
    }
    free(ct), free(ch);
    free(stream), free(params), free(mm), free(vv), free(order);
    safetensors_close(&f);
    return st;
}
