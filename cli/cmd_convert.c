/* `qlab convert`: reads a checkpoint in any supported format (llama2.c .bin, GGUF, Hugging Face directory)
 * and writes it in another, printing the model's configuration. Usage mistakes exit 2, unreadable or
 * malformed checkpoints exit 1, with one line on stderr naming the file or flag. */
#include <stdio.h>
#include <string.h>

#include "core/model/checkpoint.h"
#include "cli/cli.h"
#include "core/base/common.h"

static void convert_usage(FILE *f) {
    fprintf(
        f, "Usage: qlab convert [options] IN OUT\n"
           "\n"
           "Converts a LLaMA-architecture checkpoint. IN is detected: a directory or config.json is Hugging\n"
           "Face, a file starting with \"GGUF\" is GGUF, anything else llama2.c's legacy .bin.\n"
           "\n"
           "Options:\n"
           "  --to F        output format: llama2c (default), hf (OUT is a directory), gguf\n"
           "  --dtype D     f32 (default), f16 or bf16 for hf and gguf (llama2c is always f32)\n"
           "\n"
           "hf writes config.json (rope_theta top-level and in rope_parameters, as transformers 5 reads it) "
           "and,\n"
           "when IN declares BOS/EOS ids, generation_config.json. llama2c refuses a model whose rope_theta,\n"
           "norm_eps or BOS/EOS differ from what llama2.c assumes (10000, 1e-5, 1, 2) instead of dropping "
           "them.\n"
           "  -h, --help    show this help\n"
           "\n"
           "Exit status: 0 ok, 1 bad or unreadable checkpoint, 2 usage error.\n");
}

static int cmd_convert(int argc, char **argv) {
    const char *to = "llama2c", *dtype_name = "f32", *paths[2] = {NULL, NULL};
    int n_paths = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            convert_usage(stdout);
            return 0;
        }
        if (!strcmp(argv[i], "--to") || !strcmp(argv[i], "--dtype")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "qlab convert: %s needs a value\n", argv[i]);
                return 2;
            }
            if (!strcmp(argv[i], "--to"))
                to = argv[++i];
            else
                dtype_name = argv[++i];
        } else if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "qlab convert: unknown option %s (see qlab convert --help)\n", argv[i]);
            return 2;
        } else if (n_paths < 2) {
            paths[n_paths++] = argv[i];
        } else {
            fprintf(stderr, "qlab convert: too many arguments (%s)\n", argv[i]);
            return 2;
        }
    }
    if (n_paths != 2) {
        fprintf(stderr, "qlab convert: need IN and OUT (see qlab convert --help)\n");
        return 2;
    }
    checkpoint_dtype dtype;
    if (!strcmp(dtype_name, "f32"))
        dtype = CHECKPOINT_F32;
    else if (!strcmp(dtype_name, "f16"))
        dtype = CHECKPOINT_F16;
    else if (!strcmp(dtype_name, "bf16"))
        dtype = CHECKPOINT_BF16;
    else {
        fprintf(stderr, "qlab convert: --dtype must be f32, f16 or bf16, not '%s'\n", dtype_name);
        return 2;
    }
    if (strcmp(to, "llama2c") && strcmp(to, "hf") && strcmp(to, "gguf")) {
        fprintf(stderr, "qlab convert: --to must be llama2c, hf or gguf, not '%s'\n", to);
        return 2;
    }
    if (!strcmp(to, "llama2c") && dtype != CHECKPOINT_F32) {
        fprintf(stderr, "qlab convert: --to llama2c stores f32 only\n");
        return 2;
    }
    model *m = NULL;
    checkpoint_format fmt;
    if (checkpoint_detect(paths[0], &fmt) != QLAB_OK || checkpoint_load(paths[0], &m) != QLAB_OK)
        return qlab_report_error("qlab convert");
    const model_config *c = model_get_config(m);
    printf("%s (%s): dim %d, hidden_dim %d, n_layers %d, n_heads %d, n_kv_heads %d, vocab %d, seq_len %d, "
           "norm_eps %g, rope_theta %g, %s classifier\n",
           paths[0], checkpoint_format_name(fmt), c->dim, c->hidden_dim, c->n_layers, c->n_heads,
           c->n_kv_heads, c->vocab_size, c->seq_len, c->norm_eps, c->rope_theta,
           c->shared_classifier ? "shared" : "separate");
    qlab_status st = cli_save_model(m, paths[0], to, dtype, paths[1]);
    model_free(m);
    if (st != QLAB_OK) return qlab_report_error("qlab convert");
    printf("wrote %s (%s, %s)\n", paths[1], to, dtype_name);
    return 0;
}

QLAB_COMMAND(cmd_convert_entry, "convert",
             "convert a model checkpoint between llama2.c, GGUF and Hugging Face", cmd_convert)
