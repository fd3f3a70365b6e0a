/* `qlab merge`: folds LoRA adapters into a full-precision copy of their base model (W += (alpha/r) B A) and
 * writes it in any checkpoint format, so the finetuned model runs without the adapter path anywhere. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "core/base/common.h"
#include "core/model/checkpoint.h"
#include "core/model/lora.h"

static void merge_usage(FILE *f) {
    fprintf(
        f,
        "Usage: qlab merge --model M --adapter DIR --out OUT [--to hf|gguf|llama2c] [--dtype "
        "f32|f16|bf16]\n\n"
        "Merges LoRA adapters (a PEFT directory such as qlab finetune's output, or a lora_save file) into\n"
        "the fp32 base M (llama2.c .bin, GGUF or a Hugging Face directory) and writes the merged model.\n"
        "  --to F       output format: hf (default: config.json + model.safetensors in directory OUT),\n"
        "               gguf, or llama2c\n"
        "  --dtype D    stored precision for hf and gguf: f32 (default), f16, bf16\n"
        "As qlab convert: hf keeps M's BOS/EOS ids (config.json, generation_config.json); llama2c refuses a\n"
        "model whose rope_theta, norm_eps or BOS/EOS differ from what llama2.c assumes (10000, 1e-5, 1, "
        "2).\n");
}

static int cmd_merge(int argc, char **argv) {
    const char *model_path = NULL, *adapter = NULL, *out = NULL, *to = "hf", *dtype_name = "f32";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            merge_usage(stdout);
            return 0;
        } else if (!strncmp(a, "--", 2) && !v) {
            fprintf(stderr, "qlab merge: %s needs a value\n", a);
            return 2;
        } else if (!strcmp(a, "--model")) {
            model_path = argv[++i];
        } else if (!strcmp(a, "--adapter")) {
            adapter = argv[++i];
        } else if (!strcmp(a, "--out")) {
            out = argv[++i];
        } else if (!strcmp(a, "--to")) {
            to = argv[++i];
        } else if (!strcmp(a, "--dtype")) {
            dtype_name = argv[++i];
        } else {
            fprintf(stderr, "qlab merge: unknown option '%s' (see qlab merge --help)\n", a);
            return 2;
        }
    }
    if (!model_path || !adapter || !out) {
        fprintf(stderr, "qlab merge: needs --model, --adapter and --out (see qlab merge --help)\n");
        return 2;
    }
    checkpoint_dtype dtype;
    if (!strcmp(dtype_name, "f32")) {
        dtype = CHECKPOINT_F32;
    } else if (!strcmp(dtype_name, "f16")) {
        dtype = CHECKPOINT_F16;
    } else if (!strcmp(dtype_name, "bf16")) {
        dtype = CHECKPOINT_BF16;
    } else {
        fprintf(stderr, "qlab merge: --dtype must be f32, f16 or bf16 (got '%s')\n", dtype_name);
        return 2;
    }
    if (strcmp(to, "hf") && strcmp(to, "gguf") && strcmp(to, "llama2c")) {
        fprintf(stderr, "qlab merge: --to must be hf, gguf or llama2c (got '%s')\n", to);
        return 2;
    }
    if (!strcmp(to, "llama2c") && dtype != CHECKPOINT_F32) {
        fprintf(stderr, "qlab merge: llama2c stores f32 only\n");
        return 2;
    }
    model *m = NULL;
    lora_set *l = NULL;
    int rc = 1;
    if (checkpoint_load(model_path, &m) != QLAB_OK) goto done;
    if (cli_load_adapters(adapter, m, &l) != QLAB_OK) goto done;
    lora_detach(m);
    if (lora_merge(l, m) != QLAB_OK) goto done;
    if (cli_save_model(m, model_path, to, dtype, out) != QLAB_OK) goto done;
    const lora_config *c = lora_get_config(l);
    printf("merged %s (r %d, alpha %g) into %s: wrote %s (%s, %s)\n", adapter, c->rank, (double)c->alpha,
           model_path, out, to, dtype_name);
    rc = 0;
done:
    if (rc) qlab_report_error("qlab merge");
    model_free(m);
    lora_free(l);
    return rc;
}

QLAB_COMMAND(merge_command, "merge", "merge LoRA adapters into their base model (hf, gguf or llama2c)",
             cmd_merge)
