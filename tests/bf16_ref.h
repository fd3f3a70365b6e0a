/* The bf16 product numerics of core/model/gemm_bf16.h written directly from its description, for the tests
 * of the bf16 paths: inputs rounded to bf16 (RNE) with subnormals read as zero, one fused multiply-add per
 * product with subnormal results flushed to zero, odd element of each k pair first; and the relative L2
 * distance the tolerances are stated in. Header-only (static inline): each test is its own program. */
#ifndef QLAB_TESTS_BF16_REF_H
#define QLAB_TESTS_BF16_REF_H

#include <float.h>
#include <math.h>
#include <stddef.h>

#include "core/base/half.h"

static inline float def_in(float x) {
    uint16_t h = f32_to_bf16(x);
    if ((h & 0x7f80u) == 0) h &= 0x8000u;
    return bf16_to_f32(h);
}

static inline float def_step(float acc, float a, float b) {
    float r = fmaf(def_in(a), def_in(b), acc);
    return (r != 0 && fabsf(r) < FLT_MIN) ? copysignf(0.0f, r) : r;
}

/* ||x - ref|| / ||ref|| in double (||x - ref|| when ref is all zero). */
static inline double rel_l2(const float *x, const float *ref, size_t n) {
    double d = 0, r = 0;
    for (size_t i = 0; i < n; i++) {
        d += ((double)x[i] - ref[i]) * ((double)x[i] - ref[i]);
        r += (double)ref[i] * ref[i];
    }
    return sqrt(d / (r > 0 ? r : 1));
}

#endif
