/* Host side of device 4-bit quantization, shared by the GPU and the emulation back ends: argument checks,
 * allocation compatible with quant_tensor_free, and the double-quantization offset in quant.c's order. */
#include "kernels/quant_cuda_driver.h"

#include <math.h>
#include <string.h>

uint8_t quant_cuda_dynamic_zero_code(void) {
    const float *map = quant_dynamic_map_signed();
    for (int i = 0; i < 256; i++)
        if (map[i] == 0.0f) return (uint8_t)i;
    return 127;
}

qlab_status quant_cuda_quantize_with(const quant_cuda_backend *backend, quant_tensor *qt, const float *x,
                                     int64_t n, quant_dtype dt, int blocksize, int double_quant) {
    if (!qt) return qlab_fail(QLAB_ERR_ARG, "cuda quantize: no output tensor");
    memset(qt, 0, sizeof *qt);
    qlab_status st = QLAB_OK;
    float *absmax = NULL;
    const quant_absmax_spec *spec = quant_absmax_spec_get(dt);
    if (!spec)
        return qlab_fail(QLAB_ERR_UNSUPPORTED,
                         "cuda quantize: %s is not an absmax type (the CUDA kernels cover %s)",
                         quant_dtype_name(dt), quant_dtype_list(1));
    QLAB_TRY(quant_check_blocksize(dt, blocksize));
    if (n < 0 || n > ((int64_t)1 << 50))
        return qlab_fail(QLAB_ERR_ARG, "cuda quantize: bad element count %lld", (long long)n);
    if (n > 0 && !x)
        return qlab_fail(QLAB_ERR_ARG, "cuda quantize: input is NULL for %lld elements", (long long)n);
    int64_t nblocks = (n + blocksize - 1) / blocksize;
    if (nblocks > INT32_MAX)
        return qlab_fail(QLAB_ERR_ARG, "cuda quantize: %lld blocks exceed one launch grid",
                         (long long)nblocks);
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return qlab_fail(QLAB_ERR_NUMERIC, "cannot quantize: element %lld of %lld is %s", (long long)i,
                             (long long)n, isnan(x[i]) ? "NaN" : (x[i] > 0 ? "+Inf" : "-Inf"));
    qt->dtype = dt;
    qt->blocksize = blocksize;
    qt->n = n;
    qt->nblocks = nblocks;
    qt->ndim = 1;
    qt->shape[0] = n;
    size_t nb_alloc = (size_t)(nblocks > 0 ? nblocks : 1);
    qt->codes = qlab_alloc_aligned((size_t)(n + 1) / 2 + 1);
    absmax = qlab_alloc_aligned(sizeof(float) * nb_alloc);
    if (!qt->codes || !absmax) goto nomem;
    st = n > 0 ? backend->quantize_absmax(backend->ctx, spec, x, n, blocksize, qt->codes, absmax) : QLAB_OK;
    if (st != QLAB_OK) goto fail;
    if (!double_quant) {
        qt->absmax = absmax;
        return QLAB_OK;
    }
    qt->dq_nblocks = (nblocks + QUANT_DQ_BLOCKSIZE - 1) / QUANT_DQ_BLOCKSIZE;
    qt->dq_codes = qlab_alloc_aligned(nb_alloc);
    qt->dq_absmax = qlab_alloc_aligned(sizeof(float) * (size_t)(qt->dq_nblocks > 0 ? qt->dq_nblocks : 1));
    if (!qt->dq_codes || !qt->dq_absmax) goto nomem;
    /* The mean in double, in index order, rounded once: quant.c's double_quantize. */
    double sum = 0;
    for (int64_t b = 0; b < nblocks; b++)
        sum += absmax[b];
    qt->dq_offset = nblocks > 0 ? (float)(sum / (double)nblocks) : 0.0f;
    qt->double_quant = 1;
    st = nblocks > 0 ? backend->double_quantize(backend->ctx, absmax, nblocks, qt->dq_offset, qt->dq_codes,
                                                qt->dq_absmax)
                     : QLAB_OK;
    qlab_free_aligned(absmax);
    if (st != QLAB_OK) {
        quant_tensor_free(qt);
        return st;
    }
    return QLAB_OK;

nomem:
    st = qlab_fail(QLAB_ERR_NOMEM, "cuda quantize: out of memory for %lld elements", (long long)n);
fail:
    qlab_free_aligned(absmax);
    quant_tensor_free(qt);
    return st;
}
