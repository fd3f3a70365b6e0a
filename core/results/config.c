/* Strict experiment configs on top of cJSON: declared keys only, exact types, defaults filled in, and
 * parse errors located by line and column. See config.h. */
#include "core/results/config.h"

#include "core/base/atomic_file.h"

#include "core/base/memacct.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

struct config {
    char *path;
    char *text;
    char *effective_json;
    const config_key *keys;
    int nkeys;
    cJSON *values; /* object holding every declared key, defaults applied */
    /* origin[i]: "--set key=value" when keys[i] was last set by an override (NULL: the file or default) */
    char **origin;
    config_key *owned_keys; /* keys when the config owns them (experiment_load_config), else NULL */
};

/* 2^53: larger integers are not exactly representable in the double cJSON stores. */
#define CONFIG_MAX_EXACT_INT 9007199254740992.0

static const char *type_phrase(config_type t) {
    switch (t) {
    case CONFIG_INT:
        return "an integer";
    case CONFIG_DOUBLE:
        return "a number";
    case CONFIG_BOOL:
        return "a boolean (true or false)";
    case CONFIG_STRING:
        return "a string";
    case CONFIG_STRING_ARRAY:
        return "an array of strings";
    case CONFIG_INT_ARRAY:
        return "an array of integers";
    case CONFIG_NUMBER_ARRAY:
        return "an array of numbers";
    case CONFIG_OBJECT:
        return "an object";
    }
    return "?";
}

static const char *type_short(config_type t) {
    switch (t) {
    case CONFIG_INT:
        return "int";
    case CONFIG_DOUBLE:
        return "number";
    case CONFIG_BOOL:
        return "bool";
    case CONFIG_STRING:
        return "string";
    case CONFIG_STRING_ARRAY:
        return "[string]";
    case CONFIG_INT_ARRAY:
        return "[int]";
    case CONFIG_NUMBER_ARRAY:
        return "[number]";
    case CONFIG_OBJECT:
        return "object";
    }
    return "?";
}

static int is_exact_int(const cJSON *v) {
    if (!cJSON_IsNumber(v)) return 0;
    double d = v->valuedouble;
    return isfinite(d) && d == floor(d) && fabs(d) <= CONFIG_MAX_EXACT_INT;
}

/* "a string (\"abc\")", "a number (1.5)", ... for messages. */
static void describe(const cJSON *v, char *buf, size_t n) {
    if (cJSON_IsString(v))
        snprintf(buf, n, "a string (\"%.40s\")", v->valuestring);
    else if (cJSON_IsNumber(v))
        snprintf(buf, n, "%s (%.17g)", is_exact_int(v) ? "an integer" : "a number", v->valuedouble);
    else if (cJSON_IsBool(v))
        snprintf(buf, n, "a boolean (%s)", cJSON_IsTrue(v) ? "true" : "false");
    else if (cJSON_IsNull(v))
        snprintf(buf, n, "null");
    else if (cJSON_IsArray(v))
        snprintf(buf, n, "an array");
    else if (cJSON_IsObject(v))
        snprintf(buf, n, "an object");
    else
        snprintf(buf, n, "an unknown JSON value");
}

static int element_ok(const cJSON *e, config_type t) {
    switch (t) {
    case CONFIG_STRING_ARRAY:
        return cJSON_IsString(e);
    case CONFIG_INT_ARRAY:
        return is_exact_int(e);
    case CONFIG_NUMBER_ARRAY:
        return cJSON_IsNumber(e) && isfinite(e->valuedouble);
    default:
        return 0;
    }
}

static qlab_status check_value(const cJSON *v, const config_key *k, const char *origin) {
    char got[96];
    int ok = 0;
    switch (k->type) {
    case CONFIG_INT:
        ok = is_exact_int(v);
        break;
    case CONFIG_DOUBLE:
        ok = cJSON_IsNumber(v) && isfinite(v->valuedouble);
        break;
    case CONFIG_BOOL:
        ok = cJSON_IsBool(v);
        break;
    case CONFIG_STRING:
        ok = cJSON_IsString(v);
        break;
    case CONFIG_OBJECT:
        ok = cJSON_IsObject(v);
        break;
    case CONFIG_STRING_ARRAY:
    case CONFIG_INT_ARRAY:
    case CONFIG_NUMBER_ARRAY:
        if (!cJSON_IsArray(v)) break;
        int i = 0;
        for (const cJSON *e = v->child; e; e = e->next, i++) {
            if (!element_ok(e, k->type)) {
                describe(e, got, sizeof got);
                return qlab_fail(QLAB_ERR_ARG, "%s: key '%s' must be %s, but element %d is %s", origin,
                                 k->key, type_phrase(k->type), i, got);
            }
        }
        ok = 1;
        break;
    }
    if (ok) return QLAB_OK;
    describe(v, got, sizeof got);
    return qlab_fail(QLAB_ERR_ARG, "%s: key '%s' must be %s, got %s", origin, k->key, type_phrase(k->type),
                     got);
}

static const config_key *find_key(const config_key *keys, int nkeys, const char *name) {
    for (int i = 0; i < nkeys; i++)
        if (!strcmp(keys[i].key, name)) return &keys[i];
    return NULL;
}

static qlab_status fail_unknown_key(const char *origin, const char *name, const config_key *keys, int nkeys) {
    char list[512] = "";
    size_t used = 0;
    for (int i = 0; i < nkeys && used < sizeof list; i++)
        used += (size_t)snprintf(list + used, sizeof list - used, "%s%s", i ? ", " : "", keys[i].key);
    return qlab_fail(QLAB_ERR_ARG, "%s: unknown key '%s' (accepted: %s)", origin, name, list);
}

/* Line and column (1-based) of byte offset pos in text, and a short excerpt of that line. */
static void locate(const char *text, size_t pos, int *line, int *col, char *excerpt, size_t n) {
    *line = 1;
    size_t line_start = 0;
    for (size_t i = 0; i < pos && text[i]; i++)
        if (text[i] == '\n') {
            (*line)++;
            line_start = i + 1;
        }
    *col = (int)(pos - line_start) + 1;
    size_t start = pos > line_start + 20 ? pos - 20 : line_start, j = 0;
    for (size_t i = start; text[i] && text[i] != '\n' && j + 1 < n && i < pos + 20; i++)
        excerpt[j++] = (text[i] == '\t' || text[i] == '\r') ? ' ' : text[i];
    excerpt[j] = 0;
}

static qlab_status parse_json(const char *text, size_t len, const char *origin, cJSON **out) {
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len + 1, &end, 1);
    if (!root) {
        size_t pos = (end && end >= text && end <= text + len) ? (size_t)(end - text) : len;
        int line, col;
        char excerpt[64];
        locate(text, pos, &line, &col, excerpt, sizeof excerpt);
        if (pos >= len)
            return qlab_fail(QLAB_ERR_FORMAT, "%s:%d:%d: malformed JSON: unexpected end of text", origin,
                             line, col);
        return qlab_fail(QLAB_ERR_FORMAT, "%s:%d:%d: malformed JSON near '%s'", origin, line, col, excerpt);
    }
    *out = root;
    return QLAB_OK;
}

static qlab_status apply_override(config *c, const char *ov) {
    const char *eq = strchr(ov, '=');
    if (!eq || eq == ov) return qlab_fail(QLAB_ERR_ARG, "--set %s: expected key=value", ov);
    char name[128];
    size_t nlen = (size_t)(eq - ov);
    if (nlen >= sizeof name) return qlab_fail(QLAB_ERR_ARG, "--set %s: key too long", ov);
    memcpy(name, ov, nlen);
    name[nlen] = 0;
    char origin[256];
    snprintf(origin, sizeof origin, "--set %.200s", ov);
    const config_key *k = find_key(c->keys, c->nkeys, name);
    if (!k) return fail_unknown_key(origin, name, c->keys, c->nkeys);
    const char *value = eq + 1;
    cJSON *v = NULL;
    /* A bare word for a string key is the string itself, so model_path=x.bin needs no JSON quotes. */
    if (k->type == CONFIG_STRING && value[0] != '"') {
        v = cJSON_CreateString(value);
        if (!v) return qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", origin);
    } else {
        if (parse_json(value, strlen(value), origin, &v) != QLAB_OK)
            return qlab_fail(QLAB_ERR_FORMAT, "%s: key '%s' must be %s, got '%.100s' (not valid JSON)",
                             origin, name, type_phrase(k->type), value);
    }
    qlab_status st = check_value(v, k, origin);
    if (st != QLAB_OK) {
        cJSON_Delete(v);
        return st;
    }
    cJSON_ReplaceItemInObjectCaseSensitive(c->values, name, v);
    int idx = (int)(k - c->keys);
    if (!c->origin && !(c->origin = calloc((size_t)c->nkeys, sizeof *c->origin)))
        return qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", origin);
    free(c->origin[idx]);
    if (!(c->origin[idx] = strdup(origin))) return qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", origin);
    return QLAB_OK;
}

static qlab_status build(config *c, const char *origin, const char *const *overrides, int noverrides) {
    cJSON *root = NULL;
    QLAB_TRY(parse_json(c->text, strlen(c->text), origin, &root));
    qlab_status st = QLAB_OK;
    if (!cJSON_IsObject(root)) {
        char got[96];
        describe(root, got, sizeof got);
        st = qlab_fail(QLAB_ERR_FORMAT, "%s: the config must be a JSON object, got %s", origin, got);
        goto done;
    }
    for (const cJSON *e = root->child; e; e = e->next) {
        const config_key *k = find_key(c->keys, c->nkeys, e->string);
        if (!k) {
            st = fail_unknown_key(origin, e->string, c->keys, c->nkeys);
            goto done;
        }
        for (const cJSON *f = e->next; f; f = f->next)
            if (!strcmp(f->string, e->string)) {
                st = qlab_fail(QLAB_ERR_ARG, "%s: key '%s' appears twice", origin, e->string);
                goto done;
            }
        if ((st = check_value(e, k, origin)) != QLAB_OK) goto done;
    }
    c->values = cJSON_CreateObject();
    if (!c->values) {
        st = qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", origin);
        goto done;
    }
    for (int i = 0; i < c->nkeys; i++) {
        const config_key *k = &c->keys[i];
        const cJSON *given = cJSON_GetObjectItemCaseSensitive(root, k->key);
        cJSON *v = NULL;
        if (given) {
            v = cJSON_Duplicate(given, 1);
        } else if (k->default_json) {
            char what[160];
            snprintf(what, sizeof what, "default of key '%s'", k->key);
            if ((st = parse_json(k->default_json, strlen(k->default_json), what, &v)) != QLAB_OK) goto done;
            if ((st = check_value(v, k, what)) != QLAB_OK) {
                cJSON_Delete(v);
                goto done;
            }
        } else {
            st = qlab_fail(QLAB_ERR_ARG, "%s: missing required key '%s' (%s)", origin, k->key,
                           type_phrase(k->type));
            goto done;
        }
        if (!v) {
            st = qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", origin);
            goto done;
        }
        cJSON_AddItemToObject(c->values, k->key, v);
    }
    for (int i = 0; i < noverrides; i++)
        if ((st = apply_override(c, overrides[i])) != QLAB_OK) goto done;
    c->effective_json = cJSON_PrintUnformatted(c->values);
    if (!c->effective_json) st = qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", origin);
done:
    cJSON_Delete(root);
    return st;
}

qlab_status config_parse(config **out, const char *text, const char *origin, const config_key *keys,
                         int nkeys, const char *const *overrides, int noverrides) {
    *out = NULL;
    config *c = qlab_calloc(1, sizeof *c);
    if (!c) return QLAB_ERR_NOMEM;
    c->keys = keys;
    c->nkeys = nkeys;
    c->path = strdup(origin ? origin : "<string>");
    c->text = strdup(text ? text : "");
    if (!c->path || !c->text) {
        config_free(c);
        return qlab_fail(QLAB_ERR_NOMEM, "out of memory reading a config");
    }
    qlab_status st = build(c, c->path, overrides, noverrides);
    if (st != QLAB_OK) {
        config_free(c);
        return st;
    }
    *out = c;
    return QLAB_OK;
}

qlab_status config_load(config **out, const char *path, const config_key *keys, int nkeys,
                        const char *const *overrides, int noverrides) {
    *out = NULL;
    char *text;
    size_t len;
    QLAB_TRY(qlab_read_file(path, &text, &len));
    if (strlen(text) != len) {
        free(text);
        return qlab_fail(QLAB_ERR_FORMAT, "%s: contains a NUL byte (not a JSON text file)", path);
    }
    qlab_status st = config_parse(out, text, path, keys, nkeys, overrides, noverrides);
    free(text);
    return st;
}

void config_free(config *c) {
    if (!c) return;
    for (int i = 0; c->origin && i < c->nkeys; i++)
        free(c->origin[i]);
    free(c->origin);
    cJSON_Delete(c->values);
    free(c->effective_json);
    free(c->text);
    free(c->path);
    free(c->owned_keys);
    free(c);
}

const char *config_text(const config *c) {
    return c->text;
}
const char *config_path(const config *c) {
    return c->path;
}
const char *config_key_origin(const config *c, const char *key) {
    const config_key *k = find_key(c->keys, c->nkeys, key);
    if (k && c->origin && c->origin[k - c->keys]) return c->origin[k - c->keys];
    return c->path;
}
const char *config_effective_json(const config *c) {
    return c->effective_json;
}

static const cJSON *get(const config *c, const char *key) {
    return c && c->values ? cJSON_GetObjectItemCaseSensitive(c->values, key) : NULL;
}

int64_t config_int(const config *c, const char *key) {
    const cJSON *v = get(c, key);
    return is_exact_int(v) ? (int64_t)v->valuedouble : 0;
}

double config_double(const config *c, const char *key) {
    const cJSON *v = get(c, key);
    return cJSON_IsNumber(v) ? v->valuedouble : 0.0;
}

int config_bool(const config *c, const char *key) {
    return cJSON_IsTrue(get(c, key));
}

const char *config_string(const config *c, const char *key) {
    const cJSON *v = get(c, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

int config_array_length(const config *c, const char *key) {
    const cJSON *v = get(c, key);
    return cJSON_IsArray(v) ? cJSON_GetArraySize(v) : 0;
}

static const cJSON *element(const config *c, const char *key, int i) {
    const cJSON *v = get(c, key);
    return cJSON_IsArray(v) && i >= 0 ? cJSON_GetArrayItem(v, i) : NULL;
}

const char *config_string_at(const config *c, const char *key, int i) {
    const cJSON *e = element(c, key, i);
    return cJSON_IsString(e) ? e->valuestring : NULL;
}

int64_t config_int_at(const config *c, const char *key, int i) {
    const cJSON *e = element(c, key, i);
    return is_exact_int(e) ? (int64_t)e->valuedouble : 0;
}

double config_number_at(const config *c, const char *key, int i) {
    const cJSON *e = element(c, key, i);
    return cJSON_IsNumber(e) ? e->valuedouble : 0.0;
}

const void *config_object(const config *c, const char *key) {
    const cJSON *v = get(c, key);
    return cJSON_IsObject(v) ? v : NULL;
}

qlab_status config_key_set_default(config_key *keys, int nkeys, const char *key, const char *json) {
    for (int i = 0; i < nkeys; i++) {
        if (!strcmp(keys[i].key, key)) {
            keys[i].default_json = json;
            return QLAB_OK;
        }
    }
    return qlab_fail(QLAB_ERR_ARG, "config: cannot set the default of undeclared key '%s'", key);
}

void config_print_keys(const config_key *keys, int nkeys, void *file) {
    FILE *f = file;
    for (int i = 0; i < nkeys; i++)
        fprintf(f, "  %-16s %-9s default %-28s %s\n", keys[i].key, type_short(keys[i].type),
                keys[i].default_json ? keys[i].default_json : "(required)", keys[i].help ? keys[i].help : "");
}

int experiment_parse_args(experiment_args *a, const char *name, int argc, char **argv,
                          void (*usage)(FILE *file)) {
    memset(a, 0, sizeof *a);
    a->name = name;
    snprintf(a->default_config, sizeof a->default_config, "experiments/%s.json", name);
    snprintf(a->default_out, sizeof a->default_out, "results/%s.h5", name);
    a->config_path = a->default_config;
    a->out_path = a->default_out;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            printf(
                "\nEvery experiment also takes --memory-budget BYTES (suffixes K/M/G/KiB/MiB/GiB; 0 = none; "
                "config key memory_budget, env QLAB_MEMORY_BUDGET): a run that would exceed it stops before "
                "allocating, with the breakdown by category, and exits %d.\n",
                QLAB_EXIT_BUDGET);
            return 0;
        }
        if (!strncmp(argv[i], "--memory-budget=", 16) || !strcmp(argv[i], "--memory-budget")) {
            const char *text = argv[i][15] == '=' ? argv[i] + 16 : (i + 1 < argc ? argv[++i] : NULL);
            size_t bytes;
            if (!text || memacct_parse_bytes(text, "--memory-budget", &bytes) != QLAB_OK) {
                fprintf(stderr, "%s: %s\n", name, text ? qlab_last_error() : "--memory-budget needs a value");
                return 2;
            }
            a->memory_budget = text;
            continue;
        }
        int known = !strcmp(argv[i], "--config") || !strcmp(argv[i], "--out") || !strcmp(argv[i], "--set");
        if (!known || i + 1 >= argc) {
            fprintf(stderr, "%s: unknown or incomplete option '%s' (see --help)\n", name, argv[i]);
            return 2;
        }
        if (!strcmp(argv[i], "--config")) {
            a->config_path = argv[++i];
        } else if (!strcmp(argv[i], "--out")) {
            a->out_path = argv[++i];
        } else if (a->n_overrides < EXPERIMENT_MAX_OVERRIDES) {
            a->overrides[a->n_overrides++] = argv[++i];
        } else {
            fprintf(stderr, "%s: more than %d --set options\n", name, EXPERIMENT_MAX_OVERRIDES);
            return 2;
        }
    }
    /* before the experiment runs, not after it: the results are written at the end */
    if (atomic_file_check_destination(a->out_path) != QLAB_OK) {
        fprintf(stderr, "%s: %s\n", name, qlab_last_error());
        return 2;
    }
    return -1;
}

qlab_status experiment_load_config(const experiment_args *a, config **out, const config_key *keys,
                                   int nkeys) {
    *out = NULL;
    config_key *all = qlab_calloc((size_t)nkeys + 1, sizeof *all);
    if (!all) return QLAB_ERR_NOMEM;
    memcpy(all, keys, (size_t)nkeys * sizeof *all);
    all[nkeys] =
        (config_key){"memory_budget", CONFIG_STRING, "\"\"",
                     "memory budget (\"512MiB\", \"2G\"; \"\" or \"0\" = none); --memory-budget wins"};
    qlab_status st = config_load(out, a->config_path, all, nkeys + 1, a->overrides, a->n_overrides);
    if (st != QLAB_OK) {
        free(all);
        return st;
    }
    (*out)->owned_keys = all; /* the config refers to its keys for as long as it lives */
    size_t bytes = 0;
    if (a->memory_budget) {
        st = memacct_parse_bytes(a->memory_budget, "--memory-budget", &bytes);
        if (st == QLAB_OK) memacct_set_budget(bytes);
    } else if (config_string(*out, "memory_budget") && config_string(*out, "memory_budget")[0]) {
        char what[320];
        snprintf(what, sizeof what, "%s: key 'memory_budget'", a->config_path);
        st = memacct_parse_bytes(config_string(*out, "memory_budget"), what, &bytes);
        if (st == QLAB_OK) memacct_set_budget(bytes);
    } else {
        st = memacct_budget_from_env();
    }
    if (st != QLAB_OK) {
        config_free(*out);
        *out = NULL;
    }
    return st;
}
