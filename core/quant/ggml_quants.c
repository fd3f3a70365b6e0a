/* Dequantization of ggml's block types, transcribed from ggml-quants.c's reference (scalar)
 * dequantize_row_* functions: every product and sum is evaluated in the same order and precision (fp32,
 * fp16 scales widened exactly), so results are bit-identical. Blocks are read with memcpy because GGUF
 * tensor data is only 32-byte aligned as a whole. */
#include "core/quant/ggml_quants.h"

#include <string.h>

#include "core/base/half.h"

#define QK 32    /* legacy block */
#define QK_K 256 /* K-quant super-block */

static float rd_f16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return fp16_to_f32(h);
}

static const struct {
    uint32_t type;
    const char *name;
    size_t elems, bytes;
} types[] = {
    {GGML_TYPE_F32, "F32", 1, 4},
    {GGML_TYPE_F16, "F16", 1, 2},
    {GGML_TYPE_BF16, "BF16", 1, 2},
    {GGML_TYPE_Q4_0, "Q4_0", QK, 2 + QK / 2},
    {GGML_TYPE_Q4_1, "Q4_1", QK, 4 + QK / 2},
    {GGML_TYPE_Q5_0, "Q5_0", QK, 2 + 4 + QK / 2},
    {GGML_TYPE_Q5_1, "Q5_1", QK, 4 + 4 + QK / 2},
    {GGML_TYPE_Q8_0, "Q8_0", QK, 2 + QK},
    {GGML_TYPE_Q2_K, "Q2_K", QK_K, QK_K / 16 + QK_K / 4 + 4},
    {GGML_TYPE_Q3_K, "Q3_K", QK_K, QK_K / 8 + QK_K / 4 + 12 + 2},
    {GGML_TYPE_Q4_K, "Q4_K", QK_K, 4 + 12 + QK_K / 2},
    {GGML_TYPE_Q5_K, "Q5_K", QK_K, 4 + 12 + QK_K / 8 + QK_K / 2},
    {GGML_TYPE_Q6_K, "Q6_K", QK_K, QK_K / 2 + QK_K / 4 + QK_K / 16 + 2},
};

static int find_type(uint32_t type) {
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (types[i].type == type) return (int)i;
    return -1;
}

int ggml_type_block(uint32_t type, size_t *block_elems, size_t *block_bytes) {
    int i = find_type(type);
    if (i < 0) return 0;
    *block_elems = types[i].elems;
    *block_bytes = types[i].bytes;
    return 1;
}

const char *ggml_type_name(uint32_t type) {
    int i = find_type(type);
    return i < 0 ? NULL : types[i].name;
}

/* block_q4_0 { ggml_half d; uint8_t qs[16]; } */
static void deq_q4_0(const uint8_t *b, float *y) {
    const float d = rd_f16(b);
    const uint8_t *qs = b + 2;
    for (int j = 0; j < QK / 2; j++) {
        const int x0 = (qs[j] & 0x0F) - 8;
        const int x1 = (qs[j] >> 4) - 8;
        y[j] = x0 * d;
        y[j + QK / 2] = x1 * d;
    }
}

/* block_q4_1 { ggml_half d, m; uint8_t qs[16]; } */
static void deq_q4_1(const uint8_t *b, float *y) {
    const float d = rd_f16(b), m = rd_f16(b + 2);
    const uint8_t *qs = b + 4;
    for (int j = 0; j < QK / 2; j++) {
        const int x0 = qs[j] & 0x0F;
        const int x1 = qs[j] >> 4;
        y[j] = x0 * d + m;
        y[j + QK / 2] = x1 * d + m;
    }
}

/* block_q5_0 { ggml_half d; uint8_t qh[4]; uint8_t qs[16]; } */
static void deq_q5_0(const uint8_t *b, float *y) {
    const float d = rd_f16(b);
    uint32_t qh;
    memcpy(&qh, b + 2, 4);
    const uint8_t *qs = b + 6;
    for (int j = 0; j < QK / 2; j++) {
        const uint8_t xh_0 = (uint8_t)(((qh >> (j + 0)) << 4) & 0x10);
        const uint8_t xh_1 = (uint8_t)(((qh >> (j + 12))) & 0x10);
        const int32_t x0 = ((qs[j] & 0x0F) | xh_0) - 16;
        const int32_t x1 = ((qs[j] >> 4) | xh_1) - 16;
        y[j] = x0 * d;
        y[j + QK / 2] = x1 * d;
    }
}

/* block_q5_1 { ggml_half d, m; uint8_t qh[4]; uint8_t qs[16]; } */
static void deq_q5_1(const uint8_t *b, float *y) {
    const float d = rd_f16(b), m = rd_f16(b + 2);
    uint32_t qh;
    memcpy(&qh, b + 4, 4);
    const uint8_t *qs = b + 8;
    for (int j = 0; j < QK / 2; j++) {
        const uint8_t xh_0 = (uint8_t)(((qh >> (j + 0)) << 4) & 0x10);
        const uint8_t xh_1 = (uint8_t)(((qh >> (j + 12))) & 0x10);
        const int x0 = (qs[j] & 0x0F) | xh_0;
        const int x1 = (qs[j] >> 4) | xh_1;
        y[j] = x0 * d + m;
        y[j + QK / 2] = x1 * d + m;
    }
}

/* block_q8_0 { ggml_half d; int8_t qs[32]; } */
static void deq_q8_0(const uint8_t *b, float *y) {
    const float d = rd_f16(b);
    const int8_t *qs = (const int8_t *)(b + 2);
    for (int j = 0; j < QK; j++)
        y[j] = qs[j] * d;
}

/* block_q2_K { uint8_t scales[16]; uint8_t qs[64]; ggml_half d, dmin; } */
static void deq_q2_k(const uint8_t *b, float *y) {
    const uint8_t *scales = b, *q = b + 16;
    const float d = rd_f16(b + 80), min = rd_f16(b + 82);
    int is = 0;
    for (int n = 0; n < QK_K; n += 128) {
        int shift = 0;
        for (int j = 0; j < 4; ++j) {
            uint8_t sc = scales[is++];
            float dl = d * (sc & 0xF), ml = min * (sc >> 4);
            for (int l = 0; l < 16; ++l)
                *y++ = dl * ((int8_t)((q[l] >> shift) & 3)) - ml;
            sc = scales[is++];
            dl = d * (sc & 0xF);
            ml = min * (sc >> 4);
            for (int l = 0; l < 16; ++l)
                *y++ = dl * ((int8_t)((q[l + 16] >> shift) & 3)) - ml;
            shift += 2;
        }
        q += 32;
    }
}

/* block_q3_K { uint8_t hmask[32]; uint8_t qs[64]; uint8_t scales[12]; ggml_half d; } */
static void deq_q3_k(const uint8_t *b, float *y) {
    const uint32_t kmask1 = 0x03030303, kmask2 = 0x0f0f0f0f;
    const uint8_t *hm = b, *q = b + 32;
    const float d_all = rd_f16(b + 108);
    uint32_t aux[4];
    memcpy(aux, b + 96, 12);
    uint32_t tmp = aux[2];
    aux[2] = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4);
    aux[3] = ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4);
    aux[0] = (aux[0] & kmask2) | (((tmp >> 0) & kmask1) << 4);
    aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4);
    int8_t scales[16];
    memcpy(scales, aux, 16);
    int is = 0;
    uint8_t m = 1;
    for (int n = 0; n < QK_K; n += 128) {
        int shift = 0;
        for (int j = 0; j < 4; ++j) {
            float dl = d_all * (scales[is++] - 32);
            for (int l = 0; l < 16; ++l)
                *y++ = dl * ((int8_t)((q[l + 0] >> shift) & 3) - ((hm[l + 0] & m) ? 0 : 4));
            dl = d_all * (scales[is++] - 32);
            for (int l = 0; l < 16; ++l)
                *y++ = dl * ((int8_t)((q[l + 16] >> shift) & 3) - ((hm[l + 16] & m) ? 0 : 4));
            shift += 2;
            m = (uint8_t)(m << 1);
        }
        q += 32;
    }
}

/* The 6-bit scale and min of sub-block j from the 12 packed bytes of Q4_K / Q5_K. */
static void get_scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4));
    }
}

/* block_q4_K { ggml_half d, dmin; uint8_t scales[12]; uint8_t qs[128]; } */
static void deq_q4_k(const uint8_t *b, float *y) {
    const float d = rd_f16(b), min = rd_f16(b + 2);
    const uint8_t *scales = b + 4, *q = b + 16;
    int is = 0;
    uint8_t sc, m;
    for (int j = 0; j < QK_K; j += 64) {
        get_scale_min_k4(is + 0, scales, &sc, &m);
        const float d1 = d * sc, m1 = min * m;
        get_scale_min_k4(is + 1, scales, &sc, &m);
        const float d2 = d * sc, m2 = min * m;
        for (int l = 0; l < 32; ++l)
            *y++ = d1 * (q[l] & 0xF) - m1;
        for (int l = 0; l < 32; ++l)
            *y++ = d2 * (q[l] >> 4) - m2;
        q += 32;
        is += 2;
    }
}

/* block_q5_K { ggml_half d, dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; } */
static void deq_q5_k(const uint8_t *b, float *y) {
    const float d = rd_f16(b), min = rd_f16(b + 2);
    const uint8_t *scales = b + 4, *qh = b + 16, *ql = b + 48;
    int is = 0;
    uint8_t sc, m, u1 = 1, u2 = 2;
    for (int j = 0; j < QK_K; j += 64) {
        get_scale_min_k4(is + 0, scales, &sc, &m);
        const float d1 = d * sc, m1 = min * m;
        get_scale_min_k4(is + 1, scales, &sc, &m);
        const float d2 = d * sc, m2 = min * m;
        for (int l = 0; l < 32; ++l)
            *y++ = d1 * ((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
        for (int l = 0; l < 32; ++l)
            *y++ = d2 * ((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
        ql += 32;
        is += 2;
        u1 = (uint8_t)(u1 << 2);
        u2 = (uint8_t)(u2 << 2);
    }
}

/* block_q6_K { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; ggml_half d; } */
static void deq_q6_k(const uint8_t *b, float *y) {
    const float d = rd_f16(b + 208);
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    for (int n = 0; n < QK_K; n += 128) {
        for (int l = 0; l < 32; ++l) {
            int is = l / 16;
            const int8_t q1 = (int8_t)((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
            const int8_t q2 = (int8_t)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
            const int8_t q3 = (int8_t)((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            const int8_t q4 = (int8_t)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[l + 0] = d * sc[is + 0] * q1;
            y[l + 32] = d * sc[is + 2] * q2;
            y[l + 64] = d * sc[is + 4] * q3;
            y[l + 96] = d * sc[is + 6] * q4;
        }
        y += 128;
        ql += 64;
        qh += 32;
        sc += 8;
    }
}

int ggml_dequantize(uint32_t type, const void *src, float *dst, size_t n) {
    int ti = find_type(type);
    if (ti < 0 || n % types[ti].elems != 0) return 0;
    const uint8_t *s = src;
    size_t nb = n / types[ti].elems, bs = types[ti].bytes, be = types[ti].elems;
    void (*fn)(const uint8_t *, float *) = NULL;
    switch (type) {
    case GGML_TYPE_F32:
        memcpy(dst, src, n * 4);
        return 1;
    case GGML_TYPE_F16:
        for (size_t i = 0; i < n; i++)
            dst[i] = rd_f16(s + 2 * i);
        return 1;
    case GGML_TYPE_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            dst[i] = bf16_to_f32(h);
        }
        return 1;
    case GGML_TYPE_Q4_0:
        fn = deq_q4_0;
        break;
    case GGML_TYPE_Q4_1:
        fn = deq_q4_1;
        break;
    case GGML_TYPE_Q5_0:
        fn = deq_q5_0;
        break;
    case GGML_TYPE_Q5_1:
        fn = deq_q5_1;
        break;
    case GGML_TYPE_Q8_0:
        fn = deq_q8_0;
        break;
    case GGML_TYPE_Q2_K:
        fn = deq_q2_k;
        break;
    case GGML_TYPE_Q3_K:
        fn = deq_q3_k;
        break;
    case GGML_TYPE_Q4_K:
        fn = deq_q4_k;
        break;
    case GGML_TYPE_Q5_K:
        fn = deq_q5_k;
        break;
    case GGML_TYPE_Q6_K:
        fn = deq_q6_k;
        break;
    default:
        return 0;
    }
    /* blocks are independent: large tensors (a 49,152 x 576 embedding) dequantize on every core */
#pragma omp parallel for schedule(static) if (nb >= 4096)
    for (size_t i = 0; i < nb; i++)
        fn(s + i * bs, dst + i * be);
    return 1;
}
