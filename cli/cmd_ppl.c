/* `qlab ppl`: perplexity of a checkpoint on a text or token file, optionally after quantizing its
 * projections, with the quantized model's distance from the fp32 model on the same tokens. */
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/model/checkpoint.h"
#include "cli/cli.h"
#include "core/base/common.h"
#include "core/model/model.h"
#include "eval/ppl.h"
#include "core/quant/quant.h"
#include "core/text/tokenizer.h"
#include "eval/tokens.h"

static void ppl_usage(FILE *f) {
    fprintf(f,
            "Usage: qlab ppl --model M [--tokenizer T] (--data FILE.txt | --tokens FILE.npy)\n"
            "                [--dtype D [--blocksize B] [--double-quant]] [--ctx N] [--stride S]\n"
            "                [--max-tokens N] [--batch N] [--adapter DIR] [--compute fp32|bf16] [--json]\n\n"
            "Perplexity of model M (llama2.c .bin, GGUF, or a Hugging Face directory).\n"
            "  --data FILE.txt     text, encoded with --tokenizer (a GGUF model's own tokenizer when it is\n"
            "                      omitted), BOS prepended unless a GGUF says add_bos_token false\n"
            "  --tokens FILE.npy   int32 token ids, used exactly as given\n");
    char text[1024];
    snprintf(text, sizeof text,
             "quantize the q,k,v,o,gate,up,down projections to D (%s; 'qlab dtypes' describes them) and "
             "report the distance from the fp32 model: KL divergence, top-1 agreement, change in p(correct)",
             quant_dtype_list(0));
    cli_print_option(f, "  --dtype D", 22, text);
    snprintf(text, sizeof text, "quantization block size (default: the type's); %s",
             quant_blocksize_summary());
    cli_print_option(f, "  --blocksize B", 22, text);
    snprintf(text, sizeof text, "double-quantize the block constants (%s only)", quant_dtype_list(1));
    cli_print_option(f, "  --double-quant", 22, text);
    fprintf(
        f,
        "  --ctx N             window length (default: min(512, model context))\n"
        "  --stride S          Hugging Face sliding-window protocol with stride S; without it, llama.cpp's\n"
        "                      non-overlapping windows scoring the second half of each\n"
        "  --max-tokens N      use only the first N tokens\n"
        "  --batch N           windows per forward pass (default: automatic)\n"
        "  --adapter DIR       LoRA adapters (a PEFT directory such as qlab finetune's output, or a "
        "lora_save\n"
        "                      file) on the fp32 or --dtype base; with --dtype the fp32 reference has them "
        "too\n"
        "  --json              print one JSON object instead of text\n");
    cli_print_option(f, "  --compute C", 22, cli_compute_help());
    cli_print_option(f, "", 22,
                     "(with --dtype the fp32-weight reference computes in the same dtype, so the distance "
                     "measures the 4-bit weights alone)");
}

static void print_text(const char *model_path, const model_config *cfg, const char *data, int64_t n_tokens,
                       const char *qdesc, double bits, qlab_compute c, const ppl_result *r) {
    printf("model        %s (dim %d, %d layers, %d heads / %d kv heads, vocab %d)\n", model_path, cfg->dim,
           cfg->n_layers, cfg->n_heads, cfg->n_kv_heads, cfg->vocab_size);
    printf("data         %s: %lld tokens\n", data, (long long)n_tokens);
    printf("weights      %s, %.4g Mbit in total\n", qdesc, bits / 1e6);
    printf("compute      %s%s%s\n", qlab_compute_name(c), c == QLAB_COMPUTE_BF16 ? " on " : "",
           c == QLAB_COMPUTE_BF16 ? qlab_compute_path_name(c) : "");
    if (!strcmp(r->protocol_name, "sliding"))
        printf("protocol     sliding window, ctx %d, stride %d (Hugging Face)\n", r->ctx, r->stride);
    else
        printf("protocol     non-overlapping windows of %d, second half scored (llama.cpp)\n", r->ctx);
    printf("scored       %lld predictions over %lld tokens\n", (long long)r->n_scored,
           (long long)r->n_tokens_used);
    printf("mean NLL     %.5f nats (standard error %.5f)\n", r->mean_nll, r->nll_stderr);
    printf("perplexity   %.4f  (95%% CI %.4f .. %.4f)\n", r->ppl, r->ppl_lo, r->ppl_hi);
    if (r->has_reference) {
        printf("fp32 ppl     %.4f\n", r->ref_ppl);
        printf("KL(fp32||q)  mean %.6f  p50 %.6f  p90 %.6f  p99 %.6f  max %.6f nats\n", r->kl_mean, r->kl_p50,
               r->kl_p90, r->kl_p99, r->kl_max);
        printf("top-1 agree  %.4f\n", r->top1_agree);
        printf("dp(correct)  %+.6f\n", r->dprob_correct);
    }
}

static void print_json(const char *model_path, const char *data, int64_t n_tokens, const char *dtype, int bs,
                       int dq, double bits, qlab_compute c, const ppl_result *r) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "model", model_path);
    cJSON_AddStringToObject(o, "data", data);
    cJSON_AddNumberToObject(o, "n_tokens", (double)n_tokens);
    cJSON_AddStringToObject(o, "dtype", dtype ? dtype : "fp32");
    if (dtype) {
        cJSON_AddNumberToObject(o, "blocksize", bs);
        cJSON_AddBoolToObject(o, "double_quant", dq);
    }
    cJSON_AddNumberToObject(o, "total_bits", bits);
    cJSON_AddStringToObject(o, "compute", qlab_compute_name(c));
    cJSON_AddStringToObject(o, "bf16_path", qlab_compute_path_name(c));
    cJSON_AddStringToObject(o, "protocol", r->protocol_name);
    cJSON_AddNumberToObject(o, "ctx", r->ctx);
    cJSON_AddNumberToObject(o, "stride", r->stride);
    cJSON_AddNumberToObject(o, "n_scored", (double)r->n_scored);
    cJSON_AddNumberToObject(o, "mean_nll", r->mean_nll);
    cJSON_AddNumberToObject(o, "nll_stderr", r->nll_stderr);
    cJSON_AddNumberToObject(o, "ppl", r->ppl);
    cJSON_AddNumberToObject(o, "ppl_ci95_lo", r->ppl_lo);
    cJSON_AddNumberToObject(o, "ppl_ci95_hi", r->ppl_hi);
    if (r->has_reference) {
        cJSON_AddNumberToObject(o, "ref_ppl", r->ref_ppl);
        cJSON_AddNumberToObject(o, "kl_mean", r->kl_mean);
        cJSON_AddNumberToObject(o, "kl_p50", r->kl_p50);
        cJSON_AddNumberToObject(o, "kl_p90", r->kl_p90);
        cJSON_AddNumberToObject(o, "kl_p99", r->kl_p99);
        cJSON_AddNumberToObject(o, "kl_max", r->kl_max);
        cJSON_AddNumberToObject(o, "top1_agree", r->top1_agree);
        cJSON_AddNumberToObject(o, "dprob_correct", r->dprob_correct);
    }
    char *s = cJSON_PrintUnformatted(o);
    printf("%s\n", s);
    free(s);
    cJSON_Delete(o);
}

typedef struct {
    const char *model_path, *tok_path, *data, *tokens_path, *dtype_name, *adapter;
    long bs, ctx, stride, max_tokens, batch;
    int dq, json;
    quant_dtype dt; /* parsed from dtype_name */
    qlab_compute compute;
} ppl_args;

/* -1 to go on, else the exit status (0 after --help, 2 on a usage error). */
static int parse_ppl_args(int argc, char **argv, ppl_args *p) {
    *p = (ppl_args){.dt = QUANT_NF4};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            ppl_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--double-quant")) {
            p->dq = 1;
        } else if (!strcmp(a, "--json")) {
            p->json = 1;
        } else if (!strncmp(a, "--", 2) && !v) {
            fprintf(stderr, "qlab ppl: %s needs a value\n", a);
            return 2;
        } else if (!strcmp(a, "--model")) {
            p->model_path = argv[++i];
        } else if (!strcmp(a, "--tokenizer")) {
            p->tok_path = argv[++i];
        } else if (!strcmp(a, "--data")) {
            p->data = argv[++i];
        } else if (!strcmp(a, "--tokens")) {
            p->tokens_path = argv[++i];
        } else if (!strcmp(a, "--dtype")) {
            p->dtype_name = argv[++i];
        } else if (!strcmp(a, "--adapter")) {
            p->adapter = argv[++i];
        } else if (!strcmp(a, "--compute")) {
            if (!cli_parse_compute("ppl", argv[++i], &p->compute)) return 2;
        } else if (!strcmp(a, "--blocksize")) {
            if (!cli_parse_int("ppl", a, argv[++i], 1, 1 << 20, &p->bs)) return 2;
        } else if (!strcmp(a, "--ctx")) {
            if (!cli_parse_int("ppl", a, argv[++i], 2, 1 << 20, &p->ctx)) return 2;
        } else if (!strcmp(a, "--stride")) {
            if (!cli_parse_int("ppl", a, argv[++i], 1, 1 << 20, &p->stride)) return 2;
        } else if (!strcmp(a, "--max-tokens")) {
            if (!cli_parse_int("ppl", a, argv[++i], 2, 1L << 40, &p->max_tokens)) return 2;
        } else if (!strcmp(a, "--batch")) {
            if (!cli_parse_int("ppl", a, argv[++i], 1, 4096, &p->batch)) return 2;
        } else {
            fprintf(stderr, "qlab ppl: unknown option '%s' (see qlab ppl --help)\n", a);
            return 2;
        }
    }
    return -1;
}

/* The options checked together: -1 when usable, else the exit status. */
static int check_ppl_args(ppl_args *p) {
    if (!p->model_path || (!p->data == !p->tokens_path)) {
        fprintf(stderr,
                "qlab ppl: needs --model and exactly one of --data / --tokens (see qlab ppl --help)\n");
        return 2;
    }
    if (p->data && !p->tok_path) p->tok_path = cli_gguf_tokenizer(p->model_path); /* the GGUF's own */
    if (p->data && !p->tok_path) {
        fprintf(stderr, "qlab ppl: --data needs --tokenizer unless the model is a GGUF file with its own "
                        "(see qlab ppl --help)\n");
        return 2;
    }
    if (p->dtype_name && !cli_parse_dtype("ppl", p->dtype_name, &p->dt)) return 2;
    if (p->dtype_name && !p->bs) p->bs = quant_default_blocksize(p->dt);
    if (p->dtype_name && !cli_check_blocksize("ppl", p->dt, p->bs)) return 2;
    if (!p->dtype_name && (p->bs || p->dq)) {
        fprintf(stderr, "qlab ppl: --blocksize and --double-quant need --dtype\n");
        return 2;
    }
    return -1;
}

/* The token ids of --data (encoded) or --tokens, each checked against the model's vocabulary. */
static qlab_status load_ppl_tokens(ppl_args *p, const model *m, int **ids, int64_t *n) {
    if (p->data &&
        p->tok_path) { /* a tokenizer larger than the model is refused as in generate, mmlu, finetune */
        tokenizer *tok = NULL;
        QLAB_TRY(tokenizer_load(p->tok_path, &tok));
        int tok_n = tokenizer_vocab_size(tok);
        tokenizer_free(tok);
        if (tok_n > model_get_config(m)->vocab_size)
            return qlab_fail(QLAB_ERR_ARG,
                             "tokenizer %s has %d tokens but model %s only %d: they do not belong together",
                             p->tok_path, tok_n, p->model_path, model_get_config(m)->vocab_size);
    }
    QLAB_TRY(eval_load_tokens(p->data, p->tokens_path, p->tok_path, ids, n));
    const model_config *cfg = model_get_config(m);
    const char *data_name = p->data ? p->data : p->tokens_path;
    if (*n < 2)
        return qlab_fail(QLAB_ERR_ARG, "%s: holds %lld tokens; perplexity needs at least 2", data_name,
                         (long long)*n);
    for (int64_t i = 0; i < *n; i++) {
        int id = (*ids)[i];
        if (id < cfg->vocab_size) continue;
        if (p->data)
            return qlab_fail(
                QLAB_ERR_ARG,
                "tokenizer %s gives token %d (at position %lld of %s) but model %s has %d tokens: "
                "they do not belong together",
                p->tok_path, id, (long long)i, p->data, p->model_path, cfg->vocab_size);
        return qlab_fail(QLAB_ERR_ARG, "%s: token %d at index %lld is outside model %s's vocabulary of %d",
                         p->tokens_path, id, (long long)i, p->model_path, cfg->vocab_size);
    }
    return QLAB_OK;
}

/* With --dtype: m quantized and *ref the fp32 reference (with the same adapters); with --adapter: the
 * adapters on m. qdesc describes the evaluated weights. */
static qlab_status prepare_ppl_models(const ppl_args *p, model *m, model **ref, lora_set **lora,
                                      lora_set **ref_lora, char *qdesc, size_t cap) {
    snprintf(qdesc, cap, "fp32");
    if (p->dtype_name) {
        QLAB_TRY(checkpoint_load(p->model_path, ref)); /* m is already 4-bit (checkpoint_load_quantized) */
        /* the reference is the fp32 base with the same adapters */
        if (p->adapter) QLAB_TRY(cli_load_adapters(p->adapter, *ref, ref_lora));
        snprintf(qdesc, cap, "%s, block %ld%s", quant_dtype_name(p->dt), p->bs,
                 p->dq ? ", double-quant" : "");
    }
    if (p->adapter) {
        QLAB_TRY(cli_load_adapters(p->adapter, m, lora));
        snprintf(qdesc + strlen(qdesc), cap - strlen(qdesc), " + LoRA %.60s", p->adapter);
    }
    model_set_compute(m, p->compute);
    if (*ref) model_set_compute(*ref, p->compute);
    return QLAB_OK;
}

static int cmd_ppl(int argc, char **argv) {
    ppl_args p;
    int early = parse_ppl_args(argc, argv, &p);
    if (early < 0) early = check_ppl_args(&p);
    if (early >= 0) return early;
    model *m = NULL, *ref = NULL;
    lora_set *lora = NULL, *ref_lora = NULL;
    int *ids = NULL;
    int64_t n = 0;
    int rc = 1;
    /* With --dtype the evaluated model is loaded at 4 bits tensor by tensor (bit-identical to quantizing
     * the fp32 load), so only the fp32 reference is ever whole in memory. */
    checkpoint_quant q = {p.dt, (int)p.bs, p.dq};
    if ((p.dtype_name ? checkpoint_load_quantized(p.model_path, &q, &m)
                      : checkpoint_load(p.model_path, &m)) != QLAB_OK)
        goto out;
    if (load_ppl_tokens(&p, m, &ids, &n) != QLAB_OK) goto out;
    const model_config *cfg = model_get_config(m);
    const char *data_name = p.data ? p.data : p.tokens_path;
    ppl_options opt = {.protocol = p.stride ? PPL_SLIDING : PPL_NONOVERLAP,
                       .ctx = p.ctx ? (int)p.ctx : (cfg->seq_len < 512 ? cfg->seq_len : 512),
                       .stride = (int)p.stride,
                       .max_tokens = p.max_tokens,
                       .batch = (int)p.batch};
    char qdesc[128];
    if (prepare_ppl_models(&p, m, &ref, &lora, &ref_lora, qdesc, sizeof qdesc) != QLAB_OK) goto out;
    ppl_result r;
    if (ppl_evaluate(m, ref, ids, n, &opt, &r) != QLAB_OK) {
        qlab_fail_context(QLAB_ERR_ARG, "%s (--ctx %d)", data_name, opt.ctx);
        goto out;
    }
    if (p.json)
        print_json(p.model_path, data_name, n, p.dtype_name ? quant_dtype_name(p.dt) : NULL, (int)p.bs, p.dq,
                   model_total_bits(m), p.compute, &r);
    else
        print_text(p.model_path, cfg, data_name, n, qdesc, model_total_bits(m), p.compute, &r);
    rc = 0;
out:
    if (rc) qlab_report_error("qlab ppl");
    free(ids);
    model_free(m);
    model_free(ref);
    lora_free(lora);
    lora_free(ref_lora);
    return rc;
}

QLAB_COMMAND(ppl_command, "ppl", "perplexity of a model on text or tokens, fp32 or quantized", cmd_ppl)
