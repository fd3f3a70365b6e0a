/* Quantized models against their own fp32 reference: every model x 4-bit variant x benchmark evaluated
 * for perplexity, KL divergence from fp32, top-1 agreement and the bits the model is stored in (QLoRA
 * Table 2 / Figure 3). Each model is loaded once; its fp32 reference logits are computed once per
 * benchmark and reused by every variant (bit-identical to running the reference beside each one). One
 * progress line with ETA covers the whole grid. The caller turns the rows into tables. */
#ifndef QLAB_EVAL_COMPARE_H
#define QLAB_EVAL_COMPARE_H

#include <stddef.h>
#include <stdint.h>

#include "core/base/common.h"
#include "core/quant/quant.h"
#include "eval/ppl.h"

typedef struct {
    const char *name;
    const char *checkpoint; /* llama2.c .bin, GGUF or Hugging Face folder */
    const char *tokenizer;  /* tokenizer.bin or tokenizer.json */
} compare_model;

/* One way of storing the projections: data type, first-level block size, double-quantized constants. */
typedef struct {
    quant_dtype dtype;
    int blocksize, double_quant;
} compare_variant;

typedef struct {
    const char *name;
    const char *text; /* text file, encoded with each model's tokenizer (BOS first) */
    ppl_protocol protocol;
    int ctx;                 /* window length; a model whose seq_len is shorter is refused */
    int stride;              /* PPL_SLIDING: window advance; 0 (or more than the capped ctx) = ctx / 2 */
    int64_t max_tokens;      /* evaluate at most this many tokens of the text (0 = all) */
    const char *text_sha256; /* its sha256 (64 hex digits) as read when the grid was loaded; may be NULL */
} compare_benchmark;

/* One evaluation. Rows come model by model, fp32 first, then the variants in order, each over the
 * benchmarks in order. */
typedef struct {
    int model, benchmark;    /* indices into the caller's arrays */
    int variant;             /* index into the variants; -1 = the fp32 reference */
    int64_t params;          /* of the model */
    double total_bits;       /* whole model as stored (fp32 embeddings, norms, classifier + projections) */
    double bits_projections; /* stored bits of the projections / their weights (32 for fp32) */
    /* The fp32 row is the reference itself: its distance from the reference is zero by definition
     * (kl_* 0, top1_agree 1, dprob_correct 0, has_reference 1). */
    ppl_result res;
} compare_row;

typedef struct {
    compare_row *rows;
    int n_rows;
    int64_t *params; /* per model */
} compare_results;

typedef struct {
    const char *label;       /* of the progress line and of error messages (e.g. the program name) */
    size_t reference_budget; /* bytes of fp32 reference logits kept per model (0 = 1 GiB); a benchmark
                              * that does not fit runs the reference beside each variant instead */
    qlab_compute compute;    /* matrix products of every model, reference included (default fp32) */
} compare_options;

/* "fp32" for NULL, else the data type name with "+dq" when double-quantized. */
void compare_variant_label(const compare_variant *v, char *buf, size_t n);

/* The ppl options of benchmark b on a model whose context is seq_len. */
ppl_options compare_benchmark_options(const compare_benchmark *b, int seq_len);

/* Evaluates the grid. On failure the message names the model, variant and benchmark; out is empty. */
qlab_status compare_run(const compare_model *models, int n_models, const compare_variant *variants,
                        int n_variants, const compare_benchmark *benchmarks, int n_benchmarks,
                        const compare_options *opt, compare_results *out);
void compare_results_free(compare_results *r);

#endif
