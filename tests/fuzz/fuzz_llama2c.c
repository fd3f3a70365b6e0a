/* libFuzzer target: llama2.c checkpoints (checkpoint_load_llama2c, then one forward-free look at the
 * result through checkpoint_detect). */
#include "core/model/checkpoint.h"
#include "core/model/model.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_write("llama2c", "model.bin", data, size, 0);
    checkpoint_format fmt;
    (void)checkpoint_detect(path, &fmt);
    model *m = NULL;
    if (checkpoint_load_llama2c(path, &m) == QLAB_OK) model_free(m);
    return 0;
}
