/* MMLU accuracy from the answer-letter logits. See mmlu_eval.h. */
#include "eval/mmlu_eval.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static qlab_status scoring_init(const tokenizer *tok, int space, mmlu_scoring *out) {
    memset(out, 0, sizeof *out);
    qlab_status st = QLAB_OK;
    for (int j = 0; j < 4 && st == QLAB_OK; j++) {
        char text[2] = {' ', (char)('A' + j)}, letter = text[1];
        int *enc = NULL;
        size_t n = 0;
        st = tokenizer_encode(tok, space ? text : text + 1, space ? 2 : 1, 0, &enc, &n);
        if (st == QLAB_OK && (n < 1 || n > MMLU_MAX_LETTER_TOKENS))
            st = qlab_fail(QLAB_ERR_UNSUPPORTED, "mmlu: the tokenizer encodes the letter %c as %zu tokens",
                           letter, n);
        for (size_t i = 0; st == QLAB_OK && i < n; i++)
            out->tokens[j][i] = enc[i];
        out->n_tokens[j] = (int)n;
        free(enc);
    }
    if (st != QLAB_OK) return st;
    for (int j = 0; j < 4; j++)
        for (int k = 0; k < j; k++)
            if (out->n_tokens[j] == out->n_tokens[k] &&
                !memcmp(out->tokens[j], out->tokens[k], (size_t)out->n_tokens[j] * sizeof(int)))
                return qlab_fail(QLAB_ERR_UNSUPPORTED,
                                 "mmlu: the letters %c and %c encode to the same tokens", 'A' + k, 'A' + j);
    out->spaced = space;
    out->single_token = 1;
    for (int j = 0; j < 4; j++)
        out->single_token &= out->n_tokens[j] == 1;
    return QLAB_OK;
}

qlab_status mmlu_scoring_init(const tokenizer *tok, mmlu_scoring *out) {
    return scoring_init(tok, 0, out);
}

qlab_status mmlu_scoring_init_spaced(const tokenizer *tok, mmlu_scoring *out) {
    return scoring_init(tok, 1, out);
}

void mmlu_scoring_describe(const tokenizer *tok, const mmlu_scoring *s, char *buf, size_t cap) {
    size_t len = (size_t)snprintf(
        buf, cap, "%s%s",
        s->spaced ? "letters encoded with a leading space (\" A\"; qlora encodes \"A\"); " : "",
        s->single_token ? "largest logit at the last prompt position among "
                          "token ids"
                        : "letters are not single tokens here, so the sum of each letter's "
                          "token log-probabilities after the prompt decides; tokens");
    for (int j = 0; j < 4 && len < cap; j++) {
        len += (size_t)snprintf(buf + len, cap - len, " %c=", 'A' + j);
        for (int i = 0; i < s->n_tokens[j] && len < cap; i++) {
            const char *piece = tokenizer_piece(tok, s->tokens[j][i]);
            len += (size_t)snprintf(buf + len, cap - len, "%s%d'%s'", i ? "+" : "", s->tokens[j][i],
                                    piece ? piece : "?");
        }
    }
}

/* log softmax(row)[id] */
static double log_prob(const float *row, int vocab, int id) {
    float mx = row[0];
    for (int i = 1; i < vocab; i++)
        if (row[i] > mx) mx = row[i];
    double sum = 0;
    for (int i = 0; i < vocab; i++)
        sum += exp((double)row[i] - mx);
    return (double)row[id] - mx - log(sum);
}

qlab_status mmlu_scoring_pick(model *m, const mmlu_scoring *s, int *ids, int n, float *logits, int *pick,
                              double score[4]) {
    const int vocab = model_get_config(m)->vocab_size;
    double sc[4];
    if (s->single_token) {
        const int at = n - 1; /* the classifier over the answer's position only */
        QLAB_TRY(model_forward_at(m, ids, 1, n, &at, 1, logits));
        for (int j = 0; j < 4; j++)
            sc[j] = logits[s->tokens[j][0]];
    } else {
        int done[4] = {0};
        /* Longest encodings first: a forward over prompt + letter j's tokens but the last also scores every
         * letter whose tokens-but-the-last are a prefix of those. */
        for (int pass = 0; pass < 4; pass++) {
            int j = -1;
            for (int k = 0; k < 4; k++)
                if (!done[k] && (j < 0 || s->n_tokens[k] > s->n_tokens[j])) j = k;
            int ext = s->n_tokens[j] - 1, at[MMLU_MAX_LETTER_TOKENS];
            for (int i = 0; i < ext; i++)
                ids[n + i] = s->tokens[j][i];
            for (int i = 0; i <= ext; i++) /* the positions that predict the letter's tokens */
                at[i] = n - 1 + i;
            QLAB_TRY(model_forward_at(m, ids, 1, n + ext, at, ext + 1, logits));
            for (int k = 0; k < 4; k++) {
                if (done[k] || s->n_tokens[k] - 1 > ext ||
                    memcmp(s->tokens[k], s->tokens[j], (size_t)(s->n_tokens[k] - 1) * sizeof(int)))
                    continue;
                double lp = 0;
                for (int i = 0; i < s->n_tokens[k]; i++)
                    lp += log_prob(logits + (size_t)i * vocab, vocab, s->tokens[k][i]);
                sc[k] = lp;
                done[k] = 1;
            }
            if (done[0] && done[1] && done[2] && done[3]) break;
        }
    }
    int best = 0;
    for (int j = 1; j < 4; j++)
        if (sc[j] > sc[best]) best = j;
    *pick = best;
    if (score)
        for (int j = 0; j < 4; j++)
            score[j] = sc[j];
    return QLAB_OK;
}

/* ---------------------------------------------------------------- selecting the questions */

/* 1 when name is in the comma-separated list (an empty or NULL list selects everything). */
static int in_list(const char *list, const char *name) {
    if (!list || !list[0]) return 1;
    size_t n = strlen(name);
    for (const char *p = list; *p;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == n && !strncmp(p, name, n)) return 1;
        p += len + (end ? 1 : 0);
    }
    return 0;
}

/* Fails naming the first listed subject that is not among names[0..n). */
static qlab_status check_list(const char *list, const char *path, char **names, int n) {
    if (!list || !list[0]) return QLAB_OK;
    for (const char *p = list; *p;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        int found = 0;
        for (int i = 0; i < n && !found; i++)
            if (strlen(names[i]) == len && !strncmp(names[i], p, len)) found = 1;
        if (!found) return qlab_fail(QLAB_ERR_ARG, "mmlu: subject '%.*s' is not in %s", (int)len, p, path);
        p += len + (end ? 1 : 0);
    }
    return QLAB_OK;
}

/* The questions to score, in order: for each one its subject (index into the result), answer and either a
 * k-shot question or a ready prompt. */
typedef struct {
    int subject;
    int answer;
    const mmlu_subject *source; /* KSHOT */
    const mmlu_question *question;
    const char *prompt; /* QLORA_ZEROSHOT */
} eval_item;

typedef struct {
    mmlu_data data;
    mmlu_prompt *prompts;
    int n_prompts;
    eval_item *items;
    int n_items;
    mmlu_subject_result *subjects;
    int n_subjects;
} eval_plan;

static void plan_free(eval_plan *p) {
    mmlu_free(&p->data);
    mmlu_prompts_free(p->prompts, p->n_prompts);
    free(p->items);
    free(p->subjects);
    memset(p, 0, sizeof *p);
}

static qlab_status plan_build(const mmlu_eval_options *opt, eval_plan *p) {
    memset(p, 0, sizeof *p);
    if (!opt->data_path) return qlab_fail(QLAB_ERR_ARG, "mmlu: no data file given");
    if (opt->limit < 0) return qlab_fail(QLAB_ERR_ARG, "mmlu: limit %d is negative", opt->limit);
    if (opt->mode == MMLU_EVAL_KSHOT) {
        if (opt->shots < 0 || opt->shots > 5)
            return qlab_fail(QLAB_ERR_ARG, "mmlu: shots %d is not in 0..5", opt->shots);
        QLAB_TRY(mmlu_load(opt->data_path, &p->data));
        char **names = calloc((size_t)p->data.n_subjects + 1, sizeof *names);
        int total = 0;
        for (int s = 0; s < p->data.n_subjects; s++)
            names[s] = p->data.subjects[s].name, total += p->data.subjects[s].n_test;
        qlab_status st = check_list(opt->subjects, opt->data_path, names, p->data.n_subjects);
        free(names);
        if (st != QLAB_OK) return st;
        p->items = qlab_calloc((size_t)total + 1, sizeof *p->items);
        p->subjects = qlab_calloc((size_t)p->data.n_subjects + 1, sizeof *p->subjects);
        if (!p->items || !p->subjects) return QLAB_ERR_NOMEM;
        for (int s = 0; s < p->data.n_subjects; s++) {
            const mmlu_subject *sub = &p->data.subjects[s];
            if (!in_list(opt->subjects, sub->name) || sub->n_test == 0) continue;
            int k = p->n_subjects++;
            snprintf(p->subjects[k].name, sizeof p->subjects[k].name, "%s", sub->name);
            int n = opt->limit && opt->limit < sub->n_test ? opt->limit : sub->n_test;
            for (int i = 0; i < n; i++)
                p->items[p->n_items++] = (eval_item){
                    .subject = k, .answer = sub->test[i].answer, .source = sub, .question = &sub->test[i]};
        }
    } else {
        QLAB_TRY(mmlu_load_qlora_json(opt->data_path, &p->prompts, &p->n_prompts));
        char **names = calloc((size_t)p->n_prompts, sizeof *names);
        for (int i = 0; i < p->n_prompts; i++)
            names[i] = p->prompts[i].subject;
        qlab_status st = check_list(opt->subjects, opt->data_path, names, p->n_prompts);
        free(names);
        if (st != QLAB_OK) return st;
        p->items = qlab_calloc((size_t)p->n_prompts, sizeof *p->items);
        p->subjects = qlab_calloc((size_t)p->n_prompts, sizeof *p->subjects);
        int *taken = qlab_calloc((size_t)p->n_prompts, sizeof *taken);
        if (!p->items || !p->subjects || !taken) {
            free(taken);
            return QLAB_ERR_NOMEM;
        }
        /* Subjects in order of first appearance (the file is sorted by subject). */
        for (int i = 0; i < p->n_prompts; i++) {
            const mmlu_prompt *q = &p->prompts[i];
            if (!in_list(opt->subjects, q->subject)) continue;
            int k = -1;
            for (int s = 0; s < p->n_subjects && k < 0; s++)
                if (!strcmp(p->subjects[s].name, q->subject)) k = s;
            if (k < 0) {
                k = p->n_subjects++;
                snprintf(p->subjects[k].name, sizeof p->subjects[k].name, "%s", q->subject);
            }
            if (opt->limit && taken[k] >= opt->limit) continue;
            taken[k]++;
            p->items[p->n_items++] = (eval_item){.subject = k, .answer = q->answer, .prompt = q->prompt};
        }
        free(taken);
    }
    if (p->n_items == 0) return qlab_fail(QLAB_ERR_ARG, "mmlu: %s: no questions selected", opt->data_path);
    return QLAB_OK;
}

qlab_status mmlu_eval_count(const mmlu_eval_options *opt, int *n) {
    eval_plan p;
    qlab_status st = plan_build(opt, &p);
    *n = st == QLAB_OK ? p.n_items : 0;
    plan_free(&p);
    return st;
}

/* ---------------------------------------------------------------- scoring */

/* BOS + prompt, its start cut (BOS kept) to fit max_len. */
static qlab_status encode_plain(const tokenizer *tok, const char *prompt, int max_len, int **ids, int *n_ids,
                                int *truncated) {
    int bos = tokenizer_bos_id(tok) >= 0;
    size_t n = 0;
    QLAB_TRY(tokenizer_encode(tok, prompt, strlen(prompt), bos, ids, &n));
    *truncated = 0;
    if (n > (size_t)max_len) {
        size_t keep = (size_t)max_len - (size_t)bos;
        memmove(*ids + bos, *ids + n - keep, keep * sizeof **ids);
        n = (size_t)max_len;
        *truncated = 1;
    }
    *n_ids = (int)n;
    return QLAB_OK;
}

qlab_status mmlu_evaluate(model *m, const tokenizer *tok, const mmlu_eval_options *opt,
                          mmlu_eval_result *out) {
    memset(out, 0, sizeof *out);
    double t0 = qlab_now();
    mmlu_scoring sc;
    QLAB_TRY(opt->letter_space ? mmlu_scoring_init_spaced(tok, &sc) : mmlu_scoring_init(tok, &sc));
    const model_config *cfg = model_get_config(m);
    int max_len = opt->max_len > 0 && opt->max_len < cfg->seq_len ? opt->max_len : cfg->seq_len;
    if (max_len < MMLU_MAX_LETTER_TOKENS + 8)
        return qlab_fail(QLAB_ERR_ARG, "mmlu: max_len %d leaves no room for a prompt", max_len);
    eval_plan p;
    qlab_status st = plan_build(opt, &p);
    float *logits =
        st == QLAB_OK ? qlab_calloc((size_t)MMLU_MAX_LETTER_TOKENS * cfg->vocab_size, sizeof(float)) : NULL;
    int *ids = NULL;
    if (st == QLAB_OK && !logits) st = QLAB_ERR_NOMEM;
    long long shots_used = 0;
    for (int i = 0; i < p.n_items && st == QLAB_OK; i++) {
        const eval_item *it = &p.items[i];
        int n = 0, k_used = 0, truncated = 0, budget = max_len - MMLU_MAX_LETTER_TOKENS;
        free(ids);
        ids = NULL;
        if (opt->mode == MMLU_EVAL_KSHOT)
            st = mmlu_encode_prompt(tok, it->source, opt->shots, it->question, budget, &ids, &n, &k_used,
                                    &truncated);
        else
            st = encode_plain(tok, it->prompt, budget, &ids, &n, &truncated);
        if (st != QLAB_OK) break;
        int *grown = realloc(ids, (size_t)(n + MMLU_MAX_LETTER_TOKENS) * sizeof *ids);
        if (!grown) {
            st = qlab_fail(QLAB_ERR_NOMEM, "mmlu: out of memory");
            break;
        }
        ids = grown;
        int best = 0;
        st = mmlu_scoring_pick(m, &sc, ids, n, logits, &best, NULL);
        if (st != QLAB_OK) break;
        mmlu_subject_result *s = &p.subjects[it->subject];
        s->n++;
        s->correct += best == it->answer;
        out->n++;
        out->correct += best == it->answer;
        out->predicted[best]++;
        out->n_truncated += truncated;
        shots_used += k_used;
        if (opt->prog) progress_update(opt->prog, opt->prog->done + 1, NULL);
    }
    free(ids);
    free(logits);
    if (st == QLAB_OK) {
        out->subjects = p.subjects;
        out->n_subjects = p.n_subjects;
        p.subjects = NULL;
        out->mean_shots = out->n ? (double)shots_used / out->n : 0;
        out->seconds = qlab_now() - t0;
    } else {
        memset(out, 0, sizeof *out);
    }
    plan_free(&p);
    return st;
}

void mmlu_eval_result_free(mmlu_eval_result *r) {
    free(r->subjects);
    memset(r, 0, sizeof *r);
}

void mmlu_wilson95(int k, int n, double *lo, double *hi) {
    if (n <= 0) {
        *lo = 0, *hi = 1;
        return;
    }
    const double z = 1.959963984540054;
    double phat = (double)k / n, z2 = z * z / n;
    double center = (phat + z2 / 2) / (1 + z2);
    double half = z * sqrt(phat * (1 - phat) / n + z * z / (4.0 * n * n)) / (1 + z2);
    *lo = center - half < 0 ? 0 : center - half;
    *hi = center + half > 1 ? 1 : center + half;
}

double mmlu_macro_accuracy(const mmlu_eval_result *r, double *lo, double *hi) {
    double sum = 0, var = 0;
    int S = 0;
    for (int s = 0; s < r->n_subjects; s++) {
        if (r->subjects[s].n == 0) continue;
        double ps = (double)r->subjects[s].correct / r->subjects[s].n;
        sum += ps;
        var += ps * (1 - ps) / r->subjects[s].n;
        S++;
    }
    if (S == 0) {
        *lo = *hi = NAN;
        return NAN;
    }
    double mean = sum / S, half = 1.959963984540054 * sqrt(var) / S;
    *lo = mean - half < 0 ? 0 : mean - half;
    *hi = mean + half > 1 ? 1 : mean + half;
    return mean;
}
