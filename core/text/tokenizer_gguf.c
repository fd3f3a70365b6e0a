/* The tokenizer embedded in a GGUF file (tokenizer.ggml.*), rebuilt as the equivalent tokenizer of the
 * formats qlab already encodes exactly:
 * - model "gpt2" (byte-level BPE): the tokenizer.json Hugging Face would hold for the same vocabulary —
 *   BPE over tokens/merges, the control (token_type 3) and user-defined (4) tokens as added tokens matched
 *   in the text, and the pre-tokenizer that tokenizer.ggml.pre names: "smollm" (Digits with individual
 *   digits, then GPT-2's ByteLevel regex: llama.cpp's LLAMA_VOCAB_PRE_TYPE_SMOLLM) or "gpt-2" (the
 *   ByteLevel regex alone). Other pre-tokenizers (Llama 3's "llama-bpe", ...) are refused by name.
 *   (transformers 5.25's GGUF loader knows no "smollm" and keeps only the ByteLevel step, so it differs
 *   from SmolLM2's own tokenizer.json, and from qlab, on whitespace before a digit and on "½"-like
 *   characters: 41 of 2,392 Alpaca fields; tests/interop/check_tokenizers.py.)
 * - model "llama" (SentencePiece-style BPE with scores): llama2.c's tokenizer.bin with "▁" spelled as a
 *   space, as llama2.c's exporter writes it; encoding is run.c's (dummy-prefix space, best score first).
 * BOS/EOS come from tokenizer.ggml.bos_token_id / eos_token_id, and tokenizer.ggml.add_bos_token says
 * whether text is encoded with a BOS (tokenizer_add_bos). */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "core/formats/gguf_meta.h"
#include "core/text/tokenizer_internal.h"

enum { GGUF_TOKEN_CONTROL = 3, GGUF_TOKEN_USER_DEFINED = 4 };

static char *dup_str(gguf_meta_str s) {
    char *p = malloc(s.len + 1);
    if (p) {
        memcpy(p, s.s, s.len);
        p[s.len] = 0;
    }
    return p;
}

static int str_is(gguf_meta_str s, const char *lit) {
    return s.len == strlen(lit) && memcmp(s.s, lit, s.len) == 0;
}

static qlab_status build_bytelevel(const char *path, const gguf_meta *g, gguf_meta_str pre, int have_pre,
                                   const gguf_meta_str *tokens, size_t n_tokens, tokenizer *t) {
    /* which pre-tokenizer steps the name stands for */
    int digits;
    if (have_pre && str_is(pre, "smollm"))
        digits = 1;
    else if (have_pre && str_is(pre, "gpt-2"))
        digits = 0;
    else
        return qlab_fail(QLAB_ERR_UNSUPPORTED,
                         "%s: tokenizer.ggml.pre is \"%.*s\"; supported for byte-level BPE: smollm, gpt-2",
                         path, have_pre ? (int)(pre.len < 60 ? pre.len : 60) : 9,
                         have_pre ? pre.s : "(missing)");
    gguf_meta_str *merges = NULL;
    int32_t *types = NULL;
    size_t n_merges = 0, n_types = 0;
    int found = 0;
    qlab_status st = gguf_meta_get_strings(g, "tokenizer.ggml.merges", &merges, &n_merges, &found);
    if (st == QLAB_OK && !found)
        st = qlab_fail(QLAB_ERR_FORMAT,
                       "%s: metadata tokenizer.ggml.merges is missing (needed by model gpt2)", path);
    if (st == QLAB_OK) st = gguf_meta_get_i32s(g, "tokenizer.ggml.token_type", &types, &n_types, &found);
    if (st == QLAB_OK && found && n_types != n_tokens)
        st = qlab_fail(QLAB_ERR_FORMAT,
                       "%s: metadata tokenizer.ggml.token_type has %zu entries for %zu tokens", path, n_types,
                       n_tokens);
    cJSON *root = cJSON_CreateObject(), *model = cJSON_AddObjectToObject(root, "model");
    cJSON *vocab = model ? cJSON_AddObjectToObject(model, "vocab") : NULL;
    cJSON *mlist = model ? cJSON_AddArrayToObject(model, "merges") : NULL;
    cJSON *added = cJSON_AddArrayToObject(root, "added_tokens");
    if (st == QLAB_OK &&
        (!root || !vocab || !mlist || !added || !cJSON_AddStringToObject(model, "type", "BPE")))
        st = qlab_fail_context(QLAB_ERR_NOMEM, "%s", path);
    for (size_t i = 0; i < n_tokens && st == QLAB_OK; i++) {
        if (memchr(tokens[i].s, 0, tokens[i].len) || tokens[i].len == 0) {
            st = qlab_fail(QLAB_ERR_FORMAT,
                           "%s: metadata tokenizer.ggml.tokens[%zu] is empty or holds a NUL byte", path, i);
            break;
        }
        char *s = dup_str(tokens[i]);
        cJSON *num = s ? cJSON_CreateNumber((double)i) : NULL;
        if (!num) {
            free(s);
            st = qlab_fail_context(QLAB_ERR_NOMEM, "%s", path);
            break;
        }
        cJSON_AddItemToObject(vocab, s, num);
        if (types && (types[i] == GGUF_TOKEN_CONTROL || types[i] == GGUF_TOKEN_USER_DEFINED)) {
            cJSON *a = cJSON_CreateObject();
            if (!a || !cJSON_AddNumberToObject(a, "id", (double)i) ||
                !cJSON_AddStringToObject(a, "content", s)) {
                cJSON_Delete(a);
                st = qlab_fail_context(QLAB_ERR_NOMEM, "%s", path);
            } else {
                cJSON_AddItemToArray(added, a);
            }
        }
        free(s);
    }
    for (size_t i = 0; i < n_merges && st == QLAB_OK; i++) {
        char *s = dup_str(merges[i]);
        cJSON *item = s && !memchr(merges[i].s, 0, merges[i].len) ? cJSON_CreateString(s) : NULL;
        free(s);
        if (!item) {
            st =
                qlab_fail(QLAB_ERR_FORMAT, "%s: metadata tokenizer.ggml.merges[%zu] cannot be read", path, i);
            break;
        }
        cJSON_AddItemToArray(mlist, item);
    }
    if (st == QLAB_OK) {
        cJSON *p = cJSON_AddObjectToObject(root, "pre_tokenizer");
        cJSON *seq = p ? cJSON_AddArrayToObject(p, "pretokenizers") : NULL;
        cJSON *d = cJSON_CreateObject(), *b = cJSON_CreateObject();
        if (!seq || !d || !b || !cJSON_AddStringToObject(p, "type", "Sequence") ||
            !cJSON_AddStringToObject(d, "type", "Digits") ||
            !cJSON_AddBoolToObject(d, "individual_digits", 1) ||
            !cJSON_AddStringToObject(b, "type", "ByteLevel") ||
            !cJSON_AddBoolToObject(b, "add_prefix_space", 0) || !cJSON_AddBoolToObject(b, "use_regex", 1)) {
            cJSON_Delete(d);
            cJSON_Delete(b);
            st = qlab_fail_context(QLAB_ERR_NOMEM, "%s", path);
        } else {
            if (digits)
                cJSON_AddItemToArray(seq, d);
            else
                cJSON_Delete(d);
            cJSON_AddItemToArray(seq, b);
        }
    }
    char *json = st == QLAB_OK ? cJSON_PrintUnformatted(root) : NULL;
    if (st == QLAB_OK && !json) st = qlab_fail_context(QLAB_ERR_NOMEM, "%s", path);
    cJSON_Delete(root);
    if (st == QLAB_OK) st = tokenizer_load_json(path, json, strlen(json), t);
    free(json);
    free(merges);
    free(types);
    return st;
}

static qlab_status build_sentencepiece(const char *path, const gguf_meta *g, const gguf_meta_str *tokens,
                                       size_t n_tokens, tokenizer *t) {
    float *scores = NULL;
    size_t n_scores = 0;
    int found = 0;
    QLAB_TRY(gguf_meta_get_f32s(g, "tokenizer.ggml.scores", &scores, &n_scores, &found));
    if (!found || n_scores != n_tokens) {
        free(scores);
        return qlab_fail(QLAB_ERR_FORMAT,
                         "%s: metadata tokenizer.ggml.scores %s (model llama needs one per token)", path,
                         found ? "has the wrong length" : "is missing");
    }
    /* tokenizer.bin bytes, "▁" (U+2581) written as ' ' */
    size_t bytes = 4, max_len = 1;
    for (size_t i = 0; i < n_tokens; i++)
        bytes += 8 + tokens[i].len;
    char *bin = malloc(bytes), *w = bin + 4;
    if (!bin) {
        free(scores);
        return qlab_fail_context(QLAB_ERR_NOMEM, "%s", path);
    }
    for (size_t i = 0; i < n_tokens; i++) {
        char *len_at = w + 4;
        memcpy(w, &scores[i], 4);
        w += 8;
        int32_t len = 0;
        for (size_t k = 0; k < tokens[i].len; k++) {
            if (k + 2 < tokens[i].len && memcmp(tokens[i].s + k, "\xE2\x96\x81", 3) == 0) {
                w[len++] = ' ';
                k += 2;
            } else {
                w[len++] = tokens[i].s[k];
            }
        }
        memcpy(len_at, &len, 4);
        w += len;
        if ((size_t)len > max_len) max_len = (size_t)len;
    }
    int32_t ml = (int32_t)max_len;
    memcpy(bin, &ml, 4);
    qlab_status st = tokenizer_load_bin(path, bin, (size_t)(w - bin), t);
    free(bin);
    free(scores);
    return st;
}

qlab_status tokenizer_load_gguf(const char *path, const char *data, size_t size, tokenizer *t) {
    gguf_meta g;
    QLAB_TRY(gguf_meta_parse(path, data, size, &g));
    gguf_meta_str kind = {0}, pre = {0};
    gguf_meta_str *tokens = NULL;
    size_t n_tokens = 0;
    int found = 0, have_pre = 0;
    int64_t bos = -1, eos = -1;
    int add_bos = -1, have_add_bos = 0;
    qlab_status st = gguf_meta_get_string(&g, "tokenizer.ggml.model", &kind, &found);
    if (st == QLAB_OK && !found)
        st = qlab_fail(QLAB_ERR_FORMAT,
                       "%s: metadata tokenizer.ggml.model is missing: the file has no tokenizer", path);
    if (st == QLAB_OK) st = gguf_meta_get_string(&g, "tokenizer.ggml.pre", &pre, &have_pre);
    if (st == QLAB_OK) st = gguf_meta_get_strings(&g, "tokenizer.ggml.tokens", &tokens, &n_tokens, &found);
    if (st == QLAB_OK && (!found || n_tokens == 0 || n_tokens > INT_MAX))
        st = qlab_fail(QLAB_ERR_FORMAT, "%s: metadata tokenizer.ggml.tokens is %s", path,
                       found ? "empty or too long" : "missing");
    if (st == QLAB_OK) st = gguf_meta_get_int(&g, "tokenizer.ggml.bos_token_id", &bos, NULL);
    if (st == QLAB_OK) st = gguf_meta_get_int(&g, "tokenizer.ggml.eos_token_id", &eos, NULL);
    if (st == QLAB_OK) st = gguf_meta_get_bool(&g, "tokenizer.ggml.add_bos_token", &add_bos, &have_add_bos);
    if (st == QLAB_OK) {
        if (str_is(kind, "gpt2"))
            st = build_bytelevel(path, &g, pre, have_pre, tokens, n_tokens, t);
        else if (str_is(kind, "llama"))
            st = build_sentencepiece(path, &g, tokens, n_tokens, t);
        else
            st = qlab_fail(QLAB_ERR_UNSUPPORTED,
                           "%s: tokenizer.ggml.model is \"%.*s\"; supported: gpt2 (byte-level BPE), llama "
                           "(SentencePiece-style BPE)",
                           path, (int)(kind.len < 60 ? kind.len : 60), kind.s);
    }
    if (st == QLAB_OK && t->vocab_size != (int)n_tokens)
        st = qlab_fail(QLAB_ERR_FORMAT, "%s: tokenizer.ggml.tokens: %zu tokens gave a vocabulary of %d", path,
                       n_tokens, t->vocab_size);
    for (int k = 0; k < 2 && st == QLAB_OK; k++) {
        int64_t id = k ? eos : bos;
        if (id == -1 || id == (int64_t)UINT32_MAX) continue; /* llama.cpp writes 2^32-1 for "none" */
        if (id < 0 || id >= t->vocab_size)
            st = qlab_fail(QLAB_ERR_FORMAT,
                           "%s: metadata tokenizer.ggml.%s_token_id = %lld is outside the %d tokens", path,
                           k ? "eos" : "bos", (long long)id, t->vocab_size);
        else if (k)
            t->eos_id = (int)id;
        else
            t->bos_id = (int)id;
    }
    /* absent: a BOS, as for every other tokenizer qlab reads */
    if (st == QLAB_OK) t->add_bos = have_add_bos ? add_bos : 1;
    free(tokens);
    gguf_meta_free(&g);
    return st;
}
