/* 4-bit data types on perplexity benchmarks (QLoRA Table 2 and Figure 3; ../shared/docs/PAPER.md): every
 * model of a family (the embedded zoo by default, or real checkpoints) is quantized to every 4-bit data
 * type, with and without double quantization, and evaluated against its own fp32 reference on each text
 * benchmark: perplexity with a confidence interval, KL divergence from fp32, top-1 agreement, and the
 * total bits the model is stored in. One HDF5 file; `qlab report` makes the Markdown and the figure. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "core/model/checkpoint.h"
#include "core/base/common.h"
#include "core/results/config.h"
#include "core/model/model.h"
#include "eval/ppl.h"
#include "core/base/progress.h"
#include "core/quant/quant.h"
#include "core/results/results.h"
#include "core/text/tokenizer.h"
#include "eval/tokens.h"
#include "train/zoo_manifest.h"

static const config_key config_keys[] = {
    {"zoo", CONFIG_STRING, "\"models/zoo\"",
     "folder of the cached embedded family (`make zoo`); \"\" = none"},
    {"models", CONFIG_OBJECT, "{}",
     "more models: {name: {\"path\": checkpoint (llama2.c .bin, GGUF or HF folder), \"tokenizer\": file}}; "
     "absent files are skipped with a note"},
    {"benchmarks", CONFIG_OBJECT, NULL,
     "{name: {\"text\": [candidate paths, first present wins; \"zoo-heldout\" = the zoo's held-out text], "
     "\"protocol\": \"nonoverlap\"|\"sliding\", \"ctx\", \"stride\", \"max_tokens\"}}"},
    {"dtypes", CONFIG_STRING_ARRAY,
     "[\"nf4\", \"fp4\", \"fp4_e2m1\", \"fp4_e3m0\", \"int4\", \"af4\", \"mxfp4\", \"nvfp4\", \"iq4_nl\"]",
     "4-bit data types (mxfp4/nvfp4/iq4_nl run at their own block size, without DQ)"},
    {"blocksize", CONFIG_INT, "64", "block size of the absmax data types"},
    {"double_quant", CONFIG_INT_ARRAY, "[0, 1]", "0: fp32 block constants, 1: double-quantized constants"},
    {"seed", CONFIG_INT, "1234", "recorded for provenance (quantization and evaluation are deterministic)"},
};
#define N_CONFIG_KEYS ((int)(sizeof config_keys / sizeof config_keys[0]))

static const config_key model_entry_keys[] = {
    {"path", CONFIG_STRING, NULL, "checkpoint: llama2.c .bin, GGUF, or a Hugging Face folder"},
    {"tokenizer", CONFIG_STRING, NULL, "tokenizer.bin or tokenizer.json"},
};
static const config_key benchmark_keys[] = {
    {"text", CONFIG_STRING_ARRAY, NULL, "candidate text files; the first that exists is used"},
    {"protocol", CONFIG_STRING, "\"nonoverlap\"", "nonoverlap (llama.cpp) or sliding (Hugging Face)"},
    {"ctx", CONFIG_INT, "256", "window length (capped at each model's seq_len)"},
    {"stride", CONFIG_INT, "0", "sliding only: window advance (0 = ctx / 2)"},
    {"max_tokens", CONFIG_INT, "16384", "evaluate at most this many tokens of the text (0 = all)"},
};

/* The paper's Table 2: mean Pile Common Crawl perplexity over 125M-13B OPT, BLOOM, LLaMA and Pythia
 * models, block size 64. Its "FP4 (E2M1)" row is bitsandbytes' FP4 (our "fp4"). */
typedef struct {
    const char *dtype;
    int double_quant;
    const char *label;
    double ppl;
} paper_entry;
static const paper_entry paper_table2[] = {
    {"int4", 0, "Int4", 34.34},
    {"fp4", 0, "Float4 (E2M1)", 31.07},
    {"fp4_e3m0", 0, "Float4 (E3M0)", 29.48},
    {"nf4", 1, "NFloat4 + DQ", 27.41},
};
#define N_PAPER ((int)(sizeof paper_table2 / sizeof paper_table2[0]))

typedef struct {
    char name[128];
    char *path, *tokenizer_path;
    int64_t params;
} model_spec;

typedef struct {
    const char *name;
    config *cfg;
    const char *text_path; /* NULL: skipped */
    int from_zoo;          /* the text is the zoo's held-out split */
    ppl_protocol protocol;
} benchmark_spec;

typedef struct {
    quant_dtype dtype;
    int double_quant, blocksize; /* dtype QUANT_COUNT-like sentinel not used: fp32 is variant -1 */
} variant;

/* One evaluated row, kept for the summary tables. */
typedef struct {
    int model, benchmark, variant; /* variant -1 = fp32 */
    int64_t params;
    double total_bits, bits_projections, ppl, ppl_lo, ppl_hi, kl_mean, top1_agree;
} row_record;

static const char *first_present(const config *b) {
    for (int i = 0; i < config_array_length(b, "text"); i++) {
        const char *p = config_string_at(b, "text", i);
        if (!strcmp(p, "zoo-heldout") || access(p, R_OK) == 0) return p;
    }
    return NULL;
}

static void variant_label(const variant *v, char *buf, size_t n) {
    if (!v)
        snprintf(buf, n, "fp32");
    else
        snprintf(buf, n, "%s%s", quant_dtype_name(v->dtype), v->double_quant ? "+dq" : "");
}

/* ---------------------------------------------------------------- configuration */

static qlab_status collect_models(const config *cfg, results *r, model_spec **out, int *count) {
    const char *zoo_dir = config_string(cfg, "zoo");
    zoo_manifest zm = {0};
    if (zoo_dir[0]) QLAB_TRY(zoo_manifest_load(zoo_dir, 1, &zm));
    const cJSON *extra = config_object(cfg, "models"), *item;
    int cap = zm.n_models + cJSON_GetArraySize(extra), n = 0;
    model_spec *specs = qlab_calloc((size_t)(cap > 0 ? cap : 1), sizeof *specs);
    qlab_status st = specs ? QLAB_OK : QLAB_ERR_NOMEM;
    for (int i = 0; st == QLAB_OK && i < zm.n_models; i++) {
        model_spec *s = &specs[n++];
        snprintf(s->name, sizeof s->name, "%s", zm.models[i].name);
        s->path = strdup(zm.models[i].path);
        s->tokenizer_path = strdup(zm.tokenizer_path);
        if (!s->path || !s->tokenizer_path) st = qlab_fail(QLAB_ERR_NOMEM, "out of memory");
    }
    cJSON_ArrayForEach(item, extra) {
        if (st != QLAB_OK) break;
        char origin[600];
        snprintf(origin, sizeof origin, "%s: models.%s", config_path(cfg), item->string);
        char *text = cJSON_PrintUnformatted(item);
        config *m = NULL;
        st = text ? config_parse(&m, text, origin, model_entry_keys, 2, NULL, 0) : QLAB_ERR_NOMEM;
        cJSON_free(text);
        if (st != QLAB_OK) break;
        const char *path = config_string(m, "path"), *tok = config_string(m, "tokenizer");
        if (access(path, R_OK) != 0 || access(tok, R_OK) != 0) {
            char note[1400];
            snprintf(note, sizeof note, "model %s skipped: %s not found", item->string,
                     access(path, R_OK) != 0 ? path : tok);
            fprintf(stderr, "nf4_vs_fp4: %s\n", note);
            char key[200];
            snprintf(key, sizeof key, "model_skipped_%s", item->string);
            st = results_note(r, key, note);
        } else {
            model_spec *s = &specs[n++];
            snprintf(s->name, sizeof s->name, "%s", item->string);
            s->path = strdup(path);
            s->tokenizer_path = strdup(tok);
            if (!s->path || !s->tokenizer_path) st = qlab_fail(QLAB_ERR_NOMEM, "out of memory");
        }
        config_free(m);
    }
    zoo_manifest_free(&zm);
    if (st == QLAB_OK && n == 0)
        st = qlab_fail(QLAB_ERR_ARG, "%s: no model to evaluate (set 'zoo' or list present 'models')",
                       config_path(cfg));
    *out = specs;
    *count = n;
    return st;
}

static qlab_status collect_benchmarks(const config *cfg, results *r, benchmark_spec **out, int *count) {
    const cJSON *obj = config_object(cfg, "benchmarks"), *item;
    int n = 0;
    benchmark_spec *b = qlab_calloc((size_t)cJSON_GetArraySize(obj) + 1, sizeof *b);
    if (!b) return QLAB_ERR_NOMEM;
    *out = b;
    cJSON_ArrayForEach(item, obj) {
        char origin[600];
        snprintf(origin, sizeof origin, "%s: benchmarks.%s", config_path(cfg), item->string);
        char *text = cJSON_PrintUnformatted(item);
        benchmark_spec *s = &b[n];
        qlab_status st =
            text ? config_parse(&s->cfg, text, origin, benchmark_keys, 5, NULL, 0) : QLAB_ERR_NOMEM;
        cJSON_free(text);
        if (st != QLAB_OK) return st;
        n++;
        *count = n;
        s->name = item->string;
        const char *protocol = config_string(s->cfg, "protocol");
        if (!strcmp(protocol, "nonoverlap"))
            s->protocol = PPL_NONOVERLAP;
        else if (!strcmp(protocol, "sliding"))
            s->protocol = PPL_SLIDING;
        else
            return qlab_fail(QLAB_ERR_ARG, "%s: protocol must be \"nonoverlap\" or \"sliding\", got \"%s\"",
                             origin, protocol);
        int64_t ctx = config_int(s->cfg, "ctx"), stride = config_int(s->cfg, "stride"),
                max_tokens = config_int(s->cfg, "max_tokens");
        if (ctx < 4 || ctx > 1 << 20 || stride < 0 || stride > ctx || max_tokens < 0)
            return qlab_fail(QLAB_ERR_ARG, "%s: need 4 <= ctx <= 2^20, 0 <= stride <= ctx, max_tokens >= 0",
                             origin);
        s->text_path = first_present(s->cfg);
        if (s->text_path && !strcmp(s->text_path, "zoo-heldout")) {
            if (!config_string(cfg, "zoo")[0]) {
                s->text_path = NULL;
            } else {
                s->from_zoo = 1;
            }
        }
        if (!s->text_path) {
            char note[2048];
            int len = snprintf(note, sizeof note, "benchmark %s skipped: none of its texts is present (",
                               item->string);
            for (int i = 0; i < config_array_length(s->cfg, "text") && len < (int)sizeof note - 8; i++)
                len += snprintf(note + len, sizeof note - (size_t)len, "%s%s", i ? ", " : "",
                                config_string_at(s->cfg, "text", i));
            if (len < (int)sizeof note - 2) snprintf(note + len, sizeof note - (size_t)len, ")");
            fprintf(stderr, "nf4_vs_fp4: %s\n", note);
            char key[200];
            snprintf(key, sizeof key, "benchmark_skipped_%s", item->string);
            QLAB_TRY(results_note(r, key, note));
        }
    }
    return QLAB_OK;
}

static qlab_status build_variants(const config *cfg, variant **out, int *count) {
    int nt = config_array_length(cfg, "dtypes"), nd = config_array_length(cfg, "double_quant");
    int64_t bs = config_int(cfg, "blocksize");
    if (bs < 1 || bs > (1 << 20))
        return qlab_fail(QLAB_ERR_ARG, "%s: blocksize %lld out of range", config_path(cfg), (long long)bs);
    variant *v = qlab_calloc((size_t)(nt * 2 + 1), sizeof *v);
    if (!v) return QLAB_ERR_NOMEM;
    *out = v;
    int n = 0;
    for (int i = 0; i < nt; i++) {
        quant_dtype dt;
        qlab_status st = quant_dtype_parse(config_string_at(cfg, "dtypes", i), &dt);
        if (st != QLAB_OK) return qlab_fail_context(st, "%s: key 'dtypes'", config_path(cfg));
        if (!quant_dtype_has_fp32_absmax(dt)) {
            v[n++] = (variant){dt, 0, quant_default_blocksize(dt)};
            continue;
        }
        st = quant_check_blocksize(dt, (int)bs);
        if (st != QLAB_OK) return qlab_fail_context(st, "%s: key 'blocksize'", config_path(cfg));
        int seen[2] = {0, 0};
        for (int d = 0; d < nd; d++) {
            int64_t dq = config_int_at(cfg, "double_quant", d);
            if (dq != 0 && dq != 1)
                return qlab_fail(QLAB_ERR_ARG, "%s: 'double_quant' entries must be 0 or 1", config_path(cfg));
            if (seen[dq]++) continue;
            v[n++] = (variant){dt, (int)dq, (int)bs};
        }
    }
    *count = n;
    return QLAB_OK;
}

/* ---------------------------------------------------------------- results tables */

static const char *run_columns_f64[] = {"total_bits", "bits_per_param_projections",
                                        "ppl",        "ppl_lo",
                                        "ppl_hi",     "mean_nll",
                                        "kl_mean",    "kl_p99",
                                        "top1_agree", "dprob_correct"};
#define N_RUN_F64 10

static qlab_status declare_runs(results_table *t) {
    QLAB_TRY(results_table_column(t, "model", RESULTS_STRING, NULL, NULL));
    QLAB_TRY(results_table_column(t, "params", RESULTS_INT64, NULL, "parameters"));
    QLAB_TRY(results_table_column(t, "benchmark", RESULTS_STRING, NULL, NULL));
    QLAB_TRY(
        results_table_column(t, "protocol", RESULTS_STRING, NULL, "nonoverlap (llama.cpp) or sliding (HF)"));
    QLAB_TRY(results_table_column(t, "ctx", RESULTS_INT64, "tokens", "window length"));
    QLAB_TRY(results_table_column(t, "stride", RESULTS_INT64, "tokens", "window advance"));
    QLAB_TRY(results_table_column(t, "n_scored", RESULTS_INT64, "tokens", "predictions scored"));
    QLAB_TRY(results_table_column(t, "dtype", RESULTS_STRING, NULL, "fp32 or the 4-bit data type"));
    QLAB_TRY(
        results_table_column(t, "double_quant", RESULTS_INT64, NULL, "1: block constants double-quantized"));
    QLAB_TRY(results_table_column(t, "blocksize", RESULTS_INT64, "weights", "0 for fp32"));
    const char *units[N_RUN_F64] = {"bits",       "bits",       NULL,         NULL, NULL,
                                    "nats/token", "nats/token", "nats/token", NULL, NULL};
    const char *desc[N_RUN_F64] = {
        "whole model as stored: fp32 embeddings, norms, classifier + quantized projections",
        "stored bits of the 7 projections per block / their weights",
        "perplexity exp(mean_nll)",
        "95% interval, low",
        "95% interval, high",
        "mean negative log-likelihood",
        "mean KL(p_fp32 || p_quantized) per token",
        "99th percentile of the per-token KL",
        "share of positions where the argmax matches fp32",
        "mean p(correct) - p_fp32(correct)"};
    for (int i = 0; i < N_RUN_F64; i++)
        QLAB_TRY(results_table_column(t, run_columns_f64[i], RESULTS_FLOAT64, units[i], desc[i]));
    return QLAB_OK;
}

typedef struct {
    const char *model, *benchmark, *dtype;
    int64_t params;
    int double_quant, blocksize;
    double total_bits, bits_projections;
    const ppl_result *res;
    int is_reference;
} run_row;

static qlab_status add_run(results_table *t, const run_row *row) {
    const ppl_result *r = row->res;
    QLAB_TRY(results_set_string(t, "model", row->model));
    QLAB_TRY(results_set_int(t, "params", row->params));
    QLAB_TRY(results_set_string(t, "benchmark", row->benchmark));
    QLAB_TRY(results_set_string(t, "protocol", r->protocol_name));
    QLAB_TRY(results_set_int(t, "ctx", r->ctx));
    QLAB_TRY(results_set_int(t, "stride", r->stride));
    QLAB_TRY(results_set_int(t, "n_scored", r->n_scored));
    QLAB_TRY(results_set_string(t, "dtype", row->dtype));
    QLAB_TRY(results_set_int(t, "double_quant", row->double_quant));
    QLAB_TRY(results_set_int(t, "blocksize", row->blocksize));
    /* The reference's distance from itself is exactly zero (and agreement one) by definition. */
    double values[N_RUN_F64] = {row->total_bits,
                                row->bits_projections,
                                r->ppl,
                                r->ppl_lo,
                                r->ppl_hi,
                                r->mean_nll,
                                row->is_reference ? 0 : r->kl_mean,
                                row->is_reference ? 0 : r->kl_p99,
                                row->is_reference ? 1 : r->top1_agree,
                                row->is_reference ? 0 : r->dprob_correct};
    for (int i = 0; i < N_RUN_F64; i++)
        QLAB_TRY(results_set_double(t, run_columns_f64[i], values[i]));
    return results_row_end(t);
}

static int compare_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Table 2: per benchmark and data type, the mean over models of perplexity (and KL), the rank, and the
 * paper's value where it has one. Only models evaluated on every variant of that benchmark count. */
static qlab_status write_table2(results *r, const row_record *rows, int nrows, const variant *variants,
                                int nvariants, const benchmark_spec *benchmarks, int nbench, int nmodels) {
    results_table *t;
    QLAB_TRY(
        results_table_begin(r, &t, "table2",
                            "Mean perplexity per data type over the models (QLoRA Table 2 style), beside "
                            "the paper's Table 2"));
    QLAB_TRY(results_table_column(t, "benchmark", RESULTS_STRING, NULL, NULL));
    QLAB_TRY(results_table_column(t, "dtype", RESULTS_STRING, NULL,
                                  "data type (+dq: double-quantized constants)"));
    QLAB_TRY(results_table_column(t, "n_models", RESULTS_INT64, NULL, "models averaged"));
    QLAB_TRY(results_table_column(t, "mean_ppl", RESULTS_FLOAT64, NULL, "mean perplexity over the models"));
    QLAB_TRY(results_table_column(t, "mean_kl", RESULTS_FLOAT64, "nats/token",
                                  "mean KL from fp32 over the models"));
    QLAB_TRY(
        results_table_column(t, "mean_bits_per_param", RESULTS_FLOAT64, "bits", "total bits / params, mean"));
    QLAB_TRY(results_table_column(t, "rank", RESULTS_INT64, NULL,
                                  "1 = lowest mean perplexity among the 4-bit rows (0: fp32)"));
    QLAB_TRY(
        results_table_column(t, "rank_of_paper_rows", RESULTS_INT64, NULL,
                             "rank among the four data types of the paper's Table 2 (0: not one of them)"));
    QLAB_TRY(
        results_table_column(t, "paper_rank", RESULTS_INT64, NULL, "the paper's rank of that row (0: none)"));
    QLAB_TRY(results_table_column(
        t, "paper_ppl", RESULTS_FLOAT64, NULL,
        "paper Table 2: mean Pile CC perplexity, 125M-13B models (n/a: not in the paper)"));
    QLAB_TRY(results_table_note(
        t,
        "The paper's numbers are mean Pile Common Crawl perplexities of OPT, BLOOM, LLaMA and Pythia models "
        "(125M to 13B parameters); ours are means over much smaller models on other text, so only the ranks "
        "are comparable, not the absolute values."));
    QLAB_TRY(results_table_note(
        t, "The paper's 'Float4 (E2M1)' row is bitsandbytes' FP4 (our fp4, values up to 12 with its own "
           "bias); our fp4_e2m1 is the OCP E2M1 value set (up to 6). The paper's Int4, FP4 and FP4 (E3M0) "
           "rows are compared with our rows without DQ, its NFloat4 + DQ with nf4+dq."));
    for (int b = 0; b < nbench; b++) {
        if (!benchmarks[b].text_path) continue;
        /* Models with every variant on this benchmark. */
        int *complete = qlab_calloc((size_t)nmodels + 1, sizeof(int));
        double *mean_ppl = qlab_calloc((size_t)nvariants + 1, sizeof(double));
        if (!complete || !mean_ppl) {
            free(complete), free(mean_ppl);
            return QLAB_ERR_NOMEM;
        }
        for (int m = 0; m < nmodels; m++) {
            int have = 0;
            for (int i = 0; i < nrows; i++)
                if (rows[i].model == m && rows[i].benchmark == b) have++;
            complete[m] = have == nvariants + 1;
        }
        int n_complete = 0;
        for (int m = 0; m < nmodels; m++)
            n_complete += complete[m];
        if (n_complete == 0) {
            free(complete), free(mean_ppl);
            continue;
        }
        double paper_sorted[N_PAPER];
        for (int k = 0; k < N_PAPER; k++)
            paper_sorted[k] = paper_table2[k].ppl;
        qsort(paper_sorted, N_PAPER, sizeof(double), compare_double);
        for (int v = -1; v < nvariants; v++) {
            double ppl = 0;
            for (int i = 0; i < nrows; i++)
                if (rows[i].benchmark == b && rows[i].variant == v && complete[rows[i].model])
                    ppl += rows[i].ppl;
            mean_ppl[v + 1] = ppl / n_complete;
        }
        /* Our values of the paper's four rows, for their rank among themselves. */
        double ours_paper[N_PAPER];
        int paper_variant[N_PAPER];
        for (int k = 0; k < N_PAPER; k++) {
            ours_paper[k] = NAN;
            paper_variant[k] = -2;
            for (int v = 0; v < nvariants; v++)
                if (!strcmp(quant_dtype_name(variants[v].dtype), paper_table2[k].dtype) &&
                    variants[v].double_quant == paper_table2[k].double_quant) {
                    ours_paper[k] = mean_ppl[v + 1];
                    paper_variant[k] = v;
                }
        }
        for (int v = -1; v < nvariants; v++) {
            double kl = 0, bits_per_param = 0;
            for (int i = 0; i < nrows; i++)
                if (rows[i].benchmark == b && rows[i].variant == v && complete[rows[i].model]) {
                    kl += rows[i].kl_mean;
                    bits_per_param += rows[i].total_bits / (double)rows[i].params;
                }
            int rank = 0, rank_paper = 0, paper_rank = 0;
            double paper = NAN;
            if (v >= 0) {
                rank = 1;
                for (int u = 0; u < nvariants; u++)
                    if (mean_ppl[u + 1] < mean_ppl[v + 1]) rank++;
                for (int k = 0; k < N_PAPER; k++)
                    if (paper_variant[k] == v) {
                        paper = paper_table2[k].ppl;
                        rank_paper = 1, paper_rank = 1;
                        for (int j = 0; j < N_PAPER; j++) {
                            if (paper_variant[j] >= 0 && ours_paper[j] < ours_paper[k]) rank_paper++;
                            if (paper_table2[j].ppl < paper_table2[k].ppl) paper_rank++;
                        }
                    }
            }
            char label[64];
            variant_label(v >= 0 ? &variants[v] : NULL, label, sizeof label);
            if (v < 0)
                printf("\n%s: mean over %d models   (paper Table 2: mean Pile CC ppl of 125M-13B models; "
                       "compare "
                       "ranks only)\n  %-12s %10s %12s %5s %12s\n",
                       benchmarks[b].name, n_complete, "dtype", "mean ppl", "mean KL", "rank", "paper ppl");
            char rank_text[16] = "-", paper_text[32] = "";
            if (v >= 0) snprintf(rank_text, sizeof rank_text, "%d", rank);
            if (!isnan(paper)) snprintf(paper_text, sizeof paper_text, "%.2f (rank %d)", paper, paper_rank);
            printf("  %-12s %10.4f %12.3e %5s %16s\n", label, mean_ppl[v + 1], kl / n_complete, rank_text,
                   paper_text);
            QLAB_TRY(results_set_string(t, "benchmark", benchmarks[b].name));
            QLAB_TRY(results_set_string(t, "dtype", label));
            QLAB_TRY(results_set_int(t, "n_models", n_complete));
            QLAB_TRY(results_set_double(t, "mean_ppl", mean_ppl[v + 1]));
            QLAB_TRY(results_set_double(t, "mean_kl", kl / n_complete));
            QLAB_TRY(results_set_double(t, "mean_bits_per_param", bits_per_param / n_complete));
            QLAB_TRY(results_set_int(t, "rank", rank));
            QLAB_TRY(results_set_int(t, "rank_of_paper_rows", rank_paper));
            QLAB_TRY(results_set_int(t, "paper_rank", paper_rank));
            QLAB_TRY(results_set_double(t, "paper_ppl", paper));
            QLAB_TRY(results_row_end(t));
        }
        free(complete), free(mean_ppl);
    }
    return results_table_end(t);
}

/* The data behind Figure 3: rows of one (benchmark, data type) series contiguous and ordered by model size,
 * so a plot draws each data type as one line across the family. */
static qlab_status write_figure_table(results *r, const row_record *rows, int nrows, const variant *variants,
                                      int nvariants, const benchmark_spec *benchmarks, int nbench,
                                      const model_spec *models, int nmodels) {
    results_table *t;
    QLAB_TRY(
        results_table_begin(r, &t, "figure3",
                            "Perplexity and KL from fp32 against total model bits, one series per data type "
                            "across the models (QLoRA Figure 3 style)"));
    QLAB_TRY(results_table_column(t, "benchmark", RESULTS_STRING, NULL, NULL));
    QLAB_TRY(results_table_column(t, "dtype", RESULTS_STRING, NULL, "fp32, or data type (+dq)"));
    QLAB_TRY(results_table_column(t, "double_quant", RESULTS_INT64, NULL, NULL));
    QLAB_TRY(results_table_column(t, "model", RESULTS_STRING, NULL, NULL));
    QLAB_TRY(results_table_column(t, "params", RESULTS_INT64, NULL, NULL));
    QLAB_TRY(results_table_column(t, "total_bits", RESULTS_FLOAT64, "bits", "model as stored"));
    QLAB_TRY(results_table_column(t, "ppl", RESULTS_FLOAT64, NULL, NULL));
    QLAB_TRY(results_table_column(t, "kl_mean", RESULTS_FLOAT64, "nats/token", "mean KL from fp32"));
    /* Models by size. */
    int *order = qlab_calloc((size_t)nmodels + 1, sizeof(int));
    if (!order) return QLAB_ERR_NOMEM;
    for (int i = 0; i < nmodels; i++)
        order[i] = i;
    for (int i = 1; i < nmodels; i++)
        for (int j = i; j > 0 && models[order[j]].params < models[order[j - 1]].params; j--) {
            int x = order[j];
            order[j] = order[j - 1], order[j - 1] = x;
        }
    qlab_status st = QLAB_OK;
    for (int b = 0; b < nbench && st == QLAB_OK; b++)
        for (int v = -1; v < nvariants && st == QLAB_OK; v++)
            for (int k = 0; k < nmodels && st == QLAB_OK; k++)
                for (int i = 0; i < nrows && st == QLAB_OK; i++) {
                    const row_record *row = &rows[i];
                    if (row->benchmark != b || row->variant != v || row->model != order[k]) continue;
                    char label[64];
                    variant_label(v >= 0 ? &variants[v] : NULL, label, sizeof label);
                    if ((st = results_set_string(t, "benchmark", benchmarks[b].name)) == QLAB_OK &&
                        (st = results_set_string(t, "dtype", label)) == QLAB_OK &&
                        (st = results_set_int(t, "double_quant", v >= 0 ? variants[v].double_quant : 0)) ==
                            QLAB_OK &&
                        (st = results_set_string(t, "model", models[row->model].name)) == QLAB_OK &&
                        (st = results_set_int(t, "params", row->params)) == QLAB_OK &&
                        (st = results_set_double(t, "total_bits", row->total_bits)) == QLAB_OK &&
                        (st = results_set_double(t, "ppl", row->ppl)) == QLAB_OK &&
                        (st = results_set_double(t, "kl_mean", row->kl_mean)) == QLAB_OK)
                        st = results_row_end(t);
                }
    free(order);
    QLAB_TRY(st);
    return results_table_end(t);
}

/* One compact table per model: every benchmark and data type. */
static qlab_status write_model_table(results *r, const row_record *rows, int nrows, const variant *variants,
                                     const benchmark_spec *benchmarks, const model_spec *spec,
                                     int model_index) {
    char name[200], title[300];
    snprintf(name, sizeof name, "model_%s", spec->name);
    for (char *c = name; *c; c++) /* table names hold only letters, digits, '_' and '-' */
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '-'))
            *c = '_';
    snprintf(title, sizeof title, "%s (%lld parameters, %s)", spec->name, (long long)spec->params,
             spec->path);
    results_table *t;
    QLAB_TRY(results_table_begin(r, &t, name, title));
    QLAB_TRY(results_table_column(t, "benchmark", RESULTS_STRING, NULL, NULL));
    QLAB_TRY(results_table_column(t, "dtype", RESULTS_STRING, NULL, "fp32, or data type (+dq)"));
    QLAB_TRY(results_table_column(t, "bits_per_param_projections", RESULTS_FLOAT64, "bits", NULL));
    QLAB_TRY(results_table_column(t, "total_bits", RESULTS_FLOAT64, "bits", "model as stored"));
    QLAB_TRY(results_table_column(t, "ppl", RESULTS_FLOAT64, NULL, NULL));
    QLAB_TRY(results_table_column(t, "ppl_lo", RESULTS_FLOAT64, NULL, "95% interval"));
    QLAB_TRY(results_table_column(t, "ppl_hi", RESULTS_FLOAT64, NULL, "95% interval"));
    QLAB_TRY(results_table_column(t, "kl_mean", RESULTS_FLOAT64, "nats/token", "from fp32"));
    QLAB_TRY(results_table_column(t, "top1_agree", RESULTS_FLOAT64, NULL, "with fp32"));
    for (int i = 0; i < nrows; i++) {
        const row_record *row = &rows[i];
        if (row->model != model_index) continue;
        char label[64];
        variant_label(row->variant >= 0 ? &variants[row->variant] : NULL, label, sizeof label);
        QLAB_TRY(results_set_string(t, "benchmark", benchmarks[row->benchmark].name));
        QLAB_TRY(results_set_string(t, "dtype", label));
        QLAB_TRY(results_set_double(t, "bits_per_param_projections", row->bits_projections));
        QLAB_TRY(results_set_double(t, "total_bits", row->total_bits));
        QLAB_TRY(results_set_double(t, "ppl", row->ppl));
        QLAB_TRY(results_set_double(t, "ppl_lo", row->ppl_lo));
        QLAB_TRY(results_set_double(t, "ppl_hi", row->ppl_hi));
        QLAB_TRY(results_set_double(t, "kl_mean", row->kl_mean));
        QLAB_TRY(results_set_double(t, "top1_agree", row->top1_agree));
        QLAB_TRY(results_row_end(t));
    }
    return results_table_end(t);
}

/* ---------------------------------------------------------------- evaluation */

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

/* Weights of the seven projections (the part that is quantized). */
static int64_t projection_params(const model *m) {
    int64_t n = 0;
    for (int g = MODEL_GROUP_WQ; g <= MODEL_GROUP_W3; g++)
        if (g != MODEL_GROUP_RMS_FFN) n += (int64_t)model_get_param_group(m, (model_group)g).count;
    return n;
}

/* A fresh fp32 copy of ref (quantization is in place and cannot be undone). */
static qlab_status copy_model(const model *ref, model **out) {
    QLAB_TRY(model_create(out, model_get_config(ref)));
    size_t n_src, n_dst;
    const float *src = model_get_param_buffer((model *)ref, &n_src);
    float *dst = model_get_param_buffer(*out, &n_dst);
    if (n_src != n_dst) {
        model_free(*out);
        *out = NULL;
        return qlab_fail(QLAB_ERR_ARG, "copy_model: parameter counts differ (%zu vs %zu)", n_src, n_dst);
    }
    memcpy(dst, src, sizeof(float) * n_src);
    return QLAB_OK;
}

static void usage(FILE *f) {
    fprintf(f,
            "Usage: nf4_vs_fp4 [--config FILE.json] [--out RESULTS.h5] [--set key=value ...]\n\n"
            "QLoRA Table 2 / Figure 3: perplexity, KL from fp32 and total bits of every model quantized to\n"
            "every 4-bit data type (with and without DQ) on each benchmark. Defaults: --config\n"
            "experiments/nf4_vs_fp4.json --out results/nf4_vs_fp4.h5. Config keys:\n");
    config_print_keys(config_keys, N_CONFIG_KEYS, f);
    fprintf(f, "Keys of each 'models' entry:\n");
    config_print_keys(model_entry_keys, 2, f);
    fprintf(f, "Keys of each 'benchmarks' entry:\n");
    config_print_keys(benchmark_keys, 5, f);
}

int main(int argc, char **argv) {
    qlab_openmp_prefer_passive(argv);
    experiment_args args;
    int early = experiment_parse_args(&args, "nf4_vs_fp4", argc, argv, usage);
    if (early >= 0) return early;
    const char *config_file = args.config_path, *out_path = args.out_path;
    config *cfg = NULL;
    if (experiment_load_config(&args, &cfg, config_keys, N_CONFIG_KEYS) != QLAB_OK)
        return qlab_report_error("nf4_vs_fp4");

    int rc = 1, nmodels = 0, nbench = 0, nvariants = 0, nrows = 0, rows_cap = 0;
    model_spec *models = NULL;
    benchmark_spec *benchmarks = NULL;
    variant *variants = NULL;
    row_record *rows = NULL;
    results *r = NULL;
    results_table *runs = NULL;
    model *ref = NULL, *q = NULL;
    int **bench_tokens = NULL;
    int64_t *bench_n = NULL;
    ppl_options *bench_opt = NULL;
    ppl_reference *bench_ref = NULL; /* fp32 logits per benchmark, when they fit the memory budget */
    const char *zoo_dir = config_string(cfg, "zoo");
    char zoo_heldout[4096];
    snprintf(zoo_heldout, sizeof zoo_heldout, "%s/%s", zoo_dir, ZOO_HELDOUT_TEXT_FILE);

    if (results_create(&r, out_path, "nf4_vs_fp4", cfg, argc, argv) != QLAB_OK) goto done;
    if (results_attr_int(r, "seed", config_int(cfg, "seed")) != QLAB_OK ||
        results_attr_string(r, "quant_kernel", quant_kernel_name()) != QLAB_OK ||
        results_attr_string(r, "zoo_dir", zoo_dir) != QLAB_OK)
        goto done;
    if (build_variants(cfg, &variants, &nvariants) != QLAB_OK) goto done;
    if (collect_benchmarks(cfg, r, &benchmarks, &nbench) != QLAB_OK) goto done;
    int n_present = 0;
    for (int b = 0; b < nbench; b++)
        n_present += benchmarks[b].text_path != NULL;
    if (n_present == 0) {
        qlab_fail(QLAB_ERR_ARG, "%s: none of the %d benchmarks has its text present", config_file, nbench);
        goto done;
    }
    if (collect_models(cfg, r, &models, &nmodels) != QLAB_OK) goto done;
    rows_cap = nmodels * nbench * (nvariants + 1) + 1;
    rows = qlab_calloc((size_t)rows_cap, sizeof *rows);
    bench_tokens = qlab_calloc((size_t)nbench + 1, sizeof *bench_tokens);
    bench_n = qlab_calloc((size_t)nbench + 1, sizeof *bench_n);
    bench_opt = qlab_calloc((size_t)nbench + 1, sizeof *bench_opt);
    bench_ref = qlab_calloc((size_t)nbench + 1, sizeof *bench_ref);
    if (!rows || !bench_tokens || !bench_n || !bench_opt || !bench_ref) goto done;

    /* Work units for the ETA: every forward pass costs about params x tokens; a quantized row runs the
     * reference too. A first pass reads each model's size. */
    int64_t total_work = 0, done_work = 0;
    for (int m = 0; m < nmodels; m++) {
        if (checkpoint_load(models[m].path, &ref) != QLAB_OK) goto done;
        models[m].params = (int64_t)model_num_params(model_get_config(ref));
        model_free(ref);
        ref = NULL;
        for (int b = 0; b < nbench; b++)
            if (benchmarks[b].text_path) {
                int64_t tokens = config_int(benchmarks[b].cfg, "max_tokens");
                total_work +=
                    (models[m].params / 1000 + 1) * (tokens ? tokens : 100000) / 1000 * (2 + nvariants);
            }
    }
    if (results_table_begin(r, &runs, "runs", "Every (model, benchmark, data type) evaluation") != QLAB_OK ||
        declare_runs(runs) != QLAB_OK)
        goto done;
    progress prog;
    progress_begin(&prog, "nf4_vs_fp4", total_work > 0 ? total_work : 1);

    for (int m = 0; m < nmodels; m++) {
        model_spec *spec = &models[m];
        if (checkpoint_load(spec->path, &ref) != QLAB_OK) goto done;
        const model_config *mc = model_get_config(ref);
        double fp32_bits = model_total_bits(ref);
        int64_t proj = projection_params(ref), non_proj = spec->params - proj;
        size_t cache_budget = (size_t)1 << 30; /* fp32 reference logits kept for all benchmarks */
        for (int b = 0; b < nbench; b++) {
            free(bench_tokens[b]);
            bench_tokens[b] = NULL;
            ppl_reference_free(&bench_ref[b]);
            if (!benchmarks[b].text_path) continue;
            const char *text = benchmarks[b].from_zoo ? zoo_heldout : benchmarks[b].text_path;
            if (load_benchmark_tokens(text, spec->tokenizer_path, mc->vocab_size, &bench_tokens[b],
                                      &bench_n[b]) != QLAB_OK) {
                qlab_fail_context(QLAB_ERR_ARG, "model %s, benchmark %s", spec->name, benchmarks[b].name);
                goto done;
            }
            const benchmark_spec *bs = &benchmarks[b];
            int ctx = (int)config_int(bs->cfg, "ctx");
            if (ctx > mc->seq_len) ctx = mc->seq_len;
            int stride = (int)config_int(bs->cfg, "stride");
            if (stride == 0 || stride > ctx) stride = ctx / 2;
            bench_opt[b] = (ppl_options){.protocol = bs->protocol,
                                         .ctx = ctx,
                                         .stride = stride,
                                         .max_tokens = config_int(bs->cfg, "max_tokens"),
                                         .quiet = 1};
            /* Every quantized variant is compared with the same fp32 logits: compute them once (the
             * numbers are bit-identical to running the reference beside each variant). */
            size_t bytes = ppl_reference_bytes(ref, bench_n[b], &bench_opt[b]);
            if (nvariants > 0 && bytes > 0 && bytes <= cache_budget) {
                if (ppl_reference_compute(ref, bench_tokens[b], bench_n[b], &bench_opt[b], &bench_ref[b]) !=
                    QLAB_OK) {
                    qlab_fail_context(QLAB_ERR_NUMERIC, "model %s, fp32 reference, benchmark %s", spec->name,
                                      bs->name);
                    goto done;
                }
                cache_budget -= bytes;
            }
        }
        for (int v = -1; v < nvariants; v++) {
            model *evaluated = ref;
            double bits = fp32_bits;
            if (v >= 0) {
                if (copy_model(ref, &q) != QLAB_OK ||
                    model_quantize(q, variants[v].dtype, variants[v].blocksize, variants[v].double_quant) !=
                        QLAB_OK)
                    goto done;
                evaluated = q;
                bits = model_total_bits(q);
            }
            double bits_proj = (bits - 32.0 * (double)non_proj) / (double)proj;
            char label[64];
            variant_label(v >= 0 ? &variants[v] : NULL, label, sizeof label);
            for (int b = 0; b < nbench; b++) {
                const benchmark_spec *bs = &benchmarks[b];
                if (!bs->text_path) continue;
                const ppl_options opt = bench_opt[b];
                int cached = v >= 0 && bench_ref[b].logits;
                ppl_result res;
                qlab_status st_eval = cached ? ppl_evaluate_cached(evaluated, &bench_ref[b], bench_tokens[b],
                                                                   bench_n[b], &opt, &res)
                                             : ppl_evaluate(evaluated, v >= 0 ? ref : NULL, bench_tokens[b],
                                                            bench_n[b], &opt, &res);
                if (st_eval != QLAB_OK) {
                    qlab_fail_context(QLAB_ERR_NUMERIC, "model %s, %s, benchmark %s", spec->name, label,
                                      bs->name);
                    goto done;
                }
                run_row row = {spec->name,
                               bs->name,
                               v >= 0 ? quant_dtype_name(variants[v].dtype) : "fp32",
                               spec->params,
                               v >= 0 ? variants[v].double_quant : 0,
                               v >= 0 ? variants[v].blocksize : 0,
                               bits,
                               v >= 0 ? bits_proj : 32.0,
                               &res,
                               v < 0};
                if (add_run(runs, &row) != QLAB_OK) goto done;
                rows[nrows++] = (row_record){m,
                                             b,
                                             v,
                                             spec->params,
                                             bits,
                                             row.bits_projections,
                                             res.ppl,
                                             res.ppl_lo,
                                             res.ppl_hi,
                                             v >= 0 ? res.kl_mean : 0,
                                             v >= 0 ? res.top1_agree : 1};
                int64_t tokens = opt.max_tokens && opt.max_tokens < bench_n[b] ? opt.max_tokens : bench_n[b];
                done_work += (spec->params / 1000 + 1) * tokens / 1000 * (v >= 0 && !cached ? 2 : 1);
                char extra[200];
                snprintf(extra, sizeof extra, "%s %s %s ppl %.3f", spec->name, bs->name, label, res.ppl);
                progress_update(&prog, done_work < total_work ? done_work : total_work, extra);
            }
            model_free(q);
            q = NULL;
        }
        model_free(ref);
        ref = NULL;
    }
    progress_end(&prog, NULL);
    if (results_table_note(runs,
                           "fp32 rows: KL 0, top-1 agreement 1 and dprob 0 by definition (the reference "
                           "itself); total_bits counts every parameter at 32 bits.") != QLAB_OK ||
        results_table_end(runs) != QLAB_OK)
        goto done;
    runs = NULL;
    if (write_table2(r, rows, nrows, variants, nvariants, benchmarks, nbench, nmodels) != QLAB_OK) goto done;
    if (write_figure_table(r, rows, nrows, variants, nvariants, benchmarks, nbench, models, nmodels) !=
        QLAB_OK)
        goto done;
    for (int m = 0; m < nmodels; m++)
        if (write_model_table(r, rows, nrows, variants, benchmarks, &models[m], m) != QLAB_OK) goto done;
    if (results_commit(r) != QLAB_OK) {
        r = NULL;
        goto done;
    }
    r = NULL;
    printf("nf4_vs_fp4: wrote %s (%d models x %d data types x %d benchmarks, %d rows)\n", out_path, nmodels,
           nvariants + 1, n_present, nrows);
    rc = 0;
done:
    if (rc != 0) qlab_report_error("nf4_vs_fp4");
    results_abort(r);
    model_free(q);
    model_free(ref);
    for (int m = 0; m < nmodels; m++) {
        free(models[m].path);
        free(models[m].tokenizer_path);
    }
    free(models);
    for (int b = 0; b < nbench; b++) {
        config_free(benchmarks[b].cfg);
        if (bench_tokens) free(bench_tokens[b]);
        if (bench_ref) ppl_reference_free(&bench_ref[b]);
    }
    free(benchmarks);
    free(bench_tokens);
    free(bench_n);
    free(bench_opt);
    free(bench_ref);
    free(variants);
    free(rows);
    config_free(cfg);
    return rc;
}
