/* Deterministic random numbers: the same seed gives the same stream on every machine and thread count.
 * xoshiro256** seeded through splitmix64; normals by Box-Muller in double precision. */
#ifndef QLAB_RNG_H
#define QLAB_RNG_H

#include <stdint.h>

typedef struct {
    uint64_t s[4];
} rng_state;

void rng_seed(rng_state *r, uint64_t seed);
uint64_t rng_u64(rng_state *r);
/* Uniform in [0, 1) with 53 random bits. */
double rng_uniform(rng_state *r);
/* Uniform integer in [0, n). */
uint64_t rng_below(rng_state *r, uint64_t n);
/* Standard normal. */
double rng_normal(rng_state *r);
/* Student-t with nu degrees of freedom (heavy-tailed test weights). */
double rng_student_t(rng_state *r, double nu);

#endif
