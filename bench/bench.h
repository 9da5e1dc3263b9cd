/* What the bench programs share: a monotonic clock, and the read loop their bandwidth ratios are
 * taken against (kernels/cpu/baseline.h), measured in the same run. */
#ifndef KV_BENCH_H
#define KV_BENCH_H

#include <stdio.h>
#include <time.h>

#include "kernels/cpu/baseline.h"
#include "kernels/kernels.h"

/* seconds on the monotonic clock */
static inline double bench_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* sets the kernels' threads, then *gbps = the read loop over 512 MiB (best of 5) on them; 0, or
 * 1 after "prog: message" on stderr */
static inline int bench_read_loop(const char *prog, int threads, double *gbps) {
    kv_kernels_set_threads(threads);
    kv_error err = {0};
    if (kv_read_loop_gbps(gbps, (size_t)512 << 20, 5, &err)) {
        fprintf(stderr, "%s: %s\n", prog, err.msg);
        return 1;
    }
    return 0;
}

#endif
