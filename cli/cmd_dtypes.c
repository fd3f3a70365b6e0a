/* `qlab dtypes`: the 4-bit data types as the descriptor table (core/quant/quant_types.c) defines them, for
 * users (a table, the code books), for scripts (the names) and for gnuplot (the per-type plot styles that
 * `qlab report` passes to plots/common.gp). Also the help-text helpers that print those derived lists. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "core/base/common.h"
#include "core/quant/quant.h"

#define HELP_WIDTH 104

void cli_print_option(void *file, const char *flag, int indent, const char *text) {
    FILE *f = file;
    int col = fprintf(f, "%s", flag);
    for (; col < indent; col++)
        fputc(' ', f);
    if (col > indent) { /* a flag wider than its column: the text starts on the next line */
        fputc('\n', f);
        for (col = 0; col < indent; col++)
            fputc(' ', f);
    }
    int line_start = 1;
    for (const char *p = text; *p;) {
        size_t word = strcspn(p, " ");
        if (!line_start && col + 1 + (int)word > HELP_WIDTH) {
            fputc('\n', f);
            for (col = 0; col < indent; col++)
                fputc(' ', f);
            line_start = 1;
        }
        if (!line_start) col += fprintf(f, " ");
        col += fprintf(f, "%.*s", (int)word, p);
        line_start = 0;
        p += word;
        while (*p == ' ')
            p++;
    }
    fputc('\n', f);
}

const char *cli_dtype_gnuplot_style(void) {
    static char style[QUANT_DTYPE_COUNT * 48 + 128];
    if (style[0]) return style;
    char names[QUANT_DTYPE_COUNT * 24] = "", colors[QUANT_DTYPE_COUNT * 12] = "",
                                   points[QUANT_DTYPE_COUNT * 8] = "";
    for (int d = 0; d < QUANT_DTYPE_COUNT; d++) {
        const quant_type_traits *t = quant_type_traits_get((quant_dtype)d);
        const char *sep = d ? " " : "";
        snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", sep, t->name);
        snprintf(colors + strlen(colors), sizeof colors - strlen(colors), "%s%s", sep, t->plot_color);
        snprintf(points + strlen(points), sizeof points - strlen(points), "%s%d", sep, t->plot_point);
    }
    snprintf(style, sizeof style, "all_types = '%s'; type_colors = '%s'; type_points = '%s'", names, colors,
             points);
    return style;
}

static void dtypes_usage(FILE *f) {
    fprintf(
        f,
        "Usage: qlab dtypes [--names | --codebooks | --gnuplot]\n\n"
        "The 4-bit data types qlab knows, as its descriptor table defines them (core/quant/quant_types.c):\n"
        "name (the spelling --dtype and the experiment configs take), block sizes, how the per-block\n"
        "constant is stored, bits per parameter at the default block size, whether double quantization\n"
        "applies, the quant_state name in safetensors files, and the quantization kernels.\n\n");
    cli_print_option(f, "  --names", 16, "print only the names, one per line");
    cli_print_option(f, "  --codebooks", 16, "print each type's 16 code values (index = 4-bit code)");
    cli_print_option(f, "  --gnuplot", 16,
                     "print the gnuplot definitions of the per-type colours and markers (all_types, "
                     "type_colors, type_points) that 'qlab report' passes to plots/common.gp");
    cli_print_option(f, "  -h, --help", 16, "show this help");
}

static void print_table(void) {
    printf("%-9s %-11s %-18s %-7s %-12s %-10s %-3s %-18s %s\n", "name", "label", "block sizes", "default",
           "scale", "bits/param", "DQ", "file quant_state", "quantize kernels");
    for (int d = 0; d < QUANT_DTYPE_COUNT; d++) {
        const quant_type_traits *t = quant_type_traits_get((quant_dtype)d);
        char sizes[32];
        if (t->blocksize_min == t->blocksize_max)
            snprintf(sizes, sizeof sizes, "%d", t->blocksize_min);
        else
            snprintf(sizes, sizeof sizes, "2^k, %d..%d", t->blocksize_min, t->blocksize_max);
        char scale[32];
        snprintf(scale, sizeof scale, "%s%s", t->scale_name, t->tensor_scale ? " x fp32" : "");
        printf("%-9s %-11s %-18s %-7d %-12s %-10.4g %-3s %-18s %s\n", t->name, t->label, sizes,
               t->blocksize_default, scale,
               quant_bits_per_param_analytic((quant_dtype)d, t->blocksize_default, 0),
               quant_dtype_has_fp32_absmax((quant_dtype)d) ? "yes" : "no", t->quant_state,
               t->quantize_kernels);
    }
    printf("\n");
    for (int d = 0; d < QUANT_DTYPE_COUNT; d++) {
        const quant_type_traits *t = quant_type_traits_get((quant_dtype)d);
        printf("%-9s %s\n", t->name, t->description);
    }
}

static void print_codebooks(void) {
    for (int d = 0; d < QUANT_DTYPE_COUNT; d++) {
        const quant_type_traits *t = quant_type_traits_get((quant_dtype)d);
        printf("%-9s", t->name);
        for (int c = 0; c < 16; c++)
            printf(" %.9g", (double)t->codebook[c]);
        printf("\n");
    }
}

static int cmd_dtypes(int argc, char **argv) {
    const char *mode = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            dtypes_usage(stdout);
            return 0;
        }
        if (strcmp(argv[i], "--names") && strcmp(argv[i], "--codebooks") && strcmp(argv[i], "--gnuplot")) {
            fprintf(stderr, "qlab dtypes: unknown option '%s' (see qlab dtypes --help)\n", argv[i]);
            return 2;
        }
        if (mode && strcmp(mode, argv[i])) {
            fprintf(stderr, "qlab dtypes: %s and %s exclude each other\n", mode, argv[i]);
            return 2;
        }
        mode = argv[i];
    }
    if (!mode) {
        print_table();
    } else if (!strcmp(mode, "--names")) {
        for (int d = 0; d < QUANT_DTYPE_COUNT; d++)
            printf("%s\n", quant_dtype_name((quant_dtype)d));
    } else if (!strcmp(mode, "--codebooks")) {
        print_codebooks();
    } else {
        printf("# 4-bit data type styles from qlab's descriptor table (qlab dtypes --gnuplot)\n%s\n",
               cli_dtype_gnuplot_style());
    }
    return 0;
}

QLAB_COMMAND(dtypes_command, "dtypes", "list the 4-bit data types (names, block sizes, scales, plot styles)",
             cmd_dtypes)
