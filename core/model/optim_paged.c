/* The CPU paged optimizer state of optim_paged.h. */
#include "core/model/optim_paged.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/base/memacct.h"
#include "core/base/progress.h"

struct optim_pager {
    size_t n, page_elems; /* elements per page; a page holds page_elems floats of m, then of v */
    int64_t n_pages, n_slots;
    float *slots;        /* n_slots * 2 * page_elems floats */
    int64_t *slot_page;  /* page held by each slot, -1 when free */
    int64_t *page_slot;  /* slot of each page, -1 when not resident */
    uint8_t *page_saved; /* 1 when the page's bytes are in the file (else it is all zeros) */
    int fd;
    size_t charged; /* bytes charged to memory accounting (the resident slots; the file is not memory) */
    char path[512];
    optim_paging_stats stats;
};

static size_t page_floats(const optim_pager *p) {
    return 2 * p->page_elems;
}

static qlab_status file_io(optim_pager *p, int write, int64_t page, float *buf) {
    size_t bytes = page_floats(p) * sizeof(float);
    off_t at = (off_t)page * (off_t)bytes;
    double t0 = qlab_now();
    size_t done = 0;
    while (done < bytes) {
        ssize_t r = write ? pwrite(p->fd, (const char *)buf + done, bytes - done, at + (off_t)done)
                          : pread(p->fd, (char *)buf + done, bytes - done, at + (off_t)done);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0)
            return qlab_fail(QLAB_ERR_IO, "paged optimizer: %s of page %lld in %s failed: %s",
                             write ? "write" : "read", (long long)page, p->path,
                             r < 0 ? strerror(errno) : "unexpected end of file");
        done += (size_t)r;
    }
    p->stats.seconds += qlab_now() - t0;
    if (write)
        p->stats.pages_out++, p->stats.bytes_out += bytes;
    else
        p->stats.pages_in++, p->stats.bytes_in += bytes;
    return QLAB_OK;
}

qlab_status optim_pager_create(size_t n, const optim_paging *paging, optim_pager **out) {
    *out = NULL;
    size_t page_bytes = paging->page_bytes ? paging->page_bytes : OPTIM_PAGE_BYTES_DEFAULT;
    if (page_bytes % 64 != 0 || page_bytes < 64)
        return qlab_fail(QLAB_ERR_ARG,
                         "paged optimizer: page size %zu bytes is not a positive multiple of 64", page_bytes);
    if (paging->resident_bytes < page_bytes)
        return qlab_fail(QLAB_ERR_ARG,
                         "paged optimizer: resident budget %zu bytes is below one page (%zu bytes)",
                         paging->resident_bytes, page_bytes);
    optim_pager *p = qlab_calloc(1, sizeof *p);
    if (!p) return QLAB_ERR_NOMEM;
    p->fd = -1;
    p->n = n;
    p->page_elems = page_bytes / (2 * sizeof(float));
    p->n_pages = (int64_t)((n + p->page_elems - 1) / p->page_elems);
    int64_t fit = (int64_t)(paging->resident_bytes / page_bytes);
    p->n_slots = fit < p->n_pages ? fit : (p->n_pages > 0 ? p->n_pages : 1);
    p->stats.pages = p->n_pages;
    p->stats.resident_slots = p->n_slots;
    qlab_status charge = memacct_charge(MEMACCT_OPTIMIZER, (size_t)p->n_slots * page_bytes);
    if (charge != QLAB_OK) {
        optim_pager_free(p);
        return charge;
    }
    p->charged = (size_t)p->n_slots * page_bytes;
    p->slots = qlab_alloc_aligned((size_t)p->n_slots * page_bytes);
    p->slot_page = malloc(sizeof(int64_t) * (size_t)p->n_slots);
    p->page_slot = malloc(sizeof(int64_t) * (size_t)(p->n_pages + 1));
    p->page_saved = qlab_calloc((size_t)p->n_pages + 1, 1);
    if (!p->slots || !p->slot_page || !p->page_slot || !p->page_saved) {
        optim_pager_free(p);
        return qlab_fail(QLAB_ERR_NOMEM, "paged optimizer: out of memory for %lld resident pages",
                         (long long)fit);
    }
    for (int64_t s = 0; s < p->n_slots; s++)
        p->slot_page[s] = -1;
    for (int64_t g = 0; g <= p->n_pages; g++)
        p->page_slot[g] = -1;
    if (p->n_slots < p->n_pages) { /* only a store that cannot hold everything needs a file */
        const char *dir = paging->dir ? paging->dir : getenv("TMPDIR");
        if (!dir || !*dir) dir = "/tmp";
        snprintf(p->path, sizeof p->path, "%s/qlab-optim-pages.XXXXXX", dir);
        p->fd = mkstemp(p->path);
        if (p->fd < 0) {
            qlab_status st = qlab_fail(QLAB_ERR_IO, "paged optimizer: cannot create the page file %s: %s",
                                       p->path, strerror(errno));
            optim_pager_free(p);
            return st;
        }
        unlink(p->path); /* the store disappears with the process, however it ends */
    } else {
        snprintf(p->path, sizeof p->path, "(all pages resident)");
    }
    *out = p;
    return QLAB_OK;
}

void optim_pager_free(optim_pager *p) {
    if (!p) return;
    if (p->fd >= 0) close(p->fd);
    qlab_free_aligned(p->slots);
    memacct_release(MEMACCT_OPTIMIZER, p->charged);
    free(p->slot_page), free(p->page_slot), free(p->page_saved);
    free(p);
}

optim_paging_stats optim_pager_stats(const optim_pager *p) {
    return p->stats;
}

const char *optim_pager_path(const optim_pager *p) {
    return p->path;
}

/* The slot holding page g, brought in if needed. When every slot is taken, the last slot is the one that
 * cycles: pages in the other slots stay resident (see the header). */
static qlab_status page_in(optim_pager *p, int64_t g, float **slot_data) {
    int64_t s = p->page_slot[g];
    if (s < 0) {
        for (int64_t i = 0; i < p->n_slots && s < 0; i++)
            if (p->slot_page[i] < 0) s = i;
        if (s < 0) {
            s = p->n_slots - 1;
            int64_t victim = p->slot_page[s];
            float *vbuf = p->slots + (size_t)s * page_floats(p);
            QLAB_TRY(file_io(p, 1, victim, vbuf)); /* every resident page has been updated: always dirty */
            p->page_saved[victim] = 1;
            p->page_slot[victim] = -1;
        }
        float *buf = p->slots + (size_t)s * page_floats(p);
        if (p->page_saved[g])
            QLAB_TRY(file_io(p, 0, g, buf));
        else
            memset(buf, 0, page_floats(p) * sizeof(float));
        p->slot_page[s] = g;
        p->page_slot[g] = s;
        p->stats.faults++;
    }
    *slot_data = p->slots + (size_t)s * page_floats(p);
    return QLAB_OK;
}

static qlab_status check_range(const optim_pager *p, size_t offset, size_t count) {
    if (offset > p->n || count > p->n - offset)
        return qlab_fail(QLAB_ERR_ARG, "paged optimizer: elements [%zu, %zu) outside the state of %zu",
                         offset, offset + count, p->n);
    return QLAB_OK;
}

/* Calls fn on each page-resident piece of [offset, offset + count): (m, v) of the piece and its start. */
typedef qlab_status (*piece_fn)(void *ctx, float *m, float *v, size_t from, size_t len);

static qlab_status for_each_piece(optim_pager *p, size_t offset, size_t count, piece_fn fn, void *ctx) {
    QLAB_TRY(check_range(p, offset, count));
    size_t i = offset, end = offset + count;
    while (i < end) {
        int64_t g = (int64_t)(i / p->page_elems);
        size_t page_start = (size_t)g * p->page_elems, within = i - page_start;
        size_t len = p->page_elems - within;
        if (len > end - i) len = end - i;
        float *buf;
        QLAB_TRY(page_in(p, g, &buf));
        QLAB_TRY(fn(ctx, buf + within, buf + p->page_elems + within, i, len));
        i += len;
    }
    return QLAB_OK;
}

typedef struct {
    float *params;
    const float *grads;
    size_t offset;
    const optim_adamw_hyper *hyper;
    int64_t t;
} update_ctx;

static qlab_status update_piece(void *vctx, float *m, float *v, size_t from, size_t len) {
    update_ctx *c = vctx;
    size_t k = from - c->offset;
    return optim_adamw_update(c->params + k, c->grads + k, m, v, len, c->hyper, c->t);
}

qlab_status optim_pager_adamw_update(optim_pager *p, float *params, const float *grads, size_t offset,
                                     size_t count, const optim_adamw_hyper *hyper, int64_t t) {
    update_ctx c = {params, grads, offset, hyper, t};
    return for_each_piece(p, offset, count, update_piece, &c);
}

typedef struct {
    float *m;
    float *v;
    const float *m_in, *v_in;
    size_t offset;
} copy_ctx;

static qlab_status read_piece(void *vctx, float *m, float *v, size_t from, size_t len) {
    copy_ctx *c = vctx;
    memcpy(c->m + (from - c->offset), m, len * sizeof(float));
    memcpy(c->v + (from - c->offset), v, len * sizeof(float));
    return QLAB_OK;
}

static qlab_status write_piece(void *vctx, float *m, float *v, size_t from, size_t len) {
    copy_ctx *c = vctx;
    memcpy(m, c->m_in + (from - c->offset), len * sizeof(float));
    memcpy(v, c->v_in + (from - c->offset), len * sizeof(float));
    return QLAB_OK;
}

qlab_status optim_pager_read(optim_pager *p, size_t offset, size_t count, float *m, float *v) {
    copy_ctx c = {m, v, NULL, NULL, offset};
    return for_each_piece(p, offset, count, read_piece, &c);
}

qlab_status optim_pager_write(optim_pager *p, size_t offset, size_t count, const float *m, const float *v) {
    copy_ctx c = {NULL, NULL, m, v, offset};
    return for_each_piece(p, offset, count, write_piece, &c);
}
