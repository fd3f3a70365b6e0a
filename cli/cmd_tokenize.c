/* `qlab tokenize` turns a text file into int32 token ids in a .npy file; `qlab detokenize` turns ids back
 * into the exact bytes. Both take a llama2.c tokenizer.bin, a Hugging Face tokenizer.json or a GGUF model. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "core/base/common.h"
#include "core/formats/npy.h"
#include "core/text/tokenizer.h"

static void tokenize_usage(FILE *f) {
    fprintf(
        f,
        "Usage: qlab tokenize --tokenizer T [--bos] IN.txt OUT.npy\n"
        "\n"
        "Encodes the bytes of IN.txt with T (a llama2.c tokenizer.bin, a Hugging Face tokenizer.json, or a\n"
        "GGUF model file's embedded tokenizer) and writes the ids as a 1-D int32 .npy array. Any bytes are\n"
        "accepted: byte fallback covers the rest, and a Hugging Face vocabulary without it drops the\n"
        "characters it cannot spell, as transformers does. No BOS is added unless --bos is given\n"
        "(transformers adds one by default for Llama-style tokenizers, none for SmolLM2).\n"
        "\n"
        "  --tokenizer T   tokenizer file\n"
        "  --bos           put the BOS id first (decoding then drops SentencePiece's dummy-prefix space)\n"
        "  --quiet         print nothing on success\n");
}

static void detokenize_usage(FILE *f) {
    fprintf(f, "Usage: qlab detokenize --tokenizer T IN.npy OUT.txt\n"
               "\n"
               "Decodes a 1-D integer .npy array of ids ('<i4' or '<i8') with T and writes the exact bytes.\n"
               "\n"
               "  --tokenizer T   tokenizer file (the one the ids were made with)\n"
               "  --quiet         print nothing on success\n");
}

typedef struct {
    const char *tokenizer_path;
    const char *in, *out;
    int bos, quiet;
} tokenize_args;

/* Returns -1 when parsed, otherwise the exit code (0 after --help). */
static int parse_args(const char *cmd, int argc, char **argv, int allow_bos, void (*usage)(FILE *),
                      tokenize_args *a) {
    memset(a, 0, sizeof *a);
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(arg, "--tokenizer")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "qlab %s: --tokenizer needs a file\n", cmd);
                return 2;
            }
            a->tokenizer_path = argv[++i];
        } else if (allow_bos && !strcmp(arg, "--bos")) {
            a->bos = 1;
        } else if (!strcmp(arg, "--quiet")) {
            a->quiet = 1;
        } else if (arg[0] == '-' && arg[1]) {
            fprintf(stderr, "qlab %s: unknown option '%s' (see qlab %s --help)\n", cmd, arg, cmd);
            return 2;
        } else if (!a->in) {
            a->in = arg;
        } else if (!a->out) {
            a->out = arg;
        } else {
            fprintf(stderr, "qlab %s: too many files ('%s'); see qlab %s --help\n", cmd, arg, cmd);
            return 2;
        }
    }
    if (!a->tokenizer_path || !a->in || !a->out) {
        fprintf(stderr, "qlab %s: needs --tokenizer T and two files (see qlab %s --help)\n", cmd, cmd);
        return 2;
    }
    return -1;
}

static int cmd_tokenize(int argc, char **argv) {
    tokenize_args a;
    int code = parse_args("tokenize", argc, argv, 1, tokenize_usage, &a);
    if (code >= 0) return code;
    tokenizer *t;
    if (tokenizer_load(a.tokenizer_path, &t) != QLAB_OK) return qlab_report_error("qlab tokenize");
    char *text;
    size_t len;
    int *ids = NULL;
    size_t n = 0;
    qlab_status st = qlab_read_file(a.in, &text, &len);
    if (st == QLAB_OK) {
        st = tokenizer_encode(t, text, len, a.bos, &ids, &n);
        if (st != QLAB_OK) qlab_fail_context(st, "%s", a.in);
        free(text);
    }
    if (st == QLAB_OK) {
        int64_t shape[1] = {(int64_t)n};
        int32_t *ids32 = malloc((n ? n : 1) * sizeof *ids32);
        if (!ids32) st = qlab_fail(QLAB_ERR_NOMEM, "out of memory for %zu ids", n);
        for (size_t i = 0; ids32 && i < n; i++)
            ids32[i] = ids[i];
        if (st == QLAB_OK) st = npy_write(a.out, "<i4", 1, shape, ids32);
        free(ids32);
        if (st == QLAB_OK && !a.quiet)
            printf("%s: %zu bytes -> %zu tokens (%.3f bytes/token, vocabulary %d)\n", a.out, len, n,
                   n ? (double)len / (double)n : 0.0, tokenizer_vocab_size(t));
    }
    free(ids);
    tokenizer_free(t);
    return st == QLAB_OK ? 0 : qlab_report_error("qlab tokenize");
}

static int cmd_detokenize(int argc, char **argv) {
    tokenize_args a;
    int code = parse_args("detokenize", argc, argv, 0, detokenize_usage, &a);
    if (code >= 0) return code;
    tokenizer *t;
    if (tokenizer_load(a.tokenizer_path, &t) != QLAB_OK) return qlab_report_error("qlab detokenize");
    npy_array arr;
    qlab_status st = npy_read(a.in, &arr);
    int *ids = NULL;
    char *text = NULL;
    size_t len = 0;
    if (st == QLAB_OK) {
        int is32 = !strcmp(arr.dtype, "<i4"), is64 = !strcmp(arr.dtype, "<i8");
        if (!is32 && !is64)
            st = qlab_fail(QLAB_ERR_FORMAT, "%s: dtype %s, expected int32 '<i4' or int64 '<i8'", a.in,
                           arr.dtype);
        else if (arr.ndim != 1)
            st = qlab_fail(QLAB_ERR_FORMAT, "%s: %d dimensions, expected a 1-D array of ids", a.in, arr.ndim);
        else if (!(ids = malloc(((size_t)arr.count ? (size_t)arr.count : 1) * sizeof *ids)))
            st = qlab_fail(QLAB_ERR_NOMEM, "out of memory for %lld ids", (long long)arr.count);
        for (int64_t i = 0; st == QLAB_OK && i < arr.count; i++) {
            int64_t v = is32 ? ((const int32_t *)arr.data)[i] : ((const int64_t *)arr.data)[i];
            if (v < 0 || v >= tokenizer_vocab_size(t))
                st = qlab_fail(QLAB_ERR_FORMAT, "%s: element %lld is %lld, outside the vocabulary of %d",
                               a.in, (long long)i, (long long)v, tokenizer_vocab_size(t));
            else
                ids[i] = (int)v;
        }
        if (st == QLAB_OK) st = tokenizer_decode(t, ids, (size_t)arr.count, &text, &len);
        if (st == QLAB_OK) st = qlab_write_file_atomic(a.out, text, len);
        if (st == QLAB_OK && !a.quiet)
            printf("%s: %lld tokens -> %zu bytes\n", a.out, (long long)arr.count, len);
        npy_free(&arr);
    }
    free(ids);
    free(text);
    tokenizer_free(t);
    return st == QLAB_OK ? 0 : qlab_report_error("qlab detokenize");
}

QLAB_COMMAND(tokenize_command, "tokenize", "encode a text file into token ids (.npy)", cmd_tokenize)
QLAB_COMMAND(detokenize_command, "detokenize", "decode token ids (.npy) back into text", cmd_detokenize)
