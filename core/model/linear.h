/* Linear layers over a linear_weight (model.h): fp32 weights go straight to sgemm; quantized weights are
 * dequantized a few rows at a time into a small scratch tile, and each tile is multiplied with sgemm, so
 * the fp32 copy of a quantized matrix never exists in full. */
#ifndef QLAB_LINEAR_H
#define QLAB_LINEAR_H

#include <stddef.h>

#include "core/model/model.h"

/* Floats of scratch tile the model allocates for quantized layers (a tile holds whole rows, at least 2). */
#define LINEAR_TILE_FLOATS ((size_t)1 << 18)

/* The number of weight rows one tile holds for this layer: even (so every tile starts at an even element,
 * as quant_tensor_dequantize_range requires), at least 2, at most out_features rounded up to even. */
int linear_tile_rows(const linear_weight *lw, size_t tile_floats);
/* Floats of tile a layer needs: max(tile_floats, 2 rows). */
size_t linear_tile_floats_needed(const linear_weight *lw, size_t tile_floats);

/* out (N,OC) = inp (N,IC) @ W^T. tile (tile_floats) is scratch for quantized weights (unused for fp32).
 * Both refuse (QLAB_ERR_ARG, computing nothing) a weight that has neither or both of w and q, or a
 * quantized weight without a tile of linear_tile_floats_needed(lw, 0) floats. */
qlab_status linear_forward(float *out, const float *inp, const linear_weight *lw, int N, float *tile,
                           size_t tile_floats);
/* dinp (N,IC, may be NULL) += dout (N,OC) @ W; dweight (OC,IC, may be NULL) += dout^T @ inp. Quantized
 * weights are frozen: a dweight for one is refused. */
qlab_status linear_backward(float *dinp, float *dweight, const float *dout, const float *inp,
                            const linear_weight *lw, int N, float *tile, size_t tile_floats);

/* bf16 versions of linear_forward / linear_backward (same contracts; a quantized weight is dequantized
 * straight to bf16 panels). Fail only when the bf16 workspace cannot be allocated, which
 * linear_bf16_reserve rules out. */
qlab_status linear_forward_bf16(float *out, const float *inp, const linear_weight *lw, int N);
qlab_status linear_backward_bf16(float *dinp, float *dweight, const float *dout, const float *inp,
                                 const linear_weight *lw, int N);
/* Reserves, for the calling thread, the bf16 workspace of every product a model of this configuration
 * forms over N positions: projections and classifier, forward (backward 0), and backward for the input
 * gradients (1) or for the input and weight gradients (2). */
qlab_status linear_bf16_reserve(const model_config *c, int N, int backward);
/* The bytes linear_bf16_reserve reserves. */
size_t linear_bf16_workspace_bytes(const model_config *c, int N, int backward);

#endif
