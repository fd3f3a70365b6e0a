/* Tests of the strict experiment configs: defaults, every kind of rejection with a message that names
 * the file and key (or the line and column of a JSON error), and command-line overrides. */
#include <string.h>
#include <unistd.h>

#include "tests/check.h"
#include "core/results/config.h"

static const config_key keys[] = {
    {"seed", CONFIG_INT, "1234", "random seed"},
    {"nu", CONFIG_DOUBLE, "3.0", "Student-t degrees of freedom"},
    {"verbose", CONFIG_BOOL, "false", "print more"},
    {"model_path", CONFIG_STRING, "\"m.bin\"", "model"},
    {"dtypes", CONFIG_STRING_ARRAY, "[\"nf4\", \"fp4\"]", "data types"},
    {"blocksizes", CONFIG_INT_ARRAY, "[64]", "block sizes"},
    {"ratios", CONFIG_NUMBER_ARRAY, "[0.5, 1]", "ratios"},
    {"extra", CONFIG_OBJECT, "{}", "anything"},
};
#define NKEYS ((int)(sizeof keys / sizeof keys[0]))

static int has(const char *needle) {
    int ok = strstr(qlab_last_error(), needle) != NULL;
    if (!ok) fprintf(stderr, "  message was: %s\n  expected to contain: %s\n", qlab_last_error(), needle);
    return ok;
}

static void test_defaults_and_values(void) {
    const char *text = "{\n  \"seed\": 7,\n  \"blocksizes\": [32, 64, 4096],\n  \"verbose\": true,\n"
                       "  \"nu\": 2,\n  \"extra\": {\"a\": 1}\n}\n";
    config *c;
    CHECK(config_parse(&c, text, "x.json", keys, NKEYS, NULL, 0) == QLAB_OK);
    if (!c) return;
    CHECK(config_int(c, "seed") == 7);
    CHECK(config_double(c, "nu") == 2.0); /* an integer literal is a valid number */
    CHECK(config_bool(c, "verbose") == 1);
    CHECK(strcmp(config_string(c, "model_path"), "m.bin") == 0);
    CHECK(config_array_length(c, "dtypes") == 2);
    CHECK(strcmp(config_string_at(c, "dtypes", 1), "fp4") == 0);
    CHECK(config_array_length(c, "blocksizes") == 3 && config_int_at(c, "blocksizes", 2) == 4096);
    CHECK(config_number_at(c, "ratios", 0) == 0.5);
    CHECK(config_object(c, "extra") != NULL);
    CHECK(strcmp(config_text(c), text) == 0); /* kept byte for byte for provenance */
    CHECK(strcmp(config_path(c), "x.json") == 0);
    CHECK(strstr(config_effective_json(c), "\"model_path\":\"m.bin\"") != NULL);
    CHECK(config_string(c, "undeclared") == NULL && config_int(c, "undeclared") == 0);
    config_free(c);
}

static void test_rejections(void) {
    config *c = (config *)1;
    CHECK(config_parse(&c, "{\"blocksize\": 64}", "experiments/x.json", keys, NKEYS, NULL, 0) ==
          QLAB_ERR_ARG);
    CHECK(c == NULL);
    CHECK(has("experiments/x.json: unknown key 'blocksize'") && has("accepted: seed, nu"));

    CHECK(config_parse(&c, "{\"blocksizes\": \"64\"}", "experiments/x.json", keys, NKEYS, NULL, 0) ==
          QLAB_ERR_ARG);
    CHECK(has("experiments/x.json: key 'blocksizes' must be an array of integers, got a string"));

    CHECK(config_parse(&c, "{\"blocksizes\": [64, 1.5]}", "x.json", keys, NKEYS, NULL, 0) == QLAB_ERR_ARG);
    CHECK(has("key 'blocksizes' must be an array of integers, but element 1 is a number (1.5)"));

    CHECK(config_parse(&c, "{\"seed\": 1.5}", "x.json", keys, NKEYS, NULL, 0) == QLAB_ERR_ARG);
    CHECK(has("key 'seed' must be an integer, got a number (1.5)"));
    /* 2^53 + 2 cannot be held exactly by cJSON's double, so it must be refused, not silently rounded. */
    CHECK(config_parse(&c, "{\"seed\": 9007199254740994}", "x.json", keys, NKEYS, NULL, 0) == QLAB_ERR_ARG);
    CHECK(config_parse(&c, "{\"verbose\": 1}", "x.json", keys, NKEYS, NULL, 0) == QLAB_ERR_ARG);
    CHECK(has("key 'verbose' must be a boolean (true or false), got an integer (1)"));
    CHECK(config_parse(&c, "{\"dtypes\": [\"nf4\", 3]}", "x.json", keys, NKEYS, NULL, 0) == QLAB_ERR_ARG);
    CHECK(has("key 'dtypes' must be an array of strings, but element 1 is an integer (3)"));
    CHECK(config_parse(&c, "{\"model_path\": null}", "x.json", keys, NKEYS, NULL, 0) == QLAB_ERR_ARG);
    CHECK(has("key 'model_path' must be a string, got null"));
    CHECK(config_parse(&c, "{\"seed\": 1, \"seed\": 2}", "x.json", keys, NKEYS, NULL, 0) == QLAB_ERR_ARG);
    CHECK(has("x.json: key 'seed' appears twice"));
    CHECK(config_parse(&c, "[1, 2]", "x.json", keys, NKEYS, NULL, 0) == QLAB_ERR_FORMAT);
    CHECK(has("x.json: the config must be a JSON object, got an array"));

    static const config_key required[] = {{"path", CONFIG_STRING, NULL, "needed"}};
    CHECK(config_parse(&c, "{}", "r.json", required, 1, NULL, 0) == QLAB_ERR_ARG);
    CHECK(has("r.json: missing required key 'path'"));
}

static void test_malformed_json(void) {
    config *c;
    /* The missing comma is detected at the start of line 3, column 3 (the quote of "nu"). */
    const char *text = "{\n  \"seed\": 1\n  \"nu\": 2\n}\n";
    CHECK(config_parse(&c, text, "bad.json", keys, NKEYS, NULL, 0) == QLAB_ERR_FORMAT);
    CHECK(has("bad.json:3:3: malformed JSON near"));
    CHECK(config_parse(&c, "{\"seed\": 1,", "cut.json", keys, NKEYS, NULL, 0) == QLAB_ERR_FORMAT);
    CHECK(has("cut.json:1:"));
    CHECK(config_parse(&c, "{\"seed\": 1} trailing", "t.json", keys, NKEYS, NULL, 0) == QLAB_ERR_FORMAT);
    CHECK(has("t.json:1:13: malformed JSON near"));
    CHECK(config_parse(&c, "", "empty.json", keys, NKEYS, NULL, 0) == QLAB_ERR_FORMAT);
    CHECK(has("empty.json:1:1: malformed JSON"));
}

static void test_files(void) {
    config *c;
    CHECK(config_load(&c, "/nonexistent/qlab/x.json", keys, NKEYS, NULL, 0) == QLAB_ERR_IO);
    CHECK(has("/nonexistent/qlab/x.json: cannot open"));

    char path[] = "/tmp/qlab_test_configXXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd < 0) return;
    const char *text = "{\"seed\": 99, \"dtypes\": [\"int4\"]}\n";
    CHECK(write(fd, text, strlen(text)) == (ssize_t)strlen(text));
    close(fd);
    CHECK(config_load(&c, path, keys, NKEYS, NULL, 0) == QLAB_OK);
    if (c) {
        CHECK(config_int(c, "seed") == 99);
        CHECK(strcmp(config_text(c), text) == 0);
        CHECK(strcmp(config_path(c), path) == 0);
        config_free(c);
    }
    unlink(path);
}

static void test_overrides(void) {
    config *c;
    const char *ok[] = {"seed=5", "model_path=/data/other.bin", "blocksizes=[32,128]", "dtypes=[\"af4\"]"};
    CHECK(config_parse(&c, "{\"seed\": 1}", "x.json", keys, NKEYS, ok, 4) == QLAB_OK);
    if (c) {
        CHECK(config_int(c, "seed") == 5);
        CHECK(strcmp(config_string(c, "model_path"), "/data/other.bin") == 0);
        CHECK(config_array_length(c, "blocksizes") == 2 && config_int_at(c, "blocksizes", 1) == 128);
        CHECK(strcmp(config_string_at(c, "dtypes", 0), "af4") == 0);
        CHECK(strcmp(config_text(c), "{\"seed\": 1}") == 0); /* the file's text stays untouched */
        config_free(c);
    }
    const char *bad_type[] = {"seed=abc"};
    CHECK(config_parse(&c, "{}", "x.json", keys, NKEYS, bad_type, 1) == QLAB_ERR_FORMAT);
    CHECK(has("--set seed=abc") && !has("x.json")); /* the flag is blamed, not the file */
    const char *bad_key[] = {"sead=1"};
    CHECK(config_parse(&c, "{}", "x.json", keys, NKEYS, bad_key, 1) == QLAB_ERR_ARG);
    CHECK(has("--set sead=1: unknown key 'sead'"));
    const char *wrong[] = {"blocksizes=64"};
    CHECK(config_parse(&c, "{}", "x.json", keys, NKEYS, wrong, 1) == QLAB_ERR_ARG);
    CHECK(has("key 'blocksizes' must be an array of integers, got an integer (64)"));
    const char *no_eq[] = {"seed"};
    CHECK(config_parse(&c, "{}", "x.json", keys, NKEYS, no_eq, 1) == QLAB_ERR_ARG);
    CHECK(has("expected key=value"));
}

int main(void) {
    test_defaults_and_values();
    test_rejections();
    test_malformed_json();
    test_files();
    test_overrides();
    return check_summary();
}
