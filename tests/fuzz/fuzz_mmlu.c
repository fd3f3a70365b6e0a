/* libFuzzer target: MMLU data: the input as a CSV member of a tar archive (mmlu_load) and as qlora's
 * zero-shot JSON (mmlu_load_qlora_json). */
#include "datasets/mmlu.h"
#include "tests/fuzz/fuzz.h"

/* One ustar header + the data + padding + the two zero end blocks. */
static unsigned char *tar_wrap(const char *member, const uint8_t *data, size_t size, size_t *out_len) {
    size_t padded = (size + 511) / 512 * 512;
    size_t total = 512 + padded + 1024;
    unsigned char *t = calloc(total, 1);
    if (!t) abort();
    snprintf((char *)t, 100, "%s", member);
    memcpy(t + 100, "0000644", 8);
    memcpy(t + 108, "0000000", 8);
    memcpy(t + 116, "0000000", 8);
    snprintf((char *)t + 124, 12, "%011lo", (unsigned long)size);
    memcpy(t + 136, "00000000000", 12);
    t[156] = '0';
    memcpy(t + 257, "ustar", 6);
    memcpy(t + 263, "00", 2);
    memset(t + 148, ' ', 8);
    unsigned sum = 0;
    for (int i = 0; i < 512; i++) sum += t[i];
    snprintf((char *)t + 148, 8, "%06o", sum);
    memcpy(t + 512, data, size);
    *out_len = total;
    return t;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    size_t tlen = 0;
    unsigned char *tar = tar_wrap("data/test/abstract_algebra_test.csv", data, size, &tlen);
    const char *path = fuzz_write("mmlu", "mmlu.tar", tar, tlen, 0);
    free(tar);
    mmlu_data d;
    if (mmlu_load(path, &d) == QLAB_OK) {
        for (int s = 0; s < d.n_subjects; s++)
            for (int q = 0; q < d.subjects[s].n_test; q++) free(mmlu_format_question(&d.subjects[s].test[q], 1));
        mmlu_free(&d);
    }
    path = fuzz_write("mmlu", "mmlu.json", data, size, 1);
    mmlu_prompt *p = NULL;
    int n = 0;
    if (mmlu_load_qlora_json(path, &p, &n) == QLAB_OK) mmlu_prompts_free(p, n);
    return 0;
}
