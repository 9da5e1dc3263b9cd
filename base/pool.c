/* The thread pool (pool.h): items handed out by an atomic counter, a stop flag after the first
 * failure, the lowest failing index recorded under a lock. kv_parallel_for runs on helpers that
 * stay parked between calls. */
#include "base/pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
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
    atomic_int next; /* next index to hand out */
    atomic_int stop; /* set on the first failure */
    pthread_mutex_t lock; /* guards the failure record */
    int failed_index; /* lowest failing index, n when none */
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

/* kv_parallel_for's helpers: started on first need, kept parked on a condition variable between
 * calls (a decode step runs hundreds of short kernels: no thread start per call). One call at a
 * time uses them; a call that finds them busy (nested, or from another thread) runs on
 * kv_pool_run's threads instead. Helper h (1-based) is worker h of every job it joins. */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake, done;
    int started; /* helpers running */
    unsigned gen; /* bumped for every job */
    kv_task_fn fn; /* the job: items [0, n) to helpers 1..helpers and the caller */
    void *ctx;
    int n, helpers;
    int active; /* helpers of this job not finished */
    atomic_int next;
} park = {.lock = PTHREAD_MUTEX_INITIALIZER,
          .wake = PTHREAD_COND_INITIALIZER,
          .done = PTHREAD_COND_INITIALIZER};
static atomic_flag park_busy = ATOMIC_FLAG_INIT;
static pthread_once_t park_atfork_once = PTHREAD_ONCE_INIT;

static void park_run_items(kv_task_fn fn, void *ctx, int n, int worker) {
    for (;;) {
        int i = atomic_fetch_add_explicit(&park.next, 1, memory_order_relaxed);
        if (i >= n) break;
        fn(ctx, i, worker);
    }
}

static void *park_helper_main(void *arg) {
    const int me = (int)(intptr_t)arg;
    pthread_mutex_lock(&park.lock);
    /* none seen yet (gen skips 0): the job that started this helper is its first, and no job
     * it belongs to can finish before it joins */
    unsigned seen = 0;
    for (;;) {
        while (park.gen == seen) pthread_cond_wait(&park.wake, &park.lock);
        seen = park.gen;
        if (me > park.helpers) continue;
        kv_task_fn fn = park.fn;
        void *ctx = park.ctx;
        int n = park.n;
        pthread_mutex_unlock(&park.lock);
        park_run_items(fn, ctx, n, me);
        pthread_mutex_lock(&park.lock);
        if (--park.active == 0) pthread_cond_signal(&park.done);
    }
    return NULL;
}

/* a forked child has none of the parent's helpers: start again from none */
static void park_atfork_child(void) {
    pthread_mutex_init(&park.lock, NULL);
    pthread_cond_init(&park.wake, NULL);
    pthread_cond_init(&park.done, NULL);
    park.started = 0;
    atomic_flag_clear(&park_busy);
}

static void park_register_atfork(void) { pthread_atfork(NULL, NULL, park_atfork_child); }

void kv_parallel_for(int n_items, int n_workers, kv_task_fn fn, void *ctx) {
    if (n_workers > n_items) n_workers = n_items;
    if (n_workers > KV_POOL_MAX_THREADS) n_workers = KV_POOL_MAX_THREADS;
    if (n_workers <= 1) {
        for (int i = 0; i < n_items; i++) fn(ctx, i, 0);
        return;
    }
    if (atomic_flag_test_and_set(&park_busy)) { /* in use: threads of this call's own */
        infallible_task t = {fn, ctx};
        kv_pool_run(n_items, n_workers, run_infallible, &t, NULL, NULL);
        return;
    }
    pthread_once(&park_atfork_once, park_register_atfork);
    pthread_mutex_lock(&park.lock);
    while (park.started < n_workers - 1) {
        pthread_t tid;
        if (pthread_create(&tid, NULL, park_helper_main, (void *)(intptr_t)(park.started + 1)))
            break;
        pthread_detach(tid);
        park.started++;
    }
    const int helpers = park.started < n_workers - 1 ? park.started : n_workers - 1;
    park.fn = fn;
    park.ctx = ctx;
    park.n = n_items;
    park.helpers = helpers;
    park.active = helpers;
    atomic_store_explicit(&park.next, 0, memory_order_relaxed);
    if (++park.gen == 0) park.gen = 1;
    if (helpers) pthread_cond_broadcast(&park.wake);
    pthread_mutex_unlock(&park.lock);
    park_run_items(fn, ctx, n_items, 0);
    pthread_mutex_lock(&park.lock);
    while (park.active) pthread_cond_wait(&park.done, &park.lock);
    pthread_mutex_unlock(&park.lock);
    atomic_flag_clear(&park_busy);
}
