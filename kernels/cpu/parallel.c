/* Thread count for the kernels (the work runs on base/pool.h; OpenBLAS runs single-threaded
 * inside it: kernels/cpu/matmul.c). */
#include "kernels/kernels.h"

#include <unistd.h>

#define KV_MAX_THREADS      256
/* below this much work per extra worker, starting a thread costs more than it saves */
#define KV_FLOPS_PER_WORKER 4.0e5

static int kernel_threads; /* 0 = not set yet: online CPUs */

void kv_kernels_set_threads(int n) {
    if (n < 1) n = 1;
    if (n > KV_MAX_THREADS) n = KV_MAX_THREADS;
    kernel_threads = n;
}

int kv_kernels_threads(void) {
    if (kernel_threads > 0) return kernel_threads;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) n = 1;
    if (n > KV_MAX_THREADS) n = KV_MAX_THREADS;
    return (int)n;
}

int kv_parallel_workers(int n_items, double flops) {
    int w = kv_kernels_threads();
    if (w > n_items) w = n_items;
    double by_work = flops / KV_FLOPS_PER_WORKER;
    if (by_work < w) w = (int)by_work;
    return w < 1 ? 1 : w;
}
