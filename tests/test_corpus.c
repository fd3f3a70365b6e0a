/* Tests of datasets/corpus.h: determinism (same seed, same bytes), different seeds differ, the train and
 * held-out splits never share a story, the text format (stories separated by one empty line, ASCII), the
 * byte/story limits, the FILE* path, and enough variety that the corpus cannot be memorised. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tests/check.h"
#include "datasets/corpus.h"
#include "core/base/progress.h"

/* Splits text at "\n\n" into stories (pointers into text, which is modified). */
static size_t split_stories(char *text, char ***out) {
    size_t n = 1;
    for (char *p = strstr(text, "\n\n"); p; p = strstr(p + 2, "\n\n"))
        n++;
    char **s = malloc(n * sizeof *s);
    size_t k = 0;
    s[k++] = text;
    for (char *p = strstr(text, "\n\n"); p; p = strstr(p + 2, "\n\n")) {
        p[1] = 0; /* keep each story's final '\n' */
        s[k++] = p + 2;
    }
    *out = s;
    return k;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static int cmp_string(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void test_determinism(void) {
    char *a, *b, *c;
    size_t la, lb, lc;
    CHECK(corpus_generate(42, CORPUS_TRAIN, 300000, 0, &a, &la) == QLAB_OK);
    CHECK(corpus_generate(42, CORPUS_TRAIN, 300000, 0, &b, &lb) == QLAB_OK);
    CHECK(corpus_generate(43, CORPUS_TRAIN, 300000, 0, &c, &lc) == QLAB_OK);
    CHECK(la == lb && memcmp(a, b, la) == 0);
    CHECK(la != lc || memcmp(a, c, la) != 0);
    /* Different seeds give different stories, not a shifted copy: the first story differs. */
    CHECK(strncmp(a, c, 200) != 0);
    /* The byte limit: at least n_bytes, at most one story more. */
    CHECK(la >= 300000 && la < 300000 + CORPUS_MAX_STORY_BYTES + 1);
    /* A prefix of a longer generation is a shorter generation (streams, not batches). */
    char *d;
    size_t ld;
    CHECK(corpus_generate(42, CORPUS_TRAIN, 1000, 0, &d, &ld) == QLAB_OK);
    CHECK(ld <= la && memcmp(a, d, ld) == 0);
    /* The seed that make/experiments use is pinned: the first story of seed 1 starts the same way on
     * every machine (a grammar change must be deliberate, as it changes every trained model). */
    char *e;
    size_t le;
    CHECK(corpus_generate(1, CORPUS_TRAIN, 0, 1, &e, &le) == QLAB_OK);
    uint64_t h = corpus_text_hash(e, le);
    CHECKF(h == 0x22ccd4ba39823ecdULL && le == 649, "seed 1 first story: hash %016llx, %zu bytes",
           (unsigned long long)h, le);
    free(a);
    free(b);
    free(c);
    free(d);
    free(e);
}

static void test_format_and_counts(void) {
    char *t;
    size_t len;
    CHECK(corpus_generate(5, CORPUS_TRAIN, 0, 250, &t, &len) == QLAB_OK);
    CHECK(len > 0 && t[0] != '\n' && t[len - 1] == '\n' && t[len] == 0);
    CHECK(len >= 2 && t[len - 2] != '\n'); /* no empty line after the last story */
    CHECK(strstr(t, "\n\n\n") == NULL);
    int ascii = 1, lower_start = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)t[i];
        ascii &= (ch >= 32 && ch < 127) || ch == '\n';
        /* A sentence never starts with a lower-case letter. */
        if (i >= 2 && (t[i - 2] == '.' || t[i - 2] == '!' || t[i - 2] == '?') && t[i - 1] == ' ' &&
            ch >= 'a' && ch <= 'z')
            lower_start++;
    }
    CHECK(ascii);
    CHECKF(lower_start == 0, "%d sentences start in lower case", lower_start);
    CHECK(strstr(t, " a a") == NULL && strstr(t, " a e") == NULL && strstr(t, " a o") == NULL); /* a/an */
    char **stories;
    size_t n = split_stories(t, &stories);
    CHECK(n == 250);
    free(stories);
    free(t);
    /* corpus_write produces the same bytes as corpus_generate. */
    char *g;
    size_t lg;
    CHECK(corpus_generate(9, CORPUS_HELDOUT, 20000, 0, &g, &lg) == QLAB_OK);
    FILE *f = tmpfile();
    CHECK(f != NULL);
    if (f) {
        CHECK(corpus_write(9, CORPUS_HELDOUT, 20000, 0, f, "tmpfile") == QLAB_OK);
        long size = ftell(f);
        CHECK(size == (long)lg);
        rewind(f);
        char *back = malloc(lg + 1);
        CHECK(fread(back, 1, lg, f) == lg && memcmp(back, g, lg) == 0);
        free(back);
        fclose(f);
    }
    free(g);
    CHECK(corpus_generate(1, CORPUS_TRAIN, 0, 0, &g, &lg) == QLAB_ERR_ARG);
    CHECK(corpus_generate(1, (corpus_split)5, 10, 0, &g, &lg) == QLAB_ERR_ARG);
    char small[64];
    corpus_generator gen;
    corpus_begin(&gen, 1, CORPUS_TRAIN);
    CHECK(corpus_next_story(&gen, small, sizeof small) == 0); /* too small: an error, not an overflow */
}

static void test_splits_disjoint(void) {
    char *train, *held;
    size_t lt, lh;
    double t0 = qlab_now();
    CHECK(corpus_generate(11, CORPUS_TRAIN, 4000000, 0, &train, &lt) == QLAB_OK);
    double t1 = qlab_now();
    CHECK(corpus_generate(11, CORPUS_HELDOUT, 400000, 0, &held, &lh) == QLAB_OK);
    double t2 = qlab_now();
    printf("train %.1f MB/s, heldout %.1f MB/s\n", lt / (t1 - t0) / 1e6, lh / (t2 - t1) / 1e6);
    char **ts, **hs;
    size_t nt = split_stories(train, &ts), nh = split_stories(held, &hs);
    uint64_t *th = malloc(nt * sizeof *th);
    int train_ok = 1, held_ok = 1;
    for (size_t i = 0; i < nt; i++) {
        th[i] = corpus_text_hash(ts[i], strlen(ts[i]));
        train_ok &= th[i] % CORPUS_HELDOUT_MODULUS != 0;
    }
    qsort(th, nt, sizeof *th, cmp_u64);
    size_t shared = 0, dup_train = 0;
    for (size_t i = 0; i < nh; i++) {
        uint64_t h = corpus_text_hash(hs[i], strlen(hs[i]));
        held_ok &= h % CORPUS_HELDOUT_MODULUS == 0;
        shared += bsearch(&h, th, nt, sizeof *th, cmp_u64) != NULL;
    }
    for (size_t i = 1; i < nt; i++)
        dup_train += th[i] == th[i - 1];
    CHECK(train_ok && held_ok);
    CHECKF(shared == 0, "%zu held-out stories also in train", shared);
    /* Variety: among ~7000 train stories, exact repeats must be rare (a memorisable corpus would repeat). */
    CHECKF(dup_train * 1000 < nt, "%zu repeated stories among %zu", dup_train, nt);
    printf("%zu train and %zu held-out stories, %zu repeats in train\n", nt, nh, dup_train);
    free(th);
    free(ts);
    free(hs);
    free(train);
    free(held);
}

static void test_vocabulary(void) {
    /* A few hundred distinct words, as the grammar promises. */
    char *t;
    size_t len;
    CHECK(corpus_generate(3, CORPUS_TRAIN, 2000000, 0, &t, &len) == QLAB_OK);
    char **words = malloc(len / 2 * sizeof *words);
    size_t n = 0;
    for (char *p = t; *p;) {
        while (*p && !((*p | 0x20) >= 'a' && (*p | 0x20) <= 'z'))
            p++;
        if (!*p) break;
        char *s = p;
        while ((*p | 0x20) >= 'a' && (*p | 0x20) <= 'z')
            p++;
        if (*p) *p++ = 0;
        words[n++] = s;
    }
    qsort(words, n, sizeof *words, cmp_string);
    size_t distinct = n ? 1 : 0;
    for (size_t i = 1; i < n; i++)
        distinct += strcmp(words[i], words[i - 1]) != 0;
    CHECKF(distinct >= 300, "only %zu distinct words", distinct);
    printf("%zu words, %zu distinct\n", n, distinct);
    free(words);
    free(t);
}

int main(void) {
    test_determinism();
    test_format_and_counts();
    test_splits_disjoint();
    test_vocabulary();
    return check_summary();
}
