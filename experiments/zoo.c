/* Pretrains the embedded model family that lets qlab's perplexity experiments run offline (`make zoo`).
 * Generates the story corpus (train and held-out splits), trains a BPE tokenizer on it, then pretrains
 * each LLaMA model of the config in turn and caches it with a manifest (config, seed, sha256) under
 * models/zoo/. A model whose manifest entry and file still match its config is reused, not retrained. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "core/text/bpe.h"
#include "core/model/checkpoint.h"
#include "core/base/common.h"
#include "core/results/config.h"
#include "datasets/corpus.h"
#include "core/model/model.h"
#include "core/base/progress.h"
#include "core/results/results.h"
#include "core/base/sha256.h"
#include "core/text/tokenizer.h"
#include "experiments/harness/experiment_compute.h"
#include "train/train.h"
#include "train/zoo_manifest.h"

static const config_key config_keys[] = {
    {"out_dir", CONFIG_STRING, "\"models/zoo\"", "folder of the cached family (git-ignored)"},
    {"seed", CONFIG_INT, "1234", "corpus seed (each model has its own seed too)"},
    {"train_bytes", CONFIG_INT, "6000000", "bytes of training stories to generate"},
    {"heldout_bytes", CONFIG_INT, "200000", "bytes of held-out stories to generate"},
    {"tokenizer_bytes", CONFIG_INT, "2000000", "the first this many bytes of the train split train the BPE"},
    {"vocab_size", CONFIG_INT, "512", "BPE vocabulary size"},
    EXPERIMENT_COMPUTE_KEY,
    {"models", CONFIG_OBJECT, NULL,
     "{name: {dim, hidden_dim, n_layers, n_heads, n_kv_heads, seq_len, batch, steps, warmup_steps, max_lr, "
     "min_lr, weight_decay, grad_clip, log_every, eval_every, eval_windows, seed}} in training order"},
};
#define N_CONFIG_KEYS ((int)(sizeof config_keys / sizeof config_keys[0]))

/* The keys of one model entry; parsed with config_parse so they get the same strict checks. */
static const config_key model_keys[] = {
    {"dim", CONFIG_INT, NULL, "model width"},
    {"hidden_dim", CONFIG_INT, NULL, "feed-forward width"},
    {"n_layers", CONFIG_INT, NULL, "transformer blocks"},
    {"n_heads", CONFIG_INT, NULL, "attention heads"},
    {"n_kv_heads", CONFIG_INT, "0", "key/value heads (0 = n_heads)"},
    {"seq_len", CONFIG_INT, "256", "context length (training windows)"},
    {"batch", CONFIG_INT, "8", "sequences per step"},
    {"steps", CONFIG_INT, NULL, "optimizer steps"},
    {"warmup_steps", CONFIG_INT, "20", "linear warmup steps"},
    {"max_lr", CONFIG_DOUBLE, "3e-3", "peak learning rate"},
    {"min_lr", CONFIG_DOUBLE, "3e-4", "final learning rate of the cosine decay"},
    {"weight_decay", CONFIG_DOUBLE, "0.1", "AdamW decoupled weight decay (not on norm gains)"},
    {"grad_clip", CONFIG_DOUBLE, "1.0", "global gradient-norm limit"},
    {"log_every", CONFIG_INT, "10", "training-loss log interval (steps)"},
    {"eval_every", CONFIG_INT, "50", "held-out loss interval (steps)"},
    {"eval_windows", CONFIG_INT, "32", "held-out windows per evaluation"},
    {"seed", CONFIG_INT, "1", "initialisation seed (batches use seed + 1)"},
};
#define N_MODEL_KEYS ((int)(sizeof model_keys / sizeof model_keys[0]))

typedef struct {
    const char *name;
    config *cfg; /* the entry, defaults applied */
    model_config mc;
    train_options opt;
    char *cache_key; /* corpus + tokenizer + effective entry, compact JSON: equal keys = same model */
    cJSON *entry;    /* its manifest entry once trained or found cached (owned by the manifest) */
    int cached;
} zoo_model;

static char *path_in(const char *dir, const char *file) {
    size_t n = strlen(dir) + strlen(file) + 2;
    char *p = qlab_calloc(n, 1);
    if (p) snprintf(p, n, "%s/%s", dir, file);
    return p;
}

static qlab_status parse_model(const config *cfg, const cJSON *item, zoo_model *z) {
    char origin[512];
    snprintf(origin, sizeof origin, "%s: models.%s", config_path(cfg), item->string);
    if (!cJSON_IsObject(item)) return qlab_fail(QLAB_ERR_ARG, "%s: must be an object", origin);
    char *text = cJSON_PrintUnformatted(item);
    if (!text) return qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", origin);
    qlab_status st = config_parse(&z->cfg, text, origin, model_keys, N_MODEL_KEYS, NULL, 0);
    cJSON_free(text);
    QLAB_TRY(st);
    const config *m = z->cfg;
    z->name = item->string;
    for (const char *c = z->name; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '-' ||
              *c == '_' || *c == '.'))
            return qlab_fail(QLAB_ERR_ARG, "%s: a model name may hold only letters, digits, '-', '_', '.'",
                             origin);
    int64_t ints[] = {config_int(m, "dim"),       config_int(m, "hidden_dim"),  config_int(m, "n_layers"),
                      config_int(m, "n_heads"),   config_int(m, "seq_len"),     config_int(m, "batch"),
                      config_int(m, "log_every"), config_int(m, "eval_windows")};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        if (ints[i] < 1 || ints[i] > 65536)
            return qlab_fail(QLAB_ERR_ARG, "%s: sizes must be from 1 to 65536", origin);
    int64_t kv = config_int(m, "n_kv_heads");
    if (kv < 0 || kv > 65536) return qlab_fail(QLAB_ERR_ARG, "%s: n_kv_heads out of range", origin);
    z->mc = (model_config){.dim = (int)ints[0],
                           .hidden_dim = (int)ints[1],
                           .n_layers = (int)ints[2],
                           .n_heads = (int)ints[3],
                           .n_kv_heads = kv ? (int)kv : (int)ints[3],
                           .vocab_size = (int)config_int(cfg, "vocab_size"),
                           .seq_len = (int)ints[4],
                           .norm_eps = 1e-5f,
                           .rope_theta = 10000.0f,
                           .shared_classifier = 1};
    train_options_default(&z->opt);
    z->opt.batch = (int)ints[5];
    z->opt.seq_len = (int)ints[4];
    z->opt.steps = config_int(m, "steps");
    z->opt.warmup_steps = config_int(m, "warmup_steps");
    z->opt.max_lr = config_double(m, "max_lr");
    z->opt.min_lr = config_double(m, "min_lr");
    z->opt.weight_decay = config_double(m, "weight_decay");
    z->opt.grad_clip = config_double(m, "grad_clip");
    z->opt.log_every = (int)ints[6];
    int64_t eval_every = config_int(m, "eval_every");
    if (eval_every < 0 || eval_every > (1 << 30))
        return qlab_fail(QLAB_ERR_ARG, "%s: eval_every out of range", origin);
    z->opt.eval_every = (int)eval_every;
    z->opt.eval_windows = (int)ints[7];
    z->opt.seed = (uint64_t)config_int(m, "seed") + 1;
    st = train_options_check(&z->opt, &z->mc);
    return st == QLAB_OK ? QLAB_OK : qlab_fail_context(st, "%s", origin);
}

/* ---------------------------------------------------------------- the manifest */

static cJSON *manifest_read(const char *path) {
    char *text = NULL;
    size_t len;
    if (access(path, F_OK) != 0 || qlab_read_file(path, &text, &len) != QLAB_OK) return NULL;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    const cJSON *format = cJSON_GetObjectItemCaseSensitive(root, "format");
    if (!cJSON_IsString(format) || strcmp(format->valuestring, ZOO_MANIFEST_FORMAT) != 0) {
        cJSON_Delete(root); /* unreadable or another format: start afresh (everything is retrained) */
        return NULL;
    }
    return root;
}

static qlab_status manifest_write(const cJSON *root, const char *path) {
    char *text = cJSON_Print(root);
    if (!text) return qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", path);
    qlab_status st = qlab_write_file_atomic(path, text, strlen(text));
    cJSON_free(text);
    return st;
}

/* A manifest object whose "key" equals key and whose file(s) still hash as recorded. */
static int entry_still_valid(const cJSON *entry, const char *key, const char *dir) {
    const cJSON *k = cJSON_GetObjectItemCaseSensitive(entry, "key");
    const cJSON *file = cJSON_GetObjectItemCaseSensitive(entry, "file");
    const cJSON *sha = cJSON_GetObjectItemCaseSensitive(entry, "sha256");
    if (!cJSON_IsString(k) || strcmp(k->valuestring, key) != 0 || !cJSON_IsString(file) ||
        !cJSON_IsString(sha))
        return 0;
    if (strchr(file->valuestring, '/')) return 0;
    char *path = path_in(dir, file->valuestring), hex[65];
    int ok = path && sha256_file_hex(path, hex) == QLAB_OK && !strcmp(hex, sha->valuestring);
    free(path);
    return ok;
}

static cJSON *find_named(const cJSON *array, const char *name) {
    const cJSON *e;
    cJSON_ArrayForEach(e, array) {
        const cJSON *n = cJSON_GetObjectItemCaseSensitive(e, "name");
        if (cJSON_IsString(n) && !strcmp(n->valuestring, name)) return (cJSON *)e;
    }
    return NULL;
}

/* ---------------------------------------------------------------- corpus and tokenizer */

static qlab_status write_split(const char *path, uint64_t seed, corpus_split split, size_t bytes) {
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f) return qlab_fail(QLAB_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    qlab_status st = corpus_write(seed, split, bytes, 0, f, tmp);
    if (fclose(f) != 0 && st == QLAB_OK) st = qlab_fail(QLAB_ERR_IO, "%s: write failed", tmp);
    if (st == QLAB_OK && rename(tmp, path) != 0)
        st = qlab_fail(QLAB_ERR_IO, "%s: cannot rename into place: %s", path, strerror(errno));
    if (st != QLAB_OK) unlink(tmp);
    return st;
}

/* The data entry of the manifest: corpus and tokenizer files with their settings and hashes. Reused when
 * the settings match and every file still hashes as recorded; otherwise regenerated. */
static qlab_status prepare_data(const config *cfg, const char *dir, cJSON *manifest, char **data_key) {
    char settings[512];
    snprintf(settings, sizeof settings,
             "{\"corpus_seed\":%lld,\"train_bytes\":%lld,\"heldout_bytes\":%lld,\"tokenizer_bytes\":%lld,"
             "\"vocab_size\":%lld}",
             (long long)config_int(cfg, "seed"), (long long)config_int(cfg, "train_bytes"),
             (long long)config_int(cfg, "heldout_bytes"), (long long)config_int(cfg, "tokenizer_bytes"),
             (long long)config_int(cfg, "vocab_size"));
    const char *files[3] = {ZOO_TRAIN_TEXT_FILE, ZOO_HELDOUT_TEXT_FILE, ZOO_TOKENIZER_FILE};
    cJSON *data = cJSON_GetObjectItemCaseSensitive(manifest, "data");
    int valid = cJSON_IsObject(data);
    const cJSON *k = cJSON_GetObjectItemCaseSensitive(data, "settings");
    valid = valid && cJSON_IsString(k) && !strcmp(k->valuestring, settings);
    for (int i = 0; valid && i < 3; i++) {
        const cJSON *sha = cJSON_GetObjectItemCaseSensitive(data, files[i]);
        char *p = path_in(dir, files[i]), hex[65];
        valid =
            p && cJSON_IsString(sha) && sha256_file_hex(p, hex) == QLAB_OK && !strcmp(hex, sha->valuestring);
        free(p);
    }
    if (valid) {
        printf("zoo: corpus and tokenizer cached in %s\n", dir);
    } else {
        char *train = path_in(dir, files[0]), *heldout = path_in(dir, files[1]),
             *tok = path_in(dir, files[2]);
        char *text = NULL;
        size_t len = 0;
        bpe_vocab vocab = {0};
        qlab_status st = train && heldout && tok ? QLAB_OK : QLAB_ERR_NOMEM;
        uint64_t seed = (uint64_t)config_int(cfg, "seed");
        double t0 = qlab_now();
        if (st == QLAB_OK)
            st = write_split(train, seed, CORPUS_TRAIN, (size_t)config_int(cfg, "train_bytes"));
        if (st == QLAB_OK)
            st = write_split(heldout, seed, CORPUS_HELDOUT, (size_t)config_int(cfg, "heldout_bytes"));
        if (st == QLAB_OK) st = qlab_read_file(train, &text, &len);
        size_t tokenizer_bytes = (size_t)config_int(cfg, "tokenizer_bytes");
        if (st == QLAB_OK)
            st = bpe_train(text, len < tokenizer_bytes ? len : tokenizer_bytes,
                           (int)config_int(cfg, "vocab_size"), &vocab);
        if (st == QLAB_OK) st = bpe_save(&vocab, tok);
        bpe_free(&vocab);
        free(text);
        free(train), free(heldout), free(tok);
        if (st != QLAB_OK) return st;
        printf("zoo: generated the corpus and trained the tokenizer in %.1f s\n", qlab_now() - t0);
        cJSON_DeleteItemFromObjectCaseSensitive(manifest, "data");
        data = cJSON_AddObjectToObject(manifest, "data");
        if (!data || !cJSON_AddStringToObject(data, "settings", settings)) return QLAB_ERR_NOMEM;
        for (int i = 0; i < 3; i++) {
            char *p = path_in(dir, files[i]), hex[65];
            st = p ? sha256_file_hex(p, hex) : QLAB_ERR_NOMEM;
            free(p);
            QLAB_TRY(st);
            if (!cJSON_AddStringToObject(data, files[i], hex)) return QLAB_ERR_NOMEM;
        }
    }
    /* Models depend on the exact data files, so the data's hashes are part of every model's key. */
    char *printed = cJSON_PrintUnformatted(data);
    if (!printed) return QLAB_ERR_NOMEM;
    *data_key = strdup(printed);
    cJSON_free(printed);
    return *data_key ? QLAB_OK : QLAB_ERR_NOMEM;
}

static qlab_status tokenize_file(const char *dir, const char *file, const tokenizer *tok, int **ids,
                                 int64_t *n) {
    char *path = path_in(dir, file), *text = NULL;
    size_t len = 0, count = 0;
    qlab_status st = path ? qlab_read_file(path, &text, &len) : QLAB_ERR_NOMEM;
    if (st == QLAB_OK) st = tokenizer_encode(tok, text, len, 1, ids, &count);
    *n = (int64_t)count;
    free(text);
    free(path);
    return st;
}

/* ---------------------------------------------------------------- training */

/* Progress is counted in work units (about parameters x tokens / 1e6 per step) so the ETA stays right
 * when a small fast model is followed by a large slow one. */
typedef struct {
    progress *prog;
    int64_t work_before, work_per_step;
    const char *name;
} step_context;

static int64_t work_per_step(const zoo_model *z) {
    return (int64_t)(model_num_params(&z->mc) / 1000 + 1) * z->opt.batch * z->opt.seq_len / 1000 + 1;
}

static void on_step(void *ctx, int64_t step, int64_t total, double loss) {
    (void)total;
    step_context *s = ctx;
    char extra[96];
    snprintf(extra, sizeof extra, "%s loss %.3f", s->name, loss);
    progress_update(s->prog, s->work_before + step * s->work_per_step, extra);
}

static cJSON *curve_json(const train_point *points, int64_t n, int with_train_fields) {
    cJSON *a = cJSON_CreateArray();
    for (int64_t i = 0; a && i < n; i++) {
        const train_point *p = &points[i];
        double row[6] = {(double)p->step, (double)p->tokens, p->loss, p->lr, p->grad_norm, p->seconds};
        cJSON *r = with_train_fields ? cJSON_CreateDoubleArray(row, 6)
                                     : cJSON_CreateDoubleArray((double[]){row[0], row[1], row[2], row[5]}, 4);
        if (!r || !cJSON_AddItemToArray(a, r)) {
            cJSON_Delete(a);
            return NULL;
        }
    }
    return a;
}

/* Trains one model and returns its new manifest entry. */
static qlab_status train_one(zoo_model *z, const char *dir, const int *train_ids, int64_t n_train,
                             const int *heldout_ids, int64_t n_heldout, step_context *sc, cJSON **entry) {
    model *m = NULL;
    QLAB_TRY(model_create(&m, &z->mc));
    train_init_params(m, (uint64_t)config_int(z->cfg, "seed"));
    train_history h;
    sc->name = z->name;
    qlab_status st = train_run(m, train_ids, n_train, heldout_ids, n_heldout, &z->opt, on_step, sc, &h);
    if (st != QLAB_OK) {
        model_free(m);
        return qlab_fail_context(st, "model %s", z->name);
    }
    char file[300], hex[65];
    snprintf(file, sizeof file, "%s.bin", z->name);
    char *path = path_in(dir, file);
    st = path ? checkpoint_save_llama2c(m, path) : QLAB_ERR_NOMEM;
    if (st == QLAB_OK) st = sha256_file_hex(path, hex);
    free(path);
    size_t params = model_num_params(&z->mc);
    model_free(m);
    cJSON *e = cJSON_CreateObject(), *effective = cJSON_Parse(config_effective_json(z->cfg));
    if (st == QLAB_OK && (!e || !effective)) st = QLAB_ERR_NOMEM;
    if (st == QLAB_OK) {
        cJSON_AddStringToObject(e, "name", z->name);
        cJSON_AddStringToObject(e, "file", file);
        cJSON_AddStringToObject(e, "sha256", hex);
        cJSON_AddNumberToObject(e, "params", (double)params);
        cJSON_AddNumberToObject(e, "seed", (double)config_int(z->cfg, "seed"));
        cJSON_AddItemToObject(e, "config", effective);
        effective = NULL;
        cJSON_AddStringToObject(e, "key", z->cache_key);
        cJSON_AddNumberToObject(e, "threads", qlab_num_threads());
        cJSON_AddStringToObject(e, "compute", qlab_compute_name(z->opt.compute));
        cJSON_AddStringToObject(e, "bf16_path", qlab_compute_path_name(z->opt.compute));
        cJSON_AddNumberToObject(e, "train_tokens", (double)z->opt.steps * z->opt.batch * z->opt.seq_len);
        cJSON_AddNumberToObject(e, "final_train_loss", h.final_train_loss);
        cJSON_AddNumberToObject(e, "final_heldout_loss", h.final_heldout_loss);
        cJSON_AddNumberToObject(e, "train_seconds", h.seconds);
        cJSON_AddNumberToObject(e, "tokens_per_second", h.tokens_per_second);
        cJSON_AddNumberToObject(e, "steps_clipped", (double)h.steps_clipped);
        cJSON_AddNumberToObject(e, "steps_skipped", (double)h.steps_skipped);
        cJSON *tc = curve_json(h.train, h.n_train, 1), *hc = curve_json(h.heldout, h.n_heldout, 0);
        if (!tc || !hc) st = QLAB_ERR_NOMEM;
        cJSON_AddItemToObject(e, "train_curve", tc);
        cJSON_AddItemToObject(e, "heldout_curve", hc);
    }
    cJSON_Delete(effective);
    train_history_free(&h);
    if (st != QLAB_OK) {
        cJSON_Delete(e);
        return st;
    }
    *entry = e;
    return QLAB_OK;
}

/* ---------------------------------------------------------------- results */

static double json_number(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

static qlab_status write_results(results *r, zoo_model *models, int n) {
    results_table *t;
    QLAB_TRY(results_table_begin(r, &t, "models", "The embedded model family: one LLaMA model per row"));
    const char *int_columns[] = {"params",  "dim",   "hidden_dim", "n_layers",     "n_heads", "n_kv_heads",
                                 "seq_len", "batch", "steps",      "train_tokens", "cached"};
    const char *float_columns[] = {"final_train_loss", "final_heldout_loss", "train_seconds",
                                   "tokens_per_second"};
    QLAB_TRY(results_table_column(t, "model", RESULTS_STRING, NULL, NULL));
    for (size_t i = 0; i < sizeof int_columns / sizeof int_columns[0]; i++)
        QLAB_TRY(results_table_column(t, int_columns[i], RESULTS_INT64, NULL,
                                      !strcmp(int_columns[i], "cached") ? "1: reused from the cache" : NULL));
    for (size_t i = 0; i < 4; i++)
        QLAB_TRY(results_table_column(t, float_columns[i], RESULTS_FLOAT64,
                                      i < 2    ? "nats/token"
                                      : i == 2 ? "s"
                                               : "tok/s",
                                      i == 0 ? "mean over the last log interval" : NULL));
    QLAB_TRY(results_table_column(t, "sha256", RESULTS_STRING, NULL, "of the llama2.c .bin"));
    QLAB_TRY(results_table_note(t,
                                "train_seconds and tokens_per_second are those of the run that trained the "
                                "model (a cached model keeps its original timing)."));
    for (int i = 0; i < n; i++) {
        const zoo_model *z = &models[i];
        int64_t values[] = {(int64_t)model_num_params(&z->mc),
                            z->mc.dim,
                            z->mc.hidden_dim,
                            z->mc.n_layers,
                            z->mc.n_heads,
                            z->mc.n_kv_heads,
                            z->mc.seq_len,
                            z->opt.batch,
                            z->opt.steps,
                            z->opt.steps * z->opt.batch * z->opt.seq_len,
                            z->cached};
        QLAB_TRY(results_set_string(t, "model", z->name));
        for (size_t j = 0; j < sizeof values / sizeof values[0]; j++)
            QLAB_TRY(results_set_int(t, int_columns[j], values[j]));
        QLAB_TRY(results_set_double(t, "final_train_loss", json_number(z->entry, "final_train_loss")));
        QLAB_TRY(results_set_double(t, "final_heldout_loss", json_number(z->entry, "final_heldout_loss")));
        QLAB_TRY(results_set_double(t, "train_seconds", json_number(z->entry, "train_seconds")));
        QLAB_TRY(results_set_double(t, "tokens_per_second", json_number(z->entry, "tokens_per_second")));
        const cJSON *sha = cJSON_GetObjectItemCaseSensitive(z->entry, "sha256");
        QLAB_TRY(results_set_string(t, "sha256", cJSON_IsString(sha) ? sha->valuestring : ""));
        QLAB_TRY(results_row_end(t));
    }
    QLAB_TRY(results_table_end(t));

    /* The curves: one table each, rows of one model contiguous so a plot draws each model as one line. */
    for (int kind = 0; kind < 2; kind++) {
        const char *curve = kind == 0 ? "train_curve" : "heldout_curve";
        QLAB_TRY(results_table_begin(r, &t, curve,
                                     kind == 0 ? "Training loss (mean over each log interval)"
                                               : "Held-out loss (fixed windows of the held-out split)"));
        QLAB_TRY(results_table_column(t, "model", RESULTS_STRING, NULL, NULL));
        QLAB_TRY(results_table_column(t, "params", RESULTS_INT64, NULL, NULL));
        QLAB_TRY(results_table_column(t, "step", RESULTS_INT64, NULL, "optimizer steps taken"));
        QLAB_TRY(results_table_column(t, "tokens", RESULTS_INT64, NULL, "training tokens seen"));
        QLAB_TRY(results_table_column(t, "loss", RESULTS_FLOAT64, "nats/token", NULL));
        if (kind == 0) {
            QLAB_TRY(results_table_column(t, "lr", RESULTS_FLOAT64, NULL, "learning rate of the last step"));
            QLAB_TRY(results_table_column(t, "grad_norm", RESULTS_FLOAT64, NULL, "before clipping"));
        }
        for (int i = 0; i < n; i++) {
            const cJSON *points = cJSON_GetObjectItemCaseSensitive(models[i].entry, curve), *p;
            cJSON_ArrayForEach(p, points) {
                int width = cJSON_GetArraySize(p);
                if (width < 4) continue;
                double v[6];
                for (int j = 0; j < 6 && j < width; j++) {
                    const cJSON *x = cJSON_GetArrayItem(p, j);
                    v[j] = cJSON_IsNumber(x) ? x->valuedouble : NAN;
                }
                QLAB_TRY(results_set_string(t, "model", models[i].name));
                QLAB_TRY(results_set_int(t, "params", (int64_t)model_num_params(&models[i].mc)));
                QLAB_TRY(results_set_int(t, "step", (int64_t)v[0]));
                QLAB_TRY(results_set_int(t, "tokens", (int64_t)v[1]));
                QLAB_TRY(results_set_double(t, "loss", v[2]));
                if (kind == 0) {
                    QLAB_TRY(results_set_double(t, "lr", width >= 6 ? v[3] : NAN));
                    QLAB_TRY(results_set_double(t, "grad_norm", width >= 6 ? v[4] : NAN));
                }
                QLAB_TRY(results_row_end(t));
            }
        }
        QLAB_TRY(results_table_end(t));
    }
    return QLAB_OK;
}

static void usage(FILE *f) {
    fprintf(f, "Usage: zoo [--config FILE.json] [--out RESULTS.h5] [--set key=value ...]\n\n"
               "Pretrains the embedded LLaMA model family on qlab's generated story corpus and caches it\n"
               "(models, tokenizer.bin, heldout.txt, manifest.json with sha256) in out_dir; cached models\n"
               "whose config and file still match are reused. Defaults: --config experiments/zoo.json\n"
               "--out results/zoo.h5. Config keys:\n");
    config_print_keys(config_keys, N_CONFIG_KEYS, f);
    fprintf(f, "Keys of each model entry:\n");
    config_print_keys(model_keys, N_MODEL_KEYS, f);
}

/* One run of the program: the config, the family, the manifest and the tokenized corpus once needed. */
typedef struct {
    const char *config_file, *dir;
    config *cfg;
    zoo_model *models;
    int n_models, capacity;
    cJSON *manifest, *new_models; /* new_models: the manifest's "models" array, rebuilt as models finish */
    char *data_key, *manifest_path;
    int *train_ids, *heldout_ids;
    int64_t n_train, n_heldout;
    tokenizer *tok;
    int64_t work_to_train;
    qlab_compute compute;
} zoo_run;

static qlab_status check_corpus_sizes(const zoo_run *run) {
    int64_t sizes[] = {config_int(run->cfg, "train_bytes"), config_int(run->cfg, "heldout_bytes"),
                       config_int(run->cfg, "tokenizer_bytes")};
    for (int i = 0; i < 3; i++)
        if (sizes[i] < 1000 || sizes[i] > ((int64_t)1 << 32))
            return qlab_fail(QLAB_ERR_ARG,
                             "%s: train_bytes, heldout_bytes and tokenizer_bytes must be from 1000 to 2^32",
                             run->config_file);
    int64_t vocab = config_int(run->cfg, "vocab_size");
    if (vocab < 300 || vocab > 65536)
        return qlab_fail(QLAB_ERR_ARG, "%s: vocab_size must be from 300 to 65536", run->config_file);
    return QLAB_OK;
}

static qlab_status read_models(zoo_run *run) {
    const cJSON *model_object = config_object(run->cfg, "models"), *item;
    run->capacity = cJSON_GetArraySize(model_object);
    if (run->capacity < 1) return qlab_fail(QLAB_ERR_ARG, "%s: 'models' is empty", run->config_file);
    run->models = qlab_calloc((size_t)run->capacity, sizeof *run->models);
    if (!run->models) return QLAB_ERR_NOMEM;
    QLAB_TRY(experiment_config_compute(run->cfg, &run->compute));
    cJSON_ArrayForEach(item, model_object) {
        QLAB_TRY(parse_model(run->cfg, item, &run->models[run->n_models]));
        run->models[run->n_models].opt.compute = run->compute;
        run->n_models++;
    }
    return QLAB_OK;
}

/* The cache folder, its manifest (a fresh one when absent) and the corpus and tokenizer files in it. */
static qlab_status open_cache(zoo_run *run) {
    QLAB_TRY(qlab_make_dirs(run->dir));
    if (!(run->manifest_path = path_in(run->dir, ZOO_MANIFEST_FILE))) return QLAB_ERR_NOMEM;
    run->manifest = manifest_read(run->manifest_path);
    if (!run->manifest) {
        run->manifest = cJSON_CreateObject();
        if (!run->manifest || !cJSON_AddStringToObject(run->manifest, "format", ZOO_MANIFEST_FORMAT))
            return QLAB_ERR_NOMEM;
    }
    return prepare_data(run->cfg, run->dir, run->manifest, &run->data_key);
}

/* Which models need training: key = data files + the model's effective entry; the others are reused. */
static qlab_status plan_training(zoo_run *run) {
    cJSON *old_models = cJSON_DetachItemFromObjectCaseSensitive(run->manifest, "models");
    run->new_models = cJSON_AddArrayToObject(run->manifest, "models");
    qlab_status st = run->new_models ? QLAB_OK : QLAB_ERR_NOMEM;
    /* The cache key of an fp32 model is what it was before the compute key existed, so cached fp32
     * models stay valid; a bf16 model's key adds the compute dtype and the bf16 path's summation order
     * (bf16_path_order: ref, avx512fma and avx512bf16 give identical bits, amx and blas sum in other
     * orders), so it never stands in for an fp32 model or for one trained in another order; the revision of
     * the bf16 numerics follows, so a model cached before they changed is trained again. */
    char compute_key[96] = "";
    if (run->compute == QLAB_COMPUTE_BF16)
        snprintf(compute_key, sizeof compute_key, ",\"compute\":\"bf16/%s\",\"bf16_numerics\":%d",
                 bf16_path_order(bf16_active_path()), QLAB_BF16_NUMERICS);
    for (int i = 0; i < run->n_models && st == QLAB_OK; i++) {
        zoo_model *z = &run->models[i];
        size_t n = strlen(run->data_key) + strlen(config_effective_json(z->cfg)) + sizeof compute_key + 64;
        if (!(z->cache_key = qlab_calloc(n, 1))) {
            st = QLAB_ERR_NOMEM;
            break;
        }
        snprintf(z->cache_key, n, "{\"data\":%s,\"model\":%s%s}", run->data_key,
                 config_effective_json(z->cfg), compute_key);
        cJSON *old = find_named(old_models, z->name);
        if (old && entry_still_valid(old, z->cache_key, run->dir)) {
            z->cached = 1;
            z->entry = cJSON_Duplicate(old, 1);
        } else {
            run->work_to_train += z->opt.steps * work_per_step(z);
        }
    }
    cJSON_Delete(old_models);
    return st;
}

/* The tokenizer and both splits tokenized, loaded when the first model needs training. */
static qlab_status load_tokens(zoo_run *run, const zoo_model *z) {
    const char *dir = run->dir;
    char *tok_path = path_in(dir, ZOO_TOKENIZER_FILE);
    qlab_status st = tok_path ? tokenizer_load(tok_path, &run->tok) : QLAB_ERR_NOMEM;
    free(tok_path);
    QLAB_TRY(st);
    if (tokenizer_vocab_size(run->tok) != z->mc.vocab_size)
        return qlab_fail(QLAB_ERR_FORMAT, "%s/%s: vocabulary of %d, the models need %d", dir,
                         ZOO_TOKENIZER_FILE, tokenizer_vocab_size(run->tok), z->mc.vocab_size);
    QLAB_TRY(tokenize_file(dir, ZOO_TRAIN_TEXT_FILE, run->tok, &run->train_ids, &run->n_train));
    QLAB_TRY(tokenize_file(dir, ZOO_HELDOUT_TEXT_FILE, run->tok, &run->heldout_ids, &run->n_heldout));
    printf("zoo: %lld training and %lld held-out tokens\n", (long long)run->n_train,
           (long long)run->n_heldout);
    return QLAB_OK;
}

/* Trains (or reports as cached) each model in turn; the manifest is written after every model so an
 * interrupted run keeps the ones already finished. */
static qlab_status train_family(zoo_run *run) {
    progress prog;
    progress_begin(&prog, "zoo", run->work_to_train > 0 ? run->work_to_train : 1);
    step_context sc = {&prog, 0, 0, ""};
    for (int i = 0; i < run->n_models; i++) {
        zoo_model *z = &run->models[i];
        size_t params = model_num_params(&z->mc);
        if (z->cached) {
            printf("zoo: %-10s %9zu params  cached (held-out loss %.3f)\n", z->name, params,
                   json_number(z->entry, "final_heldout_loss"));
        } else {
            if (!run->tok) QLAB_TRY(load_tokens(run, z));
            printf("zoo: %-10s %9zu params  training %lld steps x %d x %d tokens\n", z->name, params,
                   (long long)z->opt.steps, z->opt.batch, z->opt.seq_len);
            fflush(stdout);
            sc.work_per_step = work_per_step(z);
            QLAB_TRY(train_one(z, run->dir, run->train_ids, run->n_train, run->heldout_ids, run->n_heldout,
                               &sc, &z->entry));
            sc.work_before += z->opt.steps * sc.work_per_step;
            printf("zoo: %-10s train loss %.3f  held-out loss %.3f  (%.0f s, %.0f tok/s)\n", z->name,
                   json_number(z->entry, "final_train_loss"), json_number(z->entry, "final_heldout_loss"),
                   json_number(z->entry, "train_seconds"), json_number(z->entry, "tokens_per_second"));
        }
        if (!cJSON_AddItemReferenceToArray(run->new_models, z->entry)) return QLAB_ERR_NOMEM;
        QLAB_TRY(manifest_write(run->manifest, run->manifest_path));
    }
    progress_end(&prog, NULL);
    return QLAB_OK;
}

static void zoo_run_free(zoo_run *run) {
    cJSON_Delete(run->manifest); /* the entries are referenced, not owned, by it */
    for (int i = 0; i < run->n_models; i++) {
        cJSON_Delete(run->models[i].entry);
        config_free(run->models[i].cfg);
        free(run->models[i].cache_key);
    }
    if (run->models && run->n_models < run->capacity) config_free(run->models[run->n_models].cfg);
    free(run->models);
    free(run->data_key);
    free(run->manifest_path);
    free(run->train_ids);
    free(run->heldout_ids);
    tokenizer_free(run->tok);
    config_free(run->cfg);
}

int main(int argc, char **argv) {
    qlab_runtime_restart(argv);
    experiment_args args;
    int early = experiment_parse_args(&args, "zoo", argc, argv, usage);
    if (early >= 0) return early;
    zoo_run run = {.config_file = args.config_path};
    if (experiment_load_config(&args, &run.cfg, config_keys, N_CONFIG_KEYS) != QLAB_OK)
        return qlab_report_error("zoo");
    run.dir = config_string(run.cfg, "out_dir");
    int rc = 1;
    results *r = NULL;
    if (check_corpus_sizes(&run) != QLAB_OK || read_models(&run) != QLAB_OK || open_cache(&run) != QLAB_OK ||
        plan_training(&run) != QLAB_OK)
        goto done;
    if (results_create(&r, args.out_path, "zoo", run.cfg, argc, argv) != QLAB_OK) goto done;
    results_require_rows(r);
    if (results_attr_int(r, "seed", config_int(run.cfg, "seed")) != QLAB_OK) goto done;
    if (results_attr_string(r, "zoo_dir", run.dir) != QLAB_OK) goto done;
    if (experiment_results_compute(r, run.compute) != QLAB_OK) goto done;
    if (train_family(&run) != QLAB_OK) goto done;
    if (write_results(r, run.models, run.n_models) != QLAB_OK) goto done;
    if (results_commit(r) != QLAB_OK) {
        r = NULL;
        goto done;
    }
    r = NULL;
    printf("zoo: %d models in %s; wrote %s\n", run.n_models, run.dir, args.out_path);
    rc = 0;
done:
    if (rc != 0) qlab_report_error("zoo");
    results_abort(r);
    zoo_run_free(&run);
    return rc;
}
