/* libFuzzer target: MMLU data: the input as a CSV member of a tar archive (mmlu_load) and as qlora's
 * zero-shot JSON (mmlu_load_qlora_json). */
#include "datasets/mmlu.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    size_t tlen = 0;
    unsigned char *tar = fuzz_tar_wrap("data/test/abstract_algebra_test.csv", data, size, &tlen);
    const char *path = fuzz_write("mmlu", "mmlu.tar", tar, tlen, 0);
    free(tar);
    mmlu_data d;
    if (mmlu_load(path, &d) == QLAB_OK) {
        for (int s = 0; s < d.n_subjects; s++)
            for (int q = 0; q < d.subjects[s].n_test; q++)
                free(mmlu_format_question(&d.subjects[s].test[q], 1));
        mmlu_free(&d);
    }
    path = fuzz_write("mmlu", "mmlu.json", data, size, 1);
    mmlu_prompt *p = NULL;
    int n = 0;
    if (mmlu_load_qlora_json(path, &p, &n) == QLAB_OK) mmlu_prompts_free(p, n);
    return 0;
}
