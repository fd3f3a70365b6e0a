/* The pretraining loop behind `make zoo`; see train.h. One step: a batch of random windows of the training
 * stream, forward, backward, global-norm clipping, AdamW with the scheduled learning rate. */
#include "train/train.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/model/model_check.h"
#include "core/model/optim.h"
#include "core/base/progress.h"
#include "core/base/rng.h"

void train_options_default(train_options *o) {
    memset(o, 0, sizeof *o);
    o->batch = 8;
    o->seq_len = 256;
    o->steps = 100;
    o->warmup_steps = 10;
    o->max_lr = 3e-3;
    o->min_lr = 3e-4;
    o->weight_decay = 0.1;
    o->beta1 = 0.9;
    o->beta2 = 0.95;
    o->eps = 1e-8;
    o->grad_clip = 1.0;
    o->log_every = 10;
    o->eval_every = 50;
    o->eval_windows = 16;
    o->seed = 1;
}

qlab_status train_options_check(const train_options *o, const model_config *cfg) {
    if (o->batch < 1 || o->batch > 4096)
        return qlab_fail(QLAB_ERR_ARG, "train: batch %d out of range", o->batch);
    if (o->seq_len < 2 || o->seq_len > cfg->seq_len)
        return qlab_fail(QLAB_ERR_ARG, "train: seq_len %d must be from 2 to the model's seq_len %d",
                         o->seq_len, cfg->seq_len);
    if (o->steps < 1 || o->steps > ((int64_t)1 << 40))
        return qlab_fail(QLAB_ERR_ARG, "train: steps %lld out of range", (long long)o->steps);
    if (o->warmup_steps < 0 || o->warmup_steps > o->steps)
        return qlab_fail(QLAB_ERR_ARG, "train: warmup_steps %lld must be from 0 to steps (%lld)",
                         (long long)o->warmup_steps, (long long)o->steps);
    if (!(o->weight_decay >= 0) || !(o->beta1 >= 0 && o->beta1 < 1) || !(o->beta2 >= 0 && o->beta2 < 1) ||
        !(o->eps > 0) || !(o->grad_clip >= 0))
        return qlab_fail(QLAB_ERR_ARG,
                         "train: AdamW hyper-parameters out of range (weight_decay %g, betas %g "
                         "%g, eps %g, grad_clip %g)",
                         o->weight_decay, o->beta1, o->beta2, o->eps, o->grad_clip);
    if (o->log_every < 1 || o->eval_every < 0 || o->eval_windows < 1)
        return qlab_fail(QLAB_ERR_ARG,
                         "train: log_every (%d) and eval_windows (%d) must be >= 1, eval_every (%d) "
                         ">= 0",
                         o->log_every, o->eval_windows, o->eval_every);
    optim_lr_schedule s = {OPTIM_LR_COSINE, o->max_lr, o->min_lr, o->warmup_steps, o->steps};
    return optim_lr_check(&s);
}

void train_history_free(train_history *h) {
    if (!h) return;
    free(h->train);
    free(h->heldout);
    memset(h, 0, sizeof *h);
}

void train_init_params(model *m, uint64_t seed) {
    const model_config *c = model_get_config(m);
    size_t count;
    float *p = model_get_param_buffer(m, &count);
    rng_state rng;
    rng_seed(&rng, seed);
    double residual_scale = 1.0 / sqrt(2.0 * c->n_layers);
    for (int g = 0; g < MODEL_GROUP_COUNT; g++) {
        model_param_group pg = model_get_param_group(m, (model_group)g);
        int is_norm = g == MODEL_GROUP_RMS_ATT || g == MODEL_GROUP_RMS_FFN || g == MODEL_GROUP_RMS_FINAL;
        double std = 0.02 * (g == MODEL_GROUP_WO || g == MODEL_GROUP_W2 ? residual_scale : 1.0);
        for (size_t i = 0; i < pg.count; i++)
            p[pg.offset + i] = is_norm ? 1.0f : (float)(std * rng_normal(&rng));
    }
}

/* Copies `rows` windows of T+1 tokens starting at starts[] into (rows, T) inputs and targets. */
static void fill_batch(const int *stream, const int64_t *starts, int rows, int T, int *inputs, int *targets) {
    for (int b = 0; b < rows; b++) {
        memcpy(inputs + (size_t)b * T, stream + starts[b], sizeof(int) * (size_t)T);
        memcpy(targets + (size_t)b * T, stream + starts[b] + 1, sizeof(int) * (size_t)T);
    }
}

qlab_status train_heldout_loss(model *m, const int *tokens, int64_t n, int seq_len, int windows, int batch,
                               double *loss) {
    if (n < seq_len + 1 || windows < 1 || batch < 1)
        return qlab_fail(QLAB_ERR_ARG,
                         "held-out loss: need at least %d tokens (have %lld), windows and batch >= 1",
                         seq_len + 1, (long long)n);
    int *inputs = malloc(sizeof(int) * (size_t)batch * seq_len),
        *targets = malloc(sizeof(int) * (size_t)batch * seq_len);
    int64_t *starts = malloc(sizeof(int64_t) * (size_t)batch);
    qlab_status st =
        inputs && targets && starts ? QLAB_OK : qlab_fail(QLAB_ERR_NOMEM, "held-out loss: out of memory");
    double sum = 0;
    int64_t scored = 0;
    int64_t last_start = n - seq_len - 1;
    for (int w0 = 0; st == QLAB_OK && w0 < windows; w0 += batch) {
        int rows = windows - w0 < batch ? windows - w0 : batch;
        /* Evenly spaced windows: the same ones at every evaluation, so the curve measures the model only. */
        for (int b = 0; b < rows; b++)
            starts[b] = windows == 1 ? 0 : (int64_t)((double)last_start * (w0 + b) / (windows - 1));
        fill_batch(tokens, starts, rows, seq_len, inputs, targets);
        float batch_loss;
        st = model_forward_loss(m, inputs, targets, rows, seq_len, &batch_loss);
        if (st == QLAB_OK && !isfinite(batch_loss))
            st = qlab_fail(QLAB_ERR_NUMERIC, "held-out loss is %s on windows %d..%d (tokens from %lld)",
                           isnan(batch_loss) ? "nan" : "infinite", w0, w0 + rows - 1, (long long)starts[0]);
        sum += (double)batch_loss * rows * seq_len;
        scored += (int64_t)rows * seq_len;
    }
    free(inputs), free(targets), free(starts);
    if (st == QLAB_OK) *loss = sum / (double)scored;
    return st;
}

qlab_status train_curve_push(const char *who, train_point **curve, int64_t *n, int64_t *cap, train_point p) {
    if (*n == *cap) {
        int64_t c = *cap ? *cap * 2 : 64;
        train_point *grown = realloc(*curve, sizeof **curve * (size_t)c);
        if (!grown) return qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory for the loss curve", who);
        *curve = grown, *cap = c;
    }
    (*curve)[(*n)++] = p;
    return QLAB_OK;
}

qlab_status train_adamw_update_groups(model *m, float *params, const float *grads, optim_adamw *adam,
                                      const optim_adamw_hyper *hyper, int64_t t) {
    qlab_status st = QLAB_OK;
    for (int g = 0; g < MODEL_GROUP_COUNT && st == QLAB_OK; g++) {
        model_param_group pg = model_get_param_group(m, (model_group)g);
        if (!pg.trainable || pg.count == 0) continue;
        int is_norm = g == MODEL_GROUP_RMS_ATT || g == MODEL_GROUP_RMS_FFN || g == MODEL_GROUP_RMS_FINAL;
        optim_adamw_hyper group_hyper = *hyper;
        if (is_norm) group_hyper.weight_decay = 0.0f;
        st = optim_adamw_update_range(adam, params + pg.offset, grads + pg.offset, pg.offset, pg.count,
                                      &group_hyper, t);
    }
    return st;
}

qlab_status train_nonfinite_step(const char *who, model *m, int64_t step, double loss, double norm) {
    if (!isfinite(loss))
        return qlab_fail(QLAB_ERR_NUMERIC, "%s: step %lld: the loss is %s", who, (long long)step,
                         isnan(loss) ? "nan" : "infinite");
    char what[64];
    snprintf(what, sizeof what, "%s: step %lld", who, (long long)step);
    /* name the tensor whose gradient blew up when the model's own gradients were formed */
    if (m && model_check_finite(m, 1, what) != QLAB_OK) return QLAB_ERR_NUMERIC;
    return qlab_fail(QLAB_ERR_NUMERIC, "%s: the gradient norm is %s", what, isnan(norm) ? "nan" : "infinite");
}

/* The state of one train_run: the model and its buffers, the optimizer, the batch and the running log. */
typedef struct {
    model *m;
    const train_options *opt;
    const int *train_tokens, *heldout_tokens;
    int64_t n_train, n_heldout;
    float *params, *grads;
    size_t n_grads;
    optim_adamw adam;
    optim_lr_schedule schedule;
    rng_state rng;
    int *inputs, *targets;
    int64_t *starts;
    int64_t cap_train, cap_heldout, tokens_seen;
    double t0, window_loss, lr;
    int window_count;
    train_history *h;
} train_loop;

static qlab_status train_check_streams(const model_config *cfg, int T, const int *train_tokens,
                                       int64_t n_train, int64_t n_heldout) {
    if (n_train < T + 1 || n_heldout < T + 1)
        return qlab_fail(QLAB_ERR_ARG,
                         "train: need at least %d training and held-out tokens (have %lld and %lld)", T + 1,
                         (long long)n_train, (long long)n_heldout);
    for (int64_t i = 0; i < n_train; i++)
        if (train_tokens[i] < 0 || train_tokens[i] >= cfg->vocab_size)
            return qlab_fail(QLAB_ERR_ARG,
                             "train: token %lld of the training stream is %d, outside the vocabulary "
                             "(%d)",
                             (long long)i, train_tokens[i], cfg->vocab_size);
    return QLAB_OK;
}

/* The held-out loss after `done` steps (0: before the first), appended to the held-out curve. */
static qlab_status train_record_heldout(train_loop *L, int64_t done, double *loss) {
    const train_options *opt = L->opt;
    qlab_status st = train_heldout_loss(L->m, L->heldout_tokens, L->n_heldout, opt->seq_len,
                                        opt->eval_windows, opt->batch, loss);
    if (st != QLAB_OK) {
        if (done == 0)
            qlab_fail_context(st, "train: before step 1");
        else
            qlab_fail_context(st, "train: after step %lld", (long long)done);
        return st;
    }
    return train_curve_push("train", &L->h->heldout, &L->h->n_heldout, &L->cap_heldout,
                            (train_point){done, L->tokens_seen, *loss, L->lr, NAN, qlab_now() - L->t0});
}

/* Step s (from 0): a batch of random windows, forward, backward, clipping and the AdamW update. */
static qlab_status train_step(train_loop *L, int64_t s, float *loss, double *norm) {
    const train_options *opt = L->opt;
    int B = opt->batch, T = opt->seq_len;
    for (int b = 0; b < B; b++)
        L->starts[b] = (int64_t)rng_below(&L->rng, (uint64_t)(L->n_train - T));
    fill_batch(L->train_tokens, L->starts, B, T, L->inputs, L->targets);
    QLAB_TRY(model_forward(L->m, L->inputs, L->targets, B, T, NULL, loss));
    model_zero_grad(L->m);
    QLAB_TRY(model_backward(L->m));
    *norm = optim_clip_grad_norm(L->grads, L->n_grads, opt->grad_clip);
    L->tokens_seen += (int64_t)B * T;
    /* a blown-up step is an error to report, not a number to average or an update to apply */
    if (!isfinite(*loss) || !isfinite(*norm)) return train_nonfinite_step("train", L->m, s + 1, *loss, *norm);
    if (opt->grad_clip > 0 && *norm > opt->grad_clip) L->h->steps_clipped++;
    L->lr = optim_lr_at(&L->schedule, s);
    int64_t t = L->adam.step + 1;
    /* Decoupled weight decay on the matrices and embeddings only; the RMSNorm gains are exempt. */
    optim_adamw_hyper hyper = {(float)L->lr, (float)opt->beta1, (float)opt->beta2, (float)opt->eps,
                               (float)opt->weight_decay};
    qlab_status st = train_adamw_update_groups(L->m, L->params, L->grads, &L->adam, &hyper, t);
    L->adam.step = t;
    L->window_loss += *loss;
    L->window_count++;
    return st;
}

/* The mean training loss of the steps since the last point, appended to the training curve. */
static qlab_status train_record_window(train_loop *L, int64_t done, double norm) {
    if (L->window_count == 0)
        return qlab_fail(QLAB_ERR_NUMERIC,
                         "train: every step from %lld to %lld had a non-finite loss or "
                         "gradient",
                         (long long)(done - L->opt->log_every + 1), (long long)done);
    train_history *h = L->h;
    h->final_train_loss = L->window_loss / L->window_count;
    L->window_loss = 0, L->window_count = 0;
    return train_curve_push(
        "train", &h->train, &h->n_train, &L->cap_train,
        (train_point){done, L->tokens_seen, h->final_train_loss, L->lr, norm, qlab_now() - L->t0});
}

qlab_status train_run(model *m, const int *train_tokens, int64_t n_train, const int *heldout_tokens,
                      int64_t n_heldout, const train_options *opt, train_step_callback callback, void *ctx,
                      train_history *h) {
    memset(h, 0, sizeof *h);
    const model_config *cfg = model_get_config(m);
    QLAB_TRY(train_options_check(opt, cfg));
    model_set_checkpointing(m, opt->checkpointing);
    model_set_compute(m, opt->compute);
    int B = opt->batch, T = opt->seq_len;
    QLAB_TRY(train_check_streams(cfg, T, train_tokens, n_train, n_heldout));
    train_loop L = {.m = m,
                    .opt = opt,
                    .train_tokens = train_tokens,
                    .heldout_tokens = heldout_tokens,
                    .n_train = n_train,
                    .n_heldout = n_heldout,
                    .h = h};
    size_t n_params;
    L.params = model_get_param_buffer(m, &n_params);
    L.grads = model_get_grad_buffer(m, &L.n_grads);
    if (!L.grads) return QLAB_ERR_NOMEM;
    QLAB_TRY(optim_adamw_init(&L.adam, n_params, OPTIM_STATE_HOST));
    L.inputs = malloc(sizeof(int) * (size_t)B * T), L.targets = malloc(sizeof(int) * (size_t)B * T);
    L.starts = malloc(sizeof(int64_t) * (size_t)B);
    qlab_status st =
        L.inputs && L.targets && L.starts ? QLAB_OK : qlab_fail(QLAB_ERR_NOMEM, "train: out of memory");
    L.schedule =
        (optim_lr_schedule){OPTIM_LR_COSINE, opt->max_lr, opt->min_lr, opt->warmup_steps, opt->steps};
    rng_seed(&L.rng, opt->seed);
    L.t0 = qlab_now();
    double heldout;
    if (st == QLAB_OK) st = train_record_heldout(&L, 0, &heldout);
    for (int64_t s = 0; st == QLAB_OK && s < opt->steps; s++) {
        float loss;
        double norm;
        st = train_step(&L, s, &loss, &norm);
        if (st != QLAB_OK) break;
        int64_t done = s + 1;
        if (done % opt->log_every == 0 || done == opt->steps) st = train_record_window(&L, done, norm);
        if (st == QLAB_OK && ((opt->eval_every > 0 && done % opt->eval_every == 0) || done == opt->steps)) {
            st = train_record_heldout(&L, done, &heldout);
            if (st == QLAB_OK) h->final_heldout_loss = heldout;
        }
        if (st == QLAB_OK && callback) callback(ctx, done, opt->steps, loss);
    }
    h->seconds = qlab_now() - L.t0;
    h->tokens_per_second = h->seconds > 0 ? (double)L.tokens_seen / h->seconds : 0;
    optim_adamw_free(&L.adam);
    free(L.inputs), free(L.targets), free(L.starts);
    if (st != QLAB_OK) train_history_free(h);
    return st;
}
