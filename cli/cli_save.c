/* Writing a model in the format --to names, shared by qlab convert and qlab merge (cli.h). */
#include <string.h>

#include "cli/cli.h"
#include "core/model/checkpoint.h"

/* The first value llama2.c's header cannot carry (run.c assumes rope_theta 10000, norm_eps 1e-5, BOS 1,
 * EOS 2), or NULL; *value receives it. */
static const char *llama2c_lost(const model_config *c, int bos, int eos, double *value) {
    const struct {
        const char *name;
        int lost;
        double value;
    } field[] = {{"rope_scaling factor", c->rope_scaling != MODEL_ROPE_DEFAULT, c->rope_factor},
                 {"rope_theta", c->rope_theta != 10000.0f, c->rope_theta},
                 {"norm_eps", c->norm_eps != 1e-5f, c->norm_eps},
                 {"bos_token_id", bos >= 0 && bos != 1, bos},
                 {"eos_token_id", eos >= 0 && eos != 2, eos}};
    for (size_t i = 0; i < sizeof field / sizeof *field; i++)
        if (field[i].lost) {
            *value = field[i].value;
            return field[i].name;
        }
    return NULL;
}

qlab_status cli_save_model(const model *m, const char *source, const char *to, checkpoint_dtype dtype,
                           const char *out) {
    int bos = -1, eos = -1;
    QLAB_TRY(checkpoint_special_ids(source, &bos, &eos));
    if (!strcmp(to, "hf")) return checkpoint_save_hf_ids(m, out, dtype, bos, eos);
    if (!strcmp(to, "gguf")) return checkpoint_save_gguf(m, out, dtype);
    double value;
    const char *lost = llama2c_lost(model_get_config(m), bos, eos, &value);
    if (lost)
        return qlab_fail(QLAB_ERR_UNSUPPORTED,
                         "%s: --to llama2c cannot store %s = %g (llama2.c assumes rope_theta 10000, norm_eps "
                         "1e-5, BOS 1, EOS 2); use --to hf or --to gguf",
                         source, lost, value);
    return checkpoint_save_llama2c(m, out);
}
