/* End-to-end test of experiments/qlora_vs_16bit.c: runs $QLAB_BUILD/bin/qlora_vs_16bit (default build/) on
 * experiments/qlora_vs_16bit_small.json with stories260K and checks the grid's rows, the storage of each
 * 4-bit base, the paired-difference reference and the config errors; with save_adapters, that every run is
 * kept (PEFT adapter directories, the full finetune as a model) and that a kept adapter, loaded back onto
 * the base, scores the held-out rows exactly as the run reported, and loads in `qlab ppl --adapter`. Skips
 * when the program or the shared data is missing. */
#include <stdint.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/check.h"
#include "core/base/common.h"
#include "core/model/lora_peft.h"
#include "core/results/results.h"
#include "experiments/harness/finetune_grid.h"
#include "tests/results_cells.h"
#include "tests/test_util.h"

#define SMALL_CONFIG "experiments/qlora_vs_16bit_small.json"

static char program[600];

static int64_t find_row(const results_table_data *t, const char *name) {
    const results_column *c = results_table_find_column(t, "config");
    for (int64_t i = 0; c && c->type == RESULTS_STRING && i < t->nrows; i++)
        if (!strcmp(c->str[i], name)) return i;
    return -1;
}

static int run_small(const char *out, const char *log, const char *extra) {
    char command[2400];
    snprintf(command, sizeof command,
             "QLAB_QUIET=1 '%s' --config %s --out '%s' --set 'model_path=\"%s\"' --set 'data_path=\"%s\"' %s "
             "> '%s' 2>&1",
             program, SMALL_CONFIG, out, shared_data_path("models/stories260K.bin"),
             shared_data_path("finetune/alpaca_data_1k.json"), extra, log);
    return run_shell(command);
}

static void test_run(void) {
    char out[128], log[160];
    snprintf(out, sizeof out, "/tmp/qlab_test_qlora_vs_16bit_%ld.h5", (long)getpid());
    snprintf(log, sizeof log, "/tmp/qlab_test_qlora_vs_16bit_%ld.log", (long)getpid());
    int rc = run_small(out, log, "");
    CHECKF(rc == 0, "qlora_vs_16bit exited with %d (log in %s)", rc, log);
    if (rc != 0) return;
    unlink(log);
    results_file f;
    CHECK(results_read(out, &f) == QLAB_OK);
    const results_table_data *s = results_file_table(&f, "summary"), *runs = results_file_table(&f, "runs");
    CHECK(s && runs && s->nrows == 6 && runs->nrows == 12);
    if (s && s->nrows == 6) {
        const char *names[] = {"full_fp32",    "lora_fp32", "qlora_nf4",
                               "qlora_nf4_dq", "qlora_fp4", "qlora_int4"};
        int64_t row[6];
        for (int i = 0; i < 6; i++) {
            row[i] = find_row(s, names[i]);
            CHECKF(row[i] == i, "row of '%s' is %lld", names[i], (long long)row[i]);
            double mean = table_f64(s, "nll_mean", row[i]);
            CHECKF(isfinite(mean) && mean < table_f64(s, "initial_nll", row[i]), "%s: %g", names[i], mean);
        }
        /* The reference is 16-bit (fp32) LoRA: its own paired difference is exactly zero. */
        CHECK(table_f64(s, "delta_vs_ref", row[1]) == 0 && table_f64(s, "delta_ci95", row[1]) == 0);
        /* Same adapters everywhere except full finetuning. */
        for (int i = 2; i < 6; i++)
            CHECK(table_i64(s, "trainable_params", row[i]) == table_i64(s, "trainable_params", row[1]));
        /* Base storage: the 4-bit types at block 64 store the same bytes (codes + fp32 absmax); DQ stores
         * less; all far below the fp32 base. */
        int64_t fp32 = table_i64(s, "weights_bytes", row[1]), nf4 = table_i64(s, "weights_bytes", row[2]),
                dq = table_i64(s, "weights_bytes", row[3]);
        CHECK(nf4 < fp32 / 3 && dq < nf4);
        CHECK(table_i64(s, "weights_bytes", row[4]) == nf4 && table_i64(s, "weights_bytes", row[5]) == nf4);
        /* Every 4-bit base starts worse than the fp32 one (quantization error). */
        for (int i = 2; i < 6; i++)
            CHECK(table_f64(s, "initial_nll", row[i]) > table_f64(s, "initial_nll", row[1]));
    }
    results_file_free(&f);
    unlink(out);

    /* Config errors name the key and leave no output. */
    const char *bad[] = {"--set 'bases=[\"nf4+qq\"]'", "--set 'bases=[\"mxfp4+dq\"]'",
                         "--set 'bases=[\"nf5\"]'", "--set 'bases=[\"nf4\", \"nf4\"]'", "--set targets=mlp"};
    const char *expect[] = {"bases", "bases", "bases", "twice", "targets"};
    for (int i = 0; i < 5; i++) {
        CHECK(run_small(out, log, bad[i]) != 0);
        char *text = NULL;
        size_t len = 0;
        CHECK(qlab_read_file(log, &text, &len) == QLAB_OK);
        CHECKF(text && strstr(text, expect[i]) && strchr(text, '\n') == text + len - 1, "output: %s",
               text ? text : "");
        free(text);
        CHECK(access(out, F_OK) != 0);
    }
    unlink(log);
}

/* The held-out NLL of an adapter directory on the small config's task: base (quantized to NF4+DQ at block
 * 64 when quantize) + the loaded adapters in evaluation mode. NAN on failure. */
static double adapter_nll(const finetune_task *t, const char *dir, int quantize) {
    model *m = NULL;
    lora_set *l = NULL;
    double nll = NAN;
    qlab_status st = model_clone(t->base, &m);
    if (st == QLAB_OK && quantize) st = model_quantize(m, QUANT_NF4, 64, 1);
    if (st == QLAB_OK) st = lora_load_peft(dir, model_get_config(m), &l);
    if (st == QLAB_OK) st = lora_attach(l, m, 1);
    if (st == QLAB_OK) st = finetune_heldout_nll(m, &t->heldout, 10, &nll, NULL);
    if (st != QLAB_OK) fprintf(stderr, "  %s: %s\n", dir, qlab_last_error());
    if (l) lora_detach(m);
    lora_free(l);
    model_free(m);
    return nll;
}

static double run_nll(const results_table_data *runs, const char *name, int64_t seed) {
    const results_column *c = results_table_find_column(runs, "config"),
                         *s = results_table_find_column(runs, "seed");
    for (int64_t i = 0; c && s && i < runs->nrows; i++)
        if (!strcmp(c->str[i], name) && s->i64[i] == seed) return table_f64(runs, "final_nll", i);
    return NAN;
}

static void test_saved_adapters(void) {
    char out[128], log[160], dir[128], extra[300], path[400];
    snprintf(out, sizeof out, "/tmp/qlab_test_qlora_vs_16bit_%ld_kept.h5", (long)getpid());
    snprintf(log, sizeof log, "/tmp/qlab_test_qlora_vs_16bit_%ld_kept.log", (long)getpid());
    snprintf(dir, sizeof dir, "/tmp/qlab_test_qlora_vs_16bit_%ld_adapters", (long)getpid());
    snprintf(extra, sizeof extra, "--set 'save_adapters=\"%s\"' --set 'bases=[\"nf4+dq\"]'", dir);
    int rc = run_small(out, log, extra);
    CHECKF(rc == 0, "qlora_vs_16bit with save_adapters exited with %d (log in %s)", rc, log);
    if (rc != 0) return;
    /* One directory per (configuration, seed): adapters for LoRA and QLoRA, the model for full. */
    const char *kept[] = {"lora_fp32_seed1", "lora_fp32_seed2", "qlora_nf4_dq_seed1", "qlora_nf4_dq_seed2"};
    for (int i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "%s/%s/%s", dir, kept[i], LORA_PEFT_WEIGHTS);
        CHECKF(access(path, R_OK) == 0, "%s missing", path);
        snprintf(path, sizeof path, "%s/%s/%s", dir, kept[i], LORA_PEFT_CONFIG);
        CHECKF(access(path, R_OK) == 0, "%s missing", path);
    }
    snprintf(path, sizeof path, "%s/full_fp32_seed1/model.safetensors", dir);
    CHECKF(access(path, R_OK) == 0, "%s missing", path);

    /* The kept adapters are the trained ones: on the same base, rows and batches, the same thread count and
     * exact fp32 storage (the q/k row permutation is undone exactly), they reproduce the run's final
     * held-out NLL bit for bit. */
    results_file f;
    finetune_task t;
    if (results_read(out, &f) == QLAB_OK) {
        const results_table_data *runs = results_file_table(&f, "runs");
        if (finetune_task_load(&t, shared_data_path("models/stories260K.bin"), "auto",
                               shared_data_path("finetune/alpaca_data_1k.json"), 120, 20, 1234,
                               64) == QLAB_OK) {
            const char *names[] = {"lora_fp32", "qlora_nf4_dq"};
            for (int i = 0; i < 2 && runs; i++) {
                snprintf(path, sizeof path, "%s/%s_seed2", dir, names[i]);
                double reported = run_nll(runs, names[i], 2), reloaded = adapter_nll(&t, path, i == 1);
                printf("  %s seed 2: held-out NLL %.9f reported, %.9f from the kept adapter\n", names[i],
                       reported, reloaded);
                CHECKF(isfinite(reported) && reloaded == reported, "%s: %.9f vs %.9f", names[i], reloaded,
                       reported);
            }
            finetune_task_free(&t);
        } else {
            CHECKF(0, "%s", qlab_last_error());
        }
        results_file_free(&f);
    } else {
        CHECKF(0, "%s", qlab_last_error());
    }

    /* qlab ppl takes a kept adapter, and it changes the base's perplexity. */
    const char *text = shared_data_path("eval/tinystories_sample.txt");
    char qlab[600], command[3000], ja[160], jb[160];
    snprintf(qlab, sizeof qlab, "%s", program);
    char *slash = strrchr(qlab, '/');
    snprintf(slash ? slash + 1 : qlab, sizeof qlab - (size_t)(slash ? slash + 1 - qlab : 0), "qlab");
    if (!text || access(qlab, X_OK) != 0) {
        SKIP("qlab or ../shared/data/eval/tinystories_sample.txt missing: ppl --adapter not checked");
    } else {
        snprintf(ja, sizeof ja, "%s/ppl_adapter.json", dir);
        snprintf(jb, sizeof jb, "%s/ppl_base.json", dir);
        snprintf(
            command, sizeof command,
            "'%s' ppl --model '%s' --tokenizer '%s' --data '%s' --ctx 64 --json --adapter "
            "'%s/qlora_nf4_dq_seed1' --dtype nf4 --double-quant > '%s' 2>/dev/null && '%s' ppl --model '%s' "
            "--tokenizer '%s' --data '%s' --ctx 64 --json --dtype nf4 --double-quant > '%s' 2>/dev/null",
            qlab, shared_data_path("models/stories260K.bin"), shared_data_path("models/tok512.bin"), text,
            dir, ja, qlab, shared_data_path("models/stories260K.bin"), shared_data_path("models/tok512.bin"),
            text, jb);
        CHECKF(run_shell(command) == 0, "%s", command);
        char *a = NULL, *b = NULL;
        size_t n = 0;
        if (qlab_read_file(ja, &a, &n) == QLAB_OK && qlab_read_file(jb, &b, &n) == QLAB_OK) {
            const char *ka = strstr(a, "\"mean_nll\":"), *kb = strstr(b, "\"mean_nll\":");
            CHECK(ka && kb);
            if (ka && kb) {
                printf("  qlab ppl --dtype nf4 --double-quant: base NLL %.6f, with the kept QLoRA adapter "
                       "%.6f\n",
                       atof(kb + 11), atof(ka + 11));
                CHECK(fabs(atof(ka + 11) - atof(kb + 11)) > 1e-4);
            }
        } else {
            CHECKF(0, "%s", qlab_last_error());
        }
        free(a), free(b);
    }
    snprintf(command, sizeof command, "rm -rf '%s' '%s' '%s'", dir, out, log);
    run_shell(command);
}

int main(void) {
    const char *b = getenv("QLAB_BUILD");
    snprintf(program, sizeof program, "%s/bin/qlora_vs_16bit", b && b[0] ? b : "build");
    if (access(program, X_OK) != 0) {
        SKIP("%s not built (run make, or set QLAB_BUILD)", program);
        return check_summary();
    }
    if (!shared_data_path("models/stories260K.bin") || !shared_data_path("finetune/alpaca_data_1k.json")) {
        SKIP("../shared/data (stories260K.bin, finetune/alpaca_data_1k.json) absent: not run");
        return check_summary();
    }
    test_run();
    test_saved_adapters();
    return check_summary();
}
