/* The thread pool (pool.h): items handed out by an atomic counter, a stop flag after the first
 * failure, the lowest failing index recorded under a lock. kv_parallel_for runs on helpers that
 * stay parked between calls (spinning a while first), one contiguous share of items per worker. */
#include "base/pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>
#include <sched.h>
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

/* kv_parallel_for's helpers: started on first need, then between jobs they spin for up to
 * PARK_SPIN_NS watching for the next job before sleeping on a condition variable (a decode step
 * runs about a hundred short kernels back to back: waking a sleeping thread cost 10-20 us per
 * call on the 2-core VMs, and a helper woken late leaves the caller most of a 768 x 768 F32
 * matrix, about 50 us of streaming). One call at a time uses them; a call that finds them busy
 * (nested, or from another thread) runs on kv_pool_run's threads instead. Helper h (1-based) is
 * worker h of every job it joins.
 *
 * Items are split into one contiguous share per worker (worker w: [w n / W, (w + 1) n / W)), each
 * handed out in order from its own counter; a worker done with its share takes items from the
 * others' counters in turn, so a late or slow thread's rows are done by the rest. A worker
 * streams its own block of rows (of a weight matrix, say), and the counters sit on cache lines of
 * their own. Which worker runs an item never changes what the item computes. */
enum { PARK_SPIN_NS = 100000, PARK_LINE = 64 }; /* ns; bytes */

typedef struct {
    _Alignas(PARK_LINE) atomic_int next; /* the share's next item to hand out */
    int end; /* one past its last item */
} park_share;

static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake, done;
    int started; /* helpers running */
    int sleepers; /* helpers waiting on wake (under lock) */
    int caller_waiting; /* the caller waits on done (under lock) */
    /* the job: gen << 16 | helpers, gen bumped for every job (never 0); helpers 1..helpers join */
    _Atomic unsigned long long word;
    unsigned gen;
    kv_task_fn fn; /* set before word is published, read by the job's workers only */
    void *ctx;
    int workers; /* helpers + the caller */
    _Alignas(PARK_LINE) atomic_int active; /* helpers of this job not finished */
    park_share shares[KV_POOL_MAX_THREADS];
} park = {.lock = PTHREAD_MUTEX_INITIALIZER,
          .wake = PTHREAD_COND_INITIALIZER,
          .done = PTHREAD_COND_INITIALIZER};
static atomic_flag park_busy = ATOMIC_FLAG_INIT;
static pthread_once_t park_atfork_once = PTHREAD_ONCE_INIT;

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* spun_ = 1 once cond holds, spinning up to PARK_SPIN_NS; 0 when the time ran out first. The
 * spin yields the CPU every 64 pauses: on a loaded machine the thread it waits for may share
 * this CPU (spinning without yielding cost 0.4 ms per call there) */
#define SPIN_UNTIL(cond)                                                                           \
    do {                                                                                           \
        const long long deadline_ = now_ns() + PARK_SPIN_NS;                                       \
        for (unsigned spins_ = 1;; spins_++) {                                                     \
            if (cond) {                                                                            \
                spun_ = 1;                                                                         \
                break;                                                                             \
            }                                                                                      \
            cpu_relax();                                                                           \
            if (!(spins_ & 63)) {                                                                  \
                if (now_ns() > deadline_) break;                                                   \
                sched_yield();                                                                     \
            }                                                                                      \
        }                                                                                          \
    } while (0)

static unsigned word_gen(unsigned long long w) { return (unsigned)(w >> 16); }

/* the job word once its gen differs from seen: spinning first, then asleep */
static unsigned long long park_next_job(unsigned seen) {
    unsigned long long w = 0;
    int spun_ = 0;
    SPIN_UNTIL(word_gen(w = atomic_load_explicit(&park.word, memory_order_acquire)) != seen);
    if (spun_) return w;
    pthread_mutex_lock(&park.lock);
    park.sleepers++;
    while (word_gen(w = atomic_load_explicit(&park.word, memory_order_acquire)) == seen)
        pthread_cond_wait(&park.wake, &park.lock);
    park.sleepers--;
    pthread_mutex_unlock(&park.lock);
    return w;
}

/* worker's share first, then the others' in turn */
static void park_run_items(kv_task_fn fn, void *ctx, int workers, int worker) {
    for (int k = 0; k < workers; k++) {
        park_share *sh = &park.shares[(worker + k) % workers];
        for (;;) {
            const int i = atomic_fetch_add_explicit(&sh->next, 1, memory_order_relaxed);
            if (i >= sh->end) break;
            fn(ctx, i, worker);
        }
    }
}

static void *park_helper_main(void *arg) {
    const int me = (int)(intptr_t)arg;
    /* none seen yet (gen skips 0): the job that started this helper is its first, and no job
     * it belongs to can finish before it joins */
    unsigned seen = 0;
    for (;;) {
        const unsigned long long w = park_next_job(seen);
        seen = word_gen(w);
        if (me > (int)(w & 0xffff)) continue;
        park_run_items(park.fn, park.ctx, park.workers, me);
        if (atomic_fetch_sub_explicit(&park.active, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&park.lock);
            if (park.caller_waiting) pthread_cond_signal(&park.done);
            pthread_mutex_unlock(&park.lock);
        }
    }
    return NULL;
}

/* a forked child has none of the parent's helpers: start again from none */
static void park_atfork_child(void) {
    pthread_mutex_init(&park.lock, NULL);
    pthread_cond_init(&park.wake, NULL);
    pthread_cond_init(&park.done, NULL);
    park.started = 0;
    park.sleepers = 0;
    park.caller_waiting = 0;
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
    const int workers = helpers + 1;
    park.fn = fn;
    park.ctx = ctx;
    park.workers = workers;
    for (int w = 0; w < workers; w++) {
        atomic_store_explicit(&park.shares[w].next, (int)((long long)n_items * w / workers),
                              memory_order_relaxed);
        park.shares[w].end = (int)((long long)n_items * (w + 1) / workers);
    }
    atomic_store_explicit(&park.active, helpers, memory_order_relaxed);
    if (++park.gen == 0) park.gen = 1;
    atomic_store_explicit(&park.word, (unsigned long long)park.gen << 16 | (unsigned)helpers,
                          memory_order_release);
    if (helpers && park.sleepers) pthread_cond_broadcast(&park.wake);
    pthread_mutex_unlock(&park.lock);
    park_run_items(fn, ctx, workers, 0);
    int spun_ = 0;
    SPIN_UNTIL(atomic_load_explicit(&park.active, memory_order_acquire) == 0);
    if (!spun_) {
        pthread_mutex_lock(&park.lock);
        park.caller_waiting = 1;
        while (atomic_load_explicit(&park.active, memory_order_acquire))
            pthread_cond_wait(&park.done, &park.lock);
        park.caller_waiting = 0;
        pthread_mutex_unlock(&park.lock);
    }
    atomic_flag_clear(&park_busy);
}
