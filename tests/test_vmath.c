/* core/base/vmath: vm_expf against double-precision exp (the documented 2-ulp bound over the normal range,
 * exact special cases); every vector function on this CPU's path against the C reference, bit for bit, on
 * random rows of many lengths with special values; the sums against double-precision sums; max_index's
 * first-occurrence rule; the KL identity of vm_sum_exp_cross against a direct computation. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tests/check.h"
#include "core/base/rng.h"
#include "core/base/vmath.h"

static uint32_t bits_of(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

/* The distance of y from the exact value e in units of the last place of float at e. */
static double ulps(float y, double e) {
    int ex;
    frexp(e, &ex);
    double ulp = ldexp(1.0, (ex - 24 < -149 ? -149 : ex - 24));
    return fabs((double)y - e) / ulp;
}

static void test_expf_accuracy(void) {
    double worst = 0, worst_x = 0;
    long n = 0;
    for (float x = -87.3f; x <= 88.3f; x = nextafterf(x, INFINITY) + 3e-5f * fabsf(x) + 1e-6f, n++) {
        double u = ulps(vm_expf(x), exp((double)x));
        if (u > worst) worst = u, worst_x = x;
    }
    /* every float in [-1, 1] near 0 too, where r is the whole argument */
    for (float x = -1e-3f; x <= 1e-3f; x = nextafterf(x, INFINITY) + 1e-9f, n++) {
        double u = ulps(vm_expf(x), exp((double)x));
        if (u > worst) worst = u, worst_x = x;
    }
    CHECKF(worst <= 2.0, "vm_expf is %.3f ulp from exp at x = %.9g (%ld points)", worst, worst_x, n);
    fprintf(stderr, "vm_expf: worst %.3f ulp over %ld points (at %.9g)\n", worst, n, worst_x);

    CHECK(vm_expf(0.0f) == 1.0f && vm_expf(-0.0f) == 1.0f);
    CHECK(vm_expf(-INFINITY) == 0.0f && vm_expf(-100.0f) == 0.0f && vm_expf(-87.34f) == 0.0f);
    CHECK(isinf(vm_expf(INFINITY)) && isinf(vm_expf(88.38f)) && isinf(vm_expf(1e30f)));
    CHECK(isfinite(vm_expf(88.37f)) && vm_expf(88.37f) > 2.0e38f);
    CHECK(isnan(vm_expf(NAN)));
    /* the smallest input kept gives a positive result, monotone across the flush boundary */
    float lo = nextafterf(-87.3365447505531f, 0.0f);
    CHECK(vm_expf(lo) > 0.0f && vm_expf(lo) < 1.3e-38f);
}

/* A row of logits-like values with specials planted at some positions. */
static void fill(float *x, size_t n, rng_state *r, int specials) {
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(rng_normal(r) * 6.0);
    if (!specials || n < 8) return;
    x[n / 3] = -INFINITY;
    x[n / 2] = -120.0f;
    x[n - 1] = -0.0f;
    x[n / 5] = 95.0f; /* exp(x - shift) can be > 88.37 when shift is small: +inf */
}

static int same_bits(const float *a, const float *b, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (bits_of(a[i]) != bits_of(b[i])) return 0;
    return 1;
}

/* fn (scale 0.37) on copies of x (n values) in y1 on the C path and in y2 on the AVX-512 path: nonzero when
 * the returned values or the rows differ in their bits (NaNs of either sign and payload count as equal). */
static int row_paths_differ(float (*fn)(float *, size_t, float), const float *x, size_t n, float *y1,
                            float *y2) {
    memcpy(y1, x, sizeof(float) * n), memcpy(y2, x, sizeof(float) * n);
    vm_force_c(1);
    float f1 = fn(y1, n, 0.37f);
    vm_force_c(0);
    float f2 = fn(y2, n, 0.37f);
    int bad = bits_of(f1) != bits_of(f2) && !(isnan(f1) && isnan(f2));
    for (size_t i = 0; i < n; i++)
        bad += bits_of(y1[i]) != bits_of(y2[i]) && !(isnan(y1[i]) && isnan(y2[i]));
    return bad;
}

static void test_paths_bit_exact(void) {
    vm_force_c(0);
    if (strcmp(vm_path_name(), "c") == 0) {
        SKIP("no AVX-512 on this CPU: only the C reference runs here (its kernels still compile)");
        return;
    }
    enum { N = 49153 };
    float *x = malloc(sizeof(float) * N), *u = malloc(sizeof(float) * N);
    float *y1 = malloc(sizeof(float) * N), *y2 = malloc(sizeof(float) * N), *sw[2][2];
    for (int i = 0; i < 4; i++)
        sw[i / 2][i % 2] = malloc(sizeof(float) * N);
    rng_state r;
    rng_seed(&r, 11);
    size_t lens[] = {0, 1, 2, 7, 15, 16, 17, 31, 33, 100, 255, 256, 257, 1000, 4095, N};
    for (size_t li = 0; li < sizeof lens / sizeof *lens; li++) {
        size_t n = lens[li];
        int bad = 0;
        fill(x, n, &r, 1);
        fill(u, n, &r, 0);
        float shift = n ? x[0] : 0.0f;
        double s1, s2, c1, c2;
        float f1, f2;
        size_t i1, i2;

        vm_force_c(1);
        f1 = vm_exp_shift_sum(y1, x, n, shift);
        vm_force_c(0);
        f2 = vm_exp_shift_sum(y2, x, n, shift);
        bad += bits_of(f1) != bits_of(f2) || !same_bits(y1, y2, n);

        vm_force_c(1);
        s1 = vm_exp_shift_sum_f64(y1, x, n, shift);
        c1 = vm_sum_exp_shift(x, n, shift);
        vm_force_c(0);
        s2 = vm_exp_shift_sum_f64(y2, x, n, shift);
        c2 = vm_sum_exp_shift(x, n, shift);
        bad += memcmp(&s1, &s2, 8) != 0 || memcmp(&c1, &c2, 8) != 0 || !same_bits(y1, y2, n);

        vm_force_c(1);
        vm_sum_exp_cross(x, u, n, shift, &s1, &c1);
        vm_force_c(0);
        vm_sum_exp_cross(x, u, n, shift, &s2, &c2);
        bad += memcmp(&s1, &s2, 8) != 0 || memcmp(&c1, &c2, 8) != 0;

        vm_force_c(1);
        f1 = vm_max_index(x, n, &i1);
        vm_force_c(0);
        f2 = vm_max_index(x, n, &i2);
        bad += bits_of(f1) != bits_of(f2) || i1 != i2;

        vm_force_c(1);
        vm_silu_mul(y1, x, u, n);
        vm_force_c(0);
        vm_silu_mul(y2, x, u, n);
        bad += !same_bits(y1, y2, n);

        vm_force_c(1);
        vm_sigmoid(y1, x, n);
        vm_force_c(0);
        vm_sigmoid(y2, x, n);
        bad += !same_bits(y1, y2, n);

        /* SwiGLU's backward: both gradients and the output formed again over dout (in place) */
        for (int path = 0; path < 2; path++) {
            float *hs = path ? y2 : y1;
            memcpy(hs, u, sizeof(float) * n); /* dout */
            vm_force_c(!path);
            vm_swiglu_backward(sw[path][0], sw[path][1], hs, hs, x, u, n);
        }
        vm_force_c(0);
        bad +=
            !same_bits(sw[0][0], sw[1][0], n) || !same_bits(sw[0][1], sw[1][1], n) || !same_bits(y1, y2, n);

        vm_force_c(1);
        s1 = vm_dot_f64(x, u, n);
        vm_force_c(0);
        s2 = vm_dot_f64(x, u, n);
        bad += memcmp(&s1, &s2, 8) != 0;

        vm_force_c(1);
        s1 = vm_dot3_f64(x, u, y2, n);
        vm_force_c(0);
        s2 = vm_dot3_f64(x, u, y2, n);
        bad += memcmp(&s1, &s2, 8) != 0;

        bad += row_paths_differ(vm_scale_max, x, n, y1, y2);

        /* sums and rotations of pairs (RoPE): elementwise, any length, in place or not */
        vm_force_c(1);
        vm_add(y1, x, u, n);
        vm_force_c(0);
        vm_add(y2, x, u, n);
        bad += !same_bits(y1, y2, n);
        size_t half = n / 2;
        const float *cs = u, *sn = u + half; /* any values: the same operations on both paths */
        vm_force_c(1);
        vm_rotate_pairs(y1, x, cs, sn, half);
        vm_force_c(0);
        vm_rotate_pairs(y2, x, cs, sn, half);
        bad += !same_bits(y1, y2, 2 * half);
        memcpy(y2, x, sizeof(float) * n);
        vm_rotate_pairs(y2, y2, cs, sn, half);
        bad += !same_bits(y1, y2, 2 * half);

        /* the fused scale, max and exponentials: C against AVX-512, and against the two calls it fuses */
        bad += row_paths_differ(vm_scale_exp_sum, x, n, y1, y2);
        memcpy(y1, x, sizeof(float) * n), memcpy(y2, x, sizeof(float) * n);
        f2 = vm_scale_exp_sum(y2, n, 0.37f);
        float m = vm_scale_max(y1, n, 0.37f);
        f1 = vm_exp_shift_sum(y1, y1, n, m);
        bad += bits_of(f1) != bits_of(f2) || !same_bits(y1, y2, n);

        memcpy(y1, u, sizeof(float) * n), memcpy(y2, u, sizeof(float) * n);
        vm_force_c(1);
        vm_softmax_grad(y1, x, n, 0.37f);
        vm_force_c(0);
        vm_softmax_grad(y2, x, n, 0.37f);
        bad += !same_bits(y1, y2, n);
        CHECKF(bad == 0, "length %zu: the %s path differs from the C reference", n, vm_path_name());
    }
    /* exp near both ends of its range, where 2^n scaling meets subnormal results and overflow: every float in
     * from -87.3366 up (45,057 of them: results from FLT_MIN to about 1.4 FLT_MIN) and a grid below 88.38 */
    size_t m = 0;
    for (float v = -87.3366f; v < -86.5f && m < N - 4096; v = nextafterf(v, 0.0f))
        x[m++] = v;
    for (int i = 0; i < 4096 && m < N; i++)
        x[m++] = 88.38f - 0.001f * (float)i;
    vm_force_c(1);
    vm_exp_shift_sum(y1, x, m, 0.0f);
    vm_force_c(0);
    vm_exp_shift_sum(y2, x, m, 0.0f);
    CHECKF(same_bits(y1, y2, m), "exp near the ends of its range: the %s path differs (%zu points)",
           vm_path_name(), m);
    /* largest element, NaN never the maximum, a zero maximum as +0: NaNs, mixed zeros, -inf in the 32-wide
     * body and the tail, one row of each; vm_scale_max and the fused vm_scale_exp_sum against the C path */
    static const float row_specials[][3] = {{NAN, -0.0f, 0.0f},
                                            {-0.0f, -0.0f, -0.0f},
                                            {0.0f, -0.0f, NAN},
                                            {-INFINITY, -INFINITY, -INFINITY},
                                            {NAN, NAN, NAN}};
    for (int rs = 0; rs < 5; rs++)
        for (size_t len = 1; len <= 70; len += 23) {
            int bad_row = 0;
            for (size_t i = 0; i < len; i++) /* zeros or -inf everywhere, the specials spread over the row */
                x[i] = row_specials[rs][i % 3 == 0 ? 0 : (i * 7) % 3];
            if (rs == 0) x[len / 2] = -3.0f;
            if (rs == 0 && len > 16) x[16] = 7.0f; /* the maximum, before a NaN in the same lane (x[48]) */
            bad_row += row_paths_differ(vm_scale_max, x, len, y1, y2);
            bad_row += row_paths_differ(vm_scale_exp_sum, x, len, y1, y2);
            CHECKF(bad_row == 0, "row maximum with specials (case %d, length %zu): paths differ", rs, len);
        }
    /* every float exponent and the NaN, elementwise */
    size_t n = 0;
    for (uint32_t e = 0; e < 256 && n + 2 <= N; e++)
        for (int s = 0; s < 2; s++) {
            uint32_t b = (e << 23) | ((uint32_t)s << 31) | (e * 2654435761u >> 9);
            memcpy(&x[n++], &b, 4);
        }
    vm_force_c(1);
    vm_sigmoid(y1, x, n);
    vm_force_c(0);
    vm_sigmoid(y2, x, n);
    int bad_bits = 0;
    for (size_t i = 0; i < n; i++)
        bad_bits += bits_of(y1[i]) != bits_of(y2[i]) && !(isnan(y1[i]) && isnan(y2[i]));
    CHECKF(bad_bits == 0, "%d of %zu special inputs differ between paths", bad_bits, n);
    free(x), free(u), free(y1), free(y2);
    for (int i = 0; i < 4; i++)
        free(sw[i / 2][i % 2]);
}

static void test_sums_and_max(void) {
    enum { N = 49152 };
    float *x = malloc(sizeof(float) * N), *xq = malloc(sizeof(float) * N), *y = malloc(sizeof(float) * N);
    rng_state r;
    rng_seed(&r, 5);
    fill(x, N, &r, 0);
    for (int i = 0; i < N; i++)
        xq[i] = x[i] + (float)(rng_normal(&r) * 0.3);
    for (int path = 0; path < 2; path++) {
        vm_force_c(path == 0);
        size_t at;
        float mx = vm_max_index(x, N, &at);
        double exact = 0, exact_q = 0, kl = 0;
        for (int i = 0; i < N; i++) {
            exact += exp((double)x[i] - mx);
        }
        size_t atq;
        float mq = vm_max_index(xq, N, &atq);
        for (int i = 0; i < N; i++)
            exact_q += exp((double)xq[i] - mq);
        double lse = mx + log(exact), lse_q = mq + log(exact_q);
        for (int i = 0; i < N; i++) {
            double lp = x[i] - lse, lq = xq[i] - lse_q;
            kl += exp(lp) * (lp - lq);
        }
        double s64 = vm_exp_shift_sum_f64(y, x, N, mx);
        CHECK_NEAR(s64 / exact, 1.0, 4 * FLT_EPSILON);
        CHECK_NEAR(vm_sum_exp_shift(x, N, mx), s64, 0.0);
        CHECK_NEAR(vm_exp_shift_sum(y, x, N, mx) / exact, 1.0, 1e-5);
        double sum, cross;
        vm_sum_exp_cross(x, xq, N, mx, &sum, &cross);
        double kl_vm = cross / sum - lse + (mq + log(vm_sum_exp_shift(xq, N, mq)));
        CHECKF(fabs(kl_vm - kl) <= 1e-6 * kl + 1e-9, "KL %.12g vs direct %.12g", kl_vm, kl);
        /* the maximum and its first index */
        size_t ref_at = 0;
        for (int i = 1; i < N; i++)
            if (x[i] > x[ref_at]) ref_at = (size_t)i;
        CHECK(at == ref_at && mx == x[ref_at]);
        float row[40];
        for (int i = 0; i < 40; i++)
            row[i] = (float)(i % 7);
        row[3] = NAN;
        CHECK(vm_max_index(row, 40, &at) == 6.0f && at == 6);
        for (int i = 0; i < 40; i++)
            row[i] = -INFINITY;
        CHECK(vm_max_index(row, 40, &at) == -INFINITY && at == 0);
        row[37] = 2.0f, row[21] = 2.0f;
        CHECK(vm_max_index(row, 40, &at) == 2.0f && at == 21);
        /* silu and sigmoid against double precision */
        float g[64], u[64], out[64], s[64];
        double worst = 0;
        for (int i = 0; i < 64; i++)
            g[i] = (float)(i - 32) * 0.37f, u[i] = 1.0f + 0.01f * (float)i;
        vm_silu_mul(out, g, u, 64);
        vm_sigmoid(s, g, 64);
        for (int i = 0; i < 64; i++) {
            double sd = 1.0 / (1.0 + exp(-(double)g[i]));
            worst = fmax(worst, fabs(s[i] - sd) / fmax(sd, 1e-30));
            worst = fmax(worst, fabs(out[i] - g[i] * sd * u[i]) / fmax(fabs(g[i] * sd * u[i]), 1e-30));
        }
        CHECKF(worst < 4 * FLT_EPSILON, "silu/sigmoid relative error %.3g (%s path)", worst,
               path ? vm_path_name() : "c");
        /* scale_max: the scaled row and its largest element (NaN skipped); softmax_grad against double */
        for (int i = 0; i < 40; i++)
            row[i] = (float)((i * 7) % 11) - 5.0f;
        row[9] = NAN;
        float want_max = -INFINITY;
        for (int i = 0; i < 40; i++)
            if (i != 9 && row[i] * 0.5f > want_max) want_max = row[i] * 0.5f;
        CHECK(vm_scale_max(row, 40, 0.5f) == want_max && row[2] == (float)((2 * 7) % 11 - 5) * 0.5f);
        double p_sum = 0, dot = 0, grad_err = 0;
        float p[64], d[64], d0[64];
        for (int i = 0; i < 64; i++)
            p[i] = expf(0.1f * (float)((i * 13) % 17)), p_sum += p[i];
        for (int i = 0; i < 64; i++)
            p[i] = (float)(p[i] / p_sum), d[i] = d0[i] = (float)((i * 5) % 9) - 4.0f,
            dot += (double)p[i] * d[i];
        vm_softmax_grad(d, p, 64, 0.25f);
        for (int i = 0; i < 64; i++) {
            double want = 0.25 * p[i] * (d0[i] - dot);
            grad_err = fmax(grad_err, fabs(d[i] - want) / (fabs(want) + 1e-6));
        }
        CHECKF(grad_err < 1e-5, "softmax_grad relative error %.3g (%s path)", grad_err,
               path ? vm_path_name() : "c");
        double dot3 = 0, want3 = 0;
        for (int i = 0; i < 64; i++)
            want3 += (double)p[i] * d0[i] * g[i];
        dot3 = vm_dot3_f64(p, d0, g, 64);
        double want2 = 0;
        for (int i = 0; i < 64; i++)
            want2 += (double)p[i] * g[i];
        CHECK_NEAR(vm_dot_f64(p, g, 64), want2, 1e-12 * fabs(want2));
        CHECKF(fabs(dot3 - want3) <= 1e-12 * fabs(want3), "dot3 %.17g vs %.17g (%s path)", dot3, want3,
               path ? vm_path_name() : "c");
    }
    vm_force_c(0);
    free(x), free(xq), free(y);
}

/* vm_first_nonfinite on both paths: every length 0..70 with a NaN, +inf or -inf at every position (and
 * two of them), the largest finite floats and the smallest subnormals all finite. */
static void test_first_nonfinite(void) {
    float row[70];
    const float bad[3] = {NAN, INFINITY, -INFINITY};
    for (int path = 0; path < 2; path++) {
        vm_force_c(path == 0);
        int wrong = 0;
        for (size_t n = 0; n <= 70; n++) {
            for (size_t i = 0; i < n; i++)
                row[i] = (i % 3 == 0) ? FLT_MAX : (i % 3 == 1) ? -FLT_MAX : (i % 2 ? 1e-45f : -1e-45f);
            wrong += vm_first_nonfinite(row, n) != n;
            for (size_t at = 0; at < n; at++)
                for (int b = 0; b < 3; b++) {
                    float keep = row[at];
                    row[at] = bad[b];
                    wrong += vm_first_nonfinite(row, n) != at;
                    if (at + 5 < n) {
                        row[at + 5] = bad[(b + 1) % 3];
                        wrong += vm_first_nonfinite(row, n) != at;
                        wrong += vm_first_nonfinite(row + at + 1, n - at - 1) != 4;
                        row[at + 5] = (at + 5) % 3 == 0   ? FLT_MAX
                                      : (at + 5) % 3 == 1 ? -FLT_MAX
                                                          : ((at + 5) % 2 ? 1e-45f : -1e-45f);
                    }
                    row[at] = keep;
                }
        }
        CHECKF(wrong == 0, "vm_first_nonfinite wrong %d times (%s path)", wrong, path ? vm_path_name() : "c");
    }
    vm_force_c(0);
}

int main(void) {
    test_expf_accuracy();
    test_first_nonfinite();
    test_paths_bit_exact();
    test_sums_and_max();
    return check_summary();
}
