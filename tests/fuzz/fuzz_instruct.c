/* libFuzzer target: instruction data (datasets/instruct: Alpaca JSON, OASST1 / chat JSON lines, Vicuna
 * questions; datasets/finetune_data: format detection and loading with a byte-level tokenizer). */
#include "core/text/tokenizer.h"
#include "datasets/finetune_data.h"
#include "datasets/instruct.h"
#include "tests/fuzz/fuzz.h"

static tokenizer *byte_tokenizer(void) {
    static tokenizer *tok;
    if (tok) return tok;
    static char storage[256][8];
    const char *pieces[256 + 3 + 4];
    float scores[256 + 3 + 4];
    int n = 0;
    pieces[n++] = "<unk>";
    pieces[n++] = "<s>";
    pieces[n++] = "</s>";
    for (int b = 0; b < 256; b++) {
        snprintf(storage[b], sizeof storage[b], "<0x%02X>", b);
        pieces[n++] = storage[b];
    }
    pieces[n++] = " the";
    pieces[n++] = "##";
    pieces[n++] = " Human";
    pieces[n++] = " Assistant";
    for (int i = 0; i < n; i++)
        scores[i] = i < 259 ? 0.0f : (float)-i;
    const char *path = fuzz_write("instruct", "tok.bin", "", 0, 1);
    if (tokenizer_save_bin(path, n, pieces, scores, 16) != QLAB_OK || tokenizer_load(path, &tok) != QLAB_OK) {
        fprintf(stderr, "fuzz_instruct: %s\n", qlab_last_error());
        abort();
    }
    return tok;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const tokenizer *tok = byte_tokenizer();
    const char *path = fuzz_write("instruct", "data.json", data, size, 0);
    instruct_set s;
    if (instruct_load(path, &s) == QLAB_OK) instruct_set_free(&s);
    if (instruct_load_chat(path, &s) == QLAB_OK) instruct_set_free(&s);
    if (instruct_load_vicuna(path, &s) == QLAB_OK) instruct_set_free(&s);
    finetune_data_format fmt;
    (void)finetune_data_detect(path, &fmt);
    finetune_data_options o = {.max_len = 64, .train_on_source = (int)(size & 1)};
    instruct_examples e;
    if (finetune_data_load(path, FINETUNE_DATA_AUTO, tok, &o, &e, &fmt) == QLAB_OK)
        instruct_examples_free(&e);
    return 0;
}
