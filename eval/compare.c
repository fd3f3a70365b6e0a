/* The model x variant x benchmark grid of compare.h, in steps: size the work (one pass over the
 * checkpoints), then per model load the benchmarks' tokens and fp32 reference logits, and per variant
 * quantize a copy of the model and score it on every benchmark. */
#include "eval/compare.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/progress.h"
#include "core/model/checkpoint.h"
#include "core/model/model.h"
#include "eval/tokens.h"

#define DEFAULT_REFERENCE_BUDGET ((size_t)1 << 30)

void compare_variant_label(const compare_variant *v, char *buf, size_t n) {
    if (!v)
        snprintf(buf, n, "fp32");
    else
        snprintf(buf, n, "%s%s", quant_dtype_name(v->dtype), v->double_quant ? "+dq" : "");
}

ppl_options compare_benchmark_options(const compare_benchmark *b, int seq_len) {
    int ctx = b->ctx < seq_len ? b->ctx : seq_len;
    int stride = b->stride == 0 || b->stride > ctx ? ctx / 2 : b->stride;
    return (ppl_options){
        .protocol = b->protocol, .ctx = ctx, .stride = stride, .max_tokens = b->max_tokens, .quiet = 1};
}

void compare_results_free(compare_results *r) {
    free(r->rows);
    free(r->params);
    memset(r, 0, sizeof *r);
}

/* ---------------------------------------------------------------- one model's benchmarks */

/* A benchmark as one model sees it: its tokens, options and (when it fits) the fp32 reference logits. */
typedef struct {
    int *tokens;
    int64_t n;
    ppl_options opt;
    ppl_reference ref; /* .logits NULL: not cached */
} prepared_benchmark;

static void prepared_free(prepared_benchmark *p, int n) {
    for (int b = 0; p && b < n; b++) {
        free(p[b].tokens);
        ppl_reference_free(&p[b].ref);
    }
    free(p);
}

/* The benchmark text encoded with the model's tokenizer (BOS first); every id must fit the model. */
static qlab_status load_benchmark_tokens(const char *text, const char *tokenizer_path, int vocab_size,
                                         int **ids, int64_t *n) {
    QLAB_TRY(eval_load_tokens(text, NULL, tokenizer_path, ids, n));
    for (int64_t i = 0; i < *n; i++)
        if ((*ids)[i] < 0 || (*ids)[i] >= vocab_size) {
            qlab_status st = qlab_fail(QLAB_ERR_FORMAT,
                                       "%s: token id %d (from %s) is outside the model's "
                                       "vocabulary of %d",
                                       text, (*ids)[i], tokenizer_path, vocab_size);
            free(*ids);
            *ids = NULL;
            return st;
        }
    return QLAB_OK;
}

/* Tokens and options of every benchmark for model `spec` (the fp32 references come later, per pass). */
static qlab_status prepare_benchmarks(model *ref, const compare_model *spec,
                                      const compare_benchmark *benchmarks, int n_benchmarks,
                                      prepared_benchmark *out) {
    const model_config *mc = model_get_config(ref);
    for (int b = 0; b < n_benchmarks; b++) {
        prepared_benchmark *p = &out[b];
        /* A window longer than the model's context is refused (as qlab ppl --ctx does), not silently
         * shortened: the results would otherwise report a ctx the config did not ask for. */
        if (benchmarks[b].ctx > mc->seq_len)
            return qlab_fail(QLAB_ERR_ARG,
                             "benchmarks.%s: key 'ctx' is %d but model %s (%s) has a context of %d tokens; "
                             "lower 'ctx' to at most %d",
                             benchmarks[b].name, benchmarks[b].ctx, spec->name, spec->checkpoint, mc->seq_len,
                             mc->seq_len);
        if (load_benchmark_tokens(benchmarks[b].text, spec->tokenizer, mc->vocab_size, &p->tokens, &p->n) !=
            QLAB_OK)
            return qlab_fail_context(QLAB_ERR_ARG, "model %s, benchmark %s", spec->name, benchmarks[b].name);
        p->opt = compare_benchmark_options(&benchmarks[b], mc->seq_len);
    }
    return QLAB_OK;
}

/* The fp32 reference logits of benchmarks [b0, b1) (all of which fit the budget together). */
static qlab_status compute_references(model *ref, const compare_model *spec,
                                      const compare_benchmark *benchmarks, int b0, int b1,
                                      prepared_benchmark *prepared) {
    for (int b = b0; b < b1; b++)
        if (ppl_reference_compute(ref, prepared[b].tokens, prepared[b].n, &prepared[b].opt,
                                  &prepared[b].ref) != QLAB_OK)
            return qlab_fail_context(QLAB_ERR_NUMERIC, "model %s, fp32 reference, benchmark %s", spec->name,
                                     benchmarks[b].name);
    return QLAB_OK;
}

/* ---------------------------------------------------------------- the grid */

typedef struct {
    const compare_model *models;
    const compare_variant *variants;
    const compare_benchmark *benchmarks;
    int n_models, n_variants, n_benchmarks;
    qlab_compute compute;
    compare_results *out;
    progress prog;
    int64_t total_work, done_work;
} grid_run;

/* Work units for the ETA: every forward pass costs about params x tokens; a quantized row runs the
 * reference too. One pass over the checkpoints reads each model's size. */
static qlab_status size_the_work(grid_run *g) {
    g->total_work = 0;
    for (int m = 0; m < g->n_models; m++) {
        model *ref = NULL;
        QLAB_TRY(checkpoint_load(g->models[m].checkpoint, &ref));
        g->out->params[m] = (int64_t)model_num_params(model_get_config(ref));
        model_free(ref);
        for (int b = 0; b < g->n_benchmarks; b++) {
            int64_t tokens = g->benchmarks[b].max_tokens;
            g->total_work +=
                (g->out->params[m] / 1000 + 1) * (tokens ? tokens : 100000) / 1000 * (1 + g->n_variants);
        }
    }
    return QLAB_OK;
}

/* Weights of the seven projections (the part that is quantized). */
static int64_t projection_params(const model *m) {
    int64_t n = 0;
    for (int p = 0; p < PROJ_COUNT; p++)
        n += (int64_t)model_get_param_group(m, model_proj_get((model_proj)p)->group).count;
    return n;
}

/* Scores `evaluated` (variant v of model m; ref itself when v < 0) on benchmarks [b0, b1), one row each,
 * at row base + (v + 1) * n_benchmarks + b: model by model, fp32 first, then the variants in order, each
 * over the benchmarks in order, whatever order the passes ran in. */
static qlab_status score_variant(grid_run *g, int m, int v, model *ref, model *evaluated,
                                 const prepared_benchmark *prepared, int b0, int b1, int base) {
    const compare_model *spec = &g->models[m];
    int64_t params = g->out->params[m], proj = projection_params(ref), non_proj = params - proj;
    double bits = model_total_bits(evaluated);
    double bits_proj = v >= 0 ? (bits - 32.0 * (double)non_proj) / (double)proj : 32.0;
    char label[64];
    compare_variant_label(v >= 0 ? &g->variants[v] : NULL, label, sizeof label);
    for (int b = b0; b < b1; b++) {
        const prepared_benchmark *p = &prepared[b];
        int cached = v >= 0 && p->ref.logits;
        compare_row *row = &g->out->rows[base + (v + 1) * g->n_benchmarks + b];
        *row = (compare_row){.model = m,
                             .benchmark = b,
                             .variant = v,
                             .params = params,
                             .total_bits = bits,
                             .bits_projections = bits_proj};
        int from_cache = v < 0 && p->ref.logits; /* the fp32 row read from its own cached logits */
        qlab_status st;
        if (from_cache)
            st = ppl_evaluate_reference(&p->ref, model_get_config(ref), p->tokens, p->n, &p->opt, &row->res);
        else if (cached)
            st = ppl_evaluate_cached(evaluated, &p->ref, p->tokens, p->n, &p->opt, &row->res);
        else
            st = ppl_evaluate(evaluated, v >= 0 ? ref : NULL, p->tokens, p->n, &p->opt, &row->res);
        if (st != QLAB_OK)
            return qlab_fail_context(QLAB_ERR_NUMERIC, "model %s, %s, benchmark %s", spec->name, label,
                                     g->benchmarks[b].name);
        if (v < 0) { /* the reference against itself */
            ppl_result *r = &row->res;
            r->has_reference = 1;
            r->kl_mean = r->kl_p50 = r->kl_p90 = r->kl_p99 = r->kl_max = 0;
            r->top1_agree = 1;
            r->dprob_correct = 0;
            r->ref_mean_nll = r->mean_nll;
            r->ref_ppl = r->ppl;
        }
        int64_t tokens = p->opt.max_tokens && p->opt.max_tokens < p->n ? p->opt.max_tokens : p->n;
        g->done_work += (params / 1000 + 1) * tokens / 1000 * (v >= 0 && !cached ? 2 : 1);
        char extra[200];
        snprintf(extra, sizeof extra, "%s %s %s ppl %.3f", spec->name, g->benchmarks[b].name, label,
                 row->res.ppl);
        progress_update(&g->prog, g->done_work < g->total_work ? g->done_work : g->total_work, extra);
    }
    return QLAB_OK;
}

/* fp32, then every variant of model m. The benchmarks run in passes: each pass holds as many consecutive
 * benchmarks as the budget of reference logits allows (all of them when they fit), computes their fp32
 * references, then quantizes each variant once and scores it on them; a benchmark whose reference alone
 * exceeds the budget is a pass of its own that runs the reference beside each variant. */
static qlab_status run_model(grid_run *g, int m, size_t budget) {
    model *ref = NULL, *q = NULL;
    int nb = g->n_benchmarks, base = g->out->n_rows;
    prepared_benchmark *prepared = qlab_calloc((size_t)nb + 1, sizeof *prepared);
    qlab_status st = prepared ? checkpoint_load(g->models[m].checkpoint, &ref) : QLAB_ERR_NOMEM;
    if (st == QLAB_OK) model_set_compute(ref, g->compute); /* model_clone passes it to the variants */
    if (st == QLAB_OK) st = prepare_benchmarks(ref, &g->models[m], g->benchmarks, nb, prepared);
    if (st == QLAB_OK && g->n_variants == 0) st = score_variant(g, m, -1, ref, ref, prepared, 0, nb, base);
    for (int b0 = 0, b1; st == QLAB_OK && b0 < nb && g->n_variants > 0; b0 = b1) {
        size_t used = 0, bytes;
        for (b1 = b0; b1 < nb; b1++) {
            bytes = ppl_reference_bytes(ref, prepared[b1].n, &prepared[b1].opt);
            if (bytes == 0 || bytes > budget - used) break;
            used += bytes;
        }
        if (b1 == b0)
            b1 = b0 + 1; /* too large for the budget: no cached reference */
        else
            st = compute_references(ref, &g->models[m], g->benchmarks, b0, b1, prepared);
        /* the fp32 rows: from the cached logits when there are some, else their own forward passes */
        if (st == QLAB_OK) st = score_variant(g, m, -1, ref, ref, prepared, b0, b1, base);
        for (int v = 0; st == QLAB_OK && v < g->n_variants; v++) {
            const compare_variant *var = &g->variants[v];
            st = model_clone(ref, &q);
            if (st == QLAB_OK) st = model_quantize(q, var->dtype, var->blocksize, var->double_quant);
            if (st == QLAB_OK) st = score_variant(g, m, v, ref, q, prepared, b0, b1, base);
            model_free(q);
            q = NULL;
        }
        for (int b = b0; b < b1; b++)
            ppl_reference_free(&prepared[b].ref);
    }
    if (st == QLAB_OK) g->out->n_rows = base + (g->n_variants + 1) * nb;
    model_free(ref);
    prepared_free(prepared, nb);
    return st;
}

qlab_status compare_run(const compare_model *models, int n_models, const compare_variant *variants,
                        int n_variants, const compare_benchmark *benchmarks, int n_benchmarks,
                        const compare_options *opt, compare_results *out) {
    memset(out, 0, sizeof *out);
    if (n_models < 0 || n_variants < 0 || n_benchmarks < 0)
        return qlab_fail(QLAB_ERR_ARG, "compare_run: negative count");
    grid_run g = {.models = models,
                  .variants = variants,
                  .benchmarks = benchmarks,
                  .n_models = n_models,
                  .n_variants = n_variants,
                  .n_benchmarks = n_benchmarks,
                  .compute = opt ? opt->compute : QLAB_COMPUTE_FP32,
                  .out = out};
    out->rows = qlab_calloc((size_t)n_models * (size_t)n_benchmarks * (size_t)(n_variants + 1) + 1,
                            sizeof *out->rows);
    out->params = qlab_calloc((size_t)n_models + 1, sizeof *out->params);
    qlab_status st = out->rows && out->params ? size_the_work(&g) : QLAB_ERR_NOMEM;
    if (st == QLAB_OK) {
        size_t budget = opt && opt->reference_budget ? opt->reference_budget : DEFAULT_REFERENCE_BUDGET;
        progress_begin(&g.prog, opt && opt->label ? opt->label : "compare",
                       g.total_work > 0 ? g.total_work : 1);
        for (int m = 0; st == QLAB_OK && m < n_models; m++)
            st = run_model(&g, m, budget);
        if (st == QLAB_OK) progress_end(&g.prog, NULL);
    }
    if (st != QLAB_OK) compare_results_free(out);
    return st;
}
