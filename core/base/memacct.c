/* The memory accounting of memacct.h: per-category atomic counters, their peaks, and the budget check that
 * refuses a charge before the caller allocates. */
#include "core/base/memacct.h"

#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static _Atomic size_t current[MEMACCT_COUNT], peak[MEMACCT_COUNT];
static _Atomic size_t current_total, peak_total;
static _Atomic size_t process_peak[MEMACCT_COUNT], process_peak_total;
static _Atomic int64_t refusals;
static _Atomic int last_refused_category;
static _Atomic size_t last_refused_bytes;
static size_t budget;

static const char *category_names[MEMACCT_COUNT] = {
    "4-bit weights", "full-precision weights", "adapters", "gradients", "optimizer", "activations",
    "scratch"};
static const char *category_keys[MEMACCT_COUNT] = {"quant_weights", "fp_weights",  "adapters", "gradients",
                                                   "optimizer",     "activations", "scratch"};

const char *memacct_category_name(memacct_category c) {
    return (c >= 0 && c < MEMACCT_COUNT) ? category_names[c] : "unknown";
}

const char *memacct_category_key(memacct_category c) {
    return (c >= 0 && c < MEMACCT_COUNT) ? category_keys[c] : "unknown";
}

static void raise_peak(_Atomic size_t *p, size_t value) {
    size_t old = atomic_load(p);
    while (value > old && !atomic_compare_exchange_weak(p, &old, value)) {
    }
}

const char *memacct_format_bytes(size_t bytes, char *buf, size_t n) {
    static const char *units[] = {"KiB", "MiB", "GiB", "TiB"};
    if (bytes < 1024) {
        snprintf(buf, n, "%zu B", bytes);
        return buf;
    }
    double v = (double)bytes / 1024.0;
    int u = 0;
    while (v >= 1024.0 && u < 3)
        v /= 1024.0, u++;
    snprintf(buf, n, "%.*f %s", v < 10 ? 2 : 1, v, units[u]);
    return buf;
}

static const char *format_list(char *buf, size_t n, _Atomic size_t *values) {
    size_t used = 0;
    buf[0] = 0;
    for (int c = 0; c < MEMACCT_COUNT && used < n; c++) {
        char b[32];
        used += (size_t)snprintf(buf + used, n - used, "%s%s %s", c ? ", " : "", category_names[c],
                                 memacct_format_bytes(atomic_load(&values[c]), b, sizeof b));
    }
    return buf;
}

const char *memacct_format_breakdown(char *buf, size_t n) {
    if (n == 0) return buf;
    return format_list(buf, n, current);
}

static const char *format_peaks(char *buf, size_t n, _Atomic size_t *total, _Atomic size_t *values) {
    if (n == 0) return buf;
    char b[32];
    int used = snprintf(buf, n, "peak %s; ", memacct_format_bytes(atomic_load(total), b, sizeof b));
    if (used < 0 || (size_t)used >= n) return buf;
    format_list(buf + used, n - (size_t)used, values);
    return buf;
}

const char *memacct_format_peaks(char *buf, size_t n) {
    return format_peaks(buf, n, &peak_total, peak);
}

const char *memacct_format_process_peaks(char *buf, size_t n) {
    return format_peaks(buf, n, &process_peak_total, process_peak);
}

qlab_status memacct_charge(memacct_category c, size_t bytes) {
    if (c < 0 || c >= MEMACCT_COUNT) return qlab_fail(QLAB_ERR_ARG, "memacct_charge: unknown category %d", c);
    if (bytes == 0) return QLAB_OK;
    size_t limit = budget, total = atomic_load(&current_total);
    for (;;) {
        if (total + bytes < total || (limit && total + bytes > limit)) {
            atomic_store(&last_refused_category, (int)c);
            atomic_store(&last_refused_bytes, bytes);
            atomic_fetch_add(&refusals, 1);
            char lb[32], rb[32], in_use[512];
            return qlab_fail(
                QLAB_ERR_BUDGET,
                "memory budget %s (%zu bytes) exceeded by %s request of %zu bytes (%s); in use: %s",
                memacct_format_bytes(limit, lb, sizeof lb), limit, category_names[c], bytes,
                memacct_format_bytes(bytes, rb, sizeof rb), memacct_format_breakdown(in_use, sizeof in_use));
        }
        if (atomic_compare_exchange_weak(&current_total, &total, total + bytes)) break;
    }
    size_t now_c = atomic_fetch_add(&current[c], bytes) + bytes;
    raise_peak(&peak_total, total + bytes);
    raise_peak(&peak[c], now_c);
    raise_peak(&process_peak_total, total + bytes);
    raise_peak(&process_peak[c], now_c);
    return QLAB_OK;
}

qlab_status memacct_release(memacct_category c, size_t bytes) {
    if (c < 0 || c >= MEMACCT_COUNT)
        return qlab_fail(QLAB_ERR_ARG, "memacct_release: unknown category %d", c);
    if (bytes == 0) return QLAB_OK;
    size_t held = atomic_load(&current[c]);
    size_t take;
    do {
        take = bytes < held ? bytes : held;
    } while (!atomic_compare_exchange_weak(&current[c], &held, held - take));
    atomic_fetch_sub(&current_total, take);
    if (take < bytes)
        return qlab_fail(QLAB_ERR_ARG, "memacct_release: %zu bytes of %s released but only %zu held", bytes,
                         category_names[c], take);
    return QLAB_OK;
}

void memacct_set_budget(size_t bytes) {
    budget = bytes;
}
size_t memacct_get_budget(void) {
    return budget;
}

size_t memacct_current(memacct_category c) {
    return (c >= 0 && c < MEMACCT_COUNT) ? atomic_load(&current[c]) : 0;
}
size_t memacct_current_total(void) {
    return atomic_load(&current_total);
}
size_t memacct_peak(memacct_category c) {
    return (c >= 0 && c < MEMACCT_COUNT) ? atomic_load(&peak[c]) : 0;
}
size_t memacct_peak_total(void) {
    return atomic_load(&peak_total);
}
size_t memacct_process_peak(memacct_category c) {
    return (c >= 0 && c < MEMACCT_COUNT) ? atomic_load(&process_peak[c]) : 0;
}
size_t memacct_process_peak_total(void) {
    return atomic_load(&process_peak_total);
}
int64_t memacct_refusals(void) {
    return atomic_load(&refusals);
}

int memacct_last_refusal(memacct_category *category, size_t *bytes) {
    if (atomic_load(&refusals) == 0) return 0;
    if (category) *category = (memacct_category)atomic_load(&last_refused_category);
    if (bytes) *bytes = atomic_load(&last_refused_bytes);
    return 1;
}

void memacct_reset(void) {
    for (int c = 0; c < MEMACCT_COUNT; c++)
        atomic_store(&current[c], 0), atomic_store(&peak[c], 0), atomic_store(&process_peak[c], 0);
    atomic_store(&current_total, 0);
    atomic_store(&peak_total, 0);
    atomic_store(&process_peak_total, 0);
    atomic_store(&refusals, 0);
}

void memacct_reset_peaks(void) {
    for (int c = 0; c < MEMACCT_COUNT; c++)
        atomic_store(&peak[c], atomic_load(&current[c]));
    atomic_store(&peak_total, atomic_load(&current_total));
}

qlab_status memacct_parse_bytes(const char *text, const char *what, size_t *out) {
    static const struct {
        const char *suffix;
        double scale;
    } suffixes[] = {{"", 1},
                    {"b", 1},
                    {"k", 1024.0},
                    {"kib", 1024.0},
                    {"kb", 1e3},
                    {"m", 1048576.0},
                    {"mib", 1048576.0},
                    {"mb", 1e6},
                    {"g", 1073741824.0},
                    {"gib", 1073741824.0},
                    {"gb", 1e9},
                    {"t", 1099511627776.0},
                    {"tib", 1099511627776.0},
                    {"tb", 1e12}};
    const char *hint =
        "expected a number of bytes with an optional suffix K, M, G, T, KiB, MiB, GiB, KB, MB, GB";
    if (!text || !*text) return qlab_fail(QLAB_ERR_ARG, "%s: empty value (%s)", what, hint);
    const char *p = text;
    if (*p < '0' || *p > '9')
        return qlab_fail(QLAB_ERR_ARG, "%s: '%s' is not a byte count (%s)", what, text, hint);
    char *end;
    errno = 0;
    double v = strtod(p, &end);
    if (errno || end == p || !isfinite(v) || v < 0)
        return qlab_fail(QLAB_ERR_ARG, "%s: '%s' is not a byte count (%s)", what, text, hint);
    for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
        if (strcasecmp(end, suffixes[i].suffix)) continue;
        double bytes = floor(v * suffixes[i].scale);
        if (bytes >= 18446744073709551615.0 || bytes > (double)SIZE_MAX)
            return qlab_fail(QLAB_ERR_ARG, "%s: '%s' is more bytes than this machine can address", what,
                             text);
        if (suffixes[i].scale == 1 && v != floor(v))
            return qlab_fail(QLAB_ERR_ARG, "%s: '%s' is not a whole number of bytes", what, text);
        *out = (size_t)bytes;
        return QLAB_OK;
    }
    return qlab_fail(QLAB_ERR_ARG, "%s: '%s' has an unknown unit '%s' (%s)", what, text, end, hint);
}

qlab_status memacct_budget_from_env(void) {
    const char *text = getenv("QLAB_MEMORY_BUDGET");
    if (!text) return QLAB_OK;
    size_t bytes;
    QLAB_TRY(memacct_parse_bytes(text, "QLAB_MEMORY_BUDGET", &bytes));
    memacct_set_budget(bytes);
    return QLAB_OK;
}
