/* End-to-end test of experiments/zoo.c on experiments/zoo_small.json: two runs into two fresh folders give
 * models with identical sha256 (the same seed gives the same models), a second run into the same folder
 * reuses every model ("cached", file untouched), a changed model entry retrains only that model, and the
 * results file holds the model table and both loss curves. Skips when build/bin/zoo has not been built. */
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "tests/check.h"
#include "core/base/common.h"
#include "core/results/results.h"
#include "tests/test_util.h"

static char program[600];

static int run_zoo(const char *dir, const char *out, const char *extra, const char *log) {
    char command[3000];
    snprintf(
        command, sizeof command,
        "QLAB_QUIET=1 '%s' --config experiments/zoo_small.json --set 'out_dir=%s' %s --out '%s' > '%s' 2>&1",
        program, dir, extra, out, log);
    return run_shell(command);
}

/* The sha256 recorded for model name in dir's manifest ("" when absent). */
static void manifest_sha(const char *dir, const char *name, char sha[65]) {
    char path[700], *text = NULL;
    size_t len;
    sha[0] = 0;
    snprintf(path, sizeof path, "%s/manifest.json", dir);
    if (qlab_read_file(path, &text, &len) != QLAB_OK) return;
    cJSON *root = cJSON_Parse(text), *e;
    free(text);
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(root, "models")) {
        const cJSON *n = cJSON_GetObjectItem(e, "name"), *s = cJSON_GetObjectItem(e, "sha256");
        if (cJSON_IsString(n) && !strcmp(n->valuestring, name) && cJSON_IsString(s))
            snprintf(sha, 65, "%s", s->valuestring);
    }
    cJSON_Delete(root);
}

static int log_contains(const char *log, const char *needle) {
    char *text = NULL;
    size_t len;
    int found = qlab_read_file(log, &text, &len) == QLAB_OK && strstr(text, needle) != NULL;
    free(text);
    return found;
}

int main(void) {
    const char *build = getenv("QLAB_BUILD");
    snprintf(program, sizeof program, "%s/bin/zoo", build ? build : "build");
    if (access(program, X_OK) != 0) {
        SKIP("%s not built", program);
        return check_summary();
    }
    long pid = (long)getpid();
    char dir_a[128], dir_b[128], out[128], log[128], command[600];
    snprintf(dir_a, sizeof dir_a, "/tmp/qlab_test_zoo_a_%ld", pid);
    snprintf(dir_b, sizeof dir_b, "/tmp/qlab_test_zoo_b_%ld", pid);
    snprintf(out, sizeof out, "/tmp/qlab_test_zoo_%ld.h5", pid);
    snprintf(log, sizeof log, "/tmp/qlab_test_zoo_%ld.log", pid);

    int rc = run_zoo(dir_a, out, "", log);
    CHECKF(rc == 0, "zoo exited with %d (log %s)", rc, log);
    CHECK(run_zoo(dir_b, out, "", log) == 0);
    const char *names[] = {"tiny-a", "tiny-b"};
    char sha_a[65], sha_b[65];
    for (int i = 0; i < 2; i++) {
        manifest_sha(dir_a, names[i], sha_a);
        manifest_sha(dir_b, names[i], sha_b);
        CHECKF(strlen(sha_a) == 64 && !strcmp(sha_a, sha_b), "%s: sha256 '%s' vs '%s'", names[i], sha_a,
               sha_b);
    }

    /* Same folder again: everything reused, files untouched. */
    char bin[200];
    snprintf(bin, sizeof bin, "%s/tiny-a.bin", dir_a);
    struct stat before, after;
    CHECK(stat(bin, &before) == 0);
    CHECK(run_zoo(dir_a, out, "", log) == 0);
    CHECK(stat(bin, &after) == 0);
    CHECK(before.st_mtim.tv_sec == after.st_mtim.tv_sec && before.st_mtim.tv_nsec == after.st_mtim.tv_nsec);
    CHECK(log_contains(log, "tiny-a") && log_contains(log, "cached") && !log_contains(log, "training"));

    results_file f;
    CHECK(results_read(out, &f) == QLAB_OK);
    const results_table_data *models = results_file_table(&f, "models");
    CHECK(models && models->nrows == 2);
    const results_column *cached = models ? results_table_find_column(models, "cached") : NULL;
    CHECK(cached && cached->i64[0] == 1 && cached->i64[1] == 1);
    const results_column *loss = models ? results_table_find_column(models, "final_heldout_loss") : NULL;
    /* 30 steps from ln 512 = 6.24: some learning, nowhere near converged. */
    CHECK(loss && loss->f64[0] > 1 && loss->f64[0] < 6.2);
    const results_table_data *tc = results_file_table(&f, "train_curve"),
                             *hc = results_file_table(&f, "heldout_curve");
    CHECK(tc && tc->nrows == 2 * 6); /* 30 steps, logged every 5 */
    CHECK(hc && hc->nrows == 2 * 4); /* steps 0, 10, 20, 30 */
    CHECK(results_file_attr(&f, "git_commit") && results_file_attr(&f, "config"));
    results_file_free(&f);

    /* A corrupted model file is retrained; a changed entry retrains only that model. */
    FILE *fp = fopen(bin, "r+b");
    if (fp) {
        fseek(fp, 100, SEEK_SET);
        fputc(0x55, fp);
        fclose(fp);
    }
    CHECK(run_zoo(dir_a, out, "", log) == 0);
    manifest_sha(dir_a, "tiny-a", sha_a);
    manifest_sha(dir_b, "tiny-a", sha_b);
    CHECK(!strcmp(sha_a, sha_b) && log_contains(log, "training 30 steps"));
    CHECK(run_zoo(dir_a, out,
                  "--set 'models={\"tiny-a\": {\"dim\": 32, \"hidden_dim\": 96, \"n_layers\": 2, "
                  "\"n_heads\": 4, \"seq_len\": 64, \"batch\": 4, \"steps\": 10, \"warmup_steps\": 2, "
                  "\"seed\": 11}}'",
                  log) == 0);
    manifest_sha(dir_a, "tiny-a", sha_a);
    CHECK(strlen(sha_a) == 64 && strcmp(sha_a, sha_b) != 0);

    snprintf(command, sizeof command, "rm -rf '%s' '%s'", dir_a, dir_b);
    CHECK(system(command) == 0);
    unlink(out);
    if (check_summary() == 0) unlink(log);
    return check_failed_ ? 1 : 0;
}
