/* Instruction-tuning data: loaders (Alpaca JSON, OASST1 JSON lines plain or gzip'd, Vicuna prompts), the
 * qlora prompt formats, tokenization into (tokens, targets) rows with the prompt masked, and the seeded
 * split and batch order. See instruct.h for the policies. */
#include "datasets/instruct.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/gzip.h"
#include "core/base/rng.h"

const char *instruct_source_name(instruct_source s) {
    switch (s) {
    case INSTRUCT_SOURCE_ALPACA:
        return "alpaca";
    case INSTRUCT_SOURCE_OASST1:
        return "oasst1";
    case INSTRUCT_SOURCE_VICUNA:
        return "vicuna";
    case INSTRUCT_SOURCE_CHAT:
        return "chat";
    }
    return "unknown";
}

/* ---------------------------------------------------------------- reading */

/* Offset of the first byte that is not valid UTF-8 (overlongs, surrogates and > U+10FFFF are invalid), or
 * -1 when the string is valid. */
static long invalid_utf8_offset(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t k;
        unsigned min, cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            k = 1, min = 0x80, cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            k = 2, min = 0x800, cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            k = 3, min = 0x10000, cp = c & 0x07;
        } else {
            return (long)i;
        }
        if (n - i <= k) return (long)i;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80) return (long)i;
            cp = cp << 6 | (s[i + j] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return (long)i;
        i += k + 1;
    }
    return -1;
}

/* "record 12" or "line 13": how messages name a record. */
typedef struct {
    const char *path;
    const char *unit; /* "record" or "line" */
    int number;
} record_place;

/* The string value of key, checked: present, a string, valid UTF-8. optional: a missing key gives "". */
static qlab_status get_string(const record_place *at, const cJSON *obj, const char *key, int optional,
                              const char **value) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!item) {
        if (optional) {
            *value = "";
            return QLAB_OK;
        }
        return qlab_fail(QLAB_ERR_FORMAT, "%s: %s %d: key \"%s\" missing", at->path, at->unit, at->number,
                         key);
    }
    if (!cJSON_IsString(item) || !item->valuestring) {
        const char *kind = cJSON_IsNumber(item)   ? "a number"
                           : cJSON_IsBool(item)   ? "a boolean"
                           : cJSON_IsNull(item)   ? "null"
                           : cJSON_IsArray(item)  ? "an array"
                           : cJSON_IsObject(item) ? "an object"
                                                  : "not a string";
        return qlab_fail(QLAB_ERR_FORMAT, "%s: %s %d: \"%s\" is %s, expected a string", at->path, at->unit,
                         at->number, key, kind);
    }
    const char *s = item->valuestring;
    long bad = invalid_utf8_offset((const unsigned char *)s, strlen(s));
    if (bad >= 0)
        return qlab_fail(QLAB_ERR_FORMAT, "%s: %s %d: \"%s\" is not valid UTF-8 (byte %ld of the string)",
                         at->path, at->unit, at->number, key, bad);
    *value = s;
    return QLAB_OK;
}

/* Line and column (from 1) of offset in text, for parse errors. */
static void line_column(const char *text, size_t offset, int *line, int *column) {
    int l = 1, c = 1;
    for (size_t i = 0; i < offset && text[i]; i++) {
        if (text[i] == '\n') {
            l++;
            c = 1;
        } else {
            c++;
        }
    }
    *line = l;
    *column = c;
}

static char *dup_string(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (!d) {
        qlab_fail(QLAB_ERR_NOMEM, "out of memory (%zu bytes)", n);
        return NULL;
    }
    memcpy(d, s, n);
    return d;
}

/* Builds a malloc'd string from printf-style pieces; NULL with a message when out of memory. */
static char *format_string(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *format_string(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        qlab_fail(QLAB_ERR_ARG, "format failed");
        return NULL;
    }
    char *s = malloc((size_t)n + 1);
    if (!s) {
        qlab_fail(QLAB_ERR_NOMEM, "out of memory (%d bytes)", n + 1);
        return NULL;
    }
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

static qlab_status set_append(instruct_set *s, int *cap, const instruct_record *r) {
    if (s->count == *cap) {
        if (*cap > (1 << 29)) return qlab_fail(QLAB_ERR_NOMEM, "too many records");
        int n = *cap ? *cap * 2 : 256;
        instruct_record *bigger = realloc(s->records, (size_t)n * sizeof *bigger);
        if (!bigger) return qlab_fail(QLAB_ERR_NOMEM, "out of memory (%d records)", n);
        s->records = bigger;
        *cap = n;
    }
    s->records[s->count++] = *r;
    return QLAB_OK;
}

void instruct_set_free(instruct_set *s) {
    if (!s) return;
    for (int i = 0; i < s->count; i++) {
        free(s->records[i].prompt);
        free(s->records[i].response);
    }
    free(s->records);
    memset(s, 0, sizeof *s);
}

/* ---------------------------------------------------------------- formats */

char *instruct_format_alpaca(const char *instruction, const char *input) {
    /* qlora.py ALPACA_PROMPT_DICT, character for character. */
    if (input && input[0])
        return format_string("Below is an instruction that describes a task, paired with an input that "
                             "provides further context. Write a response that appropriately completes the "
                             "request.\n\n### Instruction:\n%s\n\n### Input:\n%s\n\n### Response: ",
                             instruction, input);
    return format_string("Below is an instruction that describes a task. Write a response that "
                         "appropriately completes the request.\n\n### Instruction:\n%s\n\n### Response: ",
                         instruction);
}

char *instruct_format_chat(const char *human_text) {
    return format_string("### Human: %s ### Assistant:", human_text);
}

char *instruct_generation_prompt(const instruct_record *r) {
    return format_string("%s %s", INSTRUCT_CHAT_SYSTEM, r->prompt);
}

/* ---------------------------------------------------------------- loaders */

/* Converts one parsed record of the given source into r (fields malloc'd). */
static qlab_status record_from_json(const record_place *at, const cJSON *obj, instruct_source source,
                                    instruct_record *r) {
    memset(r, 0, sizeof *r);
    r->source = source;
    r->position = at->number;
    if (!cJSON_IsObject(obj))
        return qlab_fail(QLAB_ERR_FORMAT, "%s: %s %d: not a JSON object", at->path, at->unit, at->number);
    const char *a, *b, *c;
    switch (source) {
    case INSTRUCT_SOURCE_ALPACA:
        QLAB_TRY(get_string(at, obj, "instruction", 0, &a));
        QLAB_TRY(get_string(at, obj, "input", 1, &b));
        QLAB_TRY(get_string(at, obj, "output", 0, &c));
        r->prompt = instruct_format_alpaca(a, b);
        r->response = r->prompt ? dup_string(c) : NULL;
        break;
    case INSTRUCT_SOURCE_OASST1:
        QLAB_TRY(get_string(at, obj, "input", 0, &a));
        QLAB_TRY(get_string(at, obj, "output", 0, &c));
        r->prompt = dup_string(a);
        r->response = r->prompt ? dup_string(c) : NULL;
        break;
    case INSTRUCT_SOURCE_VICUNA:
        QLAB_TRY(get_string(at, obj, "text", 0, &a));
        r->prompt = instruct_format_chat(a);
        if (!r->prompt) return QLAB_ERR_NOMEM;
        return QLAB_OK;
    case INSTRUCT_SOURCE_CHAT: {
        QLAB_TRY(get_string(at, obj, "text", 0, &a));
        const char *mark = "### Assistant:", *last = NULL;
        for (const char *p = strstr(a, mark); p; p = strstr(p + 1, mark))
            last = p;
        if (!last)
            return qlab_fail(QLAB_ERR_FORMAT, "%s: %s %d: \"text\" holds no \"### Assistant:\" turn",
                             at->path, at->unit, at->number);
        const char *reply = last + strlen(mark);
        r->prompt = strndup(a, (size_t)(reply - a));
        r->response = r->prompt ? dup_string(reply + (*reply == ' ')) : NULL;
        break;
    }
    }
    if (!r->prompt || !r->response) {
        free(r->prompt);
        r->prompt = NULL;
        return qlab_fail(QLAB_ERR_NOMEM, "%s: %s %d: out of memory", at->path, at->unit, at->number);
    }
    return QLAB_OK;
}

static qlab_status parse_error(const char *path, const char *text, const char *where, const char *what,
                               int line_offset) {
    int line, column;
    line_column(text, where ? (size_t)(where - text) : 0, &line, &column);
    return qlab_fail(QLAB_ERR_FORMAT, "%s: %s at line %d, column %d", path, what, line + line_offset, column);
}

static qlab_status load_array(const char *path, const char *text, size_t len, instruct_source source,
                              instruct_set *out) {
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root) return parse_error(path, text, end ? end : cJSON_GetErrorPtr(), "not valid JSON", 0);
    qlab_status st = QLAB_OK;
    for (const char *p = end; st == QLAB_OK && p < text + len; p++)
        if (*p != ' ' && *p != '\n' && *p != '\r' && *p != '\t')
            st = parse_error(path, text, p, "unexpected data after the JSON value", 0);
    if (st == QLAB_OK && !cJSON_IsArray(root))
        st = qlab_fail(QLAB_ERR_FORMAT, "%s: not a JSON array of records (the top level is %s)", path,
                       cJSON_IsObject(root) ? "an object" : "a scalar");
    int cap = 0, index = 0;
    const cJSON *item;
    if (st == QLAB_OK) {
        cJSON_ArrayForEach(item, root) {
            record_place at = {path, "record", index++};
            instruct_record r;
            st = record_from_json(&at, item, source, &r);
            if (st == QLAB_OK) st = set_append(out, &cap, &r);
            if (st != QLAB_OK) {
                free(r.prompt);
                free(r.response);
                break;
            }
        }
    }
    cJSON_Delete(root);
    return st;
}

static qlab_status load_lines(const char *path, const char *text, size_t len, instruct_source source,
                              instruct_set *out) {
    int cap = 0, line = 0;
    size_t off = 0;
    while (off < len) {
        size_t stop = off;
        while (stop < len && text[stop] != '\n')
            stop++;
        line++;
        size_t next = stop < len ? stop + 1 : stop;
        int blank = 1;
        for (size_t i = off; i < stop && blank; i++)
            blank = text[i] == ' ' || text[i] == '\t' || text[i] == '\r';
        if (!blank) {
            const char *end = NULL;
            cJSON *obj = cJSON_ParseWithLengthOpts(text + off, stop - off, &end, 0);
            if (!obj) {
                const char *where = end ? end : cJSON_GetErrorPtr();
                long column = where && where >= text + off ? (long)(where - (text + off)) + 1 : 1;
                return qlab_fail(QLAB_ERR_FORMAT, "%s: line %d: not valid JSON (column %ld)", path, line,
                                 column);
            }
            for (const char *p = end; p < text + stop; p++)
                if (*p != ' ' && *p != '\t' && *p != '\r') {
                    cJSON_Delete(obj);
                    return qlab_fail(QLAB_ERR_FORMAT, "%s: line %d: more than one JSON value", path, line);
                }
            record_place at = {path, "line", line};
            instruct_record r;
            qlab_status st = record_from_json(&at, obj, source, &r);
            cJSON_Delete(obj);
            if (st == QLAB_OK) st = set_append(out, &cap, &r);
            if (st != QLAB_OK) {
                free(r.prompt);
                free(r.response);
                return st;
            }
        }
        off = next;
    }
    return QLAB_OK;
}

static qlab_status load_with(const char *path, instruct_source source, int as_array, instruct_set *out) {
    memset(out, 0, sizeof *out);
    char *text = NULL;
    size_t len = 0;
    QLAB_TRY(gzip_read_file(path, &text, &len));
    qlab_status st =
        as_array ? load_array(path, text, len, source, out) : load_lines(path, text, len, source, out);
    free(text);
    if (st == QLAB_OK && out->count == 0) st = qlab_fail(QLAB_ERR_FORMAT, "%s: holds no records", path);
    if (st != QLAB_OK) instruct_set_free(out);
    return st;
}

qlab_status instruct_load_alpaca(const char *path, instruct_set *out) {
    return load_with(path, INSTRUCT_SOURCE_ALPACA, 1, out);
}

qlab_status instruct_load_oasst1(const char *path, instruct_set *out) {
    return load_with(path, INSTRUCT_SOURCE_OASST1, 0, out);
}

qlab_status instruct_load_vicuna(const char *path, instruct_set *out) {
    return load_with(path, INSTRUCT_SOURCE_VICUNA, 0, out);
}

qlab_status instruct_load_chat(const char *path, instruct_set *out) {
    return load_with(path, INSTRUCT_SOURCE_CHAT, 0, out);
}

qlab_status instruct_load(const char *path, instruct_set *out) {
    memset(out, 0, sizeof *out);
    char *text = NULL;
    size_t len = 0;
    QLAB_TRY(gzip_read_file(path, &text, &len));
    size_t i = 0;
    while (i < len && (text[i] == ' ' || text[i] == '\n' || text[i] == '\r' || text[i] == '\t'))
        i++;
    qlab_status st;
    if (i < len && text[i] == '[') {
        st = load_array(path, text, len, INSTRUCT_SOURCE_ALPACA, out);
    } else {
        /* JSON lines: the first record decides between OASST1 (has "output") and Vicuna. */
        size_t stop = i;
        while (stop < len && text[stop] != '\n')
            stop++;
        cJSON *first = i < len ? cJSON_ParseWithLength(text + i, stop - i) : NULL;
        instruct_source source = first && cJSON_GetObjectItemCaseSensitive(first, "output")
                                     ? INSTRUCT_SOURCE_OASST1
                                     : INSTRUCT_SOURCE_VICUNA;
        cJSON_Delete(first);
        st = load_lines(path, text, len, source, out);
    }
    free(text);
    if (st == QLAB_OK && out->count == 0) st = qlab_fail(QLAB_ERR_FORMAT, "%s: holds no records", path);
    if (st != QLAB_OK) instruct_set_free(out);
    return st;
}

qlab_status instruct_set_select(const instruct_set *s, const int *index, int n, instruct_set *out) {
    memset(out, 0, sizeof *out);
    if (n < 0) return qlab_fail(QLAB_ERR_ARG, "instruct_set_select: negative count %d", n);
    if (n == 0) return QLAB_OK;
    out->records = qlab_calloc((size_t)n, sizeof *out->records);
    if (!out->records) return QLAB_ERR_NOMEM;
    for (int i = 0; i < n; i++) {
        if (index[i] < 0 || index[i] >= s->count) {
            instruct_set_free(out);
            return qlab_fail(QLAB_ERR_ARG, "instruct_set_select: index %d is outside the set of %d records",
                             index[i], s->count);
        }
        const instruct_record *r = &s->records[index[i]];
        instruct_record *c = &out->records[i];
        *c = *r;
        c->prompt = dup_string(r->prompt);
        c->response = r->response ? dup_string(r->response) : NULL;
        out->count = i + 1;
        if (!c->prompt || (r->response && !c->response)) {
            instruct_set_free(out);
            return QLAB_ERR_NOMEM;
        }
    }
    return QLAB_OK;
}

/* ---------------------------------------------------------------- tokenization */

/* One record's source and target ids after the caps (before the row cut). */
typedef struct {
    int *source, *target;
    size_t n_source, n_target;
    int source_cut, target_cut;
} encoded_record;

static qlab_status encode_record(const tokenizer *tok, const instruct_record *r, int record_index,
                                 int source_max, int target_max, encoded_record *e) {
    memset(e, 0, sizeof *e);
    if (!r->prompt || !r->response)
        return qlab_fail(QLAB_ERR_ARG, "instruct_encode: record %d (%s) has no %s", record_index,
                         instruct_source_name(r->source), r->prompt ? "response" : "prompt");
    int bos = tokenizer_bos_id(tok), eos = tokenizer_eos_id(tok);
    qlab_status st = tokenizer_encode(tok, r->prompt, strlen(r->prompt), bos >= 0, &e->source, &e->n_source);
    if (st != QLAB_OK) return qlab_fail_context(st, "instruct_encode: record %d prompt: ", record_index);
    int *ids = NULL;
    size_t n_ids = 0;
    st = tokenizer_encode(tok, r->response, strlen(r->response), 0, &ids, &n_ids);
    if (st != QLAB_OK) {
        free(e->source);
        e->source = NULL;
        return qlab_fail_context(st, "instruct_encode: record %d response: ", record_index);
    }
    e->target = malloc((n_ids + 1) * sizeof *e->target);
    if (!e->target) {
        free(ids);
        free(e->source);
        e->source = NULL;
        return qlab_fail(QLAB_ERR_NOMEM, "instruct_encode: out of memory");
    }
    if (n_ids) memcpy(e->target, ids, n_ids * sizeof *ids);
    free(ids);
    e->n_target = n_ids;
    if (eos >= 0) e->target[e->n_target++] = eos;
    if (e->n_source > (size_t)source_max) {
        e->n_source = (size_t)source_max;
        e->source_cut = 1;
    }
    if (e->n_target > (size_t)target_max) {
        e->n_target = (size_t)target_max;
        e->target_cut = 1;
    }
    return QLAB_OK;
}

/* Writes an encoded record at row offset `at` of a row of length T (tokens and targets of the row);
 * returns the tokens written. The caller guarantees at + n_source + 1 <= T. */
static int place_record(const encoded_record *e, int train_on_source, int at, int T, int *tokens,
                        int *targets, long long *n_target_tokens, int *target_cut) {
    int len = (int)e->n_source;
    memcpy(tokens + at, e->source, e->n_source * sizeof *tokens);
    int n_target = (int)e->n_target;
    if (at + len + n_target > T) {
        n_target = T - at - len;
        *target_cut = 1;
    }
    memcpy(tokens + at + len, e->target, (size_t)n_target * sizeof *tokens);
    len += n_target;
    /* Position p predicts p+1; the first learnable token is the first target token (or, with
     * train_on_source, the token after the BOS/first source token). */
    int first_learned = train_on_source ? 1 : (int)e->n_source;
    for (int p = 0; p + 1 < len; p++) {
        if (p + 1 >= first_learned) {
            targets[at + p] = tokens[at + p + 1];
            (*n_target_tokens)++;
        }
    }
    return len;
}

qlab_status instruct_encode(const tokenizer *tok, const instruct_record *records, int n,
                            const instruct_encode_options *opt, instruct_examples *out) {
    memset(out, 0, sizeof *out);
    if (!tok || !opt || (n > 0 && !records) || n < 0)
        return qlab_fail(QLAB_ERR_ARG, "instruct_encode: missing tokenizer, options or records");
    int T = opt->max_len;
    if (T < 2) return qlab_fail(QLAB_ERR_ARG, "instruct_encode: max_len %d is below 2", T);
    int source_max = opt->source_max_len > 0 ? opt->source_max_len : 3 * (T / 4);
    int target_max = opt->target_max_len > 0 ? opt->target_max_len : T;
    if (source_max > T - 1) source_max = T - 1; /* leave room for at least one response token */
    int pad = opt->pad_id >= 0 ? opt->pad_id : 0;
    if (pad >= tokenizer_vocab_size(tok))
        return qlab_fail(QLAB_ERR_ARG, "instruct_encode: pad_id %d is outside the vocabulary of %d", pad,
                         tokenizer_vocab_size(tok));
    if ((size_t)n > SIZE_MAX / sizeof(int) / (size_t)T)
        return qlab_fail(QLAB_ERR_ARG, "instruct_encode: %d rows of %d tokens overflow", n, T);
    out->T = T;
    out->has_bos = tokenizer_bos_id(tok) >= 0;
    out->has_eos = tokenizer_eos_id(tok) >= 0;
    /* At most one row per record: allocate for n and fill as many as needed. */
    size_t cells = (size_t)(n > 0 ? n : 1) * (size_t)T;
    out->tokens = malloc(cells * sizeof *out->tokens);
    out->targets = malloc(cells * sizeof *out->targets);
    out->lengths = qlab_calloc(n > 0 ? (size_t)n : 1, sizeof *out->lengths);
    out->first_record = qlab_calloc(n > 0 ? (size_t)n : 1, sizeof *out->first_record);
    if (!out->tokens || !out->targets || !out->lengths || !out->first_record) {
        instruct_examples_free(out);
        return qlab_fail(QLAB_ERR_NOMEM, "instruct_encode: out of memory for %d rows of %d", n, T);
    }
    int row = -1, used = T; /* used == T: the current row is full (or there is none) */
    for (int i = 0; i < n; i++) {
        encoded_record e;
        qlab_status st = encode_record(tok, &records[i], i, source_max, target_max, &e);
        if (st != QLAB_OK) {
            instruct_examples_free(out);
            return st;
        }
        size_t need = e.n_source + e.n_target;
        if (e.n_target == 0) { /* the tokenizer has no EOS and the response is empty: nothing to learn */
            out->n_dropped++;
        } else {
            int fits = opt->pack && row >= 0 && (size_t)(T - used) >= need;
            if (!fits) { /* start a new row */
                row++;
                used = 0;
                out->first_record[row] = i;
                for (int t = 0; t < T; t++) {
                    out->tokens[(size_t)row * T + t] = pad;
                    out->targets[(size_t)row * T + t] = -1;
                }
            }
            int target_cut = e.target_cut;
            used += place_record(&e, opt->train_on_source, used, T, out->tokens + (size_t)row * T,
                                 out->targets + (size_t)row * T, &out->n_target_tokens, &target_cut);
            out->lengths[row] = used;
            out->n_source_cut += e.source_cut;
            out->n_target_cut += target_cut;
        }
        free(e.source);
        free(e.target);
    }
    out->n = row + 1;
    return QLAB_OK;
}

void instruct_examples_free(instruct_examples *e) {
    if (!e) return;
    free(e->tokens);
    free(e->targets);
    free(e->lengths);
    free(e->first_record);
    memset(e, 0, sizeof *e);
}

/* ---------------------------------------------------------------- split and batches */

static void shuffle(int *a, int n, rng_state *r) {
    for (int i = n - 1; i > 0; i--) {
        int j = (int)rng_below(r, (uint64_t)i + 1);
        int t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

static int compare_int(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

qlab_status instruct_split(int n, int n_eval, uint64_t seed, int **train_index, int *n_train,
                           int **eval_index, int *n_eval_out) {
    *train_index = *eval_index = NULL;
    *n_train = *n_eval_out = 0;
    if (n < 0 || n_eval < 0 || n_eval > n)
        return qlab_fail(QLAB_ERR_ARG, "instruct_split: cannot take %d eval items out of %d", n_eval, n);
    int *perm = qlab_calloc(n > 0 ? (size_t)n : 1, sizeof *perm);
    if (!perm) return QLAB_ERR_NOMEM;
    for (int i = 0; i < n; i++)
        perm[i] = i;
    rng_state r;
    rng_seed(&r, seed);
    shuffle(perm, n, &r);
    int *ev = n_eval ? malloc((size_t)n_eval * sizeof *ev) : NULL;
    int *tr = n - n_eval ? malloc((size_t)(n - n_eval) * sizeof *tr) : NULL;
    if ((n_eval && !ev) || (n - n_eval && !tr)) {
        free(perm);
        free(ev);
        free(tr);
        return qlab_fail(QLAB_ERR_NOMEM, "instruct_split: out of memory");
    }
    if (n_eval) memcpy(ev, perm, (size_t)n_eval * sizeof *ev);
    if (n - n_eval) memcpy(tr, perm + n_eval, (size_t)(n - n_eval) * sizeof *tr);
    free(perm);
    if (ev) qsort(ev, (size_t)n_eval, sizeof *ev, compare_int);
    if (tr) qsort(tr, (size_t)(n - n_eval), sizeof *tr, compare_int);
    *train_index = tr;
    *eval_index = ev;
    *n_train = n - n_eval;
    *n_eval_out = n_eval;
    return QLAB_OK;
}

static void batcher_new_epoch(instruct_batcher *b) {
    /* The epoch's seed mixes (seed, epoch) with distinct odd constants; rng_seed's splitmix64 then
     * decorrelates nearby values, so epochs are independent and reproducible on their own. */
    rng_state r;
    rng_seed(&r, b->seed * 0x9e3779b97f4a7c15ULL ^ ((uint64_t)b->epoch + 1) * 0xd1b54a32d192ed03ULL);
    for (int i = 0; i < b->n_rows; i++)
        b->order[i] = i;
    shuffle(b->order, b->n_rows, &r);
    b->position = 0;
}

qlab_status instruct_batcher_init(instruct_batcher *b, int n_rows, int batch_size, int drop_last,
                                  uint64_t seed) {
    memset(b, 0, sizeof *b);
    if (n_rows <= 0 || batch_size <= 0)
        return qlab_fail(QLAB_ERR_ARG, "instruct_batcher_init: %d rows, batch size %d: both must be > 0",
                         n_rows, batch_size);
    if (drop_last && n_rows < batch_size)
        return qlab_fail(QLAB_ERR_ARG,
                         "instruct_batcher_init: drop_last with %d rows never fills a batch of %d", n_rows,
                         batch_size);
    b->order = malloc((size_t)n_rows * sizeof *b->order);
    if (!b->order) return qlab_fail(QLAB_ERR_NOMEM, "instruct_batcher_init: out of memory");
    b->n_rows = n_rows;
    b->batch_size = batch_size;
    b->drop_last = drop_last;
    b->seed = seed;
    batcher_new_epoch(b);
    return QLAB_OK;
}

int instruct_batcher_next(instruct_batcher *b, const instruct_examples *e, int *tokens, int *targets,
                          int *row_index) {
    if (!e || e->n < b->n_rows) return 0;
    int left = b->n_rows - b->position;
    if (left == 0 || (b->drop_last && left < b->batch_size)) {
        b->epoch++;
        batcher_new_epoch(b);
        left = b->n_rows;
    }
    int count = left < b->batch_size ? left : b->batch_size;
    size_t T = (size_t)e->T;
    for (int i = 0; i < count; i++) {
        int r = b->order[b->position + i];
        if (tokens) memcpy(tokens + (size_t)i * T, e->tokens + (size_t)r * T, T * sizeof *tokens);
        if (targets) memcpy(targets + (size_t)i * T, e->targets + (size_t)r * T, T * sizeof *targets);
        if (row_index) row_index[i] = r;
    }
    b->position += count;
    return count;
}

void instruct_batcher_free(instruct_batcher *b) {
    if (!b) return;
    free(b->order);
    memset(b, 0, sizeof *b);
}
