/* Answers to a prompt file in the QLoRA repository's released-generations format (see answers.h). */
#include "eval/answers.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/atomic_file.h"
#include "core/base/gzip.h"
#include "core/base/sha256.h"
#include "datasets/instruct.h"
#include "eval/generate.h"

char *answers_truncate(const char *generation) {
    const char *end = strstr(generation, "### Human:");
    size_t n = end ? (size_t)(end - generation) : strlen(generation);
    while (n > 0 && isspace((unsigned char)generation[n - 1]))
        n--;
    char *out = malloc(n + 1);
    if (!out) return NULL;
    memcpy(out, generation, n);
    out[n] = 0;
    return out;
}

/* "### Human: <text> ### Assistant:" for a Vicuna record, the "input" of an OASST1 record; NULL when the
 * record has neither string. */
static char *record_body(const cJSON *o) {
    const cJSON *input = cJSON_GetObjectItemCaseSensitive(o, "input"),
                *text = cJSON_GetObjectItemCaseSensitive(o, "text");
    if (cJSON_IsString(input)) {
        char *s = malloc(strlen(input->valuestring) + 1);
        if (s) strcpy(s, input->valuestring);
        return s;
    }
    return cJSON_IsString(text) ? instruct_format_chat(text->valuestring) : NULL;
}

static void set_string(cJSON *o, const char *key, const char *value) {
    cJSON_DeleteItemFromObjectCaseSensitive(o, key); /* a generations file given as prompts: replace */
    cJSON_AddStringToObject(o, key, value);
}

/* Encodes prompt (with BOS), cutting its start to leave max_new tokens of context, and generates. */
static qlab_status answer_one(model *m, const tokenizer *tok, const char *prompt, const answers_options *o,
                              uint64_t seed, int *work, char **generation) {
    int seq_len = model_get_config(m)->seq_len, bos = tokenizer_bos_id(tok) >= 0;
    int *ids = NULL;
    size_t n = 0;
    QLAB_TRY(tokenizer_encode(tok, prompt, strlen(prompt), bos, &ids, &n));
    int room = seq_len - o->max_new_tokens;
    if ((int)n > room) {
        memmove(ids + bos, ids + n - (size_t)(room - bos), (size_t)(room - bos) * sizeof(int));
        n = (size_t)room;
    }
    generate_options go = {.temperature = o->temperature,
                           .top_p = o->top_p,
                           .seed = seed,
                           .max_tokens = (int)n + o->max_new_tokens,
                           .stop_id_a = tokenizer_bos_id(tok),
                           .stop_id_b = tokenizer_eos_id(tok)};
    int n_out = 0;
    qlab_status st = generate(m, ids, (int)n, &go, work, &n_out, NULL, NULL);
    free(ids);
    if (st != QLAB_OK) return st;
    int end = n_out;
    while (end > (int)n && (work[end - 1] == go.stop_id_a || work[end - 1] == go.stop_id_b))
        end--;
    size_t len = 0, lead = 0;
    QLAB_TRY(tokenizer_decode(tok, work + n, (size_t)(end - (int)n), generation, &len));
    /* A SentencePiece-style first piece decodes with its word-start space; the released generations (HF
     * decode) start at the word. */
    while (lead < len && isspace((unsigned char)(*generation)[lead]))
        lead++;
    memmove(*generation, *generation + lead, len - lead + 1);
    return QLAB_OK;
}

/* 22 hex digits of sha256(model_id NUL index NUL prompt): stable for the same system and prompt file. */
static void answer_id(const char *model_id, int index, const char *prompt, char out[23]) {
    sha256_context c;
    uint8_t d[32];
    char num[24];
    snprintf(num, sizeof num, "%d", index);
    sha256_begin(&c);
    sha256_update(&c, model_id, strlen(model_id) + 1);
    sha256_update(&c, num, strlen(num) + 1);
    sha256_update(&c, prompt, strlen(prompt));
    sha256_end(&c, d);
    for (int i = 0; i < 11; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

qlab_status answers_generate(model *m, const tokenizer *tok, const char *prompts_path, const char *out_path,
                             const answers_options *o, answers_progress progress, void *ctx,
                             int *n_answered) {
    if (n_answered) *n_answered = 0;
    int seq_len = model_get_config(m)->seq_len;
    if (!o->model_id || !o->model_id[0]) return qlab_fail(QLAB_ERR_ARG, "answers: empty model id");
    if (o->max_new_tokens < 1 || o->max_new_tokens >= seq_len)
        return qlab_fail(QLAB_ERR_ARG, "answers: %d new tokens do not fit the model's context of %d",
                         o->max_new_tokens, seq_len);
    char *text = NULL;
    size_t len = 0;
    QLAB_TRY(gzip_read_file(prompts_path, &text, &len));
    int total = 0; /* records to answer: non-blank lines, up to the limit */
    for (size_t i = 0; i < len;) {
        size_t e = i;
        while (e < len && text[e] != '\n')
            e++;
        int blank = 1;
        for (size_t k = i; k < e && blank; k++)
            blank = isspace((unsigned char)text[k]) != 0;
        total += !blank;
        i = e + 1;
    }
    if (o->limit > 0 && total > o->limit) total = o->limit;
    if (total == 0) {
        free(text);
        return qlab_fail(QLAB_ERR_FORMAT, "%s: holds no prompt records", prompts_path);
    }
    int *work = qlab_calloc((size_t)seq_len, sizeof(int));
    atomic_file w;
    qlab_status st = work ? atomic_file_open(&w, out_path) : QLAB_ERR_NOMEM;
    if (st != QLAB_OK) {
        free(work), free(text);
        return st;
    }
    int done = 0, line = 0;
    for (size_t i = 0; i < len && done < total && st == QLAB_OK;) {
        size_t e = i;
        while (e < len && text[e] != '\n')
            e++;
        line++;
        cJSON *obj = cJSON_ParseWithLength(text + i, e - i);
        int blank = 1;
        for (size_t k = i; k < e && blank; k++)
            blank = isspace((unsigned char)text[k]) != 0;
        i = e + 1;
        if (blank) {
            cJSON_Delete(obj);
            continue;
        }
        char *body = cJSON_IsObject(obj) ? record_body(obj) : NULL;
        if (!body) {
            st = qlab_fail(QLAB_ERR_FORMAT,
                           "%s: line %d: expected a JSON object with a string \"text\" (Vicuna) or \"input\" "
                           "(OASST1)",
                           prompts_path, line);
            cJSON_Delete(obj);
            break;
        }
        size_t plen = strlen(INSTRUCT_CHAT_SYSTEM) + 1 + strlen(body) + 1;
        char *prompt = malloc(plen), *generation = NULL, *truncated = NULL;
        if (prompt) snprintf(prompt, plen, "%s %s", INSTRUCT_CHAT_SYSTEM, body);
        st = prompt ? answer_one(m, tok, prompt, o, o->seed + (uint64_t)done, work, &generation)
                    : QLAB_ERR_NOMEM;
        if (st == QLAB_OK && !(truncated = answers_truncate(generation))) st = QLAB_ERR_NOMEM;
        if (st == QLAB_OK) {
            char id[23];
            answer_id(o->model_id, done, prompt, id);
            set_string(obj, "prompt", prompt);
            set_string(obj, "generation", generation);
            set_string(obj, "generation_truncated", truncated);
            set_string(obj, "answer_id", id);
            set_string(obj, "model_id", o->model_id);
            char *out = cJSON_PrintUnformatted(obj);
            if (!out) st = QLAB_ERR_NOMEM;
            if (out) {
                atomic_file_write(&w, out, strlen(out));
                atomic_file_write(&w, "\n", 1);
            }
            free(out);
        }
        if (st != QLAB_OK) qlab_fail_context(st, "%s: line %d", prompts_path, line);
        free(prompt), free(body), free(generation), free(truncated);
        cJSON_Delete(obj);
        if (st == QLAB_OK) {
            done++;
            if (progress) progress(ctx, done, total);
        }
    }
    free(work), free(text);
    if (st != QLAB_OK) {
        atomic_file_abort(&w);
        return st;
    }
    QLAB_TRY(atomic_file_commit(&w));
    if (n_answered) *n_answered = done;
    return QLAB_OK;
}
