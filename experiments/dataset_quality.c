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

static qlab_status evaluate(model *m, const evaluation *e, scores *out) {
    QLAB_TRY(finetune_heldout_nll(m, e->heldout, e->eval_batch, &out->nll, NULL));
    QLAB_TRY(chat_rouge(m, e->tok, e->rouge_items, e->n_rouge, e->row_len, e->gen_tokens, &out->rouge,
                        &out->answer_tokens));
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

static qlab_status run(const config *cfg, const char *out_path, int argc, char **argv) {
    const char *path = config_path(cfg);
    finetune_options base_opt;
    QLAB_TRY(finetune_grid_options(cfg, &base_opt));
    base_opt.mode = FINETUNE_QLORA;
    base_opt.base_dtype = QUANT_NF4;
    base_opt.double_quant = 1;
    base_opt.lora.targets = LORA_TARGETS_ALL;
    base_opt.lora.rank = (int)config_int(cfg, "rank");
    int64_t row_len = config_int(cfg, "row_len"), n_heldout = config_int(cfg, "heldout_records"),
            n_rouge = config_int(cfg, "rouge_items"), gen_tokens = config_int(cfg, "gen_tokens"),
            mmlu_limit = config_int(cfg, "mmlu_limit"), mmlu_max_len = config_int(cfg, "mmlu_max_len");
    int n_sets = config_array_length(cfg, "datasets");
    if (base_opt.lora.rank < 1 || base_opt.lora.rank > 4096)
        return qlab_fail(QLAB_ERR_ARG, "%s: key 'rank' must be from 1 to 4096", path);
    if (n_sets < 2 || n_sets > MAX_SETS)
        return qlab_fail(QLAB_ERR_ARG, "%s: key 'datasets' needs 2 to %d entries", path, MAX_SETS);
    if (n_rouge < 1 || n_rouge > n_heldout || gen_tokens < 1 || gen_tokens >= row_len / 2 || mmlu_limit < 0 ||
        mmlu_max_len < 32)
        return qlab_fail(QLAB_ERR_ARG,
                         "%s: need 1 <= rouge_items <= heldout_records, 1 <= gen_tokens < row_len/2, "
                         "mmlu_limit >= 0, mmlu_max_len >= 32",
                         path);
    int64_t *seeds = NULL;
    int n_seeds = 0;
    QLAB_TRY(finetune_grid_seeds(cfg, &seeds, &n_seeds));

    train_set *sets = qlab_calloc(MAX_SETS, sizeof *sets);
    char model_path[512], tok_path[512];
    model *base = NULL;
    tokenizer *tok = NULL;
    instruct_set oasst = {0}, oasst_train = {0}, oasst_eval = {0};
    instruct_examples heldout_ex = {0};
    int *train_idx = NULL, *eval_idx = NULL, n_train = 0, n_eval = 0;
    scores *sc = NULL, base_scores = {0};
    double *seconds = NULL;
    results *r = NULL;
    qlab_status st = sets ? QLAB_OK : QLAB_ERR_NOMEM;
    for (int i = 0; i < n_sets && st == QLAB_OK; i++)
        st = parse_spec(path, config_string_at(cfg, "datasets", i), &sets[i]);
    if (st == QLAB_OK)
        st = finetune_resolve_model(config_string(cfg, "model_path"), config_string(cfg, "tokenizer_path"),
                                    model_path, sizeof model_path, tok_path, sizeof tok_path);
    if (st == QLAB_OK) st = checkpoint_load(model_path, &base);
    if (st == QLAB_OK) st = tokenizer_load(tok_path, &tok);
    if (st == QLAB_OK && row_len > model_get_config(base)->seq_len)
        st = qlab_fail(QLAB_ERR_ARG, "%s: row_len %lld exceeds the model's context %d", path,
                       (long long)row_len, model_get_config(base)->seq_len);
    /* OASST1: the held-out items (NLL and RougeL) never enter any training set. */
    uint64_t split_seed = (uint64_t)config_int(cfg, "split_seed");
    if (st == QLAB_OK) st = instruct_load_oasst1(config_string(cfg, "data_path"), &oasst);
    if (st == QLAB_OK && (n_heldout < 1 || n_heldout >= oasst.count))
        st = qlab_fail(QLAB_ERR_ARG, "%s: heldout_records must be from 1 to %d", path, oasst.count - 1);
    if (st == QLAB_OK)
        st =
            instruct_split(oasst.count, (int)n_heldout, split_seed, &train_idx, &n_train, &eval_idx, &n_eval);
    if (st == QLAB_OK) st = instruct_set_select(&oasst, train_idx, n_train, &oasst_train);
    if (st == QLAB_OK) st = instruct_set_select(&oasst, eval_idx, n_eval, &oasst_eval);
    instruct_encode_options eo = {.max_len = (int)row_len};
    if (st == QLAB_OK) st = instruct_encode(tok, oasst_eval.records, oasst_eval.count, &eo, &heldout_ex);
    for (int i = 0; i < n_sets && st == QLAB_OK; i++) {
        instruct_set pool = {0};
        st = load_pool(cfg, sets[i].source, &oasst_train, &pool);
        if (st == QLAB_OK) st = build_set(&sets[i], &pool, tok, (int)row_len, split_seed, path);
        instruct_set_free(&pool);
    }
    finetune_rows heldout = {heldout_ex.tokens, heldout_ex.targets, heldout_ex.n, heldout_ex.T};
    evaluation ev = {.tok = tok,
                     .rouge_items = &oasst_eval,
                     .n_rouge = (int)n_rouge,
                     .row_len = (int)row_len,
                     .gen_tokens = (int)gen_tokens,
                     .heldout = &heldout,
                     .eval_batch = base_opt.eval_batch,
                     .mmlu = {.mode = MMLU_EVAL_QLORA_ZEROSHOT,
                              .data_path = config_string(cfg, "mmlu_path"),
                              .limit = (int)mmlu_limit,
                              .max_len = (int)mmlu_max_len}};
    int n_mmlu = 0;
    if (st == QLAB_OK) st = mmlu_eval_count(&ev.mmlu, &n_mmlu);
    sc = qlab_calloc((size_t)n_sets * n_seeds, sizeof *sc);
    seconds = qlab_calloc((size_t)n_sets * n_seeds, sizeof *seconds);
    if (st == QLAB_OK && (!sc || !seconds)) st = QLAB_ERR_NOMEM;
    if (st != QLAB_OK) goto done;
    fprintf(stderr,
            "dataset_quality: %s, %d training sets x %d seeds, %d steps of %d rows of %lld tokens; "
            "evaluation: %d "
            "held-out OASST1 items (%d answered for RougeL), %d MMLU questions\n",
            model_path, n_sets, n_seeds, (int)base_opt.steps, base_opt.batch, (long long)row_len,
            oasst_eval.count, (int)n_rouge, n_mmlu);

    progress prog;
    progress_begin(&prog, "dataset_quality", (int64_t)(n_sets * n_seeds + 1));
    { /* The starting point: the NF4+DQ base without adapters (Table 5's "no tuning"). */
        model *m = NULL;
        st = model_clone(base, &m);
        if (st == QLAB_OK) st = model_quantize(m, QUANT_NF4, base_opt.blocksize, 1);
        if (st == QLAB_OK) st = evaluate(m, &ev, &base_scores);
        model_free(m);
        progress_update(&prog, 1, "base");
    }
    for (int i = 0; i < n_sets && st == QLAB_OK; i++)
        for (int k = 0; k < n_seeds && st == QLAB_OK; k++) {
            model *m = NULL;
            lora_set *l = NULL;
            finetune_result fr;
            memset(&fr, 0, sizeof fr);
            finetune_options o = base_opt;
            o.seed = o.lora.seed = (uint64_t)seeds[k];
            o.eval_every = 0; /* held-out NLL at the ends only; evaluate() scores the final model */
            finetune_rows train = {sets[i].ex.tokens, sets[i].ex.targets, sets[i].ex.n, sets[i].ex.T};
            double t0 = qlab_now();
            st = model_clone(base, &m);
            if (st == QLAB_OK) st = finetune_run(m, &train, &heldout, &o, NULL, NULL, &l, &fr);
            if (st == QLAB_OK && config_string(cfg, "save_adapters")[0])
                st = finetune_save_run(config_string(cfg, "save_adapters"), sets[i].spec, seeds[k], m, l,
                                       model_path);
            if (st == QLAB_OK) {
                lora_set_training(l, 0);
                st = evaluate(m, &ev, &sc[i * n_seeds + k]);
            }
            seconds[i * n_seeds + k] = qlab_now() - t0;
            if (st != QLAB_OK) qlab_fail_context(st, "%s seed %lld", sets[i].spec, (long long)seeds[k]);
            finetune_result_free(&fr);
            model_free(m);
            lora_free(l);
            char extra[96];
            snprintf(extra, sizeof extra, "%s seed %lld", sets[i].spec, (long long)seeds[k]);
            progress_update(&prog, 2 + i * n_seeds + k, extra);
        }
    if (st != QLAB_OK) goto done;
    progress_end(&prog, NULL);

    /* ---- tables */
    if ((st = results_create(&r, out_path, "dataset_quality", cfg, argc, argv)) != QLAB_OK) goto done;
    results_attr_int(r, "seed", seeds[0]);
    results_attr_string(r, "model", model_path);
    results_attr_string(r, "tokenizer", tok_path);
    char note[1024];
    mmlu_scoring msc;
    if ((st = mmlu_scoring_init(tok, &msc)) != QLAB_OK) goto done;
    mmlu_scoring_describe(tok, &msc, note, sizeof note);
    results_note(r, "mmlu_scoring", note);
    snprintf(
        note, sizeof note,
        "Chat target: %d OASST1 items split off before any training set is drawn (seed %llu): mean response "
        "NLL over all of them, and mean RougeL F (rouge-score's definition) of greedy answers of at most %d "
        "tokens to the first %d. MMLU: qlora's zero-shot validation prompts, %s per subject (%d questions); "
        "chance is 0.25 and a model this small is expected near chance.",
        oasst_eval.count, (unsigned long long)split_seed, (int)gen_tokens, (int)n_rouge,
        mmlu_limit ? "the first questions" : "all questions", n_mmlu);
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
    results_table *t = NULL;
    if ((st = results_table_begin(r, &t, "runs", "One row per (training set, seed)")) != QLAB_OK) goto done;
    results_table_column(t, "dataset", RESULTS_STRING, NULL, "SOURCE[@N][~P] as configured");
    results_table_column(t, "seed", RESULTS_INT64, NULL, NULL);
    results_table_column(t, "heldout_nll", RESULTS_FLOAT64, "nats/token", "held-out OASST1 response NLL");
    results_table_column(t, "rougeL", RESULTS_FLOAT64, NULL, "mean RougeL F of greedy answers");
    results_table_column(t, "mmlu", RESULTS_FLOAT64, NULL, "MMLU accuracy (all questions)");
    results_table_column(t, "answer_tokens", RESULTS_FLOAT64, "tokens", "mean length of the greedy answers");
    results_table_column(t, "seconds", RESULTS_FLOAT64, "s", "finetune + evaluation");
    for (int i = 0; i < n_sets && st == QLAB_OK; i++)
        for (int k = 0; k < n_seeds && st == QLAB_OK; k++) {
            const scores *s = &sc[i * n_seeds + k];
            results_set_string(t, "dataset", sets[i].spec);
            results_set_int(t, "seed", seeds[k]);
            results_set_double(t, "heldout_nll", s->nll);
            results_set_double(t, "rougeL", s->rouge);
            results_set_double(t, "mmlu", s->mmlu);
            results_set_double(t, "answer_tokens", s->answer_tokens);
            results_set_double(t, "seconds", seconds[i * n_seeds + k]);
            st = results_row_end(t);
        }
    if (st == QLAB_OK) st = results_table_end(t);
    if (st != QLAB_OK) goto done;

    double mean[3][MAX_SETS], half[3][MAX_SETS], rk[3][MAX_SETS];
    for (int i = 0; i < n_sets; i++) {
        double x[3][64];
        for (int k = 0; k < n_seeds; k++) {
            x[0][k] = sc[i * n_seeds + k].nll;
            x[1][k] = sc[i * n_seeds + k].rouge;
            x[2][k] = sc[i * n_seeds + k].mmlu;
        }
        for (int q = 0; q < 3; q++)
            mean_ci(x[q], n_seeds, &mean[q][i], &half[q][i]);
    }
    ranks(mean[0], n_sets, 0, rk[0]);
    ranks(mean[1], n_sets, 1, rk[1]);
    ranks(mean[2], n_sets, 1, rk[2]);
    if ((st = results_table_begin(
             r, &t, "summary",
             "Tables 5/6 on a tiny model: chat target vs MMLU by training set (mean over seeds, "
             "95% t interval; rank 1 = best)")) != QLAB_OK)
        goto done;
    const char *cols[] = {"dataset",   "label",    "records",     "swapped_pct", "rows",
                          "nll",       "nll_ci95", "rougeL",      "rougeL_ci95", "mmlu",
                          "mmlu_ci95", "rank_nll", "rank_rougeL", "rank_mmlu",   "mmlu_questions"};
    for (int c = 0; c < 15; c++)
        results_table_column(t, cols[c],
                             c < 2                ? RESULTS_STRING
                             : (c < 5 || c == 14) ? RESULTS_INT64
                                                  : RESULTS_FLOAT64,
                             NULL, NULL);
    for (int i = -1; i < n_sets && st == QLAB_OK; i++) {
        if (i < 0) {
            results_set_string(t, "dataset", "base");
            results_set_string(t, "label", "no tuning (NF4+DQ base)");
            results_set_int(t, "records", 0);
            results_set_int(t, "swapped_pct", 0);
            results_set_int(t, "rows", 0);
            double v[3] = {base_scores.nll, base_scores.rouge, base_scores.mmlu};
            const char *names[3][2] = {{"nll", "nll_ci95"}, {"rougeL", "rougeL_ci95"}, {"mmlu", "mmlu_ci95"}};
            for (int q = 0; q < 3; q++)
                results_set_double(t, names[q][0], v[q]), results_set_double(t, names[q][1], NAN);
            results_set_double(t, "rank_nll", NAN);
            results_set_double(t, "rank_rougeL", NAN);
            results_set_double(t, "rank_mmlu", NAN);
        } else {
            results_set_string(t, "dataset", sets[i].spec);
            results_set_string(t, "label", sets[i].label);
            results_set_int(t, "records", sets[i].n_records);
            results_set_int(t, "swapped_pct", sets[i].corrupt_pct);
            results_set_int(t, "rows", sets[i].ex.n);
            results_set_double(t, "nll", mean[0][i]);
            results_set_double(t, "nll_ci95", half[0][i]);
            results_set_double(t, "rougeL", mean[1][i]);
            results_set_double(t, "rougeL_ci95", half[1][i]);
            results_set_double(t, "mmlu", mean[2][i]);
            results_set_double(t, "mmlu_ci95", half[2][i]);
            results_set_double(t, "rank_nll", rk[0][i]);
            results_set_double(t, "rank_rougeL", rk[1][i]);
            results_set_double(t, "rank_mmlu", rk[2][i]);
        }
        results_set_int(t, "mmlu_questions", n_mmlu);
        st = results_row_end(t);
    }
    if (st == QLAB_OK) {
        snprintf(
            note, sizeof note,
            "Spearman rank correlation over the training sets: MMLU vs RougeL %.3f, MMLU vs -NLL %.3f, "
            "RougeL vs "
            "-NLL %.3f. Paper's pattern: the chat ranking puts the suitable small set (OASST1) first while "
            "MMLU prefers another set; a correlation near or below 0 says MMLU does not predict the chat "
            "target here either, but with MMLU near chance on this model it predicts nothing at all.",
            spearman(rk[2], rk[1], n_sets), spearman(rk[2], rk[0], n_sets), spearman(rk[1], rk[0], n_sets));
        st = results_table_note(t, note);
    }
    if (st == QLAB_OK) st = results_table_end(t);
    if (st != QLAB_OK) goto done;
    st = results_commit(r);
    r = NULL;
    if (st != QLAB_OK) goto done;
    printf("dataset_quality: wrote %s\n", out_path);
    printf("  %-16s  %-22s  %-22s  %-22s\n", "training set", "held-out NLL", "RougeL", "MMLU");
    printf("  %-16s  %8.4f                %8.4f                %8.4f\n", "base", base_scores.nll,
           base_scores.rouge, base_scores.mmlu);
    for (int i = 0; i < n_sets; i++)
        printf("  %-16s  %8.4f ± %-7.4f (#%.0f)  %8.4f ± %-7.4f (#%.0f)  %8.4f ± %-7.4f (#%.0f)\n",
               sets[i].spec, mean[0][i], half[0][i], rk[0][i], mean[1][i], half[1][i], rk[1][i], mean[2][i],
               half[2][i], rk[2][i]);
done:
    results_abort(r);
    for (int i = 0; i < MAX_SETS && sets; i++)
        instruct_examples_free(&sets[i].ex);
    free(sets);
    free(sc);
    free(seconds);
    free(seeds);
    free(train_idx);
    free(eval_idx);
    instruct_examples_free(&heldout_ex);
    instruct_set_free(&oasst);
    instruct_set_free(&oasst_train);
    instruct_set_free(&oasst_eval);
    model_free(base);
    tokenizer_free(tok);
    return st;
}

int main(int argc, char **argv) {
    qlab_openmp_prefer_passive(argv);
    experiment_args args;
    int early = experiment_parse_args(&args, "dataset_quality", argc, argv, usage);
    if (early >= 0) return early;
    config *cfg = NULL;
    qlab_status st = experiment_load_config(&args, &cfg, config_keys, N_CONFIG_KEYS);
    if (st == QLAB_OK) st = run(cfg, args.out_path, argc, argv);
    config_free(cfg);
    return st == QLAB_OK ? 0 : qlab_report_error("dataset_quality");
}
