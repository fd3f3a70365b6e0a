/* `qlab generate`: a quick look at what a model says — greedy, temperature or top-p sampling from a
 * prompt, optionally after quantizing the model; with --prompts, answers to a whole prompt file in the
 * QLoRA repository's released-generations format (eval/answers.h), for a judge. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/model/checkpoint.h"
#include "cli/cli.h"
#include "core/base/common.h"
#include "core/base/progress.h"
#include "eval/answers.h"
#include "eval/generate.h"
#include "core/model/model.h"
#include "core/quant/quant.h"
#include "core/text/tokenizer.h"

static void generate_usage(FILE *f) {
    fprintf(
        f,
        "Usage: qlab generate --model M [--tokenizer T] [--prompt TEXT] [--steps N] [--temperature X]\n"
        "                     [--top-p P] [--seed S] [--dtype D [--blocksize B] [--double-quant]]\n"
        "                     [--adapter DIR] [--compute fp32|bf16]\n"
        "       qlab generate --model M ... --prompts FILE --out ANSWERS.jsonl [--model-id NAME] [--limit "
        "N]\n\n"
        "Continues TEXT (default: empty, i.e. from BOS) with up to N new tokens (default 256).\n"
        "  --prompts FILE    answer every record of a prompt file instead: the Vicuna questions (JSON lines\n"
        "                    {question_id, text, category}) or OASST1 items ({input, output, ...}, .gz "
        "too),\n"
        "                    each prompted as qlora did (system sentence + ### Human: ... ### Assistant:);\n"
        "                    --out receives JSON lines in the format of qlora's released generations (the\n"
        "                    record's fields + prompt, generation, generation_truncated, answer_id,\n"
        "                    model_id), for a judge. Defaults there: --temperature 0.7, --top-p 0.9 "
        "(qlora's\n"
        "                    topp0.9-temp0.7 files), --steps min(256, half the context); record i samples\n"
        "                    with seed S + i\n"
        "  --model-id NAME   the system's name in --out (default: the adapter's or model's file name)\n"
        "  --limit N         answer the first N records only\n"
        "  --tokenizer T     tokenizer.bin / tokenizer.json / GGUF (default for a GGUF model: its own)\n"
        "  --temperature X   0 = greedy argmax (default 1.0)\n"
        "  --top-p P         nucleus sampling threshold (default 0.9; 1 = full distribution)\n"
        "  --seed S          sampling seed (default 42): the same seed gives the same text\n"
        "  --adapter DIR     LoRA adapters: a PEFT directory (qlab finetune's output) or a lora_save file,\n"
        "                    applied on the fp32 or --dtype base\n");
    char text[512];
    snprintf(text, sizeof text, "quantize the projections first (%s)", quant_dtype_list(0));
    cli_print_option(f, "  --dtype D", 20, text);
    cli_print_option(f, "  --compute C", 20, cli_compute_help());
}

static void answers_tick(void *ctx, int done, int total) {
    progress *p = ctx;
    p->total = total; /* known once the file is read */
    progress_update(p, done, NULL);
}

/* --prompts: answers to every record, written to out. name: the system (a path's last component). Returns
 * the exit code. */
static int generate_answers(model *m, const tokenizer *tok, const char *prompts, const char *out,
                            const char *name, int steps, float temperature, float top_p, uint64_t seed,
                            int limit) {
    char id[256];
    size_t n = strlen(name);
    while (n > 1 && name[n - 1] == '/')
        n--;
    const char *base = name;
    for (size_t i = 0; i < n; i++)
        if (name[i] == '/') base = name + i + 1;
    snprintf(id, sizeof id, "%.*s", (int)(name + n - base), base);
    int half = model_get_config(m)->seq_len / 2;
    answers_options o = {id, temperature, top_p, seed, steps ? steps : (half < 256 ? half : 256), limit};
    progress prog;
    progress_begin(&prog, "answers", limit ? limit : 0);
    int answered = 0;
    if (answers_generate(m, tok, prompts, out, &o, answers_tick, &prog, &answered) != QLAB_OK) return 1;
    progress_end(&prog, NULL);
    printf("wrote %s: %d answers of %s (at most %d new tokens, temperature %g, top-p %g)\n", out, answered,
           id, o.max_new_tokens, temperature, top_p);
    return 0;
}

typedef struct {
    const char *model_path, *tok_path, *prompt, *dtype_name, *adapter;
    const char *prompts, *answers_out, *model_id;
    long steps, bs, seed, limit;
    double temperature, top_p;
    int dq, have_steps, have_temperature;
    qlab_compute compute;
} generate_args;

/* -1 to go on, else the exit status (0 after --help, 2 on a usage error). */
static int parse_generate_args(int argc, char **argv, generate_args *p) {
    *p = (generate_args){.prompt = "", .steps = 256, .seed = 42, .temperature = 1.0, .top_p = 0.9};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            generate_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--double-quant")) {
            p->dq = 1;
        } else if (!strncmp(a, "--", 2) && !v) {
            fprintf(stderr, "qlab generate: %s needs a value\n", a);
            return 2;
        } else if (!strcmp(a, "--model")) {
            p->model_path = argv[++i];
        } else if (!strcmp(a, "--tokenizer")) {
            p->tok_path = argv[++i];
        } else if (!strcmp(a, "--prompt")) {
            p->prompt = argv[++i];
        } else if (!strcmp(a, "--dtype")) {
            p->dtype_name = argv[++i];
        } else if (!strcmp(a, "--adapter")) {
            p->adapter = argv[++i];
        } else if (!strcmp(a, "--compute")) {
            if (!cli_parse_compute("generate", argv[++i], &p->compute)) return 2;
        } else if (!strcmp(a, "--prompts")) {
            p->prompts = argv[++i];
        } else if (!strcmp(a, "--out")) {
            p->answers_out = argv[++i];
        } else if (!strcmp(a, "--model-id")) {
            p->model_id = argv[++i];
        } else if (!strcmp(a, "--limit")) {
            if (!cli_parse_int("generate", a, argv[++i], 1, 1 << 30, &p->limit)) return 2;
        } else if (!strcmp(a, "--steps")) {
            if (!cli_parse_int("generate", a, argv[++i], 1, 1 << 20, &p->steps)) return 2;
            p->have_steps = 1;
        } else if (!strcmp(a, "--blocksize")) {
            if (!cli_parse_int("generate", a, argv[++i], 1, 1 << 20, &p->bs)) return 2;
        } else if (!strcmp(a, "--seed")) {
            if (!cli_parse_int("generate", a, argv[++i], 0, 0x7fffffffffffffffL, &p->seed)) return 2;
        } else if (!strcmp(a, "--temperature")) {
            if (!cli_parse_double("generate", a, argv[++i], &p->temperature)) return 2;
            p->have_temperature = 1;
        } else if (!strcmp(a, "--top-p")) {
            if (!cli_parse_double("generate", a, argv[++i], &p->top_p)) return 2;
        } else {
            fprintf(stderr, "qlab generate: unknown option '%s' (see qlab generate --help)\n", a);
            return 2;
        }
    }
    return -1;
}

/* The options checked together (a GGUF model supplies its own tokenizer): -1 when usable, else 2. */
static int check_generate_args(generate_args *p) {
    if (!p->tok_path) p->tok_path = cli_gguf_tokenizer(p->model_path); /* the tokenizer in the GGUF */
    if (!p->model_path || !p->tok_path) {
        fprintf(stderr, "qlab generate: needs --model and --tokenizer (unless the model is a GGUF; see qlab "
                        "generate --help)\n");
        return 2;
    }
    if (!p->prompts != !p->answers_out) {
        fprintf(stderr, "qlab generate: --prompts and --out go together (see qlab generate --help)\n");
        return 2;
    }
    if (p->prompts && p->prompt[0]) {
        fprintf(stderr, "qlab generate: give --prompt or --prompts, not both\n");
        return 2;
    }
    if (!p->prompts && (p->limit || p->model_id)) {
        fprintf(stderr, "qlab generate: --limit and --model-id need --prompts\n");
        return 2;
    }
    if (p->answers_out && !cli_check_output("generate", p->answers_out)) return 2; /* written at the end */
    if (p->prompts && !p->have_temperature) p->temperature = 0.7;
    if (p->temperature < 0) {
        fprintf(stderr, "qlab generate: --temperature must be >= 0\n");
        return 2;
    }
    if (!(p->top_p > 0 && p->top_p <= 1)) {
        fprintf(stderr, "qlab generate: --top-p %g must be in (0, 1]\n", p->top_p);
        return 2;
    }
    if (p->dtype_name) {
        quant_dtype dt;
        if (!cli_parse_dtype("generate", p->dtype_name, &dt)) return 2;
        if (!cli_check_blocksize("generate", dt, p->bs ? (int)p->bs : quant_default_blocksize(dt))) return 2;
    }
    return -1;
}

/* The model (quantized with --dtype, with --adapter's adapters) and a tokenizer that belongs to it. */
static qlab_status load_generate_model(const generate_args *p, model **m, lora_set **lora, tokenizer **tok) {
    if (p->dtype_name) { /* loaded at 4 bits, one projection at a time */
        quant_dtype dt;
        QLAB_TRY(quant_dtype_parse(p->dtype_name, &dt));
        checkpoint_quant q = {dt, p->bs ? (int)p->bs : quant_default_blocksize(dt), p->dq};
        QLAB_TRY(checkpoint_load_quantized(p->model_path, &q, m));
    } else {
        QLAB_TRY(checkpoint_load(p->model_path, m));
    }
    QLAB_TRY(tokenizer_load(p->tok_path, tok));
    if (p->adapter) QLAB_TRY(cli_load_adapters(p->adapter, *m, lora));
    model_set_compute(*m, p->compute);
    const model_config *cfg = model_get_config(*m);
    if (tokenizer_vocab_size(*tok) > cfg->vocab_size)
        return qlab_fail(QLAB_ERR_ARG,
                         "tokenizer %s has %d tokens but model %s only %d: they do not belong together",
                         p->tok_path, tokenizer_vocab_size(*tok), p->model_path, cfg->vocab_size);
    return QLAB_OK;
}

static int cmd_generate(int argc, char **argv) {
    generate_args p;
    int early = parse_generate_args(argc, argv, &p);
    if (early < 0) early = check_generate_args(&p);
    if (early >= 0) return early;
    model *m = NULL;
    lora_set *lora = NULL;
    tokenizer *tok = NULL;
    int *prompt_ids = NULL, *seq = NULL, rc = 1, n_out = 0;
    size_t n_prompt = 0, text_len = 0;
    char *text = NULL;
    if (load_generate_model(&p, &m, &lora, &tok) != QLAB_OK) goto out;
    const model_config *cfg = model_get_config(m);
    if (p.prompts) {
        rc = generate_answers(m, tok, p.prompts, p.answers_out,
                              p.model_id  ? p.model_id
                              : p.adapter ? p.adapter
                                          : p.model_path,
                              p.have_steps ? (int)p.steps : 0, (float)p.temperature, (float)p.top_p,
                              (uint64_t)p.seed, (int)p.limit);
        goto out;
    }
    if (tokenizer_encode(tok, p.prompt, strlen(p.prompt), 1, &prompt_ids, &n_prompt) != QLAB_OK) goto out;
    long total = (long)n_prompt + p.steps;
    if (total > cfg->seq_len) total = cfg->seq_len;
    if ((long)n_prompt > total) {
        qlab_fail(QLAB_ERR_ARG, "the prompt has %zu tokens, more than the model's context %d", n_prompt,
                  cfg->seq_len);
        goto out;
    }
    generate_options opt = {.temperature = (float)p.temperature,
                            .top_p = (float)p.top_p,
                            .seed = (uint64_t)p.seed,
                            .max_tokens = (int)total,
                            .stop_id_a = tokenizer_bos_id(tok),
                            .stop_id_b = tokenizer_eos_id(tok)};
    seq = qlab_calloc((size_t)total, sizeof(int));
    if (!seq) goto out;
    if (generate(m, prompt_ids, (int)n_prompt, &opt, seq, &n_out, NULL, NULL) != QLAB_OK) goto out;
    if (tokenizer_decode(tok, seq, (size_t)n_out, &text, &text_len) != QLAB_OK) goto out;
    fwrite(text, 1, text_len, stdout);
    fputc('\n', stdout);
    rc = 0;
out:
    if (rc) qlab_report_error("qlab generate");
    free(text);
    free(seq);
    free(prompt_ids);
    tokenizer_free(tok);
    model_free(m);
    lora_free(lora);
    return rc;
}

QLAB_COMMAND(generate_command, "generate", "sample text from a model (greedy, temperature, top-p)",
             cmd_generate)
