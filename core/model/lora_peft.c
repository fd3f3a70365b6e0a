/* PEFT adapter directories (lora_peft.h). */
#include "core/model/lora_peft.h"

#include <ctype.h>
#include <errno.h>
#include <regex.h>
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

/* The module names of a LlamaForCausalLM (transformers' named_modules(), "" being the model itself) other
 * than the seven projections; those of a layer take its index. */
static const char *const peft_other_modules[] = {
    "", "model", "model.embed_tokens", "model.layers", "model.norm", "model.rotary_emb", "lm_head"};
static const char *const peft_layer_modules[] = {
    "", ".self_attn", ".mlp", ".mlp.act_fn", ".input_layernorm", ".post_attention_layernorm"};
#define PEFT_N_OTHER (sizeof peft_other_modules / sizeof peft_other_modules[0])
#define PEFT_N_LAYER (sizeof peft_layer_modules / sizeof peft_layer_modules[0])

/* One entry of target_modules as PEFT 0.21 matches it against a module name: a list entry equals the name
 * or ends it after a dot ("q_proj", "self_attn.q_proj", "model.layers.0.self_attn.q_proj"); a string is a
 * regular expression that must match the whole name (re.fullmatch). */
typedef struct {
    const char *text;
    regex_t *re; /* NULL for a list entry */
} peft_spec;

static int peft_spec_matches(const peft_spec *s, const char *key) {
    if (s->re) return regexec(s->re, key, 0, NULL, 0) == 0;
    size_t n = strlen(key), k = strlen(s->text);
    return !strcmp(key, s->text) || (n > k && key[n - k - 1] == '.' && !strcmp(key + n - k, s->text));
}

/* The name of module i of n_layers layers: the others first, then per layer its modules and projections. */
static void peft_module_name(size_t i, int *layer, int *proj, char *buf, size_t cap) {
    *layer = -1, *proj = -1;
    if (i < PEFT_N_OTHER) {
        snprintf(buf, cap, "%s", peft_other_modules[i]);
        return;
    }
    size_t per = PEFT_N_LAYER + PROJ_COUNT, j = (i - PEFT_N_OTHER) % per;
    *layer = (int)((i - PEFT_N_OTHER) / per);
    if (j < PEFT_N_LAYER) {
        snprintf(buf, cap, "model.layers.%d%s", *layer, peft_layer_modules[j]);
        return;
    }
    *proj = (int)(j - PEFT_N_LAYER);
    const model_proj_info *info = model_proj_get((model_proj)*proj);
    snprintf(buf, cap, "model.layers.%d.%s.%s", *layer, info->block, info->name);
}

/* Marks in hit[layer * PROJ_COUNT + p] the projections s matches; refuses a match on any other module (PEFT
 * would adapt an embedding or lm_head, or fail on the rest) and, for a list entry, one matching nothing. */
static qlab_status peft_spec_apply(const char *path, const peft_spec *s, int n_layers, unsigned char *hit) {
    char key[160];
    int any = 0;
    for (size_t i = 0; i < PEFT_N_OTHER + (size_t)n_layers * (PEFT_N_LAYER + PROJ_COUNT); i++) {
        int layer, proj;
        peft_module_name(i, &layer, &proj, key, sizeof key);
        if (!peft_spec_matches(s, key)) continue;
        any = 1;
        if (proj < 0)
            return qlab_fail(
                QLAB_ERR_UNSUPPORTED,
                "%s: target_modules \"%.80s\" selects module \"%s\", which qlab cannot adapt (only "
                "q_proj k_proj v_proj o_proj gate_proj up_proj down_proj)",
                path, s->text, *key ? key : "(the whole model)");
        hit[(size_t)layer * PROJ_COUNT + proj] = 1;
    }
    if (!any && !s->re)
        return qlab_fail(QLAB_ERR_UNSUPPORTED,
                         "%s: target module \"%.80s\" cannot be adapted by qlab (only q_proj k_proj v_proj "
                         "o_proj gate_proj up_proj down_proj)",
                         path, s->text);
    return QLAB_OK;
}

/* Compiles a target_modules string for PEFT's re.fullmatch as a POSIX extended expression, which reads the
 * usual patterns (.*, \., (a|b), [0-9]+, ^, $) as Python does; an escape before a letter or digit (\d,
 * \w) or a "(?" group, which Python reads otherwise, is refused. */
static qlab_status peft_compile(const char *path, const char *pattern, regex_t *re) {
    int python_only = strstr(pattern, "(?") != NULL;
    for (const char *c = pattern; *c && !python_only; c++)
        if (*c == '\\') python_only = isalnum((unsigned char)c[1]) != 0, c += c[1] != 0;
    size_t n = strlen(pattern) + 8;
    char *anchored = python_only ? NULL : malloc(n);
    if (anchored) snprintf(anchored, n, "^(%s)$", pattern);
    int bad = !anchored || regcomp(re, anchored, REG_EXTENDED | REG_NOSUB) != 0;
    free(anchored);
    if (bad)
        return qlab_fail(QLAB_ERR_UNSUPPORTED,
                         "%s: target_modules \"%.80s\" is a regular expression qlab cannot read the way "
                         "Python does; give a list of module names",
                         path, pattern);
    return QLAB_OK;
}

/* target_modules (a list or a regular expression) into out->targets for a model of n_layers layers: every
 * selected projection must be selected in every layer, since a qlab adapter set adapts all or none. */
static qlab_status peft_targets(const char *path, const cJSON *tm, int n_layers, unsigned *targets) {
    if (!cJSON_IsString(tm) && !cJSON_IsArray(tm))
        return qlab_fail(QLAB_ERR_FORMAT, "%s: \"target_modules\" must be a list of module names", path);
    unsigned char *hit = calloc((size_t)n_layers * PROJ_COUNT, 1);
    if (!hit) return qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", path);
    qlab_status st = QLAB_OK;
    if (cJSON_IsString(tm)) {
        regex_t re;
        st = peft_compile(path, tm->valuestring, &re);
        peft_spec s = {tm->valuestring, &re};
        if (st == QLAB_OK) st = peft_spec_apply(path, &s, n_layers, hit), regfree(&re);
    } else {
        const cJSON *item;
        cJSON_ArrayForEach(item, tm) {
            peft_spec s = {item->valuestring, NULL};
            if (st == QLAB_OK && !cJSON_IsString(item))
                st = qlab_fail(QLAB_ERR_FORMAT, "%s: target_modules holds a non-string", path);
            if (st == QLAB_OK) st = peft_spec_apply(path, &s, n_layers, hit);
        }
    }
    *targets = 0;
    for (int p = 0; p < PROJ_COUNT && st == QLAB_OK; p++) {
        int layers = 0;
        for (int l = 0; l < n_layers; l++)
            layers += hit[(size_t)l * PROJ_COUNT + p];
        if (layers > 0 && layers < n_layers)
            st = qlab_fail(QLAB_ERR_UNSUPPORTED,
                           "%s: target_modules selects %s in %d of %d layers; qlab adapts a module in every "
                           "layer or in none",
                           path, model_proj_name((model_proj)p), layers, n_layers);
        if (layers) *targets |= LORA_TARGET(p);
    }
    free(hit);
    if (st == QLAB_OK && !*targets)
        st = qlab_fail(QLAB_ERR_UNSUPPORTED, "%s: target_modules selects no module", path);
    return st;
}

/* n_layers: the model's, against which target_modules is matched. */
static qlab_status peft_parse(const char *path, const cJSON *root, int n_layers, lora_config *out,
                              char **base_model) {
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

    QLAB_TRY(peft_targets(path, cJSON_GetObjectItemCaseSensitive(root, "target_modules"), n_layers,
                          &out->targets));
    if (base_model) {
        *base_model = NULL;
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(root, "base_model_name_or_path");
        if (cJSON_IsString(b) && !(*base_model = strdup(b->valuestring)))
            return qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", path);
    }
    return QLAB_OK;
}

static qlab_status peft_read_config(const char *path, int n_layers, lora_config *out, char **base_model) {
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
        st = peft_parse(config, root, n_layers, out, base_model);
    cJSON_Delete(root);
    free(config);
    return st;
}

qlab_status lora_read_peft_config(const char *path, lora_config *out, char **base_model) {
    return peft_read_config(path, 1, out, base_model); /* no model: a pattern is matched on layer 0 */
}

qlab_status lora_load_peft(const char *path, const model_config *mc, lora_set **out) {
    *out = NULL;
    lora_config lc;
    QLAB_TRY(peft_read_config(path, mc->n_layers, &lc, NULL));
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
