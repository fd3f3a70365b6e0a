/* `qlab mmlu`: MMLU accuracy of a model (optionally quantized, optionally with LoRA adapters), per subject
 * and averaged with 95% intervals, into an HDF5 results file and its Markdown report (eval/mmlu_eval.h). */
#include <stdio.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "core/base/common.h"
#include "core/base/progress.h"
#include "core/formats/safetensors.h"
#include "core/model/checkpoint.h"
#include "core/model/lora.h"
#include "core/model/lora_peft.h"
#include "core/model/model.h"
#include "core/quant/quant.h"
#include "core/results/results.h"
#include "core/text/tokenizer.h"
#include "eval/mmlu_eval.h"

#define DEFAULT_ARCHIVE "../shared/data/mmlu/mmlu_dev_test_csv.tar.gz"
#define FETCHED_ARCHIVE "data/mmlu/data.tar" /* make fetch-mmlu: Hendrycks' original release */
#define DEFAULT_QLORA_PROMPTS "../shared/data/mmlu/qlora_zero_shot_mmlu_val.json"

static void mmlu_usage(FILE *f) {
    fprintf(
        f,
        "Usage: qlab mmlu --model M [--tokenizer T] [--adapter FILE|DIR] [--shots 0-5 | --qlora-zero-shot]\n"
        "                 [--letter-space]\n"
        "                 [--data FILE] [--subjects a,b,...] [--limit N] [--max-len N]\n"
        "                 [--dtype D [--blocksize B] [--double-quant]] [--compute fp32|bf16]\n"
        "                 [--out R.h5] [--md R.md]\n\n"
        "MMLU accuracy: BOS + the prompt, one forward pass, and the answer is the letter A-D whose token "
        "has\n"
        "the largest logit at the last position (the QLoRA repository's MMLU evaluation; the token ids are\n"
        "printed). Per-subject accuracy with Wilson 95%% intervals; the average over all questions and\n"
        "qlora's figure, the mean of the subject accuracies, each with a 95%% interval. Chance is 25%%.\n"
        "  --model M            llama2.c .bin, GGUF or Hugging Face directory\n"
        "  --tokenizer T        its tokenizer (tokenizer.bin / tokenizer.json / GGUF)\n"
        "  --adapter DIR|FILE   LoRA adapters: a PEFT directory (adapter_config.json + "
        "adapter_model.safetensors)\n"
        "                       or one safetensors file saved by qlab\n"
        "  --shots K            Hendrycks' prompt with the subject's first K dev questions (default 5;\n"
        "                       lowered per question until the prompt fits the context)\n"
        "  --qlora-zero-shot    qlora's zero-shot validation prompts instead "
        "(qlora_zero_shot_mmlu_val.json)\n"
        "  --letter-space       compare the tokens of \" A\"..\" D\" instead of qlora's \"A\"..\"D\": how "
        "the letters\n"
        "                       follow \"Answer:\" in the text for byte-level BPE tokenizers (SmolLM2, "
        "GPT-2)\n"
        "  --data FILE          the MMLU archive (default %s, else " FETCHED_ARCHIVE " from make\n"
        "                       fetch-mmlu: Hendrycks' data.tar)\n"
        "                       or, with --qlora-zero-shot, the prompts file (default %s)\n"
        "  --subjects LIST      comma-separated subject names (default: all 57)\n"
        "  --limit N            first N questions of each subject\n"
        "  --max-len N          prompt tokens at most (default: the model's context)\n"
        "  --dtype D            quantize the base's projections first (any type 'qlab dtypes' lists), as "
        "QLoRA's\n"
        "                       adapters run on a 4-bit base; --blocksize, --double-quant as in qlab quant\n"
        "  --out R.h5           results file (default results/mmlu.h5); --md R.md its report (default:\n"
        "                       R.h5 with .md)\n",
        DEFAULT_ARCHIVE, DEFAULT_QLORA_PROMPTS);
    cli_print_option(f, "  --compute C", 23, cli_compute_help());
}

static qlab_status write_results(const char *out_path, int argc, char **argv, const char *model_path,
                                 const char *adapter, const char *qdesc, qlab_compute compute,
                                 const mmlu_eval_options *opt, const char *scoring,
                                 const mmlu_eval_result *r) {
    results *res = NULL;
    QLAB_TRY(results_create(&res, out_path, "mmlu", NULL, argc, argv));
    results_set_compute(res, qlab_compute_name(compute), qlab_compute_path_name(compute));
    results_table *t = NULL;
    char text[1024];
    results_attr_string(res, "model", model_path);
    results_attr_string(res, "adapter", adapter ? adapter : "none");
    results_attr_string(res, "weights", qdesc);
    results_attr_string(res, "data", opt->data_path);
    snprintf(text, sizeof text, "%s",
             opt->mode == MMLU_EVAL_KSHOT ? "Hendrycks k-shot prompts over the test split"
                                          : "qlora's zero-shot validation prompts");
    results_note(res, "prompts", text);
    results_note(res, "scoring", scoring);
    snprintf(
        text, sizeof text,
        "%d questions, %d prompts cut at the start to fit the context, %.2f shots used on average (asked "
        "%d), letters chosen A/B/C/D %d/%d/%d/%d, %.1f s",
        r->n, r->n_truncated, r->mean_shots, opt->mode == MMLU_EVAL_KSHOT ? opt->shots : 0, r->predicted[0],
        r->predicted[1], r->predicted[2], r->predicted[3], r->seconds);
    results_note(res, "counts", text);
    results_note(res, "chance", "25% (four answers); a model this small is expected near chance");
    qlab_status st = results_table_begin(res, &t, "subjects", "Accuracy per subject (95% Wilson interval)");
    if (st == QLAB_OK) st = results_table_column(t, "subject", RESULTS_STRING, NULL, NULL);
    if (st == QLAB_OK) st = results_table_column(t, "questions", RESULTS_INT64, NULL, NULL);
    if (st == QLAB_OK) st = results_table_column(t, "correct", RESULTS_INT64, NULL, NULL);
    if (st == QLAB_OK) st = results_table_column(t, "accuracy", RESULTS_FLOAT64, NULL, NULL);
    if (st == QLAB_OK) st = results_table_column(t, "ci95_lo", RESULTS_FLOAT64, NULL, NULL);
    if (st == QLAB_OK) st = results_table_column(t, "ci95_hi", RESULTS_FLOAT64, NULL, NULL);
    for (int s = 0; s < r->n_subjects && st == QLAB_OK; s++) {
        double lo, hi;
        const mmlu_subject_result *sr = &r->subjects[s];
        mmlu_wilson95(sr->correct, sr->n, &lo, &hi);
        results_set_string(t, "subject", sr->name);
        results_set_int(t, "questions", sr->n);
        results_set_int(t, "correct", sr->correct);
        results_set_double(t, "accuracy", sr->n ? (double)sr->correct / sr->n : 0);
        results_set_double(t, "ci95_lo", lo);
        results_set_double(t, "ci95_hi", hi);
        st = results_row_end(t);
    }
    if (st == QLAB_OK) st = results_table_end(t);
    if (st == QLAB_OK) st = results_table_begin(res, &t, "summary", "Average accuracy (chance 0.25)");
    if (st == QLAB_OK) st = results_table_column(t, "average", RESULTS_STRING, NULL, NULL);
    if (st == QLAB_OK) st = results_table_column(t, "subjects", RESULTS_INT64, NULL, NULL);
    if (st == QLAB_OK) st = results_table_column(t, "questions", RESULTS_INT64, NULL, NULL);
    if (st == QLAB_OK) st = results_table_column(t, "accuracy", RESULTS_FLOAT64, NULL, NULL);
    if (st == QLAB_OK) st = results_table_column(t, "ci95_lo", RESULTS_FLOAT64, NULL, NULL);
    if (st == QLAB_OK) st = results_table_column(t, "ci95_hi", RESULTS_FLOAT64, NULL, NULL);
    if (st == QLAB_OK) {
        double lo, hi;
        mmlu_wilson95(r->correct, r->n, &lo, &hi);
        results_set_string(t, "average", "all questions");
        results_set_int(t, "subjects", r->n_subjects);
        results_set_int(t, "questions", r->n);
        results_set_double(t, "accuracy", (double)r->correct / r->n);
        results_set_double(t, "ci95_lo", lo);
        results_set_double(t, "ci95_hi", hi);
        st = results_row_end(t);
    }
    if (st == QLAB_OK) {
        double lo, hi, macro = mmlu_macro_accuracy(r, &lo, &hi);
        results_set_string(t, "average", "mean of subjects (qlora)");
        results_set_int(t, "subjects", r->n_subjects);
        results_set_int(t, "questions", r->n);
        results_set_double(t, "accuracy", macro);
        results_set_double(t, "ci95_lo", lo);
        results_set_double(t, "ci95_hi", hi);
        st = results_row_end(t);
    }
    if (st == QLAB_OK) st = results_table_end(t);
    if (st != QLAB_OK) {
        results_abort(res);
        return st;
    }
    return results_commit(res);
}

typedef struct {
    const char *model_path, *tok_path, *adapter, *data, *subjects, *dtype_name, *out_path, *md_path;
    long shots, limit, max_len, bs;
    int dq, zero_shot, letter_space;
    quant_dtype dt;        /* parsed from dtype_name */
    char md_default[4096]; /* OUT.md beside --out when --md is not given */
    qlab_compute compute;
} mmlu_args;

/* -1 to go on, else the exit status (0 after --help, 2 on a usage error). */
static int parse_mmlu_args(int argc, char **argv, mmlu_args *p) {
    memset(p, 0, sizeof *p);
    p->out_path = "results/mmlu.h5", p->shots = 5, p->dt = QUANT_NF4;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            mmlu_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--double-quant")) {
            p->dq = 1;
        } else if (!strcmp(a, "--qlora-zero-shot")) {
            p->zero_shot = 1;
        } else if (!strcmp(a, "--letter-space")) {
            p->letter_space = 1;
        } else if (!strncmp(a, "--", 2) && !v) {
            fprintf(stderr, "qlab mmlu: %s needs a value\n", a);
            return 2;
        } else if (!strcmp(a, "--model")) {
            p->model_path = argv[++i];
        } else if (!strcmp(a, "--tokenizer")) {
            p->tok_path = argv[++i];
        } else if (!strcmp(a, "--adapter")) {
            p->adapter = argv[++i];
        } else if (!strcmp(a, "--compute")) {
            if (!cli_parse_compute("mmlu", argv[++i], &p->compute)) return 2;
        } else if (!strcmp(a, "--data")) {
            p->data = argv[++i];
        } else if (!strcmp(a, "--subjects")) {
            p->subjects = argv[++i];
        } else if (!strcmp(a, "--dtype")) {
            p->dtype_name = argv[++i];
        } else if (!strcmp(a, "--out")) {
            p->out_path = argv[++i];
        } else if (!strcmp(a, "--md")) {
            p->md_path = argv[++i];
        } else if (!strcmp(a, "--shots")) {
            if (!cli_parse_int("mmlu", a, argv[++i], 0, 5, &p->shots)) return 2;
        } else if (!strcmp(a, "--limit")) {
            if (!cli_parse_int("mmlu", a, argv[++i], 1, 1 << 30, &p->limit)) return 2;
        } else if (!strcmp(a, "--max-len")) {
            if (!cli_parse_int("mmlu", a, argv[++i], 16, 1 << 20, &p->max_len)) return 2;
        } else if (!strcmp(a, "--blocksize")) {
            if (!cli_parse_int("mmlu", a, argv[++i], 1, 1 << 20, &p->bs)) return 2;
        } else {
            fprintf(stderr, "qlab mmlu: unknown option '%s' (see qlab mmlu --help)\n", a);
            return 2;
        }
    }
    return -1;
}

/* The options checked together and the defaults that depend on others: -1 when usable, else the exit
 * status. */
static int check_mmlu_args(mmlu_args *p) {
    if (!p->model_path) {
        fprintf(stderr, "qlab mmlu: needs --model (see qlab mmlu --help)\n");
        return 2;
    }
    if (!p->tok_path) p->tok_path = p->model_path; /* a GGUF file carries its tokenizer */
    if (p->dtype_name && !cli_parse_dtype("mmlu", p->dtype_name, &p->dt)) return 2;
    if (p->dtype_name && !p->bs) p->bs = quant_default_blocksize(p->dt);
    if (p->dtype_name && !cli_check_blocksize("mmlu", p->dt, p->bs)) return 2;
    if (!p->dtype_name && (p->bs || p->dq)) {
        fprintf(stderr, "qlab mmlu: --blocksize and --double-quant need --dtype\n");
        return 2;
    }
    if (!p->md_path) {
        size_t len = strlen(p->out_path);
        if (len > 3 && !strcmp(p->out_path + len - 3, ".h5"))
            snprintf(p->md_default, sizeof p->md_default, "%.*s.md", (int)(len - 3), p->out_path);
        else
            snprintf(p->md_default, sizeof p->md_default, "%s.md", p->out_path);
        p->md_path = p->md_default;
    }
    /* the results are written after the whole evaluation: their folders are checked now */
    if (!cli_check_output("mmlu", p->out_path) || !cli_check_output("mmlu", p->md_path)) return 2;
    if (!p->data && !p->zero_shot && access(DEFAULT_ARCHIVE, R_OK) != 0 &&
        access(FETCHED_ARCHIVE, R_OK) == 0) {
        p->data = FETCHED_ARCHIVE;
        fprintf(stderr, "qlab mmlu: %s is absent; reading %s (make fetch-mmlu)\n", DEFAULT_ARCHIVE, p->data);
    }
    return -1;
}

/* The model, quantized with --dtype, with --adapter's adapters; qdesc describes its weights. */
static qlab_status load_mmlu_model(const mmlu_args *p, model **m, lora_set **lora, char *qdesc, size_t cap) {
    checkpoint_quant q = {p->dt, (int)p->bs, p->dq};
    /* with --dtype, loaded at 4 bits one projection at a time */
    QLAB_TRY(p->dtype_name ? checkpoint_load_quantized(p->model_path, &q, m)
                           : checkpoint_load(p->model_path, m));
    if (p->dtype_name) {
        snprintf(qdesc, cap, "%s, block %ld%s", quant_dtype_name(p->dt), p->bs,
                 p->dq ? ", double-quant" : "");
    }
    if (p->adapter) QLAB_TRY(cli_load_adapters(p->adapter, *m, lora));
    model_set_compute(*m, p->compute);
    return QLAB_OK;
}

static void print_mmlu_summary(const mmlu_eval_options *opt, const mmlu_eval_result *r, const char *qdesc,
                               const char *out_path) {
    double lo, hi, macro_lo, macro_hi, macro = mmlu_macro_accuracy(r, &macro_lo, &macro_hi);
    mmlu_wilson95(r->correct, r->n, &lo, &hi);
    printf("mmlu %s: %d subjects, %d questions (%s)\n",
           opt->mode == MMLU_EVAL_KSHOT ? "k-shot" : "qlora zero-shot", r->n_subjects, r->n, qdesc);
    printf("accuracy, all questions       %.4f  (95%% CI %.4f .. %.4f)\n", (double)r->correct / r->n, lo, hi);
    printf("accuracy, mean of subjects    %.4f  (95%% CI %.4f .. %.4f)   chance 0.25\n", macro, macro_lo,
           macro_hi);
    printf("wrote %s\n", out_path);
}

static int cmd_mmlu(int argc, char **argv) {
    mmlu_args p;
    int early = parse_mmlu_args(argc, argv, &p);
    if (early < 0) early = check_mmlu_args(&p);
    if (early >= 0) return early;
    mmlu_eval_options opt = {.mode = p.zero_shot ? MMLU_EVAL_QLORA_ZEROSHOT : MMLU_EVAL_KSHOT,
                             .data_path = p.data        ? p.data
                                          : p.zero_shot ? DEFAULT_QLORA_PROMPTS
                                                        : DEFAULT_ARCHIVE,
                             .shots = (int)p.shots,
                             .subjects = p.subjects,
                             .limit = (int)p.limit,
                             .max_len = (int)p.max_len,
                             .letter_space = p.letter_space};
    model *m = NULL;
    tokenizer *tok = NULL;
    lora_set *lora = NULL;
    mmlu_eval_result r = {0};
    int rc = 1, n_questions = 0;
    char qdesc[128] = "fp32", scoring[1024];
    mmlu_scoring sc;
    progress prog;
    if (tokenizer_load(p.tok_path, &tok) != QLAB_OK) goto out;
    if ((p.letter_space ? mmlu_scoring_init_spaced(tok, &sc) : mmlu_scoring_init(tok, &sc)) != QLAB_OK)
        goto out;
    mmlu_scoring_describe(tok, &sc, scoring, sizeof scoring);
    if (mmlu_eval_count(&opt, &n_questions) != QLAB_OK) goto out;
    if (load_mmlu_model(&p, &m, &lora, qdesc, sizeof qdesc) != QLAB_OK) goto out;
    if (tokenizer_vocab_size(tok) > model_get_config(m)->vocab_size) {
        qlab_fail(QLAB_ERR_ARG,
                  "tokenizer %s has %d tokens but model %s only %d: they do not belong together", p.tok_path,
                  tokenizer_vocab_size(tok), p.model_path, model_get_config(m)->vocab_size);
        goto out;
    }
    fprintf(stderr, "qlab mmlu: %s\n", scoring);
    progress_begin(&prog, "mmlu", n_questions);
    opt.prog = &prog;
    if (mmlu_evaluate(m, tok, &opt, &r) != QLAB_OK) goto out;
    progress_end(&prog, NULL);
    if (write_results(p.out_path, argc, argv, p.model_path, p.adapter, qdesc, p.compute, &opt, scoring, &r) !=
        QLAB_OK)
        goto out;
    print_mmlu_summary(&opt, &r, qdesc, p.out_path);
    char *report_argv[] = {"report", (char *)p.out_path, "--md", (char *)p.md_path, NULL};
    rc = cli_run("report", 4, report_argv);
    goto done;
out:
    qlab_report_error("qlab mmlu");
done:
    if (lora) lora_detach(m);
    lora_free(lora);
    mmlu_eval_result_free(&r);
    model_free(m);
    tokenizer_free(tok);
    return rc;
}

QLAB_COMMAND(mmlu_command, "mmlu", "MMLU accuracy (5-shot or qlora zero-shot) from the answer-letter logits",
             cmd_mmlu)
