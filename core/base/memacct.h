/* Memory accounting: every large allocation of the library is charged to one category before it is made
 * and released when it is freed, so a run knows what it holds (current and peak, per category) and a memory
 * budget can stop a run *before* it allocates past it, with the breakdown, instead of the kernel's
 * out-of-memory killer stopping it after.
 *
 * Thread safety: the counters are C11 atomics and a charge is one compare-and-swap on the total, so charges
 * and releases may come from OpenMP worker threads; in qlab they come from serial code (the places that
 * allocate are outside parallel regions). The budget and memacct_reset are for serial code only. */
#ifndef QLAB_MEMACCT_H
#define QLAB_MEMACCT_H

#include <stddef.h>
#include <stdint.h>

#include "core/base/common.h"

typedef enum {
    MEMACCT_QUANT_WEIGHTS = 0, /* 4-bit codes + block constants (absmax, double-quantization constants) */
    MEMACCT_FP_WEIGHTS,        /* full-precision weights: embeddings, norms, classifier, fp32 projections */
    MEMACCT_ADAPTERS,          /* LoRA A and B */
    MEMACCT_GRADIENTS,         /* gradients of the trainable parameters (model and adapters) */
    MEMACCT_OPTIMIZER,         /* optimizer state held in memory (the resident pages of a paged state) */
    MEMACCT_ACTIVATIONS,       /* activations kept for backward and the backward's activation gradients */
    MEMACCT_SCRATCH,           /* workspaces: dequantization tiles, GEMM panels, RoPE tables, saved tokens */
    MEMACCT_COUNT
} memacct_category;

/* "4-bit weights", "full-precision weights", "adapters", "gradients", "optimizer", "activations",
 * "scratch" (the words of the out-of-budget message). */
const char *memacct_category_name(memacct_category c);
/* "quant_weights", "fp_weights", "adapters", ... : identifiers for results columns and attributes. */
const char *memacct_category_key(memacct_category c);

/* Counts bytes about to be allocated under c. With a budget set and current total + bytes above it,
 * counts nothing and fails with QLAB_ERR_BUDGET and the one-line message
 *   "memory budget B exceeded by <category> request of N bytes; in use: 4-bit weights ..., ..."
 * so the caller returns before allocating. A zero request always succeeds. */
qlab_status memacct_charge(memacct_category c, size_t bytes);
/* Uncounts bytes freed under c (the amount charged for them). Releasing more than is held fails with
 * QLAB_ERR_ARG (an accounting bug) and clamps the category at 0. */
qlab_status memacct_release(memacct_category c, size_t bytes);

/* The budget in bytes for the whole process; 0 = none (the default). Applies to later charges only. */
void memacct_set_budget(size_t bytes);
size_t memacct_get_budget(void);

size_t memacct_current(memacct_category c);
size_t memacct_current_total(void);
/* Largest value each category (and the total) has reached since start, memacct_reset or
 * memacct_reset_peaks (a measurement window). The peaks of the categories need not be simultaneous: their
 * sum may exceed memacct_peak_total(). */
size_t memacct_peak(memacct_category c);
size_t memacct_peak_total(void);
/* The same over the whole process (since start or memacct_reset; memacct_reset_peaks leaves them): what
 * results files record in their provenance. */
size_t memacct_process_peak(memacct_category c);
size_t memacct_process_peak_total(void);
/* Requests refused since start or memacct_reset. */
int64_t memacct_refusals(void);
/* The category and size of the last refused request; 0 when none was refused since start or reset. */
int memacct_last_refusal(memacct_category *category, size_t *bytes);

/* "4-bit weights 1.2 MiB, full-precision weights 256.0 KiB, ..., scratch 0 B" (current values) into buf;
 * returns buf. */
const char *memacct_format_breakdown(char *buf, size_t n);
/* The same for the window's peaks, with the total's peak first: "peak 3.1 MiB; 4-bit weights 1.2 MiB, ...";
 * and for the process's peaks. */
const char *memacct_format_peaks(char *buf, size_t n);
const char *memacct_format_process_peaks(char *buf, size_t n);
/* Bytes in a human unit: "512 B", "1.5 KiB", "3.25 MiB", "1.00 GiB". */
const char *memacct_format_bytes(size_t bytes, char *buf, size_t n);

/* Sets every counter and peak to 0 (budget kept). For tests and for programs running several
 * independent measurements; call only when nothing charged is still allocated, or the later releases
 * fail as over-releases. */
void memacct_reset(void);
/* Sets the peaks to the current values (a new measurement window; the charges held stay counted). */
void memacct_reset_peaks(void);

/* Parses a byte count: a non-negative integer with an optional suffix K, M, G, T (powers of 1024, as are
 * KiB, MiB, GiB, TiB; KB, MB, GB, TB are powers of 1000), case-insensitive, no spaces ("512M", "1.5GiB"
 * takes a decimal mantissa too). On failure records "what: '<text>' is not a byte count (...)" and
 * returns QLAB_ERR_ARG; `what` names the flag, key or variable. */
qlab_status memacct_parse_bytes(const char *text, const char *what, size_t *out);
/* Sets the budget from the environment variable QLAB_MEMORY_BUDGET when it is set (failing with a message
 * naming the variable on a bad value); leaves it alone otherwise. */
qlab_status memacct_budget_from_env(void);

#endif
