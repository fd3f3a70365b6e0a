/* libFuzzer target: strict JSON experiment configs (config_parse against a key table with every key type,
 * plus "key=value" overrides taken from the parts after FUZZ_SEP). */
#include "core/results/config.h"
#include "tests/fuzz/fuzz.h"

static const config_key keys[] = {
    {"seed", CONFIG_INT, "1", "int"},
    {"lr", CONFIG_DOUBLE, "0.5", "double"},
    {"double_quant", CONFIG_BOOL, "true", "bool"},
    {"name", CONFIG_STRING, "\"x\"", "string"},
    {"dtypes", CONFIG_STRING_ARRAY, "[\"nf4\"]", "strings"},
    {"blocksizes", CONFIG_INT_ARRAY, "[64]", "ints"},
    {"fractions", CONFIG_NUMBER_ARRAY, "[0.5]", "numbers"},
    {"models", CONFIG_OBJECT, "{}", "object"},
    {"ctx", CONFIG_INT, NULL, "required int"},
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *parts[FUZZ_MAX_PARTS];
    size_t lens[FUZZ_MAX_PARTS];
    int n = fuzz_split(data, size, parts, lens, 5);
    char *text[FUZZ_MAX_PARTS];
    for (int i = 0; i < n; i++) {
        text[i] = malloc(lens[i] + 1);
        if (!text[i]) abort();
        memcpy(text[i], parts[i], lens[i]);
        text[i][lens[i]] = 0;
    }
    config *c = NULL;
    const int nkeys = (int)(sizeof keys / sizeof keys[0]);
    if (config_parse(&c, text[0], "fuzz.json", keys, nkeys, (const char *const *)text + 1, n - 1) ==
        QLAB_OK) {
        (void)config_int(c, "seed");
        (void)config_double(c, "lr");
        (void)config_bool(c, "double_quant");
        (void)config_string(c, "name");
        for (int i = 0; i < config_array_length(c, "dtypes"); i++)
            (void)config_string_at(c, "dtypes", i);
        for (int i = 0; i < config_array_length(c, "blocksizes"); i++)
            (void)config_int_at(c, "blocksizes", i);
        for (int i = 0; i < config_array_length(c, "fractions"); i++)
            (void)config_number_at(c, "fractions", i);
        (void)config_object(c, "models");
        (void)config_effective_json(c);
        config_free(c);
    }
    for (int i = 0; i < n; i++)
        free(text[i]);
    return 0;
}
