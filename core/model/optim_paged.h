/* A paged optimizer on the CPU: AdamW moments kept in fixed-size pages under a resident-memory budget,
 * the pages beyond it evicted to a file-backed store and read back for their update. The CPU analogue of
 * the QLoRA paper's paged optimizers (NVIDIA unified memory paging GPU memory to host memory): here host
 * memory pages to disk. The update itself is optim_adamw_update on each page's slice, so a paged run is
 * bit-identical to an unpaged one; only where the moments live differs.
 *
 * Eviction: the update sweeps the pages in the same order every step, the access pattern for which least-
 * recently-used eviction is the worst choice (every page misses every sweep). With k slots, the first
 * k - 1 pages brought in stay resident for good and every other page passes through the last slot (evicted
 * when the next one needs it), so a sweep over P pages moves exactly P - (k - 1) pages in and out.
 * Pages never written are zero and are not read from the file. The store is an unlinked temporary file,
 * so nothing is left behind by a crash or a kill. */
#ifndef QLAB_MODEL_OPTIM_PAGED_H
#define QLAB_MODEL_OPTIM_PAGED_H

#include <stddef.h>
#include <stdint.h>

#include "core/base/common.h"
#include "core/model/optim.h"

typedef struct optim_paging {
    size_t resident_bytes; /* memory for the moments (m and v together); at least one page is resident */
    size_t page_bytes;     /* bytes of m + v per page; 0: OPTIM_PAGE_BYTES_DEFAULT; a multiple of 64 */
    const char *dir;       /* folder of the page file; NULL: $TMPDIR, else /tmp */
} optim_paging;

#define OPTIM_PAGE_BYTES_DEFAULT ((size_t)1 << 20)

typedef struct {
    int64_t pages, resident_slots; /* pages of the state, pages that fit the budget */
    int64_t faults;                /* page-ins: a page brought into a slot (from the file or zero-filled) */
    int64_t pages_in, pages_out;   /* page transfers from and to the file */
    uint64_t bytes_in, bytes_out;
    double seconds; /* wall time spent in file reads and writes */
} optim_paging_stats;

typedef struct optim_pager optim_pager;

/* A store for n elements' m and v under the budget. Refuses a budget below one page. */
qlab_status optim_pager_create(size_t n, const optim_paging *paging, optim_pager **out);
void optim_pager_free(optim_pager *p);
optim_paging_stats optim_pager_stats(const optim_pager *p);
const char *optim_pager_path(const optim_pager *p); /* the (unlinked) store's name, for messages */

/* AdamW (optim_adamw_update) on elements [offset, offset + count) of the state, paging in what it needs. */
qlab_status optim_pager_adamw_update(optim_pager *p, float *params, const float *grads, size_t offset,
                                     size_t count, const optim_adamw_hyper *hyper, int64_t t);

/* Copies elements [offset, offset + count) of m and v out of (read) or into (write) the store, for
 * saving and resuming a run. */
qlab_status optim_pager_read(optim_pager *p, size_t offset, size_t count, float *m, float *v);
qlab_status optim_pager_write(optim_pager *p, size_t offset, size_t count, const float *m, const float *v);

#endif
