/* libFuzzer target: llama2.c tokenizer.bin files (tokenizer_load, then encode and decode). */
#include "tests/fuzz/fuzz.h"
#include "tests/fuzz/fuzz_common_tok.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_write("tokenizer_bin", "tokenizer.bin", data, size, 0);
    tokenizer *t = NULL;
    if (tokenizer_load(path, &t) == QLAB_OK) {
        fuzz_exercise_tokenizer(t, data, size);
        tokenizer_free(t);
    }
    return 0;
}
