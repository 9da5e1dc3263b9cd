/* Deterministic test data for the kernel tests (xorshift64, uniform floats in [-1, 1)) and
 * their tolerance measures. A test file picks its own stream by defining TEST_RAND_SEED before
 * including this header. */
#ifndef KV_TESTS_RAND_H
#define KV_TESTS_RAND_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#ifndef TEST_RAND_SEED
#define TEST_RAND_SEED 0x9e3779b97f4a7c15ull
/* max over i of |a[i] - b[i]|, in double; a NaN anywhere gives NaN (never a small number) */
static inline double max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= m)) m = d;
    }
    return m;
}

#endif

static uint64_t rng_state = TEST_RAND_SEED;

/* the next value of the stream, uniform in [-1, 1) */
static inline float frand(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) * (2.0 / 16777216.0) - 1.0);
}

/* malloc'd [n] floats scale * frand() (n = 0 gives a valid pointer); aborts when out of memory */
static inline float *rand_buf(size_t n, float scale) {
    float *p = malloc(sizeof(float) * (n ? n : 1));
    if (!p) abort();
    for (size_t i = 0; i < n; i++) p[i] = scale * frand();
    return p;
}

/* max over i of |a[i] - b[i]| / (atol + rtol |b[i]|) against a double reference: <= 1 means
 * every element is within tolerance; a NaN anywhere gives INFINITY */
static inline double worst(const float *a, const double *b, size_t n, double atol, double rtol) {
    double w = 0.0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]) / (atol + rtol * fabs(b[i]));
        if (isnan(e)) return INFINITY;
        if (e > w) w = e;
    }
    return w;
}

#endif
