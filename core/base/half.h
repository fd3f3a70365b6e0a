/* fp16 and bf16 conversions (round to nearest even), shared by tensor files and dequantize-to-bf16. */
#ifndef QLAB_HALF_H
#define QLAB_HALF_H

#include <stdint.h>
#include <string.h>

static inline uint32_t half_f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static inline float half_bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline float bf16_to_f32(uint16_t h) {
    return half_bits_f32((uint32_t)h << 16);
}

static inline uint16_t f32_to_bf16(float f) {
    uint32_t u = half_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float fp16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0) {
        if (man == 0) return half_bits_f32(sign);
        float v = (float)man * 0x1.0p-24f; /* subnormal */
        return sign ? -v : v;
    }
    if (exp == 31) return half_bits_f32(sign | 0x7f800000u | (man << 13));
    return half_bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

static inline uint16_t f32_to_fp16(float f) {
    uint32_t u = half_f32_bits(f), sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* overflow (incl. rounding up) -> inf */
    if (a < 0x38800000u) {                                   /* subnormal or zero in fp16 */
        float v = half_bits_f32(a) * 0x1.0p24f;              /* exact: scales into integer range */
        uint32_t m = (uint32_t)v;
        float rem = v - (float)m;
        if (rem > 0.5f || (rem == 0.5f && (m & 1u))) m++;
        return (uint16_t)(sign | m);
    }
    uint32_t mant_odd = (a >> 13) & 1u;
    a += 0xc8000fffu + mant_odd; /* rebias exponent (-112 << 23) and round to nearest even */
    return (uint16_t)(sign | (a >> 13));
}

#endif
