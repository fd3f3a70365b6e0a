/* Run-time registration of the CUDA backends (accel.h). */
#include "kernels/accel.h"

#ifdef QLAB_HAVE_CUDA
#include "kernels/qlab_cuda.h"
#endif

static int accel_state = -1; /* -1: not initialised; else 1 when the paged backend is registered */

int qlab_accel_init(void) {
    if (accel_state < 0) {
#ifdef QLAB_HAVE_CUDA
        accel_state = qlab_cuda_register_paged_backend();
#else
        accel_state = 0;
#endif
    }
    return accel_state;
}

const char *qlab_accel_describe(void) {
#ifdef QLAB_HAVE_CUDA
    return qlab_accel_init() ? "CUDA build, device present: paged optimizer state in unified memory"
                             : "CUDA build, no device: host memory";
#else
    return "CPU build (no CUDA)";
#endif
}
