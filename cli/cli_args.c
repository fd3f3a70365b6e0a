/* Flag values shared by several commands, checked the same way everywhere: a bad value is a usage error
 * (exit 2) with one line naming the command and the flag. */
#include <stdio.h>

#include "cli/cli.h"
#include "core/model/checkpoint.h"
#include "core/quant/quant.h"

const char *cli_gguf_tokenizer(const char *model_path) {
    checkpoint_format fmt = CHECKPOINT_UNKNOWN;
    return model_path && checkpoint_detect(model_path, &fmt) == QLAB_OK && fmt == CHECKPOINT_GGUF ? model_path
                                                                                                  : NULL;
}

int cli_parse_dtype(const char *cmd, const char *text, quant_dtype *dt) {
    if (quant_dtype_parse(text, dt) == QLAB_OK) return 1;
    fprintf(stderr, "qlab %s: --dtype: %s\n", cmd, qlab_last_error());
    return 0;
}

int cli_check_blocksize(const char *cmd, quant_dtype dt, long blocksize) {
    if (quant_check_blocksize(dt, (int)blocksize) == QLAB_OK) return 1;
    fprintf(stderr, "qlab %s: --blocksize: %s\n", cmd, qlab_last_error());
    return 0;
}
