/* xoshiro256** (Blackman & Vigna) with splitmix64 seeding; see rng.h. */
#include "core/base/rng.h"

#include <math.h>

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void rng_seed(rng_state *r, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&x);
}

static inline uint64_t rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

uint64_t rng_u64(rng_state *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double rng_uniform(rng_state *r) {
    return (double)(rng_u64(r) >> 11) * 0x1.0p-53;
}

uint64_t rng_below(rng_state *r, uint64_t n) {
    if (n == 0) return 0;
    /* Rejection sampling keeps the result unbiased for any n. */
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t v;
    do
        v = rng_u64(r);
    while (v >= limit);
    return v % n;
}

double rng_normal(rng_state *r) {
    double u1;
    do
        u1 = rng_uniform(r);
    while (u1 <= 0.0);
    double u2 = rng_uniform(r);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

double rng_student_t(rng_state *r, double nu) {
    /* t = Z / sqrt(V / nu) with V ~ chi-square(nu); V as a sum of squared normals for integer nu,
     * which is all the experiments use. */
    double z = rng_normal(r), v = 0.0;
    int k = (int)nu;
    if (k < 1) k = 1;
    for (int i = 0; i < k; i++) {
        double g = rng_normal(r);
        v += g * g;
    }
    return z / sqrt(v / k);
}
