/* `qlab quant` and `qlab dequant`: quantize a .npy array into a 4-bit safetensors file (bitsandbytes layout,
 * see quant_io.h) and back. Usage mistakes exit 2, bad or unreadable data exits 1; either way stderr gets
 * exactly one line naming the flag or file and the problem. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "core/base/common.h"
#include "core/base/half.h"
#include "core/formats/npy.h"
#include "core/quant/quant.h"
#include "core/quant/quant_io.h"
#include "core/formats/safetensors.h"

#define CMD_QUANT_EXIT_DATA 1
#define CMD_QUANT_EXIT_USAGE 2

static void quant_usage(FILE *f) {
    fprintf(f, "Usage: qlab quant [options] IN.npy OUT.safetensors\n"
               "\n"
               "Quantizes an array (.npy of <f4, <f2, <f8, or bf16 stored as <u2) to 4 bits, blockwise, and "
               "writes it\n"
               "as safetensors in the layout transformers uses for bitsandbytes 4-bit weights.\n"
               "\n"
               "Options:\n");
    char text[1024];
    snprintf(text, sizeof text, "data type (default nf4): %s ('qlab dtypes' describes them)",
             quant_dtype_list(0));
    cli_print_option(f, "  --dtype D", 20, text);
    snprintf(text, sizeof text, "elements per block (default: the type's); %s", quant_blocksize_summary());
    cli_print_option(f, "  --blocksize B", 20, text);
    snprintf(text, sizeof text,
             "also quantize the per-block absmax (8-bit dynamic map, blocks of %d); only %s",
             QUANT_DQ_BLOCKSIZE, quant_dtype_list(1));
    cli_print_option(f, "  --double-quant", 20, text);
    fprintf(f, "  --stats           print MSE, max abs error, SQNR (dB), bits/param and storage bytes\n"
               "  --name P          tensor name in the output file (default: weight)\n"
               "  --input-bf16      read a <u2 input array as bf16 bit patterns\n"
               "The input's dtype (float32 for <f4 and <f8, float16 for <f2, bfloat16 for --input-bf16)\n"
               "is recorded in quant_state \"dtype\", as bitsandbytes does; qlab dequant returns it.\n"
               "  -h, --help        show this help\n"
               "\n"
               "Exit status: 0 ok, 1 bad or unreadable data, 2 usage error.\n");
}

static void dequant_usage(FILE *f) {
    fprintf(f,
            "Usage: qlab dequant [options] IN.safetensors OUT.npy\n"
            "\n"
            "Dequantizes a 4-bit tensor written by 'qlab quant' (or a bitsandbytes NF4/FP4 tensor saved by\n"
            "transformers) and writes it as .npy with its original shape.\n"
            "\n"
            "Options:\n"
            "  --out-dtype T     fp32 (<f4), fp16 (<f2) or bf16 (bit patterns as <u2); default: the\n"
            "                    dtype the file says the weight had (quant_state \"dtype\"). fp16 and bf16\n"
            "                    are the fp32 values rounded to nearest even, as torch's .to() does\n"
            "  --bf16            the same as --out-dtype bf16\n"
            "  --name P          which quantized tensor to read (default: the only one in the file)\n"
            "  -h, --help        show this help\n"
            "\n"
            "Exit status: 0 ok, 1 bad or unreadable data, 2 usage error.\n");
}

/* Splits "--flag=value" / "--flag value"; returns the value or NULL (and prints) when it is missing. */
static const char *option_value(const char *cmd, int argc, char **argv, int *i, const char *flag) {
    const char *arg = argv[*i];
    size_t fl = strlen(flag);
    if (arg[fl] == '=') return arg + fl + 1;
    if (*i + 1 >= argc) {
        fprintf(stderr, "qlab %s: %s needs a value\n", cmd, flag);
        return NULL;
    }
    return argv[++*i];
}

/* Whether arg is flag, alone or as "flag=value". */
static int is_flag(const char *arg, const char *flag) {
    size_t fl = strlen(flag);
    return !strncmp(arg, flag, fl) && (arg[fl] == 0 || arg[fl] == '=');
}

/* 1 when exactly two file arguments were given; otherwise says which two were expected and returns 0. */
static int two_files(const char *cmd, const char *expected, int npos) {
    if (npos == 2) return 1;
    fprintf(stderr, "qlab %s: expected %s, got %d file argument%s (see qlab %s --help)\n", cmd, expected,
            npos, npos == 1 ? "" : "s", cmd);
    return 0;
}

static int report(const char *cmd) {
    char prog[64];
    snprintf(prog, sizeof prog, "qlab %s", cmd);
    return qlab_report_error(prog);
}

typedef struct {
    const char *dtype_text, *blocksize_text, *name;
    int double_quant, stats, input_bf16, npos;
    const char *pos[2];
    quant_dtype dt; /* parsed from dtype_text */
    long blocksize; /* parsed from blocksize_text, or the type's default */
} quant_args;

/* -1 to go on, else the exit status (0 after --help). */
static int parse_quant_args(int argc, char **argv, quant_args *q) {
    *q = (quant_args){.dtype_text = quant_dtype_name(QUANT_NF4), .name = "weight"};
    int only_positional = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (only_positional || a[0] != '-' || a[1] == 0) {
            if (q->npos < 2) q->pos[q->npos] = a;
            q->npos++;
        } else if (!strcmp(a, "--")) {
            only_positional = 1;
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            quant_usage(stdout);
            return 0;
        } else if (is_flag(a, "--dtype")) {
            if (!(q->dtype_text = option_value("quant", argc, argv, &i, "--dtype")))
                return CMD_QUANT_EXIT_USAGE;
        } else if (is_flag(a, "--blocksize")) {
            if (!(q->blocksize_text = option_value("quant", argc, argv, &i, "--blocksize")))
                return CMD_QUANT_EXIT_USAGE;
        } else if (is_flag(a, "--name")) {
            if (!(q->name = option_value("quant", argc, argv, &i, "--name"))) return CMD_QUANT_EXIT_USAGE;
        } else if (!strcmp(a, "--double-quant")) {
            q->double_quant = 1;
        } else if (!strcmp(a, "--stats")) {
            q->stats = 1;
        } else if (!strcmp(a, "--input-bf16")) {
            q->input_bf16 = 1;
        } else {
            fprintf(stderr, "qlab quant: unknown option '%s' (see qlab quant --help)\n", a);
            return CMD_QUANT_EXIT_USAGE;
        }
    }
    return -1;
}

/* The type, block size, double quantization and name checked together: 1 when usable. */
static int check_quant_args(quant_args *q) {
    if (!two_files("quant", "IN.npy and OUT.safetensors", q->npos)) return 0;
    if (!cli_parse_dtype("quant", q->dtype_text, &q->dt)) return 0;
    q->blocksize = quant_default_blocksize(q->dt);
    if (q->blocksize_text &&
        !cli_parse_int("quant", "--blocksize", q->blocksize_text, 1, QUANT_MAX_BLOCKSIZE, &q->blocksize))
        return 0;
    if (quant_check_blocksize(q->dt, (int)q->blocksize) != QLAB_OK) {
        fprintf(stderr, "qlab quant: --blocksize: %s\n", qlab_last_error());
        return 0;
    }
    if (q->double_quant && !quant_dtype_has_fp32_absmax(q->dt)) {
        fprintf(stderr, "qlab quant: --double-quant applies only to types with an fp32 absmax, not %s\n",
                quant_dtype_name(q->dt));
        return 0;
    }
    if (!q->name[0] || strstr(q->name, ".quant_state.")) {
        fprintf(stderr, "qlab quant: --name '%s' is not a usable tensor name\n", q->name);
        return 0;
    }
    return 1;
}

/* --stats: the error of the stored tensor against the input, and its size. */
static qlab_status print_quant_stats(const quant_args *q, const npy_array *arr, const quant_tensor *qt) {
    float *recon = qlab_alloc_aligned(sizeof(float) * (size_t)(arr->count > 0 ? arr->count : 1));
    if (!recon) return QLAB_ERR_NOMEM;
    qlab_status st = quant_tensor_dequantize(qt, recon);
    if (st == QLAB_OK) {
        quant_error_stats es;
        quant_error(arr->data, recon, arr->count, &es);
        printf("dtype           %s\n", quant_dtype_name(q->dt));
        printf("blocksize       %ld\n", q->blocksize);
        printf("double_quant    %d\n", q->double_quant);
        printf("elements        %lld\n", (long long)arr->count);
        printf("mse             %.6e\n", es.mse);
        printf("max_abs_err     %.6e\n", es.max_abs_err);
        printf("sqnr_db         %.4f\n", es.sqnr_db);
        printf("bits_per_param  %.4f\n", quant_tensor_bits_per_param(qt));
        printf("storage_bytes   %zu\n", quant_tensor_bytes(qt));
    }
    qlab_free_aligned(recon);
    return st;
}

static int cmd_quant(int argc, char **argv) {
    quant_args q;
    int early = parse_quant_args(argc, argv, &q);
    if (early >= 0) return early;
    if (!check_quant_args(&q)) return CMD_QUANT_EXIT_USAGE;
    const char *in = q.pos[0], *out = q.pos[1];
    npy_array arr;
    if (npy_read_f32(in, q.input_bf16, &arr) != QLAB_OK) return report("quant");
    int status = CMD_QUANT_EXIT_DATA;
    quant_tensor qt;
    memset(&qt, 0, sizeof qt);
    if (arr.ndim < 1 || arr.ndim > 4) {
        qlab_fail(QLAB_ERR_UNSUPPORTED, "%s: array has %d dimensions; quant stores 1 to 4", in, arr.ndim);
        goto fail;
    }
    if (arr.count == 0) {
        qlab_fail(QLAB_ERR_ARG, "%s: the array is empty (0 elements): nothing to quantize", in);
        goto fail;
    }
    qlab_status st = quant_tensor_quantize(&qt, arr.data, arr.count, q.dt, (int)q.blocksize, q.double_quant);
    if (st != QLAB_OK) {
        qlab_fail_context(st, "%s", in);
        goto fail;
    }
    qt.orig_dtype = !strcmp(arr.source_dtype, "<f2")   ? QUANT_ORIG_F16
                    : !strcmp(arr.source_dtype, "<u2") ? QUANT_ORIG_BF16
                                                       : QUANT_ORIG_F32;
    qt.ndim = arr.ndim;
    for (int i = 0; i < arr.ndim; i++)
        qt.shape[i] = arr.shape[i];
    if (quant_io_save(out, q.name, &qt) != QLAB_OK) goto fail;
    if (q.stats && print_quant_stats(&q, &arr, &qt) != QLAB_OK) goto fail;
    status = 0;
fail:
    if (status != 0) report("quant");
    quant_tensor_free(&qt);
    npy_free(&arr);
    return status;
}

static int cmd_dequant(int argc, char **argv) {
    const char *name = NULL, *pos[2] = {NULL, NULL}, *out_dtype = NULL;
    int npos = 0, only_positional = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (only_positional || a[0] != '-' || a[1] == 0) {
            if (npos < 2) pos[npos] = a;
            npos++;
        } else if (!strcmp(a, "--")) {
            only_positional = 1;
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            dequant_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--bf16")) {
            out_dtype = "bf16";
        } else if (is_flag(a, "--out-dtype")) {
            if (!(out_dtype = option_value("dequant", argc, argv, &i, "--out-dtype")))
                return CMD_QUANT_EXIT_USAGE;
            if (strcmp(out_dtype, "fp32") && strcmp(out_dtype, "fp16") && strcmp(out_dtype, "bf16")) {
                fprintf(stderr, "qlab dequant: --out-dtype '%s' is not fp32, fp16 or bf16\n", out_dtype);
                return CMD_QUANT_EXIT_USAGE;
            }
        } else if (is_flag(a, "--name")) {
            if (!(name = option_value("dequant", argc, argv, &i, "--name"))) return CMD_QUANT_EXIT_USAGE;
        } else {
            fprintf(stderr, "qlab dequant: unknown option '%s' (see qlab dequant --help)\n", a);
            return CMD_QUANT_EXIT_USAGE;
        }
    }
    if (!two_files("dequant", "IN.safetensors and OUT.npy", npos)) return CMD_QUANT_EXIT_USAGE;
    const char *in = pos[0], *out = pos[1];
    safetensors_file f;
    if (safetensors_open(&f, in) != QLAB_OK) return report("dequant");
    int status = CMD_QUANT_EXIT_DATA;
    quant_tensor qt;
    memset(&qt, 0, sizeof qt);
    void *buf = NULL;
    uint16_t *half = NULL;
    char found[1024];
    if (!name) {
        int count = quant_io_count(&f);
        if (count != 1) {
            qlab_fail(QLAB_ERR_FORMAT, "%s: holds %d quantized tensors; choose one with --name", in, count);
            goto done;
        }
        if (quant_io_name_at(&f, 0, found, sizeof found) != QLAB_OK) goto done;
        name = found;
    }
    if (quant_io_read(&f, name, &qt) != QLAB_OK) goto done;
    if (!out_dtype)
        out_dtype = qt.orig_dtype == QUANT_ORIG_F16    ? "fp16"
                    : qt.orig_dtype == QUANT_ORIG_BF16 ? "bf16"
                                                       : "fp32";
    size_t n = (size_t)(qt.n > 0 ? qt.n : 1);
    buf = qlab_alloc_aligned(n * sizeof(float));
    if (!buf || quant_tensor_dequantize(&qt, buf) != QLAB_OK) goto done;
    const char *descr = "<f4";
    if (strcmp(out_dtype, "fp32")) { /* each fp32 value rounded to nearest even */
        int fp16 = !strcmp(out_dtype, "fp16");
        const float *src = buf;
        half = qlab_alloc_aligned(n * sizeof(uint16_t));
        if (!half) goto done;
        for (size_t i = 0; i < (size_t)qt.n; i++)
            half[i] = fp16 ? f32_to_fp16(src[i]) : f32_to_bf16(src[i]);
        descr = fp16 ? "<f2" : "<u2";
    }
    if (npy_write(out, descr, qt.ndim, qt.shape, half ? (const void *)half : buf) != QLAB_OK) goto done;
    status = 0;
done:
    if (status != 0) report("dequant");
    qlab_free_aligned(buf);
    qlab_free_aligned(half);
    quant_tensor_free(&qt);
    safetensors_close(&f);
    return status;
}

QLAB_COMMAND(quant_command, "quant", "quantize a .npy array to a 4-bit safetensors file", cmd_quant)
QLAB_COMMAND(dequant_command, "dequant", "dequantize a 4-bit safetensors tensor back to .npy", cmd_dequant)
