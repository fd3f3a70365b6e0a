/* Finetuning data formats (finetune_data.h). */
#include "datasets/finetune_data.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/gzip.h"

static const char *const format_names[FINETUNE_DATA_FORMAT_COUNT] = {"auto", "alpaca", "oasst", "jsonl",
                                                                     "text"};

const char *finetune_data_format_name(finetune_data_format f) {
    return f >= 0 && f < FINETUNE_DATA_FORMAT_COUNT ? format_names[f] : "unknown";
}

qlab_status finetune_data_format_parse(const char *name, finetune_data_format *f) {
    for (int i = 0; i < FINETUNE_DATA_FORMAT_COUNT; i++)
        if (name && !strcmp(name, format_names[i])) {
            *f = (finetune_data_format)i;
            return QLAB_OK;
        }
    return qlab_fail(QLAB_ERR_ARG, "unknown data format '%s' (expected auto, alpaca, oasst, jsonl or text)",
                     name ? name : "(null)");
}

/* The format of text (len bytes), or -1 with a message. */
static int detect_text(const char *path, const char *text, size_t len, finetune_data_format *out) {
    size_t i = 0;
    while (i < len && (text[i] == ' ' || text[i] == '\n' || text[i] == '\r' || text[i] == '\t'))
        i++;
    if (i == len) return qlab_fail(QLAB_ERR_FORMAT, "%s: the file is empty", path), -1;
    if (text[i] == '[') return *out = FINETUNE_DATA_ALPACA, 0;
    if (text[i] != '{') return *out = FINETUNE_DATA_TEXT, 0;
    size_t stop = i;
    while (stop < len && text[stop] != '\n')
        stop++;
    cJSON *first = cJSON_ParseWithLength(text + i, stop - i);
    int has_text = first && cJSON_GetObjectItemCaseSensitive(first, "text");
    int has_output = first && cJSON_GetObjectItemCaseSensitive(first, "output");
    cJSON_Delete(first);
    if (has_text) return *out = FINETUNE_DATA_OASST, 0;
    if (has_output) return *out = FINETUNE_DATA_JSONL, 0;
    qlab_fail(QLAB_ERR_FORMAT,
              "%s: JSON lines whose first record has neither \"text\" nor \"output\": the format cannot be "
              "detected; name it (alpaca, oasst, jsonl or text) instead of auto",
              path);
    return -1;
}

qlab_status finetune_data_detect(const char *path, finetune_data_format *out) {
    char *text = NULL;
    size_t len = 0;
    QLAB_TRY(gzip_read_file(path, &text, &len));
    int bad = detect_text(path, text, len, out);
    free(text);
    return bad ? QLAB_ERR_FORMAT : QLAB_OK;
}

static qlab_status load_text_rows(const char *path, const tokenizer *tok, int T, instruct_examples *out) {
    char *text = NULL;
    size_t len = 0;
    QLAB_TRY(gzip_read_file(path, &text, &len));
    int *ids = NULL;
    size_t n = 0;
    qlab_status st = tokenizer_encode(tok, text, len, tokenizer_bos_id(tok) >= 0, &ids, &n);
    free(text);
    if (st != QLAB_OK) return qlab_fail_context(st, "%s", path);
    if (n < 2) {
        free(ids);
        return qlab_fail(QLAB_ERR_FORMAT, "%s: the text has fewer than 2 tokens: nothing to learn", path);
    }
    size_t rows = (n - 1 + (size_t)T - 1) / (size_t)T;
    if (rows > (size_t)1 << 30) {
        free(ids);
        return qlab_fail(QLAB_ERR_FORMAT, "%s: too long (%zu rows)", path, rows);
    }
    memset(out, 0, sizeof *out);
    out->n = (int)rows, out->T = T;
    out->tokens = calloc(rows * (size_t)T, sizeof(int));
    out->targets = malloc(rows * (size_t)T * sizeof(int));
    out->lengths = calloc(rows, sizeof(int));
    out->first_record = calloc(rows, sizeof(int));
    if (!out->tokens || !out->targets || !out->lengths || !out->first_record) {
        free(ids);
        instruct_examples_free(out);
        return qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory for %zu rows", path, rows);
    }
    for (size_t r = 0; r < rows; r++) {
        out->first_record[r] = (int)r;
        for (int t = 0; t < T; t++) {
            size_t at = r * (size_t)T + (size_t)t;
            out->targets[at] = -1;
            if (at < n) out->tokens[at] = ids[at], out->lengths[r]++;
            if (at + 1 < n) out->targets[at] = ids[at + 1], out->n_target_tokens++;
        }
    }
    out->has_bos = tokenizer_bos_id(tok) >= 0;
    free(ids);
    return QLAB_OK;
}

qlab_status finetune_data_load(const char *path, finetune_data_format fmt, const tokenizer *tok,
                               const finetune_data_options *o, instruct_examples *out,
                               finetune_data_format *resolved) {
    memset(out, 0, sizeof *out);
    if (o->max_len < 2)
        return qlab_fail(QLAB_ERR_ARG, "finetune data: max_len %d must be at least 2", o->max_len);
    if (fmt == FINETUNE_DATA_AUTO) QLAB_TRY(finetune_data_detect(path, &fmt));
    if (resolved) *resolved = fmt;
    if (fmt == FINETUNE_DATA_TEXT) return load_text_rows(path, tok, o->max_len, out);
    instruct_set set;
    qlab_status st;
    switch (fmt) {
    case FINETUNE_DATA_ALPACA:
        st = instruct_load_alpaca(path, &set);
        break;
    case FINETUNE_DATA_OASST: {
        /* Guanaco's {"text"} lines, or OASST1 items already split into {"input", "output"}. */
        finetune_data_format inner;
        st = finetune_data_detect(path, &inner);
        if (st == QLAB_OK)
            st = inner == FINETUNE_DATA_JSONL ? instruct_load_oasst1(path, &set)
                                              : instruct_load_chat(path, &set);
        break;
    }
    case FINETUNE_DATA_JSONL:
        st = instruct_load_oasst1(path, &set);
        break;
    default:
        return qlab_fail(QLAB_ERR_ARG, "finetune data: format %d out of range", (int)fmt);
    }
    QLAB_TRY(st);
    instruct_encode_options eo = {.max_len = o->max_len, .train_on_source = o->train_on_source, .pad_id = -1};
    st = instruct_encode(tok, set.records, set.count, &eo, out);
    instruct_set_free(&set);
    if (st != QLAB_OK) return qlab_fail_context(st, "%s", path);
    if (out->n == 0) {
        instruct_examples_free(out);
        return qlab_fail(QLAB_ERR_FORMAT, "%s: no record has anything to learn", path);
    }
    return QLAB_OK;
}

static qlab_status take_rows(const instruct_examples *all, const int *index, int n, instruct_examples *out) {
    memset(out, 0, sizeof *out);
    int T = all->T;
    out->n = n, out->T = T, out->has_bos = all->has_bos, out->has_eos = all->has_eos;
    out->tokens = malloc(sizeof(int) * (size_t)n * T);
    out->targets = malloc(sizeof(int) * (size_t)n * T);
    out->lengths = malloc(sizeof(int) * (size_t)n);
    out->first_record = malloc(sizeof(int) * (size_t)n);
    if (!out->tokens || !out->targets || !out->lengths || !out->first_record) {
        instruct_examples_free(out);
        return qlab_fail(QLAB_ERR_NOMEM, "finetune data: out of memory for %d rows", n);
    }
    for (int i = 0; i < n; i++) {
        size_t from = (size_t)index[i] * T, to = (size_t)i * T;
        memcpy(out->tokens + to, all->tokens + from, sizeof(int) * (size_t)T);
        memcpy(out->targets + to, all->targets + from, sizeof(int) * (size_t)T);
        out->lengths[i] = all->lengths[index[i]];
        out->first_record[i] = all->first_record[index[i]];
        for (int t = 0; t < T; t++)
            out->n_target_tokens += all->targets[from + t] >= 0;
    }
    return QLAB_OK;
}

qlab_status finetune_data_split(const instruct_examples *all, double fraction, uint64_t seed,
                                instruct_examples *train, instruct_examples *eval) {
    memset(train, 0, sizeof *train);
    memset(eval, 0, sizeof *eval);
    if (!(fraction > 0 && fraction < 1))
        return qlab_fail(QLAB_ERR_ARG, "finetune data: eval fraction %g must lie strictly between 0 and 1",
                         fraction);
    if (all->n < 2)
        return qlab_fail(QLAB_ERR_ARG, "finetune data: %d row(s) cannot be split into training and held-out",
                         all->n);
    int n_eval = (int)llround(fraction * all->n);
    if (n_eval < 1) n_eval = 1;
    if (n_eval > all->n - 1) n_eval = all->n - 1;
    int *ti = NULL, *ei = NULL, nt = 0, ne = 0;
    QLAB_TRY(instruct_split(all->n, n_eval, seed, &ti, &nt, &ei, &ne));
    qlab_status st = take_rows(all, ti, nt, train);
    if (st == QLAB_OK) st = take_rows(all, ei, ne, eval);
    if (st != QLAB_OK) instruct_examples_free(train), instruct_examples_free(eval);
    free(ti), free(ei);
    return st;
}
