/* libFuzzer target: PEFT adapter folders, adapter_config.json FUZZ_SEP adapter_model.safetensors
 * (lora_read_peft_config, lora_load_peft against a small fixed model shape). */
#include "core/model/lora.h"
#include "core/model/lora_peft.h"
#include "core/model/model.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *parts[FUZZ_MAX_PARTS];
    size_t lens[FUZZ_MAX_PARTS];
    int n = fuzz_split(data, size, parts, lens, 2);
    fuzz_write("peft", "adapter_config.json", parts[0], lens[0], 0);
    if (n > 1)
        fuzz_write("peft", "adapter_model.safetensors", parts[1], lens[1], 1);
    else
        fuzz_remove("peft", "adapter_model.safetensors");
    const char *dir = fuzz_dir("peft");
    lora_config lc;
    char *base = NULL;
    if (lora_read_peft_config(dir, &lc, &base) == QLAB_OK) free(base);
    /* The shape the seeds were written for (tests/fuzz/make_seeds.c). */
    model_config mc = {.dim = 16,
                       .hidden_dim = 32,
                       .n_layers = 2,
                       .n_heads = 2,
                       .n_kv_heads = 1,
                       .vocab_size = 32,
                       .seq_len = 16,
                       .norm_eps = 1e-5f,
                       .rope_theta = 10000.0f,
                       .shared_classifier = 1};
    lora_set *l = NULL;
    if (lora_load_peft(dir, &mc, &l) == QLAB_OK) lora_free(l);
    return 0;
}
