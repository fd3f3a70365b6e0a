/* Reading the model zoo's manifest; see zoo_manifest.h. The writer is experiments/zoo.c. */
#include "train/zoo_manifest.h"

#include <stdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "core/base/sha256.h"

static char *join_path(const char *dir, const char *file) {
    size_t n = strlen(dir) + strlen(file) + 2;
    char *p = qlab_calloc(n, 1);
    if (p) snprintf(p, n, "%s/%s", dir, file);
    return p;
}

static char *copy_string(const char *s) {
    char *p = qlab_calloc(strlen(s) + 1, 1);
    if (p) memcpy(p, s, strlen(s));
    return p;
}

void zoo_manifest_free(zoo_manifest *m) {
    if (!m) return;
    for (int i = 0; i < m->n_models; i++) {
        free(m->models[i].name);
        free(m->models[i].path);
        free(m->models[i].sha256);
    }
    free(m->models);
    free(m->dir);
    free(m->tokenizer_path);
    free(m->heldout_path);
    memset(m, 0, sizeof *m);
}

static double number_or_nan(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : 0.0 / 0.0;
}

qlab_status zoo_manifest_load(const char *dir, int verify, zoo_manifest *out) {
    memset(out, 0, sizeof *out);
    char *path = join_path(dir, ZOO_MANIFEST_FILE);
    if (!path) return QLAB_ERR_NOMEM;
    struct stat sb;
    if (stat(path, &sb) != 0) {
        qlab_status st = qlab_fail(QLAB_ERR_IO,
                                   "%s: no model zoo manifest; run `make zoo` first to train the "
                                   "embedded model family (about 30 minutes on 2 cores)",
                                   path);
        free(path);
        return st;
    }
    char *text = NULL;
    size_t len;
    qlab_status st = qlab_read_file(path, &text, &len);
    cJSON *root = st == QLAB_OK ? cJSON_ParseWithLength(text, len) : NULL;
    free(text);
    if (st == QLAB_OK && !root) st = qlab_fail(QLAB_ERR_FORMAT, "%s: not valid JSON", path);
    const cJSON *format = cJSON_GetObjectItemCaseSensitive(root, "format");
    const cJSON *models = cJSON_GetObjectItemCaseSensitive(root, "models");
    if (st == QLAB_OK && (!cJSON_IsString(format) || strcmp(format->valuestring, ZOO_MANIFEST_FORMAT) != 0))
        st = qlab_fail(QLAB_ERR_FORMAT, "%s: 'format' must be \"%s\"", path, ZOO_MANIFEST_FORMAT);
    if (st == QLAB_OK && !cJSON_IsArray(models))
        st = qlab_fail(QLAB_ERR_FORMAT, "%s: 'models' must be an array", path);
    int n = st == QLAB_OK ? cJSON_GetArraySize(models) : 0;
    if (st == QLAB_OK && n == 0) st = qlab_fail(QLAB_ERR_FORMAT, "%s: no models; run `make zoo`", path);
    if (st == QLAB_OK) {
        out->dir = copy_string(dir);
        out->tokenizer_path = join_path(dir, ZOO_TOKENIZER_FILE);
        out->heldout_path = join_path(dir, ZOO_HELDOUT_TEXT_FILE);
        out->models = qlab_calloc((size_t)n, sizeof *out->models);
        if (!out->dir || !out->tokenizer_path || !out->heldout_path || !out->models) st = QLAB_ERR_NOMEM;
    }
    for (int i = 0; st == QLAB_OK && i < n; i++) {
        const cJSON *e = cJSON_GetArrayItem(models, i);
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(e, "name"),
                    *file = cJSON_GetObjectItemCaseSensitive(e, "file"),
                    *sha = cJSON_GetObjectItemCaseSensitive(e, "sha256");
        if (!cJSON_IsString(name) || !cJSON_IsString(file) || !cJSON_IsString(sha) ||
            strlen(sha->valuestring) != 64 || strchr(file->valuestring, '/')) {
            st = qlab_fail(QLAB_ERR_FORMAT,
                           "%s: models[%d] needs string 'name', 'file' (no '/') and a 64-digit "
                           "'sha256'",
                           path, i);
            break;
        }
        zoo_model_entry *z = &out->models[out->n_models++];
        z->name = copy_string(name->valuestring);
        z->path = join_path(dir, file->valuestring);
        z->sha256 = copy_string(sha->valuestring);
        if (!z->name || !z->path || !z->sha256) {
            st = QLAB_ERR_NOMEM;
            break;
        }
        double params = number_or_nan(e, "params");
        /* checked before the conversion: a double outside int64's range converts to nothing defined (found
         * by tests/fuzz/fuzz_zoo under UBSan: "params": 5.2e58) */
        if (params == params && !(params >= 0 && params <= 9007199254740992.0 && params == floor(params))) {
            st = qlab_fail(QLAB_ERR_FORMAT,
                           "%s: models[%d] 'params' must be a whole number from 0 to 2^53, got %g", path, i,
                           params);
            break;
        }
        z->params = params == params ? (int64_t)params : 0;
        z->final_train_loss = number_or_nan(e, "final_train_loss");
        z->final_heldout_loss = number_or_nan(e, "final_heldout_loss");
        if (verify) {
            char hex[65];
            st = sha256_file_hex(z->path, hex);
            if (st == QLAB_OK && strcmp(hex, z->sha256) != 0)
                st = qlab_fail(QLAB_ERR_FORMAT,
                               "%s: sha256 %s does not match the manifest (%s); run `make zoo` "
                               "to retrain it",
                               z->path, hex, z->sha256);
        }
    }
    cJSON_Delete(root);
    free(path);
    if (st != QLAB_OK) zoo_manifest_free(out);
    return st;
}
