/* The config side and the tables of a quantized-vs-fp32 experiment; see compare_grid.h. */
#include "experiments/harness/compare_grid.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "core/base/sha256.h"
#include "train/zoo_manifest.h"

static const config_key model_entry_keys[] = {
    {"path", CONFIG_STRING, NULL, "checkpoint: llama2.c .bin, GGUF, or a Hugging Face folder"},
    {"tokenizer", CONFIG_STRING, "\"\"", "tokenizer.bin or tokenizer.json; \"\" = the GGUF's own tokenizer"},
    {"fallback_paths", CONFIG_STRING_ARRAY, "[]",
     "where else the checkpoint may be (e.g. where a make fetch-* target puts it), tried in order when "
     "'path' is absent; the one used is said on stderr and in the results"},
    {"note", CONFIG_STRING, "\"\"", "a caveat about this model, printed in the report's notes"},
};
#define N_MODEL_ENTRY_KEYS ((int)(sizeof model_entry_keys / sizeof model_entry_keys[0]))
static const config_key benchmark_keys[] = {
    {"text", CONFIG_STRING_ARRAY, NULL, "candidate text files; the first that exists is used"},
    {"protocol", CONFIG_STRING, "\"nonoverlap\"", "nonoverlap (llama.cpp) or sliding (Hugging Face)"},
    {"ctx", CONFIG_INT, "256", "window length (at most each model's seq_len: longer is refused)"},
    {"stride", CONFIG_INT, "0", "sliding only: window advance (0 = ctx / 2)"},
    {"max_tokens", CONFIG_INT, "16384", "evaluate at most this many tokens of the text (0 = all)"},
};
#define N_BENCHMARK_KEYS ((int)(sizeof benchmark_keys / sizeof benchmark_keys[0]))

void compare_grid_print_entry_keys(FILE *f) {
    fprintf(f, "Keys of each 'models' entry:\n");
    config_print_keys(model_entry_keys, N_MODEL_ENTRY_KEYS, f);
    fprintf(f, "Keys of each 'benchmarks' entry:\n");
    config_print_keys(benchmark_keys, N_BENCHMARK_KEYS, f);
}

/* ---------------------------------------------------------------- reading the grid */

/* A copy of s owned by the grid (NULL when out of memory). */
static const char *keep(compare_grid *g, const char *s) {
    if (g->n_strings == g->cap_strings) {
        int cap = g->cap_strings ? 2 * g->cap_strings : 16;
        char **grown = realloc(g->strings, sizeof *grown * (size_t)cap);
        if (!grown) return NULL;
        g->strings = grown, g->cap_strings = cap;
    }
    char *copy = strdup(s);
    if (copy) g->strings[g->n_strings++] = copy;
    return copy;
}

static qlab_status add_model(compare_grid *g, const char *name, const char *path, const char *tokenizer) {
    compare_model *s = &g->models[g->n_models];
    s->name = keep(g, name);
    s->checkpoint = keep(g, path);
    s->tokenizer = keep(g, tokenizer);
    if (!s->name || !s->checkpoint || !s->tokenizer) return qlab_fail(QLAB_ERR_NOMEM, "out of memory");
    g->n_models++;
    return QLAB_OK;
}

static qlab_status skipped(results *r, const char *program, const char *kind, const char *name,
                           const char *note) {
    fprintf(stderr, "%s: %s\n", program, note);
    char key[200];
    snprintf(key, sizeof key, "%s_skipped_%s", kind, name);
    return results_note(r, key, note);
}

/* One 'models' entry: added when its files are present, else noted as skipped. */
static qlab_status add_listed_model(compare_grid *g, const config *cfg, const cJSON *item, results *r,
                                    const char *program) {
    char origin[600];
    snprintf(origin, sizeof origin, "%s: models.%s", config_path(cfg), item->string);
    char *text = cJSON_PrintUnformatted(item);
    config *m = NULL;
    qlab_status st =
        text ? config_parse(&m, text, origin, model_entry_keys, N_MODEL_ENTRY_KEYS, NULL, 0) : QLAB_ERR_NOMEM;
    cJSON_free(text);
    if (st != QLAB_OK) return st;
    const char *path = config_string(m, "path"), *tok = config_string(m, "tokenizer");
    char key[200];
    for (int i = 0; access(path, R_OK) != 0 && i < config_array_length(m, "fallback_paths"); i++) {
        const char *alt = config_string_at(m, "fallback_paths", i);
        if (access(alt, R_OK) != 0) continue;
        char note[2400];
        snprintf(note, sizeof note, "model %s read from %s (%s is absent)", item->string, alt, path);
        fprintf(stderr, "%s: %s\n", program, note);
        snprintf(key, sizeof key, "model_fallback_%s", item->string);
        if (st == QLAB_OK) st = results_note(r, key, note);
        path = alt;
    }
    if (!tok[0]) tok = path;
    const char *caveat = config_string(m, "note");
    if (st == QLAB_OK && caveat[0]) {
        snprintf(key, sizeof key, "model_note_%s", item->string);
        st = results_note(r, key, caveat);
    }
    if (st != QLAB_OK) {
    } else if (access(path, R_OK) != 0 || access(tok, R_OK) != 0) {
        char note[1400];
        snprintf(note, sizeof note, "model %s skipped: %s not found", item->string,
                 access(path, R_OK) != 0 ? path : tok);
        st = skipped(r, program, "model", item->string, note);
    } else {
        st = add_model(g, item->string, path, tok);
    }
    config_free(m);
    return st;
}

/* The zoo's models (when 'zoo' is set), then every present 'models' entry. */
static qlab_status load_models(compare_grid *g, const config *cfg, results *r, const char *program) {
    const char *zoo_dir = config_string(cfg, "zoo");
    zoo_manifest zm = {0};
    if (zoo_dir[0]) QLAB_TRY(zoo_manifest_load(zoo_dir, 1, &zm));
    const cJSON *extra = config_object(cfg, "models"), *item;
    int cap = zm.n_models + cJSON_GetArraySize(extra);
    g->models = qlab_calloc((size_t)(cap > 0 ? cap : 1), sizeof *g->models);
    qlab_status st = g->models ? QLAB_OK : QLAB_ERR_NOMEM;
    for (int i = 0; st == QLAB_OK && i < zm.n_models; i++)
        st = add_model(g, zm.models[i].name, zm.models[i].path, zm.tokenizer_path);
    cJSON_ArrayForEach(item, extra) {
        if (st != QLAB_OK) break;
        st = add_listed_model(g, cfg, item, r, program);
    }
    zoo_manifest_free(&zm);
    if (st == QLAB_OK && g->n_models == 0)
        st = qlab_fail(QLAB_ERR_ARG, "%s: no model to evaluate (set 'zoo' or list present 'models')",
                       config_path(cfg));
    return st;
}

/* The first of the entry's candidate texts that is present ("zoo-heldout" = the zoo's held-out split,
 * present when 'zoo' is set); NULL if none. */
static const char *first_present(const config *b, const char *zoo_dir, char *buf, size_t cap, int *index) {
    for (int i = 0; i < config_array_length(b, "text"); i++) {
        const char *p = config_string_at(b, "text", i);
        *index = i;
        if (!strcmp(p, "zoo-heldout")) {
            if (!zoo_dir[0]) return NULL;
            snprintf(buf, cap, "%s/%s", zoo_dir, ZOO_HELDOUT_TEXT_FILE);
            return buf;
        }
        if (access(p, R_OK) == 0) return p;
    }
    return NULL;
}

/* A benchmark read from a later candidate than the first is said on stderr and in the results file, so
 * a run on another file is never silent (each row also records the file and its sha256). */
static qlab_status note_fallback(const config *b, const char *name, int index, const char *text, results *r,
                                 const char *program) {
    char note[2048];
    int len =
        snprintf(note, sizeof note, "benchmark %s reads %s (candidate %d); absent: ", name, text, index + 1);
    for (int i = 0; i < index && len < (int)sizeof note - 8; i++)
        len += snprintf(note + len, sizeof note - (size_t)len, "%s%s", i ? ", " : "",
                        config_string_at(b, "text", i));
    fprintf(stderr, "%s: %s\n", program, note);
    char key[200];
    snprintf(key, sizeof key, "benchmark_fallback_%s", name);
    return results_note(r, key, note);
}

static qlab_status note_absent_benchmark(const config *b, const char *name, results *r, const char *program) {
    char note[2048];
    int len = snprintf(note, sizeof note, "benchmark %s skipped: none of its texts is present (", name);
    for (int i = 0; i < config_array_length(b, "text") && len < (int)sizeof note - 8; i++)
        len += snprintf(note + len, sizeof note - (size_t)len, "%s%s", i ? ", " : "",
                        config_string_at(b, "text", i));
    if (len < (int)sizeof note - 2) snprintf(note + len, sizeof note - (size_t)len, ")");
    return skipped(r, program, "benchmark", name, note);
}

/* One 'benchmarks' entry, checked; added when its text is present, else noted as skipped. */
static qlab_status add_benchmark(compare_grid *g, const config *b, const char *origin, const char *name,
                                 const char *zoo_dir, results *r, const char *program) {
    compare_benchmark s = {0};
    const char *protocol = config_string(b, "protocol");
    if (!strcmp(protocol, "nonoverlap"))
        s.protocol = PPL_NONOVERLAP;
    else if (!strcmp(protocol, "sliding"))
        s.protocol = PPL_SLIDING;
    else
        return qlab_fail(QLAB_ERR_ARG, "%s: protocol must be \"nonoverlap\" or \"sliding\", got \"%s\"",
                         origin, protocol);
    int64_t ctx = config_int(b, "ctx"), stride = config_int(b, "stride"),
            max_tokens = config_int(b, "max_tokens");
    if (ctx < 4 || ctx > 1 << 20 || stride < 0 || stride > ctx || max_tokens < 0)
        return qlab_fail(QLAB_ERR_ARG, "%s: need 4 <= ctx <= 2^20, 0 <= stride <= ctx, max_tokens >= 0",
                         origin);
    char heldout[4096], hex[65];
    int index = 0;
    const char *text = first_present(b, zoo_dir, heldout, sizeof heldout, &index);
    if (!text) return note_absent_benchmark(b, name, r, program);
    if (index > 0) QLAB_TRY(note_fallback(b, name, index, text, r, program));
    /* The zoo's held-out text may be absent here: the zoo's own check (load_models) says to run make zoo;
     * a text that cannot be read fails when it is encoded, before any row exists. */
    int hashed = access(text, R_OK) == 0;
    if (hashed && sha256_file_hex(text, hex) != QLAB_OK) return qlab_fail_context(QLAB_ERR_IO, "%s", origin);
    s.name = keep(g, name);
    s.text = keep(g, text);
    s.text_sha256 = hashed ? keep(g, hex) : NULL;
    if (!s.name || !s.text || (hashed && !s.text_sha256)) return qlab_fail(QLAB_ERR_NOMEM, "out of memory");
    s.ctx = (int)ctx, s.stride = (int)stride, s.max_tokens = max_tokens;
    g->benchmarks[g->n_benchmarks++] = s;
    return QLAB_OK;
}

static qlab_status load_benchmarks(compare_grid *g, const config *cfg, results *r, const char *program) {
    const cJSON *obj = config_object(cfg, "benchmarks"), *item;
    g->benchmarks = qlab_calloc((size_t)cJSON_GetArraySize(obj) + 1, sizeof *g->benchmarks);
    if (!g->benchmarks) return QLAB_ERR_NOMEM;
    cJSON_ArrayForEach(item, obj) {
        char origin[600];
        snprintf(origin, sizeof origin, "%s: benchmarks.%s", config_path(cfg), item->string);
        char *text = cJSON_PrintUnformatted(item);
        config *b = NULL;
        qlab_status st =
            text ? config_parse(&b, text, origin, benchmark_keys, N_BENCHMARK_KEYS, NULL, 0) : QLAB_ERR_NOMEM;
        cJSON_free(text);
        if (st == QLAB_OK) {
            g->n_benchmarks_listed++;
            st = add_benchmark(g, b, origin, item->string, config_string(cfg, "zoo"), r, program);
        }
        config_free(b);
        QLAB_TRY(st);
    }
    if (g->n_benchmarks == 0)
        return qlab_fail(QLAB_ERR_ARG, "%s: none of the %d benchmarks has its text present", config_path(cfg),
                         g->n_benchmarks_listed);
    return QLAB_OK;
}

/* Every data type of 'dtypes': the absmax types once per 'double_quant' value at 'blocksize', the
 * fixed-format types once at their own block size without DQ. */
static qlab_status load_variants(compare_grid *g, const config *cfg) {
    int nt = config_array_length(cfg, "dtypes"), nd = config_array_length(cfg, "double_quant");
    int64_t bs = config_int(cfg, "blocksize");
    if (bs < 1 || bs > (1 << 20))
        return qlab_fail(QLAB_ERR_ARG, "%s: key 'blocksize': %lld out of range",
                         config_key_origin(cfg, "blocksize"), (long long)bs);
    compare_variant *v = g->variants = qlab_calloc((size_t)(nt * 2 + 1), sizeof *v);
    if (!v) return QLAB_ERR_NOMEM;
    int n = 0;
    for (int i = 0; i < nt; i++) {
        quant_dtype dt;
        qlab_status st = quant_dtype_parse(config_string_at(cfg, "dtypes", i), &dt);
        if (st != QLAB_OK) return qlab_fail_context(st, "%s: key 'dtypes'", config_key_origin(cfg, "dtypes"));
        if (!quant_dtype_has_fp32_absmax(dt)) {
            v[n++] = (compare_variant){dt, quant_default_blocksize(dt), 0};
            continue;
        }
        st = quant_check_blocksize(dt, (int)bs);
        if (st != QLAB_OK)
            return qlab_fail_context(st, "%s: key 'blocksize'", config_key_origin(cfg, "blocksize"));
        int seen[2] = {0, 0};
        for (int d = 0; d < nd; d++) {
            int64_t dq = config_int_at(cfg, "double_quant", d);
            if (dq != 0 && dq != 1)
                return qlab_fail(QLAB_ERR_ARG, "%s: key 'double_quant': entries must be 0 or 1",
                                 config_key_origin(cfg, "double_quant"));
            if (seen[dq]++) continue;
            v[n++] = (compare_variant){dt, (int)bs, (int)dq};
        }
    }
    g->n_variants = n;
    return QLAB_OK;
}

qlab_status compare_grid_load(compare_grid *g, const config *cfg, results *r, const char *program) {
    memset(g, 0, sizeof *g);
    qlab_status st = load_variants(g, cfg);
    if (st == QLAB_OK) st = load_benchmarks(g, cfg, r, program);
    if (st == QLAB_OK) st = load_models(g, cfg, r, program);
    if (st != QLAB_OK) compare_grid_free(g);
    return st;
}

void compare_grid_free(compare_grid *g) {
    for (int i = 0; i < g->n_strings; i++)
        free(g->strings[i]);
    free(g->strings);
    free(g->models);
    free(g->benchmarks);
    free(g->variants);
    memset(g, 0, sizeof *g);
}

/* ---------------------------------------------------------------- the runs table */

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
    QLAB_TRY(results_table_column(t, "text", RESULTS_STRING, NULL,
                                  "the benchmark file actually read (the first present candidate)"));
    QLAB_TRY(results_table_column(t, "text_sha256", RESULTS_STRING, NULL,
                                  "first 16 hex digits of that file's sha256"));
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

static qlab_status add_run(results_table *t, const compare_grid *g, const compare_row *row) {
    const ppl_result *r = &row->res;
    const compare_variant *v = row->variant >= 0 ? &g->variants[row->variant] : NULL;
    QLAB_TRY(results_set_string(t, "model", g->models[row->model].name));
    QLAB_TRY(results_set_int(t, "params", row->params));
    const compare_benchmark *bench = &g->benchmarks[row->benchmark];
    char sha[17] = "";
    if (bench->text_sha256) snprintf(sha, sizeof sha, "%.16s", bench->text_sha256);
    QLAB_TRY(results_set_string(t, "benchmark", bench->name));
    QLAB_TRY(results_set_string(t, "text", bench->text));
    QLAB_TRY(results_set_string(t, "text_sha256", sha));
    QLAB_TRY(results_set_string(t, "protocol", r->protocol_name));
    QLAB_TRY(results_set_int(t, "ctx", r->ctx));
    QLAB_TRY(results_set_int(t, "stride", r->stride));
    QLAB_TRY(results_set_int(t, "n_scored", r->n_scored));
    QLAB_TRY(results_set_string(t, "dtype", v ? quant_dtype_name(v->dtype) : "fp32"));
    QLAB_TRY(results_set_int(t, "double_quant", v ? v->double_quant : 0));
    QLAB_TRY(results_set_int(t, "blocksize", v ? v->blocksize : 0));
    double values[N_RUN_F64] = {row->total_bits, row->bits_projections, r->ppl,     r->ppl_lo,
                                r->ppl_hi,       r->mean_nll,           r->kl_mean, r->kl_p99,
                                r->top1_agree,   r->dprob_correct};
    for (int i = 0; i < N_RUN_F64; i++)
        QLAB_TRY(results_set_double(t, run_columns_f64[i], values[i]));
    return results_row_end(t);
}

qlab_status compare_grid_write_runs(results *r, const compare_grid *g, const compare_results *res) {
    results_table *t;
    QLAB_TRY(results_table_begin(r, &t, "runs", "Every (model, benchmark, data type) evaluation"));
    QLAB_TRY(declare_runs(t));
    for (int i = 0; i < res->n_rows; i++)
        QLAB_TRY(add_run(t, g, &res->rows[i]));
    QLAB_TRY(results_table_note(t,
                                "fp32 rows: KL 0, top-1 agreement 1 and dprob 0 by definition (the reference "
                                "itself); total_bits counts every parameter at 32 bits."));
    return results_table_end(t);
}

/* ---------------------------------------------------------------- means per data type */

static void label_of(const compare_grid *g, int v, char *buf, size_t n) {
    compare_variant_label(v >= 0 ? &g->variants[v] : NULL, buf, n);
}

/* The means of one benchmark over the models complete on it (rows in order). */
typedef struct {
    int n_complete;
    int *complete;   /* per model: evaluated on every variant of the benchmark */
    double *ppl;     /* [v + 1], v = -1 (fp32) .. n_variants - 1 */
    double *kl;      /* idem */
    double *bits_pp; /* mean total bits / params, idem */
} benchmark_means;

static void means_free(benchmark_means *m) {
    free(m->complete), free(m->ppl), free(m->kl), free(m->bits_pp);
}

static qlab_status compute_means(const compare_grid *g, const compare_results *res, int b,
                                 benchmark_means *m) {
    const compare_row *rows = res->rows;
    int nv = g->n_variants;
    memset(m, 0, sizeof *m);
    m->complete = qlab_calloc((size_t)g->n_models + 1, sizeof(int));
    m->ppl = qlab_calloc((size_t)nv + 1, sizeof(double));
    m->kl = qlab_calloc((size_t)nv + 1, sizeof(double));
    m->bits_pp = qlab_calloc((size_t)nv + 1, sizeof(double));
    if (!m->complete || !m->ppl || !m->kl || !m->bits_pp) {
        means_free(m);
        return QLAB_ERR_NOMEM;
    }
    for (int mi = 0; mi < g->n_models; mi++) {
        int have = 0;
        for (int i = 0; i < res->n_rows; i++)
            if (rows[i].model == mi && rows[i].benchmark == b) have++;
        m->complete[mi] = have == nv + 1;
        m->n_complete += m->complete[mi];
    }
    if (m->n_complete == 0) return QLAB_OK;
    for (int v = -1; v < nv; v++) {
        double ppl = 0, kl = 0, bits_per_param = 0;
        for (int i = 0; i < res->n_rows; i++)
            if (rows[i].benchmark == b && rows[i].variant == v && m->complete[rows[i].model]) {
                ppl += rows[i].res.ppl;
                kl += rows[i].res.kl_mean;
                bits_per_param += rows[i].total_bits / (double)rows[i].params;
            }
        m->ppl[v + 1] = ppl / m->n_complete;
        m->kl[v + 1] = kl / m->n_complete;
        m->bits_pp[v + 1] = bits_per_param / m->n_complete;
    }
    return QLAB_OK;
}

/* Ranks of variant v: among all variants, among our values of the paper's rows, and the paper's own. */
typedef struct {
    int rank, rank_of_paper_rows, paper_rank;
    double paper_ppl;
} variant_rank;

static variant_rank rank_variant(const compare_grid *g, const compare_means_table *spec,
                                 const double *mean_ppl, int v) {
    variant_rank out = {0, 0, 0, NAN};
    if (v < 0) return out;
    out.rank = 1;
    for (int u = 0; u < g->n_variants; u++)
        if (mean_ppl[u + 1] < mean_ppl[v + 1]) out.rank++;
    /* Our values of the paper's rows, for their rank among themselves. */
    int np = spec->n_paper, paper_variant[COMPARE_MAX_PAPER_ROWS];
    double ours[COMPARE_MAX_PAPER_ROWS];
    for (int k = 0; k < np; k++) {
        ours[k] = NAN;
        paper_variant[k] = -2;
        for (int u = 0; u < g->n_variants; u++)
            if (!strcmp(quant_dtype_name(g->variants[u].dtype), spec->paper[k].dtype) &&
                g->variants[u].double_quant == spec->paper[k].double_quant) {
                ours[k] = mean_ppl[u + 1];
                paper_variant[k] = u;
            }
    }
    for (int k = 0; k < np; k++)
        if (paper_variant[k] == v) {
            out.paper_ppl = spec->paper[k].ppl;
            out.rank_of_paper_rows = 1, out.paper_rank = 1;
            for (int j = 0; j < np; j++) {
                if (paper_variant[j] >= 0 && ours[j] < ours[k]) out.rank_of_paper_rows++;
                if (spec->paper[j].ppl < spec->paper[k].ppl) out.paper_rank++;
            }
        }
    return out;
}

static qlab_status declare_means(results *r, results_table **t, const compare_means_table *spec) {
    QLAB_TRY(results_table_begin(r, t, spec->name, spec->title));
    QLAB_TRY(results_table_column(*t, "benchmark", RESULTS_STRING, NULL, NULL));
    QLAB_TRY(results_table_column(*t, "dtype", RESULTS_STRING, NULL,
                                  "data type (+dq: double-quantized constants)"));
    QLAB_TRY(results_table_column(*t, "n_models", RESULTS_INT64, NULL, "models averaged"));
    QLAB_TRY(results_table_column(*t, "mean_ppl", RESULTS_FLOAT64, NULL, "mean perplexity over the models"));
    QLAB_TRY(results_table_column(*t, "mean_kl", RESULTS_FLOAT64, "nats/token",
                                  "mean KL from fp32 over the models"));
    QLAB_TRY(results_table_column(*t, "mean_bits_per_param", RESULTS_FLOAT64, "bits",
                                  "total bits / params, mean"));
    QLAB_TRY(results_table_column(*t, "rank", RESULTS_INT64, NULL,
                                  "1 = lowest mean perplexity among the 4-bit rows (0: fp32)"));
    QLAB_TRY(
        results_table_column(*t, "rank_of_paper_rows", RESULTS_INT64, NULL,
                             "rank among the four data types of the paper's Table 2 (0: not one of them)"));
    QLAB_TRY(results_table_column(*t, "paper_rank", RESULTS_INT64, NULL,
                                  "the paper's rank of that row (0: none)"));
    QLAB_TRY(results_table_column(
        *t, "paper_ppl", RESULTS_FLOAT64, NULL,
        "paper Table 2: mean Pile CC perplexity, 125M-13B models (n/a: not in the paper)"));
    for (const char *const *note = spec->notes; note && *note; note++)
        QLAB_TRY(results_table_note(*t, *note));
    return QLAB_OK;
}

/* Benchmark b's rows of the means table, echoed on stdout. */
static qlab_status write_benchmark_means(results_table *t, const compare_grid *g,
                                         const compare_means_table *spec, int b, const benchmark_means *m) {
    for (int v = -1; v < g->n_variants; v++) {
        variant_rank rk = rank_variant(g, spec, m->ppl, v);
        char label[64];
        label_of(g, v, label, sizeof label);
        if (v < 0)
            printf("\n%s: mean over %d models   (%s)\n  %-12s %10s %12s %5s %12s\n", g->benchmarks[b].name,
                   m->n_complete, spec->heading, "dtype", "mean ppl", "mean KL", "rank", "paper ppl");
        char rank_text[16] = "-", paper_text[32] = "";
        if (v >= 0) snprintf(rank_text, sizeof rank_text, "%d", rk.rank);
        if (!isnan(rk.paper_ppl))
            snprintf(paper_text, sizeof paper_text, "%.2f (rank %d)", rk.paper_ppl, rk.paper_rank);
        printf("  %-12s %10.4f %12.3e %5s %16s\n", label, m->ppl[v + 1], m->kl[v + 1], rank_text, paper_text);
        QLAB_TRY(results_set_string(t, "benchmark", g->benchmarks[b].name));
        QLAB_TRY(results_set_string(t, "dtype", label));
        QLAB_TRY(results_set_int(t, "n_models", m->n_complete));
        QLAB_TRY(results_set_double(t, "mean_ppl", m->ppl[v + 1]));
        QLAB_TRY(results_set_double(t, "mean_kl", m->kl[v + 1]));
        QLAB_TRY(results_set_double(t, "mean_bits_per_param", m->bits_pp[v + 1]));
        QLAB_TRY(results_set_int(t, "rank", rk.rank));
        QLAB_TRY(results_set_int(t, "rank_of_paper_rows", rk.rank_of_paper_rows));
        QLAB_TRY(results_set_int(t, "paper_rank", rk.paper_rank));
        QLAB_TRY(results_set_double(t, "paper_ppl", rk.paper_ppl));
        QLAB_TRY(results_row_end(t));
    }
    return QLAB_OK;
}

qlab_status compare_grid_write_means(results *r, const compare_grid *g, const compare_results *res,
                                     const compare_means_table *spec) {
    if (spec->n_paper < 0 || spec->n_paper > COMPARE_MAX_PAPER_ROWS)
        return qlab_fail(QLAB_ERR_ARG, "table %s: %d paper rows (at most %d)", spec->name, spec->n_paper,
                         COMPARE_MAX_PAPER_ROWS);
    results_table *t;
    QLAB_TRY(declare_means(r, &t, spec));
    for (int b = 0; b < g->n_benchmarks; b++) {
        benchmark_means m;
        QLAB_TRY(compute_means(g, res, b, &m));
        qlab_status st = m.n_complete ? write_benchmark_means(t, g, spec, b, &m) : QLAB_OK;
        means_free(&m);
        QLAB_TRY(st);
    }
    return results_table_end(t);
}

/* ---------------------------------------------------------------- series and per-model tables */

qlab_status compare_grid_write_series(results *r, const compare_grid *g, const compare_results *res,
                                      const char *name, const char *title) {
    results_table *t;
    QLAB_TRY(results_table_begin(r, &t, name, title));
    QLAB_TRY(results_table_column(t, "benchmark", RESULTS_STRING, NULL, NULL));
    QLAB_TRY(results_table_column(t, "dtype", RESULTS_STRING, NULL, "fp32, or data type (+dq)"));
    QLAB_TRY(results_table_column(t, "double_quant", RESULTS_INT64, NULL, NULL));
    QLAB_TRY(results_table_column(t, "model", RESULTS_STRING, NULL, NULL));
    QLAB_TRY(results_table_column(t, "params", RESULTS_INT64, NULL, NULL));
    QLAB_TRY(results_table_column(t, "total_bits", RESULTS_FLOAT64, "bits", "model as stored"));
    QLAB_TRY(results_table_column(t, "ppl", RESULTS_FLOAT64, NULL, NULL));
    QLAB_TRY(results_table_column(t, "kl_mean", RESULTS_FLOAT64, "nats/token", "mean KL from fp32"));
    /* Models by size (stable). */
    int *order = qlab_calloc((size_t)g->n_models + 1, sizeof(int));
    if (!order) return QLAB_ERR_NOMEM;
    for (int i = 0; i < g->n_models; i++)
        order[i] = i;
    for (int i = 1; i < g->n_models; i++)
        for (int j = i; j > 0 && res->params[order[j]] < res->params[order[j - 1]]; j--) {
            int x = order[j];
            order[j] = order[j - 1], order[j - 1] = x;
        }
    qlab_status st = QLAB_OK;
    for (int b = 0; b < g->n_benchmarks && st == QLAB_OK; b++)
        for (int v = -1; v < g->n_variants && st == QLAB_OK; v++)
            for (int k = 0; k < g->n_models && st == QLAB_OK; k++)
                for (int i = 0; i < res->n_rows && st == QLAB_OK; i++) {
                    const compare_row *row = &res->rows[i];
                    if (row->benchmark != b || row->variant != v || row->model != order[k]) continue;
                    char label[64];
                    label_of(g, v, label, sizeof label);
                    if ((st = results_set_string(t, "benchmark", g->benchmarks[b].name)) == QLAB_OK &&
                        (st = results_set_string(t, "dtype", label)) == QLAB_OK &&
                        (st = results_set_int(t, "double_quant", v >= 0 ? g->variants[v].double_quant : 0)) ==
                            QLAB_OK &&
                        (st = results_set_string(t, "model", g->models[row->model].name)) == QLAB_OK &&
                        (st = results_set_int(t, "params", row->params)) == QLAB_OK &&
                        (st = results_set_double(t, "total_bits", row->total_bits)) == QLAB_OK &&
                        (st = results_set_double(t, "ppl", row->res.ppl)) == QLAB_OK &&
                        (st = results_set_double(t, "kl_mean", row->res.kl_mean)) == QLAB_OK)
                        st = results_row_end(t);
                }
    free(order);
    QLAB_TRY(st);
    return results_table_end(t);
}

static qlab_status write_model_table(results *r, const compare_grid *g, const compare_results *res, int m) {
    const compare_model *spec = &g->models[m];
    char name[200], title[300];
    snprintf(name, sizeof name, "model_%s", spec->name);
    for (char *c = name; *c; c++) /* table names hold only letters, digits, '_' and '-' */
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '-'))
            *c = '_';
    snprintf(title, sizeof title, "%s (%lld parameters, %s)", spec->name, (long long)res->params[m],
             spec->checkpoint);
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
    for (int i = 0; i < res->n_rows; i++) {
        const compare_row *row = &res->rows[i];
        if (row->model != m) continue;
        char label[64];
        label_of(g, row->variant, label, sizeof label);
        QLAB_TRY(results_set_string(t, "benchmark", g->benchmarks[row->benchmark].name));
        QLAB_TRY(results_set_string(t, "dtype", label));
        QLAB_TRY(results_set_double(t, "bits_per_param_projections", row->bits_projections));
        QLAB_TRY(results_set_double(t, "total_bits", row->total_bits));
        QLAB_TRY(results_set_double(t, "ppl", row->res.ppl));
        QLAB_TRY(results_set_double(t, "ppl_lo", row->res.ppl_lo));
        QLAB_TRY(results_set_double(t, "ppl_hi", row->res.ppl_hi));
        QLAB_TRY(results_set_double(t, "kl_mean", row->res.kl_mean));
        QLAB_TRY(results_set_double(t, "top1_agree", row->res.top1_agree));
        QLAB_TRY(results_row_end(t));
    }
    return results_table_end(t);
}

qlab_status compare_grid_write_model_tables(results *r, const compare_grid *g, const compare_results *res) {
    for (int m = 0; m < g->n_models; m++)
        QLAB_TRY(write_model_table(r, g, res, m));
    return QLAB_OK;
}
