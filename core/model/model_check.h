/* Finite-value checks on a model's fp32 tensors, so NaN/Inf stops a run with the tensor and element named
 * instead of surfacing later as a perplexity of nan. */
#ifndef QLAB_MODEL_CHECK_H
#define QLAB_MODEL_CHECK_H

#include <stddef.h>

#include "core/model/model.h"

/* QLAB_OK when every fp32 parameter (grads 0) or gradient (grads 1; the buffer is allocated when
 * missing) of
 * the trainable-or-not groups that still hold fp32 data is finite; otherwise QLAB_ERR_NUMERIC with
 * "<who>: tensor wq (layer 2) holds nan at element 17" (layer given for per-layer groups). */
qlab_status model_check_finite(model *m, int grads, const char *who);

/* QLAB_OK when x[0..n) is finite; otherwise QLAB_ERR_NUMERIC with "<what> is nan at <index_name> <i>"
 * naming the first offending element, row = i / row_len (row_len 0: plain index). */
qlab_status check_finite_floats(const float *x, size_t n, size_t row_len, const char *what,
                                const char *row_name);

#endif
