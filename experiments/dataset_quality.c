/* Dataset quality vs size (QLoRA Tables 5/6): QLoRA (NF4+DQ, adapters on every linear layer) finetunes of
 * one base on real instruction sets that differ in suitability (OASST1 chat replies, Alpaca, FLAN v2
 * chain-of-thought, HH-RLHF), in size (each source whole and subsampled to a common size) and in quality
 * (a controlled share of responses swapped between records), over several seeds; beside them qlab's generated
 * family (datasets/corpus_instruct.h: a chat-style and a FLAN-style set from the built-in corpus). Every
 * finetune is scored on held-out OASST1 items (response NLL; RougeL of greedy answers against the human
 * reply, eval/rouge.h) and on MMLU (qlora's zero-shot prompts, eval/mmlu_eval.h); the two rankings are set
 * side by side. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/common.h"
#include "core/base/progress.h"
#include "core/model/checkpoint.h"
#include "core/model/lora.h"
#include "core/results/config.h"
#include "core/results/results.h"
#include "datasets/corpus_instruct.h"
#include "datasets/instruct.h"
#include "eval/generate.h"
#include "eval/mmlu_eval.h"
#include "eval/rouge.h"
#include "experiments/harness/finetune_grid.h"

static const config_key config_keys[] = {
    FINETUNE_GRID_CONFIG_KEYS,
    {"rank", CONFIG_INT, "8", "LoRA r (adapters on all linear layers, NF4+DQ base)"},
    {"datasets", CONFIG_STRING_ARRAY, "[\"oasst1\", \"oasst1@400\", \"alpaca@400\", \"alpaca\"]",
     "training sets: SOURCE[@N][~P]: source oasst1 (data_path minus the held-out items), alpaca, flan_v2, "
     "hh_rlhf, qlab_chat or qlab_task; @N a seeded subsample of N records; ~P P% of the responses swapped "
     "between records"},
    {"alpaca_path", CONFIG_STRING, "\"../shared/data/finetune/paper_datasets/alpaca_5k.jsonl.gz\"",
     "Alpaca in qlora's template (JSON lines input/output)"},
    {"flan_v2_path", CONFIG_STRING, "\"../shared/data/finetune/paper_datasets/flan_v2_cot_zs_3k.jsonl.gz\"",
     "FLAN v2 (chain-of-thought submixture) in FLAN's zero-shot templates"},
    {"hh_rlhf_path", CONFIG_STRING, "\"../shared/data/finetune/paper_datasets/hh-rlhf_test_5k.jsonl.gz\"",
     "HH-RLHF in the ### Human / ### Assistant form"},
    {"qlab_records", CONFIG_INT, "3000",
     "records of each source of qlab's generated family: qlab_chat (story continuations asked in the "
     "### Human / ### Assistant chat format) and qlab_task (FLAN-style questions with short answers), both "
     "from the built-in corpus's stories"},
    {"qlab_seed", CONFIG_INT, "1", "corpus seed of the generated family"},
    {"rouge_items", CONFIG_INT, "24", "held-out OASST1 items answered greedily for RougeL"},
    {"gen_tokens", CONFIG_INT, "48", "new tokens per answer at most"},
    {"mmlu_path", CONFIG_STRING, "\"../shared/data/mmlu/qlora_zero_shot_mmlu_val.json\"",
     "qlora's zero-shot MMLU validation prompts"},
    {"mmlu_limit", CONFIG_INT, "2", "MMLU questions per subject (0 = all 1,531)"},
    {"mmlu_max_len", CONFIG_INT, "256", "MMLU prompt tokens at most (the start is cut)"},
};
#define N_CONFIG_KEYS ((int)(sizeof config_keys / sizeof config_keys[0]))
#define MAX_SETS 24

static void usage(FILE *f) {
    fprintf(f,
            "Usage: dataset_quality [--config FILE.json] [--out RESULTS.h5] [--set key=value ...]\n\n"
            "QLoRA Tables 5/6 on a tiny model: QLoRA finetunes on training sets of different suitability,\n"
            "size and quality, scored on held-out OASST1 (response NLL, RougeL of greedy answers) and on\n"
            "MMLU. Defaults: --config experiments/dataset_quality.json --out results/dataset_quality.h5.\n"
            "Config keys:\n");
    config_print_keys(config_keys, N_CONFIG_KEYS, f);
}

/* ---------------------------------------------------------------- training sets */

typedef struct {
    char spec[48], source[16], label[96];
    int size;        /* requested subsample (0 = the whole source) */
    int corrupt_pct; /* share of responses swapped */
    int n_records;   /* records actually used */
    instruct_examples ex;
} train_set;

static qlab_status parse_spec(const char *path, const char *spec, train_set *s) {
    memset(s, 0, sizeof *s);
    snprintf(s->spec, sizeof s->spec, "%s", spec);
    size_t n = strcspn(spec, "@~");
    if (n == 0 || n >= sizeof s->source)
        return qlab_fail(QLAB_ERR_ARG, "%s: dataset '%s' has no source", path, spec);
    memcpy(s->source, spec, n);
    if (strcmp(s->source, "oasst1") && strcmp(s->source, "alpaca") && strcmp(s->source, "flan_v2") &&
        strcmp(s->source, "hh_rlhf") && strcmp(s->source, "qlab_chat") && strcmp(s->source, "qlab_task"))
        return qlab_fail(
            QLAB_ERR_ARG,
            "%s: dataset '%s': source '%s' is not oasst1, alpaca, flan_v2, hh_rlhf, qlab_chat or "
            "qlab_task",
            path, spec, s->source);
    const char *p = spec + n;
    while (*p) {
        char kind = *p++, *end;
        long v = strtol(p, &end, 10);
        if (end == p || (kind == '@' && (v < 1 || v > 10000000)) || (kind == '~' && (v < 0 || v > 100)))
            return qlab_fail(QLAB_ERR_ARG, "%s: dataset '%s': bad %s", path, spec,
                             kind == '@' ? "size after @ (1..1e7)" : "percentage after ~ (0..100)");
        if (kind == '@') s->size = (int)v;
        if (kind == '~') s->corrupt_pct = (int)v;
        p = end;
    }
    return QLAB_OK;
}

static uint64_t spec_hash(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* The subsample and corruption of one source, encoded into rows. Corruption gives each chosen record the
 * response of the next chosen record (a cyclic shift, so every corrupted response is a real reply to
 * another prompt, never its own). */
static qlab_status build_set(train_set *s, const instruct_set *pool, const tokenizer *tok, int row_len,
                             uint64_t seed, const char *path) {
    int n = s->size && s->size < pool->count ? s->size : pool->count;
    if (s->size > pool->count)
        return qlab_fail(QLAB_ERR_ARG, "%s: dataset '%s' asks for %d records but the source has %d", path,
                         s->spec, s->size, pool->count);
    int *keep = NULL, *rest = NULL, n_keep = 0, n_rest = 0;
    QLAB_TRY(instruct_split(pool->count, n, seed ^ spec_hash(s->source), &rest, &n_rest, &keep, &n_keep));
    instruct_set sub = {0};
    qlab_status st = instruct_set_select(pool, keep, n_keep, &sub);
    free(keep);
    free(rest);
    if (st != QLAB_OK) return st;
    int n_bad = (int)lround(n * s->corrupt_pct / 100.0);
    if (n_bad == 1) n_bad = 2; /* one record cannot swap with itself */
    if (n_bad > 1) {
        int *bad = NULL, *good = NULL, nb = 0, ng = 0;
        st = instruct_split(n, n_bad, seed ^ spec_hash(s->spec) ^ 0x5bd1e995u, &good, &ng, &bad, &nb);
        if (st == QLAB_OK) {
            char *first = sub.records[bad[0]].response;
            for (int i = 0; i + 1 < nb; i++)
                sub.records[bad[i]].response = sub.records[bad[i + 1]].response;
            sub.records[bad[nb - 1]].response = first;
        }
        free(bad);
        free(good);
    }
    instruct_encode_options eo = {.max_len = row_len};
    if (st == QLAB_OK) st = instruct_encode(tok, sub.records, sub.count, &eo, &s->ex);
    s->n_records = n;
    snprintf(s->label, sizeof s->label, "%s %d%s", s->source, n, s->corrupt_pct ? "" : "");
    if (s->corrupt_pct) {
        size_t len = strlen(s->label);
        snprintf(s->label + len, sizeof s->label - len, ", %d%% swapped", s->corrupt_pct);
    }
    instruct_set_free(&sub);
    return st;
}

/* ---------------------------------------------------------------- evaluation of one finetuned model */

typedef struct {
    double nll, rouge, mmlu;
    double answer_tokens; /* mean length of the greedy answers (0 when every answer stops at once) */
} scores;

/* Greedy answers to the held-out prompts (BOS + prompt, its start cut to leave gen_tokens of room in the
 * row), stopped at BOS/EOS; the mean RougeL F against the human replies. */
static qlab_status chat_rouge(model *m, const tokenizer *tok, const instruct_set *items, int n_items,
                              int row_len, int gen_tokens, double *mean_f, double *mean_len) {
    int *out = qlab_calloc((size_t)row_len, sizeof(int));
    if (!out) return QLAB_ERR_NOMEM;
    double sum = 0, sum_len = 0;
    qlab_status st = QLAB_OK;
    for (int i = 0; i < n_items && st == QLAB_OK; i++) {
        int *ids = NULL;
        size_t n = 0;
        st = tokenizer_encode(tok, items->records[i].prompt, strlen(items->records[i].prompt),
                              tokenizer_bos_id(tok) >= 0, &ids, &n);
        if (st != QLAB_OK) break;
        int bos = tokenizer_bos_id(tok) >= 0, room = row_len - gen_tokens;
        if ((int)n > room) {
            memmove(ids + bos, ids + n - (room - bos), (size_t)(room - bos) * sizeof(int));
            n = (size_t)room;
        }
        generate_options go = {.temperature = 0,
                               .top_p = 1,
                               .seed = 1,
                               .max_tokens = (int)n + gen_tokens,
                               .stop_id_a = tokenizer_bos_id(tok),
                               .stop_id_b = tokenizer_eos_id(tok)};
        int n_out = 0;
        st = generate(m, ids, (int)n, &go, out, &n_out, NULL, NULL);
        char *text = NULL;
        size_t len = 0;
        if (st == QLAB_OK) {
            int end = n_out;
            while (end > (int)n && (out[end - 1] == go.stop_id_a || out[end - 1] == go.stop_id_b))
                end--;
            st = tokenizer_decode(tok, out + n, (size_t)(end - (int)n), &text, &len);
            sum_len += end - (int)n;
        }
        rouge_score rs;
        if (st == QLAB_OK) st = rouge_l(items->records[i].response, text, &rs);
        if (st == QLAB_OK) sum += rs.fmeasure;
        free(text);
        free(ids);
    }
    free(out);
    *mean_f = n_items ? sum / n_items : 0;
    *mean_len = n_items ? sum_len / n_items : 0;
    return st;
}

typedef struct {
    const tokenizer *tok;
    const instruct_set *rouge_items;
    int n_rouge, row_len, gen_tokens;
    const finetune_rows *heldout;
    int eval_batch;
    mmlu_eval_options mmlu;
} evaluation;

/* Where the progress line stands: run `unit0` of the grid's units, each run `steps` training steps and
 * then `eval_units` for its evaluation (held-out NLL, RougeL answers, MMLU: a third each). */
typedef struct {
    progress *prog;
    int64_t unit0, steps, eval_units;
    char what[64];
} grid_progress;

static void report(grid_progress *g, int64_t done, const char *phase) {
    char extra[128];
    snprintf(extra, sizeof extra, "%s %s", g->what, phase);
    progress_update(g->prog, g->unit0 + done, extra);
}

static void on_step(void *ctx, int64_t step, int64_t total, double loss) {
    grid_progress *g = ctx;
    char phase[64];
    snprintf(phase, sizeof phase, "step %lld/%lld loss %.3f", (long long)step, (long long)total, loss);
    report(g, step, phase);
}

static qlab_status evaluate(model *m, const evaluation *e, scores *out, grid_progress *g) {
    report(g, g->steps, "held-out NLL");
    QLAB_TRY(finetune_heldout_nll(m, e->heldout, e->eval_batch, &out->nll, NULL));
    report(g, g->steps + g->eval_units / 3, "RougeL answers");
    QLAB_TRY(chat_rouge(m, e->tok, e->rouge_items, e->n_rouge, e->row_len, e->gen_tokens, &out->rouge,
                        &out->answer_tokens));
    report(g, g->steps + 2 * g->eval_units / 3, "MMLU");
    mmlu_eval_result r;
    QLAB_TRY(mmlu_evaluate(m, e->tok, &e->mmlu, &r));
    out->mmlu = r.n ? (double)r.correct / r.n : 0;
    mmlu_eval_result_free(&r);
    return QLAB_OK;
}

/* ---------------------------------------------------------------- statistics */

static void mean_ci(const double *x, int n, double *mean, double *half) {
    double s = 0, ss = 0;
    for (int i = 0; i < n; i++)
        s += x[i];
    *mean = s / n;
    for (int i = 0; i < n; i++)
        ss += (x[i] - *mean) * (x[i] - *mean);
    *half = n > 1 ? finetune_t95(n - 1) * sqrt(ss / (n - 1) / n) : NAN;
}

/* Rank 1 = best (higher is better when higher_better), ties share the mean rank. */
static void ranks(const double *v, int n, int higher_better, double *rank) {
    for (int i = 0; i < n; i++) {
        int better = 0, equal = 0;
        for (int j = 0; j < n; j++) {
            if (v[j] == v[i])
                equal++;
            else if (higher_better ? v[j] > v[i] : v[j] < v[i])
                better++;
        }
        rank[i] = better + (equal + 1) / 2.0;
    }
}

static double spearman(const double *ra, const double *rb, int n) {
    double ma = 0, mb = 0, sab = 0, saa = 0, sbb = 0;
    for (int i = 0; i < n; i++)
        ma += ra[i] / n, mb += rb[i] / n;
    for (int i = 0; i < n; i++) {
        sab += (ra[i] - ma) * (rb[i] - mb);
        saa += (ra[i] - ma) * (ra[i] - ma);
        sbb += (rb[i] - mb) * (rb[i] - mb);
    }
    return saa > 0 && sbb > 0 ? sab / sqrt(saa * sbb) : NAN;
}

/* ---------------------------------------------------------------- the experiment */

static qlab_status load_pool(const config *cfg, const char *source, const instruct_set *oasst_train,
                             instruct_set *out) {
    if (!strcmp(source, "oasst1")) {
        int *idx = qlab_calloc((size_t)oasst_train->count, sizeof(int));
        if (!idx) return QLAB_ERR_NOMEM;
        for (int i = 0; i < oasst_train->count; i++)
            idx[i] = i;
        qlab_status st = instruct_set_select(oasst_train, idx, oasst_train->count, out);
        free(idx);
        return st;
    }
    if (!strncmp(source, "qlab_", 5)) { /* qlab's generated family (datasets/corpus_instruct.h) */
        int64_t n = config_int(cfg, "qlab_records");
        if (n < 1 || n > 1000000)
            return qlab_fail(QLAB_ERR_ARG, "%s: key 'qlab_records' must be from 1 to 1e6", config_path(cfg));
        return corpus_instruct_build(
            (uint64_t)config_int(cfg, "qlab_seed"),
            strcmp(source, "qlab_chat") ? CORPUS_INSTRUCT_TASK : CORPUS_INSTRUCT_CHAT, (int)n, out);
    }
    char key[32];
    snprintf(key, sizeof key, "%s_path", source);
    return instruct_load_oasst1(config_string(cfg, key), out);
}

/* One run of the experiment: its settings, the inputs, the scores and their summary. */
typedef struct {
    const config *cfg;
    const char *path; /* the config file, for messages */
    finetune_options base_opt;
    int64_t row_len, n_heldout, n_rouge, gen_tokens, mmlu_limit, mmlu_max_len;
    uint64_t split_seed;
    int n_sets, n_seeds, n_mmlu;
    int64_t *seeds;
    train_set *sets;
    char model_path[512], tok_path[512];
    model *base;
    tokenizer *tok;
    instruct_set oasst, oasst_train, oasst_eval;
    instruct_examples heldout_ex;
    int *train_idx, *eval_idx, n_train, n_eval;
    finetune_rows heldout;
    evaluation ev;
    scores *sc, base_scores; /* sc[i * n_seeds + k]: training set i, seed k */
    double *seconds;         /* same index */
    double mean[3][MAX_SETS], half[3][MAX_SETS], rk[3][MAX_SETS]; /* NLL, RougeL, MMLU over the seeds */
} study;

/* The finetuning options (QLoRA NF4+DQ on all linear layers) and the sizes, checked. */
static qlab_status read_settings(study *s) {
    const config *cfg = s->cfg;
    const char *path = s->path;
    finetune_options *o = &s->base_opt;
    QLAB_TRY(finetune_grid_options(cfg, o));
    o->mode = FINETUNE_QLORA;
    o->base_dtype = QUANT_NF4;
    o->double_quant = 1;
    o->lora.targets = LORA_TARGETS_ALL;
    o->lora.rank = (int)config_int(cfg, "rank");
    s->row_len = config_int(cfg, "row_len"), s->n_heldout = config_int(cfg, "heldout_records"),
    s->n_rouge = config_int(cfg, "rouge_items"), s->gen_tokens = config_int(cfg, "gen_tokens"),
    s->mmlu_limit = config_int(cfg, "mmlu_limit"), s->mmlu_max_len = config_int(cfg, "mmlu_max_len");
    s->n_sets = config_array_length(cfg, "datasets");
    if (o->lora.rank < 1 || o->lora.rank > 4096)
        return qlab_fail(QLAB_ERR_ARG, "%s: key 'rank' must be from 1 to 4096", path);
    if (s->n_sets < 2 || s->n_sets > MAX_SETS)
        return qlab_fail(QLAB_ERR_ARG, "%s: key 'datasets' needs 2 to %d entries", path, MAX_SETS);
    if (s->n_rouge < 1 || s->n_rouge > s->n_heldout || s->gen_tokens < 1 || s->gen_tokens >= s->row_len / 2 ||
        s->mmlu_limit < 0 || s->mmlu_max_len < 32)
        return qlab_fail(QLAB_ERR_ARG,
                         "%s: need 1 <= rouge_items <= heldout_records, 1 <= gen_tokens < row_len/2, "
                         "mmlu_limit >= 0, mmlu_max_len >= 32",
                         path);
    return finetune_grid_seeds(cfg, &s->seeds, &s->n_seeds);
}

/* The base model and tokenizer, the OASST1 split (the held-out items, for NLL and RougeL, never enter any
 * training set) and every training set encoded into rows. */
static qlab_status load_inputs(study *s) {
    const config *cfg = s->cfg;
    const char *path = s->path;
    s->sets = qlab_calloc(MAX_SETS, sizeof *s->sets);
    if (!s->sets) return QLAB_ERR_NOMEM;
    for (int i = 0; i < s->n_sets; i++)
        QLAB_TRY(parse_spec(path, config_string_at(cfg, "datasets", i), &s->sets[i]));
    QLAB_TRY(finetune_resolve_model(config_string(cfg, "model_path"), config_string(cfg, "tokenizer_path"),
                                    s->model_path, sizeof s->model_path, s->tok_path, sizeof s->tok_path));
    QLAB_TRY(checkpoint_load(s->model_path, &s->base));
    QLAB_TRY(tokenizer_load(s->tok_path, &s->tok));
    if (s->row_len > model_get_config(s->base)->seq_len)
        return qlab_fail(QLAB_ERR_ARG, "%s: row_len %lld exceeds the model's context %d", path,
                         (long long)s->row_len, model_get_config(s->base)->seq_len);
    s->split_seed = (uint64_t)config_int(cfg, "split_seed");
    QLAB_TRY(instruct_load_oasst1(config_string(cfg, "data_path"), &s->oasst));
    if (s->n_heldout < 1 || s->n_heldout >= s->oasst.count)
        return qlab_fail(QLAB_ERR_ARG, "%s: heldout_records must be from 1 to %d", path, s->oasst.count - 1);
    QLAB_TRY(instruct_split(s->oasst.count, (int)s->n_heldout, s->split_seed, &s->train_idx, &s->n_train,
                            &s->eval_idx, &s->n_eval));
    QLAB_TRY(instruct_set_select(&s->oasst, s->train_idx, s->n_train, &s->oasst_train));
    QLAB_TRY(instruct_set_select(&s->oasst, s->eval_idx, s->n_eval, &s->oasst_eval));
    instruct_encode_options eo = {.max_len = (int)s->row_len};
    QLAB_TRY(instruct_encode(s->tok, s->oasst_eval.records, s->oasst_eval.count, &eo, &s->heldout_ex));
    s->heldout =
        (finetune_rows){s->heldout_ex.tokens, s->heldout_ex.targets, s->heldout_ex.n, s->heldout_ex.T};
    for (int i = 0; i < s->n_sets; i++) {
        instruct_set pool = {0};
        qlab_status st = load_pool(cfg, s->sets[i].source, &s->oasst_train, &pool);
        if (st == QLAB_OK) st = build_set(&s->sets[i], &pool, s->tok, (int)s->row_len, s->split_seed, path);
        instruct_set_free(&pool);
        QLAB_TRY(st);
    }
    return QLAB_OK;
}

/* What every model is scored on, the MMLU question count and room for the scores. */
static qlab_status prepare_evaluation(study *s) {
    s->ev = (evaluation){.tok = s->tok,
                         .rouge_items = &s->oasst_eval,
                         .n_rouge = (int)s->n_rouge,
                         .row_len = (int)s->row_len,
                         .gen_tokens = (int)s->gen_tokens,
                         .heldout = &s->heldout,
                         .eval_batch = s->base_opt.eval_batch,
                         .mmlu = {.mode = MMLU_EVAL_QLORA_ZEROSHOT,
                                  .data_path = config_string(s->cfg, "mmlu_path"),
                                  .limit = (int)s->mmlu_limit,
                                  .max_len = (int)s->mmlu_max_len}};
    QLAB_TRY(mmlu_eval_count(&s->ev.mmlu, &s->n_mmlu));
    s->sc = qlab_calloc((size_t)s->n_sets * s->n_seeds, sizeof *s->sc);
    s->seconds = qlab_calloc((size_t)s->n_sets * s->n_seeds, sizeof *s->seconds);
    if (!s->sc || !s->seconds) return QLAB_ERR_NOMEM;
    fprintf(stderr,
            "dataset_quality: %s, %d training sets x %d seeds, %d steps of %d rows of %lld tokens; "
            "evaluation: %d "
            "held-out OASST1 items (%d answered for RougeL), %d MMLU questions\n",
            s->model_path, s->n_sets, s->n_seeds, (int)s->base_opt.steps, s->base_opt.batch,
            (long long)s->row_len, s->oasst_eval.count, (int)s->n_rouge, s->n_mmlu);
    return QLAB_OK;
}

/* The starting point: the NF4+DQ base without adapters (Table 5's "no tuning"). */
static qlab_status score_base(study *s, grid_progress *g) {
    model *m = NULL;
    qlab_status st = model_clone(s->base, &m);
    if (st == QLAB_OK) model_set_compute(m, s->base_opt.compute);
    if (st == QLAB_OK) st = model_quantize(m, QUANT_NF4, s->base_opt.blocksize, 1);
    if (st == QLAB_OK) st = evaluate(m, &s->ev, &s->base_scores, g);
    model_free(m);
    return st;
}

/* QLoRA on training set i with seed k, then the finetuned model scored. */
static qlab_status finetune_and_score(study *s, int i, int k, grid_progress *g) {
    const train_set *set = &s->sets[i];
    model *m = NULL;
    lora_set *l = NULL;
    finetune_result fr;
    memset(&fr, 0, sizeof fr);
    finetune_options o = s->base_opt;
    o.seed = o.lora.seed = (uint64_t)s->seeds[k];
    o.eval_every = 0; /* held-out NLL at the ends only; evaluate() scores the final model */
    finetune_rows train = {set->ex.tokens, set->ex.targets, set->ex.n, set->ex.T};
    double t0 = qlab_now();
    qlab_status st = model_clone(s->base, &m);
    if (st == QLAB_OK) st = finetune_run(m, &train, &s->heldout, &o, on_step, g, &l, &fr);
    if (st == QLAB_OK && config_string(s->cfg, "save_adapters")[0])
        st = finetune_save_run(config_string(s->cfg, "save_adapters"), set->spec, s->seeds[k], m, l,
                               s->model_path);
    if (st == QLAB_OK) {
        lora_set_training(l, 0);
        st = evaluate(m, &s->ev, &s->sc[i * s->n_seeds + k], g);
    }
    s->seconds[i * s->n_seeds + k] = qlab_now() - t0;
    if (st != QLAB_OK) qlab_fail_context(st, "%s seed %lld", set->spec, (long long)s->seeds[k]);
    finetune_result_free(&fr);
    model_free(m);
    lora_free(l);
    return st;
}

/* Progress in units of training steps; an evaluation counts as half a run's steps (at least 3). */
static qlab_status run_grid(study *s) {
    progress prog;
    int64_t steps = s->base_opt.steps, eval_units = steps / 2 > 3 ? steps / 2 : 3;
    int64_t runs = (int64_t)s->n_sets * s->n_seeds;
    progress_begin(&prog, "dataset_quality", eval_units + runs * (steps + eval_units));
    grid_progress g = {&prog, -steps, steps, eval_units, "base (NF4+DQ, no tuning)"};
    qlab_status st = score_base(s, &g);
    for (int i = 0; i < s->n_sets && st == QLAB_OK; i++)
        for (int k = 0; k < s->n_seeds && st == QLAB_OK; k++) {
            g.unit0 = eval_units + (int64_t)(i * s->n_seeds + k) * (steps + eval_units);
            snprintf(g.what, sizeof g.what, "%s seed %lld", s->sets[i].spec, (long long)s->seeds[k]);
            st = finetune_and_score(s, i, k, &g);
        }
    if (st == QLAB_OK) progress_end(&prog, NULL);
    return st;
}

/* Means with 95% intervals over the seeds and ranks over the training sets. */
static void summarize(study *s) {
    int n_seeds = s->n_seeds;
    for (int i = 0; i < s->n_sets; i++) {
        double x[3][64];
        for (int k = 0; k < n_seeds; k++) {
            x[0][k] = s->sc[i * n_seeds + k].nll;
            x[1][k] = s->sc[i * n_seeds + k].rouge;
            x[2][k] = s->sc[i * n_seeds + k].mmlu;
        }
        for (int q = 0; q < 3; q++)
            mean_ci(x[q], n_seeds, &s->mean[q][i], &s->half[q][i]);
    }
    ranks(s->mean[0], s->n_sets, 0, s->rk[0]);
    ranks(s->mean[1], s->n_sets, 1, s->rk[1]);
    ranks(s->mean[2], s->n_sets, 1, s->rk[2]);
}

static qlab_status add_notes(const study *s, results *r) {
    results_attr_int(r, "seed", s->seeds[0]);
    results_attr_string(r, "model", s->model_path);
    results_attr_string(r, "tokenizer", s->tok_path);
    char note[1024];
    mmlu_scoring msc;
    QLAB_TRY(mmlu_scoring_init(s->tok, &msc));
    mmlu_scoring_describe(s->tok, &msc, note, sizeof note);
    results_note(r, "mmlu_scoring", note);
    snprintf(
        note, sizeof note,
        "Chat target: %d OASST1 items split off before any training set is drawn (seed %llu): mean response "
        "NLL over all of them, and mean RougeL F (rouge-score's definition) of greedy answers of at most %d "
        "tokens to the first %d. MMLU: qlora's zero-shot validation prompts, %s per subject (%d questions); "
        "chance is 0.25 and a model this small is expected near chance.",
        s->oasst_eval.count, (unsigned long long)s->split_seed, (int)s->gen_tokens, (int)s->n_rouge,
        s->mmlu_limit ? "the first questions" : "all questions", s->n_mmlu);
    results_note(r, "metric", note);
    results_note(
        r, "paper",
        "QLoRA Tables 5/6: OASST1 (9k) beats FLAN v2 (450k) on chatbot quality (Vicuna, % of ChatGPT, "
        "65B: Guanaco 99.3 vs FLAN v2 48.4) while FLAN v2 wins 5-shot MMLU (65B: 63.9 vs 62.2): "
        "suitability matters more than size, and MMLU does not predict chatbot quality.");
    results_note(
        r, "generated_family",
        "qlab_chat and qlab_task are generated from the built-in story corpus (datasets/corpus_instruct.h): "
        "qlab_chat asks, in the OASST1 chat format, for the next paragraph of a story (long prose "
        "replies: the chat target's kind of data); qlab_task asks FLAN-style questions about the "
        "opening paragraph with short answers (a different instruction style, as FLAN v2 is to "
        "OASST1). @N subsamples and ~P swaps P% of the responses between records, so size, style "
        "and quality vary independently.");
    results_note(r, "left_out",
                 "Self-Instruct, Unnatural Instructions, Chip2 and Longform are not available offline.");
    return QLAB_OK;
}

static qlab_status write_runs(const study *s, results *r) {
    results_table *t = NULL;
    QLAB_TRY(results_table_begin(r, &t, "runs", "One row per (training set, seed)"));
    results_table_column(t, "dataset", RESULTS_STRING, NULL, "SOURCE[@N][~P] as configured");
    results_table_column(t, "seed", RESULTS_INT64, NULL, NULL);
    results_table_column(t, "heldout_nll", RESULTS_FLOAT64, "nats/token", "held-out OASST1 response NLL");
    results_table_column(t, "rougeL", RESULTS_FLOAT64, NULL, "mean RougeL F of greedy answers");
    results_table_column(t, "mmlu", RESULTS_FLOAT64, NULL, "MMLU accuracy (all questions)");
    results_table_column(t, "answer_tokens", RESULTS_FLOAT64, "tokens", "mean length of the greedy answers");
    results_table_column(t, "seconds", RESULTS_FLOAT64, "s", "finetune + evaluation");
    for (int i = 0; i < s->n_sets; i++)
        for (int k = 0; k < s->n_seeds; k++) {
            const scores *sc = &s->sc[i * s->n_seeds + k];
            results_set_string(t, "dataset", s->sets[i].spec);
            results_set_int(t, "seed", s->seeds[k]);
            results_set_double(t, "heldout_nll", sc->nll);
            results_set_double(t, "rougeL", sc->rouge);
            results_set_double(t, "mmlu", sc->mmlu);
            results_set_double(t, "answer_tokens", sc->answer_tokens);
            results_set_double(t, "seconds", s->seconds[i * s->n_seeds + k]);
            QLAB_TRY(results_row_end(t));
        }
    return results_table_end(t);
}

/* The summary's first row: the base without tuning, which has no interval and no rank. */
static qlab_status add_base_row(const study *s, results_table *t) {
    results_set_string(t, "dataset", "base");
    results_set_string(t, "label", "no tuning (NF4+DQ base)");
    results_set_int(t, "records", 0);
    results_set_int(t, "swapped_pct", 0);
    results_set_int(t, "rows", 0);
    double v[3] = {s->base_scores.nll, s->base_scores.rouge, s->base_scores.mmlu};
    const char *names[3][2] = {{"nll", "nll_ci95"}, {"rougeL", "rougeL_ci95"}, {"mmlu", "mmlu_ci95"}};
    for (int q = 0; q < 3; q++)
        results_set_double(t, names[q][0], v[q]), results_set_double(t, names[q][1], NAN);
    results_set_double(t, "rank_nll", NAN);
    results_set_double(t, "rank_rougeL", NAN);
    results_set_double(t, "rank_mmlu", NAN);
    results_set_int(t, "mmlu_questions", s->n_mmlu);
    return results_row_end(t);
}

static qlab_status add_set_row(const study *s, results_table *t, int i) {
    const train_set *set = &s->sets[i];
    results_set_string(t, "dataset", set->spec);
    results_set_string(t, "label", set->label);
    results_set_int(t, "records", set->n_records);
    results_set_int(t, "swapped_pct", set->corrupt_pct);
    results_set_int(t, "rows", set->ex.n);
    results_set_double(t, "nll", s->mean[0][i]);
    results_set_double(t, "nll_ci95", s->half[0][i]);
    results_set_double(t, "rougeL", s->mean[1][i]);
    results_set_double(t, "rougeL_ci95", s->half[1][i]);
    results_set_double(t, "mmlu", s->mean[2][i]);
    results_set_double(t, "mmlu_ci95", s->half[2][i]);
    results_set_double(t, "rank_nll", s->rk[0][i]);
    results_set_double(t, "rank_rougeL", s->rk[1][i]);
    results_set_double(t, "rank_mmlu", s->rk[2][i]);
    results_set_int(t, "mmlu_questions", s->n_mmlu);
    return results_row_end(t);
}

static qlab_status write_summary(const study *s, results *r) {
    results_table *t = NULL;
    QLAB_TRY(results_table_begin(r, &t, "summary",
                                 "Tables 5/6 on a tiny model: chat target vs MMLU by training set (mean over "
                                 "seeds, 95% t interval; rank 1 = best)"));
    const char *cols[] = {"dataset",   "label",    "records",     "swapped_pct", "rows",
                          "nll",       "nll_ci95", "rougeL",      "rougeL_ci95", "mmlu",
                          "mmlu_ci95", "rank_nll", "rank_rougeL", "rank_mmlu",   "mmlu_questions"};
    for (int c = 0; c < 15; c++)
        results_table_column(t, cols[c],
                             c < 2                ? RESULTS_STRING
                             : (c < 5 || c == 14) ? RESULTS_INT64
                                                  : RESULTS_FLOAT64,
                             NULL, NULL);
    QLAB_TRY(add_base_row(s, t));
    for (int i = 0; i < s->n_sets; i++)
        QLAB_TRY(add_set_row(s, t, i));
    char note[1024];
    snprintf(note, sizeof note,
             "Spearman rank correlation over the training sets: MMLU vs RougeL %.3f, MMLU vs -NLL %.3f, "
             "RougeL vs "
             "-NLL %.3f. Paper's pattern: the chat ranking puts the suitable small set (OASST1) first while "
             "MMLU prefers another set; a correlation near or below 0 says MMLU does not predict the chat "
             "target here either, but with MMLU near chance on this model it predicts nothing at all.",
             spearman(s->rk[2], s->rk[1], s->n_sets), spearman(s->rk[2], s->rk[0], s->n_sets),
             spearman(s->rk[1], s->rk[0], s->n_sets));
    QLAB_TRY(results_table_note(t, note));
    return results_table_end(t);
}

static void print_summary(const study *s, const char *out_path) {
    printf("dataset_quality: wrote %s\n", out_path);
    printf("  %-16s  %-22s  %-22s  %-22s\n", "training set", "held-out NLL", "RougeL", "MMLU");
    printf("  %-16s  %8.4f                %8.4f                %8.4f\n", "base", s->base_scores.nll,
           s->base_scores.rouge, s->base_scores.mmlu);
    for (int i = 0; i < s->n_sets; i++)
        printf("  %-16s  %8.4f ± %-7.4f (#%.0f)  %8.4f ± %-7.4f (#%.0f)  %8.4f ± %-7.4f (#%.0f)\n",
               s->sets[i].spec, s->mean[0][i], s->half[0][i], s->rk[0][i], s->mean[1][i], s->half[1][i],
               s->rk[1][i], s->mean[2][i], s->half[2][i], s->rk[2][i]);
}

static void study_free(study *s) {
    for (int i = 0; i < MAX_SETS && s->sets; i++)
        instruct_examples_free(&s->sets[i].ex);
    free(s->sets);
    free(s->sc);
    free(s->seconds);
    free(s->seeds);
    free(s->train_idx);
    free(s->eval_idx);
    instruct_examples_free(&s->heldout_ex);
    instruct_set_free(&s->oasst);
    instruct_set_free(&s->oasst_train);
    instruct_set_free(&s->oasst_eval);
    model_free(s->base);
    tokenizer_free(s->tok);
}

static qlab_status run(const config *cfg, const char *out_path, int argc, char **argv) {
    study *s = qlab_calloc(1, sizeof *s);
    if (!s) return QLAB_ERR_NOMEM;
    s->cfg = cfg;
    s->path = config_path(cfg);
    results *r = NULL;
    qlab_status st = read_settings(s);
    if (st == QLAB_OK) st = load_inputs(s);
    if (st == QLAB_OK) st = prepare_evaluation(s);
    if (st == QLAB_OK) st = run_grid(s);
    if (st == QLAB_OK) st = results_create(&r, out_path, "dataset_quality", cfg, argc, argv);
    if (st == QLAB_OK) st = experiment_results_compute(r, s->base_opt.compute);
    if (st == QLAB_OK) st = add_notes(s, r);
    if (st == QLAB_OK) st = write_runs(s, r);
    if (st == QLAB_OK) summarize(s);
    if (st == QLAB_OK) st = write_summary(s, r);
    if (st == QLAB_OK) {
        st = results_commit(r);
        r = NULL;
    }
    if (st == QLAB_OK) print_summary(s, out_path);
    results_abort(r);
    study_free(s);
    free(s);
    return st;
}

int main(int argc, char **argv) {
    qlab_runtime_restart(argv);
    experiment_args args;
    int early = experiment_parse_args(&args, "dataset_quality", argc, argv, usage);
    if (early >= 0) return early;
    config *cfg = NULL;
    qlab_status st = experiment_load_config(&args, &cfg, config_keys, N_CONFIG_KEYS);
    if (st == QLAB_OK) st = run(cfg, args.out_path, argc, argv);
    config_free(cfg);
    return st == QLAB_OK ? 0 : qlab_report_error("dataset_quality");
}
