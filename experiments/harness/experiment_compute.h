/* The `compute` config key every experiment that builds a model declares (fp32, the default and the
 * reference, or bf16: bf16 matrix products with fp32 accumulation, core/model/gemm_bf16.h), and its
 * record in the results' provenance (attributes compute and bf16_path). */
#ifndef QLAB_EXPERIMENTS_HARNESS_EXPERIMENT_COMPUTE_H
#define QLAB_EXPERIMENTS_HARNESS_EXPERIMENT_COMPUTE_H

#include "core/base/common.h"
#include "core/model/gemm_bf16.h"
#include "core/results/config.h"
#include "core/results/results.h"

/* The config_key entry (put it in the experiment's key table). */
#define EXPERIMENT_COMPUTE_KEY                                                                               \
    {                                                                                                        \
        "compute", CONFIG_STRING, "\"fp32\"",                                                                \
            "matrix products: fp32 (the reference) or bf16 (bf16 inputs, fp32 accumulation, fp32 master "    \
            "weights; the path is chosen at run time and recorded)"                                          \
    }

/* Reads key "compute"; one line naming the file and the key on any other value. */
qlab_status experiment_config_compute(const config *cfg, qlab_compute *c);
/* results_set_compute with c's name and the bf16 path it runs on ("none" for fp32). */
qlab_status experiment_results_compute(results *r, qlab_compute c);

#endif
