/* CPU emulation of a CUDA launch: every (block, thread) of a 1-D grid runs each kernel phase in turn,
 * with per-block shared memory. Phases stand in for the code between __syncthreads() barriers. */
#include "kernels/cuda_emu.h"

#include <stdlib.h>
#include <string.h>

#define CUDA_EMU_MAX_BLOCK_DIM 1024     /* the hardware limit on threads per block */
#define CUDA_EMU_MAX_SHARED (48 * 1024) /* static shared memory available on every architecture */

qlab_status cuda_emu_launch(int grid_dim, int block_dim, size_t shared_bytes, const cuda_emu_phase *phases,
                            int nphases, const void *args) {
    if (grid_dim < 0 || block_dim < 1 || block_dim > CUDA_EMU_MAX_BLOCK_DIM)
        return qlab_fail(QLAB_ERR_ARG, "cuda_emu_launch: bad launch shape grid %d x block %d (block 1..%d)",
                         grid_dim, block_dim, CUDA_EMU_MAX_BLOCK_DIM);
    if (shared_bytes > CUDA_EMU_MAX_SHARED)
        return qlab_fail(QLAB_ERR_ARG, "cuda_emu_launch: %zu bytes of shared memory, at most %d",
                         shared_bytes, CUDA_EMU_MAX_SHARED);
    if (nphases < 1 || !phases) return qlab_fail(QLAB_ERR_ARG, "cuda_emu_launch: no kernel phases");
    int failed = 0;
#pragma omp parallel
    {
        /* +1 so a zero-byte request still gets a valid pointer. */
        unsigned char *shared = malloc(shared_bytes + 1);
        if (!shared) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int b = 0; b < grid_dim; b++) {
            if (!shared) continue;
            memset(shared, 0xff, shared_bytes);
            for (int p = 0; p < nphases; p++) {
                for (int i = 0; i < block_dim; i++) {
                    int thread = (b & 1) ? block_dim - 1 - i : i;
                    cuda_thread t = {b, thread, block_dim, grid_dim};
                    phases[p](t, shared, args);
                }
            }
        }
        free(shared);
    }
    if (failed) return qlab_fail(QLAB_ERR_NOMEM, "cuda_emu_launch: out of memory (%zu bytes)", shared_bytes);
    return QLAB_OK;
}
