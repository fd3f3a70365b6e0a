/* libFuzzer target: safetensors files (every tensor read as fp32 and raw, every quant_state read back as a
 * quantized tensor) and sharded checkpoints: parts after the first FUZZ_SEP are an index JSON and its
 * shards model-00001-of-0000N.safetensors. */
#include "core/formats/safetensors.h"
#include "core/quant/quant_io.h"
#include "tests/fuzz/fuzz.h"

static void exercise_file(const safetensors_file *f) {
    for (int i = 0; i < f->n_tensors; i++) {
        float *v = NULL;
        int64_t n = 0;
        if (safetensors_read_f32_alloc(f, f->tensors[i].name, &v, &n) == QLAB_OK) free(v);
    }
    (void)safetensors_metadata(f, "format");
    int nq = quant_io_count(f);
    for (int i = 0; i < nq && i < 16; i++) {
        char name[512];
        if (quant_io_name_at(f, i, name, sizeof name) != QLAB_OK) continue;
        quant_tensor qt;
        if (quant_io_read(f, name, &qt) == QLAB_OK) quant_tensor_free(&qt);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *parts[FUZZ_MAX_PARTS];
    size_t lens[FUZZ_MAX_PARTS];
    int n = fuzz_split(data, size, parts, lens, 4);
    if (n == 1) {
        const char *path = fuzz_write("safetensors", "model.safetensors", data, size, 0);
        safetensors_file f;
        if (safetensors_open(&f, path) == QLAB_OK) {
            exercise_file(&f);
            safetensors_close(&f);
        }
        return 0;
    }
    /* Sharded: part 0 is the index, parts 1.. the shards. */
    const char *index = fuzz_write("safetensors", "model.safetensors.index.json", parts[0], lens[0], 0);
    char name[64];
    for (int i = 1; i < 4; i++) {
        snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", i, n - 1);
        if (i < n)
            fuzz_write("safetensors", name, parts[i], lens[i], i);
        else
            fuzz_remove("safetensors", name);
    }
    safetensors_checkpoint ck;
    if (safetensors_checkpoint_open(&ck, index) == QLAB_OK) {
        for (int i = 0; i < ck.n_files; i++)
            exercise_file(&ck.files[i]);
        safetensors_checkpoint_close(&ck);
    }
    for (int i = 1; i < n; i++) {
        snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", i, n - 1);
        fuzz_remove("safetensors", name);
    }
    return 0;
}
