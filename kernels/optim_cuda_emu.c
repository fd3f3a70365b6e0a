/* The AdamW kernel body of kernels/optim_cuda.cu, run on the CPU through the emulation, with the same
 * launch shape as the GPU; tests/test_cuda_emu.c checks it against a plain C AdamW. */
#include "kernels/cuda_emu.h"

static void optim_cuda_emu_adamw_phase(cuda_thread t, void *shared, const void *args) {
    optim_cuda_adamw_phase(t, shared, (const optim_cuda_adamw_args *)args);
}

qlab_status cuda_emu_adamw_step(float *param, const float *grad, float *m, float *v, int64_t n,
                                const optim_cuda_adamw_hyper *hyper, int64_t step) {
    if (n < 0 || step < 1)
        return qlab_fail(QLAB_ERR_ARG, "cuda_emu_adamw_step: n=%lld step=%lld (need n >= 0, step >= 1)",
                         (long long)n, (long long)step);
    if (n == 0) return QLAB_OK;
    optim_cuda_adamw_args a = {.param = param, .grad = grad, .m = m, .v = v, .n = n};
    optim_cuda_adamw_prepare(&a, hyper, step);
    const cuda_emu_phase phases[] = {optim_cuda_emu_adamw_phase};
    return cuda_emu_launch(optim_cuda_adamw_blocks(n), OPTIM_CUDA_ADAMW_THREADS, 0, phases, 1, &a);
}
