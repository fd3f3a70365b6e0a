/* The qlab command-line tool: each subcommand lives in its own cmd_*.c file and registers itself with
 * QLAB_COMMAND, so adding a command never touches a shared table. */
#ifndef QLAB_CLI_H
#define QLAB_CLI_H

typedef struct {
    const char *name;                  /* "quant" */
    const char *summary;               /* one line for `qlab --help` */
    int (*run)(int argc, char **argv); /* argv[0] is the subcommand name; returns the exit code */
} cli_command;

void cli_register(const cli_command *cmd);

#define QLAB_COMMAND(ident, name_, summary_, fn)                                                             \
    static const cli_command ident = {name_, summary_, fn};                                                  \
    __attribute__((constructor)) static void ident##_register(void) {                                        \
        cli_register(&ident);                                                                                \
    }

/* Runs another registered command (argv[0] its name); 2 with a message when there is none. */
int cli_run(const char *name, int argc, char **argv);

/* Helpers for option parsing that print "qlab CMD: --flag needs a value" style errors. */
int cli_parse_int(const char *cmd, const char *flag, const char *text, long lo, long hi, long *out);
int cli_parse_double(const char *cmd, const char *flag, const char *text, double *out);
/* Whether an output file can be written at path when the command gets there (atomic_file_check_destination):
 * checked before a long computation; 0 after "qlab CMD: <what is wrong>" on stderr. */
int cli_check_output(const char *cmd, const char *path);

/* Prints one option of a --help text: flag padded to column indent, then text word-wrapped at 104 columns
 * with continuation lines indented to the same column (for help texts that embed derived lists). f is a
 * FILE *. */
void cli_print_option(void *f, const char *flag, int indent, const char *text);
/* The gnuplot definitions of the per-data-type plot styles, from the descriptor table:
 * "all_types = 'nf4 ...'; type_colors = '#... ...'; type_points = '6 ...'" (cli/cmd_dtypes.c). */
const char *cli_dtype_gnuplot_style(void);

#include "core/base/common.h"
#include "core/model/checkpoint.h"
#include "core/model/lora.h"
#include "core/model/model.h"
#include "core/quant/quant.h"

/* --dtype NAME (a 4-bit data type) and --blocksize N for it: 1 when valid, else 0 after printing
 * "qlab CMD: --dtype: unknown data type ..." (the caller exits 2, a usage error, in every command). */
int cli_parse_dtype(const char *cmd, const char *text, quant_dtype *dt);
int cli_check_blocksize(const char *cmd, quant_dtype dt, long blocksize);

/* --compute fp32|bf16: parses text into *out, or prints "qlab CMD: --compute must be fp32 or bf16 (got 'x')"
 * and returns 0. cli_compute_help is the option's help text. */
int cli_parse_compute(const char *cmd, const char *text, qlab_compute *out);
const char *cli_compute_help(void);

/* The tokenizer a command takes when --tokenizer is not given: the model file itself when it is a GGUF
 * (which may embed one; the tokenizer loader says so when it does not), else NULL. */
const char *cli_gguf_tokenizer(const char *model_path);

/* --adapter SPEC: a PEFT directory (adapter_config.json + adapter_model.safetensors, lora_load_peft) or a
 * single file written by lora_save (rank, alpha and targets in its metadata), attached to m (fp32 or
 * quantized base) in evaluation mode. The caller frees *out after model_free(m) or lora_detach(m). */
qlab_status cli_load_adapters(const char *spec, model *m, lora_set **out);

/* Writes m to out as --to says (hf, gguf or llama2c) with dtype (hf and gguf), as qlab convert and qlab
 * merge do: the BOS/EOS ids of the checkpoint `source` go into the Hugging Face config.json and
 * generation_config.json; llama2c refuses, naming it, a rope_theta, norm_eps, RoPE scaling or BOS/EOS that
 * llama2.c's header cannot carry, instead of dropping it. */
qlab_status cli_save_model(const model *m, const char *source, const char *to, checkpoint_dtype dtype,
                           const char *out);

#endif
