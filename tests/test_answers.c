/* Tests of eval/answers.h and `qlab generate --prompts FILE --out ANSWERS.jsonl`: on stories260K (SKIPs
 * without ../shared/data), the Vicuna questions and the gzip'd OASST1 items are answered in the format of
 * the QLoRA repository's released generations — every field of the prompt record kept, "prompt" exactly
 * qlora's system sentence + the chat turn, "generation" equal to a greedy continuation computed here
 * with eval/generate.h, "generation_truncated" cut at "### Human:", stable unique answer ids — the same
 * file twice, an adapter changes the answers, and a bad record is refused by line with no output. */
#include <cjson/cJSON.h>
#include <ctype.h>
#include <string.h>
#include <unistd.h>

#include "tests/check.h"
#include "core/base/common.h"
#include "core/base/gzip.h"
#include "core/model/checkpoint.h"
#include "core/model/lora.h"
#include "core/model/lora_peft.h"
#include "core/text/tokenizer.h"
#include "datasets/instruct.h"
#include "eval/answers.h"
#include "eval/generate.h"
#include "tests/test_util.h"

static char qlab_bin[1024];
static const char *model_path, *tok_path;

/* The JSON lines of a file, parsed (n returned; NULL entries for unparsable lines). */
static int read_lines(const char *path, cJSON **out, int cap) {
    char *text = NULL;
    size_t len = 0;
    if (gzip_read_file(path, &text, &len) != QLAB_OK) return -1;
    int n = 0;
    for (char *line = strtok(text, "\n"); line && n < cap; line = strtok(NULL, "\n"))
        out[n++] = cJSON_Parse(line);
    free(text);
    return n;
}

static const char *str(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static void test_truncate(void) {
    char *a = answers_truncate("Sure, here it is.  \n### Human: and more ### Assistant: x");
    char *b = answers_truncate("no turn here \n");
    CHECK(a && !strcmp(a, "Sure, here it is."));
    CHECK(b && !strcmp(b, "no turn here"));
    free(a), free(b);
}

/* The greedy continuation of the prompt, computed directly (decoded, leading space dropped). */
static char *greedy(const char *prompt, int new_tokens) {
    model *m = NULL;
    tokenizer *tok = NULL;
    char *text = NULL;
    if (checkpoint_load(model_path, &m) == QLAB_OK && tokenizer_load(tok_path, &tok) == QLAB_OK) {
        int *ids = NULL, out[1024], n_out = 0;
        size_t n = 0, len = 0;
        tokenizer_encode(tok, prompt, strlen(prompt), 1, &ids, &n);
        generate_options go = {0, 1, 1, (int)n + new_tokens, tokenizer_bos_id(tok), tokenizer_eos_id(tok)};
        if (ids && (int)n + new_tokens <= 1024 &&
            generate(m, ids, (int)n, &go, out, &n_out, NULL, NULL) == QLAB_OK) {
            while (n_out > (int)n && (out[n_out - 1] == go.stop_id_a || out[n_out - 1] == go.stop_id_b))
                n_out--;
            tokenizer_decode(tok, out + n, (size_t)(n_out - (int)n), &text, &len);
        }
        free(ids);
    }
    if (text && text[0] == ' ') memmove(text, text + 1, strlen(text));
    tokenizer_free(tok);
    model_free(m);
    return text;
}

static void test_vicuna(void) {
    const char *prompts = shared_data_path("finetune/qlora_eval/prompts/vicuna_questions.jsonl");
    if (!prompts) {
        SKIP("vicuna_questions.jsonl missing");
        return;
    }
    const char *a = tmp_path("vicuna_a.jsonl"), *b = tmp_path("vicuna_b.jsonl"),
               *c = tmp_path("vicuna_c.jsonl");
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "QLAB_QUIET=1 '%s' generate --model '%s' --tokenizer '%s' --prompts '%s' --out '%s' --limit 4 "
             "--steps "
             "24 --temperature 0 --model-id qlab-test > /dev/null && QLAB_QUIET=1 '%s' generate --model '%s' "
             "--tokenizer '%s' --prompts '%s' --out '%s' --limit 4 --steps 24 --temperature 0 --model-id "
             "qlab-test "
             "> /dev/null",
             qlab_bin, model_path, tok_path, prompts, a, qlab_bin, model_path, tok_path, prompts, b);
    CHECKF(run_shell(cmd) == 0, "%s", cmd);
    cJSON *src[8] = {0}, *got[8] = {0};
    int ns = read_lines(prompts, src, 8), ng = read_lines(a, got, 8);
    CHECKF(ng == 4 && ns == 8, "%d answers", ng);
    char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    CHECK(qlab_read_file(a, &x, &nx) == QLAB_OK && qlab_read_file(b, &y, &ny) == QLAB_OK && nx == ny &&
          !memcmp(x, y, nx));
    free(x), free(y);
    for (int i = 0; i < ng && i < ns; i++) {
        const cJSON *g = got[i], *s = src[i];
        CHECK(g && s);
        if (!g || !s) continue;
        /* The record's own fields, unchanged. */
        CHECK(cJSON_GetObjectItem(g, "question_id")->valueint ==
              cJSON_GetObjectItem(s, "question_id")->valueint);
        CHECK(!strcmp(str(g, "text"), str(s, "text")) && !strcmp(str(g, "category"), str(s, "category")));
        char expect[2048];
        snprintf(expect, sizeof expect, "%s ### Human: %s ### Assistant:", INSTRUCT_CHAT_SYSTEM,
                 str(s, "text"));
        CHECKF(str(g, "prompt") && !strcmp(str(g, "prompt"), expect), "prompt %s", str(g, "prompt"));
        char *t = str(g, "generation") ? answers_truncate(str(g, "generation")) : NULL;
        CHECK(t && str(g, "generation_truncated") && !strcmp(t, str(g, "generation_truncated")));
        free(t);
        const char *id = str(g, "answer_id");
        CHECK(id && strlen(id) == 22 && !strcmp(str(g, "model_id"), "qlab-test"));
        for (int j = 0; j < i; j++)
            CHECK(strcmp(id, str(got[j], "answer_id")) != 0);
        if (i == 0) {
            char *direct = greedy(expect, 24);
            printf("  Vicuna question 1, stories260K greedy: \"%s\"\n", str(g, "generation"));
            CHECKF(direct && !strcmp(direct, str(g, "generation")), "generate.h gives \"%s\"",
                   direct ? direct : "");
            free(direct);
        }
    }
    /* An adapter (B non-zero, saved as PEFT) changes the answers. */
    model *m = NULL;
    lora_set *l = NULL;
    if (checkpoint_load(model_path, &m) == QLAB_OK) {
        lora_config lc = {.targets = LORA_TARGETS_ALL, .rank = 4, .alpha = 8.0f, .seed = 3};
        if (lora_create(&l, model_get_config(m), &lc) == QLAB_OK) {
            size_t count = 0;
            float *p = lora_get_param_buffer(l, &count);
            for (size_t i = 0; i < count; i++)
                p[i] = 0.05f * (float)((long)(((i * 2654435761u) >> 7) % 201) - 100) / 100.0f;
            const char *dir = tmp_path("adapter");
            CHECK(lora_save_peft(l, dir, model_path) == QLAB_OK);
            snprintf(cmd, sizeof cmd,
                     "QLAB_QUIET=1 '%s' generate --model '%s' --tokenizer '%s' --prompts '%s' --out '%s' "
                     "--limit 4 "
                     "--steps 24 --temperature 0 --adapter '%s' --dtype nf4 --double-quant > /dev/null",
                     qlab_bin, model_path, tok_path, prompts, c, dir);
            CHECKF(run_shell(cmd) == 0, "%s", cmd);
            cJSON *ad[8] = {0};
            int na = read_lines(c, ad, 8), differ = 0;
            CHECK(na == 4);
            for (int i = 0; i < na && i < ng; i++) {
                differ += strcmp(str(ad[i], "generation"), str(got[i], "generation")) != 0;
                CHECK(!strcmp(str(ad[i], "model_id"), "adapter")); /* the adapter's folder name */
                cJSON_Delete(ad[i]);
            }
            CHECKF(differ >= 2, "the adapter changed %d of 4 answers", differ);
            lora_free(l);
        }
        model_free(m);
    }
    for (int i = 0; i < 8; i++)
        cJSON_Delete(src[i]), cJSON_Delete(got[i]);
}

static void test_oasst(void) {
    const char *prompts = shared_data_path("finetune/qlora_eval/prompts/oa_questions.jsonl.gz");
    if (!prompts) {
        SKIP("oa_questions.jsonl.gz missing");
        return;
    }
    const char *a = tmp_path("oa.jsonl");
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "QLAB_QUIET=1 '%s' generate --model '%s' --tokenizer '%s' --prompts '%s' --out '%s' --limit 2 "
             "--steps "
             "16 > /dev/null",
             qlab_bin, model_path, tok_path, prompts, a);
    CHECKF(run_shell(cmd) == 0, "%s", cmd);
    cJSON *src[2] = {0}, *got[3] = {0};
    int ns = read_lines(prompts, src, 2), ng = read_lines(a, got, 3);
    CHECK(ns == 2 && ng == 2);
    for (int i = 0; i < 2 && i < ng; i++) {
        char expect[65536];
        snprintf(expect, sizeof expect, "%s %s", INSTRUCT_CHAT_SYSTEM, str(src[i], "input"));
        CHECK(!strcmp(str(got[i], "input"), str(src[i], "input")) &&
              !strcmp(str(got[i], "output"), str(src[i], "output")) &&
              !strcmp(str(got[i], "message_id"), str(src[i], "message_id")));
        CHECK(str(got[i], "prompt") && !strcmp(str(got[i], "prompt"), expect));
        CHECK(str(got[i], "generation") && str(got[i], "generation_truncated"));
    }
    for (int i = 0; i < 3; i++)
        cJSON_Delete(i < 2 ? src[i] : NULL), cJSON_Delete(got[i]);
}

static void test_bad_input(void) {
    const char *bad = tmp_path("bad.jsonl"), *out = tmp_path("never.jsonl"), *err = tmp_path("bad.err");
    const char *text = "{\"question_id\": 1, \"text\": \"Hi\"}\n\n{\"question_id\": 2, \"txt\": \"Hi\"}\n";
    write_bytes(bad, text, strlen(text));
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "QLAB_QUIET=1 '%s' generate --model '%s' --tokenizer '%s' --prompts '%s' --out '%s' --steps 4 > "
             "/dev/null "
             "2> '%s'",
             qlab_bin, model_path, tok_path, bad, out, err);
    CHECK(run_shell(cmd) != 0);
    char *e = NULL;
    size_t n = 0;
    CHECK(qlab_read_file(err, &e, &n) == QLAB_OK && e && strstr(e, bad) && strstr(e, "line 3"));
    free(e);
    CHECK(access(out, F_OK) != 0);
    snprintf(cmd, sizeof cmd, "'%s' generate --model '%s' --tokenizer '%s' --prompts '%s' 2> /dev/null",
             qlab_bin, model_path, tok_path, bad);
    CHECK(run_shell(cmd) == 2); /* --prompts without --out */
}

int main(void) {
    test_truncate();
    const char *build = getenv("QLAB_BUILD");
    snprintf(qlab_bin, sizeof qlab_bin, "%s/bin/qlab", build && build[0] ? build : "build");
    model_path = shared_data_path("models/stories260K.bin");
    tok_path = shared_data_path("models/tok512.bin");
    if (access(qlab_bin, X_OK) != 0 || !model_path || !tok_path) {
        SKIP("%s or ../shared/data/models/stories260K.bin, tok512.bin missing", qlab_bin);
        return check_summary();
    }
    test_tmp_dir_create("answers");
    test_vicuna();
    test_oasst();
    test_bad_input();
    test_tmp_dir_remove();
    return check_summary();
}
