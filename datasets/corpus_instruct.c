/* qlab's generated instruction family: chat and task records from the corpus's stories (see
 * corpus_instruct.h). Every choice (request wording, question) is a function of the record index, so the
 * sets are byte-reproducible and a prefix of a larger set is the smaller set. */
#include "datasets/corpus_instruct.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "datasets/corpus.h"

static const char *const style_names[CORPUS_INSTRUCT_STYLE_COUNT] = {"chat", "task"};

const char *corpus_instruct_style_name(corpus_instruct_style style) {
    return style >= 0 && style < CORPUS_INSTRUCT_STYLE_COUNT ? style_names[style] : "unknown";
}

/* The conversational requests, in turn: all ask for the story's next paragraph. */
static const char *const chat_requests[] = {
    "Here is the start of a story: \"%s\" What happens next?",
    "Can you continue this story for me? %s",
    "I am writing a story for my little brother. It begins like this: %s How should it go on?",
    "Please tell me the next part of this story: %s",
};
#define N_CHAT_REQUESTS ((int)(sizeof chat_requests / sizeof chat_requests[0]))

static const char task_intro[] = "Read the text and answer the question.\n\nText: ";

/* A sentence ends at '.', '!' or '?' followed by the end, a space or a closing quote. */
static int sentence_end(const char *s, size_t i) {
    return (s[i] == '.' || s[i] == '!' || s[i] == '?') &&
           (s[i + 1] == 0 || s[i + 1] == ' ' || s[i + 1] == '"');
}

static int count_sentences(const char *s) {
    int n = 0;
    for (size_t i = 0; s[i]; i++)
        n += sentence_end(s, i);
    return n;
}

/* Length of the first sentence (through its closing quote, if any). */
static size_t first_sentence_length(const char *s) {
    for (size_t i = 0; s[i]; i++)
        if (sentence_end(s, i)) return i + 1 + (s[i + 1] == '"');
    return strlen(s);
}

/* The main character's name, as the grammar's openings introduce it: the word after "named ", "called " or
 * "name was ", else the paragraph's first word when it is followed by " was " ("Zoe was a happy little
 * girl."). 0 when none applies. */
static size_t main_character(const char *s, const char **name) {
    static const char *const cues[] = {"named ", "called ", "name was "};
    const char *p = NULL;
    for (int i = 0; i < 3 && !p; i++)
        if ((p = strstr(s, cues[i]))) p += strlen(cues[i]);
    if (!p) {
        size_t n = 0;
        while (isalpha((unsigned char)s[n]))
            n++;
        if (n == 0 || strncmp(s + n, " was ", 5) != 0 || !isupper((unsigned char)s[0])) return 0;
        p = s;
    }
    size_t n = 0;
    while (isalpha((unsigned char)p[n]))
        n++;
    *name = p;
    return n;
}

static char *format(const char *fmt, const char *a, size_t a_len, const char *b, size_t b_len) {
    size_t cap = strlen(fmt) + a_len + b_len + 1;
    char *out = malloc(cap);
    if (out) snprintf(out, cap, fmt, (int)a_len, a, (int)b_len, b);
    return out;
}

/* One record from a story's first two paragraphs. */
static qlab_status make_record(corpus_instruct_style style, int index, const char *p0, size_t p0_len,
                               const char *p1, size_t p1_len, instruct_record *r) {
    memset(r, 0, sizeof *r);
    r->source = INSTRUCT_SOURCE_OASST1;
    r->position = index + 1;
    char *para = malloc(p0_len + 1);
    if (!para) return QLAB_ERR_NOMEM;
    memcpy(para, p0, p0_len);
    para[p0_len] = 0;
    if (style == CORPUS_INSTRUCT_CHAT) {
        const char *req = chat_requests[index % N_CHAT_REQUESTS];
        size_t cap = strlen(req) + p0_len + 1;
        char *text = malloc(cap);
        if (text) snprintf(text, cap, req, para);
        r->prompt = text ? instruct_format_chat(text) : NULL;
        free(text);
        r->response = format("%.*s%.*s", p1, p1_len, "", 0);
    } else {
        const char *name = NULL;
        size_t name_len = main_character(para, &name);
        int kind = index % 3;
        if (kind == 0 && name_len == 0) kind = 1;
        const char *question = kind == 0   ? "What is the name of the main character?"
                               : kind == 1 ? "How many sentences does the text have?"
                                           : "What is the first sentence of the text?";
        size_t cap = sizeof task_intro + p0_len + strlen(question) + 32;
        r->prompt = malloc(cap);
        if (r->prompt) snprintf(r->prompt, cap, "%s%s\n\nQuestion: %s\nAnswer:", task_intro, para, question);
        char count[16];
        snprintf(count, sizeof count, "%d", count_sentences(para));
        r->response = kind == 0   ? format("%.*s%.*s", name, name_len, "", 0)
                      : kind == 1 ? format("%.*s%.*s", count, strlen(count), "", 0)
                                  : format("%.*s%.*s", para, first_sentence_length(para), "", 0);
    }
    free(para);
    if (!r->prompt || !r->response) {
        free(r->prompt), free(r->response);
        memset(r, 0, sizeof *r);
        return QLAB_ERR_NOMEM;
    }
    return QLAB_OK;
}

qlab_status corpus_instruct_build(uint64_t seed, corpus_instruct_style style, int n, instruct_set *out) {
    memset(out, 0, sizeof *out);
    if (style < 0 || style >= CORPUS_INSTRUCT_STYLE_COUNT)
        return qlab_fail(QLAB_ERR_ARG, "corpus_instruct: style %d out of range", (int)style);
    if (n < 1 || n > 1000000)
        return qlab_fail(QLAB_ERR_ARG, "corpus_instruct: %d records requested (1 to 1e6)", n);
    out->records = qlab_calloc((size_t)n, sizeof *out->records);
    char *story = malloc(CORPUS_MAX_STORY_BYTES);
    if (!out->records || !story) {
        free(story);
        instruct_set_free(out);
        return QLAB_ERR_NOMEM;
    }
    corpus_generator g;
    corpus_begin(&g, seed, CORPUS_TRAIN);
    qlab_status st = QLAB_OK;
    while (out->count < n && st == QLAB_OK) {
        if (corpus_next_story(&g, story, CORPUS_MAX_STORY_BYTES) == 0) {
            st = qlab_fail(QLAB_ERR_ARG, "corpus_instruct: %s", qlab_last_error());
            break;
        }
        /* Paragraphs are lines; the grammar writes at least two per story. */
        const char *p0 = story, *nl0 = strchr(p0, '\n');
        const char *p1 = nl0 ? nl0 + 1 : NULL, *nl1 = p1 ? strchr(p1, '\n') : NULL;
        if (!nl0 || !nl1 || nl1 == p1) {
            st = qlab_fail(QLAB_ERR_FORMAT, "corpus_instruct: story %d has fewer than two paragraphs",
                           out->count);
            break;
        }
        st = make_record(style, out->count, p0, (size_t)(nl0 - p0), p1, (size_t)(nl1 - p1),
                         &out->records[out->count]);
        if (st == QLAB_OK) out->count++;
    }
    free(story);
    if (st != QLAB_OK) instruct_set_free(out);
    return st;
}
