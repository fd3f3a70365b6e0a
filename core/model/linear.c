/* Linear layers over fp32 or quantized frozen weights (see linear.h). For a quantized weight the output
 * columns [r0, r1) are produced by one sgemm against rows r0..r1 of the dequantized tile; the input
 * gradient accumulates tile by tile in row order, so the result is deterministic. The dequantization runs
 * on the calling thread: it is ~100x cheaper than the tile's GEMM, and calling the quantizer from inside
 * an OpenMP region would nest its own parallel loop (costly in libgomp). */
#include "core/model/linear.h"

#include "core/model/gemm_bf16.h"
#include "core/model/ops.h"

int linear_tile_rows(const linear_weight *lw, size_t tile_floats) {
    size_t in = lw->in_features > 0 ? (size_t)lw->in_features : 1;
    size_t rows = tile_floats / in;
    rows &= ~(size_t)1;
    if (rows < 2) rows = 2;
    size_t max_rows = ((size_t)lw->out_features + 1) & ~(size_t)1;
    if (rows > max_rows) rows = max_rows;
    return (int)rows;
}

size_t linear_tile_floats_needed(const linear_weight *lw, size_t tile_floats) {
    size_t two_rows = 2 * (size_t)lw->in_features;
    return tile_floats > two_rows ? tile_floats : two_rows;
}

/* The misuses both directions refuse before computing anything. */
static qlab_status linear_check(const char *fn, const linear_weight *lw, const float *tile,
                                size_t tile_floats) {
    if (!lw->w == !lw->q)
        return qlab_fail(QLAB_ERR_ARG, "%s: the weight (%d x %d) must have exactly one of w and q, it has %s",
                         fn, lw->out_features, lw->in_features, lw->w ? "both" : "neither");
    if (lw->q && (!tile || tile_floats < linear_tile_floats_needed(lw, 0)))
        return qlab_fail(QLAB_ERR_ARG,
                         "%s: tile of %zu floats for a quantized weight with rows of %d (needs %zu)", fn,
                         tile ? tile_floats : 0, lw->in_features, linear_tile_floats_needed(lw, 0));
    return QLAB_OK;
}

qlab_status linear_forward(float *out, const float *inp, const linear_weight *lw, int N, float *tile,
                           size_t tile_floats) {
    QLAB_TRY(linear_check("linear_forward", lw, tile, tile_floats));
    int OC = lw->out_features, IC = lw->in_features;
    if (lw->w) {
        matmul_forward(out, inp, lw->w, N, IC, OC);
        return QLAB_OK;
    }
    int rows = linear_tile_rows(lw, tile_floats);
    for (int r0 = 0; r0 < OC; r0 += rows) {
        int nr = OC - r0 < rows ? OC - r0 : rows;
        quant_tensor_dequantize_range(lw->q, (int64_t)r0 * IC, (int64_t)nr * IC, tile);
        ops_gemm(0, 1, N, nr, IC, 1.0f, inp, IC, tile, IC, 0.0f, out + r0, OC);
    }
    return QLAB_OK;
}

qlab_status linear_backward(float *dinp, float *dweight, const float *dout, const float *inp,
                            const linear_weight *lw, int N, float *tile, size_t tile_floats) {
    QLAB_TRY(linear_check("linear_backward", lw, tile, tile_floats));
    int OC = lw->out_features, IC = lw->in_features;
    if (lw->w) {
        matmul_backward(dinp, dweight, dout, inp, lw->w, N, IC, OC);
        return QLAB_OK;
    }
    if (dweight)
        return qlab_fail(QLAB_ERR_ARG,
                         "linear_backward: a weight gradient was asked of a quantized (frozen) "
                         "%d x %d weight",
                         OC, IC);
    if (!dinp) return QLAB_OK; /* nothing to form */
    int rows = linear_tile_rows(lw, tile_floats);
    for (int r0 = 0; r0 < OC; r0 += rows) {
        int nr = OC - r0 < rows ? OC - r0 : rows;
        quant_tensor_dequantize_range(lw->q, (int64_t)r0 * IC, (int64_t)nr * IC, tile);
        ops_gemm(0, 0, N, IC, nr, 1.0f, dout + r0, OC, tile, IC, 1.0f, dinp, IC);
    }
    return QLAB_OK;
}

/* ---------------------------------------------------------------- bf16 compute */

qlab_status linear_forward_bf16(float *out, const float *inp, const linear_weight *lw, int N) {
    int OC = lw->out_features, IC = lw->in_features;
    if (lw->w) return bf16_gemm(0, 1, N, OC, IC, inp, IC, lw->w, IC, 0, out, OC);
    return bf16_gemm_quant(0, 1, N, OC, IC, inp, IC, lw->q, 0, out, OC);
}

qlab_status linear_backward_bf16(float *dinp, float *dweight, const float *dout, const float *inp,
                                 const linear_weight *lw, int N) {
    return bf16_gemm_backward(N, lw->in_features, lw->out_features, dout, lw->w, lw->w ? NULL : lw->q, inp,
                              dinp, lw->w ? dweight : NULL);
}

size_t linear_bf16_workspace_bytes(const model_config *c, int N, int backward) {
    int D = c->dim, H = c->hidden_dim, KV = c->n_kv_heads * (c->dim / c->n_heads), V = c->vocab_size;
    int shapes[][2] = {{D, D}, {KV, D}, {H, D}, {D, H}, {V, D}}; /* (out, in) */
    size_t most = 0;
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        int OC = shapes[i][0], IC = shapes[i][1];
        /* the classifier's backward (the last shape) consumes the logits' gradient (model.c's head) */
        size_t back = i == sizeof shapes / sizeof *shapes - 1
                          ? bf16_gemm_backward_consume_bytes(N, IC, OC, backward > 1, (size_t)N * V)
                          : bf16_gemm_backward_bytes(N, IC, OC, backward > 1);
        size_t need[2] = {bf16_workspace_bytes(N, OC, IC), backward ? back : 0};
        for (int j = 0; j < 2; j++)
            if (need[j] > most) most = need[j];
    }
    return most;
}

qlab_status linear_bf16_reserve(const model_config *c, int N, int backward) {
    return bf16_workspace_reserve(linear_bf16_workspace_bytes(c, N, backward));
}
