/* Memory accounting (core/base/memacct.h): the counters and the budget on their own; a whole finetuning run
 * (full, LoRA on fp32, QLoRA NF4+DQ, paged optimizer) charges every buffer it holds and returns to zero when
 * everything is freed; the categories add up to the model's own memory report; a budget one byte below a
 * run's peak stops it with QLAB_ERR_BUDGET before the allocation (the heap did not grow by the request),
 * and a budget equal to the peak lets the same run finish with the same result; byte counts parse, and the
 * qlab and experiment command lines refuse a malformed --memory-budget naming the flag. */
#include <malloc.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tests/check.h"
#include "tests/cli_run.h"
#include "core/base/common.h"
#include "core/base/memacct.h"
#include "core/base/rng.h"
#include "core/model/lora.h"
#include "core/model/model.h"
#include "train/finetune.h"
#include "train/train.h"
#include "core/results/results.h"
#include "tests/results_cells.h"

static const model_config cfg = {.dim = 64,
                                 .hidden_dim = 128,
                                 .n_layers = 3,
                                 .n_heads = 4,
                                 .n_kv_heads = 2,
                                 .vocab_size = 96,
                                 .seq_len = 64,
                                 .norm_eps = 1e-5f,
                                 .rope_theta = 10000.0f,
                                 .shared_classifier = 0};

static size_t total_current(void) {
    size_t sum = 0;
    for (int c = 0; c < MEMACCT_COUNT; c++)
        sum += memacct_current((memacct_category)c);
    return sum;
}

/* Bytes the C heap holds (small blocks + mmapped large ones). */
static size_t heap_bytes(void) {
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd;
}

static void test_counters(void) {
    memacct_reset();
    memacct_set_budget(0);
    CHECK(memacct_charge(MEMACCT_ADAPTERS, 1000) == QLAB_OK);
    CHECK(memacct_charge(MEMACCT_OPTIMIZER, 500) == QLAB_OK);
    CHECK(memacct_current(MEMACCT_ADAPTERS) == 1000 && memacct_current_total() == 1500);
    CHECK(memacct_release(MEMACCT_ADAPTERS, 400) == QLAB_OK);
    CHECK(memacct_current(MEMACCT_ADAPTERS) == 600 && memacct_peak(MEMACCT_ADAPTERS) == 1000);
    CHECK(memacct_peak_total() == 1500);
    /* budget: 600 + 500 held, 400 more would make 1500 > 1200 */
    memacct_set_budget(1200);
    CHECK(memacct_charge(MEMACCT_ACTIVATIONS, 400) == QLAB_ERR_BUDGET);
    const char *msg = qlab_last_error();
    CHECKF(strstr(msg, "memory budget 1.17 KiB (1200 bytes) exceeded by activations request of 400 bytes") ==
               msg,
           "%s", msg);
    CHECKF(strstr(msg,
                  "in use: 4-bit weights 0 B, full-precision weights 0 B, adapters 600 B, gradients 0 B, "
                  "optimizer 500 B, activations 0 B, scratch 0 B") != NULL,
           "%s", msg);
    CHECK(memacct_current(MEMACCT_ACTIVATIONS) == 0 && memacct_refusals() == 1);
    CHECK(qlab_last_status() == QLAB_ERR_BUDGET);
    /* A budget refusal passed on as out of memory stays a budget refusal with its own message. */
    CHECK(qlab_fail_context(QLAB_ERR_NOMEM, "model activations") == QLAB_ERR_BUDGET);
    CHECK(strncmp(qlab_last_error(), "memory budget", 13) == 0);
    CHECK(memacct_charge(MEMACCT_ACTIVATIONS, 100) == QLAB_OK); /* exactly the budget fits */
    CHECK(memacct_charge(MEMACCT_SCRATCH, 1) == QLAB_ERR_BUDGET);
    CHECK(memacct_charge(MEMACCT_SCRATCH, 0) == QLAB_OK);
    memacct_set_budget(0);
    char buf[512];
    memacct_format_breakdown(buf, sizeof buf);
    CHECKF(!strcmp(buf, "4-bit weights 0 B, full-precision weights 0 B, adapters 600 B, gradients 0 B, "
                        "optimizer 500 B, activations 100 B, scratch 0 B"),
           "%s", buf);
    /* over-release is an accounting bug: reported, and the counter clamps at zero */
    CHECK(memacct_release(MEMACCT_OPTIMIZER, 501) == QLAB_ERR_ARG);
    CHECK(memacct_current(MEMACCT_OPTIMIZER) == 0 && memacct_current_total() == 700);
    memacct_format_peaks(buf, sizeof buf);
    CHECKF(strstr(buf, "peak 1.46 KiB; ") == buf, "%s", buf);
    /* a new measurement window: its peaks start from what is held; the process's peaks stay */
    memacct_reset_peaks();
    CHECK(memacct_peak_total() == 700 && memacct_peak(MEMACCT_ADAPTERS) == 600);
    CHECK(memacct_process_peak_total() == 1500 && memacct_process_peak(MEMACCT_ADAPTERS) == 1000);
    CHECK(memacct_charge(MEMACCT_SCRATCH, 50) == QLAB_OK && memacct_peak_total() == 750);
    memacct_format_process_peaks(buf, sizeof buf);
    CHECKF(strstr(buf, "peak 1.46 KiB; 4-bit weights 0 B, full-precision weights 0 B, adapters 1000 B") ==
               buf,
           "%s", buf);
    memacct_reset();
    CHECK(memacct_current_total() == 0 && memacct_peak_total() == 0 && memacct_refusals() == 0 &&
          memacct_process_peak_total() == 0);
    CHECK(memacct_charge((memacct_category)MEMACCT_COUNT, 1) == QLAB_ERR_ARG);
}

static void test_parse(void) {
    static const struct {
        const char *text;
        size_t bytes;
    } good[] = {{"0", 0},           {"123", 123},         {"4K", 4096},         {"4k", 4096},
                {"4KiB", 4096},     {"4KB", 4000},        {"3M", 3u << 20},     {"3MiB", 3u << 20},
                {"2G", 2ull << 30}, {"2gib", 2ull << 30}, {"1.5G", 3ull << 29}, {"1GB", 1000000000},
                {"7b", 7},          {"1T", 1ull << 40}};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        size_t v = 1;
        qlab_status st = memacct_parse_bytes(good[i].text, "--memory-budget", &v);
        CHECKF(st == QLAB_OK && v == good[i].bytes, "'%s' -> %zu (%s)", good[i].text, v,
               st == QLAB_OK ? "ok" : qlab_last_error());
    }
    static const char *bad[] = {"12X", "", "-5", "K", "1.5", "12 M", "M12", "nan", "inf", "1e400", "12MiBs"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t v = 0;
        qlab_status st = memacct_parse_bytes(bad[i], "--memory-budget", &v);
        CHECKF(st == QLAB_ERR_ARG && strstr(qlab_last_error(), "--memory-budget") == qlab_last_error(),
               "'%s' accepted or unnamed: %s", bad[i], qlab_last_error());
    }
    CHECK(memacct_parse_bytes("12X", "--memory-budget", &(size_t){0}) == QLAB_ERR_ARG &&
          strstr(qlab_last_error(), "'12X'") && strstr(qlab_last_error(), "unit 'X'"));
}

/* ---------------------------------------------------------------- whole runs */

enum { N_ROWS = 24, ROW_LEN = 48, N_HELD = 6 };
static int train_tokens[N_ROWS * ROW_LEN], train_targets[N_ROWS * ROW_LEN];
static int held_tokens[N_HELD * ROW_LEN], held_targets[N_HELD * ROW_LEN];

static void make_rows(int *tokens, int *targets, int n, rng_state *rng) {
    for (int r = 0; r < n; r++)
        for (int t = 0; t < ROW_LEN; t++) {
            int i = r * ROW_LEN + t;
            tokens[i] = (int)rng_below(rng, (uint64_t)cfg.vocab_size);
            /* a "prompt" of 10 unscored positions, then a learnable pattern */
            targets[i] = t < 10 ? -1 : (tokens[i] * 7 + 3) % cfg.vocab_size;
        }
}

typedef struct {
    qlab_status st;
    char message[1024];
    size_t peak, peaks[MEMACCT_COUNT];
    size_t left_after_free; /* what stays charged once model and adapters are freed */
    double final_nll;
    float first_value; /* a trained value, to compare runs */
    int64_t steps_done;
} run_outcome;

/* A finetuning run from a fresh model under the current budget; the counters are reset first. */
static run_outcome run(finetune_mode mode, size_t resident_bytes) {
    run_outcome out;
    memset(&out, 0, sizeof out);
    memacct_reset();
    model *m = NULL;
    finetune_job *job = NULL;
    out.st = model_create(&m, &cfg);
    if (out.st == QLAB_OK) {
        train_init_params(m, 11);
        finetune_options o;
        finetune_options_default(&o);
        o.mode = mode;
        o.lora.rank = 4;
        o.batch = 4;
        o.steps = 4;
        o.eval_every = 2;
        o.eval_batch = 3;
        o.max_lr = 1e-3;
        o.log_every = 1;
        o.state_kind = resident_bytes ? OPTIM_STATE_PAGED : OPTIM_STATE_HOST;
        o.optimizer_resident_bytes = resident_bytes;
        o.optimizer_page_bytes = 4096;
        finetune_rows tr = {train_tokens, train_targets, N_ROWS, ROW_LEN},
                      hr = {held_tokens, held_targets, N_HELD, ROW_LEN};
        out.st = finetune_job_create(&job, m, &tr, &hr, &o);
        while (out.st == QLAB_OK && finetune_job_steps_done(job) < o.steps)
            out.st = finetune_job_step(job);
        if (job) out.steps_done = finetune_job_steps_done(job);
        if (out.st == QLAB_OK) {
            out.final_nll = finetune_job_result(job)->final_heldout_nll;
            lora_set *l = finetune_job_adapters(job);
            out.first_value = l ? lora_get_param_buffer(l, NULL)[100] : model_get_param_buffer(m, NULL)[100];
        }
    }
    if (out.st != QLAB_OK) snprintf(out.message, sizeof out.message, "%s", qlab_last_error());
    out.peak = memacct_peak_total();
    for (int c = 0; c < MEMACCT_COUNT; c++)
        out.peaks[c] = memacct_peak((memacct_category)c);
    finetune_job_free(job);
    model_free(m);
    out.left_after_free = total_current();
    return out;
}

static void test_run(finetune_mode mode, size_t resident, const char *what) {
    memacct_set_budget(0);
    run_outcome free_run = run(mode, resident);
    CHECKF(free_run.st == QLAB_OK, "%s: %s", what, free_run.message);
    CHECKF(free_run.left_after_free == 0 && memacct_current_total() == 0, "%s: %zu bytes still charged", what,
           free_run.left_after_free);
    size_t sum = 0;
    for (int c = 0; c < MEMACCT_COUNT; c++)
        sum += free_run.peaks[c];
    /* the peaks of the categories need not coincide, so they bound the total's peak from above */
    CHECKF(free_run.peak > 0 && free_run.peak <= sum, "%s: peak %zu, sum of category peaks %zu", what,
           free_run.peak, sum);
    CHECKF(free_run.peaks[MEMACCT_ACTIVATIONS] > 0 && free_run.peaks[MEMACCT_FP_WEIGHTS] > 0 &&
               free_run.peaks[MEMACCT_OPTIMIZER] > 0 && free_run.peaks[MEMACCT_GRADIENTS] > 0,
           "%s: a category that must be charged is empty", what);
    CHECK((free_run.peaks[MEMACCT_QUANT_WEIGHTS] > 0) == (mode == FINETUNE_QLORA));
    CHECK((free_run.peaks[MEMACCT_ADAPTERS] > 0) == (mode != FINETUNE_FULL));
    if (resident) /* paged: only the resident pages are memory */
        CHECKF(free_run.peaks[MEMACCT_OPTIMIZER] <= resident, "%s: optimizer peak %zu above resident %zu",
               what, free_run.peaks[MEMACCT_OPTIMIZER], resident);

    /* just below the peak: refused, with the message, before the allocation */
    memacct_set_budget(free_run.peak - 1);
    run_outcome below = run(mode, resident);
    CHECKF(below.st == QLAB_ERR_BUDGET, "%s: budget peak-1 gave %s (%s)", what, qlab_status_name(below.st),
           below.message);
    CHECKF(strstr(below.message, "memory budget") == below.message && strstr(below.message, "in use: 4-bit"),
           "%s: %s", what, below.message);
    CHECKF(below.peak <= free_run.peak - 1, "%s: %zu bytes counted over the budget", what, below.peak);
    CHECKF(below.left_after_free == 0, "%s: %zu bytes charged after the refused run was freed", what,
           below.left_after_free);
    /* exactly the peak: the same run, the same result */
    memacct_set_budget(free_run.peak);
    run_outcome at = run(mode, resident);
    CHECKF(at.st == QLAB_OK && at.final_nll == free_run.final_nll && at.first_value == free_run.first_value &&
               at.peak == free_run.peak,
           "%s: budget = peak: %s, nll %.9g vs %.9g", what, at.st == QLAB_OK ? "ok" : at.message,
           at.final_nll, free_run.final_nll);
    memacct_set_budget(0);
    printf("  %-28s peak %zu bytes; at peak - 1 refused after %lld steps\n", what, free_run.peak,
           (long long)below.steps_done);
}

/* The model's own memory report and the accounting agree category by category. */
static void test_matches_model_memory(void) {
    memacct_reset();
    memacct_set_budget(0);
    model *m = NULL;
    CHECK(model_create(&m, &cfg) == QLAB_OK);
    train_init_params(m, 2);
    CHECK(model_quantize(m, QUANT_NF4, 64, 1) == QLAB_OK);
    float loss;
    CHECK(model_forward(m, train_tokens, train_targets, 4, ROW_LEN, NULL, &loss) == QLAB_OK);
    model_memory mm;
    model_get_memory(m, &mm);
    CHECKF(memacct_current(MEMACCT_QUANT_WEIGHTS) == mm.quantized_weights, "%zu vs %zu",
           memacct_current(MEMACCT_QUANT_WEIGHTS), mm.quantized_weights);
    CHECK(memacct_current(MEMACCT_FP_WEIGHTS) == mm.fp32_weights);
    CHECK(memacct_current(MEMACCT_ACTIVATIONS) == mm.activations);
    CHECK(memacct_current(MEMACCT_SCRATCH) == mm.scratch);
    CHECK(memacct_current(MEMACCT_GRADIENTS) == mm.gradients);
    model_free(m);
    CHECK(memacct_current_total() == 0);
}

/* A refused allocation is not made: a 48 MB parameter buffer under a 1 MB budget, and a forward whose
 * activations do not fit, leave the heap (nearly) where it was. */
static void test_refused_before_allocating(void) {
    memacct_reset();
    model_config big = cfg;
    big.vocab_size = 32768, big.dim = 256, big.hidden_dim = 512, big.n_heads = 4, big.n_kv_heads = 4;
    size_t params = model_num_params(&big) * sizeof(float);
    memacct_set_budget(1 << 20);
    size_t before = heap_bytes();
    model *m = NULL;
    CHECK(model_create(&m, &big) == QLAB_ERR_BUDGET && m == NULL);
    size_t after = heap_bytes();
    CHECKF(after<before + (64 << 10), "heap grew by %zu bytes for a refused %zu-byte request", after> before
               ? after - before
               : 0,
           params);
    CHECKF(strstr(qlab_last_error(), "exceeded by full-precision weights request of") != NULL, "%s",
           qlab_last_error());
    CHECK(memacct_current_total() == 0);

    /* the activations of a long forward: the model fits, the forward does not */
    memacct_set_budget(0);
    CHECK(model_create(&m, &cfg) == QLAB_OK);
    train_init_params(m, 4);
    float loss;
    CHECK(model_forward(m, train_tokens, train_targets, 1, ROW_LEN, NULL, &loss) == QLAB_OK);
    size_t need = model_activation_bytes(m, N_ROWS, ROW_LEN, 0);
    memacct_set_budget(memacct_current_total() + need / 2);
    before = heap_bytes();
    CHECK(model_forward(m, train_tokens, train_targets, N_ROWS, ROW_LEN, NULL, &loss) == QLAB_ERR_BUDGET);
    after = heap_bytes();
    CHECKF(after<before + need / 4, "heap grew by %zu bytes for a refused %zu-byte request", after> before
               ? after - before
               : 0,
           need);
    CHECK(model_backward(m) == QLAB_ERR_ARG); /* nothing to differentiate after the refusal */
    /* the model is still usable once the budget allows it */
    memacct_set_budget(0);
    CHECK(model_forward(m, train_tokens, train_targets, N_ROWS, ROW_LEN, NULL, &loss) == QLAB_OK);
    model_free(m);
    CHECK(memacct_current_total() == 0);
}

/* The command lines: a malformed budget is refused naming the flag (exit 2); a budget too small for the
 * job stops it with the breakdown and exit code QLAB_EXIT_BUDGET. */
static void test_command_lines(void) {
    if (!cli_init()) return;
    const char *bad[] = {cli_bin, "--memory-budget", "12X", "dtypes", NULL};
    CHECK(cli_exec(bad) == 2);
    CHECKF(strstr(cli_err, "--memory-budget") && strstr(cli_err, "'12X'") && !strchr(cli_err, '\n')[1], "%s",
           cli_err);
    const char *after[] = {cli_bin, "dtypes", "--memory-budget=", NULL};
    CHECK(cli_exec(after) == 2 && strstr(cli_err, "--memory-budget"));
    const char *ok[] = {cli_bin, "dtypes", "--memory-budget", "1G", NULL};
    CHECKF(cli_exec(ok) == 0, "%s", cli_err);
    /* the environment variable is the default, checked as strictly, and the flag wins over it */
    setenv("QLAB_MEMORY_BUDGET", "3 MB", 1);
    const char *env[] = {cli_bin, "dtypes", NULL};
    CHECK(cli_exec(env) == 2 && strstr(cli_err, "QLAB_MEMORY_BUDGET") && strstr(cli_err, "'3 MB'"));
    setenv("QLAB_MEMORY_BUDGET", "3MB", 1);
    CHECKF(cli_exec(env) == 0, "%s", cli_err);
    unsetenv("QLAB_MEMORY_BUDGET");
    const char *help[] = {cli_bin, "--help", NULL};
    CHECK(cli_exec(help) == 0 && strstr(cli_out, "--memory-budget BYTES"));

    char exp[1024];
    const char *build = getenv("QLAB_BUILD");
    snprintf(exp, sizeof exp, "%s/bin/double_quant", build && build[0] ? build : "build");
    const char *ebad[] = {exp, "--memory-budget", "12X", NULL};
    CHECK(cli_exec(ebad) == 2 && strstr(cli_err, "--memory-budget") && strstr(cli_err, "12X"));

    /* a real model under 64 KiB: the fp32 weights alone do not fit */
    const char *model_path = shared_data_path("models/stories260K.bin"),
               *tok = shared_data_path("models/tok512.bin");
    if (!model_path || !tok) {
        SKIP("stories260K not in ../shared/data: the budget refusal of qlab ppl is not run");
        return;
    }
    const char *data = shared_data_path("eval/tinystories_sample.txt");
    if (!data) {
        SKIP("tinystories_sample.txt not in ../shared/data");
        return;
    }
    const char *ppl[] = {cli_bin, "--memory-budget", "64KiB", "ppl",   "--model", model_path, "--tokenizer",
                         tok,     "--data",          data,    "--ctx", "64",      NULL};
    int rc = cli_exec(ppl);
    CHECKF(rc == QLAB_EXIT_BUDGET && strstr(cli_err, "memory budget 64.0 KiB (65536 bytes) exceeded by") &&
               strstr(cli_err, "in use: 4-bit weights"),
           "exit %d: %s", rc, cli_err);

    /* qlab finetune's memory options: checkpointing and the CPU pager, recorded as really used */
    const char *alpaca = shared_data_path("finetune/alpaca_data_1k.json");
    if (!alpaca) {
        SKIP("alpaca_data_1k.json not in ../shared/data: qlab finetune's memory options are not run");
        return;
    }
    char out_dir[600];
    snprintf(out_dir, sizeof out_dir, "%s", tmp_path("finetune_paged"));
    const char *garbage[] = {cli_bin,  "finetune", "--model", model_path, "--tokenizer",          tok,
                             "--data", alpaca,     "--out",   out_dir,    "--optimizer-resident", "12X",
                             NULL};
    CHECK(cli_exec(garbage) == 2 && strstr(cli_err, "--optimizer-resident") && strstr(cli_err, "'12X'"));
    const char *ft[] = {cli_bin,
                        "finetune",
                        "--model",
                        model_path,
                        "--tokenizer",
                        tok,
                        "--data",
                        alpaca,
                        "--out",
                        out_dir,
                        "--steps",
                        "4",
                        "--batch",
                        "2",
                        "--max-len",
                        "48",
                        "--checkpointing",
                        "--optimizer-resident",
                        "32K",
                        "--optimizer-page",
                        "16K",
                        NULL};
    rc = cli_exec(ft);
    CHECKF(rc == 0 && strstr(cli_err, "optimizer state cpu-paged") &&
               strstr(cli_err, "gradient checkpointing"),
           "exit %d: %s", rc, cli_err);
    char log_path[700];
    snprintf(log_path, sizeof log_path, "%s/finetune.h5", out_dir);
    results_file f;
    if (rc == 0 && results_read(log_path, &f) == QLAB_OK) {
        const results_table_data *t = results_file_table(&f, "summary");
        const results_column *backend = t ? results_table_find_column(t, "optimizer_backend") : NULL;
        CHECK(backend && !strcmp(backend->str[0], "cpu-paged"));
        CHECK(t && table_i64(t, "checkpointing", 0) == 1);
        /* 46240 adapter values: 370 KB of moments in 16 KiB pages, 2 resident: the rest really moves */
        CHECK(t && table_i64(t, "optimizer_resident_pages", 0) == 2 &&
              table_i64(t, "optimizer_pages", 0) == 23);
        CHECK(t && table_i64(t, "optimizer_pages_in", 0) > 0 &&
              table_i64(t, "optimizer_bytes_moved", 0) ==
                  16384 * (table_i64(t, "optimizer_pages_in", 0) + table_i64(t, "optimizer_pages_out", 0)));
        CHECK(results_file_attr(&f, "memory_peak_optimizer_bytes") &&
              !strcmp(results_file_attr(&f, "memory_peak_optimizer_bytes"), "32768"));
        results_file_free(&f);
    } else {
        CHECKF(0, "cannot read %s", log_path);
    }
}

int main(void) {
    test_tmp_dir_create("memacct");
    rng_state rng;
    rng_seed(&rng, 7);
    make_rows(train_tokens, train_targets, N_ROWS, &rng);
    make_rows(held_tokens, held_targets, N_HELD, &rng);
    test_counters();
    test_parse();
    test_matches_model_memory();
    test_refused_before_allocating();
    test_run(FINETUNE_FULL, 0, "full finetuning");
    test_run(FINETUNE_LORA, 0, "LoRA, fp32 base");
    test_run(FINETUNE_QLORA, 0, "QLoRA NF4+DQ");
    test_run(FINETUNE_QLORA, 8192, "QLoRA NF4+DQ, paged (8 KiB)");
    test_command_lines();
    return check_summary();
}
