/* The training log of a finetuning run as an HDF5 results file with the project's provenance: the
 * training-loss curve (with learning rate, gradient norm, tokens and time), the held-out response NLL
 * curve, and one summary row (mode, options, trainable parameters, first/last held-out NLL, tokens/s, peak
 * resident memory). Written atomically (results_commit). */
#ifndef QLAB_FINETUNE_LOG_H
#define QLAB_FINETUNE_LOG_H

#include <stddef.h>

#include "core/base/common.h"
#include "train/finetune.h"

typedef struct {
    const char *model_path, *data_path, *eval_path; /* eval_path NULL: a split of data_path */
    double peak_rss_bytes;
    double tokens_per_second; /* of the whole run, resumed segments included when known */
} finetune_log_info;

qlab_status finetune_write_log(const char *path, const finetune_result *r, const finetune_options *o,
                               const finetune_log_info *info, int argc, char *const *argv);

/* Peak resident memory of this process in bytes (getrusage), 0 when unknown. */
double finetune_peak_rss_bytes(void);

#endif
