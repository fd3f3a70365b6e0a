/* libFuzzer target: .npy arrays (npy_read, npy_read_f32 with and without the u2-as-bf16 reading). */
#include "core/formats/npy.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_write("npy", "a.npy", data, size, 0);
    npy_array a;
    if (npy_read(path, &a) == QLAB_OK) npy_free(&a);
    for (int bf16 = 0; bf16 < 2; bf16++)
        if (npy_read_f32(path, bf16, &a) == QLAB_OK) npy_free(&a);
    return 0;
}
