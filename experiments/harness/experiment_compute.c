/* The `compute` config key and its provenance record (experiment_compute.h). */
#include "experiments/harness/experiment_compute.h"

#include <string.h>

qlab_status experiment_config_compute(const config *cfg, qlab_compute *c) {
    const char *name = config_string(cfg, "compute");
    if (name && !strcmp(name, "fp32")) return *c = QLAB_COMPUTE_FP32, QLAB_OK;
    if (name && !strcmp(name, "bf16")) return *c = QLAB_COMPUTE_BF16, QLAB_OK;
    return qlab_fail(QLAB_ERR_ARG, "%s: key 'compute' is '%s' (expected fp32 or bf16)", config_path(cfg),
                     name ? name : "");
}

qlab_status experiment_results_compute(results *r, qlab_compute c) {
    return results_set_compute(r, qlab_compute_name(c), qlab_compute_path_name(c));
}
