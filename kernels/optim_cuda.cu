/* Paged AdamW 32-bit on the GPU: the body of kernels/optim_cuda_body.h in a __global__ wrapper, with the
 * moments of large tensors in unified memory prefetched to the device before each update (bitsandbytes'
 * paged optimizers). */
#include "kernels/cuda_internal.h"
extern "C" {
#include "core/model/optim.h"
}

__global__ void optim_cuda_adamw_kernel(optim_cuda_adamw_args a) {
    optim_cuda_adamw_phase(CUDA_THIS_THREAD(), nullptr, &a);
}

extern "C" qlab_status qlab_cuda_adamw_state_init(qlab_cuda_adamw_state *s, int64_t n) {
    *s = qlab_cuda_adamw_state{};
    if (n < 0) return qlab_fail(QLAB_ERR_ARG, "qlab_cuda_adamw_state_init: n=%lld is negative", (long long)n);
    s->n = n;
    if (n == 0) return QLAB_OK;
    size_t bytes = (size_t)n * sizeof(float);
    s->paged = n >= OPTIM_CUDA_PAGE_MIN_ELEMENTS;
    if (s->paged) {
        CUDA_TRY(cudaMallocManaged((void **)&s->m, bytes, cudaMemAttachGlobal));
        CUDA_TRY(cudaMallocManaged((void **)&s->v, bytes, cudaMemAttachGlobal));
    } else {
        CUDA_TRY(cudaMalloc((void **)&s->m, bytes));
        CUDA_TRY(cudaMalloc((void **)&s->v, bytes));
    }
    CUDA_TRY(cudaMemset(s->m, 0, bytes));
    CUDA_TRY(cudaMemset(s->v, 0, bytes));
    return QLAB_OK;
}

extern "C" void qlab_cuda_adamw_state_free(qlab_cuda_adamw_state *s) {
    cudaFree(s->m); /* cudaFree releases managed memory too */
    cudaFree(s->v);
    *s = qlab_cuda_adamw_state{};
}

/* Moves a managed range to the current device ahead of use. Failure is harmless (the pages then migrate
 * on first touch, only slower), e.g. on devices without concurrent managed access, so it is not fatal. */
static void optim_cuda_prefetch(const void *p, size_t bytes) {
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess) return;
#if CUDART_VERSION >= 13000
    cudaMemLocation location = {};
    location.type = cudaMemLocationTypeDevice;
    location.id = device;
    if (cudaMemPrefetchAsync(p, bytes, location, 0, 0) != cudaSuccess) (void)cudaGetLastError();
#else
    if (cudaMemPrefetchAsync(p, bytes, device, 0) != cudaSuccess) (void)cudaGetLastError();
#endif
}

extern "C" qlab_status qlab_cuda_adamw_step(qlab_cuda_adamw_state *s, float *param, const float *grad,
                                            const optim_cuda_adamw_hyper *hyper, int64_t step) {
    if (step < 1)
        return qlab_fail(QLAB_ERR_ARG, "qlab_cuda_adamw_step: step=%lld (first step is 1)", (long long)step);
    if (s->n == 0) return QLAB_OK;
    if (s->paged) {
        optim_cuda_prefetch(s->m, (size_t)s->n * sizeof(float));
        optim_cuda_prefetch(s->v, (size_t)s->n * sizeof(float));
    }
    optim_cuda_adamw_args a = {};
    a.param = param;
    a.grad = grad;
    a.m = s->m;
    a.v = s->v;
    a.n = s->n;
    optim_cuda_adamw_prepare(&a, hyper, step);
    optim_cuda_adamw_kernel<<<optim_cuda_adamw_blocks(s->n), OPTIM_CUDA_ADAMW_THREADS>>>(a);
    CUDA_TRY_LAUNCH("optim_cuda_adamw_kernel");
    return QLAB_OK;
}

/* ---------------------------------------------------------------- paged state for core/model/optim.c */

static void *optim_cuda_managed_alloc(size_t bytes) {
    void *p = nullptr;
    cudaError_t err = cudaMallocManaged(&p, bytes > 0 ? bytes : 1, cudaMemAttachGlobal);
    if (err == cudaSuccess) err = cudaMemset(p, 0, bytes);
    if (err == cudaSuccess) err = cudaDeviceSynchronize(); /* the CPU update may touch it next */
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        cudaFree(p);
        qlab_fail(QLAB_ERR_NOMEM, "cudaMallocManaged(%zu bytes): %s", bytes, cudaGetErrorString(err));
        return nullptr;
    }
    return p;
}

static void optim_cuda_managed_release(void *p) {
    cudaFree(p);
}

static void optim_cuda_managed_prefetch_to_host(const void *p, size_t bytes) {
    /* Bulk migration of the moments to host memory before the CPU update; errors only cost speed. */
#if CUDART_VERSION >= 13000
    cudaMemLocation host = {};
    host.type = cudaMemLocationTypeHost;
    if (cudaMemPrefetchAsync(p, bytes, host, 0, 0) == cudaSuccess) (void)cudaStreamSynchronize(0);
#else
    if (cudaMemPrefetchAsync(p, bytes, cudaCpuDeviceId, 0) == cudaSuccess) (void)cudaStreamSynchronize(0);
#endif
    (void)cudaGetLastError();
}

extern "C" int qlab_cuda_register_paged_backend(void) {
    static const optim_state_backend backend = {"cuda-managed", optim_cuda_managed_alloc,
                                                optim_cuda_managed_release,
                                                optim_cuda_managed_prefetch_to_host};
    if (!qlab_cuda_available()) return 0;
    optim_set_paged_backend(&backend);
    return 1;
}
