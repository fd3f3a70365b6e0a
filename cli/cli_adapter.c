/* The --adapter option shared by qlab ppl, generate, mmlu and merge (cli.h). */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "core/formats/safetensors.h"
#include "core/model/lora_peft.h"

qlab_status cli_load_adapters(const char *spec, model *m, lora_set **out) {
    *out = NULL;
    struct stat sb;
    lora_set *l = NULL;
    qlab_status st = QLAB_OK;
    if (stat(spec, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        st = lora_load_peft(spec, model_get_config(m), &l);
    } else {
        safetensors_file f;
        QLAB_TRY(safetensors_open(&f, spec));
        const char *rank = safetensors_metadata(&f, "lora_rank"),
                   *alpha = safetensors_metadata(&f, "lora_alpha"),
                   *targets = safetensors_metadata(&f, "target_modules");
        lora_config lc = {0};
        if (!rank || !alpha || !targets)
            st = qlab_fail(
                QLAB_ERR_FORMAT,
                "%s: no lora_rank / lora_alpha / target_modules metadata (give the PEFT directory instead)",
                spec);
        if (st == QLAB_OK) {
            lc.rank = atoi(rank);
            lc.alpha = (float)atof(alpha);
            const char *rs = safetensors_metadata(&f, "use_rslora");
            lc.rslora = rs && !strcmp(rs, "true");
            st = lora_parse_targets(targets, &lc.targets);
            if (st == QLAB_OK && lc.rank < 1)
                st = qlab_fail(QLAB_ERR_FORMAT, "%s: lora_rank '%s' is not >= 1", spec, rank);
        }
        safetensors_close(&f);
        if (st == QLAB_OK) st = lora_create(&l, model_get_config(m), &lc);
        if (st == QLAB_OK) st = lora_load(l, spec);
    }
    if (st == QLAB_OK) st = lora_attach(l, m, 1);
    if (st == QLAB_OK) lora_set_training(l, 0);
    if (st != QLAB_OK) {
        lora_free(l);
        return st;
    }
    *out = l;
    return QLAB_OK;
}
