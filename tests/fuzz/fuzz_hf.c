/* libFuzzer target: a Hugging Face folder, config.json FUZZ_SEP model.safetensors (checkpoint_load_hf,
 * checkpoint_special_ids). */
#include "core/model/checkpoint.h"
#include "core/model/model.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *parts[FUZZ_MAX_PARTS];
    size_t lens[FUZZ_MAX_PARTS];
    int n = fuzz_split(data, size, parts, lens, 2);
    fuzz_write("hf", "config.json", parts[0], lens[0], 0);
    if (n > 1)
        fuzz_write("hf", "model.safetensors", parts[1], lens[1], 1);
    else
        fuzz_remove("hf", "model.safetensors");
    const char *dir = fuzz_dir("hf");
    model *m = NULL;
    if (checkpoint_load_hf(dir, &m) == QLAB_OK) model_free(m);
    int bos, eos;
    (void)checkpoint_special_ids(dir, &bos, &eos);
    return 0;
}
