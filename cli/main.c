/* Entry point of build/bin/qlab: dispatches to the registered subcommands. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "core/base/atomic_file.h"
#include "core/base/common.h"
#include "core/base/memacct.h"

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
    fprintf(
        f,
        "\nGlobal option (before or after COMMAND, for every command):\n"
        "  --memory-budget BYTES  stop before any allocation that would take the library's accounted memory\n"
        "                         past BYTES (suffixes K/M/G/KiB/MiB/GiB, KB/MB/GB; 0 = none; default: env\n"
        "                         QLAB_MEMORY_BUDGET), printing the breakdown by category; exit code %d\n",
        QLAB_EXIT_BUDGET);
    fprintf(f, "\nRun 'qlab COMMAND --help' for the options of a command.\n");
}

/* Takes every "--memory-budget BYTES" / "--memory-budget=BYTES" out of argv (wherever it stands, so it
 * applies to every command without each one declaring it) and sets the budget; the environment variable
 * QLAB_MEMORY_BUDGET is the default. Returns 0, or 2 after one line on stderr for a bad value. */
static int take_memory_budget(int *argc, char **argv) {
    if (memacct_budget_from_env() != QLAB_OK) {
        fprintf(stderr, "qlab: %s\n", qlab_last_error());
        return 2;
    }
    int out = 1;
    for (int i = 1; i < *argc; i++) {
        const char *text = NULL;
        if (!strcmp(argv[i], "--memory-budget")) {
            if (i + 1 >= *argc) {
                fprintf(stderr, "qlab: --memory-budget needs a value (bytes, e.g. 512M or 2GiB)\n");
                return 2;
            }
            text = argv[++i];
        } else if (!strncmp(argv[i], "--memory-budget=", 16)) {
            text = argv[i] + 16;
        } else {
            argv[out++] = argv[i];
            continue;
        }
        size_t bytes;
        if (memacct_parse_bytes(text, "--memory-budget", &bytes) != QLAB_OK) {
            fprintf(stderr, "qlab: %s\n", qlab_last_error());
            return 2;
        }
        memacct_set_budget(bytes);
    }
    argv[out] = NULL;
    *argc = out;
    return 0;
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

int cli_check_output(const char *cmd, const char *path) {
    if (atomic_file_check_destination(path) == QLAB_OK) return 1;
    fprintf(stderr, "qlab %s: %s\n", cmd, qlab_last_error());
    return 0;
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
    qlab_runtime_restart(argv);
    qsort(commands, (size_t)n_commands, sizeof commands[0], by_name);
    if (take_memory_budget(&argc, argv) != 0) return 2;
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
        if (!strcmp(argv[1], commands[i]->name)) {
            int rc = commands[i]->run(argc - 1, argv + 1);
            /* A command stopped by the memory budget exits with its own code, whatever the command returns
             * for failures in general. */
            if (rc != 0 && memacct_refusals() > 0 && qlab_last_status() == QLAB_ERR_BUDGET)
                return QLAB_EXIT_BUDGET;
            return rc;
        }
    fprintf(stderr, "qlab: unknown command '%s' (run 'qlab --help' for the list)\n", argv[1]);
    return 2;
}
