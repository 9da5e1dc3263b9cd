/* base/pool.h's kv_parallel_for on its parked helpers: every item once, worker ids in range,
 * many calls in a row with changing worker counts, a call nested inside another (and from a
 * thread of kv_pool_run) falling back to threads of its own, each worker on its own share first. */
#include "tests/check.h"

#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "base/pool.h"

enum { N_ITEMS = 1000, MAX_W = 4 };

typedef struct {
    atomic_int hits[N_ITEMS];
    atomic_int bad_worker;
    int n_workers;
    int nested; /* items run a kv_parallel_for of their own */
    atomic_int inner_hits;
} job;

static void inner_item(void *ctx, int item, int worker) {
    (void)item, (void)worker;
    job *j = ctx;
    atomic_fetch_add(&j->inner_hits, 1);
}

static void item_fn(void *ctx, int item, int worker) {
    job *j = ctx;
    atomic_fetch_add(&j->hits[item], 1);
    if (worker < 0 || worker >= j->n_workers) atomic_fetch_add(&j->bad_worker, 1);
    if (j->nested && item % 100 == 0) kv_parallel_for(10, 2, inner_item, j);
}

static int run(int n_items, int n_workers, int nested) {
    job j; /* its own per call: two threads run this at once below */
    memset(&j, 0, sizeof j);
    j.n_workers = n_workers;
    j.nested = nested;
    kv_parallel_for(n_items, n_workers, item_fn, &j);
    int ok = atomic_load(&j.bad_worker) == 0;
    for (int i = 0; i < N_ITEMS; i++) ok &= atomic_load(&j.hits[i]) == (i < n_items);
    if (nested) ok &= atomic_load(&j.inner_hits) == 10 * ((n_items + 99) / 100);
    return ok;
}

/* each worker's items in the order it ran them: within one share (the contiguous blocks of
 * pool.h, handed out in order whoever takes them) they ascend */
enum { ORDER_ITEMS = 600, ORDER_W = 3 };

typedef struct {
    int seq[ORDER_W][ORDER_ITEMS];
    int count[ORDER_W];
    atomic_int hits[ORDER_ITEMS];
} order_job;

static void order_item(void *ctx, int item, int worker) {
    order_job *j = ctx;
    j->seq[worker][j->count[worker]++] = item; /* a worker's own row: no race */
    atomic_fetch_add(&j->hits[item], 1);
    for (volatile int spin = 0; spin < 200; spin++) {}
}

static order_job order;

static int shares_in_order(int n_workers) {
    order_job *j = &order;
    memset(j, 0, sizeof *j);
    kv_parallel_for(ORDER_ITEMS, n_workers, order_item, j);
    int ok = 1;
    for (int i = 0; i < ORDER_ITEMS; i++) ok &= atomic_load(&j->hits[i]) == 1;
    for (int w = 0; w < n_workers; w++)
        for (int k = 1; k < j->count[w]; k++) {
            const int a = j->seq[w][k - 1], b = j->seq[w][k];
            const int share_a = (int)((long long)a * n_workers / ORDER_ITEMS),
                      share_b = (int)((long long)b * n_workers / ORDER_ITEMS);
            /* share of item i: the w with w n / W <= i < (w + 1) n / W */
            if (share_a == share_b && b <= a) ok = 0;
        }
    return ok;
}

static int from_pool_task(void *ctx, int i, int worker, kv_error *err) {
    (void)worker, (void)err;
    int *ok = ctx;
    ok[i] = run(100 + i, 2, 0);
    return 0;
}

int main(void) {
    /* first, while only one helper exists (more threads than the 2 cores here would leave it
     * late): of 2 workers the helper starts on share 1, so it runs item ORDER_ITEMS / 2 first
     * unless it came so late that the caller had done its own share (about 60 us) and taken it.
     * A new thread may share the caller's CPU for its first tens of ms (it then runs only when
     * the caller waits), so calls go on until the helper has taken part in one (at most 5 s). */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (double waited = 0; waited < 5.0;) {
        shares_in_order(2);
        if (order.count[1] > 0) break;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        waited = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    }
    int own_first = 0;
    for (int round = 0; round < 10; round++) {
        shares_in_order(2);
        own_first += order.count[1] > 0 && order.seq[1][0] == ORDER_ITEMS / 2;
    }
    CHECK(own_first >= 5,
          "the helper of 2 workers ran its share's first item first in %d of 10 "
          "calls",
          own_first);
    int all = 1;
    for (int round = 0; round < 300; round++) {
        int w = 1 + round % MAX_W, n = round % 7 == 0 ? round % 5 : N_ITEMS - round;
        all &= run(n, w, 0);
    }
    CHECK(all, "300 calls with 1..%d workers: every item once, worker ids in range", MAX_W);
    CHECK(run(N_ITEMS, 2, 1), "nested kv_parallel_for");
    CHECK(run(N_ITEMS, 3, 1), "nested kv_parallel_for, 3 workers");
    int ok[2] = {0, 0};
    kv_error err = {0};
    CHECK(kv_pool_run(2, 2, from_pool_task, ok, NULL, &err) == 0, "kv_pool_run");
    CHECK(ok[0] && ok[1], "kv_parallel_for from two kv_pool_run threads at once");
    CHECK(run(N_ITEMS, 2, 0), "after the concurrent calls");
    int in_order = 1;
    for (int round = 0; round < 7; round++) in_order &= shares_in_order(3) && shares_in_order(2);
    CHECK(in_order, "every item once, each worker runs the items of a share in ascending order");
    /* helpers that spun out and went to sleep between calls are woken for the next */
    int slept = 1;
    for (int round = 0; round < 5; round++) {
        struct timespec pause = {0, 2000000}; /* 2 ms: longer than the helpers spin */
        nanosleep(&pause, NULL);
        slept &= run(N_ITEMS, 2 + round % 2, 0);
    }
    CHECK(slept, "calls 2 ms apart (helpers asleep in between)");
    return check_done("test_pool");
}
