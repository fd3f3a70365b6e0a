/* End-to-end tests of `qlab finetune` on stories260K and 1,000 Alpaca records from ../shared/data (SKIPs
 * without them): a few dozen QLoRA steps lower the held-out response NLL; the output directory is a PEFT
 * adapter that lora_load_peft reads back; a run killed with SIGKILL in the middle and resumed with --resume
 * ends with an adapter byte-identical to an uninterrupted run with the same threads; a malformed record is
 * refused with the file and record number and nothing is written to DIR; and the data formats (Guanaco chat
 * JSON lines gzip'd, {input, output} lines, plain text) load with the prompt masked as documented; --full
 * writes the whole trained model, which loads back and scores as the run logged. Runs
 * $QLAB_BUILD/bin/qlab (default build/bin/qlab). */
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/check.h"
#include "core/base/common.h"
#include "core/formats/safetensors.h"
#include "core/model/checkpoint.h"
#include "core/model/lora_peft.h"
#include "core/results/results.h"
#include "core/text/tokenizer.h"
#include "datasets/finetune_data.h"
#include "train/finetune.h"
#include "tests/test_util.h"

static char qlab_bin[1024];
static char err_text[65536];
static const char *model_path, *tok_path, *alpaca_path;

static void slurp(const char *path, char *buf, size_t cap) {
    buf[0] = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return;
    size_t n = fread(buf, 1, cap - 1, f);
    buf[n] = 0;
    fclose(f);
}

/* Starts qlab finetune with the common arguments, out DIR and extra arguments (NULL-terminated);
 * stderr goes to err_path. Returns the child's pid. */
static pid_t start(const char *err_path, const char *first, ...) {
    const char *argv[64];
    int argc = 0;
    argv[argc++] = qlab_bin;
    argv[argc++] = "finetune";
    va_list ap;
    va_start(ap, first);
    for (const char *a = first; a && argc < 63; a = va_arg(ap, const char *))
        argv[argc++] = a;
    va_end(ap);
    argv[argc] = NULL;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        int o = open("/dev/null", O_WRONLY), e = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (o < 0 || e < 0) _exit(126);
        dup2(o, 1);
        dup2(e, 2);
        setenv("QLAB_QUIET", "1", 1);
        execv(qlab_bin, (char *const *)argv);
        _exit(127);
    }
    return pid;
}

static int finish(pid_t pid, const char *err_path) {
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) < 0) return -1;
    slurp(err_path, err_text, sizeof err_text);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return WEXITSTATUS(status);
}

#define COMMON                                                                                               \
    "--model", model_path, "--tokenizer", tok_path, "--data", alpaca_path, "--steps", "30", "--batch", "2",  \
        "--grad-accum", "2", "--max-len", "48", "--lr", "2e-3", "--schedule", "cosine", "--warmup", "3",     \
        "--threads", "1", "--eval-fraction", "0.05"

/* The "done" metadata of a state file (-1 when absent or unreadable, e.g. mid-rename). */
static long state_step(const char *path) {
    safetensors_file f;
    if (access(path, R_OK) != 0 || safetensors_open(&f, path) != QLAB_OK) return -1;
    const char *d = safetensors_metadata(&f, "done");
    long v = d ? strtol(d, NULL, 10) : -1;
    safetensors_close(&f);
    return v;
}

static int same_bytes(const char *a, const char *b) {
    char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    int same = qlab_read_file(a, &x, &nx) == QLAB_OK && qlab_read_file(b, &y, &ny) == QLAB_OK && nx == ny &&
               memcmp(x, y, nx) == 0;
    free(x), free(y);
    return same;
}

static void test_train_kill_resume(void) {
    const char *full = tmp_path("full"), *killed = tmp_path("killed");
    const char *err_full = tmp_path("full.err"), *err_killed = tmp_path("killed.err");
    /* Both runs at once: the uninterrupted one, and one killed once its state reaches step 9. */
    pid_t a = start(err_full, COMMON, "--save-every", "3", "--out", full, NULL);
    pid_t b = start(err_killed, COMMON, "--save-every", "3", "--out", killed, NULL);
    char state[600];
    snprintf(state, sizeof state, "%s/state.safetensors", killed);
    long at = -1;
    for (int i = 0; i < 6000 && (at = state_step(state)) < 9; i++) {
        if (waitpid(b, NULL, WNOHANG) == b) {
            b = -1;
            break;
        }
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    int killed_mid_run = b > 0 && kill(b, SIGKILL) == 0;
    int rc_b = b > 0 ? finish(b, err_killed) : -1;
    CHECKF(killed_mid_run && rc_b == 128 + SIGKILL, "the second run was not killed mid-run (rc %d, step %ld)",
           rc_b, at);
    int rc_a = finish(a, err_full);
    CHECKF(rc_a == 0, "uninterrupted run: exit %d: %s", rc_a, err_text);
    long saved = state_step(state);
    CHECKF(saved >= 9 && saved < 30, "killed run's last state is at step %ld", saved);
    pid_t r = start(err_killed, "--resume", killed, "--threads", "1", NULL);
    int rc_r = finish(r, err_killed);
    CHECKF(rc_r == 0, "resume: exit %d: %s", rc_r, err_text);
    char fa[600], fb[600];
    snprintf(fa, sizeof fa, "%s/%s", full, LORA_PEFT_WEIGHTS);
    snprintf(fb, sizeof fb, "%s/%s", killed, LORA_PEFT_WEIGHTS);
    CHECKF(same_bytes(fa, fb), "killed at step %ld and resumed: adapter differs from the uninterrupted run",
           saved);
    snprintf(fa, sizeof fa, "%s/%s", full, LORA_PEFT_CONFIG);
    snprintf(fb, sizeof fb, "%s/%s", killed, LORA_PEFT_CONFIG);
    CHECK(same_bytes(fa, fb));

    /* The log: held-out response NLL lowered by 30 steps; provenance present. */
    char log[600];
    snprintf(log, sizeof log, "%s/finetune.h5", full);
    results_file rf;
    if (results_read(log, &rf) == QLAB_OK) {
        const results_table_data *s = results_file_table(&rf, "summary");
        const results_column *c0 = s ? results_table_find_column(s, "initial_heldout_nll") : NULL;
        const results_column *c1 = s ? results_table_find_column(s, "final_heldout_nll") : NULL;
        const results_table_data *h = results_file_table(&rf, "heldout");
        CHECK(c0 && c1 && h && h->nrows >= 2);
        if (c0 && c1) {
            printf(
                "  stories260K QLoRA (NF4+DQ, r 8, all projections), 30 steps of 2x2 rows: held-out response "
                "NLL %.4f -> %.4f; killed at step %ld, resumed: adapter byte-identical\n",
                c0->f64[0], c1->f64[0], saved);
            CHECKF(c1->f64[0] < c0->f64[0] - 0.2, "held-out NLL %.4f -> %.4f", c0->f64[0], c1->f64[0]);
        }
        CHECK(results_file_attr(&rf, "git_commit") != NULL);
        results_file_free(&rf);
    } else {
        CHECKF(0, "%s", qlab_last_error());
    }

    /* The adapter loads as a PEFT directory for the base's configuration. */
    model *m = NULL;
    if (checkpoint_load(model_path, &m) == QLAB_OK) {
        lora_set *l = NULL;
        qlab_status st = lora_load_peft(full, model_get_config(m), &l);
        CHECKF(st == QLAB_OK, "%s", qlab_last_error());
        if (l) CHECK(lora_get_config(l)->rank == 8 && lora_get_config(l)->targets == LORA_TARGETS_ALL);
        lora_free(l);
        model_free(m);
    }
    /* Adapters everywhere: ppl with --adapter equals ppl of the model qlab merge writes, and differs from the
     * base; generate takes the adapter on a 4-bit base. */
    const char *text = shared_data_path("eval/tinystories_sample.txt"), *merged = tmp_path("merged");
    if (text) {
        static char cmd[16384];
        const char *out_a = tmp_path("ppl_adapter.json"), *out_m = tmp_path("ppl_merged.json"),
                   *out_b = tmp_path("ppl_base.json");
        snprintf(cmd, sizeof cmd,
                 "%s ppl --model %s --tokenizer %s --data %s --ctx 64 --json --adapter %s > %s && "
                 "%s merge --model %s --adapter %s --out %s > /dev/null && "
                 "%s ppl --model %s --tokenizer %s --data %s --ctx 64 --json > %s && "
                 "%s ppl --model %s --tokenizer %s --data %s --ctx 64 --json > %s && "
                 "%s generate --model %s --tokenizer %s --adapter %s --dtype nf4 --double-quant --steps 8 "
                 "--temperature 0 > /dev/null",
                 qlab_bin, model_path, tok_path, text, full, out_a, qlab_bin, model_path, full, merged,
                 qlab_bin, merged, tok_path, text, out_m, qlab_bin, model_path, tok_path, text, out_b,
                 qlab_bin, model_path, tok_path, full);
        CHECKF(run_shell(cmd) == 0, "%s", cmd);
        char ja[4096], jm[4096], jb[4096];
        slurp(out_a, ja, sizeof ja), slurp(out_m, jm, sizeof jm), slurp(out_b, jb, sizeof jb);
        const char *ka = strstr(ja, "\"mean_nll\":"), *km = strstr(jm, "\"mean_nll\":"),
                   *kb = strstr(jb, "\"mean_nll\":");
        CHECK(ka && km && kb);
        if (ka && km && kb) {
            double na = atof(ka + 11), nm = atof(km + 11), nb = atof(kb + 11);
            printf("  tinystories_sample NLL: base %.6f, with --adapter %.6f, merged model %.6f\n", nb, na,
                   nm);
            CHECKF(fabs(na - nm) < 1e-5 && fabs(na - nb) > 1e-3, "adapter %.8f merged %.8f base %.8f", na, nm,
                   nb);
        }
    } else {
        SKIP("../shared/data/eval/tinystories_sample.txt missing: ppl/merge with the adapter not checked");
    }
    /* A second run into the same DIR is refused (it would mix two runs); --resume of a finished run is fine.
     */
    pid_t again = start(err_full, COMMON, "--out", full, NULL);
    CHECK(finish(again, err_full) != 0 && strstr(err_text, "--resume"));
}

static void test_bad_record(void) {
    const char *bad = tmp_path("bad.json"), *dir = tmp_path("never");
    const char *text =
        "[{\"instruction\": \"a\", \"output\": \"b\"},\n {\"instruction\": \"c\", \"output\": \"d\"},\n"
        " {\"instruction\": \"e\", \"output\": 5}]";
    write_bytes(bad, text, strlen(text));
    const char *err = tmp_path("bad.err");
    pid_t p = start(err, "--model", model_path, "--tokenizer", tok_path, "--data", bad, "--out", dir, NULL);
    int rc = finish(p, err);
    CHECKF(rc != 0 && strstr(err_text, bad) && strstr(err_text, "record 2"), "exit %d: %s", rc, err_text);
    struct stat sb;
    CHECKF(stat(dir, &sb) != 0, "%s was created by a failed run", dir);
}

/* Without --tokenizer a GGUF model's own tokenizer is used, as in ppl, generate and mmlu: a GGUF that has
 * none (stories260K written by checkpoint_save_gguf) is refused with one line naming it and nothing
 * written; SmolLM2-135M's GGUF (which embeds its tokenizer) runs one short step to a PEFT directory. */
static void test_gguf_tokenizer(void) {
    const char *gguf = tmp_path("s260k.gguf"), *dir = tmp_path("gguf_never"), *err = tmp_path("gguf.err");
    model *m = NULL;
    CHECK(checkpoint_load(model_path, &m) == QLAB_OK &&
          checkpoint_save_gguf(m, gguf, CHECKPOINT_F32) == QLAB_OK);
    model_free(m);
    pid_t p = start(err, "--model", gguf, "--data", alpaca_path, "--out", dir, "--steps", "1", NULL);
    int rc = finish(p, err);
    CHECKF(rc != 0 && strstr(err_text, gguf) && strstr(err_text, "has no tokenizer"), "exit %d: %s", rc,
           err_text);
    struct stat sb;
    CHECKF(stat(dir, &sb) != 0, "%s was created by a failed run", dir);
    const char *smol = shared_data_path("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if (!smol) {
        SKIP("../shared/data/models/SmolLM2-135M-Instruct.Q4_1.gguf missing: its own tokenizer not run");
        return;
    }
    const char *out = tmp_path("gguf_smol"), *cfg = tmp_path("gguf_smol/adapter_config.json");
    p = start(err, "--model", smol, "--data", alpaca_path, "--out", out, "--steps", "1", "--batch", "1",
              "--max-len", "32", "--eval-fraction", "0.01", "--threads", "2", NULL);
    rc = finish(p, err);
    CHECKF(rc == 0 && access(cfg, R_OK) == 0, "SmolLM2 GGUF without --tokenizer: exit %d: %s", rc, err_text);
}

static void test_formats(void) {
    tokenizer *tok = NULL;
    if (tokenizer_load(tok_path, &tok) != QLAB_OK) {
        CHECKF(0, "%s", qlab_last_error());
        return;
    }
    finetune_data_options o = {32, 0};
    instruct_examples e;
    finetune_data_format f;
    /* Guanaco chat lines, gzip'd: the last "### Assistant:" turn is the response. */
    const char *chat = tmp_path("chat.jsonl");
    const char *lines = "{\"text\": \"### Human: Hi there ### Assistant: Hello! ### Human: Name a color. ### "
                        "Assistant: Blue.\"}\n\n{\"text\": \"### Human: Count ### Assistant: one two\"}\n";
    write_bytes(chat, lines, strlen(lines));
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "gzip -n -f '%s'", chat);
    if (run_shell(cmd) == 0) {
        char gz[600];
        snprintf(gz, sizeof gz, "%s.gz", chat);
        qlab_status st = finetune_data_load(gz, FINETUNE_DATA_AUTO, tok, &o, &e, &f);
        CHECKF(st == QLAB_OK && f == FINETUNE_DATA_OASST && e.n == 2, "%s", st ? qlab_last_error() : "");
        if (st == QLAB_OK) {
            /* Row 0 learns " Blue." + EOS only: its scored targets decode to the reply. */
            int scored = 0;
            for (int t = 0; t < e.T; t++)
                scored += e.targets[t] >= 0;
            int *ids = NULL;
            size_t n = 0;
            CHECK(tokenizer_encode(tok, "Blue.", 5, 0, &ids, &n) == QLAB_OK);
            CHECKF(scored == (int)n + 1, "row 0 scores %d targets, the reply has %zu tokens + EOS", scored,
                   n);
            free(ids);
            instruct_examples_free(&e);
        }
        /* A chat line without an assistant turn is refused with its line number. */
        const char *bad = tmp_path("badchat.jsonl"),
                   *b = "{\"text\": \"### Human: a ### Assistant: b\"}\n{\"text\": \"hi\"}\n";
        write_bytes(bad, b, strlen(b));
        CHECK(finetune_data_load(bad, FINETUNE_DATA_OASST, tok, &o, &e, NULL) == QLAB_ERR_FORMAT &&
              strstr(qlab_last_error(), "line 2"));
    } else {
        SKIP("gzip not available");
    }
    /* {input, output} lines: detected as jsonl. */
    const char *io = tmp_path("io.jsonl"), *t = "{\"input\": \"Q: 2+2?\", \"output\": \"4\"}\n";
    write_bytes(io, t, strlen(t));
    CHECK(finetune_data_load(io, FINETUNE_DATA_AUTO, tok, &o, &e, &f) == QLAB_OK &&
          f == FINETUNE_DATA_JSONL && e.n == 1);
    instruct_examples_free(&e);
    /* Plain text: consecutive rows, every next token learned. */
    const char *txt = tmp_path("story.txt");
    const char *story =
        "Once upon a time there was a little dog. The dog liked to run in the park with his "
        "friend the cat. One day they found a big red ball and played until the sun went down.";
    write_bytes(txt, story, strlen(story));
    CHECK(finetune_data_load(txt, FINETUNE_DATA_AUTO, tok, &o, &e, &f) == QLAB_OK && f == FINETUNE_DATA_TEXT);
    if (f == FINETUNE_DATA_TEXT && e.n >= 2) {
        int *ids = NULL;
        size_t n = 0;
        CHECK(tokenizer_encode(tok, story, strlen(story), 1, &ids, &n) == QLAB_OK);
        CHECK(e.n == (int)((n - 1 + 31) / 32) && e.n_target_tokens == (long long)n - 1);
        CHECK(e.tokens[32] == ids[32] && e.targets[31] == ids[32] && e.targets[0] == ids[1]);
        free(ids);
        instruct_examples train, eval;
        CHECK(finetune_data_split(&e, 0.3, 7, &train, &eval) == QLAB_OK && train.n + eval.n == e.n &&
              eval.n >= 1);
        instruct_examples_free(&train);
        instruct_examples_free(&eval);
    }
    instruct_examples_free(&e);
    tokenizer_free(tok);
}

/* --full trains every parameter and writes the whole model (config.json + model.safetensors in Hugging
 * Face order) instead of an adapter: the written model, loaded back, scores the held-out file exactly as
 * the run's log says its final model did, and no longer as the base. */
static void test_full(void) {
    const char *dir = tmp_path("full_ft"), *eval = tmp_path("full_eval.json"), *err = tmp_path("full_ft.err");
    const char *records =
        "[{\"instruction\": \"Name a color.\", \"output\": \"Blue is a color.\"},\n"
        " {\"instruction\": \"Say hello.\", \"output\": \"Hello there, my friend.\"},\n"
        " {\"instruction\": \"Count to three.\", \"input\": \"slowly\", \"output\": \"One, two, three.\"}]";
    write_bytes(eval, records, strlen(records));
    pid_t p = start(err, "--model", model_path, "--tokenizer", tok_path, "--data", alpaca_path, "--eval-data",
                    eval, "--full", "--steps", "8", "--batch", "2", "--max-len", "48", "--lr", "1e-3",
                    "--threads", "1", "--out", dir, NULL);
    int rc = finish(p, err);
    CHECKF(rc == 0, "qlab finetune --full: exit %d: %s", rc, err_text);
    if (rc != 0) return;
    char path[700];
    snprintf(path, sizeof path, "%s/%s", dir, LORA_PEFT_CONFIG);
    CHECKF(access(path, F_OK) != 0, "--full wrote an adapter (%s)", path);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CHECK(access(path, R_OK) == 0);
    snprintf(path, sizeof path, "%s/finetune.h5", dir);
    double logged_initial = NAN, logged_final = NAN;
    results_file rf;
    if (results_read(path, &rf) == QLAB_OK) {
        const results_table_data *s = results_file_table(&rf, "summary");
        const results_column *c0 = s ? results_table_find_column(s, "initial_heldout_nll") : NULL;
        const results_column *c1 = s ? results_table_find_column(s, "final_heldout_nll") : NULL;
        if (c0 && c1) logged_initial = c0->f64[0], logged_final = c1->f64[0];
        results_file_free(&rf);
    }
    CHECKF(isfinite(logged_initial) && isfinite(logged_final), "%s: no held-out NLL in the summary", path);
    model *base = NULL, *tuned = NULL;
    tokenizer *tok = NULL;
    instruct_examples e = {0};
    finetune_data_options o = {48, 0};
    if (checkpoint_load(model_path, &base) != QLAB_OK || checkpoint_load(dir, &tuned) != QLAB_OK ||
        tokenizer_load(tok_path, &tok) != QLAB_OK ||
        finetune_data_load(eval, FINETUNE_DATA_AUTO, tok, &o, &e, NULL) != QLAB_OK) {
        CHECKF(0, "%s", qlab_last_error());
    } else {
        finetune_rows rows = {e.tokens, e.targets, e.n, e.T};
        double nll_base = NAN, nll_tuned = NAN;
        CHECK(finetune_heldout_nll(base, &rows, 2, &nll_base, NULL) == QLAB_OK);
        CHECK(finetune_heldout_nll(tuned, &rows, 2, &nll_tuned, NULL) == QLAB_OK);
        printf("  --full, 8 steps: held-out NLL of the base %.6f (log %.6f), of the written model %.6f (log "
               "%.6f)\n",
               nll_base, logged_initial, nll_tuned, logged_final);
        /* The same rows, batches and fp32 weights (the checkpoint's Q/K permutation is exact); 1e-5 allows
         * only a different summation split between this process's threads and the run's one thread. */
        CHECKF(fabs(nll_base - logged_initial) < 1e-5 && fabs(nll_tuned - logged_final) < 1e-5,
               "base %.8f vs %.8f, tuned %.8f vs %.8f", nll_base, logged_initial, nll_tuned, logged_final);
        CHECKF(fabs(nll_tuned - nll_base) > 1e-3, "the written model scores as the base (%.6f)", nll_tuned);
    }
    instruct_examples_free(&e);
    tokenizer_free(tok);
    model_free(base);
    model_free(tuned);
}

int main(void) {
    const char *build = getenv("QLAB_BUILD");
    snprintf(qlab_bin, sizeof qlab_bin, "%s/bin/qlab", build && build[0] ? build : "build");
    model_path = shared_data_path("models/stories260K.bin");
    tok_path = shared_data_path("models/tok512.bin");
    alpaca_path = shared_data_path("finetune/alpaca_data_1k.json");
    if (access(qlab_bin, X_OK) != 0) {
        SKIP("%s not built", qlab_bin);
        return check_summary();
    }
    if (!model_path || !tok_path || !alpaca_path) {
        SKIP("../shared/data/models/stories260K.bin, tok512.bin or finetune/alpaca_data_1k.json missing");
        return check_summary();
    }
    test_tmp_dir_create("cli_finetune");
    test_formats();
    test_bad_record();
    test_gguf_tokenizer();
    test_full();
    test_train_kill_resume();
    test_tmp_dir_remove();
    return check_summary();
}
