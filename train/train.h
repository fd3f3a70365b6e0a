/* Pretraining a LLaMA-architecture model from scratch on a token stream: random windows as batches,
 * AdamW (no weight decay on the norm gains), linear warmup then cosine decay, global gradient clipping,
 * and a held-out loss measured every few steps on fixed windows. Deterministic for a given seed and
 * thread count: batches come from core/base/rng.h and the model's kernels have a fixed reduction order. */
#ifndef QLAB_EVAL_TRAIN_H
#define QLAB_EVAL_TRAIN_H

#include <stdint.h>

#include "core/base/common.h"
#include "core/model/model.h"
#include "core/model/optim.h"

typedef struct {
    int batch;            /* sequences per step */
    int seq_len;          /* tokens per sequence (<= the model's seq_len) */
    int64_t steps;        /* optimizer steps */
    int64_t warmup_steps; /* linear warmup, then cosine down to min_lr at the last step */
    double max_lr, min_lr;
    double weight_decay, beta1, beta2, eps;
    double grad_clip;     /* global L2 norm limit (0 = no clipping) */
    int checkpointing;    /* gradient checkpointing (model_set_checkpointing): same gradients, less memory */
    qlab_compute compute; /* matrix products in fp32 (default) or bf16 (model_set_compute) */
    int log_every;        /* record the training loss every this many steps (and at the last) */
    int eval_every;       /* held-out loss every this many steps (and at the first and last); 0 = only
                             at the end */
    int eval_windows;     /* held-out windows of seq_len+1 tokens per evaluation */
    uint64_t seed;        /* batch order */
} train_options;

/* Fills the fields with the defaults used by the zoo (callers then set steps, lr, ...). */
void train_options_default(train_options *o);
/* Checks the fields (positive sizes, lr schedule valid, ...); one line naming the field. */
qlab_status train_options_check(const train_options *o, const model_config *cfg);

/* One point of a curve. */
typedef struct {
    int64_t step;     /* optimizer steps taken when measured */
    int64_t tokens;   /* training tokens seen */
    double loss;      /* mean cross-entropy, nats/token */
    double lr;        /* learning rate of the last step (0 before the first) */
    double grad_norm; /* norm before clipping (training points only; NAN for held-out) */
    double seconds;   /* wall time since the start */
} train_point;

typedef struct {
    int64_t n_train, n_heldout;
    train_point *train;      /* logged training losses (loss of that step's batch, before its update) */
    train_point *heldout;    /* held-out losses */
    int64_t steps_clipped;   /* steps whose gradient norm exceeded grad_clip */
    int64_t steps_skipped;   /* finetuning: batches with no scored target; a non-finite loss or gradient
                              * norm stops the run (train_nonfinite_step) */
    double final_train_loss; /* mean training loss over the last log_every steps */
    double final_heldout_loss;
    double seconds, tokens_per_second;
} train_history;

void train_history_free(train_history *h);

/* Initialises the parameters for training from scratch (GPT-2 / llm.c scheme): every matrix N(0, 0.02),
 * the two residual output projections (wo, w2) scaled by 1/sqrt(2 n_layers), RMSNorm gains 1. */
void train_init_params(model *m, uint64_t seed);

/* Mean next-token loss of m on `windows` windows of seq_len+1 tokens spread evenly over tokens[0..n),
 * batch windows per forward pass. */
qlab_status train_heldout_loss(model *m, const int *tokens, int64_t n, int seq_len, int windows, int batch,
                               double *loss);

/* Building blocks shared with finetuning (train/finetune.c). */

/* Appends p to a growable curve (*cap points allocated); who starts the out-of-memory line ("train"). */
qlab_status train_curve_push(const char *who, train_point **curve, int64_t *n, int64_t *cap, train_point p);

/* One AdamW update, step number t, of every trainable parameter group of m, whose values and gradients are
 * params / grads and moments adam->m / adam->v (flat, in model parameter order): hyper's weight decay on the
 * matrices and embeddings, none on the RMSNorm gains. Leaves adam->step to the caller. */
/* The error for a step whose loss or gradient norm is not finite: "<who>: step N: the loss is nan", or the
 * first tensor whose gradient holds NaN/Inf when m is given (else the norm). Returns QLAB_ERR_NUMERIC. */
qlab_status train_nonfinite_step(const char *who, model *m, int64_t step, double loss, double norm);
qlab_status train_adamw_update_groups(model *m, float *params, const float *grads, optim_adamw *adam,
                                      const optim_adamw_hyper *hyper, int64_t t);

/* Called after every step (may be NULL): step done so far, total, and that step's loss. */
typedef void (*train_step_callback)(void *ctx, int64_t step, int64_t total, double loss);

/* Trains m in place. Needs n_train >= seq_len+1 and n_heldout >= seq_len+1. Fills *history (free it with
 * train_history_free). Fails on a model error or when every step of a log interval was non-finite. */
qlab_status train_run(model *m, const int *train_tokens, int64_t n_train, const int *heldout_tokens,
                      int64_t n_heldout, const train_options *opt, train_step_callback callback, void *ctx,
                      train_history *history);

#endif
