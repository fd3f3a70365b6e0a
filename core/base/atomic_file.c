/* Atomic file writes through a temporary name and rename(); see atomic_file.h. */
#include "core/base/atomic_file.h"

#include "core/base/tmpfiles.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

qlab_status atomic_file_check_destination(const char *path) {
    if (!path || !*path) return qlab_fail(QLAB_ERR_IO, "output path is empty");
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        return qlab_fail(QLAB_ERR_IO, "%s: is a folder, not a file name", path);
    char dir[4096];
    if (!qlab_path_dir(path, dir, sizeof dir)) return qlab_fail(QLAB_ERR_IO, "%s: path too long", path);
    if (stat(dir, &st) != 0)
        return qlab_fail(QLAB_ERR_IO, "%s: cannot write there: folder '%s': %s", path, dir, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return qlab_fail(QLAB_ERR_IO, "%s: cannot write there: '%s' is not a folder", path, dir);
    if (access(dir, W_OK | X_OK) != 0)
        return qlab_fail(QLAB_ERR_IO, "%s: cannot write there: folder '%s': %s", path, dir, strerror(errno));
    return QLAB_OK;
}

qlab_status atomic_file_open(atomic_file *w, const char *path) {
    memset(w, 0, sizeof *w);
    size_t n = strlen(path) + 32;
    w->path = strdup(path);
    w->tmp_path = malloc(n);
    if (!w->path || !w->tmp_path) {
        free(w->path);
        free(w->tmp_path);
        return qlab_fail(QLAB_ERR_NOMEM, "%s: out of memory", path);
    }
    snprintf(w->tmp_path, n, "%s.tmp.%ld", path, (long)getpid());
    qlab_tmpfile_sweep_stale(path); /* temporary files of runs that died before their rename */
    qlab_tmpfile_register(w->tmp_path);
    w->f = fopen(w->tmp_path, "wb");
    if (!w->f) {
        int e = errno;
        qlab_tmpfile_unregister(w->tmp_path);
        free(w->path);
        free(w->tmp_path);
        w->path = w->tmp_path = NULL;
        return qlab_fail(QLAB_ERR_IO, "%s: cannot create: %s", path, strerror(e));
    }
    return QLAB_OK;
}

void atomic_file_write(atomic_file *w, const void *data, size_t bytes) {
    if (w->failed || bytes == 0) return;
    if (fwrite(data, 1, bytes, w->f) != bytes) {
        w->failed = 1;
        w->saved_errno = errno;
    }
    w->written += bytes;
}

void atomic_file_pad(atomic_file *w, size_t bytes) {
    static const uint8_t zeros[64];
    while (bytes > 0) {
        size_t k = bytes < sizeof zeros ? bytes : sizeof zeros;
        atomic_file_write(w, zeros, k);
        bytes -= k;
    }
}

static void atomic_file_release(atomic_file *w) {
    qlab_tmpfile_unregister(w->tmp_path);
    free(w->path);
    free(w->tmp_path);
    w->path = w->tmp_path = NULL;
    w->f = NULL;
}

void atomic_file_abort(atomic_file *w) {
    if (w->f) fclose(w->f);
    if (w->tmp_path) unlink(w->tmp_path);
    atomic_file_release(w);
}

qlab_status atomic_file_commit(atomic_file *w) {
    if (!w->failed && fflush(w->f) != 0) w->failed = 1, w->saved_errno = errno;
    /* fsync before rename so a crash cannot leave the new name pointing at unwritten blocks */
    if (!w->failed && fsync(fileno(w->f)) != 0) w->failed = 1, w->saved_errno = errno;
    if (fclose(w->f) != 0 && !w->failed) w->failed = 1, w->saved_errno = errno;
    w->f = NULL;
    if (!w->failed && rename(w->tmp_path, w->path) != 0) w->failed = 1, w->saved_errno = errno;
    if (w->failed) {
        qlab_status st = qlab_fail(QLAB_ERR_IO, "%s: write failed: %s", w->path, strerror(w->saved_errno));
        unlink(w->tmp_path);
        atomic_file_release(w);
        return st;
    }
    atomic_file_release(w);
    return QLAB_OK;
}
