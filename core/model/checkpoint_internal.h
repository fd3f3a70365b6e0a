/* Helpers shared by the checkpoint readers and writers (checkpoint*.c only): a read-only mapping of a
 * whole file, a streaming writer that lands its file atomically, and overflow-checked size arithmetic. */
#ifndef QLAB_CHECKPOINT_INTERNAL_H
#define QLAB_CHECKPOINT_INTERNAL_H

#include <stdint.h>
#include <stdio.h>

#include "core/base/atomic_file.h"
#include "core/model/checkpoint.h"

typedef struct {
    const uint8_t *data; /* NULL for an empty file */
    size_t size;
} checkpoint_mapping;

/* Maps path read-only (a model can be larger than we want to copy twice). */
qlab_status checkpoint_map(const char *path, checkpoint_mapping *map);
void checkpoint_unmap(checkpoint_mapping *map);

/* Checkpoint writers stream through an atomic_file (temp name, renamed on commit). */
typedef atomic_file checkpoint_writer;

/* Writes n floats converted to dtype (little-endian, as every supported format stores them). */
void checkpoint_writer_write_floats(checkpoint_writer *w, const float *x, size_t n, checkpoint_dtype dtype);

/* *out = a * b, returning 0 on size_t overflow. */
static inline int checkpoint_mul(size_t a, size_t b, size_t *out) {
    if (a && b > SIZE_MAX / a) return 0;
    *out = a * b;
    return 1;
}

size_t checkpoint_dtype_size(checkpoint_dtype dtype);
/* checkpoint_special_ids for a Hugging Face directory (*bos / *eos must start at -1). */
qlab_status checkpoint_special_ids_hf(const char *path, int *bos, int *eos);
/* Widens n stored values of dtype at src (any alignment, little-endian) into dst. */
void checkpoint_widen(float *dst, const void *src, size_t n, checkpoint_dtype dtype);

/* For the streaming quantized loads: checks the fp32 tensor w of projection p, layer `layer` (named
 * tensor in path) for NaN/Inf and quantizes it into the quantized model m (model_set_projection). */
qlab_status checkpoint_quantize_projection(model *m, int layer, model_proj p, const float *w,
                                           const char *path, const char *tensor);
/* An aligned fp32 buffer (qlab_free_aligned) for the largest projection of c, or NULL. */
float *checkpoint_projection_scratch(const model_config *c);

/* The parameter views of a model the writers only read. */
static inline const model_params *checkpoint_params(const model *m) {
    return model_get_params_const(m);
}

/* The writers store fp32 (or narrowed) weights: a quantized model holds no fp32 projections to write. */
static inline qlab_status checkpoint_check_savable(const model *m, const char *path) {
    if (model_is_quantized(m))
        return qlab_fail(QLAB_ERR_UNSUPPORTED,
                         "%s: the model's projections are quantized; the checkpoint "
                         "writers store fp32 weights (save before model_quantize)",
                         path);
    return QLAB_OK;
}

#endif
