/* Writes the committed seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/) with qlab's own
 * writers: small, valid files of every format, so the fuzzer starts from inputs that reach deep into each
 * parser. Run by hand after a format changes: build/tests/fuzz_make_seeds tests/fuzz/corpus. Deterministic
 * (fixed seeds), so rerunning it reproduces the committed files, except the HDF5 results seed whose
 * provenance records the time and host. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/base/common.h"
#include "core/base/rng.h"
#include "core/base/sha256.h"
#include "core/formats/npy.h"
#include "core/formats/safetensors.h"
#include "core/model/checkpoint.h"
#include "core/model/lora.h"
#include "core/model/lora_peft.h"
#include "core/model/model.h"
#include "core/quant/quant_io.h"
#include "core/results/results.h"
#include "core/text/tokenizer.h"
#include "tests/fuzz/fuzz.h"

#include <zlib.h>

static const char *root;

#define CHECK(expr)                                                                                          \
    do {                                                                                                     \
        if ((expr) != QLAB_OK) {                                                                             \
            fprintf(stderr, "make_seeds: %s: %s\n", #expr, qlab_last_error());                               \
            exit(1);                                                                                         \
        }                                                                                                    \
    } while (0)

static char *path_of(const char *target, const char *name) {
    static char buf[4][1024];
    static int slot;
    char *p = buf[slot++ % 4];
    snprintf(p, sizeof buf[0], "%s/%s", root, target);
    mkdir(p, 0755);
    snprintf(p, sizeof buf[0], "%s/%s/%s", root, target, name);
    return p;
}

static char *slurp(const char *path, size_t *len) {
    char *d = NULL;
    CHECK(qlab_read_file(path, &d, len));
    return d;
}

/* Writes the files joined by FUZZ_SEP as one seed. */
static void join_seed(const char *target, const char *name, int n, const char *const *files) {
    FILE *out = fopen(path_of(target, name), "wb");
    if (!out) exit(1);
    for (int i = 0; i < n; i++) {
        size_t len;
        char *d = slurp(files[i], &len);
        if (i) fputs(FUZZ_SEP, out);
        fwrite(d, 1, len, out);
        free(d);
    }
    fclose(out);
}

static void write_text(const char *target, const char *name, const char *text) {
    CHECK(qlab_write_file_atomic(path_of(target, name), text, strlen(text)));
}

static const model_config tiny = {.dim = 16,
                                  .hidden_dim = 32,
                                  .n_layers = 2,
                                  .n_heads = 2,
                                  .n_kv_heads = 1,
                                  .vocab_size = 32,
                                  .seq_len = 16,
                                  .norm_eps = 1e-5f,
                                  .rope_theta = 10000.0f,
                                  .shared_classifier = 1};

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s OUT_DIR (tests/fuzz/corpus)\n", argv[0]);
        return 2;
    }
    root = argv[1];
    mkdir(root, 0755);
    char tmp[] = "/tmp/qlab-seeds-XXXXXX";
    if (!mkdtemp(tmp)) return 1;
    char p[1200];
    rng_state r;
    rng_seed(&r, 13);

    /* npy */
    float v[24];
    for (int i = 0; i < 24; i++)
        v[i] = (float)rng_normal(&r);
    int64_t shape2[2] = {4, 6}, shape1[1] = {5};
    CHECK(npy_write(path_of("npy", "f32_2d.npy"), "<f4", 2, shape2, v));
    uint16_t u2[5] = {0x3f80, 0x4000, 0xbf80, 0, 0x7f80};
    CHECK(npy_write(path_of("npy", "u2.npy"), "<u2", 1, shape1, u2));

    /* safetensors: plain fp32, quantized (NF4 + double quant, FP4), and a sharded checkpoint */
    float w[256];
    for (int i = 0; i < 256; i++)
        w[i] = (float)rng_normal(&r);
    safetensors_writer *sw = safetensors_writer_new();
    int64_t s16[2] = {16, 16};
    CHECK(safetensors_writer_add(sw, "a.weight", SAFETENSORS_F32, 2, s16, w));
    CHECK(safetensors_writer_set_metadata(sw, "format", "pt"));
    CHECK(safetensors_writer_write(sw, path_of("safetensors", "f32.safetensors")));
    safetensors_writer_free(sw);
    quant_tensor qt;
    CHECK(quant_tensor_quantize(&qt, w, 256, QUANT_NF4, 64, 1));
    CHECK(quant_io_save(path_of("safetensors", "nf4_dq.safetensors"), "layer.weight", &qt));
    quant_tensor_free(&qt);
    CHECK(quant_tensor_quantize(&qt, w, 256, QUANT_FP4, 64, 0));
    CHECK(quant_io_save(path_of("safetensors", "fp4.safetensors"), "layer.weight", &qt));
    quant_tensor_free(&qt);
    {
        char s1[1100], s2[1100], ix[1100];
        snprintf(s1, sizeof s1, "%s/shard1.safetensors", tmp);
        snprintf(s2, sizeof s2, "%s/shard2.safetensors", tmp);
        snprintf(ix, sizeof ix, "%s/index.json", tmp);
        int64_t s8[1] = {8};
        sw = safetensors_writer_new();
        CHECK(safetensors_writer_add(sw, "a", SAFETENSORS_F32, 1, s8, w));
        CHECK(safetensors_writer_write(sw, s1));
        safetensors_writer_free(sw);
        sw = safetensors_writer_new();
        CHECK(safetensors_writer_add(sw, "b", SAFETENSORS_F32, 1, s8, w + 8));
        CHECK(safetensors_writer_write(sw, s2));
        safetensors_writer_free(sw);
        const char *index = "{\"metadata\": {\"total_size\": 64}, \"weight_map\": {"
                            "\"a\": \"model-00001-of-00002.safetensors\", "
                            "\"b\": \"model-00002-of-00002.safetensors\"}}";
        CHECK(qlab_write_file_atomic(ix, index, strlen(index)));
        const char *files[3] = {ix, s1, s2};
        join_seed("safetensors", "sharded.seed", 3, files);
    }

    /* a tiny model in every checkpoint format */
    model *m = NULL;
    CHECK(model_create(&m, &tiny));
    size_t count = 0;
    float *params = model_get_param_buffer(m, &count);
    for (size_t i = 0; i < count; i++)
        params[i] = (float)(0.1 * rng_normal(&r));
    CHECK(checkpoint_save_llama2c(m, path_of("llama2c", "tiny.bin")));
    CHECK(checkpoint_save_gguf(m, path_of("gguf", "tiny_f32.gguf"), CHECKPOINT_F32));
    CHECK(checkpoint_save_gguf(m, path_of("gguf", "tiny_f16.gguf"), CHECKPOINT_F16));
    snprintf(p, sizeof p, "%s/hf", tmp);
    CHECK(checkpoint_save_hf_dtype(m, p, CHECKPOINT_BF16));
    {
        char c[1300], st[1300];
        snprintf(c, sizeof c, "%s/config.json", p);
        snprintf(st, sizeof st, "%s/model.safetensors", p);
        const char *files[2] = {c, st};
        join_seed("hf", "tiny_bf16.seed", 2, files);
    }

    /* a PEFT adapter for that shape */
    lora_config lc = {.targets = LORA_TARGETS_ALL, .rank = 2, .alpha = 4.0f, .dropout = 0.0f, .seed = 3};
    lora_set *l = NULL;
    CHECK(lora_create(&l, &tiny, &lc));
    snprintf(p, sizeof p, "%s/peft", tmp);
    CHECK(lora_save_peft(l, p, "tiny"));
    lora_free(l);
    {
        char c[1300], st[1300];
        snprintf(c, sizeof c, "%s/adapter_config.json", p);
        snprintf(st, sizeof st, "%s/adapter_model.safetensors", p);
        const char *files[2] = {c, st};
        join_seed("peft", "tiny_all_r2.seed", 2, files);
    }

    /* zoo manifest naming the llama2.c file, with its real sha256 */
    {
        char hex[65], manifest[1024];
        CHECK(sha256_file_hex(path_of("llama2c", "tiny.bin"), hex));
        snprintf(manifest, sizeof manifest,
                 "{\"format\": \"qlab-zoo-1\", \"models\": [{\"name\": \"zoo-a\", \"file\": \"zoo-a.bin\", "
                 "\"sha256\": \"%s\", \"params\": %zu, \"final_train_loss\": 2.5, "
                 "\"final_heldout_loss\": 2.75}]}",
                 hex, count);
        snprintf(p, sizeof p, "%s/manifest.json", tmp);
        CHECK(qlab_write_file_atomic(p, manifest, strlen(manifest)));
        const char *files[2] = {p, path_of("llama2c", "tiny.bin")};
        join_seed("zoo", "one_model.seed", 2, files);
    }
    model_free(m);

    /* tokenizer.bin: llama2.c's fixed ids, the byte pieces and a few merges */
    {
        static char bytes[256][8];
        const char *pieces[300];
        float scores[300];
        int n = 0;
        pieces[n++] = "<unk>", pieces[n++] = "<s>", pieces[n++] = "</s>";
        for (int b = 0; b < 256; b++)
            snprintf(bytes[b], 8, "<0x%02X>", b), pieces[n++] = bytes[b];
        const char *merges[] = {"\xe2\x96\x81",
                                "\xe2\x96\x81t",
                                "he",
                                "\xe2\x96\x81the",
                                "on",
                                "ce",
                                "a",
                                "e",
                                "h",
                                "n",
                                "o",
                                "t",
                                "c"};
        for (size_t i = 0; i < sizeof merges / sizeof merges[0]; i++)
            pieces[n++] = merges[i];
        for (int i = 0; i < n; i++)
            scores[i] = i < 259 ? 0.0f : (float)(-i);
        CHECK(tokenizer_save_bin(path_of("tokenizer_bin", "bytes_merges.bin"), n, pieces, scores, 8));
    }

    /* a results file as the experiments write it */
    {
        results *res = NULL;
        char *args[] = {"make_seeds"};
        CHECK(results_create(&res, path_of("results", "run.h5"), "fuzz_seed", NULL, 1, args));
        CHECK(results_attr_int(res, "seed", 1));
        results_table *t = NULL;
        CHECK(results_table_begin(res, &t, "main", "A table"));
        CHECK(results_table_column(t, "dtype", RESULTS_STRING, "", "data type"));
        CHECK(results_table_column(t, "blocksize", RESULTS_INT64, "", "block size"));
        CHECK(results_table_column(t, "ppl", RESULTS_FLOAT64, "", "perplexity"));
        const char *names[2] = {"nf4", "fp4"};
        for (int i = 0; i < 2; i++) {
            CHECK(results_set_string(t, "dtype", names[i]));
            CHECK(results_set_int(t, "blocksize", 64));
            CHECK(results_set_double(t, "ppl", 10.5 + i));
            CHECK(results_row_end(t));
        }
        CHECK(results_table_note(t, "a note"));
        CHECK(results_table_end(t));
        double arr[6] = {1, 2, 3, 4, 5, 6};
        int64_t dims[2] = {2, 3};
        CHECK(results_write_array(res, "curve", arr, 2, dims, "an array"));
        CHECK(results_commit(res));
    }

    /* text formats written as a user would */
    write_text("config", "overrides.seed",
               "{\"seed\": 3, \"lr\": 1e-3, \"dtypes\": [\"nf4\", \"fp4\"], \"blocksizes\": [64, 128], "
               "\"fractions\": [0.5, 1], \"models\": {\"a\": 1}, \"ctx\": 64, \"name\": \"x\", "
               "\"double_quant\": false}" FUZZ_SEP "seed=5" FUZZ_SEP "dtypes=[\"int4\"]" FUZZ_SEP
               "name=plain");
    const char *alpaca = "[{\"instruction\": \"Name a colour.\", \"input\": \"\", \"output\": \"Blue.\"},\n"
                         " {\"instruction\": \"Add\", \"input\": \"2 and 3\", \"output\": \"5\"}]\n";
    write_text("instruct", "alpaca.json", alpaca);
    write_text("instruct", "oasst.jsonl",
               "{\"text\": \"### Human: Hi there### Assistant: Hello! How can I help?\"}\n"
               "{\"text\": \"### Human: a### Assistant: b### Human: c### Assistant: d\"}\n");
    write_text("instruct", "records.jsonl",
               "{\"input\": \"Say hi\", \"output\": \"hi\"}\n"
               "{\"instruction\": \"x\", \"output\": \"y\"}\n");
    write_text("instruct", "vicuna.jsonl",
               "{\"question_id\": 1, \"text\": \"How are you?\", \"category\": "
               "\"generic\"}\n");
    write_text("instruct", "plain.txt", "Once upon a time there was a cat.\nThe end.\n");
    const char *csv =
        "question,A,B,C,D,answer\n\"What is 2+2?\",3,4,5,6,B\n\"Multi\nline, \"\"quoted\"\"\",a,b,c,d,0\n";
    write_text("mmlu", "csv.seed", csv);
    write_text("mmlu", "qlora.json",
               "[{\"input\": \"Q? A. x B. y C. z D. w Answer:\", \"output\": \"A\", "
               "\"subject\": \"abstract_algebra\"}]");
    write_text(
        "tokenizer_json", "bpe.json",
        "{\"model\": {\"type\": \"BPE\", \"byte_fallback\": true, \"vocab\": {\"<unk>\": 0, \"<s>\": 1, "
        "\"</s>\": 2, \"<0x41>\": 3, \"a\": 4, \"b\": 5, \"ab\": 6, \"\\u2581\": 7, \"\\u2581ab\": 8}, "
        "\"merges\": [\"a b\", \"\\u2581 ab\"]}, \"added_tokens\": [{\"id\": 1, \"content\": \"<s>\", "
        "\"special\": true}], \"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [{\"type\": "
        "\"Prepend\", \"prepend\": \"\\u2581\"}, {\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, "
        "\"content\": \"\\u2581\"}]}, \"pre_tokenizer\": null, \"decoder\": null}");
    write_text(
        "tokenizer_json", "bytelevel.json",
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2, \"\\u0120\": 3, "
        "\"\\u0120ab\": 4, \"<|endoftext|>\": 5}, \"merges\": [[\"a\", \"b\"], [\"\\u0120\", \"ab\"]]}, "
        "\"added_tokens\": [{\"id\": 5, \"content\": \"<|endoftext|>\", \"special\": true}], "
        "\"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": true}, "
        "\"decoder\": {\"type\": \"ByteLevel\"}}");
    /* gzip and tar (zlib's gzip writer; the ustar header of fuzz.h) */
    {
        size_t tlen = 0;
        unsigned char *tar = fuzz_tar_wrap("data/dev/x_dev.csv", (const uint8_t *)csv, strlen(csv), &tlen);
        CHECK(qlab_write_file_atomic(path_of("gzip_tar", "mmlu.tar"), tar, tlen));
        CHECK(qlab_write_file_atomic(path_of("mmlu", "tar_member.csv"), csv, strlen(csv)));
        gzFile gz = gzopen(path_of("gzip_tar", "mmlu.tar.gz"), "wb9");
        if (!gz || gzwrite(gz, tar, (unsigned)tlen) != (int)tlen || gzclose(gz) != Z_OK) return 1;
        gz = gzopen(path_of("gzip_tar", "alpaca.json.gz"), "wb9");
        if (!gz || gzwrite(gz, alpaca, (unsigned)strlen(alpaca)) != (int)strlen(alpaca) ||
            gzclose(gz) != Z_OK)
            return 1;
        gz = gzopen(path_of("instruct", "alpaca.json.gz"), "wb9");
        if (!gz || gzwrite(gz, alpaca, (unsigned)strlen(alpaca)) != (int)strlen(alpaca) ||
            gzclose(gz) != Z_OK)
            return 1;
        free(tar);
    }

    snprintf(p, sizeof p, "rm -rf '%s'", tmp);
    if (system(p) != 0) return 1;
    printf("make_seeds: wrote the seed corpora under %s\n", root);
    return 0;
}
