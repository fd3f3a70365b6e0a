/* Tests of datasets/corpus_instruct.h (qlab's generated instruction family): each record checked against the
 * corpus text generated independently by corpus_generate (chat: the prompt quotes the story's first
 * paragraph in the "### Human: … ### Assistant:" format and the response is exactly the second paragraph;
 * task: the answer is read off the first paragraph by rules re-implemented here), determinism, a smaller
 * set is a prefix of a larger one, the styles differ, and bad arguments are refused. */
#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tests/check.h"
#include "datasets/corpus.h"
#include "datasets/corpus_instruct.h"

#define N 60

/* The first two lines of story k of the text (stories separated by "\n\n"), malloc'd. */
static void paragraphs(const char *text, int k, char **p0, char **p1) {
    const char *s = text;
    for (int i = 0; i < k && s; i++) {
        s = strstr(s, "\n\n");
        if (s) s += 2;
    }
    *p0 = *p1 = NULL;
    if (!s) return;
    const char *e0 = strchr(s, '\n'), *e1 = e0 ? strchr(e0 + 1, '\n') : NULL;
    if (!e0 || !e1) return;
    *p0 = strndup(s, (size_t)(e0 - s));
    *p1 = strndup(e0 + 1, (size_t)(e1 - e0 - 1));
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

static void test_against_corpus(void) {
    char *text = NULL;
    size_t len = 0;
    CHECK(corpus_generate(7, CORPUS_TRAIN, 0, N, &text, &len) == QLAB_OK);
    instruct_set chat, task;
    CHECK(corpus_instruct_build(7, CORPUS_INSTRUCT_CHAT, N, &chat) == QLAB_OK && chat.count == N);
    CHECK(corpus_instruct_build(7, CORPUS_INSTRUCT_TASK, N, &task) == QLAB_OK && task.count == N);
    if (!text || chat.count != N || task.count != N) return;
    int names = 0, counts = 0, firsts = 0;
    for (int k = 0; k < N; k++) {
        char *p0, *p1;
        paragraphs(text, k, &p0, &p1);
        CHECKF(p0 && p1, "story %d has two paragraphs", k);
        if (!p0 || !p1) break;
        const instruct_record *c = &chat.records[k], *t = &task.records[k];
        CHECKF(!strncmp(c->prompt, "### Human: ", 11) && ends_with(c->prompt, " ### Assistant:") &&
                   strstr(c->prompt, p0) && !strcmp(c->response, p1),
               "chat record %d: %s -> %s", k, c->prompt, c->response);
        CHECK(c->source == INSTRUCT_SOURCE_OASST1 && c->position == k + 1);
        CHECKF(strstr(t->prompt, p0) && strstr(t->prompt, "Question: ") && ends_with(t->prompt, "\nAnswer:"),
               "task record %d: %s", k, t->prompt);
        /* The answer, by the question asked. */
        if (strstr(t->prompt, "name of the main character")) {
            /* A capitalised word of the first paragraph that the second paragraph mentions again. */
            const char *r = t->response;
            size_t n = strlen(r);
            int word = n > 1 && isupper((unsigned char)r[0]);
            for (size_t i = 0; i < n; i++)
                word &= isalpha((unsigned char)r[i]) != 0;
            CHECKF(word && strstr(p0, r) && strstr(p1, r), "record %d: name '%s' of '%s' / '%s'", k, r, p0,
                   p1);
            names++;
        } else if (strstr(t->prompt, "How many sentences")) {
            int n = 0;
            for (const char *p = p0; *p; p++)
                n += strchr(".!?", *p) && (p[1] == 0 || p[1] == ' ' || p[1] == '"');
            CHECKF(atoi(t->response) == n && n >= 1, "record %d: count '%s', expected %d", k, t->response, n);
            counts++;
        } else {
            CHECKF(strstr(t->prompt, "first sentence") && !strncmp(p0, t->response, strlen(t->response)) &&
                       strlen(t->response) < strlen(p0) &&
                       strchr(".!?\"", t->response[strlen(t->response) - 1]),
                   "record %d: first sentence '%s'", k, t->response);
            firsts++;
        }
        free(p0), free(p1);
    }
    /* The three questions take turns: every opening of the grammar names its main character. */
    printf("  %d task records: %d name, %d sentence-count, %d first-sentence questions\n", N, names, counts,
           firsts);
    CHECK(names == N / 3 && counts == N / 3 && firsts == N / 3);
    /* Prefix property and determinism. */
    instruct_set small;
    CHECK(corpus_instruct_build(7, CORPUS_INSTRUCT_CHAT, 10, &small) == QLAB_OK && small.count == 10);
    for (int i = 0; i < small.count; i++)
        CHECK(!strcmp(small.records[i].prompt, chat.records[i].prompt) &&
              !strcmp(small.records[i].response, chat.records[i].response));
    instruct_set_free(&small);
    /* Another seed, other stories. */
    CHECK(corpus_instruct_build(8, CORPUS_INSTRUCT_CHAT, 10, &small) == QLAB_OK);
    int same = 0;
    for (int i = 0; i < small.count; i++)
        same += !strcmp(small.records[i].response, chat.records[i].response);
    CHECK(same < 3);
    instruct_set_free(&small);
    instruct_set_free(&chat);
    instruct_set_free(&task);
    free(text);
}

static void test_bad_arguments(void) {
    instruct_set s;
    CHECK(corpus_instruct_build(1, CORPUS_INSTRUCT_CHAT, 0, &s) == QLAB_ERR_ARG && s.count == 0);
    CHECK(corpus_instruct_build(1, CORPUS_INSTRUCT_TASK, 2000000, &s) == QLAB_ERR_ARG);
    CHECK(corpus_instruct_build(1, CORPUS_INSTRUCT_STYLE_COUNT, 5, &s) == QLAB_ERR_ARG);
    CHECK(!strcmp(corpus_instruct_style_name(CORPUS_INSTRUCT_TASK), "task"));
}

int main(void) {
    test_against_corpus();
    test_bad_arguments();
    return check_summary();
}
