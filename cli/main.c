/* Entry point of build/bin/qlab: dispatches to the registered subcommands. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "core/base/common.h"

#define MAX_COMMANDS 64
static const cli_command *commands[MAX_COMMANDS];
static int n_commands;

void cli_register(const cli_command *cmd) {
    if (n_commands < MAX_COMMANDS) commands[n_commands++] = cmd;
}

int cli_run(const char *name, int argc, char **argv) {
    for (int i = 0; i < n_commands; i++)
        if (!strcmp(name, commands[i]->name)) return commands[i]->run(argc, argv);
    fprintf(stderr, "qlab: no command '%s'\n", name);
    return 2;
}

static int by_name(const void *a, const void *b) {
    return strcmp((*(const cli_command *const *)a)->name, (*(const cli_command *const *)b)->name);
}

static void usage(FILE *f) {
    fprintf(f, "qlab %s — reproducible QLoRA experiments\n\nUsage: qlab COMMAND [options]\n\nCommands:\n",
            QLAB_VERSION);
    for (int i = 0; i < n_commands; i++)
        fprintf(f, "  %-16s %s\n", commands[i]->name, commands[i]->summary);
    fprintf(f, "\nRun 'qlab COMMAND --help' for the options of a command.\n");
}

int cli_parse_int(const char *cmd, const char *flag, const char *text, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = text ? strtol(text, &end, 10) : 0;
    if (!text || errno || end == text || *end || v < lo || v > hi) {
        fprintf(stderr, "qlab %s: %s needs an integer from %ld to %ld (got '%s')\n", cmd, flag, lo, hi,
                text ? text : "nothing");
        return 0;
    }
    *out = v;
    return 1;
}

int cli_parse_double(const char *cmd, const char *flag, const char *text, double *out) {
    char *end;
    errno = 0;
    double v = text ? strtod(text, &end) : 0;
    if (!text || errno || end == text || *end || !isfinite(v)) {
        fprintf(stderr, "qlab %s: %s needs a finite number (got '%s')\n", cmd, flag, text ? text : "nothing");
        return 0;
    }
    *out = v;
    return 1;
}

int main(int argc, char **argv) {
    qlab_openmp_prefer_passive(argv);
    qsort(commands, (size_t)n_commands, sizeof commands[0], by_name);
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("qlab %s\n", QLAB_VERSION);
        return 0;
    }
    for (int i = 0; i < n_commands; i++)
        if (!strcmp(argv[1], commands[i]->name)) return commands[i]->run(argc - 1, argv + 1);
    fprintf(stderr, "qlab: unknown command '%s' (run 'qlab --help' for the list)\n", argv[1]);
    return 2;
}
