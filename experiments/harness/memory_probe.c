/* The peak-memory probe of memory_probe.h: the child's run (load, reset the high-water mark, train a few
 * steps on synthetic rows) and the parent's side (re-execute the program, read the result line). */
#include "experiments/harness/memory_probe.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "core/base/progress.h"
#include "core/base/rng.h"
#include "core/base/tmpfiles.h"
#include "core/model/checkpoint.h"

static uint64_t status_kb(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return 0;
    char line[256];
    size_t len = strlen(key);
    uint64_t kb = 0;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, len) && line[len] == ':') {
            kb = strtoull(line + len + 1, NULL, 10);
            break;
        }
    fclose(f);
    return kb;
}

uint64_t memory_probe_vmhwm(void) {
    return status_kb("VmHWM") * 1024;
}
uint64_t memory_probe_vmrss(void) {
    return status_kb("VmRSS") * 1024;
}

/* Linux >= 4.0: writing 5 to clear_refs sets the high-water mark back to the current resident size. */
static int reset_vmhwm(void) {
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (!f) return 0;
    int ok = fputs("5", f) >= 0;
    ok &= fclose(f) == 0;
    return ok;
}

static qlab_status load_base(const memory_probe_spec *s, model **m) {
    if (s->mode != FINETUNE_QLORA) return checkpoint_load(s->model_path, m);
    checkpoint_quant q = {s->dtype, s->blocksize, s->double_quant};
    return checkpoint_load_quantized(s->model_path, &q, m);
}

/* n rows of T random tokens, each target the next token (every position scored). */
static qlab_status synthetic_rows(int n, int T, int vocab, uint64_t seed, int **tokens, int **targets) {
    size_t count = (size_t)n * (size_t)(T + 1);
    int *tk = malloc(sizeof(int) * count), *tg = malloc(sizeof(int) * count);
    if (!tk || !tg) {
        free(tk), free(tg);
        return qlab_fail(QLAB_ERR_NOMEM, "memory probe: out of memory for %d rows", n);
    }
    rng_state rng;
    rng_seed(&rng, seed);
    for (int r = 0; r < n; r++) {
        int prev = (int)rng_below(&rng, (uint64_t)vocab);
        for (int t = 0; t < T; t++) {
            int next = (int)rng_below(&rng, (uint64_t)vocab);
            tk[(size_t)r * T + t] = prev;
            tg[(size_t)r * T + t] = next;
            prev = next;
        }
    }
    *tokens = tk, *targets = tg;
    return QLAB_OK;
}

static void probe_options(const memory_probe_spec *s, finetune_options *o) {
    finetune_options_default(o);
    o->mode = s->mode;
    o->base_dtype = s->dtype;
    o->blocksize = s->blocksize;
    o->double_quant = s->double_quant;
    o->lora.rank = s->rank;
    o->lora.dropout = (float)s->dropout;
    o->lora.seed = s->seed;
    o->seed = s->seed;
    o->batch = s->batch;
    o->eval_batch = s->batch; /* the held-out forward has the training forward's shape */
    o->eval_every = 0;        /* held-out NLL at step 0 and at the end only */
    o->log_every = 1;
    o->steps = s->steps;
    o->max_lr = 1e-4;
    o->state_kind = OPTIM_STATE_HOST;
    o->checkpointing = s->checkpointing;
    o->compute = s->compute;
}

static qlab_status train_steps(model *m, const memory_probe_spec *s, memory_probe_result *out) {
    const model_config *c = model_get_config(m);
    int *tokens = NULL, *targets = NULL;
    QLAB_TRY(synthetic_rows(2 * s->batch, s->seq, c->vocab_size, s->seed, &tokens, &targets));
    finetune_rows train = {tokens, targets, s->batch, s->seq};
    finetune_rows heldout = {tokens + (size_t)s->batch * s->seq, targets + (size_t)s->batch * s->seq,
                             s->batch, s->seq};
    finetune_options o;
    probe_options(s, &o);
    finetune_job *job = NULL;
    qlab_status st = finetune_job_create(&job, m, &train, &heldout, &o);
    out->step_seconds = NAN;
    for (int64_t i = 0; st == QLAB_OK && i < o.steps; i++) {
        double t0 = qlab_now();
        st = finetune_job_step(job);
        double dt = qlab_now() - t0;
        /* the first step also runs the step-0 held-out evaluation, the last one the final one */
        if (i > 0 && i < o.steps - 1 && !(dt >= out->step_seconds)) out->step_seconds = dt;
    }
    finetune_job_free(job);
    free(tokens), free(targets);
    return st;
}

qlab_status memory_probe_run(const memory_probe_spec *s, memory_probe_result *out) {
    memset(out, 0, sizeof *out);
    if (s->batch < 1 || s->seq < 1 || s->steps < 1)
        return qlab_fail(QLAB_ERR_ARG, "memory probe: batch %d, seq %d and steps %d must be positive",
                         s->batch, s->seq, s->steps);
    out->threads = qlab_num_threads();
    out->baseline_bytes = memory_probe_vmrss();
    model *m = NULL;
    QLAB_TRY(load_base(s, &m));
    out->arch = *model_get_config(m);
    out->load_peak_bytes = memory_probe_vmhwm();
    out->peak_reset = reset_vmhwm();
    out->loaded_bytes = memory_probe_vmrss();
    qlab_status st = s->seq > out->arch.seq_len
                         ? qlab_fail(QLAB_ERR_ARG, "memory probe: %s: seq %d is above the model's context %d",
                                     s->model_path, s->seq, out->arch.seq_len)
                         : train_steps(m, s, out);
    out->peak_bytes = memory_probe_vmhwm();
    model_free(m);
    return st;
}

/* ---------------------------------------------------------------- child and parent */

#define PROBE_ARGS 13

static void spec_to_args(const memory_probe_spec *s, char buf[PROBE_ARGS][64], char **argv) {
    snprintf(buf[0], 64, "%s", finetune_mode_name(s->mode));
    snprintf(buf[1], 64, "%s", quant_dtype_name(s->dtype));
    snprintf(buf[2], 64, "%d", s->blocksize);
    snprintf(buf[3], 64, "%d", s->double_quant);
    snprintf(buf[4], 64, "%d", s->checkpointing);
    snprintf(buf[5], 64, "%d", s->batch);
    snprintf(buf[6], 64, "%d", s->seq);
    snprintf(buf[7], 64, "%d", s->steps);
    snprintf(buf[8], 64, "%d", s->rank);
    snprintf(buf[9], 64, "%.17g", s->dropout);
    snprintf(buf[10], 64, "%llu", (unsigned long long)s->seed);
    snprintf(buf[11], 64, "%s", qlab_compute_name(s->compute));
    for (int i = 0; i < PROBE_ARGS - 1; i++)
        argv[i] = buf[i];
}

static qlab_status spec_from_args(int argc, char **argv, memory_probe_spec *s) {
    memset(s, 0, sizeof *s);
    if (argc != 3 + PROBE_ARGS - 1)
        return qlab_fail(QLAB_ERR_ARG, "%s: expected %d arguments, got %d", MEMORY_PROBE_FLAG, PROBE_ARGS,
                         argc - 2);
    snprintf(s->model_path, sizeof s->model_path, "%s", argv[2]);
    char **a = argv + 3;
    QLAB_TRY(finetune_mode_parse(a[0], &s->mode));
    QLAB_TRY(quant_dtype_parse(a[1], &s->dtype));
    s->blocksize = atoi(a[2]);
    s->double_quant = atoi(a[3]);
    s->checkpointing = atoi(a[4]);
    s->batch = atoi(a[5]);
    s->seq = atoi(a[6]);
    s->steps = atoi(a[7]);
    s->rank = atoi(a[8]);
    s->dropout = strtod(a[9], NULL);
    s->seed = strtoull(a[10], NULL, 10);
    return qlab_compute_parse(a[11], &s->compute);
}

int memory_probe_main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], MEMORY_PROBE_FLAG) != 0) return -1;
    memory_probe_spec s;
    memory_probe_result r;
    if (spec_from_args(argc, argv, &s) != QLAB_OK || memory_probe_run(&s, &r) != QLAB_OK)
        return qlab_report_error("memory probe");
    const model_config *c = &r.arch;
    printf("memory_probe %d %d %d %d %d %d %d %d %llu %llu %llu %llu %d %.9g %d\n", c->dim, c->hidden_dim,
           c->n_layers, c->n_heads, c->n_kv_heads, c->vocab_size, c->seq_len, c->shared_classifier,
           (unsigned long long)r.baseline_bytes, (unsigned long long)r.load_peak_bytes,
           (unsigned long long)r.loaded_bytes, (unsigned long long)r.peak_bytes, r.peak_reset, r.step_seconds,
           r.threads);
    return fflush(stdout) == 0 ? 0 : 1;
}

static qlab_status parse_result(const char *line, memory_probe_result *r) {
    model_config *c = &r->arch;
    unsigned long long base, load, loaded, peak;
    memset(r, 0, sizeof *r);
    if (sscanf(line, "memory_probe %d %d %d %d %d %d %d %d %llu %llu %llu %llu %d %lg %d", &c->dim,
               &c->hidden_dim, &c->n_layers, &c->n_heads, &c->n_kv_heads, &c->vocab_size, &c->seq_len,
               &c->shared_classifier, &base, &load, &loaded, &peak, &r->peak_reset, &r->step_seconds,
               &r->threads) != 15)
        return QLAB_ERR_FORMAT;
    r->baseline_bytes = base, r->load_peak_bytes = load, r->loaded_bytes = loaded, r->peak_bytes = peak;
    return QLAB_OK;
}

qlab_status memory_probe_spawn(const memory_probe_spec *s, memory_probe_result *out) {
    char buf[PROBE_ARGS][64];
    char *argv[PROBE_ARGS + 3];
    argv[0] = "memory-probe";
    argv[1] = MEMORY_PROBE_FLAG;
    argv[2] = (char *)s->model_path;
    spec_to_args(s, buf, argv + 3);
    argv[PROBE_ARGS + 2] = NULL;
    int fds[2];
    if (pipe(fds) != 0) return qlab_fail(QLAB_ERR_IO, "memory probe: pipe: %s", strerror(errno));
    fflush(stdout), fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]), close(fds[1]);
        return qlab_fail(QLAB_ERR_IO, "memory probe: fork: %s", strerror(errno));
    }
    if (pid == 0) {
        close(fds[0]);
        if (dup2(fds[1], STDOUT_FILENO) < 0) _exit(127);
        close(fds[1]);
        execv("/proc/self/exe", argv);
        _exit(127);
    }
    close(fds[1]);
    char line[1024] = {0};
    size_t used = 0;
    ssize_t got;
    while ((got = read(fds[0], line + used, sizeof line - 1 - used)) > 0 || (got < 0 && errno == EINTR))
        if (got > 0) used += (size_t)got;
    close(fds[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    const char *mode = finetune_mode_name(s->mode);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return qlab_fail(QLAB_ERR_IO, "memory probe of %s (%s%s) failed: the child %s %d", s->model_path,
                         mode, s->checkpointing ? ", checkpointing" : "",
                         WIFEXITED(status) ? "exited with" : "was killed by signal",
                         WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
    const char *at = strstr(line, "memory_probe ");
    if (!at || parse_result(at, out) != QLAB_OK)
        return qlab_fail(QLAB_ERR_FORMAT, "memory probe of %s (%s): no result line in the child's output",
                         s->model_path, mode);
    return QLAB_OK;
}

void memory_probe_model_spec(const memory_probe_spec *s, const memory_probe_result *r,
                             memory_model_spec *out) {
    memory_model_spec_qlab(out);
    out->arch = r->arch;
    out->mode = s->mode;
    out->quant_type = s->dtype;
    out->blocksize = s->blocksize;
    out->double_quant = s->double_quant;
    out->rank = s->rank;
    out->dropout = (float)s->dropout;
    out->batch = s->batch;
    out->seq = s->seq;
    out->checkpointing = s->checkpointing;
    out->compute = s->compute;
    out->threads = r->threads > 0 ? r->threads : 1;
    out->baseline_bytes = r->baseline_bytes;
}

qlab_status memory_probe_write_random_model(const model_config *arch, uint64_t seed, const char *path) {
    model *m;
    QLAB_TRY(model_create(&m, arch));
    size_t count;
    float *p = model_get_param_buffer(m, &count);
    rng_state rng;
    rng_seed(&rng, seed);
    for (size_t i = 0; i < count; i++)
        p[i] = (float)(0.02 * rng_normal(&rng));
    model_params *v = model_get_params(m);
    for (size_t i = 0; i < (size_t)arch->n_layers * arch->dim; i++)
        v->rms_att[i] = v->rms_ffn[i] = 1;
    for (int i = 0; i < arch->dim; i++)
        v->rms_final[i] = 1;
    qlab_status st = checkpoint_save_llama2c(m, path);
    model_free(m);
    return st;
}

/* The architecture of zoo model `name` from the zoo config (experiments/zoo.json). */
static qlab_status zoo_architecture(const char *zoo_config, const char *name, model_config *c) {
    char *text = NULL;
    size_t len = 0;
    QLAB_TRY(qlab_read_file(zoo_config, &text, &len));
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root) return qlab_fail(QLAB_ERR_FORMAT, "%s: not valid JSON", zoo_config);
    const cJSON *models = cJSON_GetObjectItemCaseSensitive(root, "models");
    const cJSON *entry = cJSON_GetObjectItemCaseSensitive(models, name);
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(root, "vocab_size");
    const char *keys[] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "seq_len"};
    int *fields[] = {&c->dim, &c->hidden_dim, &c->n_layers, &c->n_heads, &c->n_kv_heads, &c->seq_len};
    qlab_status st = QLAB_OK;
    memset(c, 0, sizeof *c);
    if (!cJSON_IsObject(entry) || !cJSON_IsNumber(vocab))
        st = qlab_fail(QLAB_ERR_ARG, "%s: no zoo model '%s' (or no vocab_size)", zoo_config, name);
    for (int i = 0; st == QLAB_OK && i < 6; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(entry, keys[i]);
        if (!cJSON_IsNumber(v) || v->valuedouble < 1 || v->valuedouble > 1e6)
            st = qlab_fail(QLAB_ERR_ARG, "%s: models.%s.%s missing or out of range", zoo_config, name,
                           keys[i]);
        else
            *fields[i] = v->valueint;
    }
    if (st == QLAB_OK) {
        c->vocab_size = vocab->valueint;
        c->norm_eps = 1e-5f;
        c->rope_theta = 10000.0f;
        c->shared_classifier = 1; /* as the zoo trains them (zoo.c) */
    }
    cJSON_Delete(root);
    return st;
}

qlab_status memory_probe_resolve(const char *entry, const char *zoo_config, const char *zoo_dir,
                                 const char *tmp_path, char *path, size_t path_cap, char *name,
                                 size_t name_cap, int *present, int *synthetic) {
    *present = 1, *synthetic = 0;
    if (strncmp(entry, "zoo:", 4) != 0) {
        snprintf(path, path_cap, "%s", entry);
        const char *base = strrchr(entry, '/');
        base = base ? base + 1 : entry;
        const char *dot = strrchr(base, '.');
        int n = dot && dot != base ? (int)(dot - base) : (int)strlen(base);
        snprintf(name, name_cap, "%.*s", n, base);
        *present = access(entry, R_OK) == 0;
        return QLAB_OK;
    }
    const char *zoo_name = entry + 4;
    snprintf(name, name_cap, "%s", zoo_name);
    snprintf(path, path_cap, "%s/%s.bin", zoo_dir, zoo_name);
    if (access(path, R_OK) == 0) return QLAB_OK;
    model_config arch;
    QLAB_TRY(zoo_architecture(zoo_config, zoo_name, &arch));
    snprintf(path, path_cap, "%s", tmp_path);
    qlab_tmpfile_register(path);
    qlab_status st = memory_probe_write_random_model(&arch, 1234, path);
    if (st != QLAB_OK) {
        unlink(path);
        qlab_tmpfile_unregister(path);
        return qlab_fail_context(st, "zoo model %s (random weights, %s)", zoo_name, path);
    }
    *synthetic = 1;
    return QLAB_OK;
}
