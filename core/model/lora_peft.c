/* PEFT adapter directories (lora_peft.h). */
#include "core/model/lora_peft.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "core/formats/safetensors.h"

/* dir/name, malloc'd. */
static char *peft_join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

/* The directory of what the user passed: the directory itself or its adapter_config.json. */
static char *peft_dir(const char *path) {
    size_t n = strlen(path), k = strlen(LORA_PEFT_CONFIG);
    if (n >= k && !strcmp(path + n - k, LORA_PEFT_CONFIG) && (n == k || path[n - k - 1] == '/')) {
        if (n == k) return strdup(".");
        return strndup(path, n - k - 1 ? n - k - 1 : 1);
    }
    return strdup(path);
}

/* A number that reads back as exactly f, in its shortest form (16, 0.05). */
static cJSON *peft_number(float f) {
    char buf[32];
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)f);
        if (strtof(buf, NULL) == f) break;
    }
    return cJSON_CreateNumber(strtod(buf, NULL));
}

qlab_status lora_save_peft(const lora_set *l, const char *dir, const char *base_model) {
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return qlab_fail(QLAB_ERR_IO, "%s: cannot create directory: %s", dir, strerror(errno));
    char *weights = peft_join(dir, LORA_PEFT_WEIGHTS), *config = peft_join(dir, LORA_PEFT_CONFIG);
    cJSON *root = cJSON_CreateObject(), *targets = cJSON_CreateArray();
    qlab_status st = QLAB_OK;
    if (!weights || !config || !root || !targets) {
        cJSON_Delete(targets);
        st = qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", dir);
        goto done;
    }
    const lora_config *c = lora_get_config(l);
    for (int p = 0; p < PROJ_COUNT; p++)
        if (c->targets & LORA_TARGET(p))
            cJSON_AddItemToArray(targets, cJSON_CreateString(model_proj_name((model_proj)p)));
    /* The keys PeftModel.save_pretrained writes for a plain LoRA (sorted, as it writes them); the newer
     * PEFT-only keys are left to their defaults so that older PEFT versions read the file too. */
    cJSON_AddItemToObject(root, "alpha_pattern", cJSON_CreateObject());
    cJSON_AddNullToObject(root, "auto_mapping");
    if (base_model)
        cJSON_AddStringToObject(root, "base_model_name_or_path", base_model);
    else
        cJSON_AddNullToObject(root, "base_model_name_or_path");
    cJSON_AddStringToObject(root, "bias", "none");
    cJSON_AddBoolToObject(root, "fan_in_fan_out", 0);
    cJSON_AddBoolToObject(root, "inference_mode", 1);
    cJSON_AddBoolToObject(root, "init_lora_weights", 1);
    cJSON_AddNullToObject(root, "layers_pattern");
    cJSON_AddNullToObject(root, "layers_to_transform");
    cJSON_AddItemToObject(root, "lora_alpha", peft_number(c->alpha));
    cJSON_AddItemToObject(root, "lora_dropout", peft_number(c->dropout));
    cJSON_AddNullToObject(root, "modules_to_save");
    cJSON_AddStringToObject(root, "peft_type", "LORA");
    cJSON_AddNumberToObject(root, "r", c->rank);
    cJSON_AddItemToObject(root, "rank_pattern", cJSON_CreateObject());
    cJSON_AddNullToObject(root, "revision");
    cJSON_AddItemToObject(root, "target_modules", targets);
    cJSON_AddStringToObject(root, "task_type", "CAUSAL_LM");
    cJSON_AddBoolToObject(root, "use_dora", 0);
    cJSON_AddBoolToObject(root, "use_rslora", c->rslora != 0);
    char *text = cJSON_Print(root);
    if (!text) {
        st = qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", config);
        goto done;
    }
    st = lora_save(l, weights);
    if (st == QLAB_OK) st = qlab_write_file_atomic(config, text, strlen(text));
    free(text);
done:
    cJSON_Delete(root);
    free(weights);
    free(config);
    return st;
}

/* Keys whose only acceptable values are "absent, null, false, empty" (with sub_config, "absent or null":
 * PEFT turns any object, {} too, into a sub-configuration that enables its variant): anything else changes
 * what the adapter computes in a way qlab does not implement. */
static qlab_status peft_refuse_if_set(const cJSON *root, const char *path, const char *key, const char *what,
                                      int sub_config) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v) || (!sub_config && cJSON_IsFalse(v))) return QLAB_OK;
    if (!sub_config && (cJSON_IsObject(v) || cJSON_IsArray(v)) && cJSON_GetArraySize(v) == 0) return QLAB_OK;
    char *shown = cJSON_PrintUnformatted(v);
    qlab_status st = qlab_fail(QLAB_ERR_UNSUPPORTED, "%s: \"%s\" = %.80s: %s is not supported by qlab", path,
                               key, shown ? shown : "?", what);
    free(shown);
    return st;
}

/* init_lora_weights: PeftModel.from_pretrained runs the initialisation again before it loads A and B. true,
 * false, "gaussian", "orthogonal" and "eva" only draw A and B, which the loaded weights then replace; the
 * others rewrite the base weight from its SVD or a quantization (PiSSA, CorDA, OLoRA, LoftQ, LoRA-GA) or
 * select another forward (MiCA), so the adapter means something else on the plain base. */
static qlab_status peft_check_init(const cJSON *root, const char *path) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "init_lora_weights");
    if (!v || cJSON_IsNull(v) || cJSON_IsBool(v)) return QLAB_OK;
    if (cJSON_IsString(v) && (!strcasecmp(v->valuestring, "gaussian") ||
                              !strcmp(v->valuestring, "orthogonal") || !strcmp(v->valuestring, "eva")))
        return QLAB_OK;
    char *shown = cJSON_PrintUnformatted(v);
    qlab_status st =
        qlab_fail(QLAB_ERR_UNSUPPORTED,
                  "%s: \"init_lora_weights\" = %.40s: PEFT redoes this initialisation when it loads "
                  "the adapter, changing the base weights or the forward, which qlab does not; save "
                  "it converted (path_initial_model_for_weight_conversion) or merged",
                  path, shown ? shown : "?");
    free(shown);
    return st;
}

static qlab_status peft_target(const char *path, const char *name, unsigned *mask) {
    for (int p = 0; p < PROJ_COUNT; p++)
        if (!strcmp(name, model_proj_name((model_proj)p))) {
            *mask |= LORA_TARGET(p);
            return QLAB_OK;
        }
    return qlab_fail(QLAB_ERR_UNSUPPORTED,
                     "%s: target module \"%.80s\" cannot be adapted by qlab (only q_proj k_proj v_proj "
                     "o_proj gate_proj up_proj down_proj)",
                     path, name);
}

static qlab_status peft_parse(const char *path, const cJSON *root, lora_config *out, char **base_model) {
    memset(out, 0, sizeof *out);
    if (!cJSON_IsObject(root)) return qlab_fail(QLAB_ERR_FORMAT, "%s: not a JSON object", path);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(root, "peft_type");
    if (!cJSON_IsString(type))
        return qlab_fail(QLAB_ERR_FORMAT, "%s: \"peft_type\" is missing or not a string", path);
    if (strcmp(type->valuestring, "LORA") != 0)
        return qlab_fail(QLAB_ERR_UNSUPPORTED, "%s: peft_type \"%.40s\" is not supported (only \"LORA\")",
                         path, type->valuestring);
    const cJSON *task = cJSON_GetObjectItemCaseSensitive(root, "task_type");
    if (task && !cJSON_IsNull(task) && !(cJSON_IsString(task) && !strcmp(task->valuestring, "CAUSAL_LM")))
        return qlab_fail(QLAB_ERR_UNSUPPORTED, "%s: task_type must be \"CAUSAL_LM\"", path);
    const cJSON *bias = cJSON_GetObjectItemCaseSensitive(root, "bias");
    if (bias && !cJSON_IsNull(bias) && !(cJSON_IsString(bias) && !strcmp(bias->valuestring, "none")))
        return qlab_fail(QLAB_ERR_UNSUPPORTED,
                         "%s: \"bias\" must be \"none\": trained biases are not supported", path);
    static const struct {
        const char *key, *what;
        int sub_config;
    } refused[] = {
        {"use_dora", "DoRA", 0},
        {"fan_in_fan_out", "a transposed (Conv1D) layout", 0},
        {"modules_to_save", "fully trained extra modules", 0},
        {"rank_pattern", "a per-module rank", 0},
        {"alpha_pattern", "a per-module alpha", 0},
        {"layers_to_transform", "adapting only some layers", 0},
        {"exclude_modules", "excluding modules", 0},
        {"layer_replication", "layer replication", 0},
        {"lora_bias", "a LoRA bias", 0},
        {"trainable_token_indices", "trainable token embeddings", 0},
        {"target_parameters", "adapting raw parameters", 0},
        {"use_qalora", "QA-LoRA", 0},
        {"alora_invocation_tokens", "activated LoRA", 0},
        /* the LoRA variants of PEFT 0.21 whose forward differs from W x + s B A x (VeLoRA changes only the
         * backward pass, so its adapters load) */
        {"arrow_config", "Arrow routing between adapters", 1},
        {"use_bdlora", "block-diagonal LoRA (BD-LoRA)", 1},
        {"monteclora_config", "MonteCLoRA's sampled A", 1},
        {"kasa_config", "KaSA (a truncated base weight and a singular-value diagonal)", 1},
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
        QLAB_TRY(peft_refuse_if_set(root, path, refused[i].key, refused[i].what, refused[i].sub_config));
    QLAB_TRY(peft_check_init(root, path));

    const cJSON *r = cJSON_GetObjectItemCaseSensitive(root, "r");
    if (!cJSON_IsNumber(r) || r->valuedouble != floor(r->valuedouble) || r->valuedouble < 1 ||
        r->valuedouble > 65536)
        return qlab_fail(QLAB_ERR_FORMAT, "%s: \"r\" must be an integer from 1 to 65536", path);
    out->rank = (int)r->valuedouble;
    const cJSON *alpha = cJSON_GetObjectItemCaseSensitive(root, "lora_alpha");
    if (alpha && !cJSON_IsNull(alpha) && !(cJSON_IsNumber(alpha) && isfinite(alpha->valuedouble)))
        return qlab_fail(QLAB_ERR_FORMAT, "%s: \"lora_alpha\" must be a number", path);
    out->alpha = alpha && cJSON_IsNumber(alpha) ? (float)alpha->valuedouble : 8.0f; /* LoraConfig's default */
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(root, "lora_dropout");
    if (dropout && !cJSON_IsNull(dropout) &&
        !(cJSON_IsNumber(dropout) && dropout->valuedouble >= 0 && dropout->valuedouble < 1))
        return qlab_fail(QLAB_ERR_FORMAT, "%s: \"lora_dropout\" must be a number in [0, 1)", path);
    out->dropout = dropout && cJSON_IsNumber(dropout) ? (float)dropout->valuedouble : 0.0f;
    const cJSON *rslora = cJSON_GetObjectItemCaseSensitive(root, "use_rslora");
    if (rslora && !cJSON_IsNull(rslora) && !cJSON_IsBool(rslora))
        return qlab_fail(QLAB_ERR_FORMAT, "%s: \"use_rslora\" must be true or false", path);
    out->rslora = cJSON_IsTrue(rslora); /* scale lora_alpha / sqrt(r) */

    const cJSON *tm = cJSON_GetObjectItemCaseSensitive(root, "target_modules");
    if (cJSON_IsString(tm)) {
        /* PEFT matches a string as a regular expression against the full module name; only a bare
         * module name reads the same either way. */
        if (peft_target(path, tm->valuestring, &out->targets) != QLAB_OK)
            return qlab_fail(QLAB_ERR_UNSUPPORTED,
                             "%s: target_modules \"%.80s\" is a regular expression; qlab needs a list of "
                             "module names",
                             path, tm->valuestring);
    } else if (cJSON_IsArray(tm)) {
        const cJSON *item;
        cJSON_ArrayForEach(item, tm) {
            if (!cJSON_IsString(item))
                return qlab_fail(QLAB_ERR_FORMAT, "%s: target_modules holds a non-string", path);
            QLAB_TRY(peft_target(path, item->valuestring, &out->targets));
        }
    } else {
        return qlab_fail(QLAB_ERR_FORMAT, "%s: \"target_modules\" must be a list of module names", path);
    }
    if (!out->targets) return qlab_fail(QLAB_ERR_FORMAT, "%s: target_modules is empty", path);
    if (base_model) {
        *base_model = NULL;
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(root, "base_model_name_or_path");
        if (cJSON_IsString(b) && !(*base_model = strdup(b->valuestring)))
            return qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", path);
    }
    return QLAB_OK;
}

qlab_status lora_read_peft_config(const char *path, lora_config *out, char **base_model) {
    if (base_model) *base_model = NULL;
    char *dir = peft_dir(path), *config = dir ? peft_join(dir, LORA_PEFT_CONFIG) : NULL;
    free(dir);
    if (!config) return qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", path);
    char *text = NULL;
    size_t len = 0;
    qlab_status st = qlab_read_file(config, &text, &len);
    if (st != QLAB_OK) {
        free(config);
        return st;
    }
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root)
        st = qlab_fail(QLAB_ERR_FORMAT, "%s: not valid JSON", config);
    else
        st = peft_parse(config, root, out, base_model);
    cJSON_Delete(root);
    free(config);
    return st;
}

qlab_status lora_load_peft(const char *path, const model_config *mc, lora_set **out) {
    *out = NULL;
    lora_config lc;
    QLAB_TRY(lora_read_peft_config(path, &lc, NULL));
    char *dir = peft_dir(path), *weights = dir ? peft_join(dir, LORA_PEFT_WEIGHTS) : NULL;
    free(dir);
    if (!weights) return qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", path);
    lora_set *l = NULL;
    safetensors_file f;
    int opened = 0;
    qlab_status st = lora_create(&l, mc, &lc);
    if (st == QLAB_OK) st = safetensors_open(&f, weights);
    opened = st == QLAB_OK;
    /* lora_load refuses LoRA tensors the set lacks; here every other tensor is refused too (a DoRA
     * magnitude, an embedding adapter, a modules_to_save copy), so nothing is silently dropped. */
    char name[160];
    for (int i = 0; opened && st == QLAB_OK && i < f.n_tensors; i++) {
        const char *tn = f.tensors[i].name;
        int layer = -1, known = 0;
        char block[16], proj[16], which = 0, rest[16];
        if (sscanf(tn, "base_model.model.model.layers.%d.%15[^.].%15[^.].lora_%c.%15s", &layer, block, proj,
                   &which, rest) == 5 &&
            (which == 'A' || which == 'B') && !strcmp(rest, "weight") && layer >= 0 && layer < mc->n_layers)
            for (int p = 0; p < PROJ_COUNT && !known; p++)
                if ((lc.targets & LORA_TARGET(p)) && !strcmp(proj, model_proj_name((model_proj)p))) {
                    snprintf(name, sizeof name, "base_model.model.model.layers.%d.%s.%s.lora_%c.weight",
                             layer, model_proj_get((model_proj)p)->block, proj, which);
                    known = !strcmp(name, tn);
                }
        if (!known)
            st = qlab_fail(QLAB_ERR_UNSUPPORTED,
                           "%s: tensor '%.120s' is not a LoRA A/B matrix of a target module of this %d-layer "
                           "model; qlab cannot apply it",
                           weights, tn, mc->n_layers);
    }
    if (opened) safetensors_close(&f);
    if (st == QLAB_OK) st = lora_load(l, weights);
    free(weights);
    if (st != QLAB_OK) {
        lora_free(l);
        return st;
    }
    lora_set_training(l, 0);
    *out = l;
    return QLAB_OK;
}
