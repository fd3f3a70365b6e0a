/* `qlab corpus` writes the built-in story corpus (datasets/corpus.h); `qlab train-tokenizer` trains a
 * byte-fallback BPE tokenizer.bin on a text (core/text/bpe.h). Together they make pretraining data without
 * internet access. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/base/atomic_file.h"
#include "core/text/bpe.h"
#include "cli/cli.h"
#include "core/base/common.h"
#include "datasets/corpus.h"

static void corpus_usage(FILE *f) {
    fprintf(
        f,
        "Usage: qlab corpus [--seed S] (--bytes N | --stories N) [--split train|heldout] OUT.txt\n"
        "\n"
        "Writes simple English children's stories generated from qlab's seeded grammar. The same seed and\n"
        "split always give the same bytes. Stories are separated by an empty line. Train and held-out\n"
        "splits never share a story (each story's split is decided by a hash of its text).\n"
        "\n"
        "  --seed S        generator seed (default 1)\n"
        "  --bytes N       write whole stories until at least N bytes (suffixes k, M, G allowed)\n"
        "  --stories N     write exactly N stories\n"
        "  --split NAME    train (default) or heldout\n"
        "  OUT.txt         output file ('-' for standard output)\n");
}

/* Parses "12", "64k", "10M", "1G" (powers of 1000 — k/M/G are decimal to match "MB" in logs). */
static int parse_size(const char *flag, const char *text, size_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = text ? strtoull(text, &end, 10) : 0;
    if (!text || errno || end == text || text[0] == '-') goto bad;
    unsigned long long mult = 1;
    if (*end == 'k' || *end == 'K')
        mult = 1000ULL, end++;
    else if (*end == 'M')
        mult = 1000ULL * 1000, end++;
    else if (*end == 'G')
        mult = 1000ULL * 1000 * 1000, end++;
    if (*end || v > (unsigned long long)SIZE_MAX / mult / 2) goto bad;
    *out = (size_t)(v * mult);
    return 1;
bad:
    fprintf(stderr, "qlab corpus: %s needs a count like 1000000 or 10M (got '%s')\n", flag,
            text ? text : "nothing");
    return 0;
}

static int cmd_corpus(int argc, char **argv) {
    unsigned long long seed = 1;
    size_t n_bytes = 0, n_stories = 0;
    corpus_split split = CORPUS_TRAIN;
    const char *out_path = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            corpus_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--seed")) {
            char *end;
            errno = 0;
            seed = value ? strtoull(value, &end, 10) : 0;
            if (!value || errno || end == value || *end || value[0] == '-') {
                fprintf(stderr, "qlab corpus: --seed needs a non-negative integer (got '%s')\n",
                        value ? value : "nothing");
                return 2;
            }
            i++;
        } else if (!strcmp(a, "--bytes")) {
            if (!parse_size(a, value, &n_bytes)) return 2;
            i++;
        } else if (!strcmp(a, "--stories")) {
            if (!parse_size(a, value, &n_stories)) return 2;
            i++;
        } else if (!strcmp(a, "--split")) {
            if (value && !strcmp(value, "train"))
                split = CORPUS_TRAIN;
            else if (value && (!strcmp(value, "heldout") || !strcmp(value, "held-out")))
                split = CORPUS_HELDOUT;
            else {
                fprintf(stderr, "qlab corpus: --split is train or heldout (got '%s')\n",
                        value ? value : "nothing");
                return 2;
            }
            i++;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "qlab corpus: unknown option '%s' (see qlab corpus --help)\n", a);
            return 2;
        } else if (!out_path) {
            out_path = a;
        } else {
            fprintf(stderr, "qlab corpus: one output file only (got '%s' and '%s')\n", out_path, a);
            return 2;
        }
    }
    if (!out_path) {
        fprintf(stderr, "qlab corpus: missing OUT.txt (see qlab corpus --help)\n");
        return 2;
    }
    if ((n_bytes == 0) == (n_stories == 0)) {
        fprintf(stderr, "qlab corpus: give exactly one of --bytes N or --stories N (N > 0)\n");
        return 2;
    }
    if (!strcmp(out_path, "-")) {
        if (corpus_write(seed, split, n_bytes, n_stories, stdout, "stdout") != QLAB_OK || fflush(stdout) != 0)
            return qlab_report_error("qlab corpus");
        return 0;
    }
    /* Write to a temporary name and rename, so an interrupted run never leaves a truncated corpus. */
    atomic_file f;
    if (atomic_file_open(&f, out_path) != QLAB_OK) return qlab_report_error("qlab corpus");
    if (corpus_write(seed, split, n_bytes, n_stories, f.f, out_path) != QLAB_OK) {
        atomic_file_abort(&f);
        return qlab_report_error("qlab corpus");
    }
    if (atomic_file_commit(&f) != QLAB_OK) return qlab_report_error("qlab corpus");
    return 0;
}

static void train_usage(FILE *f) {
    fprintf(
        f, "Usage: qlab train-tokenizer --vocab V IN.txt OUT.bin\n"
           "\n"
           "Trains a SentencePiece-style BPE tokenizer with byte fallback on IN.txt and writes it in "
           "llama2.c's\n"
           "tokenizer.bin format (ids 0-2 <unk> <s> </s>, 3-258 byte pieces, then merges, then characters).\n"
           "Deterministic: the same text and V give the same file.\n"
           "\n"
           "  --vocab V   number of pieces (at least 259 + the distinct characters of IN.txt; e.g. 512, "
           "1024)\n");
}

static int cmd_train_tokenizer(int argc, char **argv) {
    long vocab = 0;
    const char *paths[2] = {NULL, NULL};
    int n_paths = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            train_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--vocab")) {
            if (!cli_parse_int("train-tokenizer", "--vocab", i + 1 < argc ? argv[i + 1] : NULL, 1, 1 << 22,
                               &vocab))
                return 2;
            i++;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "qlab train-tokenizer: unknown option '%s' (see qlab train-tokenizer --help)\n",
                    a);
            return 2;
        } else if (n_paths < 2) {
            paths[n_paths++] = a;
        } else {
            fprintf(stderr, "qlab train-tokenizer: too many files (want IN.txt OUT.bin)\n");
            return 2;
        }
    }
    if (vocab == 0 || n_paths != 2) {
        fprintf(stderr, "qlab train-tokenizer: usage: qlab train-tokenizer --vocab V IN.txt OUT.bin\n");
        return 2;
    }
    char *text;
    size_t len;
    if (qlab_read_file(paths[0], &text, &len) != QLAB_OK) return qlab_report_error("qlab train-tokenizer");
    bpe_vocab v;
    qlab_status st = bpe_train(text, len, (int)vocab, &v);
    free(text);
    if (st != QLAB_OK) {
        qlab_fail_context(st, "%s", paths[0]);
        return qlab_report_error("qlab train-tokenizer");
    }
    st = bpe_save(&v, paths[1]);
    if (st == QLAB_OK)
        printf("%s: %d pieces (%d merges, %d characters), longest piece %d bytes\n", paths[1], v.n_pieces,
               v.n_merges, v.n_chars, v.max_token_length);
    bpe_free(&v);
    return st == QLAB_OK ? 0 : qlab_report_error("qlab train-tokenizer");
}

QLAB_COMMAND(corpus_command, "corpus", "write the built-in deterministic story corpus", cmd_corpus)
QLAB_COMMAND(train_tokenizer_command, "train-tokenizer", "train a BPE tokenizer.bin on a text",
             cmd_train_tokenizer)
