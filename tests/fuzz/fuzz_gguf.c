/* libFuzzer target: GGUF files, as a model (checkpoint_load_gguf) and as a tokenizer (tokenizer_load). */
#include "core/model/checkpoint.h"
#include "core/model/model.h"
#include "tests/fuzz/fuzz.h"
#include "tests/fuzz/fuzz_common_tok.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_write("gguf", "model.gguf", data, size, 0);
    model *m = NULL;
    if (checkpoint_load_gguf(path, &m) == QLAB_OK) model_free(m);
    tokenizer *t = NULL;
    if (tokenizer_load(path, &t) == QLAB_OK) {
        fuzz_exercise_tokenizer(t, data, size);
        tokenizer_free(t);
    }
    return 0;
}
