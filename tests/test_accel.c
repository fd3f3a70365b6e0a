/* The accelerator registration (kernels/accel.h) says what the build and machine really do: a CPU build
 * registers nothing, a CUDA build (make CUDA=1) registers the unified-memory backend only when a device
 * exists; and a finetuning run that asks for paged optimizer state records the memory actually used, never
 * claiming paging that did not happen. Built and run by both builds (.ci/run runs the CUDA=1 one). */
#include <string.h>

#include "tests/check.h"
#include "core/base/common.h"
#include "core/model/optim.h"
#include "kernels/accel.h"

int main(void) {
    int active = qlab_accel_init();
    const char *what = qlab_accel_describe();
#ifdef QLAB_HAVE_CUDA
    CHECKF(strstr(what, "CUDA build") != NULL, "describe: %s", what);
#else
    CHECKF(active == 0 && strcmp(what, "CPU build (no CUDA)") == 0, "describe: %s", what);
#endif
    CHECK(qlab_accel_init() == active); /* idempotent */
    optim_state_buffer b;
    CHECK(optim_state_alloc(OPTIM_STATE_PAGED, 1024, &b) == QLAB_OK);
    if (active) {
        CHECK(b.actual == OPTIM_STATE_PAGED && b.backend && !strcmp(b.backend->name, "cuda-managed"));
    } else {
        CHECKF(b.actual == OPTIM_STATE_HOST && strstr(b.note, "no paged backend"), "note: %s", b.note);
    }
    optim_state_free(&b);
    printf("accel: %s\n", what);
    return check_summary();
}
