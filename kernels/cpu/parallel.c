/* Thread count for the kernels and OpenBLAS, and a small dynamic parallel-for on pthreads. */
#include "kernels/kernels.h"

#include <cblas.h>
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

#define KV_MAX_THREADS 256
/* below this much work per extra worker, starting a thread costs more than it saves */
#define KV_FLOPS_PER_WORKER 4.0e5

static int kernel_threads; /* 0 = not set yet: online CPUs */

void kv_kernels_set_threads(int n) {
    if (n < 1) n = 1;
    if (n > KV_MAX_THREADS) n = KV_MAX_THREADS;
    kernel_threads = n;
    openblas_set_num_threads(n);
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

typedef struct {
    atomic_int next;  /* next item to hand out */
    int n_items;
    kv_task_fn fn;
    void *ctx;
} task_queue;

typedef struct {
    task_queue *queue;
    int worker;
} worker_arg;

static void drain(task_queue *q, int worker) {
    for (;;) {
        int i = atomic_fetch_add_explicit(&q->next, 1, memory_order_relaxed);
        if (i >= q->n_items) return;
        q->fn(q->ctx, i, worker);
    }
}

static void *worker_main(void *p) {
    worker_arg *a = p;
    drain(a->queue, a->worker);
    return NULL;
}

void kv_parallel_for(int n_items, int n_workers, kv_task_fn fn, void *ctx) {
    if (n_items <= 0) return;
    if (n_workers > n_items) n_workers = n_items;
    if (n_workers > KV_MAX_THREADS) n_workers = KV_MAX_THREADS;
    task_queue q = {.n_items = n_items, .fn = fn, .ctx = ctx};
    atomic_init(&q.next, 0);
    if (n_workers <= 1) {
        drain(&q, 0);
        return;
    }
    pthread_t tid[KV_MAX_THREADS];
    worker_arg args[KV_MAX_THREADS];
    int started = 0;
    for (int w = 1; w < n_workers; w++) {
        args[started] = (worker_arg){.queue = &q, .worker = w};
        if (pthread_create(&tid[started], NULL, worker_main, &args[started]) != 0) break;
        started++;
    }
    drain(&q, 0);
    for (int i = 0; i < started; i++) pthread_join(tid[i], NULL);
}
