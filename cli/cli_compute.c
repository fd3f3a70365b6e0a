/* --compute fp32|bf16, shared by ppl, generate, finetune and mmlu (cli.h). */
#include <stdio.h>

#include "cli/cli.h"
#include "core/model/gemm_bf16.h"

int cli_parse_compute(const char *cmd, const char *text, qlab_compute *out) {
    if (qlab_compute_parse(text, out) == QLAB_OK) return 1;
    fprintf(stderr, "qlab %s: --compute must be fp32 or bf16 (got '%s')\n", cmd, text ? text : "nothing");
    return 0;
}

const char *cli_compute_help(void) {
    return "matrix products in fp32 (default, the reference) or bf16 with fp32 accumulation (QLoRA's "
           "compute dtype; fp32 master weights, norms, softmax and loss); bf16 runs on the best path this "
           "CPU has (amx, the faster of avx512fma and avx512bf16, else blas; QLAB_BF16_PATH overrides)";
}
