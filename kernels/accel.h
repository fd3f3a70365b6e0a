/* What the accelerator side of this build offers, chosen at run time. A CPU build (the default) has none;
 * a CUDA build (`make CUDA=1`, QLAB_HAVE_CUDA) links the kernels into the library and, when a device is
 * present, registers the unified-memory backend for paged optimizer state (core/model/optim.h). */
#ifndef QLAB_KERNELS_ACCEL_H
#define QLAB_KERNELS_ACCEL_H

/* Registers the backends once (later calls return the first answer). Returns 1 when a paged optimizer
 * backend is active, 0 when OPTIM_STATE_PAGED will fall back to host memory. */
int qlab_accel_init(void);

/* One line for logs and provenance: "CPU build (no CUDA)", "CUDA build, no device: host memory", or
 * "CUDA build, device present: paged optimizer state in unified memory". */
const char *qlab_accel_describe(void);

#endif
