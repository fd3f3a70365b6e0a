/* Finetuning a pretrained model on instruction data (QLoRA §4-5): full fp32 finetuning, LoRA on a frozen
 * fp32 base, or QLoRA (LoRA on a frozen 4-bit base). Data are fixed-length rows of (tokens, targets) with
 * target -1 on prompt and padding, so the loss and the held-out metric are the mean NLL of the response
 * tokens only. AdamW on one flat trainable buffer (the LoRA buffer or the model's parameters), constant or
 * warmup+cosine learning rate, global gradient clipping. Deterministic for a given seed and thread count. */
#ifndef QLAB_EVAL_FINETUNE_H
#define QLAB_EVAL_FINETUNE_H

#include <stddef.h>
#include <stdint.h>

#include "core/base/common.h"
#include "core/model/lora.h"
#include "core/model/model.h"
#include "core/model/optim.h"
#include "core/model/optim_paged.h"
#include "core/quant/quant.h"
#include "train/train.h"

typedef enum {
    FINETUNE_FULL = 0, /* every parameter of the fp32 model trains */
    FINETUNE_LORA,     /* adapters on a frozen fp32 base (the paper's "16-bit LoRA"; fp32 stands in) */
    FINETUNE_QLORA,    /* adapters on a frozen base quantized to a 4-bit type */
    FINETUNE_MODE_COUNT
} finetune_mode;

const char *finetune_mode_name(finetune_mode mode); /* "full", "lora", "qlora" */
qlab_status finetune_mode_parse(const char *name, finetune_mode *mode);

/* n_rows examples of row_len positions each, row-major. targets[i] is the token after tokens[i] or -1
 * where the position is not scored (prompt, padding). */
typedef struct {
    const int *tokens;
    const int *targets;
    int64_t n_rows;
    int row_len;
} finetune_rows;

typedef struct {
    finetune_mode mode;
    /* FINETUNE_QLORA: the base's 4-bit type, block size and double quantization. */
    quant_dtype base_dtype;
    int blocksize;
    int double_quant;
    lora_config lora; /* FINETUNE_LORA and FINETUNE_QLORA */
    int batch;        /* rows per forward (a micro-batch) */
    int grad_accum;   /* micro-batches per optimizer step, gradients averaged (0 counts as 1) */
    int64_t steps;    /* optimizer steps */
    optim_lr_kind schedule;
    int64_t warmup_steps;
    double max_lr, min_lr; /* min_lr: the end of the cosine */
    double weight_decay;   /* full finetuning exempts the RMSNorm gains */
    double beta1, beta2, eps;
    double grad_clip; /* global L2 norm limit (Guanaco: 0.3); 0 = none */
    int log_every;    /* training-loss points every this many steps (and at the last) */
    int eval_every;   /* held-out NLL every this many steps (and at 0 and the last); 0 = ends only */
    int eval_batch;   /* rows per held-out forward */
    optim_state_kind state_kind; /* where the AdamW moments live (paged falls back to host without CUDA) */
    /* With state_kind OPTIM_STATE_PAGED and this > 0, the moments are paged on the CPU (optim_paged.h):
     * this many bytes stay resident, the rest live in a file-backed store. 0: no CPU paging. */
    size_t optimizer_resident_bytes;
    size_t optimizer_page_bytes; /* page size of that store; 0: OPTIM_PAGE_BYTES_DEFAULT (1 MiB) */
    int checkpointing;           /* gradient checkpointing (model_set_checkpointing): same gradients */
    qlab_compute compute;        /* matrix products (base, adapters, held-out NLL): fp32 (default) or bf16 */
    uint64_t seed;               /* batch order (epoch shuffles); the adapters' own seed is lora.seed */
} finetune_options;

/* The Guanaco recipe scaled to a tiny model: LoRA on all linear layers (r 8, alpha 16, dropout 0.05),
 * constant lr 2e-4, AdamW betas 0.9/0.999, no weight decay, max grad norm 0.3, NF4 + DQ at block 64,
 * batch 16. Callers set mode, steps and lr for their model. */
void finetune_options_default(finetune_options *o);
/* Checks the fields against the model and the row length; one line naming the field. */
qlab_status finetune_options_check(const finetune_options *o, const model_config *cfg, int row_len);

/* Memory a configuration needs for training state, in bytes, computed exactly from the element counts and
 * the quantized tensors' stored sizes (activations are not counted: they are the same for every mode at
 * a given batch and length, apart from the adapters' small hidden states). */
typedef struct {
    size_t weights;   /* the base: fp32 tensors at 4 bytes + quantized projections at their stored size */
    size_t adapters;  /* LoRA A and B (fp32) */
    size_t gradients; /* one fp32 per trainable parameter */
    size_t optimizer; /* AdamW: two fp32 moments per trainable parameter */
    size_t total;
} finetune_memory;

typedef struct {
    int64_t n_train, n_heldout;
    train_point *train;   /* mean training loss over the last log interval (response tokens only) */
    train_point *heldout; /* held-out mean response NLL; the first point is the base before training */
    int64_t steps_clipped, steps_skipped;
    double initial_heldout_nll; /* the (quantized, for QLoRA) base before any update */
    double final_heldout_nll;
    double final_train_loss;
    int64_t heldout_scored; /* response tokens scored by each held-out evaluation */
    size_t trainable_params;
    finetune_memory memory;
    optim_state_kind state_actual; /* where the moments really were */
    char state_note[160];          /* optim_state_buffer.note */
    optim_paging_stats paging;     /* page traffic when the moments were paged on the CPU, else zeros */
    double optimizer_seconds;      /* wall time in the AdamW updates (page traffic included) */
    /* The optimizer-state backend actually used: "plain" (host memory; also when paging was requested but
     * nothing could page), "cpu-paged" (optim_paged.h, traffic in paging) or "cuda-unified". */
    char optimizer_backend[32];
    double seconds, tokens_per_second; /* tokens = rows x row_len processed by training steps */
} finetune_result;

void finetune_result_free(finetune_result *r);

/* Mean NLL (nats/token) of m over the scored targets of rows, eval_batch rows per forward; *scored
 * receives the number of scored targets (may be NULL). Fails when no target is scored. */
qlab_status finetune_heldout_nll(model *m, const finetune_rows *rows, int eval_batch, double *mean_nll,
                                 int64_t *scored);

/* Called after every step (may be NULL): steps done, total, that step's training loss. */
typedef void (*finetune_step_callback)(void *ctx, int64_t step, int64_t total, double loss);

/* Finetunes m in place: quantizes its projections first for FINETUNE_QLORA (a base already loaded at 4
 * bits, checkpoint_load_quantized, is taken as it is when its type, block size and DQ match the options),
 * attaches new adapters for the LoRA modes (returned in *adapters when non-NULL, still attached to m; the
 * caller frees them after lora_detach(m) or model_free(m); when adapters is NULL they are detached and freed
 * here). Fills *out (free with finetune_result_free). */
qlab_status finetune_run(model *m, const finetune_rows *train, const finetune_rows *heldout,
                         const finetune_options *o, finetune_step_callback callback, void *ctx,
                         lora_set **adapters, finetune_result *out);

/* The same loop one step at a time, for programs that save and resume (qlab finetune); finetune_run is
 * create + steps + finish. create quantizes (QLoRA) and attaches new adapters as finetune_run does. Each
 * finetune_job_step takes one optimizer step (grad_accum micro-batches; the step-0 held-out evaluation runs
 * before the first one), logs and evaluates as the options say. finish hands over the result and the
 * adapters (as finetune_run) and frees the job; free discards it (detaching and freeing its adapters). */
typedef struct finetune_job finetune_job;
qlab_status finetune_job_create(finetune_job **out, model *m, const finetune_rows *train,
                                const finetune_rows *heldout, const finetune_options *o);
qlab_status finetune_job_step(finetune_job *j);
qlab_status finetune_job_finish(finetune_job *j, lora_set **adapters, finetune_result *out);
void finetune_job_free(finetune_job *j);
int64_t finetune_job_steps_done(const finetune_job *j);
/* Replaces the training rows from the next step on (the caller owns them; their row length may differ, up
 * to the model's seq_len): the sequence-length change of a run whose examples get longer. The epoch
 * restarts with a fresh shuffle of the new rows from the job's batch-order generator, so two jobs that
 * switch at the same step stay identical. */
qlab_status finetune_job_set_train_rows(finetune_job *j, const finetune_rows *train);
lora_set *finetune_job_adapters(finetune_job *j);                  /* NULL for full finetuning */
const finetune_result *finetune_job_result(const finetune_job *j); /* the curves so far */
double finetune_job_last_loss(const finetune_job *j); /* mean over the last step's micro-batches */
double finetune_job_lr(const finetune_job *j);        /* of the last update */
int64_t finetune_job_tokens(const finetune_job *j);   /* rows x row_len processed so far */
/* Saves (atomically) or restores everything the run needs to continue bit-identically: the trainable
 * values, AdamW's moments and step, the batch-order rng, epoch order and data position, the adapters'
 * dropout stream, curves and counters. Loading checks that the state was saved by a job with the same
 * options, data sizes and trainable count, and changes nothing on failure. */
qlab_status finetune_job_save_state(const finetune_job *j, const char *path);
qlab_status finetune_job_load_state(finetune_job *j, const char *path);

#endif
