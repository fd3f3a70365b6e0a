/* Tests of 4-bit quantization against hand-computed codes and independent constructions: the NF4 table
 * rebuilt from an inverse normal CDF, bitsandbytes' tie rule and nibble order, partial blocks, zero blocks,
 * bad input, double quantization bounds, exact bits per parameter, and every SIMD kernel against the
 * scalar reference bit for bit. */
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "tests/check.h"
#include "core/base/common.h"
#include "core/base/half.h"
#include "core/quant/quant.h"
#include "core/quant/quant_tables.h"
#include "core/base/rng.h"

static float *random_normal(int64_t n, uint64_t seed) {
    rng_state r;
    rng_seed(&r, seed);
    float *x = qlab_alloc_aligned(sizeof(float) * (size_t)(n > 0 ? n : 1));
    for (int64_t i = 0; i < n; i++)
        x[i] = (float)rng_normal(&r);
    return x;
}

static int code_at(const quant_tensor *qt, int64_t i) {
    uint8_t b = qt->codes[i >> 1];
    return (i & 1) ? (b & 15) : (b >> 4);
}

static int ulp_distance(float a, float b) {
    int32_t ia, ib;
    memcpy(&ia, &a, 4);
    memcpy(&ib, &b, 4);
    if (ia < 0) ia = INT32_MIN - ia;
    if (ib < 0) ib = INT32_MIN - ib;
    return abs(ia - ib);
}

/* ---------------------------------------------------------------- NF4 table from the normal quantiles */

/* Standard normal quantile by bisection on Phi(x) = erfc(-x/sqrt2)/2 (libm's erfc is accurate to a few
 * ulp), then two Newton steps: an inverse independent of any stored coefficients. */
static double normal_quantile(double p) {
    double lo = -40, hi = 40;
    for (int i = 0; i < 200; i++) {
        double mid = 0.5 * (lo + hi);
        if (0.5 * erfc(-mid / sqrt(2.0)) < p)
            lo = mid;
        else
            hi = mid;
    }
    double x = 0.5 * (lo + hi);
    for (int i = 0; i < 2; i++)
        x -= (0.5 * erfc(-x / sqrt(2.0)) - p) / (exp(-0.5 * x * x) / sqrt(2 * M_PI));
    return x;
}

/* torch.linspace in float32 (scalar path), as create_normal_map feeds it to norm.ppf. */
static void linspace_f32(float start, float end, int steps, float *out) {
    float step = (end - start) / (float)(steps - 1);
    for (int i = 0; i < steps; i++)
        out[i] = i < steps / 2 ? start + step * (float)i : end - step * (float)(steps - i - 1);
}

static void test_nf4_table(void) {
    /* bitsandbytes create_normal_map(offset=0.9677083): 8 positive quantiles from linspace(offset, 0.5, 9)
     * without the last, 7 negative ones from linspace(offset, 0.5, 8) without the last, plus 0; sorted and
     * divided by the maximum. */
    float p9[9], p8[8];
    linspace_f32(0.9677083f, 0.5f, 9, p9);
    linspace_f32(0.9677083f, 0.5f, 8, p8);
    double v[16];
    int k = 0;
    for (int i = 0; i < 7; i++)
        v[k++] = -normal_quantile(p8[i]);
    v[k++] = 0;
    for (int i = 7; i >= 0; i--)
        v[k++] = normal_quantile(p9[i]);
    static const float nf4[16] = QUANT_TABLE_NF4;
    const float *cb = quant_codebook(QUANT_NF4);
    double worst = 0;
    for (int i = 0; i < 16; i++) {
        double rebuilt = v[i] / v[15];
        /* 1e-7: the stored values are fp32 results of fp32 arithmetic (ppf in float32, then a float32
         * division), about 1-2 ulp (6e-8 each near 1) from the exact quotient. */
        CHECKF(fabs(rebuilt - nf4[i]) <= 1e-7, "nf4[%d]: rebuilt %.9f stored %.9f", i, rebuilt, nf4[i]);
        if (fabs(rebuilt - nf4[i]) > worst) worst = fabs(rebuilt - nf4[i]);
        CHECK(cb[i] == nf4[i]);
    }
    printf("nf4 table rebuilt from normal quantiles: worst difference %.3g\n", worst);
    CHECK(fabs((1.0 - (1.0 / 32 + 1.0 / 30) / 2) - 0.9677083) < 1e-7);
}

/* The literal thresholds we use (bitsandbytes') against midpoints computed in fp32. */
static void test_thresholds(void) {
    static const float nf4[16] = QUANT_TABLE_NF4, nf4_t[15] = QUANT_THRESHOLDS_NF4;
    int max_ulp = 0, differing = 0;
    for (int k = 0; k < 15; k++) {
        int d = ulp_distance(nf4_t[k], QUANT_MIDPOINT(nf4[k], nf4[k + 1]));
        if (d > max_ulp) max_ulp = d;
        differing += d != 0;
        CHECKF(d <= 1, "nf4 threshold %d: literal %.9g vs fp32 midpoint %.9g (%d ulp)", k, nf4_t[k],
               QUANT_MIDPOINT(nf4[k], nf4[k + 1]), d);
    }
    printf("nf4 literal thresholds vs fp32 midpoints: %d of 15 differ, by at most %d ulp\n", differing,
           max_ulp);
    /* FP4: bitsandbytes types 0.583333f where the midpoint of 1/2 and 2/3 is 0.58333333 (5 ulp away) and
     * 0.00260417f for 1/384; all within 1e-6 of the exact midpoints. */
    static const float fp4_t[7] = QUANT_THRESHOLDS_FP4;
    static const double mags[8] = {0, 1.0 / 192, 1.0 / 6, 1.0 / 4, 1.0 / 3, 1.0 / 2, 2.0 / 3, 1};
    for (int k = 0; k < 7; k++)
        CHECK_NEAR(fp4_t[k], 0.5 * (mags[k] + mags[k + 1]), 1e-6);
    /* Code books: documented values and symmetry. */
    const float *fp4 = quant_codebook(QUANT_FP4);
    static const double fp4_mag[8] = {0, 1.0 / 192, 8.0 / 12, 1, 4.0 / 12, 6.0 / 12, 2.0 / 12, 3.0 / 12};
    for (int c = 0; c < 8; c++) {
        CHECK_NEAR(fp4[c], fp4_mag[c], 1e-7);
        CHECK(fp4[c + 8] == -fp4[c]);
    }
    const float *e2m1 = quant_codebook(QUANT_FP4_E2M1), *raw = quant_codebook(QUANT_MXFP4);
    for (int c = 0; c < 16; c++)
        CHECK(e2m1[c] == raw[c] / 6.0f);
    const float *e3m0 = quant_codebook(QUANT_FP4_E3M0);
    CHECK(e3m0[0] == 0 && e3m0[1] == 0x1p-6f && e3m0[7] == 1.0f && e3m0[15] == -1.0f);
    const float *int4 = quant_codebook(QUANT_INT4);
    for (int q = -7; q <= 7; q++)
        CHECK(int4[q + 8] == (float)q / 7.0f);
    for (int dt = 0; dt < QUANT_DTYPE_COUNT; dt++) {
        const char *name = quant_dtype_name((quant_dtype)dt);
        quant_dtype back;
        CHECK(quant_dtype_parse(name, &back) == QLAB_OK && back == (quant_dtype)dt);
    }
    quant_dtype dummy;
    CHECK(quant_dtype_parse("nf5", &dummy) == QLAB_ERR_ARG);
    CHECK(strstr(qlab_last_error(), "nf5") && strstr(qlab_last_error(), "iq4_nl"));
}

/* ---------------------------------------------------------------- hand-made examples */

static void test_golden_codes(void) {
    /* absmax 2 -> scaled values 1.0, 0.05, -0.25, -1.0.
     * NF4: 1.0 -> 15; 0.05 lies in (0.0398, 0.1203] -> 8 (0.0796); -0.25 in (-0.3397, -0.2346] -> 4;
     * -1.0 -> 0. FP4: 1.0 -> 3; |0.05| in (0.0026, 0.0859] -> 1 (1/192); -0.25: magnitude in
     * (0.2083, 0.2917] -> 7 (0.25), sign -> 15; -1.0 -> 11. Element 2j is the high nibble. */
    const float x[4] = {2.0f, 0.1f, -0.5f, -2.0f};
    quant_tensor qt;
    CHECK(quant_tensor_quantize_ref(&qt, x, 4, QUANT_NF4, 64, 0) == QLAB_OK);
    CHECK(qt.nblocks == 1 && qt.absmax[0] == 2.0f);
    CHECKF(qt.codes[0] == 0xF8 && qt.codes[1] == 0x40, "nf4 bytes %02x %02x", qt.codes[0], qt.codes[1]);
    float out[4];
    quant_tensor_dequantize_ref(&qt, out);
    CHECK(out[0] == 2.0f && out[1] == 0.07958029955625534f * 2.0f && out[3] == -2.0f);
    quant_tensor_free(&qt);
    CHECK(quant_tensor_quantize_ref(&qt, x, 4, QUANT_FP4, 64, 0) == QLAB_OK);
    CHECKF(qt.codes[0] == 0x31 && qt.codes[1] == 0xFB, "fp4 bytes %02x %02x", qt.codes[0], qt.codes[1]);
    quant_tensor_dequantize_ref(&qt, out);
    CHECK(out[0] == 2.0f && out[1] == 2.0f * 5.208333333e-03f && out[2] == -0.5f && out[3] == -2.0f);
    quant_tensor_free(&qt);
    /* Int4: absmax 7 -> 7 and 1 scale to 1 and ~1/7: codes 15 and 9 (code = q + 8). */
    const float y[2] = {7.0f, 1.0f};
    CHECK(quant_tensor_quantize_ref(&qt, y, 2, QUANT_INT4, 32, 0) == QLAB_OK);
    CHECK(qt.codes[0] == 0xF9);
    quant_tensor_free(&qt);
}

/* x * (1/absmax) exactly on a threshold must give the lower code (NF4, ascending types) or the smaller
 * magnitude (FP4, both signs); one ulp above gives the next code. absmax = 1 and 2 keep the scaling exact. */
static void test_ties(void) {
    static const float nf4_t[15] = QUANT_THRESHOLDS_NF4, fp4_t[7] = QUANT_THRESHOLDS_FP4;
    static const int fp4_rank[8] = QUANT_RANK_TO_CODE_FP4;
    for (int scale = 1; scale <= 2; scale++) {
        for (int k = 0; k < 15; k++) {
            float x[4] = {(float)scale, nf4_t[k] * scale, nextafterf(nf4_t[k], 2.0f) * scale, -(float)scale};
            quant_tensor qt;
            CHECK(quant_tensor_quantize_ref(&qt, x, 4, QUANT_NF4, 64, 0) == QLAB_OK);
            CHECKF(code_at(&qt, 1) == k && code_at(&qt, 2) == k + 1, "nf4 tie at threshold %d: codes %d %d",
                   k, code_at(&qt, 1), code_at(&qt, 2));
            quant_tensor_free(&qt);
        }
        for (int k = 0; k < 7; k++) {
            float x[6] = {(float)scale,
                          fp4_t[k] * scale,
                          nextafterf(fp4_t[k], 2.0f) * scale,
                          -fp4_t[k] * scale,
                          -nextafterf(fp4_t[k], 2.0f) * scale,
                          0.0f};
            quant_tensor qt;
            CHECK(quant_tensor_quantize_ref(&qt, x, 6, QUANT_FP4, 64, 0) == QLAB_OK);
            CHECK(code_at(&qt, 1) == fp4_rank[k] && code_at(&qt, 2) == fp4_rank[k + 1]);
            CHECK(code_at(&qt, 3) == (fp4_rank[k] | 8) && code_at(&qt, 4) == (fp4_rank[k + 1] | 8));
            CHECK(code_at(&qt, 5) == 0);
            quant_tensor_free(&qt);
        }
    }
    /* Computed-midpoint types: AF4 at its fp32 midpoints. */
    const float *af4 = quant_codebook(QUANT_AF4);
    for (int k = 0; k < 15; k++) {
        float t = QUANT_MIDPOINT(af4[k], af4[k + 1]);
        float x[3] = {1.0f, t, nextafterf(t, 2.0f)};
        quant_tensor qt;
        CHECK(quant_tensor_quantize_ref(&qt, x, 3, QUANT_AF4, 64, 0) == QLAB_OK);
        CHECK(code_at(&qt, 1) == k && code_at(&qt, 2) == k + 1);
        quant_tensor_free(&qt);
    }
}

static void test_partial_blocks_and_zeros(void) {
    /* n = 64 + 37 (partial, odd): the last block's absmax covers its 37 elements only; the final low
     * nibble is the code of a padding 0.0 for the absmax types, as bitsandbytes writes it (its kernels
     * load the missing element as 0 and quantize it: 7 for NF4, 0 for FP4), 0 for the others. A zero block in
     * the middle dequantizes to exact +0. */
    int64_t n = 64 * 3 + 37;
    float *x = random_normal(n, 7);
    for (int i = 64; i < 128; i++)
        x[i] = 0.0f;
    x[n - 1] = 100.0f; /* the last block's own maximum */
    for (int dt = 0; dt < QUANT_DTYPE_COUNT; dt++) {
        int bs = quant_default_blocksize((quant_dtype)dt);
        quant_tensor qt;
        CHECK(quant_tensor_quantize_ref(&qt, x, n, (quant_dtype)dt, bs, 0) == QLAB_OK);
        CHECK(qt.nblocks == (n + bs - 1) / bs);
        int pad = qt.codes[n / 2] & 15;
        if (quant_dtype_has_fp32_absmax((quant_dtype)dt))
            CHECKF(quant_codebook((quant_dtype)dt)[pad] == 0.0f &&
                       !signbit(quant_codebook((quant_dtype)dt)[pad]),
                   "%s: padding nibble %d is not the code of +0.0", quant_dtype_name((quant_dtype)dt), pad);
        else
            CHECK(pad == 0);
        if (dt == QUANT_NF4) CHECK(pad == 7);
        if (dt == QUANT_FP4) CHECK(pad == 0);
        float *out = qlab_alloc_aligned(sizeof(float) * n);
        quant_tensor_dequantize_ref(&qt, out);
        int zeros_ok = 1;
        for (int i = 64; i < 128; i++)
            zeros_ok &= out[i] == 0.0f && !signbit(out[i]);
        CHECKF(zeros_ok, "%s: zero block does not dequantize to +0", quant_dtype_name((quant_dtype)dt));
        if (quant_dtype_has_fp32_absmax((quant_dtype)dt)) {
            CHECK(qt.absmax[1] == 0.0f && qt.absmax[qt.nblocks - 1] == 100.0f);
            CHECK(out[n - 1] == 100.0f);
        }
        quant_tensor_free(&qt);
        qlab_free_aligned(out);
    }
    float one = 0.75f;
    quant_tensor qt;
    CHECK(quant_tensor_quantize_ref(&qt, &one, 1, QUANT_NF4, 64, 1) == QLAB_OK);
    float back;
    quant_tensor_dequantize_ref(&qt, &back);
    CHECK(back == 0.75f && qt.codes[0] == 0xF7); /* one block: DQ offset = absmax, reconstructed exactly */
    quant_tensor_free(&qt);
    qlab_free_aligned(x);
}

static void test_bad_input(void) {
    float x[300];
    for (int i = 0; i < 300; i++)
        x[i] = (float)i / 300.0f;
    quant_tensor qt;
    x[137] = NAN;
    CHECK(quant_tensor_quantize(&qt, x, 300, QUANT_NF4, 64, 0) == QLAB_ERR_NUMERIC);
    CHECKF(strstr(qlab_last_error(), "137") && strstr(qlab_last_error(), "NaN"), "message: %s",
           qlab_last_error());
    CHECK(qt.codes == NULL && qt.absmax == NULL);
    x[137] = 0.0f;
    x[299] = -INFINITY;
    x[250] = INFINITY;
    for (int dt = 0; dt < QUANT_DTYPE_COUNT; dt++) {
        CHECK(quant_tensor_quantize(&qt, x, 300, (quant_dtype)dt, quant_default_blocksize((quant_dtype)dt),
                                    0) == QLAB_ERR_NUMERIC);
        CHECKF(strstr(qlab_last_error(), "250") && strstr(qlab_last_error(), "+Inf"), "message: %s",
               qlab_last_error());
    }
    x[250] = x[299] = 0.0f;
    const int bad[] = {0, 16, 48, 100, 8192, -64};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK(quant_tensor_quantize(&qt, x, 300, QUANT_NF4, bad[i], 0) == QLAB_ERR_ARG);
        CHECK(strstr(qlab_last_error(), "block size") != NULL);
    }
    CHECK(quant_check_blocksize(QUANT_MXFP4, 64) == QLAB_ERR_ARG);
    CHECK(quant_check_blocksize(QUANT_NVFP4, 16) == QLAB_OK &&
          quant_check_blocksize(QUANT_NVFP4, 32) == QLAB_ERR_ARG);
    CHECK(quant_check_blocksize(QUANT_AF4, 4096) == QLAB_OK);
    CHECK(quant_tensor_quantize(&qt, x, 300, QUANT_MXFP4, 32, 1) == QLAB_ERR_ARG);
    CHECK(strstr(qlab_last_error(), "double quantization") != NULL);
    CHECK(quant_force_kernel("sse9") == QLAB_ERR_ARG);
}

/* ---------------------------------------------------------------- round trips and DQ */

static void test_round_trip(void) {
    int64_t n = 10007;
    float *x = random_normal(n, 11), *out = qlab_alloc_aligned(sizeof(float) * n);
    for (int dt = 0; dt < QUANT_DTYPE_COUNT; dt++) {
        if (!quant_dtype_has_fp32_absmax((quant_dtype)dt))
            continue; /* the absmax types, whatever their order */
        const float *cb = quant_codebook((quant_dtype)dt);
        float sorted[16];
        memcpy(sorted, cb, sizeof sorted);
        for (int i = 0; i < 16; i++)
            for (int j = i + 1; j < 16; j++)
                if (sorted[j] < sorted[i]) {
                    float t = sorted[i];
                    sorted[i] = sorted[j];
                    sorted[j] = t;
                }
        double gap = 0;
        for (int i = 0; i < 15; i++)
            gap = fmax(gap, sorted[i + 1] - sorted[i]);
        if (dt == QUANT_INT4) gap = 1.0 / 7; /* code 0 (-8/7) is never produced */
        for (int bs = 32; bs <= 4096; bs *= 4) {
            quant_tensor qt;
            CHECK(quant_tensor_quantize_ref(&qt, x, n, (quant_dtype)dt, bs, 0) == QLAB_OK);
            quant_tensor_dequantize_ref(&qt, out);
            int ok = 1;
            for (int64_t i = 0; i < n; i++) {
                float a = qt.absmax[i / bs];
                /* half the largest code gap, plus 1e-6 relative for the fp32 scaling and the
                 * literal FP4 thresholds (0.583333f sits 3e-7 below its midpoint). */
                ok &= fabs(x[i] - out[i]) <= a * (gap / 2 + 1e-6);
            }
            CHECKF(ok, "%s bs %d: round-trip error above half the largest code gap",
                   quant_dtype_name((quant_dtype)dt), bs);
            quant_tensor_free(&qt);
        }
    }
    qlab_free_aligned(x);
    qlab_free_aligned(out);
}

/* The dynamic map is the one bitsandbytes 0.50.2 creates (torch 2.15 on x86-64: linspace compiled with
 * FMA), stores as nested_quant_map and quantizes the absmax with: bit for bit, FNV-1a 64 of its 1024
 * bytes. Spot entries that the unfused formula (start + step * i rounded twice) gets 1-2 ulp wrong. */
static void test_dynamic_map_bits(void) {
    static const struct {
        int i;
        uint32_t bits;
    } spot[] = {{18, 0xbf3d6666}, {89, 0xbce7ae15}, {117, 0xb9c7e283}, {152, 0x3bcfdf3b}, {236, 0x3f3d6666}};
    const float *map = quant_dynamic_map_signed();
    for (size_t k = 0; k < sizeof spot / sizeof *spot; k++) {
        uint32_t u;
        memcpy(&u, &map[spot[k].i], 4);
        CHECKF(u == spot[k].bits, "dynamic map[%d] = 0x%08x, bitsandbytes has 0x%08x", spot[k].i, u,
               spot[k].bits);
    }
    uint64_t h = 0xcbf29ce484222325ull;
    const unsigned char *b = (const unsigned char *)map;
    for (int i = 0; i < 1024; i++)
        h = (h ^ b[i]) * 0x100000001b3ull;
    CHECKF(h == 0xd677f22a96665bc4ull, "dynamic map hash 0x%016llx differs from bitsandbytes'",
           (unsigned long long)h);
}

static void test_double_quant(void) {
    int64_t n = 64 * 256 * 24; /* 24 full second-level blocks */
    float *x = random_normal(n, 5);
    quant_tensor plain, dq;
    CHECK(quant_tensor_quantize_ref(&plain, x, n, QUANT_NF4, 64, 0) == QLAB_OK);
    CHECK(quant_tensor_quantize_ref(&dq, x, n, QUANT_NF4, 64, 1) == QLAB_OK);
    CHECK(dq.absmax == NULL && dq.double_quant && dq.dq_nblocks == 24);
    CHECK(memcmp(plain.codes, dq.codes, (size_t)n / 2) == 0); /* 4-bit codes use the true absmax */
    const float *map = quant_dynamic_map_signed();
    int ascending = 1, zeros = 0;
    for (int i = 0; i < 255; i++)
        ascending &= map[i] < map[i + 1];
    for (int i = 0; i < 256; i++)
        zeros += map[i] == 0.0f;
    CHECK(ascending && zeros == 1 && map[0] == -map[254] && map[255] == 1.0f && map[127] == 0.0f);
    CHECK_NEAR(map[128], 5.5e-7, 1e-12); /* 1e-6 * (0.1 + 1) / 2, the smallest positive value */
    double half_gap = 0;
    for (int i = 0; i < 255; i++)
        half_gap = fmax(half_gap, 0.5 * (map[i + 1] - map[i]));
    double sum = 0;
    for (int64_t b = 0; b < plain.nblocks; b++)
        sum += plain.absmax[b];
    CHECK(dq.dq_offset == (float)(sum / (double)plain.nblocks));
    int ok = 1;
    for (int64_t b = 0; b < plain.nblocks; b++) {
        double err = fabs(quant_tensor_block_scale(&dq, b) - plain.absmax[b]);
        /* the largest half-gap of the map times the second-level absmax, plus 4 fp32 ulps of the absmax
         * for the scaling, the product and the offset addition */
        ok &= err <= half_gap * dq.dq_absmax[b / 256] + 4 * 1.2e-7 * plain.absmax[b];
    }
    CHECK(ok);
    CHECK(quant_tensor_bits_per_param(&plain) == 4.5);
    CHECK(quant_bits_per_param_analytic(QUANT_NF4, 64, 0) == 4.5);
    double analytic = quant_bits_per_param_analytic(QUANT_NF4, 64, 1);
    CHECK_NEAR(analytic, 4.127, 0.0005);
    /* stored = analytic + the 32-bit offset, spread over n */
    CHECK_NEAR(quant_tensor_bits_per_param(&dq), analytic + 32.0 / n, 1e-12);
    CHECK(quant_tensor_bytes(&dq) == (size_t)n / 2 + (size_t)dq.nblocks + 4 * 24 + 4);
    quant_tensor_free(&plain);
    quant_tensor_free(&dq);
    /* other types */
    quant_tensor qt;
    CHECK(quant_tensor_quantize_ref(&qt, x, 1 << 16, QUANT_MXFP4, 32, 0) == QLAB_OK);
    CHECK(quant_tensor_bits_per_param(&qt) == 4.25 &&
          quant_bits_per_param_analytic(QUANT_MXFP4, 32, 0) == 4.25);
    quant_tensor_free(&qt);
    CHECK(quant_tensor_quantize_ref(&qt, x, 1 << 16, QUANT_NVFP4, 16, 0) == QLAB_OK);
    CHECK_NEAR(quant_tensor_bits_per_param(&qt), 4.5 + 32.0 / (1 << 16), 1e-12);
    quant_tensor_free(&qt);
    CHECK(quant_tensor_quantize_ref(&qt, x, 1 << 16, QUANT_IQ4_NL, 32, 0) == QLAB_OK);
    CHECK(quant_tensor_bits_per_param(&qt) == 4.5);
    quant_error_stats st;
    CHECK(quant_tensor_error(&qt, x, &st) == QLAB_OK);
    CHECK(st.sqnr_db > 15 && st.sqnr_db < 30 && st.bits_per_param == 4.5 && st.mse > 0);
    quant_tensor_free(&qt);
    qlab_free_aligned(x);
}

/* ---------------------------------------------------------------- MXFP4, NVFP4, IQ4_NL */

static void test_other_formats(void) {
    /* MXFP4: amax 6 -> shared exponent floor(log2 6) - 2 = 0, so E2M1 values round-trip exactly. */
    const float e2m1[16] = QUANT_TABLE_E2M1;
    float x[32], out[32];
    for (int i = 0; i < 32; i++)
        x[i] = e2m1[i % 16];
    quant_tensor qt;
    CHECK(quant_tensor_quantize_ref(&qt, x, 32, QUANT_MXFP4, 32, 0) == QLAB_OK);
    CHECK(qt.scale8[0] == 127);
    quant_tensor_dequantize_ref(&qt, out);
    int exact = 1;
    for (int i = 0; i < 32; i++)
        exact &= out[i] == x[i];
    CHECK(exact);
    quant_tensor_free(&qt);
    /* amax 7.5 -> exponent 0; 7.5 saturates to 6; ties: 0.25 -> 0, 0.75 -> 1, 2.5 -> 2, 5 -> 4 (even codes)
     */
    float y[6] = {7.5f, 0.25f, 0.75f, 2.5f, 5.0f, -3.5f};
    CHECK(quant_tensor_quantize_ref(&qt, y, 6, QUANT_MXFP4, 32, 0) == QLAB_OK);
    quant_tensor_dequantize_ref(&qt, out);
    CHECK(out[0] == 6.0f && out[1] == 0.0f && out[2] == 1.0f && out[3] == 2.0f && out[4] == 4.0f &&
          out[5] == -4.0f);
    quant_tensor_free(&qt);
    /* scaled by 2^-10: exponent -10, same codes */
    for (int i = 0; i < 32; i++)
        x[i] = ldexpf(e2m1[i % 16], -10);
    CHECK(quant_tensor_quantize_ref(&qt, x, 32, QUANT_MXFP4, 32, 0) == QLAB_OK);
    CHECK(qt.scale8[0] == 117);
    quant_tensor_dequantize_ref(&qt, out);
    exact = 1;
    for (int i = 0; i < 32; i++)
        exact &= out[i] == x[i];
    CHECK(exact);
    quant_tensor_free(&qt);

    /* NVFP4: tensor amax 2688 -> tensor scale 1; block amax 6*k for an E4M3-exact k -> block scale k. */
    float z[32];
    for (int i = 0; i < 16; i++)
        z[i] = e2m1[i] * 448.0f; /* block scale 448 */
    for (int i = 0; i < 16; i++)
        z[16 + i] = e2m1[i] * 0.1875f; /* 0.1875 = 1.5 * 2^-3, exact in E4M3 */
    CHECK(quant_tensor_quantize_ref(&qt, z, 32, QUANT_NVFP4, 16, 0) == QLAB_OK);
    CHECK(qt.tensor_scale == 1.0f);
    CHECK(quant_tensor_block_scale(&qt, 0) == 448.0f && quant_tensor_block_scale(&qt, 1) == 0.1875f);
    quant_tensor_dequantize_ref(&qt, out);
    exact = 1;
    for (int i = 0; i < 32; i++)
        exact &= out[i] == z[i];
    CHECK(exact);
    quant_tensor_free(&qt);

    /* IQ4_NL: d = max / -127 (fp16-exact when max = -127 * 2^k); table multiples round-trip exactly. */
    static const int8_t iq[16] = QUANT_TABLE_IQ4_NL_INT8;
    for (int i = 0; i < 32; i++)
        x[i] = -(float)iq[i % 16] * 0.25f; /* max |.| = 127 * 0.25 at value +31.75 */
    CHECK(quant_tensor_quantize_ref(&qt, x, 32, QUANT_IQ4_NL, 32, 0) == QLAB_OK);
    CHECK(quant_tensor_block_scale(&qt, 0) == -0.25f);
    quant_tensor_free(&qt);
    /* ties (llama.cpp goes to the upper value): with d = -0.25 the scale is -4, so 1.125 -> -4.5, the
     * midpoint of -10 and 1 (-> 1, code 8), and -1.75 -> 7, the midpoint of 1 and 13 (-> 13, code 9);
     * -1.7 -> 6.8 (-> 1, code 8); 31.75 -> -127 (code 0). */
    float w[5] = {31.75f, 1.125f, -1.75f, -1.7f, 0.0f};
    CHECK(quant_tensor_quantize_ref(&qt, w, 5, QUANT_IQ4_NL, 32, 0) == QLAB_OK);
    CHECK(code_at(&qt, 0) == 0 && code_at(&qt, 1) == 8 && code_at(&qt, 2) == 9 && code_at(&qt, 3) == 8);
    quant_tensor_free(&qt);
    for (int i = 0; i < 32; i++)
        x[i] = -(float)iq[i % 16] * 0.25f;
    CHECK(quant_tensor_quantize_ref(&qt, x, 32, QUANT_IQ4_NL, 32, 0) == QLAB_OK);
    quant_tensor_dequantize_ref(&qt, out);
    exact = 1;
    for (int i = 0; i < 32; i++)
        exact &= out[i] == x[i];
    CHECK(exact);
    quant_tensor_free(&qt);
}

/* ---------------------------------------------------------------- SIMD against the reference */

static int same_tensor(const quant_tensor *a, const quant_tensor *b) {
    if (a->n != b->n || a->nblocks != b->nblocks || a->double_quant != b->double_quant) return 0;
    int64_t nb = a->nblocks;
    if (memcmp(a->codes, b->codes, (size_t)(a->n + 1) / 2)) return 0;
    if (a->absmax && memcmp(a->absmax, b->absmax, sizeof(float) * nb)) return 0;
    if (a->scale8 && memcmp(a->scale8, b->scale8, nb)) return 0;
    if (a->scale16 && memcmp(a->scale16, b->scale16, 2 * nb)) return 0;
    if (a->double_quant &&
        (memcmp(a->dq_codes, b->dq_codes, nb) || memcmp(a->dq_absmax, b->dq_absmax, 4 * a->dq_nblocks) ||
         a->dq_offset != b->dq_offset))
        return 0;
    return a->tensor_scale == b->tensor_scale;
}

/* Inputs that hit the special paths: exact thresholds, zero blocks, tiny and huge blocks. */
static void add_hard_values(float *x, int64_t n, uint64_t seed) {
    static const float nf4_t[15] = QUANT_THRESHOLDS_NF4;
    rng_state r;
    rng_seed(&r, seed);
    for (int64_t i = 0; i + 64 <= n; i += 64) {
        uint64_t kind = rng_below(&r, 8);
        if (kind == 0) memset(x + i, 0, 64 * sizeof(float));
        if (kind == 1) {
            x[i] = 1.0f;
            for (int j = 1; j < 64; j++)
                x[i + j] = nf4_t[rng_below(&r, 15)];
        }
        if (kind == 2)
            for (int j = 0; j < 64; j++)
                x[i + j] *= 1e-39f; /* subnormal block: 1/absmax overflows */
        if (kind == 3)
            for (int j = 0; j < 64; j++)
                x[i + j] *= 1e30f;
        if (kind == 4) x[i + rng_below(&r, 64)] = -0.0f;
    }
}

static void test_kernels_match_reference(void) {
    const char *kernels[] = {"scalar", "avx2", "avx512"};
    const int64_t lengths[] = {1, 2, 31, 63, 64, 65, 1000, 4097, 100003};
    const int blocksizes[] = {32, 64, 256, 4096};
    int64_t maxn = 100003;
    float *x = random_normal(maxn, 99);
    add_hard_values(x, maxn, 3);
    float *ref = qlab_alloc_aligned(4 * maxn), *got = qlab_alloc_aligned(4 * maxn + 64);
    uint16_t *ref16 = qlab_alloc_aligned(2 * maxn), *got16 = qlab_alloc_aligned(2 * maxn + 64);
    for (size_t k = 0; k < 3; k++) {
        if (quant_force_kernel(kernels[k]) != QLAB_OK) {
            SKIP("kernel %s: not supported on this CPU", kernels[k]);
            continue;
        }
        int fails = 0, cases = 0;
        for (size_t li = 0; li < sizeof lengths / sizeof lengths[0]; li++) {
            int64_t n = lengths[li];
            for (int dt = 0; dt < QUANT_DTYPE_COUNT; dt++) {
                for (size_t bi = 0; bi < sizeof blocksizes / sizeof blocksizes[0]; bi++) {
                    int bs = quant_dtype_has_fp32_absmax((quant_dtype)dt)
                                 ? blocksizes[bi]
                                 : quant_default_blocksize((quant_dtype)dt);
                    if (!quant_dtype_has_fp32_absmax((quant_dtype)dt) && bi > 0) continue;
                    for (int dq = 0; dq <= quant_dtype_has_fp32_absmax((quant_dtype)dt); dq++) {
                        quant_tensor a, b;
                        cases++;
                        if (quant_tensor_quantize_ref(&a, x, n, (quant_dtype)dt, bs, dq) != QLAB_OK ||
                            quant_tensor_quantize(&b, x, n, (quant_dtype)dt, bs, dq) != QLAB_OK) {
                            fails++;
                            continue;
                        }
                        int same = same_tensor(&a, &b);
                        quant_tensor_dequantize_ref(&a, ref);
                        quant_tensor_dequantize(&a, got);
                        same &= memcmp(ref, got, 4 * n) == 0;
                        for (int64_t i = 0; i < n; i++)
                            ref16[i] = f32_to_bf16(ref[i]);
                        quant_tensor_dequantize_bf16(&a, got16);
                        same &= memcmp(ref16, got16, 2 * n) == 0;
                        /* a range starting at an odd element into an unaligned buffer */
                        if (n > 5) {
                            quant_tensor_dequantize_range(&a, 3, n - 5, got + 1);
                            same &= memcmp(ref + 3, got + 1, 4 * (n - 5)) == 0;
                        }
                        if (!same) {
                            fails++;
                            fprintf(stderr, "kernel %s: %s bs %d dq %d n %lld differs from the reference\n",
                                    kernels[k], quant_dtype_name((quant_dtype)dt), bs, dq, (long long)n);
                        }
                        quant_tensor_free(&a);
                        quant_tensor_free(&b);
                    }
                }
            }
        }
        /* a tensor large enough (12 MB of fp32 output) for the streaming-store path */
        {
            int64_t big = 3000017;
            float *bx = random_normal(big, 21), *r1 = qlab_alloc_aligned(4 * big),
                  *r2 = qlab_alloc_aligned(4 * big);
            add_hard_values(bx, big, 4);
            for (int dq = 0; dq <= 1; dq++) {
                quant_tensor a, b;
                cases++;
                if (quant_tensor_quantize_ref(&a, bx, big, QUANT_NF4, 64, dq) != QLAB_OK ||
                    quant_tensor_quantize(&b, bx, big, QUANT_NF4, 64, dq) != QLAB_OK) {
                    fails++;
                    continue;
                }
                quant_tensor_dequantize_ref(&a, r1);
                quant_tensor_dequantize(&b, r2);
                if (!same_tensor(&a, &b) || memcmp(r1, r2, 4 * big)) {
                    fails++;
                    fprintf(stderr, "kernel %s: nf4 n %lld dq %d differs from the reference\n", kernels[k],
                            (long long)big, dq);
                }
                quant_tensor_free(&a);
                quant_tensor_free(&b);
            }
            qlab_free_aligned(bx);
            qlab_free_aligned(r1);
            qlab_free_aligned(r2);
        }
        CHECKF(fails == 0, "kernel %s: %d of %d cases differ", kernels[k], fails, cases);
        printf("kernel %s: %d cases bit-identical to the scalar reference\n", kernels[k], cases - fails);
    }
    quant_force_kernel("auto");
    /* thread count must not change anything */
#ifdef _OPENMP
    quant_tensor a, b;
    int64_t n = 100003;
    omp_set_num_threads(1);
    quant_tensor_quantize(&a, x, n, QUANT_NF4, 64, 1);
    omp_set_num_threads(3);
    quant_tensor_quantize(&b, x, n, QUANT_NF4, 64, 1);
    CHECK(same_tensor(&a, &b));
    quant_tensor_free(&a);
    quant_tensor_free(&b);
#endif
    qlab_free_aligned(x);
    qlab_free_aligned(ref);
    qlab_free_aligned(got);
    qlab_free_aligned(ref16);
    qlab_free_aligned(got16);
}

int main(void) {
    test_nf4_table();
    test_thresholds();
    test_golden_codes();
    test_ties();
    test_partial_blocks_and_zeros();
    test_bad_input();
    test_round_trip();
    test_dynamic_map_bits();
    test_double_quant();
    test_other_formats();
    test_kernels_match_reference();
    printf("quant kernel in use: %s\n", quant_kernel_name());
    return check_summary();
}
