/* Tests of datasets/instruct: the real Alpaca, OASST1 and Vicuna files (counts, the qlora templates on
 * hand-written expected strings, the generation prompts against the file's own "prompt" field), the target
 * mask (decoded response tokens equal the response text), truncation, padding and packing, malformed files
 * (status and a message naming the file and record), and determinism of the split and the batch order. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "tests/check.h"
#include "core/base/common.h"
#include "datasets/instruct.h"
#include "tests/test_util.h"
#include "core/text/tokenizer.h"

#define ALPACA_FILE "finetune/alpaca_data_1k.json"
#define OASST_FILE "finetune/qlora_eval/prompts/oa_questions.jsonl.gz"
#define VICUNA_FILE "finetune/qlora_eval/prompts/vicuna_questions.jsonl"
#define TOKENIZER_FILE "models/tok512.bin"

static void write_text(const char *path, const char *text) {
    write_bytes(path, text, strlen(text));
}

/* Writes text gzip'd with zlib's own writer (the test does not trust the library for this). */
static void write_gzip(const char *path, const char *text) {
    gzFile g = gzopen(path, "wb");
    if (!g) exit(2);
    gzwrite(g, text, (unsigned)strlen(text));
    gzclose(g);
}

/* A load that must fail: its status and that the message names the file and contains each fragment. */
typedef qlab_status (*loader_fn)(const char *, instruct_set *);

static void expect_failure(loader_fn load, const char *path, qlab_status want, const char *fragment1,
                           const char *fragment2) {
    instruct_set s;
    qlab_status st = load(path, &s);
    const char *msg = qlab_last_error();
    CHECKF(st == want, "%s: got %s, want %s (%s)", path, qlab_status_name(st), qlab_status_name(want), msg);
    CHECKF(strstr(msg, path) != NULL, "message does not name the file: %s", msg);
    CHECKF(!fragment1 || strstr(msg, fragment1), "message lacks \"%s\": %s", fragment1, msg);
    CHECKF(!fragment2 || strstr(msg, fragment2), "message lacks \"%s\": %s", fragment2, msg);
    CHECKF(strchr(msg, '\n') == NULL, "message is more than one line: %s", msg);
    CHECK(s.count == 0 && s.records == NULL);
}

/* ------------------------------------------------------------------------------------------ real files */

static void test_alpaca(void) {
    const char *path = shared_data_path(ALPACA_FILE);
    if (!path) {
        SKIP("%s absent (shared data not available)", ALPACA_FILE);
        return;
    }
    instruct_set s;
    qlab_status st = instruct_load_alpaca(path, &s);
    CHECKF(st == QLAB_OK, "%s", qlab_last_error());
    if (st != QLAB_OK) return;
    CHECK(s.count == 1000);
    /* Record 0 has an empty input: qlora's "prompt_no_input" template, written out by hand. */
    const char *want0 = "Below is an instruction that describes a task. Write a response that appropriately "
                        "completes the request.\n\n### Instruction:\nRe-write the following sentence, making "
                        "it more concise:\n \nThe two were walking together, and they were going to a nearby "
                        "store.\n\n### Response: ";
    CHECKF(!strcmp(s.records[0].prompt, want0), "record 0 prompt:\n[%s]", s.records[0].prompt);
    CHECK(!strcmp(s.records[0].response, "They walked to a nearby store."));
    /* Record 1 has an input: "prompt_input". */
    const char *want1 = "Below is an instruction that describes a task, paired with an input that provides "
                        "further context. Write a response that appropriately completes the request.\n\n"
                        "### Instruction:\nRewrite the following sentence to use a passive voice instead.\n\n"
                        "### Input:\nThe president delivered a speech yesterday.\n\n### Response: ";
    CHECKF(!strcmp(s.records[1].prompt, want1), "record 1 prompt:\n[%s]", s.records[1].prompt);
    CHECK(!strcmp(s.records[1].response, "A speech was delivered by the president yesterday."));
    CHECK(s.records[1].source == INSTRUCT_SOURCE_ALPACA && s.records[1].position == 1);
    /* 392 of the 1000 records have a non-empty input (counted independently with Python's json). */
    int with_input = 0;
    for (int i = 0; i < s.count; i++)
        with_input +=
            !strncmp(s.records[i].prompt, "Below is an instruction that describes a task, paired", 53);
    CHECK(with_input == 392);
    instruct_set_free(&s);

    /* The content-sniffing loader picks the Alpaca format. */
    st = instruct_load(path, &s);
    CHECK(st == QLAB_OK && s.count == 1000 && s.records[999].source == INSTRUCT_SOURCE_ALPACA);
    instruct_set_free(&s);
}

/* Reads the "prompt" field of every line of the gzip'd OASST file with zlib and cJSON directly. */
static char **read_oasst_prompt_fields(const char *path, int *n) {
    gzFile g = gzopen(path, "rb");
    if (!g) return NULL;
    size_t cap = 1 << 22, len = 0;
    char *buf = malloc(cap);
    int got;
    while ((got = gzread(g, buf + len, (unsigned)(cap - len - 1))) > 0) {
        len += (size_t)got;
        if (cap - len < 2) buf = realloc(buf, cap *= 2);
    }
    gzclose(g);
    buf[len] = 0;
    char **prompts = NULL;
    int count = 0;
    for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
        cJSON *o = cJSON_Parse(line);
        const cJSON *p = cJSON_GetObjectItem(o, "prompt");
        prompts = realloc(prompts, (size_t)(count + 1) * sizeof *prompts);
        prompts[count++] = strdup(cJSON_IsString(p) ? p->valuestring : "");
        cJSON_Delete(o);
    }
    free(buf);
    *n = count;
    return prompts;
}

static void test_oasst1(void) {
    const char *path = shared_data_path(OASST_FILE);
    if (!path) {
        SKIP("%s absent (shared data not available)", OASST_FILE);
        return;
    }
    instruct_set s;
    qlab_status st = instruct_load_oasst1(path, &s);
    CHECKF(st == QLAB_OK, "%s", qlab_last_error());
    if (st != QLAB_OK) return;
    CHECK(s.count == 953);
    int chat_shaped = 0;
    for (int i = 0; i < s.count; i++) {
        const char *p = s.records[i].prompt;
        size_t n = strlen(p);
        chat_shaped += !strncmp(p, "### Human: ", 11) && n > 15 && !strcmp(p + n - 15, " ### Assistant:") &&
                       s.records[i].response && s.records[i].response[0];
    }
    CHECK(chat_shaped == 953);
    CHECK(s.records[0].position == 1 && s.records[952].position == 953);
    /* The generation prompt (system sentence + prompt) reproduces every item's own "prompt" field. */
    int n_fields = 0, same = 0;
    char **fields = read_oasst_prompt_fields(path, &n_fields);
    CHECK(n_fields == 953);
    for (int i = 0; i < n_fields && i < s.count; i++) {
        char *g = instruct_generation_prompt(&s.records[i]);
        same += g && !strcmp(g, fields[i]);
        free(g);
        free(fields[i]);
    }
    free(fields);
    CHECK(same == 953);
    instruct_set_free(&s);

    st = instruct_load(path, &s);
    CHECK(st == QLAB_OK && s.count == 953 && s.records[0].source == INSTRUCT_SOURCE_OASST1);
    instruct_set_free(&s);
}

static void test_vicuna(void) {
    const char *path = shared_data_path(VICUNA_FILE);
    if (!path) {
        SKIP("%s absent (shared data not available)", VICUNA_FILE);
        return;
    }
    instruct_set s;
    qlab_status st = instruct_load_vicuna(path, &s);
    CHECKF(st == QLAB_OK, "%s", qlab_last_error());
    if (st != QLAB_OK) return;
    CHECK(s.count == 80);
    CHECK(!strcmp(s.records[0].prompt,
                  "### Human: How can I improve my time management skills? ### Assistant:"));
    CHECK(s.records[0].response == NULL && s.records[79].response == NULL);
    /* The prompt of qlora's released Vicuna generations (eval/generations/vicuna/, question 1). */
    char *g = instruct_generation_prompt(&s.records[0]);
    CHECK(g && !strcmp(g, "A chat between a curious human and an artificial intelligence assistant. The "
                          "assistant gives helpful, detailed, and polite answers to the user's questions. "
                          "### Human: How can I improve my time management skills? ### Assistant:"));
    free(g);
    instruct_set_free(&s);
    st = instruct_load(path, &s);
    CHECK(st == QLAB_OK && s.count == 80 && s.records[5].source == INSTRUCT_SOURCE_VICUNA);
    instruct_set_free(&s);
}

/* ------------------------------------------------------------------------------------------ encoding */

/* Checks one unpacked, uncut row of record r against independent encodes of its prompt and response:
 * BOS + prompt ids, then response ids + EOS, then padding; targets exactly at the response. */
static int row_matches_record(const tokenizer *tok, const instruct_examples *e, int row,
                              const instruct_record *r, int pad) {
    int *p = NULL, *q = NULL;
    size_t np = 0, nq = 0;
    if (tokenizer_encode(tok, r->prompt, strlen(r->prompt), 1, &p, &np) != QLAB_OK) return 0;
    if (tokenizer_encode(tok, r->response, strlen(r->response), 0, &q, &nq) != QLAB_OK) return 0;
    const int *tk = e->tokens + (size_t)row * e->T, *tg = e->targets + (size_t)row * e->T;
    int ok = e->lengths[row] == (int)(np + nq + 1);
    for (size_t i = 0; ok && i < np; i++)
        ok = tk[i] == p[i] && tg[i] == (i + 1 < np ? -1 : q[0]);
    for (size_t i = 0; ok && i < nq; i++)
        ok = tk[np + i] == q[i] && tg[np + i] == (i + 1 < nq ? q[i + 1] : tokenizer_eos_id(tok));
    ok = ok && tk[np + nq] == tokenizer_eos_id(tok) && tg[np + nq] == -1;
    for (int t = (int)(np + nq + 1); ok && t < e->T; t++)
        ok = tk[t] == pad && tg[t] == -1;
    free(p);
    free(q);
    return ok;
}

/* The non-ignored targets of a row, in order. */
static int row_targets(const instruct_examples *e, int row, int *ids) {
    int n = 0;
    for (int t = 0; t < e->T; t++)
        if (e->targets[(size_t)row * e->T + t] >= 0) ids[n++] = e->targets[(size_t)row * e->T + t];
    return n;
}

static void test_encode_real(const tokenizer *tok) {
    const char *path = shared_data_path(ALPACA_FILE);
    const char *opath = shared_data_path(OASST_FILE);
    if (!path || !opath) {
        SKIP("%s or %s absent (shared data not available)", ALPACA_FILE, OASST_FILE);
        return;
    }
    instruct_set s, o;
    if (instruct_load_alpaca(path, &s) != QLAB_OK || instruct_load_oasst1(opath, &o) != QLAB_OK) {
        CHECKF(0, "%s", qlab_last_error());
        return;
    }
    int eos = tokenizer_eos_id(tok), bos = tokenizer_bos_id(tok);
    int n = 200; /* a slice keeps the test fast; all 1000 are encoded in the packing test below */
    instruct_encode_options opt = {
        .max_len = 1024, .source_max_len = 1023, .target_max_len = 1024, .pad_id = 0};
    instruct_examples e;
    qlab_status st = instruct_encode(tok, s.records, n, &opt, &e);
    CHECKF(st == QLAB_OK, "%s", qlab_last_error());
    if (st != QLAB_OK) return;
    CHECK(e.n == n && e.T == 1024 && e.n_dropped == 0 && e.has_bos && e.has_eos);
    int exact = 0, uncut = 0, decoded_ok = 0;
    int *ids = malloc(1024 * sizeof *ids);
    for (int i = 0; i < e.n; i++) {
        if (e.lengths[i] == e.T) continue; /* could be cut; the long rows are covered below */
        uncut++;
        exact += row_matches_record(tok, &e, i, &s.records[i], 0);
        /* Decoding the learned targets gives the response: the EOS decodes to nothing and the
         * SentencePiece dummy prefix gives one leading space (tokenizer.h). */
        int k = row_targets(&e, i, ids);
        char *text = NULL;
        size_t len = 0;
        if (k > 0 && ids[k - 1] == eos && tokenizer_decode(tok, ids, (size_t)k, &text, &len) == QLAB_OK) {
            decoded_ok += len == strlen(s.records[i].response) + 1 && text[0] == ' ' &&
                          !memcmp(text + 1, s.records[i].response, len - 1);
        }
        free(text);
    }
    CHECKF(uncut > 190, "only %d of %d rows fit in 1024 tokens", uncut, n);
    CHECKF(exact == uncut, "%d of %d rows match the independent encode", exact, uncut);
    CHECKF(decoded_ok == uncut, "%d of %d rows decode to \" \" + response", decoded_ok, uncut);
    /* The prompt part decodes back to the formatted prompt (BOS drops the dummy prefix). */
    int k = 0;
    while (e.targets[k] < 0)
        k++;
    char *text = NULL;
    size_t len = 0;
    CHECK(e.tokens[0] == bos);
    CHECK(tokenizer_decode(tok, e.tokens, (size_t)k + 1, &text, &len) == QLAB_OK &&
          !strcmp(text, s.records[0].prompt));
    free(text);
    instruct_examples_free(&e);

    /* OASST1 (multilingual, multi-turn contexts): same checks on the first 100 items. */
    st = instruct_encode(tok, o.records, 100, &opt, &e);
    CHECKF(st == QLAB_OK, "%s", qlab_last_error());
    exact = uncut = 0;
    for (int i = 0; st == QLAB_OK && i < e.n; i++) {
        if (e.lengths[i] == e.T) continue;
        uncut++;
        exact += row_matches_record(tok, &e, i, &o.records[e.first_record[i]], 0);
    }
    CHECKF(uncut > 30 && exact == uncut, "oasst1: %d of %d uncut rows match", exact, uncut);
    instruct_examples_free(&e);

    /* Defaults on a short row: the source is capped at 3*(T/4) = 48, so every row keeps >= 16 response
     * positions; the response fills the rest and loses its EOS when cut. Alpaca's template alone is more
     * than 48 tok512 tokens, so every source is cut to 48 and the first target sits at position 47. */
    instruct_encode_options small = {.max_len = 64};
    st = instruct_encode(tok, s.records, 50, &small, &e);
    CHECKF(st == QLAB_OK, "%s", qlab_last_error());
    int rows_ok = 0, want_target_cut = 0;
    for (int i = 0; st == QLAB_OK && i < e.n; i++) {
        int *q = NULL;
        size_t nq = 0;
        tokenizer_encode(tok, s.records[i].response, strlen(s.records[i].response), 0, &q, &nq);
        int want = (int)nq + 1 < 16 ? (int)nq + 1 : 16; /* response + EOS, cut to the 16 free positions */
        want_target_cut += (int)nq + 1 > 16;
        const int *tg = e.targets + (size_t)i * 64;
        int first = 0, count = 0, match = 1;
        while (first < 64 && tg[first] < 0)
            first++;
        for (int t = 0; t < 64; t++)
            count += tg[t] >= 0;
        for (int j = 0; j < want && j < (int)nq; j++)
            match = match && tg[47 + j] == q[j];
        rows_ok += first == 47 && count == want && e.lengths[i] == 48 + want && match;
        free(q);
    }
    CHECKF(rows_ok == 50, "%d of 50 default-cut rows as expected", rows_ok);
    CHECK(e.n_source_cut == 50 && e.n_target_cut == want_target_cut && want_target_cut > 40);
    instruct_examples_free(&e);

    /* Explicit caps as qlora's source_max_len / target_max_len: 10 + 5 tokens, padded to 32. */
    instruct_encode_options caps = {.max_len = 32, .source_max_len = 10, .target_max_len = 5, .pad_id = 3};
    st = instruct_encode(tok, s.records, 1, &caps, &e);
    CHECK(st == QLAB_OK && e.n == 1 && e.lengths[0] == 15);
    if (st == QLAB_OK) {
        int *q = NULL;
        size_t nq = 0;
        tokenizer_encode(tok, s.records[0].response, strlen(s.records[0].response), 0, &q, &nq);
        int good = e.tokens[0] == bos && nq > 5;
        for (int t = 0; t < 32; t++) {
            int want_target = t >= 9 && t < 14 ? q[t - 9] : -1;
            good = good && e.targets[t] == want_target;
            if (t >= 15) good = good && e.tokens[t] == 3;
        }
        CHECK(good);
        CHECK(e.n_source_cut == 1 && e.n_target_cut == 1 && e.n_target_tokens == 5);
        free(q);
    }
    instruct_examples_free(&e);

    /* train_on_source: every position but the last real one learns its next token. */
    instruct_encode_options all = opt;
    all.train_on_source = 1;
    st = instruct_encode(tok, s.records, 3, &all, &e);
    CHECK(st == QLAB_OK);
    for (int i = 0; st == QLAB_OK && i < e.n; i++) {
        int k2 = row_targets(&e, i, ids);
        CHECK(k2 == e.lengths[i] - 1 && e.targets[(size_t)i * e.T] == e.tokens[(size_t)i * e.T + 1]);
    }
    instruct_examples_free(&e);

    /* Prompt-only records cannot be encoded for training. */
    instruct_record vicuna = {.prompt = "### Human: hi ### Assistant:", .source = INSTRUCT_SOURCE_VICUNA};
    st = instruct_encode(tok, &vicuna, 1, &opt, &e);
    CHECK(st == QLAB_ERR_ARG && strstr(qlab_last_error(), "no response"));
    free(ids);
    instruct_set_free(&s);
    instruct_set_free(&o);
}

static void test_packing(const tokenizer *tok) {
    const char *path = shared_data_path(ALPACA_FILE);
    if (!path) {
        SKIP("%s absent (shared data not available)", ALPACA_FILE);
        return;
    }
    instruct_set s;
    if (instruct_load_alpaca(path, &s) != QLAB_OK) {
        CHECKF(0, "%s", qlab_last_error());
        return;
    }
    instruct_encode_options opt = {.max_len = 512};
    instruct_examples plain, packed;
    qlab_status st = instruct_encode(tok, s.records, s.count, &opt, &plain);
    CHECKF(st == QLAB_OK, "%s", qlab_last_error());
    opt.pack = 1;
    qlab_status st2 = instruct_encode(tok, s.records, s.count, &opt, &packed);
    CHECKF(st2 == QLAB_OK, "%s", qlab_last_error());
    if (st != QLAB_OK || st2 != QLAB_OK) return;
    CHECK(plain.n == 1000);
    /* Expected rows from an independent greedy fill over the unpacked lengths (a record is cut the same way
     * in both modes: it either fits whole or starts its own row). tok512 spends ~330 tokens on a record. */
    int want_rows = 0, used = 512;
    for (int i = 0; i < plain.n; i++) {
        if (used + plain.lengths[i] <= 512 && want_rows > 0) {
            used += plain.lengths[i];
        } else {
            want_rows++;
            used = plain.lengths[i];
        }
    }
    CHECKF(packed.n == want_rows && packed.n < plain.n, "packed rows %d, want %d", packed.n, want_rows);
    /* Packing moves whole records, it does not cut them differently. */
    CHECK(packed.n_target_tokens == plain.n_target_tokens);
    long long plain_real = 0, packed_real = 0, bos_count = 0;
    int padding_ignored = 1;
    for (int i = 0; i < plain.n; i++)
        plain_real += plain.lengths[i];
    for (int i = 0; i < packed.n; i++) {
        packed_real += packed.lengths[i];
        for (int t = 0; t < packed.lengths[i]; t++)
            bos_count += packed.tokens[(size_t)i * 512 + t] == tokenizer_bos_id(tok);
        for (int t = packed.lengths[i]; t < 512; t++)
            padding_ignored = padding_ignored && packed.targets[(size_t)i * 512 + t] == -1;
    }
    CHECK(padding_ignored);
    CHECK(packed_real == plain_real);
    CHECK(bos_count == 1000); /* one BOS per record: tok512 never produces BOS from text */
    CHECK(packed.first_record[0] == 0 && packed.first_record[packed.n - 1] < 1000);
    instruct_examples_free(&plain);
    instruct_examples_free(&packed);
    instruct_set_free(&s);
}

/* ------------------------------------------------------------------------------------------ malformed */

static void test_malformed(void) {
    const char *p;
    p = tmp_path("notjson.json");
    write_text(p, "[{\"instruction\": \"a\", \"output\": \"b\"},\n  {oops}]");
    expect_failure(instruct_load_alpaca, p, QLAB_ERR_FORMAT, "not valid JSON", "line 2");

    p = tmp_path("missing_output.json");
    write_text(p, "[{\"instruction\": \"a\", \"input\": \"\", \"output\": \"b\"}, {\"instruction\": \"c\"}]");
    expect_failure(instruct_load_alpaca, p, QLAB_ERR_FORMAT, "record 1", "\"output\" missing");

    p = tmp_path("number.jsonl");
    write_text(p, "{\"input\": \"### Human: hi ### Assistant:\", \"output\": \"hello\"}\n"
                  "{\"input\": \"### Human: hi ### Assistant:\", \"output\": 5}\n");
    expect_failure(instruct_load_oasst1, p, QLAB_ERR_FORMAT, "line 2", "\"output\" is a number");

    p = tmp_path("empty.json");
    write_text(p, "[]");
    expect_failure(instruct_load_alpaca, p, QLAB_ERR_FORMAT, "no records", NULL);
    p = tmp_path("blank.jsonl");
    write_text(p, "\n\n");
    expect_failure(instruct_load_oasst1, p, QLAB_ERR_FORMAT, "no records", NULL);

    p = tmp_path("object.json");
    write_text(p, "{\"instruction\": \"a\", \"output\": \"b\"}");
    expect_failure(instruct_load_alpaca, p, QLAB_ERR_FORMAT, "not a JSON array", NULL);

    p = tmp_path("not_object.json");
    write_text(p, "[{\"instruction\": \"a\", \"output\": \"b\"}, \"just a string\"]");
    expect_failure(instruct_load_alpaca, p, QLAB_ERR_FORMAT, "record 1", "not a JSON object");

    p = tmp_path("utf8.json");
    write_text(p, "[{\"instruction\": \"caf\xc3\xa9\", \"output\": \"ok\"}, {\"instruction\": \"a\", "
                  "\"output\": \"bad \xc3\x28 byte\"}]");
    expect_failure(instruct_load_alpaca, p, QLAB_ERR_FORMAT, "record 1", "not valid UTF-8");

    p = tmp_path("two_values.jsonl");
    write_text(p, "{\"input\": \"a\", \"output\": \"b\"} {\"input\": \"c\", \"output\": \"d\"}\n");
    expect_failure(instruct_load_oasst1, p, QLAB_ERR_FORMAT, "line 1", "more than one JSON value");

    p = tmp_path("vicuna_bad.jsonl");
    write_text(p, "{\"question_id\": 1, \"text\": \"hi\"}\n\n{\"question_id\": 2, \"text\": null}\n");
    expect_failure(instruct_load_vicuna, p, QLAB_ERR_FORMAT, "line 3", "\"text\" is null");

    expect_failure(instruct_load_alpaca, tmp_path("does_not_exist.json"), QLAB_ERR_IO, NULL, NULL);

    /* gzip: a good file loads; the same file cut short fails as truncated. */
    const char *good = "{\"input\": \"### Human: a ### Assistant:\", \"output\": \"b\"}\n"
                       "{\"input\": \"### Human: c ### Assistant:\", \"output\": \"d\"}\n";
    p = tmp_path("good.jsonl.gz");
    write_gzip(p, good);
    instruct_set s;
    qlab_status st = instruct_load_oasst1(p, &s);
    CHECKF(st == QLAB_OK && s.count == 2 && !strcmp(s.records[1].response, "d"), "%s", qlab_last_error());
    instruct_set_free(&s);
    char *gz = NULL;
    size_t gz_len = 0;
    CHECK(qlab_read_file(p, &gz, &gz_len) == QLAB_OK && gz_len > 20);
    p = tmp_path("truncated.jsonl.gz");
    write_bytes(p, gz, gz_len - 12); /* drops the CRC/length trailer and some deflate data */
    expect_failure(instruct_load_oasst1, p, QLAB_ERR_FORMAT, "truncated", NULL);
    gz[gz_len / 2] ^= 0x55; /* corrupt data in the middle: zlib's error, never a crash */
    p = tmp_path("corrupt.jsonl.gz");
    write_bytes(p, gz, gz_len);
    expect_failure(instruct_load_oasst1, p, QLAB_ERR_FORMAT, "gzip", NULL);
    free(gz);

    /* Every prefix of a small valid file either loads or fails cleanly (never crashes). */
    const char *full = "[{\"instruction\": \"a\\u00e9\", \"input\": \"x\", \"output\": \"b\"}]";
    int clean = 1;
    for (size_t cut = 0; cut < strlen(full); cut++) {
        p = tmp_path("prefix.json");
        write_bytes(p, full, cut);
        st = instruct_load_alpaca(p, &s);
        clean = clean && st == QLAB_ERR_FORMAT && strstr(qlab_last_error(), p);
        instruct_set_free(&s);
    }
    CHECK(clean);
}

/* ------------------------------------------------------------------------------------------ determinism */

static void test_split_and_batches(void) {
    int *tr1, *ev1, *tr2, *ev2, *tr3, *ev3, ntr, nev;
    CHECK(instruct_split(1000, 100, 42, &tr1, &ntr, &ev1, &nev) == QLAB_OK && ntr == 900 && nev == 100);
    CHECK(instruct_split(1000, 100, 42, &tr2, &ntr, &ev2, &nev) == QLAB_OK);
    CHECK(instruct_split(1000, 100, 43, &tr3, &ntr, &ev3, &nev) == QLAB_OK);
    CHECK(!memcmp(tr1, tr2, 900 * sizeof *tr1) && !memcmp(ev1, ev2, 100 * sizeof *ev1));
    CHECK(memcmp(ev1, ev3, 100 * sizeof *ev1) != 0);
    /* A partition of 0..999, each side sorted. */
    char seen[1000] = {0};
    int partition = 1;
    for (int i = 0; i < 900; i++)
        partition = partition && !seen[tr1[i]]++ && (i == 0 || tr1[i] > tr1[i - 1]);
    for (int i = 0; i < 100; i++)
        partition = partition && !seen[ev1[i]]++ && (i == 0 || ev1[i] > ev1[i - 1]);
    CHECK(partition);
    /* The eval side is spread over the file, not a block: a shuffle, not a slice. */
    CHECK(ev1[0] < 100 && ev1[99] > 900);
    free(tr1), free(ev1), free(tr2), free(ev2), free(tr3), free(ev3);
    CHECK(instruct_split(10, 11, 1, &tr1, &ntr, &ev1, &nev) == QLAB_ERR_ARG);

    /* Batches over a fake 10-row set whose token at column 0 is the row number. */
    instruct_examples e = {.n = 10, .T = 2};
    int tokens[20], targets[20];
    for (int i = 0; i < 10; i++)
        tokens[2 * i] = i, tokens[2 * i + 1] = 0, targets[2 * i] = -1, targets[2 * i + 1] = -1;
    e.tokens = tokens;
    e.targets = targets;
    instruct_batcher a, b, c;
    CHECK(instruct_batcher_init(&a, 10, 4, 0, 7) == QLAB_OK);
    CHECK(instruct_batcher_init(&b, 10, 4, 0, 7) == QLAB_OK);
    CHECK(instruct_batcher_init(&c, 10, 4, 0, 8) == QLAB_OK);
    int seq_a[30], seq_c[30], sizes[9], same_ab = 1, n_a = 0, n_c = 0, copied_named_row = 1;
    for (int k = 0; k < 9; k++) { /* 3 epochs of 4 + 4 + 2 */
        int bt[8], bi[4], bt2[8], bi2[4], bt3[8], bi3[4], bg[8];
        int na = instruct_batcher_next(&a, &e, bt, bg, bi);
        int nb = instruct_batcher_next(&b, &e, bt2, NULL, bi2);
        int nc = instruct_batcher_next(&c, &e, bt3, NULL, bi3);
        sizes[k] = na;
        same_ab = same_ab && na == nb && !memcmp(bi, bi2, (size_t)na * sizeof *bi);
        for (int i = 0; i < na; i++) {
            seq_a[n_a++] = bi[i];
            copied_named_row = copied_named_row && bt[2 * i] == bi[i];
        }
        for (int i = 0; i < nc; i++)
            seq_c[n_c++] = bi3[i];
    }
    CHECK(same_ab);
    CHECK(copied_named_row);
    CHECK(sizes[0] == 4 && sizes[1] == 4 && sizes[2] == 2 && sizes[5] == 2 && sizes[8] == 2 && n_a == 30);
    int each_epoch_permutes = 1;
    for (int ep = 0; ep < 3; ep++) {
        int count[10] = {0};
        for (int i = 0; i < 10; i++)
            count[seq_a[10 * ep + i]]++;
        for (int i = 0; i < 10; i++)
            each_epoch_permutes = each_epoch_permutes && count[i] == 1;
    }
    CHECK(each_epoch_permutes);
    CHECK(memcmp(seq_a, seq_a + 10, 10 * sizeof *seq_a) != 0); /* a new order each epoch */
    CHECK(n_c == 30 && memcmp(seq_a, seq_c, sizeof seq_a) != 0);
    instruct_batcher_free(&a);
    instruct_batcher_free(&b);
    instruct_batcher_free(&c);

    /* drop_last: 10 rows in batches of 4 gives 4, 4, then the next epoch. */
    CHECK(instruct_batcher_init(&a, 10, 4, 1, 7) == QLAB_OK);
    int bi[4], ok = 1;
    for (int k = 0; k < 6; k++)
        ok = ok && instruct_batcher_next(&a, &e, NULL, NULL, bi) == 4;
    CHECK(ok && a.epoch == 2);
    instruct_batcher_free(&a);
    CHECK(instruct_batcher_init(&a, 3, 4, 1, 7) == QLAB_ERR_ARG);
    CHECK(instruct_batcher_init(&a, 0, 4, 0, 7) == QLAB_ERR_ARG);
}

/* The same mask checks with the Llama 2 vocabulary (32,000 pieces), the tokenizer family qlora trained
 * with: a few Alpaca and OASST1 records, exact ids against independent encodes. */
static void test_encode_llama(void) {
    const char *tok_path = shared_data_path("models/tokenizer.bin");
    const char *path = shared_data_path(ALPACA_FILE), *opath = shared_data_path(OASST_FILE);
    if (!tok_path || !path || !opath) {
        SKIP("models/tokenizer.bin or the finetune files absent: Llama 2 encoding test skipped");
        return;
    }
    tokenizer *tok = NULL;
    instruct_set s, o;
    if (tokenizer_load(tok_path, &tok) != QLAB_OK || instruct_load_alpaca(path, &s) != QLAB_OK ||
        instruct_load_oasst1(opath, &o) != QLAB_OK) {
        CHECKF(0, "%s", qlab_last_error());
        tokenizer_free(tok);
        return;
    }
    instruct_encode_options opt = {.max_len = 2048, .source_max_len = 1024, .target_max_len = 1024};
    instruct_examples e;
    int exact = 0, rows = 0;
    for (int pass = 0; pass < 2; pass++) {
        const instruct_set *set = pass ? &o : &s;
        if (instruct_encode(tok, set->records, 20, &opt, &e) != QLAB_OK) {
            CHECKF(0, "%s", qlab_last_error());
            continue;
        }
        for (int i = 0; i < e.n; i++, rows++)
            exact += row_matches_record(tok, &e, i, &set->records[e.first_record[i]], 0);
        instruct_examples_free(&e);
    }
    CHECKF(rows == 40 && exact == rows, "%d of %d Llama 2 rows match", exact, rows);
    /* Hand-checked: "### Response: " ends in a space, and SentencePiece then gives the response its own
     * dummy-prefix piece, so the row holds "▁" (id 29871) at the end of the prompt, as qlora's does. */
    int *ids = NULL;
    size_t n = 0;
    CHECK(tokenizer_encode(tok, s.records[0].prompt, strlen(s.records[0].prompt), 1, &ids, &n) == QLAB_OK &&
          n > 2 && ids[0] == 1 && ids[n - 1] == 29871 && !strcmp(tokenizer_piece(tok, ids[n - 1]), " "));
    free(ids);
    instruct_set_free(&s);
    instruct_set_free(&o);
    tokenizer_free(tok);
}

int main(void) {
    test_tmp_dir_create("instruct");

    test_alpaca();
    test_oasst1();
    test_vicuna();
    test_malformed();
    test_split_and_batches();
    const char *tok_path = shared_data_path(TOKENIZER_FILE);
    if (!tok_path) {
        SKIP("%s absent: encoding tests skipped", TOKENIZER_FILE);
    } else {
        tokenizer *tok = NULL;
        qlab_status st = tokenizer_load(tok_path, &tok);
        CHECKF(st == QLAB_OK, "%s", qlab_last_error());
        if (st == QLAB_OK) {
            test_encode_real(tok);
            test_packing(tok);
        }
        tokenizer_free(tok);
    }
    test_encode_llama();

    test_tmp_dir_remove();
    return check_summary();
}
