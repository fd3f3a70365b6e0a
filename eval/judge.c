/* Reading GPT-4 judge reviews and scoring chatbots from them: Table 6's "% of ChatGPT" (ratio of summed
 * 10-point scores, mean of both answer orders) and Elo over random orderings of the three-class pairwise
 * verdicts (QLoRA §5; ../shared/docs/PAPER.md §5). */
#include "eval/judge.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/rng.h"

/* ---------------------------------------------------------------- review text */

/* A decimal number at s (digits, optional fraction); *end after it. 0 if none. */
static int read_number(const char *s, double *v, const char **end) {
    const char *p = s;
    if (!isdigit((unsigned char)*p)) return 0;
    while (isdigit((unsigned char)*p))
        p++;
    if (*p == '.' && isdigit((unsigned char)p[1])) {
        p++;
        while (isdigit((unsigned char)*p))
            p++;
    }
    char buf[32];
    size_t n = (size_t)(p - s);
    if (n >= sizeof buf) return 0;
    memcpy(buf, s, n);
    buf[n] = 0;
    *v = strtod(buf, NULL);
    *end = p;
    return 1;
}

int judge_parse_score_pair(const char *review, double *a, double *b) {
    /* The authors' rule: first line, ',' -> ' ', split on single spaces, exactly two tokens, both
     * numbers. "8, 7" therefore has three tokens and fails, as it did for them. */
    char line[64];
    size_t n = strcspn(review, "\n");
    if (n >= sizeof line) return 0;
    memcpy(line, review, n);
    line[n] = 0;
    for (char *c = line; *c; c++)
        if (*c == ',') *c = ' ';
    char *space = strchr(line, ' ');
    if (!space || strchr(space + 1, ' ')) return 0;
    *space = 0;
    double x, y;
    const char *end;
    if (!read_number(line, &x, &end) || *end) return 0;
    if (!read_number(space + 1, &y, &end) || *end) return 0;
    *a = x;
    *b = y;
    return 1;
}

/* The last "(x, y)" pair in s. */
static int last_tuple(const char *s, double *a, double *b) {
    int found = 0;
    for (const char *p = strchr(s, '('); p; p = strchr(p + 1, '(')) {
        double x, y;
        const char *q;
        if (!read_number(p + 1, &x, &q) || *q != ',') continue;
        q++;
        while (*q == ' ')
            q++;
        if (!read_number(q, &y, &q) || *q != ')') continue;
        *a = x;
        *b = y;
        found = 1;
    }
    return found;
}

/* The number after the last "Assistant N: " in s. */
static int last_labelled(const char *s, const char *label, double *v) {
    int found = 0;
    size_t n = strlen(label);
    for (const char *p = strstr(s, label); p; p = strstr(p + 1, label)) {
        const char *end;
        double x;
        if (read_number(p + n, &x, &end)) {
            *v = x;
            found = 1;
        }
    }
    return found;
}

int judge_recover_score_pair(const char *review, double *a, double *b) {
    if (last_tuple(review, a, b)) return 1;
    double x, y;
    if (last_labelled(review, "Assistant 1: ", &x) && last_labelled(review, "Assistant 2: ", &y)) {
        *a = x;
        *b = y;
        return 1;
    }
    return 0;
}

int judge_parse_verdict(const char *review) {
    /* The authors' rule: int(review.strip().split("\n")[-1].strip()). */
    const char *end = review + strlen(review);
    while (end > review && isspace((unsigned char)end[-1]))
        end--;
    const char *start = end;
    while (start > review && start[-1] != '\n')
        start--;
    while (start < end && isspace((unsigned char)*start))
        start++;
    if (end - start != 1) return 0;
    return *start >= '1' && *start <= '3' ? *start - '0' : 0;
}

/* ---------------------------------------------------------------- files */

void judge_system_key(const char *side, char *out, size_t n) {
    if (!n) return;
    if (!strncmp(side, "answer-", 7)) side += 7;
    const char *cut = strstr(side, "-vicuna-generations");
    size_t len = cut ? (size_t)(cut - side) : strlen(side);
    if (len >= n) len = n - 1;
    memcpy(out, side, len);
    out[len] = 0;
}

/* The two system names of a file name "A-vs-B-<reviewer>.jsonl". */
static qlab_status split_file_name(const char *name, judge_file *f) {
    const char *base = strrchr(name, '/') ? strrchr(name, '/') + 1 : name;
    const char *vs = strstr(base, "-vs-");
    if (!vs || strstr(vs + 4, "-vs-"))
        return qlab_fail(QLAB_ERR_FORMAT, "%s: file name should read '<system>-vs-<system>-<reviewer>.jsonl'",
                         name);
    /* The reviewer suffix: "-gpt4-reviewer..." or "-gpt-4-reviewer...". */
    const char *second = vs + 4, *rev = strstr(second, "-gpt4-reviewer");
    if (!rev) rev = strstr(second, "-gpt-4-reviewer");
    if (!rev) return qlab_fail(QLAB_ERR_FORMAT, "%s: file name has no '-gpt4-reviewer' suffix", name);
    char side[2][512];
    snprintf(side[0], sizeof side[0], "%.*s", (int)(vs - base), base);
    snprintf(side[1], sizeof side[1], "%.*s", (int)(rev - second), second);
    for (int s = 0; s < 2; s++) {
        char key[512];
        judge_system_key(side[s], key, sizeof key);
        if (!key[0]) return qlab_fail(QLAB_ERR_FORMAT, "%s: empty system name in the file name", name);
        f->system[s] = strdup(key);
        if (!f->system[s]) return qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", name);
    }
    return QLAB_OK;
}

static qlab_status copy_id(const cJSON *o, const char *key, char *out, const char *name, int line) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsString(v) || !v->valuestring[0])
        return qlab_fail(QLAB_ERR_FORMAT, "%s:%d: '%s' missing or not a non-empty string", name, line, key);
    if (strlen(v->valuestring) >= JUDGE_ID_MAX)
        return qlab_fail(QLAB_ERR_FORMAT, "%s:%d: '%s' longer than %d characters", name, line, key,
                         JUDGE_ID_MAX - 1);
    strcpy(out, v->valuestring);
    return QLAB_OK;
}

/* Scores are on the prompt's 1..10 scale; 0 is allowed, anything else outside it is a broken file. */
static int valid_score(double s) {
    return s >= 0 && s <= 10;
}

static qlab_status parse_line(const char *name, int line, const char *text, size_t len, judge_kind kind,
                              judge_rating *r) {
    cJSON *o = cJSON_ParseWithLength(text, len);
    if (!o || !cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return qlab_fail(QLAB_ERR_FORMAT, "%s:%d: not a JSON object", name, line);
    }
    qlab_status st = QLAB_OK;
    memset(r, 0, sizeof *r);
    r->reference = -1;
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(o, "question_id"),
                *review = cJSON_GetObjectItemCaseSensitive(o, "text"),
                *score = cJSON_GetObjectItemCaseSensitive(o, "score");
    if (!cJSON_IsNumber(q) || q->valuedouble != floor(q->valuedouble) || q->valuedouble < 0 ||
        q->valuedouble > 1e9)
        st = qlab_fail(QLAB_ERR_FORMAT, "%s:%d: 'question_id' missing or not a non-negative integer", name,
                       line);
    if (st == QLAB_OK) st = copy_id(o, "answer1_id", r->answer_id[0], name, line);
    if (st == QLAB_OK) st = copy_id(o, "answer2_id", r->answer_id[1], name, line);
    if (st == QLAB_OK && !cJSON_IsString(review))
        st = qlab_fail(QLAB_ERR_FORMAT, "%s:%d: 'text' missing or not a string", name, line);
    if (st != QLAB_OK) {
        cJSON_Delete(o);
        return st;
    }
    r->question_id = (int)q->valuedouble;
    const char *t = review->valuestring;
    if (kind == JUDGE_RELATIVE) {
        if (!cJSON_IsArray(score) || cJSON_GetArraySize(score) != 2 ||
            !cJSON_IsNumber(cJSON_GetArrayItem(score, 0)) || !cJSON_IsNumber(cJSON_GetArrayItem(score, 1))) {
            cJSON_Delete(o);
            return qlab_fail(QLAB_ERR_FORMAT, "%s:%d: 'score' should be a pair of numbers", name, line);
        }
        double a = cJSON_GetArrayItem(score, 0)->valuedouble, b = cJSON_GetArrayItem(score, 1)->valuedouble;
        double ta, tb;
        if (a == -1 && b == -1) { /* the authors' parse-failure marker */
            r->source = judge_recover_score_pair(t, &a, &b) && valid_score(a) && valid_score(b)
                            ? JUDGE_FROM_TEXT
                            : JUDGE_MISSING;
            if (r->source == JUDGE_MISSING) a = b = NAN;
        } else if (!valid_score(a) || !valid_score(b)) {
            cJSON_Delete(o);
            return qlab_fail(QLAB_ERR_FORMAT, "%s:%d: score [%g, %g] outside 0..10", name, line, a, b);
        } else if (judge_parse_score_pair(t, &ta, &tb) && (ta != a || tb != b)) {
            r->text_disagrees = 1;
        }
        r->score[0] = a;
        r->score[1] = b;
    } else {
        /* range first: converting a double outside int's range (1e300) to int is undefined */
        if (!cJSON_IsNumber(score) || score->valuedouble != floor(score->valuedouble) ||
            score->valuedouble < -1e9 || score->valuedouble > 1e9) {
            cJSON_Delete(o);
            return qlab_fail(QLAB_ERR_FORMAT, "%s:%d: 'score' should be the integer 1, 2, 3 (or -1)", name,
                             line);
        }
        int v = (int)score->valuedouble;
        if (v == -1) {
            /* The verdict line was unreadable ("error" from the API, or prose): no match. */
            r->verdict = 0;
            r->source = JUDGE_MISSING;
        } else if (v < 1 || v > 3) {
            cJSON_Delete(o);
            return qlab_fail(QLAB_ERR_FORMAT, "%s:%d: verdict %d is not 1, 2 or 3", name, line, v);
        } else {
            r->verdict = v;
            int tv = judge_parse_verdict(t);
            r->text_disagrees = tv != 0 && tv != v;
        }
    }
    cJSON_Delete(o);
    return QLAB_OK;
}

qlab_status judge_parse_file(const char *name, const char *text, size_t len, judge_kind kind,
                             judge_file *out) {
    memset(out, 0, sizeof *out);
    out->kind = kind;
    out->name = strdup(strrchr(name, '/') ? strrchr(name, '/') + 1 : name);
    if (!out->name) return qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", name);
    qlab_status st = split_file_name(name, out);
    int cap = 0, line = 0;
    size_t off = 0;
    while (st == QLAB_OK && off < len) {
        size_t n = 0;
        while (off + n < len && text[off + n] != '\n')
            n++;
        line++;
        size_t blank = 0;
        while (blank < n && isspace((unsigned char)text[off + blank]))
            blank++;
        if (blank < n) {
            if (out->count == cap) {
                cap = cap ? cap * 2 : 128;
                judge_rating *bigger = realloc(out->ratings, (size_t)cap * sizeof *bigger);
                if (!bigger) {
                    st = qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", name);
                    break;
                }
                out->ratings = bigger;
            }
            st = parse_line(name, line, text + off, n, kind, &out->ratings[out->count]);
            if (st == QLAB_OK) out->count++;
        }
        off += n + 1;
    }
    if (st == QLAB_OK && out->count == 0) st = qlab_fail(QLAB_ERR_FORMAT, "%s: no ratings", name);
    if (st != QLAB_OK) judge_file_free(out);
    return st;
}

void judge_file_free(judge_file *f) {
    if (!f) return;
    free(f->name);
    free(f->system[0]);
    free(f->system[1]);
    free(f->ratings);
    memset(f, 0, sizeof *f);
}

/* ---------------------------------------------------------------- the reference system's answers */

static int file_has_answer(const judge_file *f, int question, const char *id) {
    for (int i = 0; i < f->count; i++)
        if (f->ratings[i].question_id == question &&
            (!strcmp(f->ratings[i].answer_id[0], id) || !strcmp(f->ratings[i].answer_id[1], id)))
            return 1;
    return 0;
}

qlab_status judge_find_reference(judge_file *files, int nfiles) {
    if (nfiles < 2)
        return qlab_fail(QLAB_ERR_ARG, "judge_find_reference: need at least 2 files, got %d", nfiles);
    for (int f = 0; f < nfiles; f++)
        for (int i = 0; i < files[f].count; i++) {
            judge_rating *r = &files[f].ratings[i];
            if (r->reference >= 0) continue; /* settled with an earlier rating of the same question */
            /* Candidates: the two answers of this rating; the reference's is the one in every file. */
            const char *found = NULL;
            for (int side = 0; side < 2; side++) {
                int everywhere = 1;
                for (int g = 0; g < nfiles && everywhere; g++)
                    everywhere = file_has_answer(&files[g], r->question_id, r->answer_id[side]);
                if (everywhere) {
                    if (found)
                        return qlab_fail(QLAB_ERR_FORMAT,
                                         "%s: question %d: both answers appear in every file; cannot tell "
                                         "which one is the reference system's",
                                         files[f].name, r->question_id);
                    found = r->answer_id[side];
                }
            }
            if (!found)
                return qlab_fail(QLAB_ERR_FORMAT,
                                 "%s: question %d: no answer id is shared by all %d rating files (is every "
                                 "file a comparison against the same reference system?)",
                                 files[f].name, r->question_id, nfiles);
            for (int g = 0; g < nfiles; g++)
                for (int j = 0; j < files[g].count; j++) {
                    judge_rating *s = &files[g].ratings[j];
                    if (s->question_id != r->question_id) continue;
                    s->reference = !strcmp(s->answer_id[0], found)   ? 0
                                   : !strcmp(s->answer_id[1], found) ? 1
                                                                     : -1;
                }
        }
    return QLAB_OK;
}

/* ---------------------------------------------------------------- Table 6 */

typedef struct {
    int question_id;
    double system[2], reference[2]; /* per order; NAN when that order has no review of the question */
} question_scores;

static double ratio_of_sums(const question_scores *q, const int *pick, int n, int order) {
    double s = 0, r = 0;
    for (int i = 0; i < n; i++) {
        const question_scores *x = &q[pick ? pick[i] : i];
        if (isnan(x->system[order])) continue;
        s += x->system[order];
        r += x->reference[order];
    }
    return r > 0 ? 100.0 * s / r : NAN;
}

static int compare_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

qlab_status judge_relative(const judge_file *const *files, int nfiles, int n_bootstrap, uint64_t seed,
                           judge_relative_score *out) {
    memset(out, 0, sizeof *out);
    if (n_bootstrap < 0 || n_bootstrap > 10000000)
        return qlab_fail(QLAB_ERR_ARG, "judge_relative: n_bootstrap %d out of range", n_bootstrap);
    int total = 0;
    for (int f = 0; f < nfiles; f++)
        total += files[f]->count;
    question_scores *q = qlab_calloc((size_t)total + 1, sizeof *q);
    int *pick = qlab_calloc((size_t)total + 1, sizeof *pick);
    double *boot = qlab_calloc((size_t)n_bootstrap + 1, sizeof *boot);
    if (!q || !pick || !boot) {
        free(q);
        free(pick);
        free(boot);
        return QLAB_ERR_NOMEM;
    }
    int nq = 0;
    qlab_status st = QLAB_OK;
    for (int f = 0; f < nfiles && st == QLAB_OK; f++) {
        if (files[f]->kind != JUDGE_RELATIVE) {
            st = qlab_fail(QLAB_ERR_ARG, "%s: not a relative (10-point) rating file", files[f]->name);
            break;
        }
        for (int i = 0; i < files[f]->count; i++) {
            const judge_rating *r = &files[f]->ratings[i];
            if (r->source == JUDGE_MISSING) {
                out->n_missing++;
                continue;
            }
            if (r->reference < 0) {
                st = qlab_fail(QLAB_ERR_ARG, "%s: question %d: reference answer not identified",
                               files[f]->name, r->question_id);
                break;
            }
            out->n_recovered += r->source == JUDGE_FROM_TEXT;
            int order = r->reference; /* 0: the reference was shown first */
            int k = 0;
            while (k < nq && q[k].question_id != r->question_id)
                k++;
            if (k == nq) {
                q[nq++] = (question_scores){r->question_id, {NAN, NAN}, {NAN, NAN}};
            }
            if (!isnan(q[k].system[order])) {
                st = qlab_fail(QLAB_ERR_FORMAT, "%s: question %d reviewed twice in the same answer order",
                               files[f]->name, r->question_id);
                break;
            }
            q[k].system[order] = r->score[1 - order];
            q[k].reference[order] = r->score[order];
            out->n_questions[order]++;
        }
    }
    if (st == QLAB_OK && (out->n_questions[0] == 0 || out->n_questions[1] == 0))
        st = qlab_fail(QLAB_ERR_FORMAT, "%s: no usable reviews with the reference shown %s",
                       nfiles ? files[0]->name : "(no files)", out->n_questions[0] == 0 ? "first" : "second");
    if (st == QLAB_OK) {
        out->percent[0] = ratio_of_sums(q, NULL, nq, 0);
        out->percent[1] = ratio_of_sums(q, NULL, nq, 1);
        out->mean = 0.5 * (out->percent[0] + out->percent[1]);
        rng_state rng;
        rng_seed(&rng, seed);
        int kept = 0;
        for (int b = 0; b < n_bootstrap; b++) {
            for (int i = 0; i < nq; i++)
                pick[i] = (int)rng_below(&rng, (uint64_t)nq);
            double m = 0.5 * (ratio_of_sums(q, pick, nq, 0) + ratio_of_sums(q, pick, nq, 1));
            if (!isnan(m)) boot[kept++] = m; /* a resample can miss every review of one order */
        }
        if (kept >= 2) {
            qsort(boot, (size_t)kept, sizeof *boot, compare_double);
            out->ci95_low = boot[(int)floor(0.025 * (kept - 1))];
            out->ci95_high = boot[(int)ceil(0.975 * (kept - 1))];
        } else {
            out->ci95_low = out->ci95_high = NAN;
        }
    }
    free(q);
    free(pick);
    free(boot);
    return st;
}

/* ---------------------------------------------------------------- Elo */

void judge_elo_update(double *rating_a, double *rating_b, double score_a, double k) {
    double expected = 1.0 / (1.0 + pow(10.0, (*rating_b - *rating_a) / 400.0));
    double delta = k * (score_a - expected);
    *rating_a += delta;
    *rating_b -= delta;
}

static qlab_status check_matches(const judge_match *m, int nmatches, int nplayers) {
    if (nmatches < 0 || nplayers < 1)
        return qlab_fail(QLAB_ERR_ARG, "Elo: %d matches, %d players", nmatches, nplayers);
    for (int i = 0; i < nmatches; i++) {
        if (m[i].player[0] < 0 || m[i].player[0] >= nplayers || m[i].player[1] < 0 ||
            m[i].player[1] >= nplayers || m[i].player[0] == m[i].player[1])
            return qlab_fail(QLAB_ERR_ARG, "Elo: match %d has players %d and %d (of %d)", i, m[i].player[0],
                             m[i].player[1], nplayers);
        if (!(m[i].score >= 0 && m[i].score <= 1))
            return qlab_fail(QLAB_ERR_ARG, "Elo: match %d has score %g (need 0..1)", i, m[i].score);
    }
    return QLAB_OK;
}

static void play(const judge_match *m, int nmatches, const int *order, int nplayers, double initial, double k,
                 double *ratings) {
    for (int p = 0; p < nplayers; p++)
        ratings[p] = initial;
    for (int i = 0; i < nmatches; i++) {
        const judge_match *x = &m[order ? order[i] : i];
        judge_elo_update(&ratings[x->player[0]], &ratings[x->player[1]], x->score, k);
    }
}

qlab_status judge_elo_play(const judge_match *matches, int nmatches, const int *order, int nplayers,
                           double initial, double k, double *ratings) {
    QLAB_TRY(check_matches(matches, nmatches, nplayers));
    if (order)
        for (int i = 0; i < nmatches; i++)
            if (order[i] < 0 || order[i] >= nmatches)
                return qlab_fail(QLAB_ERR_ARG, "Elo: order[%d] = %d out of range", i, order[i]);
    play(matches, nmatches, order, nplayers, initial, k, ratings);
    return QLAB_OK;
}

qlab_status judge_elo_orderings(const judge_match *matches, int nmatches, int nplayers, double initial,
                                double k, int n_orderings, uint64_t seed, double *ratings) {
    QLAB_TRY(check_matches(matches, nmatches, nplayers));
    if (n_orderings < 1) return qlab_fail(QLAB_ERR_ARG, "Elo: n_orderings %d (need >= 1)", n_orderings);
    int failed = 0;
#pragma omp parallel
    {
        int *order = malloc(((size_t)nmatches + 1) * sizeof *order);
        if (!order) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int t = 0; t < n_orderings; t++) {
            if (!order) continue;
            /* Ordering t's own stream: results independent of how orderings are spread over threads. */
            rng_state rng;
            rng_seed(&rng, seed ^ (0x9e3779b97f4a7c15ull * ((uint64_t)t + 1)));
            for (int i = 0; i < nmatches; i++)
                order[i] = i;
            for (int i = nmatches - 1; i > 0; i--) { /* Fisher-Yates */
                int j = (int)rng_below(&rng, (uint64_t)i + 1);
                int tmp = order[i];
                order[i] = order[j];
                order[j] = tmp;
            }
            play(matches, nmatches, order, nplayers, initial, k, ratings + (size_t)t * (size_t)nplayers);
        }
        free(order);
    }
    return failed ? qlab_fail(QLAB_ERR_NOMEM, "Elo: out of memory") : QLAB_OK;
}
