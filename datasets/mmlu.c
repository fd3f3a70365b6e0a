/* MMLU: per-subject CSVs from the release archive, Hendrycks' k-shot prompt format, prompt tokenization
 * with shrinking k, and the answer-token logit comparison. See mmlu.h. */
#include "datasets/mmlu.h"
#include "core/base/tar.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char MMLU_HEADER[] = "The following are multiple choice questions (with answers) about ";
static const char MMLU_LETTERS[] = "ABCD";

/* ---------------------------------------------------------------- CSV */

/* A growing byte buffer for one field. */
typedef struct {
    char *data;
    size_t len, cap;
} byte_buffer;

static int buffer_push(byte_buffer *b, char c) {
    if (b->len + 1 >= b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        char *bigger = realloc(b->data, cap);
        if (!bigger) return 0;
        b->data = bigger;
        b->cap = cap;
    }
    b->data[b->len++] = c;
    b->data[b->len] = 0;
    return 1;
}

#define MMLU_CSV_FIELDS 6

/* Parses one field starting at *i into b (b->data is "" for an empty field). Returns NULL, or what is
 * wrong. */
static const char *csv_field(const char *s, size_t len, size_t *i, byte_buffer *b) {
    if (!buffer_push(b, 0)) return "out of memory";
    b->len = 0;
    size_t k = *i;
    if (k < len && s[k] == '"') {
        for (k++;; k++) {
            if (k >= len) return "unterminated quoted field";
            if (s[k] == '"') {
                if (k + 1 < len && s[k + 1] == '"') { /* "" is one quote */
                    k++;
                } else {
                    k++;
                    break;
                }
            }
            if (!buffer_push(b, s[k])) return "out of memory";
        }
        if (k < len && s[k] != ',' && s[k] != '\n' && s[k] != '\r') return "text after a closing quote";
    } else {
        for (; k < len && s[k] != ',' && s[k] != '\n' && s[k] != '\r'; k++) {
            if (s[k] == '"') return "quote inside an unquoted field";
            if (!buffer_push(b, s[k])) return "out of memory";
        }
    }
    *i = k;
    return NULL;
}

/* Parses one RFC 4180 record starting at *pos into fields (malloc'd, at most MMLU_CSV_FIELDS + 1 kept, so
 * an extra field is detected); *n_fields gets the number of fields in the record. Returns NULL, or what is
 * wrong (nothing is then kept). */
static const char *csv_record(const char *s, size_t len, size_t *pos, char **fields, int *n_fields) {
    size_t i = *pos;
    int n = 0;
    for (;;) {
        byte_buffer b = {0};
        const char *error = csv_field(s, len, &i, &b);
        if (error) {
            free(b.data);
            for (int k = 0; k < n && k <= MMLU_CSV_FIELDS; k++)
                free(fields[k]);
            return error;
        }
        if (n <= MMLU_CSV_FIELDS)
            fields[n] = b.data;
        else
            free(b.data);
        n++;
        if (i < len && s[i] == ',') {
            i++;
            continue;
        }
        if (i < len && s[i] == '\r') i++;
        if (i < len && s[i] == '\n') i++;
        break;
    }
    *pos = i;
    *n_fields = n;
    return NULL;
}

static void question_free(mmlu_question *q) {
    free(q->question);
    for (int j = 0; j < 4; j++)
        free(q->choices[j]);
}

static void questions_free(mmlu_question *q, int n) {
    for (int i = 0; i < n; i++)
        question_free(&q[i]);
    free(q);
}

static int parse_answer(const char *s) {
    if (s[0] && !s[1]) {
        if (s[0] >= '0' && s[0] <= '3') return s[0] - '0';
        if (s[0] >= 'A' && s[0] <= 'D') return s[0] - 'A';
    }
    return -1;
}

static qlab_status parse_csv(const char *archive, const char *member, const char *s, size_t len,
                             mmlu_question **out, int *n_out) {
    *out = NULL;
    *n_out = 0;
    mmlu_question *qs = NULL;
    int n = 0, cap = 0, row = 0;
    size_t pos = 0;
    qlab_status st = QLAB_OK;
    while (pos < len && st == QLAB_OK) {
        if (s[pos] == '\n' || s[pos] == '\r') { /* blank line */
            pos++;
            continue;
        }
        row++;
        char *f[MMLU_CSV_FIELDS + 1];
        int nf;
        const char *error = csv_record(s, len, &pos, f, &nf);
        if (error) {
            st = qlab_fail(strcmp(error, "out of memory") ? QLAB_ERR_FORMAT : QLAB_ERR_NOMEM,
                           "%s: %s: row %d: %s", archive, member, row, error);
            break;
        }
        int kept = nf < MMLU_CSV_FIELDS + 1 ? nf : MMLU_CSV_FIELDS + 1;
        if (nf != MMLU_CSV_FIELDS) {
            st = qlab_fail(QLAB_ERR_FORMAT,
                           "%s: %s: row %d: %d fields, expected %d "
                           "(question, four choices, answer)",
                           archive, member, row, nf, MMLU_CSV_FIELDS);
        } else if (row == 1 && !strcmp(f[0], "question") && !strcmp(f[5], "answer")) {
            /* header row */
        } else {
            int answer = parse_answer(f[5]);
            if (answer < 0) {
                st = qlab_fail(QLAB_ERR_FORMAT, "%s: %s: row %d: answer \"%.20s\" is not 0-3 or A-D", archive,
                               member, row, f[5]);
            } else if (n == cap) {
                int c = cap ? cap * 2 : 64;
                mmlu_question *bigger = realloc(qs, (size_t)c * sizeof *bigger);
                if (!bigger)
                    st = qlab_fail(QLAB_ERR_NOMEM, "%s: %s: out of memory", archive, member);
                else
                    qs = bigger, cap = c;
            }
            if (st == QLAB_OK) {
                mmlu_question *q = &qs[n++];
                q->question = f[0];
                for (int j = 0; j < 4; j++)
                    q->choices[j] = f[1 + j];
                q->answer = answer;
                free(f[5]);
                continue;
            }
        }
        for (int k = 0; k < kept; k++)
            free(f[k]);
    }
    if (st == QLAB_OK && n == 0) st = qlab_fail(QLAB_ERR_FORMAT, "%s: %s: no questions", archive, member);
    if (st != QLAB_OK) {
        questions_free(qs, n);
        return st;
    }
    *out = qs;
    *n_out = n;
    return QLAB_OK;
}

/* ---------------------------------------------------------------- archive */

void mmlu_free(mmlu_data *d) {
    if (!d) return;
    for (int i = 0; i < d->n_subjects; i++) {
        mmlu_subject *s = &d->subjects[i];
        free(s->name);
        questions_free(s->dev, s->n_dev);
        questions_free(s->val, s->n_val);
        questions_free(s->test, s->n_test);
    }
    free(d->subjects);
    memset(d, 0, sizeof *d);
}

int mmlu_find_subject(const mmlu_data *d, const char *name) {
    for (int i = 0; i < d->n_subjects; i++)
        if (!strcmp(d->subjects[i].name, name)) return i;
    return -1;
}

static int compare_subjects(const void *a, const void *b) {
    return strcmp(((const mmlu_subject *)a)->name, ((const mmlu_subject *)b)->name);
}

qlab_status mmlu_load(const char *archive_path, mmlu_data *out) {
    memset(out, 0, sizeof *out);
    tar_archive a;
    QLAB_TRY(tar_archive_read(archive_path, &a));
    static const char *const suffixes[3] = {"_dev.csv", "_val.csv", "_test.csv"};
    qlab_status st = QLAB_OK;
    int cap = 0;
    for (int e = 0; e < a.count && st == QLAB_OK; e++) {
        const char *member = a.entries[e].path;
        const char *base = strrchr(member, '/');
        base = base ? base + 1 : member;
        size_t blen = strlen(base);
        int split = -1;
        size_t stem = 0;
        for (int k = 0; k < 3 && split < 0; k++) {
            size_t slen = strlen(suffixes[k]);
            if (blen > slen && !strcmp(base + blen - slen, suffixes[k])) split = k, stem = blen - slen;
        }
        if (split < 0 || base[0] == '.') continue; /* READMEs, macOS "._" files */
        char name[256];
        if (stem >= sizeof name) {
            st = qlab_fail(QLAB_ERR_FORMAT, "%s: %s: subject name too long", archive_path, member);
            break;
        }
        memcpy(name, base, stem);
        name[stem] = 0;
        int si = mmlu_find_subject(out, name);
        if (si < 0) {
            if (out->n_subjects == cap) {
                int c = cap ? cap * 2 : 64;
                mmlu_subject *bigger = realloc(out->subjects, (size_t)c * sizeof *bigger);
                if (!bigger) {
                    st = qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", archive_path);
                    break;
                }
                out->subjects = bigger;
                cap = c;
            }
            mmlu_subject *s = &out->subjects[out->n_subjects];
            memset(s, 0, sizeof *s);
            s->name = strdup(name);
            if (!s->name) {
                st = qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", archive_path);
                break;
            }
            si = out->n_subjects++;
        }
        mmlu_subject *s = &out->subjects[si];
        mmlu_question **slot = split == 0 ? &s->dev : split == 1 ? &s->val : &s->test;
        int *count = split == 0 ? &s->n_dev : split == 1 ? &s->n_val : &s->n_test;
        if (*slot) {
            st = qlab_fail(QLAB_ERR_FORMAT, "%s: %s: a second %s file for subject %s", archive_path, member,
                           suffixes[split] + 1, name);
            break;
        }
        st = parse_csv(archive_path, member, a.entries[e].data, a.entries[e].size, slot, count);
    }
    tar_archive_free(&a);
    if (st == QLAB_OK && out->n_subjects == 0)
        st = qlab_fail(QLAB_ERR_FORMAT, "%s: no <subject>_dev/_val/_test.csv files in the archive",
                       archive_path);
    if (st != QLAB_OK) {
        mmlu_free(out);
        return st;
    }
    qsort(out->subjects, (size_t)out->n_subjects, sizeof *out->subjects, compare_subjects);
    return QLAB_OK;
}

/* ---------------------------------------------------------------- prompts */

/* Appends n bytes of text to a malloc'd string; returns 0 when out of memory (the buffer is then freed). */
static int append_bytes(char **s, size_t *len, size_t *cap, const char *text, size_t n) {
    if (*len + n + 1 > *cap) {
        size_t c = (*cap ? *cap : 256);
        while (c < *len + n + 1)
            c *= 2;
        char *bigger = realloc(*s, c);
        if (!bigger) {
            free(*s);
            *s = NULL;
            qlab_fail(QLAB_ERR_NOMEM, "out of memory (%zu bytes)", c);
            return 0;
        }
        *s = bigger;
        *cap = c;
    }
    memcpy(*s + *len, text, n);
    *len += n;
    (*s)[*len] = 0;
    return 1;
}

static int append(char **s, size_t *len, size_t *cap, const char *text) {
    return append_bytes(s, len, cap, text, strlen(text));
}

static int append_question(char **s, size_t *len, size_t *cap, const mmlu_question *q, int include_answer) {
    char letter[8];
    if (!append(s, len, cap, q->question)) return 0;
    for (int j = 0; j < 4; j++) {
        snprintf(letter, sizeof letter, "\n%c. ", MMLU_LETTERS[j]);
        if (!append(s, len, cap, letter) || !append(s, len, cap, q->choices[j])) return 0;
    }
    if (!append(s, len, cap, "\nAnswer:")) return 0;
    if (include_answer) {
        snprintf(letter, sizeof letter, " %c\n\n", MMLU_LETTERS[q->answer & 3]);
        if (!append(s, len, cap, letter)) return 0;
    }
    return 1;
}

char *mmlu_format_question(const mmlu_question *q, int include_answer) {
    char *s = NULL;
    size_t len = 0, cap = 0;
    if (!append(&s, &len, &cap, "") || !append_question(&s, &len, &cap, q, include_answer)) return NULL;
    return s;
}

char *mmlu_format_prompt(const mmlu_subject *subject, int k_shot, const mmlu_question *q) {
    char *s = NULL;
    size_t len = 0, cap = 0;
    if (!append(&s, &len, &cap, MMLU_HEADER)) return NULL;
    /* evaluate.py's format_subject: every "_"-separated word preceded by a space. */
    for (const char *w = subject->name; *w;) {
        const char *end = strchr(w, '_');
        size_t n = end ? (size_t)(end - w) : strlen(w);
        if (!append(&s, &len, &cap, " ") || !append_bytes(&s, &len, &cap, w, n)) return NULL;
        w = end ? end + 1 : w + n;
    }
    if (!append(&s, &len, &cap, ".\n\n")) return NULL;
    if (k_shot > subject->n_dev) k_shot = subject->n_dev;
    for (int i = 0; i < k_shot; i++)
        if (!append_question(&s, &len, &cap, &subject->dev[i], 1)) return NULL;
    if (!append_question(&s, &len, &cap, q, 0)) return NULL;
    return s;
}

qlab_status mmlu_encode_prompt(const tokenizer *tok, const mmlu_subject *s, int k_shot,
                               const mmlu_question *q, int max_len, int **ids, int *n_ids, int *k_used,
                               int *truncated) {
    *ids = NULL;
    *n_ids = 0;
    *truncated = 0;
    if (max_len < 2) return qlab_fail(QLAB_ERR_ARG, "mmlu_encode_prompt: max_len %d is below 2", max_len);
    if (k_shot > s->n_dev) k_shot = s->n_dev;
    if (k_shot < 0) k_shot = 0;
    int bos = tokenizer_bos_id(tok) >= 0;
    for (int k = k_shot; k >= 0; k--) {
        char *text = mmlu_format_prompt(s, k, q);
        if (!text) return QLAB_ERR_NOMEM;
        int *t = NULL;
        size_t n = 0;
        qlab_status st = tokenizer_encode(tok, text, strlen(text), bos, &t, &n);
        free(text);
        if (st != QLAB_OK) return qlab_fail_context(st, "mmlu %s: ", s->name);
        if (n <= (size_t)max_len || k == 0) {
            if (n > (size_t)max_len) { /* keep the BOS (if any) and the end of the prompt */
                size_t keep = (size_t)max_len - (size_t)bos;
                memmove(t + bos, t + n - keep, keep * sizeof *t);
                n = (size_t)max_len;
                *truncated = 1;
            }
            *ids = t;
            *n_ids = (int)n;
            *k_used = k;
            return QLAB_OK;
        }
        free(t);
    }
    return qlab_fail(QLAB_ERR_ARG, "mmlu_encode_prompt: unreachable"); /* k == 0 always returns */
}

qlab_status mmlu_answer_tokens(const tokenizer *tok, int ids[4]) {
    for (int j = 0; j < 4; j++) {
        int *t = NULL;
        size_t n = 0;
        QLAB_TRY(tokenizer_encode(tok, &MMLU_LETTERS[j], 1, 0, &t, &n));
        ids[j] = n > 0 ? t[0] : -1;
        free(t);
        if (n != 1)
            return qlab_fail(QLAB_ERR_UNSUPPORTED,
                             "mmlu: the tokenizer encodes the answer \"%c\" as %zu tokens, not one, so the "
                             "answer logits cannot be compared at one position",
                             MMLU_LETTERS[j], n);
        for (int k = 0; k < j; k++)
            if (ids[k] == ids[j])
                return qlab_fail(QLAB_ERR_UNSUPPORTED, "mmlu: answers %c and %c encode to the same token %d",
                                 MMLU_LETTERS[k], MMLU_LETTERS[j], ids[j]);
    }
    return QLAB_OK;
}

int mmlu_pick_answer(const float *logits, const int ids[4]) {
    int best = 0;
    for (int j = 1; j < 4; j++)
        if (logits[ids[j]] > logits[ids[best]]) best = j;
    return best;
}

/* ---------------------------------------------------------------- qlora JSON files */

void mmlu_prompts_free(mmlu_prompt *p, int n) {
    for (int i = 0; i < n; i++) {
        free(p[i].subject);
        free(p[i].prompt);
    }
    free(p);
}

qlab_status mmlu_load_qlora_json(const char *path, mmlu_prompt **out, int *n_out) {
    *out = NULL;
    *n_out = 0;
    char *text = NULL;
    size_t len = 0;
    QLAB_TRY(qlab_read_file(path, &text, &len));
    mmlu_prompt *p = NULL;
    int n = 0, cap = 0, line = 0;
    qlab_status st = QLAB_OK;
    size_t off = 0;
    while (off < len && st == QLAB_OK) {
        size_t stop = off;
        while (stop < len && text[stop] != '\n')
            stop++;
        line++;
        size_t start = off;
        off = stop < len ? stop + 1 : stop;
        while (start < stop && (text[start] == ' ' || text[start] == '\r' || text[start] == '\t'))
            start++;
        if (start == stop) continue;
        cJSON *o = cJSON_ParseWithLength(text + start, stop - start);
        const cJSON *subject = cJSON_GetObjectItemCaseSensitive(o, "subject");
        const cJSON *input = cJSON_GetObjectItemCaseSensitive(o, "input");
        const cJSON *output = cJSON_GetObjectItemCaseSensitive(o, "output");
        if (!o) {
            st = qlab_fail(QLAB_ERR_FORMAT, "%s: line %d: not valid JSON", path, line);
        } else if (!cJSON_IsString(subject) || !cJSON_IsString(input) || !cJSON_IsString(output)) {
            st = qlab_fail(QLAB_ERR_FORMAT,
                           "%s: line %d: \"subject\", \"input\" and \"output\" must be strings", path, line);
        } else if (!output->valuestring[0] || output->valuestring[1] || output->valuestring[0] < 'A' ||
                   output->valuestring[0] > 'D') {
            st = qlab_fail(QLAB_ERR_FORMAT, "%s: line %d: output \"%.20s\" is not a letter A-D", path, line,
                           output->valuestring);
        } else {
            if (n == cap) {
                int c = cap ? cap * 2 : 256;
                mmlu_prompt *bigger = realloc(p, (size_t)c * sizeof *bigger);
                if (!bigger)
                    st = qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", path);
                else
                    p = bigger, cap = c;
            }
            if (st == QLAB_OK) {
                mmlu_prompt *r = &p[n++];
                r->subject = strdup(subject->valuestring);
                r->prompt = strdup(input->valuestring);
                r->answer = output->valuestring[0] - 'A';
                if (!r->subject || !r->prompt) st = qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", path);
            }
        }
        cJSON_Delete(o);
    }
    free(text);
    if (st == QLAB_OK && n == 0) st = qlab_fail(QLAB_ERR_FORMAT, "%s: holds no prompts", path);
    if (st != QLAB_OK) {
        mmlu_prompts_free(p, n);
        return st;
    }
    *out = p;
    *n_out = n;
    return QLAB_OK;
}
