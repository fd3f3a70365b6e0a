/* `qlab generate`: a quick look at what a model says — greedy, temperature or top-p sampling from a
 * prompt, optionally after quantizing the model. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/model/checkpoint.h"
#include "cli/cli.h"
#include "core/base/common.h"
#include "eval/generate.h"
#include "core/model/model.h"
#include "core/quant/quant.h"
#include "core/text/tokenizer.h"

static void generate_usage(FILE *f) {
    fprintf(
        f,
        "Usage: qlab generate --model M [--tokenizer T] [--prompt TEXT] [--steps N] [--temperature X]\n"
        "                     [--top-p P] [--seed S] [--dtype D [--blocksize B] [--double-quant]]\n"
        "                     [--adapter DIR] [--compute fp32|bf16]\n\n"
        "Continues TEXT (default: empty, i.e. from BOS) with up to N new tokens (default 256).\n"
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

static int cmd_generate(int argc, char **argv) {
    const char *model_path = NULL, *tok_path = NULL, *prompt = "", *dtype_name = NULL, *adapter = NULL;
    long steps = 256, bs = 0, seed = 42;
    double temperature = 1.0, top_p = 0.9;
    int dq = 0;
    qlab_compute compute = QLAB_COMPUTE_FP32;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            generate_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--double-quant")) {
            dq = 1;
        } else if (!strncmp(a, "--", 2) && !v) {
            fprintf(stderr, "qlab generate: %s needs a value\n", a);
            return 2;
        } else if (!strcmp(a, "--model")) {
            model_path = argv[++i];
        } else if (!strcmp(a, "--tokenizer")) {
            tok_path = argv[++i];
        } else if (!strcmp(a, "--prompt")) {
            prompt = argv[++i];
        } else if (!strcmp(a, "--dtype")) {
            dtype_name = argv[++i];
        } else if (!strcmp(a, "--adapter")) {
            adapter = argv[++i];
        } else if (!strcmp(a, "--compute")) {
            if (!cli_parse_compute("generate", argv[++i], &compute)) return 2;
        } else if (!strcmp(a, "--steps")) {
            if (!cli_parse_int("generate", a, argv[++i], 1, 1 << 20, &steps)) return 2;
        } else if (!strcmp(a, "--blocksize")) {
            if (!cli_parse_int("generate", a, argv[++i], 1, 1 << 20, &bs)) return 2;
        } else if (!strcmp(a, "--seed")) {
            if (!cli_parse_int("generate", a, argv[++i], 0, 0x7fffffffffffffffL, &seed)) return 2;
        } else if (!strcmp(a, "--temperature")) {
            if (!cli_parse_double("generate", a, argv[++i], &temperature)) return 2;
        } else if (!strcmp(a, "--top-p")) {
            if (!cli_parse_double("generate", a, argv[++i], &top_p)) return 2;
        } else {
            fprintf(stderr, "qlab generate: unknown option '%s' (see qlab generate --help)\n", a);
            return 2;
        }
    }
    checkpoint_format fmt = CHECKPOINT_UNKNOWN;
    if (model_path && !tok_path && checkpoint_detect(model_path, &fmt) == QLAB_OK && fmt == CHECKPOINT_GGUF)
        tok_path = model_path; /* the tokenizer embedded in the GGUF */
    if (!model_path || !tok_path) {
        fprintf(stderr, "qlab generate: needs --model and --tokenizer (unless the model is a GGUF; see qlab "
                        "generate --help)\n");
        return 2;
    }
    if (temperature < 0) {
        fprintf(stderr, "qlab generate: --temperature must be >= 0\n");
        return 2;
    }
    if (!(top_p > 0 && top_p <= 1)) {
        fprintf(stderr, "qlab generate: --top-p %g must be in (0, 1]\n", top_p);
        return 2;
    }
    model *m = NULL;
    lora_set *lora = NULL;
    tokenizer *tok = NULL;
    int *prompt_ids = NULL, *seq = NULL, rc = 1, n_out = 0;
    size_t n_prompt = 0, text_len = 0;
    char *text = NULL;
    if (checkpoint_load(model_path, &m) != QLAB_OK || tokenizer_load(tok_path, &tok) != QLAB_OK) goto out;
    if (dtype_name) {
        quant_dtype dt;
        if (quant_dtype_parse(dtype_name, &dt) != QLAB_OK) goto out;
        if (model_quantize(m, dt, bs ? (int)bs : quant_default_blocksize(dt), dq) != QLAB_OK) goto out;
    }
    if (adapter && cli_load_adapters(adapter, m, &lora) != QLAB_OK) goto out;
    model_set_compute(m, compute);
    const model_config *cfg = model_get_config(m);
    if (tokenizer_vocab_size(tok) > cfg->vocab_size) {
        qlab_fail(QLAB_ERR_ARG,
                  "tokenizer %s has %d tokens but model %s only %d: they do not belong together", tok_path,
                  tokenizer_vocab_size(tok), model_path, cfg->vocab_size);
        goto out;
    }
    if (tokenizer_encode(tok, prompt, strlen(prompt), 1, &prompt_ids, &n_prompt) != QLAB_OK) goto out;
    long total = (long)n_prompt + steps;
    if (total > cfg->seq_len) total = cfg->seq_len;
    if ((long)n_prompt > total) {
        qlab_fail(QLAB_ERR_ARG, "the prompt has %zu tokens, more than the model's context %d", n_prompt,
                  cfg->seq_len);
        goto out;
    }
    generate_options opt = {.temperature = (float)temperature,
                            .top_p = (float)top_p,
                            .seed = (uint64_t)seed,
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
