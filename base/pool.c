/* The thread pool (pool.h): items handed out by an atomic counter, a stop flag after the first
 * failure, the lowest failing index recorded under a lock. */
#include "base/pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

int kv_resolve_threads(int threads, int n_tasks) {
    if (threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n > 0 ? (int)(n < KV_POOL_MAX_THREADS ? n : KV_POOL_MAX_THREADS) : 1;
    }
    if (threads > KV_POOL_MAX_THREADS) threads = KV_POOL_MAX_THREADS;
    if (threads > n_tasks) threads = n_tasks;
    return threads < 1 ? 1 : threads;
}

typedef struct {
    int n;
    kv_pool_fn fn;
    void *ctx;
    atomic_int next;      /* next index to hand out */
    atomic_int stop;      /* set on the first failure */
    pthread_mutex_t lock; /* guards the failure record */
    int failed_index;     /* lowest failing index, n when none */
    int failed_code;
    kv_error *failed_err;
} pool;

typedef struct {
    pool *p;
    int worker;
} pool_worker;

static void *pool_worker_main(void *arg) {
    pool_worker *w = arg;
    pool *p = w->p;
    kv_error err = {0};
    while (!atomic_load_explicit(&p->stop, memory_order_relaxed)) {
        int i = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
        if (i >= p->n) break;
        err.code = 0;
        err.msg[0] = 0;
        int rc = p->fn(p->ctx, i, w->worker, &err);
        if (rc) {
            pthread_mutex_lock(&p->lock);
            atomic_store(&p->stop, 1);
            if (i < p->failed_index) {
                p->failed_index = i;
                p->failed_code = rc;
                if (p->failed_err) *p->failed_err = err;
            }
            pthread_mutex_unlock(&p->lock);
        }
    }
    return NULL;
}

int kv_pool_run(int n, int threads, kv_pool_fn fn, void *ctx, int *failed, kv_error *err) {
    if (failed) *failed = -1;
    if (n <= 0) return 0;
    if (threads < 1) threads = 1;
    if (threads > n) threads = n;
    if (threads > KV_POOL_MAX_THREADS) threads = KV_POOL_MAX_THREADS;
    pool p = {.n = n, .fn = fn, .ctx = ctx, .failed_index = n, .failed_err = err};
    atomic_init(&p.next, 0);
    atomic_init(&p.stop, 0);
    pthread_mutex_init(&p.lock, NULL);
    pool_worker workers[KV_POOL_MAX_THREADS];
    pthread_t tids[KV_POOL_MAX_THREADS];
    int started = 0;
    for (int t = 1; t < threads; t++) {
        workers[t] = (pool_worker){&p, t};
        if (pthread_create(&tids[t], NULL, pool_worker_main, &workers[t]) != 0) break;
        started = t;
    }
    workers[0] = (pool_worker){&p, 0};
    pool_worker_main(&workers[0]);
    for (int t = 1; t <= started; t++) pthread_join(tids[t], NULL);
    pthread_mutex_destroy(&p.lock);
    if (p.failed_index < n) {
        if (failed) *failed = p.failed_index;
        return p.failed_code;
    }
    return 0;
}

typedef struct {
    kv_task_fn fn;
    void *ctx;
} infallible_task;

static int run_infallible(void *ctx, int i, int worker, kv_error *err) {
    (void)err;
    const infallible_task *t = ctx;
    t->fn(t->ctx, i, worker);
    return 0;
}

void kv_parallel_for(int n_items, int n_workers, kv_task_fn fn, void *ctx) {
    infallible_task t = {fn, ctx};
    kv_pool_run(n_items, n_workers, run_infallible, &t, NULL, NULL);
}
