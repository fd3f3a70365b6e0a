/* Hugging Face tokenizer.json with a BPE model: the loader (strict: every key it relies on is checked,
 * anything it cannot reproduce exactly is refused by name) and the encoding pipeline it describes: added
 * tokens matched in the raw text, normalizer (Prepend, Replace), pre-tokenizer (Metaspace, ByteLevel with
 * the GPT-2 regex, Digits), then merges by rank within each word, with byte fallback or <unk>. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/text/tokenizer_internal.h"

/* Ids above this are not a real vocabulary (the largest in use are ~256k) and would waste memory. */
#define TOKENIZER_JSON_MAX_ID (1 << 24)
/* How many ids below the largest one may go unnamed by model.vocab and added_tokens. */
#define TOKENIZER_JSON_MAX_UNNAMED_IDS 65536

/* ------------------------------------------------------------------------------------------ JSON helpers */

/* Looks up key in obj (which the caller has checked is an object); *item is NULL when absent. Fails when
 * present with the wrong type. type_mask is a cJSON type bit set; cJSON_NULL counts as absent when
 * allow_null. */
static qlab_status get_key(const char *path, const char *where, const cJSON *obj, const char *key,
                           int type_mask, const char *type_name, int required, const cJSON **item) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    *item = NULL;
    if (!v || (cJSON_IsNull(v) && !(type_mask & cJSON_NULL))) {
        if (required) return qlab_fail(QLAB_ERR_FORMAT, "%s: missing key '%s%s'", path, where, key);
        return QLAB_OK;
    }
    if (cJSON_IsNull(v)) return QLAB_OK;
    if (!((v->type & 0xFF) & type_mask))
        return qlab_fail(QLAB_ERR_FORMAT, "%s: key '%s%s' must be %s", path, where, key, type_name);
    *item = v;
    return QLAB_OK;
}

static qlab_status get_bool(const char *path, const char *where, const cJSON *obj, const char *key, int dflt,
                            int *out) {
    const cJSON *v;
    QLAB_TRY(get_key(path, where, obj, key, cJSON_True | cJSON_False, "true or false", 0, &v));
    *out = v ? cJSON_IsTrue(v) : dflt;
    return QLAB_OK;
}

static qlab_status get_string(const char *path, const char *where, const cJSON *obj, const char *key,
                              int required, const char **out) {
    const cJSON *v;
    QLAB_TRY(get_key(path, where, obj, key, cJSON_String, "a string", required, &v));
    *out = v ? v->valuestring : NULL;
    return QLAB_OK;
}

static int json_id(const cJSON *v, int *id) {
    if (!cJSON_IsNumber(v)) return 0;
    double d = v->valuedouble;
    if (!(d >= 0 && d < TOKENIZER_JSON_MAX_ID) || d != (double)(int)d) return 0;
    *id = (int)d;
    return 1;
}

static char *dup_string(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

/* ------------------------------------------------------------------------------------------ loading */

static qlab_status add_step(const char *path, tokenizer *t, tokenizer_step step) {
    tokenizer_step *s = realloc(t->steps, (size_t)(t->n_steps + 1) * sizeof *s);
    if (!s) {
        free(step.pattern);
        free(step.text);
        return qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", path);
    }
    t->steps = s;
    t->steps[t->n_steps++] = step;
    return QLAB_OK;
}

static qlab_status parse_normalizer(const char *path, const char *where, const cJSON *n, tokenizer *t,
                                    int depth) {
    if (!cJSON_IsObject(n))
        return qlab_fail(QLAB_ERR_FORMAT, "%s: '%s' must be an object or null", path, where);
    const char *type;
    char sub[256];
    snprintf(sub, sizeof sub, "%s.", where);
    QLAB_TRY(get_string(path, sub, n, "type", 1, &type));
    if (!strcmp(type, "Sequence") && depth < 4) {
        const cJSON *list;
        QLAB_TRY(get_key(path, sub, n, "normalizers", cJSON_Array, "an array", 1, &list));
        int i = 0;
        for (const cJSON *item = list->child; item; item = item->next, i++) {
            char item_where[256];
            snprintf(item_where, sizeof item_where, "%s.normalizers[%d]", where, i);
            QLAB_TRY(parse_normalizer(path, item_where, item, t, depth + 1));
        }
        return QLAB_OK;
    }
    if (!strcmp(type, "Prepend")) {
        const char *text;
        QLAB_TRY(get_string(path, sub, n, "prepend", 1, &text));
        tokenizer_step step = {TOKENIZER_STEP_PREPEND, NULL, dup_string(text), 0, 0};
        if (!step.text) return qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", path);
        return add_step(path, t, step);
    }
    if (!strcmp(type, "Replace")) {
        const cJSON *pattern;
        const char *find, *content;
        QLAB_TRY(get_key(path, sub, n, "pattern", cJSON_Object, "an object", 1, &pattern));
        snprintf(sub, sizeof sub, "%s.pattern.", where);
        if (cJSON_GetObjectItemCaseSensitive(pattern, "Regex"))
            return qlab_fail(QLAB_ERR_UNSUPPORTED,
                             "%s: '%s.pattern' is a Regex; only String patterns are supported", path, where);
        QLAB_TRY(get_string(path, sub, pattern, "String", 1, &find));
        snprintf(sub, sizeof sub, "%s.", where);
        QLAB_TRY(get_string(path, sub, n, "content", 1, &content));
        if (!find[0]) return qlab_fail(QLAB_ERR_FORMAT, "%s: '%s.pattern.String' is empty", path, where);
        tokenizer_step step = {TOKENIZER_STEP_REPLACE, dup_string(find), dup_string(content), 0, 0};
        if (!step.pattern || !step.text) {
            free(step.pattern);
            free(step.text);
            return qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", path);
        }
        return add_step(path, t, step);
    }
    return qlab_fail(QLAB_ERR_UNSUPPORTED,
                     "%s: '%s.type' is \"%s\"; supported normalizers: Sequence, Prepend, Replace", path,
                     where, type);
}

static qlab_status parse_pre_tokenizer(const char *path, const char *where, const cJSON *p, tokenizer *t,
                                       int depth) {
    if (!cJSON_IsObject(p))
        return qlab_fail(QLAB_ERR_FORMAT, "%s: '%s' must be an object or null", path, where);
    const char *type;
    char sub[256];
    snprintf(sub, sizeof sub, "%s.", where);
    QLAB_TRY(get_string(path, sub, p, "type", 1, &type));
    if (!strcmp(type, "Sequence") && depth < 4) {
        const cJSON *list;
        QLAB_TRY(get_key(path, sub, p, "pretokenizers", cJSON_Array, "an array", 1, &list));
        int i = 0;
        for (const cJSON *item = list->child; item; item = item->next, i++) {
            char item_where[256];
            snprintf(item_where, sizeof item_where, "%s.pretokenizers[%d]", where, i);
            QLAB_TRY(parse_pre_tokenizer(path, item_where, item, t, depth + 1));
        }
        return QLAB_OK;
    }
    if (!strcmp(type, "Metaspace")) {
        const char *replacement, *scheme;
        int split, add_prefix_space;
        QLAB_TRY(get_string(path, sub, p, "replacement", 1, &replacement));
        QLAB_TRY(get_string(path, sub, p, "prepend_scheme", 0, &scheme));
        QLAB_TRY(get_bool(path, sub, p, "split", 1, &split));
        QLAB_TRY(
            get_bool(path, sub, p, "add_prefix_space", 1, &add_prefix_space)); /* before prepend_scheme */
        int32_t cp;
        size_t rlen = strlen(replacement);
        if (rlen == 0 || unicode_next((const unsigned char *)replacement, rlen, &cp) != rlen || cp < 0)
            return qlab_fail(QLAB_ERR_FORMAT, "%s: '%s.replacement' must be one character", path, where);
        int flag = add_prefix_space ? TOKENIZER_PREPEND_ALWAYS : TOKENIZER_PREPEND_NEVER;
        if (scheme) {
            if (!strcmp(scheme, "always"))
                flag = TOKENIZER_PREPEND_ALWAYS;
            else if (!strcmp(scheme, "first"))
                flag = TOKENIZER_PREPEND_FIRST;
            else if (!strcmp(scheme, "never"))
                flag = TOKENIZER_PREPEND_NEVER;
            else
                return qlab_fail(QLAB_ERR_FORMAT,
                                 "%s: '%s.prepend_scheme' is \"%s\", expected always, first or never", path,
                                 where, scheme);
        }
        tokenizer_step step = {TOKENIZER_STEP_METASPACE, NULL, dup_string(replacement), flag, split};
        if (!step.text) return qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", path);
        return add_step(path, t, step);
    }
    if (!strcmp(type, "ByteLevel")) {
        int add_prefix_space, use_regex;
        QLAB_TRY(get_bool(path, sub, p, "add_prefix_space", 0, &add_prefix_space));
        QLAB_TRY(get_bool(path, sub, p, "use_regex", 1, &use_regex));
        return add_step(path, t,
                        (tokenizer_step){TOKENIZER_STEP_BYTELEVEL, NULL, NULL, add_prefix_space, use_regex});
    }
    if (!strcmp(type, "Digits")) {
        int individual;
        QLAB_TRY(get_bool(path, sub, p, "individual_digits", 0, &individual));
        return add_step(path, t, (tokenizer_step){TOKENIZER_STEP_DIGITS, NULL, NULL, individual, 0});
    }
    return qlab_fail(
        QLAB_ERR_UNSUPPORTED,
        "%s: '%s.type' is \"%s\"; supported pre-tokenizers: Sequence, Metaspace, ByteLevel, Digits", path,
        where, type);
}

static qlab_status pair_map_insert(tokenizer_pair_map *m, int a, int b, int rank, int merged) {
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    size_t slot = (size_t)((key * 0x9E3779B97F4A7C15ull) >> 20) & m->mask;
    while (m->keys[slot] != 0 && m->keys[slot] != key)
        slot = (slot + 1) & m->mask;
    /* A repeated pair takes its last rank, as Hugging Face's map construction does. */
    m->keys[slot] = key;
    m->rank[slot] = rank;
    m->merged[slot] = merged;
    return QLAB_OK;
}

static qlab_status parse_merges(const char *path, const cJSON *merges, tokenizer *t) {
    int n = cJSON_GetArraySize(merges);
    size_t cap = 16;
    while (cap < (size_t)n * 2)
        cap *= 2;
    tokenizer_pair_map *m = &t->merges;
    m->keys = qlab_calloc(cap, sizeof *m->keys);
    m->rank = qlab_calloc(cap, sizeof *m->rank);
    m->merged = qlab_calloc(cap, sizeof *m->merged);
    if (!m->keys || !m->rank || !m->merged) return qlab_fail_context(QLAB_ERR_NOMEM, "%s", path);
    m->mask = cap - 1;
    int rank = 0;
    char *joined = NULL;
    qlab_status st = QLAB_OK;
    for (const cJSON *item = merges->child; item && st == QLAB_OK; item = item->next, rank++) {
        const char *a, *b;
        size_t la, lb;
        if (cJSON_IsString(item)) {
            /* "a b": exactly one space, as Hugging Face requires. */
            const char *s = item->valuestring, *space = strchr(s, ' ');
            if (!space || strchr(space + 1, ' ') || space == s || !space[1]) {
                st =
                    qlab_fail(QLAB_ERR_FORMAT,
                              "%s: model.merges[%d] is \"%.60s\", expected two pieces separated by one space",
                              path, rank, s);
                break;
            }
            a = s, la = (size_t)(space - s), b = space + 1, lb = strlen(b);
        } else if (cJSON_IsArray(item) && cJSON_GetArraySize(item) == 2 && cJSON_IsString(item->child) &&
                   cJSON_IsString(item->child->next)) {
            a = item->child->valuestring, la = strlen(a);
            b = item->child->next->valuestring, lb = strlen(b);
        } else {
            st = qlab_fail(QLAB_ERR_FORMAT,
                           "%s: model.merges[%d] must be a string \"a b\" or an array of two strings", path,
                           rank);
            break;
        }
        int ia = tokenizer_map_find(t, a, la), ib = tokenizer_map_find(t, b, lb);
        char *grown = realloc(joined, la + lb + 1);
        if (!grown) {
            st = qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", path);
            break;
        }
        joined = grown;
        memcpy(joined, a, la);
        memcpy(joined + la, b, lb);
        int im = tokenizer_map_find(t, joined, la + lb);
        if (ia < 0 || ib < 0 || im < 0) {
            const char *missing = ia < 0 ? a : ib < 0 ? b : joined;
            size_t missing_len = ia < 0 ? la : ib < 0 ? lb : la + lb;
            st = qlab_fail(QLAB_ERR_FORMAT, "%s: model.merges[%d]: \"%.*s\" is not in model.vocab", path,
                           rank, (int)(missing_len < 60 ? missing_len : 60), missing);
            break;
        }
        st = pair_map_insert(m, ia, ib, rank, im);
    }
    free(joined);
    return st;
}

typedef struct {
    const char *piece;
    int id;
    int added;
} id_entry;

/* Collects model.vocab and added_tokens into t->pieces (id order), checking ids. */
static qlab_status build_vocab(const char *path, const cJSON *vocab, const cJSON *added, tokenizer *t) {
    int n_added = added ? cJSON_GetArraySize(added) : 0;
    int max_id = -1;
    size_t text_bytes = 0;
    for (const cJSON *v = vocab->child; v; v = v->next) {
        int id;
        if (!json_id(v, &id))
            return qlab_fail(QLAB_ERR_FORMAT, "%s: model.vocab[\"%.60s\"] must be an integer id in 0..%d",
                             path, v->string, TOKENIZER_JSON_MAX_ID - 1);
        if (id > max_id) max_id = id;
        text_bytes += strlen(v->string) + 1;
    }
    int i = 0;
    for (const cJSON *a = added ? added->child : NULL; a; a = a->next, i++) {
        char where[64];
        snprintf(where, sizeof where, "added_tokens[%d].", i);
        if (!cJSON_IsObject(a))
            return qlab_fail(QLAB_ERR_FORMAT, "%s: added_tokens[%d] must be an object", path, i);
        const cJSON *idv;
        const char *content;
        QLAB_TRY(get_key(path, where, a, "id", cJSON_Number, "an integer id", 1, &idv));
        QLAB_TRY(get_string(path, where, a, "content", 1, &content));
        int id;
        if (!json_id(idv, &id))
            return qlab_fail(QLAB_ERR_FORMAT, "%s: key '%sid' must be an integer id in 0..%d", path, where,
                             TOKENIZER_JSON_MAX_ID - 1);
        if (!content[0]) return qlab_fail(QLAB_ERR_FORMAT, "%s: key '%scontent' is empty", path, where);
        if (id > max_id) max_id = id;
        text_bytes += strlen(content) + 1;
    }
    if (max_id < 0) return qlab_fail(QLAB_ERR_FORMAT, "%s: model.vocab is empty", path);
    /* The id arrays are sized by the largest id; ids nothing names cost memory the file does not justify,
     * so only a few may be left unnamed (real files number their tokens densely). */
    size_t named = (size_t)cJSON_GetArraySize(vocab) + (size_t)n_added;
    if ((size_t)max_id >= named + TOKENIZER_JSON_MAX_UNNAMED_IDS)
        return qlab_fail(
            QLAB_ERR_FORMAT,
            "%s: model.vocab/added_tokens use id %d but name only %zu tokens (at most %d ids may "
            "be unnamed)",
            path, max_id, named, TOKENIZER_JSON_MAX_UNNAMED_IDS);
    t->vocab_size = max_id + 1;
    size_t count = (size_t)t->vocab_size;
    t->pieces = qlab_calloc(count, sizeof *t->pieces);
    t->piece_len = qlab_calloc(count, sizeof *t->piece_len);
    t->piece_byte = qlab_calloc(count, sizeof *t->piece_byte);
    t->is_added = qlab_calloc(count, 1);
    t->arena = qlab_calloc(text_bytes + 1, 1);
    t->added = qlab_calloc((size_t)n_added + 1, sizeof *t->added);
    if (!t->pieces || !t->piece_len || !t->piece_byte || !t->is_added || !t->arena || !t->added)
        return qlab_fail_context(QLAB_ERR_NOMEM, "%s", path);
    char *dst = t->arena;
    char *empty = dst++; /* "" for ids no entry names */
    for (size_t k = 0; k < count; k++)
        t->pieces[k] = empty;
    for (const cJSON *v = vocab->child; v; v = v->next) {
        int id = (int)v->valuedouble;
        if (t->pieces[id] != empty)
            return qlab_fail(QLAB_ERR_FORMAT, "%s: model.vocab gives id %d to both \"%.40s\" and \"%.40s\"",
                             path, id, t->pieces[id], v->string);
        size_t len = strlen(v->string);
        memcpy(dst, v->string, len + 1);
        t->pieces[id] = dst;
        t->piece_len[id] = (int)len;
        dst += len + 1;
    }
    for (const cJSON *a = added ? added->child : NULL; a; a = a->next) {
        int id = (int)cJSON_GetObjectItemCaseSensitive(a, "id")->valuedouble;
        const char *content = cJSON_GetObjectItemCaseSensitive(a, "content")->valuestring;
        size_t len = strlen(content);
        if (t->is_added[id]) return qlab_fail(QLAB_ERR_FORMAT, "%s: added_tokens list id %d twice", path, id);
        /* An added token decodes to its content, whatever model.vocab calls that id. */
        memcpy(dst, content, len + 1);
        t->pieces[id] = dst;
        t->piece_len[id] = (int)len;
        dst += len + 1;
        t->is_added[id] = 1;
        t->added[t->n_added++] = (tokenizer_added){id, t->pieces[id], len};
    }
    for (size_t k = 0; k < count; k++)
        if (t->piece_len[k] > t->max_piece_len) t->max_piece_len = t->piece_len[k];
    return QLAB_OK;
}

static int added_longer_first(const void *x, const void *y) {
    const tokenizer_added *a = x, *b = y;
    if (a->len != b->len) return a->len > b->len ? -1 : 1;
    return a->id - b->id;
}

static int find_piece_id(const tokenizer *t, const char *s) {
    for (int i = 0; i < t->n_added; i++)
        if (!strcmp(t->added[i].content, s)) return t->added[i].id;
    return tokenizer_map_find(t, s, strlen(s));
}

/* BOS/EOS from a TemplateProcessing post-processor: a special token before the first sequence is the BOS,
 * one after it the EOS. */
static void specials_from_template(tokenizer *t, const cJSON *post, int depth) {
    if (!cJSON_IsObject(post) || depth > 4) return;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(post, "type");
    if (!cJSON_IsString(type)) return;
    if (!strcmp(type->valuestring, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(post, "processors");
        for (const cJSON *p = cJSON_IsArray(list) ? list->child : NULL; p; p = p->next)
            specials_from_template(t, p, depth + 1);
        return;
    }
    if (strcmp(type->valuestring, "TemplateProcessing")) return;
    const cJSON *single = cJSON_GetObjectItemCaseSensitive(post, "single");
    int seen_sequence = 0;
    for (const cJSON *item = cJSON_IsArray(single) ? single->child : NULL; item; item = item->next) {
        if (cJSON_GetObjectItemCaseSensitive(item, "Sequence")) {
            seen_sequence = 1;
            continue;
        }
        const cJSON *special = cJSON_GetObjectItemCaseSensitive(item, "SpecialToken");
        const cJSON *name = special ? cJSON_GetObjectItemCaseSensitive(special, "id") : NULL;
        if (!cJSON_IsString(name)) continue;
        int id = find_piece_id(t, name->valuestring);
        if (id < 0) continue;
        if (!seen_sequence)
            t->bos_id = id;
        else
            t->eos_id = id;
    }
}

static void find_specials(tokenizer *t, const cJSON *root) {
    specials_from_template(t, cJSON_GetObjectItemCaseSensitive(root, "post_processor"), 0);
    static const char *const bos_names[] = {"<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>",
                                            "<|endoftext|>"};
    static const char *const eos_names[] = {"</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>"};
    for (size_t i = 0; t->bos_id < 0 && i < sizeof bos_names / sizeof bos_names[0]; i++)
        t->bos_id = find_piece_id(t, bos_names[i]);
    for (size_t i = 0; t->eos_id < 0 && i < sizeof eos_names / sizeof eos_names[0]; i++)
        t->eos_id = find_piece_id(t, eos_names[i]);
}

static void build_byte_map(tokenizer *t) {
    /* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other 68 bytes are
     * moved to U+0100.. in byte order, so every byte is a visible character. */
    int next = 256;
    for (int i = 0; i < 512; i++)
        t->codepoint_to_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        t->byte_to_codepoint[b] = printable ? b : next++;
        t->codepoint_to_byte[t->byte_to_codepoint[b]] = (int16_t)b;
    }
}

static qlab_status load_json_model(const char *path, const cJSON *root, tokenizer *t) {
    if (!cJSON_IsObject(root))
        return qlab_fail(QLAB_ERR_FORMAT, "%s: the top level must be a JSON object", path);
    const cJSON *model, *vocab, *merges, *added, *normalizer, *pre;
    QLAB_TRY(get_key(path, "", root, "model", cJSON_Object, "an object", 1, &model));
    const char *type, *unk, *prefix, *suffix;
    QLAB_TRY(get_string(path, "model.", model, "type", 1, &type));
    if (strcmp(type, "BPE"))
        return qlab_fail(QLAB_ERR_UNSUPPORTED, "%s: model.type is \"%s\"; only BPE is supported", path, type);
    QLAB_TRY(get_key(path, "model.", model, "vocab", cJSON_Object, "an object", 1, &vocab));
    QLAB_TRY(get_key(path, "model.", model, "merges", cJSON_Array, "an array", 1, &merges));
    QLAB_TRY(get_bool(path, "model.", model, "byte_fallback", 0, &t->byte_fallback));
    QLAB_TRY(get_bool(path, "model.", model, "fuse_unk", 0, &t->fuse_unk));
    QLAB_TRY(get_bool(path, "model.", model, "ignore_merges", 0, &t->ignore_merges));
    QLAB_TRY(get_string(path, "model.", model, "unk_token", 0, &unk));
    QLAB_TRY(get_string(path, "model.", model, "continuing_subword_prefix", 0, &prefix));
    QLAB_TRY(get_string(path, "model.", model, "end_of_word_suffix", 0, &suffix));
    if ((prefix && prefix[0]) || (suffix && suffix[0]))
        return qlab_fail(QLAB_ERR_UNSUPPORTED,
                         "%s: model.continuing_subword_prefix / end_of_word_suffix are not supported", path);
    const cJSON *dropout;
    QLAB_TRY(get_key(path, "model.", model, "dropout", cJSON_Number, "a number or null", 0, &dropout));
    if (dropout && dropout->valuedouble != 0)
        return qlab_fail(QLAB_ERR_UNSUPPORTED,
                         "%s: model.dropout is %g; BPE dropout is random, qlab needs determinism", path,
                         dropout->valuedouble);
    QLAB_TRY(get_key(path, "", root, "added_tokens", cJSON_Array, "an array", 0, &added));
    QLAB_TRY(get_key(path, "", root, "normalizer", cJSON_Object, "an object or null", 0, &normalizer));
    QLAB_TRY(get_key(path, "", root, "pre_tokenizer", cJSON_Object, "an object or null", 0, &pre));

    QLAB_TRY(build_vocab(path, vocab, added, t));
    QLAB_TRY(tokenizer_map_build(t));
    tokenizer_find_byte_pieces(t);
    build_byte_map(t);
    qsort(t->added, (size_t)t->n_added, sizeof *t->added, added_longer_first);
    if (unk) {
        t->unk_id = tokenizer_map_find(t, unk, strlen(unk));
        if (t->unk_id < 0)
            return qlab_fail(QLAB_ERR_FORMAT, "%s: model.unk_token \"%.60s\" is not in model.vocab", path,
                             unk);
    }
    QLAB_TRY(parse_merges(path, merges, t));
    if (normalizer) QLAB_TRY(parse_normalizer(path, "normalizer", normalizer, t, 0));
    if (pre) QLAB_TRY(parse_pre_tokenizer(path, "pre_tokenizer", pre, t, 0));
    t->kind = TOKENIZER_HF_SENTENCEPIECE;
    for (int i = 0; i < t->n_steps; i++)
        if (t->steps[i].kind == TOKENIZER_STEP_BYTELEVEL) t->kind = TOKENIZER_HF_BYTELEVEL;
    find_specials(t, root);
    return QLAB_OK;
}

qlab_status tokenizer_load_json(const char *path, const char *data, size_t size, tokenizer *t) {
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(data, size, &end, 0);
    if (!root) {
        size_t offset = end && end >= data && end <= data + size ? (size_t)(end - data) : 0;
        return qlab_fail(QLAB_ERR_FORMAT, "%s: not valid JSON (error near byte %zu)", path, offset);
    }
    qlab_status st = load_json_model(path, root, t);
    cJSON_Delete(root);
    return st;
}

/* ------------------------------------------------------------------------------------------ encoding */

/* Words of the text being pre-tokenized: spans of one byte buffer. */
typedef struct {
    char *buf;
    size_t len, cap;
    size_t *start, *size;
    size_t n, words_cap;
} word_list;

static void words_free(word_list *w) {
    free(w->buf);
    free(w->start);
    free(w->size);
    memset(w, 0, sizeof *w);
}

static qlab_status words_append(word_list *w, const char *bytes, size_t len) {
    if (w->len + len > w->cap) {
        size_t grown = w->cap ? w->cap : 1024;
        while (grown < w->len + len)
            grown *= 2;
        char *p = realloc(w->buf, grown);
        if (!p) return qlab_fail(QLAB_ERR_NOMEM, "out of memory (%zu bytes) while tokenizing", grown);
        w->buf = p;
        w->cap = grown;
    }
    if (len) memcpy(w->buf + w->len, bytes, len); /* bytes may be NULL (an empty Prepend string) */
    w->len += len;
    return QLAB_OK;
}

/* Ends the current word at the end of the buffer (empty words are dropped). */
static qlab_status words_cut(word_list *w, size_t *word_start) {
    if (w->len == *word_start) return QLAB_OK;
    if (w->n == w->words_cap) {
        size_t grown = w->words_cap ? w->words_cap * 2 : 64;
        size_t *s = realloc(w->start, grown * sizeof *s);
        if (s) w->start = s;
        size_t *z = s ? realloc(w->size, grown * sizeof *z) : NULL;
        if (z) w->size = z;
        if (!s || !z) return qlab_fail(QLAB_ERR_NOMEM, "out of memory (%zu words) while tokenizing", grown);
        w->words_cap = grown;
    }
    w->start[w->n] = *word_start;
    w->size[w->n++] = w->len - *word_start;
    *word_start = w->len;
    return QLAB_OK;
}

typedef enum { CLASS_LETTER, CLASS_NUMBER, CLASS_SPACE, CLASS_OTHER } char_class;

static char_class classify(int32_t cp) {
    if (unicode_is_letter(cp)) return CLASS_LETTER;
    if (unicode_is_number(cp)) return CLASS_NUMBER;
    if (cp >= 0 && unicode_is_space(cp)) return CLASS_SPACE;
    return CLASS_OTHER;
}

/* Length of the GPT-2 pre-tokenizer match at s[0..len):
 *   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * tried in that order, as the regex engine does. Invalid UTF-8 bytes count as "other". */
static size_t gpt2_match(const unsigned char *s, size_t len) {
    if (s[0] == '\'' && len >= 2) {
        if (s[1] && strchr("stmd", s[1])) return 2;
        if (len >= 3 &&
            ((s[1] == 'r' && s[2] == 'e') || (s[1] == 'v' && s[2] == 'e') || (s[1] == 'l' && s[2] == 'l')))
            return 3;
    }
    int32_t cp;
    size_t i = unicode_next(s, len, &cp);
    char_class c = classify(cp);
    if (cp == ' ' && i < len) {
        int32_t next_cp;
        unicode_next(s + i, len - i, &next_cp);
        char_class next_class = classify(next_cp);
        if (next_class != CLASS_SPACE) c = next_class, i += unicode_next(s + i, len - i, &next_cp);
    }
    if (c != CLASS_SPACE) {
        while (i < len) {
            size_t step = unicode_next(s + i, len - i, &cp);
            if (classify(cp) != c) break;
            i += step;
        }
        return i;
    }
    /* Whitespace: the whole run if it ends the text, else all but its last character (which then leads
     * the next word, " ?\p{L}+" style), unless the run is a single character. */
    size_t last = 0;
    while (i < len) {
        size_t step = unicode_next(s + i, len - i, &cp);
        if (classify(cp) != CLASS_SPACE) break;
        last = i;
        i += step;
    }
    if (i == len || last == 0) return i;
    return last;
}

static int starts_with(const char *s, size_t len, const char *prefix) {
    size_t n = strlen(prefix);
    return len >= n && !memcmp(s, prefix, n);
}

/* Applies one pre-tokenizer step to every word of in, producing out. */
static qlab_status apply_step(const tokenizer *t, const tokenizer_step *step, const word_list *in,
                              int at_start, word_list *out) {
    out->len = 0;
    out->n = 0;
    size_t word_start = 0;
    for (size_t k = 0; k < in->n; k++) {
        const char *w = in->buf + in->start[k];
        size_t len = in->size[k];
        const unsigned char *u = (const unsigned char *)w;
        if (step->kind == TOKENIZER_STEP_METASPACE) {
            const char *rep = step->text;
            size_t rlen = strlen(rep);
            /* Hugging Face prepends only when the word does not already start with the replacement (after
             * replacing spaces); "first" means only the word at the start of the input. */
            int starts_space_or_rep = (len > 0 && w[0] == ' ') || starts_with(w, len, rep);
            int prepend = step->flag == TOKENIZER_PREPEND_ALWAYS ||
                          (step->flag == TOKENIZER_PREPEND_FIRST && at_start && k == 0);
            if (prepend && !starts_space_or_rep) QLAB_TRY(words_append(out, rep, rlen));
            for (size_t i = 0; i < len; i++) {
                int is_space = w[i] == ' ', is_rep = !is_space && starts_with(w + i, len - i, rep);
                /* split: MergedWithNext, every replacement character begins a new word */
                if ((is_space || is_rep) && step->split) QLAB_TRY(words_cut(out, &word_start));
                if (is_space || is_rep)
                    QLAB_TRY(words_append(out, rep, rlen));
                else
                    QLAB_TRY(words_append(out, w + i, 1));
                if (is_rep) i += rlen - 1;
            }
            QLAB_TRY(words_cut(out, &word_start));
        } else if (step->kind == TOKENIZER_STEP_DIGITS) {
            int prev_digit = -1;
            for (size_t i = 0; i < len;) {
                int32_t cp;
                size_t n = unicode_next(u + i, len - i, &cp);
                int digit = unicode_is_number(cp);
                if (i > 0 && (digit != prev_digit || (digit && step->flag)))
                    QLAB_TRY(words_cut(out, &word_start));
                QLAB_TRY(words_append(out, w + i, n));
                prev_digit = digit;
                i += n;
            }
            QLAB_TRY(words_cut(out, &word_start));
        } else { /* BYTELEVEL */
            size_t i = 0;
            int pending_space = step->flag && !(len > 0 && w[0] == ' ');
            /* Split first (on the prefixed word), then map every byte of each piece to its character. */
            char *tmp = NULL;
            if (pending_space) {
                tmp = malloc(len + 1);
                if (!tmp) return qlab_fail(QLAB_ERR_NOMEM, "out of memory while tokenizing");
                tmp[0] = ' ';
                memcpy(tmp + 1, w, len);
                u = (const unsigned char *)tmp;
                len++;
            }
            qlab_status st = QLAB_OK;
            while (i < len && st == QLAB_OK) {
                size_t n = step->split ? gpt2_match(u + i, len - i) : len - i;
                for (size_t j = i; j < i + n && st == QLAB_OK; j++) {
                    char utf8[4];
                    size_t m = unicode_encode(t->byte_to_codepoint[u[j]], utf8);
                    st = words_append(out, utf8, m);
                }
                if (st == QLAB_OK) st = words_cut(out, &word_start);
                i += n;
            }
            free(tmp);
            QLAB_TRY(st);
        }
    }
    return QLAB_OK;
}

/* The BPE model on one word: characters (or byte fallback / unk), then merges by rank. */
static qlab_status encode_word(const tokenizer *t, tokenizer_workspace *ws, const char *w, size_t len,
                               int **ids, size_t *n, size_t *cap) {
    if (t->ignore_merges) {
        int id = tokenizer_map_find(t, w, len);
        if (id >= 0) return tokenizer_push_id(ids, n, cap, id);
    }
    size_t first = *n;
    int prev_unk = 0;
    for (size_t i = 0; i < len;) {
        int32_t cp;
        size_t step = unicode_next((const unsigned char *)w + i, len - i, &cp);
        int id = tokenizer_map_find(t, w + i, step);
        if (id >= 0) {
            QLAB_TRY(tokenizer_push_id(ids, n, cap, id));
            prev_unk = 0;
        } else {
            int all_bytes = t->byte_fallback;
            for (size_t k = 0; all_bytes && k < step; k++)
                all_bytes = t->byte_id[(unsigned char)w[i + k]] >= 0;
            if (all_bytes) {
                for (size_t k = 0; k < step; k++)
                    QLAB_TRY(tokenizer_push_id(ids, n, cap, t->byte_id[(unsigned char)w[i + k]]));
                prev_unk = 0;
            } else if (t->unk_id >= 0) {
                if (!(t->fuse_unk && prev_unk)) QLAB_TRY(tokenizer_push_id(ids, n, cap, t->unk_id));
                prev_unk = 1;
            }
            /* Neither: Hugging Face's BPE drops the character (SmolLM2 has no piece for the bytes 0x04,
             * 0x06, 0x13, ... of its byte-level alphabet, so "a\x04b" encodes as "a", "b"). */
        }
        i += step;
    }
    size_t count = *n - first;
    QLAB_TRY(tokenizer_merge(t, ws, *ids + first, &count));
    *n = first + count;
    return QLAB_OK;
}

static qlab_status encode_segment(const tokenizer *t, tokenizer_workspace *ws, const char *text, size_t len,
                                  int at_start, word_list lists[2], int **ids, size_t *n, size_t *cap) {
    if (len == 0) return QLAB_OK;
    word_list *cur = &lists[0], *next = &lists[1];
    cur->len = cur->n = 0;
    size_t word_start = 0;
    /* Normalizers act on the whole segment as one string. */
    int normalized = 0;
    for (int s = 0; s < t->n_steps; s++) {
        const tokenizer_step *step = &t->steps[s];
        if (step->kind != TOKENIZER_STEP_PREPEND && step->kind != TOKENIZER_STEP_REPLACE) continue;
        const char *src = normalized ? cur->buf : text;
        size_t src_len = normalized ? cur->len : len;
        next->len = next->n = 0;
        if (step->kind == TOKENIZER_STEP_PREPEND) {
            QLAB_TRY(words_append(next, step->text, strlen(step->text)));
            QLAB_TRY(words_append(next, src, src_len));
        } else {
            size_t plen = strlen(step->pattern), clen = strlen(step->text);
            for (size_t i = 0; i < src_len;) {
                if (starts_with(src + i, src_len - i, step->pattern)) {
                    QLAB_TRY(words_append(next, step->text, clen));
                    i += plen;
                } else {
                    QLAB_TRY(words_append(next, src + i, 1));
                    i++;
                }
            }
        }
        word_list swap = *cur;
        *cur = *next;
        *next = swap;
        normalized = 1;
    }
    if (!normalized) {
        cur->len = 0;
        QLAB_TRY(words_append(cur, text, len));
    }
    cur->n = 0;
    QLAB_TRY(words_cut(cur, &word_start));
    for (int s = 0; s < t->n_steps; s++) {
        const tokenizer_step *step = &t->steps[s];
        if (step->kind == TOKENIZER_STEP_PREPEND || step->kind == TOKENIZER_STEP_REPLACE) continue;
        QLAB_TRY(apply_step(t, step, cur, at_start, next));
        word_list swap = *cur;
        *cur = *next;
        *next = swap;
    }
    for (size_t k = 0; k < cur->n; k++)
        QLAB_TRY(encode_word(t, ws, cur->buf + cur->start[k], cur->size[k], ids, n, cap));
    return QLAB_OK;
}

/* Leftmost-longest match of an added token at text[i], or -1. */
static int match_added(const tokenizer *t, const char *text, size_t len, size_t i, size_t *match_len) {
    for (int a = 0; a < t->n_added; a++) {
        const tokenizer_added *ad = &t->added[a];
        if (ad->len <= len - i && text[i] == ad->content[0] && !memcmp(text + i, ad->content, ad->len)) {
            *match_len = ad->len;
            return ad->id;
        }
    }
    return -1;
}

qlab_status tokenizer_encode_hf(const tokenizer *t, tokenizer_workspace *ws, const char *text, size_t len,
                                int **ids, size_t *n, size_t *cap) {
    unsigned char first_byte[256] = {0};
    for (int a = 0; a < t->n_added; a++)
        first_byte[(unsigned char)t->added[a].content[0]] = 1;
    word_list lists[2] = {{0}, {0}};
    qlab_status st = QLAB_OK;
    size_t segment = 0;
    for (size_t i = 0; i < len && st == QLAB_OK;) {
        size_t match_len = 0;
        int id = first_byte[(unsigned char)text[i]] ? match_added(t, text, len, i, &match_len) : -1;
        if (id < 0) {
            i++;
            continue;
        }
        st = encode_segment(t, ws, text + segment, i - segment, segment == 0, lists, ids, n, cap);
        if (st == QLAB_OK) st = tokenizer_push_id(ids, n, cap, id);
        i += match_len;
        segment = i;
    }
    if (st == QLAB_OK)
        st = encode_segment(t, ws, text + segment, len - segment, segment == 0, lists, ids, n, cap);
    words_free(&lists[0]);
    words_free(&lists[1]);
    return st;
}
