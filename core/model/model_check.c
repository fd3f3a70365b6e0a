/* Finite-value checks on model tensors and activations (see model_check.h). */
#include "core/model/model_check.h"

#include <math.h>

static const char *nonfinite_name(float v) {
    return isnan(v) ? "nan" : v > 0 ? "+inf" : "-inf";
}

/* Index of the first non-finite element of x[0..n), or n. */
static size_t first_nonfinite(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return i;
    return n;
}

qlab_status model_check_finite(model *m, int grads, const char *who) {
    size_t count = 0;
    const float *base = grads ? NULL : model_get_param_buffer(m, &count);
    if (grads) base = model_get_grad_buffer(m, &count);
    if (!base) return QLAB_ERR_NOMEM;
    const model_config *c = model_get_config(m);
    for (int g = 0; g < MODEL_GROUP_COUNT; g++) {
        model_param_group pg = model_get_param_group(m, (model_group)g);
        if (pg.count == 0 || pg.quantized || (grads && !pg.trainable)) continue;
        size_t i = first_nonfinite(base + pg.offset, pg.count);
        if (i == pg.count) continue;
        size_t per_layer = pg.count / (size_t)c->n_layers;
        int layered = pg.count % (size_t)c->n_layers == 0 && g != MODEL_GROUP_TOKEN_EMBEDDING &&
                      g != MODEL_GROUP_RMS_FINAL && g != MODEL_GROUP_WCLS;
        float v = base[pg.offset + i];
        if (layered)
            return qlab_fail(QLAB_ERR_NUMERIC, "%s: %s %s (layer %zu) holds %s at element %zu", who,
                             grads ? "the gradient of tensor" : "tensor", pg.name, i / per_layer,
                             nonfinite_name(v), i % per_layer);
        return qlab_fail(QLAB_ERR_NUMERIC, "%s: %s %s holds %s at element %zu", who,
                         grads ? "the gradient of tensor" : "tensor", pg.name, nonfinite_name(v), i);
    }
    return QLAB_OK;
}

qlab_status check_finite_floats(const float *x, size_t n, size_t row_len, const char *what,
                                const char *row_name) {
    size_t i = first_nonfinite(x, n);
    if (i == n) return QLAB_OK;
    if (row_len)
        return qlab_fail(QLAB_ERR_NUMERIC, "%s is %s at %s %zu (element %zu)", what, nonfinite_name(x[i]),
                         row_name, i / row_len, i % row_len);
    return qlab_fail(QLAB_ERR_NUMERIC, "%s is %s at %s %zu", what, nonfinite_name(x[i]), row_name, i);
}
