/* ROUGE-L (rouge-score's definition): tokenizer and longest common subsequence. See rouge.h. */
#include "eval/rouge.h"

#include <stdlib.h>
#include <string.h>

/* Decodes one UTF-8 sequence at s (strict: no overlongs, surrogates or values above U+10FFFF). Returns
 * its length and the code point in *cp, or 1 with *cp = -1 for an invalid byte. */
static int utf8_decode(const unsigned char *s, long *cp) {
    unsigned char c = s[0];
    int len;
    long v, min;
    if (c < 0x80) {
        *cp = c;
        return 1;
    } else if ((c & 0xE0) == 0xC0) {
        len = 2, v = c & 0x1F, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
        len = 3, v = c & 0x0F, min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
        len = 4, v = c & 0x07, min = 0x10000;
    } else {
        *cp = -1;
        return 1;
    }
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            *cp = -1;
            return 1;
        }
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) {
        *cp = -1;
        return 1;
    }
    *cp = v;
    return len;
}

qlab_status rouge_tokenize(const char *text, rouge_tokens *out) {
    memset(out, 0, sizeof *out);
    size_t len = strlen(text);
    /* Every output character comes from at least one input byte, plus one NUL per token. */
    out->text = malloc(2 * len + 1);
    out->start = malloc((len / 1 + 1) * sizeof(int));
    if (!out->text || !out->start) {
        rouge_tokens_free(out);
        return qlab_fail(QLAB_ERR_NOMEM, "rouge: out of memory tokenizing %zu bytes", len);
    }
    const unsigned char *s = (const unsigned char *)text;
    size_t w = 0;
    int in_token = 0;
    for (size_t i = 0; i < len;) {
        long cp;
        int step = utf8_decode(s + i, &cp);
        if (i + (size_t)step > len) step = 1, cp = -1;
        i += (size_t)step;
        char ch = 0; /* the ASCII letter or digit this character lowercases to, 0 for a separator */
        int separator_after = 0;
        if (cp >= 'A' && cp <= 'Z')
            ch = (char)(cp - 'A' + 'a');
        else if ((cp >= 'a' && cp <= 'z') || (cp >= '0' && cp <= '9'))
            ch = (char)cp;
        else if (cp == 0x212A) /* KELVIN SIGN lowercases to "k" */
            ch = 'k';
        else if (cp == 0x130) /* lowercases to "i" + U+0307 COMBINING DOT ABOVE */
            ch = 'i', separator_after = 1;
        if (ch) {
            if (!in_token) {
                out->start[out->n++] = (int)w;
                in_token = 1;
            }
            out->text[w++] = ch;
        }
        if ((!ch || separator_after) && in_token) {
            out->text[w++] = '\0';
            in_token = 0;
        }
    }
    if (in_token) out->text[w++] = '\0';
    return QLAB_OK;
}

void rouge_tokens_free(rouge_tokens *t) {
    free(t->text);
    free(t->start);
    memset(t, 0, sizeof *t);
}

int rouge_lcs_length(const rouge_tokens *a, const rouge_tokens *b) {
    if (a->n < b->n) {
        const rouge_tokens *t = a;
        a = b, b = t;
    }
    /* Rows over the longer list, one row of the shorter list's length + 1 kept (the classic DP). */
    int m = b->n;
    int *row = calloc((size_t)m + 1, sizeof(int));
    if (!row) {
        qlab_fail(QLAB_ERR_NOMEM, "rouge: out of memory (%d tokens)", m);
        return -1;
    }
    for (int i = 0; i < a->n; i++) {
        const char *ta = a->text + a->start[i];
        int diag = 0; /* row[j] of the previous i */
        for (int j = 1; j <= m; j++) {
            int up = row[j];
            if (strcmp(ta, b->text + b->start[j - 1]) == 0)
                row[j] = diag + 1;
            else if (row[j - 1] > up)
                row[j] = row[j - 1];
            diag = up;
        }
    }
    int r = row[m];
    free(row);
    return r;
}

qlab_status rouge_l(const char *target, const char *prediction, rouge_score *out) {
    memset(out, 0, sizeof *out);
    rouge_tokens t, p;
    QLAB_TRY(rouge_tokenize(target, &t));
    qlab_status st = rouge_tokenize(prediction, &p);
    if (st != QLAB_OK) {
        rouge_tokens_free(&t);
        return st;
    }
    out->n_target = t.n;
    out->n_prediction = p.n;
    if (t.n > 0 && p.n > 0) {
        int lcs = rouge_lcs_length(&t, &p);
        if (lcs < 0) {
            st = QLAB_ERR_NOMEM;
        } else {
            out->lcs = lcs;
            out->precision = (double)lcs / p.n;
            out->recall = (double)lcs / t.n;
            double sum = out->precision + out->recall;
            out->fmeasure = sum > 0 ? 2 * out->precision * out->recall / sum : 0.0;
        }
    }
    rouge_tokens_free(&t);
    rouge_tokens_free(&p);
    return st;
}
