/* libFuzzer target: the model zoo's manifest.json (zoo_manifest_load with sha256 verification of the model
 * files it names; the part after FUZZ_SEP is written as zoo-a.bin). */
#include "tests/fuzz/fuzz.h"
#include "train/zoo_manifest.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *parts[FUZZ_MAX_PARTS];
    size_t lens[FUZZ_MAX_PARTS];
    int n = fuzz_split(data, size, parts, lens, 2);
    fuzz_write("zoo", "manifest.json", parts[0], lens[0], 0);
    if (n > 1)
        fuzz_write("zoo", "zoo-a.bin", parts[1], lens[1], 1);
    else
        fuzz_remove("zoo", "zoo-a.bin");
    zoo_manifest m;
    for (int verify = 0; verify < 2; verify++)
        if (zoo_manifest_load(fuzz_dir("zoo"), verify, &m) == QLAB_OK) zoo_manifest_free(&m);
    return 0;
}
