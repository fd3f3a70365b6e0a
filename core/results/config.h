/* Strict JSON experiment configs: an experiment declares the keys it accepts (type, default, help) and
 * config_load rejects anything else — unknown keys, wrong types, malformed JSON — with one line naming
 * the file and the key. The raw text is kept because it goes into every results file's provenance.
 * Command-line overrides ("key=value", value parsed as JSON or else taken as a string) go through the
 * same checks. */
#ifndef QLAB_CONFIG_H
#define QLAB_CONFIG_H

#include <stdint.h>
#include <stdio.h>

#include "core/base/common.h"

typedef enum {
    CONFIG_INT,          /* a JSON number with an integral value (|v| <= 2^53) */
    CONFIG_DOUBLE,       /* any JSON number */
    CONFIG_BOOL,         /* true / false */
    CONFIG_STRING,       /* a JSON string */
    CONFIG_STRING_ARRAY, /* [ "a", "b" ] */
    CONFIG_INT_ARRAY,    /* [ 1, 2 ] */
    CONFIG_NUMBER_ARRAY, /* [ 1.5, 2 ] */
    CONFIG_OBJECT,       /* { ... }, read with config_object() and checked by the caller */
} config_type;

typedef struct {
    const char *key;
    config_type type;
    const char *default_json; /* the default as JSON text ("64", "[\"nf4\"]"); NULL = the key is required */
    const char *help;         /* one line for --help */
} config_key;

typedef struct config config; /* opaque */

/* Reads path, checks it against keys[0..nkeys), then applies the overrides ("key=value" strings, may be
 * NULL when noverrides is 0) and checks them too. Missing keys take their defaults. */
qlab_status config_load(config **out, const char *path, const config_key *keys, int nkeys,
                        const char *const *overrides, int noverrides);
/* The same from text in memory; origin names the text in messages (a path or "<string>"). */
qlab_status config_parse(config **out, const char *text, const char *origin, const config_key *keys,
                         int nkeys, const char *const *overrides, int noverrides);
void config_free(config *c);

/* The file's text exactly as read, its path, and the effective configuration (defaults and overrides
 * applied) as compact JSON. */
const char *config_text(const config *c);
const char *config_path(const config *c);
/* Where key's value came from, for messages about it: "--set key=value" when a command-line override set
 * it, else the config's path (also for a default). */
const char *config_key_origin(const config *c, const char *key);
const char *config_effective_json(const config *c);

/* Typed getters. Asking for an undeclared key or the wrong type is a programming error: they return
 * 0 / NULL. Whole-number doubles are accepted by config_double for integer keys too. */
int64_t config_int(const config *c, const char *key);
double config_double(const config *c, const char *key);
int config_bool(const config *c, const char *key);
const char *config_string(const config *c, const char *key);
int config_array_length(const config *c, const char *key);
const char *config_string_at(const config *c, const char *key, int i);
int64_t config_int_at(const config *c, const char *key, int i);
double config_number_at(const config *c, const char *key, int i);
/* The raw cJSON object (a const cJSON *; void here so callers need not include cJSON.h). */
const void *config_object(const config *c, const char *key);

/* Sets the default of key in keys[0..nkeys) to json, for a default only known at run time (e.g. every data
 * type's name from the quant layer's descriptor table, which must never go stale). Fails naming the key when
 * it is not declared. */
qlab_status config_key_set_default(config_key *keys, int nkeys, const char *key, const char *json);

/* Prints the declared keys with type, default and help (for a program's --help). */
void config_print_keys(const config_key *keys, int nkeys, void *file /* FILE * */);

/* The command line every experiment program shares: [--config FILE.json] [--out RESULTS.h5]
 * [--set key=value ...] [--memory-budget BYTES] [--help]. Defaults: experiments/<name>.json and
 * results/<name>.h5. The memory budget (core/base/memacct.h) comes from --memory-budget, else the config
 * key memory_budget (a string such as "512MiB"; every experiment accepts it), else the environment
 * variable QLAB_MEMORY_BUDGET; experiment_load_config applies it. */
#define EXPERIMENT_MAX_OVERRIDES 64
typedef struct {
    const char *name;
    const char *config_path, *out_path;
    const char *overrides[EXPERIMENT_MAX_OVERRIDES];
    int n_overrides;
    const char *memory_budget; /* the --memory-budget text, or NULL */
    char default_config[256], default_out[256];
} experiment_args;

/* Parses argv. Returns -1 when the program should go on, otherwise the exit code to return at once
 * (0 after printing usage for --help, 2 with one line on stderr for a bad option). */
int experiment_parse_args(experiment_args *a, const char *name, int argc, char **argv,
                          void (*usage)(FILE *file));
/* config_load of a->config_path with the --set overrides, accepting the common key memory_budget beside
 * keys[0..nkeys); then sets the memory budget as described above (one line naming the flag, key or
 * variable on a bad value). */
qlab_status experiment_load_config(const experiment_args *a, config **out, const config_key *keys, int nkeys);

#endif
