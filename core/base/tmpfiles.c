/* Temporary files removed on SIGINT/SIGTERM and swept after dead runs; see tmpfiles.h. The handler only
 * calls async-signal-safe functions (unlink, write, _exit) on a fixed table filled before it can run. */
#include "core/base/tmpfiles.h"

#include "core/base/common.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#define TMP_PATH_CAP 4096

static char slots[QLAB_TMPFILES_MAX][TMP_PATH_CAP];
static volatile sig_atomic_t used[QLAB_TMPFILES_MAX];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int handlers_installed;

static void on_signal(int sig) {
    for (int i = 0; i < QLAB_TMPFILES_MAX; i++)
        if (used[i]) unlink(slots[i]);
    static const char msg_int[] = "interrupted: temporary files removed\n";
    static const char msg_term[] = "terminated: temporary files removed\n";
    ssize_t ignored =
        sig == SIGINT ? write(2, msg_int, sizeof msg_int - 1) : write(2, msg_term, sizeof msg_term - 1);
    (void)ignored;
    _exit(QLAB_EXIT_SIGNAL(sig));
}

static void install_handlers(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigfillset(&sa.sa_mask);
    int sigs[2] = {SIGINT, SIGTERM};
    for (int i = 0; i < 2; i++) {
        struct sigaction old;
        /* a signal the caller chose to ignore (nohup, a background job) stays ignored */
        if (sigaction(sigs[i], NULL, &old) == 0 && old.sa_handler == SIG_IGN) continue;
        sigaction(sigs[i], &sa, NULL);
    }
}

void qlab_tmpfile_register(const char *tmp_path) {
    if (!tmp_path || strlen(tmp_path) >= TMP_PATH_CAP) return;
    pthread_mutex_lock(&lock);
    if (!handlers_installed) {
        install_handlers();
        handlers_installed = 1;
    }
    for (int i = 0; i < QLAB_TMPFILES_MAX; i++)
        if (!used[i]) {
            memcpy(slots[i], tmp_path, strlen(tmp_path) + 1);
            used[i] = 1; /* set after the path is complete: the handler never sees half a name */
            break;
        }
    pthread_mutex_unlock(&lock);
}

void qlab_tmpfile_unregister(const char *tmp_path) {
    if (!tmp_path) return;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < QLAB_TMPFILES_MAX; i++)
        if (used[i] && strcmp(slots[i], tmp_path) == 0) {
            used[i] = 0;
            break;
        }
    pthread_mutex_unlock(&lock);
}

int qlab_tmpfile_sweep_stale(const char *path) {
    char dir[TMP_PATH_CAP], prefix[TMP_PATH_CAP];
    const char *slash = strrchr(path, '/');
    if (!qlab_path_dir(path, dir, sizeof dir)) return 0;
    if (snprintf(prefix, sizeof prefix, "%s.tmp.", slash ? slash + 1 : path) >= (int)sizeof prefix) return 0;
    size_t plen = strlen(prefix);
    DIR *d = opendir(dir);
    if (!d) return 0;
    int removed = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (strncmp(e->d_name, prefix, plen) != 0) continue;
        char *end;
        errno = 0;
        long pid = strtol(e->d_name + plen, &end, 10);
        if (errno || end == e->d_name + plen || pid <= 0 || (*end && *end != '.')) continue;
        if (pid == (long)getpid()) continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue; /* alive (or not ours to judge) */
        char full[2 * TMP_PATH_CAP + 2];
        snprintf(full, sizeof full, "%s/%s", dir, e->d_name);
        if (unlink(full) == 0) removed++;
    }
    closedir(d);
    return removed;
}
