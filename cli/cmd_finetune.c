/* `qlab finetune`: QLoRA / LoRA / full finetuning of a checkpoint on a dataset, writing a PEFT adapter
 * directory, the HDF5 training log and a resumable state. The loop is train/finetune.h's job, the data
 * datasets/finetune_data.h; this file parses options, validates everything before writing anything, and
 * drives the steps with a progress line and periodic saves. */
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "cli/cli.h"
#include "core/base/common.h"
#include "core/base/memacct.h"
#include "core/base/progress.h"
#include "core/model/checkpoint.h"
#include "core/model/lora_peft.h"
#include "core/quant/quant.h"
#include "core/text/tokenizer.h"
#include "datasets/finetune_data.h"
#include "train/finetune.h"
#include "train/finetune_log.h"

static void finetune_usage(FILE *f) {
    fprintf(
        f,
        "Usage: qlab finetune --model M [--tokenizer T] --data D --out DIR [options]\n"
        "       qlab finetune --resume DIR [--threads N]\n\n"
        "Finetunes model M (llama2.c .bin, GGUF or a Hugging Face directory) on D. By default QLoRA: the "
        "base\n"
        "is quantized to NF4 with double quantization and LoRA adapters (r 8, alpha 16, dropout 0.05) train "
        "on\n"
        "all seven linear projections; the loss is on response tokens only, as in the paper. DIR receives\n"
        "adapter_config.json + adapter_model.safetensors as Hugging Face PEFT writes them (PeftModel.\n"
        "from_pretrained on the Hugging Face copy of M loads them), or the whole model with --full, plus\n"
        "finetune.h5 (training log with provenance), run.json and state.safetensors (for --resume).\n\n"
        "Data:\n"
        "  --data FILE             training data (.json, .jsonl, .jsonl.gz, .txt)\n"
        "  --format F              auto (default), alpaca, oasst, jsonl ({\"input\",\"output\"} lines) or "
        "text\n"
        "  --max-len N             row length in tokens; longer examples are cut (default: min(256, "
        "context))\n"
        "  --train-on-source       learn the prompt tokens too (default: the response only)\n"
        "  --eval-data FILE        held-out data (same format options)\n"
        "  --eval-fraction F       or hold out this fraction of --data (default 0.1)\n"
        "  --eval-every N          held-out response NLL every N steps (default: 10 evaluations per run)\n"
        "Base model:\n"
        "  --tokenizer T           tokenizer.bin, tokenizer.json or GGUF (default: a GGUF model's own, else\n"
        "                          the tokenizer.json of a Hugging Face model directory)\n"
        "  --dtype D               fp32 (LoRA on an fp32 base) or a 4-bit type (default nf4; 'qlab dtypes'\n"
        "                          lists them)\n"
        "  --blocksize B           quantization block size (default 64)\n"
        "  --double-quant / --no-double-quant   (default: on)\n"
        "  --full                  full finetuning of every parameter (fp32 base, no adapters)\n"
        "  --compute C             fp32 (default, the reference) or bf16: bf16 matrix products with fp32\n"
        "                          accumulation for the base and the adapters (QLoRA's compute dtype); fp32\n"
        "                          master adapters, optimizer, norms, softmax and loss. bf16 runs on the "
        "best\n"
        "                          path this CPU has (amx, the faster of avx512fma and avx512bf16, else\n"
        "                          blas; QLAB_BF16_PATH overrides)\n"
        "Adapters:\n"
        "  --lora-r R              rank (default 8)\n"
        "  --lora-alpha A          scale alpha/r (default 16)\n"
        "  --lora-dropout P        (default 0.05)\n"
        "  --lora-targets T        all (default), attention, qv, or a list such as q_proj,v_proj\n"
        "                          (q_proj k_proj v_proj o_proj gate_proj up_proj down_proj)\n"
        "Optimisation:\n"
        "  --lr X                  peak learning rate (default 2e-4)\n"
        "  --schedule S            constant (default), linear or cosine (both decay to 0)\n"
        "  --warmup N              linear warmup steps (default 0)\n"
        "  --steps N | --epochs E  optimizer steps, or passes over the training rows (default 100 steps)\n"
        "  --batch N               rows per micro-batch (default 8)\n"
        "  --grad-accum N          micro-batches per step (default 1)\n"
        "  --grad-clip X           global gradient-norm limit, 0 = none (default 0.3)\n"
        "  --weight-decay X        decoupled weight decay (default 0)\n"
        "  --seed N                adapter initialisation, dropout and data order (default 1)\n"
        "  --threads N             OpenMP threads (the result is bit-identical for a given N)\n"
        "Memory:\n"
        "  --checkpointing         gradient checkpointing: keep each block's input, recompute the block in\n"
        "                          backward (same gradients, bit for bit; less activation memory)\n"
        "  --optimizer-state S     host (default) or paged: CUDA unified memory in a CUDA build with a GPU,\n"
        "                          else the CPU pager when --optimizer-resident is given, else host memory\n"
        "                          (finetune.h5 records the backend really used)\n"
        "  --optimizer-resident B  page the AdamW moments on the CPU with B bytes resident (e.g. 256K, "
        "4MiB;\n"
        "                          implies --optimizer-state paged); the rest lives in a temporary file\n"
        "  --optimizer-page B      page size of that store (default 1MiB; a multiple of 64)\n"
        "  (and the global --memory-budget BYTES, see qlab --help)\n"
        "  --save-every N          save the adapter and the resumable state every N steps (default 50)\n"
        "  --resume DIR            continue the run in DIR from its last saved state; ends bit-identical to\n"
        "                          an uninterrupted run with the same threads\n");
}

typedef struct {
    const char *model, *tokenizer, *data, *eval_data, *out, *format, *dtype, *targets, *schedule;
    const char *optimizer_state;
    qlab_compute compute;
    int train_on_source, double_quant, full, have_eval_fraction, checkpointing;
    size_t optimizer_resident, optimizer_page;
    long max_len, eval_every, blocksize, rank, steps, batch, accum, warmup, save_every, seed, threads;
    double eval_fraction, alpha, dropout, lr, epochs, clip, wd;
} ft_args;

static void args_default(ft_args *a) {
    memset(a, 0, sizeof *a);
    a->format = "auto", a->dtype = "nf4", a->targets = "all", a->schedule = "constant";
    a->optimizer_state = "host";
    a->double_quant = 1, a->eval_fraction = 0.1, a->eval_every = -1, a->blocksize = 0;
    a->rank = 8, a->alpha = 16, a->dropout = 0.05, a->lr = 2e-4, a->batch = 8, a->accum = 1, a->clip = 0.3;
    a->save_every = 50, a->seed = 1;
}

/* Parses argv[1..argc) into a; returns 0 on success, 1 after --help, 2 on a usage error (message printed).
 * resume receives --resume's directory. */
/* The field a text-valued option fills (NULL: not a text option). */
static const char **text_option(ft_args *a, const char *o) {
    static const char *const names[] = {"--model",  "--tokenizer", "--data",         "--eval-data", "--out",
                                        "--format", "--dtype",     "--lora-targets", "--schedule"};
    const char **fields[] = {&a->model,  &a->tokenizer, &a->data,    &a->eval_data, &a->out,
                             &a->format, &a->dtype,     &a->targets, &a->schedule};
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++)
        if (!strcmp(o, names[k])) return fields[k];
    return NULL;
}

static int parse_args(int argc, char **argv, ft_args *a, const char **resume) {
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(o, "--help") || !strcmp(o, "-h")) {
            finetune_usage(stdout);
            return 1;
        } else if (!strcmp(o, "--train-on-source")) {
            a->train_on_source = 1;
        } else if (!strcmp(o, "--double-quant")) {
            a->double_quant = 1;
        } else if (!strcmp(o, "--no-double-quant")) {
            a->double_quant = 0;
        } else if (!strcmp(o, "--full")) {
            a->full = 1;
        } else if (!strcmp(o, "--checkpointing")) {
            a->checkpointing = 1;
        } else if (!strncmp(o, "--", 2) && !v) {
            fprintf(stderr, "qlab finetune: %s needs a value\n", o);
            return 2;
        } else if (text_option(a, o)) {
            *text_option(a, o) = argv[++i];
        } else if (!strcmp(o, "--resume")) {
            *resume = argv[++i];
        } else if (!strcmp(o, "--compute")) {
            if (!cli_parse_compute("finetune", argv[++i], &a->compute)) return 2;
        } else if (!strcmp(o, "--optimizer-state")) {
            a->optimizer_state = argv[++i];
            if (strcmp(a->optimizer_state, "host") && strcmp(a->optimizer_state, "paged")) {
                fprintf(stderr, "qlab finetune: --optimizer-state must be host or paged (got '%s')\n",
                        a->optimizer_state);
                return 2;
            }
        } else if (!strcmp(o, "--optimizer-resident") || !strcmp(o, "--optimizer-page")) {
            size_t bytes = 0;
            if (memacct_parse_bytes(argv[++i], o, &bytes) != QLAB_OK) {
                fprintf(stderr, "qlab finetune: %s\n", qlab_last_error());
                return 2;
            }
            if (bytes == 0) {
                fprintf(stderr, "qlab finetune: %s 0 pages nothing (give a positive byte count)\n", o);
                return 2;
            }
            *(!strcmp(o, "--optimizer-page") ? &a->optimizer_page : &a->optimizer_resident) = bytes;
        } else if (!strcmp(o, "--max-len")) {
            if (!cli_parse_int("finetune", o, argv[++i], 2, 1 << 20, &a->max_len)) return 2;
        } else if (!strcmp(o, "--eval-every")) {
            if (!cli_parse_int("finetune", o, argv[++i], 0, 1L << 40, &a->eval_every)) return 2;
        } else if (!strcmp(o, "--blocksize")) {
            if (!cli_parse_int("finetune", o, argv[++i], 1, 1 << 20, &a->blocksize)) return 2;
        } else if (!strcmp(o, "--lora-r")) {
            if (!cli_parse_int("finetune", o, argv[++i], 1, 65536, &a->rank)) return 2;
        } else if (!strcmp(o, "--steps")) {
            if (!cli_parse_int("finetune", o, argv[++i], 1, 1L << 40, &a->steps)) return 2;
        } else if (!strcmp(o, "--batch")) {
            if (!cli_parse_int("finetune", o, argv[++i], 1, 4096, &a->batch)) return 2;
        } else if (!strcmp(o, "--grad-accum")) {
            if (!cli_parse_int("finetune", o, argv[++i], 1, 65536, &a->accum)) return 2;
        } else if (!strcmp(o, "--warmup")) {
            if (!cli_parse_int("finetune", o, argv[++i], 0, 1L << 40, &a->warmup)) return 2;
        } else if (!strcmp(o, "--save-every")) {
            if (!cli_parse_int("finetune", o, argv[++i], 1, 1L << 40, &a->save_every)) return 2;
        } else if (!strcmp(o, "--seed")) {
            if (!cli_parse_int("finetune", o, argv[++i], 0, 1L << 62, &a->seed)) return 2;
        } else if (!strcmp(o, "--threads")) {
            if (!cli_parse_int("finetune", o, argv[++i], 1, 4096, &a->threads)) return 2;
        } else if (!strcmp(o, "--eval-fraction")) {
            if (!cli_parse_double("finetune", o, argv[++i], &a->eval_fraction)) return 2;
            a->have_eval_fraction = 1;
        } else if (!strcmp(o, "--lora-alpha")) {
            if (!cli_parse_double("finetune", o, argv[++i], &a->alpha)) return 2;
        } else if (!strcmp(o, "--lora-dropout")) {
            if (!cli_parse_double("finetune", o, argv[++i], &a->dropout)) return 2;
        } else if (!strcmp(o, "--lr")) {
            if (!cli_parse_double("finetune", o, argv[++i], &a->lr)) return 2;
        } else if (!strcmp(o, "--epochs")) {
            if (!cli_parse_double("finetune", o, argv[++i], &a->epochs)) return 2;
        } else if (!strcmp(o, "--grad-clip")) {
            if (!cli_parse_double("finetune", o, argv[++i], &a->clip)) return 2;
        } else if (!strcmp(o, "--weight-decay")) {
            if (!cli_parse_double("finetune", o, argv[++i], &a->wd)) return 2;
        } else {
            fprintf(stderr, "qlab finetune: unknown option '%s' (see qlab finetune --help)\n", o);
            return 2;
        }
    }
    return 0;
}

/* run.json: the arguments of the run, so --resume repeats exactly the same command. */
static qlab_status write_run_json(const char *dir, int argc, char **argv) {
    cJSON *root = cJSON_CreateObject(), *list = cJSON_CreateArray();
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads")) { /* not part of the run's identity */
            i++;
            continue;
        }
        cJSON_AddItemToArray(list, cJSON_CreateString(argv[i]));
    }
    cJSON_AddItemToObject(root, "args", list);
    cJSON_AddStringToObject(root, "qlab", QLAB_VERSION);
    char *text = cJSON_Print(root), path[4096];
    cJSON_Delete(root);
    if (!text) return qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", dir);
    snprintf(path, sizeof path, "%s/run.json", dir);
    qlab_status st = qlab_write_file_atomic(path, text, strlen(text));
    free(text);
    return st;
}

/* Reads DIR/run.json into a NULL-terminated argv (argv[0] = "finetune"); strings owned by *json. */
static qlab_status read_run_json(const char *dir, cJSON **json, char ***out_argv, int *out_argc) {
    char path[4096], *text = NULL;
    size_t len = 0;
    snprintf(path, sizeof path, "%s/run.json", dir);
    QLAB_TRY(qlab_read_file(path, &text, &len));
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    const cJSON *list = root ? cJSON_GetObjectItemCaseSensitive(root, "args") : NULL;
    if (!cJSON_IsArray(list)) {
        cJSON_Delete(root);
        return qlab_fail(QLAB_ERR_FORMAT, "%s: not a qlab finetune run file (no \"args\" list)", path);
    }
    int n = cJSON_GetArraySize(list);
    char **av = calloc((size_t)n + 2, sizeof *av);
    if (!av) {
        cJSON_Delete(root);
        return QLAB_ERR_NOMEM;
    }
    av[0] = "finetune";
    int k = 1;
    const cJSON *item;
    cJSON_ArrayForEach(item, list) {
        if (!cJSON_IsString(item)) {
            free(av);
            cJSON_Delete(root);
            return qlab_fail(QLAB_ERR_FORMAT, "%s: \"args\" holds a non-string", path);
        }
        av[k++] = item->valuestring;
    }
    *json = root, *out_argv = av, *out_argc = k;
    return QLAB_OK;
}

static int file_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

static finetune_rows rows_of(const instruct_examples *e) {
    return (finetune_rows){e->tokens, e->targets, e->n, e->T};
}

/* Writes what the run produced so far: the adapter directory (or the full model) and the state. */
static qlab_status save_outputs(finetune_job *j, model *m, const ft_args *a) {
    char path[4096];
    lora_set *l = finetune_job_adapters(j);
    if (l)
        QLAB_TRY(lora_save_peft(l, a->out, a->model));
    else
        QLAB_TRY(checkpoint_save_hf(m, a->out));
    snprintf(path, sizeof path, "%s/state.safetensors", a->out);
    return finetune_job_save_state(j, path);
}

#define FT_CMD "qlab finetune"

/* One finetuning run: the options, the model, the data and the job stepping through them. */
typedef struct {
    const ft_args *a;
    finetune_options o;
    finetune_data_format fmt, resolved;
    model *m;
    tokenizer *tok;
    instruct_examples all, train, heldout;
    finetune_rows tr, hr;
    finetune_job *job;
    int max_len;
    int64_t rows_per_step, start; /* start: steps already done when the run resumed */
    const char *tok_path;
    char tok_buf[4096];
} ft_run;

/* The finetuning options from the arguments: -1 when usable, else the exit status (message printed). */
static int build_options(ft_run *r) {
    const ft_args *a = r->a;
    finetune_options *o = &r->o;
    if (!a->model || !a->data || !a->out) {
        fprintf(stderr, "%s: needs --model, --data and --out (see qlab finetune --help)\n", FT_CMD);
        return 2;
    }
    if (a->eval_data && a->have_eval_fraction) {
        fprintf(stderr, "%s: give --eval-data or --eval-fraction, not both\n", FT_CMD);
        return 2;
    }
    if (a->steps && a->epochs) {
        fprintf(stderr, "%s: give --steps or --epochs, not both\n", FT_CMD);
        return 2;
    }
    finetune_options_default(o);
    if (finetune_data_format_parse(a->format, &r->fmt) != QLAB_OK) return qlab_report_error(FT_CMD);
    int fp32 = !strcmp(a->dtype, "fp32") || !strcmp(a->dtype, "f32");
    o->mode = a->full ? FINETUNE_FULL : fp32 ? FINETUNE_LORA : FINETUNE_QLORA;
    if (a->full && strcmp(a->dtype, "nf4") != 0 && !fp32) {
        fprintf(stderr, "%s: --full trains the fp32 model; it cannot be combined with --dtype %s\n", FT_CMD,
                a->dtype);
        return 2;
    }
    if (o->mode == FINETUNE_QLORA) {
        if (!cli_parse_dtype("finetune", a->dtype, &o->base_dtype)) return 2;
        o->blocksize = a->blocksize ? (int)a->blocksize : quant_default_blocksize(o->base_dtype);
        if (!cli_check_blocksize("finetune", o->base_dtype, o->blocksize)) return 2;
        o->double_quant = a->double_quant;
    }
    if (lora_parse_targets(a->targets, &o->lora.targets) != QLAB_OK) return qlab_report_error(FT_CMD);
    if (optim_lr_kind_parse(a->schedule, &o->schedule) != QLAB_OK) return qlab_report_error(FT_CMD);
    o->lora.rank = (int)a->rank, o->lora.alpha = (float)a->alpha, o->lora.dropout = (float)a->dropout;
    o->lora.seed = (uint64_t)a->seed;
    o->seed = (uint64_t)a->seed;
    o->batch = (int)a->batch, o->grad_accum = (int)a->accum, o->max_lr = a->lr, o->min_lr = 0;
    o->warmup_steps = a->warmup, o->grad_clip = a->clip, o->weight_decay = a->wd;
    o->state_kind =
        a->optimizer_resident || !strcmp(a->optimizer_state, "paged") ? OPTIM_STATE_PAGED : OPTIM_STATE_HOST;
    o->optimizer_resident_bytes = a->optimizer_resident;
    o->optimizer_page_bytes = a->optimizer_page;
    o->checkpointing = a->checkpointing;
    o->compute = a->compute;
#ifdef _OPENMP
    if (a->threads) omp_set_num_threads((int)a->threads);
#endif
    /* --tokenizer defaults to a GGUF model's own (as in ppl, generate and mmlu), else the tokenizer.json of
     * a Hugging Face model directory */
    r->tok_path = a->tokenizer ? a->tokenizer : cli_gguf_tokenizer(a->model);
    if (!r->tok_path) {
        snprintf(r->tok_buf, sizeof r->tok_buf, "%s/tokenizer.json", a->model);
        if (!file_exists(r->tok_buf)) {
            fprintf(stderr, "%s: --tokenizer is needed (%s is not a GGUF file and has no tokenizer.json)\n",
                    FT_CMD, a->model);
            return 2;
        }
        r->tok_path = r->tok_buf;
    }
    return -1;
}

/* The model, its tokenizer and the data (training rows and held-out rows), then the step count and the
 * options checked against the model. */
static qlab_status load_inputs(ft_run *r) {
    const ft_args *a = r->a;
    finetune_options *o = &r->o;
    /* a QLoRA base is loaded at 4 bits, one projection at a time (finetune_job_create takes it as it is) */
    checkpoint_quant q = {o->base_dtype, o->blocksize, o->double_quant};
    QLAB_TRY(o->mode == FINETUNE_QLORA ? checkpoint_load_quantized(a->model, &q, &r->m)
                                       : checkpoint_load(a->model, &r->m));
    QLAB_TRY(tokenizer_load(r->tok_path, &r->tok));
    const model_config *cfg = model_get_config(r->m);
    if (tokenizer_vocab_size(r->tok) > cfg->vocab_size)
        return qlab_fail(QLAB_ERR_ARG, "%s has %d tokens but the model %s only %d", r->tok_path,
                         tokenizer_vocab_size(r->tok), a->model, cfg->vocab_size);
    r->max_len = a->max_len ? (int)a->max_len : (cfg->seq_len < 256 ? cfg->seq_len : 256);
    if (r->max_len > cfg->seq_len)
        return qlab_fail(QLAB_ERR_ARG, "--max-len %d exceeds the model's context of %d", r->max_len,
                         cfg->seq_len);
    finetune_data_options dopt = {r->max_len, a->train_on_source};
    QLAB_TRY(finetune_data_load(a->data, r->fmt, r->tok, &dopt, &r->all, &r->resolved));
    if (a->eval_data) {
        QLAB_TRY(finetune_data_load(a->eval_data, r->fmt, r->tok, &dopt, &r->heldout, NULL));
        r->train = r->all;
        memset(&r->all, 0, sizeof r->all);
    } else {
        QLAB_TRY(finetune_data_split(&r->all, a->eval_fraction, (uint64_t)a->seed, &r->train, &r->heldout));
    }
    r->rows_per_step = (int64_t)o->batch * (o->grad_accum > 1 ? o->grad_accum : 1);
    o->steps = a->steps        ? a->steps
               : a->epochs > 0 ? (int64_t)ceil(a->epochs * r->train.n / (double)r->rows_per_step)
                               : 100;
    if (o->steps < 1) o->steps = 1;
    o->eval_every = a->eval_every >= 0 ? (int)a->eval_every : (int)(o->steps >= 10 ? o->steps / 10 : 1);
    o->log_every = o->steps >= 100 ? 10 : 1;
    o->eval_batch = o->batch;
    r->tr = rows_of(&r->train), r->hr = rows_of(&r->heldout);
    return finetune_options_check(o, cfg, r->max_len);
}

/* A new run's DIR must not hold another run. */
static qlab_status check_out_free(const ft_args *a) {
    char path[4096];
    snprintf(path, sizeof path, "%s/run.json", a->out);
    if (file_exists(path))
        return qlab_fail(
            QLAB_ERR_ARG,
            "%s already holds a finetuning run: continue it with --resume %s or choose another --out", a->out,
            a->out);
    return QLAB_OK;
}

/* A resumed run continues from DIR/state.safetensors when one was saved. */
static qlab_status resume_state(ft_run *r) {
    char path[4096];
    snprintf(path, sizeof path, "%s/state.safetensors", r->a->out);
    if (!file_exists(path)) return QLAB_OK;
    QLAB_TRY(finetune_job_load_state(r->job, path));
    r->start = finetune_job_steps_done(r->job);
    return QLAB_OK;
}

/* A new run creates DIR (and its missing parents) and records its arguments in DIR/run.json. */
static qlab_status create_out_dir(const ft_args *a, int argc, char **argv) {
    QLAB_TRY(qlab_make_dirs(a->out));
    return write_run_json(a->out, argc, argv);
}

static void print_start(const ft_run *r) {
    const finetune_options *o = &r->o;
    const char *mode_text = o->mode == FINETUNE_FULL   ? "full finetuning"
                            : o->mode == FINETUNE_LORA ? "LoRA, fp32 base"
                                                       : "QLoRA";
    fprintf(stderr,
            "finetune: %s (%s%s), %s data %s: %d training rows, %d held-out rows of %d tokens; %lld steps of "
            "%lld "
            "rows%s\n",
            r->a->model, mode_text,
            o->mode == FINETUNE_QLORA ? (o->double_quant ? ", double-quant" : "") : "",
            finetune_data_format_name(r->resolved), r->a->data, r->train.n, r->heldout.n, r->max_len,
            (long long)o->steps, (long long)r->rows_per_step, r->start ? " (resumed)" : "");
    if (o->mode == FINETUNE_QLORA)
        fprintf(stderr, "finetune: base quantized to %s, block %d\n", quant_dtype_name(o->base_dtype),
                o->blocksize);
    fprintf(stderr, "finetune: optimizer state %s (%s)%s\n", finetune_job_result(r->job)->optimizer_backend,
            finetune_job_result(r->job)->state_note, o->checkpointing ? "; gradient checkpointing" : "");
}

/* Steps to the end with a progress line, saving every --save-every steps and at the end; *tps: the
 * training tokens per second of this process. */
static qlab_status train_steps(ft_run *r, double *tps) {
    const finetune_options *o = &r->o;
    finetune_job *job = r->job;
    progress prog;
    char label[64];
    snprintf(label, sizeof label, r->start ? "finetune (from step %lld)" : "finetune", (long long)r->start);
    progress_begin(&prog, label, o->steps - r->start);
    double t_start = qlab_now();
    int64_t tokens_start = finetune_job_tokens(job);
    while (finetune_job_steps_done(job) < o->steps) {
        QLAB_TRY(finetune_job_step(job));
        int64_t done = finetune_job_steps_done(job);
        double secs = qlab_now() - t_start;
        double step_tps = secs > 0 ? (double)(finetune_job_tokens(job) - tokens_start) / secs : 0;
        const finetune_result *h = finetune_job_result(job);
        char extra[200];
        snprintf(extra, sizeof extra, "step %lld/%lld loss %.4f lr %.3g %.0f tok/s rss %.0f MB held-out %.4f",
                 (long long)done, (long long)o->steps, finetune_job_last_loss(job), finetune_job_lr(job),
                 step_tps, finetune_peak_rss_bytes() / 1e6, h->final_heldout_nll);
        progress_update(&prog, done - r->start, extra);
        if (done % r->a->save_every == 0 && done < o->steps) QLAB_TRY(save_outputs(job, r->m, r->a));
    }
    double secs = qlab_now() - t_start;
    *tps = secs > 0 ? (double)(finetune_job_tokens(job) - tokens_start) / secs : 0;
    QLAB_TRY(save_outputs(job, r->m, r->a));
    progress_end(&prog, NULL);
    return QLAB_OK;
}

/* Ends the job (the adapters stay on the model until here), writes DIR/finetune.h5 and prints the result. */
static qlab_status finish_run(ft_run *r, double tps, int argc, char **argv) {
    const ft_args *a = r->a;
    finetune_result res;
    lora_set *adapters = NULL;
    qlab_status st = finetune_job_finish(r->job, &adapters, &res);
    r->job = NULL;
    QLAB_TRY(st);
    finetune_log_info info = {a->model, a->data, a->eval_data, finetune_peak_rss_bytes(), tps};
    char path[4096];
    snprintf(path, sizeof path, "%s/finetune.h5", a->out);
    st = finetune_write_log(path, &res, &r->o, &info, argc, argv);
    printf("held-out response NLL %.4f -> %.4f (%lld tokens), last training loss %.4f\n",
           res.initial_heldout_nll, res.final_heldout_nll, (long long)res.heldout_scored,
           res.final_train_loss);
    printf("trainable parameters %zu; %.0f tokens/s; peak resident memory %.0f MB\n", res.trainable_params,
           tps, info.peak_rss_bytes / 1e6);
    printf("wrote %s/%s\n", a->out,
           adapters ? "adapter_config.json, adapter_model.safetensors" : "config.json, model.safetensors");
    finetune_result_free(&res);
    if (adapters) {
        lora_detach(r->m);
        lora_free(adapters);
    }
    return st;
}

/* Everything is loaded and checked before DIR is touched: a failed start writes nothing. */
static int run(int argc, char **argv, const ft_args *a, int resuming) {
    ft_run *r = calloc(1, sizeof *r);
    if (!r) return qlab_report_error(FT_CMD);
    r->a = a;
    int rc = build_options(r);
    if (rc >= 0) {
        free(r);
        return rc;
    }
    double tps = 0;
    qlab_status st = load_inputs(r);
    if (st == QLAB_OK && !resuming) st = check_out_free(a);
    if (st == QLAB_OK) st = finetune_job_create(&r->job, r->m, &r->tr, &r->hr, &r->o);
    if (st == QLAB_OK) st = resuming ? resume_state(r) : create_out_dir(a, argc, argv);
    if (st == QLAB_OK) print_start(r);
    if (st == QLAB_OK) st = train_steps(r, &tps);
    if (st == QLAB_OK) st = finish_run(r, tps, argc, argv);
    rc = st == QLAB_OK ? 0 : qlab_report_error(FT_CMD);
    finetune_job_free(r->job);
    instruct_examples_free(&r->all);
    instruct_examples_free(&r->train);
    instruct_examples_free(&r->heldout);
    tokenizer_free(r->tok);
    model_free(r->m);
    free(r);
    return rc;
}

static int cmd_finetune(int argc, char **argv) {
    ft_args a;
    args_default(&a);
    const char *resume = NULL;
    int prc = parse_args(argc, argv, &a, &resume);
    if (prc) return prc == 1 ? 0 : 2;
    if (!resume) return run(argc, argv, &a, 0);
    /* --resume DIR [--threads N]: the run's own arguments come from DIR/run.json. */
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--resume") && strcmp(argv[i], "--threads") &&
            !(i > 1 && (!strcmp(argv[i - 1], "--resume") || !strcmp(argv[i - 1], "--threads")))) {
            fprintf(stderr,
                    "qlab finetune: --resume takes the options of the saved run; only --threads may be given "
                    "(got %s)\n",
                    argv[i]);
            return 2;
        }
    cJSON *json = NULL;
    char **av = NULL;
    int ac = 0;
    if (read_run_json(resume, &json, &av, &ac) != QLAB_OK) return qlab_report_error("qlab finetune");
    ft_args saved;
    args_default(&saved);
    const char *nested = NULL;
    int rc = parse_args(ac, av, &saved, &nested);
    char *want = realpath(resume, NULL), *have = saved.out ? realpath(saved.out, NULL) : NULL;
    int same = want && have && !strcmp(want, have);
    free(want), free(have);
    if (rc == 0 && (nested || !same)) {
        fprintf(stderr, "qlab finetune: %s/run.json does not describe a run writing to %s\n", resume, resume);
        rc = 2;
    }
    if (rc == 0) {
        saved.threads = a.threads;
        rc = run(ac, av, &saved, 1);
    }
    free(av);
    cJSON_Delete(json);
    return rc;
}

QLAB_COMMAND(finetune_command, "finetune", "QLoRA/LoRA/full finetuning to a PEFT adapter (resumable)",
             cmd_finetune)
